"""`rlgen.generative.autoregressive`: the label-smoothed cross-entropy against a float64
NumPy reference, and scheduled-sampling inputs (identities at prob 0 and 1, the
replacement rate, the sampling distribution, no gradient into the first pass, errors).
"""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlgen.generative import scheduled_sampling_inputs, sequence_cross_entropy

# One compiled program per shape; `label_smoothing` is traced (no recompile per value).
jit_ce = jax.jit(lambda z, y, eps: sequence_cross_entropy(z, y, label_smoothing=eps))


def np_smoothed_cross_entropy(logits, targets, eps):
    """-sum_v q_v log softmax(z)_v with q = (1 - eps) onehot(y) + eps / V, in float64."""
    z = np.asarray(logits, np.float64)
    v = z.shape[-1]
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    q = (1.0 - eps) * np.eye(v)[np.asarray(targets)] + eps / v
    return -(q * log_p).sum(-1)


@jax.jit
def jit_nll(logits, targets):
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]


@st.composite
def ce_case(draw):
    lead = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    vocab = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 60.0]))
    eps = draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.99))
    r = np.random.default_rng(seed)
    logits = (scale * r.normal(size=(*lead, vocab))).astype(np.float32)
    targets = r.integers(0, vocab, lead).astype(np.int32)
    return logits, targets, eps


@given(ce_case())
def test_cross_entropy_matches_numpy(case):
    logits, targets, eps = case
    got = jit_ce(logits, targets, eps)
    assert got.shape == targets.shape and got.dtype == jnp.float32
    want = np_smoothed_cross_entropy(logits, targets, eps)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * (1 + np.abs(logits).max()))


@given(ce_case())
def test_cross_entropy_without_smoothing_is_the_nll(case):
    logits, targets, _ = case
    got = jit_ce(logits, targets, 0.0)
    nll = jit_nll(logits, targets)
    np.testing.assert_allclose(got, nll, rtol=1e-5, atol=1e-4)


def test_cross_entropy_bfloat16_logits_give_float32():
    r = np.random.default_rng(0)
    logits = jnp.asarray(r.normal(size=(4, 6, 11)) * 5, jnp.bfloat16)
    targets = jnp.asarray(r.integers(0, 11, (4, 6)), jnp.int32)
    for eps in (0.0, 0.2):
        got = sequence_cross_entropy(logits, targets, label_smoothing=eps)
        assert got.dtype == jnp.float32
        # exactly the float32 loss of the (bf16-rounded) logits: no bf16 arithmetic inside
        want = np_smoothed_cross_entropy(np.asarray(logits.astype(jnp.float32)), targets, eps)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cross_entropy_gradient_is_softmax_minus_smoothed_target():
    r = np.random.default_rng(1)
    logits = jnp.asarray(r.normal(size=(3, 5)), jnp.float32)
    targets = jnp.asarray([0, 4, 2])
    eps = 0.3
    grad = jax.grad(lambda z: jnp.sum(sequence_cross_entropy(z, targets, label_smoothing=eps)))(
        logits
    )
    q = (1 - eps) * np.eye(5)[np.asarray(targets)] + eps / 5
    np.testing.assert_allclose(grad, jax.nn.softmax(logits) - q, rtol=1e-5, atol=1e-6)


def test_cross_entropy_errors_name_the_argument():
    z, y = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    with pytest.raises((TypeError, ValueError), match="`logits`"):
        sequence_cross_entropy(z.astype(jnp.int32), y)
    with pytest.raises((TypeError, ValueError), match="`targets`"):
        sequence_cross_entropy(z, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="`targets`"):
        sequence_cross_entropy(z, jnp.zeros((2, 4), jnp.int32))
    for eps in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`label_smoothing`"):
            sequence_cross_entropy(z, y, label_smoothing=eps)


# ---------------------------------------------------------------- scheduled sampling

jit_ss = jax.jit(
    lambda tokens, logits, prob, key, greedy: scheduled_sampling_inputs(
        tokens, logits, prob, key, greedy=greedy
    ),
    static_argnames="greedy",
)


def case(seed, batch=4, length=7, vocab=5):
    r = np.random.default_rng(seed)
    tokens = jnp.asarray(r.integers(0, vocab, (batch, length)), jnp.int32)
    logits = jnp.asarray(r.normal(size=(batch, length, vocab)) * 3, jnp.float32)
    return tokens, logits


@pytest.mark.parametrize("greedy", [False, True])
def test_prob_zero_is_teacher_forcing(greedy):
    tokens, logits = case(0)
    for k in range(3):
        out = jit_ss(tokens, logits, 0.0, jax.random.key(k), greedy)
        np.testing.assert_array_equal(out, tokens)
        assert out.dtype == tokens.dtype


