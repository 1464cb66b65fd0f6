"""`rlgen.algorithms.diffusion`: supervised steps plus the EMA of the parameters in the same
update (against float64 SGD and a NumPy average), a non-finite loss skipped with the
average kept finite, and the state as a scan carry."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen.algorithms import check_state
from rlgen.algorithms.diffusion import DiffusionState, diffusion

X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5])).astype(np.float32)


def mse(w, batch, key, step):
    return jnp.mean((batch["x"] @ w - batch["y"]) ** 2), {}


def test_sgd_steps_and_their_moving_average_against_float64():
    algo = diffusion(mse, optax.sgd(0.1), ema_decay=0.7)
    state = algo.init(jnp.zeros(3))
    check_state(state)
    assert isinstance(state, DiffusionState)
    w, average = np.zeros(3), np.zeros(3)
    x, y = X.astype(np.float64), Y.astype(np.float64)
    update = jax.jit(algo.update)
    for _ in range(4):
        w = w - 0.1 * 2 * x.T @ (x @ w - y) / len(y)
        average = 0.7 * average + 0.3 * w
        state, metrics = update(state, {"x": X, "y": Y})
    np.testing.assert_allclose(state.params, w, rtol=1e-5)
    np.testing.assert_allclose(state.ema_params, average, rtol=1e-5)
    assert int(state.step) == 4 and float(metrics["skipped"]) == 0.0


def test_nonfinite_loss_skips_the_update_and_keeps_the_average_finite():
    algo = diffusion(mse, optax.adam(0.1), ema_decay=0.5)
    update = jax.jit(algo.update)
    state, _ = update(algo.init(jnp.zeros(3)), {"x": X, "y": Y})
    bad_y = Y.copy()
    bad_y[0] = np.nan
    new, metrics = update(state, {"x": X, "y": bad_y})
    assert float(metrics["skipped"]) == 1.0 and int(new.step) == 2
    np.testing.assert_array_equal(new.params, state.params)
    # the average moves towards the kept (finite) parameters
    np.testing.assert_allclose(new.ema_params, 0.5 * state.ema_params + 0.5 * state.params)


def test_state_is_a_scan_carry_and_decay_is_checked():
    algo = diffusion(mse, optax.sgd(0.1), ema_decay=0.9)
    batch = {"x": X, "y": Y}
    final, metrics = jax.lax.scan(lambda s, _: algo.update(s, batch), algo.init(jnp.zeros(3)),
                                  None, length=3)
    assert metrics["loss"].shape == (3,) and int(final.step) == 3
    with pytest.raises(ValueError, match="`ema_decay` must lie in"):
        diffusion(mse, optax.sgd(0.1), ema_decay=1.5)
