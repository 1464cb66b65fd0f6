"""`DenoisingPolicy`: a denoiser and its stochastic sampler as a policy over trajectories,
so that the language-model RL trainers (`rlgen.trainers.GRPOTrainer`,
`REINFORCETrainer`) train diffusion and flow models unchanged.

The observation of a row is its class label (an int; the model's null class, or any
label of an unconditional model, means unconditional), the action is the whole sampled
trajectory ``[K + 1, ...]`` (initial noise first, the sample last), and
``log_prob(trajectory)`` is ``[B, K]``: each step's Gaussian log-probability under the
sampler's step (`rlgen.generative.rollout`), one "token" per denoising step. GRPO with
this policy and per-sample rewards is DDPO / Flow-GRPO with a per-step clipped ratio
(Black et al. 2023, arXiv 2305.13301; Liu et al. 2025, arXiv 2505.05470); the dedicated
`rlgen.algorithms.ddpo` adds what GRPO's kernel does not have (the closed-form KL to the
reference's step means, step subsets and windows, GRPO-Guard).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlgen import _checks, ops
from rlgen.generative import rollout


def _gaussian_entropy(std, reduction: str) -> jax.Array:
    """Per-example entropy of ``N(mean, std^2)`` over the dimensions; ``std = 0`` counts 0."""
    per_dim = jnp.where(std > 0, 0.5 * jnp.log(2 * np.pi * np.e * jnp.square(std)), 0.0)
    flat = per_dim.reshape(per_dim.shape[0], -1)
    return jnp.sum(flat, axis=1) if reduction == "sum" else jnp.mean(flat, axis=1)


class TrajectoryGaussian:
    """The distribution of a sampler's trajectories given the labels: one Gaussian per step.

    ``log_prob(trajectory [B, K + 1, ...]) -> [B, K]`` (one batched model call over the
    ``B K`` states) and ``entropy() -> [B, K]``, the steps' Gaussian entropies (they
    depend on the step sizes only, not on the model: `std` is fixed by the sampler), for
    the trajectory last given to `log_prob` (or passed as ``entropy(trajectory)``).
    Built by `DenoisingPolicy`.
    """

    def __init__(self, step_fn, labels, reduction: str):
        self.step_fn, self.labels, self.reduction = step_fn, labels, reduction
        self._trajectory = None

    def _flat(self, trajectory):
        trajectory = _checks.float_array(trajectory, "trajectory", min_rank=3)
        K = len(self.step_fn.times[0])
        if trajectory.shape[1] != K + 1:
            raise ValueError(
                f"`trajectory` must be [B, K + 1, ...] = [B, {K + 1}, ...] (the sampler's "
                f"{K} steps), got shape {trajectory.shape}"
            )
        B = trajectory.shape[0]
        flat = lambda a: a.reshape((B * K, *a.shape[2:]))  # noqa: E731
        t, t_next = (jnp.broadcast_to(jnp.asarray(a), (B, K)).reshape(-1)
                     for a in self.step_fn.times)
        return flat(trajectory[:, :-1]), flat(trajectory[:, 1:]), t, t_next, (B, K)

    def log_prob(self, trajectory) -> jax.Array:
        """``[B, K]`` log-probabilities of each step of ``trajectory [B, K + 1, ...]``."""
        self._trajectory = trajectory
        x, x_next, t, t_next, (B, K) = self._flat(trajectory)
        labels = None if self.labels is None else jnp.repeat(self.labels, K)
        mean, std = self.step_fn(x, t, t_next, labels)
        lp = ops.gaussian_step_log_prob(x_next, mean, std, reduction=self.reduction)
        return lp.reshape(B, K)

    def entropy(self, trajectory=None) -> jax.Array:
        """``[B, K]`` entropies of the steps' Gaussians (``std = 0`` dimensions count 0)."""
        trajectory = self._trajectory if trajectory is None else trajectory
        if trajectory is None:
            raise ValueError("entropy() needs the trajectory: call log_prob(trajectory) first")
        x, _, t, t_next, (B, K) = self._flat(trajectory)
        _, std = self.step_fn.sampler.step(jnp.zeros_like(x), x, t, t_next)
        return _gaussian_entropy(std, self.reduction).reshape(B, K)


