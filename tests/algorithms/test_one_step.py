"""One-step (per-sample) batches with continuous Gaussian actions, for PPO and REINFORCE.

A one-step batch (`log_probs`, `rewards`, `dones`, `values` all `[B]`) is a contextual
bandit: PPO must read it as the `T = 1` case (advantage `r - V`, value target `r`), with a
`distrax.MultivariateNormalDiag` policy whose `log_prob` and `entropy` are `[B]`.
Checked against float64 NumPy, against the same data laid out as `[B, 1]`, under `jit`,
and for the errors of mismatched shapes and non-finite rewards.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen.algorithms import PPO_METRICS, REINFORCE_METRICS, PPOConfig, REINFORCEConfig
from rlgen.algorithms.ppo import ppo, ppo_loss
from rlgen.algorithms.reinforce import reinforce, reinforce_loss

B, D_OBS, D_ACT = 8, 3, 2
LOG_2PI = np.log(2 * np.pi)


def gaussian(params, obs):
    """`N(obs @ W, diag(exp(log_std))^2)` and `V = obs @ v`: batch shape `obs.shape[:-1]`."""
    mean = obs @ params["W"]
    std = jnp.broadcast_to(jnp.exp(params["log_std"]), mean.shape)
    return distrax.MultivariateNormalDiag(mean, std), obs @ params["v"]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W": jnp.asarray(rng.normal(size=(D_OBS, D_ACT)), jnp.float32),
        "log_std": jnp.asarray([-0.3, 0.2], jnp.float32),
        "v": jnp.asarray(rng.normal(size=(D_OBS,)), jnp.float32),
    }


def make_batch(seed=1, params=None):
    rng = np.random.default_rng(seed)
    params = make_params() if params is None else params
    obs = jnp.asarray(rng.normal(size=(B, D_OBS)), jnp.float32)
    actions = jnp.asarray(rng.normal(size=(B, D_ACT)), jnp.float32)
    dist, _ = gaussian(params, obs)
    # behaviour log-probs off the current ones by up to +-0.4: some ratios are clipped
    old = dist.log_prob(actions) + jnp.asarray(rng.uniform(-0.4, 0.4, B), jnp.float32)
    return {
        "observations": obs,
        "actions": actions,
        "rewards": jnp.asarray(rng.normal(size=B), jnp.float32),
        "values": jnp.asarray(rng.normal(size=B), jnp.float32),
        "log_probs": old,
        "dones": jnp.zeros(B),  # as the guide passes them: irrelevant for one step
    }


def as_two_step_axes(batch):
    """The same data as a `[B, T = 1]` batch."""
    return {k: jnp.asarray(v)[:, None] for k, v in batch.items()}


def numpy_ppo(params, batch, config):
    """PPO's loss of a one-step batch in float64 NumPy (one minibatch)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    b = {k: np.asarray(v, np.float64) for k, v in batch.items()}
    mean, std = b["observations"] @ p["W"], np.exp(p["log_std"])
    logp = np.sum(-0.5 * ((b["actions"] - mean) / std) ** 2 - np.log(std) - 0.5 * LOG_2PI, -1)
    entropy = np.sum(np.log(std) + 0.5 * (LOG_2PI + 1.0)) * np.ones(B)
    values = b["observations"] @ p["v"]
    adv_raw = b["rewards"] - b["values"]  # T = 1, no bootstrap: delta = r - V
    adv = (adv_raw - adv_raw.mean()) / (adv_raw.std() + 1e-8)
    ratio = np.exp(logp - b["log_probs"])
    eps = config.clip_param
    policy_loss = np.mean(-np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv))
    value_loss = np.mean(0.5 * (values - b["rewards"]) ** 2)  # returns = A + V_old = r
    loss = policy_loss + config.vf_coeff * value_loss - config.entropy_coeff * entropy.mean()
    # clipping zeroes the gradient where the clipped term is the smaller one
    clip_fraction = np.mean(((ratio > 1 + eps) & (adv > 0)) | ((ratio < 1 - eps) & (adv < 0)))
    return {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy.mean(),
        "advantage_mean": adv_raw.mean(),
        "mean_reward": b["rewards"].mean(),
        "clip_fraction": clip_fraction,
    }


