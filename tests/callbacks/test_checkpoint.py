"""ModelCheckpoint, save_checkpoint and restore_checkpoint: top-k, exact restores, atomicity."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen.callbacks import (
    CheckpointConfig,
    ModelCheckpoint,
    restore_checkpoint,
    save_checkpoint,
)

from .stub import StubTrainer, assert_bitwise_equal, host_copy

REPO = Path(__file__).resolve().parents[2]


def run(cb, trainer, rewards, snapshots=None):
    """One fit-like run: a step per reward value; snapshots[step] = the state saved there."""
    cb.on_train_begin(trainer)
    for reward in rewards:
        metrics = trainer.train_step(loss=-reward, mean_reward=reward)
        if snapshots is not None:
            snapshots[trainer.step] = host_copy(trainer.checkpoint_state())
        cb.on_train_batch_end(trainer, metrics, trainer.step - 1)
    cb.on_train_end(trainer)


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mode": "best"}, ValueError, "unknown `mode` 'best'; expected one of 'min', 'max'"),
        ({"save_top_k": 0}, ValueError, "`save_top_k` must be >= 1, or -1 to keep all, got 0"),
        ({"save_top_k": -2}, ValueError, "got -2"),
        ({"save_top_k": 1.0}, TypeError, "`save_top_k` must be an int, got float"),
        ({"every_n_steps": 0}, ValueError, "`every_n_steps` must be >= 1, got 0"),
        ({"monitor": ""}, TypeError, "`monitor` must be a metric name"),
        ({"save_last": 1}, TypeError, "`save_last` must be a bool"),
    ],
)
def test_config_errors_name_the_argument(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        CheckpointConfig(tmp_path, **kwargs)
    with pytest.raises(TypeError, match="`dirpath` must be a non-empty path"):
        CheckpointConfig("")
    with pytest.raises(TypeError, match="`config` must be a CheckpointConfig"):
        ModelCheckpoint({"dirpath": tmp_path})


# -- which steps are kept, and exact restores ------------------------------------------------


REWARDS = [0.1, 0.9, 0.5, 0.7, 0.2]  # steps 1..5


@pytest.mark.parametrize(
    "mode, save_last, kept, best",
    [
        ("max", True, [2, 4, 5], 2),  # the two best (0.9, 0.7) and the last
        ("max", False, [2, 4], 2),
        ("min", True, [1, 5], 1),  # the two best (0.1, 0.2); the last is one of them
    ],
)
def test_top_k_keeps_the_best_and_the_last(tmp_path, mode, save_last, kept, best):
    cfg = CheckpointConfig(
        tmp_path / "ck", monitor="mean_reward", mode=mode, save_top_k=2, save_last=save_last
    )
    snapshots = {}
    run(ModelCheckpoint(cfg), StubTrainer(), REWARDS, snapshots)
    assert ModelCheckpoint.all_steps(cfg.dirpath) == kept
    assert ModelCheckpoint.best_step(cfg.dirpath) == best
    assert ModelCheckpoint.latest_step(cfg.dirpath) == kept[-1]
    saved = ModelCheckpoint.metrics(cfg.dirpath)
    assert saved == {s: {"mean_reward": pytest.approx(REWARDS[s - 1])} for s in kept}
    # Only complete step directories and Orbax's root metadata are left.
    assert sorted(p.name for p in Path(cfg.dirpath).iterdir()) == sorted(
        [str(s) for s in kept] + ["metadata"]
    )
    assert sorted(p.name for p in (Path(cfg.dirpath) / str(kept[0])).iterdir()) == [
        "_CHECKPOINT_METADATA",
        "commit_success.txt",
        "metrics",
        "state",
    ]
    for step in kept:  # every kept step restores bit for bit (int, bf16, optax, key data)
        fresh = StubTrainer(seed=123)
        assert ModelCheckpoint.restore(fresh, cfg.dirpath, step=step) == step
        assert fresh.step == step
        assert_bitwise_equal(fresh.checkpoint_state(), snapshots[step])
    fresh = StubTrainer(seed=7)
    assert ModelCheckpoint.restore(fresh, cfg.dirpath) == kept[-1]  # latest by default
    assert ModelCheckpoint.restore(fresh, cfg.dirpath, step="best") == best
    assert_bitwise_equal(fresh.checkpoint_state(), snapshots[best])


def test_restored_trainer_continues_exactly(tmp_path):
    """Resuming from a checkpoint gives the same steps as an uninterrupted run."""
    straight = StubTrainer()
    for _ in range(6):
        straight.train_step()
    cfg = CheckpointConfig(tmp_path, every_n_steps=2)
    first = StubTrainer()
    run(ModelCheckpoint(cfg), first, [0.0] * 3)  # saves step 2, then step 3 at the end
    assert ModelCheckpoint.all_steps(tmp_path) == [3]  # save_top_k=1 without a monitor
    resumed = StubTrainer(seed=99)
    assert ModelCheckpoint.restore(resumed, tmp_path) == 3
    run(ModelCheckpoint(cfg), resumed, [0.0] * 3)
    assert ModelCheckpoint.all_steps(tmp_path) == [6]
    assert_bitwise_equal(resumed.checkpoint_state(), straight.checkpoint_state())


def test_no_monitor_keeps_latest_k_and_every_n(tmp_path):
    cfg = CheckpointConfig(tmp_path, save_top_k=2, every_n_steps=2, save_last=False)
    run(ModelCheckpoint(cfg), StubTrainer(), [0.0] * 7)
    assert ModelCheckpoint.all_steps(tmp_path) == [4, 6]  # step 7 is not a multiple of 2
    assert ModelCheckpoint.best_step(tmp_path) == 6  # no ranking: the latest
    assert ModelCheckpoint.metrics(tmp_path) == {4: {}, 6: {}}
    assert not (tmp_path / "4" / "metrics").exists()
    like = {
        "w": jnp.zeros((4, 3)),
        "h": jnp.zeros(5, jnp.bfloat16),
        "counts": jnp.zeros(3, jnp.int32),
    }
    state = restore_checkpoint(
        tmp_path / "6" / "state", {**StubTrainer().checkpoint_state(), "params": like}
    )
    assert int(state["step"]) == 6


def test_save_top_k_minus_one_keeps_all_and_nan_ranks_worst(tmp_path):
    cfg = CheckpointConfig(tmp_path, monitor="mean_reward", mode="max", save_top_k=-1)
    run(ModelCheckpoint(cfg), StubTrainer(), [0.5, float("nan"), 0.2])
    assert ModelCheckpoint.all_steps(tmp_path) == [1, 2, 3]
    assert ModelCheckpoint.best_step(tmp_path) == 1
    cfg = CheckpointConfig(tmp_path / "min", monitor="loss", mode="min", save_top_k=1)
    run(ModelCheckpoint(cfg), StubTrainer(), [float("nan"), 0.1, float("nan")])
    # loss = -reward: step 2 (-0.1) is the best; step 3 stays as the last.
    assert ModelCheckpoint.all_steps(cfg.dirpath) == [2, 3]
    assert ModelCheckpoint.best_step(cfg.dirpath) == 2


def test_missing_monitor_lists_the_available_keys(tmp_path):
    cb = ModelCheckpoint(CheckpointConfig(tmp_path, monitor="reward", every_n_steps=100))
    trainer = StubTrainer()
    cb.on_train_begin(trainer)
    metrics = trainer.train_step()
    with pytest.raises(
        ValueError, match=r"`monitor` 'reward'.*available: \['loss', 'mean_reward'\]"
    ):
        cb.on_train_batch_end(trainer, metrics, 0)
    cb.on_train_end(trainer)


def test_directory_of_another_run_is_refused(tmp_path):
    cfg = CheckpointConfig(tmp_path, monitor="mean_reward", mode="max", save_top_k=-1)
    run(ModelCheckpoint(cfg), StubTrainer(), [0.1, 0.2, 0.3])
    with pytest.raises(
        ValueError, match="holds checkpoints up to step 3, beyond the trainer's step 0"
    ):
        ModelCheckpoint(cfg).on_train_begin(StubTrainer())
    other = CheckpointConfig(tmp_path, monitor="loss", mode="min")
    with pytest.raises(ValueError, match="ranked by .*'mean_reward'.*use another dirpath"):
        ModelCheckpoint(other).on_train_begin(StubTrainer())


def test_restore_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory there"):
        ModelCheckpoint.restore(StubTrainer(), tmp_path / "nothing")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        ModelCheckpoint.restore(StubTrainer(), tmp_path / "empty")
    for d in (tmp_path / "nothing", tmp_path / "empty"):  # queries answer "nothing there"
        assert ModelCheckpoint.all_steps(d) == [] and ModelCheckpoint.metrics(d) == {}
        assert ModelCheckpoint.latest_step(d) is None and ModelCheckpoint.best_step(d) is None
    cfg = CheckpointConfig(tmp_path, save_top_k=-1)
    run(ModelCheckpoint(cfg), StubTrainer(), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"`step` 5 is not in .*saved steps: \[1, 2\]"):
        ModelCheckpoint.restore(StubTrainer(), tmp_path, step=5)

    class Wider(StubTrainer):
        def checkpoint_state(self):
            state = super().checkpoint_state()
            state["params"] = {**state["params"], "w": jnp.zeros((4, 4))}
            return state

    with pytest.raises(
        ValueError, match=r"`params/w`: checkpoint shape \(4, 3\), `like` shape \(4, 4\)"
    ):
        ModelCheckpoint.restore(Wider(), tmp_path)


# -- one-shot save / restore ---------------------------------------------------------------------


def test_save_restore_checkpoint_round_trip(tmp_path):
    trainer = StubTrainer()
    trainer.train_step()
    tree = {
        **trainer.checkpoint_state(),
        "typed_key": jax.random.key(3),
        "nan": jnp.asarray([np.nan, -np.inf, 1.0]),
        "host": np.arange(4, dtype=np.int64),
    }
    path = save_checkpoint(tmp_path / "a", tree)
    assert path == (tmp_path / "a").absolute()
    like = jax.tree.map(jnp.zeros_like, tree)
    like["host"] = np.zeros(4, np.int64)
    out = restore_checkpoint(path, like)
    assert_bitwise_equal(out, tree)
    assert jax.dtypes.issubdtype(out["typed_key"].dtype, jax.dtypes.prng_key)
    assert isinstance(out["host"], np.ndarray) and isinstance(out["step"], jax.Array)


def test_keys_come_back_in_the_form_like_asks_for(tmp_path):
    key = jax.random.key(5)
    data = save_checkpoint(tmp_path / "data", {"k": jax.random.key_data(key)})
    typed = save_checkpoint(tmp_path / "typed", {"k": key})
    as_key = restore_checkpoint(data, {"k": jax.random.key(0)})["k"]
    assert jax.dtypes.issubdtype(as_key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(as_key), jax.random.key_data(key))
    as_data = restore_checkpoint(typed, {"k": jnp.zeros(2, jnp.uint32)})["k"]
    assert as_data.dtype == jnp.uint32
    np.testing.assert_array_equal(as_data, jax.random.key_data(key))
    with pytest.raises(ValueError, match=r"`k` \(PRNG key data\): checkpoint shape \(2,\)"):
        restore_checkpoint(typed, {"k": jax.random.key(0, impl="rbg")})


def test_sharded_arrays_restore_into_the_sharding_of_like(tmp_path):
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    x = jax.device_put(jnp.arange(8.0 * len(devices)), sharded)
    path = save_checkpoint(tmp_path / "s", {"x": x})
    back = restore_checkpoint(path, {"x": jnp.zeros_like(x)})["x"]
    assert back.sharding == sharded
    np.testing.assert_array_equal(back, x)
    single = restore_checkpoint(path, {"x": jnp.zeros(x.shape)})["x"]  # onto one device
    assert single.sharding == jnp.zeros(1).sharding
    np.testing.assert_array_equal(single, x)


def test_save_checkpoint_does_not_overwrite_silently(tmp_path):
    save_checkpoint(tmp_path / "c", {"x": jnp.ones(3)})
    with pytest.raises(FileExistsError, match="already exists; pass force=True"):
        save_checkpoint(tmp_path / "c", {"x": jnp.zeros(3)})
    save_checkpoint(tmp_path / "c", {"x": jnp.full(3, 2.0)}, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no leftovers of the swap
    np.testing.assert_array_equal(restore_checkpoint(tmp_path / "c", {"x": jnp.zeros(3)})["x"], 2.0)


def test_restore_checkpoint_mismatch_is_explained(tmp_path):
    path = save_checkpoint(tmp_path / "c", {"a": jnp.ones(3), "b": {"c": jnp.arange(2)}})
    with pytest.raises(ValueError) as err:
        restore_checkpoint(
            path, {"a": jnp.ones(3, jnp.bfloat16), "b": {"d": jnp.arange(2)}, "e": jnp.ones(1)}
        )
    msg = str(err.value)
    assert "in `like` but not in the checkpoint: ['b/d', 'e']" in msg
    assert "in the checkpoint but not in `like`: ['b/c']" in msg
    assert "`a`: checkpoint dtype float32, `like` dtype bfloat16" in msg
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        restore_checkpoint(tmp_path / "missing", {"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="`tree` must hold at least one array"):
        save_checkpoint(tmp_path / "empty", {})
    with pytest.raises(TypeError, match="`tree` leaves must be arrays or numbers; `s` is str"):
        save_checkpoint(tmp_path / "bad", {"s": "text"})


# -- a save killed mid-way ------------------------------------------------------------------------

CHILD = r"""
import asyncio, hashlib, sys
import jax.numpy as jnp, numpy as np
from rlgen.callbacks import CheckpointConfig, ModelCheckpoint

