"""The model protocol of `rlgen.trainers.protocol`: what the trainers call a model with,
what they accept back, and the errors that say what is missing.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.algorithms import TokenCategorical
from rlgen.models import (
    MLPActorCritic,
    MLPPolicy,
    SamplingConfig,
    TransformerConfig,
    TransformerLM,
)
from rlgen.trainers import protocol

RNG = np.random.default_rng(0)


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ---------------------------------------------------------------- as_distribution


def test_logits_become_a_token_categorical():
    logits = jnp.asarray(RNG.normal(size=(3, 4, 5)), jnp.float32)
    actions = jnp.asarray(RNG.integers(0, 5, (3, 4)), jnp.int32)
    dist = protocol.as_distribution(logits, "model(observations)")
    assert isinstance(dist, TokenCategorical)
    np.testing.assert_array_equal(dist.logits, logits)  # raw logits, not normalised
    want = np.take_along_axis(np_log_softmax(logits), np.asarray(actions)[..., None], -1)[..., 0]
    np.testing.assert_allclose(dist.log_prob(actions), want, rtol=1e-6, atol=1e-6)
    p = np.exp(np_log_softmax(logits))
    np.testing.assert_allclose(dist.entropy(), -(p * np.log(p)).sum(-1), rtol=1e-5, atol=1e-6)
    # bfloat16 logits are scored in float32
    low = protocol.as_distribution(logits.astype(jnp.bfloat16), "m")
    assert low.log_prob(actions).dtype == jnp.float32
    # a one-axis logits vector is one categorical
    assert protocol.as_distribution(logits[0, 0], "m").log_prob(jnp.asarray(2)).shape == ()


def test_distributions_pass_through():
    normal = distrax.Normal(jnp.zeros(3), jnp.ones(3))
    assert protocol.as_distribution(normal, "m") is normal

    class DuckTyped:  # anything with log_prob and entropy is taken as a distribution
        def log_prob(self, x):
            return x

        def entropy(self):
            return 0.0

    duck = DuckTyped()
    assert protocol.as_distribution(duck, "m") is duck


@pytest.mark.parametrize(
    ("out", "pattern"),
    [
        (jnp.zeros((2, 3), jnp.int32), r"floating logits \[\.\.\., V\].*int32"),
        (jnp.zeros((), jnp.float32), r"floating logits \[\.\.\., V\].*shape \(\)"),
        ([0.1, 0.2], r"logits \(an array \[\.\.\., V\]\) or a distrax distribution.*got list"),
        ({"logits": jnp.zeros(3)}, "got dict"),
    ],
    ids=["int", "scalar", "list", "dict"],
)
def test_as_distribution_rejects_other_outputs(out, pattern):
    with pytest.raises(TypeError, match=pattern) as err:
        protocol.as_distribution(out, "Net(observations)")
    assert "Net(observations)" in str(err.value)


# ---------------------------------------------------------------- policy_output


def test_plain_model_is_called_on_observations():
    model = MLPPolicy(3, 4, hidden=(8,), rngs=nnx.Rngs(0))
    obs = jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32)
    assert not protocol.is_sequence_model(model)
    assert protocol.pack_observations(model, obs, jnp.zeros(5, jnp.int32)) is obs
    dist = protocol.policy_output(model, obs)
    assert isinstance(dist, TokenCategorical)
    np.testing.assert_allclose(dist.logits, model(obs), rtol=1e-6)


def test_model_returning_a_distribution():
    class Gaussian(nnx.Module):
        def __init__(self):
            self.mean = nnx.Linear(2, 1, rngs=nnx.Rngs(0))

        def __call__(self, obs):
            return distrax.Normal(self.mean(obs)[..., 0], 1.0)

    model = Gaussian()
    obs = jnp.ones((4, 2))
    dist = protocol.policy_output(model, obs)
    assert isinstance(dist, distrax.Normal)
    np.testing.assert_allclose(dist.mean(), model.mean(obs)[..., 0])


def test_ppo_pairs():
    model = MLPActorCritic(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
    obs = jnp.asarray(RNG.normal(size=(2, 4, 3)), jnp.float32)
    dist, values = protocol.policy_output(model, obs, with_values=True)
    logits, want_values = model(obs)
    assert isinstance(dist, TokenCategorical)
    np.testing.assert_allclose(dist.logits, logits, rtol=1e-6)
    np.testing.assert_allclose(values, want_values, rtol=1e-6)
    assert values.shape == (2, 4)
    # without with_values, a pair is not a policy
    with pytest.raises(TypeError, match=r"returned a tuple.*PPOTrainer's protocol"):
        protocol.policy_output(model, obs)
    # with_values needs the pair
    policy = MLPPolicy(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
    with pytest.raises(
        TypeError,
        match=r"PPOTrainer needs MLPPolicy\(observations\) to return "
        r"\(logits_or_distribution, values\); got ArrayImpl",
    ):
        protocol.policy_output(policy, obs, with_values=True)


V, P, NEW = 7, 3, 4


def lm():
    config = TransformerConfig(
        vocab_size=V, max_len=P + NEW, d_model=16, num_heads=2, num_layers=1, eos_id=2
    )
    return TransformerLM(config, rngs=nnx.Rngs(0), sampling=SamplingConfig(max_new_tokens=NEW))


def test_sequence_model_is_scored_by_teacher_forcing():
    """`policy_output` of a TransformerLM gives log pi(a_t | x, a_<t): the chain rule of
    the model's own causal forward pass over prompt + completion (float64 reference)."""
    model = lm()
    prompts = jnp.asarray(RNG.integers(0, V, (3, P)), jnp.int32)
    actions = jnp.asarray(RNG.integers(0, V, (3, NEW)), jnp.int32)
    assert protocol.is_sequence_model(model)
    packed = protocol.pack_observations(model, prompts, actions)
    assert set(packed) == {"observations", "actions"}
    dist = jax.jit(lambda o: protocol.policy_output(model, o).logits)(packed)
    full = jax.jit(lambda t: model(t))(jnp.concatenate([prompts, actions], axis=1))
    chain = np_log_softmax(full)[:, P - 1 : P + NEW - 1]
    want = np.take_along_axis(chain, np.asarray(actions)[..., None], -1)[..., 0]
    got = TokenCategorical(dist).log_prob(actions)
    assert got.shape == (3, NEW)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the score of a_t depends on the earlier actions, not on a_t or later ones
    changed = actions.at[:, 2].set((actions[:, 2] + 1) % V)
    other = jax.jit(lambda o: protocol.policy_output(model, o).logits)(
        protocol.pack_observations(model, prompts, changed)
    )
    np.testing.assert_array_equal(np.asarray(other)[:, :3], np.asarray(dist)[:, :3])
    assert not np.allclose(np.asarray(other)[:, 3], np.asarray(dist)[:, 3])


