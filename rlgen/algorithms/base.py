"""What every algorithm shares: the `Algorithm` pair, the state protocol, optimiser steps,
batch checks and the non-finite-reward guard (the data-parallel reductions are
`rlgen.ops.psum`, `rlgen.ops.global_token_mean` and their kin).

The state protocol
==================

An algorithm is a pair of pure functions, ``state = init(params)`` and
``state, metrics = update(state, batch)``, in the manner of an optax transformation. Its
state is a NamedTuple of arrays whose structure, shapes and dtypes never change from one
update to the next, so it can be a `lax.scan` carry, be vmapped, sharded and saved. Every
state begins with the same three fields (`check_state` checks them):

* ``params``: the trained parameters, a pytree of arrays; for an algorithm that trains
  several models (a GAN's generator and discriminator) a dict ``{name: params}``.
* ``opt_state``: the optimiser state of ``params``: one optax state, or, with one
  transformation per model (`per_model`), a dict ``{name: state}``; stateless wrappers
  (gradient clipping) may be chained around it.
* ``step``: an int32 scalar, the number of ``update`` calls so far.

A family adds what else it needs as further fields, after these three:

* ``key``: a PRNG key, split inside ``update`` for each random draw (PPO's minibatch
  shuffling, the noise of a denoising loss): the next update's randomness is part of the
  state, so a saved state resumes exactly.
* ``ref_params``: a frozen reference or teacher (`rlgen.algorithms.reference`).
* anything else carried from update to update: an exponential moving average of the
  parameters (`ema_update`), a persistent buffer (an energy model's replay buffer of
  negatives), counters.

The trainers (`rlgen.trainers.Trainer`) rely on nothing more: after each update they write
``params`` into the NNX models and ``opt_state`` into the ``nnx.Optimizer`` s, and keep the
whole state, every added field included, in ``trainer.state`` and in its checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks

Params = Any
Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]


class Algorithm(NamedTuple):
    """A pure RL algorithm, in the manner of an `optax.GradientTransformation`.

    `state = init(params)`; `state, metrics = update(state, batch)`. Both are pure and
    safe under `jit`, `vmap`, `lax.scan`, `pmap` and `shard_map`; the state is a
    NamedTuple of arrays whose structure and dtypes never change.
    """

    init: Callable[[Params], Any]
    update: Callable[[Any, Batch], tuple[Any, Metrics]]


#: The fields every algorithm state begins with (the module doc's state protocol).
STATE_FIELDS = ("params", "opt_state", "step")


def check_state(state, who: str = "the algorithm's init") -> None:
    """Raises TypeError unless ``state`` is a NamedTuple beginning with `STATE_FIELDS`.

    Example:
      >>> class MyState(NamedTuple):
      ...     params: Any
      ...     opt_state: Any
      ...     step: jax.Array
      ...     ema_params: Any
      >>> check_state(MyState(jnp.ones(2), (), jnp.zeros((), jnp.int32), jnp.ones(2)))
      >>> check_state({"params": 1})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      TypeError: the algorithm's init must return a NamedTuple whose first fields are ...
    """
    fields = getattr(type(state), "_fields", None)
    if not isinstance(state, tuple) or fields is None or tuple(fields[:3]) != STATE_FIELDS:
        got = type(state).__name__ if fields is None else f"{type(state).__name__}{fields}"
        raise TypeError(
            f"{who} must return a NamedTuple whose first fields are {STATE_FIELDS}; got {got}"
        )
    step = state.step
    if jnp.shape(step) != () or not jnp.issubdtype(jnp.asarray(step).dtype, jnp.integer):
        raise TypeError(
            f"{who} must return an integer scalar `step`, got shape {jnp.shape(step)} "
            f"dtype {jnp.asarray(step).dtype}"
        )


def per_model(transformations: Mapping[str, optax.GradientTransformation]):
    """One optax transformation per model of a ``{name: params}`` dict.

    ``init`` and ``update`` act on dicts keyed like ``transformations``: each model's
    parameters get their own optimiser (a GAN's generator and discriminator with their own
    learning rates), and the state is the dict ``{name: state}``.

    Example:
      >>> tx = per_model({"g": optax.sgd(1.0), "d": optax.sgd(0.1)})
      >>> params = {"g": jnp.ones(2), "d": jnp.ones(2)}
      >>> updates, _ = tx.update({"g": jnp.ones(2), "d": jnp.ones(2)}, tx.init(params))
      >>> updates["g"], updates["d"]
      (Array([-1., -1.], dtype=float32), Array([-0.1, -0.1], dtype=float32))
    """
    names = tuple(transformations)

    def init(params):
        return {k: transformations[k].init(params[k]) for k in names}

    def update(updates, state, params=None):
        out = {
            k: transformations[k].update(
                updates[k], state[k], None if params is None else params[k]
            )
            for k in names
        }
        return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}

    return optax.GradientTransformation(init, update)


def ema_update(average, params, decay):
    """An exponential moving average of parameters: ``decay * average + (1 - decay) * params``.

    Polyak averaging (Polyak and Juditsky 1992), as diffusion models keep it for sampling
    (Ho et al. 2020). Computed as ``average + (1 - decay) (params - average)`` leaf by
    leaf, in each leaf's dtype; ``decay`` may be traced (e.g. warmed up with the step).

    Example:
      >>> ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.9)["w"]
      Array([0.1, 0.1], dtype=float32)
    """
    return jax.tree.map(
        lambda a, p: (a + (1.0 - decay) * (p - a)).astype(a.dtype), average, params
    )


def with_grad_clipping(optimizer: optax.GradientTransformation, max_grad_norm):
    """Chains `optax.clip_by_global_norm(max_grad_norm)` before `optimizer` (None: as is).

    With several models (`per_model`), the norm is the global norm over all of them.
    """
    if max_grad_norm is None:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optimizer)


def apply_gradients(optimizer, params, opt_state, grads, *, skip=None):
    """One optimiser step; with `skip` (a boolean scalar) true, returns the inputs unchanged.

    Updates are cast to each parameter's dtype, so bfloat16 parameters stay bfloat16.
    """
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = jax.tree.map(
        lambda p, u: (p + u.astype(p.dtype)).astype(p.dtype), params, updates
    )
    if skip is None:
        return new_params, new_opt_state
    keep = lambda new, old: jax.tree.map(  # noqa: E731
        lambda n, o: jnp.where(skip, o, n), new, old
    )
    return keep(new_params, params), keep(new_opt_state, opt_state)


def check_batch(batch: Batch, required, optional, algorithm: str) -> None:
    """Raises ValueError naming the keys required when `batch` lacks one or has extras."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{algorithm} batch must be a dict of arrays, got {type(batch).__name__}")
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(
            f"{algorithm} batch is missing key(s) {missing}; required keys are "
            f"{list(required)}, optional keys {list(optional)}; got {sorted(batch)}"
        )
    unknown = [k for k in batch if k not in required and k not in optional]
    if unknown:
        raise ValueError(
            f"{algorithm} batch has unknown key(s) {unknown}; required keys are "
            f"{list(required)}, optional keys {list(optional)}"
        )