def test_prob_one_greedy_feeds_the_previous_argmax():
    tokens, logits = case(1)
    out = scheduled_sampling_inputs(tokens, logits, 1.0, jax.random.key(0), greedy=True)
    np.testing.assert_array_equal(out[:, 0], tokens[:, 0])
    np.testing.assert_array_equal(out[:, 1:], np.argmax(np.asarray(logits)[:, :-1], axis=-1))
    # uint8 tokens keep their dtype
    out8 = scheduled_sampling_inputs(
        tokens.astype(jnp.uint8), logits, 1.0, jax.random.key(0), greedy=True
    )
    assert out8.dtype == jnp.uint8
    np.testing.assert_array_equal(out8, out)


def test_prob_one_samples_from_the_previous_logits():
    """Each fed token is a draw from softmax(logits[:, t-1]): frequencies match."""
    probs = np.array([0.1, 0.6, 0.3])
    batch, length = 256, 9
    tokens = jnp.zeros((batch, length), jnp.int32)
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (batch, length, 3))
    out = np.asarray(jit_ss(tokens, logits, 1.0, jax.random.key(3), False))
    assert (out[:, 0] == 0).all()
    freq = np.bincount(out[:, 1:].ravel(), minlength=3) / out[:, 1:].size
    sd = np.sqrt(probs * (1 - probs) / out[:, 1:].size)
    np.testing.assert_array_less(np.abs(freq - probs), 5 * sd)
    # the last logits (which predict past the end) are never used
    last_changed = logits.at[:, -1].set(jnp.asarray([50.0, -50.0, -50.0]))
    again = np.asarray(jit_ss(tokens, last_changed, 1.0, jax.random.key(3), False))
    np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("prob", [0.1, 0.3, 0.75])
def test_replacement_rate_is_prob(prob):
    """Guesses differ from every true token, so the replaced fraction estimates prob."""
    batch, length, vocab = 64, 65, 4
    tokens = jnp.zeros((batch, length), jnp.int32)
    logits = jnp.broadcast_to(jnp.asarray([-9.0, 9.0, -9.0, -9.0]), (batch, length, vocab))
    out = np.asarray(jit_ss(tokens, logits, prob, jax.random.key(11), True))
    assert (out[:, 0] == 0).all()
    replaced = out[:, 1:] != 0
    n = replaced.size
    assert abs(replaced.mean() - prob) < 5 * np.sqrt(prob * (1 - prob) / n)
    # positions are replaced independently: every position is replaced in some row
    assert replaced.any(axis=0).all() and not replaced.all(axis=0).any()
    # other keys, other positions
    out2 = np.asarray(jit_ss(tokens, logits, prob, jax.random.key(12), True))
    assert not np.array_equal(out, out2)


def test_traced_prob_does_not_recompile():
    tokens, logits = case(2)
    before = jit_ss._cache_size()
    for prob in (0.0, 0.2, 0.9, 1.0):
        jit_ss(tokens, logits, jnp.float32(prob), jax.random.key(0), True)
    assert jit_ss._cache_size() == before + 1


def test_no_gradient_reaches_the_first_pass_logits():
    tokens, logits = case(4)
    table = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)

    def f(z):  # a second pass: embed the mixed inputs, add something differentiable
        mixed = scheduled_sampling_inputs(tokens, z, 0.5, jax.random.key(0))
        return jnp.sum(table[mixed]) + 0.0 * jnp.sum(z)

    grad = jax.grad(f)(logits)
    assert grad.shape == logits.shape
    np.testing.assert_array_equal(grad, np.zeros(logits.shape))
    # the jvp through the mixed tokens is zero too
    _, tangent = jax.jvp(
        lambda z: jnp.sum(table[scheduled_sampling_inputs(tokens, z, 1.0, jax.random.key(0))]),
        (logits,),
        (jnp.ones_like(logits),),
    )
    assert float(tangent) == 0.0


def test_scheduled_sampling_errors_name_the_argument():
    tokens, logits = case(5)
    key = jax.random.key(0)
    with pytest.raises((TypeError, ValueError), match="`tokens`"):
        scheduled_sampling_inputs(tokens.astype(jnp.float32), logits, 0.5, key)
    with pytest.raises(ValueError, match="`tokens`"):
        scheduled_sampling_inputs(tokens[None], logits, 0.5, key)
    with pytest.raises(ValueError, match="`logits`"):
        scheduled_sampling_inputs(tokens, logits[:, :-1], 0.5, key)
    with pytest.raises(ValueError, match="`logits`"):
        scheduled_sampling_inputs(tokens, logits[:2], 0.5, key)
    for prob in (-0.1, 1.5):
        with pytest.raises(ValueError, match="`prob`"):
            scheduled_sampling_inputs(tokens, logits, prob, key)
