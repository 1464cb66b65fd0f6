"""The reference guide's code runs as written on rlgen (SPEC.md, rl-training-guide.md).

Each example of the guide about the trainers, configs, rewards, utilities, callbacks, the
API-reference import block and the trainer class hierarchy is kept below verbatim, as the
page prints it. A test runs one example with exactly two changes:

(a) the import paths, mapped to rlgen's by `port` (SPEC "Names"), and
(b) the example's placeholders (`YourPolicyModel`, `observations`, `reward_fn`, ...)
    defined beforehand as small concrete objects on rlgen's built-in models;

then checks what it printed and the state it left (metric names per SPEC item 2). Where
SPEC overrides the page (DPO trains from sequences, item 6) the test shows both: the
page's batch fails as SPEC says, and the same example with a sequence batch runs.

`test_examples_are_the_guides` checks the examples against the page when it is at hand.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rlgen
from rlgen.models import (
    MLPActorCritic,
    MLPPolicy,
    SamplingConfig,
    TransformerConfig,
    TransformerLM,
)

GUIDE = Path(os.environ.get("RLGEN_GUIDE", "/work/shared/spec/rl-training-guide.md"))

# SPEC "Names": the page's modules -> rlgen's (the longest first, they share a prefix).
IMPORT_MAP = (
    ("artifex.generative_models.training.rl.utils", "rlgen.ops"),
    ("artifex.generative_models.training.callbacks", "rlgen.callbacks"),
    ("artifex.generative_models.training.trainers", "rlgen.trainers"),
    ("artifex.generative_models.training", "rlgen"),
)

SPEC_METRICS = {  # SPEC item 2
    "REINFORCE": {"loss", "policy_loss", "entropy", "mean_reward", "reward_std"},
    "PPO": {
        "loss",
        "policy_loss",
        "value_loss",
        "entropy",
        "mean_reward",
        "advantage_mean",
        "kl_divergence",
        "clip_fraction",
    },
    "GRPO": {
        "loss",
        "policy_loss",
        "mean_reward",
        "group_advantage_std",
        "kl_penalty",
        "approx_kl",
        "entropy",
        "clip_fraction",
    },
    "DPO": {
        "loss",
        "dpo_loss",
        "reward_accuracy",
        "chosen_reward",
        "rejected_reward",
        "reward_margin",
    },
}

# The guide's table "RL-Specific Metrics Logged": each row is part of SPEC item 2's set.
METRICS_TABLE = {
    "REINFORCE": "loss, mean_reward, reward_std, entropy",
    "PPO": "policy_loss, value_loss, mean_reward, advantage_mean, kl_divergence",
    "GRPO": "loss, mean_reward, group_advantage_std, kl_penalty",
    "DPO": "loss, chosen_reward, rejected_reward, reward_margin",
}

# Sizes of the placeholders: observations of OBS features, A discrete actions.
OBS, A = 3, 4


# ------------------------------------------------------------------------------ helpers


def port(src: str) -> str:
    """The example with the page's import paths replaced by rlgen's (and nothing else)."""
    for old, new in IMPORT_MAP:
        src = src.replace(old, new)
    assert "artifex" not in src, "an import path SPEC does not map"
    return src


def run(src: str, ns: dict, name: str = "<guide example>") -> dict:
    """Runs an example's statements, in order, in the namespace of its placeholders."""
    exec(compile(port(src), name, "exec"), ns)  # noqa: S102
    return ns


def split_at(src: str, line: str) -> tuple[str, str]:
    """`src` cut before its (unique) statement `line`: (the lines before, the rest)."""
    assert src.count(line) == 1, line
    head, tail = src.split(line)
    return head, line + tail


def printed(text: str) -> dict[str, str]:
    """`{label: value}` of the example's `print(f"Label: {value}")` lines."""
    return dict(re.findall(r"^([A-Za-z][\w ]*): (\S+)$", text, flags=re.M))


def number(text: str) -> float:
    value = float(text.rstrip("%"))
    assert math.isfinite(value), text
    return value


