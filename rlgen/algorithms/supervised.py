"""Supervised training as an init/update pair: one optimiser step on a loss per batch.

The generative families' losses (`rlgen.generative`: next-token cross-entropy, and the
ELBO, denoising and flow-matching losses to come) train through this algorithm, so every
trainer, supervised or RL, is an adapter over one pure ``init``/``update`` pair. The loss
receives the step's randomness and the step count explicitly:

    loss_fn(params, batch, key, step) -> (loss, metrics)

``key`` is split off the state's key at each update (`SupervisedState.key`), ``step`` is
the state's update count (schedules: KL annealing, scheduled sampling). A batch whose loss
or gradient is not finite leaves the parameters and optimiser state as they were
(`rlgen.algorithms.apply_gradients` with ``skip``) and says so in the ``skipped`` metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base


class SupervisedState(NamedTuple):
    """The state of `supervised`: the protocol's three fields and the PRNG key."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def supervised(
    loss_fn: Callable[..., tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    *,
    max_grad_norm: float | None = None,
    seed: int = 0,
    axis_name: Any = None,
) -> base.Algorithm:
    """Minimise ``loss_fn`` by gradient descent, one optimiser step per batch.

    ``update`` computes ``grad_params loss_fn(params, batch, key, step)`` with ``key`` a
    fresh split of the state's key, clips its global norm to ``max_grad_norm`` (None: no
    clipping) and applies ``optimizer``. It returns ``{"loss": loss, **metrics,
    "skipped": s}``: when the loss or a gradient is not finite (NaN or inf), the update is
    skipped (parameters and optimiser state unchanged; the step count and key advance)
    and ``s`` is 1.0, else 0.0.

    Args:
      loss_fn: ``(params, batch, key, step) -> (scalar loss, metrics dict of 0-d arrays)``.
      optimizer: an optax transformation (`rlgen.algorithms.per_model` for several models).
      max_grad_norm: global-norm clipping of the gradients (None: none).
      seed: seeds the state's PRNG key.
      axis_name: under ``shard_map``/``pmap``, the mapped axis the batch is split over:
        gradients and metrics are averaged over it (shards of equal size).

    Example:
      >>> def loss_fn(w, batch, key, step):
      ...     loss = jnp.mean((batch["x"] * w - batch["y"]) ** 2)
      ...     return loss, {}
      >>> algo = supervised(loss_fn, optax.sgd(0.1))
      >>> state = algo.init(jnp.zeros(()))
      >>> batch = {"x": jnp.ones(4), "y": jnp.full(4, 2.0)}
      >>> for _ in range(50):
      ...     state, metrics = jax.jit(algo.update)(state, batch)
      >>> round(float(state.params), 3), int(state.step)
      (2.0, 50)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if max_grad_norm is not None:
        _checks.check_range(max_grad_norm, "max_grad_norm", 0.0, low_open=True)
    _checks.check_int(seed, "seed")
    tx = base.with_grad_clipping(optimizer, max_grad_norm)

    def init(params):
        return SupervisedState(
            params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(seed)
        )

    def update(state: SupervisedState, batch):
        key, step_key = jax.random.split(state.key)
        grads, (loss, metrics) = jax.grad(_with_loss(loss_fn), has_aux=True)(
            ops.shard_local(state.params, axis_name), batch, step_key, state.step
        )
        grads, loss, metrics = jax.tree.map(
            lambda x: ops.pmean(x, axis_name), (grads, loss, metrics)
        )
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
            (loss, grads)
        )]))
        params, opt_state = base.apply_gradients(
            tx, state.params, state.opt_state, grads, skip=~finite
        )
        metrics = {"loss": loss, **metrics, "skipped": (~finite).astype(jnp.float32)}
        return SupervisedState(params, opt_state, state.step + 1, key), metrics

    return base.Algorithm(init, update)


def _with_loss(loss_fn):
    """``loss_fn`` as ``(loss, (loss, metrics))`` for `jax.grad` with ``has_aux``."""

    def wrapped(params, batch, key, step):
        out = loss_fn(params, batch, key, step)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise TypeError(
                "`loss_fn(params, batch, key, step)` must return (scalar loss, metrics dict); "
                f"got {type(out).__name__}"
            )
        loss, metrics = out
        if jnp.shape(loss) != ():
            raise ValueError(f"`loss_fn` must return a scalar loss, got shape {jnp.shape(loss)}")
        return loss, (loss, metrics)

    return wrapped