dirpath, when = sys.argv[1], sys.argv[2]
if when == "committing":  # hold the commit (the rename) of step 2 until we are killed
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if self._final_path.name == "2":
            print("SAVING 2", flush=True)
            await asyncio.sleep(600)
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize

class Trainer:
    step, num_steps, config = 0, None, None
    def checkpoint_state(self):
        return self.tree

rng = np.random.default_rng(0)
big = when == "writing"
size = 1_000_000 if big else 1000  # 50 leaves of 4 MB: 200 MB
host = {f"w{i:02d}": rng.standard_normal(size, dtype=np.float32) for i in range(50)}
trainer = Trainer()
trainer.tree = {k: jnp.asarray(v) for k, v in host.items()}
digest = hashlib.sha256(b"".join(host[k].tobytes() for k in sorted(host))).hexdigest()
cb = ModelCheckpoint(CheckpointConfig(dirpath))  # keeps 1 step: the worst case
cb.on_train_begin(trainer)
trainer.step = 1
cb.on_train_batch_end(trainer, {}, 0)
print("STEP1", digest, flush=True)
trainer.step = 2
trainer.tree = {k: v + 1.0 for k, v in trainer.tree.items()}
cb.on_train_batch_end(trainer, {}, 1)  # waits for step 1 to be on disk, then starts step 2
if when == "writing":
    print("SAVING 2", flush=True)  # the 200 MB are being written in the background
