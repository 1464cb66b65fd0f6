"""`rlgen.generative.diffusion`: schedules against their formulas in float64, the three
parameterisations tied together, min-SNR weights against a float64 reference, the loss's
wiring (an oracle model scores 0, label dropout's rate), the sampler steps' identities
(DDIM with eta = 1 is the DDPM posterior; eta = 0 is deterministic), the samplers on
Gaussian data with the exact denoiser, composition under jit / vmap over seeds / scan,
and bad input.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen.generative.diffusion import (
    LOSS_WEIGHTINGS,
    PREDICTIONS,
    SCHEDULES,
    DiffusionConfig,
    classifier_free_guidance,
    ddim_step_distribution,
    ddpm_step_distribution,
    diffusion_loss,
    draw_step,
    guided_output,
    loss_weight,
    noise_schedule,
    prediction_target,
    q_sample,
    sample_ddim,
    sample_ddpm,
    sampling_timesteps,
    step_log_prob,
    to_epsilon,
    to_v,
    to_x0,
)

T = 1000
SCHEDULE = {name: noise_schedule(name, T) for name in SCHEDULES}


def np_alphas_cumprod(name, num_timesteps=T):
    """``abar_t`` in float64 from the papers' formulas (before any clipping)."""
    if name == "linear":  # Ho et al. 2020, [1e-4, 0.02] at T = 1000
        scale = 1000 / num_timesteps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps)
        return np.cumprod(1.0 - betas)
    s = 0.008  # Nichol & Dhariwal 2021, eq. 17
    f = lambda u: np.cos((u / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return f(np.arange(1, num_timesteps + 1)) / f(0)


def np_abar(schedule, t):
    """float64 ``abar_t`` from the schedule's betas (``t = -1``: 1)."""
    abar = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
    t = np.asarray(t)
    return np.where(t >= 0, abar[np.maximum(t, 0)], 1.0)


# ----------------------------------------------------------------------------- schedules


def test_cosine_alphas_cumprod_is_the_formula_and_clips_the_last_beta():
    s = SCHEDULE["cosine"]
    want = np_alphas_cumprod("cosine")
    betas = np.asarray(s.betas, np.float64)
    clipped = 1.0 - want[1:] / want[:-1] > 0.999
    assert clipped.sum() == 1 and clipped[-1]  # only the last step reaches the clip
    np.testing.assert_allclose(s.alphas_cumprod[:-1], want[:-1], rtol=1e-5)
    assert betas[-1] == pytest.approx(0.999)
    np.testing.assert_allclose(s.alphas_cumprod[-1], want[-2] * 0.001, rtol=1e-4)
    np.testing.assert_allclose(s.log_alphas_cumprod[:-1], np.log(want[:-1]), atol=1e-6)


def test_linear_schedule_is_ho_et_al_and_scales_with_the_steps():
    s = SCHEDULE["linear"]
    np.testing.assert_allclose(s.betas, np.linspace(1e-4, 0.02, T), rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, np_alphas_cumprod("linear"), rtol=2e-5)
    short = noise_schedule("linear", 100)
    np.testing.assert_allclose(np.asarray(short.betas)[[0, -1]], [1e-3, 0.2], rtol=1e-6)
    assert float(short.alphas_cumprod[-1]) < 1e-4  # still ends at noise


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_fields_agree(name):
    s = SCHEDULE[name]
    np.testing.assert_allclose(s.alphas, 1.0 - s.betas, atol=1e-7)
    np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert float(s.alphas_cumprod_prev[0]) == 1.0
    assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0) and s.num_timesteps == T


def test_sampling_timesteps():
    t, prev = sampling_timesteps(T, T)
    np.testing.assert_array_equal(t, np.arange(T)[::-1])
    np.testing.assert_array_equal(prev, t - 1)
    t, prev = sampling_timesteps(T, 50)
    assert t[0] == T - 1 and prev[-1] == -1 and len(set(t.tolist())) == 50
    assert np.all(np.diff(t) < 0)


# ---------------------------------------------------------------------- parameterisations


def _noised(seed, shape=(64, 3), name="cosine", t_max=950):
    r = np.random.default_rng(seed)
    x0 = jnp.asarray(r.uniform(-1, 1, shape), jnp.float32)
    eps = jnp.asarray(r.normal(size=shape), jnp.float32)
    t = jnp.asarray(r.integers(0, t_max, shape[0]), jnp.int32)
    return x0, eps, t, q_sample(x0, t, eps, SCHEDULE[name])


@pytest.mark.parametrize("name", SCHEDULES)
def test_q_sample_against_float64(name):
    x0, eps, t, x_t = _noised(0, name=name, t_max=T)
    abar = np_abar(SCHEDULE[name], np.asarray(t))[:, None]
    want = np.sqrt(abar) * np.asarray(x0, np.float64) + np.sqrt(1 - abar) * np.asarray(eps)
    np.testing.assert_allclose(x_t, want, atol=2e-6)


@pytest.mark.parametrize("name", SCHEDULES)
def test_epsilon_x0_and_v_give_the_same_denoised_estimate(name):
    """The true noise, expressed in each parameterisation and converted back."""
    s = SCHEDULE[name]
    x0, eps, t, x_t = _noised(1, name=name)
    abar = np_abar(s, np.asarray(t))[:, None]
    v_ref = np.sqrt(abar) * np.asarray(eps, np.float64) - np.sqrt(1 - abar) * np.asarray(x0)
    for prediction in PREDICTIONS:
        out = to_v(eps, x_t, t, s) if prediction == "v" else (
            to_x0(eps, x_t, t, s) if prediction == "x0" else eps
        )
        np.testing.assert_allclose(
            out, prediction_target(x0, eps, t, s, prediction), atol=2e-4
        )
        np.testing.assert_allclose(to_x0(out, x_t, t, s, prediction), x0, atol=2e-4)
        np.testing.assert_allclose(to_epsilon(out, x_t, t, s, prediction), eps, atol=2e-4)
        np.testing.assert_allclose(to_v(out, x_t, t, s, prediction), v_ref, atol=2e-4)


@pytest.mark.parametrize("weighting", LOSS_WEIGHTINGS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_min_snr_weights_against_float64(name, weighting):
    s, gamma = SCHEDULE[name], 5.0
    t = np.arange(T)
    abar = np_abar(s, t)
    snr = abar / (1 - abar)
    x0_weight = np.minimum(snr, gamma)  # every prediction's loss, in x0 space
    want = {"epsilon": x0_weight / snr, "x0": x0_weight, "v": x0_weight / (snr + 1)}
    for prediction in PREDICTIONS:
        got = loss_weight(jnp.asarray(t), s, prediction, weighting, gamma)
        expected = want[prediction] if weighting == "min_snr" else np.ones(T)
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)


# ------------------------------------------------------------------------------ the loss


def _oracle(images, schedule, prediction):
    """A model that knows the clean batch: outputs the exact target from ``x_t`` and ``t``."""

    def model(x_t, time, labels):
        t = jnp.round(time * schedule.num_timesteps).astype(jnp.int32)
        eps = to_epsilon(images, x_t, t, schedule, "x0")
        return {"epsilon": eps, "x0": images, "v": to_v(images, x_t, t, schedule, "x0")}[
            prediction
        ]

    return model


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_an_oracle_model_has_zero_loss(prediction):
    config = DiffusionConfig(num_timesteps=T, prediction=prediction)
    images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (256, 5)), jnp.float32)
    model = _oracle(images, SCHEDULE["cosine"], prediction)
    score = jax.jit(lambda x: diffusion_loss(model, {"images": x}, jax.random.key(0), config))
    loss, metrics = score(images)
    assert float(loss) < 1e-6 and float(metrics["mse"]) < 1e-3
    # the same model scored against a different batch is far from 0
    assert float(score(-images)[0]) > 1e-2


