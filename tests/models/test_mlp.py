"""Tests of rlgen/models/mlp.py: the MLP policy and actor-critic (shapes, sampling,
initialisation, the PPO policy protocol over `[B, T, obs_dim]` and bad input)."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.algorithms import evaluate_policy
from rlgen.models import MLPActorCritic, MLPPolicy

OBS, ACTIONS = 4, 3
HIDDEN = (16,)  # one width and few batch shapes: eager ops compile once per shape
RNG = np.random.default_rng(0)


def _obs(*lead):
    return jnp.asarray(RNG.normal(size=(*lead, OBS)), jnp.float32)


def test_mlp_policy_shapes_and_sampling():
    policy = MLPPolicy(OBS, ACTIONS, hidden=HIDDEN, rngs=nnx.Rngs(0))
    logits = policy(_obs(15))
    assert logits.shape == (15, ACTIONS) and logits.dtype == jnp.float32
    # Logits layer initialised with gain 0.01: the first policy is close to uniform.
    assert np.abs(logits).max() < 0.1
    actions = policy.sample(_obs(4000), jax.random.key(0))
    assert actions.shape == (4000,) and actions.dtype == jnp.int32
    assert actions.min() >= 0 and actions.max() < ACTIONS
    assert len(np.unique(np.asarray(actions))) == ACTIONS
    obs = _obs(15)
    np.testing.assert_array_equal(
        policy.sample(obs, jax.random.key(1)), policy.sample(obs, jax.random.key(1))
    )
    # Trajectories [B, T, obs_dim] work too.
    assert policy(_obs(3, 5)).shape == (3, 5, ACTIONS)


def test_mlp_policy_samples_follow_the_softmax():
    policy = MLPPolicy(OBS, ACTIONS, hidden=HIDDEN, rngs=nnx.Rngs(1))
    # A sharper last layer so the distribution is far from uniform.
    policy.net.layers[-1].kernel[...] = 300.0 * policy.net.layers[-1].kernel[...]
    obs = jnp.repeat(_obs(1), 4000, axis=0)
    probs = jax.nn.softmax(policy(obs[:1]))[0]
    assert probs.max() - probs.min() > 0.2
    actions = policy.sample(obs, jax.random.key(2))
    freq = np.bincount(np.asarray(actions), minlength=ACTIONS) / len(actions)
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_actor_critic_over_batches_and_trajectories():
    ac = MLPActorCritic(OBS, ACTIONS, hidden=HIDDEN, rngs=nnx.Rngs(0))
    obs = _obs(3, 5)
    logits, values = ac(obs)
    assert logits.shape == (3, 5, ACTIONS) and values.shape == (3, 5)
    assert logits.dtype == values.dtype == jnp.float32
    # Applied over the leading axes: the same as on the flattened batch.
    flat_logits, flat_values = ac(obs.reshape(15, OBS))
    assert flat_logits.shape == (15, ACTIONS) and flat_values.shape == (15,)
    np.testing.assert_allclose(logits.reshape(15, ACTIONS), flat_logits, rtol=1e-6)
    np.testing.assert_allclose(values.reshape(15), flat_values, rtol=1e-6)
    actions = ac.sample(obs, jax.random.key(0))
    assert actions.shape == (3, 5) and actions.dtype == jnp.int32
    assert actions.min() >= 0 and actions.max() < ACTIONS
    # Separate torsos: the critic's parameters do not move the logits.
    graphdef, state = nnx.split(ac)
    grads = jax.jit(jax.grad(lambda s: nnx.merge(graphdef, s)(obs)[0].sum()))(state)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["critic"]))


def test_actor_critic_follows_the_ppo_policy_protocol():
    ac = MLPActorCritic(OBS, ACTIONS, hidden=HIDDEN, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(ac)

    def policy_fn(p, observations):
        logits, values = nnx.merge(graphdef, p)(observations)
        return distrax.Categorical(logits=logits), values

    obs = _obs(3, 5)
    actions = ac.sample(obs, jax.random.key(1))

    def loss(p):
        lp, ent, v = evaluate_policy(policy_fn, p, obs, actions, with_values=True)
        assert lp.shape == ent.shape == v.shape == (3, 5)
        return -(lp.mean() + 0.01 * ent.mean()) + 0.5 * jnp.mean((v - 1.0) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["actor"]))
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["critic"]))


@pytest.mark.parametrize("cls", [MLPPolicy, MLPActorCritic])
def test_bad_input_names_the_argument(cls):
    net = cls(OBS, ACTIONS, hidden=HIDDEN, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`observations` must have a floating dtype.*int32"):
        net(jnp.zeros((2, OBS), jnp.int32))
    with pytest.raises(ValueError, match=r"`observations` must have obs_dim=4.*\(2, 5\)"):
        net(jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"`observations` must have rank 2 or rank 3"):
        net(jnp.zeros((OBS,)))
    with pytest.raises(ValueError, match="`obs_dim` must be >= 1"):
        cls(0, ACTIONS, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`num_actions` must be a Python int"):
        cls(OBS, 2.0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`hidden` must be a sequence"):
        cls(OBS, ACTIONS, hidden=64, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`hidden\[1\]` must be >= 1"):
        cls(OBS, ACTIONS, hidden=(8, 0), rngs=nnx.Rngs(0))
