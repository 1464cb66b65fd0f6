"""Tests for rlgen.ops.distributed (`psum`, `pmean`, `shard_local`) and the data-parallel
use of `global_token_mean`: on 8 CPU devices under `shard_map`, the shards' shares and their
gradients (taken with respect to `shard_local` parameters, then `psum`-ed) equal the
single-device `aggregate` of the whole batch and its gradient, in every mode.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlgen import ops

MODES = ops.AGGREGATION_MODES


def per_token_loss(theta, x):
    """A nonlinear parameterised per-token loss [B, T]."""
    return jnp.sin(theta[0] * x + theta[1]) * (1.0 + theta[2] * x * x)


def test_without_an_axis_name_the_reductions_are_the_identity():
    tree = {"a": jnp.arange(3.0), "b": (jnp.ones(()),)}
    assert ops.psum(tree, None) is tree
    assert ops.pmean(tree, None) is tree
    assert ops.shard_local(tree, None) is tree


def test_reductions_over_a_vmapped_axis():
    x = jnp.array([[1.0, 2.0], [3.0, 5.0], [-1.0, 0.0]])
    summed = jax.vmap(lambda v: ops.psum({"v": v}, "i"), axis_name="i")(x)["v"]
    averaged = jax.vmap(lambda v: ops.pmean(v, "i"), axis_name="i")(x)
    np.testing.assert_array_equal(summed, np.broadcast_to([3.0, 7.0], (3, 2)))
    np.testing.assert_allclose(averaged, np.broadcast_to([1.0, 7.0 / 3.0], (3, 2)), rtol=1e-6)


def test_reductions_and_shard_local_under_shard_map(mesh):
    x = np.arange(16.0, dtype=np.float32).reshape(8, 2)
    w = np.array([0.5, -2.0], np.float32)

    @jax.jit
    @functools.partial(
        jax.shard_map, mesh=mesh, in_specs=(P("data"), P()), out_specs=(P(), P(), P("data"))
    )
    def run(x_s, w_r):
        local = ops.shard_local(w_r, "data")
        again = ops.shard_local(local, "data")  # already varying: left as is
        return ops.psum(x_s, "data"), ops.pmean(x_s, "data"), (again * x_s)

    total, mean, product = run(jax.device_put(x, NamedSharding(mesh, P("data"))), w)
    np.testing.assert_array_equal(total, x.sum(axis=0, keepdims=True))
    np.testing.assert_allclose(mean, x.mean(axis=0, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(product, w * x)  # values unchanged by shard_local


def _batch(seed, b=16, t=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t)).astype(np.float32)
    mask = rng.random((b, t)) < 0.5
    mask[0:2] = False  # device 0 holds only empty rows
    mask[5] = False  # an empty row beside a non-empty one
    mask[6:8] = True
    theta = rng.standard_normal(3).astype(np.float32)
    return theta, x, mask


def _data_parallel_step(mesh, mode, *, local=True):
    """The value and gradient a data-parallel step computes from the shards' shares."""

    @jax.jit
    @functools.partial(
        jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P(), P())
    )
    def step(theta, x_s, m_s):
        def share(th):
            return ops.global_token_mean(per_token_loss(th, x_s), m_s, mode, "data")

        params = ops.shard_local(theta, "data") if local else theta
        value, grad = jax.value_and_grad(share)(params)
        return ops.psum(value, "data"), ops.psum(grad, "data")

    return step


@pytest.mark.parametrize("mode", MODES)
def test_shard_shares_and_their_gradients_equal_the_whole_batch(mesh, mode):
    theta, x, mask = _batch(len(mode))
    on_mesh = NamedSharding(mesh, P("data"))
    x_s, m_s = jax.device_put(x, on_mesh), jax.device_put(mask, on_mesh)
    value, grad = _data_parallel_step(mesh, mode)(theta, x_s, m_s)

    def whole(th):
        return ops.aggregate(per_token_loss(th, x), mask, mode)

    want_value, want_grad = jax.value_and_grad(whole)(theta)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(want_grad))) > 0


def test_shard_local_is_what_keeps_the_summed_gradient_exact(mesh):
    # With replication typing (`pcast`/`pvary`), the gradient with respect to replicated
    # parameters comes out summed over the axis already; summing it again counts it once
    # per device.
    if not (hasattr(jax.lax, "pcast") or hasattr(jax.lax, "pvary")):
        pytest.skip("this JAX has no replication typing: gradients are per shard anyway")
    theta, x, mask = _batch(0)
    on_mesh = NamedSharding(mesh, P("data"))
    x_s, m_s = jax.device_put(x, on_mesh), jax.device_put(mask, on_mesh)
    _, exact = _data_parallel_step(mesh, "token-mean")(theta, x_s, m_s)
    _, doubled = _data_parallel_step(mesh, "token-mean", local=False)(theta, x_s, m_s)
    np.testing.assert_allclose(doubled, 8.0 * np.asarray(exact), rtol=1e-5, atol=1e-6)


def test_global_count_under_shard_map_is_the_whole_batch_count(mesh):
    _, x, mask = _batch(3)
    m_s = jax.device_put(mask, NamedSharding(mesh, P("data")))
    for mode in MODES:
        sharded = jax.jit(
            jax.shard_map(
                lambda m, mo=mode: ops.global_count(m, mo, "data"),
                mesh=mesh,
                in_specs=P("data"),
                out_specs=P(),
            )
        )(m_s)
        assert float(sharded) == float(ops.aggregate_parts(x, mask, mode)[1]), mode
