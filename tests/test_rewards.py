"""Reward functions (`rlgen.rewards`): each class against a NumPy reference, eagerly,
under `jit` (as a static argument and as a closure) and under `vmap`; the shape and
weight errors; the protocol; the top-level exports."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlgen
from rlgen.rewards import (
    ClippedReward,
    CompositeReward,
    ConstantReward,
    RewardFunction,
    ScaledReward,
    ThresholdReward,
)

RNG = np.random.default_rng(4)
SAMPLES = RNG.normal(size=(6, 3)).astype(np.float32)  # 6 samples of 3 features


def first_feature(samples, conditions=None, **kwargs):
    return samples[:, 0]


def feature_sum(samples, conditions=None, **kwargs):
    return jnp.sum(samples, axis=-1)


def np_first(s):
    return s[:, 0].astype(np.float64)


def np_sum(s):
    return s.sum(-1, dtype=np.float64)


# name: (reward function, NumPy reference of samples [N, 3] -> [N])
CASES = {
    "constant": (ConstantReward(value=2.5), lambda s: np.full(len(s), 2.5)),
    "composite": (
        CompositeReward(
            [first_feature, feature_sum, ConstantReward(1.0)], weights=[0.5, -2.0, 3.0]
        ),
        lambda s: 0.5 * np_first(s) - 2.0 * np_sum(s) + 3.0,
    ),
    "composite-unweighted": (
        CompositeReward([first_feature, feature_sum]),
        lambda s: np_first(s) + np_sum(s),
    ),
    "threshold": (
        ThresholdReward(first_feature, threshold=0.2, above_value=5.0, below_value=-1.0),
        lambda s: np.where(np_first(s) > 0.2, 5.0, -1.0),
    ),
    "threshold-defaults": (
        ThresholdReward(first_feature),
        lambda s: np.where(np_first(s) > 0.5, 1.0, 0.0),
    ),
    "scaled": (ScaledReward(feature_sum, scale=-3.0), lambda s: -3.0 * np_sum(s)),
    "clipped": (
        ClippedReward(feature_sum, min_value=-0.5, max_value=0.7),
        lambda s: np.clip(np_sum(s), -0.5, 0.7),
    ),
    "nested": (
        ClippedReward(ScaledReward(CompositeReward([first_feature, feature_sum]), 2.0), -1.0, 1.0),
        lambda s: np.clip(2.0 * (np_first(s) + np_sum(s)), -1.0, 1.0),
    ),
}


def apply_static(fn, samples):
    return fn(samples)


apply_static_jit = jax.jit(apply_static, static_argnums=0)


@pytest.mark.parametrize("name", CASES)
def test_reward_matches_numpy_eagerly_under_jit_and_vmap(name):
    fn, reference = CASES[name]
    expected = reference(SAMPLES)
    samples = jnp.asarray(SAMPLES)
    eager = fn(samples)
    assert eager.shape == (len(SAMPLES),)
    assert jnp.issubdtype(eager.dtype, jnp.floating)
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-6)
    # The reward object as a static (hashed) argument of jit, and closed over by a jit.
    np.testing.assert_allclose(apply_static_jit(fn, samples), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda s: fn(s))(samples), expected, rtol=1e-5, atol=1e-6)
    # vmap over a leading axis of batches: [2, N, 3] -> [2, N].
    stacked = jnp.stack([samples, -samples])
    mapped = jax.vmap(fn)(stacked)
    np.testing.assert_allclose(mapped[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mapped[1], reference(-SAMPLES), rtol=1e-5, atol=1e-6)
    assert isinstance(fn, RewardFunction)
    assert hash(fn) == hash(dataclasses.replace(fn))  # hashable, as a static argument needs


def test_rewards_accept_conditions_and_pytree_samples():
    def with_conditions(samples, conditions=None, **kwargs):
        return samples["x"][:, 0] * conditions

    fn = ScaledReward(with_conditions, scale=2.0)
    samples = {"x": jnp.asarray(SAMPLES), "y": jnp.zeros((6, 2))}
    out = fn(samples, jnp.arange(6.0))
    np.testing.assert_allclose(out, 2.0 * SAMPLES[:, 0] * np.arange(6.0), rtol=1e-6)
    np.testing.assert_allclose(ConstantReward(1.0)(samples), np.ones(6))


def test_composite_reward_with_mismatched_weights_is_a_value_error():
    with pytest.raises(
        ValueError,
        match=r"`weights` must have one entry per reward function "
        r"\(2\), got 3",
    ):
        CompositeReward([first_feature, feature_sum], weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="reward_fns"):
        CompositeReward([])
    with pytest.raises(TypeError, match=r"reward_fns\[1\].*callable"):
        CompositeReward([first_feature, 3.0])


def bad_shape(samples, conditions=None, **kwargs):
    return samples  # [N, 3], not [N]


@pytest.mark.parametrize(
    ("fn", "who"),
    [
        (ThresholdReward(bad_shape), "reward_fn"),
        (ScaledReward(bad_shape, 2.0), "reward_fn"),
        (ClippedReward(bad_shape), "reward_fn"),
        (CompositeReward([first_feature, bad_shape]), r"reward_fns\[1\]"),
    ],
    ids=["threshold", "scaled", "clipped", "composite"],
)
def test_wrapped_reward_with_the_wrong_shape_is_a_value_error_naming_it(fn, who):
    with pytest.raises(
        ValueError,
        match=rf"reward function {who} must return shape \(6,\).*"
        r"got shape \(6, 3\)",
    ):
        fn(jnp.asarray(SAMPLES))
    with pytest.raises(ValueError, match=who):
        jax.jit(lambda s: fn(s))(jnp.asarray(SAMPLES))
    scalar = ScaledReward(lambda s, c=None: jnp.sum(s), 1.0)
    with pytest.raises(ValueError, match=r"must return shape \(6,\).*got shape \(\)"):
        scalar(jnp.asarray(SAMPLES))


def test_constructor_checks():
    with pytest.raises(TypeError, match="reward_fn.*callable"):
        ThresholdReward(1.0)
    with pytest.raises(TypeError, match="reward_fn.*callable"):
        ScaledReward("f")
    with pytest.raises(ValueError, match="min_value"):
        ClippedReward(feature_sum, min_value=1.0, max_value=0.0)
    with pytest.raises(ValueError, match="scale"):
        ScaledReward(feature_sum, scale=jnp.ones(2))


def test_integer_rewards_become_float():
    out = ThresholdReward(lambda s, c=None: (s[:, 0] > 0).astype(jnp.int32), threshold=0)(
        jnp.asarray(SAMPLES)
    )
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_array_equal(out, (SAMPLES[:, 0] > 0).astype(np.float32))


def test_every_reward_class_is_exported_from_the_top_level():
    for name in (
        "RewardFunction",
        "ConstantReward",
        "CompositeReward",
        "ThresholdReward",
        "ScaledReward",
        "ClippedReward",
    ):
        assert getattr(rlgen, name) is getattr(rlgen.rewards, name)
        assert name in rlgen.__all__


def test_reward_function_protocol_isinstance():
    class Plain:
        def __call__(self, samples, conditions=None, **kwargs):
            return samples[:, 0]

    class NotCallable:
        pass

    assert isinstance(Plain(), RewardFunction)
    assert isinstance(first_feature, RewardFunction)
    assert not isinstance(NotCallable(), RewardFunction)
    np.testing.assert_allclose(
        ScaledReward(Plain(), 2.0)(jnp.asarray(SAMPLES)), 2.0 * SAMPLES[:, 0], rtol=1e-6
    )
