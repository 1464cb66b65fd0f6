"""Flow matching: conditional flow matching, OT-CFM, rectified flow with reflow, and the
Euler and Heun ODE samplers.

Conventions, stated once for the whole module (and its trainer):

* time runs from noise to data: ``x_0 ~ N(0, I)`` is noise, ``x_1 ~ q`` is data;
* the conditional path is the straight line of Lipman et al. (2022, "Flow Matching for
  Generative Modeling", arXiv 2210.02747) with ``s = sigma_min``:

      x_t = (1 - (1 - s) t) x_0 + t x_1,        u = dx_t/dt = x_1 - (1 - s) x_0,

  and with ``s = 0`` it is rectified flow's straight interpolation (Liu et al. 2022,
  "Flow Straight and Fast", arXiv 2209.03003);
* a velocity model is called ``model(x [B, ...], t [B] float in [0, 1], labels [B] int or
  None) -> v [B, ...]`` (`rlgen.models.MLPDenoiser`); with ``num_classes`` classes the
  class id ``num_classes`` is the null class of classifier-free guidance and
  ``labels=None`` means the null class for every row;
* samples are drawn by integrating ``dx/dt = v(x, t)`` from ``t = 0`` to ``t = 1``.

Training pairs ``(x_0, x_1)`` come from a coupling (`COUPLINGS`): ``"independent"`` draws
them independently (conditional flow matching), ``"ot"`` re-pairs a minibatch by its exact
optimal-transport plan (OT-CFM, Tong et al. 2023, arXiv 2302.00482; `ot_coupling`);
the reflow stage of rectified flow (``FlowConfig(reflow=True)``) pairs fresh noise with
a frozen teacher's ODE solution ``x_1 = ODE_teacher(x_0)``. `flow_matching_loss` is the
regression of the model's velocity onto ``u`` at a uniform ``t``.

For a stochastic sampler (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470) the pieces are
public: `time_grid`, `velocity_at` (the guided velocity at a scalar time), `euler_step`
(its drift times ``dt``) and `score_from_velocity`. The SDE
``dx = [v + (g_t^2 / 2) score(x, t)] dt + g_t dW`` has the ODE's marginals, so one of its
Euler-Maruyama steps is the Gaussian ``N(x + dt (v + g_t^2 score / 2), g_t^2 dt I)``.
(Flow-GRPO writes time the other way, noise at 1: its ``tau`` is ``1 - t`` here.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks
from rlgen._checks import check_labels

#: The noise of the stochastic sampler (`sde_step_distribution`): Flow-GRPO's
#: ``g_t = a sqrt((1 - t) / t)`` or DanceGRPO's constant ``g_t = a``.
SDE_NOISES = ("flow-grpo", "dance")
#: How training pairs of noise and data are drawn (`FlowConfig.coupling`).
COUPLINGS = ("independent", "ot")
#: The ODE solvers of `sample_ode` (`FlowConfig.teacher_method`).
METHODS = ("euler", "heun")
#: The metrics `flow_matching_loss` returns besides the loss.
METRICS = ("pair_cost",)

Velocity = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Settings of flow-matching training (`flow_matching_loss`, `FlowTrainer`).

    Attributes:
      coupling: how noise and data are paired: one of `COUPLINGS` (``"independent"``:
        conditional flow matching; ``"ot"``: the exact minibatch OT plan, OT-CFM).
      sigma_min: the width ``s`` of the path's end, ``x_t = (1 - (1 - s) t) x_0 + t x_1``
        (0: rectified flow's straight line).
      num_classes: classes of a class-conditional model (0: unconditional); the labels
        lie in ``[0, num_classes)`` and ``num_classes`` is the null class.
      label_dropout: probability of replacing a label by the null class in training
        (classifier-free guidance, Ho and Salimans 2022).
      reflow: train on pairs ``(x_0, ODE_teacher(x_0))`` of a frozen teacher (rectified
        flow's reflow stage); the trainer or algorithm must be given the teacher.
      teacher_steps: ODE steps of the teacher's sampler in reflow.
      teacher_method: the teacher's ODE solver in reflow, one of `METHODS`.
      ema_decay: decay of an exponential moving average of the parameters used for
        sampling (None: no average, sample with the trained parameters).
      max_grad_norm: global-norm gradient clipping (None: none).
    """

    coupling: str = _checks.option("independent", COUPLINGS)
    sigma_min: float = 0.0
    num_classes: int = 0
    label_dropout: float = 0.1
    reflow: bool = False
    teacher_steps: int = 16
    teacher_method: str = _checks.option("euler", METHODS)
    ema_decay: float | None = None
    max_grad_norm: float | None = None

    def __post_init__(self):
        _checks.check_options(self)
        _checks.check_range(self.sigma_min, "sigma_min", 0.0, 1.0, high_open=True)
        _checks.check_int(self.num_classes, "num_classes", low=0)
        _checks.check_range(self.label_dropout, "label_dropout", 0.0, 1.0)
        _checks.check_bool(self.reflow, "reflow")
        _checks.check_positive_int(self.teacher_steps, "teacher_steps")
        if self.reflow and self.coupling != "independent":
            raise ValueError(
                f"`coupling`={self.coupling!r} with `reflow`=True: reflow pairs each noise "
                "with its teacher's ODE solution, so the coupling must be 'independent'"
            )
        if self.ema_decay is not None:
            _checks.check_range(self.ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)


