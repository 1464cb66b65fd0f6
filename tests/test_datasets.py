"""rlgen.datasets: the digits split, the scales, two moons."""

import numpy as np
import pytest

from rlgen import datasets


def test_the_digits_split_is_fixed_stratified_and_complete():
    train_x, train_y = datasets.load_digits("train")
    test_x, test_y = datasets.load_digits("test")
    assert train_x.shape == (1437, 8, 8) and test_x.shape == (360, 8, 8)
    assert train_x.dtype == np.float32 and train_y.dtype == np.int32
    counts = np.bincount(test_y)  # stratified: 10% of each class (35 to 37 digits)
    assert counts.min() >= 35 and counts.max() <= 37
    from sklearn.datasets import load_digits

    every = load_digits()
    pooled = np.concatenate([train_x, test_x]).reshape(1797, -1)
    # the two splits are a partition of the data set (as multisets of rows)
    order = np.lexsort(pooled.T)
    ref = every.data.astype(np.float32)
    np.testing.assert_array_equal(pooled[order], ref[np.lexsort(ref.T)])
    again = datasets.load_digits("test")[0]
    np.testing.assert_array_equal(again, test_x)
    with pytest.raises(ValueError):
        test_x[0, 0, 0] = 1.0  # read-only: a caller cannot corrupt the cached split


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="split"):
        datasets.load_digits("validation")


def test_unit_scale_round_trip_and_range_error():
    images = datasets.load_digits("test")[0]
    unit = datasets.to_unit(images)
    assert unit.min() == -1.0 and unit.max() == 1.0
    np.testing.assert_allclose(datasets.from_unit(unit), images, atol=1e-5)
    np.testing.assert_array_equal(datasets.from_unit(np.array([-3.0, 3.0])), [0.0, 16.0])
    with pytest.raises(ValueError, match="0..16"):
        datasets.to_unit(images / 16.0 - 0.5)  # already on another scale


def test_two_moons_is_standardised_and_seeded():
    a = datasets.two_moons(2000, seed=1)
    assert a.shape == (2000, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(a.std(0), 1.0, atol=0.1)
    np.testing.assert_array_equal(a, datasets.two_moons(2000, seed=1))
    assert not np.array_equal(a, datasets.two_moons(2000, seed=2))
    with pytest.raises(ValueError, match="`n`"):
        datasets.two_moons(0)
