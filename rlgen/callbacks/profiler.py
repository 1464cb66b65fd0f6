"""Trace a window of train steps with the JAX profiler (TensorBoard / Perfetto)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax

from rlgen import _checks
from rlgen.callbacks import base


@dataclasses.dataclass(frozen=True)
class ProfilingConfig:
    """Settings of `JAXProfiler`.

    Args:
        log_dir: where the trace goes (`<log_dir>/plugins/profile/<run>/*.xplane.pb`, which
            TensorBoard's profile plugin and XProf read).
        start_step: the trace starts at the end of this step (the hook's `step`).
        end_step: the trace stops at the end of this step; > `start_step`, so the trace
            holds steps `start_step + 1 .. end_step`. Skip the first steps: they compile.
        create_perfetto_trace: also write `perfetto_trace.json.gz` (open it in
            https://ui.perfetto.dev).

    Example:
        >>> ProfilingConfig("logs/profile", start_step=50, end_step=60).end_step
        60
        >>> ProfilingConfig("logs/profile", start_step=5, end_step=5)
        Traceback (most recent call last):
        ...
        ValueError: `end_step` must be > `start_step` (5), got 5
    """

    log_dir: str | os.PathLike
    start_step: int
    end_step: int
    create_perfetto_trace: bool = False

    def __post_init__(self):
        if not isinstance(self.log_dir, (str, os.PathLike)) or str(self.log_dir) == "":
            raise TypeError(f"`log_dir` must be a non-empty path, got {self.log_dir!r}")
        _checks.check_int(self.start_step, "start_step", low=0)
        _checks.check_int(self.end_step, "end_step")
        if self.end_step <= self.start_step:
            raise ValueError(
                f"`end_step` must be > `start_step` ({self.start_step}), got {self.end_step}"
            )
        _checks.check_bool(self.create_perfetto_trace, "create_perfetto_trace")


class JAXProfiler(base.Callback):
    """Records a `jax.profiler` trace of the steps after `start_step` through `end_step`.

    At the end of step `start_step` it calls `jax.profiler.start_trace(log_dir)`; at the
    end of step `end_step` it waits for that step's metrics (so the trace holds the
    device work, which runs asynchronously) and calls `jax.profiler.stop_trace()`. A run
    that ends inside the window stops the trace in `on_train_end`. A run resumed past
    `start_step` starts at its first step inside the window. Only one trace can run in a
    process at a time.

    Args:
        config: a `ProfilingConfig`.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> from types import SimpleNamespace
        >>> d = tempfile.mkdtemp()
        >>> prof = JAXProfiler(ProfilingConfig(d, start_step=1, end_step=2))
        >>> trainer = SimpleNamespace(step=0, num_steps=4, config=None)
        >>> prof.on_train_begin(trainer)
        >>> for step in range(4):
        ...     prof.on_train_batch_end(trainer, {"loss": jnp.ones(()) * step}, step)
        >>> prof.on_train_end(trainer)
        >>> from pathlib import Path
        >>> len(list(Path(d).rglob("*.xplane.pb")))
        1
    """

    def __init__(self, config: ProfilingConfig):
        if not isinstance(config, ProfilingConfig):
            raise TypeError(f"`config` must be a ProfilingConfig, got {type(config).__name__}")
        self.config = config
        self.tracing = False
        self._done = False
        self._latest: Mapping[str, Any] | None = None

    def on_train_begin(self, trainer: Any) -> None:
        self._done = False

    def on_train_batch_end(self, trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
        cfg = self.config
        if self.tracing:
            self._latest = metrics
        if not self.tracing and not self._done and cfg.start_step <= step < cfg.end_step:
            jax.profiler.start_trace(
                os.fspath(cfg.log_dir), create_perfetto_trace=cfg.create_perfetto_trace
            )
            self.tracing = True
        elif self.tracing and step >= cfg.end_step:
            self._stop(metrics)

    def _stop(self, metrics: Mapping[str, Any] | None) -> None:
        try:
            if metrics is not None:
                jax.block_until_ready(metrics)
        finally:
            jax.profiler.stop_trace()
            self.tracing = False
            self._done = True
            self._latest = None

    def on_train_end(self, trainer: Any) -> None:
        if self.tracing:
            self._stop(self._latest)

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        """Stops a running trace without waiting on the failed step's results."""
        if self.tracing:
            self._stop(None)
