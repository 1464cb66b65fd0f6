"""GRPO specifics: group advantages, the loss against a NumPy reference, KL placement,
gradient accumulation, per-step rewards, truncated completions, `[B]` log-probs and
bad input.

Most tests use a probe policy whose per-token log-probs *are* its parameters (one row of
`[B, T]` parameters per completion, selected by the observation = row index), so the
gradient of the loss with respect to the parameters exposes each token's weight and
advantage exactly.
"""

import dataclasses

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen import algorithms as A

B, T, G = 8, 4, 4
ROWS = jnp.arange(B)


class Probe:
    """A stand-in for a distribution: `log_prob` returns the given per-token log-probs."""

    def __init__(self, log_probs):
        self.log_probs = log_probs

    def log_prob(self, actions):
        return self.log_probs

    def entropy(self):
        return 0.1 * jnp.square(self.log_probs)  # some differentiable per-token value


def probe_fn(params, rows):
    return Probe(params[rows])


def lengths_mask(lengths):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


LENGTHS = [4, 1, 2, 3, 4, 2, 3, 1]
RNG = np.random.default_rng(0)
PARAMS = jnp.asarray(RNG.normal(-1.5, 0.3, (B, T)), jnp.float32)  # current log-probs
OLD = jnp.asarray(PARAMS + RNG.normal(0.0, 0.3, (B, T)), jnp.float32)  # behaviour
REF = jnp.asarray(PARAMS + RNG.normal(0.0, 0.3, (B, T)), jnp.float32)  # reference
REWARDS = jnp.asarray(RNG.normal(size=B), jnp.float32)
MASK = jnp.asarray(lengths_mask(LENGTHS))


def batch(**extra):
    out = {"observations": ROWS, "actions": jnp.zeros((B, T), jnp.int32), "rewards": REWARDS}
    out.update(extra)
    return out


def advantages_from_grad(config, b):
    """Each row's advantage, read off the policy gradient of an on-policy token-mean loss
    with a full mask (d loss / d log_prob = -A_i / (B T))."""
    config = dataclasses.replace(config, loss_aggregation="token-mean", beta=0.0, entropy_coeff=0.0)
    grad = jax.grad(lambda p: A.grpo_loss(p, b, probe_fn, config)[0])(PARAMS)
    adv = -np.asarray(grad) * B * T
    np.testing.assert_allclose(adv, adv[:, :1].repeat(T, 1), rtol=1e-5, atol=1e-6)
    return adv[:, 0]


def np_group_advantages(rewards, group, scale="group", eps=1e-4):
    r = np.asarray(rewards, np.float64).reshape(-1, group)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (r.std(axis=1, ddof=1, keepdims=True) + eps)
    elif scale == "batch":
        centred = centred / (r.std(ddof=1) + eps)
    return centred.reshape(-1)


# ------------------------------------------------------------------ group advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_numpy(scale):
    config = A.GRPOConfig(num_generations=G, scale_rewards=scale)
    np.testing.assert_allclose(
        advantages_from_grad(config, batch()),
        np_group_advantages(REWARDS, G, scale),
        rtol=1e-4,
        atol=1e-5,
    )


def test_batch_group_size_overrides_num_generations():
    config = A.GRPOConfig(num_generations=G)
    by_batch = advantages_from_grad(config, batch(group_size=2))
    np.testing.assert_allclose(by_batch, np_group_advantages(REWARDS, 2), rtol=1e-4, atol=1e-5)
    assert not np.allclose(by_batch, np_group_advantages(REWARDS, G), atol=1e-2)
    _, metrics = A.grpo_loss(PARAMS, batch(group_size=2), probe_fn, config)
    np.testing.assert_allclose(metrics["group_advantage_std"], by_batch.std(), rtol=1e-4)


def test_traced_group_size_is_a_type_error():
    algo = A.grpo(probe_fn, optax.sgd(0.1), A.GRPOConfig(num_generations=2))
    state = algo.init(PARAMS)
    with pytest.raises(TypeError, match="group_size.*static Python int"):
        jax.jit(algo.update)(state, batch(group_size=2))
    with pytest.raises(TypeError, match="group_size"):
        jax.eval_shape(algo.update, state, batch(group_size=2.5))
    # Closed over (static), the batch's group size works under jit.
    new_state, _ = jax.jit(lambda s, b: algo.update(s, {**b, "group_size": 4}))(state, batch())
    assert not np.allclose(new_state.params, PARAMS)


