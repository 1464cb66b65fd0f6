"""JAXProfiler: a trace of the chosen steps lands in log_dir."""

import jax
import jax.numpy as jnp
import pytest

from rlgen.callbacks import JAXProfiler, ProfilingConfig


def steps(prof, trainer, n):
    prof.on_train_begin(trainer)
    started = []
    for step in range(n):
        x = jnp.ones((64, 64)) * step
        prof.on_train_batch_end(trainer, {"loss": (x @ x).mean()}, step)
        started.append(prof.tracing)
    return started


def test_trace_files_appear(tmp_path, trainer):
    prof = JAXProfiler(
        ProfilingConfig(tmp_path, start_step=1, end_step=3, create_perfetto_trace=True)
    )
    tracing = steps(prof, trainer, 5)
    prof.on_train_end(trainer)
    assert tracing == [False, True, True, False, False]
    assert len(list(tmp_path.rglob("*.xplane.pb"))) == 1
    assert len(list(tmp_path.rglob("perfetto_trace.json.gz"))) == 1


def test_run_ending_inside_the_window_stops_the_trace(tmp_path, trainer):
    prof = JAXProfiler(ProfilingConfig(tmp_path, start_step=0, end_step=100))
    assert steps(prof, trainer, 2) == [True, True]
    prof.on_train_end(trainer)
    assert not prof.tracing
    assert len(list(tmp_path.rglob("*.xplane.pb"))) == 1
    jax.profiler.start_trace(tmp_path / "again")  # the profiler is free again
    jax.profiler.stop_trace()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"start_step": -1, "end_step": 3}, ValueError, "`start_step` must be >= 0, got -1"),
        ({"start_step": 5, "end_step": 5}, ValueError, r"`end_step` must be > `start_step` \(5\)"),
        ({"start_step": 1.5, "end_step": 3}, TypeError, "`start_step` must be an int"),
    ],
)
def test_config_errors_name_the_argument(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        ProfilingConfig(tmp_path, **kwargs)
