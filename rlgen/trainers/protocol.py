"""The model protocol: what an NNX model must provide to be trained by rlgen's trainers.

This is the one place the protocol is defined; every trainer calls the functions here.

**Scoring actions.** The trainer needs a distribution over the actions in a batch:

* a model with a ``policy(observations, actions)`` method is a *sequence model scored by
  teacher forcing*: the output at position ``t`` may depend on ``actions[:, :t]`` (a
  language model scores a completion given the prompt this way). The trainer calls
  ``model.policy(observations, actions)``;
* any other model is called as ``model(observations)``.

The call returns either ``logits`` (an array ``[..., V]``: one categorical per action,
wrapped as `rlgen.algorithms.TokenCategorical`, so ``[B, T, V]`` logits are scored with
memory-light log-probs) or a distribution (an object with ``log_prob`` and ``entropy``,
e.g. a ``distrax.Distribution``) whose ``log_prob(actions)`` has the actions' batch
shape. For `PPOTrainer` the call returns a pair ``(logits_or_distribution,
values)``, with ``values`` shaped like the log-probs (``[B]`` or ``[B, T]``).

**Sampling** (``train_step(batch, reward_fn, key)`` of `GRPOTrainer` and
`REINFORCETrainer`): ``model.sample(observations, key)`` returns ``actions`` or
``(actions, mask)`` with ``mask`` ``[B, T]`` marking the valid tokens (1 through the end
of sequence token, 0 after). A model may also offer
``model.sample_with_log_probs(observations, key) -> (actions, mask, log_probs)``, the
log-probabilities of the sampled actions under the distribution they were drawn from;
the trainers use it when an update needs the behaviour policy's log-probs (GRPO with
``num_iterations > 1``), saving a forward pass. The trainers call ``sample`` inside a
compiled program of the current parameters (one program per prompt shape): it must be
traceable by `jax.jit`, as the forward pass is (a model whose ``sample`` is not is sampled
eagerly, with a warning). `rlgen.models.TransformerLM` and `rlgen.models.MLPPolicy`
follow all of this.

**Denoisers** (the diffusion, flow and denoising RL trainers) are called
``model(x [B, ...], t [B] in [0, 1], labels [B] or None)``; their data shape and classes
come from ``model.dim`` and ``model.num_classes`` unless given (`denoiser_shapes`).

The model's forward pass must be a pure function of its parameters and inputs: the
trainer differentiates it functionally (`nnx.split` / `nnx.merge`), so state a forward
pass mutates (batch statistics, RNG counters) is not written back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from rlgen import _checks
from rlgen.algorithms import TokenCategorical

# Name of the packed observation entries used for teacher-forced sequence models.
_OBS, _ACT = "observations", "actions"


def is_sequence_model(model) -> bool:
    """True when the model scores actions by teacher forcing (has ``policy(obs, actions)``)."""
    return callable(getattr(model, "policy", None))


def as_distribution(out, who: str):
    """Logits (array ``[..., V]``) become a `TokenCategorical`; a distribution stays as is.

    Raises a TypeError saying what the protocol expects otherwise.
    """
    if hasattr(out, "log_prob") and hasattr(out, "entropy"):
        return out
    if isinstance(out, (jax.Array, jnp.ndarray)) or hasattr(out, "__jax_array__"):
        out = jnp.asarray(out)
        if not jnp.issubdtype(out.dtype, jnp.floating) or out.ndim < 1:
            raise TypeError(
                f"{who} must return floating logits [..., V] or a distrax distribution; got "
                f"an array of shape {out.shape} and dtype {out.dtype}"
            )
        return TokenCategorical(out)
    raise TypeError(
        f"{who} must return logits (an array [..., V]) or a distrax distribution (see "
        f"rlgen.trainers.protocol); got {type(out).__name__}"
    )


def pack_observations(model, observations, actions):
    """What the algorithms see as ``observations``.

    For a sequence model the actions travel with the observations (the policy needs them
    to build its teacher-forced distribution); otherwise the observations as they are.
    """
    if is_sequence_model(model):
        return {_OBS: observations, _ACT: actions}
    return observations


def pack_batch(model, batch: Mapping, pairs: Sequence[tuple[str, str]]) -> dict:
    """``batch`` with each ``(observations, actions)`` key pair packed by `pack_observations`."""
    batch = dict(batch)
    for obs, act in pairs:
        if obs in batch and act in batch:
            batch[obs] = pack_observations(model, batch[obs], batch[act])
    return batch


def policy_fn(merge: Callable, *, with_values: bool = False) -> Callable:
    """The algorithms' ``policy_fn(params, observations)`` of the model ``merge(params)``."""

    def fn(params, observations):
        return policy_output(merge(params), observations, with_values=with_values)

    return fn


