"""Gaussian policies over continuous actions made from the built-in generative models.

A generative network becomes an RL policy once its output is a distribution: these two
wrap `rlgen.models.vae.MLPVAE`'s encoder and `rlgen.models.gan.MLPGenerator` as diagonal
Gaussians (``distrax.MultivariateNormalDiag``), whose ``log_prob(actions)`` and
``entropy()`` are ``[B]`` (one action per sample), the one-step batches of
`rlgen.algorithms.ppo` and `rlgen.algorithms.reinforce` (`rlgen.trainers.protocol`).

* `GaussianEncoderPolicy`: the VAE's amortised posterior ``q(z | x) = N(mu(x),
  diag(exp(log_var(x))))`` as a policy over latents ``z [B, Z]`` with a value head
  ``V(x) [B]`` (PPO's actor-critic): ``policy(images) -> (distribution, values)``.
* `GaussianGeneratorPolicy`: ``pi(x | noise) = N(G(noise), diag(exp(2 log_std)))`` with
  ``G`` an `MLPGenerator` and a learned per-pixel ``log_std``: ``policy(noise) ->
  distribution`` (REINFORCE).

Both start from a pretrained model's weights (`GaussianEncoderPolicy.from_vae`,
`GaussianGeneratorPolicy.from_generator`) and draw samples with ``sample(observations,
key)`` (the trainers' sampling protocol).

Sampling keys: an explicit ``key`` wins; `GaussianEncoderPolicy` also accepts the guide's
keyless ``encoder(images, return_log_prob=True)``, drawing its key from an
``nnx.Rngs`` stream it owns (``policy.sampling``, seeded from the ``rngs`` given at
construction; each keyless call advances it). Inside a trainer's compiled step the
policy is only evaluated, never sampled, so that stream stays untouched there.
"""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks
from rlgen.models.gan import MLPGenerator
from rlgen.models.vae import _MLP, MLPVAE

__all__ = ["GaussianEncoderPolicy", "GaussianGeneratorPolicy"]


def _widths(hidden, name: str) -> tuple[int, ...]:
    if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
        raise TypeError(f"`{name}` must be a sequence of layer widths, e.g. (64,), got {hidden!r}")
    return tuple(_checks.check_positive_int(h, f"{name}[{i}]") for i, h in enumerate(hidden))


def _inputs(x, dim: int, name: str, what: str) -> jax.Array:
    x = _checks.float_array(x, name, rank=2, what=what)
    if x.shape[1] != dim:
        raise ValueError(f"`{name}` must have {dim} features on its last axis, got shape "
                         f"{tuple(x.shape)}")
    return x