import time
time.sleep(600)
"""


@pytest.mark.parametrize("when", ["writing", "committing"])
def test_save_killed_mid_way_leaves_the_previous_step_intact(tmp_path, when):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    dirpath = tmp_path / "ck"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    with open(tmp_path / "child.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(dirpath), when],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    digest = None
    try:
        for line in proc.stdout:
            if line.startswith("STEP1"):
                digest = line.split()[1]
            if line.startswith("SAVING 2"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "child.log").read_text()[-3000:]
    assert digest is not None
    # The partial step 2 is on disk but is neither listed nor restorable.
    assert any(p.name.startswith("2.orbax-checkpoint-tmp") for p in dirpath.iterdir())
    assert ModelCheckpoint.all_steps(dirpath) == [1]

    class Into:
        def checkpoint_state(self):
            if hasattr(self, "tree"):
                return self.tree
            size = 1_000_000 if when == "writing" else 1000
            return {f"w{i:02d}": jnp.zeros(size, jnp.float32) for i in range(50)}

        def load_checkpoint_state(self, tree):
            self.tree = tree

    into = Into()
    assert ModelCheckpoint.restore(into, dirpath) == 1
    got = hashlib.sha256(b"".join(np.asarray(into.tree[k]).tobytes() for k in sorted(into.tree)))
    assert got.hexdigest() == digest
    # A run resumed in this directory removes the partial step before its first save.
    into.step, into.num_steps, into.config = 1, None, None
    cb = ModelCheckpoint(CheckpointConfig(dirpath))
    cb.on_train_begin(into)
    into.step = 2
    cb.on_train_batch_end(into, {}, 1)
    cb.on_train_end(into)
    assert sorted(p.name for p in dirpath.iterdir()) == ["2", "metadata"]
