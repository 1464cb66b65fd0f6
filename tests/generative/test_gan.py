"""`rlgen.generative.gan`: each loss against a float64 NumPy reference, the optimal
discriminator identities (Goodfellow et al.'s Jensen-Shannon identity, the LSGAN and hinge
optima), the gradient penalty and R1 penalty against closed forms and a NumPy reference,
the objectives and the config's errors.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlgen.generative.gan import (
    GAN_LOSSES,
    GANConfig,
    check_images,
    discriminator_loss,
    discriminator_objective,
    generator_loss,
    generator_objective,
    gradient_penalty,
    r1_penalty,
    sample,
)

jit_d_loss = jax.jit(discriminator_loss, static_argnames="loss")
jit_g_loss = jax.jit(generator_loss, static_argnames="loss")


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_d_loss(r, f, loss):
    r, f = np.asarray(r, np.float64), np.asarray(f, np.float64)
    if loss == "non_saturating":  # -E log sigmoid(r) - E log(1 - sigmoid(f))
        return np_softplus(-r).mean() + np_softplus(f).mean()
    if loss == "lsgan":
        return 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean()
    if loss == "hinge":
        return np.maximum(0, 1 - r).mean() + np.maximum(0, 1 + f).mean()
    return f.mean() - r.mean()


def np_g_loss(f, loss):
    f = np.asarray(f, np.float64)
    if loss == "non_saturating":
        return np_softplus(-f).mean()
    if loss == "lsgan":
        return 0.5 * ((f - 1) ** 2).mean()
    return -f.mean()


@given(
    st.sampled_from(GAN_LOSSES),
    st.sampled_from([0.1, 1.0, 10.0, 50.0]),
    st.integers(0, 2**31 - 1),
)
def test_losses_match_numpy(loss, scale, seed):
    # Fixed shapes (one compile per loss); real and fake batches of different sizes.
    r = np.random.default_rng(seed)
    real = (scale * r.normal(size=7)).astype(np.float32)
    fake = (scale * r.normal(size=5)).astype(np.float32)
    tol = dict(rtol=1e-5, atol=1e-5 * (1 + scale**2))
    np.testing.assert_allclose(jit_d_loss(real, fake, loss=loss), np_d_loss(real, fake, loss),
                               **tol)
    np.testing.assert_allclose(jit_g_loss(fake, loss=loss), np_g_loss(fake, loss), **tol)


def test_non_saturating_loss_is_stable_at_large_logits():
    real, fake = jnp.array([1e4, -1e4]), jnp.array([-1e4, 1e4])
    np.testing.assert_allclose(discriminator_loss(real, fake), 1e4)
    assert float(generator_loss(jnp.array([1e4]))) == 0.0


def _weighted_d_loss(logits, p_data, p_gen, loss):
    """The discriminator loss on a finite support: real examples weighted by p_data."""
    # Each support point appears with its probability as weight: E over samples.
    r, f = logits, logits
    per_real = {"non_saturating": jax.nn.softplus(-r), "lsgan": 0.5 * (r - 1) ** 2}[loss]
    per_fake = {"non_saturating": jax.nn.softplus(f), "lsgan": 0.5 * f**2}[loss]
    return jnp.sum(p_data * per_real) + jnp.sum(p_gen * per_fake)


def test_optimal_discriminators_and_the_jensen_shannon_identity():
    p_data = jnp.array([0.5, 0.3, 0.15, 0.05])
    p_gen = jnp.array([0.1, 0.2, 0.3, 0.4])
    # Goodfellow et al. 2014, Prop. 1 and Thm. 1: D* = p_d / (p_d + p_g), i.e. the logit
    # log(p_d / p_g); there the discriminator's loss is log 4 - 2 JSD(p_d || p_g).
    best = jnp.log(p_data / p_gen)
    grad = jax.grad(_weighted_d_loss)(best, p_data, p_gen, "non_saturating")
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)
    m = 0.5 * (p_data + p_gen)
    jsd = 0.5 * np.sum(p_data * np.log(p_data / m)) + 0.5 * np.sum(p_gen * np.log(p_gen / m))
    np.testing.assert_allclose(
        _weighted_d_loss(best, p_data, p_gen, "non_saturating"), np.log(4) - 2 * jsd, rtol=1e-5
    )
    # LSGAN (a = 0, b = 1): D* = p_d / (p_d + p_g) (Mao et al. 2017, Prop. 1)
    best_ls = p_data / (p_data + p_gen)
    np.testing.assert_allclose(
        jax.grad(_weighted_d_loss)(best_ls, p_data, p_gen, "lsgan"), 0.0, atol=1e-6
    )


@pytest.mark.parametrize(
    ("loss", "best_value", "best_output"),
    [("non_saturating", np.log(4), 0.0), ("lsgan", 0.25, 0.5), ("hinge", 2.0, None)],
)
def test_when_the_generator_matches_the_data_the_best_discriminator_is_blind(
    loss, best_value, best_output
):
    # p_g = p_d: the discriminator can do no better than a constant output c on both.
    grid = jnp.linspace(-3.0, 3.0, 6001)
    values = jax.vmap(lambda c: discriminator_loss(c[None], c[None], loss))(grid)
    np.testing.assert_allclose(values.min(), best_value, rtol=1e-5, atol=1e-6)
    if best_output is not None:
        np.testing.assert_allclose(grid[values.argmin()], best_output, atol=1e-3)
    else:  # hinge: every c in [-1, 1] is optimal
        optimal = grid[np.isclose(values, 2.0, atol=1e-6)]
        np.testing.assert_allclose([optimal.min(), optimal.max()], [-1.0, 1.0], atol=1e-3)


def test_hinge_loss_is_zero_past_the_margins():
    assert float(discriminator_loss(jnp.array([1.0, 5.0]), jnp.array([-1.0, -3.0]), "hinge")) == 0
    assert float(discriminator_loss(jnp.array([0.5]), jnp.array([-1.0]), "hinge")) == 0.5


def _linear_critic(w):
    return lambda x: jnp.sum(x.reshape(x.shape[0], -1) * w.reshape(-1), axis=1)


def test_gradient_penalty_of_linear_critics():
    r = np.random.default_rng(0)
    real = jnp.asarray(r.normal(size=(6, 3, 4)), jnp.float32)  # norms over 2 non-batch axes
    fake = jnp.asarray(r.normal(size=(6, 3, 4)), jnp.float32)
    w = r.normal(size=(3, 4))
    unit = jnp.asarray(w / np.linalg.norm(w), jnp.float32)
    assert float(gradient_penalty(_linear_critic(unit), real, fake, jax.random.key(0))) < 1e-10
    for scale in (0.0, 0.5, 3.0):  # a linear critic's gradient is w everywhere
        got = gradient_penalty(_linear_critic(scale * unit), real, fake, jax.random.key(1))
        np.testing.assert_allclose(got, (scale - 1.0) ** 2, rtol=1e-5, atol=1e-6)


def test_gradient_penalty_matches_numpy_on_the_interpolates():
    # D(x) = sum(x^2) / 2 has gradient x: the penalty is E (||xhat|| - 1)^2, with xhat
    # on the segment between each real/fake pair at the eps drawn from the key.
    r = np.random.default_rng(1)
    real = r.normal(size=(5, 2, 3)).astype(np.float32)
    fake = r.normal(size=(5, 2, 3)).astype(np.float32)
    key = jax.random.key(3)
    got = gradient_penalty(lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2)), real, fake, key)
    eps = np.asarray(jax.random.uniform(key, (5, 1, 1)), np.float64)
    xhat = eps * real + (1 - eps) * fake.astype(np.float64)
    want = np.mean((np.linalg.norm(xhat.reshape(5, -1), axis=1) - 1.0) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the interpolation weights are uniform per example: over many keys, E eps = 1/2
    means = [
        float(gradient_penalty(lambda x: x[:, 0] ** 2 / 2, jnp.ones((64, 1)),
                               jnp.zeros((64, 1)), jax.random.key(k)))
        for k in range(4)
    ]  # (eps - 1)^2 averages 1/3
    np.testing.assert_allclose(np.mean(means), 1 / 3, atol=0.05)


def test_gradient_penalty_is_differentiable_in_the_critic():
    # GP(w) = (||w|| - 1)^2 for a linear critic: d/dw = 2 (||w|| - 1) w / ||w||.
    real, fake = jnp.ones((4, 2)), jnp.zeros((4, 2))
    w = jnp.array([3.0, 4.0])
    grad = jax.grad(lambda w: gradient_penalty(_linear_critic(w), real, fake, jax.random.key(0)))(w)
    np.testing.assert_allclose(grad, 2 * (5.0 - 1.0) * w / 5.0, rtol=1e-5)


def test_r1_penalty_closed_forms():
    r = np.random.default_rng(2)
    real = jnp.asarray(r.normal(size=(7, 2, 2)), jnp.float32)
    w = jnp.asarray(r.normal(size=(2, 2)), jnp.float32)
    np.testing.assert_allclose(r1_penalty(_linear_critic(w), real), jnp.sum(w**2), rtol=1e-5)
    # D(x) = sum(x^2) / 2: gradient x, so R1 = E ||x||^2
    quadratic = lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2))  # noqa: E731
    np.testing.assert_allclose(
        r1_penalty(quadratic, real), np.mean(np.sum(np.asarray(real) ** 2, axis=(1, 2))),
        rtol=1e-5,
    )
    # in the discriminator's objective R1 enters as gamma / 2 E ||grad D||^2
    gamma = 4.0
    fake = jnp.zeros_like(real)
    for loss in GAN_LOSSES:
        config = GANConfig(loss=loss, r1_weight=gamma, gp_weight=0.0)
        total, m = discriminator_objective(_linear_critic(w), real, fake, jax.random.key(0),
                                           config)
        plain = discriminator_loss(_linear_critic(w)(real), _linear_critic(w)(fake), loss)
        np.testing.assert_allclose(total, plain + gamma / 2 * jnp.sum(w**2), rtol=1e-5)
        np.testing.assert_allclose(m["r1_penalty"], jnp.sum(w**2), rtol=1e-5)


def test_objectives_combine_the_config():
    r = np.random.default_rng(3)
    real = jnp.asarray(r.normal(size=(8, 3)), jnp.float32)
    fake = jnp.asarray(r.normal(size=(8, 3)), jnp.float32)
    w = jnp.array([0.3, -2.0, 1.0])
    critic = _linear_critic(w)
    gp_exact = (float(jnp.linalg.norm(w)) - 1) ** 2
    for loss in GAN_LOSSES:
        config = GANConfig(loss=loss, gp_weight=7.0)
        total, m = discriminator_objective(critic, real, fake, jax.random.key(0), config)
        plain = discriminator_loss(critic(real), critic(fake), loss)
        gp = gp_exact if loss == "wgan_gp" else 0.0  # the penalty is WGAN-GP's only
        np.testing.assert_allclose(total, plain + 7.0 * gp, rtol=1e-5)
        np.testing.assert_allclose(m["gradient_penalty"], gp, rtol=1e-5)
        assert float(m["d_loss"]) == float(total) and float(m["r1_penalty"]) == 0.0
        np.testing.assert_allclose(m["d_real"], jnp.mean(critic(real)))
        np.testing.assert_allclose(m["d_fake"], jnp.mean(critic(fake)))
        g, gm = generator_objective(critic, fake, config)
        np.testing.assert_allclose(g, generator_loss(critic(fake), loss))
        assert float(gm["g_loss"]) == float(g)


def test_discriminator_objective_passes_no_gradient_to_the_fakes():
    critic = _linear_critic(jnp.array([1.0, 2.0]))
    grad = jax.grad(
        lambda fake: discriminator_objective(critic, jnp.ones((3, 2)), fake, jax.random.key(0))[0]
    )(jnp.zeros((3, 2)))
    assert float(jnp.abs(grad).max()) == 0.0


def test_discriminator_outputs_of_shape_b_1_are_accepted():
    critic = lambda x: x[:, :1]  # noqa: E731  a final Linear(..., 1)
    total, m = discriminator_objective(critic, jnp.ones((3, 2)), -jnp.ones((3, 2)),
                                       jax.random.key(0), GANConfig(loss="wgan_gp"))
    np.testing.assert_allclose(m["d_real"], 1.0)
    np.testing.assert_allclose(m["gradient_penalty"], 0.0, atol=1e-6)  # unit gradient


def test_sample_under_jit_and_vmap_over_seeds():
    gen = lambda z: jnp.tanh(z @ jnp.ones((2, 3)))  # noqa: E731
    draw = jax.jit(lambda key: sample(gen, key, 4, 2))
    x = draw(jax.random.key(0))
    assert x.shape == (4, 3)
    many = jax.vmap(draw)(jax.random.split(jax.random.key(0), 3))
    assert many.shape == (3, 4, 3) and not np.allclose(many[0], many[1])
    np.testing.assert_array_equal(x, draw(jax.random.key(0)))  # the key decides


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"d_steps": 0}, ValueError, "`d_steps` must be >= 1, got 0"),
        ({"d_steps": -2}, ValueError, "`d_steps` must be >= 1, got -2"),
        ({"d_steps": 1.5}, TypeError, "`d_steps` must be an int"),
        ({"loss": "wasserstein"}, ValueError, "unknown `loss` 'wasserstein'; expected one of"),
        ({"gp_weight": -1.0}, ValueError, "`gp_weight` must lie in"),
        ({"r1_weight": -0.1}, ValueError, "`r1_weight` must lie in"),
        ({"max_grad_norm": 0.0}, ValueError, "`max_grad_norm` must lie in"),
        ({"ema_decay": 1.0}, ValueError, "`ema_decay` must lie in"),
        ({"data_range": (1.0, -1.0)}, ValueError, "`data_range` must be None or"),
        ({"data_range": 1.0}, ValueError, "`data_range` must be None or"),
    ],
)
def test_config_errors(changes, error, match):
    with pytest.raises(error, match=match.replace("(", r"\(").replace("[", r"\[")):
        dataclasses.replace(GANConfig(), **changes)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="unknown `loss` 'wgan'"):
        discriminator_loss(jnp.zeros(2), jnp.zeros(2), "wgan")
    with pytest.raises(ValueError, match=r"`real_logits` must have rank 1 \(\[B\]"):
        discriminator_loss(jnp.zeros((2, 2)), jnp.zeros(2))
    with pytest.raises(TypeError, match="`fake_logits` must have a floating dtype"):
        generator_loss(jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match=r"`fake` must have shape \(4, 2\) \(the shape of `real`"):
        gradient_penalty(lambda x: x[:, 0], jnp.zeros((4, 2)), jnp.zeros((4, 3)),
                         jax.random.key(0))
    with pytest.raises(ValueError, match=r"`critic_fn\(x\)` must give one output per example"):
        r1_penalty(lambda x: x, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"`real` must have rank >= 2"):
        r1_penalty(lambda x: x, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*got values in \[0, 16\]"):
        check_images(np.array([[0.0, 16.0]], np.float32), (-1.0, 1.0))
    with pytest.raises(ValueError, match=r"got values in \[nan"):
        check_images(np.array([[np.nan, 0.0]], np.float32), (-1.0, 1.0))
    with pytest.raises(TypeError, match="`images` must have a floating dtype"):
        check_images(np.zeros((2, 3), np.uint8), None)
    check_images(np.full((2, 3), 16.0, np.float32), None)  # no range: no check
