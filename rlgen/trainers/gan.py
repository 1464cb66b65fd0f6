"""`GANTrainer`: a generator and a discriminator, each with its own optimizer, trained by
`rlgen.algorithms.gan.gan` (the losses and penalties of `rlgen.generative.gan`), plus
`sample()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from rlgen.algorithms.gan import MODELS, gan
from rlgen.generative import gan as gan_lib
from rlgen.generative.gan import GANConfig
from rlgen.trainers.base import Trainer

__all__ = ["GANConfig", "GANTrainer"]


class GANTrainer(Trainer):
    """Trains ``{"generator": G, "discriminator": D}``, each with its own ``nnx.Optimizer``.

    ``train_step({"images": x})`` with real images ``x`` ``[B, ...]`` (the generator's
    output shape, within ``config.data_range``, checked on the host first) takes
    ``config.d_steps`` discriminator steps and one generator step
    (`rlgen.algorithms.gan.gan`); metrics `rlgen.generative.gan.METRICS`. Each optimizer's
    ``step`` counts trainer steps; its optax state counts its own updates (``d_steps`` per
    trainer step for the discriminator).

    Args:
      model: ``{"generator": G, "discriminator": D}``: ``G(z [B, latent_dim]) -> [B, ...]``
        with an int (or tuple) attribute ``latent_dim``, ``D(x) -> [B]`` (or ``[B, 1]``),
        e.g. `rlgen.models.gan.MLPGenerator` and `MLPDiscriminator`.
      optimizer: ``{"generator": nnx.Optimizer(G, tx_g, wrt=nnx.Param), "discriminator":
        nnx.Optimizer(D, tx_d, wrt=nnx.Param)}`` (two learning rates, two states).
      config: a `GANConfig` (default ``GANConfig()``).
      **kwargs: `Trainer`'s (``seed``, ``mesh``, ``data_axis``).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> from rlgen.models.gan import MLPDiscriminator, MLPGenerator
      >>> g = MLPGenerator(2, 2, hidden=(16,), rngs=nnx.Rngs(0))
      >>> d = MLPDiscriminator(2, hidden=(16,), rngs=nnx.Rngs(1))
      >>> opt = lambda m: nnx.Optimizer(m, optax.adam(1e-3, b1=0.5), wrt=nnx.Param)
      >>> trainer = GANTrainer({"generator": g, "discriminator": d},
      ...                      {"generator": opt(g), "discriminator": opt(d)},
      ...                      GANConfig(loss="hinge", d_steps=2))
      >>> metrics = trainer.train_step({"images": jnp.full((8, 2), 0.5)})
      >>> trainer.sample(3, jax.random.key(0)).shape
      (3, 2)
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        config: GANConfig | None = None,
        **kwargs,
    ):
        for name, value in (("model", model), ("optimizer", optimizer)):
            if not isinstance(value, Mapping) or set(value) != set(MODELS):
                got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                raise TypeError(
                    f"GANTrainer takes `{name}` as a dict {{'generator': ..., "
                    f"'discriminator': ...}}, got {got}"
                )
        config = GANConfig() if config is None else config
        if not isinstance(config, GANConfig):
            raise TypeError(f"`config` must be a GANConfig, got {type(config).__name__}")
        latent = getattr(model["generator"], "latent_dim", None)
        if latent is None:
            raise TypeError(
                f"the generator ({type(model['generator']).__name__}) needs a `latent_dim` "
                "attribute (an int or a tuple of ints): the size of the noise it maps"
            )
        self.latent_shape = gan_lib.as_latent_shape(latent)
        super().__init__(dict(model), dict(optimizer), config, **kwargs)
        self._sample = jax.jit(self._sample_from, static_argnames=("num_samples",))

    def make_algorithm(self, merge):
        tx = {name: self.optimizer[name].tx for name in MODELS}
        return gan(merge, tx, self.config, latent_shape=self.latent_shape, seed=self.seed)

    def train_step(self, batch):
        """One GAN update on ``{"images": [B, ...]}``; returns its metrics."""
        if isinstance(batch, Mapping) and "images" in batch:
            gan_lib.check_images(batch["images"], self.config.data_range, "batch['images']")
        return self._run_update(batch)

    def _sample_from(self, params, key, num_samples):
        return gan_lib.sample(self.merge(params)["generator"], key, num_samples, self.latent_shape)

    def sample(self, num_samples: int, key=None, *, ema: bool = True):
        """``num_samples`` generated examples ``G(z)``, ``z ~ N(0, I)``; compiled per size.

        Args:
          num_samples: how many (a Python int).
          key: PRNG key (default: `next_key()`).
          ema: draw from the generator's moving average when the config keeps one
            (``ema_decay``); False: from the trained parameters.
        """
        key = self.next_key() if key is None else key
        params = self.state.params
        if ema and self.state.ema_params is not None:
            params = {**params, "generator": self.state.ema_params}
        return self._sample(params, key, num_samples=num_samples)
