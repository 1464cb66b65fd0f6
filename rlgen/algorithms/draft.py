"""Reward backpropagation through the sampler: DRaFT-K, DRaFT-LV and ReFL.

When the reward is differentiable (a classifier's log-probability, an aesthetic score),
a diffusion or flow sampler can be fine-tuned by gradient ascent on the reward of its
samples, differentiating through the sampling chain itself: no policy gradient, no
log-probabilities, one reward call per sample. Three ways to truncate that chain are
``method`` choices (`METHODS`):

* ``"draft"``: DRaFT-K (Clark et al. 2023, "Directly Fine-Tuning Diffusion Models on
  Differentiable Rewards", arXiv 2309.17400). The ``N`` sampler steps run from the
  initial noise ``x_N``; the first ``N - K`` without gradient (the state ``x_K`` they
  reach is a constant), the last ``K = num_grad_steps`` with it, and the loss is
  ``-reward_scale * mean_b r(x_0^b, c^b)``. Each differentiated step is wrapped in
  `jax.checkpoint`: its activations are recomputed in the backward pass, so the memory of
  the backward pass holds one step's activations and the ``K`` step inputs ``x_k``
  (``K = N`` is full DRaFT; the paper's default is ``K = 1``).
* ``"draft-lv"``: DRaFT-LV (same paper, Algorithm 2): the whole chain runs without
  gradient to ``x_0``; then ``lv_samples = n`` re-noised copies
  ``x_1^i = noised(x_0, eps_i, t_1)`` (``eps_i ~ N(0, I)``, ``t_1`` the last step's time)
  each take the last sampler step with gradient, and the loss averages the ``n B``
  rewards: a lower-variance estimate of DRaFT-1's gradient for one extra model call per
  copy.
* ``"refl"``: ReFL (Xu et al. 2023, "ImageReward", arXiv 2304.05977, Algorithm 1): one
  stopping step ``m`` is drawn per update, uniformly among the steps ``refl_min_step ..
  refl_max_step`` counted back from the end (1 = the last step; ImageReward stops in the
  last 10 of 40 steps); the steps before it run without gradient and the clean sample is
  predicted in one step from the model's output there, ``x_0 = sampler.to_x0(output,
  x_m, t_m)``, with gradient.

Sampling is deterministic by default (``stochastic=False``: DDIM with ``eta = 0``, the
flow's Euler ODE step), as in DRaFT; ``stochastic=True`` draws each step's noise from the
state's key and differentiates through it by reparameterisation (``x_{k+1} = mean_k +
std_k z_k``). Not implemented: ReFL's pretraining-loss regulariser (it needs a data set
beside the rewards; alternate with `rlgen.algorithms.diffusion` for that) and ReFL's
ReLU map of rewards to losses (the loss here is the plain negative reward, as DRaFT's).

The batch (every leaf leads with the batch axis ``B``): ``noise [B, ...]`` the initial
state ``x_N`` of each sample (required; it fixes the sample shape:
``jax.random.normal(key, (B, *sample_shape))``), optional ``labels [B]`` int class ids
(passed to the model, with the sampler's guidance, and to the reward). The samples are
drawn inside ``update`` with the current parameters (on-policy; nothing is sampled
outside). ``reward_fn(x0 [B, ...], labels [B] or None) -> [B]`` must be differentiable in
``x0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks
from rlgen.algorithms import base
from rlgen.generative import rollout

__all__ = [
    "METHODS",
    "METRICS",
    "DRaFTConfig",
    "DRaFTState",
    "draft",
    "draft_loss",
    "draft_samples",
]

#: The reward-backpropagation methods (`DRaFTConfig.method`).
METHODS = ("draft", "draft-lv", "refl")
#: The metrics `draft` and `draft_loss` return (each a 0-d float32 array).
METRICS = ("loss", "mean_reward", "reward_std", "grad_norm", "skipped")
_REQUIRED = ("noise",)
_OPTIONAL = ("labels",)


@dataclasses.dataclass(frozen=True)
class DRaFTConfig:
    """Settings of `draft` (module doc for the methods).

    Fields:
      method: one of `METHODS` ("draft" = DRaFT-K, "draft-lv" = DRaFT-LV, "refl" = ReFL).
      num_grad_steps: DRaFT-K's ``K``, the number of last sampler steps differentiated, in
        ``[1, sampler.num_steps]`` (``num_steps``: full DRaFT). Must be 1 for the other
        methods (they differentiate one step).
      lv_samples: DRaFT-LV's ``n``, re-noised copies of each sample (paper: 2).
      refl_min_step, refl_max_step: ReFL's stopping range ``[T1, T2]`` counted back from
        the end of sampling (1 = the last step), ``1 <= T1 <= T2 <= sampler.num_steps``.
      stochastic: draw the sampler's noise at each step (DDIM ``eta``, the flow's SDE)
        instead of the deterministic sampler.
      checkpoint: wrap each differentiated step in `jax.checkpoint` (rematerialise its
        activations in the backward pass; the same gradient, less memory).
      reward_scale: the loss is ``-reward_scale * mean reward``.
      max_grad_norm: global-norm gradient clipping (None: none).

    Example:
      >>> DRaFTConfig(method="refl", refl_max_step=5).refl_max_step
      5
      >>> DRaFTConfig(method="refl", num_grad_steps=2)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: `num_grad_steps` is DRaFT-K's (method 'draft'); method 'refl' ...
    """

    method: str = _checks.option("draft", METHODS)
    num_grad_steps: int = 1
    lv_samples: int = 2
    refl_min_step: int = 1
    refl_max_step: int = 10
    stochastic: bool = False
    checkpoint: bool = True
    reward_scale: float = 1.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        _checks.check_options(self)
        _checks.check_positive_int(self.num_grad_steps, "num_grad_steps")
        if self.method != "draft" and self.num_grad_steps != 1:
            raise ValueError(
                f"`num_grad_steps` is DRaFT-K's (method 'draft'); method {self.method!r} "
                f"differentiates one step: leave it 1, got {self.num_grad_steps}"
            )
        _checks.check_positive_int(self.lv_samples, "lv_samples")
        _checks.check_positive_int(self.refl_min_step, "refl_min_step")
        _checks.check_positive_int(self.refl_max_step, "refl_max_step")
        if self.refl_max_step < self.refl_min_step:
            raise ValueError(
                f"`refl_max_step` must be >= refl_min_step = {self.refl_min_step}, got "
                f"{self.refl_max_step}"
            )
        _checks.check_bool(self.stochastic, "stochastic")
        _checks.check_bool(self.checkpoint, "checkpoint")
        _checks.check_range(self.reward_scale, "reward_scale", 0.0, low_open=True)
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)

    def check_sampler(self, sampler) -> None:
        """ValueError when the step counts do not fit ``sampler``'s ``num_steps``."""
        rollout.check_sampler(sampler)
        n = sampler.num_steps
        if self.method == "draft" and self.num_grad_steps > n:
            raise ValueError(
                f"`num_grad_steps` must lie in [1, {n}] (the sampler's num_steps), got "
                f"{self.num_grad_steps}"
            )
        if self.method == "refl" and self.refl_max_step > n:
            raise ValueError(
                f"`refl_max_step` must lie in [refl_min_step, {n}] (the sampler's "
                f"num_steps), got {self.refl_max_step}"
            )


