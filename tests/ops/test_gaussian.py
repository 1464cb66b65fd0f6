"""rlgen.ops.gaussian: a sampler step's log-prob and the KL of two steps, against float64
NumPy, tied to each other, with the reduction explicit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlgen import ops
from rlgen.ops.gaussian import REDUCTIONS


def _reference_log_prob(x, mean, std, reduction):
    x, mean, std = (np.asarray(a, np.float64) for a in (x, mean, np.broadcast_to(std, x.shape)))
    safe = np.where(std > 0, std, 1.0)
    per_dim = -0.5 * ((x - mean) / safe) ** 2 - np.log(safe) - 0.5 * math.log(2 * math.pi)
    per_dim = np.where(std > 0, per_dim, 0.0).reshape(len(x), -1)
    return per_dim.sum(1) if reduction == "sum" else per_dim.mean(1)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.sampled_from(REDUCTIONS),
    st.integers(0, 2**31 - 1),
)
def test_log_prob_and_kl_match_float64_references(b, h, w, reduction, seed):
    rng = np.random.default_rng(seed)
    x, mean, other = (rng.normal(size=(b, h, w)).astype(np.float32) for _ in range(3))
    std = rng.uniform(0.1, 2.0, size=(b, h, w)).astype(np.float32)
    std[..., 0] = 0.0  # a deterministic dimension
    got = ops.gaussian_step_log_prob(x, mean, std, reduction=reduction)
    np.testing.assert_allclose(got, _reference_log_prob(x, mean, std, reduction), rtol=1e-5,
                               atol=1e-5)
    kl = ops.gaussian_step_kl(mean, other, std, reduction=reduction)
    safe = np.where(std > 0, std, 1.0)
    per_dim = np.where(std > 0, (mean - other) ** 2 / (2.0 * safe**2), 0.0).reshape(b, -1)
    want = per_dim.sum(1) if reduction == "sum" else per_dim.mean(1)
    np.testing.assert_allclose(kl, want, rtol=1e-5, atol=1e-6)


def test_mean_is_the_sum_over_the_dimension_count():
    x, mean = jnp.ones((3, 8, 8)), jnp.zeros((3, 8, 8))
    total = ops.gaussian_step_log_prob(x, mean, 0.7, reduction="sum")
    np.testing.assert_allclose(ops.gaussian_step_log_prob(x, mean, 0.7, reduction="mean") * 64,
                               total, rtol=1e-6)


def test_kl_is_the_log_ratio_at_the_policy_mean_and_zero_for_equal_steps():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(2, 2, 5)).astype(np.float32)
    std = rng.uniform(0.2, 1.0, size=(2, 5)).astype(np.float32)
    for reduction in REDUCTIONS:
        log_ratio = ops.gaussian_step_log_prob(p, p, std, reduction=reduction) - (
            ops.gaussian_step_log_prob(p, q, std, reduction=reduction)
        )
        np.testing.assert_allclose(ops.gaussian_step_kl(p, q, std, reduction=reduction),
                                   log_ratio, rtol=1e-5)
        np.testing.assert_array_equal(ops.gaussian_step_kl(p, p, std, reduction=reduction), 0.0)


def test_the_diffusion_step_log_prob_is_the_summed_kernel():
    from rlgen.generative import diffusion

    rng = np.random.default_rng(1)
    x, mean = rng.normal(size=(2, 2, 3)).astype(np.float32)
    std = np.full((2, 3), 0.5, np.float32)
    np.testing.assert_array_equal(
        diffusion.step_log_prob(x, mean, std),
        ops.gaussian_step_log_prob(x, mean, std, reduction="sum"),
    )


def test_jit_and_vmap_over_seeds():
    def f(key):
        x = jax.random.normal(key, (4, 6))
        return ops.gaussian_step_log_prob(x, jnp.zeros((4, 6)), 1.0, reduction="mean")

    keys = jax.random.split(jax.random.key(0), 3)
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(keys), jnp.stack([f(k) for k in keys]),
                               rtol=1e-6)


def test_the_reduction_is_required_and_checked():
    x = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="reduction"):
        ops.gaussian_step_log_prob(x, x, 1.0)  # never implicit
    with pytest.raises(ValueError, match="reduction"):
        ops.gaussian_step_kl(x, x, 1.0, reduction="max")
    with pytest.raises(ValueError, match="does not broadcast"):
        ops.gaussian_step_log_prob(x, x, jnp.ones(4), reduction="sum")
    with pytest.raises(ValueError, match="mean"):
        ops.gaussian_step_log_prob(jnp.zeros((2, 4)), x, 1.0, reduction="sum")
