"""Memory of a compiled GRPO update vs a PPO update whose critic is as large as the policy.

Artifex's RL guide claims GRPO saves "approximately 50%" of PPO's memory by dropping the
value network. This measures it from XLA's memory analysis of the two compiled
`update` programs on the same token-sequence policy (embedding, residual MLP blocks with
a causal running-mean mixer, untied unembedding) and the same Adam optimiser:

* arguments: algorithm state (params, Adam moments) and batch;
* temporaries: activations, gradients and scratch;
* total: arguments + outputs + temporaries, less buffers XLA aliases (donated state).

Run: `python benchmarks/bench_memory.py [--quick]`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from rlgen import algorithms as A
from rlgen.algorithms.ppo import PPOConfig, ppo


def init_network(key, vocab, width, depth, out):
    keys = jax.random.split(key, depth + 2)
    scale = width**-0.5
    return {
        "embed": jax.random.normal(keys[0], (vocab, width)) * scale,
        "blocks": [
            {
                "w1": jax.random.normal(k, (width, 4 * width)) * scale,
                "w2": jax.random.normal(jax.random.fold_in(k, 1), (4 * width, width)) * scale / 2,
            }
            for k in keys[1:-1]
        ],
        "head": jax.random.normal(keys[-1], (width, out)) * scale,
    }


def apply_network(p, tokens):
    h = p["embed"][tokens]  # [B, T, D]
    steps = jnp.arange(1, tokens.shape[1] + 1, dtype=h.dtype)[None, :, None]
    for block in p["blocks"]:
        mixed = jnp.cumsum(h, axis=1) / steps  # causal running mean
        h = h + jax.nn.gelu(mixed @ block["w1"]) @ block["w2"]
    return h @ p["head"]


def param_bytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(fn, *args):
    analysis = jax.jit(fn, donate_argnums=0).lower(*args).compile().memory_analysis()
    if analysis is None:
        raise SystemExit("this backend reports no memory analysis")
    arguments = analysis.argument_size_in_bytes
    total = arguments + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
    total -= analysis.alias_size_in_bytes
    return arguments, analysis.temp_size_in_bytes, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    if opts.quick:
        shapes = [(8, 32, 512, 64, 2)]
    else:  # activation-heavy (long batch) and parameter-heavy (wide, deep, short batch)
        shapes = [(32, 256, 8192, 512, 4), (4, 64, 8192, 1024, 8)]
    for shape in shapes:
        compare(*shape)


def compare(batch, horizon, vocab, width, depth):
    tokens = jax.random.randint(jax.random.key(0), (batch, horizon), 0, vocab)
    actions = jnp.roll(tokens, -1, axis=1)
    key_p, key_v = jax.random.split(jax.random.key(1))
    policy = init_network(key_p, vocab, width, depth, vocab)
    critic = init_network(key_v, vocab, width, depth, 1)  # same trunk size as the policy

    def grpo_policy(params, obs):
        return A.TokenCategorical(apply_network(params, obs))

    def ppo_policy(params, obs):
        return (
            A.TokenCategorical(apply_network(params["policy"], obs)),
            apply_network(params["critic"], obs)[..., 0],
        )

    grpo_algo = A.grpo(grpo_policy, optax.adam(1e-4), A.GRPOConfig(num_generations=4))
    ppo_algo = ppo(ppo_policy, optax.adam(1e-4), PPOConfig(num_epochs=1, num_minibatches=1))
    log_probs = jnp.full((batch, horizon), -jnp.log(vocab))
    grpo_batch = {
        "observations": tokens,
        "actions": actions,
        "rewards": jnp.linspace(0.0, 1.0, batch),
        "log_probs": log_probs,
    }
    ppo_batch = {
        "observations": tokens,
        "actions": actions,
        "rewards": jnp.zeros((batch, horizon)).at[:, -1].set(1.0),
        "values": jnp.zeros((batch, horizon + 1)),
        "log_probs": log_probs,
        "dones": jnp.zeros((batch, horizon)).at[:, -1].set(1.0),
    }
    grpo_state = grpo_algo.init(policy)
    ppo_state = ppo_algo.init({"policy": policy, "critic": critic})
    rows = {
        "GRPO (policy only)": (
            param_bytes(policy),
            *measure(grpo_algo.update, grpo_state, grpo_batch),
        ),
        "PPO (policy + critic)": (
            param_bytes({"policy": policy, "critic": critic}),
            *measure(ppo_algo.update, ppo_state, ppo_batch),
        ),
    }
    mib = 2**20
    print(f"# compiled update memory — B={batch}, T={horizon}, V={vocab}, width {width}, "
          f"{depth} blocks, Adam, float32, jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print("| update | params MiB | arguments MiB | temporaries MiB | total MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, (params, args, temp, total) in rows.items():
        print(f"| {name} | {params / mib:.1f} | {args / mib:.1f} | {temp / mib:.1f} | "
              f"{total / mib:.1f} |")
    g, p = rows["GRPO (policy only)"], rows["PPO (policy + critic)"]
    print(f"\nGRPO / PPO total: {g[3] / p[3]:.2f} (saving {100 * (1 - g[3] / p[3]):.0f}%); "
          f"temporaries {g[2] / p[2]:.2f}")


if __name__ == "__main__":
    main()
