"""Fixtures shared by the ops tests."""

import jax
import pytest


@pytest.fixture(scope="module")
def mesh():
    """A one-axis mesh `("data",)` over 8 devices (8 virtual CPU devices in the tests)."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
