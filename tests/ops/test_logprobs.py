"""Tests for rlgen.ops.logprobs: chosen-token log-probs (three ways) and entropy.

The float64 NumPy references below are written out with plain loops so that they can be
read against the textbook formulas:
  log pi(a) = z_a - log sum_v exp(z_v),   H = -sum_v p_v log p_v,   p = softmax(z).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from rlgen.ops import logprobs as lp

RTOL, ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------- references


def ref_log_softmax_row(z):
    z = np.asarray(z, np.float64)
    m = max(z)
    log_z = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - log_z for v in z]


def ref_token_log_probs(logits, actions):
    logits = np.asarray(logits, np.float64)
    actions = np.asarray(actions)
    out = np.zeros(actions.shape, np.float64)
    for idx in np.ndindex(actions.shape):
        out[idx] = ref_log_softmax_row(logits[idx])[actions[idx]]
    return out


def ref_token_entropy(logits):
    logits = np.asarray(logits, np.float64)
    lead = logits.shape[:-1]
    out = np.zeros(lead, np.float64)
    for idx in np.ndindex(lead):
        h = 0.0
        for log_p in ref_log_softmax_row(logits[idx]):
            p = math.exp(log_p)
            if p > 0:
                h -= p * log_p
        out[idx] = h
    return out


# ----------------------------------------------------------------------------- strategies


# Hypothesis draws shapes from a fixed list (edge cases included) so that each shape is
# compiled once per kernel; values, actions, masks and scales are drawn freely.
SHAPES = [(1, 1, 1), (1, 1, 2), (1, 12, 2), (2, 3, 4), (3, 7, 5), (4, 1, 9), (5, 12, 9)]


@st.composite
def logits_and_actions(draw):
    b, t, v = draw(st.sampled_from(SHAPES))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    offset = draw(st.sampled_from([0.0, -50.0, 1e3]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logits = (offset + scale * rng.standard_normal((b, t, v))).astype(np.float32)
    actions = rng.integers(0, v, size=(b, t)).astype(np.int32)
    return logits, actions


_jit_log_probs = jax.jit(lp.token_log_probs)
_jit_log_probs_light = jax.jit(lp.token_log_probs_memory_light)
_jit_entropy = jax.jit(lp.token_entropy)
_jit_from_hidden = jax.jit(lp.token_log_probs_from_hidden, static_argnames="chunk_size")


def _random_problem(seed, b=2, t=6, v=7):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.standard_normal((b, t, v))).astype(np.float32)
    actions = rng.integers(0, v, size=(b, t)).astype(np.int32)
    weights = rng.standard_normal((b, t)).astype(np.float32)
    return jnp.asarray(logits), jnp.asarray(actions), jnp.asarray(weights)


def _nonlinear(f, w):
    """A nonlinear scalar function of a kernel's output (so gradients are not just 1s)."""
    return lambda *args: jnp.sum(jnp.sin(f(*args)) * w)


# ----------------------------------------------------------------------------- vs references


@given(logits_and_actions())
def test_token_log_probs_and_entropy_match_reference(problem):
    logits, actions = problem
    # Log-probs are accurate relative to the logits' magnitude (float32 inputs).
    atol = ATOL * max(1.0, float(np.max(np.abs(logits))))
    expected = ref_token_log_probs(logits, actions)
    for fn in (_jit_log_probs, _jit_log_probs_light):
        got = fn(logits, actions)
        assert got.shape == actions.shape
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=atol)

    got = _jit_entropy(logits)
    assert got.shape == logits.shape[:-1]
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_token_entropy(logits), rtol=RTOL, atol=atol)
    # 0 <= H <= log V
    assert np.all(np.asarray(got) >= 0.0)
    assert np.all(np.asarray(got) <= math.log(logits.shape[-1]) + 1e-5)


