"""A small decoder-only transformer language model with a KV-cache sampler.

The architecture is the GPT-style decoder of Vaswani et al. 2017 ("Attention Is All You
Need", arXiv 1706.03762) with pre-LayerNorm residual blocks. For tokens `x [B, L]` at
positions `p [B, L]`:

    h_0      = E_tok[x] + E_pos[p]                                       [B, L, D]
    h'_l     = h_l  + W_o  attn(LN(h_l))          causal, H heads of D / H
    h_{l+1}  = h'_l + W_2 gelu(W_1 LN(h'_l))       d_ff hidden units
    logits   = W_head LN(h_N) + b_head    (tied: E_tok^T LN(h_N))        [B, L, V]

    attn(z)  = concat_h softmax(q_h k_h^T / sqrt(D / H) + mask) v_h,  (q, k, v) = W_qkv z

Learned token and position embeddings, GELU MLP, no dropout; the output head is its own
matrix with a bias, or the token embedding transposed (`tie_embeddings`, as GPT-2 does).
Parameters are float32; the compute dtype is `TransformerConfig.dtype` (attention scores,
softmax and the returned logits are float32). Initialisation is scaled normal only
(embeddings N(0, 0.02^2); dense kernels normal with variance 1 / fan_in, the two residual
output projections of each block further scaled by 1 / (2 num_layers); biases 0).

The blocks' parameters are stacked along a leading layer axis (`model.blocks` is one
block whose arrays are `[num_layers, ...]`) and applied by a `lax.scan` over layers
(`scan_layers=True`: the compiled program holds one block, so compiling takes about the
same time for 2 layers or 48) or by an unrolled loop (`scan_layers=False`: measured faster
to run on the CPU, e.g. a 4-layer GRPO update 1.74 s unrolled against 2.07 s scanned).
The default, None, scans on accelerators and unrolls on the CPU; the parameters are the
same either way.

**Prompts with padding.** Prompts of different lengths are left-padded and come with an
attention mask, as a dict ``{"input_ids": [B, P], "attention_mask": [B, P]}``
(`PROMPT_KEYS`; the mask is 1 on real tokens, 0 on the padding before them). Padding is
never attended to, and positions count real tokens only (the first real token is at
position 0), so a padded row computes exactly what the row without padding computes.
Every entry point takes either a plain `[B, P]` array (no padding) or such a dict.

Entry points:

* `model(tokens)`: causal logits `[B, L, V]` (position `i` scores token `i + 1`).
* `model.policy(prompts, completions)`: the logits that score each completion token by
  teacher forcing, `[B, T, V]`, for the trainers' policy protocol. With `sampling` set,
  they are the logits of the distribution `sample` draws from (temperature, top-k, top-p),
  so the trainers' ratios and KL penalties use the distribution that was sampled.
* `model.generate(prompts, key, max_new_tokens=...)`: sampling with a key/value cache,
  one compiled program per shape and static setting, that stops as soon as every row
  has ended (`sample` uses `model.sampling`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlgen import _checks

__all__ = [
    "PROMPT_KEYS",
    "SamplingConfig",
    "TransformerConfig",
    "TransformerLM",
    "mask_after_eos",
]

#: The keys of a padded prompt batch: left-padded token ids and their attention mask.
PROMPT_KEYS = ("input_ids", "attention_mask")
#: The logit given to tokens that top-k or top-p leave out: probability exactly 0, but
#: finite, so entropies and gradients stay finite (-inf would give 0 * inf = NaN).
FILTERED_LOGIT = -1e30


def _check_optional_positive_int(x: Any, name: str) -> int | None:
    return None if x is None else _checks.check_positive_int(x, name)


def _check_token_id(x: Any, name: str, vocab_size: int) -> int:
    _checks.check_int(x, name, what="a Python int (a token id)")
    if not 0 <= x < vocab_size:
        raise ValueError(f"`{name}` must be a token id in [0, {vocab_size}) (vocab_size), got {x}")
    return int(x)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The shape of a `TransformerLM` (all fields static; checked on construction).

    Attributes:
      vocab_size: number of token ids `V`.
      max_len: the most tokens the model ever sees, prompt plus completion (the size of
        the learned position table).
      d_model: the residual width `D`; must be divisible by `num_heads`.
      num_heads: attention heads `H` (each of width `D / H`).
      num_layers: transformer blocks.
      d_ff: hidden units of each MLP; None means `4 * d_model`.
      pad_id: the token written after the first EOS by `generate`.
      eos_id: the end-of-sequence token, or None (completions always run to
        `max_new_tokens`).
      dtype: the compute dtype (float32 or bfloat16, say); parameters stay float32.
      tie_embeddings: score tokens with the transposed token embedding (no head matrix,
        no head bias; GPT-2's choice: `V * D` fewer parameters and optimiser state).
      scan_layers: apply the stacked blocks with a `lax.scan` (one block in the compiled
        program: faster compiles) rather than unrolled (faster runs on the CPU); None (the
        default) scans except on the CPU backend. The parameters are the same either way.

    Example:
      >>> TransformerConfig(vocab_size=16, max_len=8, d_model=8, num_heads=2).head_dim
      4
    """

    vocab_size: int
    max_len: int
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int | None = None
    pad_id: int = 0
    eos_id: int | None = None
    dtype: Any = jnp.float32
    tie_embeddings: bool = False
    scan_layers: bool | None = None

    def __post_init__(self):
        _checks.check_positive_int(self.vocab_size, "vocab_size")
        _checks.check_positive_int(self.max_len, "max_len")
        _checks.check_positive_int(self.d_model, "d_model")
        _checks.check_positive_int(self.num_heads, "num_heads")
        _checks.check_positive_int(self.num_layers, "num_layers")
        _check_optional_positive_int(self.d_ff, "d_ff")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"`d_model` ({self.d_model}) must be divisible by `num_heads` ({self.num_heads})"
            )
        _check_token_id(self.pad_id, "pad_id", self.vocab_size)
        if self.eos_id is not None:
            _check_token_id(self.eos_id, "eos_id", self.vocab_size)
        try:
            dtype = jnp.dtype(self.dtype)
        except TypeError as err:
            raise TypeError(f"`dtype` must be a floating dtype, got {self.dtype!r}") from err
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"`dtype` must be a floating dtype (e.g. float32), got {dtype}")
        object.__setattr__(self, "dtype", dtype)
        _checks.check_bool(self.tie_embeddings, "tie_embeddings")
        if self.scan_layers is not None:
            _checks.check_bool(self.scan_layers, "scan_layers")

    @property
    def head_dim(self) -> int:
        """`d_model // num_heads`."""
        return self.d_model // self.num_heads

    @property
    def ff_dim(self) -> int:
        """`d_ff`, or `4 * d_model` when `d_ff` is None."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How `TransformerLM.sample` draws completions (the arguments of `generate`).

    It also defines the model's policy: `TransformerLM.policy` scores completions under
    this very distribution (tempered and filtered), as the RL trainers need.

    Attributes:
      max_new_tokens: completion length `T`.
      temperature: logits are divided by it before sampling; 0.0 means greedy (argmax).
      top_k: keep only the `k` most likely tokens (Fan et al. 2018, "Hierarchical Neural
        Story Generation", arXiv 1805.04833); None keeps all.
      top_p: keep the smallest set of most likely tokens whose probability reaches
        `top_p` (nucleus sampling, Holtzman et al. 2019, "The Curious Case of Neural Text
        Degeneration", arXiv 1904.09751); None keeps all.

    Example:
      >>> SamplingConfig(max_new_tokens=4, top_k=2)
      SamplingConfig(max_new_tokens=4, temperature=1.0, top_k=2, top_p=None)
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        _checks.check_positive_int(self.max_new_tokens, "max_new_tokens")
        _check_temperature(self.temperature)
        _check_optional_positive_int(self.top_k, "top_k")
        _check_top_p(self.top_p)

    @property
    def changes_logits(self) -> bool:
        """Whether the sampled distribution differs from `softmax(logits)` (and is not
        greedy): a temperature other than 1, top-k or top-p."""
        if self.temperature == 0.0:
            return False
        return self.temperature != 1.0 or self.top_k is not None or self.top_p is not None


def _check_temperature(temperature) -> float | None:
    """Checks `temperature >= 0` (when concrete) and returns its value (None if traced)."""
    _checks.check_range(temperature, "temperature", 0.0)
    value = _checks.concrete_value(temperature)
    if value is not None and not math.isfinite(value):
        raise ValueError(f"`temperature` must be finite, got {value}")
    return value


def _check_top_p(top_p) -> None:
    if top_p is not None:
        _checks.check_range(top_p, "top_p", 0.0, 1.0, low_open=True)


def mask_after_eos(tokens, eos_id: int, pad_id: int):
    """Masks everything after the first `eos_id` of each row.

    `mask[b, t] = 1` if no EOS occurs in `tokens[b, :t]` (so the first EOS itself is kept),
    else 0; masked tokens are replaced by `pad_id`.

    Args:
      tokens: int `[B, T]` completions.
      eos_id, pad_id: token ids (Python ints).

    Returns:
      `(tokens [B, T] int32, mask [B, T] float32)`.

    Example:
      >>> toks, mask = mask_after_eos(jnp.array([[5, 2, 7, 2]]), eos_id=2, pad_id=0)
      >>> toks.tolist(), mask.tolist()
      ([[5, 2, 0, 0]], [[1.0, 1.0, 0.0, 0.0]])
    """
    tokens = _checks.as_array(tokens, "tokens")
    _checks.check_integer(tokens, "tokens")
    _checks.check_rank(tokens, 2, "tokens", "[B, T]")
    is_eos = (tokens == eos_id).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=1) - is_eos  # EOS count strictly before t
    keep = eos_before == 0
    return jnp.where(keep, tokens, pad_id).astype(jnp.int32), keep.astype(jnp.float32)


def _kept(x, top_p, *, top_k: int | None, use_top_p: bool):
    """Which tokens of the tempered logits `x [..., V]` top-k, then top-p, keep (bool).

    Top-p acts on the renormalised top-k distribution. A token tied with the last one kept
    is kept too; the most likely token always survives.
    """
    keep = jnp.ones(x.shape, bool)
    if top_k is not None:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        keep = x >= kth
        x = jnp.where(keep, x, FILTERED_LOGIT)
    if use_top_p:
        desc = -jnp.sort(-x, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        # Probability mass strictly before each sorted position (exclusive cumsum).
        before = jnp.concatenate(
            [jnp.zeros_like(probs[..., :1]), jnp.cumsum(probs, axis=-1)[..., :-1]], axis=-1
        )
        in_nucleus = (before < top_p).at[..., 0].set(True)
        cutoff = jnp.min(jnp.where(in_nucleus, desc, jnp.inf), axis=-1, keepdims=True)
        keep = keep & (x >= cutoff)
    return keep


def _sampling_logits(logits, temperature, top_p, *, top_k, use_top_p, always_keep=None):
    """The logits of the distribution sampled from: `logits / temperature`, with the tokens
    top-k / top-p leave out set to `FILTERED_LOGIT` (float32 `[..., V]`).

    `always_keep` (int ids `[...]`, optional) is never filtered out: a completion token
    scored by teacher forcing was kept when it was sampled, and rounding must not make its
    probability 0 now.
    """
    x = logits.astype(jnp.float32) / temperature
    if top_k is None and not use_top_p:
        return x
    keep = _kept(x, top_p, top_k=top_k, use_top_p=use_top_p)
    if always_keep is not None:
        keep = keep | (jnp.arange(x.shape[-1]) == always_keep[..., None])
    return jnp.where(keep, x, FILTERED_LOGIT)


#: Below this many `max_new_tokens * B * V` draws, `generate` draws the Gumbel noise of
#: every step before decoding (one vectorised draw; the same bits, hence the same tokens,
#: as drawing it step by step, and ~10% faster for small models on a CPU).
PREDRAWN_NOISE_LIMIT = 2**22


def _sample_token(logits, key, temperature, top_p, *, greedy, top_k, use_top_p):
    """One token per row `[B]` and its log-probability under the distribution drawn from
    (greedy: under `softmax(logits)`). `key` is a PRNG key, or the step's Gumbel noise
    `[B, V]` drawn ahead (`jax.random.categorical` is the argmax of logits plus it)."""
    if greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        x = logits.astype(jnp.float32)
    else:
        x = _sampling_logits(logits, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
        if jnp.issubdtype(key.dtype, jnp.floating):  # predrawn Gumbel noise
            token = jnp.argmax(x + key, axis=-1).astype(jnp.int32)
        else:
            token = jax.random.categorical(key, x, axis=-1).astype(jnp.int32)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(x), token[:, None], axis=-1)[:, 0]
    return token, log_prob


def _attention(q, k, v, mask):
    """Multi-head softmax attention: `q [B, Lq, H, d]`, `k, v [B, Lk, H, d]`, `mask`
    broadcastable to `[B, 1, Lq, Lk]` (True = may attend). Scores and softmax in float32."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _attention_cached(q, k, v, mask):
    """`_attention` against a cache laid out `[B, H, S, d]` (the layout a batched
    matrix-vector product reads without a transpose)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bqhd", weights, v)


class _Block(nnx.Module):
    """One pre-LayerNorm block: `x + attn(LN(x))`, then `x + mlp(LN(x))`."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        d, dtype = config.d_model, config.dtype
        hidden_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
        resid_init = nnx.initializers.variance_scaling(
            1.0 / (2 * config.num_layers), "fan_in", "normal"
        )
        dense = functools.partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.ln_attn = nnx.LayerNorm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.qkv = dense(d, 3 * d, kernel_init=hidden_init)
        self.attn_out = dense(d, d, kernel_init=resid_init)
        self.ln_mlp = nnx.LayerNorm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.mlp_in = dense(d, config.ff_dim, kernel_init=hidden_init)
        self.mlp_out = dense(config.ff_dim, d, kernel_init=resid_init)

    def project(self, x):
        """`x [B, L, D]` -> `q, k, v [B, L, H, D/H]`."""
        qkv = self.qkv(self.ln_attn(x))
        qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, self.head_dim)
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def finish(self, x, attended):
        """The residual updates after attention: output projection, then the MLP."""
        x = x + self.attn_out(attended.reshape(x.shape)).astype(x.dtype)
        h = self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln_mlp(x))))
        return x + h.astype(x.dtype)


