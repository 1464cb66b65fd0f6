"""JSONLLogger: parseable lines, the right steps and keys, non-finite values, no extra syncs."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from rlgen.callbacks import JSONLLogger


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_parse_with_steps_keys_and_nan(tmp_path, trainer, monkeypatch):
    reads = []
    real_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or real_get(x))
    path = tmp_path / "logs" / "metrics.jsonl"
    log = JSONLLogger(path, every_n_steps=2)
    log.on_train_begin(trainer)
    values = [0.5, float("nan"), float("nan"), 1.0, float("inf"), -float("inf")]
    for step, v in enumerate(values):
        metrics = {"loss": jnp.asarray(v), "count": jnp.asarray(step), "vec": jnp.asarray([v, 1.0])}
        log.on_train_batch_end(trainer, metrics, step)
        if step == 2:  # each line is flushed as it is written
            assert len(read(path)) == 2
    log.on_train_end(trainer)
    assert len(reads) == 3
    rows = read(path)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(list(r) == ["step", "time", "loss", "count", "vec"] for r in rows)
    assert [r["loss"] for r in rows] == [0.5, "NaN", "Infinity"]
    assert [r["vec"] for r in rows] == [[0.5, 1.0], ["NaN", 1.0], ["Infinity", 1.0]]
    assert rows[1]["count"] == 2.0 and math.isnan(float(rows[1]["loss"]))
    assert all(isinstance(r["time"], float) for r in rows)
    assert "NaN" not in path.read_text().replace('"NaN"', "")  # strict JSON: no bare NaN


def test_epochs_and_appending(tmp_path, trainer):
    path = tmp_path / "m.jsonl"
    for run in range(2):
        log = JSONLLogger(path)
        log.on_train_begin(trainer)
        metrics = trainer.train_step()
        log.on_train_batch_end(trainer, metrics, run)
        log.on_epoch_end(trainer, run, {"val_loss": jnp.asarray(0.25)})
        log.on_epoch_end(trainer, run, None)  # an epoch without steps writes nothing
        log.on_train_end(trainer)
    rows = read(path)
    assert [("epoch" in r, r["step"]) for r in rows] == [
        (False, 0),
        (True, 1),
        (False, 1),
        (True, 2),
    ]
    assert rows[1]["val_loss"] == 0.25 and rows[3]["epoch"] == 1


def test_errors(tmp_path, trainer):
    with pytest.raises(ValueError, match="`every_n_steps` must be >= 1, got 0"):
        JSONLLogger(tmp_path / "a.jsonl", every_n_steps=0)
    with pytest.raises(TypeError, match="`path` must be a non-empty path"):
        JSONLLogger(None)
    log = JSONLLogger(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"metric names \['time'\] clash"):
        log.on_train_batch_end(trainer, {"time": jnp.asarray(1.0)}, 0)
    log.on_train_end(trainer)