def test_label_dropout_replaces_labels_by_the_null_class_at_its_rate():
    num_classes, rate, n = 10, 0.3, 4000
    seen = {}

    def model(x, t, labels):  # outputs 1 where the label is the null class
        seen["labels"] = labels
        if labels is None:
            return jnp.zeros_like(x)
        return jnp.broadcast_to((labels == num_classes)[:, None], x.shape).astype(x.dtype)

    config = DiffusionConfig(prediction="x0", loss_weighting="none", label_dropout=rate)
    labels = jnp.arange(n, dtype=jnp.int32) % num_classes
    batch = {"images": jnp.zeros((n, 2)), "labels": labels}
    loss = jax.jit(lambda b: diffusion_loss(model, b, jax.random.key(1), config,
                                            num_classes=num_classes) + (seen["labels"],))
    _, metrics, seen_labels = loss(batch)
    assert abs(float(metrics["mse"]) - rate) < 0.03  # the share of dropped labels
    kept = seen_labels != num_classes
    np.testing.assert_array_equal(seen_labels[kept], labels[kept])
    diffusion_loss(model, {"images": jnp.zeros((4, 2))}, jax.random.key(1), config)
    assert seen["labels"] is None  # no labels: the model is called unconditionally


def test_loss_is_jittable_and_differentiable():
    config = DiffusionConfig(num_timesteps=100)
    schedule = config.schedule_arrays()

    def loss(w, images, key):
        model = lambda x, t, labels: w * x  # noqa: E731
        return diffusion_loss(model, {"images": images}, key, config, schedule)[0]

    grad = jax.jit(jax.grad(loss))(1.0, jnp.ones((8, 3)) * 0.5, jax.random.key(0))
    assert np.isfinite(float(grad)) and float(grad) != 0.0


