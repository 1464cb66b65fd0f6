"""rlgen: reinforcement learning and preference optimisation for generative models in JAX.

Layers: `rlgen.ops` (pure array math) -> `rlgen.algorithms` (init/update pairs) ->
`rlgen.trainers` (thin Flax NNX adapters). Configs, trainers and reward classes are
re-exported here, flat:

    from rlgen import GRPOConfig, GRPOTrainer, ThresholdReward

The re-exports load on first use, so ``import rlgen.ops`` (or ``rlgen.algorithms``) costs
only JAX and optax: Flax, Orbax and rich are imported by the layers that need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it (one table: `__all__`, `__getattr__` and `dir` use it).
_EXPORTS = {
    "REINFORCEConfig": "rlgen.algorithms",
    "PPOConfig": "rlgen.algorithms",
    "GRPOConfig": "rlgen.algorithms",
    "DPOConfig": "rlgen.algorithms",
    "DDPOConfig": "rlgen.algorithms",
    "NFTConfig": "rlgen.algorithms",
    "DRaFTConfig": "rlgen.algorithms",
    "DiffusionDPOConfig": "rlgen.algorithms",
    "RewardFunction": "rlgen.rewards",
    "ConstantReward": "rlgen.rewards",
    "CompositeReward": "rlgen.rewards",
    "ThresholdReward": "rlgen.rewards",
    "ScaledReward": "rlgen.rewards",
    "ClippedReward": "rlgen.rewards",
    "ClassifierReward": "rlgen.rewards",
    "Trainer": "rlgen.trainers",
    "REINFORCETrainer": "rlgen.trainers",
    "PPOTrainer": "rlgen.trainers",
    "GRPOTrainer": "rlgen.trainers",
    "DPOTrainer": "rlgen.trainers",
    "DDPOTrainer": "rlgen.trainers",
    "NFTTrainer": "rlgen.trainers",
    "DRaFTTrainer": "rlgen.trainers",
    "DiffusionDPOTrainer": "rlgen.trainers",
    "AutoregressiveConfig": "rlgen.trainers",
    "AutoregressiveTrainer": "rlgen.trainers",
    "VAEConfig": "rlgen.trainers",
    "VAETrainer": "rlgen.trainers",
    "GANConfig": "rlgen.trainers",
    "GANTrainer": "rlgen.trainers",
    "DiffusionConfig": "rlgen.trainers",
    "DiffusionTrainer": "rlgen.trainers",
    "FlowConfig": "rlgen.trainers",
    "FlowTrainer": "rlgen.trainers",
    "EnergyConfig": "rlgen.trainers",
    "EnergyTrainer": "rlgen.trainers",
    "enable_compilation_cache": "rlgen.compilation",
}
_SUBMODULES = (
    "algorithms", "callbacks", "checkpoints", "compilation", "datasets", "generative", "models",
    "ops", "quality", "rewards", "trainers",
)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"rlgen.{name}")
    else:
        raise AttributeError(f"module 'rlgen' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
