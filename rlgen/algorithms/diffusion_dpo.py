"""Diffusion-DPO: direct preference optimisation of a diffusion or flow model from pairs.

Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization"
(arXiv 2311.12908). DPO's sequence log-likelihoods are replaced by the denoising losses
of the preferred (``w``) and rejected (``l``) samples, evaluated by the policy and by a
frozen reference at the same noised state: for a pair ``(x^w, x^l)`` with one shared
time ``t`` (`sampler.training_time`) and one shared noise ``eps``,

    err_w     = mean_dims (f_theta(x^w_t, t) - target(x^w, eps, t))^2
    err_w_ref = mean_dims (f_ref  (x^w_t, t) - target(x^w, eps, t))^2     (and for l)
    L = -log sigmoid(-beta ((err_w - err_w_ref) - (err_l - err_l_ref)))

(the paper's eq. 14 with the weighting ``T omega(lambda_t)`` constant and folded into
``beta``; ``x_t = sampler.noised(x, eps, t)``, the target in the sampler's output space:
epsilon, ``x0`` or ``v`` for a `DiffusionSampler`, the conditional velocity for a
`FlowSampler`). The reference implementation (diffusers' ``train_diffusion_dpo.py``)
writes the logit as ``-0.5 beta_dpo (...)`` with ``beta_dpo = 5000`` for Stable Diffusion
1.5, i.e. ``beta = 2500`` here (the default). The policy wins a pair when it denoises the
preferred sample better, relative to the reference, than the rejected one: the implicit
rewards are ``-beta (err - err_ref)``, and the loss is ``log 2`` while the policy equals the
reference.

The per-pair loss is `rlgen.ops.preference_loss` (DPO's kernel) with the "log-likelihoods"
``-err``: ``loss_type`` "sigmoid" (the paper; with ``label_smoothing`` it is cDPO),
"robust" or "hinge" (`LOSS_TYPES`), nothing copied.

The batch (every leaf leads with the pair axis ``B``): ``chosen [B, ...]`` and
``rejected [B, ...]`` float samples on the model's data scale, optional ``labels [B]``
(the condition shared by the pair; None: unconditional). The reference is the frozen copy
of the parameters given to ``init`` (``ref_params`` in the state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base, reference
from rlgen.generative import rollout

__all__ = [
    "LOSS_TYPES",
    "METRICS",
    "DiffusionDPOConfig",
    "DiffusionDPOState",
    "denoising_errors",
    "diffusion_dpo",
    "diffusion_dpo_loss",
]

#: The preference losses Diffusion-DPO offers (entries of `rlgen.ops.PREFERENCE_LOSS_TYPES`
#: that take a reference and no length normalisation).
LOSS_TYPES = ("sigmoid", "robust", "hinge")
#: The metrics `diffusion_dpo` and `diffusion_dpo_loss` return (each a 0-d float32 array).
METRICS = (
    "loss",
    "reward_accuracy",
    "reward_margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_mse",
    "rejected_mse",
    "skipped",
)
_REQUIRED = ("chosen", "rejected")
_OPTIONAL = ("labels",)


@dataclasses.dataclass(frozen=True)
class DiffusionDPOConfig:
    """Settings of `diffusion_dpo`.

    Fields:
      beta: the logit's scale ``beta`` (the paper's ``beta T omega``), > 0; 2500 matches
        the reference implementation's ``0.5 * beta_dpo`` with ``beta_dpo = 5000``.
      loss_type: one of `LOSS_TYPES` ("sigmoid": the paper's loss).
      label_smoothing: the preference flip rate ``e`` of "sigmoid" (cDPO) and "robust".
      max_grad_norm: global-norm gradient clipping (None: none).

    Example:
      >>> DiffusionDPOConfig(beta=100.0).loss_type
      'sigmoid'
      >>> DiffusionDPOConfig(beta=0.0)
      Traceback (most recent call last):
      ...
      ValueError: `beta` must lie in (0, inf], got 0
    """

    beta: float = 2500.0
    loss_type: str = _checks.option("sigmoid", LOSS_TYPES)
    label_smoothing: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        _checks.check_range(self.beta, "beta", 0.0, low_open=True)
        _checks.check_options(self)
        ops.check_loss_settings(self.loss_type, self.label_smoothing)
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)


class DiffusionDPOState(NamedTuple):
    """The state of `diffusion_dpo`: the protocol's fields, the key and the frozen
    reference (the parameters given to ``init``)."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    ref_params: Any


def _check_pairs(batch):
    base.check_batch(batch, _REQUIRED, _OPTIONAL, "Diffusion-DPO")
    chosen = _checks.float_array(
        batch["chosen"], "chosen", min_rank=2, what="([B, ...], the preferred samples)"
    )
    rejected = _checks.float_array(batch["rejected"], "rejected", shape=chosen.shape, like="chosen")
    labels = _checks.check_labels(batch.get("labels"), None, chosen.shape[0])
    return chosen, rejected.astype(chosen.dtype), labels


def denoising_errors(apply_fn, sampler, params, chosen, rejected, labels, t, noise):
    """Per-example denoising errors ``(err_w [B], err_l [B])`` of ``params``.

    ``err = mean over dimensions of (output - sampler.target(x, noise, t))^2`` at
    ``x_t = sampler.noised(x, noise, t)``, the same ``t [B]`` and ``noise [B, ...]`` for
    both samples of a pair; one model call on the ``2B`` stacked states. The model is
    called directly (``apply_fn(params, x_t, sampler.model_time(t), labels)``), without
    the sampler's guidance.

    Example:
      >>> from rlgen.generative.rollout import FlowSampler
      >>> apply_fn = lambda p, x, t, labels: p * jnp.ones_like(x)
      >>> x = jnp.ones((1, 2))
      >>> denoising_errors(apply_fn, FlowSampler(), 1.0, x, -x, None, jnp.zeros(1),
      ...                  jnp.zeros((1, 2)))  # targets x - 0 = +1 and -1
      (Array([0.], dtype=float32), Array([4.], dtype=float32))
    """
    both = jnp.concatenate([chosen, rejected])
    eps = jnp.concatenate([noise, noise])
    times = jnp.concatenate([t, t])
    both_labels = None if labels is None else jnp.concatenate([labels, labels])
    x_t = sampler.noised(both, eps, times)
    target = sampler.target(both, eps, times)
    output = apply_fn(params, x_t, sampler.model_time(times), both_labels)
    _checks.check_shape(jnp.asarray(output), x_t.shape, "apply_fn(params, x, t, labels)", "x")
    err = jnp.mean(jnp.square(output - target).reshape(both.shape[0], -1), axis=-1)
    err = err.astype(jnp.promote_types(err.dtype, jnp.float32))
    return err[: chosen.shape[0]], err[chosen.shape[0] :]


def diffusion_dpo_loss(
    params, ref_params, batch, key, apply_fn, sampler, config=DiffusionDPOConfig()
):
    """The Diffusion-DPO loss of a batch of pairs (module doc), mean over pairs.

    Args:
      params: the policy's parameters (differentiated).
      ref_params: the frozen reference's parameters (not differentiated).
      batch: ``{"chosen": [B, ...], "rejected": [B, ...], "labels": [B] (optional)}``.
      key: PRNG key for the pairs' times and noise (one of each per pair):
        ``t_key, noise_key = jax.random.split(key)``, ``t = sampler.training_time(t_key,
        B)``, ``noise = jax.random.normal(noise_key, chosen.shape)``.
      apply_fn: ``apply_fn(params, x [B, ...], time [B], labels or None) -> [B, ...]``.
      sampler: a `DiffusionSampler` or `FlowSampler` (its forward process and target).
      config: a `DiffusionDPOConfig`.

    Returns:
      ``(loss, metrics)``: the metrics of `METRICS` but ``skipped``.
      ``reward_accuracy`` is the share of pairs whose implicit reward margin is positive.

    Example:
      >>> from rlgen.generative.rollout import FlowSampler
      >>> apply_fn = lambda p, x, t, labels: p * x
      >>> batch = {"chosen": jnp.ones((4, 2)), "rejected": -jnp.ones((4, 2))}
      >>> loss, m = diffusion_dpo_loss(0.5, 0.5, batch, jax.random.key(0), apply_fn,
      ...                              FlowSampler())
      >>> round(float(loss), 6)  # log 2: the policy is the reference
      0.693147
    """
    rollout.check_sampler(sampler)
    chosen, rejected, labels = _check_pairs(batch)
    rows = chosen.shape[0]
    t_key, noise_key = jax.random.split(key)
    t = sampler.training_time(t_key, rows)
    noise = jax.random.normal(noise_key, chosen.shape, chosen.dtype)
    args = (chosen, rejected, labels, t, noise)
    err_w, err_l = denoising_errors(apply_fn, sampler, params, *args)
    ref_w, ref_l = jax.lax.stop_gradient(denoising_errors(apply_fn, sampler, ref_params, *args))
    out = ops.preference_loss(
        -err_w,
        -err_l,
        -ref_w,
        -ref_l,
        loss_type=config.loss_type,
        beta=config.beta,
        label_smoothing=config.label_smoothing,
    )
    margin = out.chosen_rewards - out.rejected_rewards
    loss = jnp.mean(out.losses)
    metrics = {
        "loss": loss,
        "reward_accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
        "reward_margin": jnp.mean(margin),
        "chosen_reward": jnp.mean(out.chosen_rewards),
        "rejected_reward": jnp.mean(out.rejected_rewards),
        "chosen_mse": jnp.mean(err_w),
        "rejected_mse": jnp.mean(err_l),
    }
    metrics = {k: jax.lax.stop_gradient(v).astype(jnp.float32) for k, v in metrics.items()}
    return loss, metrics


def diffusion_dpo(
    apply_fn: Callable,
    sampler,
    optimizer: optax.GradientTransformation,
    config: DiffusionDPOConfig = DiffusionDPOConfig(),
    *,
    seed: int = 0,
) -> base.Algorithm:
    """Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) as an `Algorithm(init, update)`.

    ``init(params)`` keeps the optimiser state, a PRNG key seeded by ``seed`` and a
    frozen copy of ``params`` as the reference (`rlgen.algorithms.reference`).
    ``update(state, batch)`` draws one time and one noise per pair, differentiates
    `diffusion_dpo_loss`, clips the gradient's global norm to ``max_grad_norm`` and takes
    one optimiser step; a non-finite loss or gradient (e.g. a NaN sample) skips the step
    (parameters and optimiser state unchanged) and sets the ``skipped`` metric to 1.

    Args:
      apply_fn: ``apply_fn(params, x [B, ...], time [B], labels or None) -> [B, ...]``.
      sampler: a `DiffusionSampler` or `FlowSampler`.
      optimizer: an optax transformation.
      config: a `DiffusionDPOConfig`.
      seed: seeds the state's PRNG key.

    Example:
      >>> from rlgen.generative.rollout import FlowSampler
      >>> apply_fn = lambda p, x, t, labels: p * jnp.ones_like(x)  # a constant velocity
      >>> algo = diffusion_dpo(apply_fn, FlowSampler(), optax.adam(0.05),
      ...                      DiffusionDPOConfig(beta=1.0))
      >>> state = algo.init(jnp.zeros(()))
      >>> batch = {"chosen": jnp.ones((8, 1)), "rejected": -jnp.ones((8, 1))}
      >>> for _ in range(20):
      ...     state, metrics = jax.jit(algo.update)(state, batch)
      >>> float(state.params) > 0.5, float(metrics["reward_accuracy"])
      (True, 1.0)
    """
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}")
    rollout.check_sampler(sampler)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if not isinstance(config, DiffusionDPOConfig):
        raise TypeError(f"`config` must be a DiffusionDPOConfig, got {type(config).__name__}")
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)

    def init(params):
        return DiffusionDPOState(
            params,
            tx.init(params),
            jnp.zeros((), jnp.int32),
            jax.random.key(seed),
            reference.init(params, "initial"),
        )

    def update(state: DiffusionDPOState, batch):
        key, step_key = jax.random.split(state.key)
        grads, metrics = jax.grad(diffusion_dpo_loss, has_aux=True)(
            state.params, state.ref_params, batch, step_key, apply_fn, sampler, config
        )
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(optax.tree.norm(grads))
        params, opt_state = base.apply_gradients(
            tx, state.params, state.opt_state, grads, skip=~finite
        )
        metrics = {**metrics, "skipped": (~finite).astype(jnp.float32)}
        new = DiffusionDPOState(params, opt_state, state.step + 1, key, state.ref_params)
        return new, metrics

    return base.Algorithm(init, update)
