"""`rlgen.generative.vae`: the KL and the decoders' log-likelihoods against float64 NumPy
references, the KL schedules' shapes, free bits (value and the per-dimension zero
gradient), beta scaling, the loss's identities (loss = -ELBO in the plain case), the
held-out ELBO, composition under jit / vmap over seeds / lax.scan, and the errors.
"""

import dataclasses
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from rlgen.generative import vae as V
from rlgen.generative.vae import DECODERS, KL_SCHEDULES, METRICS, VAEConfig

# ------------------------------------------------------------------- NumPy references


def np_kl(mean, log_var):
    """Per-dimension KL(N(m, e^lv) || N(0, 1)) in float64, by the textbook formula
    log(sigma_p / sigma_q) + (sigma_q^2 + m^2) / (2 sigma_p^2) - 1/2 with sigma_p = 1."""
    m, lv = np.asarray(mean, np.float64), np.asarray(log_var, np.float64)
    sigma_q = np.exp(0.5 * lv)
    return -np.log(sigma_q) + (sigma_q**2 + m**2) / 2.0 - 0.5


def np_gaussian_ll(x, mu, std):
    x, mu = np.asarray(x, np.float64), np.asarray(mu, np.float64)
    terms = -((x - mu) ** 2) / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi)
    return terms.reshape(len(x), -1).sum(1)


def np_bernoulli_ll(x, logits):
    """x log p + (1 - x) log(1 - p), p = sigmoid(l), in float64 (log1p/logaddexp forms)."""
    x, l = np.asarray(x, np.float64), np.asarray(logits, np.float64)
    log_p, log_1mp = -np.logaddexp(0.0, -l), -np.logaddexp(0.0, l)
    return (x * log_p + (1 - x) * log_1mp).reshape(len(x), -1).sum(1)


def np_schedule(step, config):
    s = float(step)
    if config.kl_schedule == "constant":
        return 1.0
    if config.kl_schedule == "linear":
        return min(1.0, s / config.kl_warmup_steps)
    if config.kl_schedule == "sigmoid":
        k, u = config.kl_sigmoid_steepness, min(1.0, s / config.kl_warmup_steps)
        sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
        return (sig(k * (u - 0.5)) - sig(-k / 2)) / (sig(k / 2) - sig(-k / 2))
    c, r = config.kl_cycle_steps, config.kl_cycle_ratio
    if config.kl_num_cycles is not None and s >= config.kl_num_cycles * c:
        return 1.0
    return min(1.0, (step % c) / (r * c))


# ------------------------------------------------------------------- KL and likelihoods


@st.composite
def gaussian_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    r = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    mean = (scale * r.normal(size=shape)).astype(np.float32)
    log_var = (scale * r.normal(size=shape)).astype(np.float32)
    return mean, log_var


jit_kl = jax.jit(V.gaussian_kl, static_argnames="per_dimension")


@settings(max_examples=15)
@given(gaussian_case())
def test_gaussian_kl_matches_numpy(case):
    mean, log_var = case
    want = np_kl(mean, log_var)
    per_dim = jit_kl(mean, log_var, per_dimension=True)
    assert per_dim.shape == mean.shape and per_dim.dtype == jnp.float32
    np.testing.assert_allclose(per_dim, want, rtol=1e-5, atol=1e-5)
    total = jit_kl(mean, log_var)
    assert total.shape == mean.shape[:1]
    np.testing.assert_allclose(total, want.reshape(len(mean), -1).sum(1), rtol=1e-5, atol=1e-4)
    assert np.all(np.asarray(per_dim) >= -1e-6)  # a KL is never negative


