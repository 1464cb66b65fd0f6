"""The reference guide's two integration snippets, "VAE encoder as policy + PPO" and "GAN
generator as policy + REINFORCE", run as written with rlgen's import paths and built-in
models (a few steps each). The snippet bodies are kept as close to the guide's text as
rlgen allows; the comments say where they differ and why."""

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