def host(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def params_of(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


# Placeholder data is drawn with NumPy (eager jax.random ops would each compile).


def normal(rng, shape, scale=1.0, loc=0.0) -> jax.Array:
    return jnp.asarray(rng.normal(loc, scale, shape).astype(np.float32))


def integers(rng, shape, low, high) -> jax.Array:
    return jnp.asarray(rng.integers(low, high, shape).astype(np.int32))


def np_log_softmax(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ---- the placeholders: model classes as the page calls them, `Cls(rngs=nnx.Rngs(0))`


def YourPolicyModel(rngs):  # noqa: N802 (the page's class name)
    return MLPPolicy(OBS, A, hidden=(8,), rngs=rngs)


def PolicyModel(rngs):  # noqa: N802
    return MLPPolicy(OBS, A, hidden=(8,), rngs=rngs)


def ActorCriticModel(rngs):  # noqa: N802
    return MLPActorCritic(OBS, A, hidden=(8,), rngs=rngs)


def action_log_probs(logits, actions) -> jax.Array:
    """log softmax(logits)[actions]: the log-probs a behaviour policy recorded."""
    logp = np_log_softmax(logits)
    picked = np.take_along_axis(logp, np.asarray(actions)[..., None], axis=-1)[..., 0]
    return jnp.asarray(picked.astype(np.float32))


def trajectories(seed=0, batch=4, horizon=5):
    """`[B, T]` trajectories: observations, actions, rewards, dones."""
    rng = np.random.default_rng(seed)
    dones = np.zeros((batch, horizon), np.float32)
    dones[:, -1] = dones[0, 1] = 1.0
    return {
        "observations": normal(rng, (batch, horizon, OBS)),
        "actions": integers(rng, (batch, horizon), 0, A),
        "rewards": normal(rng, (batch, horizon)),
        "dones": jnp.asarray(dones),
    }


# ------------------------------------------------------------------------- the examples
# Verbatim from rl-training-guide.md (section in the comment).

# REINFORCE Trainer > Configuration
REINFORCE_CONFIG = """\
from artifex.generative_models.training import REINFORCEConfig, REINFORCETrainer

config = REINFORCEConfig(
    gamma=0.99,              # Discount factor for returns
    normalize_returns=True,  # Normalize returns for stability
    entropy_coeff=0.01,      # Entropy bonus for exploration
)
"""

# REINFORCE Trainer > Basic Usage
REINFORCE_USAGE = """\
from flax import nnx
import optax
from artifex.generative_models.training import (
    REINFORCEConfig,
    REINFORCETrainer,
)

# Setup model and optimizer
model = YourPolicyModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)

# Create trainer
config = REINFORCEConfig(gamma=0.99, entropy_coeff=0.01)
trainer = REINFORCETrainer(model, optimizer, config)

# Training step
batch = {
    "observations": observations,  # State observations
    "actions": actions,            # Actions taken
    "rewards": rewards,            # Rewards received
}
metrics = trainer.train_step(batch)
print(f"Policy loss: {metrics['policy_loss']:.4f}")
"""

# PPO Trainer > Configuration
PPO_CONFIG = """\
from artifex.generative_models.training import PPOConfig, PPOTrainer

config = PPOConfig(
    gamma=0.99,           # Discount factor
    gae_lambda=0.95,      # GAE lambda for advantage estimation
    clip_param=0.2,       # PPO clipping parameter
    vf_coeff=0.5,         # Value function loss coefficient
    entropy_coeff=0.01,   # Entropy bonus coefficient
    max_grad_norm=0.5,    # Gradient clipping norm
)
"""

# PPO Trainer > Training with PPO
PPO_TRAINING = """\
from flax import nnx
import optax
from artifex.generative_models.training import PPOConfig, PPOTrainer

# Actor-critic model with separate heads
model = ActorCriticModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param)

config = PPOConfig(
    gamma=0.99,
    gae_lambda=0.95,
    clip_param=0.2,
    vf_coeff=0.5,
    entropy_coeff=0.01,
)
trainer = PPOTrainer(model, optimizer, config)

# Collect trajectory
trajectory = {
    "observations": observations,
    "actions": actions,
    "rewards": rewards,
    "values": values,           # Value estimates V(s)
    "log_probs": old_log_probs, # Log probs from old policy
    "dones": dones,             # Episode termination flags
}

# Train on trajectory
metrics = trainer.train_step(trajectory)
print(f"Policy loss: {metrics['policy_loss']:.4f}")
print(f"Value loss: {metrics['value_loss']:.4f}")
print(f"Entropy: {metrics['entropy']:.4f}")
"""

# GRPO Trainer > Configuration
GRPO_CONFIG = """\
from artifex.generative_models.training import GRPOConfig, GRPOTrainer

config = GRPOConfig(
    num_generations=4,    # Generations per prompt (group size)
    clip_param=0.2,       # PPO-style clipping
    beta=0.01,            # KL penalty coefficient
    entropy_coeff=0.01,   # Entropy bonus
    gamma=0.99,           # Discount factor
)
"""

# GRPO Trainer > How GRPO Works
GRPO_TRAINING = """\
from flax import nnx
import optax
from artifex.generative_models.training import GRPOConfig, GRPOTrainer

# Policy model (no value head needed!)
model = PolicyModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)

config = GRPOConfig(
    num_generations=4,  # Generate 4 samples per prompt
    clip_param=0.2,
    beta=0.01,
)
trainer = GRPOTrainer(model, optimizer, config)

# Batch with grouped generations
# If num_prompts=8 and num_generations=4, batch_size=32
batch = {
    "observations": observations,  # Shape: (batch_size, ...)
    "actions": actions,            # Shape: (batch_size, ...)
    "rewards": rewards,            # Shape: (batch_size,)
    "log_probs": old_log_probs,    # Shape: (batch_size,)
    "group_size": 4,               # Optional, defaults to config
}

metrics = trainer.train_step(batch)
print(f"Policy loss: {metrics['policy_loss']:.4f}")
print(f"Approx KL: {metrics['approx_kl']:.4f}")
"""

# GRPO Trainer > KL Divergence Penalty
GRPO_KL = """\
# With reference model for KL penalty
batch = {
    "observations": observations,
    "actions": actions,
    "rewards": rewards,
    "log_probs": old_log_probs,
    "ref_log_probs": ref_log_probs,  # From frozen reference model
}

# KL penalty is automatically applied when ref_log_probs is provided
metrics = trainer.train_step(batch)
print(f"KL penalty: {metrics.get('kl_penalty', 0):.4f}")
"""

# DPO Trainer > Configuration
DPO_CONFIG = """\
from artifex.generative_models.training import DPOConfig, DPOTrainer

config = DPOConfig(
    beta=0.1,              # Reward scaling temperature
    label_smoothing=0.0,   # Smoothing for preference labels
    reference_free=False,  # Enable SimPO mode
)
"""

# DPO Trainer > Standard DPO Training
DPO_TRAINING = """\
from flax import nnx
import optax
from artifex.generative_models.training import DPOConfig, DPOTrainer

model = PolicyModel(rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param)

config = DPOConfig(beta=0.1)
trainer = DPOTrainer(model, optimizer, config)

# Preference pairs: chosen (preferred) vs rejected
batch = {
    "chosen_log_probs": chosen_log_probs,      # Log probs for preferred
    "rejected_log_probs": rejected_log_probs,  # Log probs for rejected
    "ref_chosen_log_probs": ref_chosen,        # Reference model log probs
    "ref_rejected_log_probs": ref_rejected,
}

metrics = trainer.train_step(batch)
print(f"DPO loss: {metrics['dpo_loss']:.4f}")
print(f"Reward accuracy: {metrics['reward_accuracy']:.2%}")
"""

# DPO Trainer > SimPO: Reference-Free DPO
SIMPO = """\
config = DPOConfig(
    beta=0.1,
    reference_free=True,  # Enable SimPO mode
)
trainer = DPOTrainer(model, optimizer, config)

# No reference log probs needed
batch = {
    "chosen_log_probs": chosen_log_probs,
    "rejected_log_probs": rejected_log_probs,
}

metrics = trainer.train_step(batch)
"""

# Reward Functions > Built-in Reward Functions
REWARD_IMPORTS = """\
from artifex.generative_models.training import (
    ConstantReward,
    CompositeReward,
    ThresholdReward,
    ScaledReward,
    ClippedReward,
)
"""

# Reward Functions > ConstantReward
CONSTANT_REWARD = """\
reward_fn = ConstantReward(value=1.0)
rewards = reward_fn(samples)  # Returns array of 1.0
"""

# Reward Functions > CompositeReward
COMPOSITE_REWARD = """\
reward_fn = CompositeReward(
    reward_fns=[aesthetic_reward, clip_reward],
    weights=[0.3, 0.7],  # 30% aesthetic, 70% CLIP
)
"""

# Reward Functions > ThresholdReward
THRESHOLD_REWARD = """\
# Reward = 1.0 if base_reward > 0.5 else 0.0
reward_fn = ThresholdReward(
    reward_fn=base_reward,
    threshold=0.5,
    above_value=1.0,
    below_value=0.0,
)
"""

# Reward Functions > ScaledReward
SCALED_REWARD = """\
reward_fn = ScaledReward(reward_fn=base_reward, scale=10.0)
"""

# Reward Functions > ClippedReward
CLIPPED_REWARD = """\
reward_fn = ClippedReward(
    reward_fn=base_reward,
    min_value=-1.0,
    max_value=1.0,
)
"""

# Reward Functions > Custom Reward Functions
CUSTOM_REWARDS = '''\
from typing import Protocol
import jax
import jax.numpy as jnp

class RewardFunction(Protocol):
    """Protocol for reward function implementations."""

    def __call__(
        self,
        samples: jax.Array,
        conditions: jax.Array | None = None,
        **kwargs,
    ) -> jax.Array:
        """Compute rewards for generated samples.

        Args:
            samples: Generated samples to evaluate.
            conditions: Optional conditioning information.

        Returns:
            Reward values with shape (batch_size,).
        """
        ...

# Example: CLIP-based reward
class CLIPReward:
    def __init__(self, clip_model, target_text):
        self.clip_model = clip_model
        self.target_text = target_text
        self.target_embedding = clip_model.encode_text(target_text)

    def __call__(self, samples, conditions=None, **kwargs):
        image_embeddings = self.clip_model.encode_image(samples)
        # Cosine similarity as reward
        similarity = jnp.sum(
            image_embeddings * self.target_embedding,
            axis=-1,
        )
        return similarity


# Example: Multi-objective reward with learnable weights
class MultiObjectiveReward:
    """Complex reward combining multiple objectives with adaptive weighting."""

    def __init__(
        self,
        clip_model,
        aesthetic_model,
        safety_classifier,
        target_text: str,
        clip_weight: float = 0.4,
        aesthetic_weight: float = 0.3,
        safety_weight: float = 0.3,
    ):
        self.clip_model = clip_model
        self.aesthetic_model = aesthetic_model
        self.safety_classifier = safety_classifier
        self.target_embedding = clip_model.encode_text(target_text)

        # Weights can be tuned during training
        self.weights = {
            "clip": clip_weight,
            "aesthetic": aesthetic_weight,
            "safety": safety_weight,
        }

    def __call__(self, samples, conditions=None, **kwargs):
        batch_size = samples.shape[0]

        # CLIP alignment score (cosine similarity)
        image_emb = self.clip_model.encode_image(samples)
        clip_score = jnp.sum(image_emb * self.target_embedding, axis=-1)

        # Aesthetic quality score (normalized to [0, 1])
        aesthetic_score = self.aesthetic_model(samples)
        aesthetic_score = jax.nn.sigmoid(aesthetic_score)

        # Safety score (1.0 = safe, 0.0 = unsafe)
        safety_logits = self.safety_classifier(samples)
        safety_score = jax.nn.softmax(safety_logits, axis=-1)[:, 0]  # P(safe)

        # Combine with penalty for unsafe content
        combined_reward = (
            self.weights["clip"] * clip_score +
            self.weights["aesthetic"] * aesthetic_score +
            self.weights["safety"] * safety_score
        )

        # Apply safety penalty: zero reward for unsafe samples
        safety_mask = safety_score > 0.5
        combined_reward = jnp.where(safety_mask, combined_reward, -1.0)

        return combined_reward


# Example: Sequence-level reward for text generation
class SequenceReward:
    """Reward function for autoregressive text models."""

    def __init__(self, reward_model, tokenizer):
        self.reward_model = reward_model
        self.tokenizer = tokenizer

    def __call__(self, samples, conditions=None, **kwargs):
        # samples: token IDs of shape (batch, seq_len)
        # Compute reward at sequence level
        rewards = self.reward_model(samples)

        # Apply length penalty to avoid reward hacking
        lengths = jnp.sum(samples != self.tokenizer.pad_id, axis=-1)
        length_penalty = jnp.log(lengths + 1) / jnp.log(100)  # Normalize

        return rewards - 0.1 * length_penalty
'''

# Utility Functions
UTIL_IMPORTS = """\
from artifex.generative_models.training.rl.utils import (
    compute_discounted_returns,
    compute_gae_advantages,
    normalize_advantages,
    compute_policy_entropy,
    compute_kl_divergence,
    compute_clipped_surrogate_loss,
)
"""

# Utility Functions > compute_discounted_returns
DISCOUNTED_RETURNS = """\
# Compute G_t = r_t + gamma * r_{t+1} + gamma^2 * r_{t+2} + ...
returns = compute_discounted_returns(rewards, gamma=0.99)
"""

# Utility Functions > compute_gae_advantages
GAE_ADVANTAGES = """\
# GAE with bias-variance trade-off
advantages = compute_gae_advantages(
    rewards=rewards,
    values=values,        # V(s) estimates including V(s_T+1)
    dones=dones,          # Episode termination flags
    gamma=0.99,
    gae_lambda=0.95,
)
"""

# Utility Functions > normalize_advantages
NORMALIZE_ADVANTAGES = """\
# Zero mean, unit variance normalization
normalized = normalize_advantages(advantages, eps=1e-8)
"""

# Utility Functions > compute_policy_entropy
POLICY_ENTROPY = """\
# H = -sum(p * log(p))
entropy = compute_policy_entropy(log_probs)
"""

# Utility Functions > compute_kl_divergence
KL_DIVERGENCE = """\
# KL(policy || reference)
kl = compute_kl_divergence(policy_log_probs, ref_log_probs)
"""

# Utility Functions > compute_clipped_surrogate_loss
CLIPPED_SURROGATE = """\
# PPO clipped objective
loss = compute_clipped_surrogate_loss(
    log_probs=current_log_probs,
    old_log_probs=old_log_probs,
    advantages=advantages,
    clip_param=0.2,
)
"""

# API Reference
API_IMPORTS = """\
from artifex.generative_models.training import (
    # Configurations
    REINFORCEConfig,
    PPOConfig,
    GRPOConfig,
    DPOConfig,

    # Trainers
    REINFORCETrainer,
    PPOTrainer,
    GRPOTrainer,
    DPOTrainer,

    # Reward functions
    RewardFunction,
    ConstantReward,
    CompositeReward,
    ThresholdReward,
    ScaledReward,
    ClippedReward,
)
"""

# Using Callbacks with RL Trainers
CALLBACKS = """\
from artifex.generative_models.training import GRPOTrainer, GRPOConfig
from artifex.generative_models.training.callbacks import (
    WandbLoggerCallback,
    WandbLoggerConfig,
    ModelCheckpoint,
    CheckpointConfig,
    JAXProfiler,
    ProfilingConfig,
    ProgressBarCallback,
)

# Configure RL trainer
grpo_config = GRPOConfig(
    num_generations=4,
    clip_param=0.2,
    beta=0.01,
)
trainer = GRPOTrainer(model, optimizer, grpo_config)

# Setup callbacks for RL training
callbacks = [
    # Log RL-specific metrics (rewards, advantages, KL divergence)
    WandbLoggerCallback(WandbLoggerConfig(
        project="rl-finetuning",
        name="grpo-experiment",
        config={
            "algorithm": "GRPO",
            "num_generations": 4,
            "beta": 0.01,
        },
        log_every_n_steps=10,
    )),

    # Save best model based on mean reward
    ModelCheckpoint(CheckpointConfig(
        dirpath="checkpoints/grpo",
        monitor="mean_reward",
        mode="max",  # Higher reward is better
        save_top_k=1,  # Keep only the best checkpoint
    )),

    # Profile RL training (useful for debugging generation bottlenecks)
    JAXProfiler(ProfilingConfig(
        log_dir="logs/rl_profiles",
        start_step=50,
        end_step=60,
    )),

    # Progress bar with RL metrics
    ProgressBarCallback(),
]

# Training loop with callbacks
for callback in callbacks:
    callback.on_train_begin(trainer)

for step, batch in enumerate(dataloader):
    # Generate samples and compute rewards
    metrics = trainer.train_step(batch, reward_fn, key)

    # Log metrics via callbacks
    for callback in callbacks:
        callback.on_train_batch_end(trainer, metrics, step)

for callback in callbacks:
    callback.on_train_end(trainer)
"""

# Trainer Class Hierarchy
HIERARCHY = """\
Trainer (base)
├── VAETrainer        → ELBO loss, KL annealing, free bits
├── GANTrainer        → Adversarial training, multiple loss types
├── DiffusionTrainer  → Denoising, noise scheduling, EMA
├── FlowTrainer       → Flow matching, OT-CFM, rectified flow
├── EnergyTrainer     → Contrastive divergence, MCMC sampling
├── AutoregressiveTrainer → Teacher forcing, scheduled sampling
└── RL Trainers
    ├── REINFORCETrainer → Policy gradient, variance reduction
    ├── PPOTrainer       → Actor-critic, GAE, clipping
    ├── GRPOTrainer      → Critic-free, group normalization
    └── DPOTrainer       → Preference learning, SimPO mode
"""

EXAMPLES = {
    name: value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and value.endswith("\n")
}


def test_examples_are_the_guides():
    """Every example above appears, character for character, in the guide."""
    if not GUIDE.is_file():
        pytest.skip(f"the guide is not at {GUIDE} (set RLGEN_GUIDE)")
    page = GUIDE.read_text()
    assert len(EXAMPLES) == 27
    for name, text in EXAMPLES.items():
        assert text in page, f"{name} is not the guide's text"


def test_metrics_table_is_within_spec_metrics():
    """The trainer tests below check SPEC item 2's sets, which hold the page's table."""
    for trainer, row in METRICS_TABLE.items():
        assert set(row.split(", ")) <= SPEC_METRICS[trainer], trainer


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "example, cls, fields",
    [
        (
            REINFORCE_CONFIG,
            "REINFORCEConfig",
            {"gamma": 0.99, "normalize_returns": True, "entropy_coeff": 0.01},
        ),
        (
            PPO_CONFIG,
            "PPOConfig",
            {
                "gamma": 0.99,
                "gae_lambda": 0.95,
                "clip_param": 0.2,
                "vf_coeff": 0.5,
                "entropy_coeff": 0.01,
                "max_grad_norm": 0.5,
            },
        ),
        (
            GRPO_CONFIG,
            "GRPOConfig",
            {
                "num_generations": 4,
                "clip_param": 0.2,
                "beta": 0.01,
                "entropy_coeff": 0.01,
                "gamma": 0.99,
            },
        ),
        (DPO_CONFIG, "DPOConfig", {"beta": 0.1, "label_smoothing": 0.0, "reference_free": False}),
    ],
    ids=["REINFORCE", "PPO", "GRPO", "DPO"],
)
def test_configuration_examples(example, cls, fields):
    """Each "Configuration" example; its values are also the defaults of the page's table."""
    ns = run(example, {})
    config = ns["config"]
    assert type(config) is getattr(rlgen, cls)
    assert ns[cls.replace("Config", "Trainer")] is getattr(rlgen, cls.replace("Config", "Trainer"))
    for field, value in fields.items():
        assert getattr(config, field) == value, field
        assert getattr(getattr(rlgen, cls)(), field) == value, f"default of {field}"


# ----------------------------------------------------------------------------- trainers


def test_reinforce_basic_usage(capsys):
    data = trajectories(seed=1)
    ns = run(
        REINFORCE_USAGE,
        {
            "YourPolicyModel": YourPolicyModel,
            "observations": data["observations"],  # [B, T, OBS]
            "actions": data["actions"],  # [B, T]
            "rewards": data["rewards"],  # [B, T] per step
        },
    )
    out = printed(capsys.readouterr().out)
    assert set(out) == {"Policy loss"}
    metrics = ns["metrics"]
    assert number(out["Policy loss"]) == pytest.approx(float(metrics["policy_loss"]), abs=5e-5)
    assert set(metrics) == SPEC_METRICS["REINFORCE"]
    assert all(jnp.shape(v) == () for v in metrics.values())  # SPEC item 1: 0-d arrays
    values = host(metrics)
    assert all(math.isfinite(v) for v in values.values())
    totals = np.asarray(data["rewards"], np.float64).sum(-1)  # each episode's total reward
    assert values["mean_reward"] == pytest.approx(totals.mean(), rel=1e-5)
    assert values["reward_std"] == pytest.approx(totals.std(), rel=1e-4)
    assert 0.0 < values["entropy"] <= math.log(A) + 1e-5
    # the step reached the model in place: its parameters left their initial values
    assert ns["trainer"].step == 1
    before = params_of(YourPolicyModel(rngs=nnx.Rngs(0)))
    after = params_of(ns["model"])
    assert any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))


