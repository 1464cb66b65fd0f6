"""`AutoregressiveTrainer`: next-token training with teacher forcing, label smoothing and
scheduled sampling, plus `generate()`. The losses live in `rlgen.generative`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rlgen import _checks, ops
from rlgen.generative import scheduled_sampling_inputs, sequence_cross_entropy
from rlgen.trainers.base import Trainer


@dataclasses.dataclass(frozen=True)
class AutoregressiveConfig:
    """Settings of `AutoregressiveTrainer`.

    Attributes:
      label_smoothing: ``eps`` of `rlgen.generative.sequence_cross_entropy` (0: plain NLL).
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
        if not isinstance(self.greedy_sampling, bool):
            raise TypeError(
                f"`greedy_sampling` must be a bool, got {type(self.greedy_sampling).__name__}"
            )
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)


class AutoregressiveTrainer(Trainer):
    """Trains a next-token model: ``model(tokens [B, L]) -> logits [B, L, V]``.

    ``train_step(batch)`` with ``tokens`` (``[B, L]`` int) and optional ``mask``
    (``[B, L]``: 1 on the tokens to predict; e.g. only the answer of a prompt/answer
    pair; position 0 is never predicted). Position ``t``'s logits are trained to predict
    token ``t + 1`` (teacher forcing); with scheduled sampling, a second pass runs on
    inputs where some true tokens are replaced by the model's own predictions. Metrics:
    ``loss`` (with label smoothing), ``nll``, ``token_accuracy`` (argmax) and
    ``sampling_prob``.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import TransformerConfig, TransformerLM
      >>> lm = TransformerLM(TransformerConfig(vocab_size=5, max_len=8, d_model=16,
      ...                    num_heads=2, num_layers=1), rngs=nnx.Rngs(0))
      >>> trainer = AutoregressiveTrainer(lm, nnx.Optimizer(lm, optax.adam(1e-2),
      ...                                 wrt=nnx.Param))
      >>> batch = {"tokens": jnp.tile(jnp.arange(5), (4, 1))}
      >>> first = trainer.train_step(batch)["loss"]
      >>> for _ in range(30):
      ...     last = trainer.train_step(batch)["loss"]
      >>> bool(last < first / 2)
      True
    """

    def __init__(self, model, optimizer, config: AutoregressiveConfig | None = None, **kwargs):
        config = AutoregressiveConfig() if config is None else config
        if not isinstance(config, AutoregressiveConfig):
            raise TypeError(
                f"`config` must be an AutoregressiveConfig, got {type(config).__name__}"
            )
        super().__init__(model, optimizer, config, **kwargs)

    def _sampling_prob(self, step):
        p = self.config.scheduled_sampling
        return jnp.clip(jnp.asarray(p(step) if callable(p) else p, jnp.float32), 0.0, 1.0)

    def compute_loss(self, model, batch, key):
        unknown = sorted(set(batch) - {"tokens", "mask", "_step"})
        if "tokens" not in batch or unknown:
            raise ValueError(
                "AutoregressiveTrainer batch needs 'tokens' [B, L] (optional 'mask' [B, L]); "
                f"got keys {sorted(k for k in batch if k != '_step')}"
            )
        tokens = _checks.as_array(batch["tokens"], "tokens")
        _checks.check_integer(tokens, "tokens")
        _checks.check_rank(tokens, 2, "tokens")
        if tokens.shape[1] < 2:
            raise ValueError(f"`tokens` needs at least 2 positions, got shape {tokens.shape}")
        mask = _checks.as_mask(batch.get("mask"), tokens.shape, "mask", "tokens")[:, 1:]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs)
        prob = self._sampling_prob(batch["_step"])
        if self.config.scheduled_sampling != 0.0:
            mixed = scheduled_sampling_inputs(
                inputs, logits, prob, key, greedy=self.config.greedy_sampling
            )
            logits = model(mixed)
        per_token = sequence_cross_entropy(
            logits, targets, label_smoothing=self.config.label_smoothing
        )
        loss = ops.masked_mean(per_token, mask, axis=None)
        nll = ops.masked_mean(sequence_cross_entropy(logits, targets), mask, axis=None)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        metrics = {
            "nll": jax.lax.stop_gradient(nll),
            "token_accuracy": ops.masked_mean(correct, mask, axis=None),
            "sampling_prob": prob,
        }
        return loss, metrics

    def _update(self, state, rest, batch, key, static=()):
        return super()._update(state, rest, {**batch, "_step": state.step}, key, static)

    def generate(self, prompts, key, **sampling):
        """Samples continuations with the model's ``generate`` (KV cache, compiled once per shape).

        Keyword arguments are the model's (``max_new_tokens``, ``temperature``,
        ``top_k``, ``top_p``); returns what the model returns (``(tokens, mask)`` for
        `rlgen.models.TransformerLM`).
        """
        fn = getattr(self.model, "generate", None)
        if not callable(fn):
            raise TypeError(
                f"{type(self.model).__name__} has no `generate(prompts, key, ...)` method"
            )
        return fn(self.shard(prompts), key, **sampling)