class DRaFTState(NamedTuple):
    """The state of `draft`: the protocol's three fields and the PRNG key."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def _transition(apply_fn, sampler, params, x, t, t_next, key, labels, stochastic: bool):
    """One sampler step ``x_k -> x_{k+1}``: the step's mean, plus ``std z`` if stochastic."""
    if not stochastic:
        return sampler.policy_step(apply_fn, params, x, t, t_next, labels, 0.0)[0]
    mean, std = sampler.policy_step(apply_fn, params, x, t, t_next, labels, 1.0)
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


def _free_steps(apply_fn, sampler, params, x, labels, keys, stochastic, stop):
    """Steps ``0 .. stop - 1`` without gradient (``stop`` may be traced: ReFL's stop)."""
    ts, tn = (jnp.asarray(a) for a in sampler.times())
    frozen = jax.lax.stop_gradient(params)

    def step(x, t, t_next, key):
        return _transition(apply_fn, sampler, frozen, x, t, t_next, key, labels, stochastic)

    if isinstance(stop, int):
        if stop > 0:
            x, _ = jax.lax.scan(
                lambda x, i: (step(x, *i), None), x, (ts[:stop], tn[:stop], keys[:stop])
            )
    else:
        x = jax.lax.fori_loop(0, stop, lambda k, x: step(x, ts[k], tn[k], keys[k]), x)
    return jax.lax.stop_gradient(x)


def _grad_steps(apply_fn, sampler, params, x, labels, keys, config, start):
    """Steps ``start .. N - 1`` with gradient, each under `jax.checkpoint` if configured."""
    ts, tn = sampler.times()

    def step(params, x, inputs):
        t, t_next, key = inputs
        return _transition(apply_fn, sampler, params, x, t, t_next, key, labels, config.stochastic)

    if config.checkpoint:
        step = jax.checkpoint(step)
    inputs = (jnp.asarray(ts[start:]), jnp.asarray(tn[start:]), keys[start:])
    x, _ = jax.lax.scan(lambda x, i: (step(params, x, i), None), x, inputs)
    return x