def test_ppo_training(capsys):
    data = trajectories(seed=2)
    behaviour = ActorCriticModel(rngs=nnx.Rngs(0))  # the same initial policy as the example's
    logits, values = behaviour(data["observations"])
    bootstrap = np.zeros((4, 1), np.float32)
    ns = run(
        PPO_TRAINING,
        {
            "ActorCriticModel": ActorCriticModel,
            "observations": data["observations"],
            "actions": data["actions"],
            "rewards": data["rewards"],
            "values": jnp.asarray(np.concatenate([values, bootstrap], 1)),  # [B, T+1], SPEC 4
            "old_log_probs": action_log_probs(logits, data["actions"]),
            "dones": data["dones"],
        },
    )
    out = printed(capsys.readouterr().out)
    assert set(out) == {"Policy loss", "Value loss", "Entropy"}
    metrics = ns["metrics"]
    assert set(metrics) == SPEC_METRICS["PPO"]
    values_ = host(metrics)
    for label, key in [
        ("Policy loss", "policy_loss"),
        ("Value loss", "value_loss"),
        ("Entropy", "entropy"),
    ]:
        assert number(out[label]) == pytest.approx(values_[key], abs=5e-5)
    assert values_["value_loss"] >= 0.0
    # an untrained policy (output gain 0.01) is near uniform over the A actions
    assert values_["entropy"] == pytest.approx(math.log(A), abs=1e-2)
    assert 0.0 <= values_["clip_fraction"] <= 1.0
    assert all(math.isfinite(v) for v in values_.values())
    assert ns["trainer"].step == 1


