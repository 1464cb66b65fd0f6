"""Tests of rlgen/models/transformer.py: the decoder-only transformer LM and its KV-cache
sampler.

The full forward pass is the reference throughout: causality is checked directly, and
`policy`, the cached greedy decoder and every sampling filter (top-k, top-p, temperature)
are checked against logits recomputed with the full forward on the generated sequence.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlgen.algorithms import TokenCategorical
from rlgen.models import SamplingConfig, TransformerConfig, TransformerLM
from rlgen.models import transformer as tf_module
from rlgen.models.transformer import mask_after_eos

CFG = TransformerConfig(vocab_size=11, max_len=12, d_model=16, num_heads=2, num_layers=2)
PROMPT_LEN = 4
BATCH = 64  # most generate calls share one shape: [BATCH, PROMPT_LEN] -> NEW tokens
NEW = 6


def _key(seed):
    """A random key. The rbg implementation: the sampler's XLA:CPU compile is about twice as
    fast as with threefry (the default, exercised by the determinism test and doctests)."""
    return jax.random.key(seed, impl="rbg")


def _make(config=CFG, seed=0, **kwargs):
    return TransformerLM(config, rngs=nnx.Rngs(seed), **kwargs)


def _prompts(batch=BATCH, length=PROMPT_LEN, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, (batch, length)))


# The fixture model's own sampling settings (`model.sample`): tempered top-k sampling.
SAMPLING = SamplingConfig(max_new_tokens=NEW, temperature=1.5, top_k=3)


@pytest.fixture(scope="module")
def model():
    m = _make(sampling=SAMPLING)
    # Sharpen the output distribution a little so that sampling filters matter.
    m.head.kernel[...] = 3.0 * m.head.kernel[...]
    return m


@pytest.fixture(scope="module")
def full_forward(model):
    """A jitted `model(tokens)` on a fixed `[B, max_len]` buffer (one compile per batch).

    By causality (tested below), `logits[:, i]` depends on `tokens[:, :i+1]` only, so
    whatever fills the buffer past `i` does not matter."""
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, toks: nnx.merge(graphdef, s)(toks))

    def run(tokens):
        tokens = jnp.asarray(tokens, jnp.int32)
        pad = CFG.max_len - tokens.shape[1]
        return fwd(state, jnp.pad(tokens, ((0, 0), (0, pad))))[:, : tokens.shape[1]]

    return run


@pytest.fixture(scope="module")
def greedy_run(model):
    """`(tokens, mask, logits)` of cached greedy decoding from `_prompts()`."""
    tokens, mask, _, logits = model._generate(
        _prompts(),
        _key(0),
        max_new_tokens=NEW,
        temperature=0.0,
        top_k=None,
        top_p=None,
        with_logits=True,
    )
    return tokens, mask, logits


def _step_logits(full_forward, prompts, tokens):
    """Full-forward logits that scored each generated token: `[B, T, V]`."""
    sequence = jnp.concatenate([prompts, tokens], axis=1)
    p, t = prompts.shape[1], tokens.shape[1]
    return full_forward(sequence)[:, p - 1 : p + t - 1]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x):
    return np.exp(_log_softmax(x))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"vocab_size": 0}, ValueError, "vocab_size"),
        ({"max_len": 2.0}, TypeError, "max_len"),
        ({"d_model": 10, "num_heads": 4}, ValueError, "d_model.*num_heads"),
        ({"num_layers": 0}, ValueError, "num_layers"),
        ({"d_ff": -1}, ValueError, "d_ff"),
        ({"pad_id": 11}, ValueError, r"pad_id.*\[0, 11\)"),
        ({"eos_id": -1}, ValueError, "eos_id"),
        ({"eos_id": True}, TypeError, "eos_id"),
        ({"dtype": jnp.int32}, ValueError, "dtype"),
        ({"dtype": "nonsense"}, TypeError, "dtype"),
    ],
)
def test_transformer_config_rejects_bad_fields(kwargs, error, match):
    base = {"vocab_size": 11, "max_len": 8, "d_model": 8, "num_heads": 2}
    with pytest.raises(error, match=match):
        TransformerConfig(**{**base, **kwargs})


def test_transformer_config_defaults():
    cfg = TransformerConfig(vocab_size=5, max_len=4, dtype="bfloat16")
    assert cfg.ff_dim == 256 and cfg.head_dim == 16 and cfg.dtype == jnp.bfloat16
    assert hash(cfg) == hash(TransformerConfig(vocab_size=5, max_len=4, dtype=jnp.bfloat16))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"temperature": -0.5}, ValueError, "temperature"),
        ({"temperature": float("inf")}, ValueError, "temperature"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
    ],
)
def test_sampling_config_rejects_bad_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamplingConfig(**{"max_new_tokens": 3, **kwargs})


# ----------------------------------------------------------------------------- forward


def _jitted(model, method):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, *args: getattr(nnx.merge(graphdef, s), method)(*args))
    return lambda *args: fn(state, *args)


def test_call_shape_dtype_and_parameter_dtype(model, full_forward):
    logits = full_forward(_prompts(2))
    assert logits.shape == (2, PROMPT_LEN, CFG.vocab_size) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    bf16 = _make(dataclasses.replace(CFG, dtype=jnp.bfloat16))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    nnx.update(bf16, nnx.state(model))  # the fixture's parameters, computed in bfloat16
    out = _jitted(bf16, "__call__")(_prompts(2))
    assert out.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits: a few per cent of the logits' scale.
    assert np.abs(out - logits).max() < 0.06 * np.abs(logits).max()


def test_causality(full_forward):
    tokens = _prompts(2, CFG.max_len, seed=5)
    base = np.asarray(full_forward(tokens))
    for j in (0, 5, CFG.max_len - 1):
        changed = tokens.at[:, j].set((tokens[:, j] + 3) % CFG.vocab_size)
        out = np.asarray(full_forward(changed))
        np.testing.assert_array_equal(out[:, :j], base[:, :j])
        assert np.abs(out[:, j] - base[:, j]).max() > 1e-4  # token j is seen at j


def test_policy_is_the_teacher_forced_slice_and_the_chain_rule(model, full_forward):
    prompts, actions = _prompts(2), _prompts(2, 3, seed=2)
    unfiltered = _make()  # no sampling settings: the model's own distribution
    nnx.update(unfiltered, nnx.state(model))
    out = _jitted(unfiltered, "policy")(prompts, actions)
    assert out.shape == (2, 3, CFG.vocab_size) and out.dtype == jnp.float32
    full = full_forward(jnp.concatenate([prompts, actions], axis=1))
    np.testing.assert_allclose(out, full[:, PROMPT_LEN - 1 : -1], rtol=1e-5, atol=1e-5)

    acts = np.asarray(actions)
    lp = np.take_along_axis(_log_softmax(np.asarray(out, np.float64)), acts[..., None], -1)[..., 0]
    # Position by position: log p(a_t | prompt, a_<t) from a forward on that prefix.
    chain = []
    for t in range(acts.shape[1]):
        prefix = jnp.concatenate([prompts, actions[:, :t]], axis=1)
        step = _log_softmax(np.asarray(full_forward(prefix)[:, -1], np.float64))
        chain.append(np.take_along_axis(step, acts[:, t : t + 1], -1)[:, 0])
    np.testing.assert_allclose(lp, np.stack(chain, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(TokenCategorical(out).log_prob(actions), lp, rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_policy(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    prompts, actions = _prompts(2), _prompts(2, 3, seed=3)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest).policy(prompts, actions)
        return -TokenCategorical(logits).log_prob(actions).sum()

    grads = jax.jit(jax.grad(loss))(params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(jax.tree.leaves(params))
    for path, g in flat:
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), name
        assert np.abs(g).max() > 0, name
    # Positions past the last one fed (P + T - 1 tokens) get no gradient.
    pos = np.asarray(grads["pos_embed"]["embedding"])
    assert np.abs(pos[: PROMPT_LEN + 2]).min(axis=1).max() > 0
    np.testing.assert_array_equal(pos[PROMPT_LEN + 2 :], 0.0)


# ----------------------------------------------------------------------------- generate


def test_cached_greedy_equals_naive_full_forward_loop(full_forward, greedy_run):
    tokens, mask, cached_logits = greedy_run
    prompts = _prompts()
    sequence = prompts
    for _ in range(NEW):  # rerun the whole forward for every new token
        nxt = jnp.argmax(full_forward(sequence)[:, -1], axis=-1)
        sequence = jnp.concatenate([sequence, nxt[:, None].astype(sequence.dtype)], axis=1)
    np.testing.assert_array_equal(tokens, sequence[:, PROMPT_LEN:])
    assert tokens.shape == mask.shape == (BATCH, NEW)
    assert tokens.dtype == jnp.int32 and mask.dtype == jnp.float32
    np.testing.assert_array_equal(mask, 1.0)  # no eos_id: all ones
    np.testing.assert_allclose(
        cached_logits, _step_logits(full_forward, prompts, tokens), rtol=1e-5, atol=1e-5
    )
    assert len(np.unique(np.asarray(tokens))) > 2  # not a degenerate constant model


def test_sampling_is_deterministic_given_the_key(model):
    # Legacy raw uint32 keys (threefry) work as well as typed keys.
    a, _ = model.generate(_prompts(), jax.random.PRNGKey(7), max_new_tokens=NEW)
    b, _ = model.generate(_prompts(), jax.random.PRNGKey(7), max_new_tokens=NEW)
    c, _ = model.generate(_prompts(), jax.random.PRNGKey(8), max_new_tokens=NEW)
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.asarray(a) != np.asarray(c)) > 0.2
    assert a.min() >= 0 and a.max() < CFG.vocab_size


def test_top_k_samples_among_the_k_most_likely(model, full_forward):
    k = SAMPLING.top_k
    tokens, _ = model.sample(_prompts(), _key(2))  # tempered top-3 sampling
    logits = np.asarray(_step_logits(full_forward, _prompts(), tokens))
    chosen = np.take_along_axis(logits, np.asarray(tokens)[..., None], -1)
    rank = (logits > chosen).sum(-1)  # how many tokens are more likely than the chosen one
    assert rank.max() == k - 1  # within the top k, and not stricter than asked


def test_top_p_samples_inside_the_nucleus(model, full_forward):
    top_p = 0.6
    tokens, _ = model.generate(_prompts(), _key(5), max_new_tokens=NEW, top_p=top_p)
    probs = _softmax(np.asarray(_step_logits(full_forward, _prompts(), tokens), np.float64))
    chosen = np.take_along_axis(probs, np.asarray(tokens)[..., None], -1)
    # The mass of the tokens more likely than the chosen one is below top_p exactly when
    # the chosen token belongs to the nucleus.
    mass_before = np.where(probs > chosen, probs, 0.0).sum(-1)
    assert mass_before.max() < top_p + 1e-6
    assert np.any(mass_before > 0)  # not only argmax tokens
    # Some draws had tokens outside the nucleus available to plain sampling.
    assert np.any(probs.max(-1) < top_p)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampling_frequencies_match_the_softmax(model, full_forward, temperature):
    draws = 4000
    prompt = _prompts(2)[:1]
    logits = np.asarray(full_forward(_prompts(2))[0, -1], np.float64)
    # One new token: the prefill pass alone (the decoding scan has length 0).
    tokens, _ = model.generate(
        jnp.repeat(prompt, draws, axis=0),
        _key(11),
        max_new_tokens=1,
        temperature=temperature,
    )
    freq = np.bincount(np.asarray(tokens[:, 0]), minlength=CFG.vocab_size) / draws
    np.testing.assert_allclose(freq, _softmax(logits / temperature), atol=0.03)


# ----------------------------------------------------------------------------- EOS


def test_mask_after_eos_by_hand():
    tokens = jnp.array([[3, 1, 4, 1, 5], [2, 2, 2, 2, 2], [1, 3, 3, 3, 3], [4, 4, 4, 4, 1]])
    out, mask = mask_after_eos(tokens, eos_id=1, pad_id=0)
    np.testing.assert_array_equal(
        out, [[3, 1, 0, 0, 0], [2, 2, 2, 2, 2], [1, 0, 0, 0, 0], [4, 4, 4, 4, 1]]
    )
    np.testing.assert_array_equal(
        mask, [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    )
    assert out.dtype == jnp.int32 and mask.dtype == jnp.float32


def test_generate_masks_after_the_first_eos(model):
    eos, pad = 5, 9
    with_eos = _make(dataclasses.replace(CFG, eos_id=eos, pad_id=pad))
    nnx.update(with_eos, nnx.state(model))  # the fixture's parameters

    key = jax.random.PRNGKey(7)  # the key and settings of the determinism test (one compile)
    raw, raw_mask = model.generate(_prompts(), key, max_new_tokens=NEW)
    tokens, mask = with_eos.generate(_prompts(), key, max_new_tokens=NEW)
    raw, tokens, mask = np.asarray(raw), np.asarray(tokens), np.asarray(mask)
    np.testing.assert_array_equal(raw_mask, 1.0)  # no eos_id: all ones

    is_eos = raw == eos
    # Not vacuous: rows with an early EOS, rows with a later one too, and rows with none.
    assert is_eos[:, :-1].any(axis=1).sum() >= 5 and (~is_eos.any(axis=1)).sum() >= 5
    assert (is_eos.sum(axis=1) >= 2).sum() >= 1
    for row in range(raw.shape[0]):
        hits = np.flatnonzero(is_eos[row])
        end = hits[0] + 1 if hits.size else raw.shape[1]  # through the first EOS
        np.testing.assert_array_equal(mask[row, :end], 1.0)
        np.testing.assert_array_equal(mask[row, end:], 0.0)
        np.testing.assert_array_equal(tokens[row, :end], raw[row, :end])
        np.testing.assert_array_equal(tokens[row, end:], pad)


# ----------------------------------------------------------------------------- compilation


def test_second_call_does_not_retrace(model):
    settings = {"max_new_tokens": NEW, "top_p": 0.9}
    model.generate(_prompts(), _key(0), temperature=1.0, **settings)
    programs = tf_module._generate_program._cache_size  # compiled programs so far
    before = programs()
    # New key, prompt values, temperature and top_p values (Python or array): same program.
    model.generate(_prompts(seed=9), _key(1), temperature=0.7, top_p=0.5, max_new_tokens=NEW)
    model.generate(
        _prompts(),
        _key(2),
        temperature=jnp.float32(1.3),
        top_p=jnp.float32(0.8),
        max_new_tokens=NEW,
    )
    assert before >= 1  # each new shape or static setting adds one
    assert programs() == before


def test_top_k_one_is_greedy_also_inside_a_user_jit(model, greedy_run):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(s, p, key):  # generate called from inside the caller's jit
        return nnx.merge(graphdef, s).generate(p, key, max_new_tokens=NEW, top_k=1)

    top1, _ = run(state, _prompts(), _key(1))
    np.testing.assert_array_equal(top1, greedy_run[0])


def test_sample_uses_the_sampling_config(model):
    actions, mask = model.sample(_prompts(), _key(3))
    expected, _ = model.generate(_prompts(), _key(3), max_new_tokens=NEW, temperature=1.5, top_k=3)
    np.testing.assert_array_equal(actions, expected)
    assert actions.shape == mask.shape == (BATCH, NEW)
    with pytest.raises(ValueError, match=r"sampling=SamplingConfig\("):
        _make().sample(_prompts(), _key(0))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument(model):
    good = _prompts(2)
    key = _key(0)
    with pytest.raises(TypeError, match=r"`tokens` must have an integer dtype.*float32"):
        model(good.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"`tokens` must have rank 2.*shape \(4,\)"):
        model(good[0])
    with pytest.raises(ValueError, match=r"`tokens` has 13 tokens.*max_len=12"):
        model(jnp.zeros((1, 13), jnp.int32))
    with pytest.raises(TypeError, match="`observations` must have an integer dtype"):
        model.policy(good.astype(jnp.float32), good)
    with pytest.raises(ValueError, match=r"`actions` must have the batch size.*\(2\)"):
        model.policy(good, _prompts(3))
    with pytest.raises(ValueError, match=r"`observations` \(4 tokens\) plus `actions` \(9"):
        model.policy(good, _prompts(2, 9))
    with pytest.raises(ValueError, match=r"`prompts` \(4 tokens\) plus `max_new_tokens` \(9\)"):
        model.generate(good, key, max_new_tokens=9)
    with pytest.raises(ValueError, match="`prompts` must have rank 2"):
        model.generate(good[0], key, max_new_tokens=2)
    with pytest.raises(TypeError, match="`max_new_tokens` must be a Python int"):
        model.generate(good, key, max_new_tokens=2.0)
    with pytest.raises(ValueError, match="`temperature` must lie in"):
        model.generate(good, key, max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="`top_k` must be at most vocab_size=11"):
        model.generate(good, key, max_new_tokens=2, top_k=12)
    with pytest.raises(ValueError, match="`top_p` must lie in"):
        model.generate(good, key, max_new_tokens=2, top_p=0.0)
    with pytest.raises(TypeError, match="`key` must be one jax.random key"):
        model.generate(good, jax.random.split(key, 2), max_new_tokens=2)
    with pytest.raises(TypeError, match="`config` must be a TransformerConfig"):
        TransformerLM({"vocab_size": 3}, rngs=nnx.Rngs(0))


# ------------------------------------------------------- the sampled distribution's log-probs


def _reference_log_probs(logits, tokens, temperature, top_k, top_p):
    """float64 NumPy log-probs of `tokens` under tempered top-k-then-top-p sampling."""
    x = np.asarray(logits, np.float64) / temperature
    keep = np.ones(x.shape, bool)
    if top_k is not None:
        kth = np.sort(x, axis=-1)[..., -top_k][..., None]
        keep &= x >= kth
    if top_p is not None:
        p = _softmax(np.where(keep, x, -np.inf))
        # a token is in the nucleus when the mass of the strictly more likely ones is < top_p
        before = np.array([[[(row[row > v]).sum() for v in row] for row in pos] for pos in p])
        keep &= before < top_p
    logp = _log_softmax(np.where(keep, x, -np.inf))
    return np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(0.5, None, None), (1.5, 3, None), (1.0, None, 0.7), (0.8, 4, 0.9)],
)
def test_policy_and_sampler_log_probs_are_the_sampled_distributions(
    model, full_forward, temperature, top_k, top_p
):
    """The trainers' ratio and KL must use the distribution that was sampled: `policy`
    scores it by teacher forcing, `sample_with_log_probs` records it while decoding; both
    equal a float64 reference of tempered, filtered sampling (and not the raw model)."""
    sampling = SamplingConfig(NEW, temperature=temperature, top_k=top_k, top_p=top_p)
    tempered = _make(sampling=sampling)
    nnx.update(tempered, nnx.state(model))
    prompts = _prompts(16)
    tokens, mask, recorded = tempered.sample_with_log_probs(prompts, _key(4))
    logits = _step_logits(full_forward, prompts, tokens)
    expected = _reference_log_probs(logits, tokens, temperature, top_k, top_p)
    scored = TokenCategorical(_jitted(tempered, "policy")(prompts, tokens)).log_prob(tokens)
    np.testing.assert_allclose(scored, expected, atol=2e-4)
    np.testing.assert_allclose(recorded, expected, atol=2e-4)
    untempered = _log_softmax(np.asarray(logits, np.float64))
    untempered = np.take_along_axis(untempered, np.asarray(tokens)[..., None], -1)[..., 0]
    assert np.abs(untempered - expected).mean() > 0.05  # the distinction is not vacuous
    entropy = TokenCategorical(tempered.policy(prompts, tokens)).entropy()
    assert np.all(np.isfinite(entropy))  # filtered tokens: probability 0, not NaN


def test_policy_keeps_the_scored_token_even_when_filtering_would_drop_it(model):
    sampling = SamplingConfig(NEW, top_k=1)
    greedyish = _make(sampling=sampling)
    nnx.update(greedyish, nnx.state(model))
    prompts, actions = _prompts(4), _prompts(4, 3, seed=8)  # arbitrary, mostly not top-1
    lp = TokenCategorical(greedyish.policy(prompts, actions)).log_prob(actions)
    assert np.all(np.isfinite(lp)) and np.all(np.asarray(lp) <= 0.0)


# ----------------------------------------------------------------- left-padded prompts


def _ragged(lengths, seed=3):
    """Rows of the given lengths, left-padded to the longest: (rows, PROMPT_KEYS dict)."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, CFG.vocab_size, n) for n in lengths]
    width = max(lengths)
    ids = np.full((len(rows), width), 7, np.int32)  # padding holds an arbitrary token
    mask = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1.0
    return rows, {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def test_left_padded_prompts_compute_what_unpadded_rows_compute(model):
    rows, padded = _ragged([2, 5, 3, 1])
    tokens, mask = model.generate(padded, _key(0), max_new_tokens=4, temperature=0.0)
    scores = model.policy(padded, tokens)
    other = padded["input_ids"].at[:, 0].set(2)  # what the padding holds does not matter
    np.testing.assert_array_equal(
        model.generate({**padded, "input_ids": other}, _key(0), max_new_tokens=4,
                       temperature=0.0)[0], tokens)
    for i, row in enumerate(rows):
        alone = jnp.asarray(row[None], jnp.int32)
        expected, _ = model.generate(alone, _key(0), max_new_tokens=4, temperature=0.0)
        np.testing.assert_array_equal(tokens[i], expected[0])
        # The sampling filters of the fixture apply to padded and unpadded rows alike.
        np.testing.assert_allclose(scores[i], model.policy(alone, tokens[i : i + 1])[0],
                                   rtol=1e-5, atol=1e-5)


def test_left_padded_sampled_log_probs_match_teacher_forcing(model):
    _, padded = _ragged([4, 2, 3, 4], seed=5)
    tokens, mask, recorded = model.sample_with_log_probs(padded, _key(9))
    scored = TokenCategorical(model.policy(padded, tokens)).log_prob(tokens) * mask
    np.testing.assert_allclose(recorded, scored, atol=2e-5)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ({"input_ids": np.ones((2, 3), np.int32)}, ValueError, "exactly the keys"),
        ({"input_ids": np.ones((2, 3), np.int32), "attention_mask": np.ones((2, 4))},
         ValueError, r"attention_mask.*shape"),
        ({"input_ids": np.ones((2, 3), np.int32), "attention_mask": [[1, 1, 0], [1, 1, 1]]},
         ValueError, r"left-padded.*row 0 is \[1, 1, 0\]"),
        ({"input_ids": np.ones((2, 3), np.int32), "attention_mask": [[0, 2, 1], [1, 1, 1]]},
         ValueError, "only 0 and 1"),
        ({"input_ids": np.ones((2, 3), np.int32), "attention_mask": [[0, 0, 0], [1, 1, 1]]},
         ValueError, "left-padded"),
    ],
)
def test_bad_padded_prompts_name_the_argument(model, bad, error, match):
    with pytest.raises(error, match=match):
        model.generate(bad, _key(0), max_new_tokens=2)
    with pytest.raises(error, match=match.replace("prompts", "observations")):
        model.policy(bad, jnp.ones((2, 2), jnp.int32))