@given(
    st.sampled_from(
        [  # ((B, T, D, V), chunk_size, with_bias): chunks that divide N, that do not, > N
            ((1, 1, 1, 1), 1, False),
            ((2, 3, 4, 5), 2, True),
            ((2, 3, 4, 5), 4, False),
            ((3, 5, 2, 9), 40, True),
            ((4, 7, 5, 2), 5, True),
        ]
    ),
    st.integers(0, 2**31 - 1),
)
def test_token_log_probs_from_hidden_matches_reference(case, seed):
    (b, t, d, v), chunk, with_bias = case
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((b, t, d)).astype(np.float32)
    w = rng.standard_normal((d, v)).astype(np.float32)
    bias = rng.standard_normal(v).astype(np.float32) if with_bias else None
    a = rng.integers(0, v, size=(b, t)).astype(np.int32)
    z = h.astype(np.float64) @ w.astype(np.float64)
    if with_bias:
        z = z + bias
    got = _jit_from_hidden(h, w, a, bias=bias, chunk_size=chunk)
    assert got.shape == (b, t)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_token_log_probs(z, a), rtol=1e-4, atol=1e-4)


def test_extreme_logits_stay_finite():
    # A naive exp/sum/log would overflow at 1e4 and underflow to log(0) at -1e4.
    logits = jnp.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], jnp.float32)
    actions = jnp.array([2, 1])
    expected = ref_token_log_probs(logits, actions)
    for fn in (lp.token_log_probs, lp.token_log_probs_memory_light):
        np.testing.assert_allclose(fn(logits, actions), expected, rtol=RTOL)
    np.testing.assert_allclose(lp.token_entropy(logits), ref_token_entropy(logits), atol=ATOL)


@pytest.mark.parametrize("fn_name", ["direct", "memory_light", "from_hidden", "entropy"])
def test_bfloat16_inputs_give_float32_outputs(fn_name):
    rng = np.random.default_rng(0)
    d, v = 8, 9
    h32 = jnp.asarray(rng.standard_normal((3, 5, d)), jnp.float32)
    w32 = jnp.asarray(rng.standard_normal((d, v)) / np.sqrt(d), jnp.float32)
    z32 = jnp.asarray(3.0 * rng.standard_normal((3, 5, v)), jnp.float32)
    a = jnp.asarray(rng.integers(0, v, size=(3, 5)), jnp.int32)
    fns = {
        "direct": lambda z: lp.token_log_probs(z, a),
        "memory_light": lambda z: lp.token_log_probs_memory_light(z, a),
        "entropy": lp.token_entropy,
    }
    if fn_name == "from_hidden":
        out16 = lp.token_log_probs_from_hidden(
            h32.astype(jnp.bfloat16), w32.astype(jnp.bfloat16), a, chunk_size=4
        )
        # Exactly the upcast computation (math in float32 on the rounded inputs) ...
        exact = lp.token_log_probs_from_hidden(
            h32.astype(jnp.bfloat16).astype(jnp.float32),
            w32.astype(jnp.bfloat16).astype(jnp.float32),
            a,
            chunk_size=4,
        )
        out32 = lp.token_log_probs_from_hidden(h32, w32, a, chunk_size=4)
        tol_exact = 2e-2  # h @ W itself runs in bfloat16 (the matmul is the caller's dtype)
    else:
        fn = fns[fn_name]
        out16 = fn(z32.astype(jnp.bfloat16))
        exact = fn(z32.astype(jnp.bfloat16).astype(jnp.float32))
        out32 = fn(z32)
        tol_exact = 1e-6
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, exact, rtol=tol_exact, atol=tol_exact)
    # ... and close to the float32 result (bfloat16 keeps ~3 significant digits).
    np.testing.assert_allclose(out16, out32, rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------------------- identities


def test_memory_light_equals_direct_in_values_and_gradients():
    z, a, w = _random_problem(0)

    @jax.jit
    def both(z, a):
        outs = [f(z, a) for f in (lp.token_log_probs, lp.token_log_probs_memory_light)]
        grads = [
            jax.grad(_nonlinear(f, w))(z, a)
            for f in (lp.token_log_probs, lp.token_log_probs_memory_light)
        ]
        return outs, grads

    (v_direct, v_light), (g_direct, g_light) = both(z, a)
    np.testing.assert_allclose(v_light, v_direct, rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_direct))) > 1e-3  # a gradient worth comparing
    np.testing.assert_allclose(g_light, g_direct, rtol=1e-5, atol=1e-6)
    # Both equal the analytic gradient: d log pi(a)/dz = onehot(a) - softmax(z).
    ct = np.cos(ref_token_log_probs(z, a)) * np.asarray(w)
    p = np.exp(np.asarray(z, np.float64))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(z.shape[-1])[np.asarray(a)]
    np.testing.assert_allclose(g_light, ct[..., None] * (onehot - p), rtol=1e-4, atol=1e-6)


