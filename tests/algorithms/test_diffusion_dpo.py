"""Diffusion-DPO (rlgen.algorithms.diffusion_dpo): log 2 at the reference, a float64 NumPy
reference of the loss, shared noise and time within a pair, learning on Gaussian
preferences, composition and bad input."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen.generative import diffusion, rollout

# the module (the package `rlgen.algorithms` exports the function diffusion_dpo)
DD = importlib.import_module("rlgen.algorithms.diffusion_dpo")

B = 8
SCHEDULE = diffusion.noise_schedule("cosine", 100)
SAMPLERS = {
    "flow": rollout.FlowSampler(num_steps=8),
    "diffusion-v": rollout.DiffusionSampler(SCHEDULE, prediction="v", num_steps=8),
    "diffusion-eps": rollout.DiffusionSampler(SCHEDULE, prediction="epsilon", num_steps=8),
}


def apply_fn(p, x, t, labels):
    out = jnp.tanh(x @ p["w"] + t[:, None] * p["c"]) + p["b"]
    if labels is not None:
        out = out + p["emb"][labels]
    return out


def np_apply(p, x, t, labels):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    out = np.tanh(x @ p["w"] + t[:, None] * p["c"]) + p["b"]
    if labels is not None:
        out = out + p["emb"][np.asarray(labels)]
    return out


def init_params(key=None, scale=0.5):
    k = jax.random.split(jax.random.key(0) if key is None else key, 4)
    return {
        "w": scale * jax.random.normal(k[0], (2, 2)),
        "c": scale * jax.random.normal(k[1], (2,)),
        "b": scale * jax.random.normal(k[2], (2,)),
        "emb": scale * jax.random.normal(k[3], (3, 2)),
    }


def pairs(key, rows=B, labels=True):
    k = jax.random.split(key, 2)
    batch = {
        "chosen": jax.random.normal(k[0], (rows, 2)),
        "rejected": jax.random.normal(k[1], (rows, 2)),
    }
    if labels:
        batch["labels"] = jnp.arange(rows) % 3
    return batch


def np_forward(sampler, x, eps, t):
    """float64 (x_t, target, model time) of the sampler's forward process."""
    x, eps, t = (np.asarray(a, np.float64) for a in (x, eps, t))
    if isinstance(sampler, rollout.FlowSampler):
        tt = t[:, None]
        return (1 - tt) * eps + tt * x, x - eps, t
    abar = np.asarray(SCHEDULE.alphas_cumprod, np.float64)[t.astype(int)][:, None]
    a, s = np.sqrt(abar), np.sqrt(1 - abar)
    target = eps if sampler.prediction == "epsilon" else a * eps - s * x
    return a * x + s * eps, target, t / SCHEDULE.num_timesteps


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_loss_is_log_2_when_the_policy_is_the_reference(name):
    algo = DD.diffusion_dpo(apply_fn, SAMPLERS[name], optax.sgd(0.1), DD.DiffusionDPOConfig())
    state = algo.init(init_params())
    _, metrics = jax.jit(algo.update)(state, pairs(jax.random.key(1)))
    assert float(metrics["loss"]) == float(np.float32(np.log(2.0)))
    assert float(metrics["reward_margin"]) == 0.0
    assert float(metrics["reward_accuracy"]) == 0.0  # no pair strictly won


