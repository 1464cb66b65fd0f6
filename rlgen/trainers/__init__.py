"""`rlgen.trainers`: the `Trainer` base and its thin Flax NNX adapters.

    Trainer (base)                 optimizer, compiled step, callbacks, checkpoints, fit
    ├── AutoregressiveTrainer      teacher forcing, label smoothing, scheduled sampling
    └── RL trainers                adapters over `rlgen.algorithms`
        ├── REINFORCETrainer
        ├── PPOTrainer
        ├── GRPOTrainer
        └── DPOTrainer

What a model must provide is documented once, in `rlgen.trainers.protocol`.
"""

from rlgen.trainers import protocol
from rlgen.trainers.autoregressive import AutoregressiveConfig, AutoregressiveTrainer
from rlgen.trainers.base import SupervisedState, Trainer
from rlgen.trainers.rl import DPOTrainer, GRPOTrainer, PPOTrainer, REINFORCETrainer

__all__ = [
    "AutoregressiveConfig",
    "AutoregressiveTrainer",
    "DPOTrainer",
    "GRPOTrainer",
    "PPOTrainer",
    "REINFORCETrainer",
    "SupervisedState",
    "Trainer",
    "protocol",
]
