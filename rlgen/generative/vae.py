"""Variational autoencoders: the ELBO with beta, KL annealing and free bits; Gaussian and
Bernoulli decoders; prior sampling and held-out evaluation.

A VAE (Kingma and Welling 2014, arXiv 1312.6114; Rezende et al. 2014, arXiv 1401.4082)
has an encoder ``q(z | x) = N(mean(x), diag(exp(log_var(x))))``, a standard normal prior
``p(z) = N(0, I)`` and a decoder ``p(x | z)``. Its evidence lower bound, per example,

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))  <=  log p(x),

is estimated with one reparameterised draw ``z = mean + exp(log_var / 2) * eps``. The
training loss `vae_loss` is the batch mean of the per-example negative ELBO, with the KL
term weighted by ``beta * kl_weight(step)`` (beta-VAE, Higgins et al. 2017; KL annealing,
Bowman et al. 2016, arXiv 1511.06349; cyclical annealing, Fu et al. 2019, arXiv
1903.10145) and floored per latent dimension (free bits, Kingma et al. 2016, arXiv
1606.04934). Every likelihood and KL is a per-example SUM over the non-batch dimensions
(nats per example), never a mean over pixels: a mean would silently reweight the KL
against the reconstruction by the image size.

What a model must provide (`rlgen.models.MLPVAE` does):

* ``model.encode(images [B, ...]) -> (mean [B, Z], log_var [B, Z])``;
* ``model.decode(z [B, Z]) -> [B, ...]`` of the images' shape: the Gaussian mean or the
  Bernoulli logits;
* ``model.latent_dim`` (for `sample_prior`);
* with ``learn_decoder_std``: ``model.decoder_log_scale``, a scalar parameter (the Gaussian
  standard deviation is ``decoder_std * exp(decoder_log_scale)``).

Everything here is a pure function of its inputs (no ``jax.jit`` inside): jit it, vmap it
over seeds, scan it; `rlgen.trainers.VAETrainer` trains with `vae_loss`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks

#: The KL weight schedules of `kl_weight`.
KL_SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")
#: The decoders' likelihoods: a Gaussian on real values, a Bernoulli on [0, 1] targets.
DECODERS = ("gaussian", "bernoulli")
#: The metrics `vae_loss` returns besides the loss.
METRICS = ("reconstruction_loss", "kl", "kl_weight", "elbo", "active_units", "decoder_std")

#: A latent dimension counts as active when the batch variance of its posterior mean
#: exceeds this (Burda et al. 2016, arXiv 1509.00519).
ACTIVE_UNIT_THRESHOLD = 0.01

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Settings of VAE training (`vae_loss`, `rlgen.trainers.VAETrainer`).

    The loss of a batch is ``-mean_b log p(x_b | z_b) + beta * w(step) * KL_term`` with
    ``w`` the schedule `kl_weight` and ``KL_term`` the batch-mean KL, floored per latent
    dimension at ``free_bits`` (`free_bits_kl`).

    Attributes:
      beta: the KL weight of the beta-VAE (Higgins et al. 2017); 1 is the plain ELBO,
        above 1 favours disentangled, more prior-like codes, below 1 sharper
        reconstructions. ``>= 0``.
      kl_schedule: how the KL weight ``w(step)`` in ``[0, 1]`` grows, one of
        `KL_SCHEDULES`: ``"constant"`` (1 from the start), ``"linear"`` (0 to 1 over
        ``kl_warmup_steps``), ``"sigmoid"`` (a logistic ramp over ``kl_warmup_steps``,
        0.5 halfway; Bowman et al. 2016), ``"cyclical"`` (Fu et al. 2019: repeated linear
        ramps of ``kl_cycle_steps`` each).
      kl_warmup_steps: steps of the linear and sigmoid ramps (the weight is 1 from then on).
      kl_sigmoid_steepness: the logistic's slope ``k`` over the ramp (``w`` runs along
        ``sigmoid(k (s / W - 1/2))``, rescaled to run exactly from 0 to 1).
      kl_cycle_steps: the length of one cyclical-annealing cycle.
      kl_cycle_ratio: the share of each cycle spent increasing (Fu et al.'s ``R``; 0.5 in
        their experiments); the weight stays 1 for the rest of the cycle. In ``(0, 1]``.
      kl_num_cycles: the number of cycles, after which the weight stays 1 (None: cycles
        for ever).
      free_bits: the free-bits floor ``lambda`` in nats per latent dimension (Kingma et
        al. 2016): a dimension whose batch-mean KL is below it adds ``lambda`` to the
        loss and gets no gradient through its KL. 0: no floor.
      decoder: the likelihood ``p(x | z)``, one of `DECODERS`: ``"gaussian"`` (the model
        decodes the mean; any real targets) or ``"bernoulli"`` (the model decodes logits;
        targets in ``[0, 1]``, e.g. images scaled to [0, 1]).
      decoder_std: the Gaussian decoder's standard deviation, shared by all dimensions
        (with ``learn_decoder_std``, its initial value). A fixed std trades
        reconstruction against KL exactly as ``beta`` does (``beta * std^2`` is what
        counts for the optimum).
      learn_decoder_std: learn the Gaussian std as one scalar,
        ``decoder_std * exp(model.decoder_log_scale)`` (the sigma-VAE of Rybkin et al.
        2021, arXiv 2006.13202: the reconstruction/KL balance is then calibrated by the
        data instead of tuned). The model must own ``decoder_log_scale``.
      max_grad_norm: global-norm gradient clipping (None: none).

    Example:
      >>> VAEConfig(beta=4.0, kl_schedule="cyclical", kl_cycle_steps=500).kl_cycle_ratio
      0.5
      >>> VAEConfig(decoder="poisson")
      Traceback (most recent call last):
      ...
      ValueError: unknown `decoder` 'poisson'; expected one of 'gaussian', 'bernoulli'
    """

    beta: float = 1.0
    kl_schedule: str = _checks.option("constant", KL_SCHEDULES)
    kl_warmup_steps: int = 1000
    kl_sigmoid_steepness: float = 10.0
    kl_cycle_steps: int = 1000
    kl_cycle_ratio: float = 0.5
    kl_num_cycles: int | None = None
    free_bits: float = 0.0
    decoder: str = _checks.option("gaussian", DECODERS)
    decoder_std: float = 1.0
    learn_decoder_std: bool = False
    max_grad_norm: float | None = None

    def __post_init__(self):
        _checks.check_options(self)
        _checks.check_range(self.beta, "beta", 0.0)
        _checks.check_positive_int(self.kl_warmup_steps, "kl_warmup_steps")
        _checks.check_range(self.kl_sigmoid_steepness, "kl_sigmoid_steepness", 0.0, low_open=True)
        _checks.check_positive_int(self.kl_cycle_steps, "kl_cycle_steps")
        _checks.check_range(self.kl_cycle_ratio, "kl_cycle_ratio", 0.0, 1.0, low_open=True)
        if self.kl_num_cycles is not None:
            _checks.check_positive_int(self.kl_num_cycles, "kl_num_cycles")
        _checks.check_range(self.free_bits, "free_bits", 0.0)
        _checks.check_range(self.decoder_std, "decoder_std", 0.0, low_open=True)
        _checks.check_bool(self.learn_decoder_std, "learn_decoder_std")
        if self.learn_decoder_std and self.decoder != "gaussian":
            raise ValueError(
                "`learn_decoder_std`=True needs decoder='gaussian' (a Bernoulli decoder has no "
                f"std), got decoder={self.decoder!r}"
            )
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)


