"""`MLPVAE`: a fully connected variational autoencoder over flat inputs (8x8 digits, toy data).

The encoder maps ``x [B, D]`` through SiLU hidden layers to the mean and log-variance of
a diagonal Gaussian ``q(z | x)`` over ``z [B, Z]``; the decoder maps ``z`` through the
mirrored hidden layers back to ``[B, D]``: the mean of a Gaussian decoder or the logits of
a Bernoulli one (`rlgen.generative.vae` reads them; Kingma and Welling 2014, arXiv
1312.6114). Layers are `flax.nnx.Linear` with their default (LeCun normal) initialisation.

    h = silu(W_k ... silu(W_1 x)),   (mean, log_var) = split(W_out h)
    x_hat = V_out silu(V_k ... silu(V_1 z))
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks
from rlgen.generative.vae import reparameterize

__all__ = ["MLPVAE"]


class _MLP(nnx.Module):
    """``[N, sizes[0]] -> [N, sizes[-1]]``: SiLU hidden layers, a linear output layer."""

    def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(m, n, rngs=rngs) for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.silu(layer(x))
        return self.layers[-1](x)


class MLPVAE(nnx.Module):
    """A VAE of MLPs: ``encode(x) -> (mean, log_var)``, ``decode(z) -> [B, dim]``.

    Args:
      dim: the flat input size ``D`` (64 for 8x8 digits).
      latent_dim: the latent size ``Z``.
      hidden: the encoder's hidden widths (the decoder uses them reversed).
      learn_std: give the model a scalar ``decoder_log_scale`` parameter (initially 0) for
        a learned Gaussian decoder std (`rlgen.generative.vae.VAEConfig`'s
        ``learn_decoder_std``).
      rngs: `nnx.Rngs` for the initialisation.

    Example:
      >>> vae = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> mean, log_var = vae.encode(jnp.ones((3, 4)))
      >>> mean.shape, vae.decode(mean).shape
      ((3, 2), (3, 4))
    """

    def __init__(
        self,
        dim: int,
        latent_dim: int,
        *,
        hidden: Sequence[int] = (256, 256),
        learn_std: bool = False,
        rngs: nnx.Rngs,
    ):
        self.dim = _checks.check_positive_int(dim, "dim")
        self.latent_dim = _checks.check_positive_int(latent_dim, "latent_dim")
        if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
            raise TypeError(
                f"`hidden` must be a sequence of layer widths, e.g. (256, 256), got {hidden!r}"
            )
        hidden = tuple(_checks.check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
        _checks.check_bool(learn_std, "learn_std")
        self.hidden = hidden
        self.encoder = _MLP((dim, *hidden, 2 * latent_dim), rngs=rngs)
        self.decoder = _MLP((latent_dim, *hidden[::-1], dim), rngs=rngs)
        if learn_std:
            self.decoder_log_scale = nnx.Param(jnp.zeros((), jnp.float32))

    def encode(self, x):
        """Float ``x [B, dim]`` -> ``(mean [B, latent_dim], log_var [B, latent_dim])``.

        Example:
          >>> vae = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
          >>> [a.shape for a in vae.encode(jnp.ones((3, 4)))]
          [(3, 2), (3, 2)]
        """
        x = _checks.float_array(x, "x", rank=2, what="([B, dim])")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"`x` must have dim={self.dim} features (flatten images to [B, {self.dim}]), "
                f"got shape {tuple(x.shape)}"
            )
        mean, log_var = jnp.split(self.encoder(x), 2, axis=-1)
        return mean, log_var

    def decode(self, z):
        """Float ``z [B, latent_dim]`` -> ``[B, dim]`` (the Gaussian mean or Bernoulli logits).

        Example:
          >>> MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0)).decode(jnp.zeros((3, 2))).shape
          (3, 4)
        """
        z = _checks.float_array(z, "z", rank=2, what="([B, latent_dim])")
        if z.shape[1] != self.latent_dim:
            raise ValueError(
                f"`z` must have latent_dim={self.latent_dim} features, got shape {tuple(z.shape)}"
            )
        return self.decoder(z)

    def __call__(self, x, key=None):
        """Encode then decode: ``decode(mean)`` (``key`` None) or ``decode(z)`` with ``z``
        drawn from ``q(z | x)``; returns ``(decoded [B, dim], mean, log_var)``.

        Example:
          >>> vae = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
          >>> [a.shape for a in vae(jnp.ones((3, 4)), jax.random.key(0))]
          [(3, 4), (3, 2), (3, 2)]
        """
        mean, log_var = self.encode(x)
        z = mean if key is None else reparameterize(mean, log_var, key)
        return self.decode(z), mean, log_var
