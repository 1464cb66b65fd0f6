"""GRPO: Group Relative Policy Optimization (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300).

Critic-free PPO: each prompt gets `G` sampled completions (contiguous rows), each
completion's reward is normalised within its group, and the clipped surrogate is applied
with that advantage on every token, plus an optional KL penalty to a reference policy.
The variants users rely on are options of one kernel:

* `scale_rewards`: "group" (paper), "batch", "none" (Dr.GRPO).
* `loss_aggregation`: "sequence-mean-token-mean" (paper), "token-mean" (DAPO),
  "sequence-mean-token-sum-norm" (Dr.GRPO), "sequence-mean-token-sum".
* `epsilon_high`: clip-higher (DAPO); default `clip_param`. `dual_clip`: dual clipping.
* `importance_sampling_level`: "token" (GRPO) or "sequence" (GSPO).
* `kl_estimator`: "k3" (paper), "k2", "k1".
* `reference`: "batch" (the `ref_log_probs` key turns the penalty on) or "initial"
  (log-probs of the frozen initial params; `rlgen.algorithms.reference`).

Batch keys: `observations`, `actions` (the policy's `log_prob(actions)` is `[B]` or
`[B, T]`), `rewards` (`[B]` per completion, or `[B, T]` per step, reduced to the
discounted return `sum_t gamma^t r_t`), optional `log_probs` (behaviour policy; default:
the current policy at the start of the update, i.e. on-policy), `ref_log_probs`, `mask`
(`[B, T]` valid tokens), `truncated` (`[B]`, with `mask_truncated_completions`) and
`group_size` (a static Python int; default `num_generations`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base, policy, reference

_REQUIRED = ("observations", "actions", "rewards")
_OPTIONAL = ("log_probs", "ref_log_probs", "mask", "truncated", "group_size")
#: The metrics `grpo` and `grpo_loss` return (each a 0-d float32 array).
METRICS = (
    "loss",
    "policy_loss",
    "mean_reward",
    "group_advantage_std",
    "kl_penalty",
    "approx_kl",
    "entropy",
    "clip_fraction",
    "skipped",
)


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings: Artifex's fields and defaults (docs/compatibility.md), plus the variants.

    Artifex's fields: `num_generations=4` (group size G), `clip_param=0.2` (PPO clip),
    `beta=0.01` (KL coefficient), `entropy_coeff=0.01` (entropy bonus), `gamma=0.99`
    (discount of per-step `[B, T]` rewards into each completion's return).

    Extras: `epsilon_high` (clip-higher; None = `clip_param`), `dual_clip`,
    `scale_rewards`, `advantage_eps`, `loss_aggregation`, `max_completion_length` (the
    constant of "sequence-mean-token-sum-norm"; None = T), `importance_sampling_level`,
    `kl_estimator`, `reference`, `num_iterations` (optimiser steps on each batch, the
    paper's mu), `gradient_accumulation_steps` (micro-batches per optimiser step, exact for
    every aggregation), `mask_truncated_completions` (drop rows flagged in the batch's
    `truncated` key from the loss), `max_grad_norm` (None: no clipping) and `axis_name`
    (data parallelism: statistics, token counts and gradients reduced over this mapped
    axis).
    """

    num_generations: int = 4
    clip_param: float = 0.2
    beta: float = 0.01
    entropy_coeff: float = 0.01
    gamma: float = 0.99
    epsilon_high: float | None = None
    dual_clip: float | None = None
    scale_rewards: str = _checks.option("group", ops.ADVANTAGE_SCALES)
    advantage_eps: float = 1e-4
    loss_aggregation: str = _checks.option("sequence-mean-token-mean", ops.AGGREGATION_MODES)
    max_completion_length: int | None = None
    importance_sampling_level: str = _checks.option("token", ops.RATIO_LEVELS)
    kl_estimator: str = _checks.option("k3", ops.KL_ESTIMATORS)
    reference: str = _checks.option("batch", reference.SOURCES)
    num_iterations: int = 1
    gradient_accumulation_steps: int = 1
    mask_truncated_completions: bool = False
    max_grad_norm: float | None = 1.0
    axis_name: Any = None

    def __post_init__(self):
        _checks.check_positive_int(self.num_generations, "num_generations")
        _checks.check_range(self.clip_param, "clip_param", 0.0)
        _checks.check_range(self.beta, "beta", 0.0)
        _checks.check_range(self.entropy_coeff, "entropy_coeff", 0.0)
        _checks.check_range(self.gamma, "gamma", 0.0, 1.0)
        if self.epsilon_high is not None:
            _checks.check_range(self.epsilon_high, "epsilon_high", 0.0)
        if self.dual_clip is not None:
            _checks.check_range(self.dual_clip, "dual_clip", 1.0, low_open=True)
        mode = ops.aggregation.canonical_mode(self.loss_aggregation, "loss_aggregation")
        object.__setattr__(self, "loss_aggregation", mode)
        _checks.check_options(self)
        _checks.check_range(self.advantage_eps, "advantage_eps", 0.0)
        if self.max_completion_length is not None:
            _checks.check_positive_int(self.max_completion_length, "max_completion_length")
        _checks.check_positive_int(self.num_iterations, "num_iterations")
        _checks.check_positive_int(
            self.gradient_accumulation_steps, "gradient_accumulation_steps"
        )
        _checks.check_bool(self.mask_truncated_completions, "mask_truncated_completions")
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)


