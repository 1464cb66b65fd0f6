"""Masked aggregation of per-token values into a scalar loss, under one named option.

The modes (verl's spellings `seq-mean-token-mean` etc. are accepted as aliases):

* `"token-mean"`: `sum_{i,t} m x / sum_{i,t} m`. Every token weighs the same (DAPO).
* `"sequence-mean-token-mean"`: `mean_i (sum_t m x / sum_t m)` over sequences with at
  least one valid token. Every sequence weighs the same (the GRPO paper).
* `"sequence-mean-token-sum"`: `mean_i sum_t m x` over all `B` rows.
* `"sequence-mean-token-sum-norm"`: `sum_{i,t} m x / (B * norm)` with a constant `norm`
  (default `T`), so neither length nor batch composition changes a token's weight
  (Dr.GRPO, Liu et al. 2025, arXiv 2503.20783).

`aggregate_parts` returns the `(total, count)` pair whose ratio is the aggregate. Sums of
parts are exact across micro-batches and devices: accumulate `total` and `count`
separately (or pass `axis_name` to `aggregate`) and divide once, which is what keeps
gradient accumulation identical to one large batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlgen import _checks

MODES = (
    "token-mean",
    "sequence-mean-token-mean",
    "sequence-mean-token-sum",
    "sequence-mean-token-sum-norm",
)
_ALIASES = {m.replace("sequence-", "seq-"): m for m in MODES if m.startswith("sequence-")}


def canonical_mode(mode: str) -> str:
    """Returns the canonical name of an aggregation mode, or raises ValueError."""
    if isinstance(mode, str) and mode in _ALIASES:
        return _ALIASES[mode]
    return _checks.check_choice(mode, MODES + tuple(_ALIASES), "mode")


def aggregate_parts(values, mask=None, mode="token-mean", *, norm=None):
    """The `(total, count)` pair of a masked aggregation; `aggregate = total / count`.

    Args:
      values: `[B, T]` floating per-token values (e.g. per-token losses).
      mask: optional `[B, T]` 0/1 mask; masked entries contribute nothing (even NaN).
      mode: one of `MODES` (see module doc).
      norm: the constant divisor of `"sequence-mean-token-sum-norm"` (default `T`);
        must be None for the other modes.

    Returns:
      `(total, count)` float32 scalars. For token-mean, `count` is the number of valid
      tokens; for sequence-mean-token-mean, the number of non-empty rows; for the two
      sum modes, `B`.

    Example:
      >>> x = jnp.array([[1.0, 3.0], [5.0, 0.0]]); m = jnp.array([[1, 1], [1, 0]])
      >>> aggregate_parts(x, m, "token-mean")
      (Array(9., dtype=float32), Array(3., dtype=float32))
    """
    mode = canonical_mode(mode)
    values = _checks.as_array(values, "values")
    _checks.check_rank(values, 2, "values", "([B, T] per-token values)")
    _checks.check_float(values, "values")
    m = _checks.as_mask(mask, values.shape, "mask", "values")
    if norm is not None and mode != "sequence-mean-token-sum-norm":
        raise ValueError(
            f"`norm` is only used by mode 'sequence-mean-token-sum-norm', got mode {mode!r}"
        )
    x = jnp.where(m > 0, values.astype(jnp.promote_types(values.dtype, jnp.float32)), 0.0) * m
    batch, horizon = values.shape
    rows = jnp.asarray(batch, x.dtype)
    if mode == "token-mean":
        return jnp.sum(x), jnp.sum(m)
    row_sum = jnp.sum(x, axis=1)
    if mode == "sequence-mean-token-mean":
        row_count = jnp.sum(m, axis=1)
        row_mean = jnp.where(row_count > 0, row_sum / jnp.maximum(row_count, 1.0), 0.0)
        return jnp.sum(row_mean), jnp.sum(row_count > 0).astype(x.dtype)
    if mode == "sequence-mean-token-sum":
        return jnp.sum(row_sum), rows
    norm = horizon if norm is None else norm
    _checks.check_range(norm, "norm", 0.0, low_open=True)
    return jnp.sum(row_sum) / norm, rows


def aggregate(values, mask=None, mode="token-mean", *, norm=None, axis_name=None):
    """Reduces per-token values to a scalar with the named mode (see module doc).

    Args:
      values: `[B, T]` floating per-token values.
      mask: optional `[B, T]` 0/1 mask.
      mode: "token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum" or
        "sequence-mean-token-sum-norm" (or the `seq-` aliases).
      norm: constant divisor for "sequence-mean-token-sum-norm" (default `T`).
      axis_name: optional mapped axis; totals and counts are `psum`-ed over it, so the
        result equals the single-device aggregate of the whole batch.

    Returns:
      Float32 scalar; 0 when nothing is selected.

    Example:
      >>> x = jnp.array([[1.0, 3.0], [5.0, 0.0]]); m = jnp.array([[1, 1], [1, 0]])
      >>> aggregate(x, m, "token-mean"), aggregate(x, m, "sequence-mean-token-mean")
      (Array(3., dtype=float32), Array(3.5, dtype=float32))

    Reference: Yu et al. 2025, DAPO (arXiv 2503.14476); Liu et al. 2025, Dr.GRPO.
    """
    total, count = aggregate_parts(values, mask, mode, norm=norm)
    if axis_name is not None:
        total, count = jax.lax.psum((total, count), axis_name)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
