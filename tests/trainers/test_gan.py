"""`GANTrainer`: it learns a 2-D mixture of Gaussians (kernel MMD to held-out points falls by
a stated factor and every mode is covered), each optimizer counts its own updates, the
generator's average is what `sample` draws from, and bad input fails before any work.
(The trainer contract: `test_contract.py`, case "gan".)"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen.generative.gan import GANConfig
from rlgen.models.gan import MLPDiscriminator, MLPGenerator
from rlgen.trainers.gan import GANTrainer

MODES = 0.6 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def mixture(n, rng):
    """Four Gaussians (std 0.05) on a circle of radius 0.6."""
    return (MODES[rng.integers(0, 4, n)] + 0.05 * rng.normal(size=(n, 2))).astype(np.float32)


def mmd(a, b, scale=0.2):
    """The (biased) RBF kernel MMD^2 in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    k = lambda x, y: np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * scale**2))  # noqa: E731
    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def make(config=None, seed=0, hidden=(32, 32), lr=5e-3, dim=2, latent=2):
    g = MLPGenerator(latent, dim, hidden=hidden, rngs=nnx.Rngs(seed))
    d = MLPDiscriminator(dim, hidden=hidden, rngs=nnx.Rngs(seed + 1))
    opt = lambda m: nnx.Optimizer(m, optax.adam(lr, b1=0.5, b2=0.9), wrt=nnx.Param)  # noqa: E731
    return GANTrainer(
        {"generator": g, "discriminator": d}, {"generator": opt(g), "discriminator": opt(d)},
        config, seed=seed,
    )


def test_learns_a_mixture_of_gaussians():
    # Hinge loss (the toy's most reliable at this learning rate; measured over seeds 0-3:
    # MMD falls 6-20x, every mode holds 19-30% of the samples).
    trainer = make(GANConfig(loss="hinge"))
    rng = np.random.default_rng(0)
    held_out = mixture(400, np.random.default_rng(99))
    before = mmd(trainer.sample(400, jax.random.key(1)), held_out)
    trainer.fit([{"images": mixture(64, rng)} for _ in range(400)])
    samples = np.asarray(trainer.sample(400, jax.random.key(1)))
    after = mmd(samples, held_out)
    assert after < before / 4, (before, after)
    share = np.bincount(((samples[:, None] - MODES[None]) ** 2).sum(-1).argmin(1), minlength=4)
    assert share.min() >= 0.12 * len(samples), share  # no mode dropped
    assert trainer.step == 400


def test_each_optimizer_counts_its_updates_and_sample_draws_from_the_average():
    trainer = make(GANConfig(d_steps=3, ema_decay=0.5), hidden=(8,))
    for _ in range(2):
        metrics = trainer.train_step({"images": mixture(8, np.random.default_rng(0))})
    counts = {k: int(optax.tree_utils.tree_get(v, "count"))
              for k, v in trainer.state.opt_state.items()}
    assert counts == {"discriminator": 6, "generator": 2}
    assert {k: int(o.step.get_value()) for k, o in trainer.optimizer.items()} == {
        "discriminator": 2, "generator": 2
    }
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["d_loss"]))
    # `sample` draws from the generator's average (or, asked, from the trained generator)
    key = jax.random.key(3)
    average = trainer.merge({**trainer.state.params, "generator": trainer.state.ema_params})
    z = jax.random.normal(key, (5, 2))
    np.testing.assert_allclose(trainer.sample(5, key), average["generator"](z), rtol=1e-6)
    np.testing.assert_allclose(trainer.sample(5, key, ema=False), trainer.model["generator"](z),
                               rtol=1e-6)
    assert not np.allclose(trainer.sample(5, key), trainer.sample(5, key, ema=False))
    assert trainer.sample(5).shape == (5, 2)  # the trainer's own key by default


def test_bad_input_fails_before_any_work():
    trainer = make(hidden=(8,))
    with pytest.raises(ValueError, match=r"`batch\['images'\]` must lie in \[-1, 1\]"):
        trainer.train_step({"images": np.full((8, 2), 16.0, np.float32)})
    with pytest.raises(ValueError, match=r"`images` must have the generator's output shape"):
        trainer.train_step({"images": np.zeros((8, 3), np.float32)})
    with pytest.raises(ValueError, match=r"GAN batch is missing key\(s\) \['images'\]"):
        trainer.train_step({"x": np.zeros((8, 2), np.float32)})
    assert trainer.step == 0 and int(trainer.state.step) == 0
    with pytest.raises(ValueError, match="`d_steps` must be >= 1, got 0"):
        make(GANConfig(d_steps=0))
    with pytest.raises(ValueError, match="unknown `loss` 'wgan'"):
        make(GANConfig(loss="wgan"))
    g = MLPGenerator(2, 2, hidden=(4,), rngs=nnx.Rngs(0))
    d = MLPDiscriminator(2, hidden=(4,), rngs=nnx.Rngs(0))
    opt = lambda m: nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)  # noqa: E731
    with pytest.raises(TypeError, match=r"GANTrainer takes `model` as a dict \{'generator'"):
        GANTrainer(g, d, opt(g))
    with pytest.raises(TypeError, match=r"GANTrainer takes `optimizer` as a dict"):
        GANTrainer({"generator": g, "discriminator": d}, {"generator": opt(g)})
    with pytest.raises(TypeError, match="`config` must be a GANConfig"):
        GANTrainer({"generator": g, "discriminator": d},
                   {"generator": opt(g), "discriminator": opt(d)}, {"loss": "hinge"})
    linear = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"the generator \(Linear\) needs a `latent_dim`"):
        GANTrainer({"generator": linear, "discriminator": d},
                   {"generator": opt(linear), "discriminator": opt(d)})


def test_a_plain_nnx_generator_with_a_latent_dim_and_a_b_1_discriminator():
    g, d = nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 1, rngs=nnx.Rngs(1))
    g.latent_dim = 3
    opt = lambda m: nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)  # noqa: E731
    trainer = GANTrainer({"generator": g, "discriminator": d},
                         {"generator": opt(g), "discriminator": opt(d)},
                         GANConfig(loss="wgan_gp", data_range=None))
    metrics = trainer.train_step({"images": 5.0 * jnp.ones((4, 2))})
    assert np.isfinite(float(metrics["gradient_penalty"])) and trainer.latent_shape == (3,)
