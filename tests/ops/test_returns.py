"""Proofs for `rlgen.ops.returns`: discounted returns, TD errors, GAE and lambda-returns.

The float64 NumPy references below are written from the module docstring's conventions,
in the closed (sum-of-products) form where the kernels use a recursion:

* `discount_t = gamma * (1 - done_t) * mask_{t+1}` with `mask_T = 1`;
* padded steps (`mask = 0`) give 0 and nothing crosses them;
* `values` is `[B, T + 1]` (last column the bootstrap `V(s_T)`) or `[B, T]` (`V(s_T) = 0`).

Every property test computes the reference from finite junk at the padded steps, then
feeds the kernel NaN there: a NaN that leaks shows up as a mismatch.

Speed: on CPU an eager call of a scan kernel compiles it anyway (about 1 s per new shape,
slower than one `jax.jit` compile), so the property tests call module-level jitted kernels
and draw shapes from a small palette, which keeps the compile cache warm across examples.
Masks, episode ends and contents stay fully random.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from rlgen import ops

RTOL, ATOL = 1e-4, 1e-4

# (B, T) shapes of batched examples, and the length of single `[T]` trajectories.
SHAPES = [(1, 1), (2, 5), (4, 12)]
SINGLE_T = 6

J_RETURNS = jax.jit(ops.discounted_returns)
J_TD = jax.jit(ops.td_errors)
J_GAE = jax.jit(ops.gae_advantages, static_argnames="method")
J_LAMBDA = jax.jit(ops.lambda_returns, static_argnames="method")
J_COMPUTE_RETURNS = jax.jit(ops.compute_discounted_returns)
J_COMPUTE_GAE = jax.jit(ops.compute_gae_advantages)
J_RLAX_GAE = jax.jit(
    jax.vmap(rlax.truncated_generalized_advantage_estimation, in_axes=(0, 0, None, 0))
)
J_RLAX_LAMBDA = jax.jit(jax.vmap(rlax.lambda_returns, in_axes=(0, 0, 0, None)))

# ----------------------------------------------------------------------------------------
# float64 references (plain loops, straight from the documented math)
# ----------------------------------------------------------------------------------------


def ref_discounts(gamma, dones, mask):
    batch, horizon = mask.shape
    out = np.zeros((batch, horizon))
    for b in range(batch):
        for t in range(horizon):
            next_mask = mask[b, t + 1] if t + 1 < horizon else 1.0
            out[b, t] = gamma * (1.0 - dones[b, t]) * next_mask
    return out


def _prod(disc_row, start, stop):
    """prod_{j=start}^{stop-1} disc_row[j] (1 for an empty product)."""
    p = 1.0
    for j in range(start, stop):
        p *= disc_row[j]
    return p


def ref_returns(rewards, gamma, dones, mask, bootstrap=None):
    """G_t = sum_{k>=t} prod_{j=t}^{k-1} d_j r_k + prod_{j=t}^{T-1} d_j * bootstrap."""
    batch, horizon = rewards.shape
    d = ref_discounts(gamma, dones, mask)
    out = np.zeros((batch, horizon))
    for b in range(batch):
        for t in range(horizon):
            if not mask[b, t]:
                continue
            g = sum(_prod(d[b], t, k) * rewards[b, k] for k in range(t, horizon))
            if bootstrap is not None:
                g += _prod(d[b], t, horizon) * bootstrap[b]
            out[b, t] = g
    return out


def _next_values(values, horizon):
    """V(s_{t+1}) for t < T: the bootstrap column if there is one, else 0 after the end."""
    if values.shape[1] == horizon + 1:
        return values[:, 1:]
    return np.concatenate([values[:, 1:], np.zeros((values.shape[0], 1))], axis=1)


def ref_td(rewards, values, gamma, dones, mask):
    batch, horizon = rewards.shape
    d = ref_discounts(gamma, dones, mask)
    v_next = _next_values(values, horizon)
    out = np.zeros((batch, horizon))
    for b in range(batch):
        for t in range(horizon):
            if mask[b, t]:
                out[b, t] = rewards[b, t] + d[b, t] * v_next[b, t] - values[b, t]
    return out


def ref_gae(rewards, values, gamma, lam, dones, mask):
    """A_t = sum_l (prod_{j<l} lambda d_{t+j}) delta_{t+l}."""
    batch, horizon = rewards.shape
    d = ref_discounts(gamma, dones, mask)
    delta = ref_td(rewards, values, gamma, dones, mask)
    out = np.zeros((batch, horizon))
    for b in range(batch):
        for t in range(horizon):
            if mask[b, t]:
                out[b, t] = sum(
                    lam ** (k - t) * _prod(d[b], t, k) * delta[b, k] for k in range(t, horizon)
                )
    return out


def ref_lambda_returns(rewards, values, gamma, lam, dones, mask):
    """G_t = r_t + d_t ((1 - lambda) V_{t+1} + lambda G_{t+1}), G_T = V(s_T)."""
    batch, horizon = rewards.shape
    d = ref_discounts(gamma, dones, mask)
    v_next = _next_values(values, horizon)
    out = np.zeros((batch, horizon))
    for b in range(batch):
        g_next = v_next[b, horizon - 1]  # G_T = V(s_T)
        for t in reversed(range(horizon)):
            g = rewards[b, t] + d[b, t] * ((1 - lam) * v_next[b, t] + lam * g_next)
            out[b, t] = g if mask[b, t] else 0.0
            g_next = g
    return out


def ref_lambda_returns_forward(rewards, values, gamma, lam, dones, mask):
    """The forward view: a lambda-weighted mixture of the n-step returns,
    G_t = (1 - lambda) sum_{n=1}^{H-1} lambda^(n-1) G_t^(n) + lambda^(H-1) G_t^(H), H = T - t,
    G_t^(n) = sum_{k=t}^{t+n-1} (prod_{j=t}^{k-1} d_j) r_k + (prod_{j=t}^{t+n-1} d_j) V_{t+n}.
    """
    batch, horizon = rewards.shape
    d = ref_discounts(gamma, dones, mask)
    v = np.concatenate([values[:, :horizon], _next_values(values, horizon)[:, -1:]], axis=1)
    out = np.zeros((batch, horizon))
    for b in range(batch):
        for t in range(horizon):
            if not mask[b, t]:
                continue

            def n_step(n, b=b, t=t):
                rewards_part = sum(_prod(d[b], t, k) * rewards[b, k] for k in range(t, t + n))
                return rewards_part + _prod(d[b], t, t + n) * v[b, t + n]

            steps = horizon - t
            mixture = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, steps))
            out[b, t] = mixture + lam ** (steps - 1) * n_step(steps)
    return out


# ----------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------

_f32 = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False, width=32)
# Every element drawn on its own (hypothesis otherwise fills most of an array with one value).
_no_fill = dict(fill=st.nothing())
_mostly_true = st.sampled_from([True, True, True, False])
unit = st.floats(0.0, 1.0, width=32)


@st.composite
def trajectories(draw, single=None):
    """Rewards, values ([B, T+1] or [B, T]), dones, mask with right-padding and holes."""
    if single is None:
        single = draw(st.booleans())
    batch, horizon = (1, SINGLE_T) if single else draw(st.sampled_from(SHAPES))
    rewards = draw(hnp.arrays(np.float64, (batch, horizon), elements=_f32, **_no_fill))
    bootstrap = draw(st.booleans())
    values = draw(
        hnp.arrays(np.float64, (batch, horizon + int(bootstrap)), elements=_f32, **_no_fill)
    )
    dones = ~draw(hnp.arrays(np.bool_, (batch, horizon), elements=_mostly_true, **_no_fill))
    lengths = np.array(draw(st.lists(st.integers(0, horizon), min_size=batch, max_size=batch)))
    mask = np.arange(horizon)[None, :] < lengths[:, None]
    if draw(st.booleans()):  # holes inside the rows
        mask &= draw(hnp.arrays(np.bool_, (batch, horizon), elements=_mostly_true, **_no_fill))
    return dict(
        rewards=rewards,
        values=values,
        dones=dones.astype(np.float64),
        mask=mask,
        single=single,
        bootstrap=bootstrap,
    )


def _fixed_trajectories(bootstrap):
    """A seeded batch with every case at once: padding, a hole, episode ends, a valid last
    step (hypothesis' small examples often mask the last step or leave out the bootstrap)."""
    rng = np.random.default_rng(5)
    mask = np.ones((3, 6), bool)
    mask[1, 4:] = False
    mask[2, 2] = False
    dones = np.zeros((3, 6))
    dones[0, 3] = 1.0
    return dict(
        rewards=rng.normal(size=(3, 6)),
        values=rng.normal(size=(3, 6 + int(bootstrap))),
        dones=dones,
        mask=mask,
        single=False,
        bootstrap=bootstrap,
    )


def poisoned(tr):
    """float32 kernel inputs with NaN at every padded reward and value.

    The bootstrap column `V(s_T)` counts as padded when the last step of its row is.
    """
    mask = tr["mask"]
    rewards = np.where(mask, tr["rewards"], np.nan).astype(np.float32)
    values = tr["values"].copy()
    horizon = mask.shape[1]
    values[:, :horizon] = np.where(mask, values[:, :horizon], np.nan)
    if values.shape[1] == horizon + 1:
        values[:, horizon] = np.where(mask[:, -1], values[:, horizon], np.nan)
    return rewards, values.astype(np.float32)


def kernel_args(tr, rewards, values):
    """Kernel arguments, squeezed to a single `[T]` trajectory when asked."""
    dones = tr["dones"].astype(np.float32)
    mask = tr["mask"].astype(np.float32)
    if tr["single"]:
        return rewards[0], values[0], dones[0], mask[0]
    return rewards, values, dones, mask


def close(actual, expected, single=False):
    actual = np.asarray(actual)
    expected = expected[0] if single else expected
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------
# Kernels vs references
# ----------------------------------------------------------------------------------------


@given(trajectories(), unit, st.booleans())
def test_discounted_returns_matches_reference(tr, gamma, with_bootstrap):
    boot = tr["values"][:, -1] if with_bootstrap else None
    expected = ref_returns(tr["rewards"], gamma, tr["dones"], tr["mask"], boot)
    rewards, _ = poisoned(tr)
    r, _, d, m = kernel_args(tr, rewards, rewards)
    if boot is not None:
        boot = boot.astype(np.float32)
        boot = boot[0] if tr["single"] else boot
    out = J_RETURNS(r, gamma, dones=d, mask=m, bootstrap_value=boot)
    close(out, expected, tr["single"])


@given(trajectories(), unit)
def test_td_errors_matches_reference(tr, gamma):
    expected = ref_td(tr["rewards"], tr["values"], gamma, tr["dones"], tr["mask"])
    r, v, d, m = kernel_args(tr, *poisoned(tr))
    close(J_TD(r, v, gamma, dones=d, mask=m), expected, tr["single"])


@pytest.mark.parametrize(
    ("kernel", "reference"),
    [(J_GAE, "gae"), (J_LAMBDA, "lambda_returns")],
    ids=["gae_advantages", "lambda_returns"],
)
@given(tr=trajectories(), gamma=unit, lam=unit, method=st.sampled_from(["scan", "associative"]))
def test_lambda_kernels_match_reference(kernel, reference, tr, gamma, lam, method):
    ref = {"gae": ref_gae, "lambda_returns": ref_lambda_returns}[reference]
    expected = ref(tr["rewards"], tr["values"], gamma, lam, tr["dones"], tr["mask"])
    r, v, d, m = kernel_args(tr, *poisoned(tr))
    close(kernel(r, v, gamma, lam, dones=d, mask=m, method=method), expected, tr["single"])


def test_references_are_not_vacuous():
    """The references reproduce hand-computed numbers (so the property tests test)."""
    r = np.array([[1.0, 2.0, 3.0, 4.0]])
    dones = np.array([[0.0, 1.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 1, 0]])
    # d = [0.5, 0, 0 (next padded), 0.5]; G = [1 + 0.5*2, 2, 3, 0]
    np.testing.assert_allclose(ref_returns(r, 0.5, dones, mask, [10.0]), [[2.0, 2.0, 3.0, 0.0]])
    np.testing.assert_allclose(
        ref_returns(r, 0.5, np.zeros_like(r), np.ones_like(r), [8.0]),
        [[1 + 1 + 0.75 + 0.5 + 0.5, 2 + 1.5 + 1 + 1, 3 + 2 + 2, 4 + 4]],
    )
    v = np.array([[1.0, 1.0, 1.0, 1.0, 2.0]])
    # delta_t = r_t + 0.5 * V_{t+1} - V_t, no dones, no padding
    np.testing.assert_allclose(
        ref_td(r, v, 0.5, np.zeros_like(r), np.ones_like(r)), [[0.5, 1.5, 2.5, 4.0]]
    )
    np.testing.assert_allclose(
        ref_gae(r, v, 0.5, 0.5, np.zeros_like(r), np.ones_like(r))[0, 2], 2.5 + 0.25 * 4.0
    )


def test_lambda_return_reference_equals_its_forward_view():
    """The backward recursion and the n-step mixture are written independently. Seeded
    draws, not hypothesis: most steps valid, with and without a bootstrap column."""
    rng = np.random.default_rng(11)
    for _ in range(60):
        batch, horizon = rng.integers(1, 4), rng.integers(1, 8)
        rewards = rng.normal(size=(batch, horizon))
        values = rng.normal(size=(batch, horizon + rng.integers(0, 2)))
        dones = (rng.random((batch, horizon)) < 0.2).astype(np.float64)
        mask = rng.random((batch, horizon)) < 0.85
        gamma, lam = rng.choice([rng.random(), 1.0]), rng.choice([rng.random(), 0.0, 1.0])
        args = (rewards, values, gamma, lam, dones, mask)
        np.testing.assert_allclose(
            ref_lambda_returns(*args), ref_lambda_returns_forward(*args), rtol=1e-9, atol=1e-9
        )


# ----------------------------------------------------------------------------------------
# Identities between kernels
# ----------------------------------------------------------------------------------------


@given(trajectories(single=False), unit, st.sampled_from(["scan", "associative"]))
def test_gae_lambda_one_is_returns_minus_values(tr, gamma, method):
    r, v, d, m = kernel_args(tr, *(x.astype(np.float32) for x in (tr["rewards"], tr["values"])))
    horizon = r.shape[1]
    boot = v[:, horizon] if tr["bootstrap"] else None
    gae = J_GAE(r, v, gamma, 1.0, dones=d, mask=m, method=method)
    ret = J_RETURNS(r, gamma, dones=d, mask=m, bootstrap_value=boot)
    expected = np.where(m, np.asarray(ret) - v[:, :horizon], 0.0)
    np.testing.assert_allclose(np.asarray(gae), expected, rtol=RTOL, atol=ATOL)


@given(trajectories(single=False), unit, st.sampled_from(["scan", "associative"]))
def test_gae_lambda_zero_is_td_error(tr, gamma, method):
    r, v, d, m = kernel_args(tr, *poisoned(tr))
    gae = J_GAE(r, v, gamma, 0.0, dones=d, mask=m, method=method)
    td = J_TD(r, v, gamma, dones=d, mask=m)
    np.testing.assert_allclose(np.asarray(gae), np.asarray(td), rtol=1e-6, atol=1e-6)


@given(trajectories(), unit, unit)
def test_associative_equals_scan(tr, gamma, lam):
    r, v, d, m = kernel_args(tr, *poisoned(tr))
    for fn in (J_GAE, J_LAMBDA):
        scan = fn(r, v, gamma, lam, dones=d, mask=m, method="scan")
        assoc = fn(r, v, gamma, lam, dones=d, mask=m, method="associative")
        assert np.all(np.isfinite(np.asarray(assoc)))
        np.testing.assert_allclose(np.asarray(assoc), np.asarray(scan), rtol=1e-5, atol=1e-5)


@given(trajectories(single=False), unit, st.sampled_from(["scan", "associative"]))
@example(_fixed_trajectories(True), 0.9, "scan")
@example(_fixed_trajectories(False), 0.7, "associative")
def test_lambda_returns_lambda_one_are_discounted_returns_with_bootstrap(tr, gamma, method):
    # G_t = r_t + discount_t G_{t+1}, G_T = V(s_T): the Monte Carlo return bootstrapped
    # with the last value (0 without a bootstrap column).
    r, v, d, m = kernel_args(tr, *poisoned(tr))
    horizon = r.shape[1]
    boot = v[:, horizon] if tr["bootstrap"] else None
    lam_ret = J_LAMBDA(r, v, gamma, 1.0, dones=d, mask=m, method=method)
    ret = J_RETURNS(r, gamma, dones=d, mask=m, bootstrap_value=boot)
    assert np.all(np.isfinite(np.asarray(lam_ret)))
    np.testing.assert_allclose(np.asarray(lam_ret), np.asarray(ret), rtol=RTOL, atol=ATOL)


@given(trajectories(single=False), unit, st.sampled_from(["scan", "associative"]))
@example(_fixed_trajectories(True), 0.9, "scan")
@example(_fixed_trajectories(False), 0.7, "associative")
def test_lambda_returns_lambda_zero_are_one_step_td_targets(tr, gamma, method):
    # G_t = r_t + gamma (1 - done_t) V(s_{t+1}), nothing bootstrapped across padding, 0 at
    # padded steps; written here with whole-array NumPy operations in float64.
    rewards, values, dones, mask = tr["rewards"], tr["values"], tr["dones"], tr["mask"]
    batch, horizon = rewards.shape
    next_values = values[:, 1:] if tr["bootstrap"] else np.pad(values[:, 1:], ((0, 0), (0, 1)))
    next_valid = np.concatenate([mask[:, 1:], np.ones((batch, 1), bool)], axis=1)
    target = rewards + gamma * (1.0 - dones) * np.where(next_valid, next_values, 0.0)
    expected = np.where(mask, target, 0.0)
    r, v, d, m = kernel_args(tr, *poisoned(tr))
    close(J_LAMBDA(r, v, gamma, 0.0, dones=d, mask=m, method=method), expected)


# ----------------------------------------------------------------------------------------
# Cross-check with rlax (no padding: rlax has no mask)
# ----------------------------------------------------------------------------------------


@given(trajectories(single=False), unit, unit)
def test_gae_matches_rlax(tr, gamma, lam):
    r = tr["rewards"].astype(np.float32)
    horizon = r.shape[1]
    v = tr["values"].astype(np.float32)
    if v.shape[1] == horizon:  # rlax needs the bootstrap value; no bootstrap means 0
        v = np.concatenate([v, np.zeros((v.shape[0], 1), np.float32)], axis=1)
        v_ours = tr["values"].astype(np.float32)
    else:
        v_ours = v
    discount = (gamma * (1.0 - tr["dones"])).astype(np.float32)
    expected = J_RLAX_GAE(r, discount, lam, v)
    dones = tr["dones"].astype(np.float32)
    ones = np.ones_like(r)  # no padding; passing it shares the jit cache with other tests
    for method in ("scan", "associative"):
        out = J_GAE(r, v_ours, gamma, lam, dones=dones, mask=ones, method=method)
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=RTOL, atol=ATOL)


