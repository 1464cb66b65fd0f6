"""`rlgen.algorithms.reference`: the frozen reference shared by GRPO's KL penalty and DPO's
implicit reward (one option, `reference`, with the choices of `SOURCES`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen import _checks
from rlgen.algorithms import DPOConfig, GRPOConfig, reference


def test_init_copies_only_for_the_initial_source():
    params = {"w": jnp.arange(3.0)}
    frozen = reference.init(params, "initial")
    np.testing.assert_array_equal(frozen["w"], params["w"])
    assert frozen["w"] is not params["w"]  # a copy: the state owns it
    assert reference.init(params, "batch") == ()
    assert reference.init(params, "initial", needed=False) == ()


def test_values_from_the_frozen_params_carry_no_gradient():
    def compute(p):
        return (p * 2.0,)

    def loss(p):
        (ref,) = reference.values({}, ("ref",), "initial", p, compute, required=True, owner="X")
        return jnp.sum(ref * p)

    p = jnp.array([1.0, 3.0])
    np.testing.assert_allclose(jax.grad(loss)(p), 2.0 * p)  # d/dp of (stop_grad(2p) * p)


def test_values_from_the_batch_and_the_errors():
    batch = {"a": jnp.zeros(2), "b": jnp.ones(2)}
    out = reference.values(batch, ("a", "b"), "batch", (), None, required=True, owner="X")
    assert len(out) == 2
    assert reference.values({}, ("a",), "batch", (), None, required=False, owner="X") is None
    needs = r"X\(reference='batch'\) needs the batch key\(s\) \['a', 'b'\]"
    with pytest.raises(ValueError, match=needs):
        reference.values({"a": 1}, ("a", "b"), "batch", (), None, required=False, owner="X")
    with pytest.raises(ValueError, match=r"needs the batch key\(s\) \['a'\]"):
        reference.values({}, ("a",), "batch", (), None, required=True, owner="X")
    with pytest.raises(ValueError, match=r"drop the batch key\(s\) \['a'\]"):
        reference.values({"a": 1}, ("a",), "initial", (), lambda p: (p,), required=True, owner="X")


@pytest.mark.parametrize("config", [GRPOConfig, DPOConfig])
def test_every_config_offers_the_same_option(config):
    (field,) = [f for f in dataclasses.fields(config) if f.name == "reference"]
    assert _checks.option_choices(field) == reference.SOURCES
    with pytest.raises(ValueError, match="unknown `reference` 'frozen'"):
        config(reference="frozen")
