"""Small data sets that ship with scikit-learn: nothing is downloaded.

* `load_digits`: the 1,797 8x8 handwritten digits of UCI (Alpaydin and Kaynak 1998) as
  packaged by scikit-learn, on their own 0..16 grey-level scale, split once and for all
  into a training split (1,437 images) and a held-out test split (360 images), stratified
  by class with a fixed seed, so every family, the classifier and the quality figures
  use the same held-out digits.
* `to_unit` / `from_unit`: the 0..16 scale to the [-1, 1] scale the generative models
  train on, and back.
* `two_moons`: scikit-learn's two interleaving half circles, standardised.

scikit-learn is imported when a data set is loaded, not with this module.
"""

from __future__ import annotations

import functools

import numpy as np

from rlgen import _checks

#: The splits of `load_digits`.
SPLITS = ("train", "test")
#: The digits' grey levels run from 0 to this value.
DIGITS_MAX = 16.0
#: Images and classes of the digits.
DIGITS_SHAPE, NUM_CLASSES = (8, 8), 10
_TEST_SIZE, _SPLIT_SEED = 360, 0


@functools.cache
def _digits_splits():
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    data = sk_load_digits()
    images = data.images.astype(np.float32)
    labels = data.target.astype(np.int32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=_TEST_SIZE, random_state=_SPLIT_SEED, stratify=labels
    )
    for array in (train_x, test_x, train_y, test_y):
        array.setflags(write=False)
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits of one split: ``(images [N, 8, 8] float32 on 0..16, labels [N] int32)``.

    ``"train"`` has 1,437 images and ``"test"`` 360 (35 to 37 per class), a stratified split
    fixed for good (scikit-learn's ``train_test_split`` with seed 0). The arrays are
    read-only; copy them to modify.

    Example:
      >>> images, labels = load_digits("test")
      >>> images.shape, labels.shape, float(images.max()), int(labels.max())
      ((360, 8, 8), (360,), 16.0, 9)
    """
    _checks.check_choice(split, SPLITS, "split")
    return _digits_splits()[split]


def to_unit(images) -> np.ndarray:
    """Digits on the 0..16 scale -> float32 on [-1, 1] (``x / 8 - 1``), same shape.

    Raises:
      ValueError: an image value lies outside [0, 16] (wrong scale?).

    Example:
      >>> to_unit(np.array([0.0, 8.0, 16.0]))
      array([-1.,  0.,  1.], dtype=float32)
    """
    images = np.asarray(images, np.float32)
    if images.size and (images.min() < 0.0 or images.max() > DIGITS_MAX):
        raise ValueError(
            f"`images` must be on the digits' 0..{DIGITS_MAX:g} scale, got values in "
            f"[{images.min():g}, {images.max():g}]"
        )
    return images / (DIGITS_MAX / 2) - 1.0


def from_unit(x) -> np.ndarray:
    """[-1, 1] model outputs -> the digits' 0..16 scale, clipped (float32, same shape).

    Example:
      >>> from_unit(np.array([-1.5, 0.0, 1.0]))
      array([ 0.,  8., 16.], dtype=float32)
    """
    x = np.asarray(x, np.float32)
    return np.clip((x + 1.0) * (DIGITS_MAX / 2), 0.0, DIGITS_MAX)


def two_moons(n: int, *, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """``n`` points of two interleaving half circles, standardised: float32 ``[n, 2]``.

    scikit-learn's ``make_moons`` with Gaussian noise of std ``noise``, shuffled by
    ``seed``, then shifted and scaled to zero mean and unit variance per coordinate
    (with the statistics of the noise-free moons, so every draw shares one scale).

    Example:
      >>> two_moons(4, seed=1).shape
      (4, 2)
    """
    from sklearn.datasets import make_moons

    _checks.check_positive_int(n, "n")
    _checks.check_range(noise, "noise", 0.0)
    _checks.check_int(seed, "seed", low=0)
    points, _ = make_moons(n, noise=noise, random_state=seed)
    clean, _ = make_moons(1000, noise=0.0)
    return ((points - clean.mean(0)) / clean.std(0)).astype(np.float32)
