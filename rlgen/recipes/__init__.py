"""`rlgen.recipes`: end-to-end tasks, each a readable, runnable module.

A recipe module defines its settings as a frozen config dataclass (every field with a
default) and a `run` function. A config nests the configs of the parts it uses (an
algorithm's `GRPOConfig`, a model's `SamplingConfig`) as fields declared with `nested`,
instead of copying their fields; the ``rlgen`` command turns every field, nested ones
included, into one command-line option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

__all__ = ["check_pinned", "nested", "pinned_fields"]


def nested(default: Any, *, pinned: Iterable[str] = ()) -> Any:
    """A config field holding another config (an algorithm's, a model's), ``default`` by default.

    ``pinned`` names fields of ``default`` that the recipe depends on: they keep
    ``default``'s values (the ``rlgen`` command offers no option for them, and
    `check_pinned` rejects a config that changes them).

    Example:
      >>> @dataclasses.dataclass(frozen=True)
      ... class Inner:
      ...     size: int = 1
      ...     mode: str = "a"
      >>> @dataclasses.dataclass(frozen=True)
      ... class Outer:
      ...     inner: Inner = nested(Inner(mode="b"), pinned=("mode",))
      ...     def __post_init__(self):
      ...         check_pinned(self)
      >>> Outer(Inner(size=2, mode="b")).inner.size
      2
      >>> Outer(Inner(mode="a"))
      Traceback (most recent call last):
      ...
      ValueError: Outer needs `inner.mode` = 'b', got 'a'
    """
    pinned = tuple(pinned)
    names = {f.name for f in dataclasses.fields(default)}
    unknown = [name for name in pinned if name not in names]
    if unknown:
        raise ValueError(f"pinned fields {unknown} are not fields of {type(default).__name__}")
    return dataclasses.field(default=default, metadata={"pinned": pinned})


def pinned_fields(field: dataclasses.Field) -> tuple[str, ...]:
    """The names a `nested` field pins (empty for other fields)."""
    return field.metadata.get("pinned", ())


def check_pinned(config: Any) -> None:
    """Raises ValueError if a `nested` field of ``config`` changes one of its pinned values."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        for name in pinned_fields(field):
            need, got = getattr(field.default, name), getattr(value, name)
            if got != need:
                raise ValueError(
                    f"{type(config).__name__} needs `{field.name}.{name}` = {need!r}, got {got!r}"
                )
