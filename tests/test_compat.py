"""Compatibility with Artifex's RL training module (`artifex.generative_models.training`).

Code written for Artifex runs on rlgen once its imports point at rlgen. The tests below
are that code as a migrating user writes it, with rlgen's import paths, on rlgen's
built-in models, followed by checks of what it returns and of the state it leaves. Where
rlgen differs from Artifex on purpose, the test shows what rlgen does instead.

`docs/compatibility.md` tells users the same story; the `test_page_*` tests at the end
compare its tables (config fields and defaults, batch keys, metrics, reward signatures,
hooks, hierarchy) with the library, so the page cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rlgen
from rlgen.algorithms import DPO_METRICS, GRPO_METRICS, PPO_METRICS, REINFORCE_METRICS
from rlgen.models import (
    MLPActorCritic,
    MLPPolicy,
    SamplingConfig,
    TransformerConfig,
    TransformerLM,
)

PAGE = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"

# Small problems: observations of OBS features, A discrete actions.
OBS, A = 3, 4

# The fields Artifex documented for each config, with its defaults: rlgen keeps both.
ARTIFEX_CONFIG_FIELDS = {
    "REINFORCEConfig": {"gamma": 0.99, "normalize_returns": True, "entropy_coeff": 0.01},
    "PPOConfig": {
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_param": 0.2,
        "vf_coeff": 0.5,
        "entropy_coeff": 0.01,
        "max_grad_norm": 0.5,
    },
    "GRPOConfig": {
        "num_generations": 4,
        "clip_param": 0.2,
        "beta": 0.01,
        "entropy_coeff": 0.01,
        "gamma": 0.99,
    },
    "DPOConfig": {"beta": 0.1, "label_smoothing": 0.0, "reference_free": False},
}

# Where Artifex's modules live in rlgen.
MODULES = {
    "artifex.generative_models.training": "rlgen",
    "artifex.generative_models.training.rl.utils": "rlgen.ops",
    "artifex.generative_models.training.callbacks": "rlgen.callbacks",
    "artifex.generative_models.training.trainers": "rlgen.trainers",
}

# Artifex's hierarchy: every class of it exists in rlgen.
ARTIFEX_TRAINERS = (
    "VAETrainer",
    "GANTrainer",
    "DiffusionTrainer",
    "FlowTrainer",
    "EnergyTrainer",
    "AutoregressiveTrainer",
    "REINFORCETrainer",
    "PPOTrainer",
    "GRPOTrainer",
    "DPOTrainer",
)


# ------------------------------------------------------------------------------ helpers


def host(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def formatted(value, spec: str) -> float:
    """`value` formatted as user code prints it (`f"{value:.4f}"`), read back."""
    text = format(value, spec)
    number = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    assert math.isfinite(number), text
    return number


def params_of(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_metrics(metrics, names) -> dict[str, float]:
    """`metrics` has exactly `names`, each a finite 0-d array; returns them as floats."""
    assert set(metrics) == set(names)
    assert all(jnp.shape(v) == () for v in metrics.values())
    values = host(metrics)
    assert all(math.isfinite(v) for v in values.values()), values
    return values


# Random inputs come from NumPy (eager jax.random calls would each compile).


def normal(rng, shape, scale=1.0, loc=0.0) -> jax.Array:
    return jnp.asarray(rng.normal(loc, scale, shape).astype(np.float32))


def integers(rng, shape, low, high) -> jax.Array:
    return jnp.asarray(rng.integers(low, high, shape).astype(np.int32))


def np_log_softmax(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def action_log_probs(logits, actions) -> jax.Array:
    """log softmax(logits)[actions]: what a collecting policy records."""
    logp = np_log_softmax(logits)
    picked = np.take_along_axis(logp, np.asarray(actions)[..., None], axis=-1)[..., 0]
    return jnp.asarray(picked.astype(np.float32))


def policy(seed=0):
    return MLPPolicy(OBS, A, hidden=(8,), rngs=nnx.Rngs(seed))


def trajectories(seed=0, batch=4, horizon=5):
    """`[B, T]` rollouts. Rows 0 and 1 end in an episode end (row 0 also after step 1);
    rows 2 and 3 are cut off, so a bootstrap value matters for them."""
    rng = np.random.default_rng(seed)
    dones = np.zeros((batch, horizon), np.float32)
    dones[:2, -1] = dones[0, 1] = 1.0
    return {
        "observations": normal(rng, (batch, horizon, OBS)),
        "actions": integers(rng, (batch, horizon), 0, A),
        "rewards": normal(rng, (batch, horizon)),
        "dones": jnp.asarray(dones),
    }


def np_discounted(rewards, gamma, dones=None):
    rewards = np.asarray(rewards, np.float64)
    dones = np.zeros_like(rewards) if dones is None else np.asarray(dones, np.float64)
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * (1 - dones[:, t]) * running
        out[:, t] = running
    return out


def np_gae(rewards, values, dones, gamma=0.99, lam=0.95):
    """GAE of `[B, T]` rewards with `[B, T + 1]` values (the bootstrap value last)."""
    rewards, values, dones = (np.asarray(x, np.float64) for x in (rewards, values, dones))
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        discount = gamma * (1 - dones[:, t])
        delta = rewards[:, t] + discount * values[:, t + 1] - values[:, t]
        running = delta + discount * lam * running
        out[:, t] = running
    return out


# -------------------------------------------------------------------------------- names


def test_artifex_names_import_from_rlgen():
    from rlgen import (
        ClippedReward,
        CompositeReward,
        ConstantReward,
        DPOConfig,
        DPOTrainer,
        GRPOConfig,
        GRPOTrainer,
        PPOConfig,
        PPOTrainer,
        REINFORCEConfig,
        REINFORCETrainer,
        RewardFunction,
        ScaledReward,
        ThresholdReward,
    )

    configs = (REINFORCEConfig, PPOConfig, GRPOConfig, DPOConfig)
    trainers = (REINFORCETrainer, PPOTrainer, GRPOTrainer, DPOTrainer)
    rewards = (ConstantReward, CompositeReward, ThresholdReward, ScaledReward, ClippedReward)
    for obj in (*configs, *trainers, RewardFunction, *rewards):
        assert obj.__name__ in rlgen.__all__
    assert all(dataclasses.is_dataclass(cls) for cls in configs + rewards)
    for trainer in trainers:
        assert issubclass(trainer, rlgen.trainers.Trainer)
        assert getattr(rlgen.trainers, trainer.__name__) is trainer
    assert isinstance(ConstantReward(), RewardFunction)


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", sorted(ARTIFEX_CONFIG_FIELDS))
def test_config_keeps_artifex_fields_and_defaults(name):
    cls = getattr(rlgen, name)
    fields = ARTIFEX_CONFIG_FIELDS[name]
    assert cls(**fields) == cls()  # Artifex's configuration examples spell out its defaults
    for field, value in fields.items():
        assert getattr(cls(), field) == value, field


def test_config_errors_at_construction():
    with pytest.raises(ValueError, match="gamma"):
        rlgen.PPOConfig(gamma=1.5)
    with pytest.raises(ValueError, match="reference"):
        rlgen.GRPOConfig(reference="frozen")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rlgen.DPOConfig().beta = 0.5  # frozen: configs are hashable and safe to share


# ----------------------------------------------------------------------------- REINFORCE


def test_reinforce_train_step():
    from rlgen import REINFORCEConfig, REINFORCETrainer

    data = trajectories(seed=1)
    model = policy()
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    trainer = REINFORCETrainer(model, optimizer, REINFORCEConfig(gamma=0.99, entropy_coeff=0.01))
    before = params_of(model)
    metrics = trainer.train_step(
        {
            "observations": data["observations"],
            "actions": data["actions"],
            "rewards": data["rewards"],
        }
    )

    values = assert_metrics(metrics, REINFORCE_METRICS)
    assert formatted(metrics["policy_loss"], ".4f") == pytest.approx(
        values["policy_loss"], abs=5e-5
    )
    totals = np.asarray(data["rewards"], np.float64).sum(-1)  # each episode's total reward
    assert values["mean_reward"] == pytest.approx(totals.mean(), rel=1e-5)
    assert values["reward_std"] == pytest.approx(totals.std(), rel=1e-4)
    assert 0.0 < values["entropy"] <= math.log(A) + 1e-5
    # the step reached the model in place
    assert trainer.step == 1
    assert any(not np.array_equal(b, a) for b, a in zip(before, params_of(model), strict=True))


# ----------------------------------------------------------------------------------- PPO


def test_ppo_computes_gae_from_the_trajectory():
    from rlgen import PPOConfig, PPOTrainer

    data = trajectories(seed=2)
    model = MLPActorCritic(OBS, A, hidden=(8,), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param)
    config = PPOConfig(gamma=0.99, gae_lambda=0.95, clip_param=0.2, vf_coeff=0.5)
    trainer = PPOTrainer(model, optimizer, config)

    logits, values = model(data["observations"])  # collected with the initial model
    bootstrap = normal(np.random.default_rng(3), (4, 1))
    trajectory = {
        **data,
        "values": jnp.concatenate([values, bootstrap], axis=1),  # [B, T + 1]
        "log_probs": action_log_probs(logits, data["actions"]),
    }
    metrics = trainer.train_step(trajectory)

    out = assert_metrics(metrics, PPO_METRICS)
    for key in ("policy_loss", "value_loss", "entropy"):
        assert formatted(metrics[key], ".4f") == pytest.approx(out[key], abs=5e-5)
    assert out["value_loss"] >= 0.0
    # an untrained policy (output gain 0.01) is near uniform over the A actions
    assert out["entropy"] == pytest.approx(math.log(A), abs=1e-2)
    assert 0.0 <= out["clip_fraction"] <= 1.0
    assert trainer.step == 1
    # GAE is computed by the trainer, from rewards, values and dones
    gae = np_gae(data["rewards"], trajectory["values"], data["dones"])
    assert out["advantage_mean"] == pytest.approx(gae.mean(), rel=1e-4, abs=1e-6)

    # `values` with T steps: no bootstrap (rows 2 and 3 were cut off, so this differs)
    metrics = trainer.train_step({**trajectory, "values": values})
    no_bootstrap = np_gae(
        data["rewards"], np.pad(np.asarray(values), ((0, 0), (0, 1))), data["dones"]
    )
    assert float(metrics["advantage_mean"]) == pytest.approx(no_bootstrap.mean(), rel=1e-4)
    assert not np.isclose(no_bootstrap.mean(), gae.mean())
    assert trainer.step == 2


# ---------------------------------------------------------------------------------- GRPO


def grpo_inputs(seed=3, num_prompts=8, group=4):
    """8 prompts x 4 completions = 32 rows (groups are contiguous); one action per row.

    The first 4 groups tie (equal rewards within each), the other 4 do not."""
    rng = np.random.default_rng(seed)
    prompts = rng.normal(size=(num_prompts, OBS)).astype(np.float32)
    observations = jnp.asarray(np.repeat(prompts, group, axis=0))
    actions = integers(rng, (num_prompts * group,), 0, A)
    old_log_probs = action_log_probs(policy()(observations), actions)  # the initial policy's
    rewards = (np.asarray(actions) == 0) + rng.normal(0.0, 0.1, 32)
    rewards[:16] = np.repeat([0.0, 1.0, 0.0, 1.0], group)  # 4 groups whose completions tie
    rewards = jnp.asarray(rewards, jnp.float32)
    # a reference a little away from the policy, so the KL is not 0
    return observations, actions, rewards, old_log_probs, old_log_probs + normal(rng, 32, 0.3)


@pytest.fixture(scope="module")
def grpo_run():
    """A GRPO trainer after one step on a grouped batch (no reference)."""
    from rlgen import GRPOConfig, GRPOTrainer

    observations, actions, rewards, old_log_probs, ref_log_probs = grpo_inputs()
    model = policy()
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    trainer = GRPOTrainer(
        model, optimizer, GRPOConfig(num_generations=4, clip_param=0.2, beta=0.01)
    )
    batch = {
        "observations": observations,  # 8 prompts, each repeated on 4 contiguous rows
        "actions": actions,
        "rewards": rewards,
        "log_probs": old_log_probs,
        "group_size": 4,
    }
    metrics = trainer.train_step(batch)
    return trainer, batch, metrics, ref_log_probs


def test_grpo_train_step(grpo_run):
    _, batch, metrics, _ = grpo_run
    values = assert_metrics(metrics, GRPO_METRICS)
    assert formatted(metrics["policy_loss"], ".4f") == pytest.approx(
        values["policy_loss"], abs=5e-5
    )
    # the batch's log-probs are the policy's own: ratio 1, KL(old || current) 0
    assert formatted(metrics["approx_kl"], ".4f") == 0.0
    assert abs(values["approx_kl"]) < 1e-6
    assert values["kl_penalty"] == 0.0  # no ref_log_probs in this batch
    assert values["mean_reward"] == pytest.approx(float(np.mean(batch["rewards"])), rel=1e-5)

    # advantages normalised within each group of 4 contiguous rows (unbiased std + 1e-4); the
    # tied groups get 0, so grouping rows any other way would change the spread
    def spread(groups):
        adv = (groups - groups.mean(1, keepdims=True)) / (
            groups.std(1, ddof=1, keepdims=True) + 1e-4
        )
        return adv.std()

    rewards = np.asarray(batch["rewards"], np.float64)
    assert values["group_advantage_std"] == pytest.approx(spread(rewards.reshape(8, 4)), rel=1e-4)
    interleaved = rewards.reshape(4, 8).T  # rows g, g + 8, g + 16, g + 24: not rlgen's groups
    assert not np.isclose(spread(interleaved), spread(rewards.reshape(8, 4)), rtol=1e-3)


def test_grpo_kl_penalty_from_ref_log_probs(grpo_run):
    """A `ref_log_probs` key turns the penalty on; the group size comes from the config."""
    trainer, batch, _, ref_log_probs = grpo_run
    batch = {k: v for k, v in batch.items() if k != "group_size"}
    # the k3 estimate of KL(policy || reference) at the parameters the step starts from
    current = action_log_probs(trainer.model(batch["observations"]), batch["actions"])
    log_r = np.asarray(ref_log_probs, np.float64) - np.asarray(current)
    expected = np.mean(np.expm1(log_r) - log_r)
    step = trainer.step

    metrics = trainer.train_step({**batch, "ref_log_probs": ref_log_probs})
    assert formatted(metrics.get("kl_penalty", 0), ".4f") > 0.0  # the reference differs
    assert float(metrics["kl_penalty"]) == pytest.approx(expected, rel=1e-4)
    assert_metrics(metrics, GRPO_METRICS)
    assert trainer.step == step + 1


def test_grpo_groups_are_contiguous_rows():
    from rlgen.ops import group_advantages

    rewards = jnp.array([0.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0])
    adv = np.asarray(group_advantages(rewards, 4))
    np.testing.assert_array_equal(adv[4:], 0.0)  # an all-equal group: 0, never NaN
    assert np.all(np.isfinite(adv)) and adv[0] < adv[1] < adv[2] < adv[3]
    assert adv[:4].sum() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="not divisible"):
        group_advantages(rewards[:7], 4)


def test_grpo_batch_not_divisible_by_group_size():
    from rlgen import GRPOConfig, GRPOTrainer

    model = policy()
    trainer = GRPOTrainer(
        model, nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param), GRPOConfig(num_generations=4)
    )
    observations, actions, rewards, _, _ = grpo_inputs()
    batch = {"observations": observations, "actions": actions, "rewards": rewards}
    with pytest.raises(ValueError, match="30 rows.*not divisible.*4"):
        trainer.train_step({k: v[:30] for k, v in batch.items()})
    # the batch's group_size wins over num_generations: 32 rows do not split into 3s
    with pytest.raises(ValueError, match="32 rows.*not divisible.*3"):
        trainer.train_step({**batch, "group_size": 3})
    assert trainer.step == 0


# ----------------------------------------------------------------------------------- DPO


def dpo_inputs(seed, batch=4, horizon=3):
    """Precomputed log-probs in Artifex's form, and the sequences rlgen trains from."""
    rng = np.random.default_rng(seed)
    log_probs = -jnp.abs(normal(rng, (4, batch), 5.0))
    log_prob_batch = {
        "chosen_log_probs": log_probs[0],
        "rejected_log_probs": log_probs[1],
        "ref_chosen_log_probs": log_probs[2],
        "ref_rejected_log_probs": log_probs[3],
    }
    sequences = {
        f"{side}_{key}": make(rng)
        for side in ("chosen", "rejected")
        for key, make in (
            ("observations", lambda r: normal(r, (batch, horizon, OBS))),
            ("actions", lambda r: integers(r, (batch, horizon), 0, A)),
        )
    }
    return log_prob_batch, sequences


