"""`rlgen.trainers`: the `Trainer` base and its thin Flax NNX adapters.

    Trainer (base)                 one init/update pair, write-back, callbacks, checkpoints
    ├── AutoregressiveTrainer      teacher forcing, label smoothing, scheduled sampling
    └── RL trainers                adapters over `rlgen.algorithms`
        ├── REINFORCETrainer
        ├── PPOTrainer
        ├── GRPOTrainer
        └── DPOTrainer

Every trainer is an adapter over one pure `rlgen.algorithms.Algorithm`; a new one defines
`Trainer.compute_loss` or `Trainer.make_algorithm` (see `Trainer`). What a model must
provide to the RL trainers is documented once, in `rlgen.trainers.protocol`.
"""

from rlgen.trainers import protocol
from rlgen.trainers.autoregressive import AutoregressiveConfig, AutoregressiveTrainer
from rlgen.trainers.base import Trainer
from rlgen.trainers.rl import DPOTrainer, GRPOTrainer, PPOTrainer, REINFORCETrainer

__all__ = [
    "AutoregressiveConfig",
    "AutoregressiveTrainer",
    "DPOTrainer",
    "GRPOTrainer",
    "PPOTrainer",
    "REINFORCETrainer",
    "Trainer",
    "protocol",
]