class GaussianEncoderPolicy(nnx.Module):
    """A VAE encoder as a Gaussian policy over latents, with a value head (for PPO).

    The encoder is `MLPVAE`'s (same layers, so `from_vae` copies a trained one):
    ``(mu, log_var) = split(encoder(x))`` and the policy is
    ``pi(z | x) = N(mu, diag(exp(log_var)))``, the VAE's ``q(z | x)`` (Kingma and Welling
    2014, arXiv 1312.6114) read as a one-step policy. The value head is a separate SiLU MLP
    ``V(x) [B]``, the critic of PPO (Schulman et al. 2017, arXiv 1707.06347).

    Calls:

    * ``policy(images) -> (distribution, values)``: a ``MultivariateNormalDiag`` with batch
      shape ``[B]`` and event ``[Z]``, and ``values [B]`` (`rlgen.trainers.PPOTrainer`'s
      protocol);
    * ``policy(images, return_log_prob=True, key=None) -> (latents [B, Z], log_probs [B])``:
      a draw and its log-probability, the reference guide's call; without ``key`` the key
      comes from the policy's own ``nnx.Rngs`` (``policy.sampling``, module doc);
    * ``sample(images, key) -> latents``, ``value(images) -> [B]``,
      ``distribution(images)``.

    Args:
      dim: the flat input size ``D`` (64 for 8x8 digits).
      latent_dim: the latent size ``Z``.
      hidden: the encoder's hidden widths (as `MLPVAE`'s ``hidden``).
      value_hidden: the value head's hidden widths.
      rngs: `nnx.Rngs` for the initialisation; it also seeds ``policy.sampling``.

    Example:
      >>> policy = GaussianEncoderPolicy(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> dist, values = policy(jnp.ones((3, 4)))
      >>> dist.log_prob(jnp.zeros((3, 2))).shape, dist.entropy().shape, values.shape
      ((3,), (3,), (3,))
      >>> latents, log_probs = policy(jnp.ones((3, 4)), return_log_prob=True)
      >>> latents.shape, log_probs.shape
      ((3, 2), (3,))
    """

    def __init__(
        self,
        dim: int,
        latent_dim: int,
        *,
        hidden: Sequence[int] = (256, 256),
        value_hidden: Sequence[int] = (64,),
        rngs: nnx.Rngs,
    ):
        self.dim = _checks.check_positive_int(dim, "dim")
        self.latent_dim = _checks.check_positive_int(latent_dim, "latent_dim")
        hidden, value_hidden = _widths(hidden, "hidden"), _widths(value_hidden, "value_hidden")
        self.encoder = _MLP((dim, *hidden, 2 * latent_dim), rngs=rngs)
        self.value_head = _MLP((dim, *value_hidden, 1), rngs=rngs)
        self.sampling = nnx.Rngs(sample=rngs.params())

    @classmethod
    def from_vae(
        cls, vae: MLPVAE, *, value_hidden: Sequence[int] = (64,), rngs: nnx.Rngs
    ) -> GaussianEncoderPolicy:
        """A policy whose encoder is a copy of ``vae``'s (the value head is new).

        Example:
          >>> vae = MLPVAE(4, 2, hidden=(8,), rngs=nnx.Rngs(0))
          >>> policy = GaussianEncoderPolicy.from_vae(vae, rngs=nnx.Rngs(1))
          >>> x = jnp.ones((3, 4))
          >>> bool(jnp.all(policy.distribution(x).mean() == vae.encode(x)[0]))
          True
        """
        if not isinstance(vae, MLPVAE):
            raise TypeError(f"`vae` must be an rlgen.models.MLPVAE, got {type(vae).__name__}")
        policy = cls(vae.dim, vae.latent_dim, hidden=vae.hidden, value_hidden=value_hidden,
                     rngs=rngs)
        nnx.update(policy.encoder, nnx.state(vae.encoder, nnx.Param))
        return policy

    def distribution(self, images) -> distrax.MultivariateNormalDiag:
        """``N(mu(x), diag(exp(log_var(x))))`` of ``images [B, dim]`` (batch ``[B]``)."""
        x = _inputs(images, self.dim, "images", "([B, dim]: flattened images)")
        mean, log_var = jnp.split(self.encoder(x), 2, axis=-1)
        return distrax.MultivariateNormalDiag(mean, jnp.exp(0.5 * log_var))

    def value(self, images) -> jax.Array:
        """The value head's ``V(x)`` ``[B]`` (float32)."""
        x = _inputs(images, self.dim, "images", "([B, dim]: flattened images)")
        return self.value_head(x)[:, 0]

    def sample(self, images, key) -> jax.Array:
        """Latents ``[B, latent_dim]`` drawn from the policy with the PRNG ``key``."""
        return self.distribution(images).sample(seed=key)

    def __call__(self, images, return_log_prob: bool = False, *, key=None):
        """``(distribution, values)``; with ``return_log_prob``: ``(latents, log_probs)``."""
        _checks.check_bool(return_log_prob, "return_log_prob")
        if not return_log_prob:
            if key is not None:
                raise ValueError("`key` is only used with return_log_prob=True (to sample)")
            return self.distribution(images), self.value(images)
        dist = self.distribution(images)
        key = self.sampling.sample() if key is None else key
        latents = dist.sample(seed=key)
        return latents, dist.log_prob(latents)


