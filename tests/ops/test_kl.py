"""Tests for rlgen.ops.kl: the k1/k2/k3 estimators (values, bias, gradients in expectation)
and the exact KL divergence and entropy over a full distribution.

Expectations over `a ~ p` are computed exactly by enumerating a small categorical, so the
unbiasedness and gradient claims of the docstring are checked without sampling noise.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from rlgen.ops import kl

RTOL, ATOL = 1e-4, 1e-5
ESTIMATORS = ("k1", "k2", "k3")


# ----------------------------------------------------------------------------- references


def ref_kl_estimate(log_probs, ref_log_probs, estimator, max_log_ratio=20.0):
    lp = np.asarray(log_probs, np.float64)
    ref = np.asarray(ref_log_probs, np.float64)
    out = np.zeros(lp.shape)
    for idx in np.ndindex(lp.shape):
        log_r = min(max(ref[idx] - lp[idx], -max_log_ratio), max_log_ratio)
        if estimator == "k1":
            out[idx] = -log_r
        elif estimator == "k2":
            out[idx] = 0.5 * log_r * log_r
        else:
            out[idx] = math.exp(log_r) - 1.0 - log_r
    return out


def ref_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def ref_kl(log_p, log_q):
    """sum_v p_v (log p_v - log q_v) over the last axis, skipping p_v = 0."""
    log_p, log_q = np.asarray(log_p, np.float64), np.asarray(log_q, np.float64)
    out = np.zeros(log_p.shape[:-1])
    for idx in np.ndindex(out.shape):
        total = 0.0
        for lp_v, lq_v in zip(log_p[idx], log_q[idx], strict=True):
            if lp_v > -np.inf:
                total += math.exp(lp_v) * (lp_v - lq_v)
        out[idx] = total
    return out


def ref_entropy(log_p):
    log_p = np.asarray(log_p, np.float64)
    out = np.zeros(log_p.shape[:-1])
    for idx in np.ndindex(out.shape):
        out[idx] = -sum(math.exp(v) * v for v in log_p[idx] if v > -np.inf)
    return out


# ----------------------------------------------------------------------------- strategies

SHAPES = [(1,), (3,), (2, 5), (4, 1, 2), (5, 12)]
DIST_SHAPES = [(1, 1), (1, 2), (3, 4), (2, 3, 9), (5, 7)]


@st.composite
def log_prob_pairs(draw):
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    spread = draw(st.sampled_from([0.01, 1.0, 10.0, 40.0]))  # 40: beyond the clamp
    log_probs = -rng.exponential(3.0, shape)
    ref = log_probs + spread * rng.standard_normal(shape)
    return log_probs.astype(np.float32), ref.astype(np.float32)


@st.composite
def distribution_pairs(draw, zeros=True):
    """Normalised float32 log-probs `(log_p, log_q)` of one shape `[..., V]`.

    With `zeros`, `p` may have zero-probability entries (`-inf`), and `q` may be zero
    where `p` is (so that KL(p || q) stays finite).
    """
    shape = draw(st.sampled_from(DIST_SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    zp = scale * rng.standard_normal(shape)
    zq = scale * rng.standard_normal(shape)
    if zeros and shape[-1] > 1 and draw(st.booleans()):
        dead = rng.random(shape) < 0.4
        dead[..., 0] = False  # keep at least one entry alive
        zp = np.where(dead, -np.inf, zp)
        zq = np.where(dead & (rng.random(shape) < 0.5), -np.inf, zq)
    return ref_log_softmax(zp).astype(np.float32), ref_log_softmax(zq).astype(np.float32)


_jit_estimate = jax.jit(kl.kl_estimate, static_argnames="estimator")
_jit_kl = jax.jit(kl.kl_divergence)
_jit_entropy = jax.jit(kl.entropy)


# ----------------------------------------------------------------------------- estimators


@given(log_prob_pairs(), st.sampled_from(ESTIMATORS), st.sampled_from([0.5, 5.0, 20.0]))
def test_kl_estimate_matches_reference(pair, estimator, max_log_ratio):
    log_probs, ref = pair
    got = _jit_estimate(log_probs, ref, estimator, max_log_ratio=max_log_ratio)
    assert got.shape == log_probs.shape
    assert got.dtype == jnp.float32
    want = ref_kl_estimate(log_probs, ref, estimator, max_log_ratio)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * max(1.0, max_log_ratio))


@given(
    st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=12),
    st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=12),
)
def test_k2_and_k3_are_never_negative(a, b):
    n = min(len(a), len(b))
    x = np.asarray(a[:n], np.float32)
    y = np.asarray(b[:n], np.float32)
    # Also the values close to each other, where k3 = exp(r) - 1 - r ~ r^2 / 2 is tiny.
    near = (x + np.float32(1e-4) * np.tanh(y)).astype(np.float32)
    for lp_, ref_ in ((x, y), (x, near), (near, x)):
        for est in ("k2", "k3"):
            out = np.asarray(kl.kl_estimate(lp_, ref_, est))
            assert np.all(np.isfinite(out)), est
            assert np.all(out >= 0.0), (est, out.min())


@given(distribution_pairs(zeros=False))
def test_k1_and_k3_are_unbiased_by_exact_enumeration(pair):
    log_p, log_q = pair
    p = np.exp(log_p.astype(np.float64))
    exact = ref_kl(log_p, log_q)
    for est in ("k1", "k3"):
        # Log-ratios here reach ~25; the default clamp (20) would bias k3, so widen it.
        samples = np.asarray(_jit_estimate(log_p, log_q, est, max_log_ratio=50.0), np.float64)
        expectation = np.sum(p * samples, axis=-1)  # E_{a~p}[k(a)]
        np.testing.assert_allclose(expectation, exact, rtol=1e-4, atol=1e-5, err_msg=est)
    # ... and the exact kernel agrees with the same number.
    np.testing.assert_allclose(_jit_kl(log_p, log_q), exact, rtol=1e-4, atol=1e-5)


def test_k2_is_biased():
    # The contrast that makes the unbiasedness test meaningful: E_p[k2] != KL(p || q).
    log_p = np.log(np.array([0.7, 0.2, 0.1]))
    log_q = np.log(np.array([0.1, 0.3, 0.6]))
    e_k2 = np.sum(np.exp(log_p) * np.asarray(kl.kl_estimate(log_p, log_q, "k2")))
    assert abs(e_k2 - ref_kl(log_p, log_q)) > 0.1


@jax.jit
def _expected_grads(theta, log_q):
    """E_{a ~ p_theta}[grad_theta k(a)] for k1, k2, k3, exactly by enumeration:
    the gradient of sum_a stop_gradient(p(a)) k(log p_theta(a), log q(a))."""

    def surrogate(theta, estimator):
        log_p = jax.nn.log_softmax(theta)
        weights = jax.lax.stop_gradient(jnp.exp(log_p))
        return jnp.sum(weights * kl.kl_estimate(log_p, log_q, estimator))

    return {est: jax.grad(surrogate)(theta, est) for est in ESTIMATORS}


@given(
    st.sampled_from([2, 3, 5, 9]),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.3, 1.0, 2.0]),
)
def test_gradient_claims_by_exact_enumeration(vocab, seed, scale):
    rng = np.random.default_rng(seed)
    theta = (scale * rng.standard_normal(vocab)).astype(np.float32)
    log_q = ref_log_softmax(scale * rng.standard_normal(vocab)).astype(np.float32)
    p = np.exp(ref_log_softmax(theta))
    q = np.exp(np.asarray(log_q, np.float64))
    kl_pq = float(np.sum(p * (np.log(p) - np.log(q))))
    grads = _expected_grads(theta, log_q)

    # k1 in the loss gives no KL gradient at all: E[grad log p] = 0.
    np.testing.assert_allclose(grads["k1"], 0.0, atol=1e-6)
    # k2: the reverse-KL gradient, d/dtheta KL(p_theta || q) = p * (log p - log q - KL).
    want_k2 = p * (np.log(p) - np.log(q) - kl_pq)
    np.testing.assert_allclose(grads["k2"], want_k2, rtol=1e-4, atol=1e-5)
    # k3: the forward-KL gradient, d/dtheta KL(q || p_theta) = p - q.
    np.testing.assert_allclose(grads["k3"], p - q, rtol=1e-4, atol=1e-5)


def test_gradient_claims_agree_with_autodiff_of_the_exact_kl():
    rng = np.random.default_rng(0)
    theta = jnp.asarray(rng.standard_normal(6), jnp.float32)
    log_q = jax.nn.log_softmax(jnp.asarray(rng.standard_normal(6), jnp.float32))
    reverse = jax.grad(lambda t: kl.kl_divergence(jax.nn.log_softmax(t), log_q))(theta)
    forward = jax.grad(lambda t: kl.kl_divergence(log_q, jax.nn.log_softmax(t)))(theta)
    grads = _expected_grads(theta, log_q)
    np.testing.assert_allclose(grads["k2"], reverse, atol=1e-5)
    np.testing.assert_allclose(grads["k3"], forward, atol=1e-5)
    assert float(jnp.max(jnp.abs(reverse - forward))) > 1e-2  # k2 and k3 really differ


def test_reference_log_probs_are_not_differentiated():
    lp_ = jnp.log(jnp.array([0.5, 0.2, 0.3]))
    ref = jnp.log(jnp.array([0.3, 0.3, 0.4]))
    for est in ESTIMATORS:
        g_ref = jax.grad(lambda r, e=est: jnp.sum(kl.kl_estimate(lp_, r, e)))(ref)
        np.testing.assert_array_equal(g_ref, 0.0)
        g_lp = jax.grad(lambda x, e=est: jnp.sum(kl.kl_estimate(x, ref, e)))(lp_)
        assert float(jnp.max(jnp.abs(g_lp))) > 0.1, est


def test_extreme_log_ratios_are_clamped_and_finite():
    lp_ = jnp.array([-1e4, 0.0, -3.0])
    ref = jnp.array([0.0, -1e4, -3.0])
    k3 = kl.kl_estimate(lp_, ref, "k3", max_log_ratio=20.0)
    want = ref_kl_estimate(lp_, ref, "k3", 20.0)
    np.testing.assert_allclose(k3, want, rtol=1e-5)
    assert float(k3[2]) == 0.0
    g = jax.grad(lambda x: jnp.sum(kl.kl_estimate(x, ref, "k3")))(lp_)
    assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------- exact forms


@given(distribution_pairs())
def test_kl_divergence_and_entropy_match_reference(pair):
    log_p, log_q = pair
    got = _jit_kl(log_p, log_q)
    want = ref_kl(log_p, log_q)
    assert np.all(np.isfinite(np.asarray(got)))
    assert got.shape == log_p.shape[:-1]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.all(np.asarray(got) >= -1e-6)  # Gibbs' inequality
    np.testing.assert_array_equal(_jit_kl(log_p, log_p), 0.0)  # KL(p, p) = 0 exactly

    h = _jit_entropy(log_p)
    np.testing.assert_allclose(h, ref_entropy(log_p), rtol=RTOL, atol=ATOL)
    assert np.all(np.asarray(h) >= -1e-6)
    assert np.all(np.asarray(h) <= math.log(log_p.shape[-1]) + 1e-5)
    # The tutorial-named wrappers, against the same references (argument order included).
    np.testing.assert_allclose(
        kl.compute_policy_entropy(log_p), ref_entropy(log_p), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(kl.compute_kl_divergence(log_p, log_q), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("vocab", [1, 2, 7, 50])
def test_entropy_of_uniform_is_log_v(vocab):
    uniform = jnp.full((3, vocab), -math.log(vocab), jnp.float32)
    np.testing.assert_allclose(kl.entropy(uniform), math.log(vocab), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kl.compute_policy_entropy(uniform), math.log(vocab), rtol=1e-6)


def test_zero_probability_entries_give_finite_values_and_gradients():
    log_p = jnp.log(jnp.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]]))  # -inf entries
    log_q = jnp.log(jnp.array([[0.25, 0.5, 0.25], [0.2, 0.0, 0.8]]))  # one -inf where p = 0
    got = kl.kl_divergence(log_p, log_q)
    np.testing.assert_allclose(got, [math.log(2.0), -math.log(0.8)], rtol=1e-6)
    np.testing.assert_allclose(kl.entropy(log_p), [math.log(2.0), 0.0], atol=1e-7)
    g_p, g_q = jax.grad(lambda a, b: jnp.sum(kl.kl_divergence(a, b)), argnums=(0, 1))(log_p, log_q)
    g_h = jax.grad(lambda a: jnp.sum(kl.entropy(a)))(log_p)
    for g in (g_p, g_q, g_h):
        assert np.all(np.isfinite(np.asarray(g)))
    # d/dlog_q = -p: zero where p = 0, -p elsewhere.
    np.testing.assert_allclose(g_q, -np.exp(np.asarray(log_p)), atol=1e-7)
    # d/dlog_p of sum p (log p - log q) = p (log p - log q + 1), 0 where p = 0.
    p = np.exp(np.asarray(log_p, np.float64))
    lq = np.asarray(log_q, np.float64)
    want = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.where(p > 0, lq, 0) + 1), 0)
    np.testing.assert_allclose(g_p, want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- composition


def test_jit_vmap_grad_and_check_grads():
    rng = np.random.default_rng(3)
    lp_ = jnp.asarray(-rng.exponential(1.0, (4, 5)), jnp.float32)
    ref = jnp.asarray(lp_ + 0.5 * rng.standard_normal((4, 5)), jnp.float32)
    log_p = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((4, 6)), jnp.float32))
    log_q = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((4, 6)), jnp.float32))

    for est in ESTIMATORS:
        eager = kl.kl_estimate(lp_, ref, est)
        np.testing.assert_allclose(_jit_estimate(lp_, ref, est), eager, rtol=1e-6)
        batched = jax.vmap(lambda a, b, e=est: kl.kl_estimate(a, b, e))(lp_, ref)
        np.testing.assert_allclose(batched, eager, rtol=1e-6)
        check_grads(
            jax.jit(lambda x, e=est: kl.kl_estimate(x, ref, e)),
            (lp_,),
            1,
            modes=("fwd", "rev"),
            atol=1e-2,
            rtol=1e-2,
            eps=1e-2,
        )
    # max_log_ratio is a number one may sweep: vmap over it (no static value needed).
    ratios = jnp.array([0.1, 0.5, 20.0])
    swept = jax.jit(jax.vmap(lambda m: kl.kl_estimate(lp_, ref, "k3", max_log_ratio=m)))(ratios)
    for i, m in enumerate([0.1, 0.5, 20.0]):
        want = ref_kl_estimate(lp_, ref, "k3", m)
        np.testing.assert_allclose(swept[i], want, rtol=1e-4, atol=1e-7)

    np.testing.assert_allclose(_jit_kl(log_p, log_q), kl.kl_divergence(log_p, log_q), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(kl.kl_divergence)(log_p, log_q), _jit_kl(log_p, log_q))
    np.testing.assert_allclose(jax.vmap(kl.entropy)(log_p), _jit_entropy(log_p), rtol=1e-6)
    for f, args in ((kl.kl_divergence, (log_p, log_q)), (kl.entropy, (log_p,))):
        check_grads(jax.jit(f), args, 1, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2, eps=1e-2)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_naming_the_argument():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="`estimator`"):
        kl.kl_estimate(x, x, "k4")
    with pytest.raises(ValueError, match="`estimator`"):
        kl.kl_estimate(x, x, "K3")
    with pytest.raises(ValueError, match="`ref_log_probs`"):
        kl.kl_estimate(x, jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="`log_probs`"):
        kl.kl_estimate(x.astype(jnp.int32), x)
    with pytest.raises(TypeError, match="`ref_log_probs`"):
        kl.kl_estimate(x, x.astype(jnp.int32))
    with pytest.raises(ValueError, match="`max_log_ratio`"):
        kl.kl_estimate(x, x, max_log_ratio=0.0)
    with pytest.raises(ValueError, match="`max_log_ratio`"):
        kl.kl_estimate(x, x, max_log_ratio=-1.0)

    for fn in (kl.kl_divergence, kl.compute_kl_divergence):
        with pytest.raises(ValueError, match="`log_q`"):
            fn(x, jnp.zeros((2, 4)))
        with pytest.raises(TypeError, match="`log_p`"):
            fn(x.astype(jnp.int32), x)
        with pytest.raises(TypeError, match="`log_q`"):
            fn(x, x.astype(jnp.int32))
        with pytest.raises(ValueError, match="`log_p`"):
            fn(jnp.float32(0.0), jnp.float32(0.0))
    for fn in (kl.entropy, kl.compute_policy_entropy):
        with pytest.raises(TypeError, match="`log_probs`"):
            fn(x.astype(jnp.int32))
        with pytest.raises(ValueError, match="`log_probs`"):
            fn(jnp.float32(0.0))
