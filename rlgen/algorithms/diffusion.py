"""Diffusion training as an init/update pair: `supervised` on a denoising loss, plus an
exponential moving average of the parameters updated inside the same compiled step.

Diffusion models are sampled from the moving average of their parameters, not from the
last iterate (Ho et al. 2020, arXiv 2006.11239; Song and Ermon 2020, arXiv 2006.09011):
the average is part of the algorithm's state (``ema_params``), so it is saved, restored,
sharded and scanned like the rest. The loss itself (`rlgen.generative.diffusion.diffusion_loss`)
is handed in, so this pair knows nothing of schedules or predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks
from rlgen.algorithms import base
from rlgen.algorithms.supervised import SupervisedState, supervised

__all__ = ["DiffusionState", "diffusion"]


class DiffusionState(NamedTuple):
    """The state of `diffusion`: `supervised`'s fields and the moving average."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    ema_params: Any


def diffusion(
    loss_fn: Callable[..., tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float = 0.999,
    max_grad_norm: float | None = None,
    seed: int = 0,
    axis_name: Any = None,
) -> base.Algorithm:
    """One optimiser step of ``loss_fn`` per batch (`supervised`), then the EMA update

        ema_params <- ema_decay * ema_params + (1 - ema_decay) * params

    with the new parameters (`rlgen.algorithms.ema_update`; Polyak and Juditsky 1992).
    ``init`` starts the average at the initial parameters.

    Args:
      loss_fn: ``(params, batch, key, step) -> (scalar loss, metrics dict)``, e.g.
        `rlgen.generative.diffusion.diffusion_loss` of the model rebuilt from ``params``.
      optimizer: an optax transformation.
      ema_decay: the average's decay in ``[0, 1]`` (0: the average is the parameters).
      max_grad_norm: global-norm clipping of the gradients (None: none).
      seed: seeds the state's PRNG key (timesteps, noise, label dropout).
      axis_name: under ``shard_map``/``pmap``, the axis the batch is split over.

    Example:
      >>> def loss_fn(w, batch, key, step):
      ...     return jnp.mean((batch["x"] * w - batch["y"]) ** 2), {}
      >>> algo = diffusion(loss_fn, optax.sgd(0.1), ema_decay=0.5)
      >>> state = algo.init(jnp.zeros(()))
      >>> batch = {"x": jnp.ones(4), "y": jnp.full(4, 2.0)}
      >>> state, metrics = algo.update(state, batch)
      >>> float(state.params), float(state.ema_params)  # 0.5 * 0 + 0.5 * 0.4
      (0.4000000059604645, 0.20000000298023224)
    """
    _checks.check_range(ema_decay, "ema_decay", 0.0, 1.0)
    inner = supervised(
        loss_fn, optimizer, max_grad_norm=max_grad_norm, seed=seed, axis_name=axis_name
    )

    def init(params):
        return DiffusionState(*inner.init(params), ema_params=jax.tree.map(jnp.copy, params))

    def update(state: DiffusionState, batch):
        new, metrics = inner.update(SupervisedState(*state[:4]), batch)
        average = base.ema_update(state.ema_params, new.params, ema_decay)
        return DiffusionState(*new, ema_params=average), metrics

    return base.Algorithm(init, update)
