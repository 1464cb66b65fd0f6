"""DPO and its relatives (cDPO, robust DPO, hinge, IPO, SimPO) as an init/update pair.

DPO trains from sequences: the batch holds the chosen and rejected responses, the
policy's sequence log-probs are computed from the parameters (so the gradient reaches
them), and the reference log-probs come from a frozen copy of the initial parameters or
from the batch (`reference`, `rlgen.algorithms.reference`).

Sequence batch keys: `chosen_observations`, `chosen_actions`, `rejected_observations`,
`rejected_actions` (the policy's `log_prob(actions)` is `[B, T]` per token or `[B]`),
optional `chosen_mask`, `rejected_mask` (`[B, T]` response tokens), and, with
`reference="batch"`, `ref_chosen_log_probs`, `ref_rejected_log_probs` (`[B]`).

Log-prob batch keys (`dpo_loss` only: evaluation, or users who compute log-probs
themselves): `chosen_log_probs`, `rejected_log_probs` (`[B]`), the two `ref_*` keys unless
reference-free, and `chosen_lengths`, `rejected_lengths` for the length-normalised types.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlgen import _checks, ops
from rlgen.algorithms import base, policy, reference

_REFS = ("ref_chosen_log_probs", "ref_rejected_log_probs")
_SEQ_REQUIRED = (
    "chosen_observations",
    "chosen_actions",
    "rejected_observations",
    "rejected_actions",
)
_SEQ_OPTIONAL = ("chosen_mask", "rejected_mask", *_REFS)
_LP_REQUIRED = ("chosen_log_probs", "rejected_log_probs")
_LP_OPTIONAL = (*_REFS, "chosen_lengths", "rejected_lengths")
#: The metrics `dpo`, `dpo_loss` and `dpo_sequence_loss` return (0-d float32 arrays).
METRICS = (
    "loss",
    "dpo_loss",
    "reward_accuracy",
    "chosen_reward",
    "rejected_reward",
    "reward_margin",
)


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """DPO settings: Artifex's fields and defaults (docs/compatibility.md), plus extras.

    Artifex's fields: `beta=0.1` (temperature of the implicit reward), `label_smoothing=0.0`
    (cDPO / robust DPO flip rate), `reference_free=False` (True selects SimPO: length-
    normalised log-probs, target margin `simpo_gamma`, no reference; Meng et al. 2024).

    Extras: `loss_type` (one of `rlgen.ops.PREFERENCE_LOSS_TYPES`, whose entries say
    what each needs; None: the first whose use of a reference matches `reference_free`,
    i.e. "sigmoid", or "simpo" when reference-free), `simpo_gamma=0.5`,
    `length_normalize=False` (average instead of summed token log-probs for the types
    that are not length-normalised already),
    `reference` ("initial": a frozen copy of the params at `init`; "batch": the
    `ref_*_log_probs` keys), `max_grad_norm` (None: no clipping), `axis_name`.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    reference_free: bool = False
    loss_type: str | None = _checks.option(None, ops.PREFERENCE_LOSS_TYPES)
    simpo_gamma: float = 0.5
    length_normalize: bool = False
    reference: str = _checks.option("initial", reference.SOURCES)
    max_grad_norm: float | None = None
    axis_name: Any = None

    def __post_init__(self):
        _checks.check_range(self.beta, "beta", 0.0, low_open=True)
        _checks.check_bool(self.reference_free, "reference_free")
        _checks.check_bool(self.length_normalize, "length_normalize")
        if self.loss_type is None:  # the first type that matches `reference_free`
            default = next(
                name
                for name, t in ops.PREFERENCE_LOSS_TYPES.items()
                if t.uses_reference != self.reference_free
            )
            object.__setattr__(self, "loss_type", default)
        spec = ops.check_loss_settings(self.loss_type, self.label_smoothing)
        if spec.uses_reference == self.reference_free:
            needs = "needs a reference" if spec.uses_reference else "is reference-free"
            raise ValueError(
                f"loss_type {self.loss_type!r} {needs}: set reference_free="
                f"{not spec.uses_reference} (reference_free=True selects SimPO)"
            )
        _checks.check_range(self.simpo_gamma, "simpo_gamma")
        if self.length_normalize and spec.length_normalized:
            raise ValueError(
                f"loss_type {self.loss_type!r} is always length-normalised; leave "
                "`length_normalize` False"
            )
        _checks.check_options(self)
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)

    @property
    def uses_reference(self) -> bool:
        """Whether the loss type compares the policy with a reference."""
        return ops.PREFERENCE_LOSS_TYPES[self.loss_type].uses_reference


class DPOState(NamedTuple):
    """DPO's algorithm state; `ref_params` is `()` unless `reference="initial"`."""

    params: Any
    opt_state: Any
    step: jax.Array
    ref_params: Any


