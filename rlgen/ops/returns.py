"""Discounted returns, TD errors, lambda-returns and GAE over `[B, T]` trajectories.

Conventions (the one place they are defined; every rlgen algorithm calls these):

* Arrays are batch-major: `rewards[b, t]` is the reward of step `t` of row `b`. A single
  trajectory may be passed as `[T]`; the output then has shape `[T]` too.
* `dones[b, t] = 1` means the episode ended at step `t` (after `rewards[b, t]`): nothing
  after `t` is bootstrapped into `t`, and the recursion restarts at `t + 1`.
* `mask[b, t] = 0` marks a padded step. It yields 0 in every output and leaks nothing
  into earlier steps: the valid step before a padded step is the end of its segment (no
  bootstrap through padding), whatever the padded rewards or values hold (even NaN).
* `values` holds `V(s_t)` for the `T` steps, optionally followed by a bootstrap value
  `V(s_T)` (shape `[B, T + 1]`). With `[B, T]` values there is no bootstrap: the value
  after the last step is taken as 0.

The per-step discount is `discount_t = gamma * (1 - done_t) * mask_{t+1}` (with
`mask_T = 1`), and every quantity here is a reverse linear recurrence
`y_t = x_t + c_t * y_{t+1}` evaluated by a time-major `lax.scan` (or, for GAE, optionally
by `lax.associative_scan`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlgen import _checks

_METHODS = ("auto", "scan", "associative")
# Loop unrolling of the time scan. Measured on XLA:CPU (benchmarks/bench_ops.py): unrolling
# slows wide batches (B >= 256) by 2x but speeds narrow, long ones (B = 8, T = 16384) ~15%.
_NARROW_BATCH, _NARROW_UNROLL = 16, 4


class _TimeMajor(NamedTuple):
    """Validated inputs, time-major `[T, B]`, sanitised at padded steps."""

    rewards: jax.Array  # r_t, 0 where padded
    discounts: jax.Array  # gamma * (1 - done_t) * mask_{t+1}
    values: jax.Array | None  # V(s_t), 0 where padded
    next_values: jax.Array | None  # V(s_{t+1}) (bootstrap or 0 at the end), 0 where padded
    mask: jax.Array  # 1 valid, 0 padded
    squeeze: bool  # the caller passed a single `[T]` trajectory


def _prepare(rewards, gamma, *, values=None, dones=None, mask=None, bootstrap_value=None):
    rewards = _checks.float_array(
        rewards, "rewards", rank=(1, 2), what="([B, T] or a single trajectory [T])"
    )
    _checks.check_range(gamma, "gamma", 0.0, 1.0)
    squeeze = rewards.ndim == 1
    if squeeze:
        rewards = rewards[None]
    batch, horizon = rewards.shape
    dtype = jnp.promote_types(rewards.dtype, jnp.float32)

    def batched(x, name):
        x = _checks.as_array(x, name)
        return x[None] if squeeze and x.ndim == 1 else x

    mask = _checks.as_mask(
        None if mask is None else batched(mask, "mask"), (batch, horizon), "mask", "rewards"
    )
    dones = (
        jnp.zeros((batch, horizon), jnp.float32)
        if dones is None
        else _checks.as_mask(batched(dones, "dones"), (batch, horizon), "dones", "rewards")
    )
    valid = mask > 0
    next_valid = jnp.concatenate([valid[:, 1:], jnp.ones((batch, 1), bool)], axis=1)
    discounts = jnp.where(next_valid, jnp.asarray(gamma, dtype) * (1.0 - dones), 0.0)
    rewards = jnp.where(valid, rewards.astype(dtype), 0.0)

    v_t = v_tp1 = None
    if values is not None:
        values = _checks.float_array(values, "values")
        given_shape = tuple(values.shape)
        values = batched(values, "values")
        if values.ndim != 2 or values.shape[0] != batch or values.shape[1] not in (
            horizon,
            horizon + 1,
        ):
            want = f"[{horizon}] or [{horizon + 1}]" if squeeze else (
                f"({batch}, {horizon}) or ({batch}, {horizon + 1}) (with a bootstrap value)"
            )
            raise ValueError(
                f"`values` must have shape {want} to match `rewards`, got {given_shape}"
            )
        values = values.astype(dtype)
        if values.shape[1] == horizon:
            values = jnp.concatenate([values, jnp.zeros((batch, 1), dtype)], axis=1)
        v_t = jnp.where(valid, values[:, :-1], 0.0)
        v_tp1 = jnp.where(next_valid & valid, values[:, 1:], 0.0)
    if bootstrap_value is not None:
        bootstrap_value = _checks.as_array(bootstrap_value, "bootstrap_value")
        if squeeze and bootstrap_value.ndim == 0:  # one trajectory, one scalar
            bootstrap_value = bootstrap_value[None]
        bootstrap_value = _checks.float_array(
            bootstrap_value, "bootstrap_value", shape=(batch,), like="rewards[:, 0]"
        )
        last = jnp.zeros((batch, horizon), dtype).at[:, -1].set(bootstrap_value.astype(dtype))
        rewards = rewards + discounts * jnp.where(valid, last, 0.0)

    tm = lambda x: None if x is None else x.T  # noqa: E731
    return _TimeMajor(tm(rewards), tm(discounts), tm(v_t), tm(v_tp1), tm(mask), squeeze)


def _resolve_method(method: str) -> str:
    """``"auto"``: the sequential scan on CPU, the associative scan on accelerators.

    Measured (benchmarks/bench_ops.py): on XLA:CPU the scan is 3-6x faster than the
    associative form; on an H100 the scan is 12-380x slower (it runs one tiny kernel per
    time step) while the associative form runs at about the speed of a copy.
    """
    _checks.check_choice(method, _METHODS, "method")
    if method == "auto":
        return "scan" if jax.default_backend() == "cpu" else "associative"
    return method


def _reverse_linear_scan(x: jax.Array, c: jax.Array, method: str) -> jax.Array:
    """Solves `y_t = x_t + c_t * y_{t+1}` backwards from `y_T = 0`; time-major `[T, B]`."""
    if method == "associative":
        # Element t is the affine map y -> x_t + c_t * y. Composing the map of an earlier
        # step with that of a later one gives (c_a * c_b, x_a + c_a * x_b).
        def compose(later, earlier):
            c_l, x_l = later
            c_e, x_e = earlier
            return c_e * c_l, x_e + c_e * x_l

        _, y = jax.lax.associative_scan(compose, (c, x), reverse=True, axis=0)
        return y

    def step(y_next, xc):
        x_t, c_t = xc
        y_t = x_t + c_t * y_next
        return y_t, y_t

    unroll = _NARROW_UNROLL if x.shape[1] <= _NARROW_BATCH else 1
    _, y = jax.lax.scan(step, jnp.zeros_like(x[0]), (x, c), reverse=True, unroll=unroll)
    return y


def _finish(y_tm: jax.Array, prepared: _TimeMajor) -> jax.Array:
    y = jnp.where(prepared.mask > 0, y_tm, 0.0).T
    return y[0] if prepared.squeeze else y


def _gae_time_major(rewards, values, gamma, lambda_, dones, mask, method):
    """Time-major GAE `A_t = delta_t + discount_t lambda A_{t+1}` and the prepared inputs."""
    method = _resolve_method(method)
    _checks.check_range(lambda_, "lambda_", 0.0, 1.0)
    p = _prepare(rewards, gamma, values=values, dones=dones, mask=mask)
    deltas = p.rewards + p.discounts * p.next_values - p.values
    coeffs = p.discounts * jnp.asarray(lambda_, deltas.dtype)
    return _reverse_linear_scan(deltas, coeffs, method), p


def discounted_returns(rewards, gamma=0.99, *, dones=None, mask=None, bootstrap_value=None):
    """Discounted returns `G_t = r_t + gamma (1 - done_t) G_{t+1}`.

    Math: `G_t = sum_{k >= t} (prod_{j=t}^{k-1} discount_j) r_k`, with
    `discount_j = gamma * (1 - done_j) * mask_{j+1}` and `G_T = bootstrap_value` (0 if
    not given). Episode ends reset the sum; padded steps give 0 and leak nothing.

    Args:
      rewards: `[B, T]` (or `[T]`) floating rewards.
      gamma: discount in [0, 1] (scalar; may be traced).
      dones: optional `[B, T]` episode-end flags (bool, int or float).
      mask: optional `[B, T]` validity mask (1 valid, 0 padded).
      bootstrap_value: optional `[B]` value of the state after the last step.

    Returns:
      `[B, T]` returns (float32 or wider), 0 at padded steps.

    Example:
      >>> discounted_returns(jnp.array([[1.0, 1.0, 1.0]]), gamma=0.5)
      Array([[1.75, 1.5 , 1.  ]], dtype=float32)

    Reference: Sutton & Barto, Reinforcement Learning: An Introduction (2018), eq. 3.8.
    """
    p = _prepare(rewards, gamma, dones=dones, mask=mask, bootstrap_value=bootstrap_value)
    return _finish(_reverse_linear_scan(p.rewards, p.discounts, _resolve_method("auto")), p)


def td_errors(rewards, values, gamma=0.99, *, dones=None, mask=None):
    """One-step TD errors `delta_t = r_t + discount_t V(s_{t+1}) - V(s_t)`.

    Args:
      rewards: `[B, T]` (or `[T]`) floating rewards.
      values: `[B, T + 1]` (last column the bootstrap value) or `[B, T]` (no bootstrap).
      gamma: discount in [0, 1].
      dones, mask: optional `[B, T]` episode ends and validity mask (see module doc).

    Returns:
      `[B, T]` TD errors, 0 at padded steps. Equals `gae_advantages(..., lambda_=0)`.

    Example:
      >>> td_errors(jnp.array([[1.0, 0.0]]), jnp.array([[0.5, 0.5, 2.0]]), gamma=1.0)
      Array([[1. , 1.5]], dtype=float32)

    Reference: Sutton (1988), Learning to predict by the methods of temporal differences.
    """
    p = _prepare(rewards, gamma, values=values, dones=dones, mask=mask)
    return _finish(p.rewards + p.discounts * p.next_values - p.values, p)


def gae_advantages(
    rewards, values, gamma=0.99, lambda_=0.95, *, dones=None, mask=None, method="auto"
):
    """Generalized Advantage Estimation `A_t = delta_t + discount_t * lambda * A_{t+1}`.

    Math: `A_t = sum_{l >= 0} (prod_{j<l} discount_{t+j} lambda) delta_{t+l}` with
    `delta_t = r_t + discount_t V(s_{t+1}) - V(s_t)`. `lambda_ = 1` gives
    `discounted_returns(rewards, bootstrap_value=V(s_T)) - V(s_t)`; `lambda_ = 0` gives
    the TD error.

    Args:
      rewards: `[B, T]` (or `[T]`) floating rewards.
      values: `[B, T + 1]` with the bootstrap value last, or `[B, T]` (no bootstrap).
      gamma: discount in [0, 1]. lambda_: GAE lambda in [0, 1]. Both may be traced.
      dones, mask: optional `[B, T]` episode ends and validity mask (see module doc).
      method: "scan" (a time-major `lax.scan`, fastest on CPU), "associative"
        (`lax.associative_scan`, O(log T) depth: fastest on GPU) or "auto" (the default:
        "scan" when JAX's default backend is the CPU, else "associative"); all give the
        same values.

    Returns:
      `[B, T]` advantages, 0 at padded steps.

    Example:
      >>> r = jnp.array([[0.0, 0.0, 1.0]]); v = jnp.zeros((1, 4))
      >>> gae_advantages(r, v, gamma=1.0, lambda_=0.5)
      Array([[0.25, 0.5 , 1.  ]], dtype=float32)

    Reference: Schulman et al. 2016, High-Dimensional Continuous Control Using
    Generalized Advantage Estimation (arXiv 1506.02438).
    """
    advantages, p = _gae_time_major(rewards, values, gamma, lambda_, dones, mask, method)
    return _finish(advantages, p)


def lambda_returns(
    rewards, values, gamma=0.99, lambda_=0.95, *, dones=None, mask=None, method="auto"
):
    """TD(lambda) returns `G_t = r_t + discount_t ((1 - lambda) V(s_{t+1}) + lambda G_{t+1})`.

    Computed as `gae_advantages(...) + V(s_t)` (the two are the same recursion), with the
    bootstrap `G_T = V(s_T)`.

    Args: as `gae_advantages`.

    Returns:
      `[B, T]` lambda-returns, 0 at padded steps.

    Example:
      >>> lambda_returns(jnp.array([[0.0, 1.0]]), jnp.array([[0.0, 0.0, 4.0]]), 1.0, 0.5)
      Array([[2.5, 5. ]], dtype=float32)

    Reference: Sutton & Barto (2018), section 12.1.
    """
    advantages, p = _gae_time_major(rewards, values, gamma, lambda_, dones, mask, method)
    return _finish(advantages + p.values, p)


def compute_discounted_returns(rewards, gamma=0.99, dones=None, mask=None):
    """`discounted_returns` with no bootstrap, under the name and argument order common in
    RL tutorials: `G_t = r_t + gamma r_{t+1} + gamma^2 r_{t+2} + ...` per row of `[B, T]`
    (or `[T]`) rewards, reset at `dones`.

    Example:
      >>> compute_discounted_returns(jnp.array([1.0, 1.0]), gamma=0.9)
      Array([1.9, 1. ], dtype=float32)

    Reference: Sutton & Barto, Reinforcement Learning: An Introduction (2018), eq. 3.8.
    """
    return discounted_returns(rewards, gamma, dones=dones, mask=mask)


def compute_gae_advantages(rewards, values, dones=None, gamma=0.99, gae_lambda=0.95, mask=None):
    """`gae_advantages` under the name and argument order common in RL tutorials (`dones`
    third, `gae_lambda`). `values` holds `V(s_t)` including the bootstrap `V(s_T)`
    (`[B, T + 1]`), or `[B, T]` for no bootstrap.

    Example:
      >>> compute_gae_advantages(jnp.array([1.0]), jnp.array([0.0, 0.0]), gamma=0.9)
      Array([1.], dtype=float32)

    Reference: Schulman et al. 2016, High-Dimensional Continuous Control Using
    Generalized Advantage Estimation (arXiv 1506.02438).
    """
    return gae_advantages(rewards, values, gamma, gae_lambda, dones=dones, mask=mask)
