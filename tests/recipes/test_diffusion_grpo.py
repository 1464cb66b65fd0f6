"""`rlgen diffusion-grpo`: seeded, shortened runs from the pretrained digit diffusion
model (`digit_diffusion_run`, shared by the tests): GRPO (DDPO) raises the share of
samples drawn as the target digit and every other method raises the reward; a run that
pretrains itself writes both phases; the files; the settings' errors."""

import json

import numpy as np
import pytest

from rlgen import cli
from rlgen.recipes import diffusion_grpo as R

# The tests that fine-tune the shared pretrained model run on one worker (make test uses
# --dist loadgroup), so only that worker waits while the model is made.
pytestmark = pytest.mark.xdist_group("digit_diffusion")

SHORT = dict(sample_steps=10, batch_size=64, num_samples=200, beta=0.0)


def _run(tmp_path, name, **kwargs):
    config = R.DiffusionGRPOConfig(**{**SHORT, **kwargs})
    options = cli.RunOptions(out_dir=str(tmp_path / name), progress=False, checkpoint_every=1000)
    return cli.run_recipe("diffusion-grpo", config, options, echo=lambda *_: None)


def test_grpo_raises_the_target_share(digit_diffusion_run, tmp_path):
    summary = _run(tmp_path, "grpo", pretrained=digit_diffusion_run, steps=30,
                   learning_rate=3e-4)
    out = tmp_path / "grpo"
    # measured (seed 0): 8% -> 82% of the samples classified as a 3
    assert summary["target_share_after"] >= summary["target_share_before"] + 0.3, summary
    assert summary["mean_reward_after"] > summary["mean_reward_before"] + 0.2, summary
    written = json.loads((out / "summary.json").read_text())
    assert written["target_share_after"] == summary["target_share_after"]
    assert written["method"] == "grpo" and written["config"]["target"] == 3
    for name in ("samples_before", "samples_after"):
        images = np.load(out / f"{name}.npz")["images"]
        assert images.shape == (200, 8, 8) and images.min() >= 0 and images.max() <= 16
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "reward_curve.png").exists()
    records = cli.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("phase") == "grpo"] == list(range(30))


def test_a_run_without_a_pretrained_model_pretrains_first(tmp_path):
    summary = _run(tmp_path, "fresh", pretrain_steps=20, steps=2, num_samples=20)
    records = cli.read_metrics(tmp_path / "fresh" / "metrics.jsonl")
    steps = [r["step"] for r in records if r.get("phase") == "pretrain" and "epoch" not in r]
    assert steps == list(range(20))
    assert [r["step"] for r in records if r.get("phase") == "grpo"] == [0, 1]
    assert np.isfinite(summary["mean_reward_after"])


@pytest.mark.parametrize("method", [m for m in R.METHODS if m != "grpo"])
def test_every_method_raises_the_reward(digit_diffusion_run, tmp_path, method):
    steps = 6 if method in ("draft", "refl") else 10
    summary = _run(tmp_path, method, method=method, pretrained=digit_diffusion_run, steps=steps,
                   learning_rate=3e-4 if method not in ("draft", "refl") else 3e-5)
    assert summary["method"] == method
    assert summary["mean_reward_after"] > summary["mean_reward_before"] + 0.05, summary


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": 10}, "`target`"),
        ({"method": "ppo"}, "`method`"),
        ({"pretrained": "/no/such/folder"}, "`pretrained`"),
        ({"method": "grpo-fast", "window": 6, "sample_steps": 10}, "`window`"),
        ({"method": "dpo", "batch_size": 33}, "`batch_size`"),
        ({"learning_rate": -1.0}, "`learning_rate`"),
    ],
)
def test_settings_errors_name_the_field(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        R.DiffusionGRPOConfig(**kwargs)
