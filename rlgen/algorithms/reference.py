"""The frozen reference: one implementation for every algorithm that compares the policy
with a fixed one.

GRPO's KL penalty and DPO's implicit reward compare the policy with a reference policy
(and, in the families to come, a reflow teacher or the pretrained model of diffusion RL
play the same part). Where the reference comes from is one option, ``reference``, whose
choices are `SOURCES`:

* ``"initial"``: a frozen copy of the parameters given to ``init``, kept in the
  algorithm's state as ``ref_params``. It is checkpointed with the state, never
  differentiated and never updated.
* ``"batch"``: the batch carries the reference's values (``ref_log_probs``, ...), computed
  by the caller; the state's ``ref_params`` is ``()``.

`init` makes the state's field and `values` returns a batch's reference values in either
case, with the errors that say which keys to pass or drop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

SOURCES = ("batch", "initial")


def init(params, source: str, *, needed: bool = True):
    """The state's ``ref_params``: a frozen copy of ``params`` for ``"initial"``, else ``()``.

    Args:
      params: the policy's initial parameters (any pytree of arrays).
      source: one of `SOURCES`.
      needed: False when the algorithm's settings use no reference at all (SimPO): then
        nothing is copied whatever ``source`` says.

    Example:
      >>> ref = init({"w": jnp.ones(2)}, "initial")
      >>> ref["w"], init({"w": jnp.ones(2)}, "batch")
      (Array([1., 1.], dtype=float32), ())
    """
    if needed and source == "initial":
        return jax.tree.map(jnp.copy, params)
    return ()


def values(
    batch: Mapping[str, Any],
    keys: Sequence[str],
    source: str,
    ref_params,
    compute: Callable[[Any], tuple],
    *,
    required: bool,
    owner: str,
):
    """A batch's reference values: a tuple with one entry per key of ``keys``, or None.

    * ``"initial"``: ``compute(ref_params)`` under `jax.lax.stop_gradient` (the batch must
      not hold any of ``keys``: two references would be ambiguous).
    * ``"batch"``: ``batch[k]`` for each key, or None when the batch holds none of them
      and ``required`` is False (the algorithm then runs without its reference term).

    Args:
      batch: the algorithm's batch.
      keys: the batch keys that carry reference values.
      source: one of `SOURCES`.
      ref_params: the state's ``ref_params``.
      compute: ``ref_params -> tuple`` of values like ``keys`` (the reference's forward).
      required: whether the algorithm needs the values (else they are optional).
      owner: the config's name in error messages (e.g. ``"GRPOConfig"``).

    Example:
      >>> batch = {"ref_log_probs": jnp.zeros(3)}
      >>> values(batch, ("ref_log_probs",), "batch", (), None, required=False, owner="X")
      (Array([0., 0., 0.], dtype=float32),)
    """
    present = [k for k in keys if k in batch]
    if source == "initial":
        if present:
            raise ValueError(
                f"{owner}(reference='initial') computes the reference values from the frozen "
                f"initial params; drop the batch key(s) {present} or use reference='batch'"
            )
        return tuple(jax.lax.stop_gradient(v) for v in compute(ref_params))
    if len(present) == len(keys):
        return tuple(batch[k] for k in keys)
    if present or required:
        raise ValueError(
            f"{owner}(reference='batch') needs the batch key(s) {list(keys)} (reference "
            f"values from the caller); got {sorted(batch)}"
        )
    return None