def grpo_placeholders(seed=3, num_prompts=8, group=4):
    """8 prompts x 4 generations = 32 rows; one action per row, so log-probs are (32,)."""
    rng = np.random.default_rng(seed)
    prompts = rng.normal(size=(num_prompts, OBS)).astype(np.float32)
    observations = jnp.asarray(np.repeat(prompts, group, axis=0))  # contiguous groups (SPEC 5)
    actions = integers(rng, (32,), 0, A)  # one action per row
    behaviour = PolicyModel(rngs=nnx.Rngs(0))  # the example's initial policy
    old_log_probs = action_log_probs(behaviour(observations), actions)  # (32,)
    return {
        "PolicyModel": PolicyModel,
        "observations": observations,
        "actions": actions,
        "rewards": jnp.asarray(np.asarray(actions) == 0, jnp.float32) + normal(rng, 32, 0.1),
        "old_log_probs": old_log_probs,
        # a frozen reference a little away from the policy, so the KL is not 0
        "ref_log_probs": old_log_probs + normal(rng, 32, 0.3),
    }


@pytest.fixture(scope="module")
def grpo_example():
    """The GRPO example, run once: (its namespace, what it printed, its placeholders).

    The KL example continues it (it uses the example's `trainer`), on a copy of the
    namespace, so `metrics` here stays the GRPO example's.
    """
    placeholders = grpo_placeholders()
    assert placeholders["old_log_probs"].shape == (32,)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ns = run(GRPO_TRAINING, dict(placeholders))
    return ns, out.getvalue(), placeholders