# ---------------------------------------------------------------------------- the parts


def gaussian_kl(mean, log_var, *, per_dimension: bool = False):
    """``KL(N(mean, diag(exp(log_var))) || N(0, I))`` per example, in closed form.

    Per dimension, ``KL_j = (exp(log_var_j) + mean_j^2 - 1 - log_var_j) / 2 >= 0``
    (Kingma and Welling 2014, arXiv 1312.6114, appendix B); the per-example KL is the sum
    over every non-batch dimension.

    Args:
      mean: ``[B, ...]`` floating posterior means.
      log_var: the posterior log-variances, shape of ``mean``.
      per_dimension: return the ``[B, ...]`` terms ``KL_j`` instead of their sums.

    Returns:
      float32 (at least) ``[B]`` (or ``[B, ...]`` with ``per_dimension``).

    Example:
      >>> gaussian_kl(jnp.array([[0.0, 1.0]]), jnp.zeros((1, 2)))
      Array([0.5], dtype=float32)
    """
    mean = _checks.float_array(mean, "mean", min_rank=1, upcast=True, what="([B, ...])")
    log_var = _checks.float_array(log_var, "log_var", shape=mean.shape, like="mean")
    log_var = log_var.astype(mean.dtype)
    terms = 0.5 * (jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var)
    return terms if per_dimension else _sum_per_example(terms)