def test_gaussian_kl_is_zero_at_the_prior_and_its_gradient_is_analytic():
    zeros = jnp.zeros((3, 4))
    np.testing.assert_array_equal(V.gaussian_kl(zeros, zeros), np.zeros(3))
    mean, log_var = jnp.array([[0.5, -2.0]]), jnp.array([[0.3, -1.0]])
    g_mean, g_lv = jax.grad(lambda m, v: V.gaussian_kl(m, v).sum(), argnums=(0, 1))(mean, log_var)
    np.testing.assert_allclose(g_mean, mean, rtol=1e-6)  # d/dm = m
    np.testing.assert_allclose(g_lv, 0.5 * (np.exp(log_var) - 1), rtol=1e-6)  # (e^lv - 1) / 2


@st.composite
def likelihood_case(draw):
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4))
    r = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.5, 3.0, 30.0]))
    return shape, r, scale


@settings(max_examples=15)
@given(likelihood_case(), st.sampled_from([0.05, 1.0, 4.0]))
def test_gaussian_log_likelihood_matches_numpy(case, std):
    shape, r, scale = case
    x = r.normal(size=shape).astype(np.float32)
    mu = (x + scale * 0.1 * r.normal(size=shape)).astype(np.float32)
    got = jax.jit(V.gaussian_log_likelihood)(x, mu, std)
    assert got.shape == shape[:1] and got.dtype == jnp.float32
    want = np_gaussian_ll(x, mu, std)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.prod(shape[1:]))


@settings(max_examples=15)
@given(likelihood_case())
def test_bernoulli_log_likelihood_matches_numpy(case):
    shape, r, scale = case
    targets = r.random(shape).astype(np.float32)  # grey levels in [0, 1)
    targets[..., 0] = r.integers(0, 2, shape[:-1])  # and exact 0 / 1 values
    logits = (scale * r.normal(size=shape)).astype(np.float32)  # up to ~100: no overflow
    got = jax.jit(V.bernoulli_log_likelihood)(targets, logits)
    assert got.shape == shape[:1] and np.all(np.isfinite(got))
    want = np_bernoulli_ll(targets, logits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.prod(shape[1:]) * scale)


def test_bernoulli_log_likelihood_extremes_are_finite():
    x = jnp.array([[1.0, 0.0, 1.0, 0.0]])
    logits = jnp.array([[200.0, -200.0, -200.0, 200.0]])
    got = V.bernoulli_log_likelihood(x, logits)
    np.testing.assert_allclose(got, [-400.0], rtol=1e-6)  # two certain hits, two misses
    grad = jax.grad(lambda l: V.bernoulli_log_likelihood(x, l).sum())(logits)
    np.testing.assert_allclose(grad, [[0.0, 0.0, 1.0, -1.0]], atol=1e-6)  # x - sigmoid(l)


def test_reparameterized_draws_have_the_posterior_moments_and_pathwise_gradients():
    mean, log_var = jnp.full((20_000, 2), 1.5), jnp.log(jnp.full((20_000, 2), 0.25))
    z = V.reparameterize(mean, log_var, jax.random.key(0))
    np.testing.assert_allclose(z.mean(0), 1.5, atol=0.01)
    np.testing.assert_allclose(z.std(0), 0.5, atol=0.01)
    # dz/dmean = 1, dz/dlog_var = (z - mean) / 2
    key = jax.random.key(1)
    g_m, g_v = jax.grad(lambda m, v: V.reparameterize(m, v, key).sum(), argnums=(0, 1))(
        mean[:3], log_var[:3]
    )
    np.testing.assert_allclose(g_m, 1.0)
    want = (V.reparameterize(mean[:3], log_var[:3], key) - 1.5) / 2
    np.testing.assert_allclose(g_v, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- KL schedules


SCHEDULE_CONFIGS = [
    VAEConfig(kl_schedule="constant"),
    VAEConfig(kl_schedule="linear", kl_warmup_steps=40),
    VAEConfig(kl_schedule="sigmoid", kl_warmup_steps=40),
    VAEConfig(kl_schedule="sigmoid", kl_warmup_steps=41, kl_sigmoid_steepness=3.0),
    VAEConfig(kl_schedule="cyclical", kl_cycle_steps=20, kl_cycle_ratio=0.5),
    VAEConfig(kl_schedule="cyclical", kl_cycle_steps=7, kl_cycle_ratio=1.0, kl_num_cycles=2),
]


@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=lambda c: c.kl_schedule)
def test_schedules_match_numpy_on_a_traced_step_without_recompiling(config):
    fn = jax.jit(lambda s: V.kl_weight(s, config))
    steps = range(0, 130)
    got = [float(fn(jnp.int32(s))) for s in steps]
    assert fn._cache_size() == 1  # the step is traced: one program for every step
    np.testing.assert_allclose(got, [np_schedule(s, config) for s in steps], atol=1e-6)
    assert all(0.0 <= w <= 1.0 for w in got)
    # vmapped over steps, too
    np.testing.assert_allclose(jax.vmap(fn)(jnp.arange(130)), got, atol=1e-6)


