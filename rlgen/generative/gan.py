"""Generative adversarial networks: the discriminator and generator losses, gradient
penalties and the sampler.

A generator ``G`` maps noise ``z ~ N(0, I)`` to data; a discriminator (a critic) ``D`` maps
data ``[B, ...]`` to one real output per example ``[B]`` (a logit, a least-squares score
or a critic value, as the loss reads it). `GAN_LOSSES` names four objectives:

==================  ======================================  ==============================
``loss``            discriminator minimises                 generator minimises
==================  ======================================  ==============================
``non_saturating``  ``E softplus(-D(x)) + E softplus(D(G))``  ``E softplus(-D(G))``
``lsgan``           ``E (D(x) - 1)^2 / 2 + E D(G)^2 / 2``     ``E (D(G) - 1)^2 / 2``
``hinge``           ``E relu(1 - D(x)) + E relu(1 + D(G))``   ``-E D(G)``
``wgan_gp``         ``E D(G) - E D(x) + lambda GP``           ``-E D(G)``
==================  ======================================  ==============================

(``x`` real data, ``G = G(z)`` generated data.) Any of them may add the R1 penalty
``gamma / 2 E ||grad_x D(x)||^2`` on real data (`r1_penalty`). The pure pieces are
`discriminator_loss`, `generator_loss`, `gradient_penalty`, `r1_penalty`, the objectives
that combine them as `GANConfig` says (`discriminator_objective`, `generator_objective`)
and `sample`; `rlgen.algorithms.gan` alternates the two optimisers over them and
`rlgen.trainers.gan.GANTrainer` trains Flax NNX models with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks

__all__ = [
    "GAN_LOSSES",
    "METRICS",
    "GANConfig",
    "as_latent_shape",
    "check_images",
    "discriminator_loss",
    "discriminator_objective",
    "discriminator_outputs",
    "ema_decay_at",
    "generator_loss",
    "generator_objective",
    "gradient_penalty",
    "latent_noise",
    "r1_penalty",
    "sample",
]

#: The adversarial objectives (module docstring table).
GAN_LOSSES = ("non_saturating", "lsgan", "hinge", "wgan_gp")

#: The metrics of one GAN update (`rlgen.algorithms.gan`): ``d_loss`` (the discriminator's
#: whole objective, penalties included, averaged over its ``d_steps`` updates), ``g_loss``,
#: ``d_real`` / ``d_fake`` (mean raw discriminator outputs on real / generated data),
#: ``gradient_penalty`` and ``r1_penalty`` (unweighted, 0 when unused) and ``skipped`` (how
#: many of the update's ``d_steps + 1`` optimiser steps were skipped for a non-finite loss
#: or gradient).
METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "gradient_penalty", "r1_penalty", "skipped")

# Inside the square root of a gradient norm, so that its derivative stays finite at 0.
_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """Settings of adversarial training (`rlgen.algorithms.gan`, `GANTrainer`).

    Attributes:
      loss: the adversarial objective, one of `GAN_LOSSES`: ``"non_saturating"``
        (Goodfellow et al. 2014, arXiv 1406.2661), ``"lsgan"`` (Mao et al. 2017, arXiv
        1611.04076, targets ``a = 0``, ``b = c = 1``), ``"hinge"`` (Lim and Ye 2017, arXiv
        1705.02894; Miyato et al. 2018, arXiv 1802.05957) or ``"wgan_gp"`` (Gulrajani et
        al. 2017, arXiv 1704.00028).
      gp_weight: ``lambda`` of the WGAN-GP gradient penalty (`gradient_penalty`); used by
        ``loss="wgan_gp"`` only (the other losses ignore it).
      r1_weight: ``gamma`` of the R1 penalty ``gamma / 2 E ||grad D(x_real)||^2``
        (Mescheder et al. 2018, arXiv 1801.04406), with any loss; 0: none.
      d_steps: discriminator updates per generator update (each with fresh noise, on the
        same real batch); an int >= 1 (WGAN-GP used 5).
      max_grad_norm: global-norm clipping of each model's gradient, separately (None:
        none).
      ema_decay: keep an exponential moving average of the generator's parameters with
        this decay, in the state's ``ema_params`` (Yazici et al. 2019, arXiv 1806.04498),
        warmed up over the first updates (`ema_decay_at`); the trainer samples from it.
        None: no average.
      data_range: ``(low, high)`` the real images must lie in: the generator's output
        range (``(-1, 1)`` for a tanh output such as `rlgen.models.gan.MLPGenerator`);
        the trainer checks each batch on the host before the step. None: no check.

    The latent size is the generator's: `rlgen.algorithms.gan` takes it as
    ``latent_shape`` and `GANTrainer` reads the generator's ``latent_dim`` attribute.

    Example:
      >>> GANConfig(loss="hinge", d_steps=2).d_steps
      2
      >>> GANConfig(d_steps=0)
      Traceback (most recent call last):
      ...
      ValueError: `d_steps` must be >= 1, got 0
    """

    loss: str = _checks.option("non_saturating", GAN_LOSSES)
    gp_weight: float = 10.0
    r1_weight: float = 0.0
    d_steps: int = 1
    max_grad_norm: float | None = None
    ema_decay: float | None = None
    data_range: tuple[float, float] | None = (-1.0, 1.0)

    def __post_init__(self):
        _checks.check_options(self)
        _checks.check_range(self.gp_weight, "gp_weight", 0.0)
        _checks.check_range(self.r1_weight, "r1_weight", 0.0)
        _checks.check_int(self.d_steps, "d_steps", low=1)
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)
        if self.ema_decay is not None:
            _checks.check_range(self.ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
        if self.data_range is not None:
            r = self.data_range
            if not (isinstance(r, Sequence) and len(r) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in r
            )) or not r[0] < r[1]:
                raise ValueError(
                    f"`data_range` must be None or (low, high) numbers with low < high, "
                    f"got {r!r}"
                )

    @property
    def uses_gradient_penalty(self) -> bool:
        """Whether the discriminator's objective has the WGAN-GP penalty."""
        return self.loss == "wgan_gp" and self.gp_weight > 0

    @property
    def uses_r1(self) -> bool:
        """Whether the discriminator's objective has the R1 penalty."""
        return self.r1_weight > 0


