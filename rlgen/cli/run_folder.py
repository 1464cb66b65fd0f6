"""The run folder: where a recipe run by the ``rlgen`` command keeps what it produces.

A `RunFolder` is handed to a recipe's ``run(config, folder)``. It owns everything about
the output folder and the devices, so a recipe only tells its story:

* at the start, before any work: the folder must be writable and, unless ``--resume`` or
  ``--overwrite``, hold no earlier run; the plot's matplotlib must be installed; the
  ``--devices`` must exist (`UsageError`, `OutputDirError`, `MissingExtraError`). Only
  then does ``--overwrite`` delete the earlier run's files.
* `RunFolder.phase`: one training phase with its progress bar, its lines of
  ``metrics.jsonl`` and its checkpoints (``checkpoints/<phase>``), resumed from them with
  ``--resume``; Ctrl-C stops it after a step with the checkpoint saved (`Interrupted`).
* `RunFolder.plot_reward_curve`: ``reward_curve.png`` (unless ``--no-plot``).
* `RunFolder.finish`: ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
REWARD_CURVE = "reward_curve.png"
CHECKPOINTS = "checkpoints"


class UsageError(ValueError):
    """A setting the run cannot start with (the `rlgen` command exits with code 2)."""


class OutputDirError(UsageError):
    """The output folder cannot be used (not writable, or holds another run)."""


class MissingExtraError(ImportError):
    """An optional dependency the settings need is not installed."""


class Interrupted(Exception):
    """Ctrl-C stopped the phase ``phase``; its checkpoint of the step reached is saved."""

    def __init__(self, phase: str):
        super().__init__(f"interrupted during {phase}")
        self.phase = phase


def _option(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where and how a recipe runs: its output folder and devices."""

    out_dir: str = _option(
        "runs/run", "output folder (metrics.jsonl, reward_curve.png, summary.json, checkpoints)"
    )
    devices: int = _option(
        1, "number of devices for data parallelism (CPU: that many host devices)"
    )
    resume: bool = _option(False, "continue the run saved in the output folder")
    overwrite: bool = _option(False, "start over in an output folder that holds a run")
    progress: bool = _option(True, "live progress bar")
    plot: bool = _option(
        True, "write reward_curve.png (needs matplotlib: pip install 'rlgen[demo]')"
    )
    checkpoint_every: int = _option(50, "save each phase's checkpoint every this many steps")

    def __post_init__(self):
        if self.devices < 1:
            raise ValueError(f"--devices must be at least 1, got {self.devices}")
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")