def test_every_schedule_is_covered():
    assert {c.kl_schedule for c in SCHEDULE_CONFIGS} == set(KL_SCHEDULES)


def test_linear_reaches_one_at_the_end_of_warmup_and_stays():
    config = VAEConfig(kl_schedule="linear", kl_warmup_steps=100)
    w = np.asarray(jax.vmap(lambda s: V.kl_weight(s, config))(jnp.arange(400)))
    assert w[0] == 0.0 and w[50] == pytest.approx(0.5) and w[100] == 1.0
    assert np.all(np.diff(w) >= 0) and np.all(w[100:] == 1.0)


def test_sigmoid_is_zero_half_one_at_start_midpoint_end():
    config = VAEConfig(kl_schedule="sigmoid", kl_warmup_steps=100)
    w = np.asarray(jax.vmap(lambda s: V.kl_weight(s, config))(jnp.arange(300)))
    assert w[0] == pytest.approx(0.0, abs=1e-6) and w[50] == pytest.approx(0.5, abs=1e-6)
    assert w[100] == pytest.approx(1.0, abs=1e-6) and np.all(w[100:] >= 1.0 - 1e-6)
    assert np.all(np.diff(w) >= -1e-7)
    # steeper than linear in the middle, flatter at the ends (an S, not a ramp)
    assert w[40] < 0.4 and w[60] > 0.6 and w[10] < 0.1 and w[90] > 0.9


def test_cyclical_resets_at_each_cycle_and_holds_one_after_the_ramp():
    config = VAEConfig(kl_schedule="cyclical", kl_cycle_steps=100, kl_cycle_ratio=0.25)
    w = np.asarray(jax.vmap(lambda s: V.kl_weight(s, config))(jnp.arange(500)))
    for start in range(0, 500, 100):
        assert w[start] == 0.0  # back to 0 at every cycle
        np.testing.assert_allclose(w[start : start + 26], np.arange(26) / 25, atol=1e-6)
        assert np.all(w[start + 25 : start + 100] == 1.0)
    limited = dataclasses.replace(config, kl_num_cycles=2)
    w = np.asarray(jax.vmap(lambda s: V.kl_weight(s, limited))(jnp.arange(500)))
    assert w[100] == 0.0 and np.all(w[200:] == 1.0)  # two cycles, then 1 for good


# ------------------------------------------------------------------- free bits


