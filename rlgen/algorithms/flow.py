"""Flow-matching training as an init/update pair: `supervised` on
`rlgen.generative.flow.flow_matching_loss`, with an optional EMA of the parameters and,
for rectified flow's reflow stage, a frozen teacher in the state.

The state (`FlowState`) follows the protocol of `rlgen.algorithms.base`: `supervised`'s
``params``, ``opt_state``, ``step`` and ``key`` (split at each update for the step's
noise, times and label dropout), then ``ema_params`` (the moving average, or ``()``
without one) and ``ref_params`` (the reflow teacher's frozen parameters, or ``()``).
Everything a run needs to resume exactly is in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen.algorithms import base
from rlgen.algorithms.supervised import SupervisedState, supervised
from rlgen.generative.flow import METRICS as LOSS_METRICS
from rlgen.generative.flow import FlowConfig, flow_matching_loss

__all__ = ["METRICS", "FlowState", "flow_matching"]

#: The metrics `flow_matching`'s update returns: the loss, the loss's `METRICS` and
#: `supervised`'s ``skipped`` (1.0 when a non-finite loss or gradient left the
#: parameters, optimiser state and average unchanged).
METRICS = ("loss", *LOSS_METRICS, "skipped")


class FlowState(NamedTuple):
    """The state of `flow_matching`."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    ema_params: Any  # the parameters' moving average, () without config.ema_decay
    ref_params: Any  # the frozen reflow teacher's parameters, () without reflow


def flow_matching(
    model_fn: Callable[[Any], Callable],
    optimizer: optax.GradientTransformation,
    config: FlowConfig | None = None,
    *,
    teacher_fn: Callable[[Any], Callable] | None = None,
    teacher_params: Any = None,
    seed: int = 0,
) -> base.Algorithm:
    """Flow matching (Lipman et al. 2022, arXiv 2210.02747), OT-CFM (Tong et al. 2023,
    arXiv 2302.00482) or reflow (Liu et al. 2022, arXiv 2209.03003), by gradient descent.

    ``update`` is one `supervised` step (gradient of ``flow_matching_loss(model_fn(params),
    batch, key, config, teacher)`` with ``key`` a fresh split of the state's key, clipping
    to ``config.max_grad_norm``, ``optimizer``; a non-finite loss or gradient skips the
    step and reports ``skipped``), then, with ``config.ema_decay``, moves ``ema_params``
    towards the new parameters (`rlgen.algorithms.ema_update`; not on a skipped step).
    The teacher is ``teacher_fn`` of the state's frozen ``ref_params``.

    Args:
      model_fn: ``params -> velocity model (x, t [B], labels or None) -> v``.
      optimizer: an optax transformation.
      config: a `FlowConfig` (None: ``FlowConfig()``).
      teacher_fn: ``params -> the teacher's velocity model``; required with
        ``config.reflow`` (and refused without it).
      teacher_params: the teacher's parameters, copied once into the state's
        ``ref_params`` (frozen: never differentiated nor updated, checkpointed).
      seed: seeds the state's PRNG key.

    Example:
      >>> # learn the constant velocity of data = noise + 2 (a straight flow)
      >>> model_fn = lambda w: (lambda x, t, labels: jnp.broadcast_to(w, x.shape))
      >>> algo = flow_matching(model_fn, optax.sgd(0.5))
      >>> state = algo.init(jnp.zeros(()))
      >>> batch = {"images": jnp.full((16, 1), 2.0)}
      >>> for _ in range(30):
      ...     state, metrics = jax.jit(algo.update)(state, batch)
      >>> round(float(state.params), 1), float(metrics["skipped"])
      (2.0, 0.0)
    """
    if not callable(model_fn):
        raise TypeError(f"`model_fn` must be callable, got {type(model_fn).__name__}")
    config = FlowConfig() if config is None else config
    if not isinstance(config, FlowConfig):
        raise TypeError(f"`config` must be a FlowConfig, got {type(config).__name__}")
    has_teacher = teacher_fn is not None or teacher_params is not None
    if config.reflow and (teacher_fn is None or teacher_params is None):
        raise ValueError(
            "FlowConfig(reflow=True) needs a frozen teacher: pass `teacher_fn` (params -> "
            "velocity model) and `teacher_params`"
        )
    if has_teacher and not config.reflow:
        raise ValueError("a teacher is used by reflow only: set FlowConfig(reflow=True)")
    decay = config.ema_decay

    def inner(ref_params):
        """`supervised` on the loss, the teacher rebuilt from ``ref_params``."""

        def loss_fn(params, batch, key, step):
            teacher = teacher_fn(ref_params) if config.reflow else None
            return flow_matching_loss(model_fn(params), batch, key, config, teacher)

        return supervised(loss_fn, optimizer, max_grad_norm=config.max_grad_norm, seed=seed)

    inner(())  # checks the optimizer and the seed now

    def init(params):
        return FlowState(
            *inner(()).init(params),
            ema_params=() if decay is None else jax.tree.map(jnp.copy, params),
            ref_params=jax.tree.map(jnp.copy, teacher_params) if config.reflow else (),
        )

    def update(state: FlowState, batch):
        new, metrics = inner(state.ref_params).update(SupervisedState(*state[:4]), batch)
        average = state.ema_params
        if decay is not None:
            moved = base.ema_update(average, new.params, decay)
            kept = metrics["skipped"] > 0
            average = jax.tree.map(lambda old, avg: jnp.where(kept, old, avg), average, moved)
        return FlowState(*new, ema_params=average, ref_params=state.ref_params), metrics

    return base.Algorithm(init, update)