SEQUENCE_KEYS = (
    r"'chosen_observations', 'chosen_actions', 'rejected_observations', 'rejected_actions'"
)


def test_dpo_trains_from_sequences():
    from rlgen import DPOConfig, DPOTrainer

    log_prob_batch, sequences = dpo_inputs(seed=4)
    model = policy()
    optimizer = nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param)
    config = DPOConfig(beta=0.1)
    trainer = DPOTrainer(model, optimizer, config)

    # Artifex's log-prob batch: no gradient could reach the model, so it is refused
    with pytest.raises(ValueError, match="needs sequences.*" + SEQUENCE_KEYS):
        trainer.train_step(log_prob_batch)
    assert trainer.step == 0

    # its reference keys belong to reference="batch"; the default ignores nothing silently
    refs = {k: v for k, v in log_prob_batch.items() if k.startswith("ref_")}
    with pytest.raises(ValueError, match="reference='batch'"):
        trainer.train_step({**sequences, **refs})

    # the functional loss still evaluates it
    loss, m = rlgen.algorithms.dpo_loss(log_prob_batch, config)
    c, r, ref_c, ref_r = (np.asarray(v, np.float64) for v in log_prob_batch.values())
    margin = (c - ref_c) - (r - ref_r)
    assert float(loss) == pytest.approx(np.mean(np.logaddexp(0.0, -0.1 * margin)), rel=1e-5)
    assert set(m) == set(DPO_METRICS)
    assert float(m["reward_accuracy"]) == pytest.approx(np.mean(margin > 0))

    # sequences train; the reference is a frozen copy of the model as it was built
    metrics = trainer.train_step(sequences)
    values = assert_metrics(metrics, DPO_METRICS)
    assert format(metrics["reward_accuracy"], ".2%") == "0.00%"  # no pair won yet
    assert formatted(metrics["dpo_loss"], ".4f") == pytest.approx(math.log(2.0), abs=1e-4)
    assert values["dpo_loss"] == values["loss"]
    # the gradient reached the model: at the second step the chosen sequences gained
    values = host(trainer.train_step(sequences))
    assert values["reward_margin"] > 0.0
    assert values["reward_accuracy"] > 0.0
    assert values["dpo_loss"] < math.log(2.0)