def free_bits_kl(kl_per_dimension, free_bits):
    """The free-bits KL term: ``sum_j max(lambda, mean_b KL_bj)`` (a scalar).

    Kingma et al. 2016 (arXiv 1606.04934, eq. 15): the KL of each latent dimension,
    averaged over the batch, is floored at ``lambda = free_bits`` nats, so a dimension
    below the floor costs a constant and gets no gradient through its KL (the optimiser
    has no reason to shut it off). With ``lambda = 0`` this is the batch mean of the
    per-example KL. The floor applies to the batch mean, not to each example.

    Args:
      kl_per_dimension: ``[B, ...]`` non-negative KL terms (`gaussian_kl` with
        ``per_dimension=True``).
      free_bits: ``lambda >= 0`` (may be traced).

    Returns:
      a float32 scalar.

    Example:
      >>> kl = jnp.array([[0.1, 2.0], [0.3, 4.0]])  # batch means 0.2 and 3.0
      >>> free_bits_kl(kl, 0.5)
      Array(3.5, dtype=float32)
    """
    kl = _checks.float_array(
        kl_per_dimension, "kl_per_dimension", min_rank=1, upcast=True, what="([B, ...])"
    )
    _checks.check_range(free_bits, "free_bits", 0.0)
    return jnp.sum(jnp.maximum(jnp.asarray(free_bits, kl.dtype), jnp.mean(kl, axis=0)))


def gaussian_log_likelihood(targets, mean, std):
    """``log N(targets; mean, std^2 I)`` per example, the normalising constant included.

        log p(x | z) = sum_d [ -(x_d - mu_d)^2 / (2 std^2) - log std - log(2 pi) / 2 ]

    summed over every non-batch dimension (a density: it can be positive).

    Args:
      targets: ``[B, ...]`` floating data.
      mean: the decoder's means, shape of ``targets``.
      std: a positive scalar (may be traced, e.g. learned) or an array broadcasting to
        ``targets``.

    Returns:
      float32 (at least) ``[B]``.

    Example:
      >>> x = jnp.zeros((1, 2))
      >>> gaussian_log_likelihood(x, x, 1.0)  # -log(2 pi)
      Array([-1.837877], dtype=float32)
    """
    targets = _checks.float_array(targets, "targets", min_rank=1, upcast=True, what="([B, ...])")
    mean = _checks.float_array(mean, "mean", shape=targets.shape, like="targets")
    if isinstance(std, (int, float)):
        _checks.check_range(std, "std", 0.0, low_open=True)
    std = jnp.asarray(std, targets.dtype)
    z = (targets - mean.astype(targets.dtype)) / std
    terms = -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * _LOG_2PI
    return _sum_per_example(jnp.broadcast_to(terms, targets.shape))


