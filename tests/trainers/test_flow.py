"""`FlowTrainer` and the `flow_matching` algorithm: reflow straightens a curved flow on a
2-D toy problem (a seeded short run), the teacher stays frozen in the state and is
restored from a checkpoint, the EMA is the one of `ema_update`, a non-finite loss skips
the update, sampling is `sample_ode` with the trainer's parameters, and the errors.
(Fresh-process resume, write-back and 8 devices: the "flow" case of the contract suite.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen.algorithms import ema_update
from rlgen.algorithms.flow import METRICS, flow_matching
from rlgen.generative.flow import FlowConfig, sample_ode, straightness
from rlgen.models.denoiser import MLPDenoiser
from rlgen.trainers.flow import FlowTrainer

MEANS, STD = np.array([[3.0, 0.0], [-3.0, 0.0]], np.float32), 0.3


class MixtureVelocity(nnx.Module):
    """The exact (1-rectified) velocity for data = an equal mixture of N(mu_k, s^2 I).

    Given component k, x_t ~ N(t mu_k, var_t I) with var_t = (1 - t)^2 + t^2 s^2 and
    E[u | x_t, k] = mu_k + (t s^2 - (1 - t)) / var_t (x_t - t mu_k); the components are
    weighted by their posterior at x_t. Its flow is curved: paths bend towards a mode.
    """

    def __init__(self, means, std):
        self.means, self.std = nnx.Param(jnp.asarray(means)), std

    def __call__(self, x, t, labels=None):
        mu, s2, t = self.means[...], self.std**2, t[:, None, None]
        var = (1 - t) ** 2 + t**2 * s2
        d = x[:, None, :] - t * mu[None]
        w = jax.nn.softmax(-jnp.sum(d**2, -1, keepdims=True) / (2 * var), axis=1)
        return jnp.sum(w * (mu[None] + (t * s2 - (1 - t)) / var * d), axis=1)


class TinyVelocity(nnx.Module):
    """``v = W [x, t, onehot(label)] + b`` (label ``num_classes``: the null class)."""

    def __init__(self, dim, num_classes, seed):
        self.dim, self.num_classes = dim, num_classes
        self.linear = nnx.Linear(dim + num_classes + 2, dim, rngs=nnx.Rngs(seed))

    def __call__(self, x, t, labels=None):
        if labels is None:
            labels = jnp.full(x.shape[:1], self.num_classes)
        onehot = jax.nn.one_hot(labels, self.num_classes + 1)
        return self.linear(jnp.concatenate([x, t[:, None], onehot], axis=-1))


def _mixture(n, rng):
    return (MEANS[rng.integers(0, 2, n)] + STD * rng.normal(size=(n, 2))).astype(np.float32)


def _student(config, **kwargs):
    model = MLPDenoiser(2, hidden=32, depth=1, time_dim=16, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    return FlowTrainer(model, optimizer, config, **kwargs)


def test_reflow_straightens_the_flow_on_a_two_mode_toy_problem():
    teacher = MixtureVelocity(MEANS, STD)
    key = jax.random.key(1)
    ends, path = sample_ode(teacher, jax.random.normal(key, (512, 2)), 16, return_trajectory=True)
    curved = float(straightness(path))  # measured 2.14
    trainer = _student(FlowConfig(reflow=True, teacher_steps=16), teacher=teacher)
    rng = np.random.default_rng(0)
    for _ in range(200):
        metrics = trainer.train_step({"images": _mixture(128, rng)})
    assert sorted(metrics) == sorted(METRICS)
    student_ends, student_path = trainer.sample(512, key, num_steps=16, return_trajectory=True)
    # measured 0.020; a student trained without reflow (FlowConfig()) the same way: 1.7
    assert float(straightness(student_path)) < 0.05 * curved
    # the student keeps the teacher's pairing: its ends are near the teacher's (modes 6 apart)
    assert float(jnp.mean(jnp.sum((student_ends - ends) ** 2, -1))) < 1.0
    np.testing.assert_array_equal(trainer.state.ref_params["means"], MEANS)  # frozen


def _reflow_trainer(seed):
    model = TinyVelocity(2, 0, seed)
    return FlowTrainer(
        model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param),
        FlowConfig(reflow=True, teacher_steps=2), teacher=model, seed=seed,
    )


def test_a_student_starts_from_its_teacher_which_resumes_from_a_checkpoint():
    trainer = _reflow_trainer(0)
    initial = jax.tree.map(np.asarray, trainer.state.params)
    np.testing.assert_equal(jax.tree.map(np.asarray, trainer.state.ref_params), initial)
    rng = np.random.default_rng(0)
    batches = [{"images": _mixture(8, rng)} for _ in range(4)]
    for batch in batches[:2]:
        trainer.train_step(batch)
    saved = jax.device_get(trainer.checkpoint_state())
    straight = [trainer.train_step(b)["loss"] for b in batches[2:]]
    resumed = _reflow_trainer(1)  # another student and teacher, replaced by the checkpoint
    resumed.load_checkpoint_state(saved)
    assert [resumed.train_step(b)["loss"] for b in batches[2:]] == straight
    for name in ("params", "ref_params"):
        for a, b in zip(jax.tree.leaves(getattr(resumed.state, name)),
                        jax.tree.leaves(getattr(trainer.state, name)), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_equal(jax.tree.map(np.asarray, trainer.state.ref_params), initial)
    assert not np.array_equal(trainer.state.params["linear"]["kernel"],
                              initial["linear"]["kernel"])


def _shift_fn(w):
    return lambda x, t, labels: jnp.broadcast_to(w, x.shape)


def test_ema_and_the_skipped_update():
    algo = flow_matching(_shift_fn, optax.sgd(0.1), FlowConfig(ema_decay=0.8))
    state = algo.init(jnp.zeros(2))
    update = jax.jit(algo.update)
    batch = {"images": jnp.full((8, 2), 1.5)}
    new, metrics = update(state, batch)
    np.testing.assert_allclose(new.ema_params, ema_update(state.ema_params, new.params, 0.8))
    assert float(metrics["skipped"]) == 0.0 and int(new.step) == 1
    bad, metrics = update(new, {"images": batch["images"].at[0, 0].set(jnp.nan)})
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    for field in ("params", "opt_state", "ema_params"):  # nothing moved, no NaN written
        for a, b in zip(jax.tree.leaves(getattr(bad, field)), jax.tree.leaves(getattr(new, field)),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    assert int(bad.step) == 2 and not np.array_equal(  # the key moves on
        jax.random.key_data(bad.key), jax.random.key_data(new.key)
    )
    assert algo.init(jnp.zeros(2)).ref_params == ()  # no teacher without reflow


def test_sampling_uses_the_average_and_guidance():
    model = TinyVelocity(2, 3, 0)
    config = FlowConfig(num_classes=3, ema_decay=0.5)
    trainer = FlowTrainer(model, nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param), config)
    batch = {"images": _mixture(8, np.random.default_rng(0)), "labels": np.arange(8) % 3}
    for _ in range(3):
        trainer.train_step(batch)
    key, labels = jax.random.key(0), np.array([0, 1, 2, 0])
    x0 = jax.random.normal(key, (4, 2))
    average = trainer.merge(trainer.state.ema_params)
    for ema, velocity in [(True, average), (False, model)]:
        got = trainer.sample(4, key, labels, num_steps=3, method="heun", guidance_scale=2.0,
                             use_ema=ema)
        want = sample_ode(velocity, x0, 3, method="heun", labels=labels, guidance_scale=2.0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_errors():
    model = TinyVelocity(2, 3, 0)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    three = FlowConfig(num_classes=3)
    with pytest.raises(ValueError, match="reflow=True.*pass `teacher`"):
        FlowTrainer(model, optimizer, FlowConfig(num_classes=3, reflow=True))
    with pytest.raises(ValueError, match="reflow only"):
        FlowTrainer(model, optimizer, three, teacher=model)
    with pytest.raises(ValueError, match="needs a frozen teacher"):
        flow_matching(_shift_fn, optax.sgd(0.1), FlowConfig(reflow=True))
    with pytest.raises(ValueError, match="reflow only"):
        flow_matching(_shift_fn, optax.sgd(0.1), teacher_fn=_shift_fn, teacher_params=0.0)
    with pytest.raises(ValueError, match=r"num_classes=3 but the config's `num_classes` is 0"):
        FlowTrainer(model, optimizer)
    with pytest.raises(TypeError, match="must be a FlowConfig"):
        FlowTrainer(model, optimizer, {"coupling": "ot"})
    trainer = FlowTrainer(model, optimizer, three)
    images = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"`images` must have shape \[B, 2\]"):
        trainer.train_step({"images": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match=r"`labels` must hold class ids in \[0, 3\)"):
        trainer.train_step({"images": images, "labels": np.array([0, 1, 2, 3])})
    with pytest.raises(ValueError, match="non-finite"):
        trainer.train_step({"images": images + np.nan})
    with pytest.raises(ValueError, match=r"`labels` must hold class ids in \[0, 3\)"):
        trainer.sample(2, jax.random.key(0), np.array([0, -1]))
    with pytest.raises(ValueError, match="unknown `method` 'rk4'"):
        trainer.sample(2, jax.random.key(0), method="rk4")
    assert trainer.step == 0  # nothing ran
    plain = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    shapeless = FlowTrainer(plain, nnx.Optimizer(plain, optax.sgd(0.1), wrt=nnx.Param))
    with pytest.raises(ValueError, match="does not know the data's shape"):
        shapeless.sample(2, jax.random.key(0))