def test_simpo_is_reference_free_dpo():
    from rlgen import DPOConfig, DPOTrainer

    log_prob_batch, sequences = dpo_inputs(seed=5)
    log_prob_batch = {k: log_prob_batch[k] for k in ("chosen_log_probs", "rejected_log_probs")}
    model = policy()
    optimizer = nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param)
    config = DPOConfig(beta=0.1, reference_free=True)
    trainer = DPOTrainer(model, optimizer, config)
    assert config.loss_type == "simpo"

    with pytest.raises(ValueError, match="needs sequences.*'chosen_observations'"):
        trainer.train_step(log_prob_batch)
    # SimPO divides by the lengths: the functional loss asks for them
    with pytest.raises(ValueError, match="chosen_lengths"):
        rlgen.algorithms.dpo_loss(log_prob_batch, config)
    lengths = jnp.full((4,), 3.0)
    loss, _ = rlgen.algorithms.dpo_loss(
        {**log_prob_batch, "chosen_lengths": lengths, "rejected_lengths": lengths}, config
    )
    c, r = (np.asarray(v, np.float64) for v in log_prob_batch.values())
    u = 0.1 * (c / 3.0 - r / 3.0) - 0.5  # margin simpo_gamma = 0.5
    assert float(loss) == pytest.approx(np.mean(np.logaddexp(0.0, -u)), rel=1e-5)

    # with sequences: the policy's mean token log-probs, no reference
    def mean_log_prob(side):
        obs, act = sequences[f"{side}_observations"], sequences[f"{side}_actions"]
        return np.asarray(action_log_probs(model(obs), act), np.float64).mean(-1)

    chosen, rejected = mean_log_prob("chosen"), mean_log_prob("rejected")
    values = assert_metrics(trainer.train_step(sequences), DPO_METRICS)
    u = 0.1 * (chosen - rejected) - config.simpo_gamma
    assert values["dpo_loss"] == pytest.approx(np.mean(np.logaddexp(0.0, -u)), rel=1e-4)
    assert values["chosen_reward"] == pytest.approx(np.mean(0.1 * chosen), rel=1e-4)
    assert trainer.step == 1


