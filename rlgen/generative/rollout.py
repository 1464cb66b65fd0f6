"""Samplers as policies: the stochastic steps that RL fine-tunes, and their trajectories.

A diffusion or flow sampler with noise in its steps is a policy over ``K`` steps: state
``x_k`` at time ``t_k``, action ``x_{k+1} ~ N(mean_k, std_k^2 I)`` where ``mean_k`` comes
from the model's output at ``(x_k, t_k)`` (DDPO, Black et al. 2023, arXiv 2305.13301;
Flow-GRPO, Liu et al. 2025, arXiv 2505.05470). Two samplers follow one interface:

* `DiffusionSampler`: DDIM with stochasticity ``eta`` over `diffusion.sampling_timesteps`
  (times are integer timesteps, ``T - 1`` down to ``-1``, the data); ``eta = 1`` is
  DDPM's posterior variance, DDPO's policy.
* `FlowSampler`: the flow's SDE with the ODE's marginals (`flow.sde_step_distribution`:
  Flow-GRPO's ``g_t = a sqrt((1 - t) / t)`` or DanceGRPO's constant noise) on
  `flow.time_grid` (times ``0`` (noise) to ``1`` (data)).

Each sampler gives ``times()`` (the ``K`` steps' ``(t, t_next)``), ``output`` (the model's
classifier-free-guided output, the same in sampling and in training), ``step`` (the step's
Gaussian ``(mean, std)``; a deterministic step when ``stochastic`` is 0: DDIM's ``eta =
0``, the flow's Euler ODE step) and the forward process the training losses need:
``training_time``, ``noised`` and ``target`` (where a model's output should land) and
``to_x0``. A model is called as ``apply_fn(params, x [B, ...], time [B] in [0, 1], labels
[B] or None) -> output [B, ...]`` (``rlgen.models.MLPDenoiser`` behind ``nnx.merge``).

`rollout` samples a batch and records what the RL algorithms train on: the trajectory
``[B, K + 1, ...]``, which steps were stochastic (a window of SDE steps inside an ODE
trajectory is Flow-GRPO-Fast's and MixGRPO's ``stochastic`` mask) and each step's
log-probability with an explicit reduction over dimensions (`rlgen.ops.GAUSSIAN_REDUCTIONS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks, ops
from rlgen.generative import diffusion, flow

#: The batch keys `rollout` writes (all lead with the batch axis ``B``).
ROLLOUT_KEYS = ("trajectory", "stochastic", "log_probs", "labels")


def _guided(apply_fn, params, x, time, labels, scale):
    if labels is None:
        return apply_fn(params, x, time, None)
    cond = apply_fn(params, x, time, labels)
    if _checks.concrete_value(scale) == 1.0:
        return cond
    return diffusion.guided_output(cond, apply_fn(params, x, time, None), scale)


def _per_example(t, x) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))


def _stochastic_scale(stochastic, x) -> jax.Array:
    """1 (stochastic step) or 0 (deterministic) per example ``[B]``, float32."""
    return jnp.broadcast_to(jnp.asarray(stochastic, jnp.float32), (x.shape[0],))


class _Sampler:
    """The interface shared by `DiffusionSampler` and `FlowSampler` (module doc)."""

    num_steps: int
    guidance_scale: float

    def times(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def model_time(self, t) -> jax.Array:
        raise NotImplementedError

    def output(self, apply_fn: Callable, params, x, t, labels=None) -> jax.Array:
        """The model's output at ``(x [B, ...], t)`` (sampler time: scalar or ``[B]``),
        guided by ``guidance_scale`` when ``labels`` are given (`diffusion.guided_output`:
        ``uncond + w (cond - uncond)``; ``w = 1``: one conditional call)."""
        time = self.model_time(_per_example(t, x))
        out = _guided(apply_fn, params, x, time, labels, self.guidance_scale)
        _checks.check_shape(jnp.asarray(out), x.shape, "apply_fn(params, x, t, labels)", "x")
        return out

    def policy_step(self, apply_fn, params, x, t, t_next, labels=None, stochastic=1.0):
        """``step(output(...), x, t, t_next, stochastic)``: the policy's Gaussian step."""
        out = self.output(apply_fn, params, x, t, labels)
        return self.step(out, x, t, t_next, stochastic)


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionSampler(_Sampler):
    """DDIM with stochasticity ``eta`` as a policy (DDPO, Black et al. 2023, arXiv 2305.13301).

    ``num_steps`` steps over `diffusion.sampling_timesteps` (times are the integer
    timesteps as float32; ``-1`` is the data); each step is
    `diffusion.ddim_step_distribution` with ``eta`` (``eta = 1``: DDPM's posterior
    variance; a deterministic step uses ``eta = 0``). The model sees ``t / T``.

    Example:
      >>> s = DiffusionSampler(diffusion.noise_schedule("cosine", 100), prediction="v",
      ...                      num_steps=4)
      >>> s.times()
      (array([99., 66., 33.,  0.], dtype=float32), array([66., 33.,  0., -1.], dtype=float32))
    """

    schedule: diffusion.NoiseSchedule
    prediction: str = "epsilon"
    eta: float = 1.0
    num_steps: int = 50
    guidance_scale: float = 1.0
    clip_x0: float | None = None

    def __post_init__(self):
        if not isinstance(self.schedule, diffusion.NoiseSchedule):
            raise TypeError(
                f"`schedule` must be a diffusion.NoiseSchedule, got {type(self.schedule).__name__}"
            )
        _checks.check_choice(self.prediction, diffusion.PREDICTIONS, "prediction")
        _checks.check_range(self.eta, "eta", 0.0)
        _checks.check_positive_int(self.num_steps, "num_steps")
        _checks.check_range(self.guidance_scale, "guidance_scale", 0.0)
        if self.clip_x0 is not None:
            _checks.check_range(self.clip_x0, "clip_x0", 0.0, low_open=True)

    def times(self):
        """``(t, t_next)`` ``[K]`` float32 host arrays: the timesteps, ``T - 1`` to ``-1``."""
        t, t_prev = diffusion.sampling_timesteps(self.schedule.num_timesteps, self.num_steps)
        return t.astype(np.float32), t_prev.astype(np.float32)

    def model_time(self, t):
        return jnp.asarray(t, jnp.float32) / self.schedule.num_timesteps

    def step(self, output, x, t, t_next, stochastic=1.0):
        """The DDIM step's ``(mean, std)`` (`ddim_step_distribution`): with ``eta`` where
        ``stochastic`` is 1, with ``eta = 0`` (deterministic) where it is 0."""

        def ddim(eta):
            return diffusion.ddim_step_distribution(
                output,
                x,
                _per_example(t, x).astype(jnp.int32),
                self.schedule,
                t_prev=_per_example(t_next, x).astype(jnp.int32),
                eta=eta,
                prediction=self.prediction,
                clip_x0=self.clip_x0,
            )

        return _select(stochastic, x, ddim(self.eta), lambda: ddim(0.0))

    def training_time(self, key, batch_size: int) -> jax.Array:
        """Uniform integer timesteps in ``[0, T)`` as float32 ``[B]``."""
        T = self.schedule.num_timesteps
        return jax.random.randint(key, (batch_size,), 0, T).astype(jnp.float32)

    def noised(self, x_data, noise, t) -> jax.Array:
        """``x_t = sqrt(abar_t) x_data + sqrt(1 - abar_t) noise`` (`diffusion.q_sample`)."""
        return diffusion.q_sample(
            x_data, _per_example(t, x_data).astype(jnp.int32), noise, self.schedule
        )

    def target(self, x_data, noise, t) -> jax.Array:
        """The output a perfect model gives at ``noised(x_data, noise, t)``."""
        return diffusion.prediction_target(
            x_data,
            noise,
            _per_example(t, x_data).astype(jnp.int32),
            self.schedule,
            self.prediction,
        )

    def to_x0(self, output, x, t) -> jax.Array:
        """The clean-data estimate from the model's output (`diffusion.to_x0`)."""
        return diffusion.to_x0(
            output, x, _per_example(t, x).astype(jnp.int32), self.schedule, self.prediction
        )


