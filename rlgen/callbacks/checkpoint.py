"""The `ModelCheckpoint` callback: Orbax checkpoints of a training run, ranked by a metric.

Saves are atomic and asynchronous (`rlgen.checkpoints`); a half-written step is never
listed nor restored (a later `ModelCheckpoint` run in the same directory deletes it, at
the latest before its first save).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from rlgen import _checks
from rlgen.callbacks import base
from rlgen.checkpoints import (
    as_path,
    check_like,
    check_tree,
    match_keys,
    orbax_checkpoint,
    restore_checkpoint,
    restore_target,
    save_checkpoint,
)

__all__ = ["CheckpointConfig", "ModelCheckpoint", "restore_checkpoint", "save_checkpoint"]

_STATE = "state"  # the item name of the trainer state inside a step directory
_META_KEY = "rlgen"  # our entry in the root metadata of a ModelCheckpoint directory


# -- the callback ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Settings of `ModelCheckpoint`.

    Args:
        dirpath: the directory of the run's checkpoints (one sub-directory per step).
        monitor: a metric name to rank checkpoints by (e.g. "mean_reward"); None keeps
            the most recent ones.
        mode: "min" (lower is better, e.g. a loss) or "max" (e.g. a reward).
        save_top_k: how many of the best checkpoints to keep (by `monitor`, or the
            latest ones when `monitor` is None); -1 keeps all.
        every_n_steps: save when `trainer.step` is a multiple of this (>= 1).
        save_last: also keep the latest checkpoint (so training can resume), and save
            the final state at the end of the run if its step was not saved yet.

    Example:
        >>> CheckpointConfig("ckpts", monitor="mean_reward", mode="max").save_top_k
        1
        >>> CheckpointConfig("ckpts", mode="best")
        Traceback (most recent call last):
        ...
        ValueError: unknown `mode` 'best'; expected one of 'min', 'max'
    """

    dirpath: str | os.PathLike
    monitor: str | None = None
    mode: str = "min"
    save_top_k: int = 1
    every_n_steps: int = 1
    save_last: bool = True

    def __post_init__(self):
        as_path(self.dirpath, "dirpath")
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor):
            raise TypeError(f"`monitor` must be a metric name (str) or None, got {self.monitor!r}")
        _checks.check_choice(self.mode, ("min", "max"), "mode")
        _checks.check_int(self.save_top_k, "save_top_k")
        if self.save_top_k < 1 and self.save_top_k != -1:
            raise ValueError(f"`save_top_k` must be >= 1, or -1 to keep all, got {self.save_top_k}")
        _checks.check_int(self.every_n_steps, "every_n_steps", low=1)
        _checks.check_bool(self.save_last, "save_last")


def _rank_fn(monitor: str, mode: str):
    """The value a step is ranked by (better: larger for "max", smaller for "min"); NaN is worst."""
    worst = -math.inf if mode == "max" else math.inf

    def rank(metrics: Mapping[str, Any]) -> float:
        value = float(metrics[monitor])
        return worst if math.isnan(value) else value

    return rank


def _trainer_step(trainer: Any) -> int:
    step = getattr(trainer, "step", None)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise TypeError(
            f"ModelCheckpoint needs `trainer.step` (completed train steps, an int >= 0); "
            f"{type(trainer).__name__}.step is {step!r}"
        )
    return int(step)


