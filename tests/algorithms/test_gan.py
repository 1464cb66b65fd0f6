"""`rlgen.algorithms.gan`: one update against a float64 NumPy reference (a linear critic and a
constant generator, whose gradients have closed forms, for every loss, with d_steps, R1,
the gradient penalty and clipping), the update ratio counted by each optimiser, the EMA,
non-finite batches, composition under jit / scan / vmap over seeds, and errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen.algorithms import check_state
from rlgen.algorithms.gan import GANState, gan
from rlgen.generative.gan import GAN_LOSSES, METRICS, GANConfig

DIM = 3


def apply_fn(params):
    """A constant generator (its noise is ignored) and a linear critic ``w . x + c``."""
    g, d = params["generator"], params["discriminator"]
    return {
        "generator": lambda z: jnp.broadcast_to(g["b"], (z.shape[0], DIM)) + 0.0 * z[:, :1],
        "discriminator": lambda x: x @ d["w"] + d["c"],
    }


def init_params(seed=0):
    r = np.random.default_rng(seed)
    return {
        "generator": {"b": jnp.asarray(r.normal(size=DIM), jnp.float32)},
        "discriminator": {
            "w": jnp.asarray(0.5 * r.normal(size=DIM), jnp.float32),
            "c": jnp.asarray(0.1, jnp.float32),
        },
    }


def sgd(lr_d=0.1, lr_g=0.05):
    return {"discriminator": optax.sgd(lr_d), "generator": optax.sgd(lr_g)}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_update(params, real, config, lr_d=0.1, lr_g=0.05):
    """The update of `gan` for `apply_fn`, by hand in float64."""
    w = np.asarray(params["discriminator"]["w"], np.float64)
    c = float(params["discriminator"]["c"])
    b = np.asarray(params["generator"]["b"], np.float64)
    x = np.asarray(real, np.float64)
    n = len(x)
    loss = config.loss

    def clip(*grads):
        if config.max_grad_norm is None:
            return grads
        norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads))
        scale = min(1.0, config.max_grad_norm / norm)
        return tuple(g * scale for g in grads)

    for _ in range(config.d_steps):
        r, f = x @ w + c, np.full(n, b @ w + c)  # dL/dr_i and dL/df_i, each with 1/n
        if loss == "non_saturating":
            dr, df = -sigmoid(-r), sigmoid(f)
        elif loss == "lsgan":
            dr, df = r - 1.0, f
        elif loss == "hinge":
            dr, df = -(r < 1.0).astype(float), (f > -1.0).astype(float)
        else:
            dr, df = -np.ones(n), np.ones(n)
        gw = (dr @ x + df.sum() * b) / n
        gc = (dr.sum() + df.sum()) / n
        norm = np.linalg.norm(w)
        if config.uses_gradient_penalty:  # (||w|| - 1)^2 whatever the interpolates
            gw = gw + config.gp_weight * 2.0 * (norm - 1.0) * w / norm
        if config.uses_r1:  # gamma / 2 ||w||^2
            gw = gw + config.r1_weight * w
        gw, gc = clip(gw, np.array(gc))
        w, c = w - lr_d * gw, c - lr_d * float(gc)
    f = b @ w + c
    if loss == "non_saturating":
        dg = -sigmoid(-f)
    elif loss == "lsgan":
        dg = f - 1.0
    else:
        dg = -1.0
    (gb,) = clip(dg * w)
    return {"w": w, "c": c, "b": b - lr_g * gb}


# Every loss, and between them every option (one compile each: keep the list short).
CONFIGS = [
    GANConfig(loss="non_saturating", d_steps=3, r1_weight=2.0),
    GANConfig(loss="wgan_gp", d_steps=2, gp_weight=5.0, r1_weight=0.5),
    GANConfig(loss="hinge", d_steps=2, max_grad_norm=0.3),
    GANConfig(loss="lsgan", r1_weight=1.0, max_grad_norm=0.05),
]
assert {c.loss for c in CONFIGS} == set(GAN_LOSSES)


_UPDATES = {}


def jitted_update(config, tx=None):
    """The compiled update of `gan` for `apply_fn` (one compile per config, shared)."""
    if (config, tx) not in _UPDATES:
        algo = gan(apply_fn, sgd() if tx is None else tx(), config, latent_shape=2)
        _UPDATES[config, tx] = (algo.init, jax.jit(algo.update))
    return _UPDATES[config, tx]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.loss}-{c.d_steps}")
def test_one_update_matches_numpy(config):
    real = np.random.default_rng(1).normal(size=(16, DIM)).astype(np.float32)
    init, update = jitted_update(config)
    state = init(init_params())
    new, metrics = update(state, {"images": real})
    want = np_update(init_params(), real, config)
    np.testing.assert_allclose(new.params["discriminator"]["w"], want["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.params["discriminator"]["c"], want["c"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.params["generator"]["b"], want["b"], rtol=1e-5, atol=1e-6)
    assert tuple(sorted(metrics)) == tuple(sorted(METRICS)) and float(metrics["skipped"]) == 0
    assert int(new.step) == 1


def _adam():
    return {"discriminator": optax.adam(1e-2), "generator": optax.adam(1e-3)}


def test_each_model_counts_its_updates_and_the_generator_average_follows():
    decay = 0.3  # below the warm-up's (1 + t) / (10 + t) from t = 3 on
    init, update = jitted_update(GANConfig(d_steps=3, ema_decay=decay), _adam)
    state = init(init_params())
    check_state(state)
    assert isinstance(state, GANState) and state._fields[:4] == (
        "params", "opt_state", "step", "key"
    )
    average = np.asarray(state.ema_params["b"], np.float64)
    for i in range(5):
        state, _ = update(state, {"images": jnp.full((16, DIM), 0.5 * i)})
        rate = min(decay, (1 + i) / (10 + i))  # warmed up
        average = rate * average + (1 - rate) * np.asarray(state.params["generator"]["b"])
        np.testing.assert_allclose(state.ema_params["b"], average, rtol=1e-5)
    counts = {k: int(optax.tree_utils.tree_get(v, "count")) for k, v in state.opt_state.items()}
    assert counts == {"discriminator": 15, "generator": 5}  # d_steps = 3 each step
    assert gan(apply_fn, sgd(), latent_shape=2).init(init_params()).ema_params is None


def test_a_non_finite_batch_is_skipped_and_counted():
    init, update = jitted_update(CONFIGS[2])  # hinge, two discriminator steps
    state = init(init_params())
    real = np.ones((16, DIM), np.float32)
    real[3, 1] = np.nan
    new, metrics = update(state, {"images": real})
    # Both discriminator steps saw the NaN and were skipped; the generator's loss does not
    # read the real data, so its step went ahead against the unchanged discriminator.
    assert float(metrics["skipped"]) == 2.0
    for got, old in zip(jax.tree.leaves(new.params["discriminator"]),
                        jax.tree.leaves(state.params["discriminator"]), strict=True):
        np.testing.assert_array_equal(got, old)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new.params))
    assert not np.array_equal(new.params["generator"]["b"], state.params["generator"]["b"])


def _mlp_apply(params):
    g, d = params["generator"], params["discriminator"]
    return {
        "generator": lambda z: jnp.tanh(z @ g["w"] + g["b"]),
        "discriminator": lambda x: jax.nn.leaky_relu(x @ d["w1"], 0.2) @ d["w2"],
    }


def _mlp_params():
    r = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(0.5 * r.normal(size=s), jnp.float32)  # noqa: E731
    return {"generator": {"w": f(2, DIM), "b": f(DIM)},
            "discriminator": {"w1": f(DIM, 8), "w2": f(8)}}


def test_scan_and_vmap_over_seeds_compose():
    # One compiled program runs 4 updates under lax.scan for 2 seeds under vmap; each run
    # must be the jitted update applied 4 times in a Python loop with that seed.
    algo = gan(_mlp_apply, {"discriminator": optax.adam(1e-2), "generator": optax.adam(1e-2)},
               GANConfig(d_steps=2), latent_shape=2)
    batches = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(4, 8, DIM)), jnp.float32)
    state = algo.init(_mlp_params())
    keys = jax.random.split(jax.random.key(7), 2)

    def run(key):
        return jax.lax.scan(lambda s, x: algo.update(s, {"images": x}), state._replace(key=key),
                            batches)

    scanned, metrics = jax.jit(jax.vmap(run))(keys)
    update = jax.jit(algo.update)
    for i, key in enumerate(keys):
        looped, losses = state._replace(key=key), []
        for x in batches:
            looped, m = update(looped, {"images": x})
            losses.append(m["d_loss"])
        for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(looped.params),
                        strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["d_loss"][i], losses, rtol=1e-5, atol=1e-6)
    # the seeds' noise differs, and so do the runs
    assert not np.allclose(scanned.params["generator"]["w"][0], scanned.params["generator"]["w"][1])


def test_errors_name_the_argument():
    algo = gan(apply_fn, sgd(), latent_shape=2)
    state = algo.init(init_params())
    with pytest.raises(ValueError, match=r"GAN batch is missing key\(s\) \['images'\]"):
        algo.update(state, {"data": jnp.ones((4, DIM))})
    with pytest.raises(ValueError, match=r"GAN batch has unknown key\(s\) \['labels'\]"):
        algo.update(state, {"images": jnp.ones((4, DIM)), "labels": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"`images` must have the generator's output shape: "
                                         r"got shape \(4, 8, 8\), the generator makes \(4, 3\)"):
        algo.update(state, {"images": jnp.ones((4, 8, 8))})
    with pytest.raises(TypeError, match="`images` must have a floating dtype"):
        algo.update(state, {"images": jnp.ones((4, DIM), jnp.int32)})
    with pytest.raises(TypeError, match=r"`optimizers` must be a dict \{'discriminator'"):
        gan(apply_fn, optax.sgd(0.1), latent_shape=2)
    with pytest.raises(TypeError, match=r"`optimizers\['generator'\]` must be an optax"):
        gan(apply_fn, {"discriminator": optax.sgd(0.1), "generator": 0.1}, latent_shape=2)
    with pytest.raises(TypeError, match="`latent_shape` must be a positive int"):
        gan(apply_fn, sgd(), latent_shape=None)
    with pytest.raises(ValueError, match="`latent_shape` must be >= 1, got 0"):
        gan(apply_fn, sgd(), latent_shape=(4, 0))
    with pytest.raises(TypeError, match="`config` must be a GANConfig"):
        gan(apply_fn, sgd(), {"loss": "hinge"}, latent_shape=2)
    with pytest.raises(TypeError, match=r"GAN `params` must be a dict"):
        algo.init({"g": 1})
    bad = gan(lambda p: {**apply_fn(p), "discriminator": lambda x: x}, sgd(), latent_shape=2)
    with pytest.raises(ValueError, match=r"`discriminator\(real\)` must give one output per"):
        bad.update(bad.init(init_params()), {"images": jnp.ones((4, DIM))})