def test_grpo_training(grpo_example):
    ns, text, placeholders = grpo_example
    out = printed(text)
    assert set(out) == {"Policy loss", "Approx KL"}
    metrics = ns["metrics"]
    assert set(metrics) == SPEC_METRICS["GRPO"]
    values = host(metrics)
    assert all(math.isfinite(v) for v in values.values())
    assert number(out["Policy loss"]) == pytest.approx(values["policy_loss"], abs=5e-5)
    # the batch's log-probs are the policy's own: ratio 1, KL(old || current) 0
    assert number(out["Approx KL"]) == 0.0
    assert abs(values["approx_kl"]) < 1e-6
    assert values["kl_penalty"] == 0.0  # no ref_log_probs in this batch
    assert values["mean_reward"] == pytest.approx(float(np.mean(placeholders["rewards"])), rel=1e-5)
    # advantages normalised within each group of 4 (unbiased std + 1e-4, as TRL): their
    # spread over the batch is about sqrt(3/4)
    groups = np.asarray(placeholders["rewards"], np.float64).reshape(8, 4)
    adv = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, ddof=1, keepdims=True) + 1e-4)
    assert values["group_advantage_std"] == pytest.approx(adv.std(), rel=1e-4)


def test_grpo_kl_penalty(grpo_example, capsys):
    """The KL example continues the GRPO one (its `trainer`); group size from the config."""
    ns, _, placeholders = grpo_example
    ns = dict(ns)
    # the k3 estimate of KL(policy || reference) at the parameters the step starts from
    current = action_log_probs(ns["model"](ns["observations"]), ns["actions"])
    log_r = np.asarray(placeholders["ref_log_probs"], np.float64) - np.asarray(current)
    expected = np.mean(np.expm1(log_r) - log_r)
    assert ns["trainer"].step == 1
    run(GRPO_KL, ns)
    out = printed(capsys.readouterr().out)
    assert set(out) == {"KL penalty"}
    kl = number(out["KL penalty"])
    assert kl > 0.0  # k3 is non-negative; the reference differs from the policy
    assert float(ns["metrics"]["kl_penalty"]) == pytest.approx(expected, rel=1e-4)
    assert set(ns["metrics"]) == SPEC_METRICS["GRPO"]
    assert ns["trainer"].step == 2


def dpo_pairs(seed=4, batch=4, horizon=3):
    """Chosen/rejected sequences of `horizon` actions, and the page's log-prob placeholders."""
    rng = np.random.default_rng(seed)
    log_probs = -jnp.abs(normal(rng, (4, batch), 5.0))
    return {
        "PolicyModel": PolicyModel,
        "chosen_log_probs": log_probs[0],
        "rejected_log_probs": log_probs[1],
        "ref_chosen": log_probs[2],
        "ref_rejected": log_probs[3],
        # for the sequence form (SPEC item 6)
        "chosen_observations": normal(rng, (batch, horizon, OBS)),
        "chosen_actions": integers(rng, (batch, horizon), 0, A),
        "rejected_observations": normal(rng, (batch, horizon, OBS)),
        "rejected_actions": integers(rng, (batch, horizon), 0, A),
    }


# The example's batch in the sequence form SPEC item 6 trains from.
SEQUENCE_BATCH = """\
batch = {
    "chosen_observations": chosen_observations,
    "chosen_actions": chosen_actions,
    "rejected_observations": rejected_observations,
    "rejected_actions": rejected_actions,
}
"""


def page_batch(example: str) -> str:
    match = re.search(r"^batch = \{\n.*?^\}\n", example, flags=re.M | re.S)
    return match.group(0)


def sequence_log_probs(model, observations, actions):
    """Per-pair summed and mean token log-probs of `actions` under `model`."""
    lp = np.asarray(action_log_probs(model(observations), actions), np.float64)
    return lp.sum(-1), lp.mean(-1)


def test_dpo_standard_training(capsys):
    """The page's log-prob batch: a ValueError naming the sequence keys (SPEC item 6)."""
    placeholders = dpo_pairs()
    head, step = split_at(DPO_TRAINING, "metrics = trainer.train_step(batch)\n")
    ns = run(head, dict(placeholders))
    with pytest.raises(
        ValueError,
        match=r"needs sequences.*'chosen_observations', "
        r"'chosen_actions', 'rejected_observations', 'rejected_actions'",
    ):
        run(step, ns)
    assert capsys.readouterr().out == ""  # it stopped at train_step
    assert ns["trainer"].step == 0

    # The functional loss evaluates the page's batch as it is.
    loss, m = rlgen.algorithms.dpo_loss(ns["batch"], ns["config"])
    c, r = (
        np.asarray(placeholders["chosen_log_probs"]),
        np.asarray(placeholders["rejected_log_probs"]),
    )
    margin = (c - np.asarray(placeholders["ref_chosen"])) - (
        r - np.asarray(placeholders["ref_rejected"])
    )
    expected = np.mean(np.logaddexp(0.0, -0.1 * margin))  # -log sigmoid(beta h)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert set(m) == SPEC_METRICS["DPO"]
    assert float(m["reward_accuracy"]) == pytest.approx(np.mean(margin > 0))

    # The same example with the sequence batch trains.
    example = DPO_TRAINING.replace(page_batch(DPO_TRAINING), SEQUENCE_BATCH)
    ns = run(example, dict(placeholders))
    out = printed(capsys.readouterr().out)
    assert set(out) == {"DPO loss", "Reward accuracy"}
    assert out["Reward accuracy"].endswith("%")
    assert 0.0 <= number(out["Reward accuracy"]) <= 100.0
    # step 0: the policy is its frozen reference, so the loss is log 2 and no pair is won
    assert number(out["DPO loss"]) == pytest.approx(math.log(2.0), abs=1e-4)
    assert number(out["Reward accuracy"]) == 0.0
    assert set(ns["metrics"]) == SPEC_METRICS["DPO"]
    # the gradient reached the model: at the second step the chosen sequences gained
    metrics = host(ns["trainer"].train_step(ns["batch"]))
    assert metrics["reward_margin"] > 0.0
    assert metrics["reward_accuracy"] > 0.0
    assert metrics["dpo_loss"] < math.log(2.0)