def test_loss_errors_name_the_argument():
    model = lambda x, t, labels: x  # noqa: E731
    key, cfg = jax.random.key(0), DiffusionConfig(num_timesteps=10)
    images = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="needs 'images'"):
        diffusion_loss(model, {"x": images}, key, cfg)
    with pytest.raises(ValueError, match="needs 'images'"):
        diffusion_loss(model, {"images": images, "extra": images}, key, cfg)
    with pytest.raises(ValueError, match="`images` must have rank >= 2"):
        diffusion_loss(model, {"images": jnp.zeros(4)}, key, cfg)
    with pytest.raises(TypeError, match="`images` must have a floating dtype"):
        diffusion_loss(model, {"images": jnp.zeros((4, 3), jnp.int32)}, key, cfg)
    with pytest.raises(ValueError, match=r"`labels` must hold class ids in \[0, 3\)"):
        diffusion_loss(model, {"images": images, "labels": jnp.array([0, 1, 2, 3])}, key, cfg,
                       num_classes=3)
    with pytest.raises(ValueError, match="`labels` must have shape"):
        diffusion_loss(model, {"images": images, "labels": jnp.array([0, 1])}, key, cfg,
                       num_classes=3)
    with pytest.raises(TypeError, match="`labels` must have an integer dtype"):
        diffusion_loss(model, {"images": images, "labels": jnp.zeros(4)}, key, cfg,
                       num_classes=3)
    with pytest.raises(ValueError, match="unconditional model"):
        diffusion_loss(model, {"images": images, "labels": jnp.zeros(4, jnp.int32)}, key, cfg,
                       num_classes=0)
    with pytest.raises(ValueError, match="pass num_classes"):
        diffusion_loss(model, {"images": images, "labels": jnp.zeros(4, jnp.int32)}, key, cfg)
    with pytest.raises(ValueError, match="`model output` must have shape"):
        diffusion_loss(lambda x, t, y: x[:, :2], {"images": images}, key, cfg)
    with pytest.raises(TypeError, match="DiffusionConfig"):
        diffusion_loss(model, {"images": images}, key, {"num_timesteps": 10})
    with pytest.raises(ValueError, match="100 timesteps"):
        diffusion_loss(model, {"images": images}, key, cfg, noise_schedule("linear", 100))


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("schedule", "quadratic", "unknown `schedule` 'quadratic'"),
        ("prediction", "score", "unknown `prediction` 'score'"),
        ("loss_weighting", "p2", "unknown `loss_weighting` 'p2'"),
        ("num_timesteps", 1, "`num_timesteps` must be >= 2"),
        ("min_snr_gamma", 0.0, "`min_snr_gamma` must lie in"),
        ("ema_decay", 1.5, "`ema_decay` must lie in"),
        ("label_dropout", -0.1, "`label_dropout` must lie in"),
        ("clip_x0", 0.0, "`clip_x0` must lie in"),
        ("max_grad_norm", -1.0, "`max_grad_norm` must lie in"),
    ],
)
def test_config_errors_name_the_field(field, value, error):
    with pytest.raises(ValueError, match=error):
        DiffusionConfig(**{field: value})


