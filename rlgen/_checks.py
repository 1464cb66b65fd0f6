"""Trace-time argument checks shared by every layer of rlgen.

Every public kernel validates its inputs here before doing any math, in the manner of
rlax: shapes and dtypes are static under `jit`, so a bad call fails while tracing with
a message that names the argument, what was expected and what came. Scalar ranges
(`gamma` in [0, 1], `eps >= 0`) are checked when the scalar is concrete (a Python number
or a concrete array); a traced scalar (a value swept under `vmap` or scheduled inside
`jit`) cannot be inspected and is accepted as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return f"{type(x).__name__} {x!r}"
    return f"shape {tuple(shape)} dtype {dtype}"


def as_array(x: Any, name: str) -> jax.Array:
    """Converts `x` to a JAX array, naming `name` if that fails."""
    if x is None:
        raise TypeError(f"`{name}` is required, got None")
    try:
        return jnp.asarray(x)
    except TypeError as err:  # e.g. a string or an object
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__}") from err


def check_rank(x: jax.Array, ranks: int | Iterable[int], name: str, what: str = "") -> None:
    """Raises ValueError unless `x.ndim` is one of `ranks`."""
    allowed = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if x.ndim not in allowed:
        expected = " or ".join(f"rank {r}" for r in allowed)
        hint = f" {what}" if what else ""
        raise ValueError(f"`{name}` must have {expected}{hint}, got {_describe(x)}")


def check_float(x: jax.Array, name: str) -> None:
    """Raises TypeError unless `x` has a floating dtype."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating dtype (e.g. float32), got {_describe(x)}; "
            f"cast it with .astype(jnp.float32)"
        )


def check_integer(x: jax.Array, name: str) -> None:
    """Raises TypeError unless `x` has an integer dtype."""
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype (token ids), got {_describe(x)}")


def check_shape(x: jax.Array, shape: tuple[int, ...], name: str, like: str = "") -> None:
    """Raises ValueError unless `x.shape == shape`."""
    if tuple(x.shape) != tuple(shape):
        ref = f" (the shape of `{like}`)" if like else ""
        raise ValueError(f"`{name}` must have shape {tuple(shape)}{ref}, got {_describe(x)}")


def _array(
    x: Any,
    name: str,
    dtype_check: Any,
    *,
    rank: int | Iterable[int] | None = None,
    min_rank: int | None = None,
    shape: tuple[int, ...] | None = None,
    like: str = "",
    what: str = "",
) -> jax.Array:
    x = as_array(x, name)
    if rank is not None:
        check_rank(x, rank, name, what)
    if min_rank is not None and x.ndim < min_rank:
        hint = f" {what}" if what else ""
        raise ValueError(f"`{name}` must have rank >= {min_rank}{hint}, got {_describe(x)}")
    dtype_check(x, name)
    if shape is not None:
        check_shape(x, shape, name, like)
    return x


def float_array(x: Any, name: str, *, upcast: bool = False, **checks: Any) -> jax.Array:
    """`x` as a floating JAX array, checked in the order rank, dtype, shape.

    Checks (keywords, all optional): `rank` (an int or several allowed ranks), `min_rank`,
    `shape` (a tuple), and for the messages `what` (what the rank means, e.g. "([B, T])")
    and `like` (the argument whose shape `shape` is). Every check names `name` and shows
    what came (shape and dtype): a wrong rank or shape raises ValueError, a non-floating
    dtype TypeError. With `upcast`, the array comes back in at least float32 (bfloat16
    becomes float32, float64 stays).

    Example:
      >>> float_array([1.0, 2.0], "rewards", rank=1).shape
      (2,)
      >>> float_array(jnp.zeros((2, 3)), "v", shape=(2, 4), like="r")
      Traceback (most recent call last):
      ...
      ValueError: `v` must have shape (2, 4) (the shape of `r`), got shape (2, 3) dtype float32
    """
    x = _array(x, name, check_float, **checks)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32)) if upcast else x


def float_pair(x: Any, y: Any, x_name: str, y_name: str) -> tuple[jax.Array, jax.Array]:
    """`x` and a `y` of the same shape, both floating, both cast to `x`'s dtype upcast to
    at least float32 (e.g. log-probs and their reference or behaviour-policy values).

    Example:
      >>> float_pair(jnp.zeros(2, jnp.bfloat16), jnp.ones(2), "log_probs", "old")[1].dtype
      dtype('float32')
    """
    x = float_array(x, x_name, upcast=True)
    y = float_array(y, y_name, shape=x.shape, like=x_name)
    return x, y.astype(x.dtype)


