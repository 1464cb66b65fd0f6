"""`rlgen.algorithms.energy.contrastive_divergence`: one update against its parts (the
documented keys, the SGLD negatives, an SGD step in float64 on the CD gradient, the chains
written back), a non-finite loss skipping the step, gradient clipping, and errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen.algorithms import check_state
from rlgen.algorithms.energy import METRICS, EnergyState, contrastive_divergence
from rlgen.generative.energy import EnergyConfig, buffer_init, persistent_negatives

CONFIG = EnergyConfig(sgld_steps=3, step_size=0.2, noise_scale=0.05, buffer_size=32,
                      reinit_prob=0.25, alpha=0.5)
IMAGES = np.random.default_rng(0).uniform(-0.5, 0.8, (8, 2)).astype(np.float32)


def energy_fn(params, x):
    """E(x) = sum_j w_j (x_j - m_j)^2: [N, 2] -> [N]."""
    return jnp.sum(params["w"] * (x - params["m"]) ** 2, axis=-1)


PARAMS = {"m": jnp.array([0.1, -0.2]), "w": jnp.array([1.0, 2.0])}


def np_grads(params, x_pos, x_neg, alpha):
    """d loss / d (m, w) in float64, x_neg constant."""
    m, w = (np.asarray(params[k], np.float64) for k in ("m", "w"))

    def parts(x):
        x = np.asarray(x, np.float64)
        e = np.sum(w * (x - m) ** 2, -1)
        de_dm = -2.0 * w * (x - m)  # [N, 2]
        de_dw = (x - m) ** 2
        return e, de_dm, de_dw

    e_p, dm_p, dw_p = parts(x_pos)
    e_n, dm_n, dw_n = parts(x_neg)
    grad_m = dm_p.mean(0) - dm_n.mean(0)
    grad_w = dw_p.mean(0) - dw_n.mean(0)
    grad_m += alpha * ((2 * e_p[:, None] * dm_p).mean(0) + (2 * e_n[:, None] * dm_n).mean(0))
    grad_w += alpha * ((2 * e_p[:, None] * dw_p).mean(0) + (2 * e_n[:, None] * dw_n).mean(0))
    loss = e_p.mean() - e_n.mean() + alpha * ((e_p**2).mean() + (e_n**2).mean())
    return {"m": grad_m, "w": grad_w}, loss


def test_update_against_its_parts_and_float64_sgd():
    algo = contrastive_divergence(energy_fn, optax.sgd(0.1), CONFIG, sample_shape=(2,), seed=4)
    state = algo.init(PARAMS)
    check_state(state)
    assert isinstance(state, EnergyState) and state.buffer.shape == (32, 2)
    # the initial buffer: uniform on the bounds, drawn from the seed's key as documented
    key, buffer_key = jax.random.split(jax.random.key(4))
    np.testing.assert_array_equal(state.buffer, buffer_init(buffer_key, 32, (2,)))
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(key))

    update = jax.jit(algo.update)

    @jax.jit
    def parts(state):  # the documented keys and negatives of an update
        key, chain_key = jax.random.split(state.key)
        energy = lambda x: energy_fn(state.params, x)  # noqa: E731
        return key, *persistent_negatives(energy, state.buffer, chain_key, 8, CONFIG)

    params = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
    for i in range(3):
        key, negatives, idx = parts(state)
        grads, loss = np_grads(params, IMAGES, negatives, CONFIG.alpha)
        old_buffer = np.asarray(state.buffer)
        state, metrics = update(state, {"images": IMAGES})
        params = {k: params[k] - 0.1 * grads[k] for k in params}
        for k in params:
            np.testing.assert_allclose(state.params[k], params[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
        assert sorted(metrics) == sorted(METRICS) and float(metrics["skipped"]) == 0.0
        assert int(state.step) == i + 1
        np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(key))
        # the chains land in their slots; the other slots keep their chains
        want = old_buffer.copy()
        want[np.asarray(idx)] = np.asarray(negatives)
        np.testing.assert_allclose(state.buffer, want, rtol=1e-6, atol=1e-6)
        assert np.sum(np.any(want != old_buffer, axis=-1)) == 8
    assert update._cache_size() == 1


def test_a_non_finite_loss_skips_the_step_and_keeps_the_buffer():
    algo = contrastive_divergence(energy_fn, optax.adam(0.1), CONFIG, sample_shape=(2,))
    update = jax.jit(algo.update)
    state, _ = update(algo.init(PARAMS), {"images": IMAGES})
    bad = IMAGES.copy()
    bad[3, 1] = np.nan  # under jit the values are not inspected: the loss is NaN
    new, metrics = update(state, {"images": bad})
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves((new.params, new.opt_state, new.buffer)),
                    jax.tree.leaves((state.params, state.opt_state, state.buffer)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(new.step) == 2  # the step and the key advance
    assert not np.array_equal(jax.random.key_data(new.key), jax.random.key_data(state.key))
    after, metrics = update(new, {"images": IMAGES})  # and training goes on
    assert float(metrics["skipped"]) == 0.0
    assert not np.array_equal(after.params["m"], new.params["m"])


def test_max_grad_norm_clips_the_step():
    config = dataclasses.replace(CONFIG, max_grad_norm=1e-3)
    algo = contrastive_divergence(energy_fn, optax.sgd(1.0), config, sample_shape=(2,))
    state = algo.init(PARAMS)
    new, _ = jax.jit(algo.update)(state, {"images": IMAGES})
    change = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, new.params, state.params))
    norm = float(jnp.sqrt(sum(jnp.sum(c**2) for c in change)))
    np.testing.assert_allclose(norm, 1e-3, rtol=1e-4)


def test_bad_input_is_named():
    algo = contrastive_divergence(energy_fn, optax.sgd(0.1), CONFIG, sample_shape=(2,))
    state = algo.init(PARAMS)
    with pytest.raises(ValueError, match="missing key"):
        algo.update(state, {"x": IMAGES})
    with pytest.raises(ValueError, match="unknown key"):
        algo.update(state, {"images": IMAGES, "labels": np.zeros(8, np.int32)})
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        jax.jit(algo.update)(state, {"images": IMAGES[:, :1]})
    with pytest.raises(TypeError, match="floating"):
        algo.update(state, {"images": IMAGES.astype(np.int32)})
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        algo.update(state, {"images": IMAGES * 8})  # eagerly the values are checked
    with pytest.raises(ValueError, match="exceeds"):
        algo.update(state, {"images": np.zeros((40, 2), np.float32)})
    with pytest.raises(TypeError, match="EnergyConfig"):
        contrastive_divergence(energy_fn, optax.sgd(0.1), {"sgld_steps": 2}, sample_shape=(2,))
    with pytest.raises(TypeError, match="shape"):
        contrastive_divergence(energy_fn, optax.sgd(0.1), CONFIG, sample_shape=2)
    with pytest.raises(TypeError, match="optimizer"):
        contrastive_divergence(energy_fn, "adam", CONFIG, sample_shape=(2,))
