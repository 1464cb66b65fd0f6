"""Energy-based training as an init/update pair: contrastive divergence with persistent
SGLD negatives, the replay buffer in the state.

Each ``update`` on a batch ``{"images": x+ [B, *sample_shape]}`` does, inside the one
compiled step (Du and Mordatch 2019, arXiv 1903.08689; Grathwohl et al. 2019, arXiv
1912.03263):

1. draws ``B`` chains from the state's replay buffer, ``reinit_prob`` of them restarted
   from uniform noise (`rlgen.generative.energy.buffer_sample`);
2. runs them ``sgld_steps`` steps of SGLD on the current energy
   (`rlgen.generative.energy.langevin_sample`): the negatives ``x-``, constants of the loss;
3. takes one optimiser step on `rlgen.generative.energy.contrastive_divergence_loss`
   ``mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2)``;
4. writes the chains' final states back into their buffer slots.

A non-finite loss, gradient or negative skips the step: parameters, optimiser state and
buffer stay as they were (`rlgen.algorithms.apply_gradients` with ``skip``), the key and
the step count advance, and the metric ``skipped`` is 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks
from rlgen.algorithms import base
from rlgen.generative import energy as E

#: The metrics of `contrastive_divergence`'s update.
METRICS = ("loss", *E.METRICS, "skipped")


class EnergyState(NamedTuple):
    """The state of `contrastive_divergence`: the protocol's three fields, the PRNG key and
    the replay buffer ``[buffer_size, *sample_shape]`` of the persistent chains."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    buffer: jax.Array


def contrastive_divergence(
    energy_fn: Callable[[Any, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    config: E.EnergyConfig | None = None,
    *,
    sample_shape,
    seed: int = 0,
) -> base.Algorithm:
    """An energy-based model trained by persistent contrastive divergence with SGLD.

    Args:
      energy_fn: ``(params, x [N, *sample_shape]) -> [N]`` floating energies.
      optimizer: an optax transformation.
      config: an `rlgen.generative.EnergyConfig` (SGLD, buffer, regulariser, clipping;
        None: the defaults).
      sample_shape: one example's shape, e.g. ``(64,)`` (fixes the buffer's shape).
      seed: seeds the state's PRNG key (and through it the initial buffer).

    Returns:
      ``Algorithm(init, update)``: ``init(params)`` -> `EnergyState` (the buffer drawn
      uniformly on ``[init_low, init_high]``); ``update(state, {"images": [B, ...]})`` ->
      ``(state, metrics)`` with `METRICS`. ``B`` must not exceed ``buffer_size``.

    Example:
      >>> from rlgen.generative.energy import EnergyConfig
      >>> energy_fn = lambda mu, x: 0.5 * jnp.sum((x - mu) ** 2, axis=-1)
      >>> config = EnergyConfig(sgld_steps=20, step_size=0.1, noise_scale=0.1,
      ...                       buffer_size=64, alpha=0.0)
      >>> algo = contrastive_divergence(energy_fn, optax.sgd(0.1), config, sample_shape=(2,))
      >>> state = algo.init(jnp.zeros(2))
      >>> batch = {"images": jnp.full((32, 2), 0.5)}
      >>> for _ in range(100):
      ...     state, metrics = jax.jit(algo.update)(state, batch)
      >>> bool(jnp.allclose(state.params, 0.5, atol=0.1)), state.buffer.shape
      (True, (64, 2))
    """
    if not callable(energy_fn):
        raise TypeError(f"`energy_fn` must be callable, got {type(energy_fn).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    config = E.EnergyConfig() if config is None else config
    if not isinstance(config, E.EnergyConfig):
        raise TypeError(f"`config` must be an EnergyConfig, got {type(config).__name__}")
    sample_shape = _checks.check_shape_tuple(sample_shape, "sample_shape")
    _checks.check_int(seed, "seed")
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)

    def init(params):
        key, buffer_key = jax.random.split(jax.random.key(seed))
        buffer = E.buffer_init(
            buffer_key, config.buffer_size, sample_shape,
            low=config.init_low, high=config.init_high,
        )
        return EnergyState(params, tx.init(params), jnp.zeros((), jnp.int32), key, buffer)

    def update(state: EnergyState, batch):
        base.check_batch(batch, ("images",), (), "the energy model's")
        positives = E.check_images(
            batch["images"], sample_shape, config.init_low, config.init_high
        ).astype(jnp.float32)
        key, chain_key = jax.random.split(state.key)
        negatives, indices = E.persistent_negatives(
            lambda x: energy_fn(state.params, x), state.buffer, chain_key,
            positives.shape[0], config,
        )

        def loss_fn(params):
            return E.contrastive_divergence_loss(
                lambda x: energy_fn(params, x), positives, negatives, alpha=config.alpha
            )

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(negatives))
        for g in jax.tree.leaves(grads):
            finite &= jnp.all(jnp.isfinite(g))
        skip = ~finite
        params, opt_state = base.apply_gradients(
            tx, state.params, state.opt_state, grads, skip=skip
        )
        written = E.buffer_write(state.buffer, indices, negatives)
        buffer = jnp.where(skip, state.buffer, written)
        metrics = {"loss": loss, **metrics, "skipped": skip.astype(jnp.float32)}
        return EnergyState(params, opt_state, state.step + 1, key, buffer), metrics

    return base.Algorithm(init, update)