def int_array(x: Any, name: str, **checks: Any) -> jax.Array:
    """`x` as an integer JAX array (e.g. token ids), with the rank and shape checks
    (`rank`, `min_rank`, `shape`, `like`, `what`) of `float_array`.

    Example:
      >>> int_array(jnp.array([0.0, 1.0]), "actions")
      Traceback (most recent call last):
      ...
      TypeError: `actions` must have an integer dtype (token ids), got shape (2,) dtype float32
    """
    return _array(x, name, check_integer, **checks)


def real_array(x: Any, name: str, **checks: Any) -> jax.Array:
    """`x` as a JAX array of any real dtype (bool, integer or floating), with the rank and
    shape checks of `float_array`; for masks and counts such as lengths.

    Example:
      >>> real_array(jnp.array([3, 4]), "lengths", shape=(3,))
      Traceback (most recent call last):
      ...
      ValueError: `lengths` must have shape (3,), got shape (2,) dtype int32
    """
    return _array(x, name, _check_real, **checks)


def _check_real(x: jax.Array, name: str) -> None:
    if not (
        jnp.issubdtype(x.dtype, jnp.bool_)
        or jnp.issubdtype(x.dtype, jnp.integer)
        or jnp.issubdtype(x.dtype, jnp.floating)
    ):
        raise TypeError(f"`{name}` must be boolean, integer or floating, got {_describe(x)}")


def as_mask(mask: Any, shape: tuple[int, ...], name: str = "mask", like: str = "") -> jax.Array:
    """Validates an optional 0/1 mask of `shape` and returns it as float32 (ones if None)."""
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    return real_array(mask, name, shape=shape, like=like).astype(jnp.float32)


def concrete_value(x: Any) -> float | None:
    """The Python value of a scalar if it is concrete, else None (traced)."""
    if isinstance(x, (int, float, np.number)) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001 - anything that cannot become a host array is traced
        return None
    if arr.shape != ():
        return None
    return float(arr)


def check_ids(x: Any, high: int, name: str, what: str = "class") -> None:
    """Raises ValueError if concrete integer ids lie outside ``[0, high)``.

    Traced ids (inside ``jit``) cannot be read on the host and are not checked here; a
    trainer checks its batches on the host before the compiled step.
    """
    if isinstance(x, jax.core.Tracer):
        return
    ids = np.asarray(x)
    if ids.size and (ids.min() < 0 or ids.max() >= high):
        raise ValueError(
            f"`{name}` must hold {what} ids in [0, {high}), got values in "
            f"[{ids.min()}, {ids.max()}]"
        )


def check_values_in(x: Any, low: float, high: float, name: str, what: str = "") -> None:
    """Raises ValueError if a concrete array has values outside ``[low, high]`` (or NaN).

    Like `check_ids`, traced values are not checked; a trainer checks its batches on the
    host before the compiled step. ``what`` says what the bounds are.

    Example:
      >>> check_values_in(np.array([0.0, 16.0]), -1.0, 1.0, "images", "the data's scale")
      Traceback (most recent call last):
      ...
      ValueError: `images` must lie in [-1, 1] (the data's scale), got values in [0, 16]
    """
    if isinstance(x, jax.core.Tracer):
        return
    values = np.asarray(x)
    if values.size and not (values.min() >= low and values.max() <= high):
        hint = f" ({what})" if what else ""
        raise ValueError(
            f"`{name}` must lie in [{low:g}, {high:g}]{hint}, got values in "
            f"[{values.min():g}, {values.max():g}]"
        )


def check_shape_tuple(shape: Any, name: str) -> tuple[int, ...]:
    """Raises unless ``shape`` is a tuple (or list) of static sizes >= 1; returns the tuple.

    Example:
      >>> check_shape_tuple([8, 8], "sample_shape")
      (8, 8)
    """
    if isinstance(shape, int) or not isinstance(shape, (tuple, list)):
        raise TypeError(f"`{name}` must be a tuple of ints (a shape), got {shape!r}")
    return tuple(check_positive_int(s, f"{name}[{i}]") for i, s in enumerate(shape))