def _logits(x, name):
    return _checks.float_array(x, name, rank=1, what="([B]: one output per example)")


def discriminator_loss(real_logits, fake_logits, loss: str = "non_saturating"):
    """The discriminator's adversarial loss (without penalties), a float32 scalar.

    With ``r = D(x)`` on real and ``f = D(G(z))`` on generated examples (batch means
    ``E``):

    * ``non_saturating``: ``E softplus(-r) + E softplus(f)``, i.e. ``-E log sigmoid(r)
      - E log(1 - sigmoid(f))`` (Goodfellow et al. 2014, arXiv 1406.2661);
    * ``lsgan``: ``E (r - 1)^2 / 2 + E f^2 / 2`` (Mao et al. 2017, arXiv 1611.04076);
    * ``hinge``: ``E relu(1 - r) + E relu(1 + f)`` (Lim and Ye 2017, arXiv 1705.02894);
    * ``wgan_gp``: ``E f - E r`` (Arjovsky et al. 2017, arXiv 1701.07875; add
      `gradient_penalty` as Gulrajani et al. 2017, arXiv 1704.00028).

    Args:
      real_logits: ``[B]`` discriminator outputs on real data.
      fake_logits: ``[B']`` outputs on generated data (``B'`` may differ from ``B``).
      loss: one of `GAN_LOSSES`.

    Example:
      >>> real, fake = jnp.array([2.0, 3.0]), jnp.array([-1.0, -2.0])
      >>> [round(float(discriminator_loss(real, fake, name)), 4) for name in GAN_LOSSES]
      [0.3079, 2.5, 0.0, -4.0]
    """
    _checks.check_choice(loss, GAN_LOSSES, "loss")
    r = _logits(real_logits, "real_logits").astype(jnp.float32)
    f = _logits(fake_logits, "fake_logits").astype(jnp.float32)
    if loss == "non_saturating":
        return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
    if loss == "lsgan":
        return 0.5 * jnp.mean((r - 1.0) ** 2) + 0.5 * jnp.mean(f**2)
    if loss == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
    return jnp.mean(f) - jnp.mean(r)


