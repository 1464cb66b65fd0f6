"""`rlgen digits FAMILY`: each generative family trained on the 8x8 digits, its samples
judged by the digit classifier.

One module per family (``vae``, ``gan``, ``diffusion``, ``flow``, ``energy``) holds that
family's settings and ``run(config, folder)``; this module holds what they share:

* `load`: the digits of `rlgen.datasets.load_digits` on the models' [-1, 1] scale,
  flattened to 64 values (the training split to train on, the test split held out);
* `epoch_batches`: shuffled minibatches, deterministic per ``(seed, step)`` so that a
  resumed run is the same run;
* `finish`: the quality figures of the samples before (untrained model) and after
  training (`rlgen.quality.digit_quality`: Fréchet distance in the classifier's features
  to the held-out digits, class share for class-conditional samples), the floor a perfect
  model would reach, and the files ``samples.npz`` (``images [N, 8, 8]`` on the 0..16
  scale, ``labels [N]`` for class-conditional samples) and ``samples.png`` (a grid, one row
  per class for class-conditional samples).

The run folder (`rlgen.cli.RunFolder`) adds the progress bar, ``metrics.jsonl``, the
checkpoints and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from rlgen import datasets, quality

__all__ = ["FAMILIES", "DigitsData", "epoch_batches", "finish", "load", "sample_labels"]

#: The families of ``rlgen digits FAMILY``; each has the module ``rlgen.recipes.digits.FAMILY``.
FAMILIES = ("vae", "gan", "diffusion", "flow", "energy")
SAMPLES_NPZ, SAMPLES_PNG = "samples.npz", "samples.png"


@dataclasses.dataclass(frozen=True)
class DigitsData:
    """The digits on the models' scale: ``x`` float32 ``[N, 64]`` in [-1, 1], ``labels [N]``."""

    train_x: np.ndarray
    train_labels: np.ndarray
    test_x: np.ndarray
    test_labels: np.ndarray


def load() -> DigitsData:
    """The training and test splits, flattened to 64 values on [-1, 1].

    Example:
      >>> data = load()
      >>> data.train_x.shape, data.test_x.shape, float(data.train_x.min())
      ((1437, 64), (360, 64), -1.0)
    """
    splits = [datasets.load_digits(split) for split in datasets.SPLITS]
    (train_x, train_y), (test_x, test_y) = splits
    flat = [datasets.to_unit(x).reshape(len(x), -1) for x in (train_x, test_x)]
    return DigitsData(flat[0], train_y, flat[1], test_y)


def epoch_batches(
    x: np.ndarray, labels: np.ndarray | None, batch_size: int, seed: int
) -> Callable[[int], Iterator[dict]]:
    """``batches(step)``: the minibatches from ``step`` on, for `rlgen.cli.RunFolder.phase`.

    Each epoch is a permutation of the rows drawn from ``(seed, epoch)``, cut into
    ``len(x) // batch_size`` batches (the remainder is dropped); batch ``s`` is the same
    whatever step the iteration starts from. A batch is ``{"images": [b, ...]}`` plus
    ``"labels"`` when ``labels`` is given. The iteration never ends.

    Example:
      >>> x = np.arange(10, dtype=np.float32)[:, None]
      >>> batches = epoch_batches(x, None, 4, seed=0)
      >>> first = [b["images"][:, 0] for _, b in zip(range(3), batches(0))]
      >>> again = next(batches(2))["images"][:, 0]
      >>> bool(np.all(first[2] == again)), first[0].shape
      (True, (4,))
    """
    per_epoch = len(x) // batch_size
    if per_epoch < 1:
        raise ValueError(f"`batch_size` {batch_size} exceeds the {len(x)} training rows")

    def batches(step: int) -> Iterator[dict]:
        while True:
            epoch, index = divmod(step, per_epoch)
            order = np.random.default_rng((seed, epoch)).permutation(len(x))
            rows = order[index * batch_size : (index + 1) * batch_size]
            batch = {"images": x[rows]}
            if labels is not None:
                batch["labels"] = labels[rows]
            yield batch
            step += 1

    return batches


def sample_labels(num_samples: int) -> np.ndarray:
    """The classes requested of a class-conditional model: ``num_samples`` ids cycling
    through 0..9, sorted (so a grid row is one class).

    Example:
      >>> sample_labels(4)
      array([0, 1, 2, 3], dtype=int32)
    """
    return np.sort(np.arange(num_samples) % datasets.NUM_CLASSES).astype(np.int32)


def _images(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != 64:
        raise ValueError(f"`{name}` must be [N, 64] or [N, 8, 8] samples, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` holds non-finite values (the model diverged?)")
    return datasets.from_unit(x.reshape(len(x), 8, 8))


def finish(
    folder,
    *,
    family: str,
    samples,
    before,
    labels=None,
    seconds: float,
    extra: dict | None = None,
) -> dict:
    """Judges and writes a trained family's samples; returns the run's results.

    Args:
      folder: the run's `rlgen.cli.RunFolder`.
      family: one of `FAMILIES`.
      samples: the trained model's samples, ``[N, 64]`` (or ``[N, 8, 8]``) on [-1, 1].
      before: the untrained model's samples, same shape (the "before" figures).
      labels: ``[N]`` the classes requested of a class-conditional model (None:
        unconditional), the same for both sample sets.
      seconds: the run's wall time so far.
      extra: more results (a family's own figures) merged into the returned dict.

    Returns:
      ``family``, ``dataset`` (``"digits"``), ``num_samples``, ``frechet_before``,
      ``frechet_after``, ``frechet_floor`` (`rlgen.quality.digit_frechet_floor` at the
      same sample size), ``confidence_before/after``, with labels
      ``class_share_before/after``, ``seconds``, then ``extra``.
    """
    images, untrained = _images(samples, "samples"), _images(before, "before")
    after_q = quality.digit_quality(images, labels)
    before_q = quality.digit_quality(untrained, labels)
    results = {
        "family": family,
        "dataset": "digits",
        "num_samples": len(images),
        "frechet_before": before_q["frechet"],
        "frechet_after": after_q["frechet"],
        "frechet_floor": quality.digit_frechet_floor(len(images)),
        "confidence_before": before_q["confidence"],
        "confidence_after": after_q["confidence"],
    }
    arrays = {"images": images}
    if labels is not None:
        results["class_share_before"] = before_q["class_share"]
        results["class_share_after"] = after_q["class_share"]
        arrays["labels"] = np.asarray(labels, np.int32)
    np.savez(folder.path / SAMPLES_NPZ, **arrays)
    if folder.options.plot:
        write_grid(folder.path / SAMPLES_PNG, images, labels, title=f"rlgen digits {family}")
    results["seconds"] = round(float(seconds), 1)
    results.update(extra or {})
    return results


def write_grid(path, images, labels=None, *, title: str = "", columns: int = 10) -> None:
    """A PNG grid of ``images [N, 8, 8]`` (0..16): one row per class when ``labels`` are
    given (up to ``columns`` samples each), else rows of ``columns``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if labels is not None:
        labels = np.asarray(labels)
        rows = [images[labels == c][:columns] for c in np.unique(labels)]
    else:
        n = min(len(images), columns * columns)
        rows = [images[i : i + columns] for i in range(0, n, columns)]
    canvas = np.full((len(rows) * 9 + 1, columns * 9 + 1), 16.0, np.float32)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c] = image
    fig, ax = plt.subplots(figsize=(columns * 0.45, len(rows) * 0.45 + 0.4), dpi=100)
    ax.imshow(16.0 - canvas, cmap="gray", vmin=0.0, vmax=16.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
