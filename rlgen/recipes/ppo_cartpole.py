"""PPO on CartPole-v1: a whole training run as one compiled program.

In the manner of PureJaxRL, everything from environment reset to the last update is one
`jax.jit`-ed function of the seed: a `lax.scan` over updates, each collecting a rollout
with a `lax.scan` over steps of `num_envs` vmapped environments, then handing the
`[num_envs, num_steps]` batch to `rlgen.algorithms.ppo` (GAE, epochs and minibatches
inside its update). Because the run is a pure function of the seed, `jax.vmap` trains
several seeds at once (`train_many`).

    params, metrics = train(seed=0)                  # about 500k environment steps
    returns = evaluate(params, jax.random.key(1))    # 64 greedy episodes

The defaults reach a greedy evaluation return of 500 (the maximum) within 500k steps.
Every setting of a run is a field of `CartPoleConfig` (PPO's own nested as ``ppo``);
`make_train`, `train` and `train_many` take one, and any of its fields as keywords
(``train(seed=0, num_envs=32)``). `run` trains and evaluates one run (``rlgen cartpole``).

The network is a small actor-critic (separate tanh MLPs for the policy logits and the
value) written in plain JAX. The environment is `rlgen.envs.cartpole` by default; any
object (or module) with the same functional API `reset(key) -> (obs, state)`,
`step(key, state, action) -> (obs, state, reward, done, info)` (auto-resetting) works,
e.g. a thin adapter over a gymnax environment (with `bootstrap_truncation=False` unless
its `info` has `truncated`, `terminated` and `final_observation`).
"""

from __future__ import annotations

import dataclasses
import time

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlgen import _checks
from rlgen.algorithms.ppo import PPOConfig, ppo
from rlgen.envs import cartpole
from rlgen.recipes import nested

_TRUNCATION_KEYS = ("truncated", "terminated", "final_observation")


# ----------------------------------------------------------------------------------------
# The settings
# ----------------------------------------------------------------------------------------

# Tuned for CartPole-v1 within 500k environment steps: 64 of 64 seeds (0-63, vmapped)
# reach a greedy evaluation return of 500, most by 100k steps. Artifex's PPO defaults,
# plus 4 epochs of 4 minibatches and value clipping: without it, a run now and then
# collapses for good (a value-loss spike inflates the global gradient norm, the clip
# shrinks the policy's share of the step to nothing, and the policy stops moving).
DEFAULT_CONFIG = PPOConfig(
    gamma=0.99,
    gae_lambda=0.95,
    clip_param=0.2,
    vf_coeff=0.5,
    entropy_coeff=0.01,
    max_grad_norm=0.5,
    num_epochs=4,
    num_minibatches=4,
    clip_value=0.2,
)


@dataclasses.dataclass(frozen=True)
class CartPoleConfig:
    """A training run's settings (the ``rlgen cartpole`` options).

    Attributes:
      seed: the run's seed in `run` (`train` takes the seed as an argument, so that
        `train_many` can vmap over it).
      total_timesteps: environment steps; the run takes
        ``total_timesteps // (num_envs * num_steps)`` updates (at least one).
      num_envs: environments stepped in parallel (vmapped); divisible by
        ``ppo.num_minibatches`` (minibatches split the environments' rows).
      num_steps: steps of each environment per rollout.
      learning_rate: Adam's step size.
      anneal_lr: anneal the step size linearly to 0 over the run.
      hidden_size: the width of the actor's and the critic's two hidden layers.
      bootstrap_truncation: an episode cut by the 500-step limit did not fail, so its
        last reward is credited with ``gamma * V(final observation)`` (Pardo et al. 2018,
        Time Limits in Reinforcement Learning, arXiv 1712.00378); the episode still ends
        there (``dones``). It needs the env's ``info["truncated"]``, ``info["terminated"]``
        and ``info["final_observation"]`` (as `rlgen.envs.cartpole` gives); without it a
        time-out is learnt as a failure (the value of states near the limit is
        underestimated).
      ppo: PPO's settings (`DEFAULT_CONFIG`).
      eval_episodes: the greedy episodes `run` evaluates the trained policy on.
    """

    seed: int = 0
    total_timesteps: int = 500_000
    num_envs: int = 16
    num_steps: int = 64
    learning_rate: float = 2.5e-3
    anneal_lr: bool = True
    hidden_size: int = 64
    bootstrap_truncation: bool = True
    ppo: PPOConfig = nested(DEFAULT_CONFIG)
    eval_episodes: int = 64

    def __post_init__(self):
        for name in ("total_timesteps", "num_envs", "num_steps", "hidden_size", "eval_episodes"):
            _checks.check_int(getattr(self, name), name, low=1)
        steps_per_update = self.num_envs * self.num_steps
        if self.total_timesteps < steps_per_update:
            raise ValueError(
                f"`total_timesteps` ({self.total_timesteps}) must cover at least one update of "
                f"num_envs * num_steps = {steps_per_update} environment steps"
            )
        if self.num_envs % self.ppo.num_minibatches:
            raise ValueError(
                f"`num_envs` ({self.num_envs}) must be divisible by config.num_minibatches "
                f"of `ppo` ({self.ppo.num_minibatches}): minibatches split the environments' "
                "rows"
            )


