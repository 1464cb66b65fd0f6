"""The RL trainers: their metric names, the adapter identity (one `train_step` equals
the `rlgen.algorithms` update with a hand-written `policy_fn`), the generation path
(sample, score, update), teacher-forced scoring of sequence models, DPO from sequences,
PPO's GAE from the batch and the errors.
"""

import warnings

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen import algorithms as A
from rlgen.algorithms import DPOConfig, GRPOConfig, PPOConfig, REINFORCEConfig
from rlgen.models import (
    MLPActorCritic,
    MLPPolicy,
    SamplingConfig,
    TransformerConfig,
    TransformerLM,
)
from rlgen.trainers import DPOTrainer, GRPOTrainer, PPOTrainer, REINFORCETrainer

OBS, B, T, G = 3, 8, 5, 4
LOG2 = float(np.log(2.0))

METRICS = {  # defined once, by the algorithms
    REINFORCETrainer: set(A.REINFORCE_METRICS),
    PPOTrainer: set(A.PPO_METRICS),
    GRPOTrainer: set(A.GRPO_METRICS),
    DPOTrainer: set(A.DPO_METRICS),
}


def opt(model, lr=1e-2):
    return nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)


def mlp(seed=0):
    return MLPPolicy(OBS, 2, hidden=(8,), rngs=nnx.Rngs(seed))


def actor_critic(seed=0):
    return MLPActorCritic(OBS, 2, hidden=(8,), rngs=nnx.Rngs(seed))


def rng(seed):
    return np.random.default_rng(seed)


def f32(x):
    return jnp.asarray(x, jnp.float32)


# Test data is drawn with NumPy (no compilation per new shape).


