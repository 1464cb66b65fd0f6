"""DiffusionNFT: online diffusion RL on the forward process (Zheng et al. 2025, arXiv 2509.16117).

Negative-aware fine-tuning trains a diffusion or flow model on its own final samples with
the ordinary denoising (flow-matching) objective, split by reward into an implicit
positive and an implicit negative policy. No per-step log-probabilities, no trajectories:
any sampler may produce the samples (`rlgen.generative.rollout.rollout` with either
sampler), and the loss sees only ``samples [B, ...]``, their rewards and class labels.

The method (one update, samples ``x_0`` drawn by the *old* policy ``v_old``)
===========================================================================

1. Soft labels (the paper's "optimality probability"): group-relative advantages
   ``A_i`` of the rewards (`rlgen.ops.group_advantages`, groups of ``num_generations``
   contiguous rows, population std as the reference implementation) mapped into
   ``[0, 1]``::

       r_i = 1/2 + 1/2 clip(A_i / adv_clip_max, -1, 1)

2. The forward process of the sampler (``training_time``, ``noised``, ``target``): per
   sample a time ``t`` and noise ``e``, ``x_t = noised(x_0, e, t)`` and the output a
   perfect model gives, ``target(x_0, e, t)`` (a velocity for `FlowSampler`, epsilon, x0
   or v for `DiffusionSampler`; all are affine in ``x_0`` given ``x_t``, so mixing outputs
   is mixing clean-data estimates). The outputs are the sampler's (``sampler.output``),
   classifier-free guided when its ``guidance_scale`` is not 1 and labels are given (the
   paper trains without guidance).

3. The implicit policies, from the trained output ``v_theta`` and the old one ``v_old``
   (``beta`` > 0, the paper's mixing strength)::

       v+ = (1 - beta) v_old + beta v_theta          (implicit positive policy)
       v- = (1 + beta) v_old - beta v_theta          (implicit negative policy)

4. The loss (``loss_weighting="none"``: mean squared error in output space over the
   dimensions, ``l(u) = mean_d (u - target)^2``)::

       L(theta) = mean_i [ r_i l(v+_i) + (1 - r_i) l(v-_i) ] / beta

   With ``loss_weighting="adaptive"`` (the paper's default, its reference code):
   ``l(u) = mean_d (x0(u) - x_0)^2 / sg(max(mean_d |x0(u) - x_0|, 1e-5))`` with
   ``x0(u) = sampler.to_x0(u, x_t, t)``, per sample and per branch (``sg``: stop-gradient).
   The reference implementation also multiplies the loss by ``adv_clip_max``, a constant
   learning-rate scale, left out here.
   The adaptive weighting was made for flow (velocity) models, whose x0 error is at most
   the output's; with an epsilon-predicting `DiffusionSampler` the x0 error is the
   epsilon error times ``sigma_t / alpha_t`` (about 2000 at the last step of a 100-step
   cosine schedule), the few high-noise samples dominate the gradient, and training can
   drift (measured on a Gaussian: the reward rose, then fell below its start): use
   ``loss_weighting="none"`` there. v and x0 predictions are well conditioned.

5. The old policy is an exponential moving average of the trained one, updated after
   each update with a decay that grows with the optimiser steps ``k`` taken so far
   (``updates x num_iterations``, the reference code's global step)::

       decay_k = clip(old_decay_rate * (k - old_decay_delay), 0, old_decay_max)
       old <- decay_k old + (1 - decay_k) theta

   (defaults 0.001, 0, 0.5: the reference code's ``decay_type=1``; ``decay_type=2`` is
   rate 0.0075, delay 75, max 0.999; ``old_decay_max=0``: on-policy, old = theta).
   THE OLD POLICY SAMPLES: a trainer draws each batch with ``state.old_params``.

What NFT converges to (pointwise, unlimited capacity, ``loss_weighting="none"``)
================================================================================

Fix ``(x_t, t, c)`` and write ``u = v_theta``, ``a = u - v_old``, ``v`` the per-sample
target. Then ``v+ - v = v_old + beta a - v`` and ``v- - v = v_old - beta a - v``, and
setting the derivative of ``E[r |v+ - v|^2 + (1 - r) |v- - v|^2 | x_t]`` to zero gives
``beta a = E[(1 - 2r)(v_old - v) | x_t]``. The samples come from the old policy, so
``E[v | x_t] = v_old`` and::

    v_theta* = v_old + (2 / beta) alpha(x_t) (v+* - v_old),   alpha(x_t) = E_old[r | x_t],

where ``v+* = E_old[r v | x_t] / alpha(x_t)`` is the velocity of the positive policy
``pi+ ∝ r pi_old`` (the paper's Theorem; for ``beta = 1``,
``v_theta* = v_old + 2 E[r | x_t] (v+* - v_old)``). Equivalently
``v_theta* = v_old + (1 / beta) E_old[clip(A / adv_clip_max, -1, 1) (v - v_old) | x_t]``:
an advantage-weighted correction of the old velocity, and at ``theta = old`` the loss's
gradient is exactly the ``(2 r_i - 1)``-weighted gradient of the plain denoising loss, for
every ``beta``. NFT is thus a policy-improvement step, not the optimum of a
KL-regularised objective: with the old policy following the trained one the reward keeps
rising (for a linear reward, without bound).

The KL-regularised optimum: ``label="exponential"``
===================================================

The objective ``max_pi E_pi[R] - beta_kl KL(pi || pi_ref)`` has the optimum
``pi* ∝ pi_ref exp(R / beta_kl)`` (the exponential tilt; for a Gaussian ``pi_ref =
N(mu, Sigma)`` and ``R = w.x``, ``pi* = N(mu + Sigma w / beta_kl, Sigma)``). With
``label="exponential"`` the old policy stays frozen at the initial parameters (the
reference, which then samples every batch), the labels are self-normalised exponential
weights (``temperature`` = ``beta_kl``, normalised within each group)::

    w_i = G exp(R_i / temperature) / sum_{j in group} exp(R_j / temperature)

and only the positive branch is trained, ``L = mean_i w_i l(v_theta,i)`` (``beta = 1``,
``loss_weighting="none"``, both required). Its pointwise minimiser is
``E_ref[e^{R/beta_kl} v | x_t] / E_ref[e^{R/beta_kl} | x_t]``, and since
``pi*(x_0 | x_t) ∝ q(x_t | x_0) pi_ref(x_0) e^{R(x_0)/beta_kl}`` this is exactly the
velocity (epsilon, ...) of ``pi*`` on the same noising path: forward-process training
reaches the tilt itself, the self-normalisation adding only an ``O(1/G)`` bias. This is
reward-weighted regression (Peters and Schaal 2007; Peng et al. 2019, AWR, arXiv
1910.00177) on the forward process, as Lee et al. 2023 (arXiv 2302.12192) fine-tune
diffusion models with reward-weighted likelihood.

Batch keys: ``samples [B, ...]`` (the final samples, float), ``rewards [B]``, optional
``labels [B]`` (class ids), ``group_size`` (a static int; default ``num_generations``) and
the other keys of `rlgen.generative.rollout.rollout`'s batch (``trajectory``,
``stochastic``, ``log_probs``), accepted so a trainer can pass that batch unchanged: they
are not trained on, and ``trajectory``, when given, must be ``[B, K + 1, ...]`` with the
sampler's ``K`` steps and ``samples``' shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base
from rlgen.generative import rollout as R

#: The labels `nft` trains with: the paper's soft labels in ``[0, 1]`` ("nft") or
#: self-normalised exponential weights of the frozen reference's samples ("exponential").
LABELS = ("nft", "exponential")
#: Per-sample losses: the paper's adaptive x0-space weighting, or plain output-space MSE.
LOSS_WEIGHTINGS = ("adaptive", "none")
#: The metrics `nft`'s update returns (each a 0-d float32 array); `nft_loss` returns the
#: first four.
METRICS = (
    "loss",
    "positive_loss",
    "negative_loss",
    "old_deviation",
    "mean_reward",
    "label_mean",
    "label_std",
    "old_decay",
    "skipped",
)

_REQUIRED = ("samples", "rewards")
_OPTIONAL = ("labels", "group_size", "trajectory", "stochastic", "log_probs")
_WEIGHT_FLOOR = 1e-5  # the adaptive weighting's floor, as the reference implementation


@dataclasses.dataclass(frozen=True)
class NFTConfig:
    """DiffusionNFT settings (defaults: the paper's reference implementation).

    Fields:
      beta: the mixing strength of the implicit policies, > 0 (1.0).
      num_generations: samples per condition, the group of the advantages (4).
      adv_clip_max: advantages are clipped to ``[-adv_clip_max, adv_clip_max]`` and mapped
        to labels ``1/2 + A / (2 adv_clip_max)`` (5.0).
      scale_rewards: the advantages' scale, `rlgen.ops.ADVANTAGE_SCALES` ("group").
      advantage_eps: added to the advantages' standard deviation (1e-4).
      loss_weighting: `LOSS_WEIGHTINGS` ("adaptive"; "none" for epsilon-prediction
        diffusion models, module doc).
      label: `LABELS` ("nft"); "exponential" needs ``beta=1`` and
        ``loss_weighting="none"`` and keeps the old policy frozen at the initial params.
      temperature: ``beta_kl`` of ``label="exponential"``: weights ``exp(R / temperature)``
        (1.0; unused by "nft").
      old_decay_rate, old_decay_delay, old_decay_max: the old policy's EMA decay schedule
        ``clip(rate * (k - delay), 0, max)`` over optimiser steps ``k`` (0.001, 0, 0.5).
      num_iterations: optimiser steps on each batch, each with fresh times and noise (1).
      max_grad_norm: global-norm gradient clipping, None for none (1.0).
    """

    beta: float = 1.0
    num_generations: int = 4
    adv_clip_max: float = 5.0
    scale_rewards: str = _checks.option("group", ops.ADVANTAGE_SCALES)
    advantage_eps: float = 1e-4
    loss_weighting: str = _checks.option("adaptive", LOSS_WEIGHTINGS)
    label: str = _checks.option("nft", LABELS)
    temperature: float = 1.0
    old_decay_rate: float = 0.001
    old_decay_delay: int = 0
    old_decay_max: float = 0.5
    num_iterations: int = 1
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        _checks.check_range(self.beta, "beta", 0.0, low_open=True)
        _checks.check_positive_int(self.num_generations, "num_generations")
        _checks.check_range(self.adv_clip_max, "adv_clip_max", 0.0, low_open=True)
        _checks.check_range(self.advantage_eps, "advantage_eps", 0.0)
        _checks.check_options(self)
        _checks.check_range(self.temperature, "temperature", 0.0, low_open=True)
        _checks.check_range(self.old_decay_rate, "old_decay_rate", 0.0)
        _checks.check_int(self.old_decay_delay, "old_decay_delay", 0)
        _checks.check_range(self.old_decay_max, "old_decay_max", 0.0, 1.0)
        _checks.check_positive_int(self.num_iterations, "num_iterations")
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)
        if self.label == "exponential" and (self.beta != 1.0 or self.loss_weighting != "none"):
            raise ValueError(
                "NFTConfig(label='exponential') trains v_theta itself to the tilted velocity: "
                "it needs beta=1.0 and loss_weighting='none' (the adaptive weighting moves "
                f"the optimum off the tilt); got beta={self.beta}, "
                f"loss_weighting={self.loss_weighting!r}"
            )


class NFTState(NamedTuple):
    """DiffusionNFT's state: the protocol's fields, the old (sampling) policy and the key of
    the forward process's times and noise."""

    params: Any
    opt_state: Any
    step: jax.Array
    old_params: Any  # the EMA old policy that samples (frozen with label="exponential")
    key: jax.Array


def old_decay(step, config: NFTConfig = NFTConfig()) -> jax.Array:
    """The old policy's EMA decay after ``step`` updates (``step * num_iterations``
    optimiser steps): ``clip(rate * (k - delay), 0, max)``, as float32 (traced ``step`` ok).

    Example:
      >>> [float(old_decay(k)) for k in (0, 100, 1000)]
      [0.0, 0.10000000149011612, 0.5]
    """
    k = jnp.asarray(step, jnp.float32) * config.num_iterations
    decay = config.old_decay_rate * (k - config.old_decay_delay)
    return jnp.clip(decay, 0.0, config.old_decay_max).astype(jnp.float32)


def nft_labels(rewards, group_size: int, config: NFTConfig = NFTConfig()) -> jax.Array:
    """The per-sample labels ``[B]`` of ``rewards [B]`` (groups of ``group_size`` rows).

    ``label="nft"``: ``r_i = 1/2 + 1/2 clip(A_i / adv_clip_max, -1, 1)`` in ``[0, 1]``
    with ``A = group_advantages(rewards, group_size, scale=scale_rewards,
    eps=advantage_eps, ddof=0)`` (a group of equal rewards gets 1/2: no signal).
    ``label="exponential"``: ``w_i = G softmax_group(R / temperature)_i`` (mean 1 in each
    group). Zheng et al. 2025 (arXiv 2509.16117), Section 3; Peng et al. 2019 (AWR, arXiv
    1910.00177) for the weights.

    Example:
      >>> config = NFTConfig(adv_clip_max=2.0, advantage_eps=0.0)
      >>> nft_labels(jnp.array([1.0, 0.0, 2.0, 2.0]), 2, config)
      Array([0.75, 0.25, 0.5 , 0.5 ], dtype=float32)
    """
    rewards = _checks.float_array(rewards, "rewards", rank=1, what="([B])", upcast=True)
    group_size = _checks.check_positive_int(group_size, "group_size")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"`rewards` has {rewards.shape[0]} rows, which is not divisible by `group_size` "
            f"{group_size}; groups are contiguous blocks of {group_size} rows"
        )
    if config.label == "exponential":
        logits = rewards.reshape(-1, group_size) / config.temperature
        weights = group_size * jax.nn.softmax(logits, axis=1)
        return weights.reshape(-1)
    adv = ops.group_advantages(
        rewards, group_size, scale=config.scale_rewards, eps=config.advantage_eps, ddof=0
    )
    return 0.5 + 0.5 * jnp.clip(adv / config.adv_clip_max, -1.0, 1.0)