def bernoulli_log_likelihood(targets, logits):
    """``log Bernoulli(targets; sigmoid(logits))`` per example, from logits.

        log p(x | z) = sum_d [ x_d l_d - softplus(l_d) ]
                     = sum_d [ x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d) ]

    stable for any logits; summed over every non-batch dimension. Targets in ``[0, 1]``
    may be fractional (grey levels, the usual relaxation; the value is then a cross-entropy,
    not a normalised likelihood of real data, cf. Loaiza-Ganem and Cunningham 2019, arXiv
    1907.06845). The range is checked here when ``targets`` is concrete; see
    `check_unit_interval` for what happens under ``jit``.

    Args:
      targets: ``[B, ...]`` floating values in ``[0, 1]``.
      logits: the decoder's logits, shape of ``targets``.

    Returns:
      float32 (at least) ``[B]``.

    Example:
      >>> bernoulli_log_likelihood(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)))  # 2 log 1/2
      Array([-1.386294], dtype=float32)
    """
    targets = _checks.float_array(targets, "targets", min_rank=1, upcast=True, what="([B, ...])")
    logits = _checks.float_array(logits, "logits", shape=targets.shape, like="targets")
    check_unit_interval(targets, "targets")
    logits = logits.astype(targets.dtype)
    return _sum_per_example(targets * logits - jax.nn.softplus(logits))


def check_unit_interval(x, name: str = "images"):
    """Checks that Bernoulli targets lie in ``[0, 1]``; returns how many do not.

    A concrete ``x`` (a NumPy or JAX array outside ``jit``) with a value outside ``[0, 1]``
    (or NaN) raises ValueError naming ``name`` and the range found, before any work. A
    traced ``x`` (inside ``jit``) cannot be read: the count of bad values is returned as a
    traced int (no host callback is compiled in) and `vae_loss` turns the loss into NaN,
    so the update is skipped and reported in the ``skipped`` metric instead of training on
    it. (`rlgen.trainers.VAETrainer` checks each batch on the host
    before its compiled step, so the traced path is only met by a user's own ``jit``.)

    Example:
      >>> check_unit_interval(jnp.array([[0.0, 0.5, 1.0]]))
      Array(0, dtype=int32)
      >>> check_unit_interval(jnp.array([[-1.0, 1.0]]), "x")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: `x` must lie in [0, 1] for decoder='bernoulli' (...); got values in [-1, 1]
    """
    if not isinstance(x, jax.core.Tracer):
        host = np.asarray(x)
        if host.size and not (np.all(host >= 0.0) and np.all(host <= 1.0)):
            numbers = host[~np.isnan(host)]
            found = [f"values in [{numbers.min():g}, {numbers.max():g}]"] if numbers.size else []
            found += ["NaN"] if numbers.size < host.size else []
            raise ValueError(
                f"`{name}` must lie in [0, 1] for decoder='bernoulli' (scale images to "
                f"[0, 1], or use decoder='gaussian'); got {' and '.join(found)}"
            )
        return jnp.zeros((), jnp.int32)
    return jnp.sum(~((x >= 0.0) & (x <= 1.0))).astype(jnp.int32)


def reparameterize(mean, log_var, key):
    """A reparameterised draw ``z = mean + exp(log_var / 2) * eps``, ``eps ~ N(0, I)``.

    Differentiable in ``mean`` and ``log_var`` (Kingma and Welling 2014, arXiv
    1312.6114, section 2.4).

    Args:
      mean: ``[B, ...]`` floating.
      log_var: shape of ``mean``.
      key: PRNG key.

    Returns:
      ``z`` of ``mean``'s shape and dtype (at least float32).

    Example:
      >>> reparameterize(jnp.ones((2, 3)), jnp.full((2, 3), -jnp.inf), jax.random.key(0))
      Array([[1., 1., 1.],
             [1., 1., 1.]], dtype=float32)
    """
    mean = _checks.float_array(mean, "mean", min_rank=1, upcast=True)
    log_var = _checks.float_array(log_var, "log_var", shape=mean.shape, like="mean")
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * log_var.astype(mean.dtype)) * eps


