"""DRaFT-K, DRaFT-LV and ReFL (rlgen.algorithms.draft): where the gradient flows, what
`jax.checkpoint` changes (memory, not the gradient), learning, composition, bad input."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen.generative import diffusion, rollout

# the module (the package `rlgen.algorithms` exports the function draft)
D = importlib.import_module("rlgen.algorithms.draft")

N = 5  # sampler steps
B = 8
TARGET = jnp.array([1.0, -1.0])

SAMPLERS = {
    "flow": rollout.FlowSampler(num_steps=N),
    "diffusion": rollout.DiffusionSampler(
        diffusion.noise_schedule("cosine", 100), prediction="v", num_steps=N
    ),
}


def early(sampler, time):
    """1 on the sampler's first steps (model time far from the data), else 0."""
    is_flow = isinstance(sampler, rollout.FlowSampler)
    return ((time < 0.3) if is_flow else (time > 0.7)).astype(jnp.float32)


def make_apply(sampler):
    """A small model whose `early` parameter only acts on the first steps."""

    def apply_fn(p, x, t, labels):
        shift = jnp.tanh(t)[:, None] * p["c"] + early(sampler, t)[:, None] * p["early"]
        out = jnp.tanh(x @ p["w"]) + p["b"] + shift
        if labels is not None:
            out = out + p["emb"][labels]
        return out

    return apply_fn


def init_params(key=None):
    k = jax.random.split(jax.random.key(0) if key is None else key, 5)
    return {
        "w": 0.3 * jax.random.normal(k[0], (2, 2)),
        "b": 0.1 * jax.random.normal(k[1], (2,)),
        "c": 0.1 * jax.random.normal(k[2], (2,)),
        "early": 0.1 * jax.random.normal(k[3], (2,)),
        "emb": 0.1 * jax.random.normal(k[4], (3, 2)),
    }


def reward_fn(x0, labels):
    return -jnp.sum((x0 - TARGET) ** 2, axis=-1)


def noise_batch(key, rows=B, labels=False):
    batch = {"noise": jax.random.normal(key, (rows, 2))}
    if labels:
        batch["labels"] = jnp.arange(rows) % 3
    return batch


def loss_grad(params, batch, sampler, config):
    key = jax.random.key(1)
    apply_fn = make_apply(sampler)
    return jax.jit(
        jax.grad(lambda p: D.draft_loss(p, batch, key, apply_fn, sampler, reward_fn, config)[0])
    )(params)


def unrolled_loss(params, batch, sampler, K):
    """Reference: a Python loop over the deterministic sampler's steps, the first N - K
    under stop_gradient (params and state), the last K differentiated."""
    apply_fn = make_apply(sampler)
    ts, tn = sampler.times()
    x = batch["noise"]
    labels = batch.get("labels")
    for k in range(N):
        trained = k >= N - K
        if k == N - K:
            x = jax.lax.stop_gradient(x)
        p = params if trained else jax.lax.stop_gradient(params)
        x = sampler.policy_step(apply_fn, p, x, ts[k], tn[k], labels, 0.0)[0]
    return -jnp.mean(reward_fn(x, labels))


def close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


# ----------------------------------------------------------------------- the gradient