def _per_sample(x) -> jax.Array:
    return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def _branch_loss(output, target, x_t, x_0, t, sampler, weighting) -> jax.Array:
    """Per-sample loss ``[B]`` of one branch's output (module doc, step 4)."""
    if weighting == "none":
        return _per_sample(jnp.square(output - target))
    error = sampler.to_x0(output, x_t, t) - x_0
    scale = jnp.maximum(_per_sample(jnp.abs(error)), _WEIGHT_FLOOR)
    return _per_sample(jnp.square(error)) / jax.lax.stop_gradient(scale)


def nft_loss(
    params,
    old_params,
    samples,
    optimality,
    key,
    apply_fn: Callable,
    sampler: R.Sampler,
    config: NFTConfig = NFTConfig(),
    *,
    labels=None,
):
    """The DiffusionNFT loss of one batch of final samples (module doc, steps 2-4).

    Math (``r_i`` = ``optimality``; ``v_theta``, ``v_old`` the sampler's (guided) outputs of
    ``params`` and ``old_params`` at ``x_t``): ``label="nft"``:
    ``L = mean_i [r_i l(v+_i) + (1 - r_i) l(v-_i)] / beta`` with
    ``v+ = (1 - beta) v_old + beta v_theta`` and ``v- = (1 + beta) v_old - beta v_theta``;
    ``label="exponential"``: ``L = mean_i r_i l(v_theta,i)`` (weights, beta = 1). ``l`` is
    `NFTConfig.loss_weighting`'s per-sample loss. Zheng et al. 2025, arXiv 2509.16117, eq. 7.

    Args:
      params: trained parameters (differentiated).
      old_params: the old policy's parameters (constants of the loss).
      samples: ``[B, ...]`` float final samples ``x_0`` (drawn by the old policy).
      optimality: ``[B]`` labels from `nft_labels` (in ``[0, 1]`` for "nft").
      key: PRNG key: ``t_key, noise_key = split(key)``; ``t = sampler.training_time(t_key,
        B)``, ``noise = normal(noise_key, samples.shape)``.
      apply_fn: ``apply_fn(params, x [B, ...], time [B], labels or None) -> [B, ...]``.
      sampler: a `DiffusionSampler` or `FlowSampler` (its forward process and guidance).
      config: an `NFTConfig`.
      labels: optional ``[B]`` int class labels.

    Returns:
      ``(loss, metrics)`` with ``loss``, ``positive_loss`` and ``negative_loss`` (label-
      weighted means of the branches' per-sample losses, before ``/ beta``; 0 for the
      negative branch with "exponential") and ``old_deviation`` (``mean (v_theta -
      v_old)^2``).

    Example:
      >>> apply_fn = lambda p, x, t, labels: p * x
      >>> x0 = jnp.ones((4, 2))
      >>> loss, m = nft_loss(0.5, 0.5, x0, jnp.full(4, 0.5), jax.random.key(0), apply_fn,
      ...                    R.FlowSampler(), NFTConfig(loss_weighting="none"))
      >>> float(m["old_deviation"])
      0.0
    """
    R.check_sampler(sampler)
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}")
    samples = _checks.float_array(samples, "samples", min_rank=2, what="([B, ...] samples)")
    B = samples.shape[0]
    optimality = _checks.float_array(
        optimality, "optimality", shape=(B,), like="samples' rows, one label per sample"
    )
    labels = _checks.check_labels(labels, None, B)
    t_key, noise_key = jax.random.split(key)
    t = sampler.training_time(t_key, B)
    noise = jax.random.normal(noise_key, samples.shape, samples.dtype)
    x_t = sampler.noised(samples, noise, t)
    target = jax.lax.stop_gradient(sampler.target(samples, noise, t))
    out = sampler.output(apply_fn, params, x_t, t, labels)
    old = jax.lax.stop_gradient(sampler.output(apply_fn, old_params, x_t, t, labels))
    branch = lambda o: _branch_loss(  # noqa: E731
        o, target, x_t, samples, t, sampler, config.loss_weighting
    )
    deviation = jnp.mean(jnp.square(jax.lax.stop_gradient(out) - old))
    if config.label == "exponential":
        positive = jnp.mean(optimality * branch(out))
        return positive, {
            "loss": positive,
            "positive_loss": positive,
            "negative_loss": jnp.zeros_like(positive),
            "old_deviation": deviation,
        }
    beta = config.beta
    pos = branch((1.0 - beta) * old + beta * out)
    neg = branch((1.0 + beta) * old - beta * out)
    positive = jnp.mean(optimality * pos)
    negative = jnp.mean((1.0 - optimality) * neg)
    loss = (positive + negative) / beta
    metrics = {
        "loss": loss,
        "positive_loss": positive,
        "negative_loss": negative,
        "old_deviation": deviation,
    }
    return loss, metrics


