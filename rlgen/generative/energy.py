"""Energy-based models: Langevin (SGLD) sampling, contrastive divergence and a persistent
replay buffer of negatives, as pure functions.

An energy-based model defines ``p_theta(x) = exp(-E_theta(x)) / Z(theta)``. The gradient of
the negative log-likelihood is

    grad_theta NLL(x+) = grad_theta E(x+) - E_{x- ~ p_theta}[grad_theta E(x-)],

so training lowers the energy of data ``x+`` and raises the energy of negatives ``x-``
drawn from the model by Langevin dynamics (Hinton 2002's contrastive divergence). The
negatives come from short chains started from a persistent replay buffer of earlier
chains' final states (with a small share restarted from uniform noise), as in Du and
Mordatch 2019 ("Implicit Generation and Generalization in Energy-Based Models", arXiv
1903.08689) and Grathwohl et al. 2019 (JEM, "Your Classifier is Secretly an
Energy-Based Model", arXiv 1912.03263). The chains are constants of the loss: no
gradient reaches the parameters through them.

The pieces, each a pure function (jit, vmap over seeds and lax.scan them):

* `langevin_sample`: ``steps`` SGLD steps on ``energy_fn`` (a `lax.scan`);
* `contrastive_divergence_loss`: ``mean E(x+) - mean E(x-)`` plus the energy-magnitude
  regulariser ``alpha (mean E(x+)^2 + mean E(x-)^2)`` (Du and Mordatch 2019);
* the replay buffer: `buffer_init`, `buffer_sample` (indices and starting points, with
  restarts), `buffer_write`;
* `persistent_negatives` (buffer -> SGLD, what a training step draws) and
  `sample_from_noise` (fresh chains from uniform noise).

`EnergyConfig` holds the settings; `rlgen.algorithms.energy` puts them together into one
compiled training step with the buffer in the algorithm's state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rlgen import _checks

#: The metrics `contrastive_divergence_loss` returns besides the loss.
METRICS = ("cd_loss", "energy_pos", "energy_neg", "energy_reg")


@dataclasses.dataclass(frozen=True)
class EnergyConfig:
    """Settings of energy-based training (`rlgen.algorithms.energy`, `EnergyTrainer`).

    Attributes:
      sgld_steps: Langevin steps per training step (short-run chains continued from the
        buffer; JEM uses 20).
      step_size: ``eta``, the gradient step of `langevin_sample`.
      noise_scale: ``sigma``, the standard deviation of the Gaussian noise added at each
        step. Decoupled from ``step_size`` as in Du and Mordatch 2019 and JEM (JEM:
        ``eta = 1``, ``sigma = 0.01``); ``sigma = sqrt(2 eta)`` is proper (unadjusted)
        Langevin dynamics, which samples ``exp(-E)`` as ``eta -> 0``.
      buffer_size: chains kept in the persistent replay buffer.
      reinit_prob: the share of a step's chains restarted from uniform noise on
        ``[init_low, init_high]`` instead of continued from the buffer (JEM: 0.05).
      alpha: weight of the energy-magnitude regulariser
        ``alpha (mean E(x+)^2 + mean E(x-)^2)`` (Du and Mordatch 2019; 0: none).
      init_low: lower bound of the data: uniform restarts start in
        ``[init_low, init_high]``, and with ``clip`` the chains stay there.
      init_high: upper bound of the data (must exceed ``init_low``).
      clip: clip the chains to ``[init_low, init_high]`` after every step.
      max_grad_norm: global-norm clipping of the parameter gradients (None: none).

    Example:
      >>> config = EnergyConfig(sgld_steps=60, step_size=10.0, noise_scale=0.005)  # Du & M.
      >>> config.bounds
      (-1.0, 1.0)
      >>> EnergyConfig(reinit_prob=1.5)
      Traceback (most recent call last):
      ...
      ValueError: `reinit_prob` must lie in [0, 1], got 1.5
    """

    sgld_steps: int = 20
    step_size: float = 1.0
    noise_scale: float = 0.01
    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    alpha: float = 0.1
    init_low: float = -1.0
    init_high: float = 1.0
    clip: bool = True
    max_grad_norm: float | None = None

    def __post_init__(self):
        _checks.check_positive_int(self.sgld_steps, "sgld_steps")
        _checks.check_range(self.step_size, "step_size", 0.0, low_open=True)
        _checks.check_range(self.noise_scale, "noise_scale", 0.0)
        _checks.check_positive_int(self.buffer_size, "buffer_size")
        _checks.check_range(self.reinit_prob, "reinit_prob", 0.0, 1.0)
        _checks.check_range(self.alpha, "alpha", 0.0)
        for name in ("init_low", "init_high"):
            _checks.check_scalar(getattr(self, name), name)
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}` must be finite, got {getattr(self, name)}")
        _checks.check_range(self.init_high, "init_high", self.init_low, low_open=True)
        _checks.check_bool(self.clip, "clip")
        if self.max_grad_norm is not None:
            _checks.check_range(self.max_grad_norm, "max_grad_norm", 0.0, low_open=True)

    @property
    def bounds(self) -> tuple[float, float] | None:
        """``(init_low, init_high)`` where the chains are clipped, else None."""
        return (self.init_low, self.init_high) if self.clip else None


# ----------------------------------------------------------------------------------------
# Langevin dynamics
# ----------------------------------------------------------------------------------------


def _check_energies(e, x, name="energy_fn"):
    """Raises unless ``e = energy_fn(x)`` (an array or a shape struct) is ``[B]`` floating."""
    if tuple(e.shape) != tuple(x.shape[:1]):
        raise ValueError(
            f"`{name}` must return one energy per example, shape {x.shape[:1]} for x of "
            f"shape {tuple(x.shape)}; got shape {tuple(e.shape)}"
        )
    if not jnp.issubdtype(e.dtype, jnp.floating):
        raise TypeError(f"`{name}` must return floating energies, got dtype {e.dtype}")


def _energies(energy_fn, x, name="energy_fn"):
    """``energy_fn(x)`` checked to be ``[B]`` floating, in float32 or wider."""
    e = _checks.as_array(energy_fn(x), f"{name}(x)")
    _check_energies(e, x, name)
    return e.astype(jnp.promote_types(e.dtype, jnp.float32))


def _check_clip(clip):
    if clip is None:
        return None
    if not (isinstance(clip, tuple) and len(clip) == 2):
        raise TypeError(f"`clip` must be None or a (low, high) tuple, got {clip!r}")
    low, high = clip
    _checks.check_range(low, "clip[0]")
    _checks.check_range(high, "clip[1]", _checks.concrete_value(low), low_open=True)
    return clip


def langevin_sample(
    energy_fn: Callable[[jax.Array], jax.Array],
    x0,
    key,
    *,
    steps: int,
    step_size,
    noise_scale,
    clip: tuple[float, float] | None = None,
    return_trajectory: bool = False,
):
    """``steps`` steps of stochastic gradient Langevin dynamics (SGLD) on ``energy_fn``.

    Each step, with ``eta = step_size``, ``sigma = noise_scale`` and ``eps_k ~ N(0, I)``:

        x_{k+1} = clip(x_k - eta * grad_x E(x_k) + sigma * eps_k, low, high)

    (no clipping when ``clip`` is None). The noise of step ``k`` is
    ``jax.random.normal(jax.random.split(key, steps)[k], x0.shape, x0.dtype)``. Step size
    and noise are decoupled as in Du and Mordatch 2019 (arXiv 1903.08689) and JEM
    (Grathwohl et al. 2019, arXiv 1912.03263); with ``sigma = sqrt(2 eta)`` and no
    clipping this is the unadjusted Langevin algorithm (Roberts and Tweedie 1996), whose
    chains sample ``p(x) ~ exp(-E(x))`` as ``eta -> 0`` (for a Gaussian energy of variance
    ``s^2``, the stationary variance is ``s^2 / (1 - eta / (2 s^2))``).
    ``grad_x E`` is the gradient of ``sum_i E(x_i)``, i.e. each example's own gradient
    when examples do not interact.

    The result is wrapped in `jax.lax.stop_gradient`: it is a constant of any loss, so no
    gradient reaches the energy's parameters (or ``x0``) through the chain.

    Args:
      energy_fn: ``x [B, ...] -> [B]`` floating energies (lower is more likely).
      x0: ``[B, ...]`` floating starting points.
      key: PRNG key.
      steps: number of steps, a static Python int >= 0.
      step_size: ``eta > 0`` (may be traced).
      noise_scale: ``sigma >= 0`` (may be traced).
      clip: ``(low, high)`` to clip each step's result to, or None.
      return_trajectory: also return every step's state.

    Returns:
      ``x_steps`` ``[B, ...]`` (dtype of ``x0``), and with ``return_trajectory`` the pair
      ``(x_steps, trajectory)`` with ``trajectory`` ``[steps, B, ...]`` the states after
      each step (``trajectory[-1] == x_steps``).

    Example:
      >>> energy = lambda x: 0.5 * jnp.sum(x**2, axis=-1)  # a standard Gaussian
      >>> x = langevin_sample(energy, jnp.full((2, 3), 4.0), jax.random.key(0),
      ...                     steps=50, step_size=0.1, noise_scale=0.0)
      >>> bool(jnp.all(jnp.abs(x) < 0.1)), x.shape
      (True, (2, 3))
    """
    if not callable(energy_fn):
        raise TypeError(f"`energy_fn` must be callable, got {type(energy_fn).__name__}")
    x0 = _checks.float_array(x0, "x0", min_rank=1, what="([B, ...] starting points)")
    steps = _checks.check_int(steps, "steps", low=0, what="a Python int (the number of steps)")
    _checks.check_range(step_size, "step_size", 0.0, low_open=True)
    _checks.check_range(noise_scale, "noise_scale", 0.0)
    clip = _check_clip(clip)
    _checks.check_bool(return_trajectory, "return_trajectory")
    _check_energies(jax.eval_shape(energy_fn, x0), x0)  # before any work, computing nothing

    grad_fn = jax.grad(lambda x: jnp.sum(_energies(energy_fn, x)))

    def step(x, k):
        eps = jax.random.normal(k, x.shape, x.dtype)
        x = x - step_size * grad_fn(x).astype(x.dtype) + noise_scale * eps
        if clip is not None:
            x = jnp.clip(x, clip[0], clip[1])
        x = x.astype(x0.dtype)
        return x, (x if return_trajectory else None)

    keys = jax.random.split(key, steps)
    x, trajectory = jax.lax.scan(step, x0, keys)
    x = jax.lax.stop_gradient(x)
    if return_trajectory:
        return x, jax.lax.stop_gradient(trajectory)
    return x


# ----------------------------------------------------------------------------------------
# Contrastive divergence
# ----------------------------------------------------------------------------------------


def contrastive_divergence_loss(energy_fn, positives, negatives, *, alpha=0.0):
    """Contrastive divergence with an energy-magnitude regulariser.

    With ``E+ = E(x+)`` on the data and ``E- = E(x-)`` on the model's negatives:

        loss = mean E+ - mean E-  +  alpha * (mean E+^2 + mean E-^2)

    (Hinton 2002; the regulariser is Du and Mordatch 2019, arXiv 1903.08689). The
    negatives pass through `jax.lax.stop_gradient`, so
    ``grad_theta loss = mean grad E+ - mean grad E-`` with ``x-`` held fixed (plus the
    regulariser's gradient): the maximum-likelihood gradient estimate. Both sets go
    through ``energy_fn`` in one call (concatenated along the batch axis).

    Args:
      energy_fn: ``x [N, ...] -> [N]`` floating energies.
      positives: ``[B, ...]`` floating data.
      negatives: ``[M, ...]`` floating negatives, same trailing shape.
      alpha: the regulariser's weight, >= 0 (may be traced).

    Returns:
      ``(loss, metrics)`` with metrics `METRICS`: ``cd_loss`` (``mean E+ - mean E-``),
      ``energy_pos``, ``energy_neg`` (the means) and ``energy_reg``
      (``mean E+^2 + mean E-^2``, before the weight ``alpha``), all 0-d float32.

    Example:
      >>> energy = lambda x: jnp.sum(x, axis=-1)
      >>> loss, m = contrastive_divergence_loss(energy, jnp.zeros((2, 3)),
      ...                                       jnp.ones((4, 3)), alpha=0.5)
      >>> float(m["cd_loss"]), float(m["energy_reg"]), float(loss)
      (-3.0, 9.0, 1.5)
    """
    positives = _checks.float_array(positives, "positives", min_rank=1)
    negatives = _checks.float_array(negatives, "negatives", min_rank=1)
    if positives.shape[1:] != negatives.shape[1:]:
        raise ValueError(
            f"`negatives` must have the trailing shape of `positives` {positives.shape[1:]}, "
            f"got shape {tuple(negatives.shape)}"
        )
    _checks.check_range(alpha, "alpha", 0.0)
    negatives = jax.lax.stop_gradient(negatives.astype(positives.dtype))
    n = positives.shape[0]
    energies = _energies(energy_fn, jnp.concatenate([positives, negatives], axis=0))
    e_pos, e_neg = energies[:n], energies[n:]
    cd = jnp.mean(e_pos) - jnp.mean(e_neg)
    reg = jnp.mean(e_pos**2) + jnp.mean(e_neg**2)
    metrics = {
        "cd_loss": cd,
        "energy_pos": jnp.mean(e_pos),
        "energy_neg": jnp.mean(e_neg),
        "energy_reg": reg,
    }
    metrics = jax.tree.map(lambda v: jax.lax.stop_gradient(v).astype(jnp.float32), metrics)
    return cd + alpha * reg, metrics


# ----------------------------------------------------------------------------------------
# The persistent replay buffer
# ----------------------------------------------------------------------------------------


def _check_bounds(low, high):
    _checks.check_range(low, "low")
    _checks.check_range(high, "high", _checks.concrete_value(low), low_open=True)


def buffer_init(key, size: int, shape, *, low=-1.0, high=1.0, dtype=jnp.float32):
    """A replay buffer of ``size`` chains drawn uniformly on ``[low, high)``.

    Args:
      key: PRNG key.
      size: number of chains, a static int >= 1.
      shape: one example's shape (a tuple of static ints, e.g. ``(64,)``).
      low: lower bound of the uniform draw.
      high: upper bound (> ``low``).
      dtype: floating dtype of the buffer.

    Returns:
      ``[size, *shape]`` array of ``dtype``.

    Example:
      >>> buffer = buffer_init(jax.random.key(0), 5, (2,))
      >>> buffer.shape, bool(jnp.all(jnp.abs(buffer) <= 1.0))
      ((5, 2), True)
    """
    size = _checks.check_positive_int(size, "size")
    shape = _checks.check_shape_tuple(shape, "shape")
    _check_bounds(low, high)
    return jax.random.uniform(key, (size, *shape), dtype, minval=low, maxval=high)


def buffer_sample(buffer, key, batch_size: int, *, reinit_prob, low=-1.0, high=1.0):
    """Starting points for ``batch_size`` chains: buffer entries, some restarted from noise.

    ``batch_size`` distinct indices are drawn uniformly without replacement (so writing the
    chains back never writes one slot twice); each chain starts from its buffer entry, or
    with probability ``reinit_prob`` (independently per chain) from a fresh uniform draw on
    ``[low, high)`` (Du and Mordatch 2019; JEM's 5%).

    Args:
      buffer: ``[S, ...]`` floating buffer.
      key: PRNG key.
      batch_size: chains to start, a static int in ``[1, S]``.
      reinit_prob: restart probability in ``[0, 1]`` (may be traced).
      low: lower bound of the restarts.
      high: upper bound of the restarts.

    Returns:
      ``(x0, indices)``: ``[batch_size, ...]`` starting points (the buffer's dtype) and the
      ``[batch_size]`` int32 buffer slots they belong to (for `buffer_write`).

    Example:
      >>> buffer = jnp.arange(10.0)[:, None]
      >>> x0, idx = buffer_sample(buffer, jax.random.key(0), 4, reinit_prob=0.0)
      >>> bool(jnp.all(x0[:, 0] == idx)), len(set(idx.tolist()))
      (True, 4)
    """
    buffer = _checks.float_array(buffer, "buffer", min_rank=1, what="([S, ...] chains)")
    size = buffer.shape[0]
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    if batch_size > size:
        raise ValueError(
            f"`batch_size` {batch_size} exceeds the buffer's {size} chains (indices are drawn "
            "without replacement); use a larger buffer"
        )
    _checks.check_range(reinit_prob, "reinit_prob", 0.0, 1.0)
    _check_bounds(low, high)
    # One uniform draw (one random-bits program, not three): the first `size` values rank
    # the slots (the `batch_size` largest: a uniformly random subset without replacement,
    # by one top-k), the next `batch_size` are the restart coins, the rest the restarts.
    example = buffer.shape[1:]
    u = jax.random.uniform(key, (size + batch_size * (1 + math.prod(example)),))
    indices = jax.lax.top_k(u[:size], batch_size)[1].astype(jnp.int32)
    restart = (u[size : size + batch_size] < reinit_prob).reshape(
        (batch_size,) + (1,) * len(example)
    )
    noise = (low + (high - low) * u[size + batch_size :]).reshape((batch_size, *example))
    return jnp.where(restart, noise.astype(buffer.dtype), buffer[indices]), indices


def buffer_write(buffer, indices, samples):
    """``buffer`` with ``samples`` written into slots ``indices`` (``buffer.at[indices].set``).

    Args:
      buffer: ``[S, ...]`` floating buffer.
      indices: ``[B]`` integer slots (distinct, as `buffer_sample` draws them).
      samples: ``[B, ...]`` the chains' final states (cast to the buffer's dtype).

    Returns:
      The new ``[S, ...]`` buffer.

    Example:
      >>> buffer_write(jnp.zeros((3, 1)), jnp.array([2]), jnp.ones((1, 1)))[:, 0]
      Array([0., 0., 1.], dtype=float32)
    """
    buffer = _checks.float_array(buffer, "buffer", min_rank=1, what="([S, ...] chains)")
    indices = _checks.int_array(indices, "indices", rank=1, what="([B] slots)")
    samples = _checks.float_array(
        samples, "samples", shape=(indices.shape[0], *buffer.shape[1:]),
        like="[B, ...] with B = len(indices) and the buffer's example shape",
    )
    return buffer.at[indices].set(samples.astype(buffer.dtype))


# ----------------------------------------------------------------------------------------
# Negatives
# ----------------------------------------------------------------------------------------


def persistent_negatives(energy_fn, buffer, key, num_samples: int, config: EnergyConfig, *,
                         steps: int | None = None):
    """A training step's negatives: chains from the replay buffer, run with SGLD.

    `buffer_sample` (``config.reinit_prob`` of the chains restarted from uniform noise on
    ``[init_low, init_high]``), then `langevin_sample` for ``steps`` (default
    ``config.sgld_steps``) steps with ``config``'s step size, noise and clipping. Write the
    result back with ``buffer_write(buffer, indices, negatives)`` to make the chains
    persistent (Tieleman 2008's persistent contrastive divergence; Du and Mordatch 2019).

    Args:
      energy_fn: ``x [N, ...] -> [N]`` floating energies.
      buffer: ``[S, ...]`` floating buffer.
      key: PRNG key.
      num_samples: chains to run, a static int in ``[1, S]``.
      config: an `EnergyConfig`.
      steps: SGLD steps (None: ``config.sgld_steps``).

    Returns:
      ``(negatives [num_samples, ...], indices [num_samples] int32)``.

    Example:
      >>> config = EnergyConfig(sgld_steps=5, buffer_size=16)
      >>> buffer = buffer_init(jax.random.key(0), 16, (2,))
      >>> x, idx = persistent_negatives(lambda x: jnp.sum(x**2, -1), buffer,
      ...                               jax.random.key(1), 8, config)
      >>> x.shape, idx.shape
      ((8, 2), (8,))
    """
    config = _check_config(config)
    start_key, chain_key = jax.random.split(key)
    x0, indices = buffer_sample(
        buffer, start_key, num_samples, reinit_prob=config.reinit_prob,
        low=config.init_low, high=config.init_high,
    )
    x = langevin_sample(
        energy_fn, x0, chain_key, steps=config.sgld_steps if steps is None else steps,
        step_size=config.step_size, noise_scale=config.noise_scale, clip=config.bounds,
    )
    return x, indices


def sample_from_noise(energy_fn, key, num_samples: int, shape, config: EnergyConfig, *,
                      steps: int | None = None):
    """Fresh chains: uniform noise on ``[init_low, init_high]`` run with SGLD.

    Short-run sampling from noise (Nijkamp et al. 2019, arXiv 1904.09770): no buffer;
    ``steps`` (default ``config.sgld_steps``) steps of `langevin_sample` with ``config``'s
    step size, noise and clipping.

    Args:
      energy_fn: ``x [N, ...] -> [N]`` floating energies.
      key: PRNG key.
      num_samples: chains, a static int >= 1.
      shape: one example's shape (tuple of ints).
      config: an `EnergyConfig`.
      steps: SGLD steps (None: ``config.sgld_steps``).

    Returns:
      ``[num_samples, *shape]`` float32 samples.

    Example:
      >>> config = EnergyConfig(sgld_steps=100, step_size=0.1, noise_scale=0.0)
      >>> x = sample_from_noise(lambda x: jnp.sum((x - 0.5)**2, -1), jax.random.key(0),
      ...                       4, (2,), config)
      >>> bool(jnp.allclose(x, 0.5, atol=1e-3))
      True
    """
    config = _check_config(config)
    init_key, chain_key = jax.random.split(key)
    x0 = buffer_init(init_key, num_samples, shape, low=config.init_low, high=config.init_high)
    return langevin_sample(
        energy_fn, x0, chain_key, steps=config.sgld_steps if steps is None else steps,
        step_size=config.step_size, noise_scale=config.noise_scale, clip=config.bounds,
    )


def _check_config(config):
    if not isinstance(config, EnergyConfig):
        raise TypeError(f"`config` must be an EnergyConfig, got {type(config).__name__}")
    return config


def check_images(images, shape: tuple[int, ...], low: float, high: float, name="images"):
    """Validates a batch of data for an energy model; returns it as a float array.

    ``images`` must be floating ``[B, *shape]``; when its values are concrete (outside
    `jit`) they must also lie in ``[low, high]`` (the chains' bounds: data outside them
    could never be matched by the negatives, e.g. digits on their 0..16 scale instead of
    ``[-1, 1]``). Raises ValueError/TypeError naming ``name``.

    Example:
      >>> check_images(jnp.full((2, 3), 5.0), (3,), -1.0, 1.0)
      Traceback (most recent call last):
      ...
      ValueError: `images` must lie in [-1, 1] (the chains' bounds), got values in [5, 5]
    """
    x = _checks.float_array(images, name, min_rank=1, what=f"([B, *{shape}])")
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape [B, {', '.join(map(str, shape))}] (one example is "
            f"{tuple(shape)}), got shape {tuple(x.shape)} dtype {x.dtype}"
        )
    _checks.check_values_in(images, low, high, name, "the chains' bounds")
    return x