# ------------------------------------------------- early stop, tied head, stacked layers


def test_generation_stops_once_every_row_has_ended(model):
    eos = 4
    ending = _make(dataclasses.replace(CFG, eos_id=eos, pad_id=0))
    nnx.update(ending, nnx.state(model))
    ending.head.bias[...] = ending.head.bias[...].at[eos].set(-50.0)
    prompts = _prompts(8)
    # Greedy with EOS made likely only from the third token on: a no-EOS run writes 6.
    tokens, mask, _, logits = ending._generate(
        prompts, _key(0), max_new_tokens=NEW, temperature=0.0, top_k=None, top_p=None,
        with_logits=True,
    )
    assert np.all(np.abs(np.asarray(logits)).sum(-1) > 0)  # no row ended: all 6 decoded
    ending.head.bias[...] = ending.head.bias[...].at[eos].set(50.0)
    tokens, mask, _, logits = ending._generate(
        prompts, _key(0), max_new_tokens=NEW, temperature=0.0, top_k=None, top_p=None,
        with_logits=True,
    )
    np.testing.assert_array_equal(tokens[:, 0], eos)  # every row ends at once ...
    np.testing.assert_array_equal(mask[:, 1:], 0.0)
    # ... so the loop never decoded another token: the logits buffer is untouched after 0.
    np.testing.assert_array_equal(np.asarray(logits)[:, 1:], 0.0)