def check_labels(labels, num_classes: int | None, batch_size: int, name: str = "labels"):
    """Validates optional class ``labels`` ``[B]`` for a model of ``num_classes`` classes.

    None passes (unconditional). Labels for a model of 0 classes (unconditional) are a
    ValueError; so is a label outside ``[0, num_classes)`` when the labels are concrete
    (under `jit` the range cannot be inspected: the trainers check on the host first).
    ``num_classes`` None: the range is not checked.

    Returns:
      the labels as a JAX integer array ``[B]``, or None.

    Example:
      >>> check_labels(np.array([0, 10]), 10, 2)
      Traceback (most recent call last):
      ...
      ValueError: `labels` must hold class ids in [0, 10), got values in [0, 10]
    """
    if labels is None:
        return None
    if num_classes == 0:
        raise ValueError(
            f"`{name}` given to an unconditional model (num_classes = 0); drop the labels or "
            "build the model with num_classes > 0"
        )
    labels = int_array(labels, name, rank=1, what="([B], one class per example)")
    check_shape(labels, (batch_size,), name, "the batch, one class per example")
    if num_classes is not None:
        check_ids(labels, num_classes, name)
    return labels


def check_scalar(x: Any, name: str) -> None:
    """Raises unless `x` is a scalar (Python number or 0-d array)."""
    if isinstance(x, (int, float, np.number)):
        return
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"`{name}` must be a scalar number, got {type(x).__name__}")
    if tuple(shape) != ():
        raise ValueError(f"`{name}` must be a scalar (shape ()), got {_describe(x)}")


def check_range(
    x: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises ValueError if a concrete scalar `x` lies outside [low, high]."""
    check_scalar(x, name)
    v = concrete_value(x)
    if v is None:
        return
    bad = np.isnan(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        lo_s = "-inf" if low is None else f"{low:g}"
        hi_s = "inf" if high is None else f"{high:g}"
        raise ValueError(f"`{name}` must lie in {lo}{lo_s}, {hi_s}{hi}, got {v:g}")


def check_choice(value: Any, choices: Iterable[str] | Mapping[str, Any], name: str) -> str:
    """Raises ValueError unless `value` is one of `choices`; returns it."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ValueError(f"unknown `{name}` {value!r}; expected one of {listed}")
    return value


def check_int(x: Any, name: str, low: int | None = None, *, what: str = "an int") -> int:
    """Raises unless `x` is a Python or NumPy int (not a bool) >= `low`; returns it as int.

    `what` words the TypeError (e.g. "a Python int (a static size)").

    Example:
      >>> check_int(3, "every_n_steps", low=1)
      3
      >>> check_int(0, "every_n_steps", low=1)
      Traceback (most recent call last):
      ...
      ValueError: `every_n_steps` must be >= 1, got 0
    """
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"`{name}` must be {what}, got {type(x).__name__} {x!r}")
    if low is not None and x < low:
        raise ValueError(f"`{name}` must be >= {low}, got {x}")
    return int(x)


def check_positive_int(x: Any, name: str, low: int = 1) -> int:
    """Raises unless `x` is a static size: a Python int >= `low` (default 1); returns it."""
    return check_int(x, name, low, what="a Python int (a static size)")


def check_bool(x: Any, name: str) -> bool:
    """Raises TypeError unless `x` is a bool; returns it."""
    if not isinstance(x, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(x).__name__} {x!r}")
    return x


def option(default: Any, choices: Iterable[str] | Mapping[str, Any]) -> Any:
    """A config dataclass field whose value is one of ``choices``.

    The choices are recorded once, in the field's metadata (``"choices"``), where
    `check_options` validates them and the ``rlgen`` command lists them: a module that
    implements an option exports its choices, and every config that offers the option
    passes them here.

    Example:
      >>> @dataclasses.dataclass(frozen=True)
      ... class Config:
      ...     estimator: str = option("k3", ("k1", "k2", "k3"))
      ...     def __post_init__(self):
      ...         check_options(self)
      >>> Config("k4")
      Traceback (most recent call last):
      ...
      ValueError: unknown `estimator` 'k4'; expected one of 'k1', 'k2', 'k3'
    """
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def option_choices(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The choices an `option` field was declared with (None for other fields)."""
    return field.metadata.get("choices")


def check_options(config: Any) -> None:
    """Validates every `option` field of a dataclass config (ValueError naming the field)."""
    for field in dataclasses.fields(config):
        choices = option_choices(field)
        if choices is not None:
            check_choice(getattr(config, field.name), choices, field.name)