def kl_weight(step, config: VAEConfig = VAEConfig()):
    """The KL annealing weight ``w(step)`` in ``[0, 1]`` (float32; `vae_loss` multiplies
    it by ``beta``).

    With ``s`` the step, ``W = kl_warmup_steps``, ``C = kl_cycle_steps``,
    ``R = kl_cycle_ratio`` and ``k = kl_sigmoid_steepness``:

    * ``constant``: ``w = 1``;
    * ``linear``: ``w = min(1, s / W)`` (Bowman et al. 2016, arXiv 1511.06349);
    * ``sigmoid``: ``w = (sigmoid(k (u - 1/2)) - sigmoid(-k/2)) / (sigmoid(k/2) -
      sigmoid(-k/2))`` with ``u = min(1, s / W)``: a logistic ramp from exactly 0 at
      ``s = 0`` through 0.5 at ``W / 2`` to exactly 1 at ``W`` (Bowman et al.'s
      logistic schedule, rescaled);
    * ``cyclical``: ``w = min(1, tau / R)`` with ``tau = (s mod C) / C`` (Fu et al. 2019,
      arXiv 1903.10145): each cycle ramps linearly from 0 over its first ``R C`` steps
      and holds 1 for the rest; after ``kl_num_cycles`` cycles (if set) ``w = 1``.

    ``step`` may be traced (it is the trainer state's step inside the compiled update):
    the schedule is built from ``jnp`` ops, so it never recompiles.

    Example:
      >>> config = VAEConfig(kl_schedule="cyclical", kl_cycle_steps=4, kl_cycle_ratio=0.5)
      >>> [float(kl_weight(s, config)) for s in range(6)]
      [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    """
    if not isinstance(config, VAEConfig):
        raise TypeError(f"`config` must be a VAEConfig, got {type(config).__name__}")
    _checks.check_scalar(step, "step")
    s = jnp.asarray(step, jnp.float32)
    if config.kl_schedule == "constant":
        return jnp.ones((), jnp.float32)
    if config.kl_schedule == "linear":
        return jnp.clip(s / config.kl_warmup_steps, 0.0, 1.0)
    if config.kl_schedule == "sigmoid":
        u = jnp.clip(s / config.kl_warmup_steps, 0.0, 1.0)
        k = config.kl_sigmoid_steepness
        low, high = jax.nn.sigmoid(-0.5 * k), jax.nn.sigmoid(0.5 * k)
        return jnp.clip((jax.nn.sigmoid(k * (u - 0.5)) - low) / (high - low), 0.0, 1.0)
    # cyclical: the position in the cycle from the integer step (exact for any step)
    cycle = config.kl_cycle_steps
    position = jnp.mod(jnp.asarray(step, jnp.int32), cycle).astype(jnp.float32)
    w = jnp.clip(position / (config.kl_cycle_ratio * cycle), 0.0, 1.0)
    if config.kl_num_cycles is not None:
        w = jnp.where(s >= config.kl_num_cycles * cycle, 1.0, w)
    return w


# ---------------------------------------------------------------------------- the model


def _encode(model, images):
    """``model.encode(images)`` -> ``(mean [B, Z], log_var [B, Z])``, checked."""
    out = model.encode(images)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "`model.encode(images)` must return (mean [B, Z], log_var [B, Z]); got "
            f"{type(out).__name__}"
        )
    mean = _checks.float_array(out[0], "model.encode(images)[0] (mean)", rank=2, what="([B, Z])")
    log_var = _checks.float_array(
        out[1], "model.encode(images)[1] (log_var)", shape=mean.shape, like="the mean"
    )
    if mean.shape[0] != images.shape[0]:
        raise ValueError(
            f"`model.encode(images)` must keep the batch of {images.shape[0]}, got mean of "
            f"shape {mean.shape}"
        )
    return mean, log_var