def generator_loss(fake_logits, loss: str = "non_saturating"):
    """The generator's loss on discriminator outputs ``f = D(G(z))`` ``[B]``, a float32 scalar.

    * ``non_saturating``: ``E softplus(-f) = -E log sigmoid(f)`` (the non-saturating
      heuristic of Goodfellow et al. 2014, arXiv 1406.2661);
    * ``lsgan``: ``E (f - 1)^2 / 2`` (Mao et al. 2017, arXiv 1611.04076);
    * ``hinge`` and ``wgan_gp``: ``-E f`` (Lim and Ye 2017; Gulrajani et al. 2017).

    Example:
      >>> fake = jnp.array([0.0, 2.0])
      >>> [round(float(generator_loss(fake, name)), 4) for name in GAN_LOSSES]
      [0.41, 0.5, -1.0, -1.0]
    """
    _checks.check_choice(loss, GAN_LOSSES, "loss")
    f = _logits(fake_logits, "fake_logits").astype(jnp.float32)
    if loss == "non_saturating":
        return jnp.mean(jax.nn.softplus(-f))
    if loss == "lsgan":
        return 0.5 * jnp.mean((f - 1.0) ** 2)
    return -jnp.mean(f)


def _input_gradients(critic_fn, x):
    """``grad_x D(x)`` per example, ``[B, ...]``: the gradient of ``sum_i D(x_i)``.

    Exact for a critic that treats the examples of a batch independently (no batch
    normalisation), as the penalties assume.
    """

    def total(inputs):
        return jnp.sum(discriminator_outputs(critic_fn, inputs, "critic_fn(x)").astype(jnp.float32))

    return jax.grad(total)(x)


def _squared_norms(grads):
    """Per-example squared L2 norms over every non-batch axis, ``[B]`` float32."""
    g = grads.astype(jnp.float32).reshape(grads.shape[0], -1)
    return jnp.sum(g**2, axis=1)


def gradient_penalty(critic_fn: Callable, real, fake, key):
    """The WGAN-GP penalty ``E_xhat (||grad_xhat D(xhat)||_2 - 1)^2`` (unweighted).

    ``xhat = eps x + (1 - eps) G(z)`` with one ``eps ~ U[0, 1]`` per example, on the
    straight lines between real and generated pairs (Gulrajani et al. 2017, arXiv
    1704.00028, Algorithm 1); the norm is over every non-batch axis. The penalty is
    differentiable in the critic's parameters (through ``critic_fn``'s closure); its
    weight ``lambda`` (`GANConfig.gp_weight`) is applied by the caller.

    Args:
      critic_fn: ``x [B, ...] -> [B]`` (or ``[B, 1]``), treating examples independently.
      real: ``[B, ...]`` floating real data.
      fake: generated data of the same shape.
      key: PRNG key for the interpolation weights.

    Returns:
      A float32 scalar.

    Example:
      >>> critic = lambda x: 2.0 * x[:, 0]  # gradient norm 2 everywhere
      >>> real, fake = jnp.ones((4, 3)), jnp.zeros((4, 3))
      >>> float(gradient_penalty(critic, real, fake, jax.random.key(0)))
      1.0
    """
    real = _checks.float_array(real, "real", min_rank=2, what="([B, ...])")
    fake = _checks.float_array(fake, "fake", shape=real.shape, like="real")
    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), jnp.float32)
    mixed = (eps * real.astype(jnp.float32) + (1.0 - eps) * fake.astype(jnp.float32)).astype(
        real.dtype
    )
    norms = jnp.sqrt(_squared_norms(_input_gradients(critic_fn, mixed)) + _NORM_EPS)
    return jnp.mean((norms - 1.0) ** 2)