def grpo_batch(seed=0):
    r = rng(seed)
    return {
        "observations": f32(np.repeat(r.normal(size=(B // G, OBS)), G, axis=0)),
        "actions": jnp.asarray(r.integers(0, 2, B), jnp.int32),
        "rewards": f32(r.normal(size=B)),
        "log_probs": f32(np.log(0.5) + 0.3 * r.normal(size=B)),
        "ref_log_probs": f32(np.log(0.5) + 0.3 * r.normal(size=B)),
    }


def reinforce_batch(seed=0):
    r = rng(seed)
    return {
        "observations": f32(r.normal(size=(B, OBS))),
        "actions": jnp.asarray(r.integers(0, 2, B), jnp.int32),
        "rewards": f32(r.normal(size=B)),
    }


def ppo_batch(seed=0, rows=4, bootstrap=True):
    r = rng(seed)
    return {
        "observations": f32(r.normal(size=(rows, T, OBS))),
        "actions": jnp.asarray(r.integers(0, 2, (rows, T)), jnp.int32),
        "rewards": f32(r.normal(size=(rows, T))),
        "values": f32(r.normal(size=(rows, T + int(bootstrap)))),
        "log_probs": f32(np.full((rows, T), np.log(0.5))),
        "dones": f32(r.random((rows, T)) < 0.2),
    }


def ragged_mask(r, rows, horizon):
    lengths = r.integers(1, horizon + 1, rows)
    return f32(np.arange(horizon)[None] < lengths[:, None])


def dpo_mlp_batch(seed=0):
    """Per-step observations; the chosen action is 1 where the first feature is positive."""
    r = rng(seed)
    obs = r.normal(size=(B, T, OBS))
    chosen = jnp.asarray(obs[..., 0] > 0, jnp.int32)
    return {
        "chosen_observations": f32(obs),
        "chosen_actions": chosen,
        "rejected_observations": f32(obs),
        "rejected_actions": 1 - chosen,
        "chosen_mask": ragged_mask(r, B, T),
        "rejected_mask": ragged_mask(r, B, T),
    }


def np_gae(rewards, values, dones, gamma, lam):
    """Float64 GAE; `values` [B, T+1] (bootstrap last) or [B, T] (V(s_T) = 0)."""
    r, v, d = (np.asarray(x, np.float64) for x in (rewards, values, dones))
    rows, horizon = r.shape
    if v.shape[1] == horizon:  # no bootstrap: V(s_T) = 0
        v = np.concatenate([v, np.zeros((rows, 1))], 1)
    nxt = v[:, 1:]
    adv, last = np.zeros_like(r), np.zeros(rows)
    for t in reversed(range(horizon)):
        disc = gamma * (1.0 - d[:, t])
        delta = r[:, t] + disc * nxt[:, t] - v[:, t]
        last = delta + disc * lam * last
        adv[:, t] = last
    return adv


def assert_close_trees(a, b, tol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- adapter identity


def hand_policy(model, with_values=False):
    """`policy_fn(params, obs)` written by hand from nnx.split/merge, and the params."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def policy_fn(p, observations):
        out = nnx.merge(graphdef, p, rest)(observations)
        if with_values:
            logits, values = out
            return distrax.Categorical(logits=logits), values
        return distrax.Categorical(logits=out)

    return policy_fn, params


def run_both(cls, factory, make_model, config, batches):
    """Steps a trainer and the algorithm's jitted update (hand-written policy_fn) side by
    side from the same initial parameters; checks that metrics, parameters and optimiser
    state agree and that the metric names are the algorithm's. Returns the trainer and
    its metrics."""
    model = make_model(seed=3)
    trainer = cls(model, opt(model, 0.05), config)
    policy_fn, params = hand_policy(make_model(seed=3), with_values=cls is PPOTrainer)
    algo = factory(policy_fn, optax.adam(0.05), config)
    state = algo.init(params)
    history = []
    for b in batches:
        got = trainer.train_step(b)
        state, want = jax.jit(algo.update)(state, b)
        assert set(got) == set(want) == METRICS[cls]
        for name, value in got.items():
            assert value.shape == () and value.dtype == jnp.float32, name
            assert np.isfinite(float(value)), name
            np.testing.assert_allclose(float(value), float(want[name]), rtol=1e-5, atol=1e-6)
        history.append(got)
    assert_close_trees(trainer.state.params, state.params)
    assert_close_trees(nnx.state(model, nnx.Param), state.params)  # written back
    assert_close_trees(trainer.state.opt_state, state.opt_state)
    assert trainer.step == len(batches)
    # the parameters did move (the comparison is not between two unchanged copies)
    initial = jax.tree.leaves(hand_policy(make_model(seed=3))[1])
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(jax.tree.leaves(state.params), initial, strict=True)
    ]
    assert max(moved) > 1e-3
    return trainer, history


def test_reinforce_train_step_is_the_algorithm_update():
    run_both(
        REINFORCETrainer,
        A.reinforce,
        mlp,
        REINFORCEConfig(entropy_coeff=0.1),
        [reinforce_batch(0), reinforce_batch(1)],
    )


def test_grpo_train_step_is_the_algorithm_update():
    config = GRPOConfig(num_generations=G, beta=0.1, clip_param=0.1, num_iterations=2)
    _, history = run_both(GRPOTrainer, A.grpo, mlp, config, [grpo_batch(0), grpo_batch(1)])
    # off-policy behaviour log-probs and a reference in the batch: KL and clipping are live
    assert float(history[0]["kl_penalty"]) > 0 and float(history[0]["approx_kl"]) > 0


def test_ppo_train_step_is_the_algorithm_update_and_computes_gae():
    config = PPOConfig(num_epochs=2, num_minibatches=2, gamma=0.9, gae_lambda=0.8)
    batches = [ppo_batch(0), ppo_batch(1)]
    _, history = run_both(PPOTrainer, A.ppo, actor_critic, config, batches)
    for b, m in zip(batches, history, strict=True):  # values with T+1 steps, bootstrap last
        assert b["values"].shape == (4, T + 1)
        adv = np_gae(b["rewards"], b["values"], b["dones"], 0.9, 0.8)
        np.testing.assert_allclose(float(m["advantage_mean"]), adv.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(m["mean_reward"]), np.mean(b["rewards"]), rtol=1e-5)


def test_dpo_train_step_is_the_algorithm_update_then_learns():
    """DPO from sequences on an MLP: the algorithm's update; loss log 2 on the first step
    (policy == reference); reward accuracy rises on a separable preference."""
    config = DPOConfig(beta=0.5, label_smoothing=0.1)
    batch = dpo_mlp_batch(0)
    trainer, history = run_both(DPOTrainer, A.dpo, mlp, config, [batch, batch])
    first = history[0]
    np.testing.assert_allclose(float(first["loss"]), LOG2, atol=1e-6)
    np.testing.assert_allclose(float(first["dpo_loss"]), LOG2, atol=1e-6)
    assert abs(float(first["reward_margin"])) < 1e-6
    assert float(first["reward_accuracy"]) == 0.0  # all margins 0: no pair ranked yet
    accuracy = [float(m["reward_accuracy"]) for m in history]
    for _ in range(30):
        m = trainer.train_step(batch)
        accuracy.append(float(m["reward_accuracy"]))
    assert np.mean(accuracy[-5:]) == 1.0
    assert float(m["loss"]) < 0.5 * LOG2 and float(m["reward_margin"]) > 0
    # the reference stays frozen at the initial model
    assert_close_trees(trainer.state.ref_params, nnx.state(mlp(seed=3), nnx.Param), tol=0)


def test_config_types_are_checked():
    model = mlp()
    for cls, wrong, name in [
        (GRPOTrainer, PPOConfig(), "GRPOConfig"),
        (REINFORCETrainer, GRPOConfig(), "REINFORCEConfig"),
        (PPOTrainer, REINFORCEConfig(), "PPOConfig"),
        (DPOTrainer, {"beta": 0.1}, "DPOConfig"),
    ]:
        with pytest.raises(TypeError, match=name):
            cls(model, opt(model), wrong)
    # no config: the defaults
    assert GRPOTrainer(model, opt(model)).config == GRPOConfig()
    assert DPOTrainer(model, opt(model)).config == DPOConfig()


# ---------------------------------------------------------------- generation path (MLP)


def reward_one(samples, conditions=None):
    return (samples == 1).astype(jnp.float32)


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (GRPOTrainer, GRPOConfig(num_generations=G)),
        (REINFORCETrainer, REINFORCEConfig(num_generations=G)),
    ],
    ids=["grpo", "reinforce"],
)
def test_generation_path_raises_the_reward(cls, config):
    model = mlp(seed=1)
    trainer = cls(model, opt(model, 3e-2), config, seed=0)
    prompts = {"observations": f32(rng(5).normal(size=(4, OBS)))}
    history = [float(trainer.train_step(prompts, reward_one)["mean_reward"]) for _ in range(100)]
    early, late = np.mean(history[:10]), np.mean(history[-10:])
    assert early < 0.75, history[:10]
    assert late > 0.9, history[-10:]
    probs = jax.nn.softmax(trainer.model(prompts["observations"]), axis=-1)
    assert float(jnp.min(probs[:, 1])) > 0.85


def test_sampled_batch_carries_group_size_only_when_used():
    """The sampled batch holds group_size for GRPO and REINFORCE's RLOO baseline only (the
    other REINFORCE baselines reject the key)."""
    seen = []
    prompts = jnp.ones((2, OBS))

    def spy(trainer):
        trainer._run_update = lambda batch: seen.append(batch) or {}
        return trainer

    for cls, config, expected in [
        (REINFORCETrainer, REINFORCEConfig(num_generations=2), None),
        (REINFORCETrainer, REINFORCEConfig(baseline="rloo", num_generations=2), 2),
        (GRPOTrainer, GRPOConfig(num_generations=2), 2),
    ]:
        model = mlp()
        trainer = spy(cls(model, opt(model), config))
        trainer.train_step({"observations": prompts}, reward_one, jax.random.key(0))
        assert seen[-1].get("group_size") == expected
        assert seen[-1]["actions"].shape == (4,)
        if expected is not None:
            trainer.train_step({"observations": prompts, "group_size": 3}, reward_one)
            assert seen[-1]["group_size"] == 3 and seen[-1]["actions"].shape == (6,)
    # a user-given group_size with a baseline that does not use it is refused by the update
    model = mlp()
    plain = REINFORCETrainer(model, opt(model), REINFORCEConfig())
    with pytest.raises(ValueError, match="group_size"):
        plain.train_step({"observations": prompts, "group_size": 4}, reward_one, jax.random.key(0))


def test_generation_path_errors():
    model = mlp()
    trainer = GRPOTrainer(model, opt(model), GRPOConfig(num_generations=2))
    full = grpo_batch()
    with pytest.raises(ValueError, match="`key`"):
        trainer.train_step(full, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"unexpected batch key\(s\) \['actions', 'rewards'\]"):
        trainer.train_step({k: full[k] for k in ("observations", "actions", "rewards")}, reward_one)
    with pytest.raises(ValueError, match="'observations'"):
        trainer.train_step({"prompts": full["observations"]}, reward_one)

    class NoSample(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(OBS, 2, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.linear(x)

    bare = NoSample()
    trainer = GRPOTrainer(bare, opt(bare), GRPOConfig(num_generations=2))
    with pytest.raises(TypeError, match=r"`sample\(observations, key\)`.*NoSample lacks"):
        trainer.train_step({"observations": jnp.ones((2, OBS))}, reward_one, jax.random.key(0))
    assert trainer.step == 0

    def bad_reward(samples, conditions=None):
        return jnp.ones((3,))

    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        trainer_ok = GRPOTrainer(mlp(), opt(mlp()), GRPOConfig(num_generations=2))
        trainer_ok.train_step({"observations": jnp.ones((2, OBS))}, bad_reward)


# ---------------------------------------------------------------- sequence models

V, P, NEW, EOS = 6, 3, 5, 2


def lm(seed=2):
    config = TransformerConfig(
        vocab_size=V, max_len=P + NEW, d_model=16, num_heads=2, num_layers=1, eos_id=EOS, pad_id=0
    )
    return TransformerLM(config, rngs=nnx.Rngs(seed), sampling=SamplingConfig(max_new_tokens=NEW))


PROMPTS = jnp.asarray(rng(42).integers(3, V, (2, P)), jnp.int32)


def count_ones(samples, conditions=None):
    return jnp.sum(samples == 1, axis=-1).astype(jnp.float32)


def np_chain_rule_log_probs(model, prompts, actions):
    """log pi(a_t | x, a_<t) from the full causal forward pass, in float64."""
    full = jnp.concatenate([prompts, actions], axis=1)
    logits = np.asarray(jax.jit(lambda tokens: model(tokens))(full), np.float64)
    logits = logits[:, P - 1 : P + NEW - 1]
    logits = logits - logits.max(-1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(log_softmax, np.asarray(actions)[..., None], -1)[..., 0]


def test_lm_generation_path_mask_groups_scoring_and_determinism():
    """TransformerLM (EOS set) through train_step(batch, reward_fn, key)."""
    seen = {}

    def reward(samples, conditions=None):
        seen["samples"], seen["conditions"] = samples, conditions
        return count_ones(samples)

    model = lm()
    sgd = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)  # well-conditioned comparisons
    trainer = GRPOTrainer(model, sgd, GRPOConfig(num_generations=G))
    start = trainer.checkpoint_state()
    key = jax.random.key(7)
    metrics = trainer.train_step({"observations": PROMPTS}, reward, key)
    assert set(metrics) == METRICS[GRPOTrainer]
    after = jax.tree.map(np.asarray, trainer.state.params)

    # groups are contiguous: row i is prompt i // G
    np.testing.assert_array_equal(seen["conditions"], np.repeat(PROMPTS, G, axis=0))
    samples = seen["samples"]
    assert samples.shape == (2 * G, NEW)
    # the same samples as the (untrained) model's own sampler on the repeated prompts
    twin_model = lm()
    actions, mask = twin_model.sample(jnp.repeat(PROMPTS, G, axis=0), key)
    np.testing.assert_array_equal(samples, actions)
    mask = np.asarray(mask)
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # 1 through EOS, then 0
    assert (mask == 0).any() and (mask.sum(1) == NEW).any()  # some rows end early
    np.testing.assert_array_equal(np.asarray(actions)[mask == 0], 0)  # pad after EOS

    # the update used that mask: the full batch of the same samples gives the same step
    # (same batch layout, so the compiled step is reused) ...
    full = {
        "observations": jnp.repeat(PROMPTS, G, axis=0),
        "actions": actions,
        "rewards": count_ones(actions),
        "group_size": G,
        "mask": jnp.asarray(mask),
    }
    trainer.load_checkpoint_state(start)
    by_hand = trainer.train_step(full)
    for k in metrics:
        np.testing.assert_allclose(float(by_hand[k]), float(metrics[k]), rtol=1e-6, atol=1e-7)
    assert_close_trees(trainer.state.params, after)
    # ... and an all-ones mask (padding scored as tokens) another one
    trainer.load_checkpoint_state(start)
    unmasked = trainer.train_step({**full, "mask": jnp.ones_like(full["mask"])})
    assert abs(float(unmasked["entropy"]) - float(metrics["entropy"])) > 1e-4
    assert trainer._compiled_update._cache_size() == 1

    # teacher-forced scoring is the chain rule: the batch's behaviour log-probs set to
    # log pi(a_t | x, a_<t) from the model's full causal pass make the ratio exactly 1
    # (tests/trainers/test_protocol.py checks protocol.policy_output against it directly)
    chain = np_chain_rule_log_probs(twin_model, full["observations"], actions)
    trainer.load_checkpoint_state(start)
    scored = trainer.train_step({**full, "log_probs": jnp.asarray(chain, jnp.float32)})
    assert abs(float(scored["approx_kl"])) < 1e-6 and float(scored["clip_fraction"]) == 0.0
    assert_close_trees(trainer.state.params, after, tol=1e-5)  # on-policy: the same step
    trainer.load_checkpoint_state(start)
    shifted = trainer.train_step({**full, "log_probs": jnp.asarray(chain - 0.5, jnp.float32)})
    assert float(shifted["approx_kl"]) > 0.05 and float(shifted["clip_fraction"]) > 0.1

    # same key, same metrics and params; another key, other samples
    trainer.load_checkpoint_state(start)
    again = trainer.train_step({"observations": PROMPTS}, reward, key)
    assert_trees_equal(again, metrics)
    assert_trees_equal(trainer.state.params, after)
    trainer.load_checkpoint_state(start)
    trainer.train_step({"observations": PROMPTS}, reward, jax.random.key(8))
    assert not np.array_equal(seen["samples"], samples)


# ---------------------------------------------------------------- DPO from sequences


def test_dpo_lm_sequences_log2_then_learns():
    model = lm(seed=4)
    trainer = DPOTrainer(model, opt(model, 1e-2), DPOConfig(beta=0.5))
    prompts = jnp.asarray(rng(1).integers(0, V, (4, P)), jnp.int32)
    chosen = jnp.tile(jnp.array([[1, 1, EOS, 0, 0]]), (4, 1))
    rejected = jnp.tile(jnp.array([[3, 4, 5, EOS, 0]]), (4, 1))
    batch = {
        "chosen_observations": prompts,
        "chosen_actions": chosen,
        "chosen_mask": (jnp.arange(NEW) < 3).astype(jnp.float32)[None].repeat(4, 0),
        "rejected_observations": prompts,
        "rejected_actions": rejected,
        "rejected_mask": (jnp.arange(NEW) < 4).astype(jnp.float32)[None].repeat(4, 0),
    }
    first = trainer.train_step(batch)
    np.testing.assert_allclose(float(first["loss"]), LOG2, atol=1e-6)
    assert float(first["reward_accuracy"]) == 0.0
    for _ in range(15):
        m = trainer.train_step(batch)
    assert float(m["reward_accuracy"]) == 1.0 and float(m["loss"]) < float(first["loss"])


def test_dpo_needs_sequences():
    model = mlp()
    trainer = DPOTrainer(model, opt(model))
    lp = jnp.full((4,), -3.0)
    batch = {
        "chosen_log_probs": lp,
        "rejected_log_probs": lp,
        "ref_chosen_log_probs": lp,
        "ref_rejected_log_probs": lp,
    }
    needed = "chosen_observations.*chosen_actions.*rejected_observations.*rejected_actions"
    with pytest.raises(ValueError, match=needed):
        trainer.train_step(batch)
    assert trainer.step == 0


# ---------------------------------------------------------------- PPO


def test_ppo_trajectory_gae_from_the_batch():
    """GAE is computed from the batch's rewards, values and dones: `values` with T+1 steps
    (bootstrap value last) or T steps (no bootstrap, so V(s_T) = 0); the critic learns."""
    model = actor_critic(seed=5)
    config = PPOConfig(num_epochs=2, gamma=0.9, gae_lambda=0.8)
    trainer = PPOTrainer(model, opt(model, 1e-2), config)
    batch = ppo_batch(seed=1, bootstrap=False)
    assert batch["values"].shape == (4, T)
    m = trainer.train_step(batch)
    adv = np_gae(batch["rewards"], batch["values"], batch["dones"], 0.9, 0.8)
    np.testing.assert_allclose(float(m["advantage_mean"]), adv.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["mean_reward"]), np.mean(batch["rewards"]), rtol=1e-5)
    # a bootstrap value would have changed the advantages: the check has teeth
    boot = {**batch, "values": jnp.concatenate([batch["values"], jnp.ones((4, 1))], 1)}
    boot_adv = np_gae(boot["rewards"], boot["values"], boot["dones"], 0.9, 0.8)
    assert abs(boot_adv.mean() - adv.mean()) > 1e-2
    losses = [float(m["value_loss"])]
    for _ in range(30):
        losses.append(float(trainer.train_step(batch)["value_loss"]))
    assert losses[-1] < 0.7 * losses[0]


def test_ppo_needs_an_actor_critic():
    model = mlp()
    trainer = PPOTrainer(model, opt(model), PPOConfig(num_epochs=1))
    protocol_text = r"MLPPolicy\(observations\) to return \(logits_or_distribution, values\)"
    with pytest.raises(TypeError, match=protocol_text):
        trainer.train_step(ppo_batch())


# ------------------------------------------------- the sampling path of the LM trainers


def test_a_skipped_update_is_warned_about_on_the_host():
    model = lm()
    trainer = GRPOTrainer(model, opt(model), GRPOConfig(num_generations=G))

    def broken(samples, conditions=None):
        return count_ones(samples).at[0].set(jnp.nan)

    before = jax.tree.map(np.asarray, trainer.state.params)
    with pytest.warns(RuntimeWarning, match=r"GRPOTrainer step 0: the update was skipped"):
        metrics = trainer.fit([{"observations": PROMPTS}], reward_fn=broken)
    assert float(metrics["skipped"]) == 1.0
    assert_trees_equal(trainer.state.params, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.train_step({"observations": PROMPTS}, count_ones)  # a good step: silent
        trainer.train_step({"observations": PROMPTS}, count_ones)


def test_left_padded_prompts_train_as_the_unpadded_ones():
    """Padding plus an attention mask changes nothing: same samples, metrics, parameters."""
    padded = {
        "input_ids": jnp.pad(PROMPTS, ((0, 0), (2, 0)), constant_values=5),
        "attention_mask": jnp.pad(jnp.ones(PROMPTS.shape), ((0, 0), (2, 0))),
    }
    config = TransformerConfig(
        vocab_size=V, max_len=P + 2 + NEW, d_model=16, num_heads=2, num_layers=1, eos_id=EOS
    )
    results = []
    for prompts in (PROMPTS, padded):
        model = TransformerLM(config, rngs=nnx.Rngs(2), sampling=SamplingConfig(NEW))
        sgd = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)  # Adam's first step is sign(g)
        trainer = GRPOTrainer(model, sgd, GRPOConfig(num_generations=G))
        seen = {}

        def reward(samples, conditions=None, seen=seen):
            seen["samples"] = samples
            return count_ones(samples)

        metrics = trainer.train_step({"observations": prompts}, reward, jax.random.key(3))
        results.append((seen["samples"], metrics, trainer.state.params))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k in results[0][1]:
        np.testing.assert_allclose(results[0][1][k], results[1][1][k], rtol=1e-5, atol=1e-6)
    assert_close_trees(results[0][2], results[1][2], tol=1e-5)
    assert float(results[0][1]["group_advantage_std"]) > 0  # the step did train


@pytest.mark.parametrize("iterations", [1, 2])
def test_behaviour_log_probs_come_from_the_sampler_only_when_needed(iterations, monkeypatch):
    model = lm()
    config = GRPOConfig(num_generations=G, num_iterations=iterations)
    trainer = GRPOTrainer(model, opt(model), config)
    batches = []
    run = trainer._run_update
    monkeypatch.setattr(trainer, "_run_update", lambda b: batches.append(b) or run(b))
    key = jax.random.key(4)
    trainer.train_step({"observations": PROMPTS}, count_ones, key)
    batch = batches[0]
    if iterations == 1:  # the update's own forward pass is the sampling policy's
        assert "log_probs" not in batch
        return
    twin = lm()
    actions, mask, log_probs = twin.sample_with_log_probs(batch["observations"], key)
    np.testing.assert_array_equal(batch["actions"], actions)
    np.testing.assert_allclose(batch["log_probs"], log_probs, rtol=1e-6)


def test_the_trainer_samples_in_its_own_compiled_program(monkeypatch):
    """After the first step, sampling never goes through the model's eager `generate` (no
    model split, no write-back needed), and one program serves every step."""
    model = lm()
    trainer = GRPOTrainer(model, opt(model), GRPOConfig(num_generations=G))
    trainer.train_step({"observations": PROMPTS}, count_ones)
    eager = lambda *a, **k: pytest.fail("sampled eagerly")  # noqa: E731
    monkeypatch.setattr(TransformerLM, "generate", eager)
    for _ in range(2):
        trainer.train_step({"observations": PROMPTS}, count_ones)
    assert trainer._sampler._cache_size() == 1


def test_a_model_whose_sample_cannot_be_traced_is_sampled_eagerly_with_a_warning():
    class HostSampler(MLPPolicy):
        def sample(self, observations, key):
            logits = np.asarray(self(observations))  # host code: not traceable
            return jnp.asarray(np.argmax(logits, axis=-1), jnp.int32)

    model = HostSampler(OBS, 2, hidden=(8,), rngs=nnx.Rngs(0))
    trainer = GRPOTrainer(model, opt(model), GRPOConfig(num_generations=2))
    reward = lambda samples, conditions=None: samples.astype(jnp.float32)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="HostSampler.sample cannot be traced"):
        trainer.train_step({"observations": jnp.ones((2, OBS))}, reward)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.train_step({"observations": jnp.ones((2, OBS))}, reward)  # warned once
