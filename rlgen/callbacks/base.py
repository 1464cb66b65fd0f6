"""The callback protocol every trainer calls, and a list that fans a hook out.

A trainer calls, in this order::

    on_train_begin(trainer)
    on_epoch_begin(trainer, epoch)           # model trainers only
    on_train_batch_end(trainer, metrics, step)   # after every train step
    on_epoch_end(trainer, epoch, metrics)    # model trainers only
    on_train_end(trainer)

`trainer` exposes `step` (completed train steps, a host int), `num_steps` (steps of the
current `fit` run, or None when the user drives the loop), `config`, and
`checkpoint_state()` / `load_checkpoint_state(tree)`. `metrics` is a dict of 0-d JAX
arrays still on the device: reading one (`float(v)`, `jax.device_get`) waits for the step
that produced it, so callbacks read them only on the steps where they need the values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
    "on_exception",
)


class Callback:
    """Base class of the trainer callbacks: every hook is a no-op; override the ones you need.

    Hooks:

    - `on_train_begin(trainer)`: once, before the first step of a run.
    - `on_train_batch_end(trainer, metrics, step)`: after each train step; `metrics` is a
      dict of 0-d device arrays, `step` the loop's step index.
    - `on_train_end(trainer)`: once, after the last step.
    - `on_epoch_begin(trainer, epoch)` / `on_epoch_end(trainer, epoch, metrics)`: around
      each epoch of the model trainers (VAE, GAN, diffusion, ...); RL loops have no epochs.

    Example:
        >>> import jax.numpy as jnp
        >>> from types import SimpleNamespace
        >>> class PrintLoss(Callback):
        ...     def on_train_batch_end(self, trainer, metrics, step):
        ...         if step % 2 == 0:  # read (and sync) only on the steps you print
        ...             print(step, float(metrics["loss"]))
        >>> cb = PrintLoss()
        >>> trainer = SimpleNamespace(step=0, num_steps=3, config=None)
        >>> cb.on_train_begin(trainer)
        >>> for step in range(3):
        ...     cb.on_train_batch_end(trainer, {"loss": jnp.asarray(step / 2)}, step)
        0 0.0
        2 1.0
        >>> cb.on_train_end(trainer)
    """

    def on_train_begin(self, trainer: Any) -> None:
        """Called once before the first train step."""

    def on_train_batch_end(self, trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
        """Called after each train step with its metrics (device arrays) and step index."""

    def on_train_end(self, trainer: Any) -> None:
        """Called once after the last train step."""

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        """Called at the start of each epoch (model trainers)."""

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Called at the end of each epoch with the epoch's metrics (model trainers)."""

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        """Called instead of `on_train_end` when a step (or a hook) raised: release what
        the callback holds (files, bars, pending saves) without writing anything new; the
        exception propagates afterwards."""


class CallbackList(Callback):
    """Calls each hook on every callback, in the order given.

    Objects that do not derive from `Callback` are accepted if they define at least one
    hook; hooks they lack are skipped. `on_train_end` runs on every callback even when an
    earlier one raises (so a W&B run is finished and checkpoint saves are awaited), then
    the first error is raised again.

    Args:
        callbacks: an iterable of callbacks (None or empty: no callbacks).

    Example:
        >>> from types import SimpleNamespace
        >>> class Hello(Callback):
        ...     def on_train_begin(self, trainer):
        ...         print("hello from", type(self).__name__)
        >>> cbs = CallbackList([Hello(), Callback()])
        >>> len(cbs)
        2
        >>> cbs.on_train_begin(SimpleNamespace(step=0))
        hello from Hello
    """

    def __init__(self, callbacks: Iterable[Any] | None = None):
        if isinstance(callbacks, CallbackList):
            callbacks = callbacks.callbacks
        if callbacks is None:
            callbacks = ()
        if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
            raise TypeError(
                f"`callbacks` must be a list of callbacks, got {type(callbacks).__name__}"
            )
        items = list(callbacks)
        for i, cb in enumerate(items):
            if isinstance(cb, type) or not any(callable(getattr(cb, h, None)) for h in HOOKS):
                what = (
                    f"the class {cb.__name__} (not an instance)"
                    if isinstance(cb, type)
                    else (type(cb).__name__)
                )
                raise TypeError(
                    f"`callbacks[{i}]` must be a callback instance with at least one of "
                    f"{', '.join(HOOKS)}, got {what}"
                )
        self.callbacks = items

    def __len__(self) -> int:
        return len(self.callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def on_train_begin(self, trainer: Any) -> None:
        self._call("on_train_begin", trainer)

    def on_train_batch_end(self, trainer: Any, metrics: Mapping[str, Any], step: int) -> None:
        self._call("on_train_batch_end", trainer, metrics, step)

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        self._call("on_epoch_begin", trainer, epoch)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: Mapping[str, Any]) -> None:
        self._call("on_epoch_end", trainer, epoch, metrics)

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        self._call_all("on_exception", trainer, exception)

    def on_train_end(self, trainer: Any) -> None:
        self._call_all("on_train_end", trainer)

    def _call_all(self, hook: str, *args: Any) -> None:
        """Calls ``hook`` on every callback even if one raises; re-raises the first error."""
        first: BaseException | None = None
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as err:  # noqa: BLE001 - re-raised below after the others ran
                if first is None:
                    first = err
        if first is not None:
            raise first


def check_metrics(metrics: Any, name: str = "metrics") -> Mapping[str, Any]:
    """Raises TypeError unless `metrics` is a mapping with string keys; returns it."""
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"`{name}` must be a dict of metric name -> 0-d array, got {type(metrics).__name__}"
        )
    return metrics


def to_host(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Fetches metrics to the host in one `jax.device_get` (one device sync).

    Single-element values become Python floats; larger arrays become nested lists of
    floats. Keys keep their order.
    """
    fetched = jax.device_get(dict(metrics))
    out: dict[str, Any] = {}
    for k in metrics:  # in the caller's order (pytree flattening sorts dict keys)
        v = fetched[k]
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"metric {k!r} must be a number or numeric array, got {type(v).__name__}"
            ) from err
        out[k] = float(arr.reshape(())) if arr.size == 1 else arr.tolist()
    return out
