"""The `Trainer` base: the compiled step and its write-back, optimizer adoption, argument
checks, checkpoints, the `fit` loop (hooks, caps, early stop, Ctrl-C) and data
parallelism over a `jax.sharding.Mesh` of CPU devices.

Most tests use `Regression`, a `compute_loss` subclass fitting a linear model, so every
step can be checked against a float64 NumPy reference. The contract every trainer keeps
(one compile per shape, write-back, exact resume, several devices) is
`tests/trainers/test_contract.py`.
"""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen.algorithms import GRPOConfig, PPOConfig, SupervisedState
from rlgen.models import MLPActorCritic, MLPPolicy
from rlgen.trainers import GRPOTrainer, PPOTrainer, Trainer

N, D = 8, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D)).astype(np.float32)
W_TRUE = np.array([[1.0], [-2.0], [0.5]], np.float32)
Y = (X @ W_TRUE + 0.3).astype(np.float32)
BATCH = {"x": jnp.asarray(X), "y": jnp.asarray(Y)}


class Regression(Trainer):
    """Mean squared error of a linear model; ``noise`` > 0 perturbs the inputs with the
    step's key (so the trainer's RNG matters to the numbers)."""

    noise = 0.0

    def __init__(self, *args, **kwargs):
        self.traces = 0
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, batch, key, step):
        self.traces += 1  # runs only while tracing
        x = batch["x"]
        if self.noise:
            x = x + self.noise * jax.random.normal(key, x.shape)
        err = model(x) - batch["y"]
        loss = jnp.mean(err**2)
        return loss, {"mse": loss}


def make(tx=None, *, seed=0, model_seed=0, cls=Regression, **kwargs):
    model = nnx.Linear(D, 1, rngs=nnx.Rngs(model_seed))
    opt = nnx.Optimizer(model, tx if tx is not None else optax.sgd(0.1), wrt=nnx.Param)
    return cls(model, opt, seed=seed, **kwargs)