def test_free_bits_value_and_zero_gradient_below_the_floor_per_dimension():
    # latent dims 0 and 2 have batch-mean KL below 0.5 nats, dims 1 and 3 above
    mean = jnp.array([[0.1, 2.0, 0.0, -1.5], [-0.2, 1.0, 0.1, -2.0]])
    log_var = jnp.array([[0.0, -1.0, 0.2, 0.5], [0.1, 0.3, -0.1, 0.4]])
    per_dim = np_kl(mean, log_var).mean(0)
    below = per_dim < 0.5
    assert list(below) == [True, False, True, False]

    def term(m, v):
        return V.free_bits_kl(V.gaussian_kl(m, v, per_dimension=True), 0.5)

    np.testing.assert_allclose(term(mean, log_var), np.maximum(0.5, per_dim).sum(), rtol=1e-6)
    g_mean, g_lv = jax.grad(term, argnums=(0, 1))(mean, log_var)
    assert np.all(np.asarray(g_mean)[:, below] == 0) and np.all(np.asarray(g_lv)[:, below] == 0)
    assert np.all(np.asarray(g_mean)[:, ~below] != 0) and np.all(np.asarray(g_lv)[:, ~below] != 0)
    # above the floor, the gradient is the batch-mean KL's
    g_plain = jax.grad(lambda m: V.gaussian_kl(m, log_var).mean())(mean)
    np.testing.assert_allclose(np.asarray(g_mean)[:, ~below], np.asarray(g_plain)[:, ~below])


def test_free_bits_zero_is_the_mean_kl_and_the_floor_is_on_the_batch_mean():
    kl = jnp.array([[0.0, 3.0], [1.0, 0.0]])
    assert float(V.free_bits_kl(kl, 0.0)) == pytest.approx(2.0)  # = mean_b sum_j KL_bj
    # floor on the batch mean (0.5 and 1.5), not per example: max(1, .) gives 1 + 1.5
    assert float(V.free_bits_kl(kl, 1.0)) == pytest.approx(2.5)


# ------------------------------------------------------------------- the loss

DIM, LATENT = 6, 3


class LinearVAE(nnx.Module):
    """Encode: mean = A x, log_var = b; decode: C z + d (to compute the loss by hand)."""

    def __init__(self, seed=0):
        r = np.random.default_rng(seed)
        self.latent_dim = LATENT
        self.a = nnx.Param(jnp.asarray(r.normal(size=(DIM, LATENT)) * 0.5, jnp.float32))
        self.b = nnx.Param(jnp.asarray(r.normal(size=(LATENT,)) * 0.5 - 1.0, jnp.float32))
        self.c = nnx.Param(jnp.asarray(r.normal(size=(LATENT, DIM)) * 0.5, jnp.float32))
        self.d = nnx.Param(jnp.asarray(r.normal(size=(DIM,)) * 0.1, jnp.float32))

    def encode(self, x):
        return x @ self.a, jnp.broadcast_to(self.b[...], (x.shape[0], LATENT))

    def decode(self, z):
        return z @ self.c + self.d


def images(seed=0, rows=8, unit=False):
    r = np.random.default_rng(seed)
    x = r.random((rows, DIM)) if unit else r.normal(size=(rows, DIM))
    return {"images": jnp.asarray(x, jnp.float32)}


def np_loss(model, batch, key, step, config):
    """The loss and ELBO of `vae_loss`, by hand in float64 from the same noise."""
    x = np.asarray(batch["images"], np.float64)
    a, b, c, d = (np.asarray(p[...], np.float64) for p in (model.a, model.b, model.c, model.d))
    mean, log_var = x @ a, np.broadcast_to(b, (len(x), LATENT))
    eps = np.asarray(jax.random.normal(key, mean.shape, jnp.float32), np.float64)
    out = (mean + np.exp(0.5 * log_var) * eps) @ c + d
    if config.decoder == "bernoulli":
        log_px = np_bernoulli_ll(x, out)
    else:
        log_px = np_gaussian_ll(x, out, config.decoder_std)
    kl_dims = np_kl(mean, log_var)
    weight = config.beta * np_schedule(step, config)
    floored = np.maximum(config.free_bits, kl_dims.mean(0)).sum()
    return -log_px.mean() + weight * floored, (log_px - kl_dims.sum(1)).mean()


