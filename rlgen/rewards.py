"""Reward functions: the `RewardFunction` protocol and jittable combinators.

A reward function maps a batch of generated samples (and optional conditions) to one
float reward per sample: `reward_fn(samples, conditions=None, **kwargs) -> [batch]`.
Every class here is a frozen dataclass (hashable, so it can be a static argument of
`jit`), is jittable, and checks that what it wraps returns a `(batch,)` floating array,
raising a ValueError that names the offending function otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from rlgen import _checks


@runtime_checkable
class RewardFunction(Protocol):
    """Protocol of a reward function (the one Artifex's RL trainers use).

    `__call__(samples, conditions=None, **kwargs)` returns rewards of shape
    `(batch_size,)`, where `batch_size = samples.shape[0]` (or the leading axis of the
    first leaf of a pytree of samples).
    """

    def __call__(self, samples: Any, conditions: Any | None = None, **kwargs) -> jax.Array: ...


def batch_size_of(samples) -> int:
    """The leading-axis size of `samples` (an array or a pytree of arrays)."""
    leaves = jax.tree.leaves(samples)
    if not leaves or jnp.ndim(leaves[0]) < 1:
        raise ValueError(
            "`samples` must be an array (or pytree of arrays) with a leading batch axis, "
            f"got {type(samples).__name__}"
        )
    return jnp.shape(leaves[0])[0]


def call_reward(reward_fn, samples, conditions=None, *, name=None, **kwargs) -> jax.Array:
    """Calls `reward_fn` and checks it returned a floating `(batch,)` array."""
    out = reward_fn(samples, conditions, **kwargs)
    out = jnp.asarray(out)
    batch = batch_size_of(samples)
    who = name or getattr(reward_fn, "__name__", type(reward_fn).__name__)
    if out.shape != (batch,):
        raise ValueError(
            f"reward function {who} must return shape ({batch},) (one reward per sample), "
            f"got shape {out.shape}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        out = out.astype(jnp.float32)
    return out


@dataclasses.dataclass(frozen=True)
class ConstantReward:
    """Returns `value` for every sample (useful for tests and baselines).

    Example:
      >>> ConstantReward(value=1.0)(jnp.zeros((3, 5)))
      Array([1., 1., 1.], dtype=float32)
    """

    value: float = 1.0

    def __call__(self, samples, conditions=None, **kwargs):
        return jnp.full((batch_size_of(samples),), self.value, jnp.float32)


@dataclasses.dataclass(frozen=True)
class CompositeReward:
    """Weighted sum of reward functions: `sum_k weights[k] * reward_fns[k](samples)`.

    Args:
      reward_fns: a sequence of reward functions.
      weights: one float per function (default: all 1.0).

    Example:
      >>> fn = CompositeReward([ConstantReward(1.0), ConstantReward(2.0)], weights=[0.3, 0.7])
      >>> fn(jnp.zeros((2, 4)))
      Array([1.7, 1.7], dtype=float32)
    """

    reward_fns: Sequence[Callable]
    weights: Sequence[float] | None = None

    def __post_init__(self):
        fns = tuple(self.reward_fns)
        if not fns:
            raise ValueError("`reward_fns` must hold at least one reward function")
        for i, fn in enumerate(fns):
            if not callable(fn):
                raise TypeError(f"`reward_fns[{i}]` must be callable, got {type(fn).__name__}")
        object.__setattr__(self, "reward_fns", fns)
        if self.weights is None:
            object.__setattr__(self, "weights", (1.0,) * len(fns))
        weights = tuple(float(w) for w in self.weights)
        if len(weights) != len(fns):
            raise ValueError(
                f"`weights` must have one entry per reward function ({len(fns)}), "
                f"got {len(weights)}"
            )
        object.__setattr__(self, "weights", weights)

    def __call__(self, samples, conditions=None, **kwargs):
        total = 0.0
        for i, (fn, w) in enumerate(zip(self.reward_fns, self.weights, strict=True)):
            total = total + w * call_reward(
                fn, samples, conditions, name=f"reward_fns[{i}]", **kwargs
            )
        return total


@dataclasses.dataclass(frozen=True)
class ThresholdReward:
    """Binary reward: `above_value` where `reward_fn(samples) > threshold`, else `below_value`.

    Example:
      >>> base = lambda s, c=None: s[:, 0]
      >>> ThresholdReward(base, threshold=0.5)(jnp.array([[0.2], [0.9]]))
      Array([0., 1.], dtype=float32)
    """

    reward_fn: Callable
    threshold: float = 0.5
    above_value: float = 1.0
    below_value: float = 0.0

    def __post_init__(self):
        if not callable(self.reward_fn):
            raise TypeError(f"`reward_fn` must be callable, got {type(self.reward_fn).__name__}")

    def __call__(self, samples, conditions=None, **kwargs):
        r = call_reward(self.reward_fn, samples, conditions, name="reward_fn", **kwargs)
        return jnp.where(r > self.threshold, self.above_value, self.below_value).astype(r.dtype)


@dataclasses.dataclass(frozen=True)
class ScaledReward:
    """`scale * reward_fn(samples)`.

    Example:
      >>> ScaledReward(ConstantReward(0.5), scale=10.0)(jnp.zeros((2, 1)))
      Array([5., 5.], dtype=float32)
    """

    reward_fn: Callable
    scale: float = 1.0

    def __post_init__(self):
        if not callable(self.reward_fn):
            raise TypeError(f"`reward_fn` must be callable, got {type(self.reward_fn).__name__}")
        _checks.check_scalar(self.scale, "scale")

    def __call__(self, samples, conditions=None, **kwargs):
        r = call_reward(self.reward_fn, samples, conditions, name="reward_fn", **kwargs)
        return self.scale * r


@dataclasses.dataclass(frozen=True)
class ClippedReward:
    """`clip(reward_fn(samples), min_value, max_value)`.

    Example:
      >>> ClippedReward(ConstantReward(3.0), min_value=-1.0, max_value=1.0)(jnp.zeros((1, 1)))
      Array([1.], dtype=float32)
    """

    reward_fn: Callable
    min_value: float = -1.0
    max_value: float = 1.0

    def __post_init__(self):
        if not callable(self.reward_fn):
            raise TypeError(f"`reward_fn` must be callable, got {type(self.reward_fn).__name__}")
        if not self.min_value <= self.max_value:
            raise ValueError(
                f"`min_value` ({self.min_value}) must not exceed `max_value` ({self.max_value})"
            )

    def __call__(self, samples, conditions=None, **kwargs):
        r = call_reward(self.reward_fn, samples, conditions, name="reward_fn", **kwargs)
        return jnp.clip(r, self.min_value, self.max_value)


#: What `ClassifierReward` returns of the target class.
CLASSIFIER_OUTPUTS = ("probability", "log_probability")


@dataclasses.dataclass(frozen=True)
class ClassifierReward:
    """A classifier's belief that a sample is of the ``target`` class: ``p(target | x)``
    (``"probability"``, in [0, 1]) or ``log p(target | x)`` (``"log_probability"``, the
    differentiable reward of reward backpropagation), from ``logits_fn(samples) -> [B, C]``.

    The reward of DDPO's and DiffusionNFT's class-targeting experiments; rlgen's
    ``diffusion-grpo`` recipe scores digits with the shipped digit classifier this way.
    A ``target`` outside ``[0, C)`` is a ValueError at the first call.

    Example:
      >>> logits_fn = lambda x: jnp.stack([x[:, 0], -x[:, 0]], axis=-1)
      >>> ClassifierReward(logits_fn, target=0)(jnp.array([[0.0], [10.0]])).round(3)
      Array([0.5, 1. ], dtype=float32)
    """

    logits_fn: Callable
    target: int
    output: str = _checks.option("probability", CLASSIFIER_OUTPUTS)

    def __post_init__(self):
        if not callable(self.logits_fn):
            raise TypeError(f"`logits_fn` must be callable, got {type(self.logits_fn).__name__}")
        _checks.check_int(self.target, "target", low=0)
        _checks.check_options(self)

    def __call__(self, samples, conditions=None, **kwargs):
        logits = jnp.asarray(self.logits_fn(samples))
        batch = batch_size_of(samples)
        if logits.ndim != 2 or logits.shape[0] != batch:
            raise ValueError(
                f"`logits_fn` must return [B, C] = [{batch}, C] logits, got shape {logits.shape}"
            )
        if self.target >= logits.shape[1]:
            raise ValueError(
                f"`target` must be a class id in [0, {logits.shape[1]}), got {self.target}"
            )
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, self.target]
        return log_p if self.output == "log_probability" else jnp.exp(log_p)


__all__ = [
    "CLASSIFIER_OUTPUTS",
    "ClassifierReward",
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "RewardFunction",
    "ScaledReward",
    "ThresholdReward",
    "batch_size_of",
    "call_reward",
]