def _select(stochastic, x, noisy, deterministic: Callable):
    """``noisy`` ``(mean, std)`` where ``stochastic`` (scalar or ``[B]``) is 1, the
    ``deterministic()`` step's where it is 0 (not computed when ``stochastic`` is a
    concrete 1)."""
    if _checks.concrete_value(stochastic) == 1.0:
        return noisy
    on = _stochastic_scale(stochastic, x).reshape((x.shape[0],) + (1,) * (x.ndim - 1)) > 0.5
    mean0, std0 = deterministic()
    return jnp.where(on, noisy[0], mean0), jnp.where(on, noisy[1], std0)


@dataclasses.dataclass(frozen=True, eq=False)
class FlowSampler(_Sampler):
    """The flow's SDE with the ODE's marginals as a policy (Flow-GRPO, Liu et al. 2025,
    arXiv 2505.05470; DanceGRPO's constant noise, Xue et al. 2025, arXiv 2505.07818).

    ``num_steps`` Euler-Maruyama steps on `flow.time_grid` (times ``0`` = noise to ``1`` =
    data), each `flow.sde_step_distribution` with ``noise`` (`flow.SDE_NOISES`) and
    ``noise_level`` (Flow-GRPO's ``a``, default 0.7); a deterministic step is the ODE's
    Euler step. The model outputs velocities and sees ``t`` itself.

    Example:
      >>> t, t_next = FlowSampler(num_steps=4).times()
      >>> t.tolist(), t_next.tolist()
      ([0.0, 0.25, 0.5, 0.75], [0.25, 0.5, 0.75, 1.0])
    """

    noise: str = "flow-grpo"
    noise_level: float = 0.7
    num_steps: int = 10
    guidance_scale: float = 1.0
    sigma_min: float = 0.0

    def __post_init__(self):
        _checks.check_choice(self.noise, flow.SDE_NOISES, "noise")
        _checks.check_range(self.noise_level, "noise_level", 0.0)
        _checks.check_positive_int(self.num_steps, "num_steps")
        _checks.check_range(self.guidance_scale, "guidance_scale", 0.0)
        _checks.check_range(self.sigma_min, "sigma_min", 0.0, 1.0, high_open=True)

    def times(self):
        """``(t, t_next)`` ``[K]`` float32 host arrays on the uniform grid ``0 .. 1``."""
        grid = np.linspace(0.0, 1.0, self.num_steps + 1, dtype=np.float32)
        return grid[:-1], grid[1:]

    def model_time(self, t):
        return jnp.asarray(t, jnp.float32)

    def step(self, output, x, t, t_next, stochastic=1.0):
        """The SDE step's ``(mean, std)`` (`flow.sde_step_distribution`) where
        ``stochastic`` is 1, the ODE's Euler step (std 0) where it is 0."""

        def sde(level):
            return flow.sde_step_distribution(
                output,
                x,
                _per_example(t, x),
                _per_example(t_next, x),
                noise=self.noise,
                noise_level=level,
                sigma_min=self.sigma_min,
            )

        return _select(stochastic, x, sde(self.noise_level), lambda: sde(0.0))

    def training_time(self, key, batch_size: int) -> jax.Array:
        """Uniform times in ``[0, 1)`` ``[B]``."""
        return jax.random.uniform(key, (batch_size,), jnp.float32)

    def noised(self, x_data, noise, t) -> jax.Array:
        """``x_t = (1 - (1 - s) t) noise + t x_data`` (`flow.interpolate`)."""
        return flow.interpolate(noise, x_data, _per_example(t, x_data), self.sigma_min)

    def target(self, x_data, noise, t) -> jax.Array:
        """The conditional velocity ``x_data - (1 - s) noise`` (`flow.target_velocity`)."""
        del t
        return flow.target_velocity(noise, x_data, self.sigma_min)

    def to_x0(self, output, x, t) -> jax.Array:
        """The data estimate ``x + (1 - t) v`` (one Euler step to ``t = 1``)."""
        t = _per_example(t, x).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return x + (1.0 - t) * output


