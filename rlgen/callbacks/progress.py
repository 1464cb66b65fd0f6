"""A live progress bar for training loops, on `rich.progress`, that does not sync every step."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from rlgen import _checks
from rlgen.callbacks import base

# The clock the bar reads; a module attribute so tests can drive it.
_clock = time.monotonic


class _RateColumn(ProgressColumn):
    """Steps per second, from rich's moving estimate of the task's speed."""

    def render(self, task) -> Text:
        speed = task.speed
        if speed is None:
            return Text("? steps/s", style="progress.data.speed")
        return Text(f"{speed:.2f} steps/s", style="progress.data.speed")


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


class ProgressBarCallback(base.Callback):
    """A live progress bar for a training loop: step count, steps/s and chosen metrics.

    The bar advances by one on every `on_train_batch_end` without reading any metric, so
    it never forces a device sync on its own. Metric values are fetched (one
    `jax.device_get` of the latest step's metrics) only when a redraw is due, at most once
    every `refresh_every_s` seconds, and once more at the end of the run. The count is the
    number of steps of this run (it starts at 0, also after a restore).

    When the output is not a terminal (tests, CI logs, files) rich draws nothing while the
    run goes and prints the final bar once, as one plain line, at the end.

    Args:
        metrics: names of the metrics to show; names the step's metrics lack are skipped
            (so the default fits every trainer: DPO has no `mean_reward`).
        refresh_every_s: the least time between two redraws (and metric reads), > 0.
        total: the number of steps of the run; None: `trainer.num_steps`, and when that is
            None too, an indeterminate bar (count without total).
        disable: if True the callback does nothing.
        console: the `rich.console.Console` to draw on (default: a new console on stdout).
        description: the label in front of the bar.

    Example:
        >>> import io
        >>> import jax.numpy as jnp
        >>> from types import SimpleNamespace
        >>> from rich.console import Console
        >>> out = io.StringIO()
        >>> bar = ProgressBarCallback(metrics=("loss",), console=Console(file=out, width=80))
        >>> trainer = SimpleNamespace(step=0, num_steps=3, config=None)
        >>> bar.on_train_begin(trainer)
        >>> for step in range(3):
        ...     bar.on_train_batch_end(trainer, {"loss": jnp.asarray(0.5)}, step)
        >>> bar.on_train_end(trainer)
        >>> "3/3" in out.getvalue() and "loss=0.5" in out.getvalue()
        True
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("loss", "mean_reward"),
        refresh_every_s: float = 0.5,
        total: int | None = None,
        disable: bool = False,
        console: Console | None = None,
        description: str = "train",
    ):
        if not isinstance(description, str):
            raise TypeError(f"`description` must be a str, got {type(description).__name__}")
        if isinstance(metrics, str):
            metrics = (metrics,)
        if not isinstance(metrics, Sequence) or not all(isinstance(m, str) for m in metrics):
            raise TypeError(f"`metrics` must be a sequence of metric names, got {metrics!r}")
        if isinstance(refresh_every_s, bool) or not isinstance(refresh_every_s, (int, float)):
            raise TypeError(
                f"`refresh_every_s` must be a number of seconds, got "
                f"{type(refresh_every_s).__name__}"
            )
        if not refresh_every_s > 0:
            raise ValueError(f"`refresh_every_s` must be > 0, got {refresh_every_s}")
        if total is not None:
            _checks.check_int(total, "total", low=1)
        _checks.check_bool(disable, "disable")
        if console is not None and not isinstance(console, Console):
            raise TypeError(
                f"`console` must be a rich.console.Console, got {type(console).__name__}"
            )
        self.metrics = tuple(metrics)
        self.refresh_every_s = float(refresh_every_s)
        self.total = total
        self.disable = disable
        self.console = console
        self.description = description
        self._progress: Progress | None = None
        self._task = None
        self._latest: Mapping[str, Any] | None = None
        self._last_refresh = 0.0

    def _resolve_total(self, trainer: Any) -> int | None:
        if self.total is not None:
            return self.total
        num_steps = getattr(trainer, "num_steps", None)
        if num_steps is None:
            return None
        return _checks.check_int(num_steps, "trainer.num_steps", low=0)

    def on_train_begin(self, trainer: Any) -> None:
        if self.disable:
            return
        if self._progress is not None:  # a previous run that did not end cleanly
            self._progress.stop()
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
            auto_refresh=False,
        )
        self._task = self._progress.add_task(
            self.description, total=self._resolve_total(trainer), metrics=""
        )
        self._latest = None
        self._progress.start()
        self._last_refresh = _clock()

    def _show(self, metrics: Mapping[str, Any]) -> None:
        wanted = {k: metrics[k] for k in self.metrics if k in metrics}
        values = base.to_host(wanted) if wanted else {}
        text = " ".join(f"{k}={_format(v)}" for k, v in values.items())
        self._progress.update(self._task, metrics=text)

    def on_train_batch_end(self, trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
        if self.disable or self._progress is None:
            return
        self._latest = base.check_metrics(metrics)
        self._progress.advance(self._task, 1)
        now = _clock()
        if now - self._last_refresh >= self.refresh_every_s:
            self._show(metrics)
            self._progress.refresh()
            self._last_refresh = now

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        """Stops the bar where it is (no metric is read)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._latest = None

    def on_train_end(self, trainer: Any) -> None:
        if self.disable or self._progress is None:
            return
        try:
            if self._latest is not None:
                self._show(self._latest)
            self._progress.refresh()
        finally:
            self._progress.stop()
            self._progress = None
            self._latest = None
