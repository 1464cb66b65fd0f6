"""`rlgen.generative.flow`: the exact OT coupling (identity on a batch with itself, the
brute-force minimum, labels kept, jit and vmap), the loss against a float64 NumPy
reference, the samplers (Euler exact on a straight flow, Heun's second order, the exact
Gaussian velocity transporting noise onto the data), the score identity, straightness,
guidance, composition (jit, vmap over seeds, scan) and the errors.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen.generative.flow import (
    COUPLINGS,
    METHODS,
    FlowConfig,
    euler_step,
    flow_matching_loss,
    guided,
    heun_step,
    interpolate,
    ot_coupling,
    sample_ode,
    score_from_velocity,
    straightness,
    target_velocity,
    time_grid,
)

jit_coupling = jax.jit(ot_coupling)


def _normal(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _cost(x0, x1, perm):
    x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
    return float(((x0[np.asarray(perm)] - x1) ** 2).sum())


def _brute_force(x0, x1, labels=None):
    """The minimum total squared distance over all (label-preserving) permutations."""
    b = len(x1)
    best = np.inf
    for perm in itertools.permutations(range(b)):
        if labels is not None and any(labels[p] != labels[i] for i, p in enumerate(perm)):
            continue
        best = min(best, _cost(x0, x1, perm))
    return best


# ------------------------------------------------------------------------------- coupling


@pytest.mark.parametrize("labels", [None, np.arange(16) % 3])
def test_ot_coupling_of_a_batch_with_itself_is_the_identity(labels):
    x = _normal(0, (16, 2, 3))
    np.testing.assert_array_equal(jit_coupling(x, x, labels), np.arange(16))


@pytest.mark.parametrize("seed", range(4))
def test_ot_coupling_is_the_brute_force_optimum(seed):
    x0, x1 = _normal(seed, (6, 3)), _normal(100 + seed, (6, 3)) + 1.0
    perm = np.asarray(jit_coupling(x0, x1))
    assert sorted(perm) == list(range(6))  # a permutation
    cost = _cost(x0, x1, perm)
    assert cost <= _cost(x0, x1, np.arange(6)) + 1e-9  # no worse than the independent pairs
    np.testing.assert_allclose(cost, _brute_force(x0, x1), rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_ot_coupling_with_labels_moves_noise_only_within_a_class(seed):
    x0, x1 = _normal(seed, (7, 2)), _normal(50 + seed, (7, 2))
    labels = np.array([0, 1, 0, 2, 1, 0, 2])
    perm = np.asarray(jit_coupling(x0, x1, labels))
    np.testing.assert_array_equal(labels[perm], labels)
    np.testing.assert_allclose(_cost(x0, x1, perm), _brute_force(x0, x1, labels), rtol=1e-12)


def test_ot_coupling_under_vmap_solves_each_problem():
    x0, x1 = _normal(1, (3, 5, 2)), _normal(2, (3, 5, 2))
    batched = jax.jit(jax.vmap(ot_coupling))(x0, x1)
    for k in range(3):
        np.testing.assert_array_equal(batched[k], ot_coupling(x0[k], x1[k]))


def test_ot_coupling_of_non_finite_points_is_the_identity():
    x = _normal(3, (4, 2))
    np.testing.assert_array_equal(ot_coupling(x, x.copy() * np.nan), np.arange(4))


# ---------------------------------------------------------------------------------- loss


class Linear:
    """A fixed velocity model ``v = x W + t c + e[label]`` (row ``num_classes`` is null)."""

    def __init__(self, dim, num_classes, seed=0):
        r = np.random.default_rng(seed)
        self.w = r.normal(size=(dim, dim)).astype(np.float32)
        self.c = r.normal(size=dim).astype(np.float32)
        self.e = r.normal(size=(num_classes + 1, dim)).astype(np.float32)
        self.null = num_classes

    def __call__(self, x, t, labels):
        labels = jnp.full(x.shape[:1], self.null) if labels is None else labels
        return x @ jnp.asarray(self.w) + t[:, None] * self.c + jnp.asarray(self.e)[labels]

    def numpy(self, x, t, labels):
        f = lambda a: np.asarray(a, np.float64)  # noqa: E731
        return f(x) @ f(self.w) + f(t)[:, None] * f(self.c) + f(self.e)[labels]


def np_flow_loss(model, images, labels, key, config):
    """The loss in float64 NumPy, with the loss's random draws (noise, t, dropout)."""
    noise_key, time_key, drop_key = jax.random.split(key, 3)
    x1 = np.asarray(images, np.float64)
    b = len(x1)
    x0 = np.asarray(jax.random.normal(noise_key, x1.shape), np.float64)
    if config.coupling == "ot":  # the best label-preserving permutation, by brute force
        best = min(
            (p for p in itertools.permutations(range(b))
             if labels is None or all(labels[q] == labels[i] for i, q in enumerate(p))),
            key=lambda p: ((x0[list(p)] - x1) ** 2).sum(),
        )
        x0 = x0[list(best)]
    used = labels
    if labels is not None:
        drop = np.asarray(jax.random.bernoulli(drop_key, config.label_dropout, (b,)))
        used = np.where(drop, config.num_classes, labels)
    t = np.asarray(jax.random.uniform(time_key, (b,)), np.float64)
    s = config.sigma_min
    xt = (1 - (1 - s) * t)[:, None] * x0 + t[:, None] * x1
    u = x1 - (1 - s) * x0
    v = model.numpy(xt, t, np.full(b, model.null) if used is None else used)
    return ((v - u) ** 2).mean(), ((x1 - x0) ** 2).sum(1).mean()


