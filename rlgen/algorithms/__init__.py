"""`rlgen.algorithms`: each algorithm as a pure `Algorithm(init, update)` pair.

    algo = rlgen.algorithms.grpo(policy_fn, optax.adam(1e-4), GRPOConfig(num_generations=4))
    state = algo.init(params)
    state, metrics = jax.jit(algo.update)(state, batch)

The RL algorithms (`reinforce`, `ppo`, `grpo`, `dpo`), the RL algorithms of diffusion and
flow models (`ddpo`: DDPO and Flow-GRPO on per-step log-probs; `nft`: DiffusionNFT on the
forward process; `draft`: DRaFT-K, DRaFT-LV and ReFL, reward backpropagation;
`diffusion_dpo`: Diffusion-DPO from preference pairs; all take a model ``apply_fn`` and a
sampler of `rlgen.generative.rollout`), `supervised` (a loss minimised by
gradient descent: the VAE's and the autoregressive models' training) and the generative
families' own pairs (`diffusion`: supervised with an EMA of the parameters;
`flow_matching`: the same with a frozen reflow teacher; `gan`: generator and discriminator
with their own optimisers; `contrastive_divergence`: an energy model with its replay
buffer of negatives in the state) share one state protocol, written down in
`rlgen.algorithms.base`. Each RL algorithm's loss is public too (`reinforce_loss`,
`ppo_loss`, `grpo_loss`, `dpo_loss`, `dpo_sequence_loss`, `ddpo_loss`, `nft_loss`,
`draft_loss`, `diffusion_dpo_loss`) for users who own their
optimiser step, and each defines its metric names once (`GRPO_METRICS`, ...).
"""

from rlgen.algorithms import reference
from rlgen.algorithms.base import (
    STATE_FIELDS,
    Algorithm,
    apply_gradients,
    check_state,
    ema_update,
    per_model,
)
from rlgen.algorithms.ddpo import METRICS as DDPO_METRICS
from rlgen.algorithms.ddpo import DDPOConfig, DDPOState, ddpo, ddpo_loss
from rlgen.algorithms.diffusion import DiffusionState, diffusion
from rlgen.algorithms.diffusion_dpo import METRICS as DIFFUSION_DPO_METRICS
from rlgen.algorithms.diffusion_dpo import (
    DiffusionDPOConfig,
    DiffusionDPOState,
    diffusion_dpo,
    diffusion_dpo_loss,
)
from rlgen.algorithms.dpo import METRICS as DPO_METRICS
from rlgen.algorithms.dpo import DPOConfig, DPOState, dpo, dpo_loss, dpo_sequence_loss
from rlgen.algorithms.draft import METHODS as DRAFT_METHODS
from rlgen.algorithms.draft import METRICS as DRAFT_METRICS
from rlgen.algorithms.draft import DRaFTConfig, DRaFTState, draft, draft_loss
from rlgen.algorithms.energy import METRICS as ENERGY_METRICS
from rlgen.algorithms.energy import EnergyState, contrastive_divergence
from rlgen.algorithms.flow import METRICS as FLOW_METRICS
from rlgen.algorithms.flow import FlowState, flow_matching
from rlgen.algorithms.gan import GANState, gan
from rlgen.algorithms.grpo import METRICS as GRPO_METRICS
from rlgen.algorithms.grpo import GRPOConfig, GRPOState, grpo, grpo_loss
from rlgen.algorithms.nft import METRICS as NFT_METRICS
from rlgen.algorithms.nft import NFTConfig, NFTState, nft, nft_loss
from rlgen.algorithms.policy import TokenCategorical, evaluate_policy
from rlgen.algorithms.ppo import METRICS as PPO_METRICS
from rlgen.algorithms.ppo import PPOConfig, PPOState, ppo, ppo_loss
from rlgen.algorithms.reinforce import METRICS as REINFORCE_METRICS
from rlgen.algorithms.reinforce import (
    REINFORCEConfig,
    REINFORCEState,
    reinforce,
    reinforce_loss,
)
from rlgen.algorithms.supervised import SupervisedState, supervised

__all__ = [
    "Algorithm",
    "DDPOConfig",
    "DDPOState",
    "DDPO_METRICS",
    "DIFFUSION_DPO_METRICS",
    "DPOConfig",
    "DPOState",
    "DPO_METRICS",
    "DRAFT_METHODS",
    "DRAFT_METRICS",
    "DRaFTConfig",
    "DRaFTState",
    "DiffusionDPOConfig",
    "DiffusionDPOState",
    "DiffusionState",
    "ENERGY_METRICS",
    "EnergyState",
    "FLOW_METRICS",
    "FlowState",
    "GANState",
    "GRPOConfig",
    "GRPOState",
    "GRPO_METRICS",
    "NFTConfig",
    "NFTState",
    "NFT_METRICS",
    "PPOConfig",
    "PPOState",
    "PPO_METRICS",
    "REINFORCEConfig",
    "REINFORCEState",
    "REINFORCE_METRICS",
    "STATE_FIELDS",
    "SupervisedState",
    "TokenCategorical",
    "apply_gradients",
    "check_state",
    "contrastive_divergence",
    "ddpo",
    "ddpo_loss",
    "diffusion",
    "diffusion_dpo",
    "diffusion_dpo_loss",
    "dpo",
    "dpo_loss",
    "dpo_sequence_loss",
    "draft",
    "draft_loss",
    "ema_update",
    "evaluate_policy",
    "flow_matching",
    "gan",
    "grpo",
    "grpo_loss",
    "nft",
    "nft_loss",
    "per_model",
    "ppo",
    "ppo_loss",
    "reference",
    "reinforce",
    "reinforce_loss",
    "supervised",
]
