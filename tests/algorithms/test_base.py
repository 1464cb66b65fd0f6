"""What every algorithm shares (`rlgen.algorithms.base`): the state protocol, optimiser
steps (one or several models), parameter averages, batch and reward checks, reward
placement and the data-parallel helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen import algorithms as A
from rlgen.algorithms import base

RNG = np.random.default_rng(3)


def test_with_grad_clipping_clips_the_global_norm():
    tx = optax.sgd(1.0)
    assert base.with_grad_clipping(tx, None) is tx
    clipped = base.with_grad_clipping(tx, 1.0)
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    big = {"a": jnp.array([3.0, 4.0, 0.0]), "b": jnp.array([0.0, 12.0])}  # norm 13
    updates, _ = clipped.update(big, clipped.init(params), params)
    norm = jnp.sqrt(sum(jnp.sum(u**2) for u in jax.tree.leaves(updates)))
    np.testing.assert_allclose(norm, 1.0, rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -big["b"] / 13.0, rtol=1e-6)
    small = jax.tree.map(lambda g: g / 100.0, big)  # norm 0.13: untouched
    updates, _ = clipped.update(small, clipped.init(params), params)
    np.testing.assert_allclose(updates["a"], -small["a"], rtol=1e-6)


def test_apply_gradients_skip_leaves_state_unchanged():
    tx = optax.adam(0.1)
    params = {"w": jnp.asarray(RNG.normal(size=3), jnp.float32)}
    opt_state = tx.init(params)
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    kept = base.apply_gradients(tx, params, opt_state, grads, skip=jnp.array(True))
    for new, old in zip(jax.tree.leaves(kept), jax.tree.leaves((params, opt_state)), strict=True):
        np.testing.assert_array_equal(new, old)
    stepped = base.apply_gradients(tx, params, opt_state, grads, skip=jnp.array(False))
    plain = base.apply_gradients(tx, params, opt_state, grads)
    for a, b in zip(jax.tree.leaves(stepped), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(plain[0]["w"], params["w"])
    # A traced skip flag under jit, as the algorithms use it.
    step = jax.jit(lambda skip: base.apply_gradients(tx, params, opt_state, grads, skip=skip))
    np.testing.assert_array_equal(step(True)[0]["w"], params["w"])
    np.testing.assert_allclose(step(False)[0]["w"], plain[0]["w"], rtol=1e-6)


def test_apply_gradients_keeps_bfloat16_params():
    tx = optax.sgd(0.5)
    params = jnp.ones(4, jnp.bfloat16)
    new, _ = base.apply_gradients(tx, params, tx.init(params), jnp.ones(4, jnp.float32))
    assert new.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(new, np.float32), 0.5)


# ------------------------------------------------------------------------------ checks


def test_check_batch_messages():
    required, optional = ("observations", "rewards"), ("mask",)
    base.check_batch({"observations": 0, "rewards": 0, "mask": 0}, required, optional, "X")
    with pytest.raises(
        ValueError,
        match=r"X batch is missing key\(s\) \['rewards'\]; required "
        r"keys are \['observations', 'rewards'\], optional "
        r"keys \['mask'\]; got \['observations'\]",
    ):
        base.check_batch({"observations": 0}, required, optional, "X")
    with pytest.raises(ValueError, match=r"X batch has unknown key\(s\) \['reward'\]"):
        base.check_batch({"observations": 0, "rewards": 0, "reward": 0}, required, optional, "X")
    with pytest.raises(TypeError, match="X batch must be a dict.*tuple"):
        base.check_batch((1, 2), required, optional, "X")


def test_check_rewards():
    rewards, n_bad = base.check_rewards(jnp.array([1.0, 2.0]))
    assert int(n_bad) == 0 and rewards.shape == (2,)
    with pytest.raises(ValueError, match="`rewards` holds 2 non-finite"):
        base.check_rewards(jnp.array([np.nan, 1.0, -np.inf]))
    with pytest.raises(TypeError, match="`scores` must have a floating dtype"):
        base.check_rewards(jnp.array([1, 2]), name="scores")
    with pytest.raises(TypeError, match="`rewards` is required"):
        base.check_rewards(None)
    counted = jax.jit(lambda r: base.check_rewards(r)[1])(jnp.array([1.0, 2.0]))
    assert int(counted) == 0


def np_last_step(rewards, mask):
    out = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        valid = np.flatnonzero(mask[i])
        if valid.size:
            out[i, valid[-1]] = rewards[i]
    return out


def test_sequence_rewards_to_steps_places_rewards_on_the_last_valid_step():
    mask = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],  # empty row: no reward anywhere
            [0, 1, 0, 1, 0],
        ],  # holes: the last 1 counts
        np.float32,
    )
    rewards = RNG.normal(size=5).astype(np.float32)
    out = base.sequence_rewards_to_steps(jnp.asarray(rewards), jnp.asarray(mask))
    np.testing.assert_allclose(out, np_last_step(rewards, mask), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out).sum(1), rewards * mask.any(1), rtol=1e-6)


# ------------------------------------------------------------- data-parallel helpers


@pytest.mark.parametrize("config", [A.GRPOConfig, A.REINFORCEConfig])
def test_configs_canonicalise_aggregation_aliases_and_name_the_field(config):
    assert config(loss_aggregation="seq-mean-token-mean").loss_aggregation == (
        "sequence-mean-token-mean"
    )
    with pytest.raises(ValueError, match="unknown `loss_aggregation` 'mean'.*'token-mean'"):
        config(loss_aggregation="mean")


# ---------------------------------------------------------------------- state protocol


def test_check_state_names_what_is_wrong():
    from typing import Any, NamedTuple

    class Good(NamedTuple):
        params: Any
        opt_state: Any
        step: Any
        buffer: Any  # a family's own field, after the three

    base.check_state(Good(jnp.ones(2), (), jnp.zeros((), jnp.int32), jnp.zeros(4)))

    class Reordered(NamedTuple):
        step: Any
        params: Any
        opt_state: Any

    for bad, pattern in [
        ({"params": 1}, "got dict"),
        ((1, 2, 3), "got tuple"),
        (Reordered(0, 1, 2), r"first fields are \('params', 'opt_state', 'step'\); got Reordered"),
        (Good(1, (), jnp.zeros(()), 0), "integer scalar `step`, got shape \\(\\) dtype float32"),
        (Good(1, (), jnp.zeros(2, jnp.int32), 0), r"got shape \(2,\)"),
    ]:
        with pytest.raises(TypeError, match=pattern):
            base.check_state(bad)


def test_per_model_gives_each_model_its_own_optimizer_and_state():
    tx = base.per_model({"g": optax.adam(0.1), "d": optax.sgd(1.0)})
    params = {"g": jnp.zeros(2), "d": jnp.zeros(2)}
    state = tx.init(params)
    assert set(state) == {"g", "d"}
    grads = {"g": jnp.array([1.0, -1.0]), "d": jnp.array([2.0, 0.0])}
    p, s = base.apply_gradients(tx, params, state, grads)
    g_alone, _ = optax.adam(0.1).update(grads["g"], optax.adam(0.1).init(params["g"]))
    np.testing.assert_allclose(p["g"], g_alone, rtol=1e-6)  # Adam's first step on g
    np.testing.assert_allclose(p["d"], [-2.0, 0.0])  # plain SGD on d
    assert int(optax.tree_utils.tree_get(s["g"], "count")) == 1


def test_ema_update_is_the_polyak_average():
    average, params = {"w": jnp.zeros(3)}, {"w": jnp.array([1.0, 2.0, -4.0])}
    np.testing.assert_allclose(base.ema_update(average, params, 0.75)["w"], [0.25, 0.5, -1.0])
    np.testing.assert_allclose(base.ema_update(average, params, 0.0)["w"], params["w"])
    np.testing.assert_allclose(base.ema_update(average, params, 1.0)["w"], average["w"])
    # repeated, it converges to the parameters geometrically: 1 - decay^n of the way
    avg = average
    for _ in range(10):
        avg = base.ema_update(avg, params, 0.9)
    np.testing.assert_allclose(avg["w"], (1 - 0.9**10) * params["w"], rtol=1e-5)
    low = base.ema_update({"w": jnp.zeros(2, jnp.bfloat16)}, {"w": jnp.ones(2)}, 0.5)
    assert low["w"].dtype == jnp.bfloat16  # each leaf keeps its dtype
