"""Per-token log-probabilities and entropies from logits.

Token conventions: `logits[..., V]` scores the next token at each position and
`actions[...]` holds the chosen token ids (for a causal language model,
`logits = model(sequences)[:, :-1]` and `actions = sequences[:, 1:]`). All math runs in
float32 even when the logits are bfloat16.

`token_log_probs` is the direct version. `token_log_probs_memory_light` gives the same
values and gradients without ever holding a `[..., V]` log-softmax or softmax in either
pass, and `token_log_probs_from_hidden` goes further for a linear LM head: it walks the
tokens in rematerialised chunks so that not even the `[N, V]` logits exist. Sum or average
the per-token values over a sequence with `rlgen.ops.masked_sum` / `masked_mean`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks


def _check_logits(logits):
    return _checks.float_array(logits, "logits", min_rank=1, what="(a vocabulary axis last)")


def _check_logits_actions(logits, actions):
    logits = _check_logits(logits)
    actions = _check_actions(
        actions, logits.shape[:-1], logits.shape[-1], "logits", "the last axis of `logits`"
    )
    return logits, actions


def _check_actions(actions, shape, vocab, like, vocab_from):
    like = f"{like} without its last axis"
    actions = _checks.int_array(actions, "actions", shape=shape, like=like)
    if not isinstance(actions, jax.core.Tracer) and actions.size:
        # On the host: jnp.min of a concrete array closed over inside `jit` would be traced.
        host = np.asarray(actions)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"`actions` must be token ids in [0, {vocab}) ({vocab_from}), "
                f"got values in [{lo}, {hi}]"
            )
    return actions


def _chosen_log_prob(x, a):
    """log softmax(x)[a] for `x [N, V]`, `a [N]`, without forming log_softmax."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    chosen = jnp.take_along_axis(x, a[:, None], axis=-1)[:, 0]
    return chosen - jax.nn.logsumexp(x, axis=-1)