def _decode(model, z, shape):
    """``model.decode(z)``, checked to have ``shape`` (the images'), as float32."""
    out = _checks.float_array(model.decode(z), "model.decode(z)", upcast=True)
    _checks.check_shape(out, shape, "model.decode(z)", like="images")
    return out


def decoder_std(model, config: VAEConfig):
    """The Gaussian decoder's standard deviation: ``decoder_std``, times
    ``exp(model.decoder_log_scale)`` when learned (a float32 scalar).

    Example:
      >>> float(decoder_std(None, VAEConfig(decoder_std=0.5)))
      0.5
    """
    std = jnp.asarray(config.decoder_std, jnp.float32)
    if not config.learn_decoder_std:
        return std
    scale = getattr(model, "decoder_log_scale", None)
    if scale is None:
        raise TypeError(
            f"`learn_decoder_std`=True needs a model with a scalar `decoder_log_scale` "
            f"parameter (e.g. MLPVAE(..., learn_std=True)); {type(model).__name__} has none"
        )
    scale = jnp.asarray(scale, jnp.float32)
    if scale.shape != ():
        raise ValueError(f"`model.decoder_log_scale` must be a scalar, got shape {scale.shape}")
    return std * jnp.exp(scale)


def log_likelihood(model, images, decoded, config: VAEConfig = VAEConfig()):
    """``log p(images | z)`` per example ``[B]`` from the decoder's output ``decoded``: the
    Gaussian mean (`gaussian_log_likelihood` with `decoder_std`) or the Bernoulli logits
    (`bernoulli_log_likelihood`), as ``config.decoder`` says.

    Example:
      >>> x = jnp.array([[1.0, 0.0]])
      >>> log_likelihood(None, x, jnp.zeros((1, 2)), VAEConfig(decoder="bernoulli"))
      Array([-1.386294], dtype=float32)
    """
    if config.decoder == "bernoulli":
        return bernoulli_log_likelihood(images, decoded)
    return gaussian_log_likelihood(images, decoded, decoder_std(model, config))


def _check_images(images, name: str, *, unit_interval: bool = False):
    """``images`` as a floating ``[B, ...]`` array (at least float32), and with
    ``unit_interval`` the count of values outside [0, 1] (`check_unit_interval`; None
    without)."""
    images = _checks.float_array(images, name, min_rank=2, what="([B, ...], a batch of images)")
    n_bad = check_unit_interval(images, name) if unit_interval else None
    return images.astype(jnp.promote_types(images.dtype, jnp.float32)), n_bad


def _batch_images(batch, config: VAEConfig):
    if not isinstance(batch, Mapping) or set(batch) != {"images"}:
        got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"the VAE batch must be {{'images': [B, ...] float}}, got keys {got}")
    bernoulli = config.decoder == "bernoulli"
    return _check_images(batch["images"], "batch['images']", unit_interval=bernoulli)


def check_batch(batch, config: VAEConfig = VAEConfig()):
    """Validates a VAE batch ``{"images": [B, ...] float}`` (ValueError/TypeError naming it);
    with the Bernoulli decoder, concrete images must lie in ``[0, 1]``.

    `rlgen.trainers.VAETrainer` calls it on the host before each compiled step.

    Example:
      >>> check_batch({"images": jnp.zeros((2, 4), jnp.int32)})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      TypeError: `batch['images']` must have a floating dtype (e.g. float32), got shape (2, 4) ...
    """
    _batch_images(batch, config)


# ---------------------------------------------------------------------------- the loss