class GRPOState(NamedTuple):
    """GRPO's algorithm state: a pytree of arrays with fixed structure and dtypes."""

    params: Any
    opt_state: Any
    step: jax.Array
    ref_params: Any  # frozen initial params with reference="initial", else ()


class _Prepared(NamedTuple):
    """Per-batch quantities fixed for all iterations and micro-batches of one update."""

    observations: Any
    actions: Any
    advantages: jax.Array  # [B, T]
    old_log_probs: jax.Array | None  # [B, T]; None: on-policy, the loss's own forward
    ref_log_probs: jax.Array | None  # [B, T]
    mask: jax.Array  # [B, T]


def _as_tokens(x, batch_size):
    """`[B]` per-sample values become `[B, 1]` so one code path serves both shapes."""
    return x[:, None] if x.ndim == 1 else x


def _sequence_returns(rewards, mask, gamma):
    """`[B]` completion returns from `[B]` or `[B, T]` rewards."""
    if rewards.ndim == 1:
        return rewards
    _checks.check_shape(rewards, mask.shape, "rewards", "the policy's log-probs [B, T]")
    return ops.discounted_returns(rewards, gamma, mask=mask)[:, 0]


def _prepare(params, ref_params, batch, policy_fn, config) -> tuple[_Prepared, dict]:
    """Checks the batch and computes what every iteration and micro-batch shares.

    No forward pass runs here unless one is needed: the behaviour log-probs come from the
    batch, or (on-policy, one iteration) from the loss's own forward pass, which is then
    exactly the sampling policy's; only with `num_iterations > 1` and no `log_probs` key
    are they computed here, once. The reference's forward runs only when `beta > 0`.
    """
    base.check_batch(batch, _REQUIRED, _OPTIONAL, "GRPO")
    group_size = base.static_group_size(batch, config.num_generations)
    rewards, n_bad = base.check_rewards(batch["rewards"])
    obs, actions = batch["observations"], batch["actions"]

    def forward(p):
        return policy.evaluate_policy(policy_fn, p, obs, actions)[0]

    lp_shape = jax.eval_shape(forward, params).shape  # shapes only: no FLOPs
    batch_size = lp_shape[0]
    token_shape = lp_shape if len(lp_shape) == 2 else (batch_size, 1)
    mask = _checks.as_mask(
        None if "mask" not in batch else _as_tokens(jnp.asarray(batch["mask"]), batch_size),
        token_shape,
        "mask",
        "the policy's log_prob(actions)",
    )
    if rewards.shape[0] != batch_size:
        raise ValueError(
            f"`rewards` must have {batch_size} rows (one per completion, like "
            f"log_prob(actions) {lp_shape}), got shape {rewards.shape}"
        )
    returns = _sequence_returns(rewards, mask, config.gamma)
    finite_returns = jnp.where(jnp.isfinite(returns), returns, 0.0)
    advantages = ops.group_advantages(
        finite_returns,
        group_size,
        scale=config.scale_rewards,
        eps=config.advantage_eps,
        axis_name=config.axis_name,
    )
    if config.mask_truncated_completions:
        if "truncated" not in batch:
            raise ValueError(
                "GRPOConfig.mask_truncated_completions=True needs the batch key 'truncated' "
                "([B] flags of completions cut at the length limit)"
            )
        truncated = _checks.as_mask(batch["truncated"], (batch_size,), "truncated", "rewards")
        mask = mask * (1.0 - truncated)[:, None]
    elif "truncated" in batch:
        raise ValueError(
            "batch key 'truncated' is only used with GRPOConfig.mask_truncated_completions=True"
        )

    def checked_log_probs(x, key):
        x = jnp.asarray(x)
        _checks.check_float(x, key)
        _checks.check_shape(x, lp_shape, key, "the policy's log_prob(actions)")
        return jax.lax.stop_gradient(_as_tokens(x, batch_size).astype(jnp.float32))

    if "log_probs" in batch:
        old = checked_log_probs(batch["log_probs"], "log_probs")
    elif config.num_iterations > 1:  # later iterations need the policy before the first
        old = jax.lax.stop_gradient(_as_tokens(forward(params), batch_size))
    else:
        old = None
    if config.reference == "initial" and config.beta == 0:
        if "ref_log_probs" in batch:
            raise ValueError(
                "GRPOConfig(reference='initial') computes the reference values from the "
                "frozen initial params; drop the batch key(s) ['ref_log_probs'] or use "
                "reference='batch'"
            )
        ref = None  # beta = 0: the penalty is off, so the reference's forward never runs
    else:
        ref = reference.values(
            batch,
            ("ref_log_probs",),
            config.reference,
            ref_params,
            lambda p: (forward(p),),
            required=False,
            owner="GRPOConfig",
        )
    ref = None if ref is None else checked_log_probs(ref[0], "ref_log_probs")
    prepared = _Prepared(
        obs, actions, jnp.broadcast_to(advantages[:, None], token_shape), old, ref, mask
    )
    n_bad = ops.psum(n_bad, config.axis_name)
    stats = {
        # NaN when a reward was non-finite: reported, and the update is skipped.
        "mean_reward": ops.pmean(jnp.mean(returns), config.axis_name),
        "group_advantage_std": ops.masked_moments(advantages, axis_name=config.axis_name)[1],
        "n_bad": n_bad,
        "skipped": (n_bad > 0).astype(jnp.float32),
    }
    return prepared, stats


