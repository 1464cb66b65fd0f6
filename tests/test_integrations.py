"""The reference guide's three integration snippets, "diffusion model + GRPO", "VAE encoder
as policy + PPO" and "GAN generator as policy + REINFORCE", run as written with rlgen's
import paths and built-in models (a few steps each). The snippet bodies are kept as close
to the guide's text as rlgen allows; the comments say where they differ and why."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _digits(batch_size, steps):
    from rlgen.recipes import digits

    x = digits.load().train_x
    return [{"images": jnp.asarray(x[i * batch_size : (i + 1) * batch_size])} for i in range(steps)]


def test_guide_vae_encoder_as_policy_with_ppo():
    import optax

    from rlgen.algorithms import PPO_METRICS, PPOConfig
    from rlgen.models import MLPVAE
    from rlgen.models.gaussian import GaussianEncoderPolicy
    from rlgen.recipes.vae_ppo import reconstruction_reward as compute_reconstruction_reward
    from rlgen.trainers import PPOTrainer

    batch_size = 32
    dataloader = _digits(batch_size, steps=3)
    vae = MLPVAE(64, 8, hidden=(32,), rngs=nnx.Rngs(0))  # pretrained in `rlgen vae-ppo`
    encoder = GaussianEncoderPolicy.from_vae(vae, rngs=nnx.Rngs(1))
    decoder = vae.decode  # frozen
    optimizer = nnx.Optimizer(encoder, optax.adam(1e-3), wrt=nnx.Param)
    before = jax.tree.map(jnp.copy, nnx.state(encoder, nnx.Param))

    # --- the guide's snippet ---
    ppo_config = PPOConfig(gamma=0.99, gae_lambda=0.95)
    ppo_trainer = PPOTrainer(encoder, optimizer, ppo_config)
    for batch in dataloader:
        latents, log_probs = encoder(batch["images"], return_log_prob=True)
        reconstructions = decoder(latents)
        rewards = compute_reconstruction_reward(batch["images"], reconstructions)
        value_estimates = encoder.value(batch["images"])  # the guide leaves them undefined
        trajectory = {
            "observations": batch["images"],
            "actions": latents,
            "rewards": rewards,
            "values": value_estimates,
            "log_probs": log_probs,
            "dones": jnp.zeros(batch_size),
        }
        metrics = ppo_trainer.train_step(trajectory)
    # ---

    assert sorted(metrics) == sorted(PPO_METRICS)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert ppo_trainer.step == 3
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before,
                         nnx.state(encoder, nnx.Param))
    assert max(jax.tree.leaves(moved)) > 0  # the trainer wrote its updates into the encoder
    # keyless draws come from the encoder's own stream: each call draws afresh
    a, _ = encoder(dataloader[0]["images"], return_log_prob=True)
    b, _ = encoder(dataloader[0]["images"], return_log_prob=True)
    assert not np.allclose(a, b)


def test_guide_gan_generator_as_policy_with_reinforce():
    import optax

    from rlgen.algorithms import REINFORCE_METRICS, REINFORCEConfig
    from rlgen.models import MLPDiscriminator, MLPGenerator
    from rlgen.models.gaussian import GaussianGeneratorPolicy
    from rlgen.trainers import REINFORCETrainer

    batch_size, latent_dim = 32, 16
    keys = jax.random.split(jax.random.key(0), 3)
    dataloader = [{"noise": jax.random.normal(k, (batch_size, latent_dim))} for k in keys]
    pretrained = MLPGenerator(latent_dim, 64, hidden=(32,), rngs=nnx.Rngs(0))
    generator = GaussianGeneratorPolicy.from_generator(pretrained, init_log_std=-2.0)
    discriminator = MLPDiscriminator(64, hidden=(32,), rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(generator, optax.adam(1e-3), wrt=nnx.Param)
    draw_keys = iter(jax.random.split(jax.random.key(1), 3))

    # --- the guide's snippet ---
    reinforce_config = REINFORCEConfig(entropy_coeff=0.01)
    reinforce_trainer = REINFORCETrainer(generator, optimizer, reinforce_config)
    for batch in dataloader:
        # the guide's `generator(batch["noise"])`: the policy's call is its distribution
        # (what the trainer scores), `sample` draws from it
        generated = generator.sample(batch["noise"], next(draw_keys))
        rewards = discriminator(generated)  # higher = more realistic
        rl_batch = {"observations": batch["noise"], "actions": generated, "rewards": rewards}
        metrics = reinforce_trainer.train_step(rl_batch)
    # ---

    assert sorted(metrics) == sorted(REINFORCE_METRICS)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert reinforce_trainer.step == 3
    z = dataloader[0]["noise"]
    assert not np.allclose(generator.mean(z), pretrained(z))  # the mean network was trained
    # and the trainer's own sampling path (model.sample(observations, key)) works too
    scores = lambda samples, conditions=None: discriminator(samples)  # noqa: E731
    metrics = reinforce_trainer.train_step({"observations": z[:8]}, scores, jax.random.key(2))
    assert np.isfinite(float(metrics["loss"]))


def test_guide_diffusion_model_with_grpo():
    import optax

    from rlgen.algorithms import GRPO_METRICS, GRPOConfig
    from rlgen.generative import DiffusionConfig
    from rlgen.generative.rollout import DiffusionSampler
    from rlgen.models import DenoisingPolicy, MLPDenoiser
    from rlgen.trainers import DiffusionTrainer, GRPOTrainer

    model = MLPDenoiser(64, num_classes=10, hidden=32, depth=1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    diffusion_config = DiffusionConfig(num_timesteps=100, prediction="v")
    images = _digits(16, steps=2)
    labels = np.arange(32, dtype=np.int32) % 10

    # --- the guide's snippet ---
    # Standard diffusion trainer for pre-training
    diffusion_trainer = DiffusionTrainer(model, optimizer, diffusion_config)
    for i, batch in enumerate(images):  # (a few steps; `rlgen digits diffusion` trains it)
        diffusion_trainer.train_step({**batch, "labels": labels[16 * i : 16 * (i + 1)]})

    # Fine-tune with GRPO. rlgen: the policy is the denoiser with its stochastic sampler
    # (its actions are whole trajectories, one log-prob per denoising step).
    sampler = DiffusionSampler(diffusion_trainer.schedule, prediction="v", num_steps=5)
    policy = DenoisingPolicy(model, sampler)
    grpo_config = GRPOConfig(num_generations=4, beta=0.01, reference="initial")
    grpo_trainer = GRPOTrainer(policy, nnx.Optimizer(policy, optax.adam(1e-4), wrt=nnx.Param),
                               grpo_config)

    def generate_samples(model, conditions, num_samples):
        conditions = jnp.repeat(conditions, num_samples)
        return policy.sample(conditions, jax.random.key(len(conditions)))  # [B, K + 1, 64]

    def reward_fn(samples, conditions):  # the sample is the trajectory's last state
        return -jnp.mean((samples[:, -1] - 0.5) ** 2, axis=-1)

    def compute_log_probs(model, samples, conditions):
        return policy(jnp.repeat(conditions, 4)).log_prob(samples)  # [B, K]

    dataloader = [{"conditions": jnp.array([3, 7])}, {"conditions": jnp.array([1, 2])}]
    for batch in dataloader:
        # Generate multiple samples per condition
        samples = generate_samples(model, batch["conditions"], num_samples=4)
        rewards = reward_fn(samples, batch["conditions"])

        # GRPO training step
        rl_batch = {
            "observations": jnp.repeat(batch["conditions"], 4),  # one row per sample
            "actions": samples,
            "rewards": rewards,
            "log_probs": compute_log_probs(model, samples, batch["conditions"]),
        }
        metrics = grpo_trainer.train_step(rl_batch)
    # ---

    assert sorted(metrics) == sorted(GRPO_METRICS)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["kl_penalty"]) > 0  # the second step moved off the reference
    assert grpo_trainer.step == 2 and diffusion_trainer.step == 2
