"""``rlgen gan-reinforce``: a digit GAN's generator fine-tuned with REINFORCE as a Gaussian
policy, the discriminator's score being the reward (the reference guide's "GAN generator
as policy + REINFORCE", made real).

The file reads top to bottom:

1. **The settings** (`GANReinforceConfig`, the ``rlgen gan-reinforce`` options), nesting
   the GAN's (`rlgen.generative.gan.GANConfig`) and REINFORCE's
   (`rlgen.algorithms.REINFORCEConfig`).
2. **Pretraining**: the digits GAN of ``rlgen digits gan`` (`rlgen.recipes.digits.gan`:
   non-saturating loss, R1, a moving average of the generator) trained for
   `pretrain_steps`; once finished it is reused, never retrained, by a resumed run. The
   pre-RL generator is that moving average (what ``rlgen digits gan`` samples from).
3. **The policy**: `rlgen.models.gaussian.GaussianGeneratorPolicy.from_generator`,
   ``pi(x | z) = N(G(z), diag(std^2))`` with ``G`` a copy of the pre-RL generator and a
   learned per-pixel ``log std`` (initially `init_log_std`).
4. **The reward**: `discriminator_reward`, the discriminator's raw output (its logit of
   "real": higher = more realistic) on the draw clipped to the data range [-1, 1], minus
   a KL penalty to the pre-RL policy, ``r = D(x) - kl_coeff log(pi(x | z) / pi_ref(x | z))``
   (the KL-regularised reward of Ziegler et al. 2019, arXiv 1909.08593). For a
   discriminator at its optimum ``D = log(p_data / p_G)``, the optimum of this objective
   with ``kl_coeff = 1`` is the tilt ``p_G exp(D) = p_data`` (the reading of Che et al.
   2020, arXiv 2003.06060); with a per-noise Gaussian policy only a local version of that
   tilt is reachable, and smaller coefficients move further. The discriminator is
   **frozen** by default (``refit_every = 0``); with ``refit_every = k > 0`` it is refit
   every ``k`` REINFORCE steps by one step of its GAN objective (R1 included) on real
   digits against the policy's draws, and ``calibrate_steps`` such steps can be taken
   against the pre-RL policy before REINFORCE starts. Measured (seed 0, 1,500
   pretraining steps, Fréchet distance 3.69 before): a frozen discriminator without the
   penalty is exploited (its score rises, the distance climbs to 13.6 in 300 steps);
   refitting it every step (the adversarial game, with REINFORCE as the generator's
   gradient) made the distance worse too (4.00 after 300 steps, 4.07 after 1,000);
   with the penalty (0.1 to 0.3, ``init_log_std`` -1) the score rises and the distance
   falls a little (3.62 to 3.65). Calibrating the discriminator first did not help.
   The defaults (seed 0, 35 s on 2 shared CPU cores at load 4 to 6): score -0.286 ->
   -0.249, Fréchet distance 3.69 -> 3.66 (floor 1.70): the score rises clearly, the
   distance improves by under 1%: a frozen discriminator is a weak teacher for a
   generator already near its equilibrium.
5. **REINFORCE** (`rlgen.trainers.REINFORCETrainer`) on one-step batches: the guide's
   ``{"observations": noise, "actions": generated, "rewards": rewards}`` with
   ``rewards [B]``, the policy's ``log_prob(actions)`` ``[B]``; the mean baseline and
   whitened returns of `REINFORCEConfig` make the update invariant to the reward's
   offset and scale.
6. **Evaluation**, on `num_samples` fixed noise vectors, before and after: the
   discriminator's (the frozen one's) mean score of the generator's output ``G(z)`` (the
   policy's mean, deterministic) and of the policy's draws, and the Fréchet distance of
   ``G(z)`` to the held-out digits in the digit classifier's features
   (`rlgen.quality.digit_quality`, via `rlgen.recipes.digits.finish`).

The run folder (`rlgen.cli.RunFolder`) adds the progress bars, ``metrics.jsonl``
(``phase`` ``pretrain`` and ``reinforce``), ``reward_curve.png``, checkpoints, and this
recipe writes ``samples_before.png``, ``samples_after.png``, ``samples_before.npz`` and
``samples_after.npz`` (``images [N, 8, 8]`` on the 0..16 scale) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlgen import _checks, datasets
from rlgen.algorithms import REINFORCEConfig
from rlgen.generative import gan as gan_lib
from rlgen.generative.gan import GANConfig
from rlgen.models.gan import MLPDiscriminator, MLPGenerator
from rlgen.models.gaussian import GaussianGeneratorPolicy
from rlgen.recipes import check_pinned, digits, nested
from rlgen.recipes.digits import gan as digits_gan
from rlgen.trainers import REINFORCETrainer

DATA_RANGE = (-1.0, 1.0)

# ----------------------------------------------------------------------------------------
# 1. The settings
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GANReinforceConfig:
    """Settings of the GAN + REINFORCE recipe (the ``rlgen gan-reinforce`` options).

    Attributes:
      seed: seeds the models, the noise, the batches and the draws.
      latent_dim: the generator's noise size.
      hidden: the width of each hidden layer of both networks.
      depth: hidden layers of each network.
      gan: the GAN's settings (those of ``rlgen digits gan``).
      pretrain_steps: GAN training steps before REINFORCE.
      pretrain_batch_size: real digits per GAN step.
      pretrain_lr: Adam's step size of both GAN models.
      rl_steps: REINFORCE updates.
      rl_batch_size: noise vectors (one draw each) per REINFORCE update.
      learning_rate: Adam's step size for REINFORCE (generator and log std).
      init_log_std: the policy's initial log standard deviation per pixel.
      refit_every: 0 keeps the discriminator frozen; k > 0 refits it every k REINFORCE
        steps (one step of its GAN loss on real digits against the policy's draws).
      calibrate_steps: discriminator steps against the pre-RL policy's draws (the
        policy frozen) before REINFORCE starts.
      kl_coeff: the weight beta of the KL penalty to the pre-RL policy in the reward,
        ``r = D(x) - beta log(pi(x | z) / pi_ref(x | z))``; 0 turns it off.
      reinforce: REINFORCE's settings (the guide's entropy_coeff 0.01; the mean baseline).
      num_samples: noise vectors of the before and after figures.
    """

    seed: int = 0
    latent_dim: int = 32
    hidden: int = 256
    depth: int = 2
    gan: GANConfig = nested(
        GANConfig(loss="non_saturating", r1_weight=0.5, d_steps=1, ema_decay=0.999),
        pinned=("data_range", "max_grad_norm"),
    )
    pretrain_steps: int = 1500
    pretrain_batch_size: int = 64
    pretrain_lr: float = 4e-4
    rl_steps: int = 1500
    rl_batch_size: int = 512
    learning_rate: float = 1e-4
    init_log_std: float = -1.0
    refit_every: int = 0
    calibrate_steps: int = 0
    kl_coeff: float = 0.2
    reinforce: REINFORCEConfig = nested(REINFORCEConfig(entropy_coeff=0.01, baseline="mean"))
    num_samples: int = 1000

    def __post_init__(self):
        _checks.check_int(self.seed, "seed")
        for name in ("latent_dim", "hidden", "depth", "pretrain_steps", "pretrain_batch_size",
                     "rl_steps", "rl_batch_size"):
            _checks.check_positive_int(getattr(self, name), name)
        _checks.check_positive_int(self.num_samples, "num_samples", low=2)
        _checks.check_int(self.refit_every, "refit_every", low=0)
        _checks.check_int(self.calibrate_steps, "calibrate_steps", low=0)
        for name in ("pretrain_lr", "learning_rate"):
            _checks.check_range(getattr(self, name), name, 0.0, low_open=True)
        _checks.check_range(self.init_log_std, "init_log_std", -20.0, 5.0)
        _checks.check_range(self.kl_coeff, "kl_coeff", 0.0)
        if not isinstance(self.gan, GANConfig):
            raise TypeError(f"`gan` must be a GANConfig, got {type(self.gan).__name__}")
        if not isinstance(self.reinforce, REINFORCEConfig):
            raise TypeError(
                f"`reinforce` must be a REINFORCEConfig, got {type(self.reinforce).__name__}"
            )
        check_pinned(self)


# ----------------------------------------------------------------------------------------
# 2. Pretraining: the digits GAN
# ----------------------------------------------------------------------------------------


def build_gan_trainer(config: GANReinforceConfig, mesh=None):
    """The GAN of ``rlgen digits gan`` with this recipe's sizes (`digits_gan.build_trainer`)."""
    return digits_gan.build_trainer(
        digits_gan.GANDigitsConfig(
            seed=config.seed,
            latent_dim=config.latent_dim,
            hidden=config.hidden,
            depth=config.depth,
            batch_size=config.pretrain_batch_size,
            generator_lr=config.pretrain_lr,
            discriminator_lr=config.pretrain_lr,
            gan=config.gan,
        ),
        mesh,
    )


