"""The RL trainers: thin NNX adapters over `rlgen.algorithms` (no math here).

Each trainer's `make_algorithm` hands its algorithm a ``policy_fn`` that rebuilds the
model from the state's parameters (`rlgen.trainers.protocol`), so ``train_step(batch)``
is exactly the algorithm's pure ``update``: it takes the batch keys of the algorithm and
returns its metrics (`rlgen.algorithms.GRPO_METRICS`, ...).

`GRPOTrainer` and `REINFORCETrainer` also sample: ``train_step(batch, reward_fn, key)``
repeats each prompt of ``batch["observations"]`` ``num_generations`` times (contiguous
groups), draws completions with the model's ``sample(observations, key)``, scores them with
``reward_fn(samples, conditions)`` and updates; ``fit(data, reward_fn=...)`` does so for
every batch of prompts. Sampling runs in one compiled program of the state's parameters
(no model split or write-back on the way). The behaviour policy's log-probs: with one
optimiser step per batch the update's own forward pass is exactly the sampling policy's
(the ratio is 1 and costs nothing); with GRPO's ``num_iterations > 1`` they are the ones
the sampler recorded (``sample_with_log_probs``), or else computed once by the update.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    #: ``factory(policy_fn, optimizer, config, **factory_kwargs) -> Algorithm``.
    factory: Callable = staticmethod(lambda *args, **kwargs: None)
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

    def factory_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of ``factory`` (PPO: its shuffling seed)."""
        return {}

    def make_algorithm(self, merge):
        policy_fn = protocol.policy_fn(merge, with_values=self.with_values)
        return self.factory(policy_fn, self.tx, self.config, **self.factory_kwargs())

    def prepare_batch(self, batch):
        """Sequence models see their actions with the observations (teacher forcing)."""
        return protocol.pack_batch(self.model, batch, _SEQUENCE_KEYS)


_SEQUENCE_KEYS = (("observations", "actions"),)


