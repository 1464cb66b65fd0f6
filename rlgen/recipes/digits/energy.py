"""``rlgen digits energy``: an energy-based model of the 8x8 digits, trained by persistent
contrastive divergence with short-run SGLD negatives from a replay buffer.

The file reads top to bottom:

1. **The settings** (`EnergyDigitsConfig`, the ``rlgen digits energy`` options), nesting
   the SGLD and buffer settings of `rlgen.generative.EnergyConfig` (the chains' bounds
   are pinned to the digits' [-1, 1] scale).
2. **The model**: `rlgen.models.energy.MLPEnergy`, a swish MLP ``[B, 64] -> [B]``.
3. **Sampling**: the model's samples are its persistent chains: ``num_samples`` chains of
   the replay buffer continued ``sgld_steps`` SGLD steps on the current energy
   (`rlgen.trainers.energy.EnergyTrainer.sample_negatives`, with no restarts from noise).
   Before training the buffer is uniform noise, so the "before" samples are noise run
   through the untrained energy.
4. **Training** (`EnergyTrainer`): each step draws ``batch_size`` chains from the buffer
   (``reinit_prob`` restarted from uniform noise), runs ``sgld_steps`` SGLD steps
   (``x <- clip(x - step_size * grad E(x) + noise_scale * eps, -1, 1)``, the JEM
   settings: step 1, noise 0.01, 20 steps; Grathwohl et al. 2019, arXiv 1912.03263),
   takes one Adam step on ``mean E(data) - mean E(chains) + alpha (mean E(data)^2 +
   mean E(chains)^2)`` (Du and Mordatch 2019, arXiv 1903.08689, whose Adam has
   ``beta1 = 0``) and writes the chains back.
5. **Evaluation** (`rlgen.recipes.digits.finish`): the Fréchet distance in the digit
   classifier's features to the held-out digits, before and after, and the floor of real
   digits.

The digits work directly: no fallback to two moons was needed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from rlgen import _checks
from rlgen.generative.energy import EnergyConfig
from rlgen.models.energy import ACTIVATIONS, MLPEnergy
from rlgen.recipes import check_pinned, nested
from rlgen.recipes.digits import epoch_batches, finish, load
from rlgen.trainers.energy import EnergyTrainer

DIM = 64  # 8x8 pixels, flattened, on [-1, 1]


# ----------------------------------------------------------------------------------------
# 1. The settings
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EnergyDigitsConfig:
    """Settings of ``rlgen digits energy``.

    Attributes:
      seed: seeds the model, the buffer, the chains and the batch order.
      hidden: width of the energy MLP's hidden layers.
      depth: number of hidden layers.
      activation: the MLP's (smooth) activation.
      energy: SGLD, replay buffer and regulariser settings (the chains' bounds
        ``init_low``/``init_high`` are pinned to the digits' [-1, 1]).
      steps: training steps.
      batch_size: digits per step (and chains per step).
      learning_rate: Adam's step size (``beta1 = 0``, Du and Mordatch 2019).
      num_samples: samples drawn before and after training for the figures (at most
        ``energy.buffer_size``).
    """

    seed: int = 0
    # model
    hidden: int = 256
    depth: int = 2
    activation: str = _checks.option("swish", ACTIVATIONS)
    # training
    energy: EnergyConfig = nested(
        EnergyConfig(
            sgld_steps=20, step_size=1.0, noise_scale=0.01, buffer_size=10_000,
            reinit_prob=0.05, alpha=0.1, init_low=-1.0, init_high=1.0,
        ),
        pinned=("init_low", "init_high"),
    )
    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 3e-4
    # evaluation
    num_samples: int = 1000

    def __post_init__(self):
        _checks.check_int(self.seed, "seed", low=0)
        _checks.check_positive_int(self.hidden, "hidden")
        _checks.check_positive_int(self.depth, "depth")
        _checks.check_options(self)
        check_pinned(self)
        _checks.check_int(self.steps, "steps", low=0)
        _checks.check_positive_int(self.batch_size, "batch_size")
        _checks.check_range(self.learning_rate, "learning_rate", 0.0, low_open=True)
        _checks.check_int(self.num_samples, "num_samples", low=2)
        for name in ("batch_size", "num_samples"):
            if getattr(self, name) > self.energy.buffer_size:
                raise ValueError(
                    f"`{name}` {getattr(self, name)} exceeds `buffer_size` "
                    f"{self.energy.buffer_size} (chains are distinct buffer entries)"
                )


# ----------------------------------------------------------------------------------------
# 2. The model and its trainer
# ----------------------------------------------------------------------------------------


def build_trainer(config: EnergyDigitsConfig, mesh=None) -> EnergyTrainer:
    """The energy MLP and its trainer (Adam with ``beta1 = 0``)."""
    model = MLPEnergy(
        DIM, (config.hidden,) * config.depth, activation=config.activation,
        rngs=nnx.Rngs(config.seed),
    )
    tx = optax.adam(config.learning_rate, b1=0.0, b2=0.999)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return EnergyTrainer(model, optimizer, config.energy, seed=config.seed, mesh=mesh)


# ----------------------------------------------------------------------------------------
# 3. Sampling: the persistent chains, continued with the current energy
# ----------------------------------------------------------------------------------------


def draw_samples(trainer: EnergyTrainer, num_samples: int, seed: int) -> np.ndarray:
    """``[num_samples, 64]`` samples on [-1, 1]: buffer chains run ``sgld_steps`` steps,
    none restarted from noise (the same key for a given seed, so a resumed run draws the
    same samples)."""
    key = jax.random.fold_in(jax.random.key(seed), 1)
    return np.asarray(trainer.sample_negatives(num_samples, key, reinit_prob=0.0))


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


def run(config: EnergyDigitsConfig, folder) -> dict[str, Any]:
    """Trains the energy model on the digits in ``folder`` and judges its samples.

    Returns `rlgen.recipes.digits.finish`'s results (``frechet_before``,
    ``frechet_after``, ``frechet_floor``, ``confidence_before/after``, ``seconds``).
    """
    start = time.perf_counter()
    data = load()
    trainer = build_trainer(config, folder.mesh)
    before = draw_samples(trainer, config.num_samples, config.seed)  # the untrained model

    batches = epoch_batches(data.train_x, None, config.batch_size, config.seed)
    folder.phase(
        "train", trainer, batches, config.steps, show=("loss", "energy_pos", "energy_neg")
    )

    samples = draw_samples(trainer, config.num_samples, config.seed)
    return finish(
        folder, family="energy", samples=samples, before=before,
        seconds=time.perf_counter() - start,
    )
