"""Proof that the algorithms learn: small seeded tasks with verifiable rewards.

The sequence task: a prompt `c` in [0, K) and a response of T tokens from a vocabulary
of V; the verifiable reward is the fraction of positions t whose token equals
`(c + 3 t) % V` (optimum 1, chance 1/V). The policy is a table of per-prompt,
per-position logits, so the whole run compiles to one `lax.scan`.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from rlgen import algorithms as A

K, T, V = 4, 4, 8


def target(prompts):
    return (prompts[:, None] + 3 * jnp.arange(T)[None, :]) % V


def verifiable_reward(prompts, responses):
    return jnp.mean((responses == target(prompts)).astype(jnp.float32), axis=-1)


def policy_fn(params, prompts):
    return A.TokenCategorical(params[prompts])


def sample_batch(params, key, num_prompts, group):
    k1, k2 = jax.random.split(key)
    prompts = jnp.repeat(jax.random.randint(k1, (num_prompts,), 0, K), group)  # contiguous groups
    responses = jax.random.categorical(k2, params[prompts])
    return prompts, responses


def greedy_reward(params):
    prompts = jnp.arange(K)
    return float(jnp.mean(verifiable_reward(prompts, jnp.argmax(params[prompts], axis=-1))))


def expected_reward(params):
    probs = jax.nn.softmax(params[jnp.arange(K)], axis=-1)  # [K, T, V]
    hit = jnp.take_along_axis(probs, target(jnp.arange(K))[..., None], axis=-1)
    return float(jnp.mean(hit))


def run(algo, steps, num_prompts, group, seed=0):
    params = jnp.zeros((K, T, V))
    state = algo.init(params)

    def body(state, key):
        prompts, responses = sample_batch(state.params, key, num_prompts, group)
        batch = {
            "observations": prompts,
            "actions": responses,
            "rewards": verifiable_reward(prompts, responses),
        }
        return algo.update(state, batch)

    keys = jax.random.split(jax.random.key(seed), steps)
    state, metrics = jax.jit(lambda s, k: jax.lax.scan(body, s, k))(state, keys)
    return state, metrics


@pytest.mark.parametrize(
    "config",
    [
        A.GRPOConfig(num_generations=8),
        A.GRPOConfig(num_generations=8, scale_rewards="none", loss_aggregation="token-mean",
                     epsilon_high=0.28, num_iterations=2),
        A.GRPOConfig(num_generations=8, importance_sampling_level="sequence",
                     loss_aggregation="sequence-mean-token-sum-norm"),
    ],
    ids=["grpo", "dr-grpo-dapo", "gspo"],
)
def test_grpo_reaches_90_percent_of_optimal(config):
    algo = A.grpo(policy_fn, optax.adam(0.1), config)
    state, metrics = run(algo, steps=150, num_prompts=8, group=8)
    start = float(jnp.mean(metrics["mean_reward"][:5]))
    assert start < 0.3  # chance is 1/V = 0.125
    assert expected_reward(state.params) >= 0.9
    assert greedy_reward(state.params) == 1.0


@pytest.mark.parametrize("baseline", ["none", "mean", "rloo"])
def test_reinforce_reaches_90_percent_of_optimal(baseline):
    config = A.REINFORCEConfig(baseline=baseline, num_generations=8, gamma=1.0)
    algo = A.reinforce(policy_fn, optax.adam(0.1), config)
    state, metrics = run(algo, steps=150, num_prompts=8, group=8)
    assert float(jnp.mean(metrics["mean_reward"][:5])) < 0.3
    assert expected_reward(state.params) >= 0.9


def preference_pairs(key, n):
    """Random response pairs, labelled by the verifiable reward (ties dropped)."""
    k1, k2, k3 = jax.random.split(key, 3)
    prompts = jax.random.randint(k1, (n,), 0, K)
    # Responses near the target (each token right with prob. 1/2) so pairs are informative.
    right = jax.random.bernoulli(k2, 0.5, (2, n, T))
    noise = jax.random.randint(k3, (2, n, T), 0, V)
    a, b = jnp.where(right, target(prompts)[None], noise)
    ra, rb = verifiable_reward(prompts, a), verifiable_reward(prompts, b)
    keep = ra != rb
    chosen = jnp.where((ra > rb)[:, None], a, b)[keep]
    rejected = jnp.where((ra > rb)[:, None], b, a)[keep]
    return prompts[keep], chosen, rejected


@pytest.mark.parametrize(
    "config",
    [A.DPOConfig(beta=0.1), A.DPOConfig(loss_type="ipo", beta=0.5),
     A.DPOConfig(reference_free=True, beta=2.0)],
    ids=["dpo", "ipo", "simpo"],
)
def test_dpo_heldout_reward_accuracy(config):
    prompts, chosen, rejected = preference_pairs(jax.random.key(0), 2048)
    test_prompts, test_chosen, test_rejected = preference_pairs(jax.random.key(1), 512)
    algo = A.dpo(policy_fn, optax.adam(0.05), config)
    state = algo.init(jnp.zeros((K, T, V)))
    n = (prompts.shape[0] // 64) * 64

    def batch_of(p, c, r):
        return {"chosen_observations": p, "chosen_actions": c,
                "rejected_observations": p, "rejected_actions": r}

    batches = jax.tree.map(
        lambda x: x[:n].reshape(-1, 64, *x.shape[1:]), batch_of(prompts, chosen, rejected)
    )
    update = jax.jit(lambda s, b: algo.update(s, b))
    for _ in range(3):  # epochs
        state, _ = jax.lax.scan(update, state, batches)
    _, heldout = A.dpo_sequence_loss(
        state.params, batch_of(test_prompts, test_chosen, test_rejected), policy_fn,
        config, ref_params=jnp.zeros((K, T, V)) if config.uses_reference else None,
    )
    assert float(heldout["reward_accuracy"]) >= 0.9