def averaged_generator(trainer) -> MLPGenerator:
    """The GAN trainer's generator holding its moving average (the pre-RL generator)."""
    generator = trainer.model["generator"]
    if trainer.state.ema_params is not None:
        state = nnx.state(generator, nnx.Param)
        nnx.replace_by_pure_dict(state, trainer.state.ema_params)
        nnx.update(generator, state)
    return generator


# ----------------------------------------------------------------------------------------
# 4. The reward
# ----------------------------------------------------------------------------------------


def discriminator_reward(discriminator: MLPDiscriminator, images):
    """The discriminator's raw score of ``images [B, D]`` clipped to [-1, 1]: ``[B]``.

    ``r(x) = D(clip(x, -1, 1))``: higher = judged more realistic (for the non-saturating
    loss, the logit of "real"). The clip keeps a Gaussian draw within the data range the
    discriminator was trained on (the action itself, scored by the policy, is the
    unclipped draw). Jittable.

    Example:
      >>> d = MLPDiscriminator(4, hidden=(8,), rngs=nnx.Rngs(0))
      >>> x = jnp.full((2, 4), 3.0)
      >>> bool(jnp.all(discriminator_reward(d, x) == d(jnp.ones((2, 4)))))
      True
    """
    return discriminator(jnp.clip(images, *DATA_RANGE))


