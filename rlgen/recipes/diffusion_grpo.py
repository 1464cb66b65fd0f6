"""``rlgen diffusion-grpo``: the digit diffusion model fine-tuned with RL to draw one chosen
digit, the reward being the digit classifier's belief that a sample is that digit.

The file reads top to bottom:

1. **The settings** (`DiffusionGRPOConfig`, the ``rlgen diffusion-grpo`` options).
2. **The pretrained model**: the class-conditional digit denoiser of ``rlgen digits
   diffusion`` (`rlgen.recipes.digits.diffusion`), pretrained here (the phase
   ``pretrain``) or restored from that command's run folder (``--pretrained DIR``). RL
   starts from its EMA parameters and samples *unconditionally* (the null class of
   classifier-free guidance): about one sample in ten is the target digit.
3. **The policy and the reward**: DDIM with ``eta = 1`` over ``sample_steps`` steps as a
   stochastic policy (`rlgen.generative.rollout.DiffusionSampler`), the reward
   `rlgen.rewards.ClassifierReward` of the shipped digit classifier (the probability of
   ``target``; its log-probability for reward backpropagation).
4. **Fine-tuning** with the method chosen by ``--method`` (`METHODS`), each a trainer of
   `rlgen.trainers.denoising_rl`, in the run folder (progress bar, ``metrics.jsonl``,
   checkpoints, ``--resume``).
5. **Evaluation**: ``num_samples`` samples of the policy from the same noise before and
   after: the share classified as the target digit, the mean reward, the classifier's
   confidence, the Fréchet distance to all held-out digits (as ``rlgen digits``) and to
   the real digits of the target class (`rlgen.quality.digit_class_frechet`), next to the
   pretrained model's own class-conditional drawings of the target (guidance 1.5, the
   reference for "good drawings of that digit"). Files: ``samples_before.npz`` and
   ``samples_after.npz`` (``images [N, 8, 8]`` on 0..16), ``samples_before.png``,
   ``samples_after.png``, ``reward_curve.png``, ``summary.json``.

A run whose target share rises but whose samples stop looking like digits has hacked the
reward: the class Fréchet distance and the confidence say so.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlgen import _checks, datasets, quality
from rlgen.algorithms.ddpo import DDPOConfig
from rlgen.algorithms.diffusion_dpo import DiffusionDPOConfig
from rlgen.algorithms.draft import DRaFTConfig
from rlgen.algorithms.nft import NFTConfig
from rlgen.generative.rollout import DiffusionSampler, stochastic_window
from rlgen.models.classifier import load_digit_classifier
from rlgen.recipes import digits
from rlgen.recipes.digits import diffusion as digits_diffusion
from rlgen.rewards import ClassifierReward
from rlgen.trainers.denoising_rl import (
    DDPOTrainer,
    DiffusionDPOTrainer,
    DRaFTTrainer,
    NFTTrainer,
)

# ----------------------------------------------------------------------------------------
# 1. The settings
# ----------------------------------------------------------------------------------------

#: The fine-tuning methods of ``--method`` (each a trainer of `rlgen.trainers.denoising_rl`):
#:
#: * "grpo": DDPO / Flow-GRPO, the clipped ratio at every step (`rlgen.algorithms.ddpo`);
#: * "grpo-fast": the same on a window of ``window`` stochastic steps inside a
#:   deterministic DDIM trajectory, sliding over the first half (Flow-GRPO-Fast, MixGRPO);
#: * "nft": DiffusionNFT, online RL on the forward process (no log-probs; the EMA "old"
#:   policy samples; `rlgen.algorithms.nft`);
#: * "draft": DRaFT-1, the reward's log-probability back-propagated through the last step
#:   of the sampler (its noise reparameterised; `rlgen.algorithms.draft`);
#: * "refl": ReFL, the reward of the one-step estimate from a random late step;
#: * "dpo": online Diffusion-DPO, pairs of samples ranked by the reward
#:   (`rlgen.algorithms.diffusion_dpo`).
METHODS = ("grpo", "grpo-fast", "nft", "draft", "refl", "dpo")
#: Each method's learning rate and number of updates (``--learning-rate`` and ``--steps``
#: override them).
METHOD_DEFAULTS = {
    "grpo": {"learning_rate": 1e-4, "steps": 200},
    "grpo-fast": {"learning_rate": 5e-5, "steps": 100},
    "nft": {"learning_rate": 3e-5, "steps": 60},
    "draft": {"learning_rate": 3e-5, "steps": 50},
    "refl": {"learning_rate": 3e-5, "steps": 50},
    "dpo": {"learning_rate": 1e-4, "steps": 50},
}


@dataclasses.dataclass(frozen=True)
class DiffusionGRPOConfig:
    """Settings of the ``rlgen diffusion-grpo`` recipe.

    Attributes:
      seed: seeds pretraining, sampling and the evaluation noise.
      target: the digit to draw (0..9).
      method: the fine-tuning method, one of `METHODS`.
      pretrained: a ``rlgen digits diffusion`` run folder to start from (its last
        checkpoint; default settings of that recipe); empty: pretrain here.
      pretrain_steps: pretraining steps when pretraining here.
      sample_steps: the policy's DDIM steps ``K``.
      eta: DDIM's stochasticity of the policy's steps (1: DDPM's variance).
      window: ``grpo-fast``: the stochastic (trained) steps, a window sliding over the
        first ``K / 2`` steps as training goes.
      steps: fine-tuning updates (0: the method's default, `METHOD_DEFAULTS`).
      batch_size: samples per update (one group: every sample has the same condition;
        ``dpo``: ``batch_size / 2`` pairs).
      learning_rate: Adam's step size (0: the method's default).
      beta: the KL coefficient to the pretrained model (closed form, per step).
      clip_param: the per-step ratio's clip range (``reduction="mean"``).
      num_samples: samples judged before and after.
    """

    seed: int = 0
    target: int = 3
    method: str = _checks.option("grpo", METHODS)
    pretrained: str = ""
    pretrain_steps: int = 3000
    sample_steps: int = 20
    eta: float = 1.0
    window: int = 4
    steps: int = 0
    batch_size: int = 64
    learning_rate: float = 0.0
    beta: float = 0.1
    clip_param: float = 1e-3
    num_samples: int = 500

    def __post_init__(self):
        _checks.check_options(self)
        _checks.check_int(self.seed, "seed")
        _checks.check_int(self.target, "target", low=0)
        if self.target >= datasets.NUM_CLASSES:
            raise ValueError(
                f"`target` must be a digit in [0, {datasets.NUM_CLASSES}), got {self.target}"
            )
        if not isinstance(self.pretrained, str):
            raise TypeError(f"`pretrained` must be a path (str), got {self.pretrained!r}")
        if self.pretrained and not Path(self.pretrained).is_dir():
            raise ValueError(f"`pretrained` must be a run folder, got {self.pretrained!r}")
        for name in ("pretrain_steps", "sample_steps", "window"):
            _checks.check_positive_int(getattr(self, name), name)
        _checks.check_int(self.steps, "steps", low=0)
        _checks.check_positive_int(self.batch_size, "batch_size", low=2)
        if self.method == "dpo" and self.batch_size % 2:
            raise ValueError(f"`batch_size` must be even for dpo (pairs), got {self.batch_size}")
        _checks.check_positive_int(self.num_samples, "num_samples", low=2)
        _checks.check_range(self.eta, "eta", 0.0, low_open=True)
        _checks.check_range(self.learning_rate, "learning_rate", 0.0)
        _checks.check_range(self.beta, "beta", 0.0)
        _checks.check_range(self.clip_param, "clip_param", 0.0, low_open=True)
        if self.method == "grpo-fast" and 2 * self.window > self.sample_steps:
            raise ValueError(
                f"`window` must be at most half of sample_steps = {self.sample_steps} (it "
                f"slides over the first half of the steps), got {self.window}"
            )
        if self.window > self.sample_steps:
            raise ValueError(
                f"`window` must be <= sample_steps = {self.sample_steps}, got {self.window}"
            )


def resolved(config: DiffusionGRPOConfig, name: str):
    """``steps`` or ``learning_rate``: the config's value, or the method's default when 0."""
    value = getattr(config, name)
    return value if value else METHOD_DEFAULTS[config.method][name]


# ----------------------------------------------------------------------------------------
# 2. The pretrained model
# ----------------------------------------------------------------------------------------


def pretrained_model(config: DiffusionGRPOConfig, folder):
    """The digit denoiser with the pretrained EMA parameters, and its diffusion trainer.

    With ``config.pretrained``: the last checkpoint of a ``rlgen digits diffusion`` run
    folder (``checkpoints/train``) or of another ``rlgen diffusion-grpo`` run
    (``checkpoints/pretrain``), both with that recipe's default model.
    """
    base = digits_diffusion.DiffusionDigitsConfig(seed=config.seed, steps=config.pretrain_steps)
    trainer = digits_diffusion.build_trainer(base, digits_diffusion.build_model(base), folder.mesh)
    if config.pretrained:
        from rlgen.callbacks import ModelCheckpoint

        for phase in ("train", "pretrain"):
            directory = Path(config.pretrained) / "checkpoints" / phase
            if ModelCheckpoint.latest_step(directory) is not None:
                ModelCheckpoint.restore(trainer, directory)
                break
        else:
            raise FileNotFoundError(
                f"`pretrained` {config.pretrained!r} holds no checkpoint of the digit diffusion "
                "model (checkpoints/train of `rlgen digits diffusion`, or checkpoints/pretrain "
                "of `rlgen diffusion-grpo`)"
            )
    else:
        data = digits.load()
        folder.phase(
            "pretrain",
            trainer,
            digits.epoch_batches(data.train_x, data.train_labels, base.batch_size, config.seed),
            base.steps,
            show=("loss", "mse"),
        )
    return trainer.ema_model, trainer


# ----------------------------------------------------------------------------------------
# 3. The policy and the reward
# ----------------------------------------------------------------------------------------


def digit_logits(samples) -> jax.Array:
    """The digit classifier's logits ``[B, 10]`` of ``samples [B, 64]`` on the models' [-1, 1]
    scale (clipped to the digits' 0..16 range, as `rlgen.datasets.from_unit`)."""
    images = jnp.clip((samples + 1.0) * (datasets.DIGITS_MAX / 2), 0.0, datasets.DIGITS_MAX)
    return load_digit_classifier()(images.reshape(-1, 8, 8))


def build_sampler(config: DiffusionGRPOConfig, schedule) -> DiffusionSampler:
    """DDIM with ``eta`` over ``sample_steps`` steps on the recipe's v-prediction model."""
    return DiffusionSampler(
        schedule, prediction="v", eta=config.eta, num_steps=config.sample_steps, clip_x0=1.0
    )


# ----------------------------------------------------------------------------------------
# 4. Fine-tuning
# ----------------------------------------------------------------------------------------


def build_trainer(config: DiffusionGRPOConfig, model, sampler, mesh=None):
    """The fine-tuning trainer of ``config.method`` with Adam."""
    optimizer = nnx.Optimizer(model, optax.adam(resolved(config, "learning_rate")), wrt=nnx.Param)
    common = dict(seed=config.seed, mesh=mesh)
    if config.method in ("grpo", "grpo-fast"):
        fast = config.method == "grpo-fast"
        ddpo = DDPOConfig(
            num_generations=config.batch_size,
            clip_param=config.clip_param,
            beta=config.beta,
            num_train_steps=config.window if fast else None,
        )
        return DDPOTrainer(model, optimizer, sampler, ddpo, **common)
    if config.method == "nft":
        settings = NFTConfig(num_generations=config.batch_size)
        return NFTTrainer(model, optimizer, sampler, settings, **common)
    if config.method in ("draft", "refl"):
        reward = ClassifierReward(digit_logits, config.target, output="log_probability")
        settings = DRaFTConfig(  # through the policy's own noisy steps, as evaluated
            method=config.method,
            refl_max_step=max(1, config.sample_steps // 2),
            stochastic=True,
        )
        return DRaFTTrainer(model, optimizer, sampler, reward, settings, **common)
    return DiffusionDPOTrainer(model, optimizer, sampler, DiffusionDPOConfig(beta=50.0), **common)


class _Conditions:
    """The fine-tuning batches: unconditional samples, ``batch_size`` per step (for
    ``grpo-fast`` with the window of stochastic steps, sliding one step per update over
    the first half of the trajectory)."""

    def __init__(self, config: DiffusionGRPOConfig):
        self.config = config

    def __call__(self, step: int):
        c = self.config
        if c.method == "dpo":
            prompts = {"num_prompts": c.batch_size // 2}
        elif c.method in ("draft", "refl"):
            prompts = {"num_prompts": c.batch_size}
        else:
            prompts = {"num_prompts": 1}
        if c.method != "grpo-fast":
            yield from itertools.repeat(prompts)
        positions = c.sample_steps // 2 - c.window + 1
        while True:
            yield {**prompts, "stochastic": stochastic_window(c.sample_steps, step % positions,
                                                              c.window)}
            step += 1


# ----------------------------------------------------------------------------------------
# 5. Evaluation
# ----------------------------------------------------------------------------------------


def evaluate(trainer, config: DiffusionGRPOConfig) -> tuple[np.ndarray, dict[str, float]]:
    """The policy's ``num_samples`` samples (``[N, 8, 8]`` on 0..16, from a fixed key) and
    their figures: ``target_share``, ``mean_reward``, ``confidence``, ``frechet`` (to all
    held-out digits) and ``frechet_target`` (to the real digits of the target class)."""
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    samples = np.asarray(trainer.sample(config.num_samples, key))
    images = datasets.from_unit(samples.reshape(-1, 8, 8))
    probs = np.asarray(jax.nn.softmax(digit_logits(jnp.asarray(samples)), axis=-1))
    figures = {
        "target_share": float(np.mean(probs.argmax(-1) == config.target)),
        "mean_reward": float(np.mean(probs[:, config.target])),
        "confidence": float(np.mean(probs.max(-1))),
        "frechet": quality.digit_quality(images)["frechet"],
        "frechet_target": quality.digit_class_frechet(images, config.target),
    }
    return images, figures


def conditional_reference(diffusion_trainer, config: DiffusionGRPOConfig) -> float:
    """The class Fréchet distance of the pretrained model's guided drawings of the target
    (deterministic DDIM, 50 steps, guidance 1.5, as ``rlgen digits diffusion`` samples):
    what "good drawings of that digit" score."""
    labels = np.full(config.num_samples, config.target, np.int32)
    samples = diffusion_trainer.sample(
        config.num_samples, jax.random.key(config.seed), labels, guidance_scale=1.5
    )
    images = datasets.from_unit(np.asarray(samples).reshape(-1, 8, 8))
    return quality.digit_class_frechet(images, config.target)


def _write(folder, name: str, images: np.ndarray, title: str) -> None:
    np.savez(folder.path / f"{name}.npz", images=images)
    if folder.options.plot:
        digits.write_grid(folder.path / f"{name}.png", images, title=title)


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


def run(config: DiffusionGRPOConfig, folder) -> dict[str, Any]:
    """Pretrains (or restores) the digit diffusion model, fine-tunes it to draw
    ``config.target`` and returns the before/after figures (module doc)."""
    start = time.perf_counter()
    model, diffusion_trainer = pretrained_model(config, folder)
    sampler = build_sampler(config, diffusion_trainer.schedule)
    reward = ClassifierReward(digit_logits, config.target)
    trainer = build_trainer(config, model, sampler, folder.mesh)

    before_images, before = evaluate(trainer, config)
    _write(folder, "samples_before", before_images, f"before: target {config.target}")

    t0, cpu0 = time.perf_counter(), time.process_time()
    folder.phase(
        config.method,
        trainer,
        _Conditions(config),
        resolved(config, "steps"),
        show=("mean_reward",),
        **({} if config.method in ("draft", "refl") else {"reward_fn": reward}),
    )
    rl_seconds = round(time.perf_counter() - t0, 1)
    rl_cpu_seconds = round(time.process_time() - cpu0, 1)  # all cores, compilation included

    after_images, after = evaluate(trainer, config)
    _write(folder, "samples_after", after_images, f"after {config.method}: target {config.target}")
    folder.plot_reward_curve(
        config.method, title=f"rlgen diffusion-grpo (target {config.target})", xlabel="update"
    )
    results = {"method": config.method, "target": config.target}
    for name in before:
        results[f"{name}_before"] = before[name]
        results[f"{name}_after"] = after[name]
    results["frechet_target_conditional"] = conditional_reference(diffusion_trainer, config)
    results["rl_seconds"] = rl_seconds
    results["rl_cpu_seconds"] = rl_cpu_seconds
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results
