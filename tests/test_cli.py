"""The `rlgen` command: usage errors (exit code 2 with a hint), the installed entry point,
Ctrl-C (checkpoint, exit code 130) and --resume, and --devices on a CPU machine."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlgen import cli


def _main(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["addtion"], "invalid choice: 'addtion'"),
        (["addition", "--grpo-step", "3"], "did you mean --grpo-steps?"),
        (["addition", "--sed", "1"], "did you mean --seed?"),
        (["addition", "--seed", "abc"], "expected an integer"),
        (["addition", "--grpo-steps", "-5"], "must not be negative"),
        (["addition", "--kl-estimator", "k4"], "invalid choice: 'k4'"),
        (["addition", "--learning-rate", "fast"], "expected a number"),
        (["addition", "--devices", "0"], "--devices must be at least 1"),
        ([], "required: RECIPE"),
    ],
)
def test_bad_usage_exits_2_with_a_hint(capsys, argv, hint):
    code, _, err = _main(capsys, *argv)
    assert code == 2
    assert hint in err
    assert "usage:" in err and "--help" in err


def test_help_lists_the_recipes_and_the_knobs(capsys):
    code, out, _ = _main(capsys, "--help")
    assert code == 0 and "addition" in out and "cartpole" in out
    code, out, _ = _main(capsys, "addition", "--help")
    assert code == 0
    for flag in ("--num-generations", "--learning-rate", "--clip-param", "--epsilon-high",
                 "--beta", "--kl-estimator", "--loss-aggregation", "--seed", "--out-dir",
                 "--devices", "--resume", "--top-p", "--no-progress"):
        assert flag in out


def test_unwritable_output_folder_fails_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    start = time.perf_counter()
    code, _, err = _main(capsys, "addition", "--out-dir", str(blocker / "run"))
    assert code == 2
    assert "cannot write to the output folder" in err and str(blocker / "run") in err
    assert time.perf_counter() - start < 10  # nothing was trained


def test_a_folder_with_a_run_needs_resume_or_overwrite(capsys, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    code, _, err = _main(capsys, "addition", "--out-dir", str(tmp_path))
    assert code == 2 and "--resume" in err and "--overwrite" in err


def _rlgen():
    exe = Path(sys.executable).with_name("rlgen")
    if not exe.exists():
        pytest.skip("the `rlgen` entry point is not installed in this environment")
    return str(exe)


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_installed_entry_point_runs(tmp_path):
    proc = subprocess.run([_rlgen(), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("rlgen ")
    proc = subprocess.run([_rlgen(), "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def _wait_for(path: Path, predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"rlgen exited early ({proc.returncode}):\n{out}\n{err}")
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if predicate(lines):
                return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting on {path}")


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_with_four_devices(tmp_path):
    """SIGINT mid-GRPO: exit code 130, a checkpoint of the step reached; --resume (on 4
    host devices the command creates itself) continues from it to the end."""
    out = tmp_path / "run"
    small = ["--pretrain-steps", "20", "--held-out", "200", "--eval-every", "5",
             "--checkpoint-every", "1000", "--no-plot", "--out-dir", str(out)]
    proc = subprocess.Popen(
        [_rlgen(), "addition", "--grpo-steps", "100000", *small],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    grpo_steps = lambda lines: [r for r in lines if r.get("phase") == "grpo" and "loss" in r]  # noqa: E731
    _wait_for(out / "metrics.jsonl", lambda lines: len(grpo_steps(lines)) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == "grpo"
    from rlgen.callbacks import ModelCheckpoint

    reached = ModelCheckpoint.latest_step(out / "checkpoints" / "grpo")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert reached == len(grpo_steps(lines)) >= 3  # the step reached, not an older one

    proc = subprocess.run(
        [_rlgen(), "addition", "--resume", "--devices", "4", "--grpo-steps", str(reached + 3),
         *small],
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["devices"] == 4 and summary["interrupted"] is False
    assert "accuracy_after" in summary
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in grpo_steps(lines)] == list(range(reached + 3))
    assert ModelCheckpoint.latest_step(out / "checkpoints" / "grpo") == reached + 3
    shutil.rmtree(out)


def test_more_devices_than_jax_sees_exits_2(capsys, tmp_path):
    code, _, err = _main(capsys, "addition", "--devices", "64", "--out-dir", str(tmp_path))
    assert code == 2 and "--devices 64" in err and "JAX sees" in err
