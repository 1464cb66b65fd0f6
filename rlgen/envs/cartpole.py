"""CartPole-v1 in JAX: Gymnasium's dynamics, thresholds and 500-step limit, functionally.

A pole is hinged on a cart that moves along a frictionless track; each step pushes the
cart left (action 0) or right (action 1) with a force of 10 N. The reward is 1 for every
step taken, including the last. The episode *terminates* when the cart leaves
`|x| <= 2.4` or the pole leaves `|theta| <= 12 degrees`, and is *truncated* after 500
steps (Gymnasium's `TimeLimit` of CartPole-v1).

Dynamics (Barto, Sutton & Anderson 1983; Florian 2007, "Correct equations for the
dynamics of the cart-pole system"), explicit Euler with `tau = 0.02` s, as Gymnasium:

    temp      = (F + m_p l theta_dot^2 sin(theta)) / (m_c + m_p)
    theta_acc = (g sin(theta) - cos(theta) temp) / (l (4/3 - m_p cos(theta)^2 / (m_c + m_p)))
    x_acc     = temp - m_p l theta_acc cos(theta) / (m_c + m_p)
    x += tau x_dot;  x_dot += tau x_acc;  theta += tau theta_dot;  theta_dot += tau theta_acc

with `g = 9.8`, `m_c = 1.0`, `m_p = 0.1`, `l = 0.5` (half the pole's length).

The API is functional, like gymnax: `reset(key) -> (obs, state)` and
`step(key, state, action) -> (obs, state, reward, done, info)`, both pure, jittable and
vmappable. `step` auto-resets: when `done = terminated | truncated`, the returned `obs`
and `state` are those of a new episode drawn with `key`; the last observation of the
finished episode is `info["final_observation"]`. Observations are float32
`[x, x_dot, theta, theta_dot]`; the state is simulated in float32 (Gymnasium keeps
float64), so trajectories agree with Gymnasium to float32 rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
HALF_LENGTH = 0.5
POLE_MASS_LENGTH = MASS_POLE * HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
MAX_EPISODE_STEPS = 500
RESET_BOUND = 0.05

OBSERVATION_SHAPE = (4,)
NUM_ACTIONS = 2


class CartPoleState(NamedTuple):
    """The environment's state: float32 physics, int32 step count, float32 return so far."""

    physics: jax.Array  # [4] (x, x_dot, theta, theta_dot)
    time: jax.Array  # steps taken in this episode
    episode_return: jax.Array  # rewards collected in this episode


def reset(key) -> tuple[jax.Array, CartPoleState]:
    """Starts an episode: every state variable uniform in [-0.05, 0.05].

    Args:
      key: a JAX PRNG key.

    Returns:
      `(obs, state)`: the float32 `[4]` observation and the `CartPoleState`.

    Example:
      >>> obs, state = reset(jax.random.key(0))
      >>> obs.shape, bool(jnp.all(jnp.abs(obs) <= 0.05)), int(state.time)
      ((4,), True, 0)
    """
    physics = jax.random.uniform(
        key, OBSERVATION_SHAPE, jnp.float32, -RESET_BOUND, RESET_BOUND
    )
    state = CartPoleState(physics, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))
    return physics, state


def _dynamics(physics, action):
    x, x_dot, theta, theta_dot = physics[0], physics[1], physics[2], physics[3]
    force = jnp.where(action == 1, FORCE_MAG, -FORCE_MAG).astype(physics.dtype)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    temp = (force + POLE_MASS_LENGTH * jnp.square(theta_dot) * sin) / TOTAL_MASS
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * jnp.square(cos) / TOTAL_MASS)
    )
    x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
    return jnp.stack(
        [x + TAU * x_dot, x_dot + TAU * x_acc, theta + TAU * theta_dot, theta_dot + TAU * theta_acc]
    )


def _check_action(action) -> jax.Array:
    action = jnp.asarray(action)
    if action.shape != () or not jnp.issubdtype(action.dtype, jnp.integer):
        raise TypeError(
            "CartPole `action` must be an integer scalar (0: push left, 1: push right; use "
            f"vmap for a batch of environments), got shape {action.shape} dtype {action.dtype}"
        )
    return action


def step(key, state: CartPoleState, action):
    """One step of CartPole-v1, auto-resetting at the end of an episode.

    Args:
      key: PRNG key, used only to draw the next episode when this one ends.
      state: the `CartPoleState`.
      action: integer scalar; 1 pushes right, anything else pushes left (as Gymnasium's
        `force_mag if action == 1 else -force_mag`).

    Returns:
      `(obs, state, reward, done, info)`: the next observation and state (of a new episode
      if `done`), reward 1.0 (float32), `done = terminated | truncated` (bool) and `info`
      with `terminated`, `truncated`, `final_observation` (the observation the step reached,
      before any reset), `episode_return` and `episode_length` (of the episode including
      this step; the finished episode's figures when `done`).

    Example:
      >>> obs, state = reset(jax.random.key(0))
      >>> obs, state, reward, done, info = step(jax.random.key(1), state, 1)
      >>> float(reward), bool(done), int(info["episode_length"])
      (1.0, False, 1)
    """
    action = _check_action(action)
    physics = _dynamics(state.physics, action)
    x, theta = physics[0], physics[2]
    terminated = (jnp.abs(x) > X_THRESHOLD) | (jnp.abs(theta) > THETA_THRESHOLD)
    time = state.time + 1
    truncated = time >= MAX_EPISODE_STEPS
    done = terminated | truncated
    reward = jnp.ones((), jnp.float32)
    episode_return = state.episode_return + reward
    info = {
        "terminated": terminated,
        "truncated": truncated,
        "final_observation": physics,
        "episode_return": episode_return,
        "episode_length": time,
    }
    reset_obs, reset_state = reset(key)
    stepped = CartPoleState(physics, time, episode_return)
    next_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state, stepped)
    return next_state.physics, next_state, reward, done, info