# ----------------------------------------------------------------------------------------
# The actor-critic network
# ----------------------------------------------------------------------------------------


def init_params(key, obs_size=cartpole.OBSERVATION_SHAPE[0], num_actions=cartpole.NUM_ACTIONS,
                hidden_size=CartPoleConfig.hidden_size):
    """Two 2-hidden-layer tanh MLPs: `actor` (logits) and `critic` (value).

    Weights are normal with variance `gain^2 / fan_in` (gain sqrt(2) in hidden layers, 0.01
    for the logits so the first policy is near uniform, 1 for the value); biases zero. One
    normal draw serves every matrix (one PRNG call in the compiled program instead of six).
    No QR-based orthogonal initialisation: jaxlib's batched CPU QR can deadlock its thread
    pool when vmapped over seeds on a two-core machine.
    """
    root2 = float(np.sqrt(2.0))
    shapes = {
        "actor": [(obs_size, hidden_size, root2), (hidden_size, hidden_size, root2),
                  (hidden_size, num_actions, 0.01)],
        "critic": [(obs_size, hidden_size, root2), (hidden_size, hidden_size, root2),
                   (hidden_size, 1, 1.0)],
    }
    sizes = [m * n for net in shapes.values() for m, n, _ in net]
    normal = jax.random.normal(key, (sum(sizes),), jnp.float32)
    blocks = iter(jnp.split(normal, np.cumsum(sizes)[:-1]))

    def dense(m, n, gain):
        w = next(blocks).reshape(m, n) * (gain / np.sqrt(m))
        return w, jnp.zeros((n,), jnp.float32)

    return {name: [dense(m, n, g) for m, n, g in net] for name, net in shapes.items()}