# ------------------------------------------------------------------------------- rewards


def base_reward(samples, conditions=None):
    """A score per sample: the mean of its features."""
    return jnp.mean(samples.reshape(samples.shape[0], -1), axis=-1)


def first_feature(samples, conditions=None):
    return jnp.tanh(samples[:, 0])


def second_feature_squared(samples, conditions=None):
    return samples[:, 1] ** 2


SAMPLES = jnp.array([[-4.0, 0.5, 0.0], [0.2, 0.4, 0.6], [0.6, 0.6, 0.6], [2.0, 1.0, 3.0]])


def test_constant_reward():
    from rlgen import ConstantReward, RewardFunction

    reward_fn = ConstantReward(value=1.0)
    np.testing.assert_array_equal(reward_fn(SAMPLES), np.ones(4, np.float32))
    assert isinstance(reward_fn, RewardFunction)


def test_composite_reward():
    from rlgen import CompositeReward

    reward_fn = CompositeReward(
        reward_fns=[first_feature, second_feature_squared], weights=[0.3, 0.7]
    )
    expected = 0.3 * first_feature(SAMPLES) + 0.7 * second_feature_squared(SAMPLES)
    np.testing.assert_allclose(reward_fn(SAMPLES), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(reward_fn)(SAMPLES), expected, rtol=1e-6)


def test_threshold_reward():
    from rlgen import ThresholdReward

    reward_fn = ThresholdReward(
        reward_fn=base_reward, threshold=0.5, above_value=1.0, below_value=0.0
    )
    scores = np.asarray(base_reward(SAMPLES))  # [-1.17, 0.4, 0.6, 2.0]
    np.testing.assert_array_equal(reward_fn(SAMPLES), np.where(scores > 0.5, 1.0, 0.0))
    np.testing.assert_array_equal(reward_fn(SAMPLES), [0.0, 0.0, 1.0, 1.0])
    # positional, with the default values; a score equal to the threshold is not above it
    at_threshold = ThresholdReward(base_reward, 0.5)(jnp.full((1, 3), 0.5))
    np.testing.assert_array_equal(at_threshold, [0.0])


def test_scaled_reward():
    from rlgen import ScaledReward

    reward_fn = ScaledReward(reward_fn=base_reward, scale=10.0)
    np.testing.assert_allclose(reward_fn(SAMPLES), 10.0 * base_reward(SAMPLES), rtol=1e-6)


def test_clipped_reward():
    from rlgen import ClippedReward

    reward_fn = ClippedReward(reward_fn=base_reward, min_value=-1.0, max_value=1.0)
    out = np.asarray(reward_fn(SAMPLES))
    np.testing.assert_allclose(out, np.clip(base_reward(SAMPLES), -1.0, 1.0), rtol=1e-6)
    assert out.min() == -1.0 and out.max() == 1.0  # both bounds bite on these samples


# Custom rewards, as a user writes them against the protocol.


class TargetSimilarity:
    """Cosine similarity between each image's embedding and a text's."""

    def __init__(self, encoder, text):
        self.encoder = encoder
        self.target = encoder.embed_text(text)

    def __call__(self, samples, conditions=None, **kwargs):
        return self.encoder.embed_images(samples) @ self.target


class SafeWeightedReward:
    """A weighted sum of similarity, quality and safety; -1 for an unsafe image."""

    def __init__(self, encoder, quality_model, safety_model, text, weights=(0.4, 0.3, 0.3)):
        self.similarity = TargetSimilarity(encoder, text)
        self.quality_model, self.safety_model, self.weights = quality_model, safety_model, weights

    def __call__(self, samples, conditions=None, **kwargs):
        p_safe = jax.nn.softmax(self.safety_model(samples), axis=-1)[:, 0]
        parts = (self.similarity(samples), jax.nn.sigmoid(self.quality_model(samples)), p_safe)
        total = sum(w * part for w, part in zip(self.weights, parts, strict=True))
        return jnp.where(p_safe > 0.5, total, -1.0)


class LengthPenalizedReward:
    """A sequence score minus 0.1 log(length + 1) / log(100), ignoring padding."""

    def __init__(self, score_fn, pad_id=0):
        self.score_fn, self.pad_id = score_fn, pad_id

    def __call__(self, samples, conditions=None, **kwargs):
        lengths = jnp.sum(samples != self.pad_id, axis=-1)
        return self.score_fn(samples) - 0.1 * jnp.log(lengths + 1) / jnp.log(100.0)


class LinearEncoder:
    """Unit embeddings of width 8 for images `[B, 4, 4, 3]` and for text."""

    def __init__(self):
        rng = np.random.default_rng(6)
        self.image_proj = normal(rng, (4 * 4 * 3, 8))
        self.text_table = rng.normal(size=(256, 8)).astype(np.float32)

    def embed_images(self, images):
        emb = images.reshape(images.shape[0], -1) @ self.image_proj
        return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)

    def embed_text(self, text):
        emb = self.text_table[[ord(ch) % 256 for ch in text]].sum(0)
        return jnp.asarray(emb / np.linalg.norm(emb))


def quality_model(images):
    return jnp.mean(images, axis=(1, 2, 3)) * 4.0  # [B] logits


def safety_model(images):
    """[B, 2] logits (safe, unsafe): an image is unsafe when its red channel dominates."""
    red = jnp.mean(images[..., 0], axis=(1, 2))
    rest = jnp.mean(images[..., 1:], axis=(1, 2, 3))
    return jnp.stack([rest - red, red - rest], axis=-1) * 10.0


def sevens(tokens):
    return jnp.mean((tokens == 7).astype(jnp.float32), axis=-1)  # [B]


