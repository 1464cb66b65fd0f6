"""A small decoder-only transformer language model with a KV-cache sampler.

The architecture is the GPT-style decoder of Vaswani et al. 2017 ("Attention Is All You
Need", arXiv 1706.03762) with pre-LayerNorm residual blocks. For tokens `x [B, L]`:

    h_0      = E_tok[x] + E_pos[0:L]                                     [B, L, D]
    h'_l     = h_l  + W_o  attn(LN(h_l))          causal, H heads of D / H
    h_{l+1}  = h'_l + W_2 gelu(W_1 LN(h'_l))       d_ff hidden units
    logits   = W_head LN(h_N) + b_head                                   [B, L, V]

    attn(z)  = concat_h softmax(q_h k_h^T / sqrt(D / H) + causal) v_h,  (q, k, v) = W_qkv z

Learned token and position embeddings, an untied output head, GELU MLP, no dropout.
Parameters are float32; the compute dtype is `TransformerConfig.dtype` (attention scores,
softmax and the returned logits are float32). Initialisation is scaled normal only
(embeddings N(0, 0.02^2); dense kernels normal with variance 1 / fan_in, the two residual
output projections of each block further scaled by 1 / (2 num_layers); biases 0).

Three entry points:

* `model(tokens)`: causal logits `[B, L, V]` (position `i` scores token `i + 1`).
* `model.policy(prompts, completions)`: the logits that score each completion token by
  teacher forcing, `[B, T, V]`, for the trainers' policy protocol
  (`rlgen.algorithms.TokenCategorical(model.policy(obs, actions))`).
* `model.generate(prompts, key, max_new_tokens=...)`: sampling with a key/value cache,
  one compiled program per shape and static setting (`sample` uses `model.sampling`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks

__all__ = ["SamplingConfig", "TransformerConfig", "TransformerLM", "mask_after_eos"]

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


def _filter_logits(logits, temperature, top_p, *, top_k: int | None, use_top_p: bool):
    """`logits [B, V] / temperature` with tokens outside top-k / the nucleus set to -inf.

    Top-k first, then top-p on the renormalised top-k distribution. A token tied with the
    last one kept is kept too. The most likely token always survives.
    """
    x = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if use_top_p:
        desc = -jnp.sort(-x, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        # Probability mass strictly before each sorted position (exclusive cumsum).
        before = jnp.concatenate(
            [jnp.zeros_like(probs[..., :1]), jnp.cumsum(probs, axis=-1)[..., :-1]], axis=-1
        )
        keep = before < top_p
        keep = keep.at[..., 0].set(True)
        cutoff = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < cutoff, -jnp.inf, x)
    return x


def _sample_token(logits, key, temperature, top_p, *, greedy, top_k, use_top_p):
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = _filter_logits(logits, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def _attention(q, k, v, mask):
    """Multi-head softmax attention: `q [B, Lq, H, d]`, `k, v [B, Lk, H, d]`, `mask`
    broadcastable to `[Lq, Lk]` (True = may attend). Scores and softmax in float32."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


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


