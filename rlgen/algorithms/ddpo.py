"""DDPO and Flow-GRPO: policy gradients through a sampler's per-step log-probabilities.

A stochastic sampler is a policy over its ``K`` steps (`rlgen.generative.rollout`): step
``k`` draws ``x_{k+1} ~ N(mean_theta(x_k, t_k), std_k^2 I)``. DDPO (Black et al. 2023,
"Training Diffusion Models with Reinforcement Learning", arXiv 2305.13301) trains it with
PPO's clipped ratio at every denoising step; Flow-GRPO (Liu et al. 2025, "Flow-GRPO:
Training Flow Matching Models via Online RL", arXiv 2505.05470) is the same algorithm on a
flow's SDE with GRPO's group advantages and a KL penalty to the pretrained model. Here
they are one algorithm, `ddpo`: **Flow-GRPO is `ddpo` with a `FlowSampler`** (and DDPO
with a `DiffusionSampler`, ``eta = 1``).

For each batch of ``B`` trajectories (groups of ``G`` contiguous rows share a condition)
with terminal rewards ``R_i``, the loss is

    A_i = clip((R_i - mean_g R) / (std_g R + eps), -advantage_clip, advantage_clip)
    L   = mean_{i, k in S_i} [ -min(r_{ik} A_i, clip(r_{ik}, 1 - c, 1 + c) A_i) ]
          + beta * mean_{i, k in S_i} KL(N(mean_theta, std^2) || N(mean_ref, std^2))_{ik}

with ``r_{ik} = exp(log p_theta(x_{k+1} | x_k) - log p_old(x_{k+1} | x_k))`` the step's
importance ratio (`rlgen.ops.clipped_surrogate_loss` with the steps as "tokens",
aggregated by `rlgen.ops.global_token_mean` over the trained steps ``S_i``), and the KL
the closed form between the policy's and the frozen reference's step from the same state
(`rlgen.ops.gaussian_step_kl`; the reference is the initial params, kept in the state as
``ref_params`` only when ``beta > 0``). ``num_iterations`` optimiser steps reuse each
batch (PPO's epochs; DDPO's ``num_inner_epochs``).

The reduction over dimensions
=============================
Step log-probabilities and KLs are reduced over the ``D`` dimensions of an example by
``reduction`` (`rlgen.ops.GAUSSIAN_REDUCTIONS`): ``"mean"`` (the default, DDPO's and
Flow-GRPO's code) or ``"sum"`` (the step's density; with it the KL summed over all steps
is the KL between the two samplers' path measures). Clip ranges and KL coefficients tuned
for one are wrong by a factor ``D`` for the other: a mean shift ``delta`` of the step (in
units of its std, rms over dimensions ``z``) moves the log-ratio by about ``z sqrt(D)``
with ``"sum"`` and ``z / sqrt(D)`` with ``"mean"``, so the clip binds at the per-dimension
shift `clip_shift` ``= clip_param / sqrt(D)`` ("sum") or ``clip_param * sqrt(D)``
("mean"). When that shift is outside `CLIP_SHIFT_RANGE` (more than one noise std per
dimension per step: clipping is a no-op; less than 1e-4: almost every step is clipped
after the first optimiser step) a visible `UserWarning` says the clip range looks tuned
for the other reduction. ``beta`` cannot be checked this way (it trades off against the
reward's unknown scale); with ``"mean"`` it acts as ``beta / D`` of the path KL.

Which steps are trained
=======================
The batch's ``stochastic`` ``[B, K]`` decides which steps are trainable (a deterministic
step has no log-probability). With ``num_train_steps = None`` every stochastic step is
trained; with ``num_train_steps = n`` each row trains ``n`` of its stochastic steps drawn
at random in every update (DDPO's ``timestep_fraction``; the state's ``key``). With an SDE
window inside an ODE trajectory (Flow-GRPO-Fast; MixGRPO, Li et al. 2025, arXiv
2507.21802; `rlgen.generative.rollout.stochastic_window`), set ``num_train_steps`` to the
window's size: then exactly the window is trained and only its steps are evaluated. The
model is evaluated at the ``B * n`` trained steps in one batched call.

GRPO-Guard's ratio normalisation
================================
With ``ratio_normalization`` (Wang et al. 2025, "GRPO-Guard: Mitigating Implicit
Over-Optimization in Flow Matching via Regulated Clipping", arXiv 2510.22319, its
RatioNorm), the step's log-ratio ``l`` at the behaviour's sample ``x' = mean_old + s eps``
has mean ``-b`` and a spread that scales with ``1 / s``, where ``b = KL(N(mean_theta, s^2)
|| N(mean_old, s^2))``: the ratio is left-shifted and its spread differs across steps. The
normalised log-ratio ``(l + b) s`` is centred at 0 with a spread set by the mean shift
alone (``sum_d eps_d delta_d``, reduced), equal across steps; it replaces ``l`` in the
clipped surrogate. ``b`` needs the behaviour's step means, known only on-policy (the
params at the start of the update), so a batch with ``log_probs`` is refused with it. The
paper's second device, weighting each step's loss by ``1 / |dt|``, is a constant on the
uniform time grids of both samplers here (absorbed by the learning rate), so it is not
an option.

Batch keys (`rollout`'s, plus rewards): ``trajectory`` ``[B, K + 1, ...]``, ``stochastic``
``[B, K]``, ``rewards`` ``[B]``; optional ``log_probs`` ``[B, K]`` (the behaviour's, with
``config.reduction``; default: recomputed from the params at the start of the update, so
the ratio is exactly 1 before the first optimiser step), ``labels`` ``[B]`` and
``group_size`` (a static int; default ``num_generations``). The sampler must sample with
the state's current ``params``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base
from rlgen.generative import rollout as rollout_lib

_REQUIRED = ("trajectory", "stochastic", "rewards")
_OPTIONAL = ("log_probs", "labels", "group_size")
#: The metrics `ddpo` and `ddpo_loss` return (each a 0-d float32 array).
METRICS = (
    "loss",
    "policy_loss",
    "kl",
    "approx_kl",
    "clip_fraction",
    "ratio_mean",
    "mean_reward",
    "reward_std",
    "skipped",
)
#: The per-dimension step-mean shift (in units of the step's std) at which the clip binds,
#: `clip_shift`, outside which a clip range is taken for the other reduction (a warning).
CLIP_SHIFT_RANGE = (1e-4, 1.0)


@dataclasses.dataclass(frozen=True)
class DDPOConfig:
    """DDPO / Flow-GRPO settings (module doc); defaults are DDPO's where it has them.

    Attributes:
      num_generations: the group size ``G`` (contiguous rows sharing a condition).
      clip_param: the ratio's clip range ``c`` (DDPO's and Flow-GRPO's ``1e-4``, for
        ``reduction="mean"``; see the module doc and `clip_shift`).
      beta: the KL coefficient to the frozen initial params' step means (0: no
        reference is kept; Flow-GRPO uses 0.004-0.04).
      reduction: ``"mean"`` or ``"sum"`` over an example's dimensions
        (`rlgen.ops.GAUSSIAN_REDUCTIONS`); clip ranges and ``beta`` depend on it.
      scale_rewards: advantage scaling, `rlgen.ops.ADVANTAGE_SCALES` (``"group"``: GRPO).
      advantage_eps: added to the standard deviation of the advantages' scale.
      advantage_clip: advantages are clipped to ``[-a, a]`` (DDPO's ``adv_clip_max = 5``);
        None: no clipping.
      num_train_steps: stochastic steps trained per row and update, drawn at random
        (DDPO's timestep fraction); None: all stochastic steps.
      num_iterations: optimiser steps on each batch (PPO's epochs).
      ratio_normalization: GRPO-Guard's RatioNorm of the per-step log-ratio.
      max_grad_norm: global gradient-norm clip (DDPO's 1.0); None: none.
    """

    num_generations: int = 4
    clip_param: float = 1e-4
    beta: float = 0.0
    reduction: str = _checks.option("mean", ops.GAUSSIAN_REDUCTIONS)
    scale_rewards: str = _checks.option("group", ops.ADVANTAGE_SCALES)
    advantage_eps: float = 1e-4
    advantage_clip: float | None = 5.0
    num_train_steps: int | None = None
    num_iterations: int = 1
    ratio_normalization: bool = False
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        _checks.check_positive_int(self.num_generations, "num_generations")
        _checks.check_range(self.clip_param, "clip_param", 0.0)
        _checks.check_range(self.beta, "beta", 0.0)
        _checks.check_options(self)
        _checks.check_range(self.advantage_eps, "advantage_eps", 0.0)
        if self.advantage_clip is not None:
            _checks.check_range(self.advantage_clip, "advantage_clip", 0.0, low_open=True)
        if self.num_train_steps is not None:
            _checks.check_positive_int(self.num_train_steps, "num_train_steps")
        _checks.check_positive_int(self.num_iterations, "num_iterations")
        _checks.check_bool(self.ratio_normalization, "ratio_normalization")
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)


class DDPOState(NamedTuple):
    """DDPO's state: params, optimiser state, step, the key of the trained-step draws and
    the frozen reference (the initial params when ``beta > 0``, else ``()``)."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    ref_params: Any


def clip_shift(clip_param: float, dims: int, reduction: str) -> float:
    """The rms per-dimension shift of a step's mean, in units of its std, at which the
    step's log-ratio typically reaches the clip range (module doc).

    Math: at the behaviour's sample ``x' = mean_old + s eps`` a policy whose step mean
    moved by ``delta`` has log-ratio ``sum_d (eps_d delta_d / s - delta_d^2 / (2 s^2))``
    (``"sum"``; divided by ``D`` for ``"mean"``), of standard deviation ``sqrt(D) z``
    (``z / sqrt(D)``) with ``z = rms(delta / s)``; it reaches ``clip_param`` at ``z =
    clip_param / sqrt(D)`` (``clip_param * sqrt(D)``).

    Example:
      >>> round(clip_shift(1e-4, 4 * 64 * 64, "mean"), 4)  # DDPO's range on SD latents
      0.0128
      >>> clip_shift(0.2, 64, "mean")  # an LLM-style range with "mean" on 8x8 digits
      1.6
    """
    _checks.check_choice(reduction, ops.GAUSSIAN_REDUCTIONS, "reduction")
    root = math.sqrt(dims)
    return clip_param * root if reduction == "mean" else clip_param / root


def _warn_clip_range(config: DDPOConfig, dims: int) -> None:
    shift = clip_shift(config.clip_param, dims, config.reduction)
    low, high = CLIP_SHIFT_RANGE
    if low <= shift <= high or config.clip_param == 0.0:
        return
    other = "sum" if config.reduction == "mean" else "mean"
    what = "clipping is a no-op" if shift > high else "almost every step is clipped"
    scaled = config.clip_param / dims if shift > high else config.clip_param * dims
    warnings.warn(
        f"DDPOConfig(clip_param={config.clip_param}, reduction={config.reduction!r}) on "
        f"D={dims} dimensions lets a step's mean move by {shift:.3g} noise stds per "
        f"dimension before the clip binds ({what}): it looks tuned for reduction="
        f"{other!r}. The same trust region with {config.reduction!r} is "
        f"clip_param~{scaled:.3g} (rlgen.algorithms.ddpo.clip_shift)",
        UserWarning,
        stacklevel=4,
    )


def ratio_norm(log_ratio, mean, old_mean, std, *, reduction: str) -> jax.Array:
    """GRPO-Guard's normalised per-step log-ratio ``(l + b) s`` (module doc).

    Wang et al. 2025, "GRPO-Guard" (arXiv 2510.22319), RatioNorm: with ``b =
    KL(N(mean, s^2) || N(old_mean, s^2))`` (`rlgen.ops.gaussian_step_kl`, the same
    ``reduction`` as the log-probs) and ``s`` the step's std (its mean over dimensions),
    at the behaviour's sample ``x' = old_mean + s eps`` the log-ratio ``l = log p(x') -
    log p_old(x')`` is ``reduce_d(eps_d delta_d / s) - b`` (``delta = mean - old_mean``),
    so ``(l + b) s = reduce_d(eps_d delta_d)``: centred at 0 with a spread set by the
    mean shift alone, the same at every noise level. Exactly 0 when ``mean = old_mean``
    and ``l = 0``.

    Args:
      log_ratio: ``[N]`` ``log p - log p_old`` of each step (reduced with ``reduction``).
      mean: ``[N, ...]`` the policy's step means.
      old_mean: ``[N, ...]`` the behaviour's step means.
      std: the steps' std, broadcastable to ``mean`` (0: deterministic, gives 0).
      reduction: ``"sum"`` or ``"mean"`` (`rlgen.ops.GAUSSIAN_REDUCTIONS`).

    Returns:
      ``[N]`` the normalised log-ratios.

    Example:
      >>> old, mean = jnp.zeros((1, 2)), jnp.full((1, 2), 0.1)
      >>> x = old + 0.5 * jnp.array([[1.0, -1.0]])  # eps = (1, -1), s = 0.5
      >>> l = (ops.gaussian_step_log_prob(x, mean, 0.5, reduction="mean")
      ...      - ops.gaussian_step_log_prob(x, old, 0.5, reduction="mean"))
      >>> ratio_norm(l, mean, old, 0.5, reduction="mean")  # mean_d(eps_d delta_d) = 0
      Array([0.], dtype=float32)
    """
    mean = _checks.float_array(mean, "mean", min_rank=1)
    std = jnp.broadcast_to(jnp.asarray(std, mean.dtype), mean.shape)
    log_ratio = _checks.float_array(log_ratio, "log_ratio", shape=mean.shape[:1], like="[N]")
    b = ops.gaussian_step_kl(mean, old_mean, std, reduction=reduction)
    s = jnp.mean(std.reshape(std.shape[0], -1), axis=1)
    return (log_ratio + b) * s


class _Prepared(NamedTuple):
    """Per-batch quantities fixed for all iterations of one update."""

    x: jax.Array  # [B * n, ...] states at the trained steps
    x_next: jax.Array  # [B * n, ...] the steps' outcomes
    t: jax.Array  # [B * n]
    t_next: jax.Array  # [B * n]
    labels: jax.Array | None  # [B * n]
    mask: jax.Array  # [B, n] 1 where the picked step is stochastic (trained)
    advantages: jax.Array  # [B, n]
    old_log_probs: jax.Array | None  # [B, n] behaviour (None: on-policy)


def _steps(trajectory, sampler):
    ts, t_next = sampler.times()
    K = len(ts)
    traj = _checks.float_array(trajectory, "trajectory", min_rank=3)
    if traj.shape[1] != K + 1:
        raise ValueError(
            f"`trajectory` must have shape [B, K + 1, ...] = [B, {K + 1}, ...] for the "
            f"sampler's K = {K} steps (the initial state and each step's outcome), got "
            f"shape {tuple(traj.shape)}"
        )
    return traj, jnp.asarray(ts), jnp.asarray(t_next), K


def _pick_steps(key, stochastic, num_train_steps):
    """``[B, n]`` step indices and their trainable mask: all steps, or ``n`` stochastic
    steps per row drawn at random (non-stochastic steps only fill rows with fewer)."""
    B, K = stochastic.shape
    if num_train_steps is None:
        idx = jnp.broadcast_to(jnp.arange(K), (B, K))
    else:
        if num_train_steps > K:
            raise ValueError(
                f"`num_train_steps` must be <= the sampler's K = {K} steps, got {num_train_steps}"
            )
        counts = _checks.concrete_value(jnp.min(jnp.sum(stochastic > 0.5, axis=1)))
        if counts is not None and counts < num_train_steps:
            raise ValueError(
                f"`num_train_steps` = {num_train_steps} exceeds the stochastic steps of the "
                f"batch (a row has {int(counts)} of {K}; see `stochastic`)"
            )
        scores = jax.random.uniform(key, (B, K)) + (stochastic > 0.5)
        idx = jnp.sort(jax.lax.top_k(scores, num_train_steps)[1], axis=1)
    mask = (jnp.take_along_axis(stochastic, idx, axis=1) > 0.5).astype(jnp.float32)
    return idx, mask


def _prepare(batch, key, sampler, config: DDPOConfig):
    base.check_batch(batch, _REQUIRED, _OPTIONAL, "DDPO")
    group_size = base.static_group_size(batch, config.num_generations)
    traj, ts, t_next, K = _steps(batch["trajectory"], sampler)
    B = traj.shape[0]
    stochastic = _checks.float_array(
        jnp.asarray(batch["stochastic"], jnp.float32),
        "stochastic",
        shape=(B, K),
        like="the trajectory's [B, K] steps",
    )
    rewards, n_bad = base.check_rewards(batch["rewards"])
    if rewards.shape != (B,):
        raise ValueError(
            f"`rewards` must have shape ({B},) (one per trajectory, like `trajectory` "
            f"{tuple(traj.shape)}), got shape {rewards.shape}"
        )
    labels = _checks.check_labels(batch.get("labels"), None, B)
    _warn_clip_range(config, math.prod(traj.shape[2:]))

    idx, mask = _pick_steps(key, stochastic, config.num_train_steps)
    n = idx.shape[1]
    rows = jnp.arange(B)[:, None]
    flat = lambda a: a.reshape((B * n,) + a.shape[2:])  # noqa: E731
    x, x_next = flat(traj[rows, idx]), flat(traj[rows, idx + 1])
    old = None
    if "log_probs" in batch:
        if config.ratio_normalization:
            raise ValueError(
                "DDPOConfig(ratio_normalization=True) needs the behaviour's step means, known "
                "only on-policy: drop the batch key 'log_probs' (they are then recomputed "
                "from the params at the start of the update)"
            )
        lp = _checks.float_array(
            batch["log_probs"], "log_probs", shape=(B, K), like="the trajectory's [B, K] steps"
        )
        old = jax.lax.stop_gradient(jnp.take_along_axis(lp, idx, axis=1).astype(jnp.float32))

    finite = jnp.where(jnp.isfinite(rewards), rewards, 0.0)
    adv = ops.group_advantages(
        finite, group_size, scale=config.scale_rewards, eps=config.advantage_eps
    )
    if config.advantage_clip is not None:
        adv = jnp.clip(adv, -config.advantage_clip, config.advantage_clip)
    prepared = _Prepared(
        x=x,
        x_next=x_next,
        t=ts[idx].reshape(-1),
        t_next=t_next[idx].reshape(-1),
        labels=None if labels is None else jnp.repeat(labels, n),
        mask=mask,
        advantages=jnp.broadcast_to(adv[:, None], (B, n)),
        old_log_probs=old,
    )
    stats = {
        # NaN when a reward was non-finite: reported, and the update is skipped.
        "mean_reward": jnp.mean(rewards),
        "reward_std": jnp.std(rewards),
        "n_bad": n_bad,
    }
    return prepared, stats


def _policy_steps(apply_fn, sampler, params, prepared: _Prepared):
    """The ``(mean, std)`` of every trained step in one batched model call."""
    return sampler.policy_step(
        apply_fn,
        params,
        prepared.x,
        prepared.t,
        prepared.t_next,
        prepared.labels,
        prepared.mask.reshape(-1),
    )


def _loss(params, ref_params, prepared: _Prepared, old, old_mean, apply_fn, sampler, config):
    """The loss and metrics; ``old``/``old_mean`` None: on-policy (this call's own values,
    so the ratio is exactly 1). Returns ``(loss, (metrics, log_probs, mean))``."""
    mask = prepared.mask
    shape = mask.shape
    mean, std = _policy_steps(apply_fn, sampler, params, prepared)
    red = config.reduction
    log_probs = ops.gaussian_step_log_prob(prepared.x_next, mean, std, reduction=red)
    log_probs = log_probs.reshape(shape)
    if old is None:
        old = jax.lax.stop_gradient(log_probs)
    if old_mean is None:
        old_mean = jax.lax.stop_gradient(mean)
    log_ratio = log_probs - old
    if config.ratio_normalization:
        log_ratio = ratio_norm(log_ratio.reshape(-1), mean, old_mean, std, reduction=red).reshape(
            shape
        )
    surrogate = ops.clipped_surrogate_loss(
        log_ratio, jnp.zeros_like(log_ratio), prepared.advantages, mask,
        epsilon_low=config.clip_param,
    )  # fmt: skip
    agg = lambda v: ops.global_token_mean(v, mask, "token-mean")  # noqa: E731
    policy_loss = agg(surrogate.loss)
    if config.beta > 0:
        ref_mean, _ = _policy_steps(apply_fn, sampler, ref_params, prepared)
        ref_mean = jax.lax.stop_gradient(ref_mean)
        kl = agg(ops.gaussian_step_kl(mean, ref_mean, std, reduction=red).reshape(shape))
        loss = policy_loss + config.beta * kl
    else:
        kl = jnp.zeros((), policy_loss.dtype)
        loss = policy_loss
    current = jax.lax.stop_gradient(log_probs)
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "kl": kl,
        # KL(old || current) from the behaviour's samples (k3), a diagnostic.
        "approx_kl": agg(ops.kl_estimate(old, current)),
        "clip_fraction": agg(surrogate.clipped),
        "ratio_mean": agg(surrogate.ratio),
    }
    return loss, (metrics, current, jax.lax.stop_gradient(mean))


def _check_reference(config, ref_params):
    if config.beta > 0 and (ref_params is None or ref_params == ()):
        raise ValueError(
            "DDPOConfig(beta > 0) needs `ref_params` (the frozen reference, e.g. the "
            "initial params; `ddpo`'s state keeps them)"
        )


def ddpo_loss(
    params, batch, apply_fn, sampler, config: DDPOConfig = DDPOConfig(), *,
    ref_params=None, key=None,
):  # fmt: skip
    """The DDPO / Flow-GRPO loss of one batch (module doc), for users who own their
    optimiser step; on-policy unless the batch has ``log_probs``.

    Args:
      params: the model's parameters (differentiated).
      batch: `rollout`'s batch plus ``rewards`` ``[B]`` (module doc).
      apply_fn: ``apply_fn(params, x [B, ...], time [B], labels or None) -> [B, ...]``.
      sampler: the `DiffusionSampler` or `FlowSampler` that produced the trajectories.
      config: a `DDPOConfig`.
      ref_params: the frozen reference, needed when ``beta > 0``.
      key: PRNG key of the trained-step draws, needed with ``num_train_steps``.

    Returns:
      ``(loss, metrics)``: a scalar and the dict of `METRICS` (``skipped`` is 1 when a
      reward is non-finite: `ddpo` then leaves the params unchanged).

    Example:
      >>> from rlgen.generative import rollout
      >>> apply_fn = lambda p, x, t, labels: p * x
      >>> sampler = rollout.FlowSampler(num_steps=3)
      >>> _, batch = rollout.rollout(apply_fn, -1.0, sampler, jax.random.key(0), (4, 2),
      ...                            reduction="mean")
      >>> del batch["log_probs"]  # on-policy: recomputed, the ratio is exactly 1
      >>> batch["rewards"] = jnp.array([1.0, 0.0, 0.5, 0.2])
      >>> loss, m = ddpo_loss(-1.0, batch, apply_fn, sampler, DDPOConfig(num_generations=2))
      >>> float(m["ratio_mean"]), float(m["kl"])
      (1.0, 0.0)
    """
    _check_config(config)
    rollout_lib.check_sampler(sampler)
    _check_reference(config, ref_params)
    if config.num_train_steps is not None and key is None:
        raise ValueError("DDPOConfig(num_train_steps=...) needs `key` for the step draws")
    prepared, stats = _prepare(batch, key, sampler, config)
    loss, (metrics, _, _) = _loss(
        params, ref_params, prepared, prepared.old_log_probs, None, apply_fn, sampler, config
    )
    metrics.update(
        mean_reward=stats["mean_reward"],
        reward_std=stats["reward_std"],
        skipped=(stats["n_bad"] > 0).astype(jnp.float32),
    )
    return loss, metrics


def _check_config(config):
    if not isinstance(config, DDPOConfig):
        raise TypeError(f"`config` must be a DDPOConfig, got {type(config).__name__}")


def ddpo(
    apply_fn, sampler, optimizer: optax.GradientTransformation,
    config: DDPOConfig = DDPOConfig(), *, seed: int = 0,
):  # fmt: skip
    """DDPO / Flow-GRPO as an `Algorithm(init, update)` pair (module doc). Flow-GRPO is
    `ddpo` with a `FlowSampler`; DDPO is `ddpo` with a `DiffusionSampler` (``eta = 1``).

    `init(params)` keeps the optimiser state, a PRNG key (from ``seed``) for the
    trained-step draws and, when ``beta > 0``, a frozen copy of ``params`` as the
    reference. `update(state, batch)` computes the group advantages once, picks the
    trained steps, then takes ``num_iterations`` optimiser steps on the batch (the
    behaviour log-probs, unless given, are those of the first iteration's forward, so the
    first ratio is exactly 1), and returns the metrics averaged over iterations. A batch
    with non-finite rewards leaves params and optimiser state unchanged (``skipped`` = 1).
    The trajectories must be sampled (`rollout`) with the state's current ``params``.

    Example:
      >>> from rlgen.generative import rollout
      >>> apply_fn = lambda p, x, t, labels: x * 0.0 + p  # a constant velocity
      >>> sampler = rollout.FlowSampler(num_steps=4)
      >>> algo = ddpo(apply_fn, sampler, optax.adam(0.1), DDPOConfig(num_generations=8))
      >>> state = algo.init(jnp.zeros(()))
      >>> _, batch = rollout.rollout(apply_fn, state.params, sampler, jax.random.key(1),
      ...                            (8, 1), reduction="mean")
      >>> del batch["log_probs"]
      >>> batch["rewards"] = batch["trajectory"][:, -1, 0]  # reward: the sample itself
      >>> state, metrics = jax.jit(algo.update)(state, batch)
      >>> bool(state.params > 0), float(metrics["ratio_mean"])
      (True, 1.0)
    """
    _check_config(config)
    rollout_lib.check_sampler(sampler)
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}")
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)

    def init(params):
        ref = jax.tree.map(jnp.copy, params) if config.beta > 0 else ()
        key = jax.random.key(seed)
        return DDPOState(params, tx.init(params), jnp.zeros((), jnp.int32), key, ref)

    def update(state: DDPOState, batch):
        key, pick_key = jax.random.split(state.key)
        prepared, stats = _prepare(batch, pick_key, sampler, config)
        skip = stats["n_bad"] > 0
        given = prepared.old_log_probs
        shape = prepared.mask.shape
        grad_fn = jax.value_and_grad(_loss, has_aux=True)

        def iteration(carry, i):
            params, opt_state, old, old_mean = carry
            first = i == 0

            def run(old_lp, old_mu):
                return grad_fn(
                    params, state.ref_params, prepared, old_lp, old_mu, apply_fn, sampler, config
                )

            if config.num_iterations == 1:
                (_, (metrics, lp, mu)), grads = run(given, None)
            else:
                # Iteration 0 is on-policy by construction (its own log-probs and means);
                # later ones reuse iteration 0's.
                (_, (metrics, lp, mu)), grads = jax.lax.cond(
                    first,
                    lambda: run(given, None),
                    lambda: run(old if given is None else given, old_mean),
                )
            old = jnp.where(first, lp, old)
            old_mean = jnp.where(first, mu, old_mean)
            params, opt_state = base.apply_gradients(tx, params, opt_state, grads, skip=skip)
            return (params, opt_state, old, old_mean), metrics

        carry = (
            state.params,
            state.opt_state,
            jnp.zeros(shape, jnp.float32),
            jnp.zeros(prepared.x.shape, jnp.float32),
        )
        (params, opt_state, _, _), metrics = jax.lax.scan(
            iteration, carry, jnp.arange(config.num_iterations)
        )
        metrics = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
        metrics.update(
            mean_reward=stats["mean_reward"],
            reward_std=stats["reward_std"],
            skipped=skip.astype(jnp.float32),
        )
        new = DDPOState(params, opt_state, state.step + 1, key, state.ref_params)
        return new, metrics

    return base.Algorithm(init, update)
