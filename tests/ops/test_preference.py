"""Tests of rlgen/ops/preference.py: DPO (sigmoid/cDPO), robust DPO, hinge, IPO and SimPO.

Float64 NumPy references of every loss type and of the implicit rewards over random
batches; identities (DPO = log 2 at the reference, robust DPO is unbiased under label
flips, cDPO is the label-noise expectation of DPO, IPO's minimum, SimPO's length
normalisation); gradient directions; composition under jit/vmap/grad; bad input; and the
registry of loss types with `check_loss_settings`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from rlgen import ops
from rlgen.ops import preference
from rlgen.ops.preference import (
    LOSS_TYPES,
    PreferenceLoss,
    PreferenceLossType,
    check_loss_settings,
    preference_loss,
)

RTOL, ATOL = 1e-4, 1e-5
LOG2 = math.log(2.0)
USES_SMOOTHING = ("sigmoid", "robust", "simpo")
LENGTH_NORMALISED = ("ipo", "simpo")


# ----------------------------------------------------------------------------------------
# float64 NumPy reference
# ----------------------------------------------------------------------------------------


def _log_sigmoid(x):
    """log(1 / (1 + exp(-x))), stable for large |x|."""
    return -np.logaddexp(0.0, -x)


def ref_preference(
    c, r, c_ref, r_ref, *, loss_type, beta, label_smoothing=0.0, gamma=0.5, len_c=None,
    len_r=None,
):  # fmt: skip
    """Per-pair (losses, chosen_rewards, rejected_rewards) in float64, one pair at a time."""
    e = label_smoothing
    n = len(c)
    losses, chosen, rejected = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        pc, pr = float(c[i]), float(r[i])
        if loss_type == "simpo":
            qc = qr = 0.0  # reference-free
        else:
            qc, qr = float(c_ref[i]), float(r_ref[i])
        if loss_type in LENGTH_NORMALISED:
            lc, lr = max(float(len_c[i]), 1.0), max(float(len_r[i]), 1.0)
            pc, qc, pr, qr = pc / lc, qc / lc, pr / lr, qr / lr
        chosen[i] = beta * (pc - qc)
        rejected[i] = beta * (pr - qr)
        h = (pc - qc) - (pr - qr)
        if loss_type == "sigmoid":
            # cross-entropy of the smoothed label (1 - e, e) against Bradley-Terry sigma(beta h)
            losses[i] = -(1 - e) * _log_sigmoid(beta * h) - e * _log_sigmoid(-beta * h)
        elif loss_type == "robust":
            clean, flipped = -_log_sigmoid(beta * h), -_log_sigmoid(-beta * h)
            losses[i] = ((1 - e) * clean - e * flipped) / (1 - 2 * e)
        elif loss_type == "hinge":
            losses[i] = max(0.0, 1.0 - beta * h)
        elif loss_type == "ipo":
            losses[i] = (h - 1.0 / (2.0 * beta)) ** 2
        else:  # simpo
            u = beta * h - gamma
            losses[i] = -(1 - e) * _log_sigmoid(u) - e * _log_sigmoid(-u)
    return losses, chosen, rejected


# ----------------------------------------------------------------------------------------
# strategies and a jitted wrapper
# ----------------------------------------------------------------------------------------

BATCHES = st.sampled_from([1, 3, 5])


def _floats(lo, hi):
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    return st.floats(lo, hi, width=32, allow_subnormal=False)


@st.composite
def pairs(draw):
    b = draw(BATCHES)

    def log_probs():
        return draw(hnp.arrays(np.float32, (b,), elements=_floats(-40.0, 0.0)))

    def lengths():
        return draw(hnp.arrays(np.int32, (b,), elements=st.integers(1, 20)))

    return log_probs(), log_probs(), log_probs(), log_probs(), lengths(), lengths()


def loss_settings(loss_type):
    """beta, label smoothing (0 where unused; < 0.5 for robust) and simpo_gamma."""
    if loss_type in USES_SMOOTHING:
        smoothing = _floats(0.0, 0.4) if loss_type == "robust" else _floats(0.0, 0.5)
    else:
        smoothing = st.just(0.0)
    return st.fixed_dictionaries(
        {
            "loss_type": st.just(loss_type),
            "beta": _floats(0.01, 2.0),
            "label_smoothing": smoothing,
            "gamma": _floats(-1.0, 2.0),
        }
    )


def _kwargs(loss_type, c_ref, r_ref, len_c, len_r, label_smoothing, gamma):
    """The arguments each loss type accepts (refs, lengths, smoothing, simpo_gamma)."""
    refs = (None, None) if loss_type == "simpo" else (c_ref, r_ref)
    kw = {}
    if loss_type in USES_SMOOTHING:
        kw["label_smoothing"] = label_smoothing
    if loss_type in LENGTH_NORMALISED:
        kw["chosen_lengths"], kw["rejected_lengths"] = len_c, len_r
    if loss_type == "simpo":
        kw["simpo_gamma"] = gamma
    return refs, kw


@functools.partial(jax.jit, static_argnames="loss_type")
def _pref(c, r, c_ref, r_ref, len_c, len_r, beta, label_smoothing, gamma, *, loss_type):
    refs, kw = _kwargs(loss_type, c_ref, r_ref, len_c, len_r, label_smoothing, gamma)
    return preference_loss(c, r, *refs, loss_type=loss_type, beta=beta, **kw)


@functools.partial(jax.jit, static_argnames="loss_type")
def _pref_grads(c, r, c_ref, r_ref, len_c, len_r, beta, label_smoothing, gamma, *, loss_type):
    """Gradients of sum(losses) w.r.t. (c, r, c_ref, r_ref)."""

    def total(c, r, c_ref, r_ref):
        return _pref(
            c, r, c_ref, r_ref, len_c, len_r, beta, label_smoothing, gamma, loss_type=loss_type
        ).losses.sum()

    return jax.grad(total, argnums=(0, 1, 2, 3))(c, r, c_ref, r_ref)


def _run(inputs, s, **overrides):
    c, r, cr, rr, lc, lr = inputs
    s = {**s, **overrides}
    return _pref(
        c, r, cr, rr, lc, lr, s["beta"], s["label_smoothing"], s["gamma"],
        loss_type=s["loss_type"],
    )  # fmt: skip


def _sig(beta, e=0.0):
    return {"loss_type": "sigmoid", "beta": beta, "label_smoothing": e, "gamma": 0.0}


# ----------------------------------------------------------------------------------------
# every loss type vs the reference
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@given(inputs=pairs(), data=st.data())
def test_matches_reference(loss_type, inputs, data):
    s = data.draw(loss_settings(loss_type))
    c, r, cr, rr, lc, lr = inputs
    out = _run(inputs, s)
    assert isinstance(out, PreferenceLoss)
    for x in out:
        assert x.shape == c.shape and x.dtype == jnp.float32
    losses, chosen, rejected = ref_preference(
        c, r, cr, rr, loss_type=s["loss_type"], beta=s["beta"],
        label_smoothing=s["label_smoothing"], gamma=s["gamma"], len_c=lc, len_r=lr,
    )  # fmt: skip
    np.testing.assert_allclose(out.chosen_rewards, chosen, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out.rejected_rewards, rejected, rtol=RTOL, atol=ATOL)
    # Errors of the float32 inputs' differences grow with the size of the log-probs.
    np.testing.assert_allclose(out.losses, losses, rtol=RTOL, atol=1e-4)


def test_by_hand():
    c, r = jnp.array([-2.0]), jnp.array([-5.0])
    cr, rr = jnp.array([-3.0]), jnp.array([-4.0])  # margin h = 1 - (-1) = 2
    out = preference_loss(c, r, cr, rr, beta=0.5)
    np.testing.assert_allclose(out.losses, [math.log1p(math.exp(-1.0))], rtol=1e-6)
    np.testing.assert_allclose(out.chosen_rewards, [0.5], rtol=1e-6)
    np.testing.assert_allclose(out.rejected_rewards, [-0.5], rtol=1e-6)
    hinge = preference_loss(c, r, cr, rr, loss_type="hinge", beta=0.25)
    np.testing.assert_allclose(hinge.losses, [0.5], rtol=1e-6)
    ipo = preference_loss(
        c, r, cr, rr, loss_type="ipo", beta=0.5, chosen_lengths=jnp.array([2]),
        rejected_lengths=jnp.array([1]),
    )  # fmt: skip
    # normalised margin: (-2 + 3) / 2 - (-5 + 4) / 1 = 1.5; target 1 / (2 * 0.5) = 1
    np.testing.assert_allclose(ipo.losses, [0.25], rtol=1e-6)
    simpo = preference_loss(
        c, r, loss_type="simpo", beta=2.0, simpo_gamma=1.0, chosen_lengths=jnp.array([4]),
        rejected_lengths=jnp.array([5]),
    )  # fmt: skip
    # u = 2 * (-0.5 - (-1)) - 1 = 0 -> log 2
    np.testing.assert_allclose(simpo.losses, [LOG2], rtol=1e-6)
    np.testing.assert_allclose(simpo.chosen_rewards, [-1.0], rtol=1e-6)


# ----------------------------------------------------------------------------------------
# identities
# ----------------------------------------------------------------------------------------


@given(pairs(), _floats(0.01, 2.0), _floats(0.0, 0.5))
def test_sigmoid_is_log2_when_policy_equals_reference(inputs, beta, e):
    c, r, _, _, lc, lr = inputs
    out = _run((c, r, c, r, lc, lr), _sig(beta, e))
    np.testing.assert_allclose(out.losses, LOG2, rtol=1e-6)
    np.testing.assert_array_equal(out.chosen_rewards, 0.0)
    np.testing.assert_array_equal(out.rejected_rewards, 0.0)


@given(pairs(), _floats(0.01, 2.0))
def test_robust_without_smoothing_is_sigmoid(inputs, beta):
    robust = _run(inputs, {"loss_type": "robust", "beta": beta, "label_smoothing": 0.0, "gamma": 0})
    sigmoid = _run(inputs, _sig(beta))
    for a, b in zip(robust, sigmoid, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _flip(inputs):
    """The same pairs with the preference label flipped (chosen <-> rejected)."""
    c, r, cr, rr, lc, lr = inputs
    return r, c, rr, cr, lr, lc


@given(pairs(), _floats(0.01, 2.0), _floats(0.0, 0.4))
def test_robust_dpo_is_unbiased_under_label_flips(inputs, beta, e):
    # A label observed correctly with prob 1 - e and flipped with prob e: the expected robust
    # loss equals the clean DPO loss, (1 - e) L_rob(h) + e L_rob(-h) = -log sigmoid(beta h).
    s = {"loss_type": "robust", "beta": beta, "label_smoothing": e, "gamma": 0.0}
    observed = np.asarray(_run(inputs, s).losses, np.float64)
    flipped = np.asarray(_run(_flip(inputs), s).losses, np.float64)
    clean = _run(inputs, _sig(beta)).losses
    scale = 1.0 / (1.0 - 2.0 * e)  # float32 errors of each term are amplified by this much
    np.testing.assert_allclose((1 - e) * observed + e * flipped, clean, rtol=RTOL * scale,
                               atol=1e-5 * scale)  # fmt: skip
    # The scalar formula, in float64, for the margins of these pairs.
    c, r, cr, rr, _, _ = inputs
    h = (c.astype(np.float64) - cr) - (r.astype(np.float64) - rr)

    def l_rob(x):
        return (-(1 - e) * _log_sigmoid(beta * x) + e * _log_sigmoid(-beta * x)) / (1 - 2 * e)

    np.testing.assert_allclose((1 - e) * l_rob(h) + e * l_rob(-h), -_log_sigmoid(beta * h),
                               rtol=1e-9, atol=1e-9)  # fmt: skip


@given(pairs(), _floats(0.01, 2.0), _floats(0.0, 0.5))
def test_cdpo_is_the_expected_dpo_loss_under_label_noise(inputs, beta, e):
    # cDPO: the DPO loss of a label that is right with prob 1 - e.
    smoothed = _run(inputs, _sig(beta, e)).losses
    clean = np.asarray(_run(inputs, _sig(beta)).losses, np.float64)
    flipped = np.asarray(_run(_flip(inputs), _sig(beta)).losses, np.float64)
    np.testing.assert_allclose(smoothed, (1 - e) * clean + e * flipped, rtol=RTOL, atol=1e-4)


@given(pairs(), _floats(0.05, 2.0), _floats(0.05, 1.0))
def test_ipo_minimum_at_half_inverse_beta(inputs, beta, delta):
    c, r, cr, rr, lc, lr = inputs
    # Choose the chosen log-probs so that the normalised margin is exactly 1 / (2 beta).
    target = 1.0 / (2.0 * beta)
    base = (cr / lc) + (r / lr - rr / lr)  # normalised chosen log-prob giving margin 0
    s = {"loss_type": "ipo", "beta": beta, "label_smoothing": 0.0, "gamma": 0.0}
    c_at = ((base + target) * lc).astype(np.float32)
    at_min = _run((c_at, r, cr, rr, lc, lr), s)
    np.testing.assert_allclose(at_min.losses, 0.0, atol=1e-6)
    # the implicit reward margin is beta * 1 / (2 beta) = 1/2 there
    np.testing.assert_allclose(
        at_min.chosen_rewards - at_min.rejected_rewards, 0.5, rtol=1e-3, atol=1e-4
    )
    for sign in (-1.0, 1.0):
        c_off = ((base + target + sign * delta) * lc).astype(np.float32)
        off = _run((c_off, r, cr, rr, lc, lr), s).losses
        np.testing.assert_allclose(off, delta**2, rtol=1e-2, atol=1e-6)
        assert np.all(np.asarray(off) > np.asarray(at_min.losses))


@given(pairs(), _floats(0.01, 2.0), _floats(0.0, 0.5), st.integers(2, 4))
def test_length_normalised_losses_are_invariant_to_scaling_log_probs_and_lengths(
    inputs, beta, e, k
):
    c, r, cr, rr, lc, lr = inputs
    scaled = (c * k, r * k, cr * k, rr * k, lc * k, lr * k)
    for loss_type in LENGTH_NORMALISED:
        smooth = e if loss_type == "simpo" else 0.0
        s = {"loss_type": loss_type, "beta": beta, "label_smoothing": smooth, "gamma": 0.3}
        a, b = _run(inputs, s), _run(scaled, s)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=1e-4)


@given(pairs(), _floats(0.01, 2.0), _floats(0.0, 0.5))
def test_simpo_is_dpo_on_length_normalised_log_probs_without_reference(inputs, beta, e):
    c, r, _, _, lc, lr = inputs
    simpo = {"loss_type": "simpo", "beta": beta, "label_smoothing": e, "gamma": 0.0}
    out = _run(inputs, simpo)
    c_n, r_n = (c / lc).astype(np.float32), (r / lr).astype(np.float32)
    zeros = np.zeros_like(c)
    dpo = _run((c_n, r_n, zeros, zeros, lc, lr), _sig(beta, e))
    for x, y in zip(out, dpo, strict=True):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)
    # The target margin gamma shifts the logit: u = beta * margin - gamma.
    gamma = 0.7
    shifted = _run(inputs, {**simpo, "gamma": gamma}).losses
    margin = beta * (c_n.astype(np.float64) - r_n)
    expected = -(1 - e) * _log_sigmoid(margin - gamma) - e * _log_sigmoid(gamma - margin)
    np.testing.assert_allclose(shifted, expected, rtol=RTOL, atol=ATOL)


def test_simpo_depends_on_lengths_and_ignores_the_reference_arguments():
    c, r = jnp.array([-6.0, -6.0]), jnp.array([-6.0, -6.0])
    short = preference_loss(
        c, r, loss_type="simpo", chosen_lengths=jnp.array([2, 3]),
        rejected_lengths=jnp.array([6, 3]),
    )  # fmt: skip
    long = preference_loss(
        c, r, loss_type="simpo", chosen_lengths=jnp.array([6, 3]),
        rejected_lengths=jnp.array([2, 3]),
    )  # fmt: skip
    # the same total log-prob over fewer tokens is a lower per-token likelihood
    assert short.losses[0] > long.losses[0]
    assert short.chosen_rewards[0] < long.chosen_rewards[0]
    np.testing.assert_allclose(short.losses[1], long.losses[1])


@given(pairs(), _floats(0.01, 2.0))
def test_dpo_gradient_pushes_chosen_up_and_rejected_down(inputs, beta):
    c, r, cr, rr, lc, lr = inputs
    g_c, g_r, g_cr, g_rr = _pref_grads(c, r, cr, rr, lc, lr, beta, 0.0, 0.0, loss_type="sigmoid")
    h = (c.astype(np.float64) - cr) - (r.astype(np.float64) - rr)
    # dL/dc = -beta sigma(-beta h) = -dL/dr
    expected = -beta / (1.0 + np.exp(beta * h))
    np.testing.assert_allclose(g_c, expected, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(g_r, -expected, rtol=1e-3, atol=1e-7)
    signif = np.abs(expected) > 1e-30  # the float32 gradient is not flushed to zero
    assert np.all(np.asarray(g_c)[signif] < 0) and np.all(np.asarray(g_r)[signif] > 0)
    # The reference is not trained.
    np.testing.assert_array_equal(g_cr, 0.0)
    np.testing.assert_array_equal(g_rr, 0.0)


@given(pairs(), _floats(0.01, 2.0), _floats(0.0, 0.5))
def test_cdpo_gradient(inputs, beta, e):
    c, r, cr, rr, lc, lr = inputs
    g_c, g_r, _, _ = _pref_grads(c, r, cr, rr, lc, lr, beta, e, 0.0, loss_type="sigmoid")
    h = (c.astype(np.float64) - cr) - (r.astype(np.float64) - rr)
    p = 1.0 / (1.0 + np.exp(-beta * h))  # Bradley-Terry probability that chosen wins
    # dL/dc = -beta ((1 - e) (1 - p) - e p) = -beta (1 - e - p)
    expected = -beta * (1.0 - e - p)
    np.testing.assert_allclose(g_c, expected, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(g_r, -expected, rtol=1e-3, atol=1e-6)


def test_hinge_gradient_vanishes_beyond_the_margin():
    c, r = jnp.array([-1.0, -1.0]), jnp.array([-2.0, -20.0])
    ref = jnp.array([-1.0, -1.0])
    g = jax.grad(
        lambda x: preference_loss(x, r, ref, ref, loss_type="hinge", beta=0.5).losses.sum()
    )(c)
    # margins 1 and 19: 1 - 0.5 h = 0.5 > 0 (gradient -beta) and < 0 (no gradient)
    np.testing.assert_allclose(g, [-0.5, 0.0])


# ----------------------------------------------------------------------------------------
# composition
# ----------------------------------------------------------------------------------------

_C = jnp.array([-5.0, -12.0, -3.5])
_R = jnp.array([-6.5, -10.0, -8.0])
_CR = jnp.array([-5.5, -11.0, -4.0])
_RR = jnp.array([-6.0, -11.5, -7.0])
_LC = jnp.array([4, 9, 3])
_LR = jnp.array([5, 7, 8])


def _eager(loss_type, c=_C, r=_R, beta=0.3, e=0.1):
    refs, kw = _kwargs(loss_type, _CR, _RR, _LC, _LR, e, 0.4)
    return preference_loss(c, r, *refs, loss_type=loss_type, beta=beta, **kw)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_jit_matches_eager(loss_type):
    eager = _eager(loss_type)
    jitted = jax.jit(_eager, static_argnums=0)(loss_type)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_vmap_over_beta_and_over_batches(loss_type):
    betas = jnp.array([0.05, 0.3, 1.5])
    swept = jax.vmap(lambda b: _eager(loss_type, beta=b))(betas)
    for k, b in enumerate([0.05, 0.3, 1.5]):
        for x, y in zip(swept, _eager(loss_type, beta=b), strict=True):
            np.testing.assert_allclose(x[k], y, rtol=1e-6, atol=1e-7)
    assert not np.allclose(swept.losses[0], swept.losses[2])
    cs, rs = jnp.stack([_C, _C - 1.0]), jnp.stack([_R, _R + 2.0])
    batched = jax.vmap(lambda c, r: _eager(loss_type, c=c, r=r))(cs, rs)
    for k in range(2):
        for x, y in zip(batched, _eager(loss_type, c=cs[k], r=rs[k]), strict=True):
            np.testing.assert_allclose(x[k], y, rtol=1e-6, atol=1e-7)


def test_vmap_over_label_smoothing():
    es = jnp.array([0.0, 0.1, 0.3])
    for loss_type in ("sigmoid", "robust", "simpo"):
        swept = jax.vmap(lambda e, lt=loss_type: _eager(lt, e=e).losses)(es)
        for k, e in enumerate([0.0, 0.1, 0.3]):
            np.testing.assert_allclose(swept[k], _eager(loss_type, e=e).losses, rtol=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_check_grads(loss_type):
    # hinge: 1 - beta h is far from its kink at 0 for these margins (h = 1, -2.5, 1.5 with
    # beta 0.3 give 0.7, 1.75, 0.55).
    def f(c, r):
        return _eager(loss_type, c=c, r=r).losses

    check_grads(f, (_C, _R), order=1, modes=("fwd", "rev"), eps=1e-3, atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------


def test_missing_reference_names_the_argument():
    for loss_type in ("sigmoid", "robust", "hinge", "ipo"):
        with pytest.raises(ValueError, match="ref_chosen_log_probs"):
            preference_loss(_C, _R, loss_type=loss_type, chosen_lengths=_LC, rejected_lengths=_LR)
        with pytest.raises(ValueError, match="ref_rejected_log_probs"):
            preference_loss(
                _C, _R, _CR, loss_type=loss_type, chosen_lengths=_LC, rejected_lengths=_LR
            )


def test_reference_given_to_simpo():
    with pytest.raises(ValueError, match="ref_chosen_log_probs"):
        preference_loss(
            _C, _R, _CR, _RR, loss_type="simpo", chosen_lengths=_LC, rejected_lengths=_LR
        )
    with pytest.raises(ValueError, match="simpo"):
        preference_loss(
            _C, _R, None, _RR, loss_type="simpo", chosen_lengths=_LC, rejected_lengths=_LR
        )


@pytest.mark.parametrize("loss_type", LENGTH_NORMALISED)
def test_lengths_required_by_length_normalised_types(loss_type):
    refs = (None, None) if loss_type == "simpo" else (_CR, _RR)
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss(_C, _R, *refs, loss_type=loss_type)
    with pytest.raises(ValueError, match="rejected_lengths"):
        preference_loss(_C, _R, *refs, loss_type=loss_type, chosen_lengths=_LC)


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "hinge"])
def test_lengths_rejected_by_other_types(loss_type):
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss(_C, _R, _CR, _RR, loss_type=loss_type, chosen_lengths=_LC)
    with pytest.raises(ValueError, match="rejected_lengths"):
        preference_loss(_C, _R, _CR, _RR, loss_type=loss_type, rejected_lengths=_LR)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing"),
        (
            {
                "loss_type": "ipo",
                "label_smoothing": 0.1,
                "chosen_lengths": _LC,
                "rejected_lengths": _LR,
            },
            "label_smoothing",
        ),  # fmt: skip
        ({"loss_type": "robust", "label_smoothing": 0.5}, "label_smoothing"),
        ({"loss_type": "sigmoid", "label_smoothing": 0.51}, "label_smoothing"),
        ({"loss_type": "sigmoid", "label_smoothing": -0.1}, "label_smoothing"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"beta": jnp.array([0.1, 0.2])}, "beta"),
        ({"loss_type": "dpo"}, "loss_type"),
        ({"loss_type": "Sigmoid"}, "loss_type"),
    ],
)
def test_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        preference_loss(_C, _R, _CR, _RR, **kwargs)


def test_unknown_loss_type_lists_the_options():
    with pytest.raises(ValueError, match="'sigmoid', 'robust', 'hinge', 'ipo', 'simpo'"):
        preference_loss(_C, _R, _CR, _RR, loss_type="kto")


def test_label_smoothing_below_one_half_is_accepted_for_robust():
    out = preference_loss(_C, _R, _CR, _RR, loss_type="robust", label_smoothing=0.49)
    assert np.all(np.isfinite(out.losses))
    # 0.5 is allowed for the smoothed sigmoid, where the loss no longer depends on the label.
    half = preference_loss(_C, _R, _CR, _RR, label_smoothing=0.5).losses
    flipped = preference_loss(_R, _C, _RR, _CR, label_smoothing=0.5).losses
    np.testing.assert_allclose(half, flipped, rtol=1e-6)


def test_bad_shapes_and_dtypes():
    x2 = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="chosen_log_probs"):
        preference_loss(x2, x2, x2, x2)
    with pytest.raises(ValueError, match="rejected_log_probs"):
        preference_loss(_C, jnp.zeros((3, 1)), _CR, _RR)
    with pytest.raises(ValueError, match="rejected_log_probs"):
        preference_loss(_C, jnp.zeros(4), _CR, _RR)
    with pytest.raises(ValueError, match="ref_chosen_log_probs"):
        preference_loss(_C, _R, jnp.zeros(2), _RR)
    with pytest.raises(ValueError, match="ref_rejected_log_probs"):
        preference_loss(_C, _R, _CR, jnp.zeros(4))
    with pytest.raises(ValueError, match="chosen_log_probs"):
        preference_loss(jnp.float32(1.0), jnp.float32(1.0), jnp.float32(1.0), jnp.float32(1.0))
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss(
            _C, _R, _CR, _RR, loss_type="ipo", chosen_lengths=jnp.array([1, 2]),
            rejected_lengths=_LR,
        )  # fmt: skip
    with pytest.raises(ValueError, match="rejected_lengths"):
        preference_loss(
            _C, _R, loss_type="simpo", chosen_lengths=_LC, rejected_lengths=jnp.ones((3, 1)),
        )  # fmt: skip
    with pytest.raises(TypeError, match="chosen_log_probs"):
        preference_loss(jnp.array([1, 2, 3]), _R, _CR, _RR)
    with pytest.raises(TypeError, match="ref_rejected_log_probs"):
        preference_loss(_C, _R, _CR, jnp.array([1, 2, 3]))


# ----------------------------------------------------------------------------------------
# the registry of loss types and check_loss_settings
# ----------------------------------------------------------------------------------------


def test_registry_order_flags_and_public_name():
    assert list(LOSS_TYPES) == ["sigmoid", "robust", "hinge", "ipo", "simpo"]
    assert ops.PREFERENCE_LOSS_TYPES is LOSS_TYPES
    assert tuple(ops.PREFERENCE_LOSS_TYPES) == ("sigmoid", "robust", "hinge", "ipo", "simpo")
    for name, spec in LOSS_TYPES.items():
        assert isinstance(spec, PreferenceLossType) and spec.name == name
        assert spec.uses_label_smoothing == (name in USES_SMOOTHING)
        assert spec.length_normalized == (name in LENGTH_NORMALISED)
        assert spec.uses_reference == (name != "simpo")
    with pytest.raises(TypeError):
        LOSS_TYPES["new"] = LOSS_TYPES["sigmoid"]  # read-only: add entries in the module
    with pytest.raises(AttributeError):
        LOSS_TYPES["hinge"].uses_reference = False  # frozen


def test_docstring_lists_every_loss_type():
    doc = preference_loss.__doc__
    assert "<loss types>" not in doc
    for name, spec in LOSS_TYPES.items():
        assert f"* {name}: " in doc
        assert spec.paper.split(" (")[0] in " ".join(doc.split())


@pytest.mark.parametrize(
    ("loss_type", "accepted", "refused"),
    [
        ("sigmoid", [0.0, 0.25, 0.5], [-0.1, 0.51, float("nan")]),
        ("simpo", [0.0, 0.5], [0.6, -0.01]),
        ("robust", [0.0, 0.49], [0.5, 0.7, -0.1]),
        ("hinge", [0.0, 0], [0.1, -0.1, 0.5]),
        ("ipo", [0.0], [0.2]),
    ],
)
def test_check_loss_settings_ranges(loss_type, accepted, refused):
    for e in accepted:
        assert check_loss_settings(loss_type, e) is LOSS_TYPES[loss_type]
    for e in refused:
        with pytest.raises(ValueError, match="`label_smoothing`"):
            check_loss_settings(loss_type, e)


def test_check_loss_settings_messages():
    with pytest.raises(ValueError, match=r"`label_smoothing` must lie in \[0, 0.5\), got 0.5"):
        check_loss_settings("robust", 0.5)
    with pytest.raises(ValueError, match=r"`label_smoothing` must lie in \[0, 0.5\], got 0.6"):
        check_loss_settings("sigmoid", 0.6)
    with pytest.raises(
        ValueError, match="`label_smoothing` is not used by loss_type 'hinge'; leave it 0, got 0.1"
    ):
        check_loss_settings("hinge", 0.1)
    with pytest.raises(
        ValueError, match="unknown `loss_type` 'kto'; expected one of 'sigmoid', 'robust'"
    ):
        check_loss_settings("kto", 0.0)
    with pytest.raises(ValueError, match=r"`label_smoothing` must be a scalar"):
        check_loss_settings("sigmoid", jnp.array([0.1, 0.2]))
    with pytest.raises(TypeError, match="`label_smoothing` must be a scalar number"):
        check_loss_settings("ipo", "0")
    assert check_loss_settings("sigmoid").name == "sigmoid"  # label_smoothing defaults to 0


def test_check_loss_settings_under_jit():
    # A traced smoothing is accepted where the loss uses it; where it must be 0 it cannot
    # be checked, so it is refused.
    assert jax.jit(lambda e: check_loss_settings("robust", e) and e)(0.1) == np.float32(0.1)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda e: check_loss_settings("ipo", e) and e)(0.0)


def test_a_new_registry_entry_is_a_new_loss_type(monkeypatch):
    """`preference_loss` reads everything about a loss type from its registry entry."""

    def exp_loss(chosen, rejected, beta, e, simpo_gamma):
        return jnp.exp(-beta * (chosen - rejected))

    new = PreferenceLossType(
        "exp", exp_loss, formula="`exp(-beta h)`", paper="a test", length_normalized=True
    )
    monkeypatch.setattr(preference, "LOSS_TYPES", {**LOSS_TYPES, "exp": new})
    out = preference_loss(_C, _R, _CR, _RR, loss_type="exp", beta=0.3, chosen_lengths=_LC,
                          rejected_lengths=_LR)  # fmt: skip
    c, r, cr, rr = (np.asarray(x, np.float64) for x in (_C, _R, _CR, _RR))
    lc, lr = np.asarray(_LC, np.float64), np.asarray(_LR, np.float64)
    h = (c - cr) / lc - (r - rr) / lr
    np.testing.assert_allclose(out.losses, np.exp(-0.3 * h), rtol=1e-6)
    np.testing.assert_allclose(out.chosen_rewards, 0.3 * (c - cr) / lc, rtol=1e-6)
    with pytest.raises(ValueError, match="chosen_lengths"):  # its flags are enforced
        preference_loss(_C, _R, _CR, _RR, loss_type="exp")
    with pytest.raises(ValueError, match="not used by loss_type 'exp'"):
        preference_loss(_C, _R, _CR, _RR, loss_type="exp", label_smoothing=0.1,
                        chosen_lengths=_LC, rejected_lengths=_LR)  # fmt: skip