def test_dpo_simpo(capsys):
    """SimPO: length-normalised log-probs, margin gamma, no reference (SPEC item 7)."""
    placeholders = dpo_pairs(seed=5)
    model = PolicyModel(rngs=nnx.Rngs(0))  # `model` and `optimizer` of the DPO example
    optimizer = nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param)
    base = {**placeholders, "model": model, "optimizer": optimizer}
    head, step = split_at(SIMPO, "metrics = trainer.train_step(batch)\n")
    ns = run(head, dict(base, DPOConfig=rlgen.DPOConfig, DPOTrainer=rlgen.DPOTrainer))
    assert ns["config"].loss_type == "simpo"
    with pytest.raises(ValueError, match=r"needs sequences.*'chosen_observations'"):
        run(step, ns)

    # The functional loss takes the page's batch once it says the lengths SimPO divides by.
    with pytest.raises(ValueError, match="chosen_lengths"):
        rlgen.algorithms.dpo_loss(ns["batch"], ns["config"])
    lengths = jnp.full((4,), 3.0)
    loss, _ = rlgen.algorithms.dpo_loss(
        {**ns["batch"], "chosen_lengths": lengths, "rejected_lengths": lengths}, ns["config"]
    )
    u = (
        0.1
        * (
            np.asarray(placeholders["chosen_log_probs"]) / 3.0
            - np.asarray(placeholders["rejected_log_probs"]) / 3.0
        )
        - 0.5
    )
    assert float(loss) == pytest.approx(np.mean(np.logaddexp(0.0, -u)), rel=1e-5)

    # The same example with the sequence batch trains, on the policy's mean token log-probs.
    _, chosen = sequence_log_probs(
        model, placeholders["chosen_observations"], placeholders["chosen_actions"]
    )
    _, rejected = sequence_log_probs(
        model, placeholders["rejected_observations"], placeholders["rejected_actions"]
    )
    example = SIMPO.replace(page_batch(SIMPO), SEQUENCE_BATCH)
    ns = run(example, dict(base, DPOConfig=rlgen.DPOConfig, DPOTrainer=rlgen.DPOTrainer))
    assert capsys.readouterr().out == ""  # the example prints nothing
    metrics = host(ns["metrics"])
    assert set(metrics) == SPEC_METRICS["DPO"]
    u = 0.1 * (chosen - rejected) - ns["config"].simpo_gamma
    assert metrics["dpo_loss"] == pytest.approx(np.mean(np.logaddexp(0.0, -u)), rel=1e-4)
    assert metrics["chosen_reward"] == pytest.approx(np.mean(0.1 * chosen), rel=1e-4)
    assert ns["trainer"].step == 1


# ------------------------------------------------------------------------------ rewards


def base_reward(samples, conditions=None):
    """A score per sample: the mean of its features."""
    return jnp.mean(samples.reshape(samples.shape[0], -1), axis=-1)


def aesthetic_reward(samples, conditions=None):
    return jnp.tanh(samples[:, 0])


def clip_reward(samples, conditions=None):
    return samples[:, 1] ** 2


SAMPLES = jnp.array([[-4.0, 0.5, 0.0], [0.2, 0.4, 0.6], [0.6, 0.6, 0.6], [2.0, 1.0, 3.0]])


def reward_namespace() -> dict:
    ns = run(REWARD_IMPORTS, {})
    ns.update(
        samples=SAMPLES,
        base_reward=base_reward,
        aesthetic_reward=aesthetic_reward,
        clip_reward=clip_reward,
    )
    return ns


def test_reward_constant():
    ns = run(CONSTANT_REWARD, reward_namespace())
    np.testing.assert_array_equal(ns["rewards"], np.ones(4, np.float32))
    assert isinstance(ns["reward_fn"], rlgen.RewardFunction)


def test_reward_composite():
    ns = run(COMPOSITE_REWARD, reward_namespace())
    fn = ns["reward_fn"]
    expected = 0.3 * aesthetic_reward(SAMPLES) + 0.7 * clip_reward(SAMPLES)
    np.testing.assert_allclose(fn(SAMPLES), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(SAMPLES), expected, rtol=1e-6)  # jittable


def test_reward_threshold():
    ns = run(THRESHOLD_REWARD, reward_namespace())
    fn = ns["reward_fn"]
    scores = np.asarray(base_reward(SAMPLES))  # [-1.17, 0.4, 0.6, 2.0]
    np.testing.assert_array_equal(fn(SAMPLES), np.where(scores > 0.5, 1.0, 0.0))
    np.testing.assert_array_equal(fn(SAMPLES), [0.0, 0.0, 1.0, 1.0])


def test_reward_scaled():
    ns = run(SCALED_REWARD, reward_namespace())
    np.testing.assert_allclose(ns["reward_fn"](SAMPLES), 10.0 * base_reward(SAMPLES), rtol=1e-6)


def test_reward_clipped():
    ns = run(CLIPPED_REWARD, reward_namespace())
    out = np.asarray(ns["reward_fn"](SAMPLES))
    np.testing.assert_allclose(out, np.clip(base_reward(SAMPLES), -1.0, 1.0), rtol=1e-6)
    assert out.min() == -1.0 and out.max() == 1.0  # both bounds bite on these samples


class FakeCLIP:
    """A linear "CLIP": images [B, H, W, C] and a text to unit embeddings of width 8."""

    def __init__(self, pixels=4 * 4 * 3, width=8):
        rng = np.random.default_rng(6)
        self.image_proj = normal(rng, (pixels, width))
        self.text_table = rng.normal(size=(256, width)).astype(np.float32)

    def encode_image(self, images):
        emb = images.reshape(images.shape[0], -1) @ self.image_proj
        return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)

    def encode_text(self, text):
        emb = self.text_table[[ord(ch) % 256 for ch in text]].sum(0)
        return jnp.asarray(emb / np.linalg.norm(emb))