def test_schedule_and_kernel_errors():
    with pytest.raises(ValueError, match="unknown `schedule` 'sigmoid'"):
        noise_schedule("sigmoid", 10)
    with pytest.raises(ValueError, match="unknown `prediction` 'score'"):
        to_x0(jnp.zeros((2, 1)), jnp.zeros((2, 1)), 3, SCHEDULE["linear"], "score")
    with pytest.raises(ValueError, match="`t` must have shape"):
        q_sample(jnp.zeros((2, 1)), jnp.array([1, 2, 3]), jnp.zeros((2, 1)), SCHEDULE["linear"])
    with pytest.raises(ValueError, match="`output` must have shape"):
        ddim_step_distribution(jnp.zeros((2, 2)), jnp.zeros((2, 1)), 3, SCHEDULE["linear"])
    with pytest.raises(ValueError, match="`eta` must lie in"):
        ddim_step_distribution(jnp.zeros((2, 1)), jnp.zeros((2, 1)), 3, SCHEDULE["linear"],
                               eta=-1.0)


# ------------------------------------------------------------------- sampler step identities


def _np_posterior_var(schedule, t, s):
    abar_t, abar_s = np_abar(schedule, t), np_abar(schedule, s)
    return (1 - abar_t / abar_s) * (1 - abar_s) / (1 - abar_t)


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_ddim_with_eta_one_is_the_ddpm_posterior(name, prediction, clip):
    """Consecutive steps (the DDPM chain: std^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t))
    and strided ones (the respaced chain), every timestep from T-1 to the last step."""
    s = SCHEDULE[name]
    r = np.random.default_rng(3)
    t = jnp.asarray(np.concatenate([[T - 1, 1, 0], r.integers(0, T, 61)]), jnp.int32)
    x_t = jnp.asarray(r.normal(size=(64, 4)), jnp.float32)
    out = jnp.asarray(r.normal(size=(64, 4)), jnp.float32)
    for t_prev in (t - 1, jnp.maximum(t - 37, -1)):
        ddpm = ddpm_step_distribution(out, x_t, t, s, t_prev=t_prev, prediction=prediction,
                                      clip_x0=clip)
        ddim = ddim_step_distribution(out, x_t, t, s, t_prev=t_prev, eta=1.0,
                                      prediction=prediction, clip_x0=clip)
        np.testing.assert_allclose(ddim[0], ddpm[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ddim[1], ddpm[1], rtol=1e-4, atol=1e-6)
        want = _np_posterior_var(s, np.asarray(t), np.asarray(t_prev))[:, None]
        np.testing.assert_allclose(np.square(ddpm[1]), np.broadcast_to(want, x_t.shape),
                                   rtol=1e-4, atol=1e-9)
    if name == "linear":  # at consecutive steps: Ho et al.'s beta-tilde from the betas
        betas = np.asarray(s.betas, np.float64)[np.asarray(t)]
        abar, abar_prev = np_abar(s, np.asarray(t)), np_abar(s, np.asarray(t) - 1)
        std = ddpm_step_distribution(out, x_t, t, s, prediction=prediction)[1][:, 0]
        np.testing.assert_allclose(np.square(std), betas * (1 - abar_prev) / (1 - abar),
                                   rtol=1e-4, atol=1e-9)


def test_the_predictions_give_the_same_step():
    s = SCHEDULE["cosine"]
    x0, eps, t, x_t = _noised(4)
    outputs = {p: prediction_target(x0, eps, t, s, p) for p in PREDICTIONS}
    for eta in (0.0, 0.5):
        steps = {p: ddim_step_distribution(o, x_t, t, s, eta=eta, prediction=p)
                 for p, o in outputs.items()}
        for p in ("x0", "v"):
            np.testing.assert_allclose(steps[p][0], steps["epsilon"][0], atol=2e-4)
            np.testing.assert_allclose(steps[p][1], steps["epsilon"][1], atol=1e-6)


def test_ddim_eta_zero_is_deterministic():
    s = SCHEDULE["cosine"]
    model = lambda x, t, labels: 0.5 * x  # noqa: E731
    noise = jax.random.normal(jax.random.key(9), (16, 3))
    draw = jax.jit(lambda key: sample_ddim(model, s, (16, 3), key, num_steps=20, noise=noise,
                                           return_trajectory=True))
    (a, traj), (b, _) = draw(jax.random.key(0)), draw(jax.random.key(1))
    np.testing.assert_array_equal(a, b)  # the step keys do not matter
    assert float(jnp.max(traj.std)) == 0.0 and float(jnp.max(jnp.abs(traj.log_prob))) == 0.0
    np.testing.assert_array_equal(traj.x[1:], traj.mean)  # every step lands on its mean
    # a point mass: the exact x0-denoiser of data = c returns c from any noise
    point = lambda x, t, labels: jnp.full_like(x, 0.3)  # noqa: E731
    x = sample_ddim(point, s, (8, 2), jax.random.key(2), num_steps=7, prediction="x0")
    np.testing.assert_allclose(x, 0.3, atol=1e-5)


def test_step_log_prob_against_float64():
    r = np.random.default_rng(5)
    mean, x = r.normal(size=(2, 6, 3))
    std = r.uniform(0.1, 2.0, (6, 3))
    std[0, 1] = 0.0  # a deterministic dimension contributes 0
    got = step_log_prob(jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32),
                        jnp.asarray(std, jnp.float32))
    safe = np.where(std > 0, std, 1.0)
    dens = -0.5 * ((x - mean) / safe) ** 2 - np.log(safe) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(got, np.where(std > 0, dens, 0.0).sum(1), rtol=1e-5)