@pytest.mark.parametrize("name, K", [("flow", 1), ("flow", N), ("diffusion", 3)])
def test_gradient_equals_unrolled_truncated_backprop(name, K):
    sampler = SAMPLERS[name]
    batch = noise_batch(jax.random.key(2), labels=True)
    got = loss_grad(init_params(), batch, sampler, D.DRaFTConfig(num_grad_steps=K))
    want = jax.jit(jax.grad(unrolled_loss), static_argnums=(2, 3))(init_params(), batch, sampler, K)
    close(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, config",
    [
        ("flow", D.DRaFTConfig(num_grad_steps=1)),
        ("flow", D.DRaFTConfig(method="draft-lv")),
        ("diffusion", D.DRaFTConfig(method="refl", refl_max_step=2, stochastic=True)),
    ],
    ids=["flow-draft1", "flow-lv", "diffusion-refl"],
)
def test_no_gradient_reaches_a_parameter_of_the_early_steps(name, config):
    sampler = SAMPLERS[name]
    batch = noise_batch(jax.random.key(3))
    grads = loss_grad(init_params(), batch, sampler, config)
    assert np.all(np.asarray(grads["early"]) == 0.0)
    assert np.all(np.abs(np.asarray(grads["w"])) > 1e-6)
    # Full DRaFT (K = N) reaches it.
    full = loss_grad(init_params(), batch, sampler, D.DRaFTConfig(num_grad_steps=N))
    assert np.all(np.abs(np.asarray(full["early"])) > 1e-4)


def test_checkpoint_changes_memory_not_the_gradient():
    sampler = SAMPLERS["flow"]
    batch = noise_batch(jax.random.key(4))
    grads = [
        loss_grad(
            init_params(),
            batch,
            sampler,
            D.DRaFTConfig(num_grad_steps=N, checkpoint=c, stochastic=True),
        )
        for c in (True, False)
    ]
    close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_checkpoint_keeps_backward_memory_flat_in_K():
    """Compiled temporary memory of the gradient (XLA's memory analysis) of a wider model:
    with `jax.checkpoint` it barely grows from K = 1 to K = 16; without, it grows ~K-fold."""
    H, steps = 128, 16
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": 0.1 * jax.random.normal(k[0], (2, H)),
        "w2": 0.05 * jax.random.normal(k[1], (H, H)),
        "w3": 0.1 * jax.random.normal(k[2], (H, 2)),
    }

    def apply_fn(p, x, t, labels):
        h = jnp.tanh(x @ p["w1"] + t[:, None])
        for _ in range(3):
            h = jnp.tanh(h @ p["w2"])
        return h @ p["w3"]

    sampler = rollout.FlowSampler(num_steps=steps)
    batch = {"noise": jnp.ones((64, 2))}

    def temp_bytes(K, checkpoint):
        config = D.DRaFTConfig(num_grad_steps=K, checkpoint=checkpoint)
        fn = jax.grad(
            lambda p: D.draft_loss(
                p, batch, jax.random.key(0), apply_fn, sampler, reward_fn, config
            )[0]
        )
        return jax.jit(fn).lower(params).compile().memory_analysis().temp_size_in_bytes

    one, flat, grown = temp_bytes(1, True), temp_bytes(steps, True), temp_bytes(steps, False)
    assert flat < 1.5 * one, (one, flat)
    assert grown > 5 * flat, (flat, grown)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_lv_copies_are_the_last_step_from_renoised_samples(name):
    """DRaFT-LV (Clark et al. Algorithm 2): copy i is the last sampler step from
    x_1^i = noised(x0, eps_i, t_last), x0 the no-gradient sample; rows i * B + b."""
    sampler = SAMPLERS[name]
    apply_fn = make_apply(sampler)
    params, noise = init_params(), noise_batch(jax.random.key(5))["noise"]
    labels = jnp.arange(B) % 3
    key = jax.random.key(0)
    config = D.DRaFTConfig(method="draft-lv", lv_samples=3)
    x0, tiled = jax.jit(
        lambda p: D.draft_samples(apply_fn, sampler, p, noise, labels, key, config)
    )(params)
    assert x0.shape == (3 * B, 2)
    np.testing.assert_array_equal(tiled, jnp.tile(labels, 3))
    ts, tn = sampler.times()
    x = noise
    for k in range(N):
        x = sampler.policy_step(apply_fn, params, x, ts[k], tn[k], labels, 0.0)[0]
    eps = jax.random.normal(jax.random.split(key)[1], (3, B, 2))
    for i in range(3):
        x1 = sampler.noised(x, eps[i], ts[-1])
        want = sampler.policy_step(apply_fn, params, x1, ts[-1], tn[-1], labels, 0.0)[0]
        np.testing.assert_allclose(x0[i * B : (i + 1) * B], want, rtol=1e-5, atol=1e-6)


