"""`DenoisingPolicy`: a denoiser and its sampler as a policy over trajectories. Its
log-probs are the rollout's, its entropies the steps' Gaussian entropies, and GRPO's
trainer fine-tunes a flow and a diffusion model through it unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen import ops
from rlgen.algorithms import GRPOConfig
from rlgen.generative import diffusion
from rlgen.generative.rollout import DiffusionSampler, FlowSampler, rollout
from rlgen.models import MLPDenoiser
from rlgen.models.denoising_policy import DenoisingPolicy
from rlgen.trainers import GRPOTrainer

SAMPLERS = {
    "flow": FlowSampler(num_steps=4),
    "diffusion": DiffusionSampler(diffusion.noise_schedule("cosine", 100), prediction="v",
                                  num_steps=4),
}


def make_policy(sampler, reduction="mean"):
    denoiser = MLPDenoiser(2, num_classes=3, hidden=16, depth=1, rngs=nnx.Rngs(0))
    return DenoisingPolicy(denoiser, sampler, reduction=reduction)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("reduction", ops.GAUSSIAN_REDUCTIONS)
def test_log_probs_are_the_rollouts(name, reduction):
    policy = make_policy(SAMPLERS[name], reduction)
    labels = jnp.array([0, 1, 2, 1])
    apply_fn = lambda p, x, t, lab: policy.denoiser(x, t, lab)  # noqa: E731
    _, batch = rollout(apply_fn, None, policy.sampler, jax.random.key(0), (4, 2),
                       reduction=reduction, labels=labels)
    dist = policy(labels)
    lp = dist.log_prob(batch["trajectory"])
    np.testing.assert_allclose(lp, batch["log_probs"], rtol=1e-4, atol=1e-4)
    # entropy of N(mean, std^2) per dimension: 0.5 log(2 pi e std^2), 0 where std = 0
    x, t, s = batch["trajectory"][:, 0], *policy.sampler.times()
    _, std = policy.sampler.step(jnp.zeros_like(x), x, t[0], s[0])
    per_dim = 0.5 * np.log(2 * np.pi * np.e * np.asarray(std, np.float64) ** 2)
    expected = per_dim.sum(1) if reduction == "sum" else per_dim.mean(1)
    np.testing.assert_allclose(dist.entropy()[:, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_grpo_trainer_fine_tunes_through_the_policy(name):
    policy = make_policy(SAMPLERS[name])
    opt = nnx.Optimizer(policy, optax.adam(1e-2), wrt=nnx.Param)
    trainer = GRPOTrainer(policy, opt, GRPOConfig(num_generations=4, beta=0.0))
    reward = lambda trajectory, labels=None: trajectory[:, -1, 0]  # noqa: E731
    prompts = {"observations": jnp.array([0, 1, 2, 0])}
    first = trainer.train_step(prompts, reward, jax.random.key(0))
    assert float(first["approx_kl"]) == 0.0 and float(first["clip_fraction"]) == 0.0
    rewards = [float(trainer.train_step(prompts, reward, jax.random.key(i))["mean_reward"])
               for i in range(1, 30)]
    # measured: the first-coordinate mean of the samples rises from ~0.2 to > 1
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.5, rewards


def test_bad_trajectory_is_named():
    policy = make_policy(SAMPLERS["flow"])
    with pytest.raises(ValueError, match="`trajectory`"):
        policy(jnp.zeros(2, jnp.int32)).log_prob(jnp.zeros((2, 3, 2)))
    with pytest.raises((TypeError, ValueError), match="`observations`"):
        policy(jnp.zeros((2, 2)))
