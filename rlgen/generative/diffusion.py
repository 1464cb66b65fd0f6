"""Denoising diffusion: noise schedules, the three parameterisations, the training loss and
the DDPM and DDIM samplers, each sampler step a Gaussian transition.

The forward process (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv
2006.11239) noises data ``x_0`` over ``T`` steps with variances ``beta_t``; with
``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s <= t} alpha_s`` it has the closed form

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   eps ~ N(0, I)          (`q_sample`)

Timesteps are 0-based array indices ``t = 0 .. T-1`` (index ``t`` is Ho et al.'s step
``t + 1``); ``t = -1`` stands for the clean data (``abar_{-1} = 1``). A model sees the
time as the float ``t / T`` in ``[0, 1)``: ``model(x_t [B, ...], t / T [B], labels [B] or
None) -> [B, ...]``, and predicts one of `PREDICTIONS`: the noise ``eps``, the clean data
``x_0`` or the velocity ``v = sqrt(abar) eps - sqrt(1 - abar) x_0`` (Salimans and Ho
2022); `to_x0`, `to_epsilon` and `to_v` convert any of them given ``x_t``.

Sampling runs the reverse process from ``x_{T-1} ~ N(0, I)``. Every sampler step is a
Gaussian transition ``p(x_s | x_t) = N(mean, std^2 I)`` from a timestep ``t`` to an
earlier one ``s`` (``s = t - 1`` for the full DDPM chain, a stride for DDIM), written as a
function returning ``(mean, std)`` (`ddpm_step_distribution`, `ddim_step_distribution`)
and a draw from it (`draw_step`), with its log-density (`step_log_prob`): the policy of
RL fine-tuning of diffusion models (DDPO, Black et al. 2023, arXiv 2305.13301; Flow-GRPO,
Liu et al. 2025, arXiv 2505.05470) is exactly this transition. `sample_ddpm` and
`sample_ddim` run the chain with `jax.lax.scan` and can return the whole trajectory
(`Trajectory`: every ``x_t``, each step's mean, std and the log-probability of the step
taken). Classifier-free guidance (Ho and Salimans 2022) combines a model's conditional
and unconditional outputs (`guided_output`, `classifier_free_guidance`), so the samplers
take any ``denoise_fn(x, t, labels)``.

Everything here is a pure function (no `jax.jit` inside): jit it, `vmap` it over seeds,
`lax.scan` its steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks, ops
from rlgen._checks import check_labels

__all__ = [
    "LOSS_WEIGHTINGS",
    "METRICS",
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "DiffusionConfig",
    "NoiseSchedule",
    "Trajectory",
    "check_labels",
    "classifier_free_guidance",
    "ddim_step_distribution",
    "ddpm_step_distribution",
    "diffusion_loss",
    "draw_step",
    "guided_output",
    "loss_weight",
    "noise_schedule",
    "prediction_target",
    "q_sample",
    "sample_ddim",
    "sample_ddpm",
    "sampling_timesteps",
    "snr",
    "step_log_prob",
    "to_epsilon",
    "to_v",
    "to_x0",
]

#: Noise schedules of `noise_schedule`.
SCHEDULES = ("linear", "cosine")
#: What a denoising model predicts: the noise, the clean data, or the velocity.
PREDICTIONS = ("epsilon", "x0", "v")
#: Per-timestep weightings of the denoising loss (`loss_weight`).
LOSS_WEIGHTINGS = ("none", "min_snr")
#: The samplers of `rlgen.trainers.DiffusionTrainer.sample`.
SAMPLERS = ("ddpm", "ddim")
#: The metrics `diffusion_loss` returns besides the loss.
METRICS = ("mse", "mean_weight")

#: The cosine schedule's offset ``s`` and its clipping of ``beta_t`` (Nichol & Dhariwal 2021).
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


# ----------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------


class NoiseSchedule(NamedTuple):
    """A discrete noise schedule: float32 arrays of shape ``[T]`` (a pytree; jit it freely).

    Attributes:
      betas: ``beta_t``, the variance added at step ``t``.
      alphas: ``alpha_t = 1 - beta_t``.
      alphas_cumprod: ``abar_t = prod_{s <= t} alpha_s``, the signal kept at step ``t``.
      alphas_cumprod_prev: ``abar_{t-1}`` (1 at ``t = 0``).
      log_alphas_cumprod: ``log abar_t``, computed in float64 before rounding; the
        samplers and conversions read everything from it (``1 - abar_t`` as
        ``-expm1(log abar_t)``, ``abar_t / abar_s`` as ``exp(log abar_t - log abar_s)``),
        which keeps the small quantities near ``t = 0`` accurate in float32.

    Example:
      >>> s = noise_schedule("linear", 100)
      >>> s.num_timesteps, float(s.alphas_cumprod_prev[0]), s.betas.dtype
      (100, 1.0, dtype('float32'))
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    log_alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        """``T``, the number of timesteps (static: the arrays' length)."""
        return self.betas.shape[-1]