LOSS_CONFIGS = [
    VAEConfig(),
    VAEConfig(beta=4.0, decoder_std=0.3),
    VAEConfig(kl_schedule="linear", kl_warmup_steps=10, free_bits=0.4),
    VAEConfig(decoder="bernoulli", kl_schedule="cyclical", kl_cycle_steps=8, beta=0.5),
]


@pytest.mark.parametrize("config", LOSS_CONFIGS)
def test_loss_matches_a_float64_reference(config):
    model, key = LinearVAE(), jax.random.key(3)
    batch = images(unit=config.decoder == "bernoulli")
    fn = jax.jit(lambda b, k, s: V.vae_loss(model, b, k, s, config))
    for step in (0, 5, 13):
        loss, metrics = fn(batch, key, step)
        want_loss, want_elbo = np_loss(model, batch, key, step, config)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(metrics["elbo"], want_elbo, rtol=1e-5, atol=1e-4)
        assert float(metrics["kl_weight"]) == pytest.approx(config.beta * np_schedule(step, config))
    assert set(metrics) == set(METRICS) and fn._cache_size() == 1


def test_plain_loss_is_the_negative_elbo_and_beta_scales_only_the_kl():
    model, batch, key = LinearVAE(), images(), jax.random.key(0)
    loss, m = V.vae_loss(model, batch, key, 0, VAEConfig())
    np.testing.assert_allclose(loss, -m["elbo"], rtol=1e-6)
    np.testing.assert_allclose(m["elbo"], -m["reconstruction_loss"] - m["kl"], rtol=1e-6)
    zero, m0 = V.vae_loss(model, batch, key, 0, VAEConfig(beta=0.0))
    np.testing.assert_allclose(zero, m0["reconstruction_loss"], rtol=1e-6)
    for beta in (0.5, 2.0, 8.0):
        scaled, mb = V.vae_loss(model, batch, key, 0, VAEConfig(beta=beta))
        np.testing.assert_allclose(scaled - zero, beta * m["kl"], rtol=1e-5)
        np.testing.assert_allclose(mb["elbo"], m["elbo"])  # the reported ELBO is unweighted
    # the schedule multiplies the KL like beta does: linear at step 5 of 10 = beta 1/2
    half, _ = V.vae_loss(model, batch, key, 5, VAEConfig(kl_schedule="linear", kl_warmup_steps=10))
    np.testing.assert_allclose(half - zero, 0.5 * m["kl"], rtol=1e-5)


def test_kl_gradient_is_scaled_by_beta():
    model, batch, key = LinearVAE(), images(), jax.random.key(0)

    def grad_b(beta):  # the encoder's log-variance only feeds the KL and the noise scale
        cfg = VAEConfig(beta=beta)
        return nnx.jit(nnx.grad(lambda m: V.vae_loss(m, batch, key, 0, cfg)[0]))(model)

    g0, g1, g3 = grad_b(0.0), grad_b(1.0), grad_b(3.0)
    np.testing.assert_allclose(g3.b[...] - g0.b[...], 3 * (g1.b[...] - g0.b[...]), rtol=1e-4)
    np.testing.assert_allclose(g3.c[...], g0.c[...], rtol=1e-6)  # the decoder sees no KL


def test_loss_under_jit_vmap_over_seeds_and_scan_over_steps():
    model, batch = LinearVAE(), images()
    config = VAEConfig(kl_schedule="linear", kl_warmup_steps=4, free_bits=0.1)
    graphdef, state = nnx.split(model)

    def loss_at(state, key, step):
        return V.vae_loss(nnx.merge(graphdef, state), batch, key, step, config)

    keys = jax.random.split(jax.random.key(0), 5)
    eager = [loss_at(state, k, 2)[0] for k in keys]
    vmapped, metrics = jax.jit(jax.vmap(loss_at, in_axes=(None, 0, None)))(state, keys, 2)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-6)
    assert metrics["elbo"].shape == (5,)

    def body(carry, step):
        loss, m = loss_at(state, keys[0], step)
        return carry + loss, m["kl_weight"]

    total, weights = jax.lax.scan(body, 0.0, jnp.arange(6))
    np.testing.assert_allclose(weights, [0, 0.25, 0.5, 0.75, 1, 1])
    want = sum(float(loss_at(state, keys[0], s)[0]) for s in range(6))
    np.testing.assert_allclose(total, want, rtol=1e-5)


