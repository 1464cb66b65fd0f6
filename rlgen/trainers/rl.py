"""The RL trainers: thin NNX adapters over `rlgen.algorithms` (no math here).

Each trainer splits the model into pure parameters, calls its algorithm's pure
``update(state, batch)`` inside the base class's compiled step, and writes the result
back into the model. ``train_step(batch)`` takes the reference guide's batch keys and
returns the metrics dict of SPEC item 2. What a model must provide is in
`rlgen.trainers.protocol`.

`GRPOTrainer` and `REINFORCETrainer` also take ``train_step(batch, reward_fn, key)``
(SPEC item 10): ``batch["observations"]`` holds prompts; each is repeated
``num_generations`` times (contiguous groups), completions are drawn with the model's
``sample(observations, key)``, scored with ``reward_fn(samples, conditions)``, and the
update runs on them. The behaviour-policy log-probs are recorded by the update itself:
without a ``log_probs`` key, the algorithms take the current policy's log-probs before
the first optimiser step, which is exactly the sampling policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rlgen import algorithms, rewards
from rlgen.algorithms import DPOConfig, GRPOConfig, PPOConfig, REINFORCEConfig
from rlgen.trainers import protocol
from rlgen.trainers.base import Trainer


class _AlgorithmTrainer(Trainer):
    """An `rlgen.algorithms` factory behind the `Trainer` interface."""

    config_type: type = type(None)
    with_values = False
    has_epochs = False

    def __init__(self, model, optimizer, config=None, **kwargs):
        config = self.config_type() if config is None else config
        if not isinstance(config, self.config_type):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_type.__name__}, got "
                f"{type(config).__name__}"
            )
        super().__init__(model, optimizer, config, **kwargs)

    def _factory(self, policy_fn):
        raise NotImplementedError

    def _algorithm(self, rest):
        def policy_fn(params, observations):
            model = self.module(params, rest)
            return protocol.policy_output(model, observations, with_values=self.with_values)

        return self._factory(policy_fn)

    def init_state(self, params):
        return self._algorithm(self._rest).init(params)

    def _pack(self, batch):
        """The algorithm's batch: sequence models see their actions with the observations."""
        if "observations" in batch and "actions" in batch:
            batch = dict(batch)
            batch["observations"] = protocol.pack_observations(
                self.model, batch["observations"], batch["actions"]
            )
        return batch

    def _update(self, state, rest, batch, key, static=()):
        del key  # the algorithms carry their own randomness in the state
        batch = self._pack({**batch, **dict(static)})
        return self._algorithm(rest).update(state, batch)


class _SamplingTrainer(_AlgorithmTrainer):
    """Adds ``train_step(batch, reward_fn, key)``: sample, score, update (SPEC item 10)."""

    static_batch_keys = ("group_size",)
    samples = True

    def _uses_group_size(self) -> bool:
        """Whether the algorithm reads ``group_size`` (the sampled batch then carries it)."""
        return True

    def train_step(
        self, batch: Mapping[str, Any], reward_fn: Callable | None = None, key=None
    ) -> dict[str, jax.Array]:
        """One update. With ``reward_fn``: sample ``num_generations`` outputs per prompt first.

        Args:
          batch: the guide's batch keys; with ``reward_fn``, only ``observations``
            (prompts, leading axis P) and optionally ``group_size``.
          reward_fn: ``reward_fn(samples, conditions) -> [P * G]`` rewards.
          key: PRNG key for sampling (default: `next_key()`).
        """
        if reward_fn is None:
            if key is not None:
                raise ValueError("`key` is only used with `reward_fn` (to sample completions)")
            return self._run_update(batch)
        if not isinstance(batch, Mapping) or "observations" not in batch:
            raise ValueError(
                "with `reward_fn`, `batch` must be a dict holding 'observations' (the prompts); "
                f"got {sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__}"
            )
        extra = sorted(set(batch) - {"observations", "group_size"})
        if extra:
            raise ValueError(
                f"with `reward_fn` the trainer samples the actions and rewards itself; "
                f"unexpected batch key(s) {extra} (allowed: 'observations', 'group_size')"
            )
        group = batch.get("group_size", self.config.num_generations)
        prompts = jax.tree.map(lambda x: jnp.repeat(x, group, axis=0), batch["observations"])
        prompts = self.shard(prompts)
        key = self.next_key() if key is None else key
        actions, mask = protocol.sample(self.model, prompts, key)
        scores = rewards.call_reward(reward_fn, actions, prompts)
        full = {"observations": prompts, "actions": actions, "rewards": scores}
        if "group_size" in batch or self._uses_group_size():
            full["group_size"] = group
        if mask is not None:
            full["mask"] = mask
        return self._run_update(full)