def draft_samples(apply_fn, sampler, params, noise, labels, key, config: DRaFTConfig):
    """The samples the method differentiates: ``(x0 [M, ...], labels [M] or None)``.

    ``M = B``, except DRaFT-LV's ``M = lv_samples * B`` (copy ``i`` of example ``b`` in
    row ``i * B + b``). Gradients reach ``params`` only through the method's
    differentiated steps (module doc); ``key`` draws the sampler's noise (with
    ``stochastic``), ReFL's stopping step and DRaFT-LV's re-noising.

    Example:
      >>> from rlgen.generative.rollout import FlowSampler
      >>> apply_fn = lambda p, x, t, labels: p * x
      >>> x0, _ = draft_samples(apply_fn, FlowSampler(num_steps=4), 1.0, jnp.ones((2, 3)),
      ...                       None, jax.random.key(0), DRaFTConfig(num_grad_steps=2))
      >>> x0[0]  # four Euler steps of dx/dt = x: (1 + 1/4)^4
      Array([2.4414062, 2.4414062, 2.4414062], dtype=float32)
    """
    config.check_sampler(sampler)
    n = sampler.num_steps
    noise_key, method_key = jax.random.split(key)
    keys = jax.random.split(noise_key, n)
    stochastic = config.stochastic
    if config.method == "draft":
        start = n - config.num_grad_steps
        x = _free_steps(apply_fn, sampler, params, noise, labels, keys, stochastic, start)
        return _grad_steps(apply_fn, sampler, params, x, labels, keys, config, start), labels
    if config.method == "draft-lv":
        x0 = _free_steps(apply_fn, sampler, params, noise, labels, keys, stochastic, n)
        copies = config.lv_samples
        ts, _ = sampler.times()
        eps = jax.random.normal(method_key, (copies, *x0.shape), x0.dtype)
        x1 = jax.vmap(lambda e: sampler.noised(x0, e, ts[-1]))(eps)
        x1 = x1.reshape((copies * x0.shape[0], *x0.shape[1:]))
        labels = None if labels is None else jnp.tile(labels, copies)
        return _grad_steps(apply_fn, sampler, params, x1, labels, keys, config, n - 1), labels
    # ReFL: stop at step m = N - r, r ~ U{refl_min_step .. refl_max_step}.
    back = jax.random.randint(method_key, (), config.refl_min_step, config.refl_max_step + 1)
    m = n - back
    x = _free_steps(apply_fn, sampler, params, noise, labels, keys, stochastic, m)
    t = jnp.asarray(sampler.times()[0])[m]
    output = sampler.output(apply_fn, params, x, t, labels)
    return sampler.to_x0(output, x, t), labels


def _check_inputs(batch):
    base.check_batch(batch, _REQUIRED, _OPTIONAL, "DRaFT")
    noise = _checks.float_array(
        batch["noise"], "noise", min_rank=2, what="([B, ...], the initial noise of each sample)"
    )
    labels = _checks.check_labels(batch.get("labels"), None, noise.shape[0])
    return noise, labels


def _objective(params, batch, key, apply_fn, sampler, reward_fn, config):
    noise, labels = _check_inputs(batch)
    x0, reward_labels = draft_samples(apply_fn, sampler, params, noise, labels, key, config)
    rewards = reward_fn(x0, reward_labels)
    rows = x0.shape[0]
    rewards = _checks.as_array(rewards, "rewards")
    if rewards.shape != (rows,):
        raise ValueError(
            f"`rewards` (what reward_fn(x0, labels) returns) must have shape ({rows},), one "
            f"per sample of x0 {tuple(x0.shape)}, got {_checks._describe(rewards)}"
        )
    rewards, n_bad = base.check_rewards(rewards, "rewards")
    loss = -config.reward_scale * jnp.mean(rewards)
    stats = jax.lax.stop_gradient(rewards).astype(jnp.float32)
    metrics = {
        "loss": loss.astype(jnp.float32),
        "mean_reward": jnp.mean(stats),
        "reward_std": jnp.std(stats),
    }
    return loss, (metrics, n_bad)


