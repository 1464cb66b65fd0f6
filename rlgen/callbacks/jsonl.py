"""A dependency-free metrics log: one JSON object per line."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlgen import _checks
from rlgen.callbacks import base

_RESERVED = ("step", "time", "epoch")


def _json_safe(value: Any) -> Any:
    """Floats as they are, except non-finite ones as the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class JSONLLogger(base.Callback):
    """Appends the metrics of every `every_n_steps`-th step to a JSON Lines file.

    Each logged step is one line `{"step": s, "time": t, "<metric>": value, ...}` where
    `step` is the hook's step, `time` the wall-clock time (seconds since the epoch) and
    each metric a float (a list of floats for a non-scalar metric). Non-finite values,
    which JSON cannot hold, are written as the strings "NaN", "Infinity" and "-Infinity"
    (`float(s)` reads them back). Model trainers' `on_epoch_end` adds a line with an
    `"epoch"` key as well. Each line is flushed when written.

    Metrics are read (one `jax.device_get`, a device sync) only on the logged steps
    (`step % every_n_steps == 0`); the other steps cost nothing. The file is opened in
    append mode when the run begins (a resumed run continues the same file) and its
    parent directory is created.

    Args:
        path: the `.jsonl` file.
        every_n_steps: log the steps whose index is a multiple of this (>= 1).
        fields: constant entries added to every record (e.g. `{"phase": "pretrain"}` when
            several runs share one file).

    `log(record)` writes any other record (an evaluation, say) to the same file.

    Example:
        >>> import json, tempfile, jax.numpy as jnp
        >>> from types import SimpleNamespace
        >>> path = f"{tempfile.mkdtemp()}/metrics.jsonl"
        >>> log = JSONLLogger(path, every_n_steps=2)
        >>> trainer = SimpleNamespace(step=0, num_steps=None, config=None)
        >>> log.on_train_begin(trainer)
        >>> for step in range(4):
        ...     log.on_train_batch_end(trainer, {"loss": jnp.asarray(step / 4)}, step)
        >>> log.on_train_end(trainer)
        >>> [(r["step"], r["loss"]) for r in map(json.loads, open(path))]
        [(0, 0.0), (2, 0.5)]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        every_n_steps: int = 1,
        fields: Mapping[str, Any] | None = None,
    ):
        if not isinstance(path, (str, os.PathLike)) or str(path) == "":
            raise TypeError(f"`path` must be a non-empty path (str or os.PathLike), got {path!r}")
        self.path = Path(path)
        self.every_n_steps = _checks.check_int(every_n_steps, "every_n_steps", low=1)
        fields = dict(fields or {})
        clash = [k for k in fields if k in _RESERVED]
        if clash:
            raise ValueError(f"`fields` keys {clash} clash with the record's own keys {_RESERVED}")
        json.dumps(fields)  # fails now, not at the first step, if not JSON-serialisable
        self.fields = fields
        self._file = None

    def _open(self):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed at train end
        return self._file

    def _write(self, head: dict[str, Any], metrics: Mapping[str, Any]) -> None:
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise ValueError(
                f"metric names {clash} clash with the JSONL record's own keys {_RESERVED}; "
                f"rename those metrics"
            )
        values = base.to_host(metrics)
        record = {
            **head,
            "time": time.time(),
            **self.fields,
            **{k: _json_safe(v) for k, v in values.items()},
        }
        f = self._open()
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()

    def log(self, record: Mapping[str, Any]) -> None:
        """Writes one extra record (plain JSON values; `fields` and `time` are added)."""
        f = self._open()
        safe = {k: _json_safe(v) if isinstance(v, float) else v for k, v in record.items()}
        f.write(json.dumps({"time": time.time(), **self.fields, **safe}, allow_nan=False) + "\n")
        f.flush()

    def on_train_begin(self, trainer: Any) -> None:
        self._open()

    def on_train_batch_end(self, trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
        base.check_metrics(metrics)
        step = _checks.check_int(step, "step")
        if step % self.every_n_steps == 0:
            self._write({"step": step}, metrics)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, Any] | None) -> None:
        if metrics is None:  # an epoch without steps
            return
        base.check_metrics(metrics)
        head: dict[str, Any] = {"epoch": _checks.check_int(epoch, "epoch")}
        step = getattr(trainer, "step", None)
        if isinstance(step, int):
            head["step"] = step
        self._write(head, metrics)

    def on_train_end(self, trainer: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        """Closes the file (every written line is already flushed)."""
        self.on_train_end(trainer)