def r1_penalty(critic_fn: Callable, real):
    """The R1 penalty's expectation ``E_x ||grad_x D(x)||^2`` on real data (unweighted).

    Mescheder et al. 2018 (arXiv 1801.04406) add ``gamma / 2`` times this to the
    discriminator's loss (`GANConfig.r1_weight` is ``gamma``); the squared norm is over
    every non-batch axis. Differentiable in the critic's parameters.

    Args:
      critic_fn: ``x [B, ...] -> [B]`` (or ``[B, 1]``), treating examples independently.
      real: ``[B, ...]`` floating real data.

    Returns:
      A float32 scalar.

    Example:
      >>> w = jnp.array([3.0, 4.0])
      >>> float(r1_penalty(lambda x: x @ w, jnp.ones((5, 2))))  # ||w||^2
      25.0
    """
    real = _checks.float_array(real, "real", min_rank=2, what="([B, ...])")
    return jnp.mean(_squared_norms(_input_gradients(critic_fn, real)))


def discriminator_outputs(critic_fn: Callable, x, name: str = "discriminator(x)"):
    """``critic_fn(x)`` checked to be one floating output per example, as ``[B]``.

    A ``[B, 1]`` output (a final ``Linear(..., 1)``) is squeezed to ``[B]``.

    Example:
      >>> discriminator_outputs(lambda x: x[:, :1], jnp.ones((3, 2))).shape
      (3,)
    """
    out = _checks.float_array(critic_fn(x), name)
    batch = jnp.shape(x)[0]
    if out.shape == (batch, 1):
        out = out[:, 0]
    if out.shape != (batch,):
        raise ValueError(
            f"`{name}` must give one output per example, shape ({batch},) or ({batch}, 1), "
            f"got shape {out.shape}"
        )
    return out


def discriminator_objective(critic_fn: Callable, real, fake, key, config: GANConfig = GANConfig()):
    """What the discriminator minimises: `discriminator_loss` plus the config's penalties.

        L_D = loss(D(x), D(G(z))) + [wgan_gp] lambda GP + gamma / 2 E ||grad D(x)||^2

    ``fake`` is taken as a constant (no gradient flows into the generator).

    Args:
      critic_fn: the discriminator, ``x [B, ...] -> [B]`` (or ``[B, 1]``).
      real: ``[B, ...]`` real data; ``fake``: generated data of the same shape.
      key: PRNG key (the gradient penalty's interpolation).
      config: a `GANConfig`.

    Returns:
      ``(loss, metrics)``: metrics ``d_loss`` (= loss), ``d_real``, ``d_fake`` (mean
      outputs), ``gradient_penalty``, ``r1_penalty`` (unweighted; 0 when unused).

    Example:
      >>> critic = lambda x: x[:, 0]
      >>> loss, m = discriminator_objective(critic, jnp.ones((2, 1)), -jnp.ones((2, 1)),
      ...                                   jax.random.key(0), GANConfig(loss="hinge"))
      >>> float(loss), float(m["d_real"]), float(m["d_fake"])
      (0.0, 1.0, -1.0)
    """
    real = _checks.float_array(real, "real", min_rank=2, what="([B, ...])")
    fake = jax.lax.stop_gradient(
        _checks.float_array(fake, "fake", shape=real.shape, like="real")
    )
    r = discriminator_outputs(critic_fn, real, "discriminator(real)")
    f = discriminator_outputs(critic_fn, fake, "discriminator(fake)")
    loss = discriminator_loss(r, f, config.loss)
    zero = jnp.zeros((), jnp.float32)
    gp = gradient_penalty(critic_fn, real, fake, key) if config.uses_gradient_penalty else zero
    r1 = r1_penalty(critic_fn, real) if config.uses_r1 else zero
    total = loss + config.gp_weight * gp + 0.5 * config.r1_weight * r1
    metrics = {
        "d_loss": total,
        "d_real": jnp.mean(r.astype(jnp.float32)),
        "d_fake": jnp.mean(f.astype(jnp.float32)),
        "gradient_penalty": gp,
        "r1_penalty": r1,
    }
    return total, jax.lax.stop_gradient(metrics)


