"""Sample quality, measured: Fréchet distances in the digit classifier's feature space,
class shares, and kernel MMD. Host-side NumPy in float64 (evaluation, not training).

* `frechet_distance`: the Fréchet (2-Wasserstein) distance between Gaussians fitted to two
  sets of features, as FID computes it (Heusel et al. 2017, arXiv 1706.08500):
  ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.
* `digit_quality`: a sample of 8x8 digits judged by the shipped
  `rlgen.models.classifier.DigitClassifier`: its Fréchet distance to the held-out test
  split in the classifier's 128 features, the classifier's mean confidence, and, for
  class-conditional samples, the share the classifier assigns to the requested class.
* `digit_frechet_floor`: the same distance for real digits (the training split against the
  test split): what a perfect model of the training data would score.
* `kernel_mmd`: the unbiased squared maximum mean discrepancy with Gaussian kernels
  (Gretton et al. 2012), for low-dimensional data such as two moons.

The Fréchet distance of a finite sample is biased upwards, more so for small samples:
compare figures computed from samples of the same size.
"""

from __future__ import annotations

import functools

import numpy as np

from rlgen import _checks

__all__ = [
    "digit_class_frechet",
    "digit_frechet_floor",
    "digit_quality",
    "frechet_distance",
    "kernel_mmd",
]


def _features_2d(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"`{name}` must have shape [N, F] with N >= 2, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` holds non-finite values")
    return x


def frechet_distance(a, b) -> float:
    """The Fréchet distance between Gaussian fits of ``a [N, F]`` and ``b [M, F]``.

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` with the sample
    means and covariances (``ddof = 1``). The trace of the square root is computed
    through symmetric eigendecompositions, ``tr((S_a S_b)^(1/2)) = sum_i sqrt(l_i)`` with
    ``l_i`` the eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)`` (the same spectrum), which
    stays exact for the singular covariances of ReLU features. 0 for identical sets.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> a = rng.normal(size=(2000, 2))
      >>> round(frechet_distance(a, a), 6), round(frechet_distance(a, a + [3.0, 0.0]), 3)
      (0.0, 9.0)
    """
    a, b = _features_2d(a, "a"), _features_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"`a` and `b` need the same features, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = (np.atleast_2d(np.cov(x, rowvar=False)) for x in (a, b))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    spectrum = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sum(np.sqrt(np.clip(spectrum, 0.0, None)))
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    return float(max(value, 0.0))