def test_custom_reward_functions():
    from rlgen import CompositeReward, RewardFunction
    from rlgen.rewards import call_reward

    images = np.random.default_rng(7).uniform(size=(5, 4, 4, 3)).astype(np.float32)
    images[1:, ..., 0] *= 0.1  # little red: safe images
    images[0, ..., 0] = 5.0  # a "red", unsafe image
    images = jnp.asarray(images)
    encoder = LinearEncoder()

    similarity = TargetSimilarity(encoder, "a photo of a cat")
    assert isinstance(similarity, RewardFunction)
    out = np.asarray(jax.jit(similarity)(images))
    assert out.shape == (5,) and np.all(np.abs(out) <= 1 + 1e-5)
    np.testing.assert_allclose(call_reward(jax.jit(similarity), images), out)  # rlgen accepts it

    weighted = SafeWeightedReward(encoder, quality_model, safety_model, "a cat")
    assert isinstance(weighted, RewardFunction)
    out = np.asarray(jax.jit(weighted)(images))
    assert out.shape == (5,) and np.all(np.isfinite(out))
    assert out[0] == -1.0 and np.all(out[1:] > -1.0)

    tokens = jnp.asarray(np.array([[7, 7, 3, 0, 0], [1, 2, 3, 4, 5], [7, 0, 0, 0, 0]]))
    penalized = LengthPenalizedReward(sevens)
    assert isinstance(penalized, RewardFunction)
    expected = np.asarray(sevens(tokens)) - 0.1 * np.log(np.array([3, 5, 1]) + 1) / np.log(100)
    np.testing.assert_allclose(jax.jit(penalized)(tokens), expected, rtol=1e-6)

    both = CompositeReward([similarity, weighted], weights=[0.5, 0.5])
    assert np.asarray(jax.jit(both)(images)).shape == (5,)


# ----------------------------------------------------------------------------- utilities


def test_compute_discounted_returns():
    from rlgen.ops import compute_discounted_returns

    data = trajectories(seed=8)
    rewards, dones = data["rewards"], data["dones"]
    returns = compute_discounted_returns(rewards, gamma=0.99)
    assert returns.shape == rewards.shape
    np.testing.assert_allclose(returns, np_discounted(rewards, 0.99), rtol=1e-5, atol=1e-6)
    restarted = compute_discounted_returns(rewards, gamma=0.99, dones=dones)  # an rlgen addition
    expected = np_discounted(rewards, 0.99, dones)
    np.testing.assert_allclose(restarted, expected, rtol=1e-5, atol=1e-6)


def test_compute_gae_advantages():
    from rlgen.ops import compute_gae_advantages

    data = trajectories(seed=9)
    values = normal(np.random.default_rng(10), (4, 6))  # V(s_0 .. s_T), the bootstrap last
    advantages = compute_gae_advantages(
        rewards=data["rewards"], values=values, dones=data["dones"], gamma=0.99, gae_lambda=0.95
    )
    expected = np_gae(data["rewards"], values, data["dones"])
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)


def test_normalize_advantages():
    from rlgen.ops import normalize_advantages

    advantages = normal(np.random.default_rng(11), (4, 5), 3.0, 2.0)
    normalized = normalize_advantages(advantages, eps=1e-8)
    a = np.asarray(advantages, np.float64)
    np.testing.assert_allclose(normalized, (a - a.mean()) / (a.std() + 1e-8), atol=1e-5)
    assert abs(float(np.mean(normalized))) < 1e-5
    assert float(np.std(normalized)) == pytest.approx(1.0, abs=1e-4)


def test_compute_policy_entropy_reduces_the_last_axis():
    from rlgen.ops import compute_policy_entropy

    logp = np_log_softmax(np.random.default_rng(12).normal(size=(4, 5, A)))
    entropy = compute_policy_entropy(jnp.asarray(logp, jnp.float32))  # full distributions
    assert entropy.shape == (4, 5)
    np.testing.assert_allclose(entropy, -(np.exp(logp) * logp).sum(-1), rtol=1e-5)


def test_compute_kl_divergence_reduces_the_last_axis():
    from rlgen.ops import compute_kl_divergence, kl_estimate

    rng = np.random.default_rng(13)
    p, q = np_log_softmax(rng.normal(size=(4, A))), np_log_softmax(rng.normal(size=(4, A)))
    kl = compute_kl_divergence(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32))
    assert kl.shape == (4,)
    np.testing.assert_allclose(kl, (np.exp(p) * (p - q)).sum(-1), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(kl) >= 0.0)
    # from sampled log-probs, the estimators are a separate function, elementwise
    sampled = jnp.asarray(p[:, 0], jnp.float32), jnp.asarray(q[:, 0], jnp.float32)
    log_r = q[:, 0] - p[:, 0]
    for estimator, expected in (
        ("k1", -log_r),
        ("k2", 0.5 * log_r**2),
        ("k3", np.expm1(log_r) - log_r),
    ):
        np.testing.assert_allclose(kl_estimate(*sampled, estimator), expected, rtol=1e-5, atol=1e-6)


def test_compute_clipped_surrogate_loss():
    from rlgen.ops import compute_clipped_surrogate_loss

    rng = np.random.default_rng(14)
    old = -np.abs(rng.normal(size=(4, 5))).astype(np.float32)
    current = old + rng.normal(0.0, 0.5, (4, 5)).astype(np.float32)
    advantages = normal(rng, (4, 5))
    loss = compute_clipped_surrogate_loss(
        log_probs=jnp.asarray(current),
        old_log_probs=jnp.asarray(old),
        advantages=advantages,
        clip_param=0.2,
    )
    ratio = np.exp(np.asarray(current, np.float64) - old)
    adv = np.asarray(advantages, np.float64)
    assert loss.shape == ()
    expected = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- callbacks


class Recorder:
    """Records each hook call (any object with hook methods is a callback)."""

    def __init__(self):
        self.calls, self.trainers = [], set()

    def _record(self, trainer, *entry):
        self.trainers.add(id(trainer))
        self.calls.append(entry)

    def on_train_begin(self, trainer):
        self._record(trainer, "begin")

    def on_epoch_begin(self, trainer, epoch):
        self._record(trainer, "epoch_begin", epoch)

    def on_train_batch_end(self, trainer, metrics, step):
        self._record(trainer, "batch_end", step, tuple(sorted(metrics)))

    def on_epoch_end(self, trainer, epoch, metrics):
        self._record(trainer, "epoch_end", epoch, tuple(sorted(metrics)))

    def on_train_end(self, trainer):
        self._record(trainer, "end")


def test_fit_calls_the_hooks_rl_trainers_have_no_epochs():
    from rlgen import REINFORCEConfig, REINFORCETrainer

    model = policy()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    trainer = REINFORCETrainer(model, optimizer, REINFORCEConfig(num_generations=2))
    prompts = [{"observations": normal(np.random.default_rng(16), (3, OBS))}] * 2

    def reward_fn(samples, conditions=None):
        return (samples == 1).astype(jnp.float32)

    recorder = Recorder()
    metrics = trainer.fit(prompts, reward_fn=reward_fn, callbacks=[recorder], num_epochs=2)
    names = tuple(sorted(REINFORCE_METRICS))
    assert recorder.calls == [("begin",), *[("batch_end", s, names) for s in range(4)], ("end",)]
    assert recorder.trainers == {id(trainer)}
    assert set(metrics) == set(REINFORCE_METRICS) and trainer.step == 4


