"""Direct tests of the trace-time argument checks in rlgen/_checks.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen import _checks

# ----------------------------------------------------------------------------------------
# as_mask
# ----------------------------------------------------------------------------------------


def test_as_mask_default_is_ones_float32():
    m = _checks.as_mask(None, (2, 3))
    assert m.shape == (2, 3) and m.dtype == jnp.float32
    np.testing.assert_array_equal(m, 1.0)


@pytest.mark.parametrize("dtype", [jnp.bool_, jnp.int32, jnp.float32, jnp.bfloat16])
def test_as_mask_casts_to_float32(dtype):
    raw = np.array([[1, 0, 1], [0, 0, 1]])
    m = _checks.as_mask(jnp.asarray(raw, dtype), (2, 3))
    assert m.dtype == jnp.float32
    np.testing.assert_array_equal(m, raw.astype(np.float32))


def test_as_mask_accepts_lists_and_numpy():
    np.testing.assert_array_equal(_checks.as_mask([True, False], (2,)), [1.0, 0.0])
    np.testing.assert_array_equal(_checks.as_mask(np.array([0, 1]), (2,)), [0.0, 1.0])


def test_as_mask_wrong_shape_names_the_argument_and_the_reference():
    with pytest.raises(ValueError, match=r"`where` must have shape \(2, 3\) \(the shape of `x`\)"):
        _checks.as_mask(jnp.ones((3, 2)), (2, 3), "where", "x")
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        _checks.as_mask(jnp.ones(3), (2, 3))


def test_as_mask_bad_types():
    with pytest.raises(TypeError, match="`mask`"):
        _checks.as_mask(jnp.ones((2,), jnp.complex64), (2,))
    with pytest.raises(TypeError, match="`my_mask` must be an array"):
        _checks.as_mask(object(), (2,), "my_mask")


def test_as_mask_under_jit():
    f = jax.jit(lambda m: _checks.as_mask(m, (2, 2)) * 2.0)
    np.testing.assert_array_equal(f(jnp.array([[True, False], [False, True]])), [[2, 0], [0, 2]])


# ----------------------------------------------------------------------------------------
# check_range / check_scalar / concrete_value
# ----------------------------------------------------------------------------------------


def test_check_range_accepts_values_inside():
    for v in (0.0, 0.5, 1.0, np.float32(0.99), jnp.float32(0.25), 1):
        _checks.check_range(v, "gamma", 0.0, 1.0)
    _checks.check_range(1e9, "beta", 0.0, low_open=True)  # no upper bound


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (1.5, {"low": 0.0, "high": 1.0}, r"`gamma` must lie in \[0, 1\], got 1.5"),
        (-0.1, {"low": 0.0, "high": 1.0}, r"`gamma` must lie in \[0, 1\], got -0.1"),
        (0.0, {"low": 0.0, "low_open": True}, r"`gamma` must lie in \(0, inf\], got 0"),
        (0.5, {"low": 0.0, "high": 0.5, "high_open": True}, r"`gamma` must lie in \[0, 0.5\)"),
        (float("nan"), {"low": 0.0}, "`gamma`"),
        (jnp.float32(2.0), {"high": 1.0}, r"\[-inf, 1\]"),
        (np.float64(-3.0), {"low": 0.0}, "got -3"),
    ],
)
def test_check_range_rejects_concrete_values_outside(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _checks.check_range(value, "gamma", **kwargs)


def test_check_range_accepts_traced_values_under_jit_and_vmap():
    def f(x):
        _checks.check_range(x, "gamma", 0.0, 1.0)
        return x * 2.0

    # 5.0 is out of range, but traced: it cannot be inspected and is accepted.
    assert jax.jit(f)(5.0) == 10.0
    np.testing.assert_array_equal(jax.vmap(f)(jnp.array([0.5, 3.0])), [1.0, 6.0])
    assert jax.grad(f)(0.3) == 2.0
    # ... while the same value, concrete, is rejected.
    with pytest.raises(ValueError, match="gamma"):
        f(5.0)


def test_check_range_rejects_non_scalars():
    with pytest.raises(ValueError, match=r"`eps` must be a scalar \(shape \(\)\)"):
        _checks.check_range(jnp.array([0.1, 0.2]), "eps", 0.0)
    with pytest.raises(TypeError, match="`eps` must be a scalar number"):
        _checks.check_range("0.1", "eps", 0.0)


def test_concrete_value():
    assert _checks.concrete_value(3) == 3.0
    assert _checks.concrete_value(np.float32(0.5)) == 0.5
    assert _checks.concrete_value(jnp.asarray(0.25)) == 0.25
    assert _checks.concrete_value(jnp.ones(2)) is None  # not a scalar
    seen = []
    jax.jit(lambda x: seen.append(_checks.concrete_value(x)) or x)(1.0)
    assert seen == [None]


# ----------------------------------------------------------------------------------------
# check_choice / check_int / check_positive_int / check_bool / rank, dtype and shape checks
# ----------------------------------------------------------------------------------------


def test_check_choice():
    assert _checks.check_choice("b", ("a", "b"), "mode") == "b"
    assert _checks.check_choice("x", {"x": 1, "y": 2}, "estimator") == "x"
    with pytest.raises(ValueError, match=r"unknown `mode` 'c'; expected one of 'a', 'b'"):
        _checks.check_choice("c", ("a", "b"), "mode")
    with pytest.raises(ValueError, match=r"`estimator` 3; expected one of 'x', 'y'"):
        _checks.check_choice(3, {"x": 1, "y": 2}, "estimator")


def test_check_positive_int():
    assert _checks.check_positive_int(3, "group_size") == 3
    out = _checks.check_positive_int(np.int64(2), "group_size")
    assert out == 2 and type(out) is int
    with pytest.raises(ValueError, match="`group_size` must be >= 1, got 0"):
        _checks.check_positive_int(0, "group_size")
    with pytest.raises(ValueError, match="group_size"):
        _checks.check_positive_int(-4, "group_size")
    for bad in (True, 2.0, "2", jnp.asarray(2), None):
        with pytest.raises(TypeError, match="`group_size` must be a Python int"):
            _checks.check_positive_int(bad, "group_size")


def test_rank_dtype_and_shape_checks_name_the_argument():
    x = jnp.zeros((2, 3))
    _checks.check_rank(x, 2, "x")
    _checks.check_rank(x, (1, 2), "x")
    with pytest.raises(ValueError, match=r"`x` must have rank 1 or rank 3 \(\[B\]\), got shape"):
        _checks.check_rank(x, (1, 3), "x", "([B])")
    _checks.check_float(x, "x")
    with pytest.raises(TypeError, match="`ids` must have a floating dtype"):
        _checks.check_float(jnp.zeros(2, jnp.int32), "ids")
    _checks.check_integer(jnp.zeros(2, jnp.int32), "ids")
    with pytest.raises(TypeError, match="`ids` must have an integer dtype"):
        _checks.check_integer(x, "ids")
    _checks.check_shape(x, (2, 3), "x")
    with pytest.raises(ValueError, match=r"`y` must have shape \(2, 3\) \(the shape of `x`\)"):
        _checks.check_shape(jnp.zeros(3), (2, 3), "y", "x")
    with pytest.raises(TypeError, match="`x` is required, got None"):
        _checks.as_array(None, "x")


def test_check_int_and_check_bool():
    out = _checks.check_int(np.int64(5), "every_n_steps", low=1)
    assert out == 5 and type(out) is int
    assert _checks.check_int(-3, "offset") == -3  # no lower bound by default
    with pytest.raises(ValueError, match="`every_n_steps` must be >= 1, got 0"):
        _checks.check_int(0, "every_n_steps", low=1)
    for bad in (True, 1.0, "1", None):
        with pytest.raises(TypeError, match="`every_n_steps` must be an int, got"):
            _checks.check_int(bad, "every_n_steps")
    # check_positive_int is check_int for static sizes, with its own bound.
    assert _checks.check_positive_int(2, "group_size", 2) == 2
    with pytest.raises(ValueError, match="`group_size` must be >= 2, got 1"):
        _checks.check_positive_int(1, "group_size", 2)
    assert _checks.check_bool(False, "disable") is False
    for bad in (0, 1, "yes", None, np.bool_(True)):
        with pytest.raises(TypeError, match="`disable` must be a bool"):
            _checks.check_bool(bad, "disable")


# ----------------------------------------------------------------------------------------
# float_array / int_array / real_array / float_pair
# ----------------------------------------------------------------------------------------


def test_float_array_returns_the_array_and_upcasts_only_when_asked():
    x = _checks.float_array([[1.0, 2.0]], "x", rank=2, shape=(1, 2))
    assert isinstance(x, jax.Array) and x.shape == (1, 2)
    half = jnp.ones(3, jnp.bfloat16)
    assert _checks.float_array(half, "x").dtype == jnp.bfloat16
    assert _checks.float_array(half, "x", upcast=True).dtype == jnp.float32
    assert _checks.float_array(jnp.ones(3, jnp.float16), "x", upcast=True).dtype == jnp.float32
    assert _checks.float_array(jnp.ones(3), "x", rank=(1, 2), min_rank=1).ndim == 1


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "message"),
    [
        (
            jnp.zeros((2, 3)),
            {"rank": 1, "what": "([B])"},
            ValueError,
            r"`x` must have rank 1 \(\[B\]\), got shape \(2, 3\) dtype float32",
        ),
        (
            jnp.float32(1.0),
            {"min_rank": 1, "what": "(a vocabulary axis last)"},
            ValueError,
            r"`x` must have rank >= 1 \(a vocabulary axis last\), got shape \(\) dtype float32",
        ),
        (
            jnp.zeros(3, jnp.int32),
            {"rank": 1},
            TypeError,
            r"`x` must have a floating dtype .*got shape \(3,\) dtype int32",
        ),
        (
            jnp.zeros(3),
            {"shape": (4,), "like": "y"},
            ValueError,
            r"`x` must have shape \(4,\) \(the shape of `y`\), got shape \(3,\) dtype float32",
        ),
        # rank is checked before the dtype, the dtype before the shape
        (jnp.zeros((2, 2), jnp.int32), {"rank": 1}, ValueError, "rank 1"),
        (jnp.zeros(2, jnp.int32), {"shape": (3,)}, TypeError, "floating dtype"),
        (None, {}, TypeError, "`x` is required, got None"),
        ("abc", {}, TypeError, "`x` must be an array"),
    ],
)
def test_float_array_errors_name_the_argument_and_what_came(x, kwargs, error, message):
    with pytest.raises(error, match=message):
        _checks.float_array(x, "x", **kwargs)


def test_int_and_real_arrays():
    ids = _checks.int_array(np.array([[0, 3]]), "actions", rank=2, shape=(1, 2))
    assert ids.dtype == jnp.int32
    with pytest.raises(TypeError, match="`actions` must have an integer dtype"):
        _checks.int_array(jnp.zeros(2), "actions")
    with pytest.raises(ValueError, match=r"`actions` must have shape \(3,\)"):
        _checks.int_array(jnp.zeros(2, jnp.int32), "actions", shape=(3,))
    for dtype in (jnp.bool_, jnp.int32, jnp.float32):
        assert _checks.real_array(jnp.ones(2, dtype), "lengths", rank=1).dtype == dtype
    with pytest.raises(TypeError, match="`lengths` must be boolean, integer or floating"):
        _checks.real_array(jnp.ones(2, jnp.complex64), "lengths")
    with pytest.raises(ValueError, match="`lengths` must have rank 1"):
        _checks.real_array(jnp.ones((2, 1)), "lengths", rank=1)


def test_float_pair_casts_both_to_the_first_dtype_upcast():
    a, b = _checks.float_pair(jnp.zeros(2, jnp.bfloat16), jnp.ones(2, jnp.float16), "lp", "old")
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(b, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"`old` must have shape \(2,\) \(the shape of `lp`\)"):
        _checks.float_pair(jnp.zeros(2), jnp.zeros(3), "lp", "old")
    with pytest.raises(TypeError, match="`old` must have a floating dtype"):
        _checks.float_pair(jnp.zeros(2), jnp.zeros(2, jnp.int32), "lp", "old")
    with pytest.raises(TypeError, match="`lp` must have a floating dtype"):
        _checks.float_pair(jnp.zeros(2, jnp.int32), jnp.zeros(2), "lp", "old")


def test_array_checks_run_at_trace_time_under_jit():
    def f(x):
        return _checks.float_array(x, "x", rank=1) * 2.0

    np.testing.assert_array_equal(jax.jit(f)(jnp.ones(2)), [2.0, 2.0])
    with pytest.raises(ValueError, match="`x` must have rank 1"):
        jax.jit(f)(jnp.ones((2, 2)))