def test_refl_stops_within_its_range():
    """ReFL's x0 is to_x0 at the stopping step m = N - r, r in [refl_min, refl_max]: the
    set of x0 over many keys is exactly the set predicted from each allowed stop."""
    sampler = SAMPLERS["flow"]
    apply_fn = make_apply(sampler)
    params, noise = init_params(), noise_batch(jax.random.key(6))["noise"]
    config = D.DRaFTConfig(method="refl", refl_min_step=2, refl_max_step=3)
    ts, tn = sampler.times()
    expected = []
    for r in (2, 3):
        x = noise
        for k in range(N - r):
            x = sampler.policy_step(apply_fn, params, x, ts[k], tn[k], None, 0.0)[0]
        expected.append(sampler.to_x0(sampler.output(apply_fn, params, x, ts[N - r]), x, ts[N - r]))
    sample = jax.jit(
        lambda key: D.draft_samples(apply_fn, sampler, params, noise, None, key, config)[0]
    )
    hits = set()
    for i in range(12):
        x0 = sample(jax.random.key(i))
        match = [j for j, e in enumerate(expected) if np.allclose(x0, e, atol=1e-5)]
        assert len(match) == 1
        hits.add(match[0])
    assert hits == {0, 1}


# ----------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    "name, config",
    [
        ("flow", D.DRaFTConfig(num_grad_steps=2)),
        ("diffusion", D.DRaFTConfig(num_grad_steps=1)),
        ("flow", D.DRaFTConfig(method="draft-lv")),
        ("diffusion", D.DRaFTConfig(method="refl", refl_max_step=3, stochastic=True)),
    ],
    ids=["flow-draft2", "diffusion-draft1", "flow-lv", "diffusion-refl-sde"],
)
def test_reward_rises_in_a_short_run(name, config):
    sampler = SAMPLERS[name]
    algo = D.draft(make_apply(sampler), sampler, reward_fn, optax.adam(0.05), config)

    def body(state, key):
        return algo.update(state, noise_batch(key, rows=16))

    state = algo.init(init_params())
    _, metrics = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(7), 60)))(
        state
    )
    before = float(jnp.mean(metrics["mean_reward"][:5]))
    after = float(jnp.mean(metrics["mean_reward"][-5:]))
    # The reward is -|x0 - (1, -1)|^2, about -2.4 to -3.9 at first: it rises by > 1.5 to
    # above -1 (the model cannot shrink the samples' spread to 0).
    assert after > before + 1.5 and after > -1.0, (before, after)
    assert float(jnp.max(metrics["skipped"])) == 0.0


# ----------------------------------------------------------------------- composition


def _algo(name="flow", config=None):
    config = D.DRaFTConfig(num_grad_steps=2, stochastic=True) if config is None else config
    sampler = SAMPLERS[name]
    return D.draft(make_apply(sampler), sampler, reward_fn, optax.adam(0.05), config)