def test_all_equal_groups_give_zero_advantage_never_nan():
    rewards = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 3.0])
    for scale in ("group", "batch", "none"):
        config = A.GRPOConfig(num_generations=G, scale_rewards=scale, advantage_eps=0.0)
        adv = advantages_from_grad(config, batch(rewards=rewards))
        assert np.all(adv[:4] == 0.0), scale
        assert np.all(np.isfinite(adv)) and np.all(adv[4:] != 0.0), scale


# ------------------------------------------------------------- the loss vs NumPy


def np_grpo_loss(config, lp, old, ref, mask, rewards, group):
    """Float64 NumPy GRPO loss and metrics of the module's probe batch."""
    lp, old, ref, m = (np.asarray(x, np.float64) for x in (lp, old, ref, mask))
    adv = np_group_advantages(rewards, group, config.scale_rewards, config.advantage_eps)
    adv = adv[:, None] * np.ones_like(lp)
    log_ratio = lp - old
    if config.importance_sampling_level == "sequence":
        seq = (m * log_ratio).sum(1, keepdims=True) / m.sum(1, keepdims=True)
        log_ratio = seq * np.ones_like(lp)
    ratio = np.exp(np.clip(log_ratio, -20, 20))
    low, high = config.clip_param, config.epsilon_high or config.clip_param
    surrogate = -np.minimum(ratio * adv, np.clip(ratio, 1 - low, 1 + high) * adv)
    clipped = ((ratio > 1 + high) & (adv > 0)) | ((ratio < 1 - low) & (adv < 0))
    kl = np.exp(ref - lp) - (ref - lp) - 1.0
    entropy = 0.1 * lp**2

    def agg(x, mode=config.loss_aggregation):
        if mode == "token-mean":
            return (m * x).sum() / m.sum()
        if mode == "sequence-mean-token-mean":
            return ((m * x).sum(1) / m.sum(1)).mean()
        if mode == "sequence-mean-token-sum":
            return (m * x).sum(1).mean()
        return (m * x).sum() / (x.shape[0] * (config.max_completion_length or x.shape[1]))

    policy_loss = agg(surrogate)
    loss = policy_loss + config.beta * agg(kl) - config.entropy_coeff * agg(entropy)
    return {
        "loss": loss,
        "policy_loss": policy_loss,
        "kl_penalty": agg(kl),
        "entropy": agg(entropy),
        "clip_fraction": agg(clipped.astype(np.float64), "token-mean"),
        "approx_kl": agg(np.expm1(lp - old) - (lp - old), "token-mean"),
        "mean_reward": np.mean(rewards),
        "group_advantage_std": adv[:, 0].std(),
    }


LOSS_CONFIGS = {
    "paper": A.GRPOConfig(beta=0.1, entropy_coeff=0.05),
    "dapo": A.GRPOConfig(
        loss_aggregation="token-mean", epsilon_high=0.28, clip_param=0.1, beta=0.0
    ),
    "dr-grpo": A.GRPOConfig(
        loss_aggregation="sequence-mean-token-sum-norm",
        scale_rewards="none",
        max_completion_length=6,
        beta=0.2,
    ),
    "gspo-batch": A.GRPOConfig(
        importance_sampling_level="sequence",
        scale_rewards="batch",
        loss_aggregation="sequence-mean-token-sum",
        clip_param=0.05,
    ),
}


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_loss_and_metrics_match_numpy(name):
    config = LOSS_CONFIGS[name]
    b = batch(log_probs=OLD, ref_log_probs=REF, mask=MASK)
    loss, metrics = A.grpo_loss(PARAMS, b, probe_fn, config)
    expected = np_grpo_loss(config, PARAMS, OLD, REF, MASK, REWARDS, G)
    np.testing.assert_allclose(loss, expected["loss"], rtol=1e-4, atol=1e-6)
    for key, value in expected.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    assert 0.0 < float(metrics["clip_fraction"]) < 1.0  # the reference exercised clipping


