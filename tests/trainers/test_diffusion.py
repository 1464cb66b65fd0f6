"""`DiffusionTrainer`: the EMA kept inside the compiled step against a NumPy EMA of the
parameter history, sampling (compiled once per static settings, EMA or current
parameters, guidance, trajectories), and bad input refused on the host before any work
(the non-finite loss: tests/algorithms/test_diffusion.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen.generative.diffusion import DiffusionConfig
from rlgen.models.denoiser import MLPDenoiser
from rlgen.trainers.diffusion import DiffusionTrainer

DIM, CLASSES = 4, 3


def make(config=None, num_classes=CLASSES, seed=0, lr=1e-2):
    model = MLPDenoiser(DIM, num_classes=num_classes, hidden=16, depth=1, rngs=nnx.Rngs(seed))
    config = config or DiffusionConfig(num_timesteps=100, ema_decay=0.8)
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    return DiffusionTrainer(model, optimizer, config, seed=seed)


def batch(seed=0, rows=8, labels=True):
    r = np.random.default_rng(seed)
    out = {"images": r.uniform(-1, 1, (rows, DIM)).astype(np.float32)}
    if labels:
        out["labels"] = r.integers(0, CLASSES, rows).astype(np.int32)
    return out


def host(params):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), params)


@pytest.fixture(scope="module")
def trained():
    """A trainer after 10 steps, with its parameters before and after each step."""
    trainer = make(lr=0.05)
    history = [host(trainer.state.params)]
    for step in range(10):
        trainer.train_step(batch(step))
        history.append(host(trainer.state.params))
    return trainer, history


def test_ema_is_the_moving_average_of_the_parameter_history(trained):
    trainer, history = trained
    decay = trainer.config.ema_decay
    average = history[0]  # the average starts at the initial parameters
    for params in history[1:]:
        average = jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, average, params)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7),
                 host(trainer.state.ema_params), average)
    ema_model = nnx.to_pure_dict(nnx.state(trainer.ema_model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, host(ema_model), host(trainer.state.ema_params))
    trained_model = nnx.to_pure_dict(nnx.state(trainer.model, nnx.Param))  # the iterate
    jax.tree.map(np.testing.assert_array_equal, host(trained_model), history[-1])


def test_sample_compiles_once_per_static_settings(trained):
    trainer, _ = trained
    labels = np.array([0, 1, 2, 0, 1, 2])
    key = jax.random.key(0)
    a = trainer.sample(6, key, labels, num_steps=5, eta=0.0, guidance_scale=2.0)
    b = trainer.sample(6, key, labels, num_steps=5, eta=0.5, guidance_scale=3.0)
    current = trainer.sample(6, key, labels, num_steps=5, guidance_scale=2.0, use_ema=False)
    assert a.shape == (6, DIM) and trainer._compiled_sample._cache_size() == 1
    assert not np.allclose(a, b)  # eta and the scale are traced values, not constants
    assert not np.allclose(a, current)  # the EMA lags the trained parameters
    assert float(jnp.max(jnp.abs(a))) <= 1.0 + 1e-6  # x0 estimates clipped to clip_x0
    x, traj = trainer.sample(6, key, labels, sampler="ddpm", num_steps=5,
                             return_trajectory=True)
    assert traj.x.shape == (6, 6, DIM) and traj.log_prob.shape == (5, 6)
    np.testing.assert_array_equal(x, traj.x[-1])
    assert trainer.sample(6, key, num_steps=5).shape == (6, DIM)  # unconditional
    assert trainer._compiled_sample._cache_size() == 3


def test_bad_input_is_refused_before_any_work():
    trainer = make()
    good = batch()
    cases = [
        ({"images": good["images"][:, :3]}, ValueError, r"shape \[B, \*\(4,\)\]"),
        ({"images": good["images"][None]}, ValueError, r"shape \[B, \*\(4,\)\]"),
        ({"images": good["images"] * 16}, ValueError, r"`images` must lie in \[-1, 1\]"),
        ({"images": good["images"].astype(np.int32)}, TypeError, "floating dtype"),
        ({**good, "labels": good["labels"] + CLASSES}, ValueError, r"`labels` must hold class ids"),
        ({**good, "labels": good["labels"][:4]}, ValueError, "`labels` must have shape"),
        ({"pixels": good["images"]}, ValueError, "needs 'images'"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            trainer.train_step(bad)
    assert trainer.step == 0 and trainer._compiled_update._cache_size() == 0
    unconditional = make(num_classes=0)
    with pytest.raises(ValueError, match="unconditional model"):
        unconditional.train_step(good)
    with pytest.raises(ValueError, match="unconditional model"):
        unconditional.sample(8, jax.random.key(0), good["labels"])
    with pytest.raises(ValueError, match=r"`labels` must hold class ids in \[0, 3\)"):
        trainer.sample(2, jax.random.key(0), np.array([0, 3]))
    with pytest.raises(ValueError, match="unknown `sampler` 'euler'"):
        trainer.sample(2, jax.random.key(0), sampler="euler")
    with pytest.raises(TypeError, match="DiffusionConfig"):
        DiffusionTrainer(trainer.model, trainer.optimizer, {"num_timesteps": 10})
    with pytest.raises(ValueError, match="pass `data_shape`"):
        DiffusionTrainer(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), trainer.optimizer)