@pytest.mark.parametrize(
    "config, with_labels",
    [
        (FlowConfig(), False),
        (FlowConfig(coupling="ot", sigma_min=0.1, num_classes=3, label_dropout=0.5), True),
        (FlowConfig(coupling="ot"), False),
    ],
)
def test_loss_matches_numpy(config, with_labels):
    model = Linear(3, max(config.num_classes, 1))
    images = _normal(7, (6, 3))
    labels = np.array([0, 1, 2, 0, 1, 2]) if with_labels else None
    batch = {"images": images} | ({"labels": labels} if with_labels else {})
    key = jax.random.key(5)
    loss, metrics = jax.jit(lambda b, k: flow_matching_loss(model, b, k, config))(batch, key)
    want_loss, want_cost = np_flow_loss(model, images, labels, key, config)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    np.testing.assert_allclose(metrics["pair_cost"], want_cost, rtol=2e-5)


def test_ot_coupling_lowers_the_pair_cost():
    images = 0.5 * _normal(8, (64, 2))
    pair_cost = jax.jit(
        lambda c: flow_matching_loss(Linear(2, 1), {"images": images}, jax.random.key(0),
                                     FlowConfig(coupling=c))[1]["pair_cost"],
        static_argnums=0,
    )
    cost = {c: float(pair_cost(c)) for c in COUPLINGS}
    assert cost["ot"] < 0.5 * cost["independent"]  # measured 0.95 vs 3.41


def test_loss_is_zero_for_the_exact_velocity_of_a_point_mass_without_noise_pairs():
    # with sigma_min = 0 and data = one point m, u = m - x_0 = (m - x_t) / (1 - t)
    m = jnp.array([2.0, -1.0])
    exact = lambda x, t, labels: (m - x) / (1.0 - t[:, None])  # noqa: E731
    batch = {"images": jnp.tile(m, (8, 1))}
    loss, _ = jax.jit(flow_matching_loss, static_argnums=0)(exact, batch, jax.random.key(1))
    assert float(loss) < 1e-9