#: The samplers `rollout` and the diffusion RL algorithms accept.
Sampler = DiffusionSampler | FlowSampler


def check_sampler(sampler: Any, name: str = "sampler") -> None:
    """TypeError unless ``sampler`` is a `DiffusionSampler` or a `FlowSampler`."""
    if not isinstance(sampler, (DiffusionSampler, FlowSampler)):
        raise TypeError(
            f"`{name}` must be a rlgen.generative.rollout.DiffusionSampler or FlowSampler, got "
            f"{type(sampler).__name__}"
        )


def stochastic_window(num_steps: int, start, size: int) -> jax.Array:
    """``[K]`` float32: 1 on the ``size`` steps ``start .. start + size - 1``, else 0.

    The SDE window of Flow-GRPO-Fast and MixGRPO (Li et al. 2025, arXiv 2507.21802): a
    trajectory that is the ODE's except for a few stochastic steps, the only ones trained.
    ``start`` may be traced (a sliding window: no recompilation); a concrete ``start``
    outside ``[0, K - size]`` is a ValueError.

    Example:
      >>> stochastic_window(5, 1, 2)
      Array([0., 1., 1., 0., 0.], dtype=float32)
    """
    K = _checks.check_positive_int(num_steps, "num_steps")
    size = _checks.check_positive_int(size, "size")
    if size > K:
        raise ValueError(f"`size` must be <= num_steps = {K}, got {size}")
    concrete = _checks.concrete_value(start)
    if concrete is not None and not (0 <= int(concrete) <= K - size):
        raise ValueError(
            f"`start` must be in [0, {K - size}] (a window of {size} of the {K} steps), "
            f"got {concrete}"
        )
    k = jnp.arange(K)
    start = jnp.asarray(start, jnp.int32)
    return ((k >= start) & (k < start + size)).astype(jnp.float32)


