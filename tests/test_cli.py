"""The `rlgen` command: usage errors (exit code 2 with a hint), the installed entry point,
Ctrl-C (checkpoint, exit code 130) and --resume, and --devices on a CPU machine; the
registry (one entry adds a recipe) and the options made from config dataclasses (nested
configs flattened, pinned and unexposable fields left out, name clashes refused)."""

import dataclasses
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
from rlgen._checks import option, option_choices
from rlgen.algorithms import GRPOConfig
from rlgen.recipes import nested


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
        (["digits"], "required: FAMILY"),
        (["digits", "vea"], "invalid choice: 'vea'"),
        (["digits", "gan", "--d-step", "2"], "did you mean --d-steps?"),
        (["digits", "gan", "--d-steps", "0"], "d_steps"),
        (["digits", "diffusion", "--schedule", "quadratic"], "invalid choice: 'quadratic'"),
        (["digits", "flow", "--coupling", "sinkhorn"], "invalid choice: 'sinkhorn'"),
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


def test_the_digits_group_has_one_command_per_family(capsys):
    from rlgen.recipes.digits import FAMILIES

    code, out, _ = _main(capsys, "digits", "--help")
    assert code == 0
    for family in FAMILIES:
        assert family in out
        recipe = cli.RECIPES[f"digits {family}"]
        assert recipe.group == "digits" and recipe.slug == f"digits-{family}"
        command = cli.parse(["digits", family, "--seed", "3", "--no-plot"])
        assert command.recipe is recipe and command.config.seed == 3
        assert command.options.out_dir == f"runs/digits-{family}"
        assert command.options.checkpoint_every == 500 and not command.options.plot
    assert {n.split()[1] for n in cli.RECIPES if n.startswith("digits ")} == set(FAMILIES)
    code, out, _ = _main(capsys, "digits", "flow", "--help")
    assert code == 0 and "--coupling" in out and "--guidance-scale" in out


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


# ----------------------------------------------------------------------------------------
# the registry and the options made from the configs
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """A toy recipe's settings.

    Attributes:
      steps: how many steps the toy takes. More text that the help leaves out.
    """

    steps: int = 3
    scale: float = 0.5
    limit: float | None = None
    mode: str = option("a", ("a", "b"))
    shout: bool = False
    hook: object = None  # not a command-line option
    grpo: GRPOConfig = nested(GRPOConfig(beta=0.25), pinned=("reference",))


def run(config: ToyConfig, folder=None) -> dict:
    """The toy recipe: echoes its settings back."""
    if folder is not None:
        folder.echo("toy ran in its folder")
    return {"total": config.steps * config.scale, "beta": config.grpo.beta, "mode": config.mode}


TOY = cli.Recipe(
    name="toy",
    help="a toy recipe of the tests",
    description="Echoes its settings.",
    module=__name__,
    config="ToyConfig",
    report="toy total {total} with beta {beta}, mode {mode} ({config.steps} steps)",
    run_folder=False,
)


def test_one_registry_entry_adds_a_recipe(capsys, monkeypatch):
    monkeypatch.setitem(cli.RECIPES, "toy", TOY)
    code, out, _ = _main(capsys, "--help")
    assert code == 0 and "toy" in out and "a toy recipe of the tests" in out
    code, out, _ = _main(capsys, "toy", "--help")
    assert code == 0 and "Echoes its settings." in out
    assert "how many steps the toy takes (default: 3)" in out  # from the docstring
    for flag in ("--steps", "--scale", "--limit", "--mode", "--shout", "--no-shout", "--beta"):
        assert flag in out
    assert "--out-dir" not in out and "--hook" not in out and "--reference" not in out
    code, out, _ = _main(capsys, "toy", "--steps", "4", "--beta", "0.5", "--mode", "b")
    assert code == 0, out
    assert "toy total 2.0 with beta 0.5, mode b (4 steps)" in out
    code, _, err = _main(capsys, "toy", "--stesp", "4")
    assert code == 2 and "did you mean --steps?" in err


