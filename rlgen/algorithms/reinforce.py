"""REINFORCE (Williams 1992) with return normalisation, baselines and an entropy bonus.

Batch keys: `observations`, `actions` (the policy's `log_prob(actions)` is `[B]` or
`[B, T]`), `rewards` (`[B, T]` per step, or `[B]` per sample, placed on each row's last
valid step), optional `dones` (`[B, T]` episode ends), `mask` (`[B, T]` valid steps) and
`group_size` (static int, for the RLOO baseline; default `num_generations`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base, policy

_REQUIRED = ("observations", "actions", "rewards")
_OPTIONAL = ("dones", "mask", "group_size")
BASELINES = ("none", "mean", "rloo")
#: The metrics `reinforce` and `reinforce_loss` return (each a 0-d float32 array).
METRICS = ("loss", "policy_loss", "entropy", "mean_reward", "reward_std", "skipped")


@dataclasses.dataclass(frozen=True)
class REINFORCEConfig:
    """REINFORCE settings: Artifex's fields and defaults (docs/compatibility.md), plus extras.

    Artifex's fields: `gamma=0.99` (discount of the returns), `normalize_returns=True`
    (whiten the advantages to zero mean and unit variance over valid steps),
    `entropy_coeff=0.01` (entropy bonus).

    Extras: `baseline` ("none"; "mean": the batch-mean return; "rloo": each sample's
    return minus the mean return of the other samples of its group, Kool et al. 2019),
    `num_generations` (group size of "rloo", and samples per prompt for the trainers),
    `loss_aggregation` (default "sequence-mean-token-sum": the textbook
    `mean_episodes sum_t`), `max_grad_norm` (None: no clipping), `axis_name`.
    """

    gamma: float = 0.99
    normalize_returns: bool = True
    entropy_coeff: float = 0.01
    baseline: str = _checks.option("none", BASELINES)
    num_generations: int = 4
    loss_aggregation: str = _checks.option("sequence-mean-token-sum", ops.AGGREGATION_MODES)
    max_grad_norm: float | None = None
    axis_name: Any = None

    def __post_init__(self):
        _checks.check_range(self.gamma, "gamma", 0.0, 1.0)
        _checks.check_bool(self.normalize_returns, "normalize_returns")
        _checks.check_range(self.entropy_coeff, "entropy_coeff", 0.0)
        mode = ops.aggregation.canonical_mode(self.loss_aggregation, "loss_aggregation")
        object.__setattr__(self, "loss_aggregation", mode)
        _checks.check_options(self)
        _checks.check_positive_int(self.num_generations, "num_generations")
        if self.baseline == "rloo" and self.num_generations < 2:
            raise ValueError("baseline='rloo' needs `num_generations` >= 2")
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)


class REINFORCEState(NamedTuple):
    """REINFORCE's algorithm state."""

    params: Any
    opt_state: Any
    step: jax.Array


def _advantages(batch, mask, config):
    """Per-step advantages `[B, T]` and per-sample total rewards `[B]`."""
    rewards, n_bad = base.check_rewards(batch["rewards"])
    batch_size, horizon = mask.shape
    if rewards.shape == (batch_size,):
        step_rewards = base.sequence_rewards_to_steps(rewards, mask)
    elif rewards.shape == (batch_size, horizon):
        step_rewards = rewards
    else:
        raise ValueError(
            f"`rewards` must have shape ({batch_size},) or ({batch_size}, {horizon}) to match "
            f"the policy's log_prob(actions), got {rewards.shape}"
        )
    step_rewards = jnp.where(jnp.isfinite(step_rewards), step_rewards, 0.0)
    dones = batch.get("dones")
    if dones is not None and jnp.ndim(dones) == 1:
        dones = jnp.asarray(dones)[:, None]
    returns = ops.discounted_returns(step_rewards, config.gamma, dones=dones, mask=mask)
    if config.baseline == "mean":
        mean, _ = ops.masked_moments(returns, mask, axis_name=config.axis_name)
        advantages = jnp.where(mask > 0, returns - mean, 0.0)
    elif config.baseline == "rloo":
        group = base.static_group_size(batch, config.num_generations)
        advantages = ops.rloo_advantages(returns[:, 0], group)[:, None] * mask
    else:
        advantages = returns
    if config.normalize_returns:
        advantages = ops.normalize_advantages(advantages, mask=mask, axis_name=config.axis_name)
    # Each sample's total reward (NaN if one of its rewards was: reported, not trained on).
    totals = rewards if rewards.ndim == 1 else ops.masked_sum(rewards, mask)
    return jax.lax.stop_gradient(advantages), totals, n_bad