def noise_schedule(name: str, num_timesteps: int) -> NoiseSchedule:
    """The ``"linear"`` or ``"cosine"`` noise schedule of ``num_timesteps`` steps.

    * ``"linear"`` (Ho et al. 2020, arXiv 2006.11239): ``beta_t`` evenly spaced from
      ``1e-4 * 1000 / T`` to ``0.02 * 1000 / T`` (Ho et al.'s ``[1e-4, 0.02]`` at
      ``T = 1000``, scaled by ``1000 / T`` as Nichol and Dhariwal do, so any ``T`` ends
      near pure noise; clipped at 0.999 for ``T < 21``).
    * ``"cosine"`` (Nichol and Dhariwal 2021, "Improved Denoising Diffusion Probabilistic
      Models", arXiv 2102.09672): ``abar_t = f(t + 1) / f(0)`` with
      ``f(u) = cos(((u / T + s) / (1 + s)) pi / 2)^2``, ``s = 0.008``, realised through
      ``beta_t = min(1 - abar_t / abar_{t-1}, 0.999)`` (the clipping changes only the
      last steps, where ``abar`` is near 0).

    Computed in float64 on the host and stored as float32.

    Args:
      name: one of `SCHEDULES`.
      num_timesteps: ``T >= 2``, a Python int.

    Returns:
      A `NoiseSchedule` of ``[T]`` arrays.

    Example:
      >>> s = noise_schedule("cosine", 1000)
      >>> s.alphas_cumprod.shape, round(float(s.alphas_cumprod[0]), 5)
      ((1000,), 0.99996)
      >>> bool(s.alphas_cumprod[-1] < 1e-6)
      True
    """
    _checks.check_choice(name, SCHEDULES, "schedule")
    T = _checks.check_positive_int(num_timesteps, "num_timesteps", low=2)
    if name == "linear":
        scale = 1000.0 / T
        betas = np.minimum(np.linspace(scale * 1e-4, scale * 0.02, T), MAX_BETA)
    else:
        u = np.arange(T + 1, dtype=np.float64)
        f = np.cos((u / T + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
        betas = np.minimum(1.0 - f[1:] / f[:-1], MAX_BETA)
    log_abar = np.cumsum(np.log1p(-betas))
    abar = np.exp(log_abar)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return NoiseSchedule(
        betas=f32(betas),
        alphas=f32(1.0 - betas),
        alphas_cumprod=f32(abar),
        alphas_cumprod_prev=f32(np.concatenate([[1.0], abar[:-1]])),
        log_alphas_cumprod=f32(log_abar),
    )


def _log_abar(schedule: NoiseSchedule, t) -> jax.Array:
    """``log abar_t`` at integer timesteps ``t`` (any shape; ``t = -1``: 0, the clean data)."""
    t = jnp.asarray(t)
    return jnp.where(t >= 0, schedule.log_alphas_cumprod[jnp.maximum(t, 0)], 0.0)


def _expand(c, x) -> jax.Array:
    """A per-example coefficient ``c`` (``[]`` or ``[B]``) broadcast against ``x [B, ...]``."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (jnp.ndim(x) - c.ndim))


def _signal_noise(schedule: NoiseSchedule, t, x) -> tuple[jax.Array, jax.Array]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` at ``t``, shaped to broadcast against ``x``."""
    log_abar = _expand(_log_abar(schedule, t), x)
    return jnp.exp(0.5 * log_abar), jnp.sqrt(-jnp.expm1(log_abar))


def _check_timesteps(t, x, name: str = "t") -> jax.Array:
    """Integer timesteps: a scalar or one per example of ``x [B, ...]``."""
    t = _checks.int_array(t, name, rank=(0, 1))
    if t.ndim == 1:
        _checks.check_shape(t, x.shape[:1], name, "x[:1], one timestep per example")
    return t


def snr(t, schedule: NoiseSchedule) -> jax.Array:
    """The signal-to-noise ratio ``abar_t / (1 - abar_t)`` at integer timesteps ``t``.

    Kingma et al. 2021 ("Variational Diffusion Models", arXiv 2107.00630) write the
    forward process through it; min-SNR weighting clips it (`loss_weight`).

    Example:
      >>> s = noise_schedule("linear", 1000)
      >>> float(snr(jnp.array(999), s)) < 1e-4 < 1e3 < float(snr(jnp.array(0), s))
      True
    """
    log_abar = _log_abar(schedule, _checks.int_array(t, "t"))
    return jnp.exp(log_abar) / -jnp.expm1(log_abar)


def q_sample(x0, t, noise, schedule: NoiseSchedule) -> jax.Array:
    """The forward process: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (Ho et al.
    2020, arXiv 2006.11239, eq. 4).

    Args:
      x0: ``[B, ...]`` clean data.
      t: integer timesteps, ``[B]`` or a scalar.
      noise: ``[B, ...]`` standard normal noise, the shape of ``x0``.
      schedule: a `NoiseSchedule`.

    Returns:
      ``[B, ...]`` noised data.

    Example:
      >>> s = noise_schedule("cosine", 100)
      >>> x = q_sample(jnp.ones((2, 1)), jnp.array([0, 99]), jnp.ones((2, 1)), s)
      >>> [round(v, 3) for v in x[:, 0].tolist()]  # t = 0: mostly signal; t = T - 1: noise
      [1.025, 1.0]
    """
    x0 = _checks.float_array(x0, "x0", min_rank=1)
    noise = _checks.float_array(noise, "noise", shape=x0.shape, like="x0")
    t = _check_timesteps(t, x0)
    a, sigma = _signal_noise(schedule, t, x0)
    return a * x0 + sigma * noise


# ----------------------------------------------------------------------------------------
# The three parameterisations
# ----------------------------------------------------------------------------------------


def _prediction_args(output, x_t, t, prediction):
    _checks.check_choice(prediction, PREDICTIONS, "prediction")
    x_t = _checks.float_array(x_t, "x_t", min_rank=1)
    output = _checks.float_array(output, "output", shape=x_t.shape, like="x_t")
    return output, x_t, _check_timesteps(t, x_t)


def to_x0(output, x_t, t, schedule: NoiseSchedule, prediction: str = "epsilon") -> jax.Array:
    """The clean-data estimate ``x0_hat`` from a model ``output`` of type ``prediction``.

    With ``a = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``:

        epsilon:  x0 = (x_t - sigma eps) / a
        x0:       x0 = output
        v:        x0 = a x_t - sigma v          (Salimans and Ho 2022, arXiv 2202.00512)

    Args:
      output: ``[B, ...]`` model output.
      x_t: ``[B, ...]`` the noised input.
      t: integer timesteps, ``[B]`` or a scalar.
      schedule: a `NoiseSchedule`.
      prediction: one of `PREDICTIONS`.

    Example:
      >>> s = noise_schedule("cosine", 10)
      >>> x0, eps, t = jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.array([5])
      >>> x_t = q_sample(x0, t, eps, s)
      >>> to_x0(prediction_target(x0, eps, t, s, "v"), x_t, t, s, "v").round(4)
      Array([[1., 1.]], dtype=float32)
    """
    output, x_t, t = _prediction_args(output, x_t, t, prediction)
    a, sigma = _signal_noise(schedule, t, x_t)
    if prediction == "epsilon":
        return (x_t - sigma * output) / a
    if prediction == "x0":
        return output
    return a * x_t - sigma * output


def to_epsilon(output, x_t, t, schedule: NoiseSchedule, prediction: str = "epsilon"):
    """The noise estimate ``eps_hat`` from a model ``output`` of type ``prediction``.

    With ``a = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``:

        epsilon:  eps = output
        x0:       eps = (x_t - a x0) / sigma
        v:        eps = sigma x_t + a v         (Salimans and Ho 2022, arXiv 2202.00512)

    Shapes and arguments as `to_x0`.

    Example:
      >>> s = noise_schedule("linear", 10)
      >>> x_t, t = jnp.array([[0.5]]), jnp.array([3])
      >>> to_epsilon(jnp.array([[0.2]]), x_t, t, s).round(4)
      Array([[0.2]], dtype=float32)
    """
    output, x_t, t = _prediction_args(output, x_t, t, prediction)
    a, sigma = _signal_noise(schedule, t, x_t)
    if prediction == "epsilon":
        return output
    if prediction == "x0":
        return (x_t - a * output) / sigma
    return sigma * x_t + a * output


def to_v(output, x_t, t, schedule: NoiseSchedule, prediction: str = "epsilon") -> jax.Array:
    """The velocity ``v = a eps - sigma x0`` (``a = sqrt(abar_t)``, ``sigma = sqrt(1 -
    abar_t)``; Salimans and Ho 2022, arXiv 2202.00512) from a model ``output`` of type
    ``prediction``, through `to_x0` and `to_epsilon`. Shapes and arguments as `to_x0`.

    Example:
      >>> s = noise_schedule("cosine", 10)
      >>> v = jnp.array([[0.3, -0.1]])
      >>> to_v(v, jnp.array([[1.0, 2.0]]), jnp.array([4]), s, "v").round(4)
      Array([[ 0.3, -0.1]], dtype=float32)
    """
    output, x_t, t = _prediction_args(output, x_t, t, prediction)
    if prediction == "v":
        return output
    a, sigma = _signal_noise(schedule, t, x_t)
    x0 = to_x0(output, x_t, t, schedule, prediction)
    eps = to_epsilon(output, x_t, t, schedule, prediction)
    return a * eps - sigma * x0


def prediction_target(x0, noise, t, schedule: NoiseSchedule, prediction: str = "epsilon"):
    """What a model of type ``prediction`` should output for ``x_t = q_sample(x0, t, noise)``.

    ``noise`` for ``"epsilon"`` (Ho et al. 2020), ``x0`` for ``"x0"``, and
    ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` for ``"v"`` (Salimans and Ho 2022,
    arXiv 2202.00512). Shapes as `q_sample`.

    Example:
      >>> s = noise_schedule("cosine", 10)
      >>> prediction_target(jnp.ones((1, 1)), jnp.zeros((1, 1)), jnp.array([9]), s, "v")
      Array([[-1.]], dtype=float32)
    """
    _checks.check_choice(prediction, PREDICTIONS, "prediction")
    x0 = _checks.float_array(x0, "x0", min_rank=1)
    noise = _checks.float_array(noise, "noise", shape=x0.shape, like="x0")
    t = _check_timesteps(t, x0)
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return x0
    a, sigma = _signal_noise(schedule, t, x0)
    return a * noise - sigma * x0


# ----------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------


def loss_weight(
    t,
    schedule: NoiseSchedule,
    prediction: str = "epsilon",
    weighting: str = "min_snr",
    gamma: float = 5.0,
) -> jax.Array:
    """The per-timestep weight of the denoising loss, for a model of type ``prediction``.

    ``"none"``: 1 (the simple loss of Ho et al. 2020 in the prediction's own space).
    ``"min_snr"`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", arXiv 2303.09556): the loss in every parameterisation is brought to
    ``min(SNR_t, gamma) ||x0 - x0_hat||^2``. Since ``||eps - eps_hat||^2 = SNR_t
    ||x0 - x0_hat||^2`` and ``||v - v_hat||^2 = (SNR_t + 1) ||x0 - x0_hat||^2``, the weight
    on each prediction's squared error is

        epsilon:  min(SNR_t, gamma) / SNR_t
        x0:       min(SNR_t, gamma)
        v:        min(SNR_t, gamma) / (SNR_t + 1)

    with ``SNR_t = abar_t / (1 - abar_t)`` (`snr`).

    Args:
      t: integer timesteps, any shape.
      schedule: a `NoiseSchedule`.
      prediction: one of `PREDICTIONS`.
      weighting: one of `LOSS_WEIGHTINGS`.
      gamma: the SNR clip ``gamma > 0`` (Hang et al. use 5).

    Returns:
      float32 weights, the shape of ``t``.

    Example:
      >>> s = noise_schedule("cosine", 1000)
      >>> loss_weight(jnp.array([0, 999]), s, "epsilon").round(4)
      Array([2.e-04, 1.e+00], dtype=float32)
    """
    _checks.check_choice(prediction, PREDICTIONS, "prediction")
    _checks.check_choice(weighting, LOSS_WEIGHTINGS, "loss_weighting")
    _checks.check_range(gamma, "min_snr_gamma", 0.0, low_open=True)
    t = _checks.int_array(t, "t")
    if weighting == "none":
        return jnp.ones(t.shape, jnp.float32)
    ratio = snr(t, schedule)
    clipped = jnp.minimum(ratio, gamma)
    if prediction == "epsilon":
        return jnp.minimum(1.0, gamma / ratio)
    if prediction == "x0":
        return clipped
    return clipped / (ratio + 1.0)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Settings of diffusion training and sampling (`diffusion_loss`, `DiffusionTrainer`).

    The defaults train the digits recipe (``rlgen digits diffusion``): the cosine schedule
    with 1000 steps, epsilon prediction with min-SNR-5 weighting, 10% label dropout for
    classifier-free guidance, an EMA of 0.999.

    Attributes:
      num_timesteps: ``T``, the steps of the forward process.
      schedule: the noise schedule, one of `SCHEDULES`.
      prediction: what the model predicts, one of `PREDICTIONS`.
      loss_weighting: the per-timestep loss weight, one of `LOSS_WEIGHTINGS`.
      min_snr_gamma: min-SNR's clip ``gamma`` (used by ``"min_snr"``).
      ema_decay: decay of the exponential moving average of the parameters kept inside
        the compiled step (`rlgen.algorithms.ema_update`); sampling uses the average.
      label_dropout: probability that a training example's class label is replaced by
        the null class, so one model learns the conditional and unconditional outputs
        that classifier-free guidance combines (Ho and Salimans 2022, arXiv 2207.12598).
      clip_x0: the data lie in ``[-clip_x0, clip_x0]``: the samplers clip their ``x0``
        estimates there and the trainer refuses training images outside it (None: data
        of any range, no clipping).
      max_grad_norm: global-norm gradient clipping (None: none).

    Example:
      >>> config = DiffusionConfig(prediction="v", num_timesteps=100)
      >>> config.schedule, config.schedule_arrays().num_timesteps
      ('cosine', 100)
      >>> DiffusionConfig(prediction="score")
      Traceback (most recent call last):
      ...
      ValueError: unknown `prediction` 'score'; expected one of 'epsilon', 'x0', 'v'
    """

    num_timesteps: int = 1000
    schedule: str = _checks.option("cosine", SCHEDULES)
    prediction: str = _checks.option("epsilon", PREDICTIONS)
    loss_weighting: str = _checks.option("min_snr", LOSS_WEIGHTINGS)
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    clip_x0: float | None = 1.0
    max_grad_norm: float | None = None

    def __post_init__(self):
        _checks.check_positive_int(self.num_timesteps, "num_timesteps", low=2)
        _checks.check_options(self)
        _checks.check_range(self.min_snr_gamma, "min_snr_gamma", 0.0, low_open=True)
        _checks.check_range(self.ema_decay, "ema_decay", 0.0, 1.0)
        _checks.check_range(self.label_dropout, "label_dropout", 0.0, 1.0)
        if self.clip_x0 is not None:
            _checks.check_range(self.clip_x0, "clip_x0", 0.0, low_open=True)
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)

    def schedule_arrays(self) -> NoiseSchedule:
        """This config's `NoiseSchedule` (``noise_schedule(schedule, num_timesteps)``)."""
        return noise_schedule(self.schedule, self.num_timesteps)


def diffusion_loss(
    model: Callable,
    batch,
    key,
    config: DiffusionConfig = DiffusionConfig(),
    schedule: NoiseSchedule | None = None,
    *,
    num_classes: int | None = None,
):
    """The weighted denoising loss (Ho et al. 2020, arXiv 2006.11239), with min-SNR
    weighting and label dropout for classifier-free guidance.

    For each example ``x_0``, draws a timestep ``t ~ U{0, .., T-1}`` and noise
    ``eps ~ N(0, I)``, forms ``x_t = q_sample(x_0, t, eps)`` and regresses the model's
    output on the target of ``config.prediction`` (`prediction_target`):

        loss = mean_b  w(t_b) * mean_d (model(x_t, t / T, y)_bd - target_bd)^2

    with ``w`` from `loss_weight` (``config.loss_weighting``). With labels ``y``, each is
    replaced by the null class ``num_classes`` with probability ``config.label_dropout``
    (Ho and Salimans 2022, arXiv 2207.12598).

    Args:
      model: ``model(x_t [B, ...], t [B] float in [0, 1), labels [B] int or None) ->
        [B, ...]`` (e.g. `rlgen.models.MLPDenoiser`).
      batch: ``{"images": [B, ...] float, "labels": optional [B] int}``.
      key: PRNG key (timesteps, noise, label dropout).
      config: a `DiffusionConfig`.
      schedule: its `NoiseSchedule` (None: built from ``config``).
      num_classes: the model's classes (None: ``model.num_classes``, else unknown); labels
        need it for the null class.

    Returns:
      ``(loss, metrics)`` with metrics `METRICS`: ``mse`` (the unweighted squared error
      of the prediction) and ``mean_weight`` (the batch's mean loss weight).

    Example:
      >>> model = lambda x, t, labels: jnp.zeros_like(x)  # predicts no noise
      >>> batch = {"images": jnp.zeros((8, 4))}
      >>> cfg = DiffusionConfig(num_timesteps=10, loss_weighting="none")
      >>> loss, m = diffusion_loss(model, batch, jax.random.key(0), cfg)
      >>> bool(0.5 < loss < 1.5), sorted(m)
      (True, ['mean_weight', 'mse'])
    """
    if not isinstance(config, DiffusionConfig):
        raise TypeError(f"`config` must be a DiffusionConfig, got {type(config).__name__}")
    schedule = config.schedule_arrays() if schedule is None else schedule
    if schedule.num_timesteps != config.num_timesteps:
        raise ValueError(
            f"`schedule` has {schedule.num_timesteps} timesteps but config.num_timesteps is "
            f"{config.num_timesteps}"
        )
    if not hasattr(batch, "keys") or "images" not in batch or set(batch) - {"images", "labels"}:
        got = sorted(batch) if hasattr(batch, "keys") else type(batch).__name__
        raise ValueError(
            f"the diffusion batch needs 'images' [B, ...] (optional 'labels' [B]); got {got}"
        )
    x0 = _checks.float_array(batch["images"], "images", min_rank=2, what="([B, ...])")
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    labels = check_labels(batch.get("labels"), num_classes, x0.shape[0])
    t_key, noise_key, drop_key = jax.random.split(key, 3)
    T = config.num_timesteps
    t = jax.random.randint(t_key, x0.shape[:1], 0, T)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = q_sample(x0, t, noise, schedule)
    if labels is not None and config.label_dropout > 0:
        if num_classes is None:
            raise ValueError(
                "label dropout replaces labels by the null class `num_classes`: pass "
                "num_classes (the model has no `num_classes` attribute)"
            )
        drop = jax.random.bernoulli(drop_key, config.label_dropout, labels.shape)
        labels = jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)
    output = model(x_t, t.astype(jnp.float32) / T, labels)
    output = _checks.float_array(output, "model output", shape=x0.shape, like="images")
    target = prediction_target(x0, noise, t, schedule, config.prediction)
    error = jnp.square(output.astype(jnp.float32) - target.astype(jnp.float32))
    per_example = jnp.mean(error.reshape(error.shape[0], -1), axis=1)
    weight = loss_weight(
        t, schedule, config.prediction, config.loss_weighting, config.min_snr_gamma
    )
    loss = jnp.mean(weight * per_example)
    metrics = {
        "mse": jax.lax.stop_gradient(jnp.mean(per_example)),
        "mean_weight": jnp.mean(weight),
    }
    return loss, metrics


# ----------------------------------------------------------------------------------------
# Sampler steps: Gaussian transitions
# ----------------------------------------------------------------------------------------


def _estimates(output, x_t, t, schedule, prediction, clip_x0):
    """``(x0_hat, eps_hat)``: ``x0_hat`` clipped to ``[-clip_x0, clip_x0]`` (None: not),
    and ``eps_hat`` the noise consistent with it and ``x_t``."""
    if clip_x0 is not None:
        _checks.check_range(clip_x0, "clip_x0", 0.0, low_open=True)
    x0 = to_x0(output, x_t, t, schedule, prediction)
    if clip_x0 is None:
        return x0, to_epsilon(output, x_t, t, schedule, prediction)
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
    return x0, to_epsilon(x0, x_t, t, schedule, "x0")


def _step_args(output, x_t, t, t_prev, prediction):
    output, x_t, t = _prediction_args(output, x_t, t, prediction)
    t_prev = t - 1 if t_prev is None else _check_timesteps(t_prev, x_t, "t_prev")
    return output, x_t, t, t_prev


def ddpm_step_distribution(
    output,
    x_t,
    t,
    schedule: NoiseSchedule,
    *,
    t_prev=None,
    prediction: str = "epsilon",
    clip_x0: float | None = None,
):
    """The DDPM ancestral step ``p(x_s | x_t) = N(mean, std^2 I)`` (Ho et al. 2020, arXiv
    2006.11239): the forward posterior ``q(x_s | x_t, x_0)`` at the model's ``x0_hat``.

    From ``t`` to ``s = t_prev < t`` (default ``t - 1``; a longer stride is the respaced
    chain of Nichol and Dhariwal 2021, arXiv 2102.09672), with ``abar_{-1} = 1`` and
    ``beta_ts = 1 - abar_t / abar_s``:

        mean = sqrt(abar_s) beta_ts / (1 - abar_t) x0_hat
               + sqrt(1 - beta_ts) (1 - abar_s) / (1 - abar_t) x_t
        std^2 = beta_ts (1 - abar_s) / (1 - abar_t)           (the posterior variance)

    At ``s = t - 1`` these are Ho et al.'s eq. 7; ``std`` is 0 on the last step
    (``s = -1``). ``x0_hat`` comes from the model's ``output`` (`to_x0`), clipped to
    ``[-clip_x0, clip_x0]`` when ``clip_x0`` is set.

    Args:
      output: ``[B, ...]`` model output of type ``prediction`` at ``(x_t, t)``.
      x_t: ``[B, ...]`` the current sample.
      t: integer timesteps, ``[B]`` or a scalar.
      schedule: a `NoiseSchedule`.
      t_prev: the target timesteps ``s < t`` (``-1``: the data), ``[B]`` or a scalar.
      prediction: one of `PREDICTIONS`.
      clip_x0: clip of the ``x0`` estimate (None: none).

    Returns:
      ``(mean, std)``, both ``[B, ...]`` (the shape of ``x_t``).

    Example:
      >>> s = noise_schedule("linear", 1000)
      >>> mean, std = ddpm_step_distribution(jnp.zeros((1, 2)), jnp.ones((1, 2)), 500, s)
      >>> mean.shape, std.shape, bool(0 < std[0, 0] < 1)
      ((1, 2), (1, 2), True)
    """
    output, x_t, t, t_prev = _step_args(output, x_t, t, t_prev, prediction)
    x0, _ = _estimates(output, x_t, t, schedule, prediction, clip_x0)
    log_t = _expand(_log_abar(schedule, t), x_t)
    log_s = _expand(_log_abar(schedule, t_prev), x_t)
    one_minus_t, one_minus_s = -jnp.expm1(log_t), -jnp.expm1(log_s)
    beta_ts = -jnp.expm1(log_t - log_s)
    mean = (
        jnp.exp(0.5 * log_s) * beta_ts / one_minus_t * x0
        + jnp.exp(0.5 * (log_t - log_s)) * one_minus_s / one_minus_t * x_t
    )
    std = jnp.sqrt(beta_ts * one_minus_s / one_minus_t)
    return mean, jnp.broadcast_to(std, x_t.shape)


def ddim_step_distribution(
    output,
    x_t,
    t,
    schedule: NoiseSchedule,
    *,
    t_prev=None,
    eta=0.0,
    prediction: str = "epsilon",
    clip_x0: float | None = None,
):
    """The DDIM step ``p(x_s | x_t) = N(mean, std^2 I)`` with stochasticity ``eta``
    (Song et al. 2021, "Denoising Diffusion Implicit Models", arXiv 2010.02502, eq. 12).

    From ``t`` to ``s = t_prev < t`` (default ``t - 1``), with ``abar_{-1} = 1``:

        std  = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)
        mean = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - std^2) eps_hat

    ``eta = 0`` is the deterministic DDIM (``std = 0``); ``eta = 1`` has the DDPM
    posterior variance, and then the whole step is `ddpm_step_distribution`'s.
    ``(x0_hat, eps_hat)`` come from the model's ``output`` (`to_x0`, `to_epsilon`); with
    ``clip_x0`` set, ``x0_hat`` is clipped to ``[-clip_x0, clip_x0]`` and ``eps_hat``
    recomputed from it and ``x_t`` (so the pair stays consistent).

    Args:
      output: ``[B, ...]`` model output of type ``prediction`` at ``(x_t, t)``.
      x_t: ``[B, ...]`` the current sample.
      t: integer timesteps, ``[B]`` or a scalar.
      schedule: a `NoiseSchedule`.
      t_prev: the target timesteps ``s < t`` (``-1``: the data), ``[B]`` or a scalar.
      eta: ``>= 0``, a scalar (may be traced).
      prediction: one of `PREDICTIONS`.
      clip_x0: clip of the ``x0`` estimate (None: none).

    Returns:
      ``(mean, std)``, both ``[B, ...]`` (the shape of ``x_t``).

    Example:
      >>> s = noise_schedule("cosine", 1000)
      >>> x0_hat = jnp.array([[0.5, -0.5]])  # an x0-prediction model's output
      >>> mean, std = ddim_step_distribution(x0_hat, jnp.ones((1, 2)), 10, s, t_prev=-1,
      ...                                    prediction="x0")
      >>> mean, std  # the last step lands on x0_hat
      (Array([[ 0.5, -0.5]], dtype=float32), Array([[0., 0.]], dtype=float32))
    """
    output, x_t, t, t_prev = _step_args(output, x_t, t, t_prev, prediction)
    _checks.check_range(eta, "eta", 0.0)
    x0, eps = _estimates(output, x_t, t, schedule, prediction, clip_x0)
    log_t = _expand(_log_abar(schedule, t), x_t)
    log_s = _expand(_log_abar(schedule, t_prev), x_t)
    one_minus_t, one_minus_s = -jnp.expm1(log_t), -jnp.expm1(log_s)
    var = jnp.square(eta) * one_minus_s / one_minus_t * -jnp.expm1(log_t - log_s)
    mean = jnp.exp(0.5 * log_s) * x0 + jnp.sqrt(jnp.maximum(one_minus_s - var, 0.0)) * eps
    return mean, jnp.broadcast_to(jnp.sqrt(var), x_t.shape)


def draw_step(key, mean, std) -> jax.Array:
    """A draw ``x_s = mean + std * z``, ``z ~ N(0, I)``, from a sampler step's Gaussian.

    Example:
      >>> draw_step(jax.random.key(0), jnp.ones((1, 2)), jnp.zeros((1, 2)))
      Array([[1., 1.]], dtype=float32)
    """
    mean = _checks.float_array(mean, "mean")
    std = _checks.float_array(std, "std", shape=mean.shape, like="mean")
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


def step_log_prob(x_prev, mean, std) -> jax.Array:
    """The log-density of a sampler step: ``sum_d log N(x_prev_d; mean_d, std_d^2)`` per
    example (the per-step log-probability of DDPO, Black et al. 2023, arXiv 2305.13301):
    `rlgen.ops.gaussian_step_log_prob` with ``reduction="sum"``.

    Dimensions with ``std = 0`` (a deterministic step: DDIM's ``eta = 0``, the last DDPM
    step) are a point mass and contribute 0.

    Args:
      x_prev, mean, std: ``[B, ...]``.

    Returns:
      ``[B]`` float32.

    Example:
      >>> step_log_prob(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2))).round(4)
      Array([-1.8379], dtype=float32)
    """
    mean = _checks.float_array(mean, "mean", min_rank=1, upcast=True)
    _checks.float_array(std, "std", shape=mean.shape, like="mean")
    return ops.gaussian_step_log_prob(x_prev, mean, std, reduction="sum")


# ----------------------------------------------------------------------------------------
# Classifier-free guidance
# ----------------------------------------------------------------------------------------


def guided_output(cond, uncond, scale) -> jax.Array:
    """Classifier-free guidance (Ho and Salimans 2022, arXiv 2207.12598):
    ``uncond + scale (cond - uncond)``.

    ``scale = 1`` is the conditional model, ``0`` the unconditional one; Ho and Salimans'
    ``w`` is ``scale - 1`` (``(1 + w) cond - w uncond``). The conversions between
    predictions are affine in the output, so guiding ``eps``, ``x0`` or ``v`` is the same.

    Example:
      >>> guided_output(jnp.array([1.0]), jnp.array([0.0]), 3.0)
      Array([3.], dtype=float32)
    """
    cond = _checks.float_array(cond, "cond")
    uncond = _checks.float_array(uncond, "uncond", shape=cond.shape, like="cond")
    _checks.check_scalar(scale, "guidance_scale")
    return uncond + scale * (cond - uncond)


def classifier_free_guidance(model: Callable, scale) -> Callable:
    """A ``denoise_fn(x, t, labels)`` that guides ``model`` by ``scale`` (`guided_output`).

    With labels, it calls ``model`` twice, with the labels and with None (the null class),
    and combines the outputs; without labels it is ``model(x, t, None)``. A concrete
    ``scale`` of 1 calls the model once (the conditional output); ``scale`` may be traced.

    Example:
      >>> model = lambda x, t, labels: x * (0.0 if labels is None else 1.0)
      >>> fn = classifier_free_guidance(model, 2.0)
      >>> fn(jnp.ones((1, 1)), jnp.zeros(1), jnp.array([3]))
      Array([[2.]], dtype=float32)
    """
    if not callable(model):
        raise TypeError(f"`model` must be callable, got {type(model).__name__}")
    _checks.check_scalar(scale, "guidance_scale")

    def denoise_fn(x, t, labels=None):
        if labels is None:
            return model(x, t, None)
        cond = model(x, t, labels)
        if _checks.concrete_value(scale) == 1.0:
            return cond
        return guided_output(cond, model(x, t, None), scale)

    return denoise_fn


# ----------------------------------------------------------------------------------------
# Full-loop samplers
# ----------------------------------------------------------------------------------------


class Trajectory(NamedTuple):
    """A sampler's whole chain of ``K`` steps (``x[0]`` is the initial noise, ``x[K]`` the
    sample); leading axis the step, in sampling order.

    Attributes:
      x: ``[K + 1, B, ...]`` every state of the chain.
      t: ``[K]`` int32, each step's timestep (``x[k]`` is at ``t[k]``).
      t_prev: ``[K]`` int32, each step's target timestep (``x[k + 1]``; -1: the data).
      mean: ``[K, B, ...]`` each step's Gaussian mean.
      std: ``[K, B, ...]`` each step's Gaussian standard deviation.
      log_prob: ``[K, B]`` `step_log_prob` of each step taken (``x[k + 1]`` under
        ``N(mean[k], std[k]^2)``).
    """

    x: jax.Array
    t: jax.Array
    t_prev: jax.Array
    mean: jax.Array
    std: jax.Array
    log_prob: jax.Array


def sampling_timesteps(num_timesteps: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``num_steps`` timesteps a sampler visits and the target of each: ``(t, t_prev)``.

    ``t`` runs evenly (rounded) from ``T - 1`` down to 0, as Song et al.'s (2021, arXiv
    2010.02502) sub-sequences; ``t_prev`` is the next one (-1, the data, after the last).
    ``num_steps = T`` is the full chain ``t_prev = t - 1``. Host NumPy int32 (static).

    Example:
      >>> sampling_timesteps(1000, 4)
      (array([999, 666, 333,   0], dtype=int32), array([666, 333,   0,  -1], dtype=int32))
    """
    T = _checks.check_positive_int(num_timesteps, "num_timesteps", low=2)
    K = _checks.check_positive_int(num_steps, "num_steps")
    if K > T:
        raise ValueError(f"`num_steps` must be <= num_timesteps = {T}, got {K}")
    t = np.round(np.linspace(T - 1, 0, K)).astype(np.int32)
    return t, np.append(t[1:], -1).astype(np.int32)


def _sample(step_distribution, denoise_fn, schedule, shape, key, num_steps, labels, noise,
            return_trajectory, prediction, clip_x0):
    if not callable(denoise_fn):
        raise TypeError(f"`denoise_fn` must be callable, got {type(denoise_fn).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"`schedule` must be a NoiseSchedule, got {type(schedule).__name__}")
    shape = tuple(_checks.check_positive_int(d, f"shape[{i}]") for i, d in enumerate(shape))
    if len(shape) < 2:
        raise ValueError(f"`shape` must be (B, ...) with rank >= 2, got {shape}")
    _checks.check_choice(prediction, PREDICTIONS, "prediction")
    _checks.check_bool(return_trajectory, "return_trajectory")
    if labels is not None:
        labels = check_labels(labels, None, shape[0])
    T = schedule.num_timesteps
    ts, prevs = sampling_timesteps(T, T if num_steps is None else num_steps)
    noise_key, step_key = jax.random.split(key)
    if noise is None:
        x = jax.random.normal(noise_key, shape, jnp.float32)
    else:
        x = _checks.float_array(noise, "noise", shape=shape, like="shape")

    def body(x, inputs):
        t, t_prev, k = inputs
        time = jnp.full(shape[:1], t, jnp.float32) / T
        output = denoise_fn(x, time, labels)
        mean, std = step_distribution(
            output, x, t, schedule, t_prev=t_prev, prediction=prediction, clip_x0=clip_x0
        )
        x_prev = draw_step(k, mean, std)
        if not return_trajectory:
            return x_prev, None
        return x_prev, (x_prev, mean, std, step_log_prob(x_prev, mean, std))

    keys = jax.random.split(step_key, len(ts))
    x_final, out = jax.lax.scan(body, x, (jnp.asarray(ts), jnp.asarray(prevs), keys))
    if not return_trajectory:
        return x_final
    xs, means, stds, log_probs = out
    trajectory = Trajectory(
        x=jnp.concatenate([x[None], xs]),
        t=jnp.asarray(ts),
        t_prev=jnp.asarray(prevs),
        mean=means,
        std=stds,
        log_prob=log_probs,
    )
    return x_final, trajectory


def sample_ddpm(
    denoise_fn: Callable,
    schedule: NoiseSchedule,
    shape,
    key,
    *,
    labels=None,
    num_steps: int | None = None,
    prediction: str = "epsilon",
    clip_x0: float | None = None,
    noise=None,
    return_trajectory: bool = False,
):
    """Ancestral sampling (Ho et al. 2020, arXiv 2006.11239, Algorithm 2) with
    `ddpm_step_distribution`, as a `jax.lax.scan` over the steps.

    Starts from ``x ~ N(0, I)`` at ``t = T - 1`` and draws each ``x_{t_prev}`` from the
    step's Gaussian; ``num_steps < T`` runs the respaced chain over `sampling_timesteps`
    (Nichol and Dhariwal 2021, arXiv 2102.09672).

    Args:
      denoise_fn: ``denoise_fn(x [B, ...], t [B] float = timestep / T, labels) ->
        [B, ...]`` model output of type ``prediction`` (a model, or
        `classifier_free_guidance` of one).
      schedule: a `NoiseSchedule`.
      shape: ``(B, ...)`` the samples' shape (static).
      key: PRNG key: ``noise_key, step_key = split(key)``; the initial noise is drawn
        from ``noise_key`` and step ``k``'s from ``split(step_key, K)[k]`` (so a user's own
        scan of the steps reproduces the sampler).
      labels: ``[B]`` int class labels passed to ``denoise_fn`` (None: unconditional).
      num_steps: steps of the chain (None: all ``T``).
      prediction: one of `PREDICTIONS`.
      clip_x0: clip of the ``x0`` estimates (None: none).
      noise: ``[B, ...]`` the initial ``x`` (None: drawn from ``key``).
      return_trajectory: also return the `Trajectory`.

    Returns:
      ``[B, ...]`` float32 samples, or ``(samples, Trajectory)``.

    Example:
      >>> s = noise_schedule("cosine", 50)
      >>> point = lambda x, t, labels: jnp.full_like(x, 0.5)  # x0-prediction: data = 0.5
      >>> x = sample_ddpm(point, s, (3, 2), jax.random.key(0), prediction="x0")
      >>> x.round(4)
      Array([[0.5, 0.5],
             [0.5, 0.5],
             [0.5, 0.5]], dtype=float32)
    """
    return _sample(
        ddpm_step_distribution, denoise_fn, schedule, shape, key, num_steps, labels, noise,
        return_trajectory, prediction, clip_x0,
    )


def sample_ddim(
    denoise_fn: Callable,
    schedule: NoiseSchedule,
    shape,
    key,
    *,
    num_steps: int = 50,
    eta=0.0,
    labels=None,
    prediction: str = "epsilon",
    clip_x0: float | None = None,
    noise=None,
    return_trajectory: bool = False,
):
    """DDIM sampling (Song et al. 2021, arXiv 2010.02502) over ``num_steps`` of
    `sampling_timesteps`, each step `ddim_step_distribution` with ``eta``, as a
    `jax.lax.scan`.

    ``eta = 0`` is deterministic given the initial noise (the probability-flow ODE's
    discretisation); ``eta = 1`` with ``num_steps = T`` is DDPM (`sample_ddpm`, the same
    draws from the same key). Arguments, shapes and returns as `sample_ddpm`; ``eta`` is a
    scalar ``>= 0`` and may be traced.

    Example:
      >>> s = noise_schedule("cosine", 1000)
      >>> point = lambda x, t, labels: jnp.full_like(x, -0.25)
      >>> x, traj = sample_ddim(point, s, (2, 1), jax.random.key(0), num_steps=10,
      ...                       prediction="x0", return_trajectory=True)
      >>> x.round(4).tolist(), traj.x.shape, traj.log_prob.shape
      ([[-0.25], [-0.25]], (11, 2, 1), (10, 2))
    """
    _checks.check_range(eta, "eta", 0.0)

    def step_distribution(*args, **kwargs):
        return ddim_step_distribution(*args, eta=eta, **kwargs)

    return _sample(
        step_distribution, denoise_fn, schedule, shape, key, num_steps, labels, noise,
        return_trajectory, prediction, clip_x0,
    )