def draft_loss(params, batch, key, apply_fn, sampler, reward_fn, config=DRaFTConfig()):
    """The negative reward of samples drawn with ``params``, differentiable in ``params``.

    Math: ``L = -reward_scale * mean_b r(x_0^b(params, x_N^b, c^b), c^b)`` where ``x_0``
    is the sample of `draft_samples` (the gradient flows through the method's
    differentiated steps only).

    Args:
      params: the model's parameters.
      batch: ``{"noise": [B, ...], "labels": [B] (optional)}`` (module doc).
      key: PRNG key (sampler noise, ReFL's stop, DRaFT-LV's re-noising).
      apply_fn: ``apply_fn(params, x [B, ...], time [B], labels or None) -> [B, ...]``.
      sampler: a `rlgen.generative.rollout.DiffusionSampler` or `FlowSampler`.
      reward_fn: ``reward_fn(x0 [B, ...], labels or None) -> [B]``, differentiable.
      config: a `DRaFTConfig`.

    Returns:
      ``(loss, metrics)`` with metrics ``loss``, ``mean_reward``, ``reward_std``.

    Example:
      >>> from rlgen.generative.rollout import FlowSampler
      >>> apply_fn = lambda p, x, t, labels: p * jnp.ones_like(x)
      >>> reward_fn = lambda x0, labels: -jnp.sum((x0 - 1.0) ** 2, axis=-1)
      >>> batch = {"noise": jnp.zeros((4, 2))}
      >>> loss, m = draft_loss(0.0, batch, jax.random.key(0), apply_fn, FlowSampler(),
      ...                      reward_fn)
      >>> grad = jax.grad(lambda p: draft_loss(p, batch, jax.random.key(0), apply_fn,
      ...                                      FlowSampler(), reward_fn)[0])(0.0)
      >>> float(loss), round(float(grad), 4)  # K = 1: x0 = 0.9 p (frozen) + 0.1 p
      (2.0, -0.4)
    """
    loss, (metrics, _) = _objective(params, batch, key, apply_fn, sampler, reward_fn, config)
    return loss, metrics


def draft(
    apply_fn: Callable,
    sampler,
    reward_fn: Callable,
    optimizer: optax.GradientTransformation,
    config: DRaFTConfig = DRaFTConfig(),
    *,
    seed: int = 0,
) -> base.Algorithm:
    """DRaFT-K, DRaFT-LV or ReFL (`DRaFTConfig.method`) as an `Algorithm(init, update)`.

    ``init(params)`` keeps the optimiser state and a PRNG key seeded by ``seed``.
    ``update(state, batch)`` samples from ``batch["noise"]`` with the current parameters,
    differentiates ``draft_loss`` (module doc: Clark et al. 2023, arXiv 2309.17400; Xu et
    al. 2023, arXiv 2304.05977), clips the gradient's global norm to ``max_grad_norm`` and
    takes one optimiser step. Rewards that are not finite are reported
    (`base.check_rewards`: a warning) and the update is skipped (parameters and optimiser
    state unchanged; the step count and key advance); so is a non-finite gradient.
    Metrics: `METRICS` (``grad_norm`` before clipping; ``skipped`` 1.0 or 0.0).

    Args:
      apply_fn: ``apply_fn(params, x [B, ...], time [B], labels or None) -> [B, ...]``.
      sampler: a `DiffusionSampler` or `FlowSampler` (its ``num_steps`` bounds the config's
        step counts: ValueError here when they do not fit).
      reward_fn: ``reward_fn(x0 [B, ...], labels [B] or None) -> [B]`` float,
        differentiable in ``x0``.
      optimizer: an optax transformation.
      config: a `DRaFTConfig`.
      seed: seeds the state's PRNG key.

    Example:
      >>> from rlgen.generative.rollout import FlowSampler
      >>> apply_fn = lambda p, x, t, labels: p * jnp.ones_like(x)
      >>> reward_fn = lambda x0, labels: -jnp.sum((x0 - 1.0) ** 2, axis=-1)
      >>> algo = draft(apply_fn, FlowSampler(num_steps=4), reward_fn, optax.adam(0.1),
      ...              DRaFTConfig(num_grad_steps=4))
      >>> state = algo.init(jnp.zeros(()))
      >>> batch = {"noise": jnp.zeros((8, 2))}
      >>> for _ in range(100):
      ...     state, metrics = jax.jit(algo.update)(state, batch)
      >>> round(float(state.params), 2), round(float(metrics["mean_reward"]), 3)
      (1.0, -0.0)
    """
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}")
    if not callable(reward_fn):
        raise TypeError(f"`reward_fn` must be callable, got {type(reward_fn).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if not isinstance(config, DRaFTConfig):
        raise TypeError(f"`config` must be a DRaFTConfig, got {type(config).__name__}")
    config.check_sampler(sampler)
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)

    def init(params):
        key = jax.random.key(seed)
        return DRaFTState(params, tx.init(params), jnp.zeros((), jnp.int32), key)

    def update(state: DRaFTState, batch):
        key, step_key = jax.random.split(state.key)
        grads, (metrics, n_bad) = jax.grad(_objective, has_aux=True)(
            state.params, batch, step_key, apply_fn, sampler, reward_fn, config
        )
        grad_norm = optax.tree.norm(grads).astype(jnp.float32)
        skip = (n_bad > 0) | ~jnp.isfinite(grad_norm) | ~jnp.isfinite(metrics["loss"])
        params, opt_state = base.apply_gradients(
            tx, state.params, state.opt_state, grads, skip=skip
        )
        metrics = {**metrics, "grad_norm": grad_norm, "skipped": skip.astype(jnp.float32)}
        return DRaFTState(params, opt_state, state.step + 1, key), metrics

    return base.Algorithm(init, update)
