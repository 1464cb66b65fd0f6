"""`DigitClassifier`: the 8x8-digit classifier that measures generative models' samples
(and, as a differentiable reward, steers them).

A ReLU MLP on the 64 grey levels scaled to [0, 1]:

    f_1 = relu(W_1 x / 16 + b_1),  f = relu(W_2 f_1 + b_2),  logits = W_3 f + b_3

``features(images)`` is ``f`` (the penultimate layer, 128 values), the space in which
`rlgen.quality` measures Fréchet distances, as FID does with an Inception network's
(Heusel et al. 2017, arXiv 1706.08500).

The trained weights ship with the package (``rlgen/models/data/digit_classifier.npz``,
about 190 KB) and `load_digit_classifier` reads them; ``python -m
rlgen.models.classifier`` remakes that file with `train_digit_classifier`: Adam on the
training split of `rlgen.datasets.load_digits` only (the test split stays held out for
the quality figures), with small random shifts and pixel noise so that the classifier
judges digits rather than exact pixel patterns. It classifies 99% of the test split correctly.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlgen import _checks
from rlgen.datasets import DIGITS_MAX, DIGITS_SHAPE, NUM_CLASSES

__all__ = ["DigitClassifier", "load_digit_classifier", "train_digit_classifier"]

WEIGHTS = pathlib.Path(__file__).parent / "data" / "digit_classifier.npz"
FEATURES = 128


class DigitClassifier(nnx.Module):
    """``model(images [B, 8, 8] on 0..16) -> logits [B, 10]``; ``features`` -> ``[B, 128]``.

    Example:
      >>> model = DigitClassifier(rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((3, 8, 8))).shape, model.features(jnp.zeros((3, 8, 8))).shape
      ((3, 10), (3, 128))
    """

    def __init__(self, *, hidden: int = 256, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.feature = nnx.Linear(hidden, FEATURES, rngs=rngs)
        self.head = nnx.Linear(FEATURES, NUM_CLASSES, rngs=rngs)

    def features(self, images) -> jax.Array:
        """The penultimate layer ``[B, 128]`` of ``images [B, 8, 8]`` (0..16 scale)."""
        images = _checks.float_array(images, "images", rank=3)
        if images.shape[1:] != DIGITS_SHAPE:
            raise ValueError(f"`images` must have shape [B, 8, 8], got {images.shape}")
        x = images.reshape(images.shape[0], -1).astype(jnp.float32) / DIGITS_MAX
        return jax.nn.relu(self.feature(jax.nn.relu(self.hidden(x))))

    def __call__(self, images) -> jax.Array:
        return self.head(self.features(images))


@functools.cache
def load_digit_classifier() -> DigitClassifier:
    """The shipped, trained `DigitClassifier` (read once, then cached).

    Example:
      >>> from rlgen.datasets import load_digits
      >>> images, labels = load_digits("test")
      >>> logits = load_digit_classifier()(images)
      >>> bool(np.mean(np.argmax(logits, -1) == labels) > 0.95)
      True
    """
    model = DigitClassifier(rngs=nnx.Rngs(0))
    with np.load(WEIGHTS) as saved:
        _load_params(model, dict(saved))
    return model


def _param_items(model):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return [("/".join(map(str, path)), var) for path, var in flat]


def _load_params(model, arrays):
    for name, var in _param_items(model):
        if name not in arrays or arrays[name].shape != var[...].shape:
            raise ValueError(f"{WEIGHTS} does not fit DigitClassifier at {name!r}")
        var[...] = jnp.asarray(arrays[name])


def train_digit_classifier(*, seed: int = 0, steps: int = 3000, batch_size: int = 128):
    """Trains a `DigitClassifier` on the training split; returns ``(model, test accuracy)``.

    Adam (learning rate 1e-3, weight decay 1e-4) on cross-entropy, each batch shifted by
    up to one pixel in each direction and given Gaussian pixel noise of std 1 (on the
    0..16 scale). Deterministic for a seed on a given machine.
    """
    import optax

    from rlgen.datasets import load_digits

    images, labels = (jnp.asarray(a) for a in load_digits("train"))
    model = DigitClassifier(rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3, weight_decay=1e-4), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, key):
        pick, shift_key, noise_key = jax.random.split(key, 3)
        idx = jax.random.randint(pick, (batch_size,), 0, images.shape[0])
        x = images[idx]
        shifts = jax.random.randint(shift_key, (2,), -1, 2)
        x = jnp.roll(x, shifts, axis=(1, 2))
        x = jnp.clip(x + jax.random.normal(noise_key, x.shape), 0.0, DIGITS_MAX)

        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    key = jax.random.key(seed)
    for i in range(steps):
        step(model, optimizer, jax.random.fold_in(key, i))
    test_x, test_y = load_digits("test")
    accuracy = float(np.mean(np.argmax(model(test_x), -1) == test_y))
    return model, accuracy


def main() -> None:
    """Remakes the shipped weights file (``python -m rlgen.models.classifier``)."""
    model, accuracy = train_digit_classifier()
    WEIGHTS.parent.mkdir(exist_ok=True)
    arrays = {name: np.asarray(var[...]) for name, var in _param_items(model)}
    np.savez_compressed(WEIGHTS, **arrays)
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size} bytes); test accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