def test_path_and_target_velocity():
    x0, x1 = _normal(0, (4, 3)), _normal(1, (4, 3))
    s = 0.2
    np.testing.assert_allclose(interpolate(x0, x1, jnp.zeros(4), s), x0)
    np.testing.assert_allclose(interpolate(x0, x1, jnp.ones(4), s), s * x0 + x1, rtol=1e-6)
    # u is the path's time derivative
    h, t = 1e-2, jnp.full(4, 0.3)
    slope = (interpolate(x0, x1, t + h, s) - interpolate(x0, x1, t - h, s)) / (2 * h)
    np.testing.assert_allclose(slope, target_velocity(x0, x1, s), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------ samplers


def gaussian_velocity(mean, std, sigma_min=0.0):
    """The exact velocity E[u | x_t = x] for data N(mean, std^2 I) and noise N(0, I).

    x_t ~ N(t m, (a^2 + t^2 s^2) I) with a = 1 - (1 - sigma_min) t, and u = x_1 - (1 -
    sigma_min) x_0 has Cov(u, x_t) = t s^2 - (1 - sigma_min) a per entry.
    """

    def v(x, t, labels=None):
        t = t[:, None]
        a = 1.0 - (1.0 - sigma_min) * t
        var = a**2 + t**2 * std**2
        return mean + (t * std**2 - (1.0 - sigma_min) * a) / var * (x - t * mean)

    return v


def test_euler_with_one_step_lands_exactly_on_a_straight_flow():
    m = jnp.array([[3.0, -2.0]])
    point_mass = lambda x, t, labels: (m - x) / (1.0 - t[:, None])  # noqa: E731
    x0 = jnp.asarray(_normal(0, (5, 2)))
    np.testing.assert_allclose(sample_ode(point_mass, x0, 1), jnp.tile(m, (5, 1)), atol=1e-6)
    np.testing.assert_allclose(euler_step(point_mass, x0, 0.0, 1.0), jnp.tile(m, (5, 1)),
                               atol=1e-6)


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_convergence_order_on_a_linear_ode(method, order):
    # dx/dt = (1 + t) A x: x(1) = expm(1.5 A) x(0)
    a = np.array([[-1.0, 2.0], [-2.0, -0.5]])
    linear = lambda x, t, labels: (1 + t[:, None]) * x @ jnp.asarray(a.T, x.dtype)  # noqa: E731
    x0 = np.array([[1.0, 0.5]])
    exact = x0 @ _expm(1.5 * a).T
    with jax.enable_x64():
        errors = [
            np.abs(np.asarray(sample_ode(linear, jnp.asarray(x0), n, method=method)) - exact).max()
            for n in (16, 32, 64)
        ]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios, 2.0**order, rtol=0.1)


def _expm(a):
    w, v = np.linalg.eig(a)
    return np.real(v @ np.diag(np.exp(w)) @ np.linalg.inv(v))


@pytest.mark.parametrize("method", METHODS)
def test_exact_gaussian_velocity_transports_noise_onto_the_data(method):
    mean, std = jnp.array([1.5, -0.5]), 2.0
    x0 = jnp.asarray(_normal(4, (4000, 2)))
    x1 = jax.jit(lambda x: sample_ode(gaussian_velocity(mean, std), x, 64, method=method))(x0)
    # the flow of one Gaussian onto another is the affine map x0 -> mean + std x0
    tol = 4e-2 if method == "euler" else 1e-3  # first order: 64 steps leave ~2%
    np.testing.assert_allclose(x1, mean + std * x0, atol=tol * 10)
    np.testing.assert_allclose(x1.mean(0), mean + std * x0.mean(0), atol=tol)
    np.testing.assert_allclose(x1.std(0), std * x0.std(0), rtol=tol)


