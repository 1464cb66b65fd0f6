"""The policy protocol of the algorithms (`rlgen.algorithms.policy`): `evaluate_policy`
and `TokenCategorical`, compared with distrax's categorical."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen.algorithms.policy import TokenCategorical, evaluate_policy

RNG = np.random.default_rng(3)


# --------------------------------------------------------------------- policy protocol


def test_evaluate_policy_says_what_is_missing():
    params, obs, actions = jnp.zeros((3, 4)), jnp.arange(3), jnp.zeros(3, jnp.int32)
    with pytest.raises(
        TypeError,
        match=r"a distribution \(an object with `log_prob` and "
        r"`entropy`, e.g. distrax's\); got ArrayImpl.*TokenCategorical",
    ):
        evaluate_policy(lambda p, o: p[o], params, obs, actions)

    class OnlyLogProb:
        def log_prob(self, a):
            return jnp.zeros(3)

    with pytest.raises(TypeError, match="entropy.*got OnlyLogProb"):
        evaluate_policy(lambda p, o: OnlyLogProb(), params, obs, actions)
    with pytest.raises(TypeError, match=r"\(distribution, values\).*got Categorical"):
        evaluate_policy(
            lambda p, o: distrax.Categorical(logits=p[o]), params, obs, actions, with_values=True
        )


def test_evaluate_policy_entropy_must_match_log_probs():
    class Mismatched:
        def log_prob(self, a):
            return jnp.zeros((3, 2))

        def entropy(self):
            return jnp.zeros(3)

    with pytest.raises(ValueError, match=r"entropy\(\) has shape \(3,\).*\(3, 2\)"):
        evaluate_policy(lambda p, o: Mismatched(), None, None, None)


def test_evaluate_policy_returns_float32_from_bfloat16():
    logits = jnp.asarray(RNG.normal(size=(3, 4, 5)), jnp.bfloat16)
    actions = jnp.asarray(RNG.integers(0, 5, (3, 4)))
    lp, ent = evaluate_policy(lambda p, o: TokenCategorical(p), logits, None, actions)
    assert lp.dtype == ent.dtype == jnp.float32
    assert lp.shape == ent.shape == (3, 4)
    values = jnp.ones((3, 4), jnp.bfloat16)
    lp, ent, v = evaluate_policy(
        lambda p, o: (TokenCategorical(p), values), logits, None, actions, with_values=True
    )
    assert v.dtype == jnp.float32 and v.shape == (3, 4)
    # Computed in float32 from the bfloat16 logits: no bfloat16 log-softmax in between.
    upcast = distrax.Categorical(logits=logits.astype(jnp.float32))
    np.testing.assert_allclose(lp, upcast.log_prob(actions), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ent, upcast.entropy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_token_categorical_matches_distrax_categorical(scale):
    logits = jnp.asarray(scale * RNG.normal(size=(2, 3, 7)), jnp.float32)
    actions = jnp.asarray(RNG.integers(0, 7, (2, 3)))
    ours, theirs = TokenCategorical(logits), distrax.Categorical(logits=logits)
    np.testing.assert_allclose(
        ours.log_prob(actions), theirs.log_prob(actions), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(ours.entropy(), theirs.entropy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours.mode(), theirs.mode())
    np.testing.assert_allclose(ours.prob(actions), theirs.prob(actions), rtol=1e-5, atol=1e-7)
    other = distrax.Categorical(logits=jnp.zeros((2, 3, 7)))
    np.testing.assert_allclose(
        ours.kl_divergence(other), theirs.kl_divergence(other), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(ours.logits, logits)  # raw logits, kept as given
    np.testing.assert_allclose(ours.probs, theirs.probs, rtol=1e-5, atol=1e-7)
    # Same gradients too (what training uses).
    grad = lambda d: jax.grad(lambda z: jnp.sum(d(z).log_prob(actions) + d(z).entropy()))(  # noqa: E731
        logits
    )
    np.testing.assert_allclose(
        grad(TokenCategorical), grad(lambda z: distrax.Categorical(logits=z)), rtol=1e-4, atol=1e-5
    )


def test_token_categorical_samples_follow_its_probabilities_and_it_is_a_pytree():
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    d = TokenCategorical(logits)
    draws = d.sample(seed=jax.random.key(0), sample_shape=(20_000,))
    assert draws.shape == (20_000, 2) and draws.dtype == jnp.int32
    freq = np.stack([np.bincount(np.asarray(draws[:, i]), minlength=3) / 20_000 for i in (0, 1)])
    np.testing.assert_allclose(freq, np.exp(np.asarray(logits)), atol=0.015)
    leaves, tree = jax.tree.flatten(d)
    assert len(leaves) == 1
    back = jax.jit(lambda x: x)(d)  # crosses a jit boundary as a pytree
    assert isinstance(back, TokenCategorical)
    np.testing.assert_array_equal(back.logits, logits)
    np.testing.assert_array_equal(jax.tree.unflatten(tree, leaves).mode(), [0, 2])

