"""`rlgen.models`: small reference models (Flax NNX) for recipes, tests and notebooks.

* `TransformerLM` (with `TransformerConfig`, `SamplingConfig`): a decoder-only
  transformer language model; `policy(prompts, completions)` gives teacher-forced
  logits for the trainers and `generate`/`sample` draw completions with a KV cache.
* `MLPPolicy`, `MLPActorCritic`: tanh MLP policies over flat observations (CartPole).
* `MLPDenoiser`: a time- and class-conditioned residual MLP, the network of the diffusion
  and flow-matching models (``model(x, t, labels)``).
* `MLPVAE`: an MLP encoder and decoder (Gaussian or Bernoulli) for `rlgen.trainers.VAETrainer`.
* `MLPGenerator`, `MLPDiscriminator`: a GAN's two networks.
* `GaussianEncoderPolicy`, `GaussianGeneratorPolicy`: a VAE's encoder and a GAN's
  generator as Gaussian policies (distrax) for `rlgen.trainers.PPOTrainer` and
  `REINFORCETrainer`.
* `MLPEnergy`: an energy ``E(x) -> [B]`` for `rlgen.trainers.EnergyTrainer`.
* `DenoisingPolicy`: a denoiser and its stochastic sampler as a policy over trajectories
  (per-step Gaussian log-probs), so `rlgen.trainers.GRPOTrainer` fine-tunes diffusion and
  flow models unchanged.
* `DigitClassifier` and `load_digit_classifier`: the shipped 8x8-digit classifier that
  judges the families' samples (`rlgen.quality`) and can serve as a reward.

    model = TransformerLM(TransformerConfig(vocab_size=32, max_len=16), rngs=nnx.Rngs(0))
    tokens, mask = model.generate(prompts, jax.random.key(0), max_new_tokens=8)
"""

from rlgen.models.classifier import DigitClassifier, load_digit_classifier
from rlgen.models.denoiser import MLPDenoiser
from rlgen.models.denoising_policy import DenoisingPolicy
from rlgen.models.energy import MLPEnergy
from rlgen.models.gan import MLPDiscriminator, MLPGenerator
from rlgen.models.gaussian import GaussianEncoderPolicy, GaussianGeneratorPolicy
from rlgen.models.mlp import MLPActorCritic, MLPPolicy
from rlgen.models.transformer import SamplingConfig, TransformerConfig, TransformerLM
from rlgen.models.vae import MLPVAE

__all__ = [
    "GaussianEncoderPolicy",
    "GaussianGeneratorPolicy",
    "DenoisingPolicy",
    "MLPVAE",
    "DigitClassifier",
    "MLPActorCritic",
    "MLPDenoiser",
    "MLPDiscriminator",
    "MLPEnergy",
    "MLPGenerator",
    "MLPPolicy",
    "SamplingConfig",
    "TransformerConfig",
    "TransformerLM",
    "load_digit_classifier",
]