def test_score_from_velocity_is_the_gaussian_marginal_score():
    mean, std, s = jnp.array([1.0, -2.0]), 1.5, 0.1
    x = jnp.asarray(_normal(0, (5, 2)))
    for t in (0.0, 0.3, 0.9):
        tb = jnp.full(5, t)
        v = gaussian_velocity(mean, std, s)(x, tb)
        var = (1 - (1 - s) * t) ** 2 + t**2 * std**2
        np.testing.assert_allclose(score_from_velocity(x, t, v, s), -(x - t * mean) / var,
                                   rtol=1e-5, atol=1e-5)


def test_heun_step_is_the_trapezoid_of_two_euler_velocities():
    v = lambda x, t, labels: jnp.sin(x) * (1 + t[:, None])  # noqa: E731
    x = jnp.asarray(_normal(1, (3, 2)))
    predictor = euler_step(v, x, 0.2, 0.5)
    slope_next = (euler_step(v, predictor, 0.5, 0.8) - predictor) / 0.3
    want = x + 0.3 * 0.5 * ((predictor - x) / 0.3 + slope_next)
    np.testing.assert_allclose(heun_step(v, x, 0.2, 0.5), want, rtol=1e-5, atol=1e-6)


def test_trajectory_and_time_grid():
    v = gaussian_velocity(jnp.zeros(2), 2.0)
    x0 = jnp.asarray(_normal(2, (3, 2)))
    x1, path = sample_ode(v, x0, 5, method="heun", return_trajectory=True)
    assert path.shape == (6, 3, 2)
    np.testing.assert_array_equal(path[0], x0)
    np.testing.assert_array_equal(path[-1], x1)
    np.testing.assert_allclose(time_grid(5), np.linspace(0, 1, 6), atol=1e-7)


def np_straightness(path, times):
    path = np.asarray(path, np.float64).reshape(len(path), path.shape[1], -1)
    dt = np.diff(times)
    chord = (path[-1] - path[0]) / (times[-1] - times[0])
    total = sum(
        dt[k] * (((chord - (path[k + 1] - path[k]) / dt[k]) ** 2).sum(-1)).mean()
        for k in range(len(dt))
    )
    return total / (times[-1] - times[0])


def test_straightness():
    m = jnp.array([[1.0, 2.0]])
    point_mass = lambda x, t, labels: (m - x) / (1.0 - t[:, None])  # noqa: E731
    x0 = jnp.asarray(_normal(0, (64, 2)))
    _, straight = sample_ode(point_mass, x0, 16, return_trajectory=True)
    assert float(straightness(straight)) < 1e-8
    _, curved = sample_ode(gaussian_velocity(m, 3.0), x0, 16, return_trajectory=True)
    assert float(straightness(curved)) > 0.1
    times = np.array([0.0, 0.1, 0.5, 0.6, 1.0])
    path = _normal(3, (5, 4, 2, 3))
    np.testing.assert_allclose(straightness(path, times), np_straightness(path, times),
                               rtol=1e-5)


def test_guidance_combines_conditional_and_unconditional():
    v = lambda x, t, labels: (  # noqa: E731
        jnp.zeros_like(x) if labels is None else labels[:, None] * jnp.ones_like(x)
    )
    x, t, labels = jnp.zeros((2, 1)), jnp.zeros(2), jnp.array([1, 2])
    np.testing.assert_allclose(guided(v, 1.0)(x, t, labels), [[1.0], [2.0]])
    np.testing.assert_allclose(guided(v, 0.0)(x, t, labels), [[0.0], [0.0]])
    np.testing.assert_allclose(guided(v, 2.5)(x, t, labels), [[2.5], [5.0]])
    np.testing.assert_allclose(guided(v, 2.5)(x, t, None), [[0.0], [0.0]])
    traced = jax.jit(lambda w: guided(v, w)(x, t, labels))(2.5)
    np.testing.assert_allclose(traced, [[2.5], [5.0]])


# --------------------------------------------------------------------------- composition