def test_token_entropy_derivatives_match_naive_formula():
    z, _, w = _random_problem(3)
    dz = jnp.asarray(np.random.default_rng(4).standard_normal(z.shape), jnp.float32)

    def naive(x):
        return -jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), axis=-1)

    @jax.jit
    def derivatives(z):
        out = {}
        for name, f in (("kernel", lp.token_entropy), ("naive", naive)):
            primal, tangent = jax.jvp(f, (z,), (dz,))
            out[name] = (primal, tangent, jax.grad(_nonlinear(f, w))(z))
        return out

    d = derivatives(z)
    for got, want in zip(d["kernel"], d["naive"], strict=True):  # value, forward mode, reverse mode
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Analytic: dH/dz_v = -p_v (log p_v + H).
    z64 = np.asarray(z, np.float64)
    log_p = z64 - np.log(np.exp(z64).sum(-1, keepdims=True))
    h = -(np.exp(log_p) * log_p).sum(-1, keepdims=True)
    ct = np.cos(ref_token_entropy(z)) * np.asarray(w)
    analytic = ct[..., None] * (-np.exp(log_p) * (log_p + h))
    np.testing.assert_allclose(d["kernel"][2], analytic, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("chunk_size", "with_bias"), [(1, True), (4, False), (5, True), (64, True)]
)
def test_from_hidden_equals_logits_version(chunk_size, with_bias):
    # N = B * T = 12 tokens: chunk sizes 1 and 4 divide it; 5 does not; 64 exceeds it.
    rng = np.random.default_rng(chunk_size)
    b, t, d, v = 2, 6, 5, 7
    h = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((d, v)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(v), jnp.float32) if with_bias else None
    a = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    wt = jnp.asarray(rng.standard_normal((b, t)), jnp.float32)
    argnums = (0, 1, 2) if with_bias else (0, 1)

    def via_hidden(h, w, bias):
        return lp.token_log_probs_from_hidden(h, w, a, bias=bias, chunk_size=chunk_size)

    def via_logits(h, w, bias):
        return lp.token_log_probs(h @ w if bias is None else h @ w + bias, a)

    @jax.jit
    def values_and_grads(h, w, bias):
        return [
            (f(h, w, bias), jax.grad(_nonlinear(f, wt), argnums=argnums)(h, w, bias))
            for f in (via_hidden, via_logits)
        ]

    (v_hidden, g_hidden), (v_logits, g_logits) = values_and_grads(h, w, bias)
    np.testing.assert_allclose(v_hidden, v_logits, rtol=1e-5, atol=1e-5)
    for name, gh, gl in zip(
        ("hidden", "unembedding", "bias")[: len(argnums)], g_hidden, g_logits, strict=True
    ):
        assert float(jnp.max(jnp.abs(gl))) > 1e-3, name
        np.testing.assert_allclose(gh, gl, rtol=1e-4, atol=1e-5, err_msg=name)