def aesthetic_model(images):
    return jnp.mean(images, axis=(1, 2, 3)) * 4.0  # [B] logits


def safety_classifier(images):
    """[B, 2] logits (safe, unsafe): an image is unsafe when its red channel dominates."""
    red = jnp.mean(images[..., 0], axis=(1, 2))
    rest = jnp.mean(images[..., 1:], axis=(1, 2, 3))
    return jnp.stack([rest - red, red - rest], axis=-1) * 10.0


class Tokenizer:
    pad_id = 0


def reward_model(tokens):
    return jnp.mean((tokens == 7).astype(jnp.float32), axis=-1)  # [B]


def test_reward_custom_functions():
    ns = run(CUSTOM_REWARDS, {})
    images = np.random.default_rng(7).uniform(size=(5, 4, 4, 3)).astype(np.float32)
    images[1:, ..., 0] *= 0.1  # little red: safe images
    images[0, ..., 0] = 5.0  # a "red", unsafe image
    images = jnp.asarray(images)
    clip_model = FakeCLIP()

    # CLIPReward: cosine similarity to the target text, one per image, and the protocol
    clip = ns["CLIPReward"](clip_model, "a photo of a cat")
    assert isinstance(clip, rlgen.RewardFunction)
    out = np.asarray(jax.jit(clip)(images))
    assert out.shape == (5,) and np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1 + 1e-5)
    np.testing.assert_allclose(
        rlgen.rewards.call_reward(jax.jit(clip), images), out
    )  # rlgen accepts it

    # MultiObjectiveReward: weighted objectives, -1 for the unsafe image
    multi = ns["MultiObjectiveReward"](clip_model, aesthetic_model, safety_classifier, "a cat")
    assert isinstance(multi, rlgen.RewardFunction)
    out = np.asarray(jax.jit(multi)(images))
    assert out.shape == (5,) and np.all(np.isfinite(out))
    assert out[0] == -1.0
    assert np.all(out[1:] > -1.0)

    # SequenceReward: reward model minus 0.1 log(length + 1) / log(100)
    tokens = jnp.asarray(np.array([[7, 7, 3, 0, 0], [1, 2, 3, 4, 5], [7, 0, 0, 0, 0]]))
    seq = ns["SequenceReward"](reward_model, Tokenizer())
    assert isinstance(seq, rlgen.RewardFunction)
    out = np.asarray(jax.jit(seq)(tokens))
    lengths = np.array([3, 5, 1])
    expected = np.asarray(reward_model(tokens)) - 0.1 * np.log(lengths + 1) / np.log(100)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, expected, rtol=1e-6)

    # The composite of custom rewards is a reward too
    both = rlgen.CompositeReward([clip, multi], weights=[0.5, 0.5])
    assert np.asarray(jax.jit(both)(images)).shape == (5,)


# ---------------------------------------------------------------------------- utilities


def util_namespace() -> dict:
    ns = run(UTIL_IMPORTS, {})
    for name in (
        "compute_discounted_returns",
        "compute_gae_advantages",
        "normalize_advantages",
        "compute_policy_entropy",
        "compute_kl_divergence",
        "compute_clipped_surrogate_loss",
    ):
        assert ns[name] is getattr(rlgen.ops, name)
    return ns


def np_discounted(rewards, gamma, dones=None):
    rewards = np.asarray(rewards, np.float64)
    dones = np.zeros_like(rewards) if dones is None else np.asarray(dones, np.float64)
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * (1 - dones[:, t]) * running
        out[:, t] = running
    return out


def test_util_compute_discounted_returns():
    rewards = trajectories(seed=8)["rewards"]
    ns = run(DISCOUNTED_RETURNS, dict(util_namespace(), rewards=rewards))
    assert ns["returns"].shape == rewards.shape
    np.testing.assert_allclose(ns["returns"], np_discounted(rewards, 0.99), rtol=1e-5, atol=1e-6)


def np_gae(rewards, values, dones, gamma, lam):
    rewards, values, dones = (np.asarray(x, np.float64) for x in (rewards, values, dones))
    horizon = rewards.shape[1]
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(horizon)):
        discount = gamma * (1 - dones[:, t])
        delta = rewards[:, t] + discount * values[:, t + 1] - values[:, t]
        running = delta + discount * lam * running
        out[:, t] = running
    return out


def test_util_compute_gae_advantages():
    data = trajectories(seed=9)
    values = normal(np.random.default_rng(10), (4, 6))  # V(s_0 .. s_T), bootstrap last
    ns = run(
        GAE_ADVANTAGES,
        dict(util_namespace(), rewards=data["rewards"], values=values, dones=data["dones"]),
    )
    expected = np_gae(data["rewards"], values, data["dones"], 0.99, 0.95)
    np.testing.assert_allclose(ns["advantages"], expected, rtol=1e-5, atol=1e-5)


def test_util_normalize_advantages():
    advantages = normal(np.random.default_rng(11), (4, 5), 3.0, 2.0)
    ns = run(NORMALIZE_ADVANTAGES, dict(util_namespace(), advantages=advantages))
    a = np.asarray(advantages, np.float64)
    np.testing.assert_allclose(ns["normalized"], (a - a.mean()) / (a.std() + 1e-8), atol=1e-5)
    assert abs(float(np.mean(ns["normalized"]))) < 1e-5
    assert float(np.std(ns["normalized"])) == pytest.approx(1.0, abs=1e-4)


def test_util_compute_policy_entropy():
    logp = np_log_softmax(np.random.default_rng(12).normal(size=(4, 5, A)))
    log_probs = jnp.asarray(logp, jnp.float32)  # full distributions over A actions
    ns = run(POLICY_ENTROPY, dict(util_namespace(), log_probs=log_probs))
    assert ns["entropy"].shape == (4, 5)  # SPEC item 13: over the last axis
    np.testing.assert_allclose(ns["entropy"], -(np.exp(logp) * logp).sum(-1), rtol=1e-5)


def test_util_compute_kl_divergence():
    rng = np.random.default_rng(13)
    policy_log_probs = jnp.asarray(np_log_softmax(rng.normal(size=(4, A))), jnp.float32)
    ref_log_probs = jnp.asarray(np_log_softmax(rng.normal(size=(4, A))), jnp.float32)
    ns = run(
        KL_DIVERGENCE,
        dict(util_namespace(), policy_log_probs=policy_log_probs, ref_log_probs=ref_log_probs),
    )
    p, q = np.asarray(policy_log_probs, np.float64), np.asarray(ref_log_probs, np.float64)
    assert ns["kl"].shape == (4,)
    np.testing.assert_allclose(ns["kl"], (np.exp(p) * (p - q)).sum(-1), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(ns["kl"]) >= 0.0)


