"""Tests of rlgen/ops/policy.py: importance ratios, PPO/GSPO clipped surrogate, value loss.

Float64 NumPy references (plain loops) checked against the float32 kernels over random
shapes, masks and clip settings; identities (ratio 1 before an update, the policy
gradient inside the clip range and a zero gradient outside it, GSPO's sequence gradient);
a cross-check with rlax; composition under jit/vmap/grad; and bad input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from rlgen.ops.policy import (
    MAX_LOG_RATIO,
    ClippedSurrogate,
    clipped_surrogate_loss,
    compute_clipped_surrogate_loss,
    importance_log_ratio,
    value_loss,
)

RTOL, ATOL = 1e-4, 1e-5

# A fixed [2, 4] case for the deterministic tests: every token ratio is >= 0.03 away from
# the clip edges 0.8 and 1.2 and every row ratio is inside them.
_LP = jnp.array([[-1.0, -0.5, -2.0, -0.1], [-0.3, -1.5, -0.7, -2.5]])
_OLD = _LP + jnp.array([[0.05, -0.4, 0.5, 0.01], [-0.03, 0.3, -0.6, 0.02]])
_ADV = jnp.array([[1.0, -0.5, 2.0, -1.0], [0.3, 1.5, -0.7, 0.25]])
_MASK = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
BOUNDARY_TOL = 1e-4  # relative distance of a ratio to a clip edge treated as "on the edge"


# ----------------------------------------------------------------------------------------
# float64 NumPy references
# ----------------------------------------------------------------------------------------


def ref_log_ratio(lp, old, mask, level):
    lp = np.asarray(lp, np.float64)
    old = np.asarray(old, np.float64)
    m = np.ones(lp.shape, bool) if mask is None else np.asarray(mask) > 0
    out = np.zeros(lp.shape)
    if level == "token":
        for idx in np.ndindex(lp.shape):
            if m[idx]:
                out[idx] = lp[idx] - old[idx]
        return out
    for i in range(lp.shape[0]):
        diffs = [lp[i, t] - old[i, t] for t in range(lp.shape[1]) if m[i, t]]
        s = sum(diffs) / len(diffs) if diffs else 0.0
        for t in range(lp.shape[1]):
            if m[i, t]:
                out[i, t] = s
    return out


def ref_surrogate(
    lp, old, adv, mask, *, eps_low, eps_high, dual_clip, level, max_log_ratio=MAX_LOG_RATIO
):
    """Returns (loss, ratio, clipped, near_edge) in float64; near_edge flags elements whose
    ratio sits on a clip edge, where the indicator and the gradient are ambiguous."""
    eps_high = eps_low if eps_high is None else eps_high
    lp = np.asarray(lp, np.float64)
    shape = lp.shape
    adv = np.asarray(adv, np.float64)
    if adv.shape != shape:
        adv = np.repeat(adv[:, None], shape[1], axis=1)
    m = np.ones(shape, bool) if mask is None else np.asarray(mask) > 0
    log_ratio = ref_log_ratio(lp, old, mask, level)
    loss = np.zeros(shape)
    ratio = np.zeros(shape)
    clipped = np.zeros(shape)
    near = np.zeros(shape, bool)
    edges = [1.0 - eps_low, 1.0 + eps_high] + ([dual_clip] if dual_clip is not None else [])
    for idx in np.ndindex(shape):
        if not m[idx]:
            continue
        r = float(np.exp(min(max(log_ratio[idx], -max_log_ratio), max_log_ratio)))
        a = adv[idx]
        # PPO's objective, written as the textbook min of the two surrogates.
        objective = min(r * a, min(max(r, 1.0 - eps_low), 1.0 + eps_high) * a)
        is_clipped = (a > 0 and r > 1.0 + eps_high) or (a < 0 and r < 1.0 - eps_low)
        if dual_clip is not None and a < 0 and objective < dual_clip * a:
            objective = dual_clip * a  # dual clip: objective >= c * A for A < 0
            is_clipped = True
        loss[idx] = -objective
        ratio[idx] = r
        clipped[idx] = float(is_clipped)
        near[idx] = any(abs(r - e) <= BOUNDARY_TOL * max(1.0, abs(e)) for e in edges)
        near[idx] |= abs(abs(log_ratio[idx]) - max_log_ratio) <= BOUNDARY_TOL
    return loss, ratio, clipped, near


def ref_value_loss(values, returns, old_values=None, clip_epsilon=None):
    v = np.asarray(values, np.float64)
    out = np.zeros(v.shape)
    for idx in np.ndindex(v.shape):
        target = float(returns[idx])
        sq = (v[idx] - target) ** 2
        if clip_epsilon is not None:
            old = float(old_values[idx])
            v_clip = old + min(max(v[idx] - old, -clip_epsilon), clip_epsilon)
            sq = max(sq, (v_clip - target) ** 2)
        out[idx] = 0.5 * sq
    return out


# ----------------------------------------------------------------------------------------
# strategies and jitted wrappers
# ----------------------------------------------------------------------------------------

# A few fixed shapes (incl. the degenerate 1 x 1). Compilation dominates the cost of these
# tests (an eager call compiles every primitive once per shape), so the hypothesis tests go
# through the jitted wrappers below, compiled once per shape and static option.
SHAPES = st.sampled_from([(1, 1), (3, 7), (5, 12)])
# A dual-clip constant so large it never binds: lets the wrappers take `dual_clip` as a
# traced number. `test_dual_clip_none_equals_a_huge_constant` ties it to `dual_clip=None`.
NO_DUAL = 1e30


def _floats(lo, hi):
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    return st.floats(lo, hi, width=32, allow_subnormal=False)


@st.composite
def surrogate_inputs(draw, per_sequence=None):
    b, t = draw(SHAPES)
    old = draw(hnp.arrays(np.float32, (b, t), elements=_floats(-4.0, 0.0)))
    delta = draw(hnp.arrays(np.float32, (b, t), elements=_floats(-2.0, 2.0)))
    lp = (old + delta).astype(np.float32)
    if per_sequence is None:
        per_sequence = draw(st.booleans())
    adv_shape = (b,) if per_sequence else (b, t)
    adv = draw(hnp.arrays(np.float32, adv_shape, elements=_floats(-2.0, 2.0)))
    if draw(st.booleans()):
        mask = np.ones((b, t), bool)
    else:
        mask = draw(hnp.arrays(np.bool_, (b, t)))
    return lp, old, adv, mask


clip_settings = st.fixed_dictionaries(
    {
        "eps_low": _floats(0.0, 0.5),
        "eps_high": _floats(0.0, 0.5),
        "dual_clip": st.none() | _floats(1.1, 4.0),
        "level": st.sampled_from(["token", "sequence"]),
    }
)


@functools.partial(jax.jit, static_argnames="level")
def _surrogate(lp, old, adv, mask, eps_low, eps_high, dual, max_log_ratio, *, level):
    return clipped_surrogate_loss(
        lp, old, adv, mask, epsilon_low=eps_low, epsilon_high=eps_high, dual_clip=dual,
        level=level, max_log_ratio=max_log_ratio,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames="level")
def _surrogate_grad(lp, old, adv, mask, row_weights, eps_low, eps_high, dual, *, level):
    """Gradient w.r.t. `lp` of `sum_i w_i sum_t loss_{i,t}`."""

    def objective(x):
        loss = clipped_surrogate_loss(
            x, old, adv, mask, epsilon_low=eps_low, epsilon_high=eps_high, dual_clip=dual,
            level=level,
        ).loss  # fmt: skip
        return jnp.sum(loss.sum(axis=1) * row_weights)

    return jax.grad(objective)(lp)


def _call(lp, old, adv, mask, s, max_log_ratio=MAX_LOG_RATIO):
    dual = NO_DUAL if s["dual_clip"] is None else s["dual_clip"]
    return _surrogate(
        lp, old, adv, mask, s["eps_low"], s["eps_high"], dual, max_log_ratio, level=s["level"]
    )


def _call_grad(lp, old, adv, mask, s, row_weights=None):
    dual = NO_DUAL if s["dual_clip"] is None else s["dual_clip"]
    w = np.ones(lp.shape[0], np.float32) if row_weights is None else row_weights
    grad = _surrogate_grad(
        lp, old, adv, mask, w, s["eps_low"], s["eps_high"], dual, level=s["level"]
    )
    return np.asarray(grad)


def _ref(lp, old, adv, mask, s, **kw):
    return ref_surrogate(
        lp, old, adv, mask, eps_low=s["eps_low"], eps_high=s["eps_high"],
        dual_clip=s["dual_clip"], level=s["level"], **kw,
    )  # fmt: skip


def _full_adv(adv, shape):
    return np.broadcast_to(adv[:, None], shape) if adv.ndim == 1 else adv


_log_ratio = jax.jit(importance_log_ratio, static_argnames="level")
_compute = jax.jit(compute_clipped_surrogate_loss)
_rlax_loss = jax.jit(rlax.clipped_surrogate_pg_loss)
_value_loss = jax.jit(value_loss)


# ----------------------------------------------------------------------------------------
# importance_log_ratio
# ----------------------------------------------------------------------------------------


@given(surrogate_inputs(), st.sampled_from(["token", "sequence"]))
def test_importance_log_ratio_matches_reference(inputs, level):
    lp, old, _, mask = inputs
    got = _log_ratio(lp, old, mask, level=level)
    assert got.shape == lp.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_log_ratio(lp, old, mask, level), rtol=RTOL, atol=ATOL)


def test_importance_log_ratio_by_hand_and_default_mask():
    lp = jnp.array([[0.0, -1.0, -3.0], [-2.0, -2.0, -2.0]])
    old = jnp.array([[-1.0, -1.0, -1.0], [-1.0, -3.0, -2.5]])
    np.testing.assert_allclose(importance_log_ratio(lp, old), lp - old)
    seq = importance_log_ratio(lp, old, jnp.array([[1, 1, 0], [1, 1, 1]]), level="sequence")
    np.testing.assert_allclose(seq, [[0.5, 0.5, 0.0], [0.5 / 3, 0.5 / 3, 0.5 / 3]], rtol=1e-6)
    np.testing.assert_allclose(
        importance_log_ratio(lp, old, level="sequence"),
        importance_log_ratio(lp, old, jnp.ones((2, 3)), level="sequence"),
    )


def test_importance_log_ratio_token_level_accepts_any_shape():
    lp = jnp.array([[[0.0, -1.0], [-2.0, -0.5]]])
    old = jnp.full(lp.shape, -1.0)
    np.testing.assert_allclose(importance_log_ratio(lp, old), np.asarray(lp) + 1.0)


def test_importance_log_ratio_gradient_stops_at_old_log_probs():
    lp, old = jnp.array([[-1.0, -2.0, -0.5]]), jnp.array([[-1.5, -1.0, -0.7]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    for level in ("token", "sequence"):
        g_old = jax.grad(lambda o, lv=level: importance_log_ratio(lp, o, mask, level=lv).sum())(old)
        np.testing.assert_array_equal(g_old, 0.0)
        g_lp = jax.grad(lambda x, lv=level: importance_log_ratio(x, old, mask, level=lv).sum())(lp)
        # Each valid token's log-ratio moves one-for-one with its own log-prob (GSPO's
        # straight-through form), masked tokens not at all.
        np.testing.assert_allclose(g_lp, [[1.0, 1.0, 0.0]])


def test_masked_log_probs_may_be_non_finite():
    lp = jnp.array([[-1.0, -jnp.inf], [-0.5, jnp.nan]])
    old = jnp.array([[-1.5, -jnp.inf], [-0.5, jnp.nan]])
    mask = jnp.array([[1, 0], [1, 0]])
    for level in ("token", "sequence"):
        out = clipped_surrogate_loss(lp, old, jnp.array([1.0, -1.0]), mask, level=level)
        assert np.all(np.isfinite(out.loss)) and np.all(np.isfinite(out.ratio))
        grad = jax.grad(
            lambda x, lv=level: clipped_surrogate_loss(
                x, old, jnp.ones(2), mask, level=lv
            ).loss.sum()
        )(lp)
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(np.asarray(grad)[:, 1], 0.0)


# ----------------------------------------------------------------------------------------
# clipped_surrogate_loss vs the reference
# ----------------------------------------------------------------------------------------


@given(surrogate_inputs(), clip_settings)
def test_clipped_surrogate_matches_reference(inputs, s):
    lp, old, adv, mask = inputs
    out = _call(lp, old, adv, mask, s)
    assert isinstance(out, ClippedSurrogate)
    for x in out:
        assert x.shape == lp.shape and x.dtype == jnp.float32
    loss, ratio, clipped, near = _ref(lp, old, adv, mask, s)
    np.testing.assert_allclose(out.ratio, ratio, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out.loss, loss, rtol=RTOL, atol=ATOL)
    away = ~near
    np.testing.assert_array_equal(np.asarray(out.clipped)[away], clipped[away])


@given(surrogate_inputs(), _floats(0.05, 1.5), st.sampled_from(["token", "sequence"]))
def test_clipped_surrogate_clamps_log_ratio(inputs, max_log_ratio, level):
    lp, old, adv, mask = inputs
    s = {"eps_low": 0.2, "eps_high": 0.3, "dual_clip": None, "level": level}
    out = _call(lp, old, adv, mask, s, max_log_ratio=max_log_ratio)
    loss, ratio, _, _ = _ref(lp, old, adv, mask, s, max_log_ratio=max_log_ratio)
    np.testing.assert_allclose(out.ratio, ratio, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out.loss, loss, rtol=RTOL, atol=ATOL)
    r = np.asarray(out.ratio)[mask]
    assert np.all(r <= np.exp(max_log_ratio) * (1 + 1e-6))
    assert np.all(r >= np.exp(-max_log_ratio) * (1 - 1e-6))


def test_asymmetric_clipping_by_hand():
    # ratios 0.5, 0.7, 0.9, 1.1, 1.25, 1.4 with eps_low=0.2, eps_high=0.28 (DAPO clip-higher)
    r = np.array([0.5, 0.7, 0.9, 1.1, 1.25, 1.4], np.float32)
    lp = jnp.log(jnp.asarray(r))
    old = jnp.zeros_like(lp)
    pos = clipped_surrogate_loss(lp, old, jnp.ones(6), epsilon_low=0.2, epsilon_high=0.28)
    np.testing.assert_allclose(pos.loss, -np.minimum(r, 1.28), rtol=1e-6)
    np.testing.assert_array_equal(pos.clipped, [0, 0, 0, 0, 0, 1])
    neg = clipped_surrogate_loss(lp, old, -jnp.ones(6), epsilon_low=0.2, epsilon_high=0.28)
    np.testing.assert_allclose(neg.loss, np.maximum(r, 0.8), rtol=1e-6)
    np.testing.assert_array_equal(neg.clipped, [1, 1, 0, 0, 0, 0])
    dual = clipped_surrogate_loss(
        lp, old, -jnp.ones(6), epsilon_low=0.2, epsilon_high=0.28, dual_clip=1.2
    )
    np.testing.assert_allclose(dual.loss, np.minimum(np.maximum(r, 0.8), 1.2), rtol=1e-6)
    np.testing.assert_array_equal(dual.clipped, [1, 1, 0, 0, 1, 1])
    # epsilon_high defaults to epsilon_low (symmetric PPO clipping)
    sym = clipped_surrogate_loss(lp, old, jnp.ones(6), epsilon_low=0.2)
    np.testing.assert_allclose(sym.loss, -np.minimum(r, 1.2), rtol=1e-6)
    np.testing.assert_array_equal(sym.clipped, [0, 0, 0, 0, 1, 1])


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_dual_clip_none_equals_a_huge_constant_and_mask_none_equals_ones(level):
    a = clipped_surrogate_loss(_LP, _OLD, _ADV, level=level)
    b = clipped_surrogate_loss(_LP, _OLD, _ADV, jnp.ones(_LP.shape), dual_clip=NO_DUAL, level=level)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------------
# identities
# ----------------------------------------------------------------------------------------


@given(surrogate_inputs(), clip_settings)
def test_ratio_is_one_before_the_first_update(inputs, s):
    _, old, adv, mask = inputs
    out = _call(old, old, adv, mask, s)
    adv_full = _full_adv(adv, old.shape)
    np.testing.assert_array_equal(out.ratio, mask.astype(np.float32))
    np.testing.assert_array_equal(out.loss, np.where(mask, -adv_full, 0.0))
    np.testing.assert_array_equal(out.clipped, 0.0)
    # ... and the gradient there is the plain policy gradient, -A per valid token (for a
    # non-degenerate clip range: with epsilon 0 the loss has a kink at ratio 1).
    if min(s["eps_low"], s["eps_high"]) < 1e-3:
        return
    grad = _call_grad(old, old, adv, mask, s)
    np.testing.assert_allclose(grad, np.where(mask, -adv_full, 0.0), rtol=1e-6, atol=1e-7)


@given(surrogate_inputs(), clip_settings.filter(lambda s: s["level"] == "token"))
def test_token_gradient_is_policy_gradient_inside_and_zero_where_clipped(inputs, s):
    lp, old, adv, mask = inputs
    out = _call(lp, old, adv, mask, s)
    grad = _call_grad(lp, old, adv, mask, s)
    _, _, ref_clipped, near = _ref(lp, old, adv, mask, s)
    clipped = np.asarray(out.clipped) > 0
    away = ~near
    # Exactly zero wherever the kernel reports clipping (and on masked elements).
    np.testing.assert_array_equal(grad[(clipped | ~mask) & away], 0.0)
    # The policy gradient scaled by the ratio elsewhere.
    inside = ~clipped & mask & away
    expected = -np.asarray(out.ratio) * _full_adv(adv, lp.shape)
    np.testing.assert_allclose(grad[inside], expected[inside], rtol=RTOL, atol=ATOL)
    # And the clipped indicator is the reference's (so the zero set is the right one).
    np.testing.assert_array_equal(clipped[away], ref_clipped[away] > 0)


@jax.jit
def _gspo_objective_grad(lp, old, adv, mask, eps_low, eps_high):
    """Gradient of GSPO's sequence-level objective written directly:
    `-sum_i min(s_i A_i, clip(s_i) A_i)`, `s_i = exp(mean over valid t of log-ratio)`."""

    def objective(x):
        m = mask.astype(jnp.float32)
        length = jnp.maximum(m.sum(axis=1), 1.0)
        seq = jnp.exp(jnp.sum(m * (x - old), axis=1) / length)
        obj = jnp.minimum(seq * adv, jnp.clip(seq, 1.0 - eps_low, 1.0 + eps_high) * adv)
        return -jnp.sum(jnp.where(m.sum(axis=1) > 0, obj, 0.0))

    return jax.grad(objective)(lp)


@given(surrogate_inputs(per_sequence=True), _floats(0.0, 0.5), _floats(0.0, 0.5))
def test_gspo_sequence_ratio_and_gradient(inputs, eps_low, eps_high):
    lp, old, adv, mask = inputs
    s = {"eps_low": eps_low, "eps_high": eps_high, "dual_clip": None, "level": "sequence"}
    out = _call(lp, old, adv, mask, s)
    lengths = mask.sum(axis=1)
    seq_ratio = np.ones(lp.shape[0])
    for i in range(lp.shape[0]):
        if lengths[i]:
            seq_ratio[i] = np.exp(np.mean((lp[i] - old[i]).astype(np.float64)[mask[i]]))
    # The ratio is constant along each row: s_i = exp(masked mean log-ratio).
    np.testing.assert_allclose(
        out.ratio, np.where(mask, seq_ratio[:, None], 0.0), rtol=RTOL, atol=ATOL
    )
    # Gradient of sum_i (1/|y_i|) sum_t loss_{i,t} (per-row token-mean, summed over rows).
    inv_len = (1.0 / np.maximum(lengths, 1)).astype(np.float32)
    grad = _call_grad(lp, old, adv, mask, s, row_weights=inv_len)
    _, _, _, near = _ref(lp, old, adv, mask, s)
    row_clipped = np.asarray(out.clipped).max(axis=1) > 0
    row_away = ~near.any(axis=1)
    # GSPO's gradient: -(s_i A_i / |y_i|) per valid token of an unclipped row, else 0.
    expected = np.where(mask & ~row_clipped[:, None], -(seq_ratio * adv * inv_len)[:, None], 0.0)
    np.testing.assert_allclose(grad[row_away], expected[row_away], rtol=RTOL, atol=ATOL)
    # The same gradient as differentiating the sequence-level objective itself.
    direct = np.asarray(_gspo_objective_grad(lp, old, adv, mask, eps_low, eps_high))
    np.testing.assert_allclose(grad[row_away], direct[row_away], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_huge_log_ratios_give_finite_loss_and_gradient(level, dual_clip):
    old = jnp.array([[-1.0, -2.0, -3.0, -1.0], [-0.5, -0.5, -0.5, -0.5]])
    lp = old + jnp.array([[1e4, -1e4, 1e4, -1e4], [1e4, 1e4, 1e4, 1e4]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    for adv in (
        jnp.array([[2.0, -2.0, -1.0, 1.0], [-1.0, 1.0, -1.0, 1.0]]),
        jnp.array([-1.0, 1.0]),
    ):

        def total(x, a=adv):
            out = clipped_surrogate_loss(x, old, a, mask, level=level, dual_clip=dual_clip)
            return out.loss.sum()

        out = clipped_surrogate_loss(lp, old, adv, mask, level=level, dual_clip=dual_clip)
        assert np.all(np.isfinite(out.loss)) and np.all(np.isfinite(out.ratio))
        r = np.asarray(out.ratio)[np.asarray(mask) > 0]
        assert np.all(r <= np.exp(MAX_LOG_RATIO) * 1.0001)
        assert np.all(r >= np.exp(-MAX_LOG_RATIO) * 0.9999)
        # Every (token or row) log-ratio is beyond the clamp, which holds the ratio
        # constant: the gradient is finite, in fact exactly zero.
        np.testing.assert_array_equal(jax.grad(total)(lp), 0.0)
        np.testing.assert_array_equal(jax.grad(total)(old - 2e4), 0.0)


# ----------------------------------------------------------------------------------------
# rlax cross-check
# ----------------------------------------------------------------------------------------


@given(surrogate_inputs(per_sequence=False), _floats(0.0, 0.5))
def test_symmetric_token_loss_matches_rlax(inputs, eps):
    lp, old, adv, mask = inputs
    s = {"eps_low": eps, "eps_high": eps, "dual_clip": None, "level": "token"}
    ours = np.asarray(_call(lp, old, adv, mask, s).loss)
    count = mask.sum()
    # rlax.clipped_surrogate_pg_loss(prob_ratios_t, adv_t, epsilon) takes rank-1 arrays and
    # returns the scalar mean over all elements of -min(r A, clip(r, 1-e, 1+e) A). A zero
    # advantage contributes 0, so rescaling the mean over all N elements by N / count gives
    # the mean over the valid ones.
    ratios = jnp.exp(jnp.asarray(lp).ravel() - jnp.asarray(old).ravel())
    theirs = _rlax_loss(ratios, jnp.asarray(np.where(mask, adv, 0.0)).ravel(), eps)
    compute = _compute(lp, old, adv, eps, mask)
    if count == 0:
        assert compute == 0.0
        return
    theirs = float(theirs) * mask.size / count
    np.testing.assert_allclose(ours[mask].mean(), theirs, rtol=RTOL, atol=ATOL)
    # compute_clipped_surrogate_loss is the same scalar.
    np.testing.assert_allclose(compute, theirs, rtol=RTOL, atol=ATOL)


def test_gradient_matches_rlax():
    rng = np.random.default_rng(0)
    old = jnp.asarray(rng.normal(-1.0, 0.5, 16), jnp.float32)
    # offsets well inside and well outside the clip range (no element on an edge)
    lp = old + jnp.asarray(rng.choice([-0.6, -0.05, 0.03, 0.5], 16), jnp.float32)
    adv = jnp.asarray(rng.normal(size=16), jnp.float32)
    g_ours = jax.jit(jax.grad(lambda x: _compute(x, old, adv, 0.2)))(lp)
    g_rlax = jax.jit(jax.grad(lambda x: _rlax_loss(jnp.exp(x - old), adv, 0.2)))(lp)
    np.testing.assert_allclose(g_ours, g_rlax, rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(g_ours) not in (0, 16)  # both regions present


# ----------------------------------------------------------------------------------------
# compute_clipped_surrogate_loss
# ----------------------------------------------------------------------------------------


@given(surrogate_inputs(per_sequence=False), _floats(0.0, 0.5), st.booleans())
def test_compute_clipped_surrogate_loss_is_token_mean(inputs, clip, flat):
    lp, old, adv, mask = inputs
    s = {"eps_low": clip, "eps_high": clip, "dual_clip": None, "level": "token"}
    ref_loss = _ref(lp, old, adv, mask, s)[0]
    if flat:  # 1-D inputs: the first row
        lp, old, adv, mask, ref_loss = lp[0], old[0], adv[0], mask[0], ref_loss[0]
    got = _compute(lp, old, adv, clip, mask)
    assert got.shape == () and got.dtype == jnp.float32
    expected = ref_loss[mask].mean() if mask.any() else 0.0
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    # ... which is the token-mean of the kernel's per-token loss.
    kernel = np.asarray(_call(lp, old, adv, mask, s).loss)
    np.testing.assert_allclose(got, kernel[mask].sum() / max(mask.sum(), 1), rtol=RTOL, atol=ATOL)


def test_compute_clipped_surrogate_loss_default_clip_and_empty_mask():
    lp = jnp.log(jnp.array([1.5, 0.5, 1.0]))
    old = jnp.zeros(3)
    adv = jnp.array([1.0, 1.0, -2.0])
    # default clip 0.2: -min(1.5, 1.2), -min(0.5, 0.8), -min(-2, -2) -> mean of (-1.2, -0.5, 2)
    np.testing.assert_allclose(compute_clipped_surrogate_loss(lp, old, adv), 0.1, rtol=1e-6)
    assert compute_clipped_surrogate_loss(lp, old, adv, mask=jnp.zeros(3)) == 0.0


# ----------------------------------------------------------------------------------------
# value_loss
# ----------------------------------------------------------------------------------------


@st.composite
def value_inputs(draw):
    shape = draw(st.sampled_from([(3,), (2, 5), (4, 7), (1, 1)]))
    arr = lambda: draw(hnp.arrays(np.float32, shape, elements=_floats(-3.0, 3.0)))  # noqa: E731
    return arr(), arr(), arr()


@given(value_inputs(), st.none() | _floats(0.0, 2.0))
def test_value_loss_matches_reference(inputs, clip_epsilon):
    values, returns, old = inputs
    old_values = None if clip_epsilon is None else old
    got = _value_loss(values, returns, old_values=old_values, clip_epsilon=clip_epsilon)
    assert got.shape == values.shape and got.dtype == jnp.float32
    expected = ref_value_loss(values, returns, old, clip_epsilon)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    if clip_epsilon is not None:
        # Clipping never lowers the loss below the unclipped one.
        plain = np.asarray(_value_loss(values, returns))
        assert np.all(np.asarray(got) >= plain)
        # ... and is the unclipped loss when the clip range covers every change.
        huge = _value_loss(values, returns, old_values=old, clip_epsilon=100.0)
        np.testing.assert_allclose(huge, plain, rtol=1e-6, atol=1e-7)


def test_value_loss_gradient():
    values = jnp.array([1.0, 2.0, -1.0, 0.1, 0.9])
    returns = jnp.array([0.0, 0.0, 0.5, 0.0, 1.0])
    old = jnp.array([0.5, 0.0, -1.2, 0.0, -1.0])
    g_plain = jax.jit(jax.grad(lambda v: value_loss(v, returns).sum()))(values)
    np.testing.assert_allclose(g_plain, values - returns)

    @jax.jit
    def grads(v, r, o):
        return jax.grad(
            lambda v, r, o: value_loss(v, r, old_values=o, clip_epsilon=0.3).sum(),
            argnums=(0, 1, 2),
        )(v, r, o)

    g_v, g_r, g_o = grads(values, returns, old)
    # Elements 0, 1: |V - V_old| > e but the unclipped term is the larger one; elements 2,
    # 3: |V - V_old| <= e, both terms coincide. Either way the gradient is V - R.
    # Element 4: V_clip = -0.7, (V_clip - R)^2 = 2.89 > (V - R)^2 = 0.01 dominates and does
    # not depend on V, so the gradient vanishes.
    np.testing.assert_allclose(g_v, [1.0, 2.0, -1.5, 0.1, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        value_loss(values, returns, old_values=old, clip_epsilon=0.3)[4], 1.445, rtol=1e-6
    )
    # Returns and old values are not differentiated.
    np.testing.assert_array_equal(g_r, 0.0)
    np.testing.assert_array_equal(g_o, 0.0)


# ----------------------------------------------------------------------------------------
# composition
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_jit_matches_eager(level):
    kw = dict(epsilon_low=0.2, epsilon_high=0.28, dual_clip=2.0, level=level)
    eager = clipped_surrogate_loss(_LP, _OLD, _ADV, _MASK, **kw)
    jitted = jax.jit(lambda *a: clipped_surrogate_loss(*a, **kw))(_LP, _OLD, _ADV, _MASK)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        jax.jit(compute_clipped_surrogate_loss)(_LP, _OLD, _ADV, 0.2, _MASK),
        compute_clipped_surrogate_loss(_LP, _OLD, _ADV, 0.2, _MASK),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        jax.jit(importance_log_ratio, static_argnames="level")(_LP, _OLD, _MASK, level=level),
        importance_log_ratio(_LP, _OLD, _MASK, level=level),
        rtol=1e-6,
    )


def test_traced_clip_values_do_not_recompile():
    traces = []

    @jax.jit
    def f(eps_low, eps_high, dual, clip_eps):
        traces.append(1)
        out = clipped_surrogate_loss(
            _LP, _OLD, _ADV, _MASK, epsilon_low=eps_low, epsilon_high=eps_high, dual_clip=dual
        )
        v = value_loss(_LP, _ADV, old_values=_OLD, clip_epsilon=clip_eps)
        return out.loss, v

    loss_a, v_a = f(0.1, 0.2, 1.5, 0.1)
    loss_b, v_b = f(0.3, 0.25, 3.0, 0.5)
    assert len(traces) == 1
    ref_a = clipped_surrogate_loss(
        _LP, _OLD, _ADV, _MASK, epsilon_low=0.1, epsilon_high=0.2, dual_clip=1.5
    )
    ref_b = clipped_surrogate_loss(
        _LP, _OLD, _ADV, _MASK, epsilon_low=0.3, epsilon_high=0.25, dual_clip=3.0
    )
    np.testing.assert_allclose(loss_a, ref_a.loss, rtol=1e-6)
    np.testing.assert_allclose(loss_b, ref_b.loss, rtol=1e-6)
    v_ref_a = value_loss(_LP, _ADV, old_values=_OLD, clip_epsilon=0.1)
    v_ref_b = value_loss(_LP, _ADV, old_values=_OLD, clip_epsilon=0.5)
    np.testing.assert_allclose(v_a, v_ref_a, rtol=1e-6)
    np.testing.assert_allclose(v_b, v_ref_b, rtol=1e-6)
    assert not np.allclose(v_ref_a, v_ref_b)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_vmap_over_epsilon(level):
    eps = jnp.array([0.0, 0.05, 0.2, 0.45])
    batched = jax.vmap(
        lambda e: clipped_surrogate_loss(_LP, _OLD, _ADV, _MASK, epsilon_low=e, level=level)
    )(eps)
    for k, e in enumerate([0.0, 0.05, 0.2, 0.45]):
        single = clipped_surrogate_loss(_LP, _OLD, _ADV, _MASK, epsilon_low=e, level=level)
        for a, b in zip(batched, single, strict=True):
            np.testing.assert_allclose(a[k], b, rtol=1e-6, atol=1e-7)
    # different epsilons really change the result (the vmapped axis is not ignored)
    assert not np.allclose(batched.loss[0], batched.loss[2])
    scalar = jax.vmap(lambda e: compute_clipped_surrogate_loss(_LP, _OLD, _ADV, e, _MASK))(eps)
    for k, e in enumerate([0.0, 0.05, 0.2, 0.45]):
        np.testing.assert_allclose(
            scalar[k], compute_clipped_surrogate_loss(_LP, _OLD, _ADV, e, _MASK), rtol=1e-6
        )


def test_vmap_over_batches():
    stack = lambda x: jnp.stack([x, x[::-1], 0.5 * x])  # noqa: E731
    lps, olds, advs, masks = stack(_LP), stack(_OLD), stack(_ADV), jnp.stack([_MASK] * 3)
    for level in ("token", "sequence"):
        batched = jax.vmap(
            lambda a, b, c, d, lv=level: clipped_surrogate_loss(a, b, c, d, level=lv)
        )(lps, olds, advs, masks)
        for k in range(3):
            single = clipped_surrogate_loss(lps[k], olds[k], advs[k], masks[k], level=level)
            np.testing.assert_allclose(batched.loss[k], single.loss, rtol=1e-6, atol=1e-7)
    v = jax.vmap(value_loss)(lps, advs)
    np.testing.assert_allclose(v[1], value_loss(lps[1], advs[1]))


def test_check_grads_token_surrogate():
    # Every token ratio is >= 0.03 from a clip edge (0.8, 1.2), so the loss is smooth here.
    def f(lp):
        return clipped_surrogate_loss(lp, _OLD, _ADV, _MASK, epsilon_low=0.2).loss

    check_grads(f, (_LP,), order=1, modes=("fwd", "rev"), eps=1e-3, atol=1e-2, rtol=1e-2)


def test_check_grads_sequence_surrogate():
    # At sequence level the per-token loss carries GSPO's straight-through gradient, which is
    # the true gradient of the per-row token-mean (with per-sequence advantages): check that
    # aggregate against finite differences.
    adv = jnp.array([1.5, -0.7])
    lengths = _MASK.sum(axis=1)

    def f(lp):
        out = clipped_surrogate_loss(lp, _OLD, adv, _MASK, epsilon_low=0.2, level="sequence")
        return out.loss.sum(axis=1) / lengths

    check_grads(f, (_LP,), order=1, modes=("fwd", "rev"), eps=1e-3, atol=1e-2, rtol=1e-2)
    # ... but the per-token loss itself is not the function its gradient belongs to.
    with pytest.raises(AssertionError):
        check_grads(
            lambda lp: clipped_surrogate_loss(lp, _OLD, adv, _MASK, level="sequence").loss,
            (_LP,), order=1, modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2,
        )  # fmt: skip


def test_check_grads_value_loss():
    values = jnp.array([1.0, 2.0, -1.0, 0.1, 0.9])
    returns = jnp.array([0.0, 0.0, 0.5, 0.0, 1.0])
    old = jnp.array([0.5, 0.0, -1.5, 0.0, -1.0])

    def f(v):
        return value_loss(v, returns, old_values=old, clip_epsilon=0.3)

    check_grads(f, (values,), order=1, modes=("fwd", "rev"), eps=1e-3, atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------


def test_bad_shapes_and_dtypes():
    lp = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="old_log_probs"):
        clipped_surrogate_loss(lp, jnp.zeros((2, 4)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate_loss(lp, lp, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate_loss(lp, lp, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="mask"):
        clipped_surrogate_loss(lp, lp, lp, jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="log_probs"):
        clipped_surrogate_loss(jnp.zeros((2, 3), jnp.int32), lp, lp)
    with pytest.raises(TypeError, match="old_log_probs"):
        clipped_surrogate_loss(lp, jnp.zeros((2, 3), jnp.int32), lp)
    with pytest.raises(TypeError, match="advantages"):
        clipped_surrogate_loss(lp, lp, jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="log_probs"):
        importance_log_ratio(jnp.zeros(3), jnp.zeros(3), level="sequence")
    with pytest.raises(ValueError, match="old_log_probs"):
        importance_log_ratio(lp, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="old_log_probs"):
        compute_clipped_surrogate_loss(jnp.zeros(3), jnp.zeros(4), jnp.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epsilon_low": -0.1}, "epsilon_low"),
        ({"epsilon_high": -0.01}, "epsilon_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"max_log_ratio": 0.0}, "max_log_ratio"),
        ({"epsilon_low": float("nan")}, "epsilon_low"),
        ({"epsilon_low": jnp.array([0.1, 0.2])}, "epsilon_low"),
        ({"level": "sentence"}, "level"),
    ],
)
def test_bad_scalars(kwargs, name):
    with pytest.raises(ValueError, match=name):
        clipped_surrogate_loss(_LP, _OLD, _ADV, **kwargs)


def test_bad_level_for_importance_log_ratio():
    with pytest.raises(ValueError, match="level.*'token', 'sequence'"):
        importance_log_ratio(_LP, _OLD, level="tok")


def test_value_loss_bad_input():
    v = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="old_values"):
        value_loss(v, v, clip_epsilon=0.2)
    with pytest.raises(ValueError, match="old_values"):
        value_loss(v, v, old_values=v)
    with pytest.raises(ValueError, match="clip_epsilon"):
        value_loss(v, v, old_values=v, clip_epsilon=-0.1)
    with pytest.raises(ValueError, match="returns"):
        value_loss(v, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="old_values"):
        value_loss(v, v, old_values=jnp.zeros(3), clip_epsilon=0.2)
    with pytest.raises(TypeError, match="values"):
        value_loss(jnp.zeros((2, 3), jnp.int32), v)
    with pytest.raises(TypeError, match="returns"):
        value_loss(v, jnp.zeros((2, 3), jnp.int32))
