"""Every trainer, as a case of the trainer contract suite (`test_contract.py`).

A new trainer joins the suite with one entry in `CASES`: how to build it (``make(seed,
mesh)``: the seed sets the model's initialisation and the trainer's RNG) and its batches
(``batches(n)``: ``n`` batches whose leading axis divides by 8, so they split over 8
devices, and ``other_shape()``: a batch of another shape). ``step(trainer, batch)`` takes
one training step (by default ``train_step(batch)``).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlgen.algorithms import (
    DDPOConfig,
    DiffusionDPOConfig,
    DPOConfig,
    GRPOConfig,
    NFTConfig,
    PPOConfig,
    REINFORCEConfig,
)
from rlgen.generative import AutoregressiveConfig
from rlgen.generative.diffusion import DiffusionConfig, noise_schedule
from rlgen.generative.energy import EnergyConfig
from rlgen.generative.flow import FlowConfig
from rlgen.generative.gan import GANConfig
from rlgen.generative.rollout import DiffusionSampler, FlowSampler
from rlgen.generative.vae import VAEConfig
from rlgen.models import MLPActorCritic, MLPPolicy, SamplingConfig, TransformerConfig, TransformerLM
from rlgen.models.denoiser import MLPDenoiser
from rlgen.models.energy import MLPEnergy
from rlgen.models.gan import MLPDiscriminator, MLPGenerator
from rlgen.trainers import (
    AutoregressiveTrainer,
    DPOTrainer,
    GRPOTrainer,
    PPOTrainer,
    REINFORCETrainer,
    Trainer,
)
from rlgen.trainers.denoising_rl import (
    DDPOTrainer,
    DiffusionDPOTrainer,
    DRaFTTrainer,
    NFTTrainer,
)
from rlgen.trainers.diffusion import DiffusionTrainer
from rlgen.trainers.energy import EnergyTrainer
from rlgen.trainers.flow import FlowTrainer
from rlgen.trainers.gan import GANTrainer
from rlgen.trainers.vae import VAETrainer

from .examples import make_ema, make_gan

OBS, ACTIONS, ROWS, VOCAB = 3, 2, 8, 6


@dataclasses.dataclass(frozen=True)
class Case:
    make: Callable[..., Trainer]  # make(seed=0, mesh=None) -> trainer
    batches: Callable[[int], list]  # n -> n batches, leading axes divisible by 8
    other_shape: Callable[[], dict]  # a batch of another shape
    step: Callable = lambda trainer, batch: trainer.train_step(batch)


def _rng(i):
    return np.random.default_rng(i)


def _adam(model, lr=0.05):
    return nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)


def _momentum(model, lr):
    """For the transformer: its attention key bias has an exactly zero gradient, which
    Adam would turn from rounding noise (different on 8 devices) into steps of size lr."""
    return nnx.Optimizer(model, optax.sgd(lr, momentum=0.9), wrt=nnx.Param)


def _lm(seed, new_tokens=3):
    config = TransformerConfig(
        vocab_size=VOCAB, max_len=10, d_model=16, num_heads=2, num_layers=1, eos_id=1
    )
    return TransformerLM(config, rngs=nnx.Rngs(seed), sampling=SamplingConfig(new_tokens))


def _rl_trainer(cls, config, model_cls=MLPPolicy):
    def make(seed=0, mesh=None):
        model = model_cls(OBS, ACTIONS, hidden=(8,), rngs=nnx.Rngs(seed))
        return cls(model, _adam(model), config, seed=seed, mesh=mesh)

    return make


def _policy_batches(n, rows=ROWS, start=0):
    return [
        {
            "observations": _rng(start + i).normal(size=(rows, OBS)).astype(np.float32),
            "actions": _rng(start + i).integers(0, ACTIONS, rows),
            "rewards": _rng(start + i).normal(size=rows).astype(np.float32),
        }
        for i in range(n)
    ]


def _ppo_batches(n, rows=ROWS, steps=5, start=0):
    out = []
    for i in range(n):
        r = _rng(100 + start + i)
        out.append(
            {
                "observations": r.normal(size=(rows, steps, OBS)).astype(np.float32),
                "actions": r.integers(0, ACTIONS, (rows, steps)),
                "rewards": r.normal(size=(rows, steps)).astype(np.float32),
                "values": r.normal(size=(rows, steps + 1)).astype(np.float32),
                "log_probs": np.full((rows, steps), np.log(0.5), np.float32),
                "dones": (r.random((rows, steps)) < 0.2).astype(np.float32),
            }
        )
    return out


def _make_gaussian_encoder_ppo(seed=0, mesh=None):
    from rlgen.models.gaussian import GaussianEncoderPolicy

    model = GaussianEncoderPolicy(OBS, ACTIONS, hidden=(8,), value_hidden=(8,),
                                  rngs=nnx.Rngs(seed))
    config = PPOConfig(num_epochs=2, num_minibatches=2)
    return PPOTrainer(model, _adam(model), config, seed=seed, mesh=mesh)


def _one_step_gaussian_ppo_batches(n, rows=ROWS, start=0):
    """One-step PPO batches over continuous actions: every per-sample key ``[B]``."""
    out = []
    for i in range(n):
        r = _rng(700 + start + i)
        out.append(
            {
                "observations": r.normal(size=(rows, OBS)).astype(np.float32),
                "actions": r.normal(size=(rows, ACTIONS)).astype(np.float32),
                "rewards": r.normal(size=rows).astype(np.float32),
                "values": r.normal(size=rows).astype(np.float32),
                "log_probs": np.full(rows, -2.0, np.float32),
                "dones": np.zeros(rows, np.float32),
            }
        )
    return out


def _make_gaussian_generator_reinforce(seed=0, mesh=None):
    from rlgen.models.gaussian import GaussianGeneratorPolicy

    model = GaussianGeneratorPolicy(OBS, 4, hidden=(8,), rngs=nnx.Rngs(seed))
    config = REINFORCEConfig(baseline="mean")
    return REINFORCETrainer(model, _adam(model), config, seed=seed, mesh=mesh)


def _one_step_gaussian_reinforce_batches(n, rows=ROWS, start=0):
    return [
        {
            "observations": _rng(800 + start + i).normal(size=(rows, OBS)).astype(np.float32),
            "actions": _rng(900 + start + i).normal(size=(rows, 4)).astype(np.float32),
            "rewards": _rng(1000 + start + i).normal(size=rows).astype(np.float32),
        }
        for i in range(n)
    ]


def _dpo_batches(n, rows=ROWS):
    out = []
    for i in range(n):
        r = _rng(200 + i)
        obs = r.normal(size=(rows, OBS)).astype(np.float32)
        out.append(
            {
                "chosen_observations": obs,
                "chosen_actions": np.ones(rows, np.int32),
                "rejected_observations": obs,
                "rejected_actions": np.zeros(rows, np.int32),
            }
        )
    return out


def _prompt_batches(n, prompts=2):
    return [
        {"observations": _rng(300 + i).integers(2, VOCAB, (prompts, 4)).astype(np.int32)}
        for i in range(n)
    ]


def _match_last_prompt_token(samples, conditions=None):
    return jnp.mean((samples == conditions[:, -1:]).astype(jnp.float32), axis=-1)


def _make_grpo_sampling(seed=0, mesh=None):
    model = _lm(seed)
    config = GRPOConfig(num_generations=4, reference="initial", beta=0.05)
    return GRPOTrainer(model, _momentum(model, 0.1), config, seed=seed, mesh=mesh)


def _make_autoregressive(seed=0, mesh=None):
    model = _lm(seed)
    # scheduled sampling draws from the step's key: the state's key matters to the numbers
    config = AutoregressiveConfig(label_smoothing=0.1, scheduled_sampling=0.3)
    return AutoregressiveTrainer(model, _momentum(model, 0.1), config, seed=seed, mesh=mesh)


def _token_batches(n, rows=ROWS, length=7):
    return [{"tokens": _rng(400 + i).integers(0, VOCAB, (rows, length))} for i in range(n)]


def _gan_batches(n, rows=ROWS):
    return [
        {"data": (2.0 + 0.5 * _rng(500 + i).normal(size=(rows, 1))).astype(np.float32)}
        for i in range(n)
    ]


def _make_gan_trainer(seed=0, mesh=None):
    # WGAN-GP with R1, two critic steps and an EMA: every field of the state is exercised
    # (the gradient penalty's interpolation and the noise draw from the state's key).
    g = MLPGenerator(3, 4, hidden=(8,), rngs=nnx.Rngs(seed))
    d = MLPDiscriminator(4, hidden=(8,), rngs=nnx.Rngs(seed + 1))
    config = GANConfig(loss="wgan_gp", d_steps=2, r1_weight=0.5, ema_decay=0.9)
    optimizers = {"generator": _momentum(g, 0.05), "discriminator": _momentum(d, 0.05)}
    return GANTrainer({"generator": g, "discriminator": d}, optimizers, config, seed=seed,
                      mesh=mesh)


def _gan_image_batches(n, rows=ROWS):
    return [
        {"images": np.tanh(_rng(800 + i).normal(size=(rows, 4))).astype(np.float32)}
        for i in range(n)
    ]


def _regression_batches(n, rows=ROWS):
    out = []
    for i in range(n):
        x = _rng(600 + i).normal(size=(rows, 3)).astype(np.float32)
        out.append({"x": x, "y": (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)})
    return out


def _make_flow(seed=0, mesh=None):
    model = MLPDenoiser(4, num_classes=3, hidden=8, depth=1, time_dim=4, rngs=nnx.Rngs(seed))
    # OT-CFM: the noise (from the state's key) re-paired by the host solver; labels dropped
    # half the time; the EMA is a state field
    config = FlowConfig(coupling="ot", num_classes=3, ema_decay=0.9, label_dropout=0.5)
    return FlowTrainer(model, _momentum(model, 0.1), config, seed=seed, mesh=mesh)


def _make_energy(seed=0, mesh=None):
    model = MLPEnergy(2, (8,), rngs=nnx.Rngs(seed))
    # the negatives come from the buffer and the state's key: both matter to the numbers
    config = EnergyConfig(sgld_steps=3, step_size=0.1, noise_scale=0.05, buffer_size=64,
                          reinit_prob=0.2, alpha=0.1)
    return EnergyTrainer(model, _adam(model, 0.01), config, seed=seed, mesh=mesh)


def _energy_batches(n, rows=ROWS):
    return [
        {"images": _rng(700 + i).uniform(-0.8, 0.8, (rows, 2)).astype(np.float32)}
        for i in range(n)
    ]


def _make_diffusion(seed=0, mesh=None):
    model = MLPDenoiser(4, num_classes=3, hidden=8, depth=1, rngs=nnx.Rngs(seed))
    # label dropout and the noise draw from the state's key; the EMA is a state field
    config = DiffusionConfig(num_timesteps=50, label_dropout=0.3, ema_decay=0.9)
    return DiffusionTrainer(model, _adam(model, 0.01), config, seed=seed, mesh=mesh)


def _make_vae(seed=0, mesh=None):
    from rlgen.models.vae import MLPVAE

    # the cyclical schedule and free bits use the state's step; the draws use its key
    config = VAEConfig(
        beta=0.5, kl_schedule="cyclical", kl_cycle_steps=3, free_bits=0.05,
        learn_decoder_std=True, decoder_std=0.5,
    )
    model = MLPVAE(6, 2, hidden=(8,), learn_std=True, rngs=nnx.Rngs(seed))
    return VAETrainer(model, _momentum(model, 0.05), config, seed=seed, mesh=mesh)


def _image_batches(n, rows=ROWS):
    return [
        {
            "images": _rng(700 + i).uniform(-1, 1, (rows, 4)).astype(np.float32),
            "labels": _rng(700 + i).integers(0, 3, rows).astype(np.int32),
        }
        for i in range(n)
    ]


def _vae_batches(n, rows=ROWS):
    return [
        {"images": _rng(700 + i).normal(size=(rows, 6)).astype(np.float32)} for i in range(n)
    ]


def _denoiser(seed):
    return MLPDenoiser(4, num_classes=3, hidden=8, depth=1, rngs=nnx.Rngs(seed))


def _far_from_origin(samples, labels=None):
    return -jnp.sum((samples - 1.0) ** 2, axis=-1)


def _make_ddpo(seed=0, mesh=None):
    model = _denoiser(seed)
    sampler = DiffusionSampler(noise_schedule("cosine", 50), prediction="v", num_steps=4)
    config = DDPOConfig(num_generations=2, beta=0.1, num_iterations=2, num_train_steps=2)
    return DDPOTrainer(model, _adam(model, 0.01), sampler, config, seed=seed, mesh=mesh)


def _make_nft(seed=0, mesh=None):
    model = _denoiser(seed)
    config = NFTConfig(num_generations=2, old_decay_rate=0.1)
    return NFTTrainer(model, _adam(model, 0.01), FlowSampler(num_steps=3), config, seed=seed,
                      mesh=mesh)


def _make_draft(seed=0, mesh=None):
    model = _denoiser(seed)
    return DRaFTTrainer(model, _adam(model, 0.01), FlowSampler(num_steps=3), _far_from_origin,
                        seed=seed, mesh=mesh)


def _make_diffusion_dpo(seed=0, mesh=None):
    model = _denoiser(seed)
    return DiffusionDPOTrainer(model, _adam(model, 0.01), FlowSampler(num_steps=3),
                               DiffusionDPOConfig(beta=5.0), seed=seed, mesh=mesh)


def _label_batches(n, prompts=4):
    return [{"labels": _rng(i).integers(0, 3, prompts).astype(np.int32)} for i in range(n)]


def _pair_batches(n, rows=ROWS):
    out = []
    for i in range(n):
        rng = _rng(i)
        out.append({
            "chosen": rng.normal(size=(rows, 4)).astype(np.float32) + 1.0,
            "rejected": rng.normal(size=(rows, 4)).astype(np.float32),
            "labels": rng.integers(0, 3, rows).astype(np.int32),
        })
    return out


def _online(trainer, batch):
    return trainer.train_step(batch, _far_from_origin)


CASES = {
    "reinforce": Case(
        _rl_trainer(REINFORCETrainer, REINFORCEConfig()),
        _policy_batches,
        lambda: _policy_batches(1, rows=2 * ROWS)[0],
    ),
    "ppo": Case(
        _rl_trainer(PPOTrainer, PPOConfig(num_epochs=2, num_minibatches=2), MLPActorCritic),
        _ppo_batches,
        lambda: _ppo_batches(1, steps=3)[0],
    ),
    "ppo-gaussian-encoder": Case(
        _make_gaussian_encoder_ppo,
        _one_step_gaussian_ppo_batches,
        lambda: _one_step_gaussian_ppo_batches(1, rows=2 * ROWS)[0],
    ),
    "reinforce-gaussian-generator": Case(
        _make_gaussian_generator_reinforce,
        _one_step_gaussian_reinforce_batches,
        lambda: _one_step_gaussian_reinforce_batches(1, rows=2 * ROWS)[0],
    ),
    "grpo": Case(
        _rl_trainer(GRPOTrainer, GRPOConfig(num_generations=4, reference="initial", beta=0.1)),
        _policy_batches,
        lambda: _policy_batches(1, rows=2 * ROWS)[0],
    ),
    "grpo-sampling": Case(
        _make_grpo_sampling,
        _prompt_batches,
        lambda: _prompt_batches(1, prompts=4)[0],
        lambda trainer, batch: trainer.train_step(batch, _match_last_prompt_token),
    ),
    "dpo": Case(
        _rl_trainer(DPOTrainer, DPOConfig(beta=0.5)),
        _dpo_batches,
        lambda: _dpo_batches(1, rows=2 * ROWS)[0],
    ),
    "autoregressive": Case(
        _make_autoregressive, _token_batches, lambda: _token_batches(1, length=5)[0]
    ),
    "adversarial": Case(
        lambda seed=0, mesh=None: make_gan(seed, mesh=mesh),
        _gan_batches,
        lambda: _gan_batches(1, rows=2 * ROWS)[0],
    ),
    "energy": Case(_make_energy, _energy_batches, lambda: _energy_batches(1, rows=2 * ROWS)[0]),
    "diffusion": Case(
        _make_diffusion, _image_batches, lambda: _image_batches(1, rows=2 * ROWS)[0]
    ),
    "gan": Case(
        _make_gan_trainer, _gan_image_batches, lambda: _gan_image_batches(1, rows=2 * ROWS)[0]
    ),
    "vae": Case(_make_vae, _vae_batches, lambda: _vae_batches(1, rows=2 * ROWS)[0]),
    "flow": Case(_make_flow, _image_batches, lambda: _image_batches(1, rows=2 * ROWS)[0]),
    "ddpo": Case(_make_ddpo, _label_batches, lambda: _label_batches(1, prompts=8)[0], _online),
    "nft": Case(_make_nft, _label_batches, lambda: _label_batches(1, prompts=8)[0], _online),
    "draft": Case(
        _make_draft,
        lambda n: _label_batches(n, prompts=8),
        lambda: _label_batches(1, prompts=16)[0],
    ),
    "diffusion-dpo": Case(
        _make_diffusion_dpo, _pair_batches, lambda: _pair_batches(1, rows=2 * ROWS)[0]
    ),
    "ema": Case(
        lambda seed=0, mesh=None: make_ema(seed, mesh=mesh),
        _regression_batches,
        lambda: _regression_batches(1, rows=2 * ROWS)[0],
    ),
}


def models_and_optimizers(trainer):
    """``[(name, model, optimizer)]`` of a trainer of one model or several (sorted names)."""
    if isinstance(trainer.model, dict):
        return [(k, trainer.model[k], trainer.optimizer[k]) for k in sorted(trainer.model)]
    return [(None, trainer.model, trainer.optimizer)]


def host(tree):
    """A pytree as NumPy arrays (PRNG keys as their key data)."""

    def one(x):
        if jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.map(one, tree)
