"""ProgressBarCallback: output without a terminal, totals, and no per-step device sync."""

import io

import jax
import jax.numpy as jnp
import pytest
from rich.console import Console

from rlgen.callbacks import progress
from rlgen.callbacks.progress import ProgressBarCallback


def run(bar, trainer, steps, metrics=None):
    bar.on_train_begin(trainer)
    for step in range(steps):
        bar.on_train_batch_end(trainer, metrics or trainer.train_step(), step)
    bar.on_train_end(trainer)


def console():
    out = io.StringIO()
    return out, Console(file=out, width=120)


def test_not_a_terminal_prints_one_clean_final_line(trainer):
    out, con = console()
    run(ProgressBarCallback(console=con), trainer, 5)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert text.count("\n") == 1
    assert "5/5" in text and "steps/s" in text
    assert "loss=0.2" in text and "mean_reward=5" in text  # the last step's metrics


def test_default_console_on_captured_stdout(trainer, capsys):
    run(ProgressBarCallback(metrics=("loss",)), trainer, 3)
    text = capsys.readouterr().out
    assert "\x1b" not in text and text.count("\n") == 1 and "3/5" in text


def test_total_argument_and_indeterminate_bar(trainer):
    out, con = console()
    run(ProgressBarCallback(total=10, console=con), trainer, 2)
    assert "2/10" in out.getvalue()
    trainer.num_steps = None
    out, con = console()
    run(ProgressBarCallback(console=con), trainer, 4)
    assert "4/?" in out.getvalue()


def test_missing_metric_names_are_skipped(trainer):
    out, con = console()
    metrics = {"loss": jnp.asarray(0.25), "dpo_loss": jnp.asarray(1.0)}
    run(ProgressBarCallback(metrics=("loss", "mean_reward"), console=con), trainer, 2, metrics)
    assert "loss=0.25" in out.getvalue() and "mean_reward" not in out.getvalue()


def test_disable_prints_nothing(trainer, capsys):
    run(ProgressBarCallback(disable=True), trainer, 3)
    assert capsys.readouterr().out == ""


class Untouchable:
    """A metric value that fails on any attempt to read it."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("a metric was read on a step with no refresh due")

    __float__ = __int__ = __bool__ = __index__ = __array__ = __jax_array__ = _fail
    item = tolist = block_until_ready = _fail


def test_metrics_are_read_only_when_a_refresh_is_due(trainer, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress, "_clock", lambda: now[0])
    reads = []
    real_get = jax.device_get

    def counting_get(x):
        reads.append(x)
        return real_get(x)

    monkeypatch.setattr(jax, "device_get", counting_get)
    out, con = console()
    trainer.num_steps = 12
    bar = ProgressBarCallback(refresh_every_s=0.5, console=con)
    bar.on_train_begin(trainer)
    real = trainer.train_step()
    poison = {"loss": Untouchable(), "mean_reward": Untouchable()}
    refreshed = []
    for step in range(12):
        now[0] += 0.2  # a refresh is due at steps 2, 5, 8, 11 (every 0.6 s of fake time)
        due = step % 3 == 2
        if due:
            bar.on_train_batch_end(trainer, real, step)
            refreshed.append(step)
        else:
            # On GPU this guard would also catch a sync; on CPU it does not fire (the arrays
            # already live in host memory), so the poison values and the count do the work.
            with jax.transfer_guard("disallow"):
                bar.on_train_batch_end(trainer, poison, step)
    assert refreshed == [2, 5, 8, 11] and len(reads) == 4
    bar.on_train_end(trainer)  # the last metrics (real ones) are shown once more
    assert len(reads) == 5
    assert "12/12" in out.getvalue()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`refresh_every_s` must be > 0, got 0"):
        ProgressBarCallback(refresh_every_s=0)
    with pytest.raises(ValueError, match="`total` must be >= 1, got 0"):
        ProgressBarCallback(total=0)
    with pytest.raises(TypeError, match="`metrics` must be a sequence"):
        ProgressBarCallback(metrics=[1])
    with pytest.raises(TypeError, match="`disable` must be a bool"):
        ProgressBarCallback(disable="yes")