def _mlp(layers, x):
    for w, b in layers[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def policy_fn(params, observations):
    """`(Categorical over actions, values)` for observations of any leading shape.

    The MLPs run on the observations flattened to `[N, obs_size]`: on XLA:CPU a 2-D matrix
    product is markedly faster than the same product with extra leading axes (the PPO
    update sees `[rows, steps, obs_size]`; benchmarks/bench_ppo.py).
    """
    lead = observations.shape[:-1]
    x = observations.reshape(-1, observations.shape[-1])
    logits = _mlp(params["actor"], x).reshape(*lead, -1)
    values = _mlp(params["critic"], x).reshape(lead)
    return distrax.Categorical(logits=logits), values


# ----------------------------------------------------------------------------------------
# Training: one pure function of the seed
# ----------------------------------------------------------------------------------------


def make_train(config: CartPoleConfig = CartPoleConfig(), *, env=cartpole, **settings):
    """Returns `train_fn(seed) -> (params, metrics)`, pure and ready for `jit`/`vmap`.

    Args:
      config: the run's settings (``config.seed`` is not used: the seed is `train_fn`'s
        argument).
      env: the environment's functional API (the module docstring); default
        `rlgen.envs.cartpole`.
      **settings: `CartPoleConfig` fields that replace ``config``'s
        (``make_train(num_envs=32)``).

    `metrics` holds one entry per update: PPO's metrics (`rlgen.algorithms.ppo.METRICS`),
    `episode_return` (mean return of the episodes that ended during that update's rollout;
    NaN if none did), `episodes` (how many ended) and `timesteps` (environment steps so
    far).
    """
    if not isinstance(config, CartPoleConfig):
        raise TypeError(
            "`config` must be a CartPoleConfig (PPO's settings are its `ppo`: "
            f"CartPoleConfig(ppo=...)), got {type(config).__name__}"
        )
    config = dataclasses.replace(config, **settings)
    ppo_config, num_envs, num_steps = config.ppo, config.num_envs, config.num_steps
    steps_per_update = num_envs * num_steps
    num_updates = config.total_timesteps // steps_per_update
    optimizer_steps = num_updates * ppo_config.num_epochs * ppo_config.num_minibatches
    schedule = (
        optax.linear_schedule(config.learning_rate, 0.0, optimizer_steps)
        if config.anneal_lr
        else config.learning_rate
    )
    optimizer = optax.adam(schedule)
    reset_many = jax.vmap(env.reset)
    step_many = jax.vmap(env.step)

    def train_fn(seed):
        key = jax.random.key(seed)
        key, k_params, k_reset = jax.random.split(key, 3)
        algo = ppo(policy_fn, optimizer, ppo_config, seed=seed)
        ppo_state = algo.init(init_params(k_params, hidden_size=config.hidden_size))
        obs, env_state = reset_many(jax.random.split(k_reset, num_envs))
        running_return = jnp.zeros((num_envs,), jnp.float32)

        def rollout_step(carry, _):
            params, env_state, obs, running_return, key = carry
            key, k_action, k_env = jax.random.split(key, 3)
            dist, value = policy_fn(params, obs)
            action = dist.sample(seed=k_action)
            log_prob = dist.log_prob(action)
            next_obs, env_state, reward, done, info = step_many(
                jax.random.split(k_env, num_envs), env_state, action
            )
            running_return = running_return + reward
            finished = jnp.where(done, running_return, 0.0)
            running_return = jnp.where(done, 0.0, running_return)
            if config.bootstrap_truncation:
                missing = [k for k in _TRUNCATION_KEYS if k not in info]
                if missing:
                    raise ValueError(
                        f"bootstrap_truncation=True needs the env's info keys {missing}; "
                        f"got {sorted(info)}. Pass bootstrap_truncation=False"
                    )
                _, final_value = policy_fn(params, info["final_observation"])
                timed_out = info["truncated"] & ~info["terminated"]
                reward = reward + jnp.where(timed_out, ppo_config.gamma * final_value, 0.0)
            transition = (obs, action, reward, done, value, log_prob, finished)
            return (params, env_state, next_obs, running_return, key), transition

        def update_step(carry, _):
            ppo_state, env_state, obs, running_return, key = carry
            params = ppo_state.params
            (_, env_state, obs, running_return, key), traj = jax.lax.scan(
                rollout_step, (params, env_state, obs, running_return, key), None, num_steps
            )
            # [num_steps, num_envs] -> batch-major [num_envs, num_steps] rows.
            observations, actions, rewards, dones, values, log_probs, finished = (
                jnp.swapaxes(x, 0, 1) for x in traj
            )
            _, last_value = policy_fn(params, obs)
            batch = {
                "observations": observations,
                "actions": actions,
                "rewards": rewards,
                "dones": dones,
                "values": jnp.concatenate([values, last_value[:, None]], axis=1),
                "log_probs": log_probs,
            }
            ppo_state, metrics = algo.update(ppo_state, batch)
            episodes = jnp.sum(dones)
            metrics["episodes"] = episodes
            metrics["episode_return"] = jnp.where(
                episodes > 0, jnp.sum(finished) / jnp.maximum(episodes, 1), jnp.nan
            )
            metrics["timesteps"] = (ppo_state.step * steps_per_update).astype(jnp.int32)
            return (ppo_state, env_state, obs, running_return, key), metrics

        carry = (ppo_state, env_state, obs, running_return, key)
        (ppo_state, *_), metrics = jax.lax.scan(update_step, carry, None, num_updates)
        return ppo_state.params, metrics

    return train_fn


def train(seed=0, config: CartPoleConfig = CartPoleConfig(), **settings):
    """Compiles and runs one training run (`settings` as `make_train`): `(params, metrics)`."""
    return jax.jit(make_train(config, **settings))(seed)


def train_many(seeds, config: CartPoleConfig = CartPoleConfig(), **settings):
    """Trains one run per seed in one compiled, vmapped program (leading axis = seed)."""
    return jax.jit(jax.vmap(make_train(config, **settings)))(jnp.asarray(seeds, jnp.int32))


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------


def evaluate(
    params,
    key,
    num_episodes: int = 64,
    *,
    greedy: bool = True,
    env=cartpole,
    max_steps: int = cartpole.MAX_EPISODE_STEPS,
):
    """Returns of `num_episodes` fresh episodes (`[num_episodes]` float32).

    `greedy=True` takes the most likely action (deterministic policy); `False` samples.
    Each episode runs until its first `done` (at most `max_steps` steps); jittable.
    """
    k_reset, k_run = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))

    def body(carry, _):
        env_state, obs, alive, total, key = carry
        key, k_action, k_env = jax.random.split(key, 3)
        dist, _ = policy_fn(params, obs)
        action = jnp.argmax(dist.logits, axis=-1) if greedy else dist.sample(seed=k_action)
        obs, env_state, reward, done, _ = jax.vmap(env.step)(
            jax.random.split(k_env, num_episodes), env_state, action.astype(jnp.int32)
        )
        total = total + jnp.where(alive, reward, 0.0)
        return (env_state, obs, alive & ~done, total, key), None

    alive = jnp.ones((num_episodes,), bool)
    total = jnp.zeros((num_episodes,), jnp.float32)
    (_, _, _, total, _), _ = jax.lax.scan(
        body, (env_state, obs, alive, total, k_run), None, max_steps
    )
    return total


# ----------------------------------------------------------------------------------------
# A run, evaluated (`rlgen cartpole`)
# ----------------------------------------------------------------------------------------


def run(config: CartPoleConfig = CartPoleConfig()) -> dict:
    """Trains the run of ``config.seed`` and evaluates its greedy policy.

    Returns ``mean_greedy_return`` (over ``config.eval_episodes`` fresh episodes),
    ``timesteps`` (environment steps trained) and ``seconds``.
    """
    start = time.perf_counter()
    params, metrics = train(config.seed, config)
    returns = jax.jit(evaluate, static_argnums=2)(
        params, jax.random.key(config.seed + 1), config.eval_episodes
    )
    return {
        "mean_greedy_return": float(jnp.mean(returns)),
        "timesteps": int(metrics["timesteps"][-1]),
        "seconds": round(time.perf_counter() - start, 1),
    }
