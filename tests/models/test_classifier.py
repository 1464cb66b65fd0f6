"""The shipped digit classifier, and the script that made it."""

import numpy as np
import pytest

from rlgen.datasets import load_digits
from rlgen.models import classifier


def test_the_shipped_classifier_is_accurate_on_held_out_digits():
    images, labels = load_digits("test")
    model = classifier.load_digit_classifier()
    accuracy = np.mean(np.argmax(model(images), -1) == labels)
    assert accuracy >= 0.98
    assert model.features(images).shape == (360, classifier.FEATURES)


def test_the_training_script_makes_a_classifier():
    model, accuracy = classifier.train_digit_classifier(steps=500)
    assert accuracy > 0.9  # the shipped one trained 3000 steps: 99%


def test_bad_images_are_named():
    model = classifier.load_digit_classifier()
    with pytest.raises(ValueError, match="rank 3"):
        model(np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match=r"\[B, 8, 8\]"):
        model(np.zeros((2, 8, 9), np.float32))
    with pytest.raises(TypeError, match="images"):
        model(np.zeros((2, 8, 8), np.int32))


def test_a_weights_file_that_does_not_fit_is_an_error(tmp_path, monkeypatch):
    bad = tmp_path / "w.npz"
    np.savez(bad, **{"hidden/kernel": np.zeros((3, 3))})
    monkeypatch.setattr(classifier, "WEIGHTS", bad)
    classifier.load_digit_classifier.cache_clear()
    try:
        with pytest.raises(ValueError, match="does not fit DigitClassifier"):
            classifier.load_digit_classifier()
    finally:
        classifier.load_digit_classifier.cache_clear()