class GaussianGeneratorPolicy(nnx.Module):
    """A GAN generator as a Gaussian policy over images: ``N(G(noise), diag(std^2))``.

    ``G`` is an `MLPGenerator` (tanh outputs in ``(-1, 1)``) and ``log std`` a learned
    per-dimension parameter ``[dim]`` (initially ``init_log_std``): the generator's output
    is the policy's mean, so the REINFORCE gradient (Williams 1992) of
    ``log N(x; G(z), std^2) = -sum_d ((x_d - G_d(z))^2 / (2 std_d^2) + log std_d) - D/2
    log(2 pi)`` moves ``G(z)`` towards the draws that scored well. The draws themselves
    may leave ``(-1, 1)`` by a few ``std``.

    Calls: ``policy(noise) -> distribution`` (a ``MultivariateNormalDiag``, batch ``[B]``,
    event ``[dim]``), ``sample(noise, key) -> [B, dim]``, ``mean(noise) -> G(noise)``.
    ``latent_dim`` is the noise size.

    Args:
      latent_dim: the noise size.
      dim: the data size.
      hidden: the generator's hidden widths.
      init_log_std: the initial log standard deviation of every dimension.
      rngs: `nnx.Rngs` for the initialisation.

    Example:
      >>> policy = GaussianGeneratorPolicy(8, 64, hidden=(32,), rngs=nnx.Rngs(0))
      >>> dist = policy(jnp.zeros((5, 8)))
      >>> x = policy.sample(jnp.zeros((5, 8)), jax.random.key(0))
      >>> x.shape, dist.log_prob(x).shape, dist.entropy().shape
      ((5, 64), (5,), (5,))
    """

    def __init__(
        self,
        latent_dim: int,
        dim: int,
        *,
        hidden: Sequence[int] = (256, 256),
        init_log_std: float = -2.0,
        rngs: nnx.Rngs,
    ):
        self.generator = MLPGenerator(latent_dim, dim, hidden=hidden, rngs=rngs)
        self.latent_dim, self.dim = self.generator.latent_dim, self.generator.dim
        _checks.check_range(init_log_std, "init_log_std", -20.0, 5.0)
        self.log_std = nnx.Param(jnp.full((self.dim,), float(init_log_std), jnp.float32))

    @classmethod
    def from_generator(
        cls, generator: MLPGenerator, *, init_log_std: float = -2.0, rngs: nnx.Rngs | None = None
    ) -> GaussianGeneratorPolicy:
        """A policy whose mean network is a copy of ``generator``.

        Example:
          >>> g = MLPGenerator(8, 64, hidden=(32,), rngs=nnx.Rngs(0))
          >>> policy = GaussianGeneratorPolicy.from_generator(g, init_log_std=-3.0)
          >>> z = jnp.ones((2, 8))
          >>> bool(jnp.all(policy.mean(z) == g(z))), float(policy.log_std[0])
          (True, -3.0)
        """
        if not isinstance(generator, MLPGenerator):
            raise TypeError(
                f"`generator` must be an rlgen.models.MLPGenerator, got {type(generator).__name__}"
            )
        hidden = tuple(layer.out_features for layer in generator.layers[:-1])
        policy = cls(generator.latent_dim, generator.dim, hidden=hidden,
                     init_log_std=init_log_std, rngs=nnx.Rngs(0) if rngs is None else rngs)
        nnx.update(policy.generator, nnx.state(generator, nnx.Param))
        return policy

    def mean(self, noise) -> jax.Array:
        """``G(noise)`` ``[B, dim]``: the policy's mean (its deterministic generator)."""
        return self.generator(noise)

    def __call__(self, noise) -> distrax.MultivariateNormalDiag:
        """``N(G(noise), diag(exp(log_std))^2)`` over ``[B, dim]``."""
        mean = self.generator(noise)
        std = jnp.broadcast_to(jnp.exp(self.log_std[...]), mean.shape)
        return distrax.MultivariateNormalDiag(mean, std)

    def sample(self, noise, key) -> jax.Array:
        """Images ``[B, dim]`` drawn from the policy with the PRNG ``key``."""
        return self(noise).sample(seed=key)
