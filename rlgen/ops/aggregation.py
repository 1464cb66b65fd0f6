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
gradient accumulation identical to one large batch. `global_token_mean` is one shard's (or
micro-batch's) additive share of that ratio, with `global_count` its denominator.

`masked_sum` and `masked_mean` are the plain masked reductions along chosen axes (e.g.
sequence log-probs from per-token log-probs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlgen import _checks
from rlgen.ops.distributed import psum

MODES = (
    "token-mean",
    "sequence-mean-token-mean",
    "sequence-mean-token-sum",
    "sequence-mean-token-sum-norm",
)
_ALIASES = {m.replace("sequence-", "seq-"): m for m in MODES if m.startswith("sequence-")}


def canonical_mode(mode: str, name: str = "mode") -> str:
    """The canonical name of an aggregation mode (aliases resolved).

    Raises ValueError naming `name` (e.g. a config field) and listing `MODES` otherwise.

    Example:
      >>> canonical_mode("seq-mean-token-mean")
      'sequence-mean-token-mean'

    Reference: the loss aggregation modes of verl (Sheng et al. 2024, HybridFlow,
    arXiv 2409.19256).
    """
    if isinstance(mode, str) and mode in _ALIASES:
        return _ALIASES[mode]
    return _checks.check_choice(mode, MODES, name)


def _masked(x, m):
    """`x * m` with masked entries exactly 0 (even where `x` holds NaN or inf)."""
    return jnp.where(m > 0, x, 0.0) * m


def _ratio(total, count):
    """`total / count`, and 0 (with zero gradients) where `count` is 0."""
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def _values_and_mask(x, mask, name, **shape):
    x = _checks.float_array(x, name, upcast=True, **shape)
    return x, _checks.as_mask(mask, x.shape, "mask", name)


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

    Reference: Liu et al. 2025, Dr.GRPO (arXiv 2503.20783); Yu et al. 2025, DAPO
    (arXiv 2503.14476).
    """
    mode = canonical_mode(mode)
    values, m = _values_and_mask(values, mask, "values", rank=2, what="([B, T] per-token values)")
    if norm is not None and mode != "sequence-mean-token-sum-norm":
        raise ValueError(
            f"`norm` is only used by mode 'sequence-mean-token-sum-norm', got mode {mode!r}"
        )
    x = _masked(values, m)
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
    total, count = psum(aggregate_parts(values, mask, mode, norm=norm), axis_name)
    return _ratio(total, count)


def global_token_mean(values, mask=None, mode="token-mean", axis_name=None, *, norm=None,
                      count=None):  # fmt: skip
    """This shard's (or micro-batch's) additive share of the whole batch's `aggregate`.

    Math: with `(total_s, count_s) = aggregate_parts(values_s, mask_s, mode)` on shard `s`,
    the share is `total_s / N` where `N = sum_s count_s` (`psum` over `axis_name`), or
    `N = count` when given. Then `sum_s share_s = sum_s total_s / N = aggregate` of the
    whole batch, and since `N` is held constant (`stop_gradient`), the shares' gradients
    sum to the aggregate's gradient too. That is what keeps data parallelism (each device
    differentiates its share, then `psum`s the gradients) and gradient accumulation
    (micro-batches, each with the whole batch's `count`) exact. 0 when `N` is 0.

    Args:
      values: `[B, T]` floating per-token values of this shard or micro-batch.
      mask: optional `[B, T]` 0/1 mask.
      mode: an aggregation mode (see module doc; aliases accepted).
      axis_name: optional mapped axis over which the counts are summed.
      norm: the constant divisor of "sequence-mean-token-sum-norm" (default `T`).
      count: optional scalar denominator `N`, e.g. `global_count` of the whole batch's
        mask when `values` is one micro-batch of it (its own mask sees only part of the
        batch). Not differentiated.

    Returns:
      Float32 scalar: this part's share.

    Example:
      >>> x = jnp.array([[1.0, 3.0], [5.0, 0.0]]); m = jnp.array([[1, 1], [1, 0]])
      >>> n = global_count(m, "token-mean", None)
      >>> global_token_mean(x[:1], m[:1], count=n) + global_token_mean(x[1:], m[1:], count=n)
      Array(3., dtype=float32)

    Reference: the exact loss normalisation across micro-batches and devices of Liu et al.
    2025, Dr.GRPO (arXiv 2503.20783), and Yu et al. 2025, DAPO (arXiv 2503.14476).
    """
    total, local_count = aggregate_parts(values, mask, mode, norm=norm)
    if count is None:
        count = psum(local_count, axis_name)
    else:
        _checks.check_range(count, "count", 0.0)
    return _ratio(total, jax.lax.stop_gradient(count))


def global_count(mask, mode="token-mean", axis_name=None):
    """The denominator of `mode` for the whole batch `mask`, summed over `axis_name`.

    Math: `sum_s count_s` with `count_s` the count of `aggregate_parts` on shard `s`: the
    number of valid tokens (token-mean), of non-empty rows (sequence-mean-token-mean) or
    of rows (the sum modes). Pass it as `count` to `global_token_mean` for each
    micro-batch of this mask. Not differentiated.

    Args:
      mask: `[B, T]` 0/1 mask (bool, integer or floating).
      mode: an aggregation mode (see module doc; aliases accepted).
      axis_name: optional mapped axis to sum over.

    Returns:
      Float32 scalar.

    Example:
      >>> m = jnp.array([[1, 1], [0, 0]])
      >>> global_count(m, "token-mean"), global_count(m, "sequence-mean-token-mean")
      (Array(2., dtype=float32), Array(1., dtype=float32))

    Reference: Liu et al. 2025, Dr.GRPO (arXiv 2503.20783).
    """
    m = _checks.real_array(mask, "mask", rank=2, what="([B, T] 0/1 mask)")
    _, count = aggregate_parts(jnp.zeros(m.shape, jnp.float32), m, mode)
    return jax.lax.stop_gradient(psum(count, axis_name))


def masked_sum(x, mask=None, axis=-1):
    """`sum(x * mask)` along `axis` (masked entries contribute 0 even if they hold NaN).

    Math: `sum_t m_t x_t` over the reduced axes.

    Args:
      x: floating array, e.g. per-token log-probs `[B, T]`.
      mask: optional 0/1 array of the same shape.
      axis: axis or axes to reduce (None: all).

    Returns:
      `x` reduced over `axis`; e.g. sequence log-probs `[B]` (float32 or wider).

    Example:
      >>> masked_sum(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[1, 1, 0]]))
      Array([3.], dtype=float32)

    Reference: the sequence log-likelihood `log pi(y | x) = sum_t log pi(y_t | x, y_<t)`
    of DPO (Rafailov et al. 2023, arXiv 2305.18290).
    """
    x, m = _values_and_mask(x, mask, "x")
    return jnp.sum(_masked(x, m), axis=axis)


def masked_mean(x, mask=None, axis=-1):
    """`sum(x * mask) / sum(mask)` along `axis`; 0 (not NaN) where the mask selects nothing.

    Math: `sum_t m_t x_t / sum_t m_t` over the reduced axes.

    Args:
      x: floating array, e.g. per-token log-probs `[B, T]`.
      mask: optional 0/1 array of the same shape.
      axis: axis or axes to reduce (None: all).

    Returns:
      `x` averaged over `axis`; e.g. length-normalised sequence log-probs `[B]`.

    Example:
      >>> masked_mean(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[1, 1, 0]]))
      Array([1.5], dtype=float32)

    Reference: the length-normalised sequence log-likelihood of SimPO (Meng et al. 2024,
    arXiv 2405.14734).
    """
    x, m = _values_and_mask(x, mask, "x")
    return _ratio(jnp.sum(_masked(x, m), axis=axis), jnp.sum(m, axis=axis))
