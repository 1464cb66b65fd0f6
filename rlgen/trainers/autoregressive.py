"""`AutoregressiveTrainer`: next-token training with teacher forcing, label smoothing and
scheduled sampling, plus `generate()`. The loss is `rlgen.generative.next_token_loss`.
"""

from __future__ import annotations

from rlgen.generative.autoregressive import AutoregressiveConfig, next_token_loss
from rlgen.trainers.base import Trainer

__all__ = ["AutoregressiveConfig", "AutoregressiveTrainer"]


class AutoregressiveTrainer(Trainer):
    """Trains a next-token model: ``model(tokens [B, L]) -> logits [B, L, V]``.

    ``train_step(batch)`` with ``tokens`` (``[B, L]`` int) and optional ``mask``
    (``[B, L]``: 1 on the tokens to predict; e.g. only the answer of a prompt/answer
    pair; position 0 is never predicted): one optimiser step on
    `rlgen.generative.next_token_loss` (teacher forcing, label smoothing, scheduled
    sampling as set by `AutoregressiveConfig`). Metrics: ``loss`` (with label smoothing)
    and `rlgen.generative.autoregressive.METRICS` (``nll``, ``token_accuracy``,
    ``sampling_prob``).

    Example:
      >>> import jax.numpy as jnp, optax
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

    def compute_loss(self, model, batch, key, step):
        return next_token_loss(model, batch, key, step, self.config)

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