def vae_loss(model, batch, key, step, config: VAEConfig = VAEConfig()):
    """The VAE training loss: the negative ELBO with ``beta``, KL annealing and free bits.

    For images ``x_b`` (``b = 1..B``), ``(mu_b, log_var_b) = encode(x_b)``, one draw
    ``z_b = mu_b + exp(log_var_b / 2) eps_b`` and the decoder's ``p(x | z_b)``:

        loss = -(1/B) sum_b log p(x_b | z_b)
               + beta * w(step) * sum_j max(free_bits, (1/B) sum_b KL_bj)

    with ``KL_bj`` the closed-form Gaussian KL of latent dimension ``j`` (`gaussian_kl`)
    and ``w`` the annealing schedule (`kl_weight`). With ``beta = w = 1`` and no free
    bits, ``loss = -(1/B) sum_b ELBO(x_b)``. Log-likelihoods and KLs are sums over every
    non-batch dimension (nats per example).

    Args:
      model: the VAE (module docstring: ``encode``, ``decode``, ``latent_dim``).
      batch: ``{"images": [B, ...] float}`` in the model's input shape (``[0, 1]`` for the
        Bernoulli decoder).
      key: PRNG key for the reparameterised draw.
      step: the update count (may be traced), for the schedule.
      config: a `VAEConfig`.

    Returns:
      ``(loss, metrics)`` with metrics `METRICS` (batch means, no gradient):
      ``reconstruction_loss`` ``-log p(x | z)``, ``kl`` (the unfloored KL),
      ``kl_weight`` (``beta * w(step)``, the KL's multiplier), ``elbo`` (the true,
      unweighted single-sample ELBO), ``active_units`` (latent dimensions whose posterior
      mean varies over the batch by more than `ACTIVE_UNIT_THRESHOLD`, Burda et al. 2016)
      and ``decoder_std`` (the Gaussian std; 0 for Bernoulli). Under ``jit``, Bernoulli
      targets outside ``[0, 1]`` make the loss NaN (`check_unit_interval`).

    Example:
      >>> from flax import nnx
      >>> from rlgen.models.vae import MLPVAE
      >>> model = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> batch = {"images": jnp.ones((3, 4))}
      >>> loss, metrics = vae_loss(model, batch, jax.random.key(0), 0)
      >>> bool(jnp.isclose(loss, -metrics["elbo"]))
      True
    """
    if not isinstance(config, VAEConfig):
        raise TypeError(f"`config` must be a VAEConfig, got {type(config).__name__}")
    images, n_bad = _batch_images(batch, config)
    mean, log_var = _encode(model, images)
    z = reparameterize(mean, log_var, key)
    decoded = _decode(model, z, images.shape)
    log_px = log_likelihood(model, images, decoded, config)
    kl_dims = gaussian_kl(mean, log_var, per_dimension=True)
    kl = jnp.sum(kl_dims, axis=1)
    weight = config.beta * kl_weight(step, config)
    loss = -jnp.mean(log_px) + weight * free_bits_kl(kl_dims, config.free_bits)
    if n_bad is not None:
        loss = jnp.where(n_bad > 0, jnp.nan, loss)
    std = decoder_std(model, config) if config.decoder == "gaussian" else jnp.zeros(())
    metrics = {
        "reconstruction_loss": -jnp.mean(log_px),
        "kl": jnp.mean(kl),
        "kl_weight": jnp.asarray(weight, jnp.float32),
        "elbo": jnp.mean(log_px - kl),
        "active_units": jnp.sum(jnp.var(mean, axis=0) > ACTIVE_UNIT_THRESHOLD).astype(jnp.float32),
        "decoder_std": std,
    }
    return loss, jax.lax.stop_gradient(metrics)


# ---------------------------------------------------------------------------- evaluation