class _SamplingTrainer(_AlgorithmTrainer):
    """Adds sampling: ``train_step(batch, reward_fn, key)`` and ``fit(..., reward_fn=)``."""

    static_batch_keys = ("group_size",)
    _sampler = None  # the compiled sampling program, made on first use

    def _uses_group_size(self) -> bool:
        """Whether the algorithm reads ``group_size`` (the sampled batch then carries it)."""
        return True

    def _uses_behaviour_log_probs(self) -> bool:
        """Whether the update needs the sampler's log-probs (it cannot take them from its
        own forward pass: several optimiser steps on one batch)."""
        return False

    def _sample(self, prompts, key):
        """`protocol.sample` of the model with the state's parameters, compiled once per
        prompt shape; eagerly (with a warning, once) when the model's `sample` cannot be
        traced."""
        with_log_probs = self._uses_behaviour_log_probs()
        if self._sampler is None:
            binding = self._binding

            def run(params, rest, prompts, key):
                model = binding.merge(params, rest)
                return protocol.sample(model, prompts, key, with_log_probs=with_log_probs)

            self._sampler = jax.jit(run)
        if self._sampler is not protocol.sample:
            try:
                # on a mesh the key joins the replicated parameters' devices
                return self._sampler(self.state.params, self._rest, prompts, self._replicate(key))
            except _UNTRACEABLE as error:
                warnings.warn(
                    f"{type(self.model).__name__}.sample cannot be traced by jax.jit "
                    f"({type(error).__name__}); sampling eagerly from now on (slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._sampler = protocol.sample
        return protocol.sample(self.model, prompts, key, with_log_probs=with_log_probs)

    def train_step(
        self, batch: Mapping[str, Any], reward_fn: Callable | None = None, key=None
    ) -> dict[str, jax.Array]:
        """One update. With ``reward_fn``: sample ``num_generations`` outputs per prompt first.

        Args:
          batch: the algorithm's batch keys; with ``reward_fn``, only ``observations``
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
        actions, mask, log_probs = self._sample(prompts, key)
        scores = rewards.call_reward(reward_fn, actions, prompts)
        full = {"observations": prompts, "actions": actions, "rewards": scores}
        if "group_size" in batch or self._uses_group_size():
            full["group_size"] = group
        if mask is not None:
            full["mask"] = mask
        if log_probs is not None:
            full["log_probs"] = log_probs
        return self._run_update(full)

    def fit(
        self,
        data: Iterable[Mapping[str, Any]],
        num_steps: int | None = None,
        callbacks: Sequence[Any] = (),
        *,
        reward_fn: Callable | None = None,
        num_epochs: int = 1,
    ) -> dict[str, jax.Array] | None:
        """`Trainer.fit`; with ``reward_fn``, each batch holds prompts to sample and score.

        Each step is ``train_step(batch, reward_fn, next_key())``; without ``reward_fn``
        the batches hold complete experience, as for `train_step(batch)`.
        """
        return self._fit_sampling(data, reward_fn, num_steps, callbacks, num_epochs)


class REINFORCETrainer(_SamplingTrainer):
    """REINFORCE (Williams 1992) on an NNX policy: `rlgen.algorithms.reinforce`.

    ``REINFORCETrainer(model, optimizer, config)``; ``train_step(batch)`` with
    ``observations, actions, rewards`` (optional ``dones, mask, group_size``), or
    ``train_step(batch, reward_fn, key)`` to sample and score. Metrics:
    `rlgen.algorithms.REINFORCE_METRICS`.

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
      ['entropy', 'loss', 'mean_reward', 'policy_loss', 'reward_std', 'skipped']
    """

    config_type = REINFORCEConfig
    factory = staticmethod(algorithms.reinforce)

    def _uses_group_size(self) -> bool:
        return self.config.baseline == "rloo"  # other baselines reject the key


class GRPOTrainer(_SamplingTrainer):
    """GRPO (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300) on an NNX policy.

    ``GRPOTrainer(model, optimizer, config)``; ``train_step(batch)`` with
    ``observations, actions, rewards`` (optional ``log_probs, ref_log_probs, mask,
    truncated, group_size``), or ``train_step(batch, reward_fn, key)`` to sample
    ``num_generations`` completions per prompt and score them. Metrics:
    `rlgen.algorithms.GRPO_METRICS`. All GRPO variants are `GRPOConfig` options.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPPolicy
      >>> policy = MLPPolicy(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> trainer = GRPOTrainer(policy, nnx.Optimizer(policy, optax.adam(1e-2), wrt=nnx.Param),
      ...                       GRPOConfig(num_generations=2))
      >>> reward = lambda samples, conditions=None: (samples == 1).astype(jnp.float32)
      >>> m = trainer.train_step({"observations": jnp.ones((4, 3))}, reward, jax.random.key(0))
      >>> m["mean_reward"].shape
      ()
    """

    config_type = GRPOConfig
    factory = staticmethod(algorithms.grpo)

    def _uses_behaviour_log_probs(self) -> bool:
        return self.config.num_iterations > 1


#: What tracing a non-traceable `sample` raises (then the trainer samples eagerly).
_UNTRACEABLE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


class PPOTrainer(_AlgorithmTrainer):
    """PPO (Schulman et al. 2017, arXiv 1707.06347) on an NNX actor-critic.

    The model returns ``(logits_or_distribution, values)`` (`rlgen.trainers.protocol`).
    ``train_step(trajectory)`` with ``observations, actions, rewards, values, log_probs,
    dones`` (``[B, T]``; ``values`` may have T+1 steps), or a one-step batch with
    ``rewards, values, log_probs, dones`` ``[B]`` (one action per sample: a
    ``distrax.MultivariateNormalDiag`` over continuous actions, e.g.
    `rlgen.models.gaussian.GaussianEncoderPolicy`); GAE, the epochs and minibatches
    run inside one compiled step. Metrics: `rlgen.algorithms.PPO_METRICS`.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPActorCritic
      >>> model = MLPActorCritic(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> trainer = PPOTrainer(model, nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param))
      >>> traj = {"observations": jnp.ones((2, 5, 3)), "actions": jnp.zeros((2, 5), int),
      ...         "rewards": jnp.ones((2, 5)), "values": jnp.zeros((2, 5)),
      ...         "log_probs": jnp.full((2, 5), -0.69), "dones": jnp.zeros((2, 5))}
      >>> trainer.train_step(traj)["value_loss"].shape
      ()
    """

    config_type = PPOConfig
    factory = staticmethod(algorithms.ppo)
    with_values = True

    def factory_kwargs(self):
        return {"seed": self.seed}


class DPOTrainer(_AlgorithmTrainer):
    """DPO (Rafailov et al. 2023) and its relatives (IPO, hinge, robust, SimPO) on an NNX policy.

    ``DPOTrainer(model, optimizer, config)``. ``train_step(batch)`` takes sequences:
    ``chosen_observations, chosen_actions, rejected_observations,
    rejected_actions`` (optional ``chosen_mask, rejected_mask``; with
    ``reference="batch"`` also ``ref_chosen_log_probs, ref_rejected_log_probs``). The
    reference is by default a frozen copy of the model at construction. Given only
    log-probs (no gradient could reach the model through them) it raises a ValueError
    naming the keys it needs. Metrics: `rlgen.algorithms.DPO_METRICS`.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPPolicy
      >>> model = MLPPolicy(3, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> config = DPOConfig(beta=0.1)  # the reference: a frozen copy of the model
      >>> trainer = DPOTrainer(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), config)
      >>> obs = jnp.ones((4, 3))
      >>> batch = {"chosen_observations": obs, "chosen_actions": jnp.ones(4, int),
      ...          "rejected_observations": obs, "rejected_actions": jnp.zeros(4, int)}
      >>> round(float(trainer.train_step(batch)["dpo_loss"]), 4)  # policy == reference
      0.6931
    """

    config_type = DPOConfig
    factory = staticmethod(algorithms.dpo)

    def prepare_batch(self, batch):
        pairs = tuple((f"{s}_observations", f"{s}_actions") for s in ("chosen", "rejected"))
        return protocol.pack_batch(self.model, batch, pairs)
