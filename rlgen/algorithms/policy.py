"""The policy protocol of the algorithms, and `TokenCategorical`, its adapter for logits.

The one place the protocol is defined:

* ``policy_fn(params, observations)`` returns a distribution over actions: any object
  with ``log_prob(actions)`` and ``entropy()`` (a ``distrax.Distribution`` qualifies),
  where ``log_prob(actions)`` has the batch shape of the actions (``[B]`` for one action
  per sample, ``[B, T]`` for token sequences) and ``entropy()`` the same shape.
* PPO's ``policy_fn`` returns ``(distribution, values)`` with ``values`` shaped like the
  log-probs.
* For sequence models, ``TokenCategorical(logits)`` wraps ``[B, T, V]`` logits as such a
  distribution with memory-light log-probs and fused entropies (`rlgen.ops`).

`evaluate_policy` calls a policy and checks what it returned. This module needs no
distribution library (``import rlgen.algorithms`` costs only JAX and optax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlgen import ops


@jax.tree_util.register_pytree_node_class
class TokenCategorical:
    """A categorical over ``[..., V]`` logits whose `log_prob` never forms a log-softmax.

    `log_prob(actions)` is `rlgen.ops.token_log_probs_memory_light` and `entropy()` the
    fused `rlgen.ops.token_entropy`, both in float32 for bfloat16 logits. The logits are
    kept raw (``.logits`` is not normalised), so no full ``[..., V]`` log-softmax is ever
    stored (in bfloat16 that would also round every log-prob). `sample` and `mode` follow
    ``distrax.Categorical``'s signatures. A pytree (the logits are its leaf).

    Example:
      >>> d = TokenCategorical(jnp.zeros((2, 3, 4)))
      >>> d.log_prob(jnp.zeros((2, 3), jnp.int32)).shape, d.entropy()[0, 0].round(4)
      ((2, 3), Array(1.3863, dtype=float32))
      >>> d.sample(seed=jax.random.key(0)).shape, d.mode().dtype
      ((2, 3), dtype('int32'))
    """

    def __init__(self, logits):
        self.logits = jnp.asarray(logits)

    def log_prob(self, value):
        """Log-probabilities of the integer ``value`` ``[...]`` (float32)."""
        return ops.token_log_probs_memory_light(self.logits, jnp.asarray(value).astype(jnp.int32))

    def entropy(self):
        """Entropy of each categorical ``[...]`` (float32)."""
        return ops.token_entropy(self.logits)

    def _float_logits(self):
        return self.logits.astype(jnp.promote_types(self.logits.dtype, jnp.float32))

    def _log_softmax(self):
        return jax.nn.log_softmax(self._float_logits())

    @property
    def probs(self):
        """``softmax(logits)`` ``[..., V]`` (float32)."""
        return jnp.exp(self._log_softmax())

    def prob(self, value):
        """Probabilities of the integer ``value`` ``[...]`` (float32)."""
        return jnp.exp(self.log_prob(value))

    def kl_divergence(self, other):
        """``KL(self || other)`` ``[...]`` to another categorical (any object with ``logits``)."""
        log_q = jax.nn.log_softmax(jnp.asarray(other.logits).astype(jnp.float32))
        return ops.kl_divergence(self._log_softmax(), log_q)

    def sample(self, *, seed, sample_shape=()):
        """Draws ``sample_shape + batch_shape`` int32 samples with the PRNG key ``seed``."""
        shape = tuple(sample_shape) + self.logits.shape[:-1]
        return jax.random.categorical(seed, self._float_logits(), shape=shape).astype(jnp.int32)

    def mode(self):
        """The most likely category of each distribution ``[...]`` (int32)."""
        return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)

    def tree_flatten(self):
        return (self.logits,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        obj = object.__new__(cls)
        obj.logits = children[0]
        return obj


def evaluate_policy(policy_fn, params, observations, actions, *, with_values=False):
    """Calls the policy and returns ``(log_probs, entropy[, values])`` as float32 arrays.

    Raises a TypeError that says what is missing when ``policy_fn`` does not follow the
    protocol (module doc), and a ValueError when its entropy and log-probs disagree in
    shape.

    Example:
      >>> policy = lambda p, obs: TokenCategorical(p[obs])
      >>> lp, ent = evaluate_policy(policy, jnp.zeros((2, 3, 4)), jnp.array([0, 1]),
      ...                           jnp.zeros((2, 3), jnp.int32))
      >>> lp.shape, float(ent[0, 0]) == float(jnp.log(4.0))
      ((2, 3), True)
    """
    out = policy_fn(params, observations)
    values = None
    if with_values:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "PPO's `policy_fn(params, observations)` must return `(distribution, values)`; "
                f"got {type(out).__name__}"
            )
        out, values = out
    if not (hasattr(out, "log_prob") and hasattr(out, "entropy")):
        raise TypeError(
            "`policy_fn(params, observations)` must return a distribution (an object with "
            f"`log_prob` and `entropy`, e.g. distrax's); got {type(out).__name__}. For "
            "[B, T, V] logits, return `rlgen.algorithms.TokenCategorical(logits)`"
        )
    log_probs = jnp.asarray(out.log_prob(actions))
    entropy = jnp.asarray(out.entropy())
    if entropy.shape != log_probs.shape:
        raise ValueError(
            f"the policy's entropy() has shape {entropy.shape} but log_prob(actions) has "
            f"{log_probs.shape}; they must match (one value per action)"
        )
    f32 = lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))  # noqa: E731
    if values is None:
        return f32(log_probs), f32(entropy)
    return f32(log_probs), f32(entropy), f32(jnp.asarray(values))