def test_sequence_model_pairs_and_errors():
    class SeqActorCritic(nnx.Module):
        def __init__(self):
            self.embed = nnx.Embed(5, 5, rngs=nnx.Rngs(0))

        def __call__(self, obs):  # never used for a sequence model
            raise AssertionError("a sequence model is scored with policy()")

        def policy(self, observations, actions):
            logits = self.embed(actions) + observations[:, :1, None]
            return logits, jnp.sum(logits, axis=-1)

    model = SeqActorCritic()
    obs, actions = jnp.ones((2, 1)), jnp.asarray([[1, 2, 3], [4, 0, 1]])
    packed = protocol.pack_observations(model, obs, actions)
    dist, values = protocol.policy_output(model, packed, with_values=True)
    assert dist.log_prob(actions).shape == values.shape == (2, 3)
    pattern = r"SeqActorCritic\.policy\(observations, actions\) returned a tuple"
    with pytest.raises(TypeError, match=pattern):
        protocol.policy_output(model, packed)


# ---------------------------------------------------------------- sample


def test_sample_of_actions_or_actions_and_mask():
    key = jax.random.key(0)
    policy = MLPPolicy(3, 4, hidden=(8,), rngs=nnx.Rngs(0))
    obs = jnp.ones((5, 3))
    actions, mask, log_probs = protocol.sample(policy, obs, key)
    assert mask is None and log_probs is None
    assert actions.shape == (5,) and actions.dtype == jnp.int32
    np.testing.assert_array_equal(actions, policy.sample(obs, key))

    model = lm()
    prompts = jnp.asarray(RNG.integers(3, V, (6, P)), jnp.int32)
    actions, mask, log_probs = protocol.sample(model, prompts, key)
    assert actions.shape == mask.shape == (6, NEW) and log_probs is None
    want_actions, want_mask = model.generate(prompts, key, max_new_tokens=NEW)
    np.testing.assert_array_equal(actions, want_actions)
    np.testing.assert_array_equal(mask, want_mask)
    # With the behaviour log-probs, from the model's sample_with_log_probs.
    actions, mask, log_probs = protocol.sample(model, prompts, key, with_log_probs=True)
    np.testing.assert_array_equal(actions, want_actions)
    assert log_probs.shape == (6, NEW) and np.all(np.asarray(log_probs) <= 0)


def test_sample_errors_say_what_is_missing():
    class NoSample(nnx.Module):
        def __call__(self, x):
            return x

    pattern = r"`sample\(observations, key\)` method, which NoSample lacks"
    with pytest.raises(TypeError, match=pattern):
        protocol.sample(NoSample(), jnp.ones((2, 3)), jax.random.key(0))

    class Triple(nnx.Module):
        def sample(self, observations, key):
            return observations, observations, observations

    with pytest.raises(TypeError, match=r"Triple\.sample must return actions or \(actions, mask\)"):
        protocol.sample(Triple(), jnp.ones((2, 3)), jax.random.key(0))

    class NotCallable(nnx.Module):
        sample = 3

    with pytest.raises(TypeError, match="NotCallable lacks"):
        protocol.sample(NotCallable(), jnp.ones((2, 3)), jax.random.key(0))
