"""`rlgen.trainers`: the `Trainer` base and its thin Flax NNX adapters.

    Trainer (base)                 one init/update pair, write-back, callbacks, checkpoints
    ├── VAETrainer                 ELBO, beta, KL annealing, free bits; reconstruct, sample
    ├── GANTrainer                 two models and optimisers, four losses, R1, d_steps; sample
    ├── DiffusionTrainer           noise schedules, 3 predictions, min-SNR, EMA; DDPM/DDIM sample
    ├── FlowTrainer                flow matching, OT-CFM, rectified flow (reflow); ODE sample
    ├── EnergyTrainer              contrastive divergence, SGLD, replay buffer; sample_negatives
    ├── AutoregressiveTrainer      teacher forcing, label smoothing, scheduled sampling; generate
    └── RL trainers                adapters over `rlgen.algorithms`
        ├── REINFORCETrainer
        ├── PPOTrainer
        ├── GRPOTrainer
        ├── DPOTrainer
        └── denoising RL           diffusion and flow models (`rlgen.trainers.denoising_rl`)
            ├── DDPOTrainer        DDPO, Flow-GRPO, Flow-GRPO-Fast/MixGRPO, GRPO-Guard
            ├── NFTTrainer         DiffusionNFT (forward process)
            ├── DRaFTTrainer       DRaFT-K, DRaFT-LV, ReFL (reward backpropagation)
            └── DiffusionDPOTrainer  Diffusion-DPO (preference pairs)

Every trainer is an adapter over one pure `rlgen.algorithms.Algorithm`; a new one defines
`Trainer.compute_loss` or `Trainer.make_algorithm` (see `Trainer`). What a model must
provide to the RL trainers is documented once, in `rlgen.trainers.protocol`.
"""

from rlgen.trainers import protocol
from rlgen.trainers.autoregressive import AutoregressiveConfig, AutoregressiveTrainer
from rlgen.trainers.base import Trainer
from rlgen.trainers.denoising_rl import (
    DDPOTrainer,
    DiffusionDPOTrainer,
    DRaFTTrainer,
    NFTTrainer,
)
from rlgen.trainers.diffusion import DiffusionConfig, DiffusionTrainer
from rlgen.trainers.energy import EnergyConfig, EnergyTrainer
from rlgen.trainers.flow import FlowConfig, FlowTrainer
from rlgen.trainers.gan import GANConfig, GANTrainer
from rlgen.trainers.rl import DPOTrainer, GRPOTrainer, PPOTrainer, REINFORCETrainer
from rlgen.trainers.vae import VAEConfig, VAETrainer

__all__ = [
    "DDPOTrainer",
    "DRaFTTrainer",
    "DiffusionDPOTrainer",
    "NFTTrainer",
    "AutoregressiveConfig",
    "AutoregressiveTrainer",
    "DPOTrainer",
    "DiffusionConfig",
    "DiffusionTrainer",
    "EnergyConfig",
    "EnergyTrainer",
    "FlowConfig",
    "FlowTrainer",
    "GANConfig",
    "GANTrainer",
    "GRPOTrainer",
    "PPOTrainer",
    "REINFORCETrainer",
    "Trainer",
    "VAEConfig",
    "VAETrainer",
    "protocol",
]
