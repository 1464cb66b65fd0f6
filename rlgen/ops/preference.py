"""Preference-optimisation losses from sequence log-probs of chosen and rejected responses.

All take per-sequence log-probs `[B]` (sums of per-token log-probs over each response;
see `rlgen.ops.masked_sum`) and return per-pair losses with the implicit rewards, no
reduction. Loss types:

* `"sigmoid"`: DPO with conservative label smoothing (cDPO).
* `"robust"`: robust DPO, unbiased under label flips with rate `label_smoothing`.
* `"hinge"`: the SLiC hinge loss on the DPO margin.
* `"ipo"`: IPO's squared loss on length-normalised log-ratios.
* `"simpo"`: SimPO, reference-free, length-normalised, with target margin `simpo_gamma`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlgen import _checks

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "simpo")
_USES_SMOOTHING = ("sigmoid", "robust", "simpo")
_LENGTH_NORMALISED = ("ipo", "simpo")


class PreferenceLoss(NamedTuple):
    """Per-pair outputs of `preference_loss`, each `[B]`."""

    losses: jax.Array
    chosen_rewards: jax.Array  # implicit reward of the chosen response
    rejected_rewards: jax.Array  # implicit reward of the rejected response


def _sequence_values(x, name, shape):
    x = _checks.as_array(x, name)
    _checks.check_rank(x, 1, name, "(one value per pair, [B])")
    _checks.check_float(x, name)
    if shape is not None:
        _checks.check_shape(x, shape, name, "chosen_log_probs")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _lengths(x, name, shape):
    if x is None:
        return None
    x = _checks.as_array(x, name)
    _checks.check_rank(x, 1, name, "(one length per pair, [B])")
    _checks.check_shape(x, shape, name, "chosen_log_probs")
    return jnp.maximum(x.astype(jnp.float32), 1.0)


def preference_loss(
    chosen_log_probs,
    rejected_log_probs,
    ref_chosen_log_probs=None,
    ref_rejected_log_probs=None,
    *,
    loss_type="sigmoid",
    beta=0.1,
    label_smoothing=0.0,
    simpo_gamma=0.5,
    chosen_lengths=None,
    rejected_lengths=None,
):
    """Per-pair preference losses and implicit rewards (DPO family and SimPO).

    Math, with `c = chosen_log_probs`, `r = rejected_log_probs`, references `c_ref`,
    `r_ref`, smoothing `e` and margin `h = (c - c_ref) - (r - r_ref)`:
      * sigmoid: `-(1 - e) log s(beta h) - e log s(-beta h)` (DPO, Rafailov et al. 2023;
        cDPO for `e > 0`). Equals `log 2` when the policy equals the reference.
      * robust: `(-(1 - e) log s(beta h) + e log s(-beta h)) / (1 - 2e)`, `e < 0.5`
        (Chowdhury et al. 2024, Provably Robust DPO, arXiv 2403.00409).
      * hinge: `max(0, 1 - beta h)` (SLiC, Zhao et al. 2023, arXiv 2305.10425).
      * ipo: `(h_n - 1 / (2 beta))^2` with `h_n` the margin of length-normalised
        log-probs (`c / |c|` etc.) (Azar et al. 2023, arXiv 2310.12036).
      * simpo: `-(1 - e) log s(u) - e log s(-u)`,
        `u = beta (c / |c| - r / |r|) - simpo_gamma`; no reference
        (Meng et al. 2024, SimPO, arXiv 2405.14734).
    Implicit rewards are `beta (c - c_ref)` and `beta (r - r_ref)`, with the
    length-normalised log-probs for ipo and `beta c / |c|`, `beta r / |r|` for simpo.

    Args:
      chosen_log_probs, rejected_log_probs: `[B]` policy sequence log-probs.
      ref_chosen_log_probs, ref_rejected_log_probs: `[B]` reference sequence log-probs;
        required except for "simpo" (and not accepted by it).
      loss_type: one of `LOSS_TYPES`.
      beta: positive temperature.
      label_smoothing: `e` in [0, 0.5] (sigmoid, simpo) or [0, 0.5) (robust); must be 0
        for hinge and ipo, which do not use it.
      simpo_gamma: SimPO target reward margin (used by "simpo" only).
      chosen_lengths, rejected_lengths: `[B]` response lengths in tokens; required by
        the length-normalised types "ipo" and "simpo", not accepted by the others. A
        length below 1 (an empty response, whose summed log-prob is 0) counts as 1, so
        its normalised log-prob is 0 as `masked_mean` gives.

    Returns:
      `PreferenceLoss(losses, chosen_rewards, rejected_rewards)`, each `[B]`; the reward
      margin is `chosen_rewards - rejected_rewards`.

    Example:
      >>> lp = jnp.array([-3.0]); out = preference_loss(lp, lp, lp, lp)
      >>> out.losses
      Array([0.6931472], dtype=float32)
    """
    _checks.check_choice(loss_type, LOSS_TYPES, "loss_type")
    _checks.check_range(beta, "beta", 0.0, low_open=True)
    _checks.check_range(
        label_smoothing, "label_smoothing", 0.0, 0.5, high_open=loss_type == "robust"
    )
    c = _sequence_values(chosen_log_probs, "chosen_log_probs", None)
    r = _sequence_values(rejected_log_probs, "rejected_log_probs", c.shape)
    if loss_type not in _USES_SMOOTHING and _checks.concrete_value(label_smoothing) != 0.0:
        raise ValueError(f"`label_smoothing` is not used by loss_type {loss_type!r}; leave it 0")

    if loss_type == "simpo":
        if ref_chosen_log_probs is not None or ref_rejected_log_probs is not None:
            raise ValueError(
                "loss_type 'simpo' is reference-free; do not pass `ref_chosen_log_probs` "
                "or `ref_rejected_log_probs`"
            )
        c_ref = r_ref = jnp.zeros_like(c)
    else:
        if ref_chosen_log_probs is None or ref_rejected_log_probs is None:
            raise ValueError(
                f"loss_type {loss_type!r} needs `ref_chosen_log_probs` and "
                f"`ref_rejected_log_probs` ([B] reference sequence log-probs); use "
                f"loss_type='simpo' for a reference-free loss"
            )
        c_ref = jax.lax.stop_gradient(
            _sequence_values(ref_chosen_log_probs, "ref_chosen_log_probs", c.shape)
        )
        r_ref = jax.lax.stop_gradient(
            _sequence_values(ref_rejected_log_probs, "ref_rejected_log_probs", c.shape)
        )

    len_c = _lengths(chosen_lengths, "chosen_lengths", c.shape)
    len_r = _lengths(rejected_lengths, "rejected_lengths", c.shape)
    if loss_type in _LENGTH_NORMALISED:
        if len_c is None or len_r is None:
            raise ValueError(
                f"loss_type {loss_type!r} is length-normalised and needs `chosen_lengths` "
                f"and `rejected_lengths` ([B] token counts of each response)"
            )
        c, c_ref, r, r_ref = c / len_c, c_ref / len_c, r / len_r, r_ref / len_r
    elif len_c is not None or len_r is not None:
        raise ValueError(
            f"`chosen_lengths`/`rejected_lengths` are only used by 'ipo' and 'simpo', "
            f"not by loss_type {loss_type!r}"
        )

    chosen_rewards = beta * (c - c_ref)
    rejected_rewards = beta * (r - r_ref)
    margin = (c - c_ref) - (r - r_ref)
    e = label_smoothing
    log_sig = jax.nn.log_sigmoid
    if loss_type == "sigmoid":
        losses = -(1.0 - e) * log_sig(beta * margin) - e * log_sig(-beta * margin)
    elif loss_type == "robust":
        losses = (-(1.0 - e) * log_sig(beta * margin) + e * log_sig(-beta * margin)) / (
            1.0 - 2.0 * e
        )
    elif loss_type == "hinge":
        losses = jax.nn.relu(1.0 - beta * margin)
    elif loss_type == "ipo":
        losses = jnp.square(margin - 1.0 / (2.0 * beta))
    else:  # simpo
        u = beta * margin - simpo_gamma
        losses = -(1.0 - e) * log_sig(u) - e * log_sig(-u)
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)