def test_held_out_elbo_is_exact_when_the_decoder_ignores_z():
    class Constant(LinearVAE):
        def decode(self, z):
            return jnp.broadcast_to(self.d[...], (z.shape[0], DIM))

    model, x = Constant(), images()["images"]
    got = V.elbo(model, x, jax.random.key(0), num_samples=3)
    mean, log_var = model.encode(x)
    want = np_gaussian_ll(x, np.broadcast_to(model.d[...], x.shape), 1.0)
    want = want - np_kl(mean, log_var).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_held_out_elbo_averages_draws_and_matches_the_loss():
    model, batch = LinearVAE(), images()
    x = batch["images"]
    one = V.elbo(model, x, jax.random.key(0))
    assert one.shape == (8,)
    _, m = V.vae_loss(model, batch, jax.random.key(0), 0)
    # vae_loss draws with the key itself, elbo with its split: same distribution
    fn = jax.jit(lambda k: V.elbo(model, x, k, num_samples=4000))
    many, many2 = fn(jax.random.key(1)), fn(jax.random.key(2))
    np.testing.assert_allclose(many, many2, rtol=0.02)  # a lower-variance estimate
    assert abs(float(many.mean()) - float(m["elbo"])) < 0.5 * abs(float(m["elbo"]))


def test_reconstruct_and_sample_give_the_decoder_mean():
    model, x = LinearVAE(), images(unit=True)["images"]
    bern = VAEConfig(decoder="bernoulli")
    det = V.reconstruct(model, x, None, bern)
    mean, _ = model.encode(x)
    np.testing.assert_allclose(det, jax.nn.sigmoid(model.decode(mean)), rtol=1e-6)
    noisy = V.reconstruct(model, x, jax.random.key(0), VAEConfig())
    assert noisy.shape == x.shape and not np.allclose(noisy, model.decode(mean))
    drawn = V.sample_prior(model, 7, jax.random.key(0), bern)
    assert drawn.shape == (7, DIM) and np.all((drawn >= 0) & (drawn <= 1))


class LearnedStdVAE(LinearVAE):
    def __init__(self, log_scale):
        super().__init__()
        self.decoder_log_scale = nnx.Param(jnp.asarray(log_scale, jnp.float32))


def test_metrics_report_active_units_and_the_decoder_std():
    model = LearnedStdVAE(np.log(0.5))
    config = VAEConfig(decoder_std=0.2, learn_decoder_std=True)
    loss = lambda mdl: V.vae_loss(mdl, images(), jax.random.key(0), 0, config)  # noqa: E731
    (_, m), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    assert float(m["decoder_std"]) == pytest.approx(0.1)
    # active units: latent dimensions whose posterior mean varies over the batch
    mean, _ = model.encode(images()["images"])
    assert float(m["active_units"]) == np.sum(np.var(np.asarray(mean), 0) > 0.01) > 0
    # a std learned from the data: the gradient pushes it towards the residual scale
    assert float(grads.decoder_log_scale[...]) < 0  # residuals >> 0.1: grow the std


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -1.0}, "`beta`"),
        ({"kl_schedule": "cosine"}, "`kl_schedule`"),
        ({"kl_warmup_steps": 0}, "`kl_warmup_steps`"),
        ({"kl_warmup_steps": 1.5}, "`kl_warmup_steps`"),
        ({"kl_sigmoid_steepness": 0.0}, "`kl_sigmoid_steepness`"),
        ({"kl_cycle_steps": 0}, "`kl_cycle_steps`"),
        ({"kl_cycle_ratio": 0.0}, "`kl_cycle_ratio`"),
        ({"kl_cycle_ratio": 1.5}, "`kl_cycle_ratio`"),
        ({"kl_num_cycles": 0}, "`kl_num_cycles`"),
        ({"free_bits": -0.1}, "`free_bits`"),
        ({"decoder": "laplace"}, "`decoder`"),
        ({"decoder_std": 0.0}, "`decoder_std`"),
        ({"learn_decoder_std": 1}, "`learn_decoder_std`"),
        ({"learn_decoder_std": True, "decoder": "bernoulli"}, "learn_decoder_std"),
        ({"max_grad_norm": 0.0}, "`max_grad_norm`"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        VAEConfig(**kwargs)


def test_choices_are_the_module_constants():
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(VAEConfig)}
    assert choices["kl_schedule"] == KL_SCHEDULES and choices["decoder"] == DECODERS