def kernel_mmd(a, b, bandwidths=None) -> float:
    """Unbiased squared MMD between ``a [N, D]`` and ``b [M, D]`` (Gretton et al. 2012).

    The kernel is a sum of Gaussians ``exp(-||x - y||^2 / (2 h^2))`` over ``bandwidths``
    (default: the median pairwise distance of the pooled points times 0.5, 1 and 2).
    About 0 (either sign) for samples of one distribution; larger the more they differ.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> a, b = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
      >>> abs(kernel_mmd(a, b)) < 0.01, kernel_mmd(a, b + 2.0) > 0.5
      (True, True)
    """
    a, b = _features_2d(a, "a"), _features_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"`a` and `b` need the same dimension, got {a.shape} and {b.shape}")
    pooled = np.concatenate([a, b])
    sq = np.sum((pooled[:, None] - pooled[None]) ** 2, axis=-1)
    if bandwidths is None:
        median = np.sqrt(np.median(sq[np.triu_indices(len(pooled), 1)]))
        bandwidths = median * np.array([0.5, 1.0, 2.0])
    bandwidths = np.asarray(bandwidths, np.float64).reshape(-1)
    if bandwidths.size == 0 or np.any(bandwidths <= 0):
        raise ValueError(f"`bandwidths` must be positive, got {bandwidths}")
    k = sum(np.exp(-sq / (2.0 * h**2)) for h in bandwidths)
    n = len(a)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    m = len(b)
    term_a = (kaa.sum() - np.trace(kaa)) / (n * (n - 1))
    term_b = (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
    return float(term_a + term_b - 2.0 * kab.mean())


def _digits_images(images, name="images") -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(f"`{name}` must have shape [N, 8, 8], got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError(f"`{name}` holds non-finite values")
    if images.min() < 0.0 or images.max() > 16.0:
        raise ValueError(
            f"`{name}` must be on the digits' 0..16 scale, got values in "
            f"[{images.min():g}, {images.max():g}]"
        )
    return images


def _classify(images):
    from rlgen.models.classifier import load_digit_classifier

    model = load_digit_classifier()
    feats, probs = [], []
    for start in range(0, len(images), 512):
        chunk = images[start : start + 512]
        f = model.features(chunk)
        feats.append(np.asarray(f, np.float64))
        probs.append(np.asarray(_softmax(np.asarray(model.head(f), np.float64))))
    return np.concatenate(feats), np.concatenate(probs)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@functools.cache
def _test_features() -> np.ndarray:
    from rlgen.datasets import load_digits

    return _classify(load_digits("test")[0])[0]


def digit_quality(images, labels=None) -> dict[str, float]:
    """The classifier's verdict on generated digits ``images [N, 8, 8]`` (0..16 scale).

    Returns ``frechet`` (Fréchet distance of the classifier's features to those of the
    held-out test split; lower is better), ``confidence`` (mean top-class probability)
    and, when ``labels [N]`` (the requested classes) are given, ``class_share`` (the share
    of samples classified as their requested class).

    Example:
      >>> from rlgen.datasets import load_digits
      >>> images, labels = load_digits("train")
      >>> q = digit_quality(images[:500], labels[:500])
      >>> q["class_share"] > 0.97, q["frechet"] < 5.0
      (True, True)
    """
    images = _digits_images(images)
    if len(images) < 2:
        raise ValueError(f"`images` needs at least 2 samples, got {len(images)}")
    feats, probs = _classify(images)
    out = {
        "frechet": frechet_distance(feats, _test_features()),
        "confidence": float(probs.max(-1).mean()),
    }
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"`labels` must be [N] = [{len(images)}] integer classes, got "
                f"{labels.shape} {labels.dtype}"
            )
        _checks.check_ids(labels, 10, "labels")
        out["class_share"] = float(np.mean(probs.argmax(-1) == labels))
    return out


@functools.cache
def _class_features(digit: int) -> np.ndarray:
    from rlgen.datasets import SPLITS, load_digits

    images = [x[y == digit] for x, y in (load_digits(split) for split in SPLITS)]
    return _classify(np.concatenate(images))[0]


def digit_class_frechet(images, digit: int) -> float:
    """The Fréchet distance of ``images [N, 8, 8]`` (0..16) to the real digits of one class.

    In the digit classifier's features (as `digit_quality`), against every real digit of
    class ``digit`` (both splits, about 180): how much a model's drawings of that digit
    look like real ones. A model drawing good digits of the class scores far lower than
    one drawing other digits or artefacts the classifier happens to accept.

    Example:
      >>> from rlgen.datasets import load_digits
      >>> images, labels = load_digits("test")
      >>> digit_class_frechet(images[labels == 3], 3) < digit_class_frechet(images[labels == 8], 3)
      True
    """
    images = _digits_images(images)
    digit = _checks.check_int(digit, "digit", low=0)
    if digit >= 10:
        raise ValueError(f"`digit` must be a class id in [0, 10), got {digit}")
    return frechet_distance(_classify(images)[0], _class_features(digit))


@functools.cache
def digit_frechet_floor(num_samples: int = 1000, seed: int = 0) -> float:
    """The Fréchet distance of ``num_samples`` real training digits to the test split.

    The score of a model that reproduces the training data exactly, at the same sample
    size as the model's figure (the distance's small-sample bias included).

    Example:
      >>> 0.0 < digit_frechet_floor(500) < 5.0
      True
    """
    from rlgen.datasets import load_digits

    _checks.check_int(num_samples, "num_samples", low=2)
    images = load_digits("train")[0]
    pick = np.random.default_rng(seed).choice(len(images), num_samples, replace=True)
    return frechet_distance(_classify(images[pick])[0], _test_features())