# ----------------------------------------------------------------------------- the path


def interpolate(x0, x1, t, sigma_min=0.0):
    """The point at time ``t`` of the path from ``x0`` to ``x1``.

        x_t = (1 - (1 - sigma_min) t) x_0 + t x_1

    (Lipman et al. 2022, arXiv 2210.02747, eq. 20 with time from noise to data).

    Args:
      x0: ``[B, ...]`` noise.
      x1: ``[B, ...]`` data (same shape).
      t: ``[B]`` times in ``[0, 1]``.
      sigma_min: the path's end width ``s`` in ``[0, 1)``.

    Returns:
      ``[B, ...]`` points, dtype of ``x0``.

    Example:
      >>> interpolate(jnp.zeros((2, 1)), jnp.ones((2, 1)), jnp.array([0.25, 1.0]))
      Array([[0.25],
             [1.  ]], dtype=float32)
    """
    x0, x1 = _pair(x0, x1)
    t = _times(t, x0.shape[0])
    t = t.reshape(t.shape + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return (1.0 - (1.0 - sigma_min) * t) * x0 + t * x1


def target_velocity(x0, x1, sigma_min=0.0):
    """The conditional path's velocity ``u = x_1 - (1 - sigma_min) x_0`` (constant in t).

    Example:
      >>> target_velocity(jnp.ones((1, 2)), jnp.full((1, 2), 3.0))
      Array([[2., 2.]], dtype=float32)
    """
    x0, x1 = _pair(x0, x1)
    return x1 - (1.0 - sigma_min) * x0


def score_from_velocity(x, t, v, sigma_min=0.0):
    """The marginal score ``grad log p_t(x)`` of the path, from its velocity field.

    On the path ``x_t = a_t x_0 + t x_1`` with ``a_t = 1 - (1 - s) t`` and Gaussian
    ``x_0``, ``E[x_0 | x_t = x] = x - t v(x, t)`` and ``grad log p_t(x) = -E[x_0 | x] /
    a_t``, so

        score(x, t) = -(x - t v) / (1 - (1 - s) t).

    The stochastic samplers with the ODE's marginals add ``g_t^2 / 2`` times it to the
    drift (the SDE of the module doc; Song et al. 2021, arXiv 2011.13456, eq. 6). It is
    singular at ``t = 1`` when ``s = 0``.

    Args:
      x: ``[B, ...]`` points.
      t: scalar or ``[B]`` times in ``[0, 1)``.
      v: ``[B, ...]`` the velocity at ``(x, t)``.
      sigma_min: the path's ``s``.

    Example:
      >>> # N(0, I) data: p_t = N(0, ((1 - t)^2 + t^2) I) and v = (2t - 1) x / var_t
      >>> x, t = jnp.array([[1.0]]), 0.5
      >>> score_from_velocity(x, t, 0.0 * x)  # -x / var_t with var_t = 0.5
      Array([[-2.]], dtype=float32)
    """
    x = _checks.float_array(x, "x", min_rank=1)
    v = _checks.float_array(v, "v", shape=x.shape, like="x")
    t = _times(t, x.shape[0])
    t = t.reshape(t.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
    return -(x - t * v) / (1.0 - (1.0 - sigma_min) * t)


# ------------------------------------------------------------------------ the coupling


def ot_coupling(x0, x1, labels=None):
    """The exact minibatch optimal-transport pairing of noise ``x0`` with data ``x1``.

    For two batches of ``B`` points with uniform weights, the optimal transport plan
    under the squared Euclidean cost is a permutation (Birkhoff-von Neumann), the
    solution of the assignment problem

        perm = argmin_sigma  sum_i || x0[sigma(i)] - x1[i] ||^2,

    solved exactly by `scipy.optimize.linear_sum_assignment` (Crouse 2016) on the host
    through `jax.pure_callback` (costs in float64). OT-CFM (Tong et al. 2023, arXiv
    2302.00482) trains on the pairs ``(x0[perm], x1)``.

    With ``labels``, noise is re-paired only within each class: row ``i``'s noise is
    drawn for data row ``i``, and the plan moves noise only between rows of the same
    label (cost ``inf`` across labels), so data and labels stay paired and each class's
    noise is still an i.i.d. ``N(0, I)`` sample (a global plan would hand each class the
    noise nearest its data, which ``N(0, I)`` at sampling time is not).

    Works under `jit`; under `vmap` the callback receives the whole batch of problems
    (``vmap_method="broadcast_all"``) and solves them one by one. A batch with a
    non-finite cost comes back unpaired (the identity), as the loss is then non-finite
    and the update is skipped. No gradient flows through the permutation. Under a
    sharded `jit` (a data-parallel mesh) the plan is still the whole batch's: XLA gathers
    the batch to one device for the host solver (it warns of an "involuntary full
    rematerialization"), and the numbers equal the single-device ones.

    Args:
      x0: ``[B, ...]`` noise.
      x1: ``[B, ...]`` data (same shape).
      labels: optional ``[B]`` int class ids of the data rows.

    Returns:
      ``[B]`` int32 permutation: ``x0[perm]`` is the noise paired with ``x1``.

    Example:
      >>> x1 = jnp.array([[0.0], [10.0], [20.0]])
      >>> ot_coupling(x1[::-1], x1)
      Array([2, 1, 0], dtype=int32)
    """
    x0, x1 = _pair(x0, x1)
    b = x0.shape[0]
    if labels is None:
        groups = jnp.zeros((b,), jnp.int32)
    else:
        groups = _checks.int_array(labels, "labels", shape=(b,), like="x1[:, 0]")
    flat = lambda x: jax.lax.stop_gradient(x).reshape(b, -1)  # noqa: E731
    return jax.pure_callback(
        _assignments,
        jax.ShapeDtypeStruct((b,), jnp.int32),
        flat(x0),
        flat(x1),
        groups.astype(jnp.int32),
        vmap_method="broadcast_all",
    )


def _assignments(x0, x1, groups):
    """Host side of `ot_coupling`: ``[..., B, D]``, ``[..., B, D]``, ``[..., B]`` ->
    ``[..., B]`` int32 permutations (leading axes from `vmap`)."""
    from scipy.optimize import linear_sum_assignment

    x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
    groups = np.asarray(groups)
    lead, (b, d) = x0.shape[:-2], x0.shape[-2:]
    x0, x1, groups = x0.reshape(-1, b, d), x1.reshape(-1, b, d), groups.reshape(-1, b)
    out = np.empty(groups.shape, np.int32)
    for k in range(len(out)):
        # cost[i, j] = || x1_i - x0_j ||^2 (data row i, noise row j), inf across labels
        cost = ((x1[k][:, None, :] - x0[k][None, :, :]) ** 2).sum(-1)
        if not np.all(np.isfinite(cost)):
            out[k] = np.arange(b)
            continue
        cost[groups[k][:, None] != groups[k][None, :]] = np.inf
        rows, cols = linear_sum_assignment(cost)
        out[k][rows] = cols
    return out.reshape(*lead, b)


# ----------------------------------------------------------------------------- the loss


def flow_matching_loss(model, batch, key, config: FlowConfig = FlowConfig(), teacher=None):
    """The (conditional) flow-matching loss: regress the velocity onto the path's.

    With pairs ``(x_0, x_1)`` from the coupling, ``t ~ U[0, 1]``, ``x_t`` and ``u`` from
    `interpolate` and `target_velocity`,

        L = E || v_theta(x_t, t, c) - u ||^2 / D

    (the mean over the batch and over the ``D`` entries of each example). Conditional
    flow matching (Lipman et al. 2022, arXiv 2210.02747) draws ``x_0 ~ N(0, I)``
    independently of ``x_1``; OT-CFM (Tong et al. 2023, arXiv 2302.00482) re-pairs the
    batch by `ot_coupling`; reflow (Liu et al. 2022, arXiv 2209.03003) sets ``x_1`` to
    the frozen ``teacher``'s ODE solution from ``x_0`` (`sample_ode` with
    ``config.teacher_steps`` steps of ``config.teacher_method``; the batch's images
    then only give the shape, its labels the classes). With labels, each label is
    replaced by the null class ``num_classes`` with probability ``label_dropout``
    (classifier-free guidance; in reflow the teacher sees the same labels).

    Args:
      model: the velocity model ``(x, t [B], labels or None) -> v`` (module doc).
      batch: ``{"images": [B, ...] float, "labels": optional [B] int}``; without
        labels every row is unconditional (``labels=None``).
      key: PRNG key (noise, times, label dropout).
      config: a `FlowConfig`.
      teacher: the frozen velocity model of reflow (required iff ``config.reflow``).

    Returns:
      ``(loss, metrics)`` with metrics `METRICS`: ``pair_cost``, the pairs' mean squared
      distance ``E ||x_1 - x_0||^2`` (what OT coupling and reflow lower).

    Example:
      >>> exact = lambda x, t, labels: jnp.ones_like(x)  # data = noise + 1
      >>> key = jax.random.key(0)
      >>> batch = {"images": jax.random.normal(key, (8, 2)) + 1.0}
      >>> loss, m = flow_matching_loss(exact, batch, key)
      >>> bool(loss > 0.5)  # independent pairs: u = x_1 - x_0 is not the constant 1
      True
    """
    x1, labels = check_batch(batch, config)
    if config.reflow and teacher is None:
        raise ValueError(
            "FlowConfig(reflow=True) trains on a teacher's ODE pairs: pass `teacher` (the "
            "frozen velocity model), e.g. FlowTrainer(..., teacher=model)"
        )
    if teacher is not None and not config.reflow:
        raise ValueError("`teacher` is used by reflow only: set FlowConfig(reflow=True)")
    noise_key, time_key, drop_key = jax.random.split(key, 3)
    b = x1.shape[0]
    x0 = jax.random.normal(noise_key, x1.shape, x1.dtype)
    if config.coupling == "ot":
        x0 = x0[ot_coupling(x0, x1, labels)]
    if labels is not None and config.label_dropout > 0:
        drop = jax.random.bernoulli(drop_key, config.label_dropout, (b,))
        labels = jnp.where(drop, config.num_classes, labels).astype(labels.dtype)
    if config.reflow:
        x1 = sample_ode(
            teacher, x0, config.teacher_steps, method=config.teacher_method, labels=labels
        )
        x1 = jax.lax.stop_gradient(x1.astype(x0.dtype))
    t = jax.random.uniform(time_key, (b,), jnp.float32)
    xt = interpolate(x0, x1, t, config.sigma_min)
    u = target_velocity(x0, x1, config.sigma_min)
    v = model(xt, t, labels)
    _checks.check_shape(jnp.asarray(v), x1.shape, "model(x, t, labels)", "images")
    loss = jnp.mean((v.astype(jnp.float32) - u.astype(jnp.float32)) ** 2)
    cost = jnp.mean(jnp.sum(((x1 - x0).astype(jnp.float32) ** 2).reshape(b, -1), axis=1))
    return loss, {"pair_cost": jax.lax.stop_gradient(cost)}


def check_batch(batch: Mapping[str, Any], config: FlowConfig):
    """The batch's ``(images [B, ...], labels [B] or None)``, checked against ``config``.

    Raises ValueError/TypeError naming the key for unknown or missing keys, non-floating
    or rank < 2 images, non-integer labels or labels not of shape ``[B]``, labels for an
    unconditional config, and (when the labels are concrete) labels outside
    ``[0, num_classes)``.

    Example:
      >>> check_batch({"images": jnp.zeros((2, 3)), "labels": jnp.array([0, 4])},
      ...             FlowConfig(num_classes=3))
      Traceback (most recent call last):
      ...
      ValueError: `labels` must hold class ids in [0, 3), got values in [0, 4]
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"the flow batch must be a dict of arrays, got {type(batch).__name__}")
    unknown = sorted(set(batch) - {"images", "labels"})
    if "images" not in batch or unknown:
        raise ValueError(
            "the flow batch needs 'images' [B, ...] (optional 'labels' [B] int); got keys "
            f"{sorted(batch)}"
        )
    images = _checks.float_array(batch["images"], "images", min_rank=2, what="([B, ...])")
    labels = batch.get("labels")
    if labels is None:
        return images, None
    if config.num_classes == 0:
        raise ValueError(
            "the batch has 'labels' but FlowConfig(num_classes=0) is unconditional; set "
            "`num_classes` to the number of classes or drop the labels"
        )
    labels = check_labels(labels, config.num_classes, images.shape[0])
    return images, labels


# --------------------------------------------------------------------------- samplers


def time_grid(num_steps: int, start: float = 0.0, end: float = 1.0):
    """The sampler's ``num_steps + 1`` uniform times ``t_k = start + k (end - start) / K``.

    Example:
      >>> time_grid(4)
      Array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
    """
    _checks.check_positive_int(num_steps, "num_steps")
    _checks.check_range(start, "start", 0.0, 1.0)
    _checks.check_range(end, "end", 0.0, 1.0)
    return jnp.linspace(start, end, num_steps + 1, dtype=jnp.float32)


def guided(velocity_fn: Velocity, guidance_scale=1.0) -> Velocity:
    """Classifier-free guidance (Ho and Salimans 2022, arXiv 2207.12598) of a velocity.

        v_w(x, t, c) = v(x, t, None) + w (v(x, t, c) - v(x, t, None))

    ``w = 1`` is the conditional velocity (one call), ``w = 0`` the unconditional one,
    ``w > 1`` guides towards the class. Without labels the result is ``v(x, t, None)``.
    (Ho and Salimans's ``(1 + w') eps_c - w' eps_u`` is ``w = 1 + w'``.) ``w`` may be
    traced.

    Example:
      >>> v = lambda x, t, labels: x * (0.0 if labels is None else 1.0)
      >>> guided(v, 3.0)(jnp.ones((1, 1)), jnp.zeros(1), jnp.zeros(1, jnp.int32))
      Array([[3.]], dtype=float32)
    """
    _checks.check_range(guidance_scale, "guidance_scale", 0.0)
    scale = _checks.concrete_value(guidance_scale)

    def fn(x, t, labels=None):
        if labels is None or scale == 0.0:
            return velocity_fn(x, t, None)
        conditional = velocity_fn(x, t, labels)
        if scale == 1.0:
            return conditional
        unconditional = velocity_fn(x, t, None)
        return unconditional + guidance_scale * (conditional - unconditional)

    return fn


def velocity_at(velocity_fn: Velocity, x, t, labels=None):
    """``velocity_fn(x, t, labels)`` at a scalar time ``t`` (broadcast to ``[B]``).

    Example:
      >>> velocity_at(lambda x, t, labels: x * t[:, None], jnp.ones((2, 1)), 0.5)
      Array([[0.5],
             [0.5]], dtype=float32)
    """
    x = _checks.float_array(x, "x", min_rank=1)
    tb = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    v = velocity_fn(x, tb, labels)
    _checks.check_shape(jnp.asarray(v), x.shape, "velocity_fn(x, t, labels)", "x")
    return v.astype(x.dtype)


def euler_step(velocity_fn: Velocity, x, t, t_next, labels=None):
    """One Euler step of ``dx/dt = v(x, t)``: ``x + (t_next - t) v(x, t)``.

    Exact for a straight flow (constant velocity along each path). Its drift
    ``v(x, t)`` is `velocity_at`; a stochastic step adds to it (module doc).

    Example:
      >>> euler_step(lambda x, t, labels: jnp.ones_like(x), jnp.zeros((1, 2)), 0.0, 0.5)
      Array([[0.5, 0.5]], dtype=float32)
    """
    return x + (t_next - t) * velocity_at(velocity_fn, x, t, labels)


def heun_step(velocity_fn: Velocity, x, t, t_next, labels=None):
    """One Heun step (explicit trapezoidal rule, second order):

        x' = x + h v(x, t),   x_next = x + h (v(x, t) + v(x', t_next)) / 2,  h = t_next - t

    (as in Karras et al. 2022, arXiv 2206.00364, Alg. 1). Two velocity calls.

    Example:
      >>> f = lambda x, t, labels: 2.0 * t[:, None] * jnp.ones_like(x)  # x(t) = t^2
      >>> heun_step(f, jnp.zeros((1, 1)), 0.0, 1.0)  # exact for a quadratic path
      Array([[1.]], dtype=float32)
    """
    h = t_next - t
    v = velocity_at(velocity_fn, x, t, labels)
    v_next = velocity_at(velocity_fn, x + h * v, t_next, labels)
    return x + h * 0.5 * (v + v_next)


def sde_noise_scale(t, t_next, *, noise: str = "flow-grpo", noise_level=0.7):
    """The diffusion coefficient ``g`` of a stochastic sampler step from ``t`` to ``t_next``.

    * ``"flow-grpo"`` (Liu et al. 2025, "Flow-GRPO", arXiv 2505.05470): ``g = a sqrt((1 -
      t) / t)``, Flow-GRPO's ``sigma_tau = a sqrt(tau / (1 - tau))`` with its noise level
      ``tau = 1 - t``. It is infinite at the pure noise ``t = 0``, so a step from ``t = 0``
      uses ``t_next`` (as Flow-GRPO's code does with its second noise level).
    * ``"dance"`` (Xue et al. 2025, "DanceGRPO", arXiv 2505.07818): the constant ``g = a``.

    ``a = noise_level`` (``>= 0``; 0 makes the step the ODE's Euler step) may be traced.

    Example:
      >>> float(sde_noise_scale(0.5, 0.75)), float(sde_noise_scale(0.0, 0.2, noise="dance"))
      (0.699999988079071, 0.699999988079071)
    """
    _checks.check_choice(noise, SDE_NOISES, "noise")
    _checks.check_range(noise_level, "noise_level", 0.0)
    t = jnp.asarray(t, jnp.float32)
    a = jnp.asarray(noise_level, jnp.float32)
    if noise == "dance":
        return jnp.broadcast_to(a, t.shape)
    t_eff = jnp.where(t > 0.0, t, jnp.asarray(t_next, jnp.float32))
    return a * jnp.sqrt((1.0 - t_eff) / t_eff)


def sde_step_distribution(
    v, x, t, t_next, *, noise: str = "flow-grpo", noise_level=0.7, sigma_min=0.0
):
    """One Euler-Maruyama step of the flow's SDE with the ODE's marginals, as a Gaussian.

    The SDE ``dx = [v + (g^2 / 2) score(x, t)] dt + g dW`` has the marginals of the ODE
    ``dx = v dt`` for any ``g`` (Song et al. 2021, arXiv 2011.13456; the score is
    `score_from_velocity`), so with ``h = t_next - t > 0`` its step is

        x_next ~ N(mean, std^2 I),   mean = x + h (v + g^2 score / 2),   std = g sqrt(h)

    with ``g`` from `sde_noise_scale` (Flow-GRPO's or DanceGRPO's noise). ``noise_level =
    0`` gives the ODE's `euler_step` (std 0). Flow-GRPO (Liu et al. 2025, arXiv 2505.05470)
    makes the sampler a policy this way; the step's log-probability is
    `rlgen.ops.gaussian_step_log_prob`.

    Args:
      v: ``[B, ...]`` the (guided) velocity at ``(x, t)``.
      x: ``[B, ...]`` the current state.
      t, t_next: scalars or ``[B]``, ``0 <= t < t_next <= 1``.
      noise: one of `SDE_NOISES`.
      noise_level: ``a >= 0`` (may be traced).
      sigma_min: the path's ``s``.

    Returns:
      ``(mean, std)``, both ``[B, ...]``.

    Example:
      >>> x = jnp.ones((1, 2))
      >>> mean, std = sde_step_distribution(jnp.zeros((1, 2)), x, 0.5, 0.75)
      >>> mean.round(4), std.round(4)  # score -(x - t v) / (1 - t) = -2
      (Array([[0.8775, 0.8775]], dtype=float32), Array([[0.35, 0.35]], dtype=float32))
    """
    x = _checks.float_array(x, "x", min_rank=1)
    v = _checks.float_array(v, "v", shape=x.shape, like="x")
    t, t_next = _times(t, x.shape[0]), _times(t_next, x.shape[0])
    g = sde_noise_scale(t, t_next, noise=noise, noise_level=noise_level)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    h, g = (t_next - t).reshape(shape), g.reshape(shape)
    score = score_from_velocity(x, t, v, sigma_min)
    mean = x + h * (v + 0.5 * jnp.square(g) * score)
    std = jnp.broadcast_to(g * jnp.sqrt(jnp.maximum(h, 0.0)), x.shape)
    return mean, std


_STEPS = {"euler": euler_step, "heun": heun_step}


def sample_ode(
    velocity_fn: Velocity,
    x0,
    num_steps: int,
    *,
    method: str = "euler",
    labels=None,
    guidance_scale=1.0,
    return_trajectory: bool = False,
):
    """Integrates ``dx/dt = v(x, t)`` from noise ``x0`` at ``t = 0`` to ``t = 1``.

    ``num_steps`` steps of ``method`` (`METHODS`: Euler, one velocity call per step;
    Heun, two) on `time_grid`, under `jax.lax.scan` (one traced step); with ``labels``
    and ``guidance_scale`` the velocity is `guided`. Deterministic given ``x0``: draw
    ``x0 = jax.random.normal(key, shape)`` for samples. Pure: `jit`, `vmap` over seeds.

    Args:
      velocity_fn: ``(x, t [B], labels or None) -> v`` (module doc).
      x0: ``[B, ...]`` float, the start (noise).
      num_steps: steps (a static Python int).
      method: one of `METHODS`.
      labels: optional ``[B]`` int class ids (None: unconditional).
      guidance_scale: classifier-free guidance ``w`` (1: the conditional velocity).
      return_trajectory: also return the ``[num_steps + 1, B, ...]`` trajectory, ``x0``
        first (for `straightness`).

    Returns:
      ``x_1`` ``[B, ...]``, or ``(x_1, trajectory)`` with ``return_trajectory``.

    Example:
      >>> v = lambda x, t, labels: -x  # dx/dt = -x: x(1) = x0 / e
      >>> x1 = sample_ode(v, jnp.ones((1, 1)), 100, method="heun")
      >>> round(float(x1[0, 0]), 4)
      0.3679
    """
    x0 = _checks.float_array(x0, "x0", min_rank=1, what="([B, ...])")
    _checks.check_choice(method, METHODS, "method")
    _checks.check_bool(return_trajectory, "return_trajectory")
    if labels is not None:
        labels = _checks.int_array(labels, "labels", shape=(x0.shape[0],), like="x0[:, 0]")
    grid = time_grid(num_steps)
    step, fn = _STEPS[method], guided(velocity_fn, guidance_scale)

    def body(x, times):
        x = step(fn, x, times[0], times[1], labels)
        return x, x if return_trajectory else None

    x1, path = jax.lax.scan(body, x0, (grid[:-1], grid[1:]))
    if return_trajectory:
        return x1, jnp.concatenate([x0[None], path], axis=0)
    return x1


def straightness(trajectory, times=None):
    """Liu et al.'s straightness of a flow, estimated on sampled trajectories.

        S = int_0^1 E || (x_1 - x_0) - v(x_t, t) ||^2 dt

    (Liu et al. 2022, arXiv 2209.03003, eq. 6): zero iff every path is a straight line
    travelled at constant speed. On a trajectory ``x_{t_0}, ..., x_{t_K}`` the velocity
    on ``[t_k, t_{k+1}]`` is the step's ``(x_{k+1} - x_k) / (t_{k+1} - t_k)`` (exactly
    ``v(x_k, t_k)`` for Euler, Heun's averaged velocity for Heun), and the chord is
    ``(x_K - x_0) / (t_K - t_0)``; the integral is the ``dt``-weighted sum over steps
    divided by ``t_K - t_0``. ``||.||^2`` sums over an example's entries; ``E`` is the
    mean over the batch. A one-step trajectory is straight by construction.

    Args:
      trajectory: ``[K + 1, B, ...]`` float (`sample_ode` with ``return_trajectory``).
      times: ``[K + 1]`` increasing times (None: `time_grid` ``(K)``).

    Returns:
      A float32 scalar ``>= 0``.

    Example:
      >>> line = jnp.linspace(0.0, 1.0, 5)[:, None, None] * jnp.ones((5, 3, 2))
      >>> float(straightness(line))
      0.0
      >>> bent = line.at[2].add(0.25)  # step speeds 1, 2, 0, 1 along a chord of speed 1
      >>> float(straightness(bent))  # (0 + 1 + 1 + 0) x 2 entries x dt = 1/4
      1.0
    """
    path = _checks.float_array(trajectory, "trajectory", min_rank=2, what="([K + 1, B, ...])")
    k = path.shape[0] - 1
    if k < 1:
        raise ValueError(f"`trajectory` needs at least 2 time points, got shape {path.shape}")
    if times is None:
        times = time_grid(k)
    times = _checks.float_array(times, "times", shape=(k + 1,), like="trajectory[:, 0, 0]")
    path = path.astype(jnp.float32).reshape(k + 1, path.shape[1], -1)
    dt = jnp.diff(times.astype(jnp.float32))
    steps = jnp.diff(path, axis=0) / dt[:, None, None]
    chord = (path[-1] - path[0]) / (times[-1] - times[0])
    gap = jnp.mean(jnp.sum((chord[None] - steps) ** 2, axis=-1), axis=-1)
    return jnp.sum(dt * gap) / (times[-1] - times[0])


# ------------------------------------------------------------------------------ helpers


def _pair(x0, x1):
    x0 = _checks.float_array(x0, "x0", min_rank=1, what="([B, ...])")
    x1 = _checks.float_array(x1, "x1", shape=x0.shape, like="x0")
    return x0, x1


def _times(t, batch_size: int):
    t = _checks.float_array(t, "t", rank=(0, 1))
    if t.ndim == 1:
        _checks.check_shape(t, (batch_size,), "t", "x0[:, 0]")
    return jnp.broadcast_to(t, (batch_size,))