def test_fit_calls_epoch_hooks_for_model_trainers():
    """A model trainer (one that defines `compute_loss`) has epochs, and their hooks."""
    from rlgen.trainers import Trainer

    class Regression(Trainer):
        def compute_loss(self, model, batch, key, step):
            loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
            return loss, {"mse": loss}

    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    trainer = Regression(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
    recorder = Recorder()
    data = [{"x": jnp.ones((4, 2)), "y": jnp.zeros((4, 1))}] * 2
    trainer.fit(data, callbacks=[recorder], num_epochs=2)
    names = ("loss", "mse", "skipped")
    expected = [("begin",)]
    for e in range(2):
        expected += [("epoch_begin", e), ("batch_end", 2 * e, names)]
        expected += [("batch_end", 2 * e + 1, names), ("epoch_end", e, names)]
    assert recorder.calls == [*expected, ("end",)]
    assert recorder.trainers == {id(trainer)}


def test_only_sampling_trainers_take_a_reward_fn():
    model = MLPActorCritic(OBS, A, hidden=(8,), rngs=nnx.Rngs(0))
    ppo = rlgen.PPOTrainer(model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param))
    with pytest.raises(TypeError, match="reward_fn"):
        ppo.fit([], reward_fn=base_reward)
    model = policy()
    dpo = rlgen.DPOTrainer(model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param))
    with pytest.raises(TypeError, match="reward_fn"):
        dpo.fit([], reward_fn=base_reward)
    assert ppo.step == dpo.step == 0