def policy_output(model, observations, *, with_values: bool = False):
    """Calls the model on (possibly packed) observations; returns its distribution.

    With ``with_values`` (PPO) returns ``(distribution, values)``.
    """
    name = type(model).__name__
    if is_sequence_model(model):
        who = f"{name}.policy(observations, actions)"
        out = model.policy(observations[_OBS], observations[_ACT])
    else:
        who = f"{name}(observations)"
        out = model(observations)
    if with_values:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"PPOTrainer needs {who} to return (logits_or_distribution, values); got "
                f"{type(out).__name__}"
            )
        return as_distribution(out[0], who), jnp.asarray(out[1])
    if isinstance(out, tuple):
        raise TypeError(
            f"{who} returned a tuple; this trainer expects logits or a distrax distribution "
            "(a (distribution, values) pair is PPOTrainer's protocol)"
        )
    return as_distribution(out, who)


def sample(model, observations, key, *, with_log_probs: bool = False):
    """``model.sample(observations, key)`` as ``(actions, mask or None, log_probs or None)``.

    With ``with_log_probs`` and a model that has ``sample_with_log_probs``, that method's
    behaviour log-probs; otherwise ``log_probs`` is None.
    """
    if with_log_probs and callable(getattr(model, "sample_with_log_probs", None)):
        out = model.sample_with_log_probs(observations, key)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise TypeError(
                f"{type(model).__name__}.sample_with_log_probs must return "
                f"(actions, mask, log_probs); got {type(out).__name__}"
            )
        return out
    fn = getattr(model, "sample", None)
    if not callable(fn):
        raise TypeError(
            f"train_step(batch, reward_fn, key) samples with the model's "
            f"`sample(observations, key)` method, which {type(model).__name__} lacks (see "
            "rlgen.trainers.protocol); or pass a full batch without reward_fn"
        )
    out = fn(observations, key)
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError(
                f"{type(model).__name__}.sample must return actions or (actions, mask); got a "
                f"tuple of {len(out)}"
            )
        return (*out, None)
    return out, None, None


def denoiser_shapes(model, data_shape=None, num_classes=None) -> tuple[tuple[int, ...], int]:
    """``(data_shape, num_classes)`` of a denoiser ``model(x, t, labels)``: the given
    values, else ``(model.dim,)`` and ``model.num_classes`` (0 when it has none).

    Raises a ValueError when neither ``data_shape`` nor ``model.dim`` is there.
    """
    if data_shape is None:
        dim = getattr(model, "dim", None)
        if dim is None:
            raise ValueError(
                f"pass `data_shape` (one example's shape): {type(model).__name__} has no "
                "`dim` attribute to take it from"
            )
        data_shape = (dim,)
    shape = tuple(
        _checks.check_positive_int(d, f"data_shape[{i}]") for i, d in enumerate(data_shape)
    )
    if num_classes is None:
        num_classes = getattr(model, "num_classes", 0)
    return shape, _checks.check_int(num_classes, "num_classes", low=0)
