"""Tests for rlgen.ops.aggregation: every mode against a float64 NumPy reference, exactness
of `(total, count)` accumulation across micro-batches (values and gradients), the
`axis_name` path under `shard_map` on 8 CPU devices, the per-shard shares
`global_token_mean` / `global_count`, and the masked reductions `masked_sum` /
`masked_mean`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from rlgen.ops import aggregation as agg

RTOL, ATOL = 1e-5, 1e-6
MODES = (
    "token-mean",
    "sequence-mean-token-mean",
    "sequence-mean-token-sum",
    "sequence-mean-token-sum-norm",
)
ALIASES = {
    "seq-mean-token-mean": "sequence-mean-token-mean",
    "seq-mean-token-sum": "sequence-mean-token-sum",
    "seq-mean-token-sum-norm": "sequence-mean-token-sum-norm",
}
ALL_NAMES = MODES + tuple(ALIASES)


# ----------------------------------------------------------------------------- reference


def ref_aggregate(values, mask, mode, norm=None):
    """The module doc's formulas, written out with loops in float64."""
    mode = ALIASES.get(mode, mode)
    x = np.asarray(values, np.float64)
    m = np.ones(x.shape) if mask is None else np.asarray(mask, np.float64)
    batch, horizon = x.shape
    rows = [[x[i, t] for t in range(horizon) if m[i, t] > 0] for i in range(batch)]
    if mode == "token-mean":
        tokens = [v for row in rows for v in row]
        return sum(tokens) / len(tokens) if tokens else 0.0
    if mode == "sequence-mean-token-mean":
        means = [sum(row) / len(row) for row in rows if row]
        return sum(means) / len(means) if means else 0.0
    if mode == "sequence-mean-token-sum":
        return sum(sum(row) for row in rows) / batch
    norm = horizon if norm is None else norm
    return sum(sum(row) for row in rows) / (batch * norm)


def ref_masked_sum_rows(x, mask):
    """Row sums over the last axis, skipping masked entries (which may hold NaN)."""
    x, mask = np.asarray(x, np.float64), np.asarray(mask)
    out = np.zeros(x.shape[:-1])
    for idx in np.ndindex(x.shape[:-1]):
        out[idx] = sum(x[idx][t] for t in range(x.shape[-1]) if mask[idx][t])
    return out


def ref_masked_mean_rows(x, mask):
    x, mask = np.asarray(x, np.float64), np.asarray(mask)
    out = np.zeros(x.shape[:-1])
    for idx in np.ndindex(x.shape[:-1]):
        vals = [x[idx][t] for t in range(x.shape[-1]) if mask[idx][t]]
        out[idx] = sum(vals) / len(vals) if vals else 0.0
    return out


# ----------------------------------------------------------------------------- strategies

SHAPES = [(1, 1), (1, 7), (2, 3), (3, 12), (5, 4), (5, 12)]


@st.composite
def masked_values(draw, shapes=SHAPES):
    """`(values, mask)` with NaN in every masked entry, empty rows, and all-empty masks."""
    b, t = draw(st.sampled_from(shapes))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    values = rng.standard_normal((b, t)) * draw(st.sampled_from([0.1, 1.0, 100.0]))
    kind = draw(st.sampled_from(["random", "empty-rows", "all-empty", "full"]))
    mask = rng.random((b, t)) < draw(st.floats(0.1, 0.9))
    if kind == "empty-rows":
        mask[rng.random(b) < 0.5] = False
    elif kind == "all-empty":
        mask[:] = False
    elif kind == "full":
        mask[:] = True
    dtype = draw(st.sampled_from([np.bool_, np.int32, np.float32]))
    values = np.where(mask, values, np.nan).astype(np.float32)  # masked NaN must not leak
    return values, mask.astype(dtype)


_jit_aggregate = jax.jit(agg.aggregate, static_argnames="mode")
_jit_parts = jax.jit(agg.aggregate_parts, static_argnames="mode")
_jit_masked_sum = jax.jit(agg.masked_sum, static_argnames="axis")
_jit_masked_mean = jax.jit(agg.masked_mean, static_argnames="axis")


# ----------------------------------------------------------------------------- reference