# ------------------------------------------------------------- the samplers on Gaussian data


M, S, N = 0.3, 0.5, 20_000  # x0 ~ N(M, S^2) in one dimension, N samples


def exact_epsilon(schedule):
    """The optimal epsilon prediction for x0 ~ N(M, S^2): E[eps | x_t] =
    sigma (x_t - a M) / (a^2 S^2 + sigma^2)."""

    def denoise_fn(x, time, labels):
        t = jnp.round(time * schedule.num_timesteps).astype(jnp.int32)
        abar = schedule.alphas_cumprod[t][:, None]
        a, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
        return sigma * (x - a * M) / (abar * S**2 + sigma**2)

    return denoise_fn


def np_gaussian_chain(schedule, num_steps, eta):
    """The exact law of the sampler's output with the exact denoiser, in float64.

    Each step is affine-Gaussian in x_t: eps_hat = g x + h, x0_hat = (a S^2 x + sigma^2 M)
    / D (D = a^2 S^2 + sigma^2), x_s = sqrt(abar_s) x0_hat + c eps_hat + std z with
    c = sqrt(1 - abar_s - std^2) (DDIM; eta = 1 is DDPM). Mean and variance propagate
    exactly from N(0, 1); this includes the discretisation error of coarse steps.
    """
    abar_all = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
    mean, var = 0.0, 1.0
    for t, s in zip(*sampling_timesteps(schedule.num_timesteps, num_steps), strict=True):
        abar_t, abar_s = abar_all[t], 1.0 if s < 0 else abar_all[s]
        a, sigma = np.sqrt(abar_t), np.sqrt(1 - abar_t)
        d = abar_t * S**2 + sigma**2
        g, h = sigma / d, -sigma * a * M / d
        step_var = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        c = np.sqrt(1 - abar_s - step_var)
        slope = np.sqrt(abar_s) * a * S**2 / d + c * g
        offset = np.sqrt(abar_s) * sigma**2 * M / d + c * h
        mean, var = slope * mean + offset, slope**2 * var + step_var
    return mean, np.sqrt(var)


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_full_chain_with_the_exact_denoiser_is_the_data(name):
    """With all T steps the sampler's exact output law is the data's within 1%."""
    for eta in (0.0, 1.0):
        mean, std = np_gaussian_chain(SCHEDULE[name], T, eta)
        assert abs(mean - M) < 0.01 * S and abs(std / S - 1) < 0.01