def _check_tokens(tokens, name: str, max_len: int, what: str = "[B, L]"):
    tokens = _checks.as_array(tokens, name)
    _checks.check_integer(tokens, name)
    _checks.check_rank(tokens, 2, name, what)
    if tokens.shape[1] < 1:
        raise ValueError(f"`{name}` must hold at least one token per row, got shape {tokens.shape}")
    if tokens.shape[1] > max_len:
        raise ValueError(
            f"`{name}` has {tokens.shape[1]} tokens per row (shape {tokens.shape}), more than "
            f"the model's max_len={max_len}"
        )
    return tokens.astype(jnp.int32)


def _check_prompts(prompts, name: str, max_len: int):
    """A `[B, P]` id array, or a `PROMPT_KEYS` dict of left-padded ids and their mask.

    Returns `(tokens [B, P] int32, mask [B, P] float32 or None)`. A concrete mask must be
    0/1, left-padded (each row 0...0 1...1) with at least one real token per row.
    """
    if not isinstance(prompts, Mapping):
        return _check_tokens(prompts, name, max_len, "[B, P]"), None
    if set(prompts) != set(PROMPT_KEYS):
        raise ValueError(
            f"`{name}` as a dict must have exactly the keys {list(PROMPT_KEYS)} (left-padded "
            f"ids and their attention mask), got {sorted(prompts)}"
        )
    ids_name, mask_name = (f"{name}[{k!r}]" for k in PROMPT_KEYS)
    tokens = _check_tokens(prompts[PROMPT_KEYS[0]], ids_name, max_len, "[B, P]")
    mask = _checks.as_array(prompts[PROMPT_KEYS[1]], mask_name)
    _checks.check_shape(mask, tokens.shape, mask_name, ids_name)
    if not isinstance(mask, jax.core.Tracer):
        host = np.asarray(mask)
        if not np.isin(host, (0, 1)).all():
            raise ValueError(f"`{mask_name}` must hold only 0 and 1, got values {np.unique(host)}")
        if (np.diff(host.astype(np.int8), axis=1) < 0).any() or (host[:, -1] != 1).any():
            bad = int(np.flatnonzero((np.diff(host, axis=1) < 0).any(1) | (host[:, -1] != 1))[0])
            raise ValueError(
                f"`{mask_name}` must be left-padded (each row 0...0 then 1...1, ending in a "
                f"real token); row {bad} is {host[bad].astype(int).tolist()}"
            )
    return tokens, mask.astype(jnp.float32)


