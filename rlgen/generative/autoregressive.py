"""Autoregressive (next-token) training losses: teacher forcing, label smoothing and
scheduled sampling.

`next_token_loss` is the loss `rlgen.trainers.AutoregressiveTrainer` minimises (through
`rlgen.algorithms.supervised`); `sequence_cross_entropy` and `scheduled_sampling_inputs`
are its parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rlgen import _checks, ops

#: The metrics `next_token_loss` returns besides the loss.
METRICS = ("nll", "token_accuracy", "sampling_prob")


@dataclasses.dataclass(frozen=True)
class AutoregressiveConfig:
    """Settings of next-token training (`next_token_loss`, `AutoregressiveTrainer`).

    Attributes:
      label_smoothing: ``eps`` of `sequence_cross_entropy` (0: plain NLL).
      scheduled_sampling: probability of feeding the model's own prediction instead of
        the true token (Bengio et al. 2015): a float, or a schedule ``step -> prob`` such
        as ``optax.linear_schedule(0.0, 0.25, 1000)`` (evaluated inside the compiled
        step, so it never recompiles). 0 is pure teacher forcing.
      greedy_sampling: scheduled sampling feeds argmax predictions instead of samples.
      max_grad_norm: global-norm gradient clipping (None: none).
    """

    label_smoothing: float = 0.0
    scheduled_sampling: float | Callable[[Any], Any] = 0.0
    greedy_sampling: bool = False
    max_grad_norm: float | None = None

    def __post_init__(self):
        _checks.check_range(self.label_smoothing, "label_smoothing", 0.0, 1.0, high_open=True)
        if not callable(self.scheduled_sampling):
            _checks.check_range(self.scheduled_sampling, "scheduled_sampling", 0.0, 1.0)
        _checks.check_bool(self.greedy_sampling, "greedy_sampling")
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)

    def sampling_prob(self, step):
        """The scheduled-sampling probability at ``step``, clipped to ``[0, 1]`` (float32)."""
        p = self.scheduled_sampling
        return jnp.clip(jnp.asarray(p(step) if callable(p) else p, jnp.float32), 0.0, 1.0)


def next_token_loss(model, batch, key, step, config: AutoregressiveConfig = AutoregressiveConfig()):
    """Teacher-forced next-token loss, with label smoothing and scheduled sampling.

    ``batch["tokens"]`` ``[B, L]`` (int) are read as inputs ``x_0 .. x_{L-2}`` and targets
    ``x_1 .. x_{L-1}``; the optional ``batch["mask"]`` ``[B, L]`` marks the tokens to
    predict (position 0 is never predicted). The loss is the masked token mean of
    `sequence_cross_entropy` (label smoothing ``eps``). With scheduled sampling
    (probability ``p = config.sampling_prob(step)``), a second pass runs on inputs where
    each true token is replaced, with probability ``p``, by the first pass's prediction
    (`scheduled_sampling_inputs`; Bengio et al. 2015, arXiv 1506.03099), and the loss is
    that pass's.

    Args:
      model: ``tokens [B, L-1] -> logits [B, L-1, V]`` (an NNX model or any function).
      batch: ``{"tokens": [B, L] int, "mask": optional [B, L]}``.
      key: PRNG key (used by scheduled sampling only).
      step: the update count (evaluates a scheduled-sampling schedule).
      config: an `AutoregressiveConfig`.

    Returns:
      ``(loss, metrics)`` with metrics `METRICS`: ``nll`` (the unsmoothed loss),
      ``token_accuracy`` (argmax) and ``sampling_prob``.

    Example:
      >>> logits = lambda tokens: jax.nn.one_hot(tokens + 1, 4) * 20.0  # predicts x + 1
      >>> batch = {"tokens": jnp.array([[0, 1, 2, 3]])}
      >>> loss, m = next_token_loss(logits, batch, jax.random.key(0), 0)
      >>> float(m["token_accuracy"]), bool(loss < 1e-6)
      (1.0, True)
    """
    unknown = sorted(set(batch) - {"tokens", "mask"})
    if "tokens" not in batch or unknown:
        raise ValueError(
            f"the next-token batch needs 'tokens' [B, L] (optional 'mask' [B, L]); got keys "
            f"{sorted(batch)}"
        )
    tokens = _checks.int_array(batch["tokens"], "tokens", rank=2)
    if tokens.shape[1] < 2:
        raise ValueError(f"`tokens` needs at least 2 positions, got shape {tokens.shape}")
    mask = _checks.as_mask(batch.get("mask"), tokens.shape, "mask", "tokens")[:, 1:]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)
    prob = config.sampling_prob(step)
    if config.scheduled_sampling != 0.0:
        mixed = scheduled_sampling_inputs(inputs, logits, prob, key, greedy=config.greedy_sampling)
        logits = model(mixed)
    per_token = sequence_cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
    loss = ops.masked_mean(per_token, mask, axis=None)
    nll = ops.masked_mean(sequence_cross_entropy(logits, targets), mask, axis=None)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        "nll": jax.lax.stop_gradient(nll),
        "token_accuracy": ops.masked_mean(correct, mask, axis=None),
        "sampling_prob": prob,
    }
    return loss, metrics


def sequence_cross_entropy(logits, targets, *, label_smoothing=0.0):
    """Per-token cross-entropy with label smoothing (Szegedy et al. 2016, arXiv 1512.00567).

    With ``eps = label_smoothing`` the target distribution is ``(1 - eps)`` on the true
    token plus ``eps / V`` spread uniformly, so, with ``z`` the logits,

        loss_t = logsumexp(z_t) - (1 - eps) z_t[y_t] - eps * mean_v z_t[v]

    computed without forming a log-softmax. ``eps = 0`` is the plain negative
    log-likelihood of teacher forcing.

    Args:
      logits: ``[..., V]`` floating (computed in float32).
      targets: ``[...]`` integer token ids.
      label_smoothing: ``eps`` in ``[0, 1)``.

    Returns:
      ``[...]`` float32 per-token losses (reduce them with `rlgen.ops.masked_mean`).

    Example:
      >>> logits = jnp.zeros((1, 2, 4))
      >>> sequence_cross_entropy(logits, jnp.array([[0, 3]])).round(4)
      Array([[1.3863, 1.3863]], dtype=float32)
    """
    logits = _checks.float_array(logits, "logits", min_rank=1)
    targets = _checks.int_array(
        targets, "targets", shape=logits.shape[:-1], like="logits[..., V] without V"
    )
    _checks.check_range(label_smoothing, "label_smoothing", 0.0, 1.0, high_open=True)
    eps = label_smoothing
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    lse = jax.nn.logsumexp(z, axis=-1)
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - (1.0 - eps) * picked - eps * jnp.mean(z, axis=-1)


def scheduled_sampling_inputs(tokens, logits, prob, key, *, greedy=False):
    """Inputs for a scheduled-sampling pass (Bengio et al. 2015, arXiv 1506.03099).

    Teacher forcing feeds the true tokens ``x_0 .. x_{L-1}``; scheduled sampling feeds,
    at each position ``t >= 1`` independently with probability ``prob``, the model's own
    prediction of ``x_t`` instead: a draw from (or, with ``greedy``, the argmax of) the
    first pass's ``logits[:, t-1]``. This is the two-pass form for parallel decoders
    (Mihaylova and Martins 2019, arXiv 1906.04331); the first pass is not
    differentiated. Position 0 always keeps the true token.

    Args:
      tokens: ``[B, L]`` integer inputs of the teacher-forced pass.
      logits: ``[B, L, V]`` the teacher-forced pass's logits (position t predicts x_{t+1}).
      prob: scalar in ``[0, 1]`` (may be traced, e.g. from a schedule).
      key: PRNG key.
      greedy: use argmax predictions instead of samples.

    Returns:
      ``[B, L]`` mixed inputs, same dtype as ``tokens``.

    Example:
      >>> toks = jnp.array([[1, 2, 3]])
      >>> logits = jax.nn.one_hot(jnp.array([[0, 0, 0]]), 4) * 50.0
      >>> scheduled_sampling_inputs(toks, logits, 1.0, jax.random.key(0))
      Array([[1, 0, 0]], dtype=int32)
    """
    tokens = _checks.int_array(tokens, "tokens", rank=2)
    logits = _checks.float_array(logits, "logits", rank=3)
    _checks.check_shape(logits, (*tokens.shape, logits.shape[-1]), "logits", "[B, L, V]")
    _checks.check_range(prob, "prob", 0.0, 1.0)
    logits = jax.lax.stop_gradient(logits[:, :-1])
    draw_key, mix_key = jax.random.split(key)
    if greedy:
        guesses = jnp.argmax(logits, axis=-1)
    else:
        guesses = jax.random.categorical(draw_key, logits.astype(jnp.float32), axis=-1)
    use_guess = jax.random.bernoulli(mix_key, prob, guesses.shape)
    mixed = jnp.where(use_guess, guesses.astype(tokens.dtype), tokens[:, 1:])
    return jnp.concatenate([tokens[:, :1], mixed], axis=1)
