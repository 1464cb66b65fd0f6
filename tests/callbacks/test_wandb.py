"""WandbLoggerCallback: the optional import, the config, and a real offline run."""

import json
import struct
import subprocess
import sys

import jax
import pytest

from rlgen.callbacks import WandbLoggerCallback, WandbLoggerConfig

from .stub import StubTrainer


def test_importing_rlgen_callbacks_does_not_import_wandb():
    code = "import sys, rlgen.callbacks; print('wandb' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'rlgen\[wandb\]'"):
        WandbLoggerCallback(WandbLoggerConfig(project="p"))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"project": ""}, TypeError, "`project` must be a non-empty str"),
        ({"project": "p", "mode": "local"}, ValueError, "unknown `mode` 'local'"),
        ({"project": "p", "log_every_n_steps": 0}, ValueError, "`log_every_n_steps` must be >= 1"),
        ({"project": "p", "config": [1]}, TypeError, "`config` must be a dict or None, got list"),
        ({"project": "p", "tags": [1]}, TypeError, "`tags` must be a sequence of str"),
    ],
)
def test_config_errors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        WandbLoggerConfig(**kwargs)
    assert WandbLoggerConfig(project="p", tags=["a", "b"]).tags == ("a", "b")


def read_wandb_records(path):
    """Records of a W&B transaction log (.wandb): a LevelDB-style log of protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_offline_run_holds_the_logged_history(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    reads = []
    real_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or real_get(x))
    cfg = WandbLoggerConfig(
        project="rlgen-test",
        name="grpo-experiment",
        config={"algorithm": "GRPO", "beta": 0.01},
        log_every_n_steps=10,
        mode="offline",
        dir=tmp_path,
        tags=("test",),
    )
    cb = WandbLoggerCallback(cfg)
    trainer = StubTrainer(num_steps=25)
    cb.on_train_begin(trainer)
    for step in range(25):
        metrics = trainer.train_step(
            loss=step / 10, mean_reward=float("nan") if step == 20 else step
        )
        cb.on_train_batch_end(trainer, metrics, step)
    cb.on_train_end(trainer)
    assert len(reads) == 3  # read only on steps 0, 10, 20
    # `finish` hands the records to W&B's service process, which may write them a moment
    # later; `teardown` (what W&B also runs at exit) waits until they are on disk.
    import wandb

    wandb.teardown()

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")
    records = read_wandb_records(log)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            history[r.history.step.num] = items
    assert sorted(history) == [0, 10, 20]
    assert history[10]["loss"] == pytest.approx(1.0) and history[10]["mean_reward"] == 10
    assert history[20]["mean_reward"] != history[20]["mean_reward"]  # NaN
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "rlgen-test" and run.display_name == "grpo-experiment"
    assert list(run.tags) == ["test"]
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["algorithm"] == "GRPO" and config["beta"] == 0.01
    assert cb.run is None
    with pytest.raises(RuntimeError, match="on_train_begin was not called"):
        cb.on_train_batch_end(trainer, metrics, 25)