def reinforce_loss(params, batch, policy_fn, config: REINFORCEConfig = REINFORCEConfig()):
    """The REINFORCE loss of one batch, for users who own their optimiser step.

    Math: `L = agg_{i,t}(-log pi(a_{i,t} | s_{i,t}) A_{i,t}) - entropy_coeff agg(H_{i,t})`
    with `A` the discounted return `G_t = sum_k gamma^k r_{t+k}` (reset at `dones`), minus
    the baseline, whitened if `normalize_returns`.

    Args:
      params: policy parameters.
      batch: dict with the keys of the module doc.
      policy_fn: `policy_fn(params, observations) -> distrax distribution`.
      config: a `REINFORCEConfig`.

    Returns:
      `(loss, metrics)` with metrics `loss, policy_loss, entropy, mean_reward, reward_std`.

    Example:
      >>> import distrax
      >>> policy = lambda p, obs: distrax.Categorical(logits=jnp.broadcast_to(p, (2, 2)))
      >>> batch = {"observations": jnp.zeros(2), "actions": jnp.array([0, 1]),
      ...          "rewards": jnp.array([1.0, 0.0])}
      >>> loss, m = reinforce_loss(jnp.zeros(2), batch, policy)
      >>> float(m["mean_reward"]), float(m["reward_std"])
      (0.5, 0.5)

    Reference: Williams 1992, Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning.
    """
    _, (metrics, _) = _loss(params, batch, policy_fn, config)
    metrics = _reduce_shares(metrics, config.axis_name)
    return metrics["loss"], metrics


def _loss(params, batch, policy_fn, config):
    base.check_batch(batch, _REQUIRED, _OPTIONAL, "REINFORCE")
    log_probs, entropy = policy.evaluate_policy(
        policy_fn, params, batch["observations"], batch["actions"]
    )
    if log_probs.ndim == 1:
        log_probs, entropy = log_probs[:, None], entropy[:, None]
    mask = batch.get("mask")
    if mask is not None and jnp.ndim(mask) == 1:
        mask = jnp.asarray(mask)[:, None]
    mask = _checks.as_mask(mask, log_probs.shape, "mask", "the policy's log_prob(actions)")
    if "group_size" in batch and config.baseline != "rloo":
        raise ValueError(
            "batch key 'group_size' is only used by REINFORCEConfig(baseline='rloo'), "
            f"not by baseline={config.baseline!r}"
        )
    advantages, totals, n_bad = _advantages(batch, mask, config)
    mode = config.loss_aggregation
    policy_loss = ops.global_token_mean(-log_probs * advantages, mask, mode, config.axis_name)
    entropy_term = ops.global_token_mean(entropy, mask, "token-mean", config.axis_name)
    loss = policy_loss - config.entropy_coeff * entropy_term
    mean_reward, reward_std = ops.masked_moments(totals, axis_name=config.axis_name)
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "entropy": entropy_term,
        "mean_reward": mean_reward,
        "reward_std": reward_std,
    }
    n_bad = ops.psum(n_bad, config.axis_name)
    metrics["skipped"] = (n_bad > 0).astype(jnp.float32)  # an update on this batch is skipped
    return loss, (metrics, n_bad)


def _reduce_shares(metrics, axis_name):
    """Sums the per-shard shares of the loss terms (the reward moments are already global)."""
    shares = ("loss", "policy_loss", "entropy")
    return {k: ops.psum(v, axis_name) if k in shares else v for k, v in metrics.items()}


def reinforce(policy_fn, optimizer: optax.GradientTransformation, config=REINFORCEConfig()):
    """REINFORCE as an `Algorithm(init, update)` pair: one optimiser step per batch.

    Example:
      >>> import distrax, optax
      >>> policy = lambda p, obs: distrax.Categorical(logits=jnp.broadcast_to(p, (2, 2)))
      >>> algo = reinforce(policy, optax.sgd(0.5))
      >>> state = algo.init(jnp.zeros(2))
      >>> batch = {"observations": jnp.zeros(2), "actions": jnp.array([0, 1]),
      ...          "rewards": jnp.array([1.0, 0.0])}
      >>> state, metrics = jax.jit(algo.update)(state, batch)
      >>> bool(state.params[0] > state.params[1])
      True
    """
    if not isinstance(config, REINFORCEConfig):
        raise TypeError(f"`config` must be a REINFORCEConfig, got {type(config).__name__}")
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)

    def init(params):
        return REINFORCEState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def update(state: REINFORCEState, batch):
        grads, (metrics, n_bad) = jax.grad(_loss, has_aux=True)(
            ops.shard_local(state.params, config.axis_name), batch, policy_fn, config
        )
        grads = jax.tree.map(lambda g: ops.psum(g, config.axis_name), grads)
        metrics = _reduce_shares(metrics, config.axis_name)
        params, opt_state = base.apply_gradients(
            tx, state.params, state.opt_state, grads, skip=n_bad > 0
        )
        return REINFORCEState(params, opt_state, state.step + 1), metrics

    return base.Algorithm(init, update)