@given(masked_values(), st.sampled_from(MODES), st.sampled_from([None, 0.5, 3.0, 100.0]))
def test_aggregate_matches_reference(problem, mode, norm):
    values, mask = problem
    if ALIASES.get(mode, mode) != "sequence-mean-token-sum-norm":
        norm = None
    got = _jit_aggregate(values, mask, mode, norm=norm)
    assert got.shape == () and got.dtype == jnp.float32
    assert np.isfinite(float(got))  # 0, never NaN, when nothing is selected
    want = ref_aggregate(values, mask, mode, norm)
    np.testing.assert_allclose(
        got, want, rtol=RTOL, atol=ATOL * max(1.0, np.nanmax(np.abs(values), initial=0.0))
    )
    # aggregate == total / count of aggregate_parts (0 when count is 0).
    total, count = _jit_parts(values, mask, mode, norm=norm)
    expected_count = {
        "token-mean": np.sum(np.asarray(mask, bool)),
        "sequence-mean-token-mean": np.sum(np.any(np.asarray(mask, bool), axis=1)),
    }.get(ALIASES.get(mode, mode), values.shape[0])
    assert float(count) == expected_count
    np.testing.assert_allclose(got, total / count if count > 0 else 0.0, rtol=1e-6, atol=1e-7)


def test_all_empty_mask_gives_zero_value_and_zero_gradient_in_every_mode():
    values = jnp.array([[jnp.nan, 1.0, jnp.inf], [2.0, -jnp.inf, jnp.nan]])
    mask = jnp.zeros((2, 3), bool)
    for mode in ALL_NAMES:
        assert float(agg.aggregate(values, mask, mode)) == 0.0, mode
        g = jax.grad(lambda v, m=mode: agg.aggregate(v, mask, m))(values)
        np.testing.assert_array_equal(g, 0.0)


def test_modes_weigh_tokens_as_documented():
    # Row 0: one token of 4; row 1: three tokens of 1 each; T = 4.
    values = jnp.array([[4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    mask = jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]])
    assert float(agg.aggregate(values, mask, "token-mean")) == pytest.approx(7.0 / 4.0)
    assert float(agg.aggregate(values, mask, "seq-mean-token-mean")) == pytest.approx(2.5)
    assert float(agg.aggregate(values, mask, "seq-mean-token-sum")) == pytest.approx(3.5)
    assert float(agg.aggregate(values, mask, "seq-mean-token-sum-norm")) == pytest.approx(7 / 8)
    assert float(
        agg.aggregate(values, mask, "sequence-mean-token-sum-norm", norm=7.0)
    ) == pytest.approx(0.5)
    # Aliases are the same modes.
    for alias, canonical in ALIASES.items():
        assert agg.canonical_mode(alias) == canonical
        np.testing.assert_array_equal(
            agg.aggregate_parts(values, mask, alias), agg.aggregate_parts(values, mask, canonical)
        )


# ----------------------------------------------------------------------------- accumulation


def per_token_loss(theta, x):
    """A nonlinear parameterised per-token loss [B, T]."""
    return jnp.sin(theta[0] * x + theta[1]) * (1.0 + theta[2] * x * x)


@functools.partial(jax.jit, static_argnums=3)
def _accumulated(theta, x, mask, split):
    """For every mode: (full aggregate, its grad, accumulated value, accumulated grad),
    micro-batches = rows [:split] and [split:]; totals and counts summed, divided once."""
    out = {}
    for mode in MODES:

        def full(theta, mode=mode):
            return agg.aggregate(per_token_loss(theta, x), mask, mode)

        def part_total(theta, rows, mode=mode):
            return agg.aggregate_parts(per_token_loss(theta, x[rows]), mask[rows], mode)[0]

        def part_count(rows, mode=mode):
            return agg.aggregate_parts(x[rows], mask[rows], mode)[1]

        first, second = slice(None, split), slice(split, None)
        count = part_count(first) + part_count(second)
        safe = jnp.where(count > 0, count, 1.0)
        value = jnp.where(
            count > 0, (part_total(theta, first) + part_total(theta, second)) / safe, 0.0
        )
        # What a gradient-accumulation loop does: grad(total_i) / global count, summed.
        grad = (
            jax.grad(part_total)(theta, first) / safe + jax.grad(part_total)(theta, second) / safe
        )
        grad = jnp.where(count > 0, grad, 0.0)
        out[mode] = (full(theta), jax.grad(full)(theta), value, grad)
    return out


