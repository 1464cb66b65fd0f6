"""Callback and CallbackList."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlgen.callbacks import base
from rlgen.callbacks.base import HOOKS, Callback, CallbackList


class Recorder(Callback):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def on_train_begin(self, trainer):
        self.log.append((self.name, "begin"))

    def on_train_batch_end(self, trainer, metrics, step):
        self.log.append((self.name, "batch", step))

    def on_epoch_begin(self, trainer, epoch):
        self.log.append((self.name, "epoch_begin", epoch))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.log.append((self.name, "epoch_end", epoch))

    def on_train_end(self, trainer):
        self.log.append((self.name, "end"))


def _hook_args(trainer):
    """The arguments a trainer passes to each hook (module doc of rlgen.callbacks.base)."""
    return {
        "on_train_begin": (trainer,),
        "on_epoch_begin": (trainer, 0),
        "on_train_batch_end": (trainer, {"loss": jnp.ones(())}, 3),
        "on_epoch_end": (trainer, 0, {}),
        "on_train_end": (trainer,),
        "on_exception": (trainer, RuntimeError("boom")),
    }


def test_callback_list_forwards_every_hook_with_its_arguments(trainer):
    # A hook added to HOOKS but not forwarded by CallbackList would fall back to the base
    # class's no-op and silently never reach the callbacks.
    args = _hook_args(trainer)
    assert set(args) == set(HOOKS)
    seen = []
    spy = type(
        "Spy",
        (Callback,),
        {h: (lambda self, *a, h=h: seen.append((h, a))) for h in HOOKS},
    )
    # The base class's no-ops take the same arguments (a wrong signature raises TypeError).
    cbs = CallbackList([spy(), Callback()])
    for hook in HOOKS:
        getattr(cbs, hook)(*args[hook])
    assert seen == [(hook, args[hook]) for hook in HOOKS]


def test_callback_list_calls_in_order(trainer):
    log = []
    cbs = CallbackList([Recorder("a", log), Recorder("b", log)])
    cbs.on_train_begin(trainer)
    cbs.on_epoch_begin(trainer, 0)
    cbs.on_train_batch_end(trainer, {}, 3)
    cbs.on_epoch_end(trainer, 0, {})
    cbs.on_train_end(trainer)
    assert log == [
        ("a", "begin"),
        ("b", "begin"),
        ("a", "epoch_begin", 0),
        ("b", "epoch_begin", 0),
        ("a", "batch", 3),
        ("b", "batch", 3),
        ("a", "epoch_end", 0),
        ("b", "epoch_end", 0),
        ("a", "end"),
        ("b", "end"),
    ]
    assert len(cbs) == 2 and len(CallbackList(cbs)) == 2 and len(CallbackList(None)) == 0


def test_duck_typed_callbacks_skip_missing_hooks(trainer):
    class OnlyEnd:
        def __init__(self):
            self.ended = False

        def on_train_end(self, trainer):
            self.ended = True

    cb = OnlyEnd()
    cbs = CallbackList([cb])
    cbs.on_train_begin(trainer)
    cbs.on_train_batch_end(trainer, {}, 0)
    cbs.on_train_end(trainer)
    assert cb.ended


def test_bad_callbacks_are_named():
    with pytest.raises(TypeError, match=r"callbacks\[1\].*class Recorder \(not an instance\)"):
        CallbackList([Callback(), Recorder])
    with pytest.raises(TypeError, match=r"callbacks\[0\].*got int"):
        CallbackList([3])
    with pytest.raises(TypeError, match="`callbacks` must be a list"):
        CallbackList(Callback())


def test_train_end_runs_every_callback_then_raises_first(trainer):
    log = []

    class Boom(Callback):
        def __init__(self, msg):
            self.msg = msg

        def on_train_end(self, trainer):
            raise RuntimeError(self.msg)

    cbs = CallbackList([Boom("first"), Recorder("a", log), Boom("second")])
    with pytest.raises(RuntimeError, match="first"):
        cbs.on_train_end(trainer)
    assert log == [("a", "end")]


def test_to_host_converts_in_one_device_get(monkeypatch):
    calls = []
    real = base.jax.device_get

    def counting(x):
        calls.append(x)
        return real(x)

    monkeypatch.setattr(base.jax, "device_get", counting)
    out = base.to_host(
        {
            "f": jnp.asarray(0.5),
            "bf": jnp.asarray(2.0, jnp.bfloat16),
            "i": jnp.asarray(3),
            "b": jnp.asarray(True),
            "v": jnp.arange(2.0),
            "n": np.float32("nan"),
        }
    )
    assert len(calls) == 1
    assert out["f"] == 0.5 and out["bf"] == 2.0 and out["i"] == 3.0 and out["b"] == 1.0
    assert out["v"] == [0.0, 1.0] and np.isnan(out["n"])
    assert all(type(v) in (float, list) for v in out.values())
    with pytest.raises(TypeError, match="metric 's'"):
        base.to_host({"s": "text"})


def test_callback_list_on_exception_reaches_every_callback():
    seen = []

    class Fails(Callback):
        def on_exception(self, trainer, exception):
            seen.append("fails")
            raise OSError("disk full")

    class Records(Callback):
        def on_exception(self, trainer, exception):
            seen.append(str(exception))

    hooks = CallbackList([Fails(), Records(), Callback()])
    with pytest.raises(OSError, match="disk full"):
        hooks.on_exception(None, RuntimeError("boom"))
    assert seen == ["fails", "boom"]
