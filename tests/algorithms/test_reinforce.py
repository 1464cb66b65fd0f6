"""REINFORCE specifics: returns, sequence rewards, baselines, normalisation, metrics,
the update step and bad input.

A probe policy whose per-token log-probs *are* its parameters (one `[T]` row per sample,
selected by the observation = row index) exposes the advantages exactly: with the default
"sequence-mean-token-sum" aggregation, `d loss / d log_prob[i, t] = -A[i, t] / B`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen import algorithms as A
from rlgen import ops

B, T, G = 8, 5, 4
ROWS = jnp.arange(B)
RNG = np.random.default_rng(1)
LENGTHS = np.array([5, 1, 3, 4, 5, 2, 5, 3])
MASK = (np.arange(T)[None, :] < LENGTHS[:, None]).astype(np.float32)
PARAMS = jnp.asarray(RNG.normal(-1.0, 0.3, (B, T)), jnp.float32)
STEP_REWARDS = RNG.normal(size=(B, T)).astype(np.float32)
DONES = RNG.random((B, T)) < 0.3
ENTROPY = jnp.asarray(RNG.random((B, T)), jnp.float32)


class Probe:
    """A stand-in for a distribution: `log_prob` returns the given per-token log-probs."""

    def __init__(self, log_probs, entropy):
        self.log_probs, self._entropy = log_probs, entropy

    def log_prob(self, actions):
        return self.log_probs

    def entropy(self):
        return self._entropy


def probe_fn(params, rows):
    return Probe(params[rows], ENTROPY[rows] if params.ndim == 2 else ENTROPY[rows, 0])


def batch(**extra):
    out = {
        "observations": ROWS,
        "actions": jnp.zeros((B, T), jnp.int32),
        "rewards": jnp.asarray(STEP_REWARDS),
        "mask": jnp.asarray(MASK),
    }
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def plain(**kw):
    """No baseline, no normalisation, no entropy bonus: the advantage is the return."""
    defaults = {"normalize_returns": False, "entropy_coeff": 0.0, "gamma": 0.9}
    return A.REINFORCEConfig(**{**defaults, **kw})


def advantages(config, b, params=PARAMS):
    grad = jax.grad(lambda p: A.reinforce_loss(p, b, probe_fn, config)[0])(params)
    return -np.asarray(grad, np.float64) * B


def np_returns(rewards, gamma, dones, mask):
    """Float64 discounted returns, reset after episode ends, 0 on padding."""
    rewards = np.asarray(rewards, np.float64) * mask
    out = np.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        g = 0.0
        for t in reversed(range(rewards.shape[1])):
            if mask[i, t] == 0:
                g = 0.0
                continue
            g = rewards[i, t] + gamma * (1.0 - dones[i, t]) * g
            out[i, t] = g
    return out


def test_returns_with_dones_match_discounted_returns():
    config = plain()
    adv = advantages(config, batch(dones=jnp.asarray(DONES)))
    expected = np_returns(STEP_REWARDS, 0.9, DONES.astype(np.float64), MASK)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
    kernel = ops.discounted_returns(
        jnp.asarray(STEP_REWARDS), 0.9, dones=jnp.asarray(DONES), mask=jnp.asarray(MASK)
    )
    np.testing.assert_allclose(adv, kernel, rtol=1e-5, atol=1e-6)
    no_dones = advantages(config, batch())
    assert not np.allclose(no_dones, adv)  # the dones mattered
    np.testing.assert_allclose(
        no_dones, np_returns(STEP_REWARDS, 0.9, np.zeros((B, T)), MASK), rtol=1e-5, atol=1e-6
    )


def test_sequence_rewards_land_on_the_last_valid_step():
    rewards = RNG.normal(size=B).astype(np.float32)
    adv = advantages(plain(), batch(rewards=jnp.asarray(rewards)))
    t = np.arange(T)[None, :]
    expected = np.where(
        t < LENGTHS[:, None], rewards[:, None] * 0.9 ** (LENGTHS[:, None] - 1 - t), 0.0
    )
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
    _, metrics = A.reinforce_loss(PARAMS, batch(rewards=jnp.asarray(rewards)), probe_fn, plain())
    np.testing.assert_allclose(metrics["mean_reward"], rewards.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_std"], rewards.std(), rtol=1e-5)


def test_single_action_log_probs():
    """`[B]` log-probs (one action per sample): the advantage is the sample's reward."""
    rewards = RNG.normal(size=B).astype(np.float32)
    b = {"observations": ROWS, "actions": jnp.zeros(B, jnp.int32), "rewards": jnp.asarray(rewards)}
    adv = advantages(plain(), b, params=PARAMS[:, 0])
    np.testing.assert_allclose(adv, rewards, rtol=1e-5, atol=1e-6)


