"""The common parts of `rlgen digits FAMILY` (rlgen.recipes.digits)."""

import json

import numpy as np
import pytest

from rlgen.cli import RunFolder, RunOptions
from rlgen.datasets import load_digits, to_unit
from rlgen.recipes import digits


def test_batches_resume_where_they_left_off_and_cover_each_epoch():
    x = np.arange(20, dtype=np.float32)[:, None]
    labels = np.arange(20) % 10
    batches = digits.epoch_batches(x, labels, 6, seed=3)  # 3 batches an epoch, 2 rows dropped
    run = [b for _, b in zip(range(7), batches(0), strict=False)]
    epoch = np.concatenate([b["images"][:, 0] for b in run[:3]])
    assert len(set(epoch)) == 18  # no row twice within an epoch
    resumed = [b for _, b in zip(range(3), batches(4), strict=False)]
    for a, b in zip(run[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(b["labels"], b["images"][:, 0].astype(int) % 10)
    assert not np.array_equal(run[0]["images"], run[3]["images"])  # epochs reshuffle
    with pytest.raises(ValueError, match="batch_size"):
        digits.epoch_batches(x, None, 21, seed=0)


def test_finish_judges_and_writes_the_samples(tmp_path):
    folder = RunFolder(RunOptions(out_dir=str(tmp_path), progress=False))
    images, labels = load_digits("test")
    real = to_unit(images[:200]).reshape(200, 64)
    noise = np.random.default_rng(0).uniform(-1, 1, size=(200, 64))
    results = digits.finish(
        folder, family="vae", samples=real, before=noise, labels=labels[:200], seconds=1.23,
        extra={"note": 1},
    )
    assert results["frechet_after"] < results["frechet_floor"] < results["frechet_before"]
    assert results["class_share_after"] > 0.95 > 0.5 > results["class_share_before"]
    assert results["seconds"] == 1.2 and results["note"] == 1 and results["num_samples"] == 200
    saved = np.load(tmp_path / digits.SAMPLES_NPZ)
    np.testing.assert_allclose(saved["images"], images[:200], atol=1e-5)
    np.testing.assert_array_equal(saved["labels"], labels[:200])
    assert (tmp_path / digits.SAMPLES_PNG).stat().st_size > 1000
    json.dumps(results)  # the summary can hold it


def test_finish_refuses_diverged_samples(tmp_path):
    folder = RunFolder(RunOptions(out_dir=str(tmp_path), progress=False, plot=False))
    bad = np.full((10, 64), np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        digits.finish(folder, family="gan", samples=bad, before=bad * 0, seconds=0.0)
    assert not (tmp_path / digits.SAMPLES_NPZ).exists()


def test_sample_labels_make_one_row_per_class():
    labels = digits.sample_labels(100)
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 10))
    assert np.all(np.diff(labels) >= 0)