class _StepFn:
    """``(x, t, t_next, labels) -> (mean, std)`` of a denoiser under a sampler (hashable)."""

    def __init__(self, denoiser, sampler):
        self.denoiser, self.sampler = denoiser, sampler
        self.times = sampler.times()

    def __call__(self, x, t, t_next, labels):
        out = self.sampler.output(lambda p, x, time, lab: self.denoiser(x, time, lab), None, x,
                                  t, labels)
        return self.sampler.step(out, x, t, t_next)


class DenoisingPolicy(nnx.Module):
    """A denoiser with its stochastic sampler as a policy over trajectories (module doc).

    Args:
      denoiser: ``denoiser(x [B, ...], t [B] in [0, 1], labels [B] or None) -> [B, ...]``
        (`rlgen.models.MLPDenoiser`); its ``num_classes`` (0: unconditional) decides how
        labels are read.
      sampler: a `rlgen.generative.rollout.DiffusionSampler` or `FlowSampler` (every step
        stochastic).
      data_shape: one sample's shape (None: ``(denoiser.dim,)``).
      reduction: the log-probability's reduction over dimensions,
        `rlgen.ops.GAUSSIAN_REDUCTIONS` (default ``"mean"``, DDPO's and Flow-GRPO's).

    ``policy(labels [B])`` is the `TrajectoryGaussian` of those rows;
    ``policy.sample(labels, key)`` draws trajectories ``[B, K + 1, ...]`` (the sample is
    ``trajectory[:, -1]``), as the sampling trainers call it.

    Example:
      >>> from rlgen.models import MLPDenoiser
      >>> from rlgen.generative.rollout import FlowSampler
      >>> policy = DenoisingPolicy(MLPDenoiser(2, hidden=8, depth=1, rngs=nnx.Rngs(0)),
      ...                          FlowSampler(num_steps=3))
      >>> labels = jnp.zeros(4, jnp.int32)
      >>> trajectory = policy.sample(labels, jax.random.key(0))
      >>> trajectory.shape, policy(labels).log_prob(trajectory).shape
      ((4, 4, 2), (4, 3))
    """

    def __init__(self, denoiser, sampler, *, data_shape=None, reduction: str = "mean"):
        rollout.check_sampler(sampler)
        _checks.check_choice(reduction, ops.GAUSSIAN_REDUCTIONS, "reduction")
        if data_shape is None:
            dim = getattr(denoiser, "dim", None)
            if dim is None:
                raise ValueError(
                    f"pass `data_shape`: {type(denoiser).__name__} has no `dim` attribute"
                )
            data_shape = (dim,)
        self.denoiser = denoiser
        self.sampler = sampler
        self.data_shape = tuple(int(d) for d in data_shape)
        self.reduction = reduction
        self.num_classes = int(getattr(denoiser, "num_classes", 0))

    def _labels(self, observations):
        labels = _checks.int_array(observations, "observations", rank=1,
                                   what="([B] class labels)")
        return None if self.num_classes == 0 else labels

    def __call__(self, observations) -> TrajectoryGaussian:
        labels = self._labels(observations)
        return TrajectoryGaussian(_StepFn(self.denoiser, self.sampler), labels, self.reduction)

    def sample(self, observations, key) -> jax.Array:
        """Trajectories ``[B, K + 1, ...]`` of the rows' labels, drawn with ``key`` (one
        compiled program per batch shape)."""
        observations = _checks.int_array(observations, "observations", rank=1,
                                         what="([B] class labels)")
        graphdef, state = nnx.split(self)
        return _sample_program(graphdef, state, observations, key)

    def _sample_traced(self, observations, key):
        labels = self._labels(observations)
        apply_fn = lambda p, x, t, lab: self.denoiser(x, t, lab)  # noqa: E731
        _, batch = rollout.rollout(
            apply_fn, None, self.sampler, key, (observations.shape[0], *self.data_shape),
            reduction=self.reduction, labels=labels,
        )
        return batch["trajectory"]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sample_program(graphdef, state, observations, key):
    return nnx.merge(graphdef, state)._sample_traced(observations, key)
