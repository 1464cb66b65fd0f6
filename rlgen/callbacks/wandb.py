"""Weights & Biases logging (the optional extra `pip install 'rlgen[wandb]'`)."""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping
from typing import Any

from rlgen import _checks
from rlgen.callbacks import base

_MODES = ("online", "offline", "disabled", "shared")


def _import_wandb():
    try:
        return importlib.import_module("wandb")
    except ImportError as err:
        raise ImportError(
            "WandbLoggerCallback needs the wandb package: pip install 'rlgen[wandb]'"
        ) from err


@dataclasses.dataclass(frozen=True)
class WandbLoggerConfig:
    """Settings of `WandbLoggerCallback` (the arguments of `wandb.init`, plus the interval).

    Args:
        project: the W&B project.
        name: the run's display name (None: W&B picks one).
        config: a dict of hyperparameters stored with the run (e.g. the algorithm's).
        log_every_n_steps: log the metrics of the steps whose index is a multiple of
            this (>= 1); the metrics are read from the device only on those steps.
        mode: "online", "offline" (write locally, `wandb sync` later), "disabled" or
            "shared"; None: W&B's default (the `WANDB_MODE` environment variable).
        dir: the directory under which W&B writes its `wandb/` folder.
        entity: the W&B user or team.
        tags: tags of the run.

    Example:
        >>> cfg = WandbLoggerConfig(project="rl-finetuning", config={"beta": 0.01})
        >>> cfg.log_every_n_steps
        10
        >>> WandbLoggerConfig(project="p", mode="local")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown `mode` 'local'; expected one of 'online', 'offline', ...
    """

    project: str
    name: str | None = None
    config: Mapping[str, Any] | None = None
    log_every_n_steps: int = 10
    mode: str | None = None
    dir: str | os.PathLike | None = None
    entity: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.project, str) or not self.project:
            raise TypeError(f"`project` must be a non-empty str, got {self.project!r}")
        for field in ("name", "entity"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"`{field}` must be a str or None, got {value!r}")
        if self.config is not None and not isinstance(self.config, Mapping):
            raise TypeError(f"`config` must be a dict or None, got {type(self.config).__name__}")
        _checks.check_int(self.log_every_n_steps, "log_every_n_steps", low=1)
        if self.mode is not None:
            _checks.check_choice(self.mode, _MODES, "mode")
        if self.dir is not None and not isinstance(self.dir, (str, os.PathLike)):
            raise TypeError(f"`dir` must be a path or None, got {self.dir!r}")
        tags = (self.tags,) if isinstance(self.tags, str) else self.tags
        try:
            tags = tuple(tags)
        except TypeError as err:
            raise TypeError(f"`tags` must be a sequence of str, got {self.tags!r}") from err
        if not all(isinstance(t, str) for t in tags):
            raise TypeError(f"`tags` must be a sequence of str, got {self.tags!r}")
        object.__setattr__(self, "tags", tags)


class WandbLoggerCallback(base.Callback):
    """Logs the training metrics to Weights & Biases.

    `on_train_begin` starts a run (`wandb.init` with the config's project, name, config
    dict, mode, dir, entity and tags); every `log_every_n_steps` steps
    `on_train_batch_end` logs `{name: float(value)}` at `step=step` (the only device sync
    it causes); `on_train_end` finishes the run. wandb is imported when the callback is
    built, not when `rlgen.callbacks` is imported.

    Args:
        config: a `WandbLoggerConfig`.

    Raises:
        ImportError: wandb is not installed (`pip install 'rlgen[wandb]'`).

    Example (mode "disabled" runs everything without writing; use "offline" or "online"):
        >>> import jax.numpy as jnp
        >>> from types import SimpleNamespace
        >>> cb = WandbLoggerCallback(WandbLoggerConfig(project="demo", mode="disabled"))
        >>> trainer = SimpleNamespace(step=0, num_steps=20, config=None)
        >>> cb.on_train_begin(trainer)
        >>> for step in range(20):
        ...     cb.on_train_batch_end(trainer, {"loss": jnp.asarray(1.0 / (step + 1))}, step)
        >>> cb.on_train_end(trainer)
    """

    def __init__(self, config: WandbLoggerConfig):
        if not isinstance(config, WandbLoggerConfig):
            raise TypeError(f"`config` must be a WandbLoggerConfig, got {type(config).__name__}")
        self.config = config
        self._wandb = _import_wandb()
        self.run = None

    def on_train_begin(self, trainer: Any) -> None:
        cfg = self.config
        if self.run is not None:  # a previous run that did not end cleanly
            self.run.finish()
        self.run = self._wandb.init(
            project=cfg.project,
            name=cfg.name,
            config=dict(cfg.config) if cfg.config is not None else None,
            mode=cfg.mode,
            dir=os.fspath(cfg.dir) if cfg.dir is not None else None,
            entity=cfg.entity,
            tags=list(cfg.tags) or None,
        )

    def on_train_batch_end(self, trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
        base.check_metrics(metrics)
        step = _checks.check_int(step, "step")
        if self.run is None:
            raise RuntimeError(
                "WandbLoggerCallback.on_train_begin was not called before a batch end"
            )
        if step % self.config.log_every_n_steps != 0:
            return
        self.run.log(base.to_host(metrics), step=step)

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        """Finishes the run marked as failed (exit code 1)."""
        if self.run is not None:
            try:
                self.run.finish(exit_code=1)
            finally:
                self.run = None

    def on_train_end(self, trainer: Any) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            finally:
                self.run = None
