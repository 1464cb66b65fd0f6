"""`VAETrainer`: variational autoencoders (ELBO, beta-VAE, KL annealing, free bits; Gaussian
and Bernoulli decoders) plus `reconstruct` and `sample`. The loss is
`rlgen.generative.vae.vae_loss`.
"""

from __future__ import annotations

import jax
from flax import nnx

from rlgen import _checks
from rlgen.generative import vae
from rlgen.generative.vae import VAEConfig
from rlgen.trainers.base import Trainer

__all__ = ["VAEConfig", "VAETrainer"]


class VAETrainer(Trainer):
    """Trains a VAE: ``model.encode(x) -> (mean, log_var)``, ``model.decode(z) -> x-shaped``.

    ``train_step(batch)`` with ``images`` (``[B, ...]`` float in the model's input shape;
    in ``[0, 1]`` for the Bernoulli decoder, checked on the host before the step): one
    optimiser step on `rlgen.generative.vae.vae_loss` (negative ELBO with ``beta``, the
    KL schedule and free bits of `VAEConfig`). Metrics: ``loss`` and
    `rlgen.generative.vae.METRICS` (``reconstruction_loss``, ``kl``, ``kl_weight``,
    ``elbo``, ``active_units``, ``decoder_std``) and ``skipped`` (1.0 when a non-finite
    loss or gradient left the parameters unchanged, `rlgen.algorithms.supervised`).
    With ``learn_decoder_std`` the model must own the scalar ``decoder_log_scale``
    (``MLPVAE(..., learn_std=True)``), and a model that owns one needs
    ``learn_decoder_std=True``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from rlgen.models.vae import MLPVAE
      >>> model = MLPVAE(4, 2, hidden=(16,), rngs=nnx.Rngs(0))
      >>> trainer = VAETrainer(model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param))
      >>> batch = {"images": jnp.tile(jnp.array([[1.0, -1.0, 0.5, 0.0]]), (8, 1))}
      >>> first = trainer.train_step(batch)["loss"]
      >>> for _ in range(50):
      ...     last = trainer.train_step(batch)["loss"]
      >>> bool(last < first - 1.0), trainer.sample(3, jax.random.key(0)).shape
      (True, (3, 4))
    """

    def __init__(self, model, optimizer, config: VAEConfig | None = None, **kwargs):
        config = VAEConfig() if config is None else config
        if not isinstance(config, VAEConfig):
            raise TypeError(f"`config` must be a VAEConfig, got {type(config).__name__}")
        owns_scale = hasattr(model, "decoder_log_scale")
        if config.learn_decoder_std != owns_scale:
            raise ValueError(
                f"`config.learn_decoder_std`={config.learn_decoder_std} but the model "
                f"{'owns' if owns_scale else 'has no'} a `decoder_log_scale` parameter; build "
                f"the model with learn_std={config.learn_decoder_std} (e.g. MLPVAE(..., "
                f"learn_std={config.learn_decoder_std}))"
            )
        super().__init__(model, optimizer, config, **kwargs)
        graphdef = nnx.graphdef(model)
        self._reconstruct = jax.jit(
            lambda state, images, key: vae.reconstruct(
                nnx.merge(graphdef, state), images, key, config
            )
        )
        self._sample = jax.jit(
            lambda state, key, n: vae.sample_prior(nnx.merge(graphdef, state), n, key, config),
            static_argnums=2,
        )

        self._elbo = jax.jit(
            lambda state, images, key, n: vae.elbo(
                nnx.merge(graphdef, state), images, key, n, config
            ),
            static_argnums=3,
        )

    def compute_loss(self, model, batch, key, step):
        return vae.vae_loss(model, batch, key, step, self.config)

    def train_step(self, batch):
        """One update on ``{"images": [B, ...]}``; the batch is checked on the host first
        (keys, dtype, and for the Bernoulli decoder the ``[0, 1]`` range)."""
        vae.check_batch(batch, self.config)
        return super().train_step(batch)

    def reconstruct(self, images, key=None):
        """The decoder's mean for ``images`` ``[B, ...]``: decoded from the posterior mean
        (``key`` None: deterministic) or from a draw of ``q(z | x)``; Bernoulli decoders
        give probabilities in ``[0, 1]``. Compiled once per shape; reads the model's
        current parameters and changes nothing (`rlgen.generative.vae.reconstruct`)."""
        return self._reconstruct(nnx.state(self.model), images, key)

    def sample(self, num_samples: int, key):
        """``num_samples`` samples: prior draws ``z ~ N(0, I)`` decoded to the decoder's mean
        (Bernoulli: probabilities). Compiled once per ``num_samples``; reads the model's
        current parameters and changes nothing (`rlgen.generative.vae.sample_prior`)."""
        _checks.check_positive_int(num_samples, "num_samples")
        return self._sample(nnx.state(self.model), key, num_samples)

    def elbo(self, images, key, num_samples: int = 1):
        """The ELBO of each of ``images`` ``[B, ...]`` (nats per example, ``[B]``), with
        ``num_samples`` posterior draws per image: `rlgen.generative.vae.elbo` under the
        model's current parameters, for held-out evaluation. Compiled once per shape and
        ``num_samples``; changes nothing."""
        _checks.check_positive_int(num_samples, "num_samples")
        return self._elbo(nnx.state(self.model), images, key, num_samples)