def _positions(mask, length: int):
    """Position ids: `0..L-1`, or with a left-padding mask `[B, L]` the count of real
    tokens before each one (padding gets 0; it is never attended to)."""
    if mask is None:
        return jnp.arange(length)[None]
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)


class TransformerLM(nnx.Module):
    """A decoder-only transformer LM (Vaswani et al. 2017), pre-LayerNorm, no dropout.

    See the module docstring for the math, the padded prompts and the stacked layers.
    `sampling` (optional) sets how `sample` draws completions, the trainers' sampling
    protocol, and the distribution `policy` scores.

    Args:
      config: the `TransformerConfig`.
      rngs: `nnx.Rngs` for the parameter initialisation (the `params` stream).
      sampling: a `SamplingConfig` for `sample`, or None.

    Example:
      >>> cfg = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2)
      >>> model = TransformerLM(cfg, rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 3), jnp.int32)).shape
      (2, 3, 11)
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        rngs: nnx.Rngs,
        sampling: SamplingConfig | None = None,
    ):
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"`config` must be a TransformerConfig, got {type(config).__name__}")
        if sampling is not None and not isinstance(sampling, SamplingConfig):
            raise TypeError(
                f"`sampling` must be a SamplingConfig or None, got {type(sampling).__name__}"
            )
        self.config = config
        self.sampling = sampling
        embed_init = nnx.initializers.normal(stddev=0.02)
        dtype = config.dtype
        self.token_embed = nnx.Embed(
            config.vocab_size, config.d_model, dtype=dtype, embedding_init=embed_init, rngs=rngs
        )
        self.pos_embed = nnx.Embed(
            config.max_len, config.d_model, dtype=dtype, embedding_init=embed_init, rngs=rngs
        )

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stacked_blocks(rngs):
            return _Block(config, rngs=rngs)

        self.blocks = stacked_blocks(rngs)  # every array has a leading num_layers axis
        self.ln_final = nnx.LayerNorm(config.d_model, epsilon=1e-5, dtype=dtype, rngs=rngs)
        if not config.tie_embeddings:
            self.head = nnx.Linear(
                config.d_model,
                config.vocab_size,
                dtype=dtype,
                kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "normal"),
                rngs=rngs,
            )

    # ------------------------------------------------------------------ the layers

    def _layers(self, carry, body):
        """Runs `carry = body(block, layer, carry)` over the stacked blocks, by a
        `lax.scan` (`scan_layers`) or unrolled; `layer` is the int32 layer index."""
        graphdef, state = nnx.split(self.blocks)
        num_layers = self.config.num_layers

        def step(carry, xs):
            layer, layer_state = xs
            return body(nnx.merge(graphdef, layer_state), layer, carry), None

        layers = jnp.arange(num_layers, dtype=jnp.int32)
        scan = self.config.scan_layers
        if scan is None:
            scan = jax.default_backend() != "cpu"
        if scan:
            return jax.lax.scan(step, carry, (layers, state))[0]
        for i in range(num_layers):
            carry, _ = step(carry, jax.tree.map(lambda x, i=i: x[i], (layers, state)))
        return carry

    def _trunk(self, tokens, mask=None, *, with_cache=False):
        """`tokens [B, L]` (with an optional left-padding mask `[B, L]`) -> (final-LN
        hidden `[B, L, D]`, with `with_cache` the keys and values
        `[num_layers, B, H, L, D/H]` as a pair, else None)."""
        batch, length = tokens.shape
        x = self.token_embed(tokens) + self.pos_embed(_positions(mask, length))
        allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, L, L]
        if mask is not None:
            allowed = allowed & (mask > 0)[:, None, None, :]
        cfg = self.config
        cache = None
        if with_cache:  # laid out [num_layers, B, H, L, D/H] for decoding
            kv_shape = (cfg.num_layers, batch, cfg.num_heads, length, cfg.head_dim)
            cache = (jnp.zeros(kv_shape, cfg.dtype), jnp.zeros(kv_shape, cfg.dtype))

        def body(block, layer, carry):
            x, cache = carry
            q, k, v = block.project(x)
            if cache is not None:
                cache = tuple(
                    jax.lax.dynamic_update_index_in_dim(
                        c, jnp.swapaxes(new, 1, 2).astype(c.dtype), layer, 0
                    )
                    for c, new in zip(cache, (k, v), strict=True)
                )
            return block.finish(x, _attention(q, k, v, allowed)), cache

        x, cache = self._layers((x, cache), body)
        return self.ln_final(x), cache

    def _logits(self, hidden):
        if self.config.tie_embeddings:
            return self.token_embed.attend(hidden).astype(jnp.float32)
        return self.head(hidden).astype(jnp.float32)

    # ------------------------------------------------------------------ full forward

    def __call__(self, tokens):
        """Causal next-token logits.

        Args:
          tokens: int `[B, L]` with `1 <= L <= max_len`.

        Returns:
          float32 `[B, L, V]`: `logits[:, i]` scores token `i + 1` given `tokens[:, :i+1]`.

        Example:
          >>> cfg = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2)
          >>> TransformerLM(cfg, rngs=nnx.Rngs(0))(jnp.ones((2, 3), jnp.int32)).dtype
          dtype('float32')
        """
        tokens = _check_tokens(tokens, "tokens", self.config.max_len)
        hidden, _ = self._trunk(tokens)
        return self._logits(hidden)

    def policy(self, observations, actions):
        """Teacher-forced logits of completions, for the trainers' policy protocol.

        With prompts `x [B, P]` and completions `a [B, T]`, runs the model once on
        `concat(x, a[:, :-1])` (`P + T - 1` tokens) and returns the logits at positions
        `P - 1 .. P + T - 2`, so that `out[:, t]` scores `a[:, t]` given `x` and
        `a[:, :t]`: `log pi(a | x) = sum_t log_softmax(out)[:, t, a[:, t]]`. Wrap it as
        `rlgen.algorithms.TokenCategorical(out)` for the algorithms.

        With `sampling` set (and not greedy), the logits are those of the distribution
        `sample` draws from: `logits / temperature`, with the tokens that top-k / top-p
        leave out at `FILTERED_LOGIT` (probability 0); `a[:, t]` itself is always kept.
        So `log pi` is the sampling policy's log-probability, as the importance ratio and
        the KL penalty of RL fine-tuning need. Without `sampling`, or at temperature 1 with
        no filtering, they are the model's own logits.

        Args:
          observations: int prompts `[B, P]`, `P >= 1`, or a `PROMPT_KEYS` dict of
            left-padded prompts and their attention mask.
          actions: int completions `[B, T]`, `T >= 1`, `P + T <= max_len`.

        Returns:
          float32 `[B, T, V]`.

        Example:
          >>> cfg = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2)
          >>> model = TransformerLM(cfg, rngs=nnx.Rngs(0))
          >>> model.policy(jnp.ones((2, 2), jnp.int32), jnp.ones((2, 2), jnp.int32)).shape
          (2, 2, 11)
        """
        max_len = self.config.max_len
        prompts, prompt_mask = _check_prompts(observations, "observations", max_len)
        actions = _check_tokens(actions, "actions", max_len, "[B, T] (completions)")
        if actions.shape[0] != prompts.shape[0]:
            raise ValueError(
                f"`actions` must have the batch size of `observations` ({prompts.shape[0]}), "
                f"got shape {actions.shape}"
            )
        num_prompt, num_new = prompts.shape[1], actions.shape[1]
        if num_prompt + num_new > max_len:
            raise ValueError(
                f"`observations` ({num_prompt} tokens) plus `actions` ({num_new} tokens) exceed "
                f"the model's max_len={max_len}"
            )
        sequence = jnp.concatenate([prompts, actions[:, :-1]], axis=1)
        mask = None
        if prompt_mask is not None:
            mask = jnp.concatenate([prompt_mask, jnp.ones(actions[:, :-1].shape)], axis=1)
        hidden, _ = self._trunk(sequence, mask)
        logits = self._logits(hidden[:, num_prompt - 1 :])
        sampling = self.sampling
        if sampling is None or not sampling.changes_logits:
            return logits
        return _sampling_logits(
            logits,
            sampling.temperature,
            1.0 if sampling.top_p is None else sampling.top_p,
            top_k=sampling.top_k,
            use_top_p=sampling.top_p is not None,
            always_keep=actions,
        )

    # ------------------------------------------------------------------ cached decoding

    def _decode_step(self, token, slot, position, cache_k, cache_v, key_valid):
        """One token `[B]` at cache `slot` (int) and `position` `[B]`, against caches
        `[num_layers, B, H, S, D/H]` whose valid slots are `key_valid [B, S]`.

        Writes this token's keys and values at `slot` and returns
        `(logits [B, V], cache_k, cache_v)`.
        """
        x = self.token_embed(token[:, None]) + self.pos_embed(position[:, None])
        slots = jnp.arange(cache_k.shape[3])
        may_attend = ((slots <= slot)[None, :] & key_valid)[:, None, None, :]  # [B,1,1,S]

        def body(block, layer, carry):
            x, cache_k, cache_v = carry
            q, k, v = block.project(x)  # [B, 1, H, D/H]
            at = (layer, 0, 0, slot, 0)
            put = lambda c, new: jax.lax.dynamic_update_slice(  # noqa: E731
                c, jnp.swapaxes(new, 1, 2)[None].astype(c.dtype), at
            )
            cache_k, cache_v = put(cache_k, k), put(cache_v, v)
            layer_k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False)
            layer_v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False)
            attended = _attention_cached(q, layer_k, layer_v, may_attend)
            return block.finish(x, attended), cache_k, cache_v

        x, cache_k, cache_v = self._layers((x, cache_k, cache_v), body)
        return self._logits(self.ln_final(x))[:, 0], cache_k, cache_v

    def _generate_traced(
        self,
        prompts,
        prompt_mask,
        key,
        temperature,
        top_p,
        *,
        max_new_tokens,
        top_k,
        greedy,
        use_top_p,
        with_logits,
    ):
        """The body of the compiled `generate` (see there)."""
        cfg = self.config
        batch, num_prompt = prompts.shape
        cache_len = num_prompt + max_new_tokens - 1  # the last sampled token is never fed
        sample = functools.partial(
            _sample_token,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            top_k=top_k,
            use_top_p=use_top_p,
        )
        keys = jax.random.split(key, max_new_tokens)
        if not greedy and max_new_tokens * batch * cfg.vocab_size <= PREDRAWN_NOISE_LIMIT:
            keys = jax.vmap(lambda k: jax.random.gumbel(k, (batch, cfg.vocab_size)))(keys)
        if prompt_mask is None:
            prompt_mask = jnp.ones((batch, num_prompt), jnp.float32)
        num_real = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)  # [B]
        key_valid = jnp.concatenate(
            [prompt_mask > 0, jnp.ones((batch, cache_len - num_prompt), bool)], axis=1
        )

        # Prefill: one pass over the prompt fills the first `P` cache slots.
        hidden, (k, v) = self._trunk(prompts, prompt_mask, with_cache=True)
        pad = ((0, 0), (0, 0), (0, 0), (0, cache_len - num_prompt), (0, 0))
        cache_k, cache_v = jnp.pad(k, pad), jnp.pad(v, pad)
        first_logits = self._logits(hidden[:, -1])
        first, first_lp = sample(first_logits, keys[0])

        def put(buffer, t, value):
            return jax.lax.dynamic_update_index_in_dim(buffer, value.astype(buffer.dtype), t, 1)

        tokens = put(jnp.full((batch, max_new_tokens), cfg.pad_id, jnp.int32), 0, first)
        log_probs = put(jnp.zeros((batch, max_new_tokens), jnp.float32), 0, first_lp)
        logits_out = None
        if with_logits:
            logits_out = jnp.zeros((batch, max_new_tokens, cfg.vocab_size), jnp.float32)
            logits_out = put(logits_out, 0, first_logits)
        ended = jnp.zeros((batch,), bool) if cfg.eos_id is None else first == cfg.eos_id

        def running(carry):
            t, ended = carry[0], carry[4]
            return (t < max_new_tokens) & ~jnp.all(ended)  # stop once every row has ended

        def step(carry):
            t, token, cache_k, cache_v, ended, tokens, log_probs, logits_out = carry
            slot = num_prompt + t - 1  # the cache slot of the token fed now
            logits, cache_k, cache_v = self._decode_step(
                token, slot, num_real + t - 1, cache_k, cache_v, key_valid
            )
            new, new_lp = sample(logits, keys[t])
            if cfg.eos_id is not None:
                ended = ended | (new == cfg.eos_id)
            tokens, log_probs = put(tokens, t, new), put(log_probs, t, new_lp)
            if logits_out is not None:
                logits_out = put(logits_out, t, logits)
            return t + 1, new, cache_k, cache_v, ended, tokens, log_probs, logits_out

        carry = (jnp.int32(1), first, cache_k, cache_v, ended, tokens, log_probs, logits_out)
        carry = jax.lax.while_loop(running, step, carry)
        tokens, log_probs, logits_out = carry[5], carry[6], carry[7]
        if cfg.eos_id is None:
            mask = jnp.ones((batch, max_new_tokens), jnp.float32)
        else:
            tokens, mask = mask_after_eos(tokens, cfg.eos_id, cfg.pad_id)
        return tokens, mask, log_probs * mask, logits_out

    def generate(
        self,
        prompts,
        key,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        return_log_probs: bool = False,
    ):
        """Samples `max_new_tokens` tokens after each prompt, with a key/value cache.

        One prefill pass over the prompts fills a cache of keys and values
        `[num_layers, B, H, P + max_new_tokens - 1, D/H]`; then a `lax.while_loop` feeds
        one token at a time against it, and stops as soon as every row has produced
        `config.eos_id` (the rest is padding). Each token is drawn from
        `softmax(logits / temperature)` restricted to the `top_k` most likely tokens
        (Fan et al. 2018) and then to the nucleus: the smallest set of most likely tokens
        whose probability reaches `top_p` (Holtzman et al. 2019); the most likely token is
        always kept, and a token tied with the last one kept is kept too.
        `temperature=0.0` is greedy decoding (argmax; `top_k`/`top_p` have no effect).

        With `config.eos_id` set, `mask` is 1 up to and including each row's first EOS
        and 0 after it, and the tokens after it are `config.pad_id`; without it the mask
        is all ones.

        The whole call is one jitted program, compiled once per prompt shape,
        `max_new_tokens`, `top_k`, greedy or not and `top_p` given or not; the values of
        `temperature` and `top_p` are traced (sweeping them does not recompile). A traced
        `temperature` (inside the caller's `jit`) is taken to be positive.

        Args:
          prompts: int `[B, P]`, `P >= 1`, `P + max_new_tokens <= max_len`; or a
            `PROMPT_KEYS` dict of left-padded prompts of different lengths and their
            attention mask (`[B, P]` each).
          key: a `jax.random` key.
          max_new_tokens: completion length `T` (a static int).
          temperature: `>= 0`.
          top_k: None or an int in `[1, vocab_size]` (static).
          top_p: None or a float in `(0, 1]`.
          return_log_probs: also return each token's log-probability under the
            distribution it was drawn from (tempered and filtered; 0 after the end).

        Returns:
          `(tokens [B, T] int32, mask [B, T] float32)`, then `log_probs [B, T] float32`
          with `return_log_probs`.

        Example:
          >>> cfg = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2)
          >>> model = TransformerLM(cfg, rngs=nnx.Rngs(0))
          >>> toks, mask = model.generate(jnp.ones((2, 2), jnp.int32), jax.random.key(0),
          ...                             max_new_tokens=3, temperature=0.8, top_k=4)
          >>> toks.shape, toks.dtype, mask.shape
          ((2, 3), dtype('int32'), (2, 3))
        """
        _checks.check_bool(return_log_probs, "return_log_probs")
        tokens, mask, log_probs, _ = self._generate(
            prompts,
            key,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            with_logits=False,
        )
        return (tokens, mask, log_probs) if return_log_probs else (tokens, mask)

    def _generate(self, prompts, key, *, max_new_tokens, temperature, top_k, top_p, with_logits):
        """`generate` -> `(tokens, mask, log_probs, logits)`; with `with_logits`, `logits`
        are the `[B, T, V]` logits each token was drawn from (before temperature and
        filtering; zeros after every row has ended), else None."""
        cfg = self.config
        max_new_tokens = _checks.check_positive_int(max_new_tokens, "max_new_tokens")
        prompts, prompt_mask = _check_prompts(prompts, "prompts", cfg.max_len)
        if prompts.shape[1] + max_new_tokens > cfg.max_len:
            raise ValueError(
                f"`prompts` ({prompts.shape[1]} tokens) plus `max_new_tokens` "
                f"({max_new_tokens}) exceed the model's max_len={cfg.max_len}"
            )
        key = _checks.as_array(key, "key")
        is_typed_key = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        if not (is_typed_key and key.shape == ()) and not (
            key.dtype == jnp.uint32 and key.shape == (2,)
        ):
            raise TypeError(
                "`key` must be one jax.random key (jax.random.key(0) or PRNGKey(0)), got "
                f"shape {tuple(key.shape)} dtype {key.dtype}"
            )
        temp_value = _check_temperature(temperature)
        top_k = _check_optional_positive_int(top_k, "top_k")
        if top_k is not None and top_k > cfg.vocab_size:
            raise ValueError(f"`top_k` must be at most vocab_size={cfg.vocab_size}, got {top_k}")
        _check_top_p(top_p)
        greedy = temp_value == 0.0
        graphdef, state = nnx.split(self)
        prompts, prompt_mask, key = _on_params_devices((prompts, prompt_mask, key), state)
        return _generate_program(
            graphdef,
            state,
            prompts,
            prompt_mask,
            key,
            jnp.asarray(1.0 if greedy else temperature, jnp.float32),
            jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
            max_new_tokens=max_new_tokens,
            top_k=None if greedy else top_k,
            greedy=greedy,
            use_top_p=top_p is not None and not greedy,
            with_logits=with_logits,
        )

    def _check_sampling(self):
        if self.sampling is None:
            raise ValueError(
                "this TransformerLM has no sampling settings: construct it with "
                "`sampling=SamplingConfig(max_new_tokens=...)` to use `sample`, or call "
                "`generate` with explicit settings"
            )
        return dataclasses.asdict(self.sampling)

    def sample(self, observations, key):
        """The trainers' sampling protocol: `generate(observations, key, **sampling)`.

        Args:
          observations: int prompts `[B, P]`, or a `PROMPT_KEYS` dict of left-padded
            prompts and their attention mask.
          key: a `jax.random` key.

        Returns:
          `(actions [B, T] int32, mask [B, T] float32)` with `T = sampling.max_new_tokens`.

        Example:
          >>> cfg = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2)
          >>> sampling = SamplingConfig(max_new_tokens=3, temperature=0.0)  # greedy
          >>> model = TransformerLM(cfg, rngs=nnx.Rngs(0), sampling=sampling)
          >>> model.sample(jnp.ones((2, 2), jnp.int32), jax.random.key(0))[0].shape
          (2, 3)
        """
        return self.generate(observations, key, **self._check_sampling())

    def sample_with_log_probs(self, observations, key):
        """`sample`, plus each token's log-probability under the distribution it was drawn
        from: `(actions, mask, log_probs [B, T])`, the behaviour log-probs of RL.

        They equal `TokenCategorical(policy(observations, actions)).log_prob(actions)` up
        to float rounding (cached decoding against one full forward pass).

        Example:
          >>> cfg = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2)
          >>> model = TransformerLM(cfg, rngs=nnx.Rngs(0), sampling=SamplingConfig(3))
          >>> model.sample_with_log_probs(jnp.ones((2, 2), jnp.int32), jax.random.key(0))[2].shape
          (2, 3)
        """
        return self.generate(observations, key, **self._check_sampling(), return_log_probs=True)


def _on_params_devices(inputs, state):
    """Inputs that live elsewhere are replicated over the mesh the parameters live on.

    A model trained data-parallel holds parameters replicated over several devices; a key
    or prompts made on the default device would not meet them inside one program. Inputs
    already on the parameters' devices (e.g. prompts sharded along the batch) stay as
    they are. Inside a trace (the caller's `jit`) the caller places them.
    """
    leaves = jax.tree.leaves(state)
    if not leaves or isinstance(leaves[0], jax.core.Tracer):
        return inputs
    sharding = getattr(leaves[0], "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.device_set) < 2:
        return inputs
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())

    def place(x):
        on = getattr(x, "sharding", None)
        return x if on is not None and on.device_set == sharding.device_set else (
            jax.device_put(x, replicated)
        )

    return jax.tree.map(place, inputs)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "top_k", "greedy", "use_top_p", "with_logits"),
)
def _generate_program(
    graphdef,
    state,
    prompts,
    prompt_mask,
    key,
    temperature,
    top_p,
    *,
    max_new_tokens,
    top_k,
    greedy,
    use_top_p,
    with_logits,
):
    model = nnx.merge(graphdef, state)
    return model._generate_traced(
        prompts,
        prompt_mask,
        key,
        temperature,
        top_p,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        greedy=greedy,
        use_top_p=use_top_p,
        with_logits=with_logits,
    )