@pytest.mark.parametrize("dones", [0.0, 1.0])
def test_ppo_one_step_loss_matches_float64_numpy(dones):
    params, config = make_params(), PPOConfig()
    batch = dict(make_batch(), dones=jnp.full(B, dones))
    loss, metrics = jax.jit(lambda p, b: ppo_loss(p, b, gaussian, config))(params, batch)
    assert set(metrics) == set(PPO_METRICS)
    expected = numpy_ppo(params, batch, config)
    assert 0 < expected["clip_fraction"] < 1  # both branches of the clip are exercised
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(loss, expected["loss"], rtol=2e-5, atol=2e-6)
    # the gradient flows to every parameter (mean, log-std, value)
    grads = jax.grad(lambda p: ppo_loss(p, batch, gaussian, config)[0])(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_ppo_one_step_equals_the_same_data_as_one_step_rows():
    config = PPOConfig(num_epochs=3, num_minibatches=2, clip_value=0.5, target_kl=0.5)
    algo = ppo(gaussian, optax.adam(0.05), config, seed=3)
    batch = make_batch()
    flat_state, flat = jax.jit(algo.update)(algo.init(make_params()), batch)
    rows_state, rows = jax.jit(algo.update)(algo.init(make_params()), as_two_step_axes(batch))
    for a, b in zip(
        jax.tree.leaves(flat_state.params), jax.tree.leaves(rows_state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for name in PPO_METRICS:
        np.testing.assert_allclose(flat[name], rows[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert not np.allclose(flat_state.params["W"], make_params()["W"])  # it learned


def test_ppo_one_step_learns_a_gaussian_bandit():
    """Reward `-||a - target||^2`: the policy mean moves to the target, the std shrinks."""
    target = jnp.array([1.0, -0.5])
    params = {"W": jnp.zeros((D_OBS, D_ACT)), "log_std": jnp.zeros(D_ACT), "v": jnp.zeros(D_OBS)}
    config = PPOConfig(num_epochs=4, num_minibatches=4, entropy_coeff=0.0)
    algo = ppo(gaussian, optax.adam(0.01), config)
    obs = jnp.ones((64, D_OBS))

    def step(state, key):
        dist, values = gaussian(state.params, obs)
        actions = dist.sample(seed=key)
        batch = {"observations": obs, "actions": actions, "log_probs": dist.log_prob(actions),
                 "rewards": -jnp.sum((actions - target) ** 2, -1), "values": values,
                 "dones": jnp.ones(64)}
        return algo.update(state, batch)

    state, _ = jax.lax.scan(step, algo.init(params), jax.random.split(jax.random.key(0), 40))
    mean = obs[:1] @ state.params["W"]  # measured: within 0.01 of the target after 40 steps
    np.testing.assert_allclose(mean[0], target, atol=0.05)
    assert float(jnp.max(state.params["log_std"])) < -2.0  # from 0: the std shrinks


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("rewards", jnp.zeros((B, 1)), r"batch\['rewards'\] must have shape \(8,\).*got \(8, 1\)"),
        ("dones", jnp.zeros(B + 1), r"batch\['dones'\] must have shape \(8,\).*got \(9,\)"),
        ("values", jnp.zeros((B, 2)), r"batch\['values'\] must have shape \(8,\).*got \(8, 2\)"),
        ("mask", jnp.ones((B, 1)), r"batch\['mask'\] must have shape \(8,\)"),
        ("observations", jnp.zeros((B - 1, D_OBS)), r"observations.*\[B\] = \[8"),
        ("actions", jnp.zeros(()), "actions"),
    ],
)
def test_ppo_one_step_shape_errors_name_the_key(key, value, match):
    batch = dict(make_batch(), **{key: value})
    with pytest.raises(ValueError, match=match):
        ppo_loss(make_params(), batch, gaussian)


def test_ppo_one_step_policy_of_the_wrong_shape_is_an_error():
    def per_dimension(params, obs):  # log_prob [B, D]: not one value per sample
        dist, values = gaussian(params, obs)
        return distrax.Normal(dist.mean(), 1.0), values

    with pytest.raises(ValueError, match=r"log_prob\(actions\) of shape \(8, 2\)"):
        ppo_loss(make_params(), make_batch(), per_dimension)


def test_ppo_one_step_non_finite_rewards_are_refused_or_skipped():
    batch = make_batch()
    batch["rewards"] = batch["rewards"].at[3].set(jnp.nan)
    with pytest.raises(ValueError, match="non-finite"):
        ppo_loss(make_params(), batch, gaussian)
    algo = ppo(gaussian, optax.adam(0.05))
    state = algo.init(make_params())
    new, metrics = jax.jit(algo.update)(state, batch)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the update was skipped
    assert np.isnan(metrics["mean_reward"]) and float(metrics["skipped"]) == 1.0


# ----------------------------------------------------------------------------------------
# REINFORCE with a Gaussian policy and [B] rewards
# ----------------------------------------------------------------------------------------


def gaussian_policy(params, obs):
    return gaussian(params, obs)[0]


def test_reinforce_gaussian_loss_matches_float64_numpy():
    params = make_params()
    batch = {k: v for k, v in make_batch().items() if k in ("observations", "actions", "rewards")}
    config = REINFORCEConfig(baseline="mean", entropy_coeff=0.01)
    loss, metrics = jax.jit(lambda p, b: reinforce_loss(p, b, gaussian_policy, config))(
        params, batch
    )
    assert set(metrics) == set(REINFORCE_METRICS)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    obs, act, r = (np.asarray(batch[k], np.float64) for k in ("observations", "actions", "rewards"))
    mean, std = obs @ p["W"], np.exp(p["log_std"])
    logp = np.sum(-0.5 * ((act - mean) / std) ** 2 - np.log(std) - 0.5 * LOG_2PI, -1)
    adv = r - r.mean()
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    entropy = np.sum(np.log(std) + 0.5 * (LOG_2PI + 1.0))
    policy_loss = np.mean(-logp * adv)
    np.testing.assert_allclose(metrics["policy_loss"], policy_loss, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-6)
    np.testing.assert_allclose(loss, policy_loss - 0.01 * entropy, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(metrics["mean_reward"], r.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["reward_std"], r.std(), rtol=1e-5)


def test_reinforce_gaussian_one_step_equals_one_step_rows():
    batch = {k: v for k, v in make_batch().items() if k in ("observations", "actions", "rewards")}
    config = REINFORCEConfig(baseline="mean")
    flat = reinforce_loss(make_params(), batch, gaussian_policy, config)[1]
    rows = reinforce_loss(make_params(), as_two_step_axes(batch), gaussian_policy, config)[1]
    for name in REINFORCE_METRICS:
        np.testing.assert_allclose(flat[name], rows[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_reinforce_gaussian_learns_and_refuses_bad_rewards():
    target = jnp.array([1.0, -0.5])
    params = {"W": jnp.zeros((D_OBS, D_ACT)), "log_std": jnp.zeros(D_ACT), "v": jnp.zeros(D_OBS)}
    algo = reinforce(gaussian_policy, optax.adam(0.05), REINFORCEConfig(baseline="mean"))
    obs = jnp.ones((64, D_OBS))

    def step(state, key):
        actions = gaussian_policy(state.params, obs).sample(seed=key)
        batch = {"observations": obs, "actions": actions,
                 "rewards": -jnp.sum((actions - target) ** 2, -1)}
        return algo.update(state, batch)

    state, _ = jax.lax.scan(step, algo.init(params), jax.random.split(jax.random.key(0), 150))
    np.testing.assert_allclose((obs[:1] @ state.params["W"])[0], target, atol=0.2)
    batch = {"observations": obs[:B], "actions": jnp.zeros((B, D_ACT)), "rewards": jnp.ones((B, 2))}
    wrong = r"`rewards` must have shape \(8,\) or \(8, 1\).*got \(8, 2\)"
    with pytest.raises(ValueError, match=wrong):
        reinforce_loss(params, batch, gaussian_policy)
    batch["rewards"] = jnp.ones(B).at[0].set(jnp.inf)
    with pytest.raises(ValueError, match="non-finite"):
        reinforce_loss(params, batch, gaussian_policy)