def _loss(params, prepared: _Prepared, policy_fn, config, norm, counts):
    """GRPO loss of (a micro-batch of) prepared data: this shard's share of the global loss.

    `counts` maps each aggregation mode to its denominator over the whole batch (all
    micro-batches and shards, `_counts`), so the shares sum to the full-batch loss.
    """
    log_probs, entropy = policy.evaluate_policy(
        policy_fn, params, prepared.observations, prepared.actions
    )
    batch_size = log_probs.shape[0]
    log_probs = _as_tokens(log_probs, batch_size)
    entropy = _as_tokens(entropy, batch_size)
    if config.entropy_coeff == 0:  # a metric only: no backward pass through it
        entropy = jax.lax.stop_gradient(entropy)
    mask = prepared.mask
    old_log_probs = prepared.old_log_probs
    if old_log_probs is None:  # on-policy: this very forward is the sampling policy's
        old_log_probs = jax.lax.stop_gradient(log_probs)
    surrogate = ops.clipped_surrogate_loss(
        log_probs,
        old_log_probs,
        prepared.advantages,
        mask,
        epsilon_low=config.clip_param,
        epsilon_high=config.epsilon_high,
        dual_clip=config.dual_clip,
        level=config.importance_sampling_level,
    )
    mode = config.loss_aggregation
    norm_kw = {"norm": norm} if ops.aggregation.canonical_mode(mode).endswith("-norm") else {}

    def agg(x, m=mode):
        kw = norm_kw if m == mode else {}
        return ops.global_token_mean(x, mask, m, config.axis_name, count=counts[m], **kw)

    policy_loss = agg(surrogate.loss)
    entropy_term = agg(entropy)
    loss = policy_loss - config.entropy_coeff * entropy_term
    if prepared.ref_log_probs is not None:
        kl = agg(ops.kl_estimate(log_probs, prepared.ref_log_probs, config.kl_estimator))
        loss = loss + config.beta * kl
    else:
        kl = jnp.zeros((), loss.dtype)
    # KL(old || current) from tokens sampled by the old policy (k3), a diagnostic.
    current = jax.lax.stop_gradient(log_probs)
    approx_kl = agg(ops.kl_estimate(old_log_probs, current), "token-mean")
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "kl_penalty": kl,
        "approx_kl": approx_kl,
        "entropy": entropy_term,
        "clip_fraction": agg(surrogate.clipped, "token-mean"),
    }
    return loss, metrics


