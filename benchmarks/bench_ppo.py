"""PPO on CartPole-v1, whole training run compiled: rlgen's recipe vs rejax's PPO.

Both train on gymnax's CartPole-v1 with the same hyperparameters (environments, steps per
rollout, epochs, minibatches, learning rate, gamma, lambda, clip, value clip, entropy and
value coefficients, gradient-norm limit, two 64-unit tanh hidden layers for the actor and
for the critic, total timesteps); rlgen also runs on its own JAX CartPole
(`rlgen.envs.cartpole`, same dynamics). For one seed and for 8 vmapped seeds the script
reports compile time (separately), the median run time of interleaved repetitions,
environment steps per second and the final return (greedy and sampled policy, 64 fresh
episodes each, on gymnax's CartPole).

Differences that remain (they are the libraries' designs, stated, not hidden):
* minibatches: rlgen splits the `[num_envs, num_steps]` batch by environment rows (GAE
  needs whole rows; the same code serves token sequences); rejax shuffles single
  transitions.
* gradient limit: rlgen clips the global norm (`optax.clip_by_global_norm`); rejax clips
  each gradient element (`optax.clip`) of its actor and critic separately.
* rlgen's recipe uses one Adam over actor and critic; rejax one Adam per network (the same
  thing without a global-norm clip). Neither anneals the learning rate nor bootstraps
  time-outs here (the recipe's defaults do both).
* rejax evaluates its policy during training through a callback (128 episodes every
  `eval_freq` steps); it is disabled here (a no-op) so that both time training alone;
  `--rejax-eval` times rejax with its default evaluation schedule too.

Requires the `bench` extra: `pip install rejax==0.1.3 "gymnax==0.0.9"` (rejax 0.1.3 unpacks
gymnax's 5-tuple `step`, which gymnax 1.0 changed).

Run: `python benchmarks/bench_ppo.py [--repeats 3] [--seeds 8] [--quick]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import rejax

from rlgen.envs import cartpole
from rlgen.recipes import ppo_cartpole
from rlgen.recipes.ppo_cartpole import CartPoleConfig

# The recipe's settings as rejax runs them: a constant learning rate, no bootstrapping of
# time-outs (gymnax 0.0.9 gives no final observation); rejax gets the same values below.
RECIPE = CartPoleConfig(anneal_lr=False, bootstrap_truncation=False)
UPDATES = 488  # 488 * 16 * 64 = 499,712 environment steps


def settings(updates: int = UPDATES) -> CartPoleConfig:
    """`RECIPE` with ``updates`` updates' worth of environment steps."""
    steps = updates * RECIPE.num_envs * RECIPE.num_steps
    return dataclasses.replace(RECIPE, total_timesteps=steps)


class GymnaxCartPole:
    """gymnax's CartPole-v1 behind rlgen's functional env API (reset(key), step(key, s, a))."""

    def __init__(self):
        self.env, self.params = gymnax.make("CartPole-v1")

    def reset(self, key):
        return self.env.reset(key, self.params)

    def step(self, key, state, action):
        return self.env.step(key, state, action, self.params)


GYMNAX = GymnaxCartPole()


def rlgen_train(run: CartPoleConfig, env):
    train = ppo_cartpole.make_train(run, env=env)
    return lambda seed: (train(seed)[0], ())  # (params, nothing else)


def rejax_algo(run: CartPoleConfig, with_eval: bool):
    ppo = run.ppo
    if ppo.clip_value != ppo.clip_param:
        raise ValueError("rejax clips the value prediction with clip_eps: set clip_value")
    # rejax's PPO arguments: most named as rlgen's settings, three renamed.
    same = ("total_timesteps", "num_envs", "num_steps", "learning_rate")
    same_ppo = ("num_epochs", "num_minibatches", "gamma", "gae_lambda", "max_grad_norm")
    renamed = {"clip_eps": ppo.clip_param, "ent_coef": ppo.entropy_coeff, "vf_coef": ppo.vf_coeff}
    algo = rejax.get_algo("ppo").create(
        env="CartPole-v1",
        **{name: getattr(run, name) for name in same},
        **{name: getattr(ppo, name) for name in same_ppo},
        **renamed,
        agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (run.hidden_size,) * 2},
        skip_initial_evaluation=True,
        **({} if with_eval else {"eval_freq": run.total_timesteps}),
    )
    if not with_eval:
        algo = algo.replace(eval_callback=lambda algo, ts, rng: ())
    return algo


def rejax_train(algo):
    def train(seed):
        state, evaluation = algo.train(jax.random.key(seed))
        # the evaluations are returned so that XLA cannot drop them as dead code
        return state.actor_ts.params, evaluation

    return train


# ----------------------------------------------------------------------------------------
# evaluation on gymnax's CartPole-v1: 64 fresh episodes, greedy or sampled actions
# ----------------------------------------------------------------------------------------