@pytest.mark.parametrize(
    "name, loss_type",
    [(name, "sigmoid") for name in SAMPLERS] + [("flow", "robust"), ("diffusion-v", "hinge")],
)
def test_loss_against_float64_numpy(name, loss_type):
    sampler = SAMPLERS[name]
    params, ref = init_params(jax.random.key(2)), init_params(jax.random.key(3))
    batch, key = pairs(jax.random.key(4)), jax.random.key(5)
    config = DD.DiffusionDPOConfig(
        beta=3.0, loss_type=loss_type, label_smoothing=0.0 if loss_type == "hinge" else 0.1
    )
    loss, metrics = jax.jit(
        lambda p, r, b, k: DD.diffusion_dpo_loss(p, r, b, k, apply_fn, sampler, config)
    )(params, ref, batch, key)

    t_key, noise_key = jax.random.split(key)
    t = sampler.training_time(t_key, B)
    eps = jax.random.normal(noise_key, (B, 2))

    def err(p, x):
        x_t, target, time = np_forward(sampler, x, eps, t)
        return np.mean((np_apply(p, x_t, time, batch["labels"]) - target) ** 2, axis=-1)

    dw = err(params, batch["chosen"]) - err(ref, batch["chosen"])
    dl = err(params, batch["rejected"]) - err(ref, batch["rejected"])
    h = -(dw - dl)  # the implicit log-ratio margin; logit beta * h
    e = config.label_smoothing
    log_sig = lambda u: -np.logaddexp(0.0, -u)  # noqa: E731
    want = {
        "sigmoid": -(1 - e) * log_sig(config.beta * h) - e * log_sig(-config.beta * h),
        "robust": (-(1 - e) * log_sig(config.beta * h) + e * log_sig(-config.beta * h))
        / (1 - 2 * e),
        "hinge": np.maximum(0.0, 1.0 - config.beta * h),
    }[loss_type]
    np.testing.assert_allclose(float(loss), np.mean(want), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(
        float(metrics["reward_margin"]), config.beta * np.mean(h), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        float(metrics["chosen_reward"]), -config.beta * np.mean(dw), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        float(metrics["chosen_mse"]), np.mean(err(params, batch["chosen"])), rtol=1e-5
    )
    assert float(metrics["reward_accuracy"]) == np.mean(h > 0)


@pytest.mark.parametrize("name", ["flow", "diffusion-v"])
def test_a_pair_shares_its_time_and_noise(name):
    """With chosen == rejected the two errors are equal only if the pair's time and noise
    are shared: the margin is 0 and the loss log 2 even though policy != reference."""
    sampler = SAMPLERS[name]
    batch = pairs(jax.random.key(6))
    batch["rejected"] = batch["chosen"]
    loss, metrics = DD.diffusion_dpo_loss(
        init_params(jax.random.key(2)),
        init_params(jax.random.key(3)),
        batch,
        jax.random.key(7),
        apply_fn,
        sampler,
    )
    assert float(metrics["reward_margin"]) == 0.0
    assert float(metrics["chosen_mse"]) == float(metrics["rejected_mse"])
    assert float(loss) == float(np.float32(np.log(2.0)))


# ----------------------------------------------------------------------- learning


def exact_velocity(x, t):
    """The flow's exact velocity for N(0, I) data: E[x1 - x0 | x_t] with
    x_t = (1 - t) x0 + t x1, i.e. x (2t - 1) / ((1 - t)^2 + t^2)."""
    t = t[:, None]
    return x * (2 * t - 1) / ((1 - t) ** 2 + t**2)


def tilt_apply(p, x, t, labels):
    """The exact base velocity plus a learned time-dependent shift."""
    return exact_velocity(x, t) + p["a"] + t[:, None] * p["c"]


def test_gaussian_preferences_raise_accuracy_and_move_samples():
    """Pairs of N(0, I) samples, the one with the larger first coordinate preferred: the
    held-out implicit accuracy rises from 0 (policy = reference) above 0.7 and the
    sampler's mean first coordinate moves up by > 0.3 (ODE samples, 256 of them)."""
    sampler = SAMPLERS["flow"]
    config = DD.DiffusionDPOConfig(beta=20.0)
    algo = DD.diffusion_dpo(tilt_apply, sampler, optax.adam(0.05), config)

    def preference_pairs(key, rows=64):
        a, b = jax.random.normal(key, (2, rows, 2))
        first = (a[:, 0] > b[:, 0])[:, None]
        return {"chosen": jnp.where(first, a, b), "rejected": jnp.where(first, b, a)}

    def mean_first(params):
        samples, _ = rollout.rollout(
            tilt_apply,
            params,
            sampler,
            jax.random.key(11),
            (256, 2),
            reduction="mean",
            stochastic=jnp.zeros(sampler.num_steps),
        )
        return float(jnp.mean(samples[:, 0]))

    params = {"a": jnp.zeros(2), "c": jnp.zeros(2)}
    state = algo.init(params)
    state, _ = jax.jit(
        lambda s: jax.lax.scan(
            lambda s, k: algo.update(s, preference_pairs(k)),
            s,
            jax.random.split(jax.random.key(9), 150),
        )
    )(state)
    held_out = preference_pairs(jax.random.key(10), 512)
    _, metrics = DD.diffusion_dpo_loss(
        state.params,
        state.ref_params,
        held_out,
        jax.random.key(12),
        tilt_apply,
        sampler,
        config,
    )
    assert float(metrics["reward_accuracy"]) > 0.7, metrics
    assert float(metrics["reward_margin"]) > 0.0
    before, after = mean_first(params), mean_first(state.params)
    assert after > before + 0.3, (before, after)


# ----------------------------------------------------------------------- composition


def test_update_under_jit_scan_and_vmap_over_seeds():
    sampler = SAMPLERS["diffusion-v"]
    algo = DD.diffusion_dpo(apply_fn, sampler, optax.adam(0.05), DD.DiffusionDPOConfig(beta=5.0))
    update = jax.jit(algo.update)
    seeds = jax.random.split(jax.random.key(13), 2)
    steps = 3
    batches = jax.vmap(jax.vmap(pairs))(jax.random.split(jax.random.key(14), (2, steps)))

    def run(seed, seed_batches):
        return jax.lax.scan(algo.update, algo.init(init_params(seed)), seed_batches)

    lanes, lane_metrics = jax.jit(jax.vmap(run))(seeds, batches)
    for lane in range(2):
        state = algo.init(init_params(seeds[lane]))
        for i in range(steps):
            state, m = update(state, jax.tree.map(lambda x, j=(lane, i): x[j], batches))
            np.testing.assert_allclose(lane_metrics["loss"][lane, i], m["loss"], rtol=1e-5)
        got = jax.tree.map(lambda x, j=lane: x[j], lanes.params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert set(m) == set(DD.METRICS)
    assert all(v.shape == () and v.dtype == jnp.float32 for v in m.values())
    before = algo.init(init_params())
    assert jax.tree.structure(before) == jax.tree.structure(state)
    # The reference stays the initial parameters.
    for a, b in zip(
        jax.tree.leaves(state.ref_params), jax.tree.leaves(init_params(seeds[1])), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------- bad input


def test_bad_configs():
    with pytest.raises(ValueError, match="beta"):
        DD.DiffusionDPOConfig(beta=-1.0)
    with pytest.raises(ValueError, match="loss_type"):
        DD.DiffusionDPOConfig(loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        DD.DiffusionDPOConfig(loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        DD.DiffusionDPOConfig(label_smoothing=0.7)
    with pytest.raises(TypeError, match="sampler"):
        DD.diffusion_dpo(apply_fn, "flow", optax.sgd(0.1))
    with pytest.raises(TypeError, match="config"):
        DD.diffusion_dpo(apply_fn, SAMPLERS["flow"], optax.sgd(0.1), {"beta": 1.0})


def test_bad_batches():
    algo = DD.diffusion_dpo(apply_fn, SAMPLERS["flow"], optax.sgd(0.1))
    state = algo.init(init_params())
    good = pairs(jax.random.key(0))
    with pytest.raises(ValueError, match="rejected"):
        algo.update(state, {"chosen": good["chosen"]})
    with pytest.raises(ValueError, match="rejected.*shape"):
        algo.update(state, {**good, "rejected": good["rejected"][:4]})
    with pytest.raises(TypeError, match="chosen"):
        algo.update(state, {**good, "chosen": good["chosen"].astype(jnp.int32)})
    with pytest.raises(ValueError, match="labels"):
        algo.update(state, {**good, "labels": jnp.zeros(3, jnp.int32)})
    with pytest.raises(ValueError, match="unknown"):
        algo.update(state, {**good, "rewards": jnp.zeros(B)})


def test_non_finite_samples_skip_the_update():
    algo = DD.diffusion_dpo(apply_fn, SAMPLERS["flow"], optax.sgd(0.1))
    state = algo.init(init_params())
    batch = pairs(jax.random.key(0))
    batch["chosen"] = batch["chosen"].at[0, 0].set(jnp.nan)
    new, metrics = jax.jit(algo.update)(state, batch)
    assert float(metrics["skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(new.step) == 1