@st.composite
def micro_batched(draw):
    """`(theta, x, mask, split)`: parameters, a finite `[B, T]` batch and its mask, and the
    row where the batch splits into two micro-batches (one may hold no valid token)."""
    (b, t), split = draw(st.sampled_from([((2, 5), 1), ((4, 3), 3), ((5, 6), 2)]))
    kind = draw(st.sampled_from(["random", "empty-rows", "all-empty"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    theta = jnp.asarray(rng.standard_normal(3), jnp.float32)
    # x stays finite: a NaN input would make d loss / d theta NaN at masked tokens, and
    # 0 * NaN = NaN in the caller's own backward pass, whatever the aggregation does.
    x = rng.standard_normal((b, t)).astype(np.float32)
    mask = rng.random((b, t)) < 0.6
    if kind == "empty-rows":
        mask[rng.integers(b)] = False
        if rng.random() < 0.5:
            mask[:split] = False  # a micro-batch with no valid token at all
    elif kind == "all-empty":
        mask[:] = False
    return theta, x, mask, split


def _check_against_the_whole_batch(results, theta, x, mask):
    """`results[mode] = (value, grad, accumulated value, accumulated grad)`."""
    for mode, (value, grad, acc_value, acc_grad) in results.items():
        np.testing.assert_allclose(acc_value, value, rtol=1e-5, atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(acc_grad, grad, rtol=1e-5, atol=1e-6, err_msg=mode)
        assert np.isfinite(np.asarray(grad)).all(), mode
        want = ref_aggregate(np.asarray(per_token_loss(theta, x)), mask, mode)
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6, err_msg=mode)


@given(micro_batched())
def test_gradient_accumulation_is_exact_for_every_mode(problem):
    theta, x, mask, split = problem
    results = _accumulated(theta, x, mask, split)  # one compile per (shape, split)
    _check_against_the_whole_batch(results, theta, x, mask)


@functools.partial(jax.jit, static_argnums=3)
def _shares(theta, x, mask, split):
    """For every mode: the whole batch's aggregate and gradient, and the sum of the two
    micro-batches' `global_token_mean` shares (with the whole mask's `global_count`) and
    of their gradients."""
    out = {}
    for mode in MODES:
        count = agg.global_count(mask, mode)

        def shares(theta, mode=mode, count=count):
            parts = (slice(None, split), slice(split, None))
            return sum(
                agg.global_token_mean(per_token_loss(theta, x[r]), mask[r], mode, count=count)
                for r in parts
            )

        def whole(theta, mode=mode):
            return agg.aggregate(per_token_loss(theta, x), mask, mode)

        out[mode] = (*jax.value_and_grad(whole)(theta), *jax.value_and_grad(shares)(theta))
    return out


@given(micro_batched())
def test_global_token_mean_shares_of_micro_batches_sum_to_the_aggregate(problem):
    theta, x, mask, split = problem
    _check_against_the_whole_batch(_shares(theta, x, mask, split), theta, x, mask)
    for mode in MODES:
        assert float(agg.global_count(mask, mode)) == float(agg.aggregate_parts(x, mask, mode)[1])


def test_global_token_mean_without_count_or_axis_is_the_local_aggregate():
    x = jnp.array([[1.0, 3.0], [5.0, jnp.nan]])
    m = jnp.array([[1, 1], [1, 0]])
    for mode in ALL_NAMES:
        np.testing.assert_allclose(
            agg.global_token_mean(x, m, mode), agg.aggregate(x, m, mode), rtol=1e-6
        )
    # The count is a constant of the loss: no gradient flows into it.
    assert float(jax.grad(lambda n: agg.global_token_mean(x, m, count=n))(3.0)) == 0.0
    assert float(agg.global_token_mean(x, m, count=0.0)) == 0.0  # 0, not NaN
    np.testing.assert_allclose(agg.global_token_mean(x, m, count=9.0), 1.0)


def test_global_token_mean_and_count_bad_input():
    x, m = jnp.zeros((2, 3)), jnp.ones((2, 3))
    with pytest.raises(ValueError, match="`count`"):
        agg.global_token_mean(x, m, count=-1.0)
    with pytest.raises(ValueError, match="`count`"):
        agg.global_token_mean(x, m, count=jnp.ones(2))
    with pytest.raises(ValueError, match="`mode`"):
        agg.global_token_mean(x, m, "token-sum")
    with pytest.raises(ValueError, match="`mask` must have rank 2"):
        agg.global_count(jnp.ones(3))
    with pytest.raises(TypeError, match="`mask`"):
        agg.global_count(jnp.ones((2, 3), jnp.complex64))
    with pytest.raises(ValueError, match="`mode`"):
        agg.global_count(m, "tokens")
    with pytest.raises(ValueError, match="unknown `loss_aggregation` 'x'; expected one of"):
        agg.canonical_mode("x", "loss_aggregation")


def test_naive_accumulation_of_means_is_not_exact():
    # The contrast that makes the exactness test meaningful: averaging per-micro-batch
    # token means differs from the full token mean when micro-batches hold different counts.
    x = jnp.array([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    naive = 0.5 * (agg.aggregate(x[:1], mask[:1]) + agg.aggregate(x[1:], mask[1:]))
    assert abs(float(naive) - float(agg.aggregate(x, mask))) > 0.5


# ----------------------------------------------------------------------------- shard_map


@pytest.mark.parametrize("mode", ALL_NAMES)
def test_shard_map_with_axis_name_equals_single_device(mesh, mode):
    rng = np.random.default_rng(len(mode))
    b, t = 16, 5  # two rows per device
    values = rng.standard_normal((b, t)).astype(np.float32)
    mask = rng.random((b, t)) < 0.5
    mask[0:2] = False  # device 0 holds only empty rows
    mask[5] = False  # an empty row beside a non-empty one
    mask[6:8] = True
    values = np.where(mask, values, np.nan).astype(np.float32)

    def sharded(v, m):
        return jax.shard_map(
            lambda v, m: agg.aggregate(v, m, mode, axis_name="data"),
            mesh=mesh,
            in_specs=(P("data"), P("data")),
            out_specs=P(),
        )(v, m)

    on_mesh = jax.sharding.NamedSharding(mesh, P("data"))
    values_s, mask_s = jax.device_put(values, on_mesh), jax.device_put(mask, on_mesh)
    got = jax.jit(sharded)(values_s, mask_s)
    np.testing.assert_allclose(got, agg.aggregate(values, mask, mode), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, ref_aggregate(values, mask, mode), rtol=1e-5, atol=1e-6)
    # Gradients w.r.t. the (sharded) per-token values match the single-device ones too.
    g_sharded = jax.jit(jax.grad(sharded))(values_s, mask_s)
    g_single = jax.grad(agg.aggregate)(values, mask, mode)
    np.testing.assert_allclose(g_sharded, g_single, rtol=1e-6, atol=1e-7)
    assert float(jnp.max(jnp.abs(g_single))) > 0


def test_shard_map_without_axis_name_is_local(mesh):
    # Without axis_name each device aggregates its own rows (so axis_name is what matters).
    values = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    values_s = jax.device_put(values, jax.sharding.NamedSharding(mesh, P("data")))
    local = jax.jit(
        jax.shard_map(
            lambda v: agg.aggregate(v)[None],
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P("data"),
        )
    )(values_s)
    np.testing.assert_allclose(local, values.reshape(8, 4).mean(axis=1))


# ------------------------------------------------------------------ masked_sum / masked_mean


@given(
    st.sampled_from([(1, 1), (1, 12), (3, 4), (5, 12)]),
    st.sampled_from([-1, 0, None, (0, 1)]),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_masked_sum_and_mean_match_reference(shape, axis, keep, seed):
    b, t = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t)).astype(np.float32)
    mask = rng.random((b, t)) < keep
    if b > 1:
        mask[rng.integers(b)] = False  # an all-masked row
    x_nan = np.where(mask, x, np.nan).astype(np.float32)  # NaN wherever masked

    s = _jit_masked_sum(x_nan, mask, axis=axis)
    m = _jit_masked_mean(x_nan, mask, axis=axis)
    if axis == -1:
        want_s, want_m = ref_masked_sum_rows(x, mask), ref_masked_mean_rows(x, mask)
    elif axis == 0:
        want_s, want_m = ref_masked_sum_rows(x.T, mask.T), ref_masked_mean_rows(x.T, mask.T)
    else:  # all axes
        flat_x, flat_m = x.reshape(1, -1), mask.reshape(1, -1)
        want_s = ref_masked_sum_rows(flat_x, flat_m)[0]
        want_m = ref_masked_mean_rows(flat_x, flat_m)[0]
    np.testing.assert_allclose(s, want_s, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(m, want_m, rtol=RTOL, atol=ATOL)
    assert np.all(np.isfinite(np.asarray(m)))

    # masked_mean == masked_sum / count wherever count > 0, and 0 where the count is 0.
    count = np.asarray(mask, np.float64).sum(axis=None if axis == (0, 1) else axis)
    ratio = np.where(count > 0, np.asarray(s) / np.where(count > 0, count, 1), 0.0)
    np.testing.assert_allclose(m, ratio, rtol=1e-5, atol=1e-6)


def test_masked_mean_all_masked_is_zero_and_nan_does_not_leak():
    x = jnp.array([[1.0, jnp.nan, 3.0], [jnp.nan, jnp.inf, -jnp.inf]])
    mask = jnp.array([[1, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(agg.masked_mean(x, mask), [2.0, 0.0])
    np.testing.assert_array_equal(agg.masked_sum(x, mask), [4.0, 0.0])
    np.testing.assert_array_equal(agg.masked_mean(x, mask, axis=None), 2.0)
    # Gradients: 1/count on selected entries, exactly 0 (not NaN) on masked ones.
    g_mean = jax.grad(lambda x: jnp.sum(agg.masked_mean(x, mask)))(x)
    np.testing.assert_array_equal(g_mean, [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])
    g_sum = jax.grad(lambda x: jnp.sum(agg.masked_sum(x, mask)))(x)
    np.testing.assert_array_equal(g_sum, [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # mask=None means every entry counts.
    y = jnp.array([[1.0, 2.0, 6.0]])
    np.testing.assert_array_equal(agg.masked_mean(y), [3.0])
    np.testing.assert_array_equal(agg.masked_sum(y), [9.0])


def test_masked_reductions_compose_with_jit_vmap_and_grad():
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    mask = jnp.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    for fn, ref in ((agg.masked_sum, ref_masked_sum_rows), (agg.masked_mean, ref_masked_mean_rows)):
        np.testing.assert_allclose(jax.jit(fn)(w, mask), ref(w, mask), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(jax.vmap(fn)(w, mask), ref(w, mask), rtol=RTOL, atol=ATOL)
        check_grads(
            jax.jit(lambda x, f=fn: f(x, mask)), (w,), 1, modes=("fwd", "rev"), atol=1e-2,
            rtol=1e-2, eps=1e-2,
        )  # fmt: skip
        with pytest.raises(ValueError, match="`mask`"):
            fn(w, jnp.ones((4, 3)))
        with pytest.raises(TypeError, match="`x`"):
            fn(w.astype(jnp.int32), mask)


# ----------------------------------------------------------------------------- composition


def test_jit_vmap_grad_and_check_grads():
    rng = np.random.default_rng(0)
    values = jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32)
    mask = jnp.asarray(rng.random((3, 4, 5)) < 0.6).at[0, 1].set(False)
    for mode in MODES:
        batched = jax.jit(jax.vmap(lambda v, m, mo=mode: agg.aggregate(v, m, mo)))(values, mask)
        for k in range(3):
            want = ref_aggregate(values[k], mask[k], mode)
            np.testing.assert_allclose(batched[k], want, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(
                _jit_aggregate(values[k], mask[k], mode), want, rtol=RTOL, atol=ATOL
            )
        check_grads(
            jax.jit(lambda v, mo=mode: agg.aggregate(v, mask[0], mo)),
            (values[0],),
            1,
            modes=("fwd", "rev"),
            atol=1e-2,
            rtol=1e-2,
            eps=1e-2,
        )
    # norm is a number one may sweep: vmap over it without recompiling per value.
    norms = jnp.array([1.0, 2.0, 8.0])
    swept = jax.jit(
        jax.vmap(lambda n: agg.aggregate(values[0], mask[0], "seq-mean-token-sum-norm", norm=n))
    )(norms)
    for i, n in enumerate([1.0, 2.0, 8.0]):
        want = ref_aggregate(values[0], mask[0], "seq-mean-token-sum-norm", n)
        np.testing.assert_allclose(swept[i], want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_naming_the_argument():
    x = jnp.zeros((2, 3))
    for fn in (agg.aggregate, agg.aggregate_parts):
        with pytest.raises(ValueError, match="`mode`"):
            fn(x, None, "token-sum")
        with pytest.raises(ValueError, match="`mode`"):
            fn(x, None, "seq-token-mean")
        with pytest.raises(ValueError, match="`mode`"):
            fn(x, None, None)
        with pytest.raises(ValueError, match="`values`"):
            fn(jnp.zeros(3), None)
        with pytest.raises(ValueError, match="`values`"):
            fn(jnp.zeros((2, 3, 1)), None)
        with pytest.raises(TypeError, match="`values`"):
            fn(x.astype(jnp.int32), None)
        with pytest.raises(ValueError, match="`mask`"):
            fn(x, jnp.ones((3, 2)))
        with pytest.raises(ValueError, match="`norm`"):
            fn(x, None, "token-mean", norm=3.0)
        with pytest.raises(ValueError, match="`norm`"):
            fn(x, None, "seq-mean-token-sum", norm=3.0)
        for bad in (0.0, -1.0):
            with pytest.raises(ValueError, match="`norm`"):
                fn(x, None, "sequence-mean-token-sum-norm", norm=bad)