def test_vmap_over_seeds_and_scan_compose():
    model = Linear(2, 2)
    config = FlowConfig(coupling="ot", num_classes=2)
    batch = {"images": _normal(0, (8, 2)), "labels": np.arange(8) % 2}
    keys = jax.random.split(jax.random.key(0), 3)
    loss = jax.jit(lambda k: flow_matching_loss(model, batch, k, config)[0])
    batched = jax.jit(jax.vmap(loss))(keys)
    np.testing.assert_allclose(batched, [loss(k) for k in keys], rtol=1e-6)
    _, scanned = jax.jit(lambda ks: jax.lax.scan(lambda c, k: (c, loss(k)), 0.0, ks))(keys)
    np.testing.assert_allclose(scanned, batched, rtol=1e-6)

    v = gaussian_velocity(jnp.ones(2), 0.5)
    draw = jax.jit(lambda k: sample_ode(v, jax.random.normal(k, (4, 2)), 8, method="heun"))
    seeds = jax.jit(jax.vmap(draw))(keys)
    np.testing.assert_allclose(seeds[1], draw(keys[1]), rtol=1e-6)


# -------------------------------------------------------------------------------- errors


def test_config_errors():
    with pytest.raises(ValueError, match="unknown `coupling` 'sinkhorn'"):
        FlowConfig(coupling="sinkhorn")
    with pytest.raises(ValueError, match="unknown `teacher_method` 'rk4'"):
        FlowConfig(teacher_method="rk4")
    with pytest.raises(ValueError, match="`sigma_min` must lie in"):
        FlowConfig(sigma_min=1.0)
    with pytest.raises(ValueError, match="`label_dropout` must lie in"):
        FlowConfig(label_dropout=1.5)
    with pytest.raises(ValueError, match="coupling must be 'independent'"):
        FlowConfig(coupling="ot", reflow=True)
    with pytest.raises(ValueError, match="`num_classes` must be >= 0"):
        FlowConfig(num_classes=-1)


def test_input_errors():
    model, key = Linear(2, 3), jax.random.key(0)
    images = _normal(0, (4, 2))
    three = FlowConfig(num_classes=3)
    loss = lambda batch, config=three, **kw: flow_matching_loss(  # noqa: E731
        model, batch, key, config, **kw
    )
    with pytest.raises(ValueError, match="reflow=True.*pass `teacher`"):
        loss({"images": images}, FlowConfig(reflow=True))
    with pytest.raises(ValueError, match="teacher.*reflow only"):
        loss({"images": images}, teacher=model)
    with pytest.raises(ValueError, match=r"`labels` must hold class ids in \[0, 3\)"):
        loss({"images": images, "labels": np.array([0, 1, 2, 3])})
    with pytest.raises(ValueError, match=r"`labels` must have shape \(4,\)"):
        loss({"images": images, "labels": np.array([0, 1])})
    with pytest.raises(TypeError, match="`labels` must have an integer dtype"):
        loss({"images": images, "labels": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="num_classes=0"):
        loss({"images": images, "labels": np.zeros(4, np.int32)}, FlowConfig())
    with pytest.raises(ValueError, match="`images` must have rank >= 2"):
        loss({"images": images[0]})
    with pytest.raises(TypeError, match="`images` must have a floating dtype"):
        loss({"images": np.zeros((4, 2), np.int32)})
    with pytest.raises(ValueError, match="needs 'images'"):
        loss({"x": images})
    with pytest.raises(ValueError, match=r"model\(x, t, labels\)` must have shape"):
        flow_matching_loss(lambda x, t, c: x[:, :1], {"images": images}, key)
    with pytest.raises(ValueError, match="unknown `method` 'rk4'"):
        sample_ode(model, images, 4, method="rk4")
    with pytest.raises(ValueError, match="`num_steps` must be >= 1"):
        sample_ode(model, images, 0)
    with pytest.raises(ValueError, match="`x1` must have shape"):
        ot_coupling(images, images[:3])
    with pytest.raises(ValueError, match="`trajectory` needs at least 2 time points"):
        straightness(images[None])