class ModelCheckpoint(base.Callback):
    """Saves the trainer's full state with Orbax, keeping the best `save_top_k` steps.

    Every `every_n_steps` train steps (when `trainer.step % every_n_steps == 0`) it saves
    `trainer.checkpoint_state()` (params, optimiser state, step, RNG key data: everything
    to resume exactly) together with the value of the monitored metric. Steps are
    numbered by `trainer.step`, the number of completed train steps the saved state
    holds, so the step restored is the step the trainer will report. Saves are
    asynchronous (the device-to-host copy happens before the hook returns, the file
    writes in a background thread); `on_train_end` waits until every save is on disk.

    What `dirpath` holds after a run:

    - `<step>/state/`: the trainer state of that step (an Orbax `StandardSave` tree,
      readable on its own with `restore_checkpoint`);
    - `<step>/metrics/metrics`: JSON `{monitor: value}` (absent when `monitor` is None);
    - `<step>/_CHECKPOINT_METADATA`, `<step>/commit_success.txt`: Orbax bookkeeping;
    - `metadata/_ROOT_METADATA`: records `monitor` and `mode` (read by `best_step`).

    and exactly these steps: with `monitor`, the `save_top_k` best by the monitored value
    (ties: the later step; NaN ranks worst), plus, with `save_last`, the latest saved
    step; without `monitor`, the `save_top_k` latest; with `save_top_k=-1`, all. With
    `save_last`, the end of the run also saves the final state if its step was not saved.

    The directory belongs to one run: resuming is supported (restore the latest step,
    keep training, the new steps follow), but a run whose `trainer.step` lies behind the
    directory's latest step raises a `ValueError` rather than mixing two histories.

    Args:
        config: a `CheckpointConfig`.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> class Toy:  # a stand-in for a trainer
        ...     def __init__(self):
        ...         self.step, self.num_steps, self.config = 0, None, None
        ...         self.w = jnp.zeros(2)
        ...     def checkpoint_state(self):
        ...         return {"w": self.w, "step": jnp.asarray(self.step)}
        ...     def load_checkpoint_state(self, tree):
        ...         self.w, self.step = tree["w"], int(tree["step"])
        >>> d = tempfile.mkdtemp()
        >>> cb = ModelCheckpoint(CheckpointConfig(d, monitor="reward", mode="max"))
        >>> trainer = Toy()
        >>> cb.on_train_begin(trainer)
        >>> for reward in [0.1, 0.9, 0.3]:
        ...     trainer.step += 1
        ...     trainer.w = trainer.w + 1
        ...     cb.on_train_batch_end(trainer, {"reward": jnp.asarray(reward)}, trainer.step)
        >>> cb.on_train_end(trainer)
        >>> ModelCheckpoint.all_steps(d), ModelCheckpoint.best_step(d)
        ([2, 3], 2)
        >>> fresh = Toy()
        >>> ModelCheckpoint.restore(fresh, d, step="best"), fresh.w
        (2, Array([2., 2.], dtype=float32))
    """

    def __init__(self, config: CheckpointConfig):
        if not isinstance(config, CheckpointConfig):
            raise TypeError(f"`config` must be a CheckpointConfig, got {type(config).__name__}")
        self.config = config
        self.dirpath = as_path(config.dirpath, "dirpath")
        self._manager = None
        self._last_value = None  # the monitored metric of the latest batch (device array)
        self._seen_batch = False

    # -- the manager --

    def _options(self):
        ocp = orbax_checkpoint()
        policies = ocp.checkpoint_managers
        cfg = self.config
        if cfg.save_top_k == -1:
            policy = policies.LatestN(n=None)  # n=None: keep every step
        elif cfg.monitor is None:
            policy = policies.LatestN(n=cfg.save_top_k)
        else:
            policy = policies.BestN(
                get_metric_fn=_rank_fn(cfg.monitor, cfg.mode),
                reverse=cfg.mode == "min",
                n=cfg.save_top_k,
            )
            if cfg.save_last:
                policy = policies.AnyPreservationPolicy([policy, policies.LatestN(n=1)])
        return ocp.CheckpointManagerOptions(
            best_fn=None if cfg.monitor is None else _rank_fn(cfg.monitor, cfg.mode),
            best_mode=cfg.mode,
            preservation_policy=policy,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=True,
        )

    def on_train_begin(self, trainer: Any) -> None:
        ocp = orbax_checkpoint()
        if self._manager is not None:
            self._close()
        cfg = self.config
        self._manager = ocp.CheckpointManager(
            self.dirpath,
            options=self._options(),
            item_names=(_STATE,),
            metadata={_META_KEY: {"monitor": cfg.monitor, "mode": cfg.mode}},
        )
        recorded = (self._manager.metadata().custom_metadata or {}).get(_META_KEY)
        mine = {"monitor": cfg.monitor, "mode": cfg.mode}
        if recorded is not None and recorded != mine:
            self._close()
            raise ValueError(
                f"`dirpath` {str(self.dirpath)!r} holds checkpoints ranked by {recorded}, "
                f"this callback ranks by {mine}; use another dirpath"
            )
        latest = self._manager.latest_step()
        step = _trainer_step(trainer)
        if latest is not None and latest > step:
            self._close()
            raise ValueError(
                f"`dirpath` {str(self.dirpath)!r} holds checkpoints up to step {latest}, "
                f"beyond the trainer's step {step}: saving there would mix two runs. Restore "
                f"the latest step first (ModelCheckpoint.restore) or use a new dirpath"
            )
        self._last_value = None
        self._seen_batch = False

    def _save(self, trainer: Any, step: int) -> None:
        ocp = orbax_checkpoint()
        if self._manager.latest_step() == step:  # already saved (e.g. by the last batch)
            return
        metrics = None
        if self.config.monitor is not None:
            value = np.asarray(jax.device_get(self._last_value))
            if value.size != 1:
                raise ValueError(
                    f"the monitored metric {self.config.monitor!r} must be a scalar, "
                    f"got shape {value.shape}"
                )
            metrics = {self.config.monitor: float(value.reshape(()))}
        state = trainer.checkpoint_state()
        self._manager.save(
            step,
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state)}),
            metrics=metrics,
            force=True,
        )

    def on_train_batch_end(self, trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
        if self._manager is None:
            raise RuntimeError("ModelCheckpoint.on_train_begin was not called before a batch end")
        base.check_metrics(metrics)
        monitor = self.config.monitor
        if monitor is not None:
            if monitor not in metrics:
                raise ValueError(
                    f"`monitor` {monitor!r} is not among the metrics; available: {sorted(metrics)}"
                )
            self._last_value = metrics[monitor]
        self._seen_batch = True
        ckpt_step = _trainer_step(trainer)
        if ckpt_step % self.config.every_n_steps == 0:
            self._save(trainer, ckpt_step)

    def on_train_end(self, trainer: Any) -> None:
        if self._manager is None:
            return
        try:
            if self.config.save_last and self._seen_batch:
                step = _trainer_step(trainer)
                latest = self._manager.latest_step()
                if latest is None or step > latest:
                    self._save(trainer, step)
            self._manager.wait_until_finished()
        finally:
            self._close()

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        """Lets the saves already started finish (so they are complete and listed), saves
        nothing new (the state may be what failed), and closes the manager."""
        self._close()

    def _close(self) -> None:
        if self._manager is not None:
            try:
                self._manager.wait_until_finished()
            finally:
                self._manager.close()
                self._manager = None

    # -- reading a directory back --

    @staticmethod
    def _reader(dirpath: str | os.PathLike, best: bool = False):
        ocp = orbax_checkpoint()
        path = as_path(dirpath, "dirpath")
        if not path.is_dir():
            raise FileNotFoundError(f"`dirpath` {str(path)!r}: no checkpoint directory there")
        handlers = {_STATE: ocp.StandardCheckpointHandler()}
        options = ocp.CheckpointManagerOptions(create=False)
        manager = ocp.CheckpointManager(path, options=options, item_handlers=handlers)
        if not best:
            return manager
        recorded = (manager.metadata().custom_metadata or {}).get(_META_KEY) or {}
        manager.close()
        monitor, mode = recorded.get("monitor"), recorded.get("mode", "min")
        options = ocp.CheckpointManagerOptions(
            create=False,
            best_fn=None if monitor is None else _rank_fn(monitor, mode),
            best_mode=mode,
        )
        return ocp.CheckpointManager(path, options=options, item_handlers=handlers)

    @staticmethod
    def _exists(dirpath: str | os.PathLike) -> bool:
        return as_path(dirpath, "dirpath").is_dir()

    @staticmethod
    def all_steps(dirpath: str | os.PathLike) -> list[int]:
        """The complete (committed) steps in `dirpath`, ascending; [] if it does not exist.

        (So `latest_step(d) is not None` asks "is there anything to resume from?".)

        Example:
            >>> ModelCheckpoint.all_steps("/no/such/dir"), ModelCheckpoint.latest_step("/no/such")
            ([], None)
        """
        if not ModelCheckpoint._exists(dirpath):
            return []
        manager = ModelCheckpoint._reader(dirpath)
        try:
            return sorted(int(s) for s in manager.all_steps())
        finally:
            manager.close()

    @staticmethod
    def latest_step(dirpath: str | os.PathLike) -> int | None:
        """The latest complete step in `dirpath`; None if there is none or no directory."""
        if not ModelCheckpoint._exists(dirpath):
            return None
        manager = ModelCheckpoint._reader(dirpath)
        try:
            return manager.latest_step()
        finally:
            manager.close()

    @staticmethod
    def best_step(dirpath: str | os.PathLike) -> int | None:
        """The best step in `dirpath` by the monitor and mode it was written with.

        Ties go to the later step and NaN ranks worst. A directory written without a
        `monitor` has no ranking: its best step is its latest. None if it holds no step
        or does not exist. (Example: see the class.)
        """
        if not ModelCheckpoint._exists(dirpath):
            return None
        manager = ModelCheckpoint._reader(dirpath, best=True)
        try:
            return manager.best_step()
        finally:
            manager.close()

    @staticmethod
    def metrics(dirpath: str | os.PathLike) -> dict[int, dict[str, float]]:
        """The monitored metric saved with each kept step: `{step: {monitor: value}}`.

        Steps saved without a monitor map to `{}`; a missing directory gives `{}`.
        """
        if not ModelCheckpoint._exists(dirpath):
            return {}
        manager = ModelCheckpoint._reader(dirpath)
        try:
            return {int(s): dict(manager.metrics(s) or {}) for s in manager.all_steps()}
        finally:
            manager.close()

    @staticmethod
    def restore(trainer: Any, dirpath: str | os.PathLike, step: int | str | None = None) -> int:
        """Loads a saved step into `trainer` (via `trainer.load_checkpoint_state`).

        The saved tree is checked against `trainer.checkpoint_state()` (same paths,
        shapes and dtypes, else a `ValueError` listing the differences) and restored into
        its structure and shardings, bit for bit.

        Args:
            trainer: the trainer to load into.
            dirpath: a `ModelCheckpoint` directory.
            step: the step to restore; None: the latest; "best": `best_step(dirpath)`.

        Returns:
            The step restored.

        (Example: see the class.)
        """
        ocp = orbax_checkpoint()
        manager = ModelCheckpoint._reader(dirpath, best=step == "best")
        try:
            steps = list(manager.all_steps())
            if not steps:
                raise FileNotFoundError(
                    f"`dirpath` {str(manager.directory)!r} holds no complete checkpoint"
                )
            if step is None:
                step = manager.latest_step()
            elif step == "best":
                step = manager.best_step()
            else:
                _checks.check_int(step, "step", 0)
                if step not in steps:
                    raise ValueError(
                        f"`step` {step} is not in {str(manager.directory)!r}; "
                        f"saved steps: {sorted(steps)}"
                    )
            like = trainer.checkpoint_state()
            check_tree(like, "trainer.checkpoint_state()")
            saved = manager.item_metadata(step)[_STATE]
            check_like(saved.tree, like, f"{str(manager.directory)!r} step {step}")
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardRestore(restore_target(like))}
                ),
            )[_STATE]
        finally:
            manager.close()
        trainer.load_checkpoint_state(match_keys(restored, like))
        return int(step)
