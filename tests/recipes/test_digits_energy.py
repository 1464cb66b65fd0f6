"""``rlgen digits energy``: its settings, and a shortened seeded run (in a run folder, as the
``rlgen`` command runs it) whose samples must come at least 4 times closer to the held-out
digits in the classifier's Fréchet distance."""

import dataclasses
import json

import numpy as np
import pytest

from rlgen import cli
from rlgen.generative.energy import EnergyConfig
from rlgen.recipes.digits import SAMPLES_NPZ, SAMPLES_PNG
from rlgen.recipes.digits import energy as R


def test_settings_nest_the_energy_config_with_the_bounds_pinned():
    config = R.EnergyDigitsConfig()
    assert isinstance(config.energy, EnergyConfig)
    assert (config.energy.init_low, config.energy.init_high) == (-1.0, 1.0)
    fields = {f.name for f in dataclasses.fields(R.EnergyDigitsConfig)}
    assert not fields & {f.name for f in dataclasses.fields(EnergyConfig)}  # nested, not copied
    with pytest.raises(ValueError, match="energy.init_low"):
        R.EnergyDigitsConfig(energy=EnergyConfig(init_low=0.0, init_high=16.0))
    with pytest.raises(ValueError, match="num_samples"):
        R.EnergyDigitsConfig(num_samples=20_000)
    with pytest.raises(ValueError, match="activation"):
        R.EnergyDigitsConfig(activation="relu")


def test_shortened_run_improves_the_frechet_distance(tmp_path):
    """120 steps of a 128-wide model (~10 s): FD ~150 -> ~20 at 200 samples; required:
    at least 4 times lower."""
    config = R.EnergyDigitsConfig(
        hidden=128, steps=120, batch_size=64, num_samples=200,
        energy=dataclasses.replace(R.EnergyDigitsConfig().energy, buffer_size=1000),
    )
    options = cli.RunOptions(out_dir=str(tmp_path / "run"), progress=False, checkpoint_every=500)
    summary = cli.run_recipe("digits energy", config, options, echo=lambda *_: None)
    before, after = summary["frechet_before"], summary["frechet_after"]
    assert after * 4 < before, (before, after)
    assert summary["family"] == "energy" and summary["dataset"] == "digits"
    out = tmp_path / "run"
    written = json.loads((out / "summary.json").read_text())
    assert written["frechet_after"] == after and written["config"]["buffer_size"] == 1000
    saved = np.load(out / SAMPLES_NPZ)
    assert saved["images"].shape == (200, 8, 8) and "labels" not in saved
    assert saved["images"].min() >= 0.0 and saved["images"].max() <= 16.0
    assert (out / SAMPLES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [r for r in cli.read_metrics(out / "metrics.jsonl") if "epoch" not in r]
    assert [r["step"] for r in records] == list(range(120))
    assert all(r["skipped"] == 0.0 for r in records)