def test_a_recipe_with_a_run_folder_gets_its_options_and_summary(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(cli.RECIPES, "toy", dataclasses.replace(TOY, run_folder=True))
    out_dir = tmp_path / "toy"
    code, out, _ = _main(capsys, "toy", "--out-dir", str(out_dir), "--scale", "2", "--no-plot")
    assert code == 0
    assert "toy ran in its folder" in out and f"; outputs in {out_dir}" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["total"] == 6.0 and summary["interrupted"] is False
    assert summary["devices"] == 1
    config = summary["config"]
    assert config["out_dir"] == str(out_dir) and config["plot"] is False
    assert config["scale"] == 2.0 and config["beta"] == 0.25 and "reference" not in config


def test_nested_fields_set_from_the_command_line_reach_the_config():
    from rlgen.recipes.addition import AdditionConfig

    assert cli.parse(["addition"]).config == AdditionConfig()
    command = cli.parse([
        "addition", "--beta", "0.05", "--kl-estimator", "k2", "--num-generations", "4",
        "--epsilon-high", "0.28", "--max-grad-norm", "none", "--mask-truncated-completions",
        "--top-p", "0.9", "--seed", "3", "--out-dir", "elsewhere", "--no-progress",
    ])
    grpo = command.config.grpo
    assert (grpo.beta, grpo.kl_estimator, grpo.num_generations) == (0.05, "k2", 4)
    assert (grpo.epsilon_high, grpo.max_grad_norm) == (0.28, None)
    assert grpo.mask_truncated_completions is True
    assert grpo.reference == "initial"  # pinned by the recipe
    assert command.config.sampling.top_p == 0.9 and command.config.seed == 3
    assert command.options == cli.RunOptions(out_dir="elsewhere", progress=False)


def test_nested_ppo_fields_of_the_cartpole_recipe():
    command = cli.parse(
        ["cartpole", "--clip-param", "0.3", "--no-anneal-lr", "--target-kl", "0.02"]
    )
    assert command.options is None  # no run folder
    config = command.config
    assert config.ppo.clip_param == 0.3 and config.ppo.target_kl == 0.02
    assert config.anneal_lr is False
    assert config.ppo.num_minibatches == 4  # the recipe's tuned value, not PPOConfig's


def test_choices_come_from_the_declaring_config(capsys):
    fields = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    options = {o.name: o for o in cli.recipe_options(cli.RECIPES["addition"]).options[1]}
    for name in ("kl_estimator", "loss_aggregation", "scale_rewards"):
        assert options[name].choices == option_choices(fields[name])
    code, _, err = _main(capsys, "addition", "--scale-rewards", "rank")
    assert code == 2 and "invalid choice: 'rank'" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["addition", "--reference", "batch"], "unrecognized arguments: --reference"),
        (["addition", "--axis-name", "x"], "unrecognized arguments: --axis-name"),
        (["addition", "--gamma", "2"], "`gamma` must lie in [0, 1]"),
        (["cartpole", "--num-envs", "6"], "must be divisible by config.num_minibatches"),
    ],
)
def test_pinned_and_unexposable_fields_and_config_checks_are_usage_errors(
    capsys, monkeypatch, tmp_path, argv, message
):
    monkeypatch.chdir(tmp_path)  # were the option taken, the run would write here
    code, _, err = _main(capsys, *argv)
    assert code == 2 and message in err and "usage:" in err


@dataclasses.dataclass(frozen=True)
class ClashConfig:
    """A config whose own field and a nested field would be the same option."""

    beta: float = 0.1
    grpo: GRPOConfig = nested(GRPOConfig())


@dataclasses.dataclass(frozen=True)
class DevicesConfig:
    """A config with a field named like a run option."""

    devices: int = 2


@pytest.mark.parametrize(
    "config, run_folder, message",
    [
        ("ClashConfig", False, "ClashConfig.beta and ClashConfig.grpo.beta would both be the "
                               "option --beta"),
        ("DevicesConfig", True, "RunOptions.devices and DevicesConfig.devices would both be"),
    ],
)
def test_a_name_clash_is_an_error_when_the_parser_is_built(monkeypatch, config, run_folder,
                                                           message):
    clash = dataclasses.replace(TOY, name="clash", config=config, run_folder=run_folder)
    monkeypatch.setitem(cli.RECIPES, "clash", clash)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        cli.build_parser()
    cli.build_parser(["addition"])  # the other recipes' parsers are still built


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


def test_help_imports_no_recipe_and_devices_are_set_before_jax_starts():
    proc = _python(
        "import sys\nfrom rlgen import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('jax imported:', 'jax' in sys.modules)\n"
        "try:\n    cli.main(['addition', '--devices', '3', '--help'])\nexcept SystemExit:\n"
        "    pass\nimport jax\nprint('devices:', jax.device_count())\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "jax imported: False" in proc.stdout and "devices: 3" in proc.stdout


def test_cartpole_runs_from_the_command_line(capsys):
    code, out, _ = _main(capsys, "cartpole", "--total-timesteps", "64", "--num-envs", "4",
                         "--num-steps", "16", "--eval-episodes", "2", "--seed", "1")
    assert code == 0
    assert "PPO CartPole-v1: mean greedy return" in out and "over 2 episodes after 64 steps" in out
