"""MLPDenoiser: shapes, conditioning, the null class, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.models.denoiser import MLPDenoiser, time_features


def _model(num_classes=3, **kw):
    return MLPDenoiser(5, num_classes=num_classes, hidden=16, depth=2, rngs=nnx.Rngs(0), **kw)


def _perturb(model):  # the output layer starts at zero: give it weights to see the inputs
    model.out.kernel[...] = jax.random.normal(jax.random.key(1), model.out.kernel.shape)
    return model


def test_conditioning_reaches_the_output_and_null_is_none():
    model = _perturb(_model())
    x, t = jnp.ones((4, 5)), jnp.linspace(0, 1, 4)
    y = model(x, t, jnp.array([0, 1, 2, 3]))  # 3 = the null class
    assert y.shape == (4, 5) and y.dtype == jnp.float32
    np.testing.assert_array_equal(model(x, t)[3], y[3])
    assert not np.allclose(y[0], model(x, t)[0])
    assert not np.allclose(model(x, t * 0.0), model(x, t))  # time matters


def test_untrained_output_is_zero_and_time_features_are_bounded():
    assert np.all(_model()(jnp.ones((2, 5)), jnp.zeros(2)) == 0.0)
    f = time_features(jnp.linspace(0, 1, 7), 8)
    assert f.shape == (7, 8) and np.all(np.abs(f) <= 1.0)


def test_scalar_time_broadcasts_and_jit_vmap_compose():
    model = _perturb(_model(0))
    x = jnp.ones((3, 5))
    np.testing.assert_allclose(model(x, 0.5), model(x, jnp.full(3, 0.5)))
    graph, state = nnx.split(model)

    @jax.jit
    def apply(state, x, t):
        return nnx.merge(graph, state)(x, t)

    batched = jax.vmap(apply, in_axes=(None, 0, None))(state, jnp.ones((2, 3, 5)), 0.3)
    np.testing.assert_allclose(batched[0], model(x, 0.3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "num_classes, x, labels, error, match",
    [
        (0, np.ones((2, 5)), np.array([0, 1]), ValueError, "unconditional"),
        (3, np.ones((2, 4)), None, ValueError, r"\[B, 5\]"),
        (3, np.ones((2, 5)), np.array([0, 4]), ValueError, r"class ids in \[0, 4\)"),
        (3, np.ones((2, 5)), np.array([0.0, 1.0]), TypeError, "labels"),
        (3, np.ones((2, 5)), np.array([0, 1, 2]), ValueError, "labels"),
    ],
)
def test_bad_input_is_named(num_classes, x, labels, error, match):
    with pytest.raises(error, match=match):
        _model(num_classes)(jnp.asarray(x, jnp.float32), jnp.zeros(2), labels)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="dim"):
        MLPDenoiser(0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes"):
        MLPDenoiser(4, num_classes=-1, rngs=nnx.Rngs(0))