def _entropy(x):
    """Entropy of softmax(x) along the last axis, in float32."""
    return _fused_entropy(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


@jax.custom_jvp
def _fused_entropy(x):
    # H = -sum_v p_v t_v with t = x - logsumexp(x): every term is >= 0 and t is formed
    # before a large common offset of the logits can cancel.
    t = x - jax.nn.logsumexp(x, axis=-1, keepdims=True)
    return -jnp.sum(jnp.exp(t) * t, axis=-1)


@_fused_entropy.defjvp
def _fused_entropy_jvp(primals, tangents):
    # dH = -sum_v p_v (t_v - E_p[t]) dx_v. Written this way (the coefficient rebuilt from x
    # and two [...] reductions), XLA fuses it into its consumer in either direction, where
    # autodiff of the forward keeps [..., V] intermediates (measured on CPU; no constant
    # [..., V] operands such as a clamp, which the CPU fusion materialises).
    (x,), (dx,) = primals, tangents
    t = x - jax.nn.logsumexp(x, axis=-1, keepdims=True)
    p = jnp.exp(t)
    mean_t = jnp.sum(p * t, axis=-1, keepdims=True)
    return _fused_entropy(x), -jnp.sum(p * (t - mean_t) * dx, axis=-1)


def token_log_probs(logits, actions):
    """Log-probability of each chosen token: `log softmax(logits)[..., actions]`.

    The direct version: it forms the full `[..., V]` log-softmax (and keeps the softmax for
    the backward pass). Prefer `token_log_probs_memory_light` for large vocabularies.

    Math: `log pi(a_t) = z_{t, a_t} - logsumexp_v z_{t, v}`.

    Args:
      logits: `[..., V]` floating logits (e.g. `[B, T, V]`).
      actions: integer ids with shape `logits.shape[:-1]`, values in `[0, V)`.

    Returns:
      Float32 (or wider) array of shape `actions.shape`.

    Example:
      >>> token_log_probs(jnp.log(jnp.array([[0.25, 0.75]])), jnp.array([1]))
      Array([-0.28768], dtype=float32)

    Reference: the score-function (REINFORCE) log-likelihood, Williams (1992).
    """
    logits, actions = _check_logits_actions(logits, actions)
    log_p = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    return jnp.take_along_axis(log_p, actions[..., None], axis=-1)[..., 0]


def token_log_probs_memory_light(logits, actions):
    """Memory-light `token_log_probs`: same values and gradients, no `[..., V]` temporaries.

    Computes `z[a] - logsumexp(z)` directly (XLA fuses the max/exp/sum reduction over the
    vocabulary into one pass, so no log-softmax is formed) under `jax.checkpoint`, so the
    backward pass recomputes `softmax(z)` inside the fused gradient expression
    `onehot(a) - softmax(z)` instead of storing it. Peak temporary memory is `O(N)` rather
    than `O(N * V)` in both passes (the gradient with respect to `logits` is, of course,
    as large as `logits`). Splitting the tokens into chunks on top of this was measured to
    *add* temporaries on XLA; chunking pays off only when the logits themselves need never
    exist, which is what `token_log_probs_from_hidden` does.

    Args:
      logits: `[..., V]` floating logits (bfloat16 logits are upcast per element).
      actions: integer ids with shape `logits.shape[:-1]`, values in `[0, V)`.

    Returns:
      Float32 (or wider) array of shape `actions.shape`.

    Example:
      >>> z = jnp.log(jnp.array([[0.25, 0.75], [0.5, 0.5]]))
      >>> token_log_probs_memory_light(z, jnp.array([1, 0])).round(4)
      Array([-0.2877, -0.6931], dtype=float32)

    Reference: Williams (1992); gradient checkpointing, Chen et al. 2016, Training Deep
    Nets with Sublinear Memory Cost (arXiv 1604.06174).
    """
    logits, actions = _check_logits_actions(logits, actions)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    flat = jax.checkpoint(_chosen_log_prob)(logits.reshape(-1, vocab), actions.reshape(-1))
    return flat.reshape(lead)


def token_log_probs_from_hidden(hidden, unembedding, actions, *, bias=None, chunk_size=1024):
    """Chosen-token log-probs of a linear LM head, without ever forming the `[N, V]` logits.

    Math: `z_t = h_t W (+ b)`, `log pi(a_t) = z_{t, a_t} - logsumexp_v z_{t, v}`, computed
    `chunk_size` tokens at a time inside a `lax.map` whose body is rematerialised
    (`jax.checkpoint`), so forward and backward hold one `[chunk_size, V]` block of logits
    at a time. Gradients flow to `hidden`, `unembedding` and `bias`. This is the
    chunked-loss trick that keeps RL fine-tuning of large-vocabulary models in memory.

    Args:
      hidden: `[..., D]` floating final hidden states.
      unembedding: `[D, V]` floating output projection.
      actions: integer ids with shape `hidden.shape[:-1]`, values in `[0, V)`.
      bias: optional `[V]` output bias.
      chunk_size: static number of tokens per chunk.

    Returns:
      Float32 (or wider) array of shape `actions.shape`; equal to
      `token_log_probs(hidden @ unembedding + bias, actions)`.

    Example:
      >>> h = jnp.ones((1, 2, 3)); w = jnp.zeros((3, 4))
      >>> token_log_probs_from_hidden(h, w, jnp.array([[0, 3]]), chunk_size=1)
      Array([[-1.3862944, -1.3862944]], dtype=float32)

    Reference: Wijmans et al. 2024, Cut Your Losses in Large-Vocabulary Language Models
    (arXiv 2411.09009), for computing the loss without materialising the logits.
    """
    unembedding = _checks.float_array(unembedding, "unembedding", rank=2, what="([D, V])")
    hidden = _checks.float_array(hidden, "hidden")
    if hidden.ndim < 1 or hidden.shape[-1] != unembedding.shape[0]:
        raise ValueError(
            f"`hidden` must end in the model width D = {unembedding.shape[0]} "
            f"(`unembedding` is [D, V] = {unembedding.shape}), got shape {hidden.shape}"
        )
    vocab = unembedding.shape[1]
    if bias is not None:
        bias = _checks.float_array(bias, "bias", shape=(vocab,), like="unembedding.shape[1]")
    actions = _check_actions(actions, hidden.shape[:-1], vocab, "hidden", "`unembedding.shape[1]`")
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")

    lead, width = hidden.shape[:-1], hidden.shape[-1]
    n = math.prod(lead)
    if n == 0:
        return jnp.zeros(lead, jnp.promote_types(hidden.dtype, jnp.float32))
    c = min(chunk_size, n)
    chunks = -(-n // c)
    pad = chunks * c - n  # padding the [N, D] hidden states is cheap; the logits never exist
    h = jnp.pad(hidden.reshape(n, width), ((0, pad), (0, 0))).reshape(chunks, c, width)
    a = jnp.pad(actions.reshape(n), (0, pad)).reshape(chunks, c)

    @jax.checkpoint
    def chunk(h_c, a_c, w, b):
        z = h_c @ w
        if b is not None:
            z = z + b
        return _chosen_log_prob(z, a_c)

    out = jax.lax.map(lambda xs: chunk(xs[0], xs[1], unembedding, bias), (h, a))
    return out.reshape(-1)[:n].reshape(lead)


def token_entropy(logits):
    """Entropy of the next-token distribution at each position: `-sum_v p_v log p_v`.

    Math: `H = -sum_v p_v t_v` with `t = z - logsumexp(z)` (non-negative terms, accurate
    for logits of any offset), computed in float32 in fused form under `jax.checkpoint`,
    with the derivative `dH/dz_v = -p_v (z_v - E_p[z])` as a custom JVP, so neither pass
    holds `[..., V]` temporaries. Logits must be finite: filter a vocabulary with a large
    negative number, not `-inf` (which gives NaN).

    Args:
      logits: `[..., V]` floating logits.

    Returns:
      Array of shape `logits.shape[:-1]`.

    Example:
      >>> token_entropy(jnp.zeros((1, 4)))
      Array([1.3862944], dtype=float32)

    Reference: Shannon (1948); the entropy bonus of Williams & Peng (1991).
    """
    return jax.checkpoint(_entropy)(_check_logits(logits))