def episode_returns(act, key, episodes=64, max_steps=cartpole.MAX_EPISODE_STEPS):
    env = GYMNAX
    k_reset, k_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, episodes))

    def body(carry, _):
        state, obs, alive, total, key = carry
        key, k_act, k_env = jax.random.split(key, 3)
        action = act(obs, k_act)
        obs, state, reward, done, _ = jax.vmap(env.step)(
            jax.random.split(k_env, episodes), state, action
        )
        total = total + jnp.where(alive, reward, 0.0)
        return (state, obs, alive & ~done, total, key), None

    alive = jnp.ones((episodes,), bool)
    carry = (state, obs, alive, jnp.zeros((episodes,), jnp.float32), k_run)
    (_, _, _, total, _), _ = jax.lax.scan(body, carry, None, max_steps)
    return jnp.mean(total)


def rlgen_act(params, greedy):
    def act(obs, key):
        dist, _ = ppo_cartpole.policy_fn(params, obs)
        return jnp.argmax(dist.logits, -1) if greedy else dist.sample(seed=key)

    return act


def rejax_act(algo, params, greedy):
    def act(obs, key):
        if greedy:
            return algo.actor.apply(params, obs, method="_action_dist").mode()
        return algo.actor.apply(params, obs, key, method="act")

    return act


def final_returns(make_act, params, seeds):
    """Mean greedy and sampled returns per seed (params with a leading seed axis or not)."""
    batched = seeds > 1

    def one(p, greedy):
        return episode_returns(make_act(p, greedy), jax.random.key(2024))

    out = {}
    for greedy in (True, False):
        single = functools.partial(one, greedy=greedy)
        fn = jax.jit(jax.vmap(single) if batched else single)
        out["greedy" if greedy else "sampled"] = np.atleast_1d(np.asarray(fn(params)))
    return out


# ----------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------


def compile_fn(fn, seeds):
    arg = jnp.arange(seeds, dtype=jnp.int32) if seeds > 1 else jnp.int32(0)
    jitted = jax.jit(jax.vmap(fn) if seeds > 1 else fn)
    start = time.perf_counter()
    compiled = jitted.lower(arg).compile()
    return compiled, arg, time.perf_counter() - start


def run_case(candidates: dict, seeds: int, repeats: int, run: CartPoleConfig):
    compiled, compile_s = {}, {}
    for name, (fn, _) in candidates.items():
        compiled[name], arg, compile_s[name] = compile_fn(fn, seeds)
    times = {name: [] for name in candidates}
    params = {}
    for _ in range(repeats):  # interleaved: one run of each candidate per round
        for name, c in compiled.items():
            start = time.perf_counter()
            params[name] = jax.block_until_ready(c(arg))[0]
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, (_, make_act) in candidates.items():
        run_s = statistics.median(times[name])
        returns = final_returns(make_act, params[name], seeds)
        rows.append(
            {
                "impl": name,
                "seeds": seeds,
                "compile_s": compile_s[name],
                "run_s": run_s,
                "steps_per_s": seeds * run.total_timesteps / run_s,
                "greedy": returns["greedy"],
                "sampled": returns["sampled"],
            }
        )
    return rows


def fmt_returns(x):
    return f"{x.mean():.1f}" if len(x) == 1 else f"{x.mean():.1f} (min {x.min():.0f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1/8 of the timesteps, 1 repeat")
    parser.add_argument("--rejax-eval", action="store_true",
                        help="also time rejax with its default in-training evaluation")
    args = parser.parse_args()
    run = settings(61) if args.quick else settings()
    repeats = 1 if args.quick else args.repeats

    rejax_plain = rejax_algo(run, with_eval=False)
    candidates = {
        "rlgen (gymnax env)": (rlgen_train(run, GYMNAX), lambda p, g: rlgen_act(p, g)),
        "rlgen (rlgen env)": (rlgen_train(run, cartpole), lambda p, g: rlgen_act(p, g)),
        "rejax": (rejax_train(rejax_plain), lambda p, g: rejax_act(rejax_plain, p, g)),
    }
    if args.rejax_eval:
        rejax_eval = rejax_algo(run, with_eval=True)
        candidates["rejax (with its eval callback)"] = (
            rejax_train(rejax_eval),
            lambda p, g: rejax_act(rejax_eval, p, g),
        )
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} devices; "
          f"rejax {getattr(rejax, '__version__', '0.1.3')}; {run}")
    print(f"total_timesteps per seed: {run.total_timesteps}; repeats: {repeats} (interleaved)\n")
    rows = run_case(candidates, 1, repeats, run)
    if args.seeds > 1:
        multi = {k: v for k, v in candidates.items() if "eval callback" not in k}
        rows += run_case(multi, args.seeds, repeats, run)
    print("| implementation | seeds | compile (s) | run (s, median) | env steps/s | "
          "greedy return | sampled return |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['impl']} | {r['seeds']} | {r['compile_s']:.1f} | {r['run_s']:.2f} | "
              f"{r['steps_per_s']:,.0f} | {fmt_returns(r['greedy'])} | "
              f"{fmt_returns(r['sampled'])} |")


if __name__ == "__main__":
    main()
