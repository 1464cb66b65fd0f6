"""`rlgen digits flow`: a seeded, shortened run (in a run folder, as the `rlgen` command
runs it) must cut the Fréchet distance to held-out digits at least fivefold and draw the
requested class at least half the time (untrained: noise, a tenth); the files it writes;
the settings' errors."""

import json

import numpy as np
import pytest

from rlgen import cli
from rlgen.generative.flow import FlowConfig
from rlgen.recipes.digits import SAMPLES_NPZ
from rlgen.recipes.digits.flow import FlowDigitsConfig


def test_shortened_run_learns_class_conditional_digits(tmp_path):
    config = FlowDigitsConfig(
        hidden=128, depth=1, steps=300, batch_size=64, learning_rate=3e-3,
        num_samples=200,
    )
    options = cli.RunOptions(out_dir=str(tmp_path), progress=False, plot=False,
                             checkpoint_every=300)
    summary = cli.run_recipe("digits flow", config, options, echo=lambda *_: None)
    # measured (seed 0): Fréchet 97.1 -> 8.3 (floor 3.3), class share 0.12 -> 0.70
    assert summary["frechet_after"] < 0.2 * summary["frechet_before"], summary
    assert summary["class_share_before"] < 0.2 and summary["class_share_after"] > 0.5, summary
    assert summary["straightness"] > 0 and summary["coupling"] == "ot"
    assert (summary["sampler"], summary["sample_steps"], summary["guidance_scale"]) == (
        "heun", 10, 1.5
    )
    saved = np.load(tmp_path / SAMPLES_NPZ)
    assert saved["images"].shape == (200, 8, 8) and saved["labels"].shape == (200,)
    assert 0.0 <= saved["images"].min() and saved["images"].max() <= 16.0
    np.testing.assert_array_equal(np.bincount(saved["labels"]), np.full(10, 20))
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["frechet_after"] == summary["frechet_after"]
    records = [
        r for r in cli.read_metrics(tmp_path / "metrics.jsonl")
        if "pair_cost" in r and "epoch" not in r  # one record a step (and one an epoch)
    ]
    assert [r["step"] for r in records] == list(range(300))
    from rlgen.callbacks import ModelCheckpoint

    assert ModelCheckpoint.latest_step(tmp_path / "checkpoints" / "train") == 300


def test_settings_errors():
    with pytest.raises(ValueError, match="`flow.num_classes` = 10"):
        FlowDigitsConfig(flow=FlowConfig(num_classes=3))
    with pytest.raises(ValueError, match="`flow.reflow` = False"):
        FlowDigitsConfig(flow=FlowConfig(num_classes=10, reflow=True))
    with pytest.raises(ValueError, match="unknown `sampler` 'rk4'"):
        FlowDigitsConfig(sampler="rk4")
    with pytest.raises(ValueError, match="`sample_steps` must be >= 1"):
        FlowDigitsConfig(sample_steps=0)
