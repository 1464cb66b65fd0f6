"""`rlgen.models.energy.MLPEnergy`: one energy per example, against a NumPy forward pass,
each activation smooth (a continuous input gradient), and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.models.energy import ACTIVATIONS, MLPEnergy

NP_ACTIVATIONS = {
    "swish": lambda z: z / (1.0 + np.exp(-z)),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "tanh": np.tanh,
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_energy_matches_numpy_and_has_a_smooth_input_gradient(activation):
    model = MLPEnergy(3, (8, 5), activation=activation, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    e = model(jnp.asarray(x))
    assert e.shape == (6,) and e.dtype == jnp.float32
    h = x.astype(np.float64)
    for i, layer in enumerate(model.layers):
        h = h @ np.asarray(layer.kernel.get_value(), np.float64) + np.asarray(
            layer.bias.get_value(), np.float64
        )
        if i < len(model.layers) - 1:
            h = NP_ACTIVATIONS[activation](h)
    np.testing.assert_allclose(e, h[:, 0], rtol=1e-5, atol=1e-6)
    # the input gradient Langevin follows: nonzero and continuous (no ReLU kinks)
    grad = jax.grad(lambda x: jnp.sum(model(x)))
    g = grad(jnp.asarray(x))
    assert np.all(np.linalg.norm(np.asarray(g), axis=-1) > 0)
    np.testing.assert_allclose(grad(jnp.asarray(x) + 1e-4), g, atol=1e-3)


def test_bad_input_is_named():
    model = MLPEnergy(3, (4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dim=3"):
        model(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="rank 2"):
        model(jnp.zeros((2, 3, 1)))
    with pytest.raises(TypeError, match="floating"):
        model(jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(TypeError, match="hidden"):
        MLPEnergy(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden"):
        MLPEnergy(3, (4, 0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation"):
        MLPEnergy(3, (4,), activation="relu", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dim"):
        MLPEnergy(0, (4,), rngs=nnx.Rngs(0))
