"""`rlgen.models.gan`: shapes and ranges, per-example independence of the discriminator
(what the gradient penalties assume), the initialisation scale, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.models.gan import MLPDiscriminator, MLPGenerator


def test_generator_maps_noise_into_the_unit_range():
    g = MLPGenerator(4, 6, hidden=(16, 16), rngs=nnx.Rngs(0))
    x = g(10.0 * jax.random.normal(jax.random.key(0), (32, 4)))
    assert x.shape == (32, 6) and x.dtype == jnp.float32
    assert float(jnp.abs(x).max()) <= 1.0
    assert float(jnp.std(x)) > 0.1  # not collapsed at initialisation
    assert g.latent_dim == 4 and g.dim == 6


def test_discriminator_outputs_one_value_per_example_independently():
    d = MLPDiscriminator(5, hidden=(16,), rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (4, 5))
    assert d(x).shape == (4,)
    jac = jax.jacobian(d)(x)  # [4, 4, 5]: output i depends on example i only
    off = jac * (1 - jnp.eye(4))[:, :, None]
    assert float(jnp.abs(off).max()) == 0.0 and float(jnp.abs(jac).max()) > 0.0
    np.testing.assert_allclose(d(x[2:3]), d(x)[2:3], rtol=1e-6)


def test_different_seeds_give_different_models():
    a = MLPGenerator(2, 3, hidden=(8,), rngs=nnx.Rngs(0))(jnp.ones((1, 2)))
    b = MLPGenerator(2, 3, hidden=(8,), rngs=nnx.Rngs(1))(jnp.ones((1, 2)))
    assert not np.allclose(a, b)


def test_shape_errors_name_the_argument():
    g = MLPGenerator(4, 6, hidden=(8,), rngs=nnx.Rngs(0))
    d = MLPDiscriminator(6, hidden=(8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`z` must have 4 features on its last axis, got shape "
                                         r"\(3, 5\)"):
        g(jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"`z` must have rank 2 \(\[B, latent_dim\]\)"):
        g(jnp.zeros(4))
    with pytest.raises(ValueError, match=r"`x` must have 6 features on its last axis, got shape "
                                         r"\(3, 2, 3\)|`x` must have rank 2"):
        d(jnp.zeros((3, 2, 3)))
    with pytest.raises(TypeError, match="`x` must have a floating dtype"):
        d(jnp.zeros((3, 6), jnp.int32))
    with pytest.raises(ValueError, match="`latent_dim` must be >= 1, got 0"):
        MLPGenerator(0, 6, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`hidden` must be a non-empty sequence"):
        MLPDiscriminator(6, hidden=64, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`hidden` must be a non-empty sequence"):
        MLPDiscriminator(6, hidden=(), rngs=nnx.Rngs(0))
