"""The two trainers of `examples.py`, built on the public trainer contract only, learn and
keep what they claim (their exact fresh-process resume and the rest of the contract are
in `test_contract.py`, which runs them with every other trainer)."""

import jax
import numpy as np
import optax

from .cases import host
from .examples import make_ema, make_gan


def test_adversarial_trainer_learns_the_data_mean_with_its_update_ratio():
    trainer = make_gan(d_steps=3)
    rng = np.random.default_rng(0)
    means = []
    for _ in range(300):
        data = (2.0 + 0.5 * rng.normal(size=(64, 1))).astype(np.float32)
        means.append(float(trainer.train_step({"data": data})["fake_mean"]))
    assert abs(means[0] - 2.0) > 1.5  # it starts far from the data
    assert abs(np.mean(means[-100:]) - 2.0) < 0.3, means[-10:]
    # Three discriminator updates per generator update, each with its own Adam.
    counts = {
        name: int(optax.tree_utils.tree_get(state, "count"))
        for name, state in trainer.state.opt_state.items()
    }
    assert counts == {"discriminator": 900, "generator": 300}
    assert int(trainer.optimizer["generator"].step.get_value()) == 300  # trainer steps


def test_ema_trainer_keeps_the_moving_average_of_its_parameters():
    decay = 0.8
    trainer = make_ema(decay=decay)
    rng = np.random.default_rng(1)
    w, b = np.array([[1.0], [-2.0], [0.5]]), 0.3
    average = host(trainer.state.params)  # the average starts at the initial parameters
    lag = 0.0
    for _ in range(250):
        x = rng.normal(size=(16, 3)).astype(np.float32)
        trainer.train_step({"x": x, "y": (x @ w + b).astype(np.float32)})
        params = host(trainer.state.params)  # the recurrence in float64, by hand
        average = jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, average, params)
        lag = max(lag, float(np.abs(average["kernel"] - params["kernel"]).max()))
        for got, want in zip(  # at every step
            jax.tree.leaves(host(trainer.state.ema_params)), jax.tree.leaves(average), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the average is a usable model, and both it and the parameters have learnt the map
    ema_model = trainer.merge(trainer.state.ema_params)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(ema_model(x), x @ w + b, atol=0.05)
    np.testing.assert_allclose(trainer.model(x), x @ w + b, atol=0.05)
    assert lag > 0.05  # on the way there, the average lagged behind the parameters
