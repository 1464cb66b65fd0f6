"""rlgen: reinforcement learning and preference optimisation for generative models in JAX.

Layers: `rlgen.ops` (pure array math) -> `rlgen.algorithms` (init/update pairs) ->
`rlgen.trainers` (thin Flax NNX adapters). Configs and reward classes are re-exported
here, flat, as the reference guide imports them.
"""

from rlgen import algorithms, callbacks, models, ops, rewards, trainers
from rlgen.algorithms import DPOConfig, GRPOConfig, PPOConfig, REINFORCEConfig
from rlgen.rewards import (
    ClippedReward,
    CompositeReward,
    ConstantReward,
    RewardFunction,
    ScaledReward,
    ThresholdReward,
)
from rlgen.trainers import (
    AutoregressiveConfig,
    AutoregressiveTrainer,
    DPOTrainer,
    GRPOTrainer,
    PPOTrainer,
    REINFORCETrainer,
    Trainer,
)

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveConfig",
    "AutoregressiveTrainer",
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "DPOConfig",
    "DPOTrainer",
    "GRPOConfig",
    "GRPOTrainer",
    "PPOConfig",
    "PPOTrainer",
    "REINFORCEConfig",
    "REINFORCETrainer",
    "RewardFunction",
    "ScaledReward",
    "ThresholdReward",
    "Trainer",
    "__version__",
    "algorithms",
    "callbacks",
    "models",
    "ops",
    "rewards",
    "trainers",
]