@pytest.mark.parametrize("method", ["draft", "refl"])
def test_update_under_jit_scan_and_vmap_over_seeds(method):
    """Each lane of vmap (over seeds: params and batches) of a lax.scan of updates equals
    the jitted update applied step by step (ReFL's stop is then a batched loop bound).
    DRaFT-LV differs from DRaFT only in the samples it differentiates: its jit and scan
    are exercised by the learning test."""
    config = D.DRaFTConfig(method=method, refl_max_step=3, stochastic=True)
    algo = _algo("diffusion" if method == "refl" else "flow", config)
    update = jax.jit(algo.update)
    seeds = jax.random.split(jax.random.key(9), 2)
    steps = 2
    batches = jax.vmap(jax.vmap(lambda k: noise_batch(k, labels=True)))(
        jax.random.split(jax.random.key(8), (2, steps))
    )  # [seed, step, B, ...]

    def run(seed, seed_batches):
        return jax.lax.scan(algo.update, algo.init(init_params(seed)), seed_batches)

    lanes, lane_metrics = jax.jit(jax.vmap(run))(seeds, batches)
    for lane in range(2):
        state = algo.init(init_params(seeds[lane]))
        for i in range(steps):
            state, m = update(state, jax.tree.map(lambda x, j=(lane, i): x[j], batches))
            np.testing.assert_allclose(lane_metrics["loss"][lane, i], m["loss"], rtol=1e-5)
        got = jax.tree.map(lambda x, j=lane: x[j], lanes.params)
        close(got, state.params, rtol=1e-5, atol=1e-6)
    assert set(m) == set(D.METRICS)
    assert all(v.shape == () and v.dtype == jnp.float32 for v in m.values())
    assert int(state.step) == steps
    before = algo.init(init_params())
    assert jax.tree.structure(before) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize("K", [0, N + 1])
def test_grad_steps_outside_the_trajectory(K):
    with pytest.raises(ValueError, match="num_grad_steps"):
        _algo(config=D.DRaFTConfig(num_grad_steps=K))


def test_bad_configs():
    with pytest.raises(ValueError, match="refl_max_step"):
        _algo(config=D.DRaFTConfig(method="refl"))  # default 10 > 5 steps
    with pytest.raises(ValueError, match="refl_max_step"):
        D.DRaFTConfig(method="refl", refl_min_step=3, refl_max_step=2)
    with pytest.raises(ValueError, match="num_grad_steps"):
        D.DRaFTConfig(method="draft-lv", num_grad_steps=2)
    with pytest.raises(ValueError, match="method"):
        D.DRaFTConfig(method="alignprop")
    with pytest.raises(ValueError, match="reward_scale"):
        D.DRaFTConfig(reward_scale=0.0)
    with pytest.raises(TypeError, match="sampler"):
        D.draft(make_apply(None), object(), reward_fn, optax.sgd(0.1), D.DRaFTConfig())
    with pytest.raises(TypeError, match="reward_fn"):
        D.draft(make_apply(None), SAMPLERS["flow"], None, optax.sgd(0.1), D.DRaFTConfig())


def test_bad_batches():
    algo = _algo()
    state = algo.init(init_params())
    with pytest.raises(ValueError, match="noise"):
        algo.update(state, {"labels": jnp.zeros(B, jnp.int32)})
    with pytest.raises(TypeError, match="noise"):
        algo.update(state, {"noise": jnp.zeros((B, 2), jnp.int32)})
    with pytest.raises(ValueError, match="labels"):
        algo.update(state, {"noise": jnp.zeros((B, 2)), "labels": jnp.zeros(B + 1, jnp.int32)})


def test_reward_of_the_wrong_shape_names_rewards():
    sampler = SAMPLERS["flow"]
    for bad in (lambda x0, labels: -jnp.sum(x0**2), lambda x0, labels: -(x0**2)):
        algo = D.draft(make_apply(sampler), sampler, bad, optax.sgd(0.1), D.DRaFTConfig())
        with pytest.raises(ValueError, match=r"`rewards`.*\(8,\)"):
            jax.jit(algo.update)(algo.init(init_params()), noise_batch(jax.random.key(0)))


def test_non_finite_rewards_skip_the_update_and_say_so():
    sampler = SAMPLERS["flow"]

    def bad_reward(x0, labels):
        return reward_fn(x0, labels).at[0].set(jnp.nan)

    algo = D.draft(make_apply(sampler), sampler, bad_reward, optax.sgd(0.1), D.DRaFTConfig())
    state = algo.init(init_params())
    new, metrics = jax.jit(algo.update)(state, noise_batch(jax.random.key(0)))
    assert float(metrics["skipped"]) == 1.0
    close(new.params, state.params, rtol=0, atol=0)
    assert int(new.step) == 1