def test_bad_batches_are_clear_errors_before_any_work():
    model, key = LinearVAE(), jax.random.key(0)
    bern = VAEConfig(decoder="bernoulli")
    cases = [
        ({"images": images()["images"], "labels": jnp.zeros(8)}, VAEConfig(), "keys"),
        ({"x": images()["images"]}, VAEConfig(), "keys"),
        ({"images": jnp.zeros((8, DIM), jnp.int32)}, VAEConfig(), "floating"),
        ({"images": jnp.zeros(DIM)}, VAEConfig(), r"rank >= 2"),
        ({"images": jnp.zeros((8, DIM + 1))}, VAEConfig(), None),  # the model's shape check
        (images(), bern, r"\[0, 1\].*got values in \[-"),  # Gaussian-scale data, Bernoulli
        ({"images": jnp.full((8, DIM), jnp.nan)}, bern, "NaN"),
    ]
    for batch, config, match in cases:
        with pytest.raises((TypeError, ValueError), match=match):
            V.vae_loss(model, batch, key, 0, config)
    with pytest.raises(TypeError, match="VAEConfig"):
        V.vae_loss(model, images(), key, 0, {"beta": 1.0})
    with pytest.raises(ValueError, match="num_samples"):
        V.elbo(model, images()["images"], key, num_samples=0)
    with pytest.raises(ValueError, match="`free_bits`"):
        V.free_bits_kl(jnp.ones((2, 2)), -1.0)
    with pytest.raises(ValueError, match="`std`"):
        V.gaussian_log_likelihood(jnp.ones((2, 2)), jnp.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match="`log_var`"):
        V.gaussian_kl(jnp.ones((2, 2)), jnp.ones((2, 3)))


def test_bad_model_outputs_are_named():
    class WrongDecoder(LinearVAE):
        def decode(self, z):
            return super().decode(z)[:, :-1]

    class WrongEncoder(LinearVAE):
        def encode(self, x):
            return x @ self.a

    with pytest.raises(ValueError, match=r"model.decode\(z\)"):
        V.vae_loss(WrongDecoder(), images(), jax.random.key(0), 0)
    with pytest.raises(TypeError, match=r"model.encode\(images\)"):
        V.vae_loss(WrongEncoder(), images(), jax.random.key(0), 0)
    with pytest.raises(TypeError, match="decoder_log_scale"):
        V.vae_loss(LinearVAE(), images(), jax.random.key(0), 0, VAEConfig(learn_decoder_std=True))


def test_out_of_range_bernoulli_targets_under_jit_give_a_nan_loss():
    model, config = LinearVAE(), VAEConfig(decoder="bernoulli")
    fn = jax.jit(lambda b: V.vae_loss(model, b, jax.random.key(0), 0, config)[0])
    good = images(unit=True)
    assert np.isfinite(float(fn(good)))
    bad = {"images": good["images"].at[0, 0].set(1.5)}
    # NaN, so a trainer skips the update and reports it (no host callback in the step)
    assert np.isnan(float(fn(bad)))