def dpo_loss(batch, config: DPOConfig = DPOConfig()):
    """DPO-family loss from precomputed sequence log-probs (no parameters involved).

    Math: see `rlgen.ops.preference_loss`; the loss is the mean over pairs.

    Args:
      batch: dict with the log-prob keys of the module doc.
      config: a `DPOConfig`.

    Returns:
      `(loss, metrics)` with metrics `loss, dpo_loss, reward_accuracy, chosen_reward,
      rejected_reward, reward_margin`.

    Example:
      >>> lp = jnp.array([-3.0, -4.0])
      >>> batch = {"chosen_log_probs": lp, "rejected_log_probs": lp,
      ...          "ref_chosen_log_probs": lp, "ref_rejected_log_probs": lp}
      >>> loss, m = dpo_loss(batch)
      >>> round(float(loss), 4)
      0.6931
    """
    base.check_batch(batch, _LP_REQUIRED, _LP_OPTIONAL, "DPO (log-prob form)")
    refs = _references(batch, config)
    out = ops.preference_loss(
        batch["chosen_log_probs"],
        batch["rejected_log_probs"],
        *refs,
        **_loss_kwargs(config),
        chosen_lengths=batch.get("chosen_lengths"),
        rejected_lengths=batch.get("rejected_lengths"),
    )
    return _reduce(out, config.axis_name)


def _loss_kwargs(config):
    return {
        "loss_type": config.loss_type,
        "beta": config.beta,
        "label_smoothing": config.label_smoothing,
        "simpo_gamma": config.simpo_gamma,
    }


def _references(batch, config, source="batch", ref_params=(), compute=None):
    """The pair of reference sequence log-probs (`rlgen.algorithms.reference`), or
    ``(None, None)`` for a reference-free loss type (which refuses reference keys)."""
    if config.uses_reference:
        return reference.values(
            batch, _REFS, source, ref_params, compute, required=True, owner="DPOConfig"
        )
    present = [k for k in _REFS if k in batch]
    if present:
        raise ValueError(
            f"loss_type {config.loss_type!r} (reference_free=True) takes no reference; "
            f"drop {present}"
        )
    return (None, None)


def _reduce(out: ops.PreferenceLoss, axis_name):
    """Mean over pairs (global under `axis_name`), as the metrics of `METRICS`."""
    mean = lambda x: ops.pmean(jnp.mean(x), axis_name)  # noqa: E731
    margin = out.chosen_rewards - out.rejected_rewards
    loss = mean(out.losses)
    metrics = {
        "loss": loss,
        "dpo_loss": loss,
        "reward_accuracy": mean((margin > 0).astype(jnp.float32)),
        "chosen_reward": mean(out.chosen_rewards),
        "rejected_reward": mean(out.rejected_rewards),
        "reward_margin": mean(margin),
    }
    return loss, metrics


def _sequence_log_probs(policy_fn, params, obs, actions, mask, name):
    log_probs, _ = policy.evaluate_policy(policy_fn, params, obs, actions)
    return _masked_sequence(log_probs, mask, name)


def _masked_sequence(log_probs, mask, name):
    """Per-token log-probs `[B, T]` (or `[B]`) -> (masked sums `[B]`, lengths `[B]`)."""
    if log_probs.ndim == 1:
        log_probs = log_probs[:, None]
    if mask is not None and jnp.ndim(mask) == 1:
        mask = jnp.asarray(mask)[:, None]
    m = _checks.as_mask(mask, log_probs.shape, name, "the policy's log_prob(actions)")
    return ops.masked_sum(log_probs, m), jnp.sum(m, axis=-1)


def _pair_log_probs(policy_fn, params, batch):
    """`{side: (sequence log-probs [B], lengths [B])}` for chosen and rejected.

    When both sides have the same shapes, the policy runs once on the two stacked along
    the batch axis (one forward pass of 2B rows rather than two of B: fewer, larger
    kernels), as the pairs of every row are independent.
    """
    sides = ("chosen", "rejected")
    obs = [batch[f"{s}_observations"] for s in sides]
    actions = [batch[f"{s}_actions"] for s in sides]
    shapes = [jax.tree.map(jnp.shape, (o, a)) for o, a in zip(obs, actions, strict=True)]
    if shapes[0] != shapes[1]:
        return {
            s: _sequence_log_probs(policy_fn, params, o, a, batch.get(f"{s}_mask"), f"{s}_mask")
            for s, o, a in zip(sides, obs, actions, strict=True)
        }
    stack = lambda *xs: jnp.concatenate(xs, axis=0)  # noqa: E731
    log_probs, _ = policy.evaluate_policy(
        policy_fn, params, jax.tree.map(stack, *obs), jax.tree.map(stack, *actions)
    )
    rows = log_probs.shape[0] // 2
    return {
        side: _masked_sequence(
            log_probs[i * rows : (i + 1) * rows], batch.get(f"{side}_mask"), f"{side}_mask"
        )
        for i, side in enumerate(sides)
    }


