"""`MLPEnergy`: a small MLP energy function over flat examples, ``[B, dim] -> [B]``.

    h_0 = x,   h_{i+1} = act(W_i h_i + b_i),   E(x) = w_out . h_n + b_out

The activation is smooth (swish by default, Ramachandran et al. 2017, arXiv 1710.05941):
Langevin dynamics follows ``grad_x E``, which a ReLU network makes piecewise constant, and
JEM (Grathwohl et al. 2019, arXiv 1912.03263) and Du and Mordatch 2019 (arXiv 1903.08689)
use smooth activations for the same reason. No spectral normalisation: the energy-magnitude
regulariser of `rlgen.generative.EnergyConfig` (``alpha``) keeps the energies bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks

__all__ = ["ACTIVATIONS", "MLPEnergy"]

#: The activations `MLPEnergy` offers (all smooth).
ACTIVATIONS = ("swish", "softplus", "tanh")
_ACTIVATION_FNS = {"swish": jax.nn.swish, "softplus": jax.nn.softplus, "tanh": jnp.tanh}


class MLPEnergy(nnx.Module):
    """An MLP energy: ``x [B, dim]`` float -> ``[B]`` energies (lower is more likely).

    Args:
      dim: features per example.
      hidden: hidden layer widths, e.g. ``(128, 128)``.
      activation: one of `ACTIVATIONS` (smooth: Langevin follows the input gradient).
      rngs: ``nnx.Rngs`` for the initialisation (Flax's default: LeCun normal kernels,
        zero biases).

    Example:
      >>> model = MLPEnergy(2, hidden=(16,), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((3, 2))).shape
      (3,)
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (128, 128),
        *,
        activation: str = "swish",
        rngs: nnx.Rngs,
    ):
        self.dim = _checks.check_positive_int(dim, "dim")
        if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
            raise TypeError(
                f"`hidden` must be a sequence of layer widths, e.g. (128, 128), got {hidden!r}"
            )
        widths = [_checks.check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden)]
        self.activation = _checks.check_choice(activation, ACTIVATIONS, "activation")
        sizes = [self.dim, *widths, 1]
        self.layers = nnx.List(
            [nnx.Linear(m, n, rngs=rngs) for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x):
        x = _checks.float_array(x, "x", rank=2, what="([B, dim])")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"`x` must have dim={self.dim} features on the last axis, got shape "
                f"{tuple(x.shape)}"
            )
        act = _ACTIVATION_FNS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)[:, 0]
