"""Preference-optimisation losses from sequence log-probs of chosen and rejected responses.

All take per-sequence log-probs `[B]` (sums of per-token log-probs over each response;
see `rlgen.ops.masked_sum`) and return per-pair losses with the implicit rewards, no
reduction.

The loss types are defined once, in the registry `LOSS_TYPES` (name ->
`PreferenceLossType`): each entry holds its per-pair loss, its formula and paper, whether
it needs reference log-probs, whether it length-normalises and which label smoothing it
accepts. `preference_loss` dispatches through it, `check_loss_settings` validates a
`(loss_type, label_smoothing)` pair against it, and the docstring of `preference_loss`
lists its entries (sigmoid/cDPO, robust DPO, SLiC hinge, IPO, SimPO), so that a new loss
type is one new entry.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlgen import _checks


@dataclasses.dataclass(frozen=True)
class PreferenceLossType:
    """One preference loss type: its per-pair loss and what it needs.

    Attributes:
      name: the `loss_type` string.
      loss: `loss(chosen, rejected, beta, label_smoothing, simpo_gamma)`, the `[B]`
        per-pair losses from the implicit log-ratios `chosen = c - c_ref` and
        `rejected = r - r_ref` (`[B]` each; of length-normalised log-probs when
        `length_normalized`, with `c_ref = r_ref = 0` when not `uses_reference`).
      formula: the loss in terms of the margin `h = chosen - rejected` and the label
        smoothing `e`, for the documentation.
      paper: where the loss comes from.
      uses_reference: whether reference log-probs are required (otherwise they are
        refused: the loss is reference-free).
      length_normalized: whether log-probs are divided by the response lengths (which
        are then required; otherwise they are refused).
      max_label_smoothing: the largest label smoothing `e` accepted, 0 for a loss that
        does not use it (its `e` must then be 0).
      max_label_smoothing_excluded: whether `e` must stay strictly below
        `max_label_smoothing`.

    Example:
      >>> LOSS_TYPES["robust"].uses_label_smoothing, LOSS_TYPES["ipo"].length_normalized
      (True, True)

    Reference: the papers of the entries (each entry's `paper`).
    """

    name: str
    loss: Callable[..., jax.Array]
    formula: str
    paper: str
    uses_reference: bool = True
    length_normalized: bool = False
    max_label_smoothing: float = 0.0
    max_label_smoothing_excluded: bool = False

    @property
    def uses_label_smoothing(self) -> bool:
        """Whether the loss takes a label smoothing `e` (otherwise `e` must be 0)."""
        return self.max_label_smoothing > 0


def _smoothed_logistic(u, e):
    """`-(1 - e) log s(u) - e log s(-u)`: cross-entropy of the label `(1 - e, e)`."""
    return -(1.0 - e) * jax.nn.log_sigmoid(u) - e * jax.nn.log_sigmoid(-u)


def _sigmoid_loss(chosen, rejected, beta, e, simpo_gamma):
    return _smoothed_logistic(beta * (chosen - rejected), e)


def _robust_loss(chosen, rejected, beta, e, simpo_gamma):
    margin = chosen - rejected
    log_sig = jax.nn.log_sigmoid
    return (-(1.0 - e) * log_sig(beta * margin) + e * log_sig(-beta * margin)) / (1.0 - 2.0 * e)


def _hinge_loss(chosen, rejected, beta, e, simpo_gamma):
    return jax.nn.relu(1.0 - beta * (chosen - rejected))


def _ipo_loss(chosen, rejected, beta, e, simpo_gamma):
    return jnp.square((chosen - rejected) - 1.0 / (2.0 * beta))


def _simpo_loss(chosen, rejected, beta, e, simpo_gamma):
    return _smoothed_logistic(beta * (chosen - rejected) - simpo_gamma, e)


def _registry(*types: PreferenceLossType) -> Mapping[str, PreferenceLossType]:
    return MappingProxyType({t.name: t for t in types})


#: The preference loss types, in order; iterating yields their names.
LOSS_TYPES: Mapping[str, PreferenceLossType] = _registry(
    PreferenceLossType(
        "sigmoid",
        _sigmoid_loss,
        formula="`-(1 - e) log s(beta h) - e log s(-beta h)` (`s` the logistic sigmoid); "
        "`log 2` when the policy equals the reference",
        paper="DPO, Rafailov et al. 2023 (arXiv 2305.18290); cDPO for `e > 0`",
        max_label_smoothing=0.5,
    ),
    PreferenceLossType(
        "robust",
        _robust_loss,
        formula="`(-(1 - e) log s(beta h) + e log s(-beta h)) / (1 - 2e)`, unbiased under "
        "label flips with rate `e`",
        paper="Chowdhury et al. 2024, Provably Robust DPO (arXiv 2403.00409)",
        max_label_smoothing=0.5,
        max_label_smoothing_excluded=True,
    ),
    PreferenceLossType(
        "hinge",
        _hinge_loss,
        formula="`max(0, 1 - beta h)`",
        paper="SLiC, Zhao et al. 2023 (arXiv 2305.10425)",
    ),
    PreferenceLossType(
        "ipo",
        _ipo_loss,
        formula="`(h - 1 / (2 beta))^2`",
        paper="IPO, Azar et al. 2023 (arXiv 2310.12036)",
        length_normalized=True,
    ),
    PreferenceLossType(
        "simpo",
        _simpo_loss,
        formula="`-(1 - e) log s(u) - e log s(-u)` with `u = beta h - simpo_gamma`",
        paper="SimPO, Meng et al. 2024 (arXiv 2405.14734)",
        uses_reference=False,
        length_normalized=True,
        max_label_smoothing=0.5,
    ),
)


def _label_smoothing_range(t: PreferenceLossType) -> str:
    if not t.uses_label_smoothing:
        return "no `e`"
    close = ")" if t.max_label_smoothing_excluded else "]"
    return f"`e` in [0, {t.max_label_smoothing:g}{close}"


def _names(flag: Callable[[PreferenceLossType], bool]) -> str:
    return ", ".join(repr(t.name) for t in LOSS_TYPES.values() if flag(t))


def check_loss_settings(loss_type, label_smoothing=0.0) -> PreferenceLossType:
    """Validates a preference loss type and its label smoothing; returns its registry entry.

    `loss_type` must name an entry of `LOSS_TYPES`. `label_smoothing` must be a scalar in
    the entry's range: `[0, max_label_smoothing]` (`[0, max_label_smoothing)` when
    `max_label_smoothing_excluded`), and exactly 0 for a loss that does not use it. A
    traced value (under `jit`/`vmap`) is accepted where the loss uses it, and refused
    where it must be 0, since it cannot be checked.

    Math: `e` is the probability that a preference label is flipped (cDPO, robust DPO);
    `e = 0.5` makes the smoothed logistic loss independent of the label.

    Args:
      loss_type: a name in `LOSS_TYPES`.
      label_smoothing: the label smoothing `e`.

    Returns:
      The `PreferenceLossType` of `loss_type`, whose `uses_reference`,
      `uses_label_smoothing` and `length_normalized` say which arguments
      `preference_loss` needs.

    Raises:
      ValueError: naming `loss_type` (unknown, with the known names) or
        `label_smoothing` (the accepted range and the value received).

    Example:
      >>> check_loss_settings("simpo", 0.1).uses_reference
      False
      >>> check_loss_settings("robust", 0.5)
      Traceback (most recent call last):
      ...
      ValueError: `label_smoothing` must lie in [0, 0.5), got 0.5

    Reference: Mitchell 2023, A note on DPO with noisy preferences (cDPO); Chowdhury et
    al. 2024, Provably Robust DPO (arXiv 2403.00409).
    """
    _checks.check_choice(loss_type, LOSS_TYPES, "loss_type")
    spec = LOSS_TYPES[loss_type]
    if spec.uses_label_smoothing:
        _checks.check_range(
            label_smoothing,
            "label_smoothing",
            0.0,
            spec.max_label_smoothing,
            high_open=spec.max_label_smoothing_excluded,
        )
        return spec
    _checks.check_scalar(label_smoothing, "label_smoothing")
    value = _checks.concrete_value(label_smoothing)
    if value != 0.0:
        got = "a traced value" if value is None else f"{value:g}"
        raise ValueError(
            f"`label_smoothing` is not used by loss_type {loss_type!r}; leave it 0, got {got}"
        )
    return spec


class PreferenceLoss(NamedTuple):
    """Per-pair outputs of `preference_loss`, each `[B]`."""

    losses: jax.Array
    chosen_rewards: jax.Array  # implicit reward of the chosen response
    rejected_rewards: jax.Array  # implicit reward of the rejected response


def _sequence_values(x, name, shape):
    like = {} if shape is None else {"shape": shape, "like": "chosen_log_probs"}
    return _checks.float_array(
        x, name, rank=1, what="(one value per pair, [B])", upcast=True, **like
    )


def _lengths(x, name, shape):
    if x is None:
        return None
    x = _checks.real_array(
        x, name, rank=1, shape=shape, like="chosen_log_probs", what="(one length per pair, [B])"
    )
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
    `r_ref` (0 for a reference-free type), label smoothing `e` and margin
    `h = (c - c_ref) - (r - r_ref)`; a length-normalised type divides every log-prob by
    its response length first (`c / |c|`, `c_ref / |c|`, `r / |r|`, `r_ref / |r|`). The
    types of `LOSS_TYPES`:
    <loss types>
    Implicit rewards are `beta (c - c_ref)` and `beta (r - r_ref)` (length-normalised
    where the type is).

    Args:
      chosen_log_probs, rejected_log_probs: `[B]` policy sequence log-probs.
      ref_chosen_log_probs, ref_rejected_log_probs: `[B]` reference sequence log-probs;
        required by the types that use a reference, refused by the reference-free ones.
      loss_type: a name in `LOSS_TYPES`.
      beta: positive temperature.
      label_smoothing: `e`, in the range listed above for each type (see
        `check_loss_settings`); must be 0 for the types that do not use it.
      simpo_gamma: SimPO target reward margin (used by "simpo" only).
      chosen_lengths, rejected_lengths: `[B]` response lengths in tokens; required by
        the length-normalised types, refused by the others. A length below 1 (an empty
        response, whose summed log-prob is 0) counts as 1, so its normalised log-prob is
        0 as `masked_mean` gives.

    Returns:
      `PreferenceLoss(losses, chosen_rewards, rejected_rewards)`, each `[B]`; the reward
      margin is `chosen_rewards - rejected_rewards`.

    Example:
      >>> lp = jnp.array([-3.0]); out = preference_loss(lp, lp, lp, lp)
      >>> out.losses
      Array([0.6931472], dtype=float32)

    Reference: the paper of each loss type, listed above.
    """
    spec = check_loss_settings(loss_type, label_smoothing)
    _checks.check_range(beta, "beta", 0.0, low_open=True)
    _checks.check_range(simpo_gamma, "simpo_gamma")
    c = _sequence_values(chosen_log_probs, "chosen_log_probs", None)
    r = _sequence_values(rejected_log_probs, "rejected_log_probs", c.shape)

    if not spec.uses_reference:
        if ref_chosen_log_probs is not None or ref_rejected_log_probs is not None:
            raise ValueError(
                f"loss_type {loss_type!r} is reference-free; do not pass "
                "`ref_chosen_log_probs` or `ref_rejected_log_probs`"
            )
        c_ref = r_ref = jnp.zeros_like(c)
    else:
        if ref_chosen_log_probs is None or ref_rejected_log_probs is None:
            raise ValueError(
                f"loss_type {loss_type!r} needs `ref_chosen_log_probs` and "
                f"`ref_rejected_log_probs` ([B] reference sequence log-probs); the "
                f"reference-free loss types are {_names(lambda t: not t.uses_reference)}"
            )
        c_ref = jax.lax.stop_gradient(
            _sequence_values(ref_chosen_log_probs, "ref_chosen_log_probs", c.shape)
        )
        r_ref = jax.lax.stop_gradient(
            _sequence_values(ref_rejected_log_probs, "ref_rejected_log_probs", c.shape)
        )

    len_c = _lengths(chosen_lengths, "chosen_lengths", c.shape)
    len_r = _lengths(rejected_lengths, "rejected_lengths", c.shape)
    if spec.length_normalized:
        if len_c is None or len_r is None:
            raise ValueError(
                f"loss_type {loss_type!r} is length-normalised and needs `chosen_lengths` "
                f"and `rejected_lengths` ([B] token counts of each response)"
            )
        c, c_ref, r, r_ref = c / len_c, c_ref / len_c, r / len_r, r_ref / len_r
    elif len_c is not None or len_r is not None:
        raise ValueError(
            f"`chosen_lengths`/`rejected_lengths` are only used by the length-normalised "
            f"loss types {_names(lambda t: t.length_normalized)}, not by loss_type "
            f"{loss_type!r}"
        )

    chosen, rejected = c - c_ref, r - r_ref
    losses = spec.loss(chosen, rejected, beta, label_smoothing, simpo_gamma)
    return PreferenceLoss(losses, beta * chosen, beta * rejected)


def _loss_types_doc() -> str:
    lines = []
    for t in LOSS_TYPES.values():
        notes = [_label_smoothing_range(t)]
        if t.length_normalized:
            notes.append("length-normalised")
        if not t.uses_reference:
            notes.append("reference-free")
        text = f"* {t.name}: {t.formula} ({'; '.join(notes)}). {t.paper}."
        lines.append(textwrap.fill(text, 92, initial_indent=" " * 6, subsequent_indent=" " * 8))
    return "\n".join(lines) + "\n"


if preference_loss.__doc__:  # None under python -OO
    preference_loss.__doc__ = preference_loss.__doc__.replace(
        "    <loss types>\n", _loss_types_doc()
    )