def dpo_sequence_loss(
    params, batch, policy_fn, config: DPOConfig = DPOConfig(), *, ref_params=None
):
    """DPO-family loss from chosen/rejected sequences: gradients reach `params`.

    Sequence log-probs are masked sums of the policy's per-token log-probs (masked means
    with `length_normalize`; IPO and SimPO divide by the lengths inside the loss).

    Args:
      params: policy parameters (differentiated).
      batch: dict with the sequence keys of the module doc.
      policy_fn: `policy_fn(params, observations) -> distrax distribution`.
      config: a `DPOConfig`.
      ref_params: frozen reference params, needed with `reference="initial"`.

    Returns:
      `(loss, metrics)` as `dpo_loss`.

    Example:
      >>> import distrax
      >>> policy = lambda p, obs: distrax.Categorical(logits=p[obs])
      >>> batch = {"chosen_observations": jnp.array([0]), "chosen_actions": jnp.array([1]),
      ...          "rejected_observations": jnp.array([0]),
      ...          "rejected_actions": jnp.array([0])}
      >>> p = jnp.zeros((1, 2))
      >>> loss, m = dpo_sequence_loss(p, batch, policy, ref_params=p)
      >>> round(float(m["reward_margin"]), 4)
      0.0
    """
    if any(k in batch for k in _LP_REQUIRED):
        raise ValueError(
            "DPO training needs sequences, not precomputed log-probs (no gradient can reach "
            f"the model through them): pass the keys {list(_SEQ_REQUIRED)} (optional "
            f"{list(_SEQ_OPTIONAL)}); use `dpo_loss` to evaluate precomputed log-probs"
        )
    base.check_batch(batch, _SEQ_REQUIRED, _SEQ_OPTIONAL, "DPO")
    if config.uses_reference and config.reference == "initial" and ref_params is None:
        raise ValueError("DPOConfig(reference='initial') needs `ref_params`")

    seq = _pair_log_probs(policy_fn, params, batch)
    refs = _references(
        batch,
        config,
        config.reference,
        ref_params,
        lambda p: tuple(s[0] for s in _pair_log_probs(policy_fn, p, batch).values()),
    )
    (chosen, len_c), (rejected, len_r) = seq["chosen"], seq["rejected"]
    lengths = {}
    if ops.PREFERENCE_LOSS_TYPES[config.loss_type].length_normalized:
        lengths = {"chosen_lengths": len_c, "rejected_lengths": len_r}
    elif config.length_normalize:
        chosen, rejected = chosen / jnp.maximum(len_c, 1.0), rejected / jnp.maximum(len_r, 1.0)
        if refs[0] is not None:
            refs = (refs[0] / jnp.maximum(len_c, 1.0), refs[1] / jnp.maximum(len_r, 1.0))
    out = ops.preference_loss(chosen, rejected, *refs, **_loss_kwargs(config), **lengths)
    return _reduce(out, config.axis_name)


def dpo(policy_fn, optimizer: optax.GradientTransformation, config: DPOConfig = DPOConfig()):
    """DPO (Rafailov et al. 2023, arXiv 2305.18290) as an `Algorithm(init, update)` pair.

    `init(params)` keeps a frozen copy of `params` as the reference (with
    `reference="initial"` and a reference-based loss). `update(state, batch)` takes one
    optimiser step on `dpo_sequence_loss`.

    Example:
      >>> import distrax, optax
      >>> policy = lambda p, obs: distrax.Categorical(logits=p[obs])
      >>> algo = dpo(policy, optax.sgd(1.0))
      >>> state = algo.init(jnp.zeros((1, 2)))
      >>> batch = {"chosen_observations": jnp.array([0]), "chosen_actions": jnp.array([1]),
      ...          "rejected_observations": jnp.array([0]),
      ...          "rejected_actions": jnp.array([0])}
      >>> state, m = jax.jit(algo.update)(state, batch)
      >>> bool(state.params[0, 1] > state.params[0, 0])
      True
    """
    if not isinstance(config, DPOConfig):
        raise TypeError(f"`config` must be a DPOConfig, got {type(config).__name__}")
    tx = base.with_grad_clipping(optimizer, config.max_grad_norm)
    keep_reference = config.uses_reference and config.reference == "initial"

    def init(params):
        ref = reference.init(params, config.reference, needed=config.uses_reference)
        return DPOState(params, tx.init(params), jnp.zeros((), jnp.int32), ref)

    # The loss is differentiated shard-locally; gradients and metrics are averaged over
    # `axis_name` afterwards (shards hold equal numbers of pairs).
    local = dataclasses.replace(config, axis_name=None)

    def update(state: DPOState, batch):
        ref = state.ref_params if keep_reference else None
        grads, metrics = jax.grad(
            lambda p: dpo_sequence_loss(p, batch, policy_fn, local, ref_params=ref),
            has_aux=True,
        )(ops.shard_local(state.params, config.axis_name))
        grads, metrics = jax.tree.map(lambda x: ops.pmean(x, config.axis_name), (grads, metrics))
        params, opt_state = base.apply_gradients(tx, state.params, state.opt_state, grads)
        return DPOState(params, opt_state, state.step + 1, state.ref_params), metrics

    return base.Algorithm(init, update)
