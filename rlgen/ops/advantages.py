"""Advantage normalisation and group-relative baselines.

* `normalize_advantages`: masked whitening, optionally with statistics reduced over a
  named device axis so that every shard sees the global mean and standard deviation.
* `group_advantages`: GRPO's group-relative advantages. Groups are contiguous rows:
  `[p0g0, .., p0g(G-1), p1g0, ..]` (the one place this layout is defined).
* `rloo_advantages`: REINFORCE leave-one-out baselines over the same groups.

A group whose rewards are all equal gets advantage exactly 0 (never NaN, never a tiny
rounding residue divided by `eps`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlgen import _checks
from rlgen.ops.distributed import psum

SCALES = ("group", "batch", "none")


def _safe_sqrt(x):
    # sqrt whose gradient at 0 is 0 rather than inf (an inf there turns into NaN
    # gradients even where the result is discarded by a `where`).
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def masked_moments(x, mask=None, *, ddof=0, axis_name=None):
    """Mean and standard deviation of the entries of `x` where `mask` is 1.

    Math: `mean = sum(m x) / sum(m)`, `std = sqrt(sum(m (x - mean)^2) / (sum(m) - ddof))`;
    the sums run over every axis and, with `axis_name`, over that device axis too
    (`lax.psum`), so under `shard_map`/`pmap` the moments are global. An empty selection
    (or `sum(m) <= ddof`) gives a standard deviation of 0 and, if empty, a mean of 0.

    Args:
      x: floating array of any shape.
      mask: optional 0/1 array of the same shape.
      ddof: delta degrees of freedom (0: population, 1: unbiased).
      axis_name: optional mapped axis name to reduce over.

    Returns:
      `(mean, std)`, two scalars.

    Example:
      >>> masked_moments(jnp.array([1.0, 3.0, 100.0]), jnp.array([1, 1, 0]))
      (Array(2., dtype=float32), Array(1., dtype=float32))

    Reference: the masked, all-reduced batch statistics of data-parallel advantage
    whitening (Andrychowicz et al. 2021, What Matters in On-Policy RL, arXiv 2006.05990).
    """
    x = _checks.float_array(x, "x", upcast=True)
    m = _checks.as_mask(mask, x.shape, "mask", "x")
    x = jnp.where(m > 0, x, 0.0)
    count = psum(jnp.sum(m), axis_name)
    mean = psum(jnp.sum(x * m), axis_name) / jnp.maximum(count, 1.0)
    sq = psum(jnp.sum(m * jnp.square(x - mean)), axis_name)
    dof = count - ddof
    var = jnp.where(dof > 0, sq / jnp.where(dof > 0, dof, 1.0), 0.0)
    return mean, _safe_sqrt(var)


def normalize_advantages(advantages, eps=1e-8, *, mask=None, ddof=0, axis_name=None):
    """Whitens advantages: `(A - mean(A)) / (std(A) + eps)` over the valid entries.

    Statistics come from `masked_moments` (global over `axis_name` when given); masked
    entries come out as 0. If every valid entry is equal the result is 0 everywhere.

    Args:
      advantages: floating array of any shape, e.g. `[B, T]` or `[B]`.
      eps: non-negative constant added to the standard deviation.
      mask: optional 0/1 array of the same shape.
      ddof: delta degrees of freedom of the standard deviation.
      axis_name: optional mapped axis name for global statistics.

    Returns:
      Array like `advantages` (float32 or wider).

    Example:
      >>> normalize_advantages(jnp.array([1.0, 2.0, 3.0]), eps=0.0)
      Array([-1.2247448,  0.       ,  1.2247448], dtype=float32)

    Reference: the advantage normalisation of PPO implementations (Andrychowicz et al.
    2021, What Matters in On-Policy RL, arXiv 2006.05990).
    """
    advantages = _checks.float_array(advantages, "advantages")
    _checks.check_range(eps, "eps", 0.0)
    _checks.check_range(ddof, "ddof", 0.0)
    m = _checks.as_mask(mask, advantages.shape, "mask", "advantages")
    mean, std = masked_moments(advantages, m, ddof=ddof, axis_name=axis_name)
    a = advantages.astype(mean.dtype)
    # Equal valid entries give exactly 0: their rounding residue `a - mean` is not divided
    # by `eps`, and a zero spread with `eps = 0` gives no NaN (nor a NaN gradient).
    hi = jnp.max(jnp.where(m > 0, a, -jnp.inf))
    lo = jnp.min(jnp.where(m > 0, a, jnp.inf))
    if axis_name is not None:
        hi, lo = jax.lax.pmax(hi, axis_name), jax.lax.pmin(lo, axis_name)
    spread = (hi > lo) & (std > 0)
    out = jnp.where(spread, (a - mean) / jnp.where(spread, std + eps, 1.0), 0.0)
    return jnp.where(m > 0, out, 0.0)


def _grouped(rewards, group_size, min_size=1):
    r = _checks.float_array(
        rewards, "rewards", rank=1, what="(one scalar reward per sample, [N])", upcast=True
    )
    group_size = _checks.check_positive_int(group_size, "group_size", min_size)
    n = r.shape[0]
    if n % group_size:
        raise ValueError(
            f"`rewards` has {n} rows, which is not divisible by `group_size` {group_size}; "
            f"groups are contiguous blocks of {group_size} rows"
        )
    return r.reshape(n // group_size, group_size)


def group_advantages(rewards, group_size, *, scale="group", eps=1e-4, ddof=1, axis_name=None):
    """Group-relative advantages of GRPO: `A_i = (r_i - mean_g) / (s + eps)`.

    Math: for sample `i` of group `g` (contiguous rows `g*G .. g*G + G - 1`),
    `A_i = (r_i - mean_g(r)) / (s + eps)` where `s` is
      * `scale="group"`: the group's standard deviation (DeepSeekMath GRPO);
      * `scale="batch"`: the standard deviation of all rewards in the batch (global over
        `axis_name` when given), as in Dr.GRPO's analysis and TRL's `scale_rewards="batch"`;
      * `scale="none"`: no division, `A_i = r_i - mean_g(r)` (Dr.GRPO, Liu et al. 2025).
    A group whose rewards are all equal gets exactly 0. Under `shard_map`, groups must not
    straddle shards (each shard holds whole groups); only `scale="batch"` uses `axis_name`.

    Args:
      rewards: `[N]` floating sequence-level rewards, `N` divisible by `group_size`.
      group_size: static int `G >= 1`.
      scale: "group", "batch" or "none".
      eps: non-negative constant added to the standard deviation.
      ddof: delta degrees of freedom of the standard deviation (1: unbiased, as TRL).
      axis_name: optional mapped axis name for the batch standard deviation.

    Returns:
      `[N]` advantages; each group's advantages sum to zero.

    Example:
      >>> group_advantages(jnp.array([1.0, 0.0, 1.0, 1.0]), 2, scale="none")
      Array([ 0.5, -0.5,  0. ,  0. ], dtype=float32)

    Reference: Shao et al. 2024, DeepSeekMath (arXiv 2402.03300); Liu et al. 2025,
    Understanding R1-Zero-Like Training (arXiv 2503.20783).
    """
    _checks.check_choice(scale, SCALES, "scale")
    _checks.check_range(eps, "eps", 0.0)
    _checks.check_range(ddof, "ddof", 0.0)
    r = _grouped(rewards, group_size)
    mean = jnp.mean(r, axis=1, keepdims=True)
    constant = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
    centred = jnp.where(constant, 0.0, r - mean)
    if scale == "group":
        dof = max(group_size - ddof, 1)
        std = _safe_sqrt(jnp.sum(jnp.square(r - mean), axis=1, keepdims=True) / dof)
        # A constant group is divided by 1, not by `std + eps` (which is 0 when eps = 0).
        centred = centred / jnp.where(constant, 1.0, std + eps)
    elif scale == "batch":
        _, std = masked_moments(r, ddof=ddof, axis_name=axis_name)
        centred = centred / jnp.where(constant, 1.0, std + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards, group_size):
    """REINFORCE leave-one-out advantages: `A_i = r_i - mean_{j != i in group} r_j`.

    Math: with group sum `S_g`, `A_i = r_i - (S_g - r_i) / (G - 1) = G/(G-1) (r_i - mean_g)`.
    Groups are contiguous rows as in `group_advantages`; all-equal groups give 0.

    Args:
      rewards: `[N]` floating sequence-level rewards, `N` divisible by `group_size`.
      group_size: static int `G >= 2`.

    Returns:
      `[N]` advantages.

    Example:
      >>> rloo_advantages(jnp.array([1.0, 0.0, 0.0]), 3)
      Array([ 1. , -0.5, -0.5], dtype=float32)

    Reference: Kool et al. 2019, Buy 4 REINFORCE Samples, Get a Baseline for Free!;
    Ahmadian et al. 2024, Back to Basics (arXiv 2402.14740).
    """
    r = _grouped(rewards, group_size, min_size=2)  # a leave-one-out baseline needs 2
    total = jnp.sum(r, axis=1, keepdims=True)
    constant = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
    adv = jnp.where(constant, 0.0, r - (total - r) / (group_size - 1))
    return adv.reshape(-1)
