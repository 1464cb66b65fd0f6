"""`rlgen.models.gaussian`: the VAE encoder and GAN generator as Gaussian policies: shapes
of log-probs, entropies and values (`[B]`), the copy of a pretrained model's weights, the
log-density against float64 NumPy, keyed and keyless sampling, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.models.gan import MLPGenerator
from rlgen.models.gaussian import GaussianEncoderPolicy, GaussianGeneratorPolicy
from rlgen.models.vae import MLPVAE


def test_encoder_policy_is_the_vae_posterior_with_a_value_head():
    vae = MLPVAE(6, 3, hidden=(16,), rngs=nnx.Rngs(0))
    policy = GaussianEncoderPolicy.from_vae(vae, value_hidden=(8,), rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (5, 6))
    dist, values = policy(x)
    mean, log_var = vae.encode(x)
    np.testing.assert_allclose(dist.mean(), mean, rtol=1e-6)
    np.testing.assert_allclose(dist.stddev(), jnp.exp(0.5 * log_var), rtol=1e-6)
    assert values.shape == (5,) and dist.entropy().shape == (5,)
    z = jax.random.normal(jax.random.key(1), (5, 3))
    m, s, zz = (np.asarray(a, np.float64) for a in (mean, jnp.exp(0.5 * log_var), z))
    expected = np.sum(-0.5 * ((zz - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi), -1)
    np.testing.assert_allclose(dist.log_prob(z), expected, rtol=1e-5)
    # the copy is independent of the VAE: training one leaves the other
    nnx.update(policy.encoder, jax.tree.map(lambda a: a + 1.0, nnx.state(policy.encoder)))
    np.testing.assert_allclose(vae.encode(x)[0], mean)


def test_encoder_policy_sampling_keyed_and_keyless():
    policy = GaussianEncoderPolicy(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
    x = jnp.ones((3, 4))
    z1, lp1 = policy(x, return_log_prob=True, key=jax.random.key(7))
    z2, _ = policy(x, return_log_prob=True, key=jax.random.key(7))
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_allclose(lp1, policy.distribution(x).log_prob(z1), rtol=1e-6)
    np.testing.assert_array_equal(policy.sample(x, jax.random.key(7)), z1)
    a, _ = policy(x, return_log_prob=True)
    b, _ = policy(x, return_log_prob=True)
    assert a.shape == (3, 2) and not np.allclose(a, b)  # the own stream advances
    again = GaussianEncoderPolicy(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(again(x, return_log_prob=True)[0], a)  # seeded by rngs


def test_generator_policy_mean_and_std():
    g = MLPGenerator(4, 6, hidden=(16, 16), rngs=nnx.Rngs(0))
    policy = GaussianGeneratorPolicy.from_generator(g, init_log_std=-1.5)
    z = jax.random.normal(jax.random.key(0), (5, 4))
    dist = policy(z)
    np.testing.assert_allclose(dist.mean(), g(z), rtol=1e-6)
    np.testing.assert_allclose(dist.stddev(), np.exp(-1.5), rtol=1e-6)
    x = policy.sample(z, jax.random.key(1))
    assert x.shape == (5, 6) and dist.log_prob(x).shape == (5,)
    expected = 6 * (-1.5 + 0.5 * (np.log(2 * np.pi) + 1.0))
    np.testing.assert_allclose(dist.entropy(), np.full(5, expected), rtol=1e-5)
    # gradients reach the mean network and the log-std
    grads = nnx.grad(lambda p: jnp.sum(p(z).log_prob(x)))(policy)
    assert float(jnp.abs(grads.log_std[...]).sum()) > 0
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads.generator))


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="`vae`"):
        GaussianEncoderPolicy.from_vae(object(), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`generator`"):
        GaussianGeneratorPolicy.from_generator(object())
    policy = GaussianEncoderPolicy(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`images` must have 4 features.*\(3, 5\)"):
        policy(jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="`key` is only used with return_log_prob"):
        policy(jnp.ones((3, 4)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`init_log_std`"):
        GaussianGeneratorPolicy(2, 4, hidden=(8,), init_log_std=50.0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`value_hidden`"):
        GaussianEncoderPolicy(4, 2, value_hidden=8, rngs=nnx.Rngs(0))