def test_util_compute_clipped_surrogate_loss():
    rng = np.random.default_rng(14)
    old = -np.abs(rng.normal(size=(4, 5))).astype(np.float32)
    old_log_probs = jnp.asarray(old)
    current_log_probs = jnp.asarray(old + rng.normal(0.0, 0.5, (4, 5)).astype(np.float32))
    advantages = normal(rng, (4, 5))
    ns = run(
        CLIPPED_SURROGATE,
        dict(
            util_namespace(),
            current_log_probs=current_log_probs,
            old_log_probs=old_log_probs,
            advantages=advantages,
        ),
    )
    ratio = np.exp(np.asarray(current_log_probs, np.float64) - old)
    adv = np.asarray(advantages, np.float64)
    expected = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv))
    assert ns["loss"].shape == ()
    assert float(ns["loss"]) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------ API reference


def test_api_reference_imports():
    ns = run(API_IMPORTS, {})
    names = re.findall(r"^    (\w+),$", API_IMPORTS, flags=re.M)
    assert len(names) == 14
    for name in names:
        assert ns[name] is getattr(rlgen, name)
        assert name in rlgen.__all__
    assert all(issubclass(ns[n], rlgen.Trainer) for n in names if n.endswith("Trainer"))


# ---------------------------------------------------------------------------- callbacks


def test_callbacks_with_rl_trainers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example's relative paths land in tmp_path
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B writes locally, never online
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))

    # The profiling window of the example (steps 50..60) is beyond this 12-step loop: it is
    # moved to steps 2..4, the only change to the example's text besides its imports.
    example = CALLBACKS.replace(
        "start_step=50,\n        end_step=60,", "start_step=2,\n        end_step=4,"
    )
    assert example != CALLBACKS

    config = TransformerConfig(
        vocab_size=8, max_len=8, d_model=8, num_heads=2, num_layers=1, pad_id=0, eos_id=1
    )
    model = TransformerLM(config, rngs=nnx.Rngs(0), sampling=SamplingConfig(max_new_tokens=3))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    prompts = integers(np.random.default_rng(15), (12, 2, 2), 2, 8)
    dataloader = [{"observations": p} for p in prompts]  # 12 batches of 2 prompts [P, L]

    def reward_fn(samples, conditions=None):
        """The share of completion tokens equal to 5 (jittable)."""
        return jnp.mean((samples == 5).astype(jnp.float32), axis=-1)

    ns = run(
        example,
        {
            "model": model,
            "optimizer": optimizer,
            "dataloader": dataloader,
            "reward_fn": reward_fn,
            "key": jax.random.key(0),
        },
    )
    trainer, metrics = ns["trainer"], ns["metrics"]
    assert trainer.step == 12
    assert set(metrics) == SPEC_METRICS["GRPO"]
    assert all(math.isfinite(v) for v in host(metrics).values())

    # the progress bar: one plain line at the end (not a terminal), with the metrics
    out = capsys.readouterr().out
    assert "12/" in out and "mean_reward=" in out

    # the checkpoint directory: the best step by mean reward, restorable
    from rlgen.callbacks import ModelCheckpoint

    ckpt = tmp_path / "checkpoints" / "grpo"
    assert ckpt.is_dir()
    best = ModelCheckpoint.best_step(ckpt)
    saved = ModelCheckpoint.metrics(ckpt)
    assert best in saved and ModelCheckpoint.latest_step(ckpt) == 12
    assert saved[best]["mean_reward"] == max(v["mean_reward"] for v in saved.values())
    assert len(saved) <= 2  # save_top_k=1, plus the latest kept to resume (save_last)

    lm = TransformerLM(config, rngs=nnx.Rngs(1), sampling=SamplingConfig(max_new_tokens=3))
    restored = rlgen.GRPOTrainer(
        lm, nnx.Optimizer(lm, optax.adam(1e-2), wrt=nnx.Param), ns["grpo_config"]
    )
    assert ModelCheckpoint.restore(restored, ckpt, step="best") == best
    assert restored.step == best
    assert all(np.all(np.isfinite(p)) for p in params_of(restored.model))
    assert ModelCheckpoint.restore(restored, ckpt) == 12  # the latest
    for a, b in zip(params_of(restored.model), params_of(model), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit: training resumes exactly

    # the profiler trace of steps 3..4
    assert list((tmp_path / "logs" / "rl_profiles").rglob("*.xplane.pb"))

    # the W&B offline run
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


# ---------------------------------------------------------------------------- hierarchy

HIERARCHY_BUILT = (
    "AutoregressiveTrainer",
    "REINFORCETrainer",
    "PPOTrainer",
    "GRPOTrainer",
    "DPOTrainer",
)
HIERARCHY_LATER = ("VAETrainer", "GANTrainer", "DiffusionTrainer", "FlowTrainer", "EnergyTrainer")


def test_class_hierarchy():
    """SPEC item 11: every trainer of the hierarchy that rlgen has derives from `Trainer`."""
    named = re.findall(r"(\w+Trainer)\b", HIERARCHY)
    assert sorted(named) == sorted(HIERARCHY_BUILT + HIERARCHY_LATER)
    assert HIERARCHY.startswith("Trainer (base)")
    from rlgen.trainers import Trainer

    assert rlgen.Trainer is Trainer
    for name in HIERARCHY_BUILT:
        cls = getattr(rlgen.trainers, name)
        assert cls is getattr(rlgen, name)
        assert issubclass(cls, Trainer) and cls is not Trainer, name
    # "Each model-specific trainer ... compute_loss(); generate() for autoregressive"
    assert rlgen.AutoregressiveTrainer.compute_loss is not Trainer.compute_loss
    assert callable(rlgen.AutoregressiveTrainer.generate)


@pytest.mark.skip(reason="model trainers arrive in a later issue")
def test_class_hierarchy_model_trainers():
    for name in HIERARCHY_LATER:  # VAE, GAN, Diffusion, Flow, Energy
        assert issubclass(getattr(rlgen.trainers, name), rlgen.Trainer), name


# ---------------------------------------------------------- integration (SPEC item 15)

_LATER = "SPEC item 15: shipped as recipes in a later issue"


@pytest.mark.skip(reason=_LATER)
def test_integration_diffusion_grpo():
    """Integration with Model-Specific Trainers > Diffusion Model Fine-Tuning with GRPO."""


@pytest.mark.skip(reason=_LATER)
def test_integration_vae_ppo():
    """Integration with Model-Specific Trainers > VAE Latent Space Optimization with PPO."""


@pytest.mark.skip(reason=_LATER)
def test_integration_gan_reinforce():
    """Integration with Model-Specific Trainers > GAN Discriminator as Reward with REINFORCE."""
