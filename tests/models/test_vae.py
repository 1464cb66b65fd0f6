"""`rlgen.models.vae.MLPVAE`: shapes, the mirrored layers, the learned-std parameter, the
deterministic and sampled passes, and the shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.models.vae import MLPVAE


def test_shapes_layers_and_the_optional_std_parameter():
    vae = MLPVAE(12, 3, hidden=(8, 6), rngs=nnx.Rngs(0))
    assert [l.kernel.shape for l in vae.encoder.layers] == [(12, 8), (8, 6), (6, 6)]
    assert [l.kernel.shape for l in vae.decoder.layers] == [(3, 6), (6, 8), (8, 12)]
    assert not hasattr(vae, "decoder_log_scale")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 12)), jnp.float32)
    mean, log_var = vae.encode(x)
    assert mean.shape == log_var.shape == (5, 3)
    decoded, m, lv = vae(x)
    np.testing.assert_allclose(decoded, vae.decode(mean), rtol=1e-6)  # no key: the mean
    sampled, _, _ = vae(x, jax.random.key(0))
    assert sampled.shape == (5, 12) and not np.allclose(sampled, decoded)
    learned = MLPVAE(12, 3, hidden=(8,), learn_std=True, rngs=nnx.Rngs(0))
    assert learned.decoder_log_scale[...].shape == () and float(learned.decoder_log_scale[...]) == 0
    assert len(jax.tree.leaves(nnx.state(learned, nnx.Param))) == 9  # 4 layers x 2 + the scale


def test_seeded_initialisation():
    x = jnp.ones((5, 12))
    a, b, c = (MLPVAE(12, 3, hidden=(8, 6), rngs=nnx.Rngs(seed)) for seed in (3, 3, 4))
    np.testing.assert_array_equal(a.encode(x)[0], b.encode(x)[0])
    assert not np.allclose(a.encode(x)[0], c.encode(x)[0])


def test_bad_inputs_name_the_argument():
    vae = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`x` must have dim=4.*got shape \(3, 5\)"):
        vae.encode(jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="`x` must have rank 2"):
        vae.encode(jnp.ones((3, 2, 2)))
    with pytest.raises(TypeError, match="`x` must have a floating dtype"):
        vae.encode(jnp.ones((3, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"`z` must have latent_dim=2"):
        vae.decode(jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="`z` must have rank 2"):
        vae.decode(jnp.ones(2))
    for kwargs, match in [
        ({"dim": 0}, "`dim`"),
        ({"latent_dim": 1.5}, "`latent_dim`"),
        ({"hidden": 8}, "`hidden`"),
        ({"hidden": (8, 0)}, r"`hidden\[1\]`"),
        ({"learn_std": "yes"}, "`learn_std`"),
    ]:
        args = {"dim": 4, "latent_dim": 2, "hidden": (8,)} | kwargs
        with pytest.raises((TypeError, ValueError), match=match):
            MLPVAE(**args, rngs=nnx.Rngs(0))
