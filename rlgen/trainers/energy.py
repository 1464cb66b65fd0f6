"""`EnergyTrainer`: an energy-based model trained by contrastive divergence with persistent
SGLD negatives (the replay buffer lives in the trainer's state), plus `sample_negatives`
and `sample`. The algorithm is `rlgen.algorithms.energy.contrastive_divergence`; the math is
in `rlgen.generative.energy`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax

from rlgen import _checks
from rlgen.algorithms.energy import contrastive_divergence
from rlgen.generative import energy as E
from rlgen.generative.energy import EnergyConfig
from rlgen.trainers.base import Trainer

__all__ = ["EnergyConfig", "EnergyTrainer"]


class EnergyTrainer(Trainer):
    """Trains an energy ``model(x [B, *sample_shape]) -> [B]`` (``p(x) ~ exp(-E(x))``).

    ``train_step({"images": x+ [B, *sample_shape]})`` with data on
    ``[config.init_low, config.init_high]``: draws ``B`` chains from the replay buffer
    (``reinit_prob`` of them from uniform noise), runs ``sgld_steps`` SGLD steps on the
    current energy, takes one optimiser step on the contrastive-divergence loss with the
    energy-magnitude regulariser and writes the chains back, all in one compiled step (Du
    and Mordatch 2019, arXiv 1903.08689; Grathwohl et al. 2019, arXiv 1912.03263). The
    buffer is ``trainer.state.buffer`` ``[buffer_size, *sample_shape]``, saved and restored
    with the checkpoints. Metrics: `rlgen.algorithms.energy.METRICS` (``loss``,
    ``cd_loss``, ``energy_pos``, ``energy_neg``, ``energy_reg``, ``skipped``).

    Args:
      model: an NNX energy model, e.g. `rlgen.models.energy.MLPEnergy`.
      optimizer: an ``nnx.Optimizer`` on ``model``.
      config: an `EnergyConfig`.
      sample_shape: one example's shape (None: ``(model.dim,)``).
      **kwargs: the `Trainer` keywords (``seed``, ``mesh``, ``data_axis``).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> from rlgen.models.energy import MLPEnergy
      >>> model = MLPEnergy(2, hidden=(16,), rngs=nnx.Rngs(0))
      >>> trainer = EnergyTrainer(model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param),
      ...                         EnergyConfig(sgld_steps=5, buffer_size=64))
      >>> metrics = trainer.train_step({"images": jnp.zeros((8, 2))})
      >>> trainer.sample_negatives(16).shape, trainer.state.buffer.shape
      ((16, 2), (64, 2))
    """

    def __init__(self, model, optimizer, config: EnergyConfig | None = None, *,
                 sample_shape=None, **kwargs):
        config = EnergyConfig() if config is None else config
        if not isinstance(config, EnergyConfig):
            raise TypeError(f"`config` must be an EnergyConfig, got {type(config).__name__}")
        if sample_shape is None:
            dim = getattr(model, "dim", None)
            if not isinstance(dim, int):
                raise TypeError(
                    f"pass `sample_shape` (one example's shape): {type(model).__name__} has "
                    "no int `dim` attribute to take it from"
                )
            sample_shape = (dim,)
        self.sample_shape = _checks.check_shape_tuple(sample_shape, "sample_shape")
        super().__init__(model, optimizer, config, **kwargs)
        self._draw = jax.jit(
            self._chains, static_argnames=("num_samples", "steps", "persistent", "reinit_prob")
        )

    def make_algorithm(self, merge):
        return contrastive_divergence(
            lambda params, x: merge(params)(x), self.tx, self.config,
            sample_shape=self.sample_shape, seed=self.seed,
        )

    def train_step(self, batch):
        """One update on ``{"images": [B, *sample_shape]}``; the images are checked first
        (floating, the example shape, values within ``[init_low, init_high]``)."""
        if isinstance(batch, Mapping) and "images" in batch:
            E.check_images(
                batch["images"], self.sample_shape, self.config.init_low, self.config.init_high
            )
        return super().train_step(batch)

    # ----------------------------------------------------------------- sampling
    def _chains(self, params, buffer, key, *, num_samples, steps, persistent, reinit_prob):
        energy_fn = self.merge(params)
        if persistent:
            config = self.config
            if reinit_prob is not None:
                config = dataclasses.replace(config, reinit_prob=reinit_prob)
            return E.persistent_negatives(
                energy_fn, buffer, key, num_samples, config, steps=steps
            )[0]
        return E.sample_from_noise(
            energy_fn, key, num_samples, self.sample_shape, self.config, steps=steps
        )

    def sample_negatives(self, num_samples: int, key=None, steps: int | None = None, *,
                         reinit_prob: float | None = None):
        """Negatives as a training step draws them, from the current model.

        ``num_samples`` chains (at most ``buffer_size``) start from distinct entries of the
        replay buffer, ``reinit_prob`` (default ``config.reinit_prob``; 0: none) of them
        from uniform noise instead, and run ``steps`` (default ``config.sgld_steps``) SGLD
        steps on the current energy (`rlgen.generative.energy.persistent_negatives`). The
        buffer is read, not written: sampling leaves the training state as it was.
        Compiled once per ``(num_samples, steps, reinit_prob)``.

        Returns ``[num_samples, *sample_shape]`` float32; ``key`` defaults to
        `next_key()`.
        """
        key = self.next_key() if key is None else key
        if reinit_prob is not None:
            reinit_prob = float(reinit_prob)
        return self._draw(
            self.state.params, self.state.buffer, key,
            num_samples=num_samples, steps=steps, persistent=True, reinit_prob=reinit_prob,
        )

    def sample(self, num_samples: int, key=None, steps: int | None = None):
        """Fresh short-run chains: uniform noise run ``steps`` SGLD steps (no buffer).

        ``num_samples`` chains start uniformly on ``[init_low, init_high]`` and run
        ``steps`` (default ``config.sgld_steps``) SGLD steps on the current energy
        (`rlgen.generative.energy.sample_from_noise`; short-run sampling, Nijkamp et al.
        2019, arXiv 1904.09770). Compiled once per ``(num_samples, steps)``.

        Returns ``[num_samples, *sample_shape]`` float32; ``key`` defaults to
        `next_key()`.
        """
        key = self.next_key() if key is None else key
        return self._draw(
            self.state.params, self.state.buffer, key,
            num_samples=num_samples, steps=steps, persistent=False, reinit_prob=None,
        )