def static_group_size(batch: Batch, default: int) -> int:
    """The group size from `batch["group_size"]` (a static int) or `default`.

    Groups are contiguous rows (`rlgen.ops.group_advantages`), so the size fixes array
    shapes: a traced value (passed through `jit`) is a TypeError.
    """
    g = batch.get("group_size", default)
    value = None if isinstance(g, bool) else _checks.concrete_value(g)
    if value is None or value != int(value):
        raise TypeError(
            "batch['group_size'] must be a static Python int (it fixes the group layout); "
            f"got {type(g).__name__}; pass it outside `jit` or set the config's "
            "`num_generations`"
        )
    return _checks.check_positive_int(int(value), "group_size")


def check_rewards(rewards, name="rewards"):
    """Validates floating rewards and returns `(rewards, n_nonfinite)`.

    Non-finite rewards are reported, not trained on: eagerly (concrete rewards) this
    raises ValueError; under `jit` the caller skips the parameter update for that batch
    and says so in its ``skipped`` metric (1.0). No host callback is compiled into the
    step: it runs on any backend, under `vmap` and `scan` at no cost, and the trainers
    turn a reported skip into a host warning (`rlgen.trainers.Trainer`).
    """
    rewards = _checks.as_array(rewards, name)
    _checks.check_float(rewards, name)
    n_bad = jnp.sum(~jnp.isfinite(rewards))
    if not isinstance(rewards, jax.core.Tracer) and int(n_bad):
        raise ValueError(
            f"`{name}` holds {int(n_bad)} non-finite value(s) (NaN or inf); refusing to "
            "train on them"
        )
    return rewards, n_bad


def sequence_rewards_to_steps(rewards, mask):
    """Places `[B]` sequence rewards on each row's last valid step of a `[B, T]` mask."""
    valid = mask > 0
    horizon = mask.shape[1]
    last = horizon - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    onehot = jnp.arange(horizon)[None, :] == last[:, None]
    return jnp.where(onehot & valid, rewards[:, None], 0.0)
