"""`rlgen.algorithms.supervised`: one optimiser step on a loss per batch, with the step's key
and the step count passed to the loss, as the supervised trainers use it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rlgen.algorithms import SupervisedState, check_state, per_model, supervised

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
BATCH = {"x": jnp.asarray(X), "y": jnp.asarray(Y)}


def mse(params, batch, key, step):
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return jnp.mean(err**2), {"abs_err": jnp.mean(jnp.abs(err))}


def test_update_is_one_sgd_step_against_float64():
    algo = supervised(mse, optax.sgd(0.1))
    state = algo.init({"w": jnp.zeros(3), "b": jnp.zeros(())})
    check_state(state)
    w, b = np.zeros(3), 0.0
    x, y = X.astype(np.float64), Y.astype(np.float64)
    update = jax.jit(algo.update)
    for i in range(3):
        err = x @ w + b - y
        w, b = w - 0.1 * 2 * x.T @ err / len(y), b - 0.1 * 2 * err.mean()
        state, metrics = update(state, BATCH)
        np.testing.assert_allclose(float(metrics["loss"]), np.mean(err**2), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["abs_err"]), np.mean(np.abs(err)), rtol=1e-5)
        assert int(state.step) == i + 1
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.params["b"], b, rtol=1e-5, atol=1e-6)
    assert update._cache_size() == 1


def test_the_loss_sees_a_fresh_key_and_the_step_count():
    seen = []

    def loss(params, batch, key, step):
        noise = jax.random.normal(key, ())
        jax.debug.callback(lambda n, s: seen.append((float(n), int(s))), noise, step)
        return jnp.sum(params**2) + 0.0 * noise, {}

    algo = supervised(loss, optax.sgd(0.1), seed=3)
    state = algo.init(jnp.ones(2))
    for _ in range(3):
        state, _ = jax.jit(algo.update)(state, {})
    assert [s for _, s in seen] == [0, 1, 2]
    assert len({n for n, _ in seen}) == 3  # a new key every step
    # the randomness lives in the state: the same state gives the same key again
    again = algo.init(jnp.ones(2))
    seen.clear()
    jax.jit(algo.update)(again, {})
    first = seen[0][0]
    seen.clear()
    jax.jit(algo.update)(again, {})
    assert seen[0][0] == first
    other = supervised(loss, optax.sgd(0.1), seed=4).init(jnp.ones(2))
    seen.clear()
    jax.jit(algo.update)(other, {})
    assert seen[0][0] != first  # the seed sets the key


def test_gradient_clipping_and_several_models():
    def loss(params, batch, key, step):
        return 100.0 * jnp.sum(params["g"]) + jnp.sum(params["d"]), {}

    tx = per_model({"g": optax.sgd(1.0), "d": optax.sgd(0.5)})
    algo = supervised(loss, tx, max_grad_norm=1.0)
    state = algo.init({"g": jnp.zeros(1), "d": jnp.zeros(1)})
    assert set(state.opt_state[1]) == {"g", "d"}  # clipping, then one optimiser per model
    state, _ = algo.update(state, {})
    # global norm of (100, 1) clipped to 1, then each model's own learning rate
    scale = 1.0 / np.hypot(100.0, 1.0)
    np.testing.assert_allclose(state.params["g"], [-100.0 * scale], rtol=1e-6)
    np.testing.assert_allclose(state.params["d"], [-0.5 * scale], rtol=1e-6)


def test_shard_map_over_8_devices_equals_one_device():
    algo = supervised(mse, optax.adam(0.05))
    sharded = supervised(mse, optax.adam(0.05), axis_name="data")
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
    step = jax.jit(
        jax.shard_map(
            sharded.update, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())
        )
    )
    one, many = algo.init(params), sharded.init(params)
    for _ in range(3):
        one, m1 = algo.update(one, BATCH)
        many, m8 = step(many, BATCH)
        np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="`loss_fn` must be callable"):
        supervised(None, optax.sgd(0.1))
    with pytest.raises(TypeError, match="`optimizer` must be an optax"):
        supervised(mse, "adam")
    with pytest.raises(ValueError, match="`max_grad_norm`"):
        supervised(mse, optax.sgd(0.1), max_grad_norm=0.0)
    algo = supervised(lambda p, b, k, s: jnp.sum(p), optax.sgd(0.1))
    with pytest.raises(TypeError, match=r"must return \(scalar loss, metrics dict\)"):
        algo.update(algo.init(jnp.ones(2)), {})
    algo = supervised(lambda p, b, k, s: (p, {}), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"scalar loss, got shape \(2,\)"):
        algo.update(algo.init(jnp.ones(2)), {})


def test_state_is_a_fixed_structure_scan_carry():
    algo = supervised(mse, optax.adam(0.05))
    state = algo.init({"w": jnp.zeros(3), "b": jnp.zeros(())})
    assert isinstance(state, SupervisedState)
    final, metrics = jax.lax.scan(lambda s, _: algo.update(s, BATCH), state, None, length=4)
    assert jax.tree.structure(final) == jax.tree.structure(state)
    assert metrics["loss"].shape == (4,) and float(metrics["loss"][-1]) < float(metrics["loss"][0])


def test_nonfinite_loss_or_gradient_skips_the_update():
    def loss(params, batch, key, step):  # sqrt|p - at|: finite, its gradient infinite at `at`
        return jnp.sum(jnp.sqrt(jnp.abs(params - batch["at"]))) + batch["shift"], {}

    algo = supervised(loss, optax.adam(0.1))
    update = jax.jit(algo.update)
    state = algo.init(jnp.ones(2))
    good = {"at": 10.0, "shift": 0.0}
    state, metrics = update(state, good)
    assert float(metrics["skipped"]) == 0.0
    for batch in ({"at": 10.0, "shift": jnp.nan}, {"at": state.params[0], "shift": 0.0}):
        new, metrics = update(state, batch)
        assert float(metrics["skipped"]) == 1.0
        for got, want in zip(jax.tree.leaves(new[:2]), jax.tree.leaves(state[:2]), strict=True):
            np.testing.assert_array_equal(got, want)  # parameters and Adam's moments kept
        assert int(new.step) == int(state.step) + 1
    state, metrics = update(new, good)  # training goes on
    assert float(metrics["skipped"]) == 0.0 and bool(jnp.all(jnp.isfinite(state.params)))