class TransformerLM(nnx.Module):
    """A decoder-only transformer LM (Vaswani et al. 2017), pre-LayerNorm, no dropout.

    See the module docstring for the math. `sampling` (optional) sets how `sample` draws
    completions, the trainers' sampling protocol.

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
        self.blocks = nnx.List([_Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.ln_final = nnx.LayerNorm(config.d_model, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(
            config.d_model,
            config.vocab_size,
            dtype=dtype,
            kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "normal"),
            rngs=rngs,
        )

    # ------------------------------------------------------------------ full forward

    def _trunk(self, tokens):
        """`tokens [B, L]` at positions `0..L-1` -> (final-LN hidden `[B, L, D]`,
        keys and values `[num_layers, B, L, H, D/H]`)."""
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embed(jnp.arange(length))[None]
        causal = jnp.tril(jnp.ones((length, length), bool))
        keys, values = [], []
        for block in self.blocks:
            q, k, v = block.project(x)
            x = block.finish(x, _attention(q, k, v, causal))
            keys.append(k)
            values.append(v)
        return self.ln_final(x), jnp.stack(keys), jnp.stack(values)

    def _logits(self, hidden):
        return self.head(hidden).astype(jnp.float32)

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
        hidden, _, _ = self._trunk(tokens)
        return self._logits(hidden)

    def policy(self, observations, actions):
        """Teacher-forced logits of completions, for the trainers' policy protocol.

        With prompts `x [B, P]` and completions `a [B, T]`, runs the model once on
        `concat(x, a[:, :-1])` (`P + T - 1` tokens) and returns the logits at positions
        `P - 1 .. P + T - 2`, so that `out[:, t]` scores `a[:, t]` given `x` and
        `a[:, :t]`: `log pi(a | x) = sum_t log_softmax(out)[:, t, a[:, t]]`. Wrap it as
        `rlgen.algorithms.TokenCategorical(out)` for the algorithms.

        Args:
          observations: int prompts `[B, P]`, `P >= 1`.
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
        prompts = _check_tokens(observations, "observations", max_len, "[B, P] (prompts)")
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
        hidden, _, _ = self._trunk(sequence)
        return self._logits(hidden[:, num_prompt - 1 :])

    # ------------------------------------------------------------------ cached decoding

    def _decode_step(self, token, position, cache_k, cache_v):
        """One token `[B]` at `position` against caches `[num_layers, B, S, H, D/H]`.

        Writes this token's keys and values at `position` and returns
        `(logits [B, V], cache_k, cache_v)`.
        """
        x = self.token_embed(token[:, None]) + self.pos_embed(position)[None, None]
        may_attend = (jnp.arange(cache_k.shape[2]) <= position)[None, :]  # [1, S]
        for layer, block in enumerate(self.blocks):
            q, k, v = block.project(x)  # [B, 1, H, D/H]
            at = (layer, 0, position, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), at)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), at)
            x = block.finish(x, _attention(q, cache_k[layer], cache_v[layer], may_attend))
        return self._logits(self.ln_final(x))[:, 0], cache_k, cache_v

    def _generate_traced(
        self,
        prompts,
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

        # Prefill: one pass over the prompt fills the first `P` cache slots.
        hidden, k, v = self._trunk(prompts)
        pad = ((0, 0), (0, 0), (0, cache_len - num_prompt), (0, 0), (0, 0))
        cache_k, cache_v = jnp.pad(k, pad), jnp.pad(v, pad)
        first_logits = self._logits(hidden[:, -1])
        first = sample(first_logits, keys[0])

        def step(carry, xs):
            token, cache_k, cache_v = carry
            position, step_key = xs
            logits, cache_k, cache_v = self._decode_step(token, position, cache_k, cache_v)
            new = sample(logits, step_key)
            return (new, cache_k, cache_v), ((new, logits) if with_logits else new)

        positions = num_prompt + jnp.arange(max_new_tokens - 1, dtype=jnp.int32)
        _, out = jax.lax.scan(step, (first, cache_k, cache_v), (positions, keys[1:]))
        rest, rest_logits = out if with_logits else (out, None)
        tokens = jnp.concatenate([first[:, None], rest.T], axis=1)  # [B, T]
        if cfg.eos_id is None:
            mask = jnp.ones((batch, max_new_tokens), jnp.float32)
        else:
            tokens, mask = mask_after_eos(tokens, cfg.eos_id, cfg.pad_id)
        if not with_logits:
            return tokens, mask
        logits = jnp.concatenate([first_logits[:, None], jnp.swapaxes(rest_logits, 0, 1)], 1)
        return tokens, mask, logits

    def generate(
        self,
        prompts,
        key,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ):
        """Samples `max_new_tokens` tokens after each prompt, with a key/value cache.

        One prefill pass over the prompts fills a cache of keys and values
        `[num_layers, B, P + max_new_tokens - 1, H, D/H]`; then a `lax.scan` feeds one
        token at a time against it. Each token is drawn from
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
          prompts: int `[B, P]`, `P >= 1`, `P + max_new_tokens <= max_len`. Every row has
            the same length (no padding mask).
          key: a `jax.random` key.
          max_new_tokens: completion length `T` (a static int).
          temperature: `>= 0`.
          top_k: None or an int in `[1, vocab_size]` (static).
          top_p: None or a float in `(0, 1]`.

        Returns:
          `(tokens [B, T] int32, mask [B, T] float32)`.

        Example:
          >>> cfg = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2)
          >>> model = TransformerLM(cfg, rngs=nnx.Rngs(0))
          >>> toks, mask = model.generate(jnp.ones((2, 2), jnp.int32), jax.random.key(0),
          ...                             max_new_tokens=3, temperature=0.8, top_k=4)
          >>> toks.shape, toks.dtype, mask.shape
          ((2, 3), dtype('int32'), (2, 3))
        """
        return self._generate(
            prompts,
            key,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            with_logits=False,
        )

    def _generate(self, prompts, key, *, max_new_tokens, temperature, top_k, top_p, with_logits):
        """`generate`; with `with_logits`, also the `[B, T, V]` logits each token was drawn
        from (before temperature and filtering)."""
        cfg = self.config
        max_new_tokens = _checks.check_positive_int(max_new_tokens, "max_new_tokens")
        prompts = _check_tokens(prompts, "prompts", cfg.max_len, "[B, P]")
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
        prompts, key = _on_params_devices((prompts, key), state)
        return _generate_program(
            graphdef,
            state,
            prompts,
            key,
            jnp.asarray(1.0 if greedy else temperature, jnp.float32),
            jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
            max_new_tokens=max_new_tokens,
            top_k=None if greedy else top_k,
            greedy=greedy,
            use_top_p=top_p is not None and not greedy,
            with_logits=with_logits,
        )

    def sample(self, observations, key):
        """The trainers' sampling protocol: `generate(observations, key, **sampling)`.

        Args:
          observations: int prompts `[B, P]`.
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
        if self.sampling is None:
            raise ValueError(
                "this TransformerLM has no sampling settings: construct it with "
                "`sampling=SamplingConfig(max_new_tokens=...)` to use `sample`, or call "
                "`generate` with explicit settings"
            )
        return self.generate(observations, key, **dataclasses.asdict(self.sampling))


def _on_params_devices(inputs, state):
    """Inputs that live elsewhere are replicated over the mesh the parameters live on.

    A model trained data-parallel holds parameters replicated over several devices; a key
    or prompts made on the default device would not meet them inside one program. Inputs
    already on the parameters' devices (e.g. prompts sharded along the batch) stay as
    they are.
    """
    leaves = jax.tree.leaves(state)
    sharding = getattr(leaves[0], "sharding", None) if leaves else None
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
        key,
        temperature,
        top_p,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        greedy=greedy,
        use_top_p=use_top_p,
        with_logits=with_logits,
    )