@given(trajectories(single=False), unit, unit)
def test_lambda_returns_match_rlax(tr, gamma, lam):
    r = tr["rewards"].astype(np.float32)
    horizon = r.shape[1]
    v = tr["values"].astype(np.float32)
    v_full = v if v.shape[1] == horizon + 1 else np.pad(v, ((0, 0), (0, 1)))
    discount = (gamma * (1.0 - tr["dones"])).astype(np.float32)
    # rlax's v_t are the values of the NEXT states, V(s_1) .. V(s_T).
    expected = J_RLAX_LAMBDA(r, discount, v_full[:, 1:], lam)
    d, ones = tr["dones"].astype(np.float32), np.ones_like(r)
    out = J_LAMBDA(r, v, gamma, lam, dones=d, mask=ones, method="scan")
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------
# Composition: jit, vmap, grad
# ----------------------------------------------------------------------------------------

B, T = 3, 7
_rng = np.random.default_rng(0)
R = _rng.normal(size=(B, T)).astype(np.float32)
V = _rng.normal(size=(B, T + 1)).astype(np.float32)
DONES = np.zeros((B, T), np.float32)
DONES[0, 2] = DONES[2, 5] = 1.0
MASK = np.ones((B, T), np.float32)
MASK[1, 5:] = 0.0  # right padding
MASK[2, 3] = 0.0  # a hole


