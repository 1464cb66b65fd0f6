"""Samplers as policies (`rlgen.generative.rollout`): the stochastic samplers keep the
ODE's marginals on Gaussian data, the recorded log-probs are those of the steps taken,
deterministic steps are exact ODE/DDIM steps, and bad input is refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen import ops
from rlgen.generative import diffusion, flow, rollout

M, S = 1.5, 0.5  # Gaussian data N(M, S^2) in every dimension


def exact_velocity(params, x, t, labels):
    """The flow's exact velocity for N(M, S^2) data on the straight path (sigma_min 0)."""
    del params, labels
    t = t[:, None]
    var = (1 - t) ** 2 + t**2 * S**2
    return M + (t * S**2 - (1 - t)) * (x - t * M) / var


SCHEDULE = diffusion.noise_schedule("cosine", 200)


def exact_epsilon(params, x, time, labels):
    """The exact epsilon prediction for N(M, S^2) data (time = t / T)."""
    del params, labels
    t = jnp.round(time * SCHEDULE.num_timesteps).astype(jnp.int32)
    abar = SCHEDULE.alphas_cumprod[t][:, None]
    a, sig = jnp.sqrt(abar), jnp.sqrt(1 - abar)
    var = abar * S**2 + 1 - abar
    return sig * (x - a * M) / var  # E[eps | x_t]


SAMPLERS = {
    "flow-grpo": (rollout.FlowSampler(noise="flow-grpo", noise_level=0.7, num_steps=100),
                  exact_velocity),
    "dance": (rollout.FlowSampler(noise="dance", noise_level=0.5, num_steps=100),
              exact_velocity),
    "ddim-eta1": (rollout.DiffusionSampler(SCHEDULE, num_steps=100, eta=1.0), exact_epsilon),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_stochastic_samplers_keep_the_odes_marginals(name):
    sampler, fn = SAMPLERS[name]
    samples, batch = jax.jit(
        lambda k: rollout.rollout(fn, None, sampler, k, (4000, 4), reduction="sum")
    )(jax.random.key(0))
    x = np.asarray(samples, np.float64).ravel()
    # 16,000 draws: the mean's standard error is 0.004, the std's 0.003; the
    # discretisation of 100 steps adds less than 0.02 (measured 0.002-0.011).
    assert abs(x.mean() - M) < 0.03, x.mean()
    assert abs(x.std() - S) < 0.03, x.std()
    assert np.all(np.asarray(batch["stochastic"]) == 1.0)
    assert np.all(np.isfinite(np.asarray(batch["log_probs"])))


def test_the_recorded_log_probs_are_those_of_the_steps_taken():
    sampler = rollout.FlowSampler(num_steps=5)
    params = 0.3
    apply_fn = lambda p, x, t, labels: p * x + t[:, None]  # noqa: E731
    _, batch = rollout.rollout(apply_fn, params, sampler, jax.random.key(1), (3, 2),
                               reduction="mean")
    traj = batch["trajectory"]
    ts, t_next = sampler.times()
    for k in range(5):
        mean, std = sampler.policy_step(apply_fn, params, traj[:, k], ts[k], t_next[k])
        expected = ops.gaussian_step_log_prob(traj[:, k + 1], mean, std, reduction="mean")
        np.testing.assert_allclose(batch["log_probs"][:, k], expected, rtol=1e-5, atol=1e-5)


def test_a_window_is_the_ode_outside_it():
    sampler = rollout.FlowSampler(num_steps=6)
    window = rollout.stochastic_window(6, 2, 2)
    noise = jax.random.normal(jax.random.key(2), (5, 3))
    _, batch = rollout.rollout(exact_velocity, None, sampler, jax.random.key(3), (5, 3),
                               reduction="sum", stochastic=window, noise=noise)
    traj, lp = batch["trajectory"], np.asarray(batch["log_probs"])
    np.testing.assert_array_equal(lp[:, [0, 1, 4, 5]], 0.0)
    assert np.all(lp[:, [2, 3]] != 0.0)
    ode = flow.sample_ode(lambda x, t, labels: exact_velocity(None, x, t, labels), noise, 6,
                          return_trajectory=True)[1]
    np.testing.assert_allclose(traj[:, 2], ode[2], rtol=1e-5, atol=1e-5)  # ODE before it
    assert not np.allclose(traj[:, 4], ode[4], atol=1e-3)  # the window's noise moved it


def test_ddim_deterministic_steps_are_eta_zero():
    sampler = rollout.DiffusionSampler(SCHEDULE, num_steps=10, eta=1.0)
    noise = jax.random.normal(jax.random.key(4), (3, 2))
    zeros = jnp.zeros(10)
    samples, batch = rollout.rollout(exact_epsilon, None, sampler, jax.random.key(5), (3, 2),
                                     reduction="sum", stochastic=zeros, noise=noise)
    ddim = diffusion.sample_ddim(lambda x, t, labels: exact_epsilon(None, x, t, labels),
                                 SCHEDULE, (3, 2), jax.random.key(6), num_steps=10, eta=0.0,
                                 noise=noise)
    np.testing.assert_allclose(samples, ddim, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch["log_probs"], 0.0)


def test_forward_process_and_targets_agree_with_the_families():
    x, noise, key = jnp.ones((4, 2)), jnp.full((4, 2), 0.5), jax.random.key(0)
    s = rollout.DiffusionSampler(SCHEDULE, prediction="v")
    t = s.training_time(key, 4)
    assert t.shape == (4,) and float(t.min()) >= 0 and float(t.max()) < 200
    x_t = s.noised(x, noise, t)
    np.testing.assert_allclose(s.to_x0(s.target(x, noise, t), x_t, t), x, atol=1e-4)
    f = rollout.FlowSampler()
    t = f.training_time(key, 4)
    x_t = f.noised(x, noise, t)
    np.testing.assert_allclose(f.to_x0(f.target(x, noise, t), x_t, t), x, atol=1e-5)


def test_guidance_is_applied_in_the_output():
    s = rollout.FlowSampler(guidance_scale=3.0)
    fn = lambda p, x, t, labels: x * (0.0 if labels is None else 1.0)  # noqa: E731
    out = s.output(fn, None, jnp.ones((2, 1)), 0.5, jnp.array([0, 1]))
    np.testing.assert_allclose(out, 3.0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: rollout.FlowSampler(noise="ddpm"), ValueError, "`noise`"),
        (lambda: rollout.FlowSampler(noise_level=-1.0), ValueError, "`noise_level`"),
        (lambda: rollout.DiffusionSampler(SCHEDULE, eta=-0.1), ValueError, "`eta`"),
        (lambda: rollout.DiffusionSampler("cosine"), TypeError, "`schedule`"),
        (lambda: rollout.rollout(exact_velocity, None, "flow", jax.random.key(0), (2, 1),
                                 reduction="sum"), TypeError, "`sampler`"),
        (lambda: rollout.rollout(exact_velocity, None, rollout.FlowSampler(), jax.random.key(0),
                                 (2, 1), reduction="max"), ValueError, "`reduction`"),
        (lambda: rollout.rollout(exact_velocity, None, rollout.FlowSampler(num_steps=3),
                                 jax.random.key(0), (2, 1), reduction="sum",
                                 stochastic=jnp.ones(4)), ValueError, "`stochastic`"),
        (lambda: rollout.stochastic_window(5, 4, 2), ValueError, "`start`"),
        (lambda: rollout.stochastic_window(5, 0, 6), ValueError, "`size`"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