def _counts(config, prepared):
    """Denominators of the aggregations used by `_loss`, over the whole batch."""
    modes = {config.loss_aggregation, "token-mean"}
    return {m: ops.global_count(prepared.mask, m, config.axis_name) for m in modes}


def _norm(config, prepared):
    if not ops.aggregation.canonical_mode(config.loss_aggregation).endswith("-norm"):
        return None
    return config.max_completion_length or prepared.mask.shape[1]


def grpo_loss(params, batch, policy_fn, config: GRPOConfig = GRPOConfig(), *, ref_params=None):
    """The GRPO loss of one batch, for users who own their optimiser step.

    Math (per token `t` of completion `i` in group `g`, ratio `r_{i,t}`, advantage
    `A_i = (R_i - mean_g R) / (std_g R + eps)`):
    `L = agg_{i,t}( -min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i) + beta KL_{i,t} )
         - entropy_coeff * agg_{i,t}(H_{i,t})`,
    with `agg` the configured aggregation and `KL` the configured estimator against the
    reference (k3 by default, DeepSeekMath eq. 4).

    Args:
      params: policy parameters (differentiated).
      batch: dict with the keys in the module doc.
      policy_fn: `policy_fn(params, observations) -> distrax distribution`.
      config: a `GRPOConfig`.
      ref_params: frozen reference params, needed with `reference="initial"`.

    Returns:
      `(loss, metrics)`: a scalar and the metrics dict (`METRICS`).

    Example:
      >>> import distrax
      >>> policy = lambda p, obs: distrax.Categorical(logits=jnp.broadcast_to(p, (4, 2)))
      >>> batch = {"observations": jnp.zeros(4), "actions": jnp.array([0, 1, 1, 1]),
      ...          "rewards": jnp.array([1.0, 0.0, 0.0, 0.0])}
      >>> loss, m = grpo_loss(jnp.zeros(2), batch, policy, GRPOConfig(num_generations=2))
      >>> float(m["mean_reward"])
      0.25
    """
    if config.reference == "initial" and config.beta > 0 and ref_params is None:
        raise ValueError("GRPOConfig(reference='initial') needs `ref_params`")
    prepared, stats = _prepare(params, ref_params, batch, policy_fn, config)
    loss, metrics = _loss(
        params, prepared, policy_fn, config, _norm(config, prepared), _counts(config, prepared)
    )
    loss = ops.psum(loss, config.axis_name)
    metrics = {k: ops.psum(v, config.axis_name) for k, v in metrics.items()}
    metrics.update(
        mean_reward=stats["mean_reward"],
        group_advantage_std=stats["group_advantage_std"],
        skipped=stats["skipped"],
    )
    return loss, metrics