# ----------------------------------------------------------------------------------------
# 5. REINFORCE: one-step batches from the current policy
# ----------------------------------------------------------------------------------------


@nnx.jit
def collect(policy, reference, discriminator, noise, key, kl_coeff) -> dict:
    """One REINFORCE batch (the guide's loop body): draws of the policy and their rewards,
    ``D(clip(x)) - kl_coeff (log pi(x | z) - log pi_ref(x | z))``."""
    dist = policy(noise)
    generated = dist.sample(seed=key)
    log_ratio = dist.log_prob(generated) - reference(noise).log_prob(generated)
    rewards = discriminator_reward(discriminator, generated) - kl_coeff * log_ratio
    return {"observations": noise, "actions": generated, "rewards": rewards}


def rl_batches(policy, reference, discriminator, config: GANReinforceConfig, refit=None):
    """``batches(step)`` for `rlgen.cli.RunFolder.phase`: the noise and draws of ``(seed,
    step)``, each batch collected from the policy as it is when drawn (the reward's
    KL term against ``reference``, the pre-RL policy); with ``refit_every`` the
    discriminator is refit (``refit(index)``, `refitter`) before every k-th collection."""

    def batches(step: int):
        while True:
            key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
            noise_key, draw_key = jax.random.split(key)
            noise = jax.random.normal(noise_key, (config.rl_batch_size, config.latent_dim))
            if config.refit_every and step % config.refit_every == 0:
                refit(config.calibrate_steps + step // config.refit_every)
            yield collect(policy, reference, discriminator, noise, draw_key, config.kl_coeff)
            step += 1

    return batches


# ----------------------------------------------------------------------------------------
# 6. Evaluation
# ----------------------------------------------------------------------------------------


@nnx.jit
def _scores(policy, discriminator, noise, key):
    mean = policy.mean(noise)
    draws = policy.sample(noise, key)
    return mean, discriminator_reward(discriminator, mean), discriminator_reward(
        discriminator, draws
    )


def judge(policy, discriminator, noise, key) -> dict[str, Any]:
    """The generator's output ``G(noise)`` and the frozen discriminator's mean scores."""
    mean, mean_score, draw_score = _scores(policy, discriminator, noise, key)
    return {
        "images": np.asarray(mean),
        "disc_score": float(jnp.mean(mean_score)),
        "disc_score_draws": float(jnp.mean(draw_score)),
    }


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


def run(config: GANReinforceConfig, folder) -> dict[str, Any]:
    """Pretrains the GAN, fine-tunes its generator with REINFORCE, and compares, in ``folder``.

    Returns ``disc_score_before``/``disc_score_after`` (the frozen pretrained
    discriminator's mean score of ``G(z)``), ``disc_score_draws_before``/``_after`` (of the
    policy's draws), ``frechet_before``/``frechet_after`` (of ``G(z)``) with
    ``frechet_floor``, ``confidence_before``/``_after``, ``pretrain_seconds``,
    ``rl_seconds`` and ``seconds``.
    """
    start = time.perf_counter()
    data = digits.load()

    # 2. Pretraining; a resumed run restores it.
    gan_trainer = build_gan_trainer(config, folder.mesh)
    folder.phase(
        "pretrain",
        gan_trainer,
        digits.epoch_batches(data.train_x, None, config.pretrain_batch_size, config.seed),
        config.pretrain_steps,
        show=("d_loss", "g_loss", "d_real", "d_fake"),
        results=lambda: {"pretrain_seconds": round(time.perf_counter() - start, 1)},
    )

    # 3. The policy: the averaged generator as a Gaussian's mean; a frozen copy of the
    # discriminator judges the figures, the reward's may be refit.
    generator = averaged_generator(gan_trainer)
    policy = GaussianGeneratorPolicy.from_generator(generator, init_log_std=config.init_log_std)
    judge_d = nnx.clone(gan_trainer.model["discriminator"])
    reward_d = nnx.clone(judge_d)
    trainer = REINFORCETrainer(
        policy,
        nnx.Optimizer(policy, optax.adam(config.learning_rate), wrt=nnx.Param),
        config.reinforce,
        seed=config.seed,
        mesh=folder.mesh,
    )
    eval_key = jax.random.key(config.seed + 3)
    noise = jax.random.normal(eval_key, (config.num_samples, config.latent_dim))
    before = judge(policy, judge_d, noise, eval_key)
    folder.echo(
        f"pre-RL generator: discriminator score {before['disc_score']:.3f} "
        f"(draws {before['disc_score_draws']:.3f})"
    )

    # 5. REINFORCE against the discriminator's score.
    refit = refitter(reward_d, policy, data.train_x, config)
    for index in range(config.calibrate_steps):
        refit(index)
    t0 = time.perf_counter()
    folder.phase(
        "reinforce",
        trainer,
        rl_batches(policy, nnx.clone(policy), reward_d, config, refit),
        config.rl_steps,
        show=("mean_reward", "reward_std", "entropy"),
    )
    rl_seconds = round(time.perf_counter() - t0, 1)

    # 6. Evaluation: the same noise, the same (frozen) judge.
    after = judge(policy, judge_d, noise, eval_key)
    results = digits.finish(
        folder,
        family="gan",
        samples=after["images"],
        before=before["images"],
        seconds=time.perf_counter() - start,
        extra={
            "disc_score_before": before["disc_score"],
            "disc_score_after": after["disc_score"],
            "disc_score_draws_before": before["disc_score_draws"],
            "disc_score_draws_after": after["disc_score_draws"],
            "rl_seconds": rl_seconds,
        },
    )
    _write_samples(folder, before["images"], after["images"])
    folder.echo(
        f"discriminator score {before['disc_score']:.3f} -> {after['disc_score']:.3f}; "
        f"Fréchet distance {results['frechet_before']:.2f} -> {results['frechet_after']:.2f} "
        f"(real digits: {results['frechet_floor']:.2f})"
    )
    if folder.options.plot:
        folder.plot_reward_curve(
            "reinforce", title="rlgen: REINFORCE on a GAN generator", xlabel="REINFORCE step"
        )
    return results


def refitter(discriminator, policy, train_x, config: GANReinforceConfig):
    """``refit(step)``: every `refit_every` steps, one Adam step of the discriminator's GAN
    objective (`rlgen.generative.gan.discriminator_objective`, R1 included) on real
    digits against the policy's clipped draws; the minibatch and keys are those of
    ``(seed, step)``. (A resumed run refits from the pretrained discriminator: the
    refit discriminator is not checkpointed.)"""
    optimizer = nnx.Optimizer(
        discriminator, optax.adam(config.pretrain_lr, b1=0.5), wrt=nnx.Param
    )
    size = min(config.rl_batch_size, len(train_x))
    real_batches = digits.epoch_batches(train_x, None, size, config.seed + 5)

    @nnx.jit
    def step_fn(discriminator, optimizer, policy, real, key):
        noise_key, draw_key, penalty_key = jax.random.split(key, 3)
        noise = jax.random.normal(noise_key, (real.shape[0], policy.latent_dim))
        fake = jnp.clip(policy.sample(noise, draw_key), *DATA_RANGE)

        def loss(d):
            return gan_lib.discriminator_objective(d, real, fake, penalty_key, config.gan)[0]

        optimizer.update(discriminator, nnx.grad(loss)(discriminator))

    def refit(index: int) -> None:
        real = jnp.asarray(next(real_batches(index))["images"])
        key = jax.random.fold_in(jax.random.key(config.seed + 6), index)
        step_fn(discriminator, optimizer, policy, real, key)

    return refit


def _write_samples(folder, before, after) -> None:
    for name, images in (("before", before), ("after", after)):
        grid = datasets.from_unit(np.asarray(images).reshape(-1, 8, 8))
        np.savez(folder.path / f"samples_{name}.npz", images=grid)
        if folder.options.plot:
            digits.write_grid(folder.path / f"samples_{name}.png", grid,
                              title=f"rlgen gan-reinforce: {name} REINFORCE")