@pytest.mark.parametrize(
    "sampler, num_steps, eta, prediction",
    [
        ("ddpm", None, 1.0, "epsilon"),
        ("ddim", 50, 0.0, "epsilon"),
        ("ddim", 50, 0.0, "v"),
        ("ddim", 50, 1.0, "v"),
        ("ddim", 20, 0.5, "epsilon"),
    ],
)
def test_samplers_with_the_exact_denoiser_match_the_gaussian_law(
    sampler, num_steps, eta, prediction
):
    """The samples' mean within 0.015 (4 standard errors) and std within 2% (4 standard
    errors) of the exact law of the chain (`np_gaussian_chain`); DDPM runs all T steps and
    is then within 1% of the data (previous test)."""
    s = SCHEDULE["cosine"]
    eps_fn = exact_epsilon(s)

    def denoise_fn(x, time, labels):
        if prediction == "epsilon":
            return eps_fn(x, time, labels)
        t = jnp.round(time * T).astype(jnp.int32)
        return to_v(eps_fn(x, time, labels), x, t, s)

    key = jax.random.key(11)
    if sampler == "ddpm":
        x = jax.jit(lambda k: sample_ddpm(denoise_fn, s, (N, 1), k, prediction=prediction))(key)
    else:
        x = jax.jit(lambda k: sample_ddim(denoise_fn, s, (N, 1), k, num_steps=num_steps,
                                          eta=eta, prediction=prediction))(key)
    x = np.asarray(x, np.float64)
    mean, std = np_gaussian_chain(s, num_steps or T, eta)
    assert abs(x.mean() - mean) < 0.015
    assert abs(x.std() / std - 1) < 0.02


# ------------------------------------------------------------------------ composition


def _toy_model(x, time, labels):
    shift = 0.0 if labels is None else 0.1 * labels[:, None].astype(x.dtype)
    return 0.4 * x - 0.2 * time[:, None] + shift


def test_ddpm_is_ddim_with_eta_one_over_the_full_chain():
    s = noise_schedule("linear", 100)
    key = jax.random.key(3)
    a = sample_ddpm(_toy_model, s, (6, 2), key, clip_x0=1.0)
    b = sample_ddim(_toy_model, s, (6, 2), key, num_steps=100, eta=1.0, clip_x0=1.0)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_samplers_under_jit_and_vmap_over_seeds():
    s = noise_schedule("cosine", 100)
    labels = jnp.array([0, 1, 2, 3])

    def draw(key, eta):
        return sample_ddim(_toy_model, s, (4, 3), key, num_steps=10, eta=eta, labels=labels,
                           clip_x0=1.0)

    keys = jax.random.split(jax.random.key(0), 5)
    batched = jax.jit(jax.vmap(draw, in_axes=(0, None)))(keys, 0.7)
    one = jax.jit(draw)
    for i, key in enumerate(keys):
        np.testing.assert_allclose(batched[i], one(key, 0.7), atol=1e-5)
    assert not np.allclose(batched[0], batched[1])  # different seeds, different samples