def _split(tree, parts):
    """Splits every array's leading axis into `parts` micro-batches: `[parts, B/parts, ...]`."""

    def split(x):
        if x.shape[0] % parts:
            raise ValueError(
                f"the batch of {x.shape[0]} rows is not divisible by "
                f"gradient_accumulation_steps={parts}"
            )
        return x.reshape(parts, x.shape[0] // parts, *x.shape[1:])

    return jax.tree.map(split, tree)


def grpo(policy_fn, optimizer: optax.GradientTransformation, config: GRPOConfig = GRPOConfig()):
    """GRPO as an `Algorithm(init, update)` pair (DeepSeekMath, arXiv 2402.03300).

    `init(params)` captures the optimiser state (and, with `reference="initial"`, a
    frozen copy of `params` as the reference). `update(state, batch)` computes group
    advantages once, then takes `num_iterations` optimiser steps on the batch, each
    accumulating `gradient_accumulation_steps` micro-batches exactly, and returns the
    metrics averaged over iterations.

    Example:
      >>> import distrax, optax
      >>> policy = lambda p, obs: distrax.Categorical(logits=jnp.broadcast_to(p, (4, 2)))
      >>> algo = grpo(policy, optax.adam(0.1), GRPOConfig(num_generations=2))
      >>> state = algo.init(jnp.zeros(2))
      >>> batch = {"observations": jnp.zeros(4), "actions": jnp.array([0, 1, 0, 1]),
      ...          "rewards": jnp.array([1.0, 0.0, 1.0, 0.0])}
      >>> state, metrics = jax.jit(algo.update)(state, batch)
      >>> bool(state.params[0] > state.params[1])
      True
    """
    if not isinstance(config, GRPOConfig):
        raise TypeError(f"`config` must be a GRPOConfig, got {type(config).__name__}")
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)

    def init(params):
        ref = reference.init(params, config.reference, needed=config.beta > 0)
        return GRPOState(params, tx.init(params), jnp.zeros((), jnp.int32), ref)

    def update(state: GRPOState, batch):
        prepared, stats = _prepare(state.params, state.ref_params, batch, policy_fn, config)
        norm = _norm(config, prepared)
        counts = _counts(config, prepared)  # whole-batch denominators: exact accumulation
        parts = config.gradient_accumulation_steps

        def micro_grads(params, mb):
            (_, metrics), grads = jax.value_and_grad(_loss, has_aux=True)(
                ops.shard_local(params, config.axis_name), mb, policy_fn, config, norm, counts
            )
            return grads, metrics

        def full_grads(params):
            if parts == 1:
                grads, metrics = micro_grads(params, prepared)
            else:
                micro = _split(prepared, parts)
                # The first micro-batch starts the sum (not zeros): under shard_map its
                # gradients and metrics vary over the device axis, and a scan carry must
                # keep that type.
                first = micro_grads(params, jax.tree.map(lambda x: x[0], micro))
                rest = jax.tree.map(lambda x: x[1:], micro)
                add = lambda acc, mb: (jax.tree.map(jnp.add, acc, micro_grads(params, mb)), None)  # noqa: E731
                (grads, metrics), _ = jax.lax.scan(add, first, rest)
            reduce = lambda tree: jax.tree.map(lambda x: ops.psum(x, config.axis_name), tree)  # noqa: E731
            return reduce(grads), reduce(metrics)

        def iteration(carry, _):
            params, opt_state = carry
            grads, metrics = full_grads(params)
            params, opt_state = base.apply_gradients(
                tx, params, opt_state, grads, skip=stats["n_bad"] > 0
            )
            return (params, opt_state), metrics

        (params, opt_state), metrics = jax.lax.scan(
            iteration, (state.params, state.opt_state), None, length=config.num_iterations
        )
        metrics = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
        metrics.update(
            mean_reward=stats["mean_reward"],
            group_advantage_std=stats["group_advantage_std"],
            skipped=stats["skipped"],
        )
        return GRPOState(params, opt_state, state.step + 1, state.ref_params), metrics

    return base.Algorithm(init, update)
