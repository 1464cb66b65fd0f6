"""Adversarial training as an init/update pair: ``d_steps`` discriminator updates, then one
generator update, per batch of real images.

The losses and penalties are `rlgen.generative.gan`'s; this module alternates the two
models' optimisers over them, with the noise drawn from the state's key, so an update is a
pure function that can be jitted, scanned and vmapped over seeds, and a saved state
resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks
from rlgen.algorithms import base
from rlgen.generative import gan as gan_lib
from rlgen.generative.gan import GANConfig

__all__ = ["MODELS", "GANState", "gan"]

#: The two models of a GAN, the keys of the state's ``params`` and ``opt_state``.
MODELS = ("discriminator", "generator")
_REQUIRED, _OPTIONAL = ("images",), ()


class GANState(NamedTuple):
    """The state of `gan`: the protocol's three fields, the noise key and the EMA.

    ``params`` and ``opt_state`` are dicts ``{"discriminator": ..., "generator": ...}``
    (one optimiser state per model, as `rlgen.algorithms.per_model` lays them out);
    ``ema_params`` is the moving average of the generator's parameters
    (`GANConfig.ema_decay`), or None without one.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    ema_params: Any = None


def gan(
    apply_fn: Callable[[Any], Mapping[str, Callable]],
    optimizers: Mapping[str, optax.GradientTransformation],
    config: GANConfig | None = None,
    *,
    latent_shape,
    seed: int = 0,
) -> base.Algorithm:
    """A GAN as an `Algorithm(init, update)` pair over ``{"discriminator", "generator"}``.

    ``update(state, {"images": x [B, ...]})`` takes ``config.d_steps`` discriminator steps,
    each minimising `rlgen.generative.gan.discriminator_objective` on the real batch and a
    fresh batch of ``B`` generated examples, then one generator step on
    `generator_objective` against the updated discriminator (Goodfellow et al. 2014,
    arXiv 1406.2661, Algorithm 1; ``d_steps`` is its ``k``). Each model has its own optax
    transformation and state; with ``config.max_grad_norm`` each model's gradient is
    clipped to it. A step whose loss or gradient is not finite is skipped (parameters and
    optimiser state unchanged) and counted in the ``skipped`` metric. With
    ``config.ema_decay`` the state carries an EMA of the generator's parameters, updated
    after each generator step with decay `rlgen.generative.gan.ema_decay_at` (warmed up).

    Args:
      apply_fn: ``params -> {"discriminator": D, "generator": G}`` with ``G(z [B,
        *latent_shape]) -> x [B, ...]`` and ``D(x) -> [B]`` (or ``[B, 1]``) callables of
        the full ``{"discriminator", "generator"}`` parameter dict (the trainers pass their
        NNX ``merge``).
      optimizers: ``{"discriminator": tx_d, "generator": tx_g}``, optax transformations.
      config: a `GANConfig` (None: ``GANConfig()``).
      latent_shape: the generator's latent size (an int) or shape.
      seed: seeds the state's PRNG key (all the noise of training).

    Returns:
      ``Algorithm(init, update)``; ``update`` returns the metrics
      `rlgen.generative.gan.METRICS`.

    Example:
      >>> apply_fn = lambda p: {"generator": lambda z: z + p["generator"],
      ...                       "discriminator": lambda x: x[:, 0] * p["discriminator"]}
      >>> tx = {"generator": optax.sgd(0.1), "discriminator": optax.sgd(0.1)}
      >>> algo = gan(apply_fn, tx, GANConfig(d_steps=2), latent_shape=1)
      >>> state = algo.init({"generator": jnp.zeros(1), "discriminator": jnp.zeros(())})
      >>> state, metrics = jax.jit(algo.update)(state, {"images": jnp.ones((8, 1))})
      >>> sorted(metrics) == sorted(gan_lib.METRICS), int(state.step)
      (True, 1)
    """
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}")
    config = GANConfig() if config is None else config
    if not isinstance(config, GANConfig):
        raise TypeError(f"`config` must be a GANConfig, got {type(config).__name__}")
    if not isinstance(optimizers, Mapping) or set(optimizers) != set(MODELS):
        got = sorted(optimizers) if isinstance(optimizers, Mapping) else type(optimizers).__name__
        raise TypeError(
            f"`optimizers` must be a dict {{'discriminator': tx, 'generator': tx}} of optax "
            f"transformations, got {got}"
        )
    for name in MODELS:
        if not isinstance(optimizers[name], optax.GradientTransformation):
            raise TypeError(
                f"`optimizers[{name!r}]` must be an optax.GradientTransformation, got "
                f"{type(optimizers[name]).__name__}"
            )
    latent_shape = gan_lib.as_latent_shape(latent_shape)
    _checks.check_int(seed, "seed")
    tx = {k: base.with_grad_clipping(optimizers[k], config.max_grad_norm) for k in MODELS}

    def init(params):
        _check_params(params)
        opt_state = {k: tx[k].init(params[k]) for k in MODELS}
        ema = None
        if config.ema_decay is not None:
            ema = jax.tree.map(jnp.copy, params["generator"])
        return GANState(params, opt_state, jnp.zeros((), jnp.int32), jax.random.key(seed), ema)

    def models(params):
        out = apply_fn(params)
        if not isinstance(out, Mapping) or not set(MODELS) <= set(out):
            raise TypeError(
                "`apply_fn(params)` must return a dict {'discriminator': D, 'generator': G} "
                f"of callables, got {type(out).__name__}"
            )
        return out

    def generate(params, key, num):
        fake = models(params)["generator"](gan_lib.latent_noise(key, num, latent_shape))
        return _checks.float_array(fake, "generator(z)")

    def train(name, params, opt_state, loss_fn):
        """One optimiser step of model ``name`` on ``loss_fn(params) -> (loss, metrics)``."""
        grads, (loss, metrics) = jax.grad(
            lambda p: _with_loss(loss_fn({**params, name: p})), has_aux=True
        )(params[name])
        finite = jnp.isfinite(loss) & _all_finite(grads)
        new, new_state = base.apply_gradients(
            tx[name], params[name], opt_state[name], grads, skip=~finite
        )
        skipped = (~finite).astype(jnp.float32)
        return {**params, name: new}, {**opt_state, name: new_state}, metrics, skipped

    def update(state: GANState, batch):
        base.check_batch(batch, _REQUIRED, _OPTIONAL, "GAN")
        real = _checks.float_array(batch["images"], "images", min_rank=2, what="([B, ...])")
        num = real.shape[0]
        key, d_key, g_key = jax.random.split(state.key, 3)

        def d_step(carry, step_key):
            params, opt_state = carry
            z_key, gp_key = jax.random.split(step_key)
            fake = jax.lax.stop_gradient(generate(params, z_key, num))
            if fake.shape != real.shape:
                raise ValueError(
                    f"`images` must have the generator's output shape: got shape "
                    f"{real.shape}, the generator makes {fake.shape} from {num} latents"
                )

            def loss_fn(p):
                critic = models(p)["discriminator"]
                return gan_lib.discriminator_objective(critic, real, fake, gp_key, config)

            params, opt_state, metrics, skipped = train(
                "discriminator", params, opt_state, loss_fn
            )
            return (params, opt_state), (metrics, skipped)

        d_keys = jax.random.split(d_key, config.d_steps)
        (params, opt_state), (d_metrics, d_skipped) = jax.lax.scan(
            d_step, (state.params, state.opt_state), d_keys
        )

        def g_loss_fn(p):
            fake = generate(p, g_key, num)
            return gan_lib.generator_objective(models(p)["discriminator"], fake, config)

        params, opt_state, g_metrics, g_skipped = train("generator", params, opt_state, g_loss_fn)
        ema = state.ema_params
        if config.ema_decay is not None:
            ema = base.ema_update(ema, params["generator"], gan_lib.ema_decay_at(
                config.ema_decay, state.step))
        metrics = {k: jnp.mean(v) for k, v in d_metrics.items()}
        metrics.update(g_metrics, skipped=jnp.sum(d_skipped) + g_skipped)
        metrics = {k: metrics[k] for k in gan_lib.METRICS}
        return GANState(params, opt_state, state.step + 1, key, ema), metrics

    return base.Algorithm(init, update)


def _check_params(params):
    if not isinstance(params, Mapping) or set(params) != set(MODELS):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise TypeError(
            f"GAN `params` must be a dict {{'discriminator': ..., 'generator': ...}}, got {got}"
        )


def _with_loss(out):
    loss, metrics = out
    return loss, (loss, metrics)


def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
