"""rlgen.quality: Fréchet distance and MMD against float64 references; the digit verdict."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg

from rlgen import datasets, quality


def _frechet_reference(a, b):
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = np.real(linalg.sqrtm(ca @ cb))
    return np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2.0 * root)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(10, 40), st.integers(0, 2**31 - 1))
def test_frechet_distance_matches_the_sqrtm_formula(dim, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    b = rng.normal(size=(n + 7, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    np.testing.assert_allclose(
        quality.frechet_distance(a, b), _frechet_reference(a, b), rtol=1e-6, atol=1e-8
    )
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_shift_is_its_squared_length_and_singular_is_fine():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3))
    assert quality.frechet_distance(a, a + [1.0, 2.0, 2.0]) == pytest.approx(9.0, rel=1e-9)
    dead = np.concatenate([a, np.zeros((500, 2))], axis=1)  # ReLU features that never fire
    assert quality.frechet_distance(dead, dead) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="same features"):
        quality.frechet_distance(a, a[:, :2])
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        quality.frechet_distance(a[0], a)


def _mmd_reference(a, b, h):
    def k(x, y):
        return sum(
            np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * s**2)) for s in h
        )

    n, m = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return (
        (kaa.sum() - np.trace(kaa)) / (n * (n - 1))
        + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
        - 2 * k(a, b).mean()
    )


def test_kernel_mmd_matches_a_reference_and_separates_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 2)), rng.normal(size=(30, 2)) + 0.5
    np.testing.assert_allclose(
        quality.kernel_mmd(a, b, [0.7, 1.3]), _mmd_reference(a, b, [0.7, 1.3]), rtol=1e-10
    )
    same = quality.kernel_mmd(rng.normal(size=(400, 2)), rng.normal(size=(400, 2)))
    apart = quality.kernel_mmd(rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) + 1.0)
    assert abs(same) < 0.01 and apart > 0.2
    with pytest.raises(ValueError, match="bandwidths"):
        quality.kernel_mmd(a, b, [0.0])


def test_digit_quality_tells_digits_from_noise():
    images, labels = datasets.load_digits("test")
    real = quality.digit_quality(images, labels)
    assert real["frechet"] == pytest.approx(0.0, abs=1e-6)  # the test split against itself
    assert real["class_share"] > 0.97 and real["confidence"] > 0.9
    noise = np.random.default_rng(0).uniform(0, 16, size=(360, 8, 8))
    judged = quality.digit_quality(noise, labels)
    assert judged["frechet"] > 20 * quality.digit_frechet_floor(360)
    assert judged["class_share"] < 0.3
    wrong = quality.digit_quality(images, (labels + 1) % 10)
    assert wrong["class_share"] < 0.05


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((4, 64)), None, r"\[N, 8, 8\]"),
        (np.full((4, 8, 8), 17.0), None, "0..16 scale"),
        (np.full((4, 8, 8), np.nan), None, "non-finite"),
        (np.zeros((4, 8, 8)), np.array([0, 1, 2, 10]), r"class ids in \[0, 10\)"),
        (np.zeros((4, 8, 8)), np.array([0.0, 1, 2, 3]), "integer classes"),
    ],
)
def test_digit_quality_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        quality.digit_quality(images, labels)


def test_the_floor_is_small_and_grows_for_small_samples():
    assert 0.0 < quality.digit_frechet_floor(1000) < quality.digit_frechet_floor(100) < 10.0
