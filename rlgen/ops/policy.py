"""Policy-gradient surrogate losses, importance ratios and value losses.

Every loss here is per element (no reduction): choose the reduction with
`rlgen.ops.aggregate`. Log-ratios are clamped to `[-max_log_ratio, max_log_ratio]` before
`exp`, so huge policy changes give finite losses.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlgen import _checks
from rlgen.ops.aggregation import aggregate, masked_mean

LEVELS = ("token", "sequence")
MAX_LOG_RATIO = 20.0


class ClippedSurrogate(NamedTuple):
    """Per-element outputs of `clipped_surrogate_loss`."""

    loss: jax.Array  # the per-element loss (0 where masked)
    ratio: jax.Array  # the importance ratio used (token or sequence level)
    clipped: jax.Array  # 1.0 where clipping zeroed the gradient, else 0.0


def importance_log_ratio(log_probs, old_log_probs, mask=None, *, level="token"):
    """Log importance ratios `log pi(a) - log pi_old(a)` at token or sequence level.

    Math:
      * `level="token"` (PPO): `l_{i,t} = log pi(a_{i,t}) - log pi_old(a_{i,t})`.
      * `level="sequence"` (GSPO): `s_i = mean_t m l_{i,t}` (the log of the length-normalised
        sequence ratio), broadcast to every token as `sg(s_i) + log pi - sg(log pi)`: its
        value is `s_i` at every token and its gradient is GSPO's,
        `(1/|y_i|) grad log pi(a_{i,t})` per token.

    Args:
      log_probs: current per-token log-probs, `[B, T]` (any shape for token level).
      old_log_probs: behaviour-policy log-probs, same shape (not differentiated).
      mask: optional 0/1 mask of the same shape (needed for sequence level with padding).
      level: "token" or "sequence".

    Returns:
      Log-ratios with the shape of `log_probs`, 0 where masked.

    Example:
      >>> importance_log_ratio(jnp.array([[0.0, -1.0]]), jnp.array([[-1.0, -1.0]]),
      ...                      level="sequence")
      Array([[0.5, 0.5]], dtype=float32)

    Reference: Schulman et al. 2017, PPO (arXiv 1707.06347); Zheng et al. 2025, Group
    Sequence Policy Optimization (arXiv 2507.18071).
    """
    _checks.check_choice(level, LEVELS, "level")
    log_probs, old_log_probs = _checks.float_pair(
        log_probs, old_log_probs, "log_probs", "old_log_probs"
    )
    m = _checks.as_mask(mask, log_probs.shape, "mask", "log_probs")
    valid = m > 0
    lp = jnp.where(valid, log_probs, 0.0)
    old = jax.lax.stop_gradient(jnp.where(valid, old_log_probs, 0.0))
    if level == "token":
        return jnp.where(valid, lp - old, 0.0)
    _checks.check_rank(log_probs, 2, "log_probs", "([B, T]) for level='sequence'")
    seq = masked_mean(lp - old, m, axis=-1)[:, None]
    out = jax.lax.stop_gradient(seq) + lp - jax.lax.stop_gradient(lp)
    return jnp.where(valid, out, 0.0)


def _broadcast_advantages(advantages, shape):
    advantages = _checks.float_array(advantages, "advantages")
    if advantages.shape == tuple(shape):
        return advantages
    if advantages.shape == tuple(shape[:1]) and len(shape) == 2:
        return jnp.broadcast_to(advantages[:, None], shape)
    raise ValueError(
        f"`advantages` must have shape {tuple(shape)} (per token, like `log_probs`) or "
        f"{tuple(shape[:1])} (per sequence), got {advantages.shape}"
    )


def clipped_surrogate_loss(
    log_probs,
    old_log_probs,
    advantages,
    mask=None,
    *,
    epsilon_low=0.2,
    epsilon_high=None,
    dual_clip=None,
    level="token",
    max_log_ratio=MAX_LOG_RATIO,
):
    """PPO's clipped surrogate, per element, with clip-higher, dual-clip and GSPO ratios.

    Math: with `r = exp(clamp(l))` (`l` from `importance_log_ratio(level=...)`),
    `loss = -min(r A, clip(r, 1 - epsilon_low, 1 + epsilon_high) A)`. With `dual_clip = c`
    (`c > 1`), negative-advantage elements are further bounded:
    `loss = min(loss, -c A)` where `A < 0`. The gradient is zero where clipping binds
    (`r > 1 + epsilon_high, A > 0`; `r < 1 - epsilon_low, A < 0`; dual clip
    `r > c, A < 0`) and equals the plain policy gradient `-r A grad log pi` elsewhere,
    except where `|l| > max_log_ratio`: there the clamp holds `r` constant, so the gradient
    is zero too (a numerical safeguard, not counted in `clipped`).

    Args:
      log_probs: current log-probs `[B, T]` (any shape for token level).
      old_log_probs: behaviour log-probs, same shape.
      advantages: same shape, or `[B]` per sequence (broadcast over tokens).
      mask: optional 0/1 mask of the same shape; masked elements give 0.
      epsilon_low: lower clip range (>= 0), `r >= 1 - epsilon_low`.
      epsilon_high: upper clip range (>= 0), default `epsilon_low`; DAPO's clip-higher
        uses e.g. 0.28 with `epsilon_low = 0.2`.
      dual_clip: None or the dual-clip constant `c > 1` (Ye et al. 2020).
      level: "token" (PPO/GRPO) or "sequence" (GSPO).
      max_log_ratio: clamp of the log-ratio before `exp`.

    Returns:
      `ClippedSurrogate(loss, ratio, clipped)`, each shaped like `log_probs`.

    Example:
      >>> out = clipped_surrogate_loss(jnp.log(jnp.array([1.5, 0.5])), jnp.zeros(2),
      ...                              jnp.array([1.0, 1.0]))
      >>> out.loss, out.clipped
      (Array([-1.2, -0.5], dtype=float32), Array([1., 0.], dtype=float32))

    Reference: Schulman et al. 2017 (arXiv 1707.06347); Yu et al. 2025, DAPO
    (arXiv 2503.14476); Ye et al. 2020, Mastering Complex Control in MOBA Games
    (arXiv 1912.09729); Zheng et al. 2025, GSPO (arXiv 2507.18071).
    """
    _checks.check_range(epsilon_low, "epsilon_low", 0.0)
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    _checks.check_range(epsilon_high, "epsilon_high", 0.0)
    _checks.check_range(max_log_ratio, "max_log_ratio", 0.0, low_open=True)
    if dual_clip is not None:
        _checks.check_range(dual_clip, "dual_clip", 1.0, low_open=True)
    log_ratio = importance_log_ratio(log_probs, old_log_probs, mask, level=level)
    shape = log_ratio.shape
    adv = _broadcast_advantages(advantages, shape).astype(log_ratio.dtype)
    valid = _checks.as_mask(mask, shape, "mask", "log_probs") > 0
    adv = jnp.where(valid, adv, 0.0)
    ratio = jnp.exp(jnp.clip(log_ratio, -max_log_ratio, max_log_ratio))
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -jnp.minimum(ratio * adv, clipped_ratio * adv)
    clipped = ((ratio > 1.0 + epsilon_high) & (adv > 0)) | ((ratio < 1.0 - epsilon_low) & (adv < 0))
    if dual_clip is not None:
        dual = -dual_clip * adv
        use_dual = (adv < 0) & (dual < loss)
        loss = jnp.where(use_dual, dual, loss)
        clipped = clipped | use_dual
    zero = jnp.zeros((), loss.dtype)
    return ClippedSurrogate(
        loss=jnp.where(valid, loss, zero),
        ratio=jnp.where(valid, ratio, zero),
        clipped=(clipped & valid).astype(loss.dtype),
    )


def value_loss(values, returns, *, old_values=None, clip_epsilon=None):
    """Squared-error value loss, optionally clipped around the old values (PPO).

    Math: `0.5 (V - R)^2`; with `clip_epsilon = e` and `old_values = V_old`,
    `0.5 max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2)`.

    Args:
      values: current value predictions, any shape (e.g. `[B, T]`).
      returns: regression targets, same shape (not differentiated).
      old_values: values at collection time, same shape; required with `clip_epsilon`.
      clip_epsilon: None (no clipping) or a non-negative clip range.

    Returns:
      Per-element losses with the shape of `values`.

    Example:
      >>> value_loss(jnp.array([2.0]), jnp.array([0.0]), old_values=jnp.array([0.0]),
      ...            clip_epsilon=0.5)
      Array([2.], dtype=float32)

    Reference: Schulman et al. 2017 (arXiv 1707.06347); the value clipping of OpenAI
    Baselines' PPO2.
    """
    v, target = _checks.float_pair(values, returns, "values", "returns")
    target = jax.lax.stop_gradient(target)
    loss = jnp.square(v - target)
    if clip_epsilon is not None:
        _checks.check_range(clip_epsilon, "clip_epsilon", 0.0)
        if old_values is None:
            raise ValueError("`old_values` is required when `clip_epsilon` is set")
        old = _checks.float_array(old_values, "old_values", shape=v.shape, like="values")
        old = jax.lax.stop_gradient(old.astype(v.dtype))
        v_clipped = old + jnp.clip(v - old, -clip_epsilon, clip_epsilon)
        loss = jnp.maximum(loss, jnp.square(v_clipped - target))
    elif old_values is not None:
        raise ValueError("`old_values` is only used with `clip_epsilon`; pass both or neither")
    return 0.5 * loss


def compute_clipped_surrogate_loss(log_probs, old_log_probs, advantages, clip_param=0.2, mask=None):
    """PPO's clipped objective as a scalar loss: the `token-mean` of
    `clipped_surrogate_loss(...).loss` with symmetric clipping `clip_param`, under the name
    and argument order common in RL tutorials. `[B, T]` inputs are aggregated as such; any
    other shape is flattened to one row.

    Example:
      >>> compute_clipped_surrogate_loss(jnp.zeros(4), jnp.zeros(4), jnp.ones(4))
      Array(-1., dtype=float32)

    Reference: Schulman et al. 2017, Proximal Policy Optimization Algorithms
    (arXiv 1707.06347).
    """
    out = clipped_surrogate_loss(log_probs, old_log_probs, advantages, mask, epsilon_low=clip_param)
    loss = out.loss
    m = None if mask is None else jnp.asarray(mask)
    if loss.ndim != 2:
        loss = loss.reshape(1, -1)
        m = None if m is None else m.reshape(1, -1)
    return aggregate(loss, m, "token-mean")
