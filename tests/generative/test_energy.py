"""`rlgen.generative.energy`: SGLD against a float64 NumPy reference, Langevin on a
Gaussian energy reaching its mean and variance, no gradient through the chain, the
contrastive-divergence loss and its parameter gradient, the replay buffer's mechanics,
composition under jit / vmap / scan, and errors.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen.generative.energy import (
    METRICS,
    EnergyConfig,
    buffer_init,
    buffer_sample,
    buffer_write,
    check_images,
    contrastive_divergence_loss,
    langevin_sample,
    persistent_negatives,
    sample_from_noise,
)

A = np.array([0.5, 1.5, -0.7])  # the toy energy's per-feature weights


def toy_energy(x):
    """E(x) = sum_j a_j x_j^2 + sin(x_j); per example, [B, 3] -> [B]."""
    return jnp.sum(A * x**2 + jnp.sin(x), axis=-1)


def np_toy_grad(x):
    return 2.0 * A * x + np.cos(x)


def np_sgld(x, key, steps, eta, sigma, clip):
    """The documented update in float64, with the documented per-step noise; every state."""
    x = np.asarray(x, np.float64)
    keys = jax.random.split(key, steps)
    states = []
    for k in range(steps):
        eps = np.asarray(jax.random.normal(keys[k], x.shape, jnp.float32), np.float64)
        x = x - eta * np_toy_grad(x) + sigma * eps
        if clip is not None:
            x = np.clip(x, *clip)
        states.append(x)
    return states


@pytest.mark.parametrize("steps, clip", [(1, None), (4, (-0.6, 0.6))])
def test_sgld_matches_numpy(steps, clip):
    x0 = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    key = jax.random.key(3)
    got = jax.jit(
        lambda x, k: langevin_sample(
            toy_energy, x, k, steps=steps, step_size=0.05, noise_scale=0.2, clip=clip
        )
    )(x0, key)
    want = np_sgld(x0, key, steps, 0.05, 0.2, clip)[-1]
    assert got.shape == x0.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if clip is not None:
        assert np.all(np.abs(np.asarray(got)) <= 0.6) and np.any(np.abs(want) == 0.6)


def test_trajectory_holds_every_step_and_ends_at_the_result():
    x0 = jnp.zeros((4, 3))
    key = jax.random.key(1)

    @jax.jit
    def run(x0, key):
        sgld = dict(step_size=0.1, noise_scale=0.1)
        final, path = langevin_sample(
            toy_energy, x0, key, steps=3, return_trajectory=True, **sgld
        )
        same = langevin_sample(toy_energy, x0, key, steps=3, **sgld)
        return final, path, same, langevin_sample(toy_energy, x0, key, steps=0, **sgld)

    final, path, same, zero = run(x0, key)
    assert path.shape == (3, 4, 3)
    np.testing.assert_allclose(path, np.stack(np_sgld(x0, key, 3, 0.1, 0.1, None)), atol=1e-6)
    np.testing.assert_array_equal(path[-1], final)
    np.testing.assert_array_equal(same, final)
    np.testing.assert_array_equal(zero, x0)


def test_langevin_samples_a_gaussian():
    """E = |x - mu|^2 / (2 s^2) with noise sqrt(2 eta): unadjusted Langevin, whose
    stationary law is N(mu, s^2 / (1 - eta / (2 s^2))) per coordinate. 4000 chains x 2
    coordinates, 600 steps (mixing time ~ s^2 / eta = 25 steps): the mean within 0.03,
    the variance within 6% of the ULA value (sampling error of a variance over 8000
    draws: ~1.6%)."""
    mu, s, eta = jnp.array([0.5, -1.0]), 0.5, 0.01
    energy = lambda x: jnp.sum((x - mu) ** 2, axis=-1) / (2 * s**2)  # noqa: E731
    x0 = jax.random.uniform(jax.random.key(0), (4000, 2), minval=-3, maxval=3)
    x = jax.jit(
        lambda x0: langevin_sample(
            energy, x0, jax.random.key(1), steps=600, step_size=eta,
            noise_scale=float(np.sqrt(2 * eta)),
        )
    )(x0)
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(0), mu, atol=0.03)
    ula_var = s**2 / (1 - eta / (2 * s**2))
    np.testing.assert_allclose(x.var(0), ula_var, rtol=0.06)


def test_no_gradient_reaches_the_parameters_through_the_chain():
    def chain_sum(w):
        return jnp.sum(
            langevin_sample(
                lambda x: jnp.sum(w * x**2, -1), jnp.ones((3, 2)), jax.random.key(0),
                steps=5, step_size=0.1, noise_scale=0.1,
            )
        )

    value, grad = jax.jit(jax.value_and_grad(chain_sum))(0.5)
    assert float(value) != 6.0  # the chain moved, and depends on w ...
    assert float(grad) == 0.0  # ... but no gradient flows through it


def test_cd_parameter_gradient_treats_negatives_as_constants():
    """grad_w loss = mean grad_w E(x+) - mean grad_w E(x-) + alpha * grad(reg), with x-
    produced by SGLD from the same parameters but held fixed."""
    x_pos = jax.random.normal(jax.random.key(0), (6, 2))
    x0 = jax.random.normal(jax.random.key(1), (4, 2))

    def energy(w):
        return lambda x: jnp.sum(w[0] * x**2 + w[1] * x, axis=-1)

    def negatives(w):  # without the stop_gradient these would carry d x- / d w
        return x0 - 0.3 * (2 * w[0] * x0 + w[1])

    def loss(w, alpha):
        return contrastive_divergence_loss(energy(w), x_pos, negatives(w), alpha=alpha)[0]

    w = jnp.array([0.7, -0.4])
    x_neg = np.asarray(negatives(w), np.float64)
    xp, wn = np.asarray(x_pos, np.float64), np.asarray(w, np.float64)

    def np_grad_energy(x):  # d E / d w per example: [N, 2]
        return np.stack([np.sum(x**2, -1), np.sum(x, -1)], -1)

    def np_energy(x):
        return np.sum(wn[0] * x**2 + wn[1] * x, -1)

    grad = jax.jit(jax.grad(loss))
    for alpha in (0.0, 0.5):  # one program: alpha is traced
        got = grad(w, alpha)
        want = np_grad_energy(xp).mean(0) - np_grad_energy(x_neg).mean(0)
        want += alpha * (
            (2 * np_energy(xp)[:, None] * np_grad_energy(xp)).mean(0)
            + (2 * np_energy(x_neg)[:, None] * np_grad_energy(x_neg)).mean(0)
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cd_loss_and_metrics_match_numpy():
    r = np.random.default_rng(0)
    x_pos, x_neg = r.normal(size=(5, 3)).astype(np.float32), r.normal(size=(7, 3)).astype(
        np.float32
    )
    loss, metrics = jax.jit(
        lambda p, n: contrastive_divergence_loss(toy_energy, p, n, alpha=0.25)
    )(x_pos, x_neg)
    e_pos = np.sum(A * x_pos.astype(np.float64) ** 2 + np.sin(x_pos), -1)
    e_neg = np.sum(A * x_neg.astype(np.float64) ** 2 + np.sin(x_neg), -1)
    assert tuple(sorted(metrics)) == tuple(sorted(METRICS))
    want = {
        "cd_loss": e_pos.mean() - e_neg.mean(),
        "energy_pos": e_pos.mean(),
        "energy_neg": e_neg.mean(),
        "energy_reg": (e_pos**2).mean() + (e_neg**2).mean(),
    }
    for name, value in want.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(loss, want["cd_loss"] + 0.25 * want["energy_reg"], rtol=1e-5)


# ----------------------------------------------------------------------------- buffer
def test_buffer_init_is_uniform_on_the_bounds():
    buffer = buffer_init(jax.random.key(0), 2000, (2, 3), low=-0.5, high=2.0)
    assert buffer.shape == (2000, 2, 3) and buffer.dtype == jnp.float32
    b = np.asarray(buffer)
    assert b.min() >= -0.5 and b.max() < 2.0
    np.testing.assert_allclose(b.mean(), 0.75, atol=0.02)


def test_buffer_sample_shapes_distinct_indices_and_reinit_share():
    buffer = jnp.arange(8000.0)[:, None] * jnp.ones((1, 2))  # row i holds i; all >= 0
    sample = jax.jit(
        lambda k, p: buffer_sample(buffer, k, 4000, reinit_prob=p, low=-2.0, high=-1.0)
    )
    x0, idx = sample(jax.random.key(0), 0.05)
    x0, idx = np.asarray(x0), np.asarray(idx)
    assert x0.shape == (4000, 2) and idx.shape == (4000,) and idx.dtype == np.int32
    assert len(set(idx.tolist())) == 4000  # without replacement
    fresh = x0[:, 0] < 0  # restarts are drawn on [-2, -1), the buffer holds >= 0
    np.testing.assert_array_equal(x0[~fresh, 0], idx[~fresh])  # the rest: their own slots
    assert np.all((x0[fresh] >= -2) & (x0[fresh] < -1))
    np.testing.assert_allclose(fresh.mean(), 0.05, atol=0.012)  # 4000 chains: sd 0.0034
    # each slot is drawn with probability 1/2: the lower half holds ~2000 (sd 16)
    assert abs(np.sum(idx < 4000) - 2000) < 100
    x0, idx = sample(jax.random.key(1), 0.0)  # the same program: reinit_prob is traced
    np.testing.assert_array_equal(x0[:, 0], idx)
    assert np.all(np.asarray(sample(jax.random.key(2), 1.0)[0]) < -1)


def test_buffer_write_lands_in_the_slots_and_nowhere_else():
    buffer = jnp.zeros((6, 2))
    idx = jnp.array([4, 1])
    new = buffer_write(buffer, idx, jnp.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(new[4], [1, 2])
    np.testing.assert_array_equal(new[1], [3, 4])
    np.testing.assert_array_equal(new[jnp.array([0, 2, 3, 5])], 0.0)
    assert new.shape == buffer.shape and new.dtype == buffer.dtype


def test_persistent_negatives_are_sgld_from_the_buffer_starts():
    config = EnergyConfig(sgld_steps=3, step_size=0.1, noise_scale=0.05, buffer_size=32,
                          reinit_prob=0.3, init_low=-1.0, init_high=1.0)
    sgld = dict(step_size=0.1, noise_scale=0.05, clip=(-1.0, 1.0))

    @jax.jit
    def both(buffer, key):
        got = persistent_negatives(toy_energy, buffer, key, 8, config)
        start_key, chain_key = jax.random.split(key)
        x0, idx = buffer_sample(buffer, start_key, 8, reinit_prob=0.3)
        return got, (langevin_sample(toy_energy, x0, chain_key, steps=3, **sgld), idx)

    (x, idx), (want, want_idx) = both(buffer_init(jax.random.key(0), 32, (3,)), jax.random.key(5))
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(x, want)

    @jax.jit
    def from_noise(key):  # uniform starts, the same chain
        init_key, chain_key = jax.random.split(key)
        x0 = buffer_init(init_key, 8, (3,))
        want = langevin_sample(toy_energy, x0, chain_key, steps=2, **sgld)
        return sample_from_noise(toy_energy, key, 8, (3,), config, steps=2), want

    got, want = from_noise(jax.random.key(5))
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------ composition
def test_vmap_over_seeds_and_scan_of_buffer_steps():
    x0 = jnp.zeros((4, 3))
    run = lambda k: langevin_sample(toy_energy, x0, k, steps=3, step_size=0.1,  # noqa: E731
                                    noise_scale=0.1)
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    for i in range(3):  # each seed's chain is the NumPy reference's
        want = np_sgld(x0, keys[i], 3, 0.1, 0.1, None)[-1]
        np.testing.assert_allclose(batched[i], want, rtol=1e-5, atol=1e-6)

    config = EnergyConfig(sgld_steps=2, step_size=0.1, noise_scale=0.1, buffer_size=16)

    def one(buffer, key):
        x, idx = persistent_negatives(toy_energy, buffer, key, 4, config)
        return buffer_write(buffer, idx, x), jnp.mean(x)

    buffer = buffer_init(jax.random.key(1), 16, (3,))
    keys = jax.random.split(jax.random.key(2), 5)
    scanned, means = jax.jit(lambda b: jax.lax.scan(one, b, keys))(buffer)
    looped, step = buffer, jax.jit(one)
    for i in range(5):
        looped, mean = step(looped, keys[i])
        np.testing.assert_allclose(means[i], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-6)
    assert scanned.shape == buffer.shape


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "change, match",
    [
        ({"sgld_steps": 0}, "sgld_steps"),
        ({"sgld_steps": 2.0}, "sgld_steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"noise_scale": -0.1}, "noise_scale"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"reinit_prob": 1.5}, "reinit_prob"),
        ({"alpha": -1.0}, "alpha"),
        ({"init_low": 1.0, "init_high": 1.0}, "init_high"),
        ({"init_high": float("inf")}, "init_high"),
        ({"clip": 1}, "clip"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_config_rejects_bad_values(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(EnergyConfig(), **change)


def test_bad_input_is_named():
    x0 = jnp.zeros((4, 3))
    sgld = dict(steps=2, step_size=0.1, noise_scale=0.1)
    with pytest.raises(ValueError, match="one energy per example"):
        langevin_sample(lambda x: jnp.sum(x), x0, jax.random.key(0), **sgld)
    with pytest.raises(TypeError, match="x0"):
        langevin_sample(toy_energy, jnp.zeros((4, 3), jnp.int32), jax.random.key(0), **sgld)
    with pytest.raises(TypeError, match="steps"):
        langevin_sample(toy_energy, x0, jax.random.key(0), steps=2.5, step_size=0.1,
                        noise_scale=0.1)
    with pytest.raises(ValueError, match="step_size"):
        langevin_sample(toy_energy, x0, jax.random.key(0), steps=2, step_size=-1.0,
                        noise_scale=0.1)
    with pytest.raises(ValueError, match="clip"):
        langevin_sample(toy_energy, x0, jax.random.key(0), clip=(1.0, -1.0), **sgld)
    with pytest.raises(ValueError, match="trailing shape"):
        contrastive_divergence_loss(toy_energy, x0, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="exceeds"):
        buffer_sample(jnp.zeros((4, 3)), jax.random.key(0), 5, reinit_prob=0.0)
    with pytest.raises(ValueError, match="samples"):
        buffer_write(jnp.zeros((4, 3)), jnp.array([0, 1]), jnp.zeros((2, 2)))
    with pytest.raises(TypeError, match="shape"):
        buffer_init(jax.random.key(0), 4, 3)
    with pytest.raises(TypeError, match="config"):
        persistent_negatives(toy_energy, x0, jax.random.key(0), 2, {"sgld_steps": 1})


@pytest.mark.parametrize(
    "images, error, match",
    [
        (np.zeros((2, 8, 8), np.float32), ValueError, r"\[B, 64\]"),
        (np.zeros((2, 64), np.int32), TypeError, "floating"),
        (np.full((2, 64), 16.0, np.float32), ValueError, r"\[-1, 1\]"),
        (np.full((2, 64), np.nan, np.float32), ValueError, r"\[-1, 1\]"),
    ],
)
def test_check_images(images, error, match):
    with pytest.raises(error, match=match):
        check_images(images, (64,), -1.0, 1.0)
    assert check_images(np.zeros((2, 64), np.float32), (64,), -1.0, 1.0).shape == (2, 64)