def rollout(
    apply_fn: Callable,
    params,
    sampler: Sampler,
    key,
    shape,
    *,
    reduction: str,
    labels=None,
    stochastic=None,
    noise=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Samples ``B`` trajectories of ``sampler`` as a `jax.lax.scan` over its ``K`` steps.

    Step ``k`` draws ``x_{k+1} ~ N(mean_k, std_k^2 I)`` from ``sampler.policy_step`` at
    ``(x_k, t_k)`` and records its log-probability `rlgen.ops.gaussian_step_log_prob` with
    ``reduction`` (``"mean"``: DDPO's and Flow-GRPO's per-dimension mean; ``"sum"``: the
    step's density). A deterministic step (``stochastic[k] = 0``) has ``std = 0`` and
    log-probability 0.

    Args:
      apply_fn: ``apply_fn(params, x [B, ...], time [B], labels or None) -> [B, ...]``.
      params: the model's parameters (any pytree ``apply_fn`` takes).
      sampler: a `DiffusionSampler` or `FlowSampler`.
      key: PRNG key (``noise_key, step_key = split(key)``; step ``k`` uses
        ``split(step_key, K)[k]``).
      shape: ``(B, ...)`` the samples' shape (static).
      reduction: one of `rlgen.ops.GAUSSIAN_REDUCTIONS` (required: clip ranges and KL
        coefficients depend on it).
      labels: ``[B]`` int class labels (None: unconditional).
      stochastic: ``[K]`` 1/0 (or bool) which steps draw noise (default all;
        `stochastic_window` for an SDE window).
      noise: ``[B, ...]`` the initial state (None: ``N(0, I)`` from ``key``).

    Returns:
      ``(samples [B, ...], batch)`` with ``batch`` holding `ROLLOUT_KEYS`:
      ``trajectory [B, K + 1, ...]`` (the initial noise first, the samples last),
      ``stochastic [B, K]`` float32, ``log_probs [B, K]`` float32 and ``labels [B]`` when
      given.

    Example:
      >>> apply_fn = lambda params, x, t, labels: params * x
      >>> samples, batch = rollout(apply_fn, 0.0, FlowSampler(num_steps=3), jax.random.key(0),
      ...                          (4, 2), reduction="mean")
      >>> samples.shape, batch["trajectory"].shape, batch["log_probs"].shape
      ((4, 2), (4, 4, 2), (4, 3))
    """
    check_sampler(sampler)
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}")
    _checks.check_choice(reduction, ops.GAUSSIAN_REDUCTIONS, "reduction")
    shape = tuple(_checks.check_positive_int(d, f"shape[{i}]") for i, d in enumerate(shape))
    if len(shape) < 2:
        raise ValueError(f"`shape` must be (B, ...) with rank >= 2, got {shape}")
    B = shape[0]
    if labels is not None:
        labels = _checks.check_labels(labels, None, B)
    ts, t_next = sampler.times()
    K = len(ts)
    if stochastic is None:
        stochastic = jnp.ones((K,), jnp.float32)
    else:
        stochastic = _checks.float_array(
            jnp.asarray(stochastic, jnp.float32),
            "stochastic",
            shape=(K,),
            like=f"the sampler's {K} steps",
        )
    noise_key, step_key = jax.random.split(key)
    if noise is None:
        x = jax.random.normal(noise_key, shape, jnp.float32)
    else:
        x = _checks.float_array(noise, "noise", shape=shape, like="shape")

    def body(x, inputs):
        t, s, on, k = inputs
        mean, std = sampler.policy_step(apply_fn, params, x, t, s, labels, on)
        x_next = mean + std * jax.random.normal(k, mean.shape, mean.dtype)
        log_prob = ops.gaussian_step_log_prob(x_next, mean, std, reduction=reduction)
        return x_next, (x_next, log_prob)

    inputs = (jnp.asarray(ts), jnp.asarray(t_next), stochastic, jax.random.split(step_key, K))
    samples, (xs, log_probs) = jax.lax.scan(body, x, inputs)
    batch = {
        "trajectory": jnp.moveaxis(jnp.concatenate([x[None], xs]), 0, 1),
        "stochastic": jnp.broadcast_to(stochastic, (B, K)),
        "log_probs": log_probs.T,
    }
    if labels is not None:
        batch["labels"] = labels
    return samples, batch
