"""`rlgen digits gan`: an unconditional GAN on the 8x8 digits, judged by the digit classifier.

The file reads top to bottom:

1. **The settings** (`GANDigitsConfig`, the ``rlgen digits gan`` options), nesting the
   GAN's own (`rlgen.generative.gan.GANConfig`); its docstring says why these values.
2. **The models**: `rlgen.models.gan.MLPGenerator` (noise to 64 values in (-1, 1),
   tanh) and `MLPDiscriminator` (leaky ReLU, no normalisation, as R1 wants), each with its
   own Adam.
3. **Training** (`rlgen.trainers.gan.GANTrainer`): ``d_steps`` discriminator steps and
   one generator step per minibatch of the 1,437 training digits.
4. **Evaluation** (`rlgen.recipes.digits.finish`): the Fréchet distance, in the digit
   classifier's feature space, of the untrained and the trained generator's samples to
   the 360 held-out digits, next to the training split's own distance (the floor).

The run folder (`rlgen.cli.RunFolder`) adds the progress bar, ``metrics.jsonl``,
checkpoints (``checkpoints/train``, from which ``--resume`` continues exactly),
``samples.png``, ``samples.npz`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from rlgen.generative.gan import GANConfig
from rlgen.models.gan import MLPDiscriminator, MLPGenerator
from rlgen.recipes import check_pinned, digits, nested
from rlgen.trainers.gan import GANTrainer

#: Flattened 8x8 digits.
DIM = 64


# ----------------------------------------------------------------------------------------
# 1. The settings
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GANDigitsConfig:
    """Settings of the digits GAN.

    GANs on 1,437 images are fiddly; these defaults were chosen by measurement (Fréchet
    distance of 1,000 samples, floor about 1.7):

    * the non-saturating loss with an R1 penalty (``r1_weight`` 0.5) on real digits: on
      so few images the discriminator otherwise memorises the training set (its output
      on real digits climbs, ``d_real``) and the samples get worse after ~4,000 steps
      (FD 4.2 -> 4.7 from step 4,000 to 6,000 without R1; 2.15 with it at 6,000); R1
      is the penalty under which this game provably converges (Mescheder et al. 2018).
      Hinge with R1 does as well (2.25 against 2.28 for this loss, both at 2e-4);
      WGAN-GP needs several critic steps per step and is slower for the same quality;
    * one discriminator step per generator step (``d_steps`` 1): with R1 the
      discriminator needs no head start, and each extra step costs a full update;
    * Adam with ``beta1`` 0.5 (Radford et al. 2016) and 4e-4 for both models: twice the
      DCGAN rate reaches the same quality in fewer steps (2.15 vs 2.28 at 6,000 steps);
    * an average of the generator (``ema_decay`` 0.999, warmed up): the raw generator
      oscillates around the equilibrium; its average reaches 2.15 where the last
      iterate has 2.7.

    Attributes:
      seed: seeds the models, the noise and the batch order.
      latent_dim: the generator's noise size.
      hidden: the width of each hidden layer of both networks.
      depth: hidden layers of each network.
      steps: training steps (each: ``d_steps`` discriminator updates, one generator
        update).
      batch_size: real digits per step (and generated ones per discriminator update).
      generator_lr: the generator's Adam step size.
      discriminator_lr: the discriminator's Adam step size.
      beta1: Adam's first-moment decay, both models.
      num_samples: samples drawn before and after training for the quality figures.
      gan: the GAN's settings (loss, penalties, ``d_steps``, the generator average).
    """

    seed: int = 0
    latent_dim: int = 32
    hidden: int = 256
    depth: int = 2
    steps: int = 6000
    batch_size: int = 64
    generator_lr: float = 4e-4
    discriminator_lr: float = 4e-4
    beta1: float = 0.5
    num_samples: int = 1000
    gan: GANConfig = nested(
        GANConfig(loss="non_saturating", r1_weight=0.5, d_steps=1, ema_decay=0.999),
        pinned=("data_range",),
    )

    def __post_init__(self):
        check_pinned(self)


# ----------------------------------------------------------------------------------------
# 2. The models
# ----------------------------------------------------------------------------------------


def build_trainer(config: GANDigitsConfig, mesh=None) -> GANTrainer:
    """The generator, the discriminator, their optimisers and the trainer."""
    hidden = (config.hidden,) * config.depth
    generator = MLPGenerator(config.latent_dim, DIM, hidden=hidden, rngs=nnx.Rngs(config.seed))
    discriminator = MLPDiscriminator(DIM, hidden=hidden, rngs=nnx.Rngs(config.seed + 1))

    def adam(model, lr):
        return nnx.Optimizer(model, optax.adam(lr, b1=config.beta1), wrt=nnx.Param)

    return GANTrainer(
        {"generator": generator, "discriminator": discriminator},
        {
            "generator": adam(generator, config.generator_lr),
            "discriminator": adam(discriminator, config.discriminator_lr),
        },
        config.gan,
        seed=config.seed,
        mesh=mesh,
    )


# ----------------------------------------------------------------------------------------
# The run: 3. training and 4. evaluation
# ----------------------------------------------------------------------------------------


def run(config: GANDigitsConfig, folder) -> dict[str, Any]:
    """Trains the GAN in ``folder`` and judges its samples; returns the results.

    The results are `rlgen.recipes.digits.finish`'s (``frechet_before``,
    ``frechet_after``, ``frechet_floor``, ...) and ``steps``. The same noise is drawn
    before and after training.
    """
    start = time.perf_counter()
    data = digits.load()
    trainer = build_trainer(config, folder.mesh)
    key = jax.random.key(config.seed)
    before = np.asarray(trainer.sample(config.num_samples, key))  # the untrained generator

    folder.phase(
        "train",
        trainer,
        digits.epoch_batches(data.train_x, None, config.batch_size, config.seed),
        config.steps,
        show=("d_loss", "g_loss", "d_real", "d_fake"),
    )
    samples = np.asarray(trainer.sample(config.num_samples, key))  # the generator's average
    return digits.finish(
        folder,
        family="gan",
        samples=samples,
        before=before,
        seconds=time.perf_counter() - start,
        extra={"steps": trainer.step},
    )