def params_of(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def opt_values(optimizer):
    """The optimiser state held by an `nnx.Optimizer`, as a list of arrays."""
    leaves = jax.tree.leaves(optimizer.opt_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [np.asarray(v.get_value()) for v in leaves]


def assert_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol / 10)


def _host(x):
    if jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(_host(x), _host(y))


def np_sgd_step(w, b, lr):
    """One float64 SGD step of mean((x w + b - y)^2)."""
    x, y = X.astype(np.float64), Y.astype(np.float64)
    err = x @ w + b - y
    gw = 2.0 / err.size * x.T @ err
    gb = 2.0 / err.size * err.sum(axis=0)
    return w - lr * gw, b - lr * gb, np.mean(err**2)


# ---------------------------------------------------------------- the step


def test_step_matches_numpy_sgd_and_learns():
    trainer = make()
    w = np.asarray(trainer.model.kernel.get_value(), np.float64)
    b = np.asarray(trainer.model.bias.get_value(), np.float64)
    first = None
    for _ in range(5):
        w, b, loss = np_sgd_step(w, b, 0.1)
        metrics = trainer.train_step(BATCH)
        np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["mse"]), loss, rtol=1e-5)
        first = loss if first is None else first
    np.testing.assert_allclose(trainer.model.kernel.get_value(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trainer.model.bias.get_value(), b, rtol=1e-5, atol=1e-6)
    for _ in range(200):
        metrics = trainer.train_step(BATCH)
    assert float(metrics["loss"]) < 1e-4 * first
    np.testing.assert_allclose(trainer.model.kernel.get_value(), W_TRUE, atol=1e-2)
    np.testing.assert_allclose(trainer.model.bias.get_value(), [0.3], atol=1e-2)


def test_write_back_after_every_step():
    trainer = make(optax.adam(0.05))
    assert trainer.step == 0 and isinstance(trainer.state, SupervisedState)
    before = jax.tree.map(np.asarray, params_of(trainer.model))
    for i in range(1, 4):
        metrics = trainer.train_step(BATCH)
        assert set(metrics) == {"loss", "mse", "skipped"}
        assert all(v.shape == () for v in metrics.values())
        assert trainer.step == i
        assert int(trainer.optimizer.step.get_value()) == i
        assert int(trainer.state.step) == i
        assert_trees_equal(params_of(trainer.model), trainer.state.params)
        assert_trees_equal(opt_values(trainer.optimizer), jax.tree.leaves(trainer.state.opt_state))
    assert not np.array_equal(before["kernel"], np.asarray(trainer.model.kernel.get_value()))
    # the model is usable as such: its output is the trained linear map
    np.testing.assert_allclose(
        trainer.model(BATCH["x"]),
        X @ np.asarray(trainer.state.params["kernel"]) + np.asarray(trainer.state.params["bias"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_compiled_once_for_same_shapes():
    trainer = make()
    for _ in range(4):
        trainer.train_step(BATCH)
    assert trainer.traces == 1
    assert trainer._compiled_update._cache_size() == 1
    # new values, same shapes: still no retrace
    trainer.train_step({"x": BATCH["x"] * 2.0, "y": BATCH["y"] + 1.0})
    assert trainer.traces == 1
    # a new shape compiles a second program
    trainer.train_step({"x": BATCH["x"][:4], "y": BATCH["y"][:4]})
    assert trainer.traces == 2
    assert trainer._compiled_update._cache_size() == 2


def test_adopts_an_optimizer_with_state():
    """A used `nnx.Optimizer` continues where it was: the trainer's first update equals
    the optimizer's next update by hand."""

    def loss_fn(model):
        return jnp.mean((model(BATCH["x"]) - BATCH["y"]) ** 2)

    def used():
        model = nnx.Linear(D, 1, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
        for _ in range(2):
            opt.update(model, nnx.grad(loss_fn)(model))
        return model, opt

    model_a, opt_a = used()
    model_b, opt_b = used()
    trainer = Regression(model_a, opt_a)
    # the adopted state really is non-trivial (adam's count and moments)
    counts = [np.asarray(x) for x in jax.tree.leaves(trainer.state.opt_state) if np.ndim(x) == 0]
    assert counts and all(int(c) == 2 for c in counts)
    trainer.train_step(BATCH)
    assert int(opt_a.step.get_value()) == 3  # it counts on from the 2 updates before
    opt_b.update(model_b, nnx.grad(loss_fn)(model_b))  # the same step, by hand
    np.testing.assert_allclose(
        model_a.kernel.get_value(), model_b.kernel.get_value(), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        model_a.bias.get_value(), model_b.bias.get_value(), rtol=1e-6, atol=1e-7
    )
    for a, b in zip(opt_values(opt_a), opt_values(opt_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # a fresh adam would have taken a different first step
    fresh = make(optax.adam(0.1))
    for _ in range(2):
        fresh.train_step(BATCH)
    model_c, opt_c = used()
    fresh_c = Regression(model_c, nnx.Optimizer(model_c, optax.adam(0.1), wrt=nnx.Param))
    fresh_c.train_step(BATCH)
    assert not np.allclose(model_c.kernel.get_value(), model_b.kernel.get_value(), atol=1e-4)


def test_argument_type_errors_name_the_argument():
    model = nnx.Linear(D, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with pytest.raises(TypeError, match="`model`"):
        Regression(lambda x: x, opt)
    with pytest.raises(TypeError, match="`optimizer`"):
        Regression(model, optax.sgd(0.1))
    for bad_seed in (1.5, True, "0", np.float32(1)):
        with pytest.raises(TypeError, match="`seed`"):
            Regression(model, opt, seed=bad_seed)
    with pytest.raises(TypeError, match="`mesh`"):
        Regression(model, opt, mesh=jax.devices()[:2])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("batch",))
    with pytest.raises(ValueError, match="`data_axis` 'data'"):
        Regression(model, opt, mesh=mesh)
    Regression(model, opt, mesh=mesh, data_axis="batch")  # the right axis is accepted
    with pytest.raises(TypeError, match="`batch`"):
        make().train_step([BATCH["x"], BATCH["y"]])
    with pytest.raises(TypeError, match=r"Trainer must define compute_loss\(model, batch"):
        make(cls=Trainer)  # at construction, before any work


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_bitwise():
    a = make(optax.adam(0.05), seed=3)
    a.noise = 0.1  # the step's key enters the loss: the RNG must be restored too
    for _ in range(3):
        a.train_step(BATCH)
    tree = a.checkpoint_state()
    assert all(isinstance(k, str) for k in tree)
    assert all(hasattr(v, "shape") for v in tree.values())

    b = make(optax.adam(0.05), seed=11, model_seed=5)
    b.noise = 0.1
    b.load_checkpoint_state(jax.device_get(tree))
    assert b.step == 3 and int(b.optimizer.step.get_value()) == 3
    assert_trees_equal(params_of(b.model), params_of(a.model))
    assert_trees_equal(b.state, a.state)
    for _ in range(2):
        ma, mb = a.train_step(BATCH), b.train_step(BATCH)
        assert_trees_equal(ma, mb)
    assert_trees_equal(params_of(b.model), params_of(a.model))

    # without the restored key of the state, the noisy step differs: the check has teeth
    c = make(optax.adam(0.05), seed=11)
    c.noise = 0.1
    c.load_checkpoint_state(tree)
    c.state = c.state._replace(key=jax.random.key(11))
    d = make(optax.adam(0.05), seed=3)
    d.noise = 0.1
    d.load_checkpoint_state(tree)
    assert float(c.train_step(BATCH)["loss"]) != float(d.train_step(BATCH)["loss"])


def test_checkpoint_mismatch_names_the_entry():
    trainer = make(optax.adam(0.05))
    tree = dict(trainer.checkpoint_state())
    name = next(k for k in tree if "kernel" in k and "params" in k)
    bad = {**tree, name: jnp.zeros((D + 1, 1))}
    with pytest.raises(ValueError, match=name):
        trainer.load_checkpoint_state(bad)
    bad = {**tree, name: tree[name].astype(jnp.float16)}
    with pytest.raises(ValueError, match=name):
        trainer.load_checkpoint_state(bad)
    missing = {k: v for k, v in tree.items() if k != name}
    with pytest.raises(ValueError, match=name):
        trainer.load_checkpoint_state(missing)
    with pytest.raises(ValueError, match="checkpoint"):
        trainer.load_checkpoint_state({**tree, "extra": jnp.zeros(())})
    with pytest.raises(ValueError, match="checkpoint"):
        trainer.load_checkpoint_state([1, 2])
    # nothing was changed by the failed loads
    assert_trees_equal(trainer.checkpoint_state(), tree)


def ppo_trajectory(key, rows=4, steps=5, obs_dim=3):
    k = jax.random.split(key, 4)
    return {
        "observations": jax.random.normal(k[0], (rows, steps, obs_dim)),
        "actions": jax.random.randint(k[1], (rows, steps), 0, 2),
        "rewards": jax.random.normal(k[2], (rows, steps)),
        "values": jnp.zeros((rows, steps + 1)),
        "log_probs": jnp.full((rows, steps), jnp.log(0.5)),
        "dones": jax.random.bernoulli(k[3], 0.2, (rows, steps)).astype(jnp.float32),
    }


def test_ppo_typed_key_round_trips():
    def ppo_trainer(seed, model_seed):
        model = MLPActorCritic(3, 2, hidden=(8,), rngs=nnx.Rngs(model_seed))
        opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
        return PPOTrainer(model, opt, PPOConfig(num_epochs=1, num_minibatches=2), seed=seed)

    batch = ppo_trajectory(jax.random.key(0))
    a = ppo_trainer(seed=7, model_seed=0)
    a.train_step(batch)
    tree = a.checkpoint_state()
    key_entries = [k for k in tree if k.endswith("state_key")]
    assert len(key_entries) == 1 and tree[key_entries[0]].dtype == jnp.uint32

    b = ppo_trainer(seed=0, model_seed=1)
    b.load_checkpoint_state(jax.device_get(tree))
    assert jnp.issubdtype(b.state.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.key_data(b.state.key), jax.random.key_data(a.state.key)
    )
    assert jax.random.key_impl(b.state.key) == jax.random.key_impl(a.state.key)
    batch2 = ppo_trajectory(jax.random.key(1))
    assert_trees_equal(a.train_step(batch2), b.train_step(batch2))
    assert_trees_equal(params_of(a.model), params_of(b.model))
    # the shuffling key matters: with another key the same step differs
    b.state = b.state._replace(key=jax.random.key(123))
    a.train_step(batch2)
    b.train_step(batch2)
    assert not np.array_equal(
        np.asarray(params_of(b.model)["actor"]["layers"][0]["kernel"]),
        np.asarray(params_of(a.model)["actor"]["layers"][0]["kernel"]),
    )


# ---------------------------------------------------------------- fit


class Recorder:
    """Records every hook with its arguments (the five hooks of a `fit` run)."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append(("begin",))

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_train_batch_end(self, trainer, metrics, step):
        assert trainer.step == step + 1
        self.calls.append(("batch", step, float(metrics["loss"])))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.calls.append(("epoch_end", epoch))

    def on_train_end(self, trainer):
        self.calls.append(("end",))

    def steps(self):
        return [c[1] for c in self.calls if c[0] == "batch"]


def batches(n):
    return [{"x": BATCH["x"] + 0.01 * i, "y": BATCH["y"]} for i in range(n)]


def test_fit_hook_order_and_steps_continue():
    trainer = make()
    rec = Recorder()
    last = trainer.fit(batches(3), callbacks=[rec])
    kinds = [c[0] if c[0] != "epoch_begin" and c[0] != "epoch_end" else c for c in rec.calls]
    assert kinds == [
        "begin",
        ("epoch_begin", 0),
        "batch",
        "batch",
        "batch",
        ("epoch_end", 0),
        "end",
    ]
    assert rec.steps() == [0, 1, 2]
    assert float(last["loss"]) == rec.calls[-3][2]
    assert trainer.num_steps == 3  # a sized `data` gives the run its length
    rec2 = Recorder()
    trainer.fit(batches(2), callbacks=[rec2])
    assert rec2.steps() == [3, 4] and trainer.step == 5
    # fit takes the same steps as train_step by hand
    by_hand = make()
    for b in batches(3) + batches(2):
        by_hand.train_step(b)
    assert_trees_equal(by_hand.state.params, trainer.state.params)


def test_fit_num_steps_and_epochs():
    trainer = make()
    rec = Recorder()
    trainer.fit(batches(10), num_steps=4, callbacks=[rec])
    assert rec.steps() == [0, 1, 2, 3] and trainer.num_steps == 4

    trainer = make()
    rec = Recorder()
    trainer.fit(batches(3), num_epochs=2, callbacks=[rec])
    assert rec.steps() == list(range(6))
    epochs = [c for c in rec.calls if c[0] in ("epoch_begin", "epoch_end")]
    assert epochs == [("epoch_begin", 0), ("epoch_end", 0), ("epoch_begin", 1), ("epoch_end", 1)]
    # the second epoch re-iterates the same batches: the losses follow the data order
    assert trainer.step == 6

    trainer = make()
    rec = Recorder()
    trainer.fit(batches(3), num_steps=4, num_epochs=5, callbacks=[rec])
    assert rec.steps() == [0, 1, 2, 3]
    begins = [c for c in rec.calls if c[0] == "epoch_begin"]
    assert begins == [("epoch_begin", 0), ("epoch_begin", 1)]

    trainer = make()
    assert trainer.fit(batches(3), num_steps=0) is None and trainer.step == 0
    for bad, error in ((-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="num_steps"):
            trainer.fit(batches(1), num_steps=bad)
    for bad, error in ((0, ValueError), (2.0, TypeError), (False, TypeError)):
        with pytest.raises(error, match="num_epochs"):
            trainer.fit(batches(1), num_epochs=bad)
    # several epochs over a one-shot iterator would silently train one: refused up front
    with pytest.raises(ValueError, match="one-shot iterator"):
        trainer.fit(iter(batches(3)), num_epochs=2)
    assert trainer.step == 0


def test_fit_cap_does_not_drop_a_batch_of_a_shared_iterator():
    seen = []

    def stream():
        for i, b in enumerate(batches(6)):
            seen.append(i)
            yield b

    trainer = make()
    it = stream()
    trainer.fit(it, num_steps=2)
    trainer.fit(it, num_steps=2)
    assert seen == [0, 1, 2, 3]
    by_hand = make()
    for b in batches(4):
        by_hand.train_step(b)
    assert_trees_equal(by_hand.state.params, trainer.state.params)


def test_stop_training_from_a_callback():
    class StopAt(Recorder):
        def on_train_batch_end(self, trainer, metrics, step):
            super().on_train_batch_end(trainer, metrics, step)
            if step == 2:
                trainer.stop_training = True

    trainer = make()
    rec = StopAt()
    trainer.fit(batches(10), num_epochs=3, callbacks=[rec])
    assert rec.steps() == [0, 1, 2] and trainer.step == 3
    assert rec.calls[-1] == ("end",)
    assert [c for c in rec.calls if c[0] == "epoch_begin"] == [("epoch_begin", 0)]
    # the flag is reset by the next fit
    rec = Recorder()
    trainer.fit(batches(2), callbacks=[rec])
    assert rec.steps() == [3, 4]


def test_sigint_stops_after_the_step_and_restores_the_handler():
    class Interrupt(Recorder):
        def __init__(self, times=1):
            super().__init__()
            self.times = times

        def on_train_batch_end(self, trainer, metrics, step):
            super().on_train_batch_end(trainer, metrics, step)
            if step == 3:
                for _ in range(self.times):
                    os.kill(os.getpid(), signal.SIGINT)

    original = signal.getsignal(signal.SIGINT)
    trainer = make()
    rec = Interrupt()
    metrics = trainer.fit(batches(10), callbacks=[rec])
    assert trainer.interrupted is True
    assert rec.steps() == [0, 1, 2, 3] and trainer.step == 4
    assert rec.calls[-1] == ("end",)
    assert float(metrics["loss"]) == rec.calls[-3][2]
    assert signal.getsignal(signal.SIGINT) is original

    # the next fit starts uninterrupted
    trainer.fit(batches(1))
    assert trainer.interrupted is False and trainer.step == 5

    # a second Ctrl-C interrupts at once; the handler is restored all the same
    rec = Interrupt(times=2)
    with pytest.raises(KeyboardInterrupt):
        make().fit(batches(10), callbacks=[rec])
    assert rec.steps() == [0, 1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is original


def reward_one(samples, conditions=None):
    return (samples == 1).astype(jnp.float32)


def grpo_trainer(seed=0, mesh=None):
    model = MLPPolicy(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    return GRPOTrainer(model, opt, GRPOConfig(num_generations=4), seed=seed, mesh=mesh)


def test_fit_with_reward_fn_samples_and_scores():
    calls = []

    def reward(samples, conditions=None):
        calls.append(samples.shape)
        return reward_one(samples)

    prompts = [{"observations": jax.random.normal(jax.random.key(i), (4, 3))} for i in range(3)]
    trainer = grpo_trainer(seed=5)
    rec = Recorder()
    metrics = trainer.fit(prompts, reward_fn=reward, callbacks=[rec])
    assert calls == [(16,)] * 3 and trainer.step == 3
    assert rec.steps() == [0, 1, 2]
    assert [c[0] for c in rec.calls if c[0] != "batch"] == ["begin", "end"]  # no RL epochs
    assert 0.0 < float(metrics["mean_reward"]) < 1.0
    # the same as train_step(batch, reward_fn, next_key()) by hand
    by_hand = grpo_trainer(seed=5)
    for p in prompts:
        last = by_hand.train_step(p, reward_one, by_hand.next_key())
    assert_trees_equal(last, metrics)
    assert_trees_equal(by_hand.state.params, trainer.state.params)


# ---------------------------------------------------------------- data parallelism


def mesh4():
    return jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))


def test_mesh_gives_the_single_device_numbers():
    mesh = mesh4()
    plain, sharded = make(optax.adam(0.05)), make(optax.adam(0.05), mesh=mesh)
    for b in batches(5):
        mp, ms = plain.train_step(b), sharded.train_step(b)
        np.testing.assert_allclose(float(ms["loss"]), float(mp["loss"]), rtol=1e-5)
    assert_close(plain.state.params, sharded.state.params)
    # the state is replicated over the mesh, the batch is split along its rows
    kernel = sharded.state.params["kernel"]
    assert kernel.sharding.is_fully_replicated and len(kernel.sharding.device_set) == 4
    placed = sharded.shard(BATCH)
    for x in placed.values():
        assert isinstance(x.sharding, jax.sharding.NamedSharding)
        assert x.sharding.spec == jax.sharding.PartitionSpec("data")
        shards = x.addressable_shards
        assert len(shards) == 4 and {s.data.shape[0] for s in shards} == {N // 4}
        assert not x.sharding.is_fully_replicated
    assert plain.shard(BATCH) is BATCH
    # the model shows the trained values
    assert_trees_equal(params_of(sharded.model), sharded.state.params)


def test_mesh_rejects_a_batch_not_divisible_by_the_devices():
    trainer = make(mesh=mesh4())
    bad = {"x": BATCH["x"][:6], "y": BATCH["y"][:6]}
    with pytest.raises(ValueError, match=r"batch\['x'\].*divisible by 4"):
        trainer.train_step(bad)
    with pytest.raises(ValueError, match=r"batch\['y'\]"):
        trainer.train_step({"x": BATCH["x"], "y": BATCH["y"][:6]})
    assert trainer.step == 0


def test_mesh_rl_generation_path_matches_single_device():
    """GRPO's sample-score-update on 4 devices gives the single-device numbers (the
    group statistics span shards through jit's global semantics)."""
    plain, sharded = grpo_trainer(seed=1), grpo_trainer(seed=1, mesh=mesh4())
    prompts = {"observations": jax.random.normal(jax.random.key(0), (4, 3))}
    for i in range(3):
        key = jax.random.key(i)
        mp = plain.train_step(prompts, reward_one, key)
        ms = sharded.train_step(prompts, reward_one, key)
        for k in mp:
            np.testing.assert_allclose(float(ms[k]), float(mp[k]), rtol=1e-5, atol=1e-6)
    assert_close(plain.state.params, sharded.state.params)


def test_fit_with_reward_fn_on_a_trainer_that_does_not_sample_is_a_clear_error():
    from rlgen.trainers import PPOTrainer

    model = MLPActorCritic(3, 2, hidden=(4,), rngs=nnx.Rngs(0))
    trainer = PPOTrainer(model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param))
    with pytest.raises(TypeError, match="reward_fn"):  # sampling is GRPO's and REINFORCE's
        trainer.fit([{"observations": np.zeros((2, 3))}], reward_fn=lambda s, c=None: s)
    assert trainer.step == 0


def test_an_error_mid_fit_gives_on_exception_and_leaves_complete_checkpoints(tmp_path):
    """A step that raises: callbacks get `on_exception` (not `on_train_end`), the saves
    already started complete (nothing half-written, nothing new), the error propagates."""
    from rlgen.callbacks import CheckpointConfig, JSONLLogger, ModelCheckpoint
    from rlgen.trainers import GRPOTrainer

    model = MLPPolicy(3, 2, hidden=(4,), rngs=nnx.Rngs(0))
    trainer = GRPOTrainer(
        model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param), GRPOConfig(num_generations=2)
    )
    calls = []

    def reward(samples, conditions=None):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("reward server down")
        return (samples == 1).astype(jnp.float32)

    class Recorder:
        def __init__(self):
            self.events = []

        def on_train_begin(self, trainer):
            self.events.append("begin")

        def on_train_batch_end(self, trainer, metrics, step):
            self.events.append(step)

        def on_exception(self, trainer, error):
            self.events.append(("exception", str(error)))

        def on_train_end(self, trainer):
            self.events.append("end")

    recorder = Recorder()
    ckpt = tmp_path / "ckpt"
    data = [{"observations": np.ones((4, 3), np.float32)}] * 10
    with pytest.raises(RuntimeError, match="reward server down"):
        trainer.fit(data, reward_fn=reward, callbacks=[
            recorder,
            ModelCheckpoint(CheckpointConfig(str(ckpt), every_n_steps=1, save_top_k=-1)),
            JSONLLogger(tmp_path / "m.jsonl"),
        ])
    assert recorder.events == ["begin", 0, 1, 2, ("exception", "reward server down")]
    assert ModelCheckpoint.all_steps(ckpt) == [1, 2, 3]  # complete, and no step 4
    assert not [p for p in ckpt.iterdir() if "tmp" in p.name]
    assert trainer.num_steps == 10  # the length of `data`, known up front