def test_mean_baseline_subtracts_the_mean_return_over_valid_steps():
    adv = advantages(plain(baseline="mean"), batch())
    returns = np_returns(STEP_REWARDS, 0.9, np.zeros((B, T)), MASK)
    mean = returns[MASK > 0].mean()
    np.testing.assert_allclose(adv, np.where(MASK > 0, returns - mean, 0.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group", [2, 4])
def test_rloo_baseline_leaves_each_sample_out_of_its_group(group):
    rewards = RNG.normal(size=B).astype(np.float32)
    config = plain(baseline="rloo", num_generations=G, gamma=1.0)
    b = batch(rewards=jnp.asarray(rewards), group_size=group if group != G else None)
    adv = advantages(config, b)
    r = rewards.astype(np.float64).reshape(-1, group)
    loo = (r - (r.sum(1, keepdims=True) - r) / (group - 1)).reshape(-1)
    np.testing.assert_allclose(adv, np.where(MASK > 0, loo[:, None], 0.0), rtol=1e-5, atol=1e-6)


def test_normalize_returns_whitens_over_valid_steps():
    on = advantages(plain(normalize_returns=True), batch())
    returns = np_returns(STEP_REWARDS, 0.9, np.zeros((B, T)), MASK)
    valid = returns[MASK > 0]
    expected = np.where(MASK > 0, (returns - valid.mean()) / (valid.std() + 1e-8), 0.0)
    np.testing.assert_allclose(on, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(on[MASK > 0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(on[MASK > 0].std(), 1.0, rtol=1e-4)
    off = advantages(plain(normalize_returns=False), batch())
    np.testing.assert_allclose(off, returns, rtol=1e-5, atol=1e-6)


def test_loss_metrics_and_entropy_bonus():
    config = plain(entropy_coeff=0.1, baseline="mean")
    loss, metrics = A.reinforce_loss(PARAMS, batch(), probe_fn, config)
    returns = np_returns(STEP_REWARDS, 0.9, np.zeros((B, T)), MASK)
    adv = np.where(MASK > 0, returns - returns[MASK > 0].mean(), 0.0)
    lp, ent = np.asarray(PARAMS, np.float64), np.asarray(ENTROPY, np.float64)
    policy_loss = (MASK * -lp * adv).sum() / B  # sequence-mean-token-sum
    entropy = (MASK * ent).sum() / MASK.sum()  # token-mean
    totals = (MASK * STEP_REWARDS).sum(1)
    expected = {
        "policy_loss": policy_loss,
        "entropy": entropy,
        "loss": policy_loss - 0.1 * entropy,
        "mean_reward": totals.mean(),
        "reward_std": totals.std(),
        "skipped": 0.0,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert float(loss) == float(metrics["loss"])


def test_token_mean_aggregation():
    config = plain(loss_aggregation="token-mean")
    adv = (
        -np.asarray(jax.grad(lambda p: A.reinforce_loss(p, batch(), probe_fn, config)[0])(PARAMS))
        * MASK.sum()
    )
    np.testing.assert_allclose(
        adv, np_returns(STEP_REWARDS, 0.9, np.zeros((B, T)), MASK), rtol=1e-5, atol=1e-5
    )


def test_update_is_one_clipped_optimizer_step_on_the_loss():
    config = A.REINFORCEConfig(max_grad_norm=0.5, baseline="mean")
    algo = A.reinforce(probe_fn, optax.sgd(2.0), config)
    state, metrics = jax.jit(algo.update)(algo.init(PARAMS), batch())
    loss, grad = jax.value_and_grad(lambda p: A.reinforce_loss(p, batch(), probe_fn, config)[0])(
        PARAMS
    )
    norm = float(jnp.linalg.norm(grad))
    assert norm > 0.5  # the clip binds
    np.testing.assert_allclose(state.params, PARAMS - 2.0 * grad * 0.5 / norm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    assert int(state.step) == 1


# ------------------------------------------------------------------------ bad input


def eval_update(b, config=None):
    config = A.REINFORCEConfig() if config is None else config
    algo = A.reinforce(probe_fn, optax.sgd(0.1), config)
    return jax.eval_shape(algo.update, algo.init(PARAMS), b)


def test_missing_batch_key_lists_the_required_keys():
    b = batch()
    del b["rewards"]
    with pytest.raises(
        ValueError,
        match=r"missing key\(s\) \['rewards'\]; required keys are "
        r"\['observations', 'actions', 'rewards'\]",
    ):
        eval_update(b)


def test_bad_batches_are_clear_errors():
    with pytest.raises(ValueError, match="unknown key.*'values'"):
        eval_update(batch(values=PARAMS))
    with pytest.raises(ValueError, match=r"rewards.*\(8,\) or \(8, 5\).*\(6,\)"):
        eval_update(batch(rewards=jnp.zeros(6)))
    with pytest.raises(ValueError, match="mask.*shape"):
        eval_update(batch(mask=jnp.ones((B, T - 1))))
    with pytest.raises(ValueError, match="dones"):
        eval_update(batch(dones=jnp.zeros((B, T + 1), bool)))
    with pytest.raises(TypeError, match="rewards.*floating"):
        eval_update(batch(rewards=jnp.ones(B, jnp.int32)))
    rloo = plain(baseline="rloo", num_generations=3)
    with pytest.raises(ValueError, match="not divisible by `group_size` 3"):
        eval_update(batch(), rloo)
    algo = A.reinforce(probe_fn, optax.sgd(0.1), plain(baseline="rloo"))
    with pytest.raises(TypeError, match="group_size"):
        jax.jit(algo.update)(algo.init(PARAMS), batch(group_size=4))


REINFORCE_BAD_FIELDS = [
    ("gamma", 1.01, ValueError),
    ("gamma", -0.5, ValueError),
    ("normalize_returns", 1, TypeError),
    ("entropy_coeff", -0.1, ValueError),
    ("baseline", "critic", ValueError),
    ("num_generations", 0, ValueError),
    ("num_generations", 4.0, TypeError),
    ("loss_aggregation", "sum", ValueError),
    ("max_grad_norm", -1.0, ValueError),
    ("gamma", "0.9", TypeError),
]


@pytest.mark.parametrize(("field", "value", "error"), REINFORCE_BAD_FIELDS)
def test_config_validates_every_field(field, value, error):
    with pytest.raises(error, match=field):
        A.REINFORCEConfig(**{field: value})


def test_rloo_needs_groups_of_two():
    with pytest.raises(ValueError, match="num_generations"):
        A.REINFORCEConfig(baseline="rloo", num_generations=1)
    A.REINFORCEConfig(baseline="rloo", num_generations=2)


def test_config_defaults_are_the_guides():
    config = A.REINFORCEConfig()
    assert (config.gamma, config.normalize_returns, config.entropy_coeff) == (0.99, True, 0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gamma = 0.5


def test_factory_rejects_another_config_type():
    with pytest.raises(TypeError, match="REINFORCEConfig"):
        A.reinforce(probe_fn, optax.sgd(0.1), A.GRPOConfig())
