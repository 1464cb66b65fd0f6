"""Gaussian policy steps: the log-probability of a sampler step and the KL between two steps.

A stochastic sampler step of a diffusion or flow model draws ``x' ~ N(mean, std^2 I)``;
RL fine-tuning (DDPO, Black et al. 2023, arXiv 2305.13301; Flow-GRPO, Liu et al. 2025,
arXiv 2505.05470) treats it as a policy. Its log-probability is a sum over the ``D``
dimensions of one example,

    log p(x') = sum_d [ -(x'_d - mean_d)^2 / (2 std_d^2) - log std_d - log(2 pi) / 2 ],

and the KL between the policy's step and a reference's step with the same variance is

    KL(N(mean_p, std^2) || N(mean_q, std^2)) = sum_d (mean_p,d - mean_q,d)^2 / (2 std_d^2).

Both reduce over the dimensions in one of two ways, `REDUCTIONS`: ``"sum"`` (the density
of the whole step) or ``"mean"`` (the sum divided by ``D``, as DDPO's and Flow-GRPO's code
does). Clip ranges and KL coefficients tuned for one are wrong by a factor ``D`` for the
other (64 for 8x8 digits, 16,384 for a 4x64x64 latent), so the reduction is a required
argument here: never implicit.

Dimensions with ``std = 0`` (a deterministic step: DDIM with ``eta = 0``, the last DDPM
step) are a point mass: they contribute 0 to both, and still count in ``D``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rlgen import _checks

#: How the per-dimension terms of one example are reduced.
REDUCTIONS = ("sum", "mean")


def _reduce(per_dim: jax.Array, reduction: str) -> jax.Array:
    _checks.check_choice(reduction, REDUCTIONS, "reduction")
    flat = per_dim.reshape(per_dim.shape[0], -1)
    return jnp.sum(flat, axis=1) if reduction == "sum" else jnp.mean(flat, axis=1)


def _step_arrays(x, mean, std, x_name: str):
    mean = _checks.float_array(mean, "mean", min_rank=1, upcast=True)
    x = _checks.float_array(x, x_name, shape=mean.shape, like="mean").astype(mean.dtype)
    std = _checks.float_array(std, "std", min_rank=0).astype(mean.dtype)
    try:
        std = jnp.broadcast_to(std, mean.shape)
    except ValueError:
        raise ValueError(
            f"`std` of shape {std.shape} does not broadcast to `mean`'s {mean.shape}"
        ) from None
    return x, mean, std


def gaussian_step_log_prob(x, mean, std, *, reduction: str) -> jax.Array:
    """``log N(x; mean, std^2 I)`` per example, reduced over its dimensions (module docstring).

    Args:
      x: ``[B, ...]`` the step's outcome.
      mean: ``[B, ...]`` the step's mean.
      std: the step's standard deviation, broadcastable to ``mean`` (a scalar, or
        ``[B, ...]``); ``0`` marks deterministic dimensions (they contribute 0).
      reduction: ``"sum"`` or ``"mean"`` over the ``D`` dimensions of an example
        (`REDUCTIONS`), required.

    Returns:
      ``[B]`` in float32 (or the inputs' wider float type).

    Example:
      >>> x, mean = jnp.zeros((1, 2)), jnp.zeros((1, 2))
      >>> gaussian_step_log_prob(x, mean, 1.0, reduction="sum").round(4)
      Array([-1.8379], dtype=float32)
      >>> gaussian_step_log_prob(x, mean, 1.0, reduction="mean").round(4)
      Array([-0.919], dtype=float32)
    """
    x, mean, std = _step_arrays(x, mean, std, "x")
    stochastic = std > 0
    safe = jnp.where(stochastic, std, 1.0)
    z = (x - mean) / safe
    per_dim = -0.5 * jnp.square(z) - jnp.log(safe) - 0.5 * math.log(2 * math.pi)
    return _reduce(jnp.where(stochastic, per_dim, 0.0), reduction)


def gaussian_step_kl(mean_p, mean_q, std, *, reduction: str) -> jax.Array:
    """``KL(N(mean_p, std^2 I) || N(mean_q, std^2 I))`` per example, reduced (module
    docstring): the closed form for two steps of equal variance, e.g. the policy's and a
    frozen reference's step from the same state.

    Args:
      mean_p: ``[B, ...]`` the policy's step mean.
      mean_q: ``[B, ...]`` the reference's step mean.
      std: the shared standard deviation, broadcastable to ``mean_p``; dimensions with
        ``std = 0`` contribute 0.
      reduction: ``"sum"`` or ``"mean"`` (`REDUCTIONS`), required.

    Returns:
      ``[B]``, ``>= 0``; exactly 0 where the means are equal.

    Example:
      >>> gaussian_step_kl(jnp.ones((1, 4)), jnp.zeros((1, 4)), 0.5, reduction="mean")
      Array([2.], dtype=float32)
    """
    mean_q, mean_p, std = _step_arrays(mean_q, mean_p, std, "mean_q")
    stochastic = std > 0
    safe = jnp.where(stochastic, std, 1.0)
    per_dim = jnp.square(mean_p - mean_q) / (2.0 * jnp.square(safe))
    return _reduce(jnp.where(stochastic, per_dim, 0.0), reduction)