class REINFORCETrainer(_SamplingTrainer):
    """REINFORCE (Williams 1992) on an NNX policy: `rlgen.algorithms.reinforce`.

    ``REINFORCETrainer(model, optimizer, config)``; ``train_step(batch)`` with
    ``observations, actions, rewards`` (optional ``dones, mask, group_size``), or
    ``train_step(batch, reward_fn, key)`` to sample and score. Metrics: ``loss,
    policy_loss, entropy, mean_reward, reward_std``.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPPolicy
      >>> model = MLPPolicy(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
      >>> trainer = REINFORCETrainer(model, opt, REINFORCEConfig())
      >>> batch = {"observations": jnp.ones((4, 3)), "actions": jnp.array([0, 1, 0, 1]),
      ...          "rewards": jnp.array([1.0, 0.0, 1.0, 0.0])}
      >>> sorted(trainer.train_step(batch))
      ['entropy', 'loss', 'mean_reward', 'policy_loss', 'reward_std']
    """

    config_type = REINFORCEConfig

    def _uses_group_size(self) -> bool:
        return self.config.baseline == "rloo"  # other baselines reject the key

    def _factory(self, policy_fn):
        return algorithms.reinforce(policy_fn, self.optimizer.tx, self.config)


class GRPOTrainer(_SamplingTrainer):
    """GRPO (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300) on an NNX policy.

    ``GRPOTrainer(model, optimizer, config)``; ``train_step(batch)`` with
    ``observations, actions, rewards`` (optional ``log_probs, ref_log_probs, mask,
    truncated, group_size``), or ``train_step(batch, reward_fn, key)`` to sample
    ``num_generations`` completions per prompt and score them. Metrics: ``loss,
    policy_loss, mean_reward, group_advantage_std, kl_penalty, approx_kl, entropy,
    clip_fraction``. All GRPO variants are `GRPOConfig` options.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPPolicy
      >>> model = MLPPolicy(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
      >>> trainer = GRPOTrainer(model, opt, GRPOConfig(num_generations=2))
      >>> reward = lambda samples, conditions=None: (samples == 1).astype(jnp.float32)
      >>> m = trainer.train_step({"observations": jnp.ones((4, 3))}, reward, jax.random.key(0))
      >>> m["mean_reward"].shape
      ()
    """

    config_type = GRPOConfig

    def _factory(self, policy_fn):
        return algorithms.grpo(policy_fn, self.optimizer.tx, self.config)


class PPOTrainer(_AlgorithmTrainer):
    """PPO (Schulman et al. 2017, arXiv 1707.06347) on an NNX actor-critic.

    The model returns ``(logits_or_distribution, values)`` (`rlgen.trainers.protocol`).
    ``train_step(trajectory)`` with ``observations, actions, rewards, values, log_probs,
    dones`` (``[B, T]``; ``values`` may have T+1 steps); GAE, the epochs and minibatches
    run inside one compiled step. Metrics: ``loss, policy_loss, value_loss, entropy,
    mean_reward, advantage_mean, kl_divergence, clip_fraction``.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPActorCritic
      >>> model = MLPActorCritic(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param)
      >>> trainer = PPOTrainer(model, opt, PPOConfig())
      >>> traj = {"observations": jnp.ones((2, 5, 3)), "actions": jnp.zeros((2, 5), int),
      ...         "rewards": jnp.ones((2, 5)), "values": jnp.zeros((2, 5)),
      ...         "log_probs": jnp.full((2, 5), -0.69), "dones": jnp.zeros((2, 5))}
      >>> trainer.train_step(traj)["value_loss"].shape
      ()
    """

    config_type = PPOConfig
    with_values = True

    def __init__(self, model, optimizer, config=None, *, seed: int = 0, **kwargs):
        self._seed = seed
        super().__init__(model, optimizer, config, seed=seed, **kwargs)

    def _factory(self, policy_fn):
        return algorithms.ppo(policy_fn, self.optimizer.tx, self.config, seed=self._seed)


class DPOTrainer(_AlgorithmTrainer):
    """DPO (Rafailov et al. 2023) and its relatives (IPO, hinge, robust, SimPO) on an NNX policy.

    ``DPOTrainer(model, optimizer, config)``. ``train_step(batch)`` takes sequences
    (SPEC item 6): ``chosen_observations, chosen_actions, rejected_observations,
    rejected_actions`` (optional ``chosen_mask, rejected_mask``; with
    ``reference="batch"`` also ``ref_chosen_log_probs, ref_rejected_log_probs``). The
    reference is by default a frozen copy of the model at construction. Given only
    log-probs it raises a ValueError naming the keys it needs. Metrics: ``loss, dpo_loss,
    reward_accuracy, chosen_reward, rejected_reward, reward_margin``.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPPolicy
      >>> model = MLPPolicy(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
      >>> trainer = DPOTrainer(model, opt, DPOConfig(beta=0.1))
      >>> obs = jnp.ones((4, 3))
      >>> batch = {"chosen_observations": obs, "chosen_actions": jnp.ones(4, int),
      ...          "rejected_observations": obs, "rejected_actions": jnp.zeros(4, int)}
      >>> round(float(trainer.train_step(batch)["dpo_loss"]), 4)  # policy == reference
      0.6931
    """

    config_type = DPOConfig

    def _factory(self, policy_fn):
        return algorithms.dpo(policy_fn, self.optimizer.tx, self.config)

    def _pack(self, batch):
        batch = dict(batch)
        for side in ("chosen", "rejected"):
            obs, act = f"{side}_observations", f"{side}_actions"
            if obs in batch and act in batch:
                batch[obs] = protocol.pack_observations(self.model, batch[obs], batch[act])
        return batch