class RunFolder:
    """A recipe run's output folder, devices and summary (see the module's docstring).

    Args:
      options: the `RunOptions`.
      config: the run's settings as written to ``summary.json`` (``"config"``).
      echo: prints the run's messages.

    Attributes:
      path: the folder. mesh: a ``("data",)`` `jax.sharding.Mesh` over ``options.devices``
      devices, or None for one device. summary: what ``summary.json`` will hold; each
      finished phase's results are added as they come.
    """

    def __init__(
        self,
        options: RunOptions,
        *,
        config: Mapping[str, Any] | None = None,
        echo: Callable[[str], Any] = print,
    ):
        self.options, self.echo = options, echo
        self.path = Path(options.out_dir)
        self._check_folder()
        if options.plot:
            _require_matplotlib()
        self.mesh = _mesh(options.devices)
        if options.overwrite and not options.resume:
            self._clear()
        self.summary: dict[str, Any] = {
            "config": dict(config or {}),
            "devices": 1 if self.mesh is None else int(self.mesh.devices.size),
            "interrupted": False,
        }
        self._logs: dict[str, Any] = {}

    # -- the folder ------------------------------------------------------------------------

    def _check_folder(self) -> None:
        """Fails before any work when the folder cannot be written or holds another run."""
        out = self.path
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".rlgen-write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise OutputDirError(f"cannot write to the output folder {str(out)!r}: {err}") from None
        previous = (out / CHECKPOINTS).exists() or (out / METRICS).exists()
        if previous and not self.options.resume and not self.options.overwrite:
            raise OutputDirError(
                f"the output folder {str(out)!r} already holds a run; pass --resume to continue "
                "it or --overwrite to start over"
            )

    def _clear(self) -> None:
        """Deletes an earlier run's files: checkpoints, metrics, summary, plot, phase markers."""
        checkpoints = self.path / CHECKPOINTS
        phases = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        for name in (CHECKPOINTS, METRICS, SUMMARY, REWARD_CURVE, *(f"{p}.json" for p in phases)):
            path = self.path / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    # -- phases ----------------------------------------------------------------------------

    def log(self, phase: str):
        """The `rlgen.callbacks.JSONLLogger` of ``phase``'s lines in ``metrics.jsonl``."""
        if phase not in self._logs:
            from rlgen.callbacks import JSONLLogger

            self._logs[phase] = JSONLLogger(self.path / METRICS, fields={"phase": phase})
        return self._logs[phase]

    def phase(
        self,
        name: str,
        trainer: Any,
        batches: Callable[[int], Iterable[Any]],
        num_steps: int,
        *,
        show: Sequence[str] = (),
        callbacks: Sequence[Any] = (),
        results: Callable[[], dict[str, Any]] | None = None,
        **fit_kwargs: Any,
    ) -> dict[str, Any]:
        """Trains ``trainer`` to ``num_steps`` steps in all: the phase ``name`` of the run.

        With ``--resume`` it first restores the phase's latest checkpoint. Around
        ``trainer.fit`` it adds a progress bar of the metrics ``show`` (unless
        ``--no-progress``), the phase's `log` and a checkpoint every ``checkpoint_every``
        steps and at the end (``checkpoints/<name>``).

        Args:
          name: the phase's name (its ``"phase"`` in ``metrics.jsonl``).
          trainer: an `rlgen.trainers` trainer.
          batches: ``batches(step)`` gives the batches from step ``step`` on.
          num_steps: the phase's length in steps.
          show: the metrics the progress bar shows.
          callbacks: more callbacks for ``trainer.fit``.
          results: for a phase that is done for good once it has finished (pretraining
            stopped early, say): computes its results when it finishes. They are kept in
            ``<name>.json``; a resumed run restores the phase's checkpoint and these
            results instead of training it again.
          **fit_kwargs: passed to ``trainer.fit`` (``reward_fn=...``).

        Returns:
          the phase's results (``{}`` without ``results``), also added to `summary`.

        Raises:
          Interrupted: Ctrl-C stopped the phase (the checkpoint of the step reached is saved).
        """
        from rlgen.callbacks import CheckpointConfig, ModelCheckpoint, ProgressBarCallback

        directory = self.path / CHECKPOINTS / name
        marker = self.path / f"{name}.json"
        if results is not None and self.options.resume and marker.exists():
            ModelCheckpoint.restore(trainer, directory)
            done = json.loads(marker.read_text())
            self.summary.update(done)
            return done
        if self.options.resume and ModelCheckpoint.latest_step(directory) is not None:
            ModelCheckpoint.restore(trainer, directory)
        remaining = num_steps - trainer.step
        if remaining > 0:
            progress = self.options.progress
            bar = [ProgressBarCallback(metrics=show, description=name)] if progress else []
            every = self.options.checkpoint_every
            checkpoint = ModelCheckpoint(
                CheckpointConfig(dirpath=str(directory), every_n_steps=every, save_top_k=1)
            )
            trainer.fit(
                batches(trainer.step),
                num_steps=remaining,
                callbacks=[*bar, self.log(name), *callbacks, checkpoint],
                **fit_kwargs,
            )
            if trainer.interrupted:
                raise Interrupted(name)
        done = {} if results is None else results()
        if results is not None:
            marker.write_text(json.dumps(done) + "\n")
        self.summary.update(done)
        return done

    # -- the end ---------------------------------------------------------------------------

    def plot_reward_curve(
        self,
        phase: str,
        *,
        title: str,
        xlabel: str,
        evaluations: Mapping[str, str] | None = None,
    ) -> None:
        """Writes ``reward_curve.png`` of ``phase`` (`plot_reward_curve`) unless ``--no-plot``."""
        if self.options.plot:
            plot_reward_curve(
                self.path / METRICS,
                self.path / REWARD_CURVE,
                phase=phase,
                title=title,
                xlabel=xlabel,
                evaluations=evaluations,
            )

    def finish(
        self, results: Mapping[str, Any] | None = None, *, interrupted: str | None = None
    ) -> dict[str, Any]:
        """Adds ``results`` to the summary and writes ``summary.json``; returns the summary.

        ``interrupted``: the phase Ctrl-C stopped (recorded, and how to continue is echoed).
        """
        self.summary.update(results or {})
        if interrupted:
            self.summary["interrupted"] = interrupted
            self.echo(
                f"interrupted during {interrupted}: checkpoint saved under "
                f"{self.path / CHECKPOINTS}; run again with --resume to continue"
            )
        (self.path / SUMMARY).write_text(json.dumps(self.summary, indent=2) + "\n")
        return self.summary


def _mesh(devices: int):
    if devices == 1:
        return None
    import jax
    import numpy as np

    available = jax.devices()
    if len(available) < devices:
        raise UsageError(
            f"--devices {devices} asked for {devices} devices but JAX sees {len(available)} "
            f"({available[0].platform}); on CPU set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices} before JAX starts (the "
            "`rlgen` command does this itself)"
        )
    return jax.sharding.Mesh(np.asarray(available[:devices]), ("data",))


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            "the reward-curve plot needs matplotlib: pip install 'rlgen[demo]' (or pass "
            "--no-plot)"
        ) from None


def read_metrics(path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_reward_curve(
    metrics_path,
    png_path,
    *,
    phase: str,
    title: str,
    xlabel: str,
    evaluations: Mapping[str, str] | None = None,
) -> None:
    """Writes the reward curve of ``phase`` as a PNG.

    The curve is the ``mean_reward`` of every step (and its moving mean); ``evaluations``
    maps other record keys (a held-out accuracy, say) to their labels, drawn as points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = [r for r in read_metrics(metrics_path) if r.get("phase") == phase]
    steps = [r["step"] + 1 for r in records if "mean_reward" in r]
    reward = np.array([float(r["mean_reward"]) for r in records if "mean_reward" in r])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, reward, color="tab:blue", alpha=0.35, label="mean reward (batch)")
    if len(reward) >= 10:
        width = max(5, len(reward) // 20)
        smooth = np.convolve(reward, np.ones(width) / width, mode="valid")
        label = f"mean reward ({width}-step mean)"
        ax.plot(steps[width - 1 :], smooth, color="tab:blue", label=label)
    colors = ("tab:orange", "tab:green", "tab:red", "tab:purple")
    for (key, label), color in zip((evaluations or {}).items(), colors, strict=False):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", color=color, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
