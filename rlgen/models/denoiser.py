"""`MLPDenoiser`: a small time- and class-conditioned residual MLP for diffusion and flow
models on flat data (8x8 digits as 64 values, 2-D points).

    e   = MLP(sinusoidal(t)) + Embed(label)             conditioning, [B, H]
    h_0 = W_in x
    h_{k+1} = h_k + W2_k silu(W1_k LayerNorm(h_k) + e)  residual blocks, k < depth
    out = W_out silu(LayerNorm(h_depth))                 [B, dim], zero-initialised

``t`` is a float in [0, 1]: a diffusion model passes ``timestep / num_timesteps``, a flow
model its continuous time. The sinusoidal features of ``t`` are those of the transformer's
positions (Vaswani et al. 2017) at ``1000 t``, as in DDPM (Ho et al. 2020). With
``num_classes > 0`` the model is class-conditional: ``labels`` in ``[0, num_classes)``
select a learned embedding, and the extra id ``num_classes`` (what ``labels=None``
means) is the unconditional "null" class of classifier-free guidance (Ho and Salimans
2022, arXiv 2207.12598), trained by dropping labels. The output layer starts at zero, so
an untrained model predicts 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks

__all__ = ["MLPDenoiser", "time_features"]


def time_features(t, num_features: int) -> jax.Array:
    """Sinusoidal features of ``1000 t``: ``[B]`` -> ``[B, num_features]`` (float32).

    Half sines, half cosines, frequencies ``10000^(-i / (num_features / 2))``.

    Example:
      >>> time_features(jnp.array([0.0, 0.5]), 4).shape
      (2, 4)
    """
    half = num_features // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = 1000.0 * jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class _Block(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.inner = nnx.Linear(hidden, 2 * hidden, rngs=rngs)
        self.outer = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.cond = nnx.Linear(hidden, 2 * hidden, rngs=rngs)

    def __call__(self, h, e):
        return h + self.outer(jax.nn.silu(self.inner(self.norm(h)) + self.cond(e)))


class MLPDenoiser(nnx.Module):
    """``model(x [B, dim], t [B], labels [B] | None) -> [B, dim]`` (see the module docstring).

    Args:
      dim: the data's dimension (64 for 8x8 digits).
      num_classes: classes of a class-conditional model (0: unconditional).
      hidden: the residual stream's width.
      depth: the number of residual blocks.
      time_dim: the number of sinusoidal time features.
      rngs: ``nnx.Rngs`` for the initialisation.

    Example:
      >>> model = MLPDenoiser(4, num_classes=3, hidden=8, depth=1, rngs=nnx.Rngs(0))
      >>> x, t = jnp.ones((2, 4)), jnp.array([0.1, 0.9])
      >>> model(x, t, jnp.array([0, 2])).shape, model(x, t).shape
      ((2, 4), (2, 4))
    """

    def __init__(
        self,
        dim: int,
        *,
        num_classes: int = 0,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        rngs: nnx.Rngs,
    ):
        self.dim = _checks.check_positive_int(dim, "dim")
        self.num_classes = _checks.check_int(num_classes, "num_classes", low=0)
        _checks.check_positive_int(hidden, "hidden")
        _checks.check_positive_int(depth, "depth")
        self.time_dim = _checks.check_positive_int(time_dim, "time_dim", low=2)
        self.time_in = nnx.Linear(time_dim, hidden, rngs=rngs)
        self.time_out = nnx.Linear(hidden, hidden, rngs=rngs)
        self.label_embed = (
            nnx.Embed(num_classes + 1, hidden, rngs=rngs) if num_classes else None
        )
        self.inp = nnx.Linear(dim, hidden, rngs=rngs)
        self.blocks = nnx.List([_Block(hidden, rngs=rngs) for _ in range(depth)])
        self.out_norm = nnx.LayerNorm(hidden, rngs=rngs)
        zeros = nnx.initializers.zeros_init()
        self.out = nnx.Linear(hidden, dim, kernel_init=zeros, rngs=rngs)

    @property
    def null_label(self) -> int:
        """The label id of the unconditional model (``num_classes``)."""
        return self.num_classes

    def __call__(self, x, t, labels=None):
        x = _checks.float_array(x, "x", rank=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"`x` must have shape [B, {self.dim}], got {x.shape}")
        t = jnp.broadcast_to(_checks.real_array(t, "t", min_rank=0), x.shape[:1])
        e = self.time_out(jax.nn.silu(self.time_in(time_features(t, self.time_dim))))
        if labels is not None and not self.num_classes:
            raise ValueError(
                "`labels` were given to an unconditional MLPDenoiser (num_classes=0)"
            )
        if self.num_classes:
            if labels is None:
                labels = jnp.full(x.shape[:1], self.null_label, jnp.int32)
            labels = _checks.int_array(labels, "labels", shape=x.shape[:1], like="[B]")
            _checks.check_ids(labels, self.num_classes + 1, "labels")
            e = e + self.label_embed(labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        return self.out(jax.nn.silu(self.out_norm(h))).astype(x.dtype)
