"""`rlgen.algorithms`: each algorithm as a pure `Algorithm(init, update)` pair.

    algo = rlgen.algorithms.grpo(policy_fn, optax.adam(1e-4), GRPOConfig(num_generations=4))
    state = algo.init(params)
    state, metrics = jax.jit(algo.update)(state, batch)

The RL algorithms (`reinforce`, `ppo`, `grpo`, `dpo`), `supervised` (a loss minimised by
gradient descent: the VAE's and the autoregressive models' training) and the generative
families' own pairs (`diffusion`: supervised with an EMA of the parameters;
`flow_matching`: the same with a frozen reflow teacher; `gan`: generator and discriminator
with their own optimisers; `contrastive_divergence`: an energy model with its replay
buffer of negatives in the state) share one state protocol, written down in
`rlgen.algorithms.base`. Each RL algorithm's loss is public too (`reinforce_loss`,
`ppo_loss`, `grpo_loss`, `dpo_loss`, `dpo_sequence_loss`) for users who own their
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
from rlgen.algorithms.diffusion import DiffusionState, diffusion
from rlgen.algorithms.dpo import METRICS as DPO_METRICS
from rlgen.algorithms.dpo import DPOConfig, DPOState, dpo, dpo_loss, dpo_sequence_loss
from rlgen.algorithms.energy import METRICS as ENERGY_METRICS
from rlgen.algorithms.energy import EnergyState, contrastive_divergence
from rlgen.algorithms.flow import METRICS as FLOW_METRICS
from rlgen.algorithms.flow import FlowState, flow_matching
from rlgen.algorithms.gan import GANState, gan
from rlgen.algorithms.grpo import METRICS as GRPO_METRICS
from rlgen.algorithms.grpo import GRPOConfig, GRPOState, grpo, grpo_loss
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
    "DPO_METRICS",
    "ENERGY_METRICS",
    "FLOW_METRICS",
    "GRPO_METRICS",
    "PPO_METRICS",
    "REINFORCE_METRICS",
    "STATE_FIELDS",
    "Algorithm",
    "DPOConfig",
    "DPOState",
    "DiffusionState",
    "EnergyState",
    "FlowState",
    "GANState",
    "GRPOConfig",
    "GRPOState",
    "PPOConfig",
    "PPOState",
    "REINFORCEConfig",
    "REINFORCEState",
    "SupervisedState",
    "TokenCategorical",
    "apply_gradients",
    "check_state",
    "contrastive_divergence",
    "diffusion",
    "dpo",
    "dpo_loss",
    "dpo_sequence_loss",
    "ema_update",
    "evaluate_policy",
    "flow_matching",
    "gan",
    "grpo",
    "grpo_loss",
    "per_model",
    "ppo",
    "ppo_loss",
    "reference",
    "reinforce",
    "reinforce_loss",
    "supervised",
]