def _ref64(name, gamma=0.9, lam=0.8, rewards=R, values=V):
    r, v = np.asarray(rewards, np.float64), np.asarray(values, np.float64)
    if name == "returns":
        return ref_returns(r, gamma, DONES, MASK, v[:, T])
    if name == "td":
        return ref_td(r, v, gamma, DONES, MASK)
    if name == "gae":
        return ref_gae(r, v, gamma, lam, DONES, MASK)
    return ref_lambda_returns(r, v, gamma, lam, DONES, MASK)


def _kernel(name, method="scan"):
    """(rewards, values, gamma, lam) -> [B, T] for each kernel, on the fixed batch."""
    if name == "returns":
        return lambda r, v, g, lam: ops.discounted_returns(
            r, g, dones=DONES, mask=MASK, bootstrap_value=v[..., T]
        )
    if name == "td":
        return lambda r, v, g, lam: ops.td_errors(r, v, g, dones=DONES, mask=MASK)
    fn = ops.gae_advantages if name == "gae" else ops.lambda_returns
    return lambda r, v, g, lam: fn(r, v, g, lam, dones=DONES, mask=MASK, method=method)


KERNELS = ["returns", "td", "gae", "lambda"]


def test_tutorial_wrappers_equal_general_kernels():
    cases = [
        (R, V, DONES, MASK),
        (R, V[:, :T], DONES, MASK),  # no bootstrap
        (R[1], V[1], DONES[1], MASK[1]),  # a single trajectory
    ]
    for r, v, d, m in cases:
        for gamma, lam in ((0.9, 0.8), (1.0, 0.0)):
            np.testing.assert_array_equal(
                np.asarray(J_COMPUTE_RETURNS(r, gamma, d, m)),
                np.asarray(J_RETURNS(r, gamma, dones=d, mask=m)),
            )
            np.testing.assert_array_equal(
                np.asarray(J_COMPUTE_GAE(r, v, d, gamma, lam, m)),
                np.asarray(J_GAE(r, v, gamma, lam, dones=d, mask=m, method="scan")),
            )
    # The wrappers' defaults: gamma 0.99, gae_lambda 0.95, no dones, no mask.
    np.testing.assert_allclose(
        np.asarray(J_COMPUTE_GAE(R, V)),
        ref_gae(R.astype(float), V.astype(float), 0.99, 0.95, np.zeros((B, T)), np.ones((B, T))),
        rtol=RTOL,
        atol=ATOL,
    )
    np.testing.assert_allclose(
        np.asarray(J_COMPUTE_RETURNS(R)),
        ref_returns(R.astype(float), 0.99, np.zeros((B, T)), np.ones((B, T))),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("name", KERNELS)
def test_jit_with_traced_gamma_and_lambda(name):
    jitted = jax.jit(_kernel(name))
    for gamma, lam in ((0.9, 0.8), (0.5, 0.3)):
        out = jitted(R, V, gamma, lam)
        np.testing.assert_allclose(np.asarray(out), _ref64(name, gamma, lam), rtol=RTOL, atol=ATOL)


def test_jit_associative_method():
    out = jax.jit(_kernel("gae", "associative"))(R, V, 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(out), _ref64("gae"), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", KERNELS)
def test_vmap_over_rows_equals_batched(name):
    # Each row goes through the single-trajectory `[T]` path.
    def per_row(r, v, d, m):
        if name == "returns":
            return ops.discounted_returns(r, 0.9, dones=d, mask=m, bootstrap_value=v[T])
        if name == "td":
            return ops.td_errors(r, v, 0.9, dones=d, mask=m)
        fn = ops.gae_advantages if name == "gae" else ops.lambda_returns
        return fn(r, v, 0.9, 0.8, dones=d, mask=m)

    out = jax.jit(jax.vmap(per_row))(R, V, DONES, MASK)
    np.testing.assert_allclose(np.asarray(out), _ref64(name), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", KERNELS)
def test_vmap_over_gamma(name):
    gammas = np.array([0.0, 0.5, 0.9, 1.0], np.float32)
    out = jax.jit(jax.vmap(lambda g: _kernel(name)(R, V, g, 0.8)))(gammas)
    assert out.shape == (4, B, T)
    for i, g in enumerate(gammas):
        np.testing.assert_allclose(
            np.asarray(out[i]), _ref64(name, float(g), 0.8), rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("method", ["scan", "associative"])
def test_vmap_over_lambda(method):
    lams = np.array([0.0, 0.3, 1.0], np.float32)
    out = jax.jit(jax.vmap(lambda lam: _kernel("gae", method)(R, V, 0.9, lam)))(lams)
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(
            np.asarray(out[i]), _ref64("gae", 0.9, float(lam)), rtol=RTOL, atol=ATOL
        )


def _ref_jacobian(name, wrt):
    """d out[b, t] / d x[c, k] of the (affine) float64 reference, by unit perturbations."""
    x0 = R if wrt == "rewards" else V
    base = _ref64(name)
    jac = np.zeros(base.shape + x0.shape)
    for idx in np.ndindex(*x0.shape):
        x = np.asarray(x0, np.float64).copy()
        x[idx] += 1.0
        kw = {"rewards": x} if wrt == "rewards" else {"values": x}
        jac[(...,) + idx] = _ref64(name, **kw) - base
    return jac


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("wrt", ["rewards", "values"])
def test_jacobian_matches_reference(name, wrt):
    fn = _kernel(name)
    if wrt == "rewards":
        jac = jax.jit(jax.jacrev(lambda r: fn(r, V, 0.9, 0.8)))(R)
    else:
        jac = jax.jit(jax.jacrev(lambda v: fn(R, v, 0.9, 0.8)))(V)
    expected = _ref_jacobian(name, wrt)
    assert np.abs(expected).sum() > 0
    np.testing.assert_allclose(np.asarray(jac), expected, rtol=RTOL, atol=ATOL)


def test_grad_is_zero_and_finite_at_nan_padding():
    r = np.where(MASK > 0, R, np.nan).astype(np.float32)
    v = V.copy()
    v[:, :T] = np.where(MASK > 0, v[:, :T], np.nan)
    for method in ("scan", "associative"):

        def loss(r_, v_, method=method):
            return jnp.sum(
                ops.gae_advantages(r_, v_, 0.9, 0.8, dones=DONES, mask=MASK, method=method) ** 2
            )

        g_r, g_v = jax.jit(jax.grad(loss, argnums=(0, 1)))(r, v)
        assert np.all(np.isfinite(np.asarray(g_r))) and np.all(np.isfinite(np.asarray(g_v)))
        np.testing.assert_array_equal(np.asarray(g_r)[MASK == 0], 0.0)
        np.testing.assert_array_equal(np.asarray(g_v)[:, :T][MASK == 0], 0.0)
        assert np.abs(np.asarray(g_v)[:, :T][MASK > 0]).sum() > 0


@pytest.mark.parametrize("name", KERNELS)
def test_check_grads(name):
    fn = _kernel(name, "associative" if name == "lambda" else "scan")
    check_grads(
        jax.jit(lambda r, v, g: fn(r, v, g, 0.8)),
        (R, V, np.float32(0.9)),
        order=1,
        modes=("fwd", "rev"),
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------

_ALL = {
    "discounted_returns": lambda r, v=None, **kw: ops.discounted_returns(r, **kw),
    "td_errors": lambda r, v, **kw: ops.td_errors(r, v, **kw),
    "gae_advantages": lambda r, v, **kw: ops.gae_advantages(r, v, **kw),
    "lambda_returns": lambda r, v, **kw: ops.lambda_returns(r, v, **kw),
}
_VALUED = ["td_errors", "gae_advantages", "lambda_returns"]


@pytest.mark.parametrize("fn", list(_ALL))
def test_rank3_rewards(fn):
    with pytest.raises(ValueError, match="`rewards`.*rank"):
        _ALL[fn](np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("fn", list(_ALL))
def test_integer_rewards(fn):
    with pytest.raises(TypeError, match="`rewards`.*floating"):
        _ALL[fn](np.ones((2, 3), np.int32), np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("fn", _VALUED)
@pytest.mark.parametrize("shape", [(2, 5), (2, 2), (3, 4), (4,), (2, 4, 1)])
def test_values_wrong_shape(fn, shape):
    with pytest.raises(ValueError, match=r"`values` must have shape \(2, 3\) or \(2, 4\).*got"):
        _ALL[fn](np.zeros((2, 3), np.float32), np.zeros(shape, np.float32))


def test_values_wrong_shape_single_trajectory_names_given_shape():
    with pytest.raises(ValueError, match=r"`values`.*\[5\] or \[6\].*got \(3, 6\)"):
        ops.td_errors(np.zeros(5, np.float32), np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError, match=r"`values`.*got \(8,\)"):
        ops.td_errors(np.zeros(5, np.float32), np.zeros(8, np.float32))


@pytest.mark.parametrize("fn", _VALUED)
def test_integer_values(fn):
    with pytest.raises(TypeError, match="`values`.*floating"):
        _ALL[fn](np.zeros((2, 3), np.float32), np.zeros((2, 4), np.int32))


@pytest.mark.parametrize("fn", list(_ALL))
@pytest.mark.parametrize("arg", ["mask", "dones"])
@pytest.mark.parametrize("shape", [(2, 4), (3, 3), (3,)])
def test_mask_and_dones_shape_mismatch(fn, arg, shape):
    with pytest.raises(ValueError, match=f"`{arg}`.*\\(2, 3\\)"):
        _ALL[fn](
            np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), **{arg: np.ones(shape)}
        )


def test_bootstrap_value_shape_mismatch():
    with pytest.raises(ValueError, match="`bootstrap_value`"):
        ops.discounted_returns(
            np.zeros((2, 3), np.float32), bootstrap_value=np.zeros(3, np.float32)
        )


@pytest.mark.parametrize("fn", list(_ALL))
@pytest.mark.parametrize("gamma", [1.5, -0.1, float("nan"), np.float32(1.01)])
def test_gamma_out_of_range(fn, gamma):
    with pytest.raises(ValueError, match="`gamma`"):
        _ALL[fn](np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), gamma=gamma)


@pytest.mark.parametrize("fn", [ops.gae_advantages, ops.lambda_returns])
@pytest.mark.parametrize("lam", [2.0, -0.5])
def test_lambda_out_of_range(fn, lam):
    with pytest.raises(ValueError, match="`lambda_`"):
        fn(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), 0.9, lam)


def test_tutorial_wrapper_checks_gae_lambda():
    with pytest.raises(ValueError, match="lambda"):
        ops.compute_gae_advantages(
            np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), gae_lambda=2.0
        )


@pytest.mark.parametrize("fn", [ops.gae_advantages, ops.lambda_returns])
@pytest.mark.parametrize("method", ["parallel", "Scan", None])
def test_unknown_method(fn, method):
    with pytest.raises(ValueError, match="`method`"):
        fn(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), method=method)


def test_errors_raise_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="`values`"):
        jax.jit(lambda r, v: ops.gae_advantages(r, v))(
            np.zeros((2, 3), np.float32), np.zeros((2, 5), np.float32)
        )


def test_auto_method_picks_scan_on_cpu_and_associative_on_accelerators(monkeypatch):
    from rlgen.ops import returns as R

    assert R._resolve_method("auto") == "scan"  # the tests run on the CPU
    monkeypatch.setattr(R.jax, "default_backend", lambda: "gpu")
    assert R._resolve_method("auto") == "associative"
    assert R._resolve_method("scan") == "scan"
    r = jnp.array([[0.0, 1.0, 0.0, 2.0]])
    v = jnp.array([[0.5, 0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(
        ops.gae_advantages(r, v, method="auto"), ops.gae_advantages(r, v, method="scan"), rtol=1e-6
    )
    with pytest.raises(ValueError, match="method"):
        ops.gae_advantages(r, v, method="fast")
