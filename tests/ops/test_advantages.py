"""Proofs for `rlgen.ops.advantages`: masked moments, whitening, GRPO group advantages, RLOO.

The float64 NumPy references below follow the module docstrings. Random entries are drawn
on a grid of quarters so that two entries are either equal or at least 0.25 apart: the
all-equal special case is then hit often, and float32 never meets a tiny spread.

Speed: the kernels are called through module-level `jax.jit` wrappers and shapes come from
a small palette, so the compile cache stays warm across hypothesis examples (on CPU an
eager call compiles every op per new shape, which is slower).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from rlgen.ops.advantages import (
    group_advantages,
    masked_moments,
    normalize_advantages,
    rloo_advantages,
)

try:
    shard_map = jax.shard_map
except AttributeError:  # older JAX
    from jax.experimental.shard_map import shard_map

RTOL, ATOL = 1e-4, 1e-5

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4)]  # normalize / moments: any shape
GROUP_SIZES = [1, 2, 3, 5]
NUM_GROUPS = [1, 4]

J_MOMENTS = jax.jit(masked_moments, static_argnames="ddof")
J_NORMALIZE = jax.jit(normalize_advantages, static_argnames="ddof")
J_GROUP = jax.jit(group_advantages, static_argnames=("group_size", "scale", "ddof"))
J_RLOO = jax.jit(rloo_advantages, static_argnames="group_size")

# ----------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------


def ref_moments(x, mask, ddof):
    sel = np.asarray(x, np.float64)[np.asarray(mask) > 0]
    if sel.size == 0:
        return 0.0, 0.0
    std = np.std(sel, ddof=ddof) if sel.size > ddof else 0.0
    return float(np.mean(sel)), float(std)


def ref_normalize(a, mask, eps, ddof):
    a = np.asarray(a, np.float64)
    valid = np.asarray(mask) > 0
    sel = a[valid]
    out = np.zeros_like(a)
    if sel.size == 0 or np.all(sel == sel[0]):
        return out
    mean, std = ref_moments(a, mask, ddof)
    out[valid] = (a[valid] - mean) / (std + eps)
    return out


def ref_group(r, group_size, scale, eps, ddof):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    batch_std = np.std(r, ddof=ddof) if r.size > ddof else 0.0
    for start in range(0, r.size, group_size):
        g = r[start : start + group_size]
        if np.all(g == g[0]):
            continue
        if scale == "group":
            s = np.std(g, ddof=ddof) + eps
        elif scale == "batch":
            s = batch_std + eps
        else:
            s = 1.0
        out[start : start + group_size] = (g - g.mean()) / s
    return out


def ref_rloo(r, group_size):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    for start in range(0, r.size, group_size):
        for i in range(start, start + group_size):
            others = [r[j] for j in range(start, start + group_size) if j != i]
            out[i] = r[i] - sum(others) / len(others)
    return out


def test_references_are_not_vacuous():
    np.testing.assert_allclose(ref_moments([1.0, 3.0, 100.0], [1, 1, 0], 0), (2.0, 1.0))
    np.testing.assert_allclose(ref_moments([1.0, 3.0, 100.0], [1, 1, 0], 1), (2.0, np.sqrt(2)))
    np.testing.assert_allclose(ref_normalize([1.0, 3.0, 7.0], [1, 1, 0], 0.0, 0), [-1, 1, 0])
    # groups [1, 3] and [2, 2]: mean 2, unbiased std sqrt(2); the constant group is 0
    np.testing.assert_allclose(
        ref_group([1.0, 3.0, 2.0, 2.0], 2, "group", 0.0, 1), [-1 / np.sqrt(2), 1 / np.sqrt(2), 0, 0]
    )
    np.testing.assert_allclose(ref_rloo([3.0, 0.0, 0.0], 3), [3.0, -1.5, -1.5])


# ----------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------

quarters = st.integers(-40, 40).map(lambda k: k / 4.0)


@st.composite
def masked_arrays(draw):
    shape = draw(st.sampled_from(SHAPES))
    x = draw(hnp.arrays(np.float64, shape, elements=quarters))
    mask = draw(hnp.arrays(np.bool_, shape, fill=st.nothing()))  # each entry drawn alone
    if draw(st.booleans()):
        mask = np.ones(shape, bool)
    return x, mask


@st.composite
def grouped_rewards(draw, min_group=1):
    group_size = draw(st.sampled_from([g for g in GROUP_SIZES if g >= min_group]))
    n = group_size * draw(st.sampled_from(NUM_GROUPS))
    rewards = draw(hnp.arrays(np.float64, (n,), elements=quarters))
    return rewards, group_size


ddofs = st.sampled_from([0, 1])
epss = st.sampled_from([0.0, 1e-8, 1e-4, 0.1])
scales = st.sampled_from(["group", "batch", "none"])


def f32(x):
    return np.asarray(x, np.float32)


# ----------------------------------------------------------------------------------------
# Kernels vs references
# ----------------------------------------------------------------------------------------


@given(masked_arrays(), ddofs)
def test_masked_moments_matches_reference(xm, ddof):
    x, mask = xm
    mean, std = J_MOMENTS(f32(x), mask.astype(np.float32), ddof=ddof)
    assert mean.shape == std.shape == ()
    np.testing.assert_allclose(
        (float(mean), float(std)), ref_moments(x, mask, ddof), rtol=RTOL, atol=ATOL
    )


@given(masked_arrays(), ddofs, epss)
def test_normalize_matches_reference(xm, ddof, eps):
    x, mask = xm
    out = np.asarray(J_NORMALIZE(f32(x), eps, mask=mask.astype(np.float32), ddof=ddof))
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref_normalize(x, mask, eps, ddof), rtol=RTOL, atol=ATOL)


@given(grouped_rewards(), scales, ddofs, epss)
def test_group_advantages_matches_reference(rg, scale, ddof, eps):
    rewards, group_size = rg
    out = np.asarray(J_GROUP(f32(rewards), group_size, scale=scale, eps=eps, ddof=ddof))
    assert out.shape == rewards.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(
        out, ref_group(rewards, group_size, scale, eps, ddof), rtol=RTOL, atol=ATOL
    )


@given(grouped_rewards(min_group=2))
def test_rloo_matches_reference_and_scaled_group_advantages(rg):
    rewards, group_size = rg
    out = np.asarray(J_RLOO(f32(rewards), group_size))
    np.testing.assert_allclose(out, ref_rloo(rewards, group_size), rtol=RTOL, atol=ATOL)
    none = np.asarray(J_GROUP(f32(rewards), group_size, scale="none", eps=1e-4, ddof=1))
    np.testing.assert_allclose(out, group_size / (group_size - 1) * none, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------

wide = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(
    st.sampled_from(GROUP_SIZES),
    st.sampled_from(NUM_GROUPS),
    st.data(),
    scales,
    ddofs,
)
def test_group_advantages_have_zero_mean_per_group(group_size, groups, data, scale, ddof):
    rewards = data.draw(hnp.arrays(np.float32, (group_size * groups,), elements=wide))
    out = np.asarray(J_GROUP(rewards, group_size, scale=scale, eps=1e-4, ddof=ddof))
    per_group = out.reshape(groups, group_size)
    bound = 1e-5 * (1.0 + np.abs(per_group).max(axis=1))  # relative to the magnitudes
    assert np.all(np.abs(per_group.mean(axis=1)) <= bound), per_group.mean(axis=1)
    if scale == "group" and group_size > 1:
        # Each non-constant group is whitened: its std (same ddof) is 1 up to eps.
        for g, row in zip(rewards.reshape(groups, group_size), per_group, strict=True):
            if np.ptp(g) > 1e-2:
                np.testing.assert_allclose(np.std(row, ddof=ddof), 1.0, rtol=1e-3)


@pytest.mark.parametrize("value", [0.1, 1e6 + 0.1, -3.0, 0.0])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_all_equal_groups_give_exactly_zero(value, scale, eps):
    rewards = np.full(12, value, np.float32)
    for ddof in (0, 1):
        out = np.asarray(J_GROUP(rewards, 3, scale=scale, eps=eps, ddof=ddof))
        assert np.all(out == 0.0), out
    # One constant group among non-constant ones is still exactly 0.
    mixed = rewards.copy()
    mixed[3:6] = [value + 1.0, value, value - 2.0]  # group 1 varies
    out = np.asarray(J_GROUP(mixed, 3, scale=scale, eps=eps, ddof=1))
    assert np.all(np.isfinite(out))
    assert np.all(out[[0, 1, 2, 6, 7, 8, 9, 10, 11]] == 0.0), out
    assert np.all(out[3:6] != 0.0)
    assert np.all(np.asarray(J_RLOO(rewards, 3)) == 0.0)
    assert np.all(np.asarray(J_RLOO(mixed, 3))[[0, 1, 2, 9, 10, 11]] == 0.0)


def test_group_size_one_gives_zero():
    rewards = np.array([1.0, -2.0, 5.0], np.float32)
    for scale in ("group", "batch", "none"):
        for eps in (0.0, 1e-4):
            out = np.asarray(J_GROUP(rewards, 1, scale=scale, eps=eps, ddof=1))
            assert np.all(out == 0.0), (scale, eps, out)


@pytest.mark.parametrize("value", [0.1, 1e6 + 0.1, -7.0])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_normalize_constant_gives_exactly_zero(value, eps):
    a = np.full((3, 5), value, np.float32)
    for ddof in (0, 1):
        assert np.all(np.asarray(J_NORMALIZE(a, eps, ddof=ddof)) == 0.0)
    # Constant over the valid entries, whatever the masked ones hold.
    mask = np.ones((3, 5), np.float32)
    mask[1, 2:] = 0.0
    b = a.copy()
    b[1, 2:] = [1e3, -5.0, value + 1.0]
    assert np.all(np.asarray(J_NORMALIZE(b, eps, mask=mask, ddof=0)) == 0.0)
    assert np.any(np.asarray(J_NORMALIZE(b, eps, ddof=0)) != 0.0)  # unmasked: not constant


def test_empty_mask_gives_zero_not_nan():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    mean, std = masked_moments(x, np.zeros_like(x))
    assert float(mean) == 0.0 and float(std) == 0.0
    out = np.asarray(normalize_advantages(x, 0.0, mask=np.zeros_like(x)))
    assert np.all(out == 0.0)
    # A selection no larger than ddof has std 0 (no division by zero).
    one = np.array([[0, 0, 0], [0, 1, 0]], np.float32)
    mean, std = masked_moments(x, one, ddof=1)
    assert float(mean) == 4.0 and float(std) == 0.0


def test_normalize_whitens():
    rng = np.random.default_rng(1)
    a = rng.normal(3.0, 2.0, size=(4, 9)).astype(np.float32)
    mask = (rng.random((4, 9)) < 0.7).astype(np.float32)
    out = np.asarray(normalize_advantages(a, 0.0, mask=mask))
    sel = out[mask > 0]
    np.testing.assert_allclose(sel.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(sel.std(), 1.0, rtol=1e-5)
    assert np.all(out[mask == 0] == 0.0)


# ----------------------------------------------------------------------------------------
# Composition: jit, vmap, grad
# ----------------------------------------------------------------------------------------

_rng = np.random.default_rng(0)
A = _rng.normal(size=(4, 6)).astype(np.float32)
M = (_rng.random((4, 6)) < 0.75).astype(np.float32)
RW = _rng.normal(size=(12,)).astype(np.float32)


def test_jit_equals_eager():
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda a, m: normalize_advantages(a, mask=m))(A, M)),
        ref_normalize(A, M, 1e-8, 0),
        rtol=RTOL,
        atol=ATOL,
    )
    for scale in ("group", "batch", "none"):
        np.testing.assert_allclose(
            np.asarray(jax.jit(lambda r, s=scale: group_advantages(r, 4, scale=s))(RW)),
            ref_group(RW, 4, scale, 1e-4, 1),
            rtol=RTOL,
            atol=ATOL,
        )


def test_vmap_over_rows_and_eps():
    out = jax.jit(jax.vmap(lambda a, m: normalize_advantages(a, 0.0, mask=m)))(A, M)
    for i in range(A.shape[0]):
        np.testing.assert_allclose(
            np.asarray(out[i]), ref_normalize(A[i], M[i], 0.0, 0), rtol=RTOL, atol=ATOL
        )
    epss = np.array([0.0, 0.1, 1.0], np.float32)
    out = jax.jit(jax.vmap(lambda e: group_advantages(RW, 3, eps=e)))(epss)
    for i, e in enumerate(epss):
        np.testing.assert_allclose(
            np.asarray(out[i]), ref_group(RW, 3, "group", float(e), 1), rtol=RTOL, atol=ATOL
        )
    rows = RW.reshape(3, 4)
    out = jax.jit(jax.vmap(lambda r: rloo_advantages(r, 2)))(rows)
    np.testing.assert_allclose(
        np.asarray(out), np.stack([ref_rloo(r, 2) for r in rows]), rtol=RTOL, atol=ATOL
    )


def test_named_vmap_axis_gives_global_statistics():
    # A named vmap axis behaves as a device axis: statistics span all rows.
    out = jax.jit(
        jax.vmap(lambda a, m: normalize_advantages(a, mask=m, axis_name="i"), axis_name="i")
    )(A, M)
    np.testing.assert_allclose(np.asarray(out), ref_normalize(A, M, 1e-8, 0), rtol=RTOL, atol=ATOL)
    out = jax.jit(
        jax.vmap(lambda r: group_advantages(r, 2, scale="batch", axis_name="i"), axis_name="i")
    )(RW.reshape(3, 4))
    np.testing.assert_allclose(
        np.asarray(out).reshape(-1), ref_group(RW, 2, "batch", 1e-4, 1), rtol=RTOL, atol=ATOL
    )


def test_check_grads():
    kw = dict(order=1, eps=1e-3, atol=1e-2, rtol=1e-2)
    check_grads(
        jax.jit(lambda a: normalize_advantages(a, mask=M)), (A,), modes=("fwd", "rev"), **kw
    )
    check_grads(
        jax.jit(lambda a: jnp.stack(masked_moments(a, M, ddof=1))), (A,), modes=("rev",), **kw
    )
    # (scale="none" and RLOO are linear: their exact Jacobian is checked below.)
    for scale in ("group", "batch"):
        check_grads(
            jax.jit(lambda r, s=scale: group_advantages(r, 3, scale=s)), (RW,), modes=("rev",), **kw
        )


def test_jacobian_of_linear_kernels_matches_closed_form():
    # RLOO: d A_i / d r_j = [i == j] - [same group, j != i] / (G - 1);
    # scale="none": d A_i / d r_j = [i == j] - [same group] / G.
    @jax.jit
    def jacobians(r):
        return (
            jax.jacrev(lambda x: rloo_advantages(x, 3))(r),
            jax.jacrev(lambda x: group_advantages(x, 3, scale="none"))(r),
        )

    jac_rloo, jac_none = (np.asarray(j) for j in jacobians(RW))
    same = np.equal.outer(np.arange(12) // 3, np.arange(12) // 3)
    eye = np.eye(12)
    np.testing.assert_allclose(jac_rloo, eye - (same & (eye == 0)) / 2.0, atol=1e-6)
    np.testing.assert_allclose(jac_none, eye - same / 3.0, atol=1e-6)


def test_grad_is_finite_at_constant_inputs():
    # The outputs there are forced to 0; their gradient must not be NaN (0 * inf).
    const = np.full(6, 0.5, np.float32)
    weights = jnp.arange(6.0)

    @jax.jit
    def grads(x, eps):
        out = [
            jax.grad(lambda r, s=s: jnp.sum(group_advantages(r, 3, scale=s, eps=eps) * weights))(x)
            for s in ("group", "batch")
        ]
        out.append(jax.grad(lambda a: jnp.sum(normalize_advantages(a, eps) * weights))(x))
        out.append(jax.grad(lambda a: masked_moments(a)[1])(x))
        return jnp.stack(out)

    for eps in (0.0, 1e-4):
        g = np.asarray(grads(const, eps))
        assert np.all(np.isfinite(g)), (eps, g)


# ----------------------------------------------------------------------------------------
# Multi-device: shard_map over 8 CPU devices equals one device
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return Mesh(np.array(jax.devices()[:8]), ("x",))


def test_shard_map_normalize_equals_single_device(mesh):
    rng = np.random.default_rng(2)
    a = rng.normal(1.0, 3.0, size=(16, 5)).astype(np.float32)
    mask = (rng.random((16, 5)) < 0.6).astype(np.float32)
    mask[4:6] = 0.0  # one shard holds no valid entry at all
    a[8:10] = 4.0  # one shard's entries are all equal (the batch's are not)
    mask[8:10] = 1.0
    for ddof in (0, 1):
        sharded = jax.jit(
            shard_map(
                lambda x, m, d=ddof: normalize_advantages(x, mask=m, ddof=d, axis_name="x"),
                mesh=mesh,
                in_specs=(P("x"), P("x")),
                out_specs=P("x"),
            )
        )(a, mask)
        whole = normalize_advantages(a, mask=mask, ddof=ddof)
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(whole), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(whole), ref_normalize(a, mask, 1e-8, ddof), rtol=RTOL, atol=ATOL
        )
        # Without axis_name each shard whitens alone: different numbers (the test can fail).
        local = jax.jit(
            shard_map(
                lambda x, m: normalize_advantages(x, mask=m),
                mesh=mesh,
                in_specs=(P("x"), P("x")),
                out_specs=P("x"),
            )
        )(a, mask)
        assert not np.allclose(np.asarray(local), np.asarray(whole), atol=1e-3)


def test_shard_map_constant_batch_normalizes_to_zero(mesh):
    # Constant globally though each shard sees only its own entries.
    a = np.full((8, 3), 2.5, np.float32)
    out = jax.jit(
        shard_map(
            lambda x: normalize_advantages(x, 0.0, axis_name="x"),
            mesh=mesh,
            in_specs=P("x"),
            out_specs=P("x"),
        )
    )(a)
    assert np.all(np.asarray(out) == 0.0)


@pytest.mark.parametrize("scale", ["batch", "group", "none"])
def test_shard_map_group_advantages_equals_single_device(mesh, scale):
    rng = np.random.default_rng(3)
    group_size = 3
    rewards = rng.integers(0, 3, size=8 * 2 * group_size).astype(np.float32)  # 2 groups/shard
    rewards[:group_size] = 1.0  # a constant group
    for ddof in (0, 1):
        sharded = jax.jit(
            shard_map(
                lambda r, d=ddof: group_advantages(
                    r, group_size, scale=scale, ddof=d, axis_name="x"
                ),
                mesh=mesh,
                in_specs=P("x"),
                out_specs=P("x"),
            )
        )(rewards)
        whole = group_advantages(rewards, group_size, scale=scale, ddof=ddof)
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(whole), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(whole),
            ref_group(rewards, group_size, scale, 1e-4, ddof),
            rtol=RTOL,
            atol=ATOL,
        )


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
def test_rewards_not_divisible_by_group_size(fn):
    with pytest.raises(ValueError, match="`group_size` 3"):
        fn(np.zeros(7, np.float32), 3)


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
def test_rank2_rewards(fn):
    with pytest.raises(ValueError, match="`rewards`.*rank 1"):
        fn(np.zeros((4, 2), np.float32), 2)


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
def test_integer_rewards(fn):
    with pytest.raises(TypeError, match="`rewards`.*floating"):
        fn(np.arange(4), 2)


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
@pytest.mark.parametrize("group_size", [0, -2])
def test_non_positive_group_size(fn, group_size):
    with pytest.raises(ValueError, match="`group_size`"):
        fn(np.zeros(4, np.float32), group_size)


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
@pytest.mark.parametrize("group_size", [2.0, True, "2"])
def test_non_int_group_size(fn, group_size):
    with pytest.raises(TypeError, match="`group_size`"):
        fn(np.zeros(4, np.float32), group_size)


@pytest.mark.parametrize("group_size", [1, np.int64(1)])
def test_rloo_group_size_one(group_size):
    with pytest.raises(ValueError, match="`group_size` must be >= 2"):
        rloo_advantages(np.zeros(4, np.float32), group_size)


@pytest.mark.parametrize("scale", ["std", "Group", None])
def test_unknown_scale(scale):
    with pytest.raises(ValueError, match="`scale`"):
        group_advantages(np.zeros(4, np.float32), 2, scale=scale)


def test_negative_eps_and_ddof():
    with pytest.raises(ValueError, match="`eps`"):
        group_advantages(np.zeros(4, np.float32), 2, eps=-1e-4)
    with pytest.raises(ValueError, match="`eps`"):
        normalize_advantages(np.zeros(4, np.float32), -1e-8)
    with pytest.raises(ValueError, match="`ddof`"):
        group_advantages(np.zeros(4, np.float32), 2, ddof=-1)
    with pytest.raises(ValueError, match="`ddof`"):
        normalize_advantages(np.zeros(4, np.float32), ddof=-1)
    with pytest.raises(ValueError, match="`eps`"):
        normalize_advantages(np.zeros(4, np.float32), float("nan"))


def test_normalize_bad_input():
    with pytest.raises(TypeError, match="`advantages`.*floating"):
        normalize_advantages(np.arange(4))
    with pytest.raises(ValueError, match=r"`mask`.*\(2, 3\)"):
        normalize_advantages(np.zeros((2, 3), np.float32), mask=np.ones((3, 2)))
    with pytest.raises(TypeError, match="`x`.*floating"):
        masked_moments(np.arange(4))
    with pytest.raises(ValueError, match="`mask`"):
        masked_moments(np.zeros(4, np.float32), np.ones(5))
