"""`VAETrainer`: learning a toy set (held-out ELBO up, the learned std down to the noise),
the schedule on the trainer's step without recompiling, `reconstruct` and `sample` (pure,
compiled once per shape), and the errors raised before any work."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen.generative import vae as V
from rlgen.generative.vae import METRICS, VAEConfig
from rlgen.models.vae import MLPVAE
from rlgen.trainers.vae import VAETrainer

DIM, LATENT, NOISE = 16, 2, 0.1


def toy(seed, rows=64):
    """Points near a 1-D curve in 16 dimensions plus N(0, 0.1^2) noise."""
    r = np.random.default_rng(seed)
    t = r.uniform(-1, 1, (rows, 1))
    basis = np.random.default_rng(123).normal(size=(2, DIM))
    x = np.tanh(t * basis[0] + t**2 * basis[1]) + NOISE * r.normal(size=(rows, DIM))
    return jnp.asarray(x, jnp.float32)


def make(config=None, seed=0, lr=3e-3, hidden=(32,)):
    config = VAEConfig() if config is None else config
    model = MLPVAE(
        DIM, LATENT, hidden=hidden, learn_std=config.learn_decoder_std, rngs=nnx.Rngs(seed)
    )
    return VAETrainer(model, nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param), config, seed=seed)


def heldout_elbo(trainer, x):
    return float(jnp.mean(trainer.elbo(x, jax.random.key(9), 8)))


def test_learns_a_toy_set_and_the_learned_std_finds_the_noise():
    config = VAEConfig(learn_decoder_std=True, kl_schedule="linear", kl_warmup_steps=50)
    trainer = make(config, lr=1e-2)
    test = toy(1, rows=256)
    before = heldout_elbo(trainer, test)
    first = trainer.train_step({"images": toy(100)})
    assert set(first) == {"loss", *METRICS, "skipped"} and float(first["skipped"]) == 0.0
    for step in range(1, 250):
        last = trainer.train_step({"images": toy(100 + step)})
    after = heldout_elbo(trainer, test)
    # the held-out ELBO rises by at least 20 nats per example (measured: -18.9 -> +8.5; the
    # noise alone bounds it by 16 * log(1 / (0.1 sqrt(2 pi e))) = 14.1)
    assert after - before > 20.0, (before, after)
    # the std starts at 1 and is learned down towards the data's noise level
    assert float(first["decoder_std"]) == pytest.approx(1.0, abs=0.01)
    assert 0.5 * NOISE < float(last["decoder_std"]) < 2 * NOISE, last["decoder_std"]  # 0.124
    assert float(last["kl_weight"]) == 1.0 and float(last["active_units"]) >= 1
    # deterministic reconstructions are close to the clean curve (the noise is 0.1)
    error = jnp.sqrt(jnp.mean((trainer.reconstruct(test) - test) ** 2))
    assert float(error) < 2.5 * NOISE
    assert trainer._compiled_update._cache_size() == 1
    assert trainer._elbo._cache_size() == 1  # one program for both evaluations
    direct = V.elbo(trainer.model, test, jax.random.key(9), 8, config)
    compiled = trainer.elbo(test, jax.random.key(9), 8)
    np.testing.assert_allclose(compiled, direct, rtol=1e-5, atol=1e-4)


def test_the_schedule_follows_the_trainer_step_and_a_non_finite_batch_is_skipped():
    config = VAEConfig(kl_schedule="cyclical", kl_cycle_steps=4, kl_cycle_ratio=0.5, beta=2.0)
    trainer = make(config)
    weights = [float(trainer.train_step({"images": toy(i, rows=8)})["kl_weight"]) for i in range(5)]
    assert weights == [0.0, 1.0, 2.0, 2.0, 0.0]  # beta * w(step)
    # a batch with a NaN: the update is skipped (and said so), the parameters are kept
    params = jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param))
    metrics = trainer.train_step({"images": toy(5, rows=8).at[3, 5].set(jnp.nan)})
    assert float(metrics["skipped"]) == 1.0 and np.isnan(float(metrics["loss"]))
    kept = jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, kept, params)
    # training goes on, the schedule with the step count (which the skipped batch advanced)
    metrics = trainer.train_step({"images": toy(6, rows=8)})
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    assert float(metrics["kl_weight"]) == 2.0 and trainer.step == 7
    assert trainer._compiled_update._cache_size() == 1


def test_reconstruct_and_sample_are_pure_and_compiled_once_per_shape():
    trainer = make(VAEConfig(decoder="bernoulli"))
    x = (toy(0, rows=8) + 1) / 2
    x = jnp.clip(x, 0.0, 1.0)
    state, step = jax.tree.map(np.asarray, nnx.state(trainer.model)), trainer.step
    det = trainer.reconstruct(x)
    np.testing.assert_array_equal(det, trainer.reconstruct(x))
    mean, _ = trainer.model.encode(x)
    np.testing.assert_allclose(det, jax.nn.sigmoid(trainer.model.decode(mean)), rtol=1e-5)
    drawn = trainer.reconstruct(x, jax.random.key(0))
    assert drawn.shape == x.shape and not np.allclose(drawn, det)
    trainer.reconstruct(x[:4])
    assert trainer._reconstruct._cache_size() == 3  # (8, None), (8, key), (4, None)
    samples = trainer.sample(5, jax.random.key(1))
    assert samples.shape == (5, DIM) and bool(jnp.all((samples >= 0) & (samples <= 1)))
    np.testing.assert_array_equal(samples, trainer.sample(5, jax.random.key(1)))
    trainer.sample(5, jax.random.key(2))
    trainer.sample(7, jax.random.key(2))
    assert trainer._sample._cache_size() == 2
    # nothing of the trainer changed
    assert trainer.step == step
    jax.tree.map(
        np.testing.assert_array_equal, state, jax.tree.map(np.asarray, nnx.state(trainer.model))
    )
    # a model changed by hand is read at the next call (no stale copy)
    trainer.model.decoder.layers[-1].bias[...] += 100.0
    assert float(trainer.sample(5, jax.random.key(1)).min()) > 0.99


def test_errors_before_any_work():
    trainer = make(VAEConfig(decoder="bernoulli"))
    with pytest.raises(ValueError, match=r"batch\['images'\].*\[0, 1\]"):
        trainer.train_step({"images": toy(0, rows=8)})  # Gaussian-scale data
    with pytest.raises(ValueError, match="keys"):
        trainer.train_step({"images": jnp.ones((8, DIM)) / 2, "labels": jnp.zeros(8)})
    with pytest.raises(TypeError, match="floating"):
        trainer.train_step({"images": jnp.ones((8, DIM), jnp.int32)})
    assert trainer.step == 0 and trainer._compiled_update._cache_size() == 0
    with pytest.raises(ValueError, match="num_samples"):
        trainer.sample(0, jax.random.key(0))
    model = MLPVAE(DIM, LATENT, hidden=(8,), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    with pytest.raises(TypeError, match="VAEConfig"):
        VAETrainer(model, optimizer, {"beta": 1.0})
    with pytest.raises(ValueError, match="learn_std=True"):
        VAETrainer(model, optimizer, VAEConfig(learn_decoder_std=True))
    learned = MLPVAE(DIM, LATENT, hidden=(8,), learn_std=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="learn_std=False"):
        VAETrainer(learned, nnx.Optimizer(learned, optax.adam(1e-3), wrt=nnx.Param))
