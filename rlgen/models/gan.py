"""A small MLP generator and discriminator for GANs on flat data (8x8 digits, 2-D toys).

    G(z) = tanh(W_out h_n + b_out),   h_{i+1} = relu(W_i h_i + b_i),   h_0 = z ~ N(0, I)
    D(x) = W_out h_n + b_out,         h_{i+1} = leaky_relu(W_i h_i + b_i, 0.2),   h_0 = x

The generator's tanh output lies in ``(-1, 1)``, the range the data is scaled to
(`GANConfig.data_range`). The discriminator has no batch normalisation: each example's
output depends on that example only, as the gradient penalties need (`gradient_penalty`,
`r1_penalty` in `rlgen.generative.gan`), and leaky ReLUs (Radford et al. 2016, arXiv
1511.06434) keep its input gradients from vanishing. Kernels use He (fan-in) normal
initialisation, biases zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks

__all__ = ["MLPDiscriminator", "MLPGenerator"]

#: The negative slope of the discriminator's leaky ReLUs.
LEAKY_SLOPE = 0.2


def _widths(hidden) -> tuple[int, ...]:
    if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence) or not hidden:
        raise TypeError(
            f"`hidden` must be a non-empty sequence of layer widths, e.g. (256, 256), got "
            f"{hidden!r}"
        )
    return tuple(_checks.check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))


def _layers(sizes, slope, rngs):
    gain2 = 2.0 / (1.0 + slope**2)  # He initialisation for (leaky) ReLU
    init = nnx.initializers.variance_scaling(gain2, "fan_in", "normal")
    return nnx.List(
        [
            nnx.Linear(m, n, kernel_init=init, rngs=rngs)
            for m, n in zip(sizes[:-1], sizes[1:], strict=True)
        ]
    )


def _features(x, dim, name, what):
    x = _checks.float_array(x, name, rank=2, what=what)
    if x.shape[1] != dim:
        raise ValueError(f"`{name}` must have {dim} features on its last axis, got shape "
                         f"{tuple(x.shape)}")
    return x


class MLPGenerator(nnx.Module):
    """An MLP from noise ``z [B, latent_dim]`` to data ``[B, dim]`` in ``(-1, 1)`` (tanh).

    Args:
      latent_dim: the noise size (read by `GANTrainer` as ``latent_dim``).
      dim: the data size (64 for 8x8 digits, flattened).
      hidden: widths of the ReLU hidden layers.
      rngs: `nnx.Rngs` for the initialisation.

    Example:
      >>> g = MLPGenerator(8, 64, hidden=(32,), rngs=nnx.Rngs(0))
      >>> x = g(jnp.zeros((5, 8)))
      >>> x.shape, bool(jnp.all(jnp.abs(x) < 1))
      ((5, 64), True)
    """

    def __init__(self, latent_dim: int, dim: int, *, hidden: Sequence[int] = (256, 256),
                 rngs: nnx.Rngs):
        self.latent_dim = _checks.check_positive_int(latent_dim, "latent_dim")
        self.dim = _checks.check_positive_int(dim, "dim")
        self.layers = _layers((latent_dim, *_widths(hidden), dim), 0.0, rngs)

    def __call__(self, z):
        """Float ``z [B, latent_dim]`` -> ``[B, dim]`` in ``(-1, 1)``."""
        h = _features(z, self.latent_dim, "z", "([B, latent_dim])")
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        return jnp.tanh(self.layers[-1](h))


class MLPDiscriminator(nnx.Module):
    """An MLP critic from data ``[B, dim]`` to one raw output per example ``[B]``.

    The output is a logit for ``non_saturating``, a score for ``lsgan``/``hinge`` and a
    critic value for ``wgan_gp`` (`rlgen.generative.gan.GAN_LOSSES`). Leaky ReLU hidden
    layers (slope `LEAKY_SLOPE`), no normalisation (module docstring).

    Args:
      dim: the data size.
      hidden: widths of the hidden layers.
      rngs: `nnx.Rngs` for the initialisation.

    Example:
      >>> d = MLPDiscriminator(64, hidden=(32,), rngs=nnx.Rngs(0))
      >>> d(jnp.zeros((5, 64))).shape
      (5,)
    """

    def __init__(self, dim: int, *, hidden: Sequence[int] = (256, 256), rngs: nnx.Rngs):
        self.dim = _checks.check_positive_int(dim, "dim")
        self.layers = _layers((dim, *_widths(hidden), 1), LEAKY_SLOPE, rngs)

    def __call__(self, x):
        """Float ``x [B, dim]`` -> ``[B]``."""
        h = _features(x, self.dim, "x", "([B, dim])")
        for layer in self.layers[:-1]:
            h = jax.nn.leaky_relu(layer(h), LEAKY_SLOPE)
        return self.layers[-1](h)[:, 0]