def test_hand_written_loop_with_callbacks(tmp_path, monkeypatch, capsys):
    """The RL loop of Artifex's callback example: sample, score, update, call the hooks."""
    monkeypatch.chdir(tmp_path)  # relative paths land in tmp_path
    for name, value in {
        "WANDB_MODE": "offline",  # W&B writes locally, never online
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
    }.items():
        monkeypatch.setenv(name, value)
    from rlgen import GRPOConfig, GRPOTrainer
    from rlgen.callbacks import (
        Callback,
        CheckpointConfig,
        JAXProfiler,
        ModelCheckpoint,
        ProfilingConfig,
        ProgressBarCallback,
        WandbLoggerCallback,
        WandbLoggerConfig,
    )

    for cls in (JAXProfiler, ModelCheckpoint, ProgressBarCallback, WandbLoggerCallback):
        assert issubclass(cls, Callback)

    lm_config = TransformerConfig(
        vocab_size=8, max_len=8, d_model=8, num_heads=2, num_layers=1, pad_id=0, eos_id=1
    )
    model = TransformerLM(lm_config, rngs=nnx.Rngs(0), sampling=SamplingConfig(max_new_tokens=3))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    prompts = integers(np.random.default_rng(15), (12, 2, 2), 2, 8)
    dataloader = [{"observations": p} for p in prompts]  # 12 batches of 2 prompts [P, L]
    key = jax.random.key(0)

    def reward_fn(samples, conditions=None):
        """The share of completion tokens equal to 5."""
        return jnp.mean((samples == 5).astype(jnp.float32), axis=-1)

    grpo_config = GRPOConfig(num_generations=4, clip_param=0.2, beta=0.01)
    trainer = GRPOTrainer(model, optimizer, grpo_config)
    run_config = {"algorithm": "GRPO", "num_generations": 4, "beta": 0.01}
    callbacks = [
        WandbLoggerCallback(
            WandbLoggerConfig(
                project="rl-finetuning", name="grpo", config=run_config, log_every_n_steps=10
            )
        ),
        ModelCheckpoint(
            CheckpointConfig(dirpath="checkpoints/grpo", monitor="mean_reward", mode="max")
        ),
        JAXProfiler(ProfilingConfig(log_dir="logs/rl_profiles", start_step=2, end_step=4)),
        ProgressBarCallback(),
    ]
    for callback in callbacks:
        callback.on_train_begin(trainer)
    for step, batch in enumerate(dataloader):
        metrics = trainer.train_step(batch, reward_fn, key)
        for callback in callbacks:
            callback.on_train_batch_end(trainer, metrics, step)
    for callback in callbacks:
        callback.on_train_end(trainer)

    assert trainer.step == 12
    assert_metrics(metrics, GRPO_METRICS)

    # the progress bar: one plain line at the end (not a terminal), with the metrics
    out = capsys.readouterr().out
    assert "12/" in out and "mean_reward=" in out

    # the checkpoints: the best step by mean reward, restorable
    ckpt = tmp_path / "checkpoints" / "grpo"
    best = ModelCheckpoint.best_step(ckpt)
    saved = ModelCheckpoint.metrics(ckpt)
    assert best in saved and ModelCheckpoint.latest_step(ckpt) == 12
    assert saved[best]["mean_reward"] == max(v["mean_reward"] for v in saved.values())
    assert len(saved) <= 2  # the best (save_top_k defaults to 1), plus the latest to resume

    lm = TransformerLM(lm_config, rngs=nnx.Rngs(1), sampling=SamplingConfig(max_new_tokens=3))
    restored = GRPOTrainer(lm, nnx.Optimizer(lm, optax.adam(1e-2), wrt=nnx.Param), grpo_config)
    assert ModelCheckpoint.restore(restored, ckpt, step="best") == best
    assert restored.step == best
    assert all(np.all(np.isfinite(p)) for p in params_of(restored.model))
    assert ModelCheckpoint.restore(restored, ckpt) == 12  # the latest
    for a, b in zip(params_of(restored.model), params_of(model), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit: training resumes exactly

    # the profiler trace and the W&B offline run
    assert list((tmp_path / "logs" / "rl_profiles").rglob("*.xplane.pb"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


# ----------------------------------------------------------------------------- hierarchy


def test_every_trainer_derives_from_trainer():
    from rlgen.trainers import Trainer

    assert rlgen.Trainer is Trainer
    exported = [getattr(rlgen.trainers, n) for n in rlgen.trainers.__all__ if n.endswith("Trainer")]
    subclasses = [cls for cls in exported if cls is not Trainer]
    assert {cls.__name__ for cls in subclasses} >= set(ARTIFEX_TRAINERS)
    for cls in subclasses:
        assert issubclass(cls, Trainer), cls
        assert getattr(rlgen, cls.__name__) is cls
    # a model trainer brings its loss (or its own algorithm) and its sampling utility
    for cls in subclasses:
        assert (cls.compute_loss, cls.make_algorithm) != (
            Trainer.compute_loss, Trainer.make_algorithm
        ), cls
    assert callable(rlgen.AutoregressiveTrainer.generate)
    assert callable(rlgen.EnergyTrainer.sample_negatives)
    assert callable(rlgen.VAETrainer.reconstruct)
    for name in ("VAETrainer", "GANTrainer", "DiffusionTrainer", "FlowTrainer"):
        assert callable(getattr(rlgen, name).sample), name


# -------------------------------------------------------------- docs/compatibility.md


def split_row(line: str) -> list[str]:
    """The cells of a Markdown table row (`\\|` is a literal bar inside a cell)."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in `text`, as a list of `{header: cell}` rows."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            header, j, rows = split_row(lines[i]), i + 2, []
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(dict(zip(header, split_row(lines[j]), strict=True)))
                j += 1
            found.append(rows)
            i = j
        else:
            i += 1
    return found


def table_with(text: str, column: str) -> list[dict[str, str]]:
    (table,) = [t for t in tables(text) if t and column in t[0]]
    return table


def spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def section(heading: str) -> str:
    """The page's text under `heading` (a `## ` or `### ` title), up to the next heading."""
    page = PAGE.read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", page, flags=re.M | re.S)
    assert match, f"the page has no section {heading!r}"
    return match.group(1)


def signature_parts(text: str) -> tuple[str, list[tuple[str, object]]]:
    """`name(a, b=1.0, *, c=None)` -> `("name", [("a", EMPTY), ("b", 1.0), ("c", None)])`."""
    call = ast.parse(text.replace("*, ", ""), mode="eval").body
    assert isinstance(call, ast.Call), text
    params = [(arg.id, inspect.Parameter.empty) for arg in call.args]
    params += [(kw.arg, ast.literal_eval(kw.value)) for kw in call.keywords]
    return ast.unparse(call.func), params


def library_parts(fn) -> list[tuple[str, object]]:
    return [
        (p.name, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind is not p.VAR_KEYWORD
    ]


RL_SECTIONS = {
    "REINFORCE": REINFORCE_METRICS,
    "PPO": PPO_METRICS,
    "GRPO": GRPO_METRICS,
    "DPO": DPO_METRICS,
}


def rl_section(algorithm: str) -> tuple[str, type, type]:
    """The page's section on one RL trainer: (text, trainer class, config class)."""
    page = PAGE.read_text()
    (heading,) = re.findall(rf"^### ({algorithm}: .*)$", page, flags=re.M)
    trainer, config = re.findall(r"`(\w+)`", heading)
    return section(heading), getattr(rlgen, trainer), getattr(rlgen, config)


def test_page_module_table():
    rows = table_with(section("Imports"), "Artifex module")
    assert {spans(r["Artifex module"])[0]: spans(r["rlgen module"])[0] for r in rows} == MODULES
    for row in rows:
        module = importlib.import_module(spans(row["rlgen module"])[0])
        for name in spans(row["what it holds"]):
            assert hasattr(module, name), (module.__name__, name)


def check_config_table(text: str, config: type) -> list[dict[str, str]]:
    """The field table of ``text`` lists ``config``'s fields in order, with their types and
    defaults, and names only choices the field has; returns its rows."""
    rows = table_with(text, "default")
    fields = dataclasses.fields(config)
    assert [spans(r["field"])[0] for r in rows] == [f.name for f in fields]
    for row, field in zip(rows, fields, strict=True):
        assert spans(row["type"]) == [field.type], field.name
        assert ast.literal_eval(spans(row["default"])[0]) == field.default, field.name
        choices = field.metadata.get("choices")
        if choices is not None:
            named = [c[1:-1] for c in spans(row["meaning"]) if c.startswith('"')]
            assert named and set(named) <= set(choices), (field.name, named)
    return rows


@pytest.mark.parametrize("algorithm", sorted(RL_SECTIONS))
def test_page_config_table(algorithm):
    """Fields in order, types, defaults, Artifex's fields, and the choices the page names.

    The page may name fewer choices than an option has (a new loss type or advantage
    scale is one registry entry in the module that implements it), never one it lacks.
    """
    text, _, config = rl_section(algorithm)
    rows = check_config_table(text, config)
    artifex = {spans(r["field"])[0] for r in rows if r["Artifex"] == "yes"}
    assert artifex == set(ARTIFEX_CONFIG_FIELDS[config.__name__])


@pytest.mark.parametrize("algorithm", sorted(RL_SECTIONS))
def test_page_metric_table(algorithm):
    text, _, _ = rl_section(algorithm)
    rows = table_with(text, "metric")
    assert tuple(spans(r["metric"])[0] for r in rows) == RL_SECTIONS[algorithm]


@pytest.mark.parametrize("algorithm", sorted(RL_SECTIONS))
def test_page_batch_key_table(algorithm):
    """The page's keys are those the trainer names when a batch lacks them."""
    text, trainer_cls, _ = rl_section(algorithm)
    rows = table_with(text, "batch key")
    model = (MLPActorCritic if trainer_cls is rlgen.PPOTrainer else MLPPolicy)(
        OBS, A, hidden=(4,), rngs=nnx.Rngs(0)
    )
    trainer = trainer_cls(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
    with pytest.raises(ValueError, match="missing") as error:
        trainer.train_step({"unknown": jnp.zeros(2)})
    required, optional = re.search(
        r"required keys are \[(.*?)\], optional keys \[(.*?)\]", str(error.value)
    ).groups()
    for want, listed in (("yes", required), ("no", optional)):
        keys = [spans(r["batch key"])[0] for r in rows if r["required"] == want]
        assert keys == re.findall(r"'(\w+)'", listed), want


def test_page_reward_table():
    rows = table_with(section("Reward functions"), "signature")
    assert {r["class"].strip("`") for r in rows} == {
        "ConstantReward",
        "CompositeReward",
        "ThresholdReward",
        "ScaledReward",
        "ClippedReward",
        "ClassifierReward",
    }
    for row in rows:
        name, params = signature_parts(spans(row["signature"])[0])
        fields = dataclasses.fields(getattr(rlgen, name))
        empty = inspect.Parameter.empty
        defaults = [f.default if f.default is not dataclasses.MISSING else empty for f in fields]
        assert params == [(f.name, d) for f, d in zip(fields, defaults, strict=True)], name


def test_page_callback_hooks():
    from rlgen.callbacks import Callback
    from rlgen.callbacks.base import HOOKS

    rows = table_with(section("Callbacks"), "hook")
    hooks = [signature_parts(spans(r["hook"])[0]) for r in rows]
    assert [name for name, _ in hooks] == list(HOOKS)
    for name, params in hooks:
        assert params == library_parts(getattr(Callback, name)), name


def test_page_hierarchy():
    text = section("Trainer hierarchy")
    tree = re.search(r"```\n(.*?)```", text, flags=re.S).group(1)
    in_tree = re.findall(r"\b(\w*Trainer)\b", tree)
    assert in_tree[0] == "Trainer"
    assert tuple(in_tree[1 : 1 + len(ARTIFEX_TRAINERS)]) == ARTIFEX_TRAINERS
    assert tuple(in_tree[1 + len(ARTIFEX_TRAINERS) :]) == DENOISING_RL_TRAINERS
    exported = {n for n in rlgen.trainers.__all__ if n.endswith("Trainer")}
    assert sorted(in_tree) == sorted(exported)
    for name in in_tree[1:]:
        assert issubclass(getattr(rlgen.trainers, name), rlgen.Trainer), name
    for utility in re.findall(r"`(\w+Trainer)\.(\w+)`", text):  # the utilities it names
        assert callable(getattr(getattr(rlgen, utility[0]), utility[1])), utility


def test_page_signatures_of_fit_and_utilities():
    text = section("The RL trainers")
    (fit,) = [s for s in spans(text) if s.startswith("trainer.fit(")]
    name, params = signature_parts(fit)
    assert name == "trainer.fit" and params == library_parts(rlgen.Trainer.fit)
    for span in spans(section("Utilities")):
        if re.fullmatch(r"\w+\(.*\)", span):
            name, params = signature_parts(span)
            library = library_parts(getattr(rlgen.ops, name))
            assert params == library[: len(params)], name  # rlgen adds arguments at the end


def test_page_has_no_stale_names():
    """Every `rlgen...` dotted name the page mentions exists."""
    for dotted in set(re.findall(r"`(rlgen(?:\.\w+)+)", PAGE.read_text())):
        module, _, attr = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ImportError:
            assert hasattr(importlib.import_module(module), attr), dotted


# ------------------------------------------------------- the generative model trainers


def _generative_trainers():
    """One tiny trainer of each family and a batch for it: ``{section: (trainer, batch)}``."""
    from rlgen.models import MLPVAE, MLPDenoiser, MLPDiscriminator, MLPEnergy, MLPGenerator

    def opt(model):
        return nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)

    x = jnp.linspace(-0.5, 0.5, 16).reshape(4, 4)
    labels = jnp.array([0, 1, 0, 1])
    vae = MLPVAE(4, 2, hidden=(4,), rngs=nnx.Rngs(0))
    g = MLPGenerator(2, 4, hidden=(4,), rngs=nnx.Rngs(0))
    d = MLPDiscriminator(4, hidden=(4,), rngs=nnx.Rngs(1))
    denoiser = MLPDenoiser(4, num_classes=2, hidden=4, depth=1, rngs=nnx.Rngs(0))
    velocity = MLPDenoiser(4, hidden=4, depth=1, rngs=nnx.Rngs(0))
    energy = MLPEnergy(4, (4,), rngs=nnx.Rngs(0))
    return {
        "VAE": (rlgen.VAETrainer(vae, opt(vae)), {"images": x}),
        "GAN": (
            rlgen.GANTrainer({"generator": g, "discriminator": d},
                             {"generator": opt(g), "discriminator": opt(d)}),
            {"images": x},
        ),
        "Diffusion": (rlgen.DiffusionTrainer(denoiser, opt(denoiser)),
                      {"images": x, "labels": labels}),
        "Flow": (rlgen.FlowTrainer(velocity, opt(velocity)), {"images": x}),
        "Energy": (
            rlgen.EnergyTrainer(
                energy, opt(energy), rlgen.EnergyConfig(sgld_steps=2, buffer_size=8)
            ),
            {"images": x},
        ),
    }


GENERATIVE_SECTIONS = ("VAE", "GAN", "Diffusion", "Flow", "Energy")


def generative_section(family: str) -> tuple[str, type, type]:
    page = PAGE.read_text()
    (heading,) = re.findall(rf"^### ({family}: .*)$", page, flags=re.M)
    trainer, config = re.findall(r"`(\w+)`", heading)
    return section(heading), getattr(rlgen, trainer), getattr(rlgen, config)


@pytest.mark.parametrize("family", GENERATIVE_SECTIONS)
def test_page_generative_config_table(family):
    """Every field in order, with its type and default; the choices the page names exist."""
    text, trainer, config = generative_section(family)
    assert issubclass(trainer, rlgen.Trainer)
    check_config_table(text, config)


def test_page_generative_metric_tables():
    """The metric tables list what each trainer's train_step returns, in the page's order."""
    for family, (trainer, batch) in _generative_trainers().items():
        text, cls, _ = generative_section(family)
        assert type(trainer) is cls
        rows = table_with(text, "metric")
        metrics = trainer.train_step(batch)
        assert sorted(spans(r["metric"])[0] for r in rows) == sorted(metrics), family
        assert all(np.isfinite(float(v)) for v in metrics.values()), family


# ----------------------------------------------------- RL for diffusion and flow models

#: rlgen's own trainers after Artifex's in the hierarchy, in the page's order.
DENOISING_RL_TRAINERS = ("DDPOTrainer", "NFTTrainer", "DRaFTTrainer", "DiffusionDPOTrainer")
DENOISING_RL_SECTIONS = ("DDPO and Flow-GRPO", "DiffusionNFT", "Reward backpropagation",
                         "Diffusion-DPO")


def denoising_rl_section(title: str) -> tuple[str, type, type]:
    page = PAGE.read_text()
    (heading,) = re.findall(rf"^### ({title}: .*)$", page, flags=re.M)
    trainer, config = re.findall(r"`(\w+)`", heading)
    return section(heading), getattr(rlgen, trainer), getattr(rlgen, config)


def _denoising_rl_steps():
    """``{section: metrics}`` of one online step of each trainer on a tiny flow model."""
    from rlgen.generative.rollout import FlowSampler
    from rlgen.models import MLPDenoiser

    sampler = FlowSampler(num_steps=3)
    reward = lambda samples, labels=None: -jnp.sum(samples**2, axis=-1)  # noqa: E731
    conditions = {"num_prompts": 2}
    out = {}
    for title in DENOISING_RL_SECTIONS:
        _, trainer_cls, config_cls = denoising_rl_section(title)
        model = MLPDenoiser(2, hidden=4, depth=1, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
        if trainer_cls is rlgen.DRaFTTrainer:
            trainer = trainer_cls(model, opt, sampler, reward)
            out[title] = trainer.train_step(conditions)
        else:
            trainer = trainer_cls(model, opt, sampler)
            out[title] = trainer.train_step(conditions, reward, jax.random.key(0))
    return out


@pytest.mark.parametrize("title", DENOISING_RL_SECTIONS)
def test_page_denoising_rl_config_table(title):
    text, trainer, config = denoising_rl_section(title)
    assert issubclass(trainer, rlgen.Trainer)
    check_config_table(text, config)


def test_page_denoising_rl_metric_tables():
    """Each table lists what the trainer's online step returns, in the algorithm's order."""
    from rlgen import algorithms

    constants = dict(zip(DENOISING_RL_SECTIONS, (
        algorithms.DDPO_METRICS, algorithms.NFT_METRICS, algorithms.DRAFT_METRICS,
        algorithms.DIFFUSION_DPO_METRICS,
    ), strict=True))
    for title, metrics in _denoising_rl_steps().items():
        rows = table_with(denoising_rl_section(title)[0], "metric")
        assert tuple(spans(r["metric"])[0] for r in rows) == constants[title], title
        assert sorted(constants[title]) == sorted(metrics), title
        assert all(np.isfinite(float(v)) for v in metrics.values()), title
