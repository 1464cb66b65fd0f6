"""`rlgen.models`: small reference models (Flax NNX) for recipes, tests and notebooks.

* `TransformerLM` (with `TransformerConfig`, `SamplingConfig`): a decoder-only
  transformer language model; `policy(prompts, completions)` gives teacher-forced
  logits for the trainers and `generate`/`sample` draw completions with a KV cache.
* `MLPPolicy`, `MLPActorCritic`: tanh MLP policies over flat observations (CartPole).

    model = TransformerLM(TransformerConfig(vocab_size=32, max_len=16), rngs=nnx.Rngs(0))
    tokens, mask = model.generate(prompts, jax.random.key(0), max_new_tokens=8)
"""

from rlgen.models.mlp import MLPActorCritic, MLPPolicy
from rlgen.models.transformer import SamplingConfig, TransformerConfig, TransformerLM

__all__ = [
    "MLPActorCritic",
    "MLPPolicy",
    "SamplingConfig",
    "TransformerConfig",
    "TransformerLM",
]
