"""Autoregressive (next-token) training losses: teacher forcing, label smoothing and
scheduled sampling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlgen import _checks


def sequence_cross_entropy(logits, targets, *, label_smoothing=0.0):
    """Per-token cross-entropy with label smoothing (Szegedy et al. 2016, arXiv 1512.00567).

    With ``eps = label_smoothing`` the target distribution is ``(1 - eps)`` on the true
    token plus ``eps / V`` spread uniformly, so, with ``z`` the logits,

        loss_t = logsumexp(z_t) - (1 - eps) z_t[y_t] - eps * mean_v z_t[v]

    computed without forming a log-softmax. ``eps = 0`` is the plain negative
    log-likelihood of teacher forcing.

    Args:
      logits: ``[..., V]`` floating (computed in float32).
      targets: ``[...]`` integer token ids.
      label_smoothing: ``eps`` in ``[0, 1)``.

    Returns:
      ``[...]`` float32 per-token losses (reduce them with `rlgen.ops.masked_mean`).

    Example:
      >>> logits = jnp.zeros((1, 2, 4))
      >>> sequence_cross_entropy(logits, jnp.array([[0, 3]])).round(4)
      Array([[1.3863, 1.3863]], dtype=float32)
    """
    logits = _checks.as_array(logits, "logits")
    targets = _checks.as_array(targets, "targets")
    _checks.check_float(logits, "logits")
    _checks.check_integer(targets, "targets")
    _checks.check_shape(targets, logits.shape[:-1], "targets", "logits[..., V] without V")
    _checks.check_range(label_smoothing, "label_smoothing", 0.0, 1.0, high_open=True)
    eps = label_smoothing
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    lse = jax.nn.logsumexp(z, axis=-1)
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - (1.0 - eps) * picked - eps * jnp.mean(z, axis=-1)


def scheduled_sampling_inputs(tokens, logits, prob, key, *, greedy=False):
    """Inputs for a scheduled-sampling pass (Bengio et al. 2015, arXiv 1506.03099).

    Teacher forcing feeds the true tokens ``x_0 .. x_{L-1}``; scheduled sampling feeds,
    at each position ``t >= 1`` independently with probability ``prob``, the model's own
    prediction of ``x_t`` instead: a draw from (or, with ``greedy``, the argmax of) the
    first pass's ``logits[:, t-1]``. This is the two-pass form for parallel decoders
    (Mihaylova and Martins 2019, arXiv 1906.04331); the first pass is not
    differentiated. Position 0 always keeps the true token.

    Args:
      tokens: ``[B, L]`` integer inputs of the teacher-forced pass.
      logits: ``[B, L, V]`` the teacher-forced pass's logits (position t predicts x_{t+1}).
      prob: scalar in ``[0, 1]`` (may be traced, e.g. from a schedule).
      key: PRNG key.
      greedy: use argmax predictions instead of samples.

    Returns:
      ``[B, L]`` mixed inputs, same dtype as ``tokens``.

    Example:
      >>> toks = jnp.array([[1, 2, 3]])
      >>> logits = jax.nn.one_hot(jnp.array([[0, 0, 0]]), 4) * 50.0
      >>> scheduled_sampling_inputs(toks, logits, 1.0, jax.random.key(0))
      Array([[1, 0, 0]], dtype=int32)
    """
    tokens = _checks.as_array(tokens, "tokens")
    logits = _checks.as_array(logits, "logits")
    _checks.check_integer(tokens, "tokens")
    _checks.check_rank(tokens, 2, "tokens")
    _checks.check_shape(logits, (*tokens.shape, logits.shape[-1]), "logits", "[B, L, V]")
    _checks.check_range(prob, "prob", 0.0, 1.0)
    logits = jax.lax.stop_gradient(logits[:, :-1])
    draw_key, mix_key = jax.random.split(key)
    if greedy:
        guesses = jnp.argmax(logits, axis=-1)
    else:
        guesses = jax.random.categorical(draw_key, logits.astype(jnp.float32), axis=-1)
    use_guess = jax.random.bernoulli(mix_key, prob, guesses.shape)
    mixed = jnp.where(use_guess, guesses.astype(tokens.dtype), tokens[:, 1:])
    return jnp.concatenate([tokens[:, :1], mixed], axis=1)
