"""PPO: Proximal Policy Optimization with GAE (Schulman et al. 2017, arXiv 1707.06347).

An actor-critic method: the update computes Generalized Advantage Estimates (Schulman et
al. 2016, arXiv 1506.02438) from the batch's `rewards`, `values` and `dones` once, then
takes `num_epochs` passes over the batch, each split into `num_minibatches` shuffled
minibatches of rows, with one optimiser step per minibatch, all inside one compiled
program (`lax.scan` over epochs and minibatches).

Per valid step `t` of row `b` (mask `m`), with the probability ratio
`r = pi(a|s) / pi_old(a|s)`, advantage `A` (whitened per minibatch when
`normalize_advantages`), return `R = A_GAE + V_old` and current value `V`:

    L = mean_{b,t} -min(r A, clip(r, 1 - eps, 1 + eps) A)           (policy_loss)
      + vf_coeff      * mean_{b,t} 0.5 (V - R)^2                     (value_loss)
      - entropy_coeff * mean_{b,t} H(pi(.|s))                         (entropy)

The means are token means over valid steps of the whole (global) minibatch; with
`clip_value = c` the value loss is `0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`.

Batch keys, `B` rows of `T` steps:

* `observations` `[B, T, ...]` (any pytree whose leaves lead with `B`),
  `actions` `[B, T, ...]`: what `policy_fn` is evaluated on.
* `rewards` `[B, T]` float; `dones` `[B, T]` (episode ended after step `t`).
* `values` `[B, T + 1]` (the bootstrap value `V(s_T)` last) or `[B, T]` (no bootstrap):
  the critic's values at collection time.
* `log_probs` `[B, T]`: log-probs of `actions` under the behaviour policy.
* optional `mask` `[B, T]` (1 valid, 0 padded).

One-step batches (a contextual bandit: one action per sample, as a VAE encoder choosing
latents or a generator choosing an image): `log_probs` `[B]` makes the batch the `T = 1`
case, and `rewards`, `dones`, `values` (no bootstrap) and `mask` are then `[B]` too;
`observations` and `actions` lead with `B` (`[B, ...]`). GAE degenerates to
`A = r - V(s)` and the value target to `R = r`. A shape that does not match `log_probs`
is a ValueError naming the key, the expected and the received shape.

The policy protocol (`rlgen.algorithms.base`): `policy_fn(params, observations)` returns
`(distribution, values)` with `distribution.log_prob(actions)`, `distribution.entropy()`
and `values` all shaped `[B, T]` (`[B]` for a one-step batch, e.g. a
`distrax.MultivariateNormalDiag` over `[B, D]` continuous actions).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base, policy

_REQUIRED = ("observations", "actions", "rewards", "values", "log_probs", "dones")
_OPTIONAL = ("mask",)
_AGG = "token-mean"
#: The metrics `ppo` and `ppo_loss` return (each a 0-d float32 array).
METRICS = (
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "mean_reward",
    "advantage_mean",
    "kl_divergence",
    "clip_fraction",
    "skipped",
)


def _check_axis_name(axis_name) -> None:
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if axis_name is not None and not all(isinstance(n, str) and n for n in names):
        raise TypeError(
            "`axis_name` must be None, a mapped axis name (a non-empty str) or a tuple of "
            f"them, got {axis_name!r}"
        )


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO settings: Artifex's fields and defaults (docs/compatibility.md), and the schedule.

    Artifex's fields: `gamma=0.99` (discount of the GAE), `gae_lambda=0.95` (GAE lambda),
    `clip_param=0.2` (surrogate clip range epsilon), `vf_coeff=0.5` (value-loss weight),
    `entropy_coeff=0.01` (entropy bonus weight), `max_grad_norm=0.5` (global-norm
    gradient clipping; None turns it off).

    Extras:
      num_epochs: passes over each batch (the paper's K; 3-10 is usual).
      num_minibatches: minibatches per epoch; the batch's `B` rows (per device under
        `axis_name`) are shuffled and split into this many equal parts, one optimiser
        step each. `B` must be divisible by it. With 1, no shuffling is done (the loss
        does not depend on row order).
      clip_value: None (plain squared error) or the clip range of the value prediction
        around the values stored in the batch (OpenAI Baselines' PPO2 value clipping).
      normalize_advantages: whiten the advantages of each minibatch (mask-aware; global
        over `axis_name`).
      target_kl: None, or an early-stop threshold: after each epoch the approximate
        `KL(pi_old || pi)` (k3 estimator, token mean over the whole batch, measured with
        the epoch's final parameters: one extra forward pass per epoch) is compared with
        it; once it is exceeded, the remaining epochs make no parameter or
        optimiser-state change and are left out of the metrics (being a fixed-length
        `lax.scan`, they are still computed, then discarded).
      axis_name: None, or the mapped axis (`shard_map`/`pmap`) the batch is split over:
        advantage statistics, token counts, metrics and gradients are reduced over it, so
        each device computes the single-device update of the whole batch (exactly with
        `num_minibatches=1`; with more, each device shuffles and splits its own rows).
        Works under `shard_map` with or without `check_vma`, and under `pmap`.

    Every numeric field may be a traced scalar (e.g. swept with `vmap`); `num_epochs` and
    `num_minibatches` are static sizes.
    """

    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_param: float = 0.2
    vf_coeff: float = 0.5
    entropy_coeff: float = 0.01
    max_grad_norm: float | None = 0.5
    num_epochs: int = 4
    num_minibatches: int = 1
    clip_value: float | None = None
    normalize_advantages: bool = True
    target_kl: float | None = None
    axis_name: Any = None

    def __post_init__(self):
        _checks.check_range(self.gamma, "gamma", 0.0, 1.0)
        _checks.check_range(self.gae_lambda, "gae_lambda", 0.0, 1.0)
        _checks.check_range(self.clip_param, "clip_param", 0.0)
        _checks.check_range(self.vf_coeff, "vf_coeff", 0.0)
        _checks.check_range(self.entropy_coeff, "entropy_coeff", 0.0)
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)
        _checks.check_positive_int(self.num_epochs, "num_epochs")
        _checks.check_positive_int(self.num_minibatches, "num_minibatches")
        if self.clip_value is not None:
            _checks.check_range(self.clip_value, "clip_value", 0.0, low_open=True)
        _checks.check_bool(self.normalize_advantages, "normalize_advantages")
        if self.target_kl is not None:
            _checks.check_range(self.target_kl, "target_kl", 0.0, low_open=True)
        _check_axis_name(self.axis_name)


