"""Small MLP policies over flat observations (CartPole-sized problems).

Both networks are tanh MLPs with scaled normal initialisation in the manner of PPO's
reference implementations (Engstrom et al. 2020, "Implementation Matters in Deep Policy
Gradients", arXiv 2005.12729; Andrychowicz et al. 2021, arXiv 2006.05990): a kernel of
shape `[fan_in, fan_out]` is `N(0, gain^2 / fan_in)` with `gain = sqrt(2)` for hidden
layers, `0.01` for the logits (the first policy is near uniform) and `1` for the value;
biases are zero. (Scaled normal rather than orthogonal: jaxlib's CPU QR has hung under
`vmap` on small machines.)

    h_0 = obs,   h_{i+1} = tanh(W_i h_i + b_i),   logits = W_out h_n + b_out

Observations are float `[B, obs_dim]` or `[B, T, obs_dim]` (PPO's trajectories); the
layers run on them flattened to `[N, obs_dim]` (a 2-D matrix product is the fast path on
XLA:CPU) and the outputs get the leading axes back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks

__all__ = ["MLPActorCritic", "MLPPolicy"]


def _scaled_normal(gain: float):
    return nnx.initializers.variance_scaling(gain**2, "fan_in", "normal")


def _check_sizes(obs_dim, num_actions, hidden) -> tuple[int, ...]:
    _checks.check_positive_int(obs_dim, "obs_dim")
    _checks.check_positive_int(num_actions, "num_actions")
    if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
        raise TypeError(
            f"`hidden` must be a sequence of layer widths, e.g. (64, 64), got {hidden!r}"
        )
    return tuple(_checks.check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))


class _TanhMLP(nnx.Module):
    """`[N, in]` -> `[N, out]`: tanh hidden layers, a linear output layer."""

    def __init__(self, sizes: Sequence[int], out_gain: float, *, rngs: nnx.Rngs):
        hidden = _scaled_normal(math.sqrt(2.0))
        self.layers = nnx.List(
            [
                nnx.Linear(
                    m,
                    n,
                    kernel_init=hidden if i < len(sizes) - 2 else _scaled_normal(out_gain),
                    rngs=rngs,
                )
                for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
            ]
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


def _flatten_observations(observations, obs_dim: int):
    obs = _checks.as_array(observations, "observations")
    _checks.check_float(obs, "observations")
    _checks.check_rank(obs, (2, 3), "observations", "([B, obs_dim] or [B, T, obs_dim])")
    if obs.shape[-1] != obs_dim:
        raise ValueError(
            f"`observations` must have obs_dim={obs_dim} features on the last axis, got "
            f"shape {tuple(obs.shape)}"
        )
    return obs.reshape(-1, obs_dim), obs.shape[:-1]


class MLPPolicy(nnx.Module):
    """A categorical policy: a tanh MLP from observations to action logits.

    Args:
      obs_dim: observation features.
      num_actions: discrete actions `A`.
      hidden: widths of the hidden layers.
      rngs: `nnx.Rngs` for the initialisation (module docstring).

    Example:
      >>> policy = MLPPolicy(4, 3, hidden=(16,), rngs=nnx.Rngs(0))
      >>> policy(jnp.zeros((15, 4))).shape
      (15, 3)
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        *,
        hidden: Sequence[int] = (64, 64),
        rngs: nnx.Rngs,
    ):
        hidden = _check_sizes(obs_dim, num_actions, hidden)
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.net = _TanhMLP((obs_dim, *hidden, num_actions), 0.01, rngs=rngs)

    def __call__(self, observations):
        """Float `[B, obs_dim]` (or `[B, T, obs_dim]`) -> logits `[B, A]` (`[B, T, A]`).

        Example:
          >>> MLPPolicy(4, 3, hidden=(16,), rngs=nnx.Rngs(0))(jnp.ones((15, 4))).shape
          (15, 3)
        """
        x, lead = _flatten_observations(observations, self.obs_dim)
        return self.net(x).reshape(*lead, self.num_actions)

    def sample(self, observations, key):
        """Actions drawn from `softmax(logits)`: int32 `[B]` (or `[B, T]`) in `[0, A)`.

        Example:
          >>> policy = MLPPolicy(4, 3, hidden=(16,), rngs=nnx.Rngs(0))
          >>> policy.sample(jnp.ones((15, 4)), jax.random.key(0)).dtype
          dtype('int32')
        """
        return jax.random.categorical(key, self(observations), axis=-1).astype(jnp.int32)


class MLPActorCritic(nnx.Module):
    """Separate tanh MLPs (no shared torso) for the action logits and the state value.

    Separate torsos keep the value loss from pulling on the policy's features, the
    usual choice for small PPO problems such as CartPole.

    Args:
      obs_dim: observation features.
      num_actions: discrete actions `A`.
      hidden: widths of the hidden layers of each network.
      rngs: `nnx.Rngs` for the initialisation (module docstring).

    Example:
      >>> ac = MLPActorCritic(4, 3, hidden=(16,), rngs=nnx.Rngs(0))
      >>> logits, values = ac(jnp.zeros((3, 5, 4)))
      >>> logits.shape, values.shape
      ((3, 5, 3), (3, 5))
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        *,
        hidden: Sequence[int] = (64, 64),
        rngs: nnx.Rngs,
    ):
        hidden = _check_sizes(obs_dim, num_actions, hidden)
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.actor = _TanhMLP((obs_dim, *hidden, num_actions), 0.01, rngs=rngs)
        self.critic = _TanhMLP((obs_dim, *hidden, 1), 1.0, rngs=rngs)

    def __call__(self, observations):
        """Float `[B, obs_dim]` or `[B, T, obs_dim]` -> `(logits [..., A], values [...])`.

        Example:
          >>> ac = MLPActorCritic(4, 3, hidden=(16,), rngs=nnx.Rngs(0))
          >>> [x.shape for x in ac(jnp.ones((15, 4)))]
          [(15, 3), (15,)]
        """
        x, lead = _flatten_observations(observations, self.obs_dim)
        logits = self.actor(x).reshape(*lead, self.num_actions)
        return logits, self.critic(x).reshape(lead)

    def sample(self, observations, key):
        """Actions drawn from the actor: int32 `[B]` (or `[B, T]`) in `[0, A)`.

        Example:
          >>> ac = MLPActorCritic(4, 3, hidden=(16,), rngs=nnx.Rngs(0))
          >>> ac.sample(jnp.ones((3, 5, 4)), jax.random.key(1)).shape
          (3, 5)
        """
        x, lead = _flatten_observations(observations, self.obs_dim)
        logits = self.actor(x).reshape(*lead, self.num_actions)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