def test_the_steps_scan_into_the_sampler_and_its_trajectory():
    """A user's own lax.scan of `ddim_step_distribution` and `draw_step` is `sample_ddim`
    (keys: the initial noise from split(key)[0], step k's draw from split(split(key)[1], K)[k]),
    and the trajectory's means, stds and log-probs are its steps'."""
    s, K, shape = noise_schedule("cosine", 200), 12, (5, 2)
    key = jax.random.key(4)
    x, traj = sample_ddim(_toy_model, s, shape, key, num_steps=K, eta=0.8,
                          return_trajectory=True)
    ts, prevs = sampling_timesteps(200, K)
    noise_key, step_key = jax.random.split(key)

    def body(x, inputs):
        t, t_prev, k = inputs
        out = _toy_model(x, jnp.full(shape[:1], t / 200, jnp.float32), None)
        mean, std = ddim_step_distribution(out, x, t, s, t_prev=t_prev, eta=0.8)
        return draw_step(k, mean, std), (mean, std)

    x0 = jax.random.normal(noise_key, shape)
    mine, (means, stds) = jax.lax.scan(
        body, x0, (jnp.asarray(ts), jnp.asarray(prevs), jax.random.split(step_key, K))
    )
    np.testing.assert_allclose(mine, x, atol=1e-5)
    np.testing.assert_allclose(traj.mean, means, atol=1e-5)
    np.testing.assert_allclose(traj.std, stds, atol=1e-6)
    assert traj.x.shape == (K + 1, *shape) and traj.log_prob.shape == (K, shape[0])
    np.testing.assert_allclose(traj.x[0], x0) and np.testing.assert_allclose(traj.x[-1], x)
    np.testing.assert_array_equal(traj.t, ts) and np.testing.assert_array_equal(traj.t_prev, prevs)
    logp = jax.vmap(step_log_prob)(traj.x[1:], traj.mean, traj.std)
    np.testing.assert_allclose(traj.log_prob, logp, rtol=1e-6)
    assert float(traj.std[-1].max()) == 0.0 and float(traj.std[0].min()) > 0.0


def test_classifier_free_guidance():
    np.testing.assert_allclose(guided_output(jnp.ones(2), jnp.zeros(2), 0.0), 0.0)
    np.testing.assert_allclose(guided_output(jnp.ones(2), jnp.zeros(2), 2.5), 2.5)
    calls = []

    def model(x, t, labels):
        calls.append(labels is None)
        return x + (0.0 if labels is None else 1.0)

    x, t, y = jnp.zeros((2, 1)), jnp.zeros(2), jnp.array([1, 2])
    np.testing.assert_allclose(classifier_free_guidance(model, 3.0)(x, t, y), 3.0)
    assert calls == [False, True]
    calls.clear()
    np.testing.assert_allclose(classifier_free_guidance(model, 1.0)(x, t, y), 1.0)
    assert calls == [False]  # scale 1: the conditional model alone
    calls.clear()
    assert float(classifier_free_guidance(model, 3.0)(x, t, None)[0, 0]) == 0.0
    assert calls == [True]  # no labels: the unconditional model
    traced = jax.jit(lambda w: classifier_free_guidance(model, w)(x, t, y))(2.0)
    np.testing.assert_allclose(traced, 2.0)


def test_sampler_errors():
    s = noise_schedule("linear", 50)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="`num_steps` must be <= num_timesteps = 50"):
        sample_ddim(_toy_model, s, (2, 1), key, num_steps=51)
    with pytest.raises(ValueError, match="`shape` must be"):
        sample_ddim(_toy_model, s, (2,), key)
    with pytest.raises(ValueError, match="`noise` must have shape"):
        sample_ddpm(_toy_model, s, (2, 1), key, noise=jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        sample_ddpm(_toy_model, s, (2, 1), key, labels=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="`eta` must lie in"):
        sample_ddim(_toy_model, s, (2, 1), key, eta=-0.5)
    with pytest.raises(TypeError, match="`schedule` must be a NoiseSchedule"):
        sample_ddim(_toy_model, {"betas": 1}, (2, 1), key)