class PPOState(NamedTuple):
    """PPO's algorithm state: a pytree of arrays with fixed structure and dtypes.

    `key` is the PRNG key of minibatch shuffling; each update splits it.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


class _Prepared(NamedTuple):
    """Per-row data fixed for every epoch and minibatch of one update (rows lead)."""

    observations: Any
    actions: Any
    old_log_probs: jax.Array  # [B, T]
    old_values: jax.Array  # [B, T] V(s_t) at collection time
    advantages: jax.Array  # [B, T] raw GAE
    returns: jax.Array  # [B, T] advantages + old values (value targets)
    mask: jax.Array  # [B, T]


def _check_rows(tree, rows, name, one_step=False) -> None:
    axes, rank = ("[B]", 1) if one_step else ("[B, T]", 2)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) < rank or shape[0] != rows:
            where = f"{name}{jax.tree_util.keystr(path)}"
            raise ValueError(
                f"PPO batch['{where}'] must lead with the {axes} = [{rows}, ...] axes of "
                f"`rewards`, got shape {None if shape is None else tuple(shape)}"
            )


#: The per-step keys of a one-step batch, each `[B]` like `log_probs`.
_ONE_STEP_KEYS = ("rewards", "dones", "values", "mask")


def _as_steps(batch) -> tuple[dict, bool]:
    """A one-step batch (`log_probs` `[B]`) as the `T = 1` case; `(batch, one_step)`.

    Every key of `_ONE_STEP_KEYS` present must then be `[B]` (a ValueError naming the key,
    the expected and the received shape otherwise); each gains a trailing step axis.
    Other batches are returned as they are.
    """
    log_probs = _checks.as_array(batch["log_probs"], "log_probs")
    if log_probs.ndim != 1:
        return batch, False
    rows = log_probs.shape[0]
    out = dict(batch, log_probs=log_probs[:, None])
    for key in _ONE_STEP_KEYS:
        if key not in batch:
            continue
        x = _checks.as_array(batch[key], key)
        if tuple(x.shape) != (rows,):
            raise ValueError(
                f"PPO batch['{key}'] must have shape ({rows},) like batch['log_probs'] "
                f"{(rows,)} (a one-step batch: one value per sample), got {tuple(x.shape)}"
            )
        out[key] = x[:, None]
    return out, True


def _prepare(batch, config: PPOConfig) -> tuple[_Prepared, dict]:
    """Validates the batch and computes GAE advantages and returns (once per update)."""
    base.check_batch(batch, _REQUIRED, _OPTIONAL, "PPO")
    batch, one_step = _as_steps(batch)
    rewards = _checks.as_array(batch["rewards"], "rewards")
    _checks.check_rank(rewards, 2, "rewards", "([B, T]: one reward per step of each row)")
    _checks.check_float(rewards, "rewards")
    rows, horizon = rewards.shape
    mask = _checks.as_mask(batch.get("mask"), (rows, horizon), "mask", "rewards")
    # Only valid steps are checked: padded rewards may hold anything (even NaN).
    _, n_bad = base.check_rewards(jnp.where(mask > 0, rewards, 0.0))
    dones = _checks.as_mask(batch["dones"], (rows, horizon), "dones", "rewards")
    values = _checks.as_array(batch["values"], "values")
    _checks.check_float(values, "values")
    if values.shape not in ((rows, horizon + 1), (rows, horizon)):
        raise ValueError(
            f"PPO batch['values'] must have shape ({rows}, {horizon + 1}) (V(s_t) for the "
            f"{horizon} steps, then the bootstrap value) or ({rows}, {horizon}) (no "
            f"bootstrap) to match `rewards` {(rows, horizon)}, got {tuple(values.shape)}"
        )
    log_probs = _checks.as_array(batch["log_probs"], "log_probs")
    _checks.check_float(log_probs, "log_probs")
    _checks.check_shape(log_probs, (rows, horizon), "log_probs", "rewards")
    _check_rows(batch["observations"], rows, "observations", one_step)
    _check_rows(batch["actions"], rows, "actions", one_step)

    valid = mask > 0
    f32 = jnp.promote_types(values.dtype, jnp.float32)
    finite_rewards = jnp.where(jnp.isfinite(rewards), rewards, 0.0)
    advantages = ops.gae_advantages(
        finite_rewards, values, config.gamma, config.gae_lambda, dones=dones, mask=mask
    )
    old_values = jnp.where(valid, values[:, :horizon].astype(f32), 0.0)
    sg = jax.lax.stop_gradient
    prepared = _Prepared(
        observations=batch["observations"],
        actions=batch["actions"],
        old_log_probs=sg(jnp.where(valid, log_probs.astype(f32), 0.0)),
        old_values=sg(old_values),
        advantages=sg(advantages),
        returns=sg(jnp.where(valid, advantages + old_values, 0.0)),
        mask=mask,
    )
    stats = {
        # NaN when a valid reward was non-finite: reported, and the update is skipped.
        "mean_reward": ops.aggregate(rewards, mask, _AGG, axis_name=config.axis_name),
        "advantage_mean": ops.aggregate(advantages, mask, _AGG, axis_name=config.axis_name),
        "n_bad": ops.psum(n_bad, config.axis_name),
    }
    return prepared, stats


def _evaluate(params, data: _Prepared, policy_fn):
    log_probs, entropy, values = policy.evaluate_policy(
        policy_fn, params, data.observations, data.actions, with_values=True
    )
    expected = data.old_log_probs.shape
    checked = []
    for name, x in (("log_prob(actions)", log_probs), ("entropy", entropy), ("values", values)):
        if expected[1] == 1 and x.shape == expected[:1]:
            x = x[:, None]  # a one-step policy's [B] on the T = 1 batch
        if x.shape != expected:
            raise ValueError(
                f"PPO's policy_fn returned {name} of shape {x.shape}; expected {expected}, "
                "the [B, T] shape of the batch's `log_probs` (one value per step; [B] for a "
                "one-step batch)"
            )
        checked.append(x)
    return tuple(checked)


def _loss(params, data: _Prepared, policy_fn, config: PPOConfig):
    """PPO loss of (a minibatch of) prepared data: this device's share of the global loss.

    Each term is `sum_local / count_global` (`rlgen.ops.global_token_mean`): summed over the
    devices of `axis_name` it is the token mean of the whole minibatch.
    """
    log_probs, entropy, values = _evaluate(params, data, policy_fn)
    mask = data.mask
    advantages = data.advantages
    if config.normalize_advantages:
        advantages = ops.normalize_advantages(advantages, mask=mask, axis_name=config.axis_name)
    surrogate = ops.clipped_surrogate_loss(
        log_probs, data.old_log_probs, advantages, mask, epsilon_low=config.clip_param
    )
    clipped_values = config.clip_value is not None
    v_loss = ops.value_loss(
        jnp.where(mask > 0, values, 0.0),
        data.returns,
        old_values=data.old_values if clipped_values else None,
        clip_epsilon=config.clip_value,
    )

    def agg(x):
        return ops.global_token_mean(x, mask, _AGG, config.axis_name)

    policy_loss = agg(surrogate.loss)
    value_loss = agg(v_loss)
    entropy_mean = agg(entropy)
    loss = policy_loss + config.vf_coeff * value_loss - config.entropy_coeff * entropy_mean
    # KL(pi_old || pi) from actions sampled by the old policy (k3), a diagnostic.
    kl = ops.kl_estimate(data.old_log_probs, jax.lax.stop_gradient(log_probs), "k3")
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy_mean,
        "kl_divergence": agg(kl),
        "clip_fraction": agg(surrogate.clipped),
    }
    return loss, metrics


def ppo_loss(params, batch, policy_fn, config: PPOConfig = PPOConfig()):
    """The PPO loss of one batch (GAE included), for users who own their optimiser step.

    Math: see the module doc; the advantages are GAE of the batch (Schulman et al. 2016,
    arXiv 1506.02438), the surrogate is PPO's clipped objective (Schulman et al. 2017,
    arXiv 1707.06347). The whole batch is one minibatch here (`num_epochs`,
    `num_minibatches` and `target_kl` belong to `ppo`'s update).

    Args:
      params: actor-critic parameters (differentiated).
      batch: dict with the module doc's keys: `observations`, `actions` `[B, T, ...]`,
        `rewards`, `dones`, `log_probs` `[B, T]`, `values` `[B, T + 1]` or `[B, T]`,
        optional `mask` `[B, T]`; or a one-step batch: `log_probs`, `rewards`, `dones`,
        `values` (and `mask`) `[B]`, read as `T = 1` (module doc).
      policy_fn: `policy_fn(params, observations) -> (distrax distribution, values)`.
      config: a `PPOConfig`.

    Returns:
      `(loss, metrics)`: a float32 scalar and a dict with the `METRICS` (`mean_reward` is
      the token mean of the rewards, `advantage_mean` that of the raw GAE advantages).
      With `axis_name`, both are global over the devices.

    Example:
      >>> import distrax
      >>> def policy(p, obs):  # state-independent logits, value p[2]
      ...     logits = jnp.broadcast_to(p[:2], obs.shape + (2,))
      ...     return distrax.Categorical(logits=logits), jnp.full(obs.shape, p[2])
      >>> batch = {"observations": jnp.zeros((2, 3)), "actions": jnp.ones((2, 3), int),
      ...          "rewards": jnp.ones((2, 3)), "dones": jnp.zeros((2, 3)),
      ...          "values": jnp.zeros((2, 4)), "log_probs": jnp.full((2, 3), -0.6931)}
      >>> loss, m = ppo_loss(jnp.zeros(3), batch, policy, PPOConfig(gamma=1.0, gae_lambda=1.0))
      >>> float(m["mean_reward"]), float(m["advantage_mean"]), float(m["value_loss"])
      (1.0, 2.0, 2.3333)

    A one-step batch (continuous actions, `[B]` rewards): the advantage is `r - V`:
      >>> def gaussian(p, obs):  # N(p[:2], I) over 2-D actions, value p[2]
      ...     mean = jnp.broadcast_to(p[:2], obs.shape[:1] + (2,))
      ...     return distrax.MultivariateNormalDiag(mean), jnp.full(obs.shape[:1], p[2])
      >>> one = {"observations": jnp.zeros((2, 3)), "actions": jnp.ones((2, 2)),
      ...        "rewards": jnp.array([1.0, 3.0]), "dones": jnp.ones(2),
      ...        "values": jnp.full(2, 0.5), "log_probs": jnp.full(2, -2.8379)}
      >>> loss, m = ppo_loss(jnp.array([0.0, 0.0, 0.5]), one, gaussian)
      >>> float(m["advantage_mean"]), float(m["value_loss"])
      (1.5, 1.625)
    """
    if not isinstance(config, PPOConfig):
        raise TypeError(f"`config` must be a PPOConfig, got {type(config).__name__}")
    prepared, stats = _prepare(batch, config)
    loss, metrics = _loss(params, prepared, policy_fn, config)
    loss = ops.psum(loss, config.axis_name)
    metrics = ops.psum(metrics, config.axis_name)
    metrics.update(
        mean_reward=stats["mean_reward"],
        advantage_mean=stats["advantage_mean"],
        skipped=(stats["n_bad"] > 0).astype(jnp.float32),
    )
    return loss, metrics


def _check_seed(seed) -> None:
    dtype = getattr(seed, "dtype", None)
    is_int = isinstance(seed, int) and not isinstance(seed, bool)
    is_int_array = (
        dtype is not None
        and jnp.issubdtype(dtype, jnp.integer)
        and tuple(getattr(seed, "shape", ())) == ()
    )
    if not (is_int or is_int_array):
        raise TypeError(
            f"`seed` must be an int (a Python int or an integer scalar array), got "
            f"{type(seed).__name__}"
            + (f" of dtype {dtype} and shape {tuple(seed.shape)}" if dtype is not None else "")
        )


def ppo(
    policy_fn,
    optimizer: optax.GradientTransformation,
    config: PPOConfig = PPOConfig(),
    seed=0,
):
    """PPO as an `Algorithm(init, update)` pair (Schulman et al. 2017, arXiv 1707.06347).

    `init(params)` returns `PPOState(params, opt_state, step=0, key)` with the shuffling
    key made from `seed`. `update(state, batch)` computes GAE advantages and returns once
    (`rlgen.ops.gae_advantages`, arXiv 1506.02438), then runs `num_epochs` epochs of
    `num_minibatches` shuffled minibatches (rows), one clipped optimiser step each (the
    optimiser is chained after `clip_by_global_norm(max_grad_norm)`), all as `lax.scan`s
    inside the one compiled update. It returns the new state and the `METRICS` averaged
    over the minibatch steps of the epochs that ran (`mean_reward` and
    `advantage_mean` describe the batch). Non-finite valid rewards are reported (a
    ValueError eagerly, a RuntimeWarning under `jit`) and the whole update leaves the
    parameters and optimiser state unchanged.

    Args:
      policy_fn: `policy_fn(params, observations) -> (distrax distribution, values)`.
      optimizer: any optax transformation.
      config: a `PPOConfig`.
      seed: int (or traced integer scalar, e.g. under `vmap` over seeds) for the
        shuffling key.

    Example:
      >>> import distrax, optax
      >>> def policy(p, obs):
      ...     logits = jnp.broadcast_to(p[:2], obs.shape + (2,))
      ...     return distrax.Categorical(logits=logits), jnp.full(obs.shape, p[2])
      >>> algo = ppo(policy, optax.adam(0.05), PPOConfig(num_epochs=2, num_minibatches=2))
      >>> state = algo.init(jnp.zeros(3))
      >>> batch = {"observations": jnp.zeros((4, 3)),
      ...          "actions": jnp.array([[1, 0, 1]] * 4),
      ...          "rewards": jnp.array([[1.0, 0.0, 1.0]] * 4),
      ...          "dones": jnp.zeros((4, 3)), "values": jnp.zeros((4, 4)),
      ...          "log_probs": jnp.full((4, 3), jnp.log(0.5))}
      >>> state, metrics = jax.jit(algo.update)(state, batch)
      >>> bool(state.params[1] > state.params[0]), int(state.step)
      (True, 1)
    """
    if not isinstance(config, PPOConfig):
        raise TypeError(f"`config` must be a PPOConfig, got {type(config).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if not callable(policy_fn):
        raise TypeError(f"`policy_fn` must be callable, got {type(policy_fn).__name__}")
    _check_seed(seed)
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)
    axis = config.axis_name
    num_minibatches = config.num_minibatches

    def init(params):
        key = jax.random.key(seed)
        return PPOState(params, tx.init(params), jnp.zeros((), jnp.int32), key)

    def minibatches(prepared: _Prepared, key, epoch):
        """`[M, B/M, ...]` minibatches of a fresh shuffle of the rows."""
        rows = prepared.mask.shape[0]
        if num_minibatches == 1:
            return jax.tree.map(lambda x: x[None], prepared)
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), rows)
        size = rows // num_minibatches
        return jax.tree.map(
            lambda x: jnp.take(x, perm, axis=0).reshape(num_minibatches, size, *x.shape[1:]),
            prepared,
        )

    def grad_step(carry, mb):
        params, opt_state = carry
        (_, metrics), grads = jax.value_and_grad(_loss, has_aux=True)(
            ops.shard_local(params, axis), mb, policy_fn, config
        )
        grads, metrics = ops.psum((grads, metrics), axis)
        params, opt_state = base.apply_gradients(tx, params, opt_state, grads)
        return (params, opt_state), metrics

    def keep_if(skip, old, new):
        """`old` where `skip`, else `new` (one select per epoch or update, not per step)."""
        return jax.tree.map(lambda o, n: jnp.where(skip, o, n), old, new)

    def epoch_kl(params, mbs: _Prepared):
        """Token-mean k3 KL(pi_old || pi) over every minibatch of the epoch."""

        def parts(mb):
            log_probs, _, _ = _evaluate(params, mb, policy_fn)
            kl = ops.kl_estimate(mb.old_log_probs, log_probs, "k3")
            return ops.aggregate_parts(kl, mb.mask, _AGG)

        totals, counts = jax.lax.map(parts, mbs)
        total, count = ops.psum(jnp.sum(totals), axis), ops.psum(jnp.sum(counts), axis)
        return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)

    def update(state: PPOState, batch):
        prepared, stats = _prepare(batch, config)
        rows = prepared.mask.shape[0]
        if rows % num_minibatches:
            where = " (per device)" if axis is not None else ""
            raise ValueError(
                f"the PPO batch of {rows} rows{where} is not divisible by "
                f"num_minibatches={num_minibatches}"
            )
        key, shuffle_key = jax.random.split(state.key)
        bad = stats["n_bad"] > 0

        def epoch(carry, index):
            params, opt_state, stopped = carry
            mbs = minibatches(prepared, shuffle_key, index)
            new, metrics = jax.lax.scan(grad_step, (params, opt_state), mbs)
            metrics = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
            ran = ~stopped
            if config.target_kl is not None:  # epochs after the stop change nothing
                params, opt_state = keep_if(stopped, (params, opt_state), new)
                stopped = stopped | (epoch_kl(params, mbs) > config.target_kl)
            else:
                params, opt_state = new
            return (params, opt_state, stopped), (metrics, ran)

        carry = (state.params, state.opt_state, jnp.zeros((), bool))
        (params, opt_state, _), (metrics, ran) = jax.lax.scan(
            epoch, carry, jnp.arange(config.num_epochs)
        )
        # non-finite rewards: the whole update is skipped
        params, opt_state = keep_if(bad, (state.params, state.opt_state), (params, opt_state))
        weights = ran.astype(jnp.float32)  # the first epoch always runs
        metrics = {k: jnp.sum(v * weights) / jnp.sum(weights) for k, v in metrics.items()}
        metrics.update(
            mean_reward=stats["mean_reward"],
            advantage_mean=stats["advantage_mean"],
            skipped=bad.astype(jnp.float32),
        )
        return PPOState(params, opt_state, state.step + 1, key), metrics

    return base.Algorithm(init, update)