def generator_objective(critic_fn: Callable, fake, config: GANConfig = GANConfig()):
    """What the generator minimises: ``generator_loss(D(fake), config.loss)``.

    Returns ``(loss, {"g_loss": loss})``; differentiate it through ``fake = G(z)``.

    Example:
      >>> loss, m = generator_objective(lambda x: x[:, 0], jnp.zeros((3, 2)))
      >>> round(float(loss), 4)  # log 2
      0.6931
    """
    fake = _checks.float_array(fake, "fake", min_rank=2, what="([B, ...])")
    loss = generator_loss(discriminator_outputs(critic_fn, fake, "discriminator(fake)"),
                          config.loss)
    return loss, {"g_loss": jax.lax.stop_gradient(loss)}


def ema_decay_at(decay, step):
    """The generator average's decay after update ``step`` (0-based): warmed up as
    ``min(decay, (1 + step) / (10 + step))``.

    The average starts at the initial parameters; without a warm-up it would weigh them
    for about ``1 / (1 - decay)`` updates (1,000 at 0.999), so early samples would come
    from a nearly untrained generator. This is the warm-up of TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``. ``step`` may be traced.

    Example:
      >>> [round(float(ema_decay_at(0.999, t)), 4) for t in (0, 90, 10_000)]
      [0.1, 0.91, 0.999]
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def latent_noise(key, num_samples: int, latent_shape):
    """Standard normal noise ``z`` of shape ``[num_samples, *latent_shape]`` (float32).

    Example:
      >>> latent_noise(jax.random.key(0), 3, 4).shape
      (3, 4)
    """
    _checks.check_positive_int(num_samples, "num_samples")
    return jax.random.normal(key, (num_samples, *as_latent_shape(latent_shape)), jnp.float32)


def as_latent_shape(latent_shape) -> tuple[int, ...]:
    """A latent size (an int) or shape (a tuple of ints) as a tuple, checked.

    Example:
      >>> as_latent_shape(8), as_latent_shape((2, 3))
      ((8,), (2, 3))
    """
    shape = (latent_shape,) if isinstance(latent_shape, (int, np.integer)) else latent_shape
    if isinstance(shape, bool) or not isinstance(shape, (tuple, list)) or not shape:
        raise TypeError(
            f"`latent_shape` must be a positive int or a tuple of them, got {latent_shape!r}"
        )
    return tuple(_checks.check_positive_int(d, "latent_shape") for d in shape)


def sample(generator_fn: Callable, key, num_samples: int, latent_shape) -> Any:
    """Draws ``num_samples`` examples ``G(z)``, ``z ~ N(0, I)`` of ``latent_shape``.

    Args:
      generator_fn: ``z [N, *latent_shape] -> x [N, ...]``.
      key: PRNG key.
      num_samples: ``N`` (a static int).
      latent_shape: the generator's latent size (an int) or shape.

    Example:
      >>> x = sample(lambda z: 2.0 * z, jax.random.key(0), 5, 3)
      >>> x.shape
      (5, 3)
    """
    return generator_fn(latent_noise(key, num_samples, latent_shape))


def check_images(images, data_range, name: str = "images"):
    """Checks a batch of real images on the host: floating ``[B, ...]`` within ``data_range``.

    ``data_range`` is ``(low, high)`` or None (no range check). The range is checked only
    when the values are concrete (not inside ``jit``). Returns the images as an array.

    Example:
      >>> check_images(jnp.full((2, 3), 16.0), (-1.0, 1.0))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: `images` must lie in [-1, 1] (GANConfig.data_range: ...), got values in [16, 16]
    """
    x = _checks.float_array(images, name, min_rank=2, what="([B, ...])")
    if data_range is not None:
        _checks.check_values_in(x, data_range[0], data_range[1], name,
                                "GANConfig.data_range: the generator's output range")
    return x