def test_tied_embeddings_drop_the_head_and_score_with_the_embedding():
    tied = _make(dataclasses.replace(CFG, tie_embeddings=True))
    untied = _make(CFG)
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert count(untied) - count(tied) == CFG.d_model * CFG.vocab_size + CFG.vocab_size
    assert not hasattr(tied, "head")
    tokens = _prompts(2)
    hidden, _ = tied._trunk(tokens)
    expected = np.asarray(hidden, np.float64) @ np.asarray(tied.token_embed.embedding[...]).T
    np.testing.assert_allclose(tied(tokens), expected, rtol=1e-5, atol=1e-5)
    # The output side's gradient reaches the shared embedding: rows of unseen tokens too.
    graphdef, params, rest = nnx.split(tied, nnx.Param, ...)
    grads = jax.grad(lambda p: nnx.merge(graphdef, p, rest)(tokens).sum())(params)
    unseen = np.setdiff1d(np.arange(CFG.vocab_size), np.asarray(tokens))
    assert np.abs(np.asarray(grads["token_embed"]["embedding"])[unseen]).max() > 0


def test_scanned_and_unrolled_layers_compute_the_same_and_scan_compiles_one_block(model):
    unrolled = _make(dataclasses.replace(CFG, scan_layers=False), sampling=SAMPLING)
    scanned = _make(dataclasses.replace(CFG, scan_layers=True), sampling=SAMPLING)
    nnx.update(unrolled, nnx.state(model))
    nnx.update(scanned, nnx.state(model))
    tokens = _prompts(4)
    np.testing.assert_allclose(unrolled(tokens), scanned(tokens), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        unrolled.sample(tokens, _key(1))[0], scanned.sample(tokens, _key(1))[0]
    )

    def hlo_size(num_layers, scan):
        m = _make(dataclasses.replace(CFG, num_layers=num_layers, scan_layers=scan))
        graphdef, state = nnx.split(m)
        fn = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
        return len(fn.lower(state, tokens).as_text())

    assert hlo_size(8, True) < 1.1 * hlo_size(2, True)  # the program does not grow
    assert hlo_size(8, False) > 2 * hlo_size(2, False)


def test_predrawn_noise_draws_the_same_tokens_as_step_by_step_draws(model, monkeypatch):
    """Small runs draw every step's Gumbel noise up front; large ones draw it per step:
    the same bits, hence the same tokens, either way."""
    prompts, key = _prompts(8), jax.random.key(3)
    settings = {"max_new_tokens": NEW, "temperature": 0.8, "top_k": 4}
    assert NEW * 8 * CFG.vocab_size <= tf_module.PREDRAWN_NOISE_LIMIT
    predrawn = model.generate(prompts, key, **settings)
    monkeypatch.setattr(tf_module, "PREDRAWN_NOISE_LIMIT", 0)
    tf_module._generate_program.clear_cache()  # the limit is read when tracing
    stepwise = model.generate(prompts, key, **settings)
    tf_module._generate_program.clear_cache()
    np.testing.assert_array_equal(predrawn[0], stepwise[0])
    np.testing.assert_allclose(predrawn[1], stepwise[1])
