"""``rlgen digits diffusion``: a seeded, shortened run (300 steps of a smaller denoiser, 200
samples by 20 DDIM steps) must cut the Fréchet distance to held-out digits by a factor of
3 and raise the share of samples drawn as the requested class by 15 points, and write its
files; the settings' checks."""

import json

import numpy as np
import pytest

from rlgen import cli
from rlgen.callbacks import ModelCheckpoint
from rlgen.generative.diffusion import DiffusionConfig
from rlgen.recipes.digits.diffusion import DiffusionDigitsConfig

SHORT = DiffusionDigitsConfig(
    hidden=128,
    depth=2,
    steps=300,
    batch_size=64,
    learning_rate=2e-3,
    warmup_steps=20,
    num_samples=200,
    sample_steps=20,
    diffusion=DiffusionConfig(prediction="v", ema_decay=0.95),
)


def test_shortened_run_learns_the_digits_and_their_classes(tmp_path):
    out = tmp_path / "run"
    options = cli.RunOptions(out_dir=str(out), progress=False)
    summary = cli.run_recipe("digits diffusion", SHORT, options, echo=lambda *_: None)
    # measured: Fréchet distance 95.6 -> 15.4, class share 0.12 -> 0.37
    assert summary["frechet_after"] < summary["frechet_before"] / 3, summary
    assert summary["class_share_after"] >= summary["class_share_before"] + 0.15, summary
    assert (summary["family"], summary["dataset"], summary["num_samples"]) == (
        "diffusion", "digits", 200
    )
    assert (summary["sampler"], summary["sample_steps"], summary["guidance_scale"]) == (
        "ddim", 20, 1.5
    )
    written = json.loads((out / "summary.json").read_text())
    assert written["frechet_after"] == summary["frechet_after"]
    assert written["config"]["prediction"] == "v" and written["config"]["steps"] == 300
    with np.load(out / "samples.npz") as samples:
        images, labels = samples["images"], samples["labels"]
    assert images.shape == (200, 8, 8) and 0.0 <= images.min() and images.max() <= 16.0
    np.testing.assert_array_equal(labels, np.sort(np.arange(200) % 10))
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = cli.read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in records if r.get("phase") == "train" and "epoch" not in r]
    assert steps == list(range(300))
    assert ModelCheckpoint.latest_step(out / "checkpoints" / "train") == 300


def test_settings_pin_the_data_range_and_check_the_sampler():
    with pytest.raises(ValueError, match="diffusion.clip_x0"):
        DiffusionDigitsConfig(diffusion=DiffusionConfig(clip_x0=None))
    with pytest.raises(ValueError, match="`sample_steps` must be <= num_timesteps = 100"):
        DiffusionDigitsConfig(diffusion=DiffusionConfig(num_timesteps=100), sample_steps=200)
    with pytest.raises(ValueError, match="unknown `sampler` 'euler'"):
        DiffusionDigitsConfig(sampler="euler")