def test_from_hidden_handles_any_leading_shape_and_empty_input():
    rng = np.random.default_rng(5)
    h = jnp.asarray(rng.standard_normal((2, 3, 2, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
    a = jnp.asarray(rng.integers(0, 6, size=(2, 3, 2)), jnp.int32)
    np.testing.assert_allclose(
        lp.token_log_probs_from_hidden(h, w, a, chunk_size=5),
        lp.token_log_probs(h @ w, a),
        rtol=1e-5,
        atol=1e-5,
    )
    empty = lp.token_log_probs_from_hidden(
        jnp.zeros((2, 0, 4)), w, jnp.zeros((2, 0), jnp.int32), chunk_size=3
    )
    assert empty.shape == (2, 0)


# ----------------------------------------------------------------------------- memory


def _temp_bytes(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:
        pytest.skip("memory_analysis() is not available on this backend")
    return analysis.temp_size_in_bytes


@pytest.fixture(scope="module")
def large_problem():
    # N = B * T = 512 tokens over a 4096-token vocabulary: [N, V] float32 = 8 MiB.
    b, t, d, v = 4, 128, 64, 4096
    return (
        jnp.zeros((b, t, v), jnp.float32),
        jnp.zeros((b, t), jnp.int32),
        jnp.zeros((b, t, d), jnp.float32),
        jnp.zeros((d, v), jnp.float32),
    )


def test_memory_light_uses_at_most_a_quarter_of_direct_temporaries(large_problem):
    z, a, _, _ = large_problem
    w = jnp.ones(a.shape)
    for label, make in (
        ("forward", lambda f: f),
        ("grad", lambda f: jax.grad(_nonlinear(f, w))),
    ):
        direct = _temp_bytes(make(lp.token_log_probs), z, a)
        light = _temp_bytes(make(lp.token_log_probs_memory_light), z, a)
        assert direct >= z.size * 4, (label, direct)  # the direct version holds [N, V]
        assert light * 4 <= direct, (label, light, direct)


def test_from_hidden_uses_at_most_a_quarter_of_the_logits_path(large_problem):
    _, a, h, w = large_problem
    wt = jnp.ones(a.shape)

    def direct(h, w):
        return jnp.sum(jnp.sin(lp.token_log_probs(h @ w, a)) * wt)

    def chunked(h, w):
        out = lp.token_log_probs_from_hidden(h, w, a, chunk_size=64)
        return jnp.sum(jnp.sin(out) * wt)

    n_v_bytes = a.size * w.shape[1] * 4
    for label, (f_direct, f_chunked) in (
        ("forward", (direct, chunked)),
        ("grad", (jax.grad(direct, (0, 1)), jax.grad(chunked, (0, 1)))),
    ):
        t_direct = _temp_bytes(f_direct, h, w)
        t_chunked = _temp_bytes(f_chunked, h, w)
        assert t_direct >= n_v_bytes, (label, t_direct)
        assert t_chunked * 4 <= t_direct, (label, t_chunked, t_direct)
        assert t_chunked < n_v_bytes, (label, t_chunked)  # the [N, V] logits never exist


def test_token_entropy_has_no_vocabulary_sized_temporaries(large_problem):
    z, a, _, _ = large_problem
    w = jnp.ones(a.shape)
    n_v_bytes = z.size * 4
    assert _temp_bytes(lp.token_entropy, z) * 4 <= n_v_bytes
    assert _temp_bytes(jax.grad(_nonlinear(lp.token_entropy, w)), z) * 4 <= n_v_bytes


# ----------------------------------------------------------------------------- composition


def test_jit_matches_eager_and_closed_over_actions_work_under_jit():
    z, a, _ = _random_problem(7)
    eager = lp.token_log_probs(z, a)
    np.testing.assert_allclose(_jit_log_probs(z, a), eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_jit_log_probs_light(z, a), eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_jit_entropy(z), lp.token_entropy(z), rtol=1e-6, atol=1e-6)
    # Actions closed over by a jitted function are concrete: checked, and not traced.
    np.testing.assert_allclose(jax.jit(lambda z: lp.token_log_probs(z, a))(z), eager, rtol=1e-6)
    bad = a.at[0, 0].set(7)  # V = 7
    with pytest.raises(ValueError, match="`actions`"):
        jax.jit(lambda z: lp.token_log_probs_memory_light(z, bad))(z)


def test_vmap_equals_the_batched_call():
    # The kernels accept any leading shape, so vmap over the batch must change nothing.
    z, a, _ = _random_problem(8)
    u = jnp.asarray(np.random.default_rng(8).standard_normal((7, 8)), jnp.float32)

    def hidden(h, u, a):
        return lp.token_log_probs_from_hidden(h, u, a, chunk_size=4)

    cases = [
        (lp.token_log_probs, (z, a), (0, 0)),
        (lp.token_log_probs_memory_light, (z, a), (0, 0)),
        (hidden, (z, u, a), (0, None, 0)),
        (lp.token_entropy, (z,), (0,)),
    ]

    @jax.jit
    def run():
        return [(jax.vmap(f, in_axes=ax)(*args), f(*args)) for f, args, ax in cases]

    for batched, whole in run():
        np.testing.assert_allclose(batched, whole, rtol=1e-6, atol=1e-6)


def test_check_grads():
    z, a, _ = _random_problem(9, b=2, t=3, v=4)
    rng = np.random.default_rng(9)
    h = jnp.asarray(rng.standard_normal((2, 3, 3)), jnp.float32)
    u = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(4), jnp.float32)
    cases = [
        (lambda z: lp.token_log_probs(z, a), (z,)),
        (lambda z: lp.token_log_probs_memory_light(z, a), (z,)),
        (
            lambda h, u, b: lp.token_log_probs_from_hidden(h, u, a, bias=b, chunk_size=4),
            (h, u, bias),
        ),
        (lp.token_entropy, (z,)),
    ]
    for f, args in cases:
        check_grads(jax.jit(f), args, 1, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2, eps=1e-2)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_naming_the_argument():
    z = jnp.zeros((2, 3, 5))
    a = jnp.zeros((2, 3), jnp.int32)
    h, u = jnp.zeros((2, 3, 4)), jnp.zeros((4, 5))
    for fn in (lp.token_log_probs, lp.token_log_probs_memory_light):
        with pytest.raises(TypeError, match="`actions`"):
            fn(z, a.astype(jnp.float32))
        with pytest.raises(ValueError, match="`actions`"):
            fn(z, jnp.zeros((2, 4), jnp.int32))
        with pytest.raises(ValueError, match="`actions`"):
            fn(z, a.at[1, 2].set(5))  # id == V
        with pytest.raises(ValueError, match="`actions`"):
            fn(z, a.at[0, 0].set(-1))
        with pytest.raises(TypeError, match="`logits`"):
            fn(z.astype(jnp.int32), a)
        with pytest.raises(ValueError, match="`logits`"):
            fn(jnp.float32(1.0), a)
    with pytest.raises(TypeError, match="`logits`"):
        lp.token_entropy(jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="`logits`"):
        lp.token_entropy(jnp.float32(0.0))

    fh = lp.token_log_probs_from_hidden
    with pytest.raises(ValueError, match="`hidden`"):
        fh(jnp.zeros((2, 3, 6)), u, a)
    with pytest.raises(ValueError, match="`chunk_size`"):
        fh(h, u, a, chunk_size=0)
    with pytest.raises(TypeError, match="`chunk_size`"):
        fh(h, u, a, chunk_size=2.0)
    with pytest.raises(ValueError, match="`actions`"):
        fh(h, u, a.at[0, 1].set(5))
    with pytest.raises(TypeError, match="`actions`"):
        fh(h, u, a.astype(jnp.float32))
    with pytest.raises(ValueError, match="`actions`"):
        fh(h, u, jnp.zeros((3, 2), jnp.int32))
    with pytest.raises(ValueError, match="`bias`"):
        fh(h, u, a, bias=jnp.zeros(4))
    with pytest.raises(ValueError, match="`unembedding`"):
        fh(h, jnp.zeros((4, 5, 1)), a)
    with pytest.raises(TypeError, match="`unembedding`"):
        fh(h, u.astype(jnp.int32), a)
    with pytest.raises(TypeError, match="`hidden`"):
        fh(h.astype(jnp.int32), u, a)