def _check_batch(batch, sampler):
    base.check_batch(batch, _REQUIRED, _OPTIONAL, "DiffusionNFT")
    samples = _checks.float_array(
        batch["samples"], "samples", min_rank=2, what="([B, ...] final samples)"
    )
    B = samples.shape[0]
    rewards = _checks.as_array(batch["rewards"], "rewards")
    if rewards.shape != (B,):
        raise ValueError(
            f"`rewards` must have shape ({B},) (one reward per row of `samples` "
            f"{tuple(samples.shape)}), got shape {tuple(rewards.shape)}"
        )
    if "trajectory" in batch:
        K = len(sampler.times()[0])
        expected = (B, K + 1, *samples.shape[1:])
        traj = _checks.as_array(batch["trajectory"], "trajectory")
        if tuple(traj.shape) != expected:
            raise ValueError(
                f"`trajectory` must have shape {expected} (the sampler's {K} steps + 1, then "
                f"the shape of `samples`), got shape {tuple(traj.shape)}; was it drawn with "
                "another sampler?"
            )
    labels = _checks.check_labels(batch.get("labels"), None, B)
    return samples, rewards, labels


def nft(
    apply_fn: Callable,
    sampler: R.Sampler,
    optimizer: optax.GradientTransformation,
    config: NFTConfig = NFTConfig(),
    *,
    seed: int = 0,
) -> base.Algorithm:
    """DiffusionNFT as an `Algorithm(init, update)` pair (Zheng et al. 2025, arXiv 2509.16117).

    ``init(params)`` -> `NFTState` with ``old_params`` a copy of ``params`` and the key
    from ``seed``. ``update(state, batch)`` (batch keys: module doc) computes the labels
    (`nft_labels`), takes ``num_iterations`` optimiser steps on `nft_loss` (fresh times
    and noise each), then moves the old policy (`old_decay`; frozen with
    ``label="exponential"``). Non-finite rewards (`base.check_rewards`) skip the whole
    update (parameters, optimiser state and old policy unchanged; the step and the key
    advance); a non-finite loss or gradient skips that optimiser step, the ones after it
    and the old policy's move (`base.apply_gradients` with ``skip``); either sets the
    metric ``skipped`` to 1.

    The trainer must sample the next batch with ``state.old_params`` (the old policy
    samples), e.g. ``rollout(apply_fn, state.old_params, sampler, key, shape, ...)``.

    Example:
      >>> apply_fn = lambda p, x, t, labels: x * 0 + p  # a constant velocity
      >>> algo = nft(apply_fn, R.FlowSampler(num_steps=2), optax.adam(0.1),
      ...            NFTConfig(num_generations=4))
      >>> state = algo.init(jnp.zeros(2))
      >>> batch = {"samples": jnp.array([[1.0, 0], [-1, 0], [1, 0], [-1, 0]]),
      ...          "rewards": jnp.array([1.0, 0.0, 1.0, 0.0])}
      >>> state, metrics = jax.jit(algo.update)(state, batch)
      >>> bool(state.params[0] > 0), float(metrics["skipped"])  # towards the rewarded x
      (True, 0.0)
    """
    R.check_sampler(sampler)
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if not isinstance(config, NFTConfig):
        raise TypeError(f"`config` must be an NFTConfig, got {type(config).__name__}")
    _checks.check_int(seed, "seed")
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)

    def init(params):
        old = jax.tree.map(jnp.copy, params)
        return NFTState(
            params, tx.init(params), jnp.zeros((), jnp.int32), old, jax.random.key(seed)
        )

    def update(state: NFTState, batch):
        samples, rewards, labels = _check_batch(batch, sampler)
        group_size = base.static_group_size(batch, config.num_generations)
        rewards, n_bad = base.check_rewards(rewards)
        finite_rewards = jnp.where(jnp.isfinite(rewards), rewards, 0.0)
        optimality = jax.lax.stop_gradient(nft_labels(finite_rewards, group_size, config))
        keys = jax.random.split(state.key, config.num_iterations + 1)

        def iteration(carry, k):
            params, opt_state, bad = carry
            (_, metrics), grads = jax.value_and_grad(nft_loss, has_aux=True)(
                params,
                state.old_params,
                samples,
                optimality,
                k,
                apply_fn,
                sampler,
                config,
                labels=labels,
            )
            finite = jnp.all(jnp.isfinite(metrics["loss"]))
            for g in jax.tree.leaves(grads):
                finite &= jnp.all(jnp.isfinite(g))
            skip = bad | ~finite
            params, opt_state = base.apply_gradients(tx, params, opt_state, grads, skip=skip)
            return (params, opt_state, skip), metrics

        (params, opt_state, skip), metrics = jax.lax.scan(
            iteration,
            (state.params, state.opt_state, n_bad > 0),
            keys[1:],
        )
        if config.label == "exponential":
            decay = jnp.ones((), jnp.float32)
            old = state.old_params
        else:
            decay = old_decay(state.step + 1, config)
            moved = base.ema_update(state.old_params, params, decay)
            old = jax.tree.map(lambda n, o: jnp.where(skip, o, n), moved, state.old_params)
        metrics = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
        metrics.update(
            mean_reward=jnp.mean(rewards),
            label_mean=jnp.mean(optimality),
            label_std=jnp.std(optimality),
            old_decay=decay,
            skipped=skip.astype(jnp.float32),
        )
        return NFTState(params, opt_state, state.step + 1, old, keys[0]), metrics

    return base.Algorithm(init, update)