def elbo(model, images, key, num_samples: int = 1, config: VAEConfig = VAEConfig()):
    """The ELBO of each image, ``log p(x | z) - KL(q(z | x) || p(z))`` (nats per example).

    The expectation over ``q(z | x)`` is estimated with ``num_samples`` reparameterised
    draws per image (their mean; the KL is exact); no ``beta``, annealing or free bits:
    this is the bound on ``log p(x)`` to report on held-out data (Kingma and Welling
    2014, arXiv 1312.6114).

    Args:
      model: the VAE.
      images: ``[B, ...]`` float in the model's input shape.
      key: PRNG key.
      num_samples: draws per image (a static int >= 1).
      config: the `VAEConfig` (its ``decoder`` and ``decoder_std``).

    Returns:
      float32 ``[B]``. With the Bernoulli decoder, images outside ``[0, 1]`` are a
      ValueError when concrete and give NaN under ``jit`` (`check_unit_interval`).

    Example:
      >>> from flax import nnx
      >>> from rlgen.models.vae import MLPVAE
      >>> model = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> elbo(model, jnp.ones((3, 4)), jax.random.key(0), num_samples=5).shape
      (3,)
    """
    if not isinstance(config, VAEConfig):
        raise TypeError(f"`config` must be a VAEConfig, got {type(config).__name__}")
    num_samples = _checks.check_positive_int(num_samples, "num_samples")
    images, n_bad = _check_images(images, "images", unit_interval=config.decoder == "bernoulli")
    mean, log_var = _encode(model, images)
    kl = gaussian_kl(mean, log_var)

    def one(k):
        z = reparameterize(mean, log_var, k)
        return log_likelihood(model, images, _decode(model, z, images.shape), config)

    log_px = jnp.mean(jax.vmap(one)(jax.random.split(key, num_samples)), axis=0)
    out = log_px - kl
    return out if n_bad is None else jnp.where(n_bad > 0, jnp.nan, out)


def decoder_mean(decoded, config: VAEConfig = VAEConfig()):
    """The decoder's mean from its output: the Gaussian mean itself, or the Bernoulli
    probabilities ``sigmoid(logits)``.

    Example:
      >>> decoder_mean(jnp.zeros((1, 2)), VAEConfig(decoder="bernoulli"))
      Array([[0.5, 0.5]], dtype=float32)
    """
    return jax.nn.sigmoid(decoded) if config.decoder == "bernoulli" else decoded


def reconstruct(model, images, key=None, config: VAEConfig = VAEConfig()):
    """Reconstructions ``E[x | z]`` of ``images``: ``z`` the posterior mean (``key`` None,
    deterministic) or a draw from ``q(z | x)`` (with ``key``).

    Returns the decoder's mean in the images' shape: the Gaussian mean, or the Bernoulli
    probabilities in ``[0, 1]``.

    Example:
      >>> from flax import nnx
      >>> from rlgen.models.vae import MLPVAE
      >>> model = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> x = jnp.ones((3, 4))
      >>> bool(jnp.all(reconstruct(model, x) == reconstruct(model, x)))
      True
    """
    images, _ = _check_images(images, "images")
    mean, log_var = _encode(model, images)
    z = mean if key is None else reparameterize(mean, log_var, key)
    return decoder_mean(_decode(model, z, images.shape), config)


def sample_prior(model, num_samples: int, key, config: VAEConfig = VAEConfig()):
    """Samples from the model: ``z ~ N(0, I)`` of ``[num_samples, model.latent_dim]``,
    decoded to the decoder's mean (Gaussian mean, or Bernoulli probabilities in [0, 1];
    no pixel noise is added, as is usual for showing samples).

    Example:
      >>> from flax import nnx
      >>> from rlgen.models.vae import MLPVAE
      >>> model = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> cfg = VAEConfig(decoder="bernoulli")
      >>> x = sample_prior(model, 5, jax.random.key(0), cfg)
      >>> x.shape, bool(jnp.all((x >= 0) & (x <= 1)))
      ((5, 4), True)
    """
    num_samples = _checks.check_positive_int(num_samples, "num_samples")
    latent_dim = getattr(model, "latent_dim", None)
    if latent_dim is None:
        raise TypeError(f"{type(model).__name__} has no `latent_dim` (the prior's size)")
    z = jax.random.normal(key, (num_samples, latent_dim), jnp.float32)
    decoded = _checks.float_array(model.decode(z), "model.decode(z)", upcast=True)
    return decoder_mean(decoded, config)


def _sum_per_example(x):
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)
