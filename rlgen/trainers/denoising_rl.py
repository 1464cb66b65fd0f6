"""RL trainers of diffusion and flow models: thin NNX adapters over the denoising RL
algorithms (no math here).

Every trainer takes a denoiser ``model(x [B, ...], t [B] float in [0, 1], labels [B] int or
None) -> [B, ...]`` (`rlgen.models.MLPDenoiser`), its ``nnx.Optimizer``, a sampler
(`rlgen.generative.rollout.DiffusionSampler` or `FlowSampler`: the policy) and the
algorithm's config:

==========================  ==================================  ============================
trainer                     algorithm                           what it trains on
==========================  ==================================  ============================
`DDPOTrainer`               `rlgen.algorithms.ddpo` (DDPO,      trajectories: per-step
                            Flow-GRPO, Flow-GRPO-Fast/MixGRPO)  log-probs, clipped ratios
`NFTTrainer`                `rlgen.algorithms.nft`              final samples, forward
                            (DiffusionNFT)                      process (no log-probs)
`DRaFTTrainer`              `rlgen.algorithms.draft`            a differentiable reward,
                            (DRaFT-K, ReFL)                     back-propagated
`DiffusionDPOTrainer`       `rlgen.algorithms.diffusion_dpo`    preference pairs
==========================  ==================================  ============================

``train_step(batch)`` runs the algorithm's update on a batch of its keys. The online
methods also sample: ``train_step(conditions, reward_fn, key)`` with ``conditions``
``{"labels": [P]}`` (a class-conditional model) or ``{"num_prompts": P}`` (unconditional)
draws ``num_generations`` samples per condition (contiguous groups) with the sampler,
scores them with ``reward_fn(samples [P * G, ...], labels [P * G] or None) -> [P * G]``
and updates; ``fit(batches, reward_fn=...)`` does so for every batch of conditions.
``sample(num, key, labels)`` draws from the current policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks, rewards
from rlgen.algorithms.ddpo import DDPOConfig, ddpo
from rlgen.algorithms.diffusion_dpo import DiffusionDPOConfig, diffusion_dpo
from rlgen.algorithms.draft import DRaFTConfig, draft
from rlgen.algorithms.nft import NFTConfig, nft
from rlgen.generative import rollout as rollout_lib
from rlgen.trainers import protocol
from rlgen.trainers.base import Trainer

#: The keys of an online step's ``conditions``: one of the first two, optionally
#: ``stochastic`` (``[K]``, the steps that draw noise: an SDE window).
CONDITION_KEYS = ("labels", "num_prompts", "stochastic")


class _DenoisingRLTrainer(Trainer):
    """The shared part of the denoising RL trainers (module doc)."""

    config_type: type = type(None)
    #: ``factory(apply_fn, sampler, optimizer, config) -> Algorithm``.
    factory: Callable = staticmethod(lambda *args, **kwargs: None)
    #: Whether ``train_step(conditions, reward_fn, key)`` samples and scores (online).
    online: bool = True
    #: The log-prob reduction of the rollout (None: the config's ``reduction``).
    static_batch_keys = ("group_size",)
    has_epochs = False

    def __init__(
        self,
        model,
        optimizer,
        sampler: rollout_lib.Sampler,
        config=None,
        *,
        data_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        **kwargs,
    ):
        rollout_lib.check_sampler(sampler)
        config = self.config_type() if config is None else config
        if not isinstance(config, self.config_type):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_type.__name__}, got "
                f"{type(config).__name__}"
            )
        self.data_shape, self.num_classes = protocol.denoiser_shapes(
            model, data_shape, num_classes
        )
        self.sampler = sampler
        super().__init__(model, optimizer, config, **kwargs)
        self._compiled_rollout = jax.jit(
            self._rollout, static_argnames=("num", "conditional", "record")
        )

    # ------------------------------------------------------------------ the algorithm
    def apply_fn(self, merge):
        """``apply_fn(params, x, t, labels)`` of the algorithms, from ``merge(params)``."""
        return lambda params, x, t, labels: merge(params)(x, t, labels)

    def make_algorithm(self, merge):
        return self.factory(
            self.apply_fn(merge), self.sampler, self.tx, self.config, seed=self.seed
        )

    def sampling_params(self):
        """The parameters the sampler draws with (the current policy's)."""
        return self.state.params

    @property
    def reduction(self) -> str:
        return getattr(self.config, "reduction", "mean")

    # ------------------------------------------------------------------ sampling
    def _rollout(self, params, rest, key, labels, stochastic, *, num, conditional, record):
        apply_fn = self.apply_fn(lambda p: self._binding.merge(p, rest))
        samples, batch = rollout_lib.rollout(
            apply_fn, params, self.sampler, key, (num, *self.data_shape),
            reduction=self.reduction, labels=labels if conditional else None,
            stochastic=stochastic,
        )
        return (samples, batch) if record else (samples, {})

    def _labels(self, labels, num):
        if labels is None:
            return None
        return _checks.check_labels(np.asarray(labels), self.num_classes, num)

    def sample(self, num_samples: int, key, labels=None, *, stochastic=None):
        """``[num_samples, *data_shape]`` samples of the current policy (the sampler).

        Args:
          num_samples: how many.
          key: PRNG key.
          labels: ``[num_samples]`` classes (None: unconditional, the null class).
          stochastic: ``[K]`` which steps draw noise (None: all; see
            `rlgen.generative.rollout.stochastic_window`).
        """
        _checks.check_positive_int(num_samples, "num_samples")
        labels = self._labels(labels, num_samples)
        samples, _ = self._compiled_rollout(
            self.sampling_params(), self._rest, key, labels, stochastic,
            num=num_samples, conditional=labels is not None, record=False,
        )
        return samples

    def rollout(self, num_samples: int, key, labels=None, *, stochastic=None):
        """``(samples, batch)`` of `rlgen.generative.rollout.rollout` with the sampling
        parameters and the config's reduction: the trajectory the coupled methods train on."""
        _checks.check_positive_int(num_samples, "num_samples")
        labels = self._labels(labels, num_samples)
        return self._compiled_rollout(
            self.sampling_params(), self._rest, key, labels, stochastic,
            num=num_samples, conditional=labels is not None, record=True,
        )

    # ------------------------------------------------------------------ steps
    def _group(self) -> int:
        """Samples drawn per condition online (the config's ``num_generations``)."""
        return self.config.num_generations

    def experience(self, samples, batch, scores, group: int) -> dict[str, Any]:
        """The algorithm's batch from a rollout and its rewards (subclasses refine it)."""
        return {**batch, "rewards": scores, "group_size": group}

    def _conditions(self, conditions) -> tuple[int, Any]:
        which = set(conditions) & set(CONDITION_KEYS[:2]) if isinstance(conditions, Mapping) else ()
        if len(which) != 1:
            got = sorted(conditions) if isinstance(conditions, Mapping) else type(conditions)
            raise ValueError(
                "with `reward_fn`, the batch must be {'labels': [P] int} (a class-conditional "
                f"model) or {{'num_prompts': P}} (unconditional); got {got}"
            )
        extra = sorted(set(conditions) - set(CONDITION_KEYS))
        if extra:
            raise ValueError(
                f"unexpected key(s) {extra} in the conditions (allowed: {CONDITION_KEYS})"
            )
        if "num_prompts" in conditions:
            return _checks.check_positive_int(conditions["num_prompts"], "num_prompts"), None
        labels = _checks.int_array(np.asarray(conditions["labels"]), "labels", rank=1)
        return labels.shape[0], labels

    def train_step(
        self, batch: Mapping[str, Any], reward_fn: Callable | None = None, key=None
    ) -> dict[str, jax.Array]:
        """One update. With ``reward_fn``: sample and score ``num_generations`` per condition.

        Args:
          batch: the algorithm's batch keys; with ``reward_fn``, the conditions
            (``{"labels": [P]}`` or ``{"num_prompts": P}``, optionally ``"stochastic"``:
            ``[K]`` the steps that draw noise, `rlgen.generative.rollout.stochastic_window`).
          reward_fn: ``reward_fn(samples, labels or None) -> [N]`` rewards.
          key: PRNG key for sampling (default: `next_key()`).
        """
        if reward_fn is None:
            if key is not None:
                raise ValueError("`key` is only used with `reward_fn` (to sample)")
            return self._run_update(batch)
        if not self.online:
            raise ValueError(f"{type(self).__name__} takes no `reward_fn` in train_step")
        prompts, labels = self._conditions(batch)
        group = self._group()
        num = prompts * group
        if labels is not None:
            labels = jnp.repeat(labels, group)
        key = self.next_key() if key is None else key
        samples, record = self.rollout(num, key, labels, stochastic=batch.get("stochastic"))
        scores = rewards.call_reward(reward_fn, samples, labels)
        return self._run_update(self.experience(samples, record, scores, group))

    def fit(
        self,
        data: Iterable[Mapping[str, Any]],
        num_steps: int | None = None,
        callbacks: Sequence[Any] = (),
        *,
        reward_fn: Callable | None = None,
        num_epochs: int = 1,
    ):
        """`Trainer.fit`; with ``reward_fn`` each batch holds conditions to sample and score."""
        return self._fit_sampling(data, reward_fn, num_steps, callbacks, num_epochs)


class DDPOTrainer(_DenoisingRLTrainer):
    """DDPO / Flow-GRPO (`rlgen.algorithms.ddpo`) on an NNX denoiser (module doc).

    ``DDPOTrainer(model, optimizer, sampler, DDPOConfig(...))``; ``train_step(batch)`` with
    `rlgen.generative.rollout.rollout`'s keys plus ``rewards``, or
    ``train_step({"labels": [P]} or {"num_prompts": P}, reward_fn, key)`` to sample
    ``num_generations`` trajectories per condition with the current parameters, score them
    and update. The behaviour's log-probs are recomputed in the update (exactly the
    sampling policy's, so the first ratio is exactly 1). Metrics:
    `rlgen.algorithms.ddpo.METRICS`.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPDenoiser
      >>> from rlgen.generative.rollout import FlowSampler
      >>> model = MLPDenoiser(2, hidden=16, depth=1, rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
      >>> trainer = DDPOTrainer(model, opt, FlowSampler(num_steps=4),
      ...                       DDPOConfig(num_generations=8))
      >>> reward = lambda samples, labels=None: samples[:, 0]
      >>> metrics = trainer.train_step({"num_prompts": 2}, reward, jax.random.key(0))
      >>> float(metrics["ratio_mean"]), float(metrics["kl"])
      (1.0, 0.0)
    """

    config_type = DDPOConfig
    factory = staticmethod(ddpo)

    def experience(self, samples, batch, scores, group):
        batch = {k: v for k, v in batch.items() if k != "log_probs"}  # recomputed on-policy
        return {**batch, "rewards": scores, "group_size": group}


class NFTTrainer(_DenoisingRLTrainer):
    """DiffusionNFT (`rlgen.algorithms.nft`) on an NNX denoiser: online RL on the forward
    process, no per-step log-probs (module doc).

    ``train_step(batch)`` with ``samples``, ``rewards`` (optional ``labels``,
    ``group_size``), or ``train_step(conditions, reward_fn, key)``: the *old* policy
    (``state.old_params``, an EMA of the trained parameters) samples ``num_generations``
    per condition, as DiffusionNFT does; `sample` draws from the old policy too, and
    ``merge(state.params)`` is the trained model. Metrics: `rlgen.algorithms.nft.METRICS`.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPDenoiser
      >>> from rlgen.generative.rollout import FlowSampler
      >>> model = MLPDenoiser(2, hidden=16, depth=1, rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
      >>> trainer = NFTTrainer(model, opt, FlowSampler(num_steps=4), NFTConfig(num_generations=8))
      >>> reward = lambda samples, labels=None: samples[:, 0]
      >>> metrics = trainer.train_step({"num_prompts": 2}, reward, jax.random.key(0))
      >>> float(metrics["label_mean"])
      0.5
    """

    config_type = NFTConfig
    factory = staticmethod(nft)

    def sampling_params(self):
        return self.state.old_params

    def experience(self, samples, batch, scores, group):
        out = {"samples": samples, "rewards": scores, "group_size": group}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out


class DRaFTTrainer(_DenoisingRLTrainer):
    """DRaFT-K, DRaFT-LV and ReFL (`rlgen.algorithms.draft`): a differentiable reward
    back-propagated through the last sampler steps (module doc).

    ``DRaFTTrainer(model, optimizer, sampler, reward_fn, DRaFTConfig(...))`` with
    ``reward_fn(samples [B, ...], labels [B] or None) -> [B]`` differentiable (e.g.
    `rlgen.rewards.ClassifierReward` with ``output="log_probability"``).
    ``train_step(batch)`` takes ``{"noise": [B, ...], "labels": optional [B]}`` (the update
    samples from that noise itself) or the conditions ``{"labels": [P]}`` /
    ``{"num_prompts": P}``, for which the noise is drawn from `next_key()`. Metrics:
    `rlgen.algorithms.draft.METRICS`.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPDenoiser
      >>> from rlgen.generative.rollout import FlowSampler
      >>> model = MLPDenoiser(2, hidden=16, depth=1, rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
      >>> reward = lambda samples, labels=None: -jnp.sum(samples**2, axis=-1)
      >>> trainer = DRaFTTrainer(model, opt, FlowSampler(num_steps=4), reward)
      >>> sorted(trainer.train_step({"num_prompts": 8}))[:2]
      ['grad_norm', 'loss']
    """

    config_type = DRaFTConfig
    online = False

    def __init__(self, model, optimizer, sampler, reward_fn, config=None, **kwargs):
        if not callable(reward_fn):
            raise TypeError(f"`reward_fn` must be callable, got {type(reward_fn).__name__}")
        self.reward_fn = reward_fn
        super().__init__(model, optimizer, sampler, config, **kwargs)

    def make_algorithm(self, merge):
        return draft(
            self.apply_fn(merge), self.sampler, self.reward_fn, self.tx, self.config,
            seed=self.seed,
        )

    def train_step(self, batch, reward_fn=None, key=None):
        """One update on ``{"noise", "labels"}``, or on conditions (noise drawn here)."""
        if reward_fn is not None or key is not None:
            raise ValueError(
                "DRaFTTrainer's reward is given at construction; train_step(batch) takes no "
                "`reward_fn` or `key`"
            )
        if isinstance(batch, Mapping) and "noise" not in batch:
            num, labels = self._conditions(batch)
            noise = jax.random.normal(self.next_key(), (num, *self.data_shape), jnp.float32)
            batch = {"noise": noise} if labels is None else {"noise": noise, "labels": labels}
        return self._run_update(batch)

    def fit(self, data, num_steps=None, callbacks=(), *, reward_fn=None, num_epochs=1):
        """`Trainer.fit` over batches of noise or of conditions (`train_step`)."""
        if reward_fn is not None:
            raise ValueError("DRaFTTrainer's reward is given at construction, not to fit")
        return self._fit(data, self.train_step, num_steps, callbacks, num_epochs)

    @property
    def reduction(self) -> str:
        return "mean"  # sampling only; DRaFT has no log-probs


class DiffusionDPOTrainer(_DenoisingRLTrainer):
    """Diffusion-DPO (`rlgen.algorithms.diffusion_dpo`) from preference pairs (module doc).

    ``train_step(batch)`` with ``chosen``, ``rejected`` (``[B, ...]``, the model's data
    scale) and optional ``labels``; or, online, ``train_step(conditions, reward_fn, key)``
    draws two samples per condition with the current policy and prefers the one
    ``reward_fn`` scores higher. Metrics: `rlgen.algorithms.diffusion_dpo.METRICS`.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from rlgen.models import MLPDenoiser
      >>> from rlgen.generative.rollout import FlowSampler
      >>> from rlgen.algorithms.diffusion_dpo import DiffusionDPOConfig
      >>> model = MLPDenoiser(2, hidden=16, depth=1, rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
      >>> trainer = DiffusionDPOTrainer(model, opt, FlowSampler(), DiffusionDPOConfig(beta=5.0))
      >>> batch = {"chosen": jnp.ones((4, 2)), "rejected": -jnp.ones((4, 2))}
      >>> round(float(trainer.train_step(batch)["loss"]), 4)  # policy == reference
      0.6931
    """

    config_type = DiffusionDPOConfig
    factory = staticmethod(diffusion_dpo)
    static_batch_keys = ()
    #: Samples drawn per condition online: one pair.
    pair = 2

    @property
    def reduction(self) -> str:
        return "mean"  # sampling only; Diffusion-DPO has no log-probs

    def _group(self) -> int:
        return self.pair

    def experience(self, samples, batch, scores, group):
        pairs = samples.reshape(-1, 2, *samples.shape[1:])
        first_wins = (scores[0::2] >= scores[1::2]).reshape((-1,) + (1,) * len(self.data_shape))
        out = {
            "chosen": jnp.where(first_wins, pairs[:, 0], pairs[:, 1]),
            "rejected": jnp.where(first_wins, pairs[:, 1], pairs[:, 0]),
        }
        if "labels" in batch:
            out["labels"] = batch["labels"][0::2]
        return out