# ------------------------------------------------------------------------------ KL


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_ref_log_probs_turn_the_kl_penalty_on(estimator):
    config = A.GRPOConfig(beta=0.3, kl_estimator=estimator)
    without, m_without = A.grpo_loss(PARAMS, batch(mask=MASK), probe_fn, config)
    same, m_same = A.grpo_loss(PARAMS, batch(mask=MASK, ref_log_probs=PARAMS), probe_fn, config)
    with_ref, m_with = A.grpo_loss(PARAMS, batch(mask=MASK, ref_log_probs=REF), probe_fn, config)
    assert float(m_without["kl_penalty"]) == 0.0
    assert float(m_same["kl_penalty"]) == 0.0  # reference == policy: every estimator is 0
    log_r = np.asarray(REF, np.float64) - np.asarray(PARAMS, np.float64)
    per_token = {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": np.expm1(log_r) - log_r}[estimator]
    m = np.asarray(MASK)
    expected = ((m * per_token).sum(1) / m.sum(1)).mean()  # sequence-mean-token-mean
    np.testing.assert_allclose(m_with["kl_penalty"], expected, rtol=1e-4, atol=1e-7)
    if estimator != "k1":
        assert float(m_with["kl_penalty"]) > 0.0
    np.testing.assert_allclose(with_ref - without, 0.3 * expected, rtol=1e-4, atol=1e-7)


def test_reference_initial_uses_the_frozen_initial_params():
    config = A.GRPOConfig(reference="initial", beta=0.5, loss_aggregation="token-mean")
    algo = A.grpo(probe_fn, optax.sgd(1.0), config)
    state = algo.init(PARAMS)
    b = batch(mask=MASK)
    state, metrics = jax.jit(
        lambda s, b: jax.lax.scan(lambda s, _: algo.update(s, b), s, None, length=3)
    )(state, b)
    kl = np.asarray(metrics["kl_penalty"])
    assert kl[0] == 0.0  # params == reference at the first step
    assert np.all(kl[1:] > 0.0)
    np.testing.assert_array_equal(state.ref_params, PARAMS)
    assert not np.allclose(state.params, PARAMS)
    # The reference is the initial params, not the batch's: `ref_log_probs` is refused.
    with pytest.raises(ValueError, match="ref_log_probs"):
        jax.eval_shape(algo.update, state, batch(ref_log_probs=REF))
    with pytest.raises(ValueError, match="ref_params"):
        A.grpo_loss(PARAMS, b, probe_fn, config)
    # grpo_loss with ref_params equals the loss with those log-probs given in the batch.
    ref = state.params
    via_params = A.grpo_loss(PARAMS, b, probe_fn, config, ref_params=ref)
    via_batch = A.grpo_loss(
        PARAMS,
        batch(mask=MASK, ref_log_probs=ref),
        probe_fn,
        dataclasses.replace(config, reference="batch"),
    )
    np.testing.assert_allclose(via_params[0], via_batch[0], rtol=1e-6)


# ---------------------------------------------------------------- gradient accumulation


ACCUMULATION_CONFIGS = {
    "token-mean": A.GRPOConfig(loss_aggregation="token-mean", epsilon_high=0.28),
    "sequence-mean-token-mean": A.GRPOConfig(),
    "sequence-mean-token-sum": A.GRPOConfig(loss_aggregation="sequence-mean-token-sum"),
    "sequence-mean-token-sum-norm": A.GRPOConfig(
        loss_aggregation="sequence-mean-token-sum-norm", importance_sampling_level="sequence"
    ),
}


def test_gradient_accumulation_equals_the_full_batch():
    """Two micro-batches accumulated give the full batch's step, for every aggregation,
    with ragged masks (micro-batches with different token counts)."""
    b = batch(log_probs=OLD, ref_log_probs=REF, mask=MASK)
    # Rows 0-3 hold 10 tokens, rows 4-7 hold 10 too: make them differ.
    b["mask"] = MASK.at[0, 1:].set(0.0)
    algos = {}
    for mode, config in ACCUMULATION_CONFIGS.items():
        config = dataclasses.replace(
            config, beta=0.1, entropy_coeff=0.05, max_grad_norm=None, num_iterations=2
        )
        for steps in (1, 2):
            algos[mode, steps] = A.grpo(
                probe_fn,
                optax.sgd(1.0),
                dataclasses.replace(config, gradient_accumulation_steps=steps),
            )

    out = jax.jit(lambda p, b: {k: a.update(a.init(p), b) for k, a in algos.items()})(PARAMS, b)
    for mode in ACCUMULATION_CONFIGS:
        (full, m_full), (accumulated, m_acc) = out[mode, 1], out[mode, 2]
        assert float(jnp.max(jnp.abs(full.params - PARAMS))) > 1e-3, mode
        np.testing.assert_allclose(
            accumulated.params, full.params, rtol=1e-5, atol=1e-6, err_msg=mode
        )
        for key in m_full:
            np.testing.assert_allclose(
                m_acc[key], m_full[key], rtol=1e-5, atol=1e-6, err_msg=f"{mode} {key}"
            )


def test_accumulation_steps_must_divide_the_batch():
    algo = A.grpo(probe_fn, optax.sgd(1.0), A.GRPOConfig(gradient_accumulation_steps=3))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        jax.eval_shape(algo.update, algo.init(PARAMS), batch())


# ------------------------------------------------------------------ per-step rewards


def test_per_step_rewards_are_reduced_with_gamma():
    gamma = 0.5
    config = A.GRPOConfig(gamma=gamma, beta=0.0)
    step_rewards = RNG.normal(size=(B, T)).astype(np.float32)
    step_rewards[np.asarray(MASK) == 0] = 1e3  # padding must be ignored
    m = np.asarray(MASK, np.float64)
    returns = (m * step_rewards * gamma ** np.arange(T)[None, :]).sum(1)
    per_step = A.grpo_loss(
        PARAMS, batch(rewards=jnp.asarray(step_rewards), mask=MASK), probe_fn, config
    )
    per_sample = A.grpo_loss(
        PARAMS, batch(rewards=jnp.asarray(returns, jnp.float32), mask=MASK), probe_fn, config
    )
    np.testing.assert_allclose(per_step[1]["mean_reward"], returns.mean(), rtol=1e-5)
    for key in per_sample[1]:
        np.testing.assert_allclose(
            per_step[1][key], per_sample[1][key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    adv = advantages_from_grad(config, batch(rewards=jnp.asarray(step_rewards)))  # full mask
    full = (step_rewards.astype(np.float64) * gamma ** np.arange(T)[None, :]).sum(1)
    np.testing.assert_allclose(adv, np_group_advantages(full, G), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- truncated completions


def test_mask_truncated_completions_drops_flagged_rows():
    truncated = jnp.array([0, 1, 0, 0, 1, 0, 0, 0], bool)
    config = A.GRPOConfig(mask_truncated_completions=True, beta=0.1)
    plain = dataclasses.replace(config, mask_truncated_completions=False)
    b = batch(log_probs=OLD, ref_log_probs=REF, mask=MASK)

    def loss_and_grad(b, config):
        return jax.value_and_grad(lambda p: A.grpo_loss(p, b, probe_fn, config)[0])(PARAMS)

    loss, grad = loss_and_grad({**b, "truncated": truncated}, config)
    explicit = {**b, "mask": MASK * (1.0 - truncated[:, None])}
    loss_explicit, grad_explicit = loss_and_grad(explicit, plain)
    np.testing.assert_allclose(loss, loss_explicit, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_explicit, rtol=1e-6, atol=1e-8)
    assert np.all(np.asarray(grad)[np.asarray(truncated)] == 0.0)  # no gradient there
    loss_all, grad_all = loss_and_grad(b, plain)
    assert np.any(np.asarray(grad_all)[np.asarray(truncated)] != 0.0)
    assert not np.isclose(loss_all, loss)
    with pytest.raises(ValueError, match="truncated"):
        A.grpo_loss(PARAMS, b, probe_fn, config)  # the flag without the key
    with pytest.raises(ValueError, match="truncated"):
        A.grpo_loss(PARAMS, {**b, "truncated": truncated}, probe_fn, plain)  # key, no flag
    with pytest.raises(ValueError, match="truncated"):
        A.grpo_loss(PARAMS, {**b, "truncated": truncated[:5]}, probe_fn, config)


# ------------------------------------------------------------------ [B] log-probs


def bandit_fn(params, prompts):  # one action per sample: log_prob(actions) is [B]
    return distrax.Categorical(logits=params[prompts])


def bandit_as_tokens_fn(params, prompts):  # the same policy as T=1 token sequences
    return A.TokenCategorical(params[prompts][:, None, :])


def test_single_action_log_probs_work_and_match_length_one_sequences():
    params = jnp.asarray(RNG.normal(size=(2, 3)), jnp.float32)
    prompts = jnp.repeat(jnp.arange(2), G)
    actions = jnp.array([0, 1, 2, 1, 2, 2, 0, 1])
    old = bandit_fn(params, prompts).log_prob(actions) + 0.3 * jnp.asarray(RNG.normal(size=B))
    ref = old - 0.2
    config = A.GRPOConfig(beta=0.1, max_grad_norm=None)
    flat = {
        "observations": prompts,
        "actions": actions,
        "rewards": REWARDS,
        "log_probs": old,
        "ref_log_probs": ref,
    }
    tokens = {
        **flat,
        "actions": actions[:, None],
        "log_probs": old[:, None],
        "ref_log_probs": ref[:, None],
    }

    algo = A.grpo(bandit_fn, optax.sgd(0.5), config)

    @jax.jit
    def run(params, flat, tokens):
        def value_and_grad(fn, b):
            return jax.value_and_grad(lambda p: A.grpo_loss(p, b, fn, config)[0])(params)

        return (
            value_and_grad(bandit_fn, flat),
            value_and_grad(bandit_as_tokens_fn, tokens),
            algo.update(algo.init(params), flat),
        )

    (loss, grad), (loss_t, grad_t), (state, metrics) = run(params, flat, tokens)
    np.testing.assert_allclose(loss, loss_t, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, grad_t, rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(grad))) > 0
    np.testing.assert_allclose(state.params, params - 0.5 * grad, rtol=1e-5, atol=1e-6)
    assert all(np.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="log_probs"):
        jax.eval_shape(algo.update, algo.init(params), {**flat, "log_probs": old[:, None]})


# ------------------------------------------------------------------------ bad input


def eval_update(b, config=None, fn=probe_fn):
    config = A.GRPOConfig() if config is None else config
    algo = A.grpo(fn, optax.sgd(0.1), config)
    return jax.eval_shape(algo.update, algo.init(PARAMS), b)


@pytest.mark.parametrize("missing", ["observations", "actions", "rewards"])
def test_missing_batch_key_lists_the_required_keys(missing):
    b = batch()
    del b[missing]
    pattern = rf"missing key\(s\) \['{missing}'\].*\['observations', 'actions', 'rewards'\]"
    with pytest.raises(ValueError, match=pattern):
        eval_update(b)


def test_bad_batches_are_clear_errors():
    with pytest.raises(ValueError, match="unknown key.*'values'"):
        eval_update(batch(values=REWARDS))
    with pytest.raises(ValueError, match="not divisible by `group_size` 3"):
        eval_update(batch(), A.GRPOConfig(num_generations=3))
    with pytest.raises(ValueError, match="rewards.*8 rows"):
        eval_update(batch(rewards=REWARDS[:6]))
    with pytest.raises(ValueError, match="rewards.*shape"):
        eval_update(batch(rewards=jnp.zeros((B, T + 1))))
    with pytest.raises(TypeError, match="rewards.*floating"):
        eval_update(batch(rewards=jnp.ones(B, jnp.int32)))
    with pytest.raises(ValueError, match="log_probs.*shape"):
        eval_update(batch(log_probs=OLD[:, :2]))
    with pytest.raises(ValueError, match="ref_log_probs.*shape"):
        eval_update(batch(ref_log_probs=REF[:4]))
    with pytest.raises(ValueError, match="mask.*shape"):
        eval_update(batch(mask=MASK[:, :2]))
    with pytest.raises(TypeError, match="batch must be a dict"):
        eval_update([ROWS, REWARDS])
    with pytest.raises(TypeError, match="distribution.*log_prob"):
        eval_update(batch(), fn=lambda p, o: p[o])


GRPO_BAD_FIELDS = [
    ("num_generations", 0, ValueError),
    ("num_generations", 2.0, TypeError),
    ("clip_param", -0.1, ValueError),
    ("beta", -0.01, ValueError),
    ("entropy_coeff", -1.0, ValueError),
    ("gamma", 1.5, ValueError),
    ("gamma", -0.1, ValueError),
    ("epsilon_high", -0.2, ValueError),
    ("dual_clip", 1.0, ValueError),
    ("scale_rewards", "std", ValueError),
    ("advantage_eps", -1e-4, ValueError),
    ("loss_aggregation", "mean", ValueError),
    ("max_completion_length", 0, ValueError),
    ("importance_sampling_level", "tokens", ValueError),
    ("kl_estimator", "k4", ValueError),
    ("reference", "ref", ValueError),
    ("num_iterations", 0, ValueError),
    ("gradient_accumulation_steps", 0, ValueError),
    ("gradient_accumulation_steps", 1.5, TypeError),
    ("mask_truncated_completions", 1, TypeError),
    ("max_grad_norm", 0.0, ValueError),
    ("clip_param", "0.2", TypeError),
]


@pytest.mark.parametrize(("field", "value", "error"), GRPO_BAD_FIELDS)
def test_config_validates_every_field(field, value, error):
    with pytest.raises(error, match=field):
        A.GRPOConfig(**{field: value})


def test_config_accepts_its_documented_values():
    for scale in ("group", "batch", "none"):
        A.GRPOConfig(
            scale_rewards=scale,
            kl_estimator="k2",
            dual_clip=3.0,
            epsilon_high=0.28,
            max_completion_length=16,
            gamma=0.0,
            beta=0.0,
            max_grad_norm=None,
        )
    assert dataclasses.is_dataclass(A.GRPOConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        A.GRPOConfig().beta = 0.5


def test_factory_rejects_another_config_type():
    with pytest.raises(TypeError, match="GRPOConfig"):
        A.grpo(probe_fn, optax.sgd(0.1), A.REINFORCEConfig())


# ------------------------------------------------------------ forward passes it needs


def test_the_update_spends_no_forward_pass_it_does_not_need():
    """Counted by XLA's cost analysis (one forward = 2 B T D (V + D) flops):
    on-policy with one iteration the behaviour log-probs come from the loss's own pass
    (the same flops as when the batch brings them); beta = 0 runs no reference forward
    and keeps no reference copy; beta > 0 and num_iterations > 1 each add one forward."""
    rows, steps, dim, vocab = 8, 4, 16, 32
    keys = jax.random.split(jax.random.key(0), 4)
    batch = {
        "observations": jax.random.normal(keys[0], (rows, steps, dim)),
        "actions": jax.random.randint(keys[1], (rows, steps), 0, vocab),
        "rewards": jax.random.normal(keys[2], (rows,)),
    }
    weights = {
        "h": 0.1 * jax.random.normal(keys[3], (dim, dim)),
        "o": 0.1 * jax.random.normal(keys[3], (dim, vocab)),
    }

    def recurrent(w, obs):  # a loop, as a model's scanned layers: XLA cannot merge two
        hidden, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ w["h"]), None), obs, length=2)
        return A.TokenCategorical(hidden @ w["o"])

    def flops(config, batch):
        algo = A.grpo(recurrent, optax.sgd(0.1), config)
        state = algo.init(weights)
        compiled = jax.jit(algo.update).lower(state, batch).compile()
        return compiled.cost_analysis()["flops"], state

    forward = 2 * rows * steps * dim * (vocab + dim)  # XLA counts a loop's body once
    on_policy, state = flops(A.GRPOConfig(beta=0.0, reference="initial"), batch)
    given, _ = flops(A.GRPOConfig(beta=0.0), {**batch, "log_probs": jnp.zeros((rows, steps))})
    with_kl, kl_state = flops(A.GRPOConfig(beta=0.04, reference="initial"), batch)
    two_iterations, _ = flops(A.GRPOConfig(beta=0.0, num_iterations=2), batch)
    assert on_policy == given
    assert state.ref_params == () and jax.tree.leaves(kl_state.ref_params)
    assert forward <= with_kl - on_policy <= 1.5 * forward
    assert forward <= two_iterations - on_policy <= 1.5 * forward  # scan body counted once
