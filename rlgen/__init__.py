"""rlgen: reinforcement learning and preference optimisation for generative models in JAX.

Layers: `rlgen.ops` (pure array math) -> `rlgen.algorithms` (init/update pairs) ->
`rlgen.trainers` (thin Flax NNX adapters). Configs and reward classes are re-exported
here, flat, as the reference guide imports them.
"""

from rlgen import algorithms, ops, rewards
from rlgen.algorithms import DPOConfig, GRPOConfig, PPOConfig, REINFORCEConfig
from rlgen.rewards import (
    ClippedReward,
    CompositeReward,
    ConstantReward,
    RewardFunction,
    ScaledReward,
    ThresholdReward,
)

__version__ = "0.1.0"

__all__ = [
    "ClippedReward",
    "CompositeReward",
    "ConstantReward",
    "DPOConfig",
    "GRPOConfig",
    "PPOConfig",
    "REINFORCEConfig",
    "RewardFunction",
    "ScaledReward",
    "ThresholdReward",
    "__version__",
    "algorithms",
    "ops",
    "rewards",
]
