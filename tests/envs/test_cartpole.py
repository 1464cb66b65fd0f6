"""Tests of rlgen/envs/cartpole.py: CartPole-v1 in JAX against Gymnasium's equations.

A float64 NumPy re-implementation of Gymnasium's `CartPoleEnv.step` (Euler integration,
the 12-degree and 2.4 thresholds, reward 1 per step) and of its 500-step `TimeLimit` is
the reference for the dynamics; then termination, truncation, auto-reset, vmap/jit and
bad input.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlgen.envs import cartpole
from rlgen.envs.cartpole import CartPoleState

# ----------------------------------------------------------------------------------------
# float64 NumPy reference: Gymnasium's CartPoleEnv.step equations, written out
# ----------------------------------------------------------------------------------------

G, M_CART, M_POLE, L, F, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
THETA_MAX, X_MAX = 12 * 2 * math.pi / 360, 2.4


def ref_step(state, action):
    x, x_dot, theta, theta_dot = (float(v) for v in state)
    total = M_CART + M_POLE
    force = F if action == 1 else -F
    cos, sin = math.cos(theta), math.sin(theta)
    temp = (force + M_POLE * L * theta_dot**2 * sin) / total
    theta_acc = (G * sin - cos * temp) / (L * (4.0 / 3.0 - M_POLE * cos**2 / total))
    x_acc = temp - M_POLE * L * theta_acc * cos / total
    x = x + TAU * x_dot
    x_dot = x_dot + TAU * x_acc
    theta = theta + TAU * theta_dot
    theta_dot = theta_dot + TAU * theta_acc
    terminated = x < -X_MAX or x > X_MAX or theta < -THETA_MAX or theta > THETA_MAX
    return np.array([x, x_dot, theta, theta_dot], np.float64), terminated, 1.0


def state_of(physics, time=0, episode_return=0.0):
    return CartPoleState(
        jnp.asarray(physics, jnp.float32),
        jnp.asarray(time, jnp.int32),
        jnp.asarray(episode_return, jnp.float32),
    )


step = jax.jit(cartpole.step)
reset = jax.jit(cartpole.reset)
KEY = jax.random.key(0)


# ----------------------------------------------------------------------------------------
# dynamics
# ----------------------------------------------------------------------------------------


@given(
    start=st.lists(st.floats(-0.05, 0.05), min_size=4, max_size=4),
    actions=st.lists(st.integers(0, 1), min_size=1, max_size=12),
)
def test_dynamics_match_float64_gymnasium_equations(start, actions):
    ref = np.asarray(start, np.float64)
    state = state_of(np.asarray(start, np.float32))
    ref = np.asarray(state.physics, np.float64)  # start both from the same float32 state
    for t, action in enumerate(actions):
        ref, ref_terminated, ref_reward = ref_step(ref, action)
        obs, state, reward, done, info = step(KEY, state, jnp.int32(action))
        np.testing.assert_allclose(info["final_observation"], ref, rtol=1e-5, atol=1e-6)
        assert bool(info["terminated"]) == ref_terminated
        assert float(reward) == ref_reward
        assert int(info["episode_length"]) == t + 1
        if ref_terminated:
            break
        np.testing.assert_allclose(obs, ref, rtol=1e-5, atol=1e-6)


def test_long_trajectory_stays_close_to_reference():
    # 60 steps of a bang-bang controller: float32 rounding stays small against float64.
    obs, state = reset(jax.random.key(3))
    ref = np.asarray(state.physics, np.float64)
    for _ in range(60):
        action = int(ref[2] + 0.5 * ref[3] > 0)
        ref, terminated, _ = ref_step(ref, action)
        obs, state, _, done, info = step(KEY, state, jnp.int32(action))
        assert bool(done) == terminated
        if terminated:
            break
        np.testing.assert_allclose(obs, ref, rtol=1e-4, atol=1e-5)


def test_force_direction_and_any_nonone_action_pushes_left():
    state = state_of(np.zeros(4))
    _, right, *_ = step(KEY, state, jnp.int32(1))
    _, left, *_ = step(KEY, state, jnp.int32(0))
    _, other, *_ = step(KEY, state, jnp.int32(7))  # Gymnasium: anything but 1 is left
    assert float(right.physics[1]) > 0 > float(left.physics[1])
    np.testing.assert_array_equal(other.physics, left.physics)


# ----------------------------------------------------------------------------------------
# reset, termination, truncation, auto-reset
# ----------------------------------------------------------------------------------------


def test_reset_is_uniform_in_bounds_and_keyed():
    obs = jax.jit(jax.vmap(lambda k: cartpole.reset(k)[0]))(
        jax.random.split(jax.random.key(1), 512)
    )
    assert obs.shape == (512, 4) and obs.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(obs))) <= 0.05
    assert float(jnp.std(obs)) > 0.02  # uniform on [-0.05, 0.05] has std 0.0289
    o1, s1 = reset(jax.random.key(1))
    o2, _ = reset(jax.random.key(1))
    np.testing.assert_array_equal(o1, o2)
    assert int(s1.time) == 0 and float(s1.episode_return) == 0.0


@pytest.mark.parametrize(
    "physics",
    [
        [2.399, 1.0, 0.0, 0.0],  # the cart crosses x = 2.4
        [-2.399, -1.0, 0.0, 0.0],
        [0.0, 0.0, THETA_MAX - 1e-3, 1.0],  # the pole crosses 12 degrees
        [0.0, 0.0, -THETA_MAX + 1e-3, -1.0],
    ],
)
def test_termination_reports_and_auto_resets(physics):
    key = jax.random.key(5)
    state = state_of(physics, time=41, episode_return=41.0)
    ref, ref_terminated, _ = ref_step(np.asarray(state.physics, np.float64), 1)
    assert ref_terminated
    obs, new_state, reward, done, info = step(key, state, jnp.int32(1))
    assert bool(done) and bool(info["terminated"]) and not bool(info["truncated"])
    assert float(reward) == 1.0  # the terminating step is rewarded, as in Gymnasium
    np.testing.assert_allclose(info["final_observation"], ref, rtol=1e-5, atol=1e-6)
    assert float(info["episode_return"]) == 42.0 and int(info["episode_length"]) == 42
    # auto-reset: the new episode is exactly reset(key)
    reset_obs, reset_state = reset(key)
    np.testing.assert_array_equal(obs, reset_obs)
    np.testing.assert_array_equal(new_state.physics, reset_state.physics)
    assert int(new_state.time) == 0 and float(new_state.episode_return) == 0.0


def test_no_termination_just_inside_the_thresholds():
    state = state_of([2.3, 0.0, 0.0, 0.0])
    _, new_state, _, done, info = step(KEY, state, jnp.int32(1))
    assert not bool(done) and not bool(info["terminated"])
    assert int(new_state.time) == 1


def test_truncation_at_500_steps():
    balanced = np.zeros(4)  # upright and still: never terminates in one step
    state = state_of(balanced, time=498, episode_return=498.0)
    _, s, _, done, info = step(KEY, state, jnp.int32(1))
    assert not bool(done) and int(s.time) == 499
    obs, s, reward, done, info = step(KEY, s, jnp.int32(0))
    assert bool(done) and bool(info["truncated"]) and not bool(info["terminated"])
    assert int(info["episode_length"]) == 500 and float(info["episode_return"]) == 500.0
    assert float(reward) == 1.0
    assert int(s.time) == 0 and float(s.episode_return) == 0.0
    np.testing.assert_array_equal(obs, reset(KEY)[0])


def test_a_balancing_controller_is_truncated_exactly_at_step_500():
    def run(key):
        _, state = cartpole.reset(key)

        def body(carry, key):
            state, ended_at = carry
            p = state.physics
            action = (p[2] + 0.3 * p[3] + 0.01 * p[0] + 0.05 * p[1] > 0).astype(jnp.int32)
            _, state, _, done, info = cartpole.step(key, state, action)
            first = done & (ended_at < 0)
            ended_at = jnp.where(first, info["episode_length"], ended_at)
            return (state, ended_at), info["truncated"] & first

        keys = jax.random.split(key, 520)
        (_, ended_at), truncated = jax.lax.scan(body, (state, jnp.int32(-1)), keys)
        return ended_at, jnp.any(truncated)

    ended_at, truncated = jax.jit(run)(jax.random.key(11))
    assert int(ended_at) == 500 and bool(truncated)


# ----------------------------------------------------------------------------------------
# composition and bad input
# ----------------------------------------------------------------------------------------


def test_vmap_equals_one_environment_at_a_time():
    n = 8
    keys = jax.random.split(jax.random.key(2), n)
    obs, states = jax.vmap(cartpole.reset)(keys)
    actions = jnp.arange(n, dtype=jnp.int32) % 2
    # put one environment on the edge so the batch mixes terminating and running envs
    states = states._replace(physics=states.physics.at[0].set(jnp.array([2.399, 1.0, 0, 0])))
    out = jax.jit(jax.vmap(cartpole.step))(keys, states, actions)
    assert out[0].shape == (n, 4) and out[3].shape == (n,)
    assert bool(out[3][0]) and not bool(jnp.any(out[3][1:]))
    for i in range(n):
        single = step(keys[i], jax.tree.map(lambda x, i=i: x[i], states), actions[i])
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(out), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-6, atol=1e-7)


def test_state_structure_and_dtypes_are_stable_under_scan():
    obs, state = cartpole.reset(KEY)

    def body(state, key):
        obs, state, reward, done, _ = cartpole.step(key, state, jnp.int32(1))
        return state, (obs, reward, done)

    final, (obs_seq, rewards, dones) = jax.lax.scan(body, state, jax.random.split(KEY, 100))
    assert jax.tree.structure(final) == jax.tree.structure(state)
    assert [x.dtype for x in final] == [jnp.float32, jnp.int32, jnp.float32]
    assert obs_seq.dtype == jnp.float32 and rewards.dtype == jnp.float32
    assert dones.dtype == jnp.bool_
    assert int(jnp.sum(dones)) >= 1  # always pushing right ends episodes


@pytest.mark.parametrize("action", [jnp.float32(1.0), jnp.array([1, 0]), 1.0])
def test_bad_action_is_a_type_error(action):
    _, state = cartpole.reset(KEY)
    with pytest.raises(TypeError, match="action"):
        cartpole.step(KEY, state, action)
