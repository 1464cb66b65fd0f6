"""Command-line options from config dataclasses, and configs back from the parsed options.

Every field of a config becomes one option, named after the field (``num_generations`` ->
``--num-generations``) and typed from its annotation:

* ``int``, ``float``, ``str``: ``--name VALUE`` (numbers must not be negative, but for
  ``seed``); ``X | None`` also takes ``none``;
* ``bool``: ``--name`` / ``--no-name``;
* a field declared with `rlgen._checks.option`: one of its choices (`option_choices`);
* a nested config (`rlgen.recipes.nested`): its fields, flattened into the same
  namespace, but for the ones it pins.

An option's help is the ``"help"`` of its field's metadata, else the first sentence of
the field's ``name: text`` entry in its config's docstring (an ``Attributes:`` section).

Fields of any other type (``axis_name: Any``, callables) are no options: they keep their
defaults. Two fields that would make the same option, at any nesting level, are an error
when the options are made (`ConfigOptions`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

_SCALARS = (int, float, str, bool)
_MAY_BE_NEGATIVE = ("seed",)


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option: the field at ``path`` of a root config."""

    path: tuple[str, ...]  # field names from the root config, e.g. ("grpo", "beta")
    owner: str  # the field, e.g. "AdditionConfig.grpo.beta"
    kind: type  # int, float, str or bool
    optional: bool  # `X | None`: "none" is accepted
    default: Any
    choices: tuple[str, ...] | None
    help: str

    @property
    def name(self) -> str:
        """The field's name, also the option's ``dest``."""
        return self.path[-1]

    @property
    def flags(self) -> tuple[str, ...]:
        """The option strings: ``--name``, and ``--no-name`` for a bool."""
        flag = "--" + self.name.replace("_", "-")
        return (flag, "--no-" + flag[2:]) if self.kind is bool else (flag,)


def options_of(
    config: Any, *, path: tuple[str, ...] = (), pinned: Sequence[str] = (), root: str = ""
) -> list[Option]:
    """The `Option` of every field of the dataclass instance ``config``, nested ones flattened.

    Defaults are ``config``'s values; fields named in ``pinned`` are left out. (``path``
    and ``root``: where ``config`` sits in the root config, for the nested ones.)
    """
    from rlgen._checks import option_choices
    from rlgen.recipes import pinned_fields

    cls = type(config)
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    root = root or cls.__name__
    found: list[Option] = []
    for field in dataclasses.fields(cls):
        if not field.init or field.name in pinned:
            continue
        value, annotation = getattr(config, field.name), hints[field.name]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            found += options_of(
                value, path=(*path, field.name), pinned=pinned_fields(field), root=root
            )
            continue
        kind, optional = _scalar(annotation)
        if kind is None:  # Any, callables, containers: not a command-line option
            continue
        found.append(
            Option(
                path=(*path, field.name),
                owner=".".join((root, *path, field.name)),
                kind=kind,
                optional=optional,
                default=value,
                choices=option_choices(field),
                help=field.metadata.get("help", docs.get(field.name, "")),
            )
        )
    return found


def _field_docs(cls: type) -> dict[str, str]:
    """The first sentence of each field's ``name: text`` entry in ``cls``'s docstring."""
    names = {f.name for f in dataclasses.fields(cls)}
    entries: dict[str, str] = {}
    current, indent = None, 0
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        entry = re.match(r"(\s*)(\w+): (.*)", line)
        if entry and entry.group(2) in names:
            current, indent = entry.group(2), len(entry.group(1))
            entries[current] = entry.group(3)
        elif current and line.strip() and len(line) - len(line.lstrip()) > indent:
            entries[current] += " " + line.strip()
        else:
            current = None
    return {
        name: re.split(r"\.\s+(?=[A-Z])", text.replace("`", ""), maxsplit=1)[0].rstrip(".")
        for name, text in entries.items()
    }


def _scalar(annotation) -> tuple[type | None, bool]:
    """``X`` or ``X | None`` with X in int/float/str/bool -> ``(X, optional)``; else None."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else None
    if annotation in _SCALARS and not (optional and annotation is bool):
        return annotation, optional
    return None, False


class _Switch(argparse.Action):
    """``--name`` sets True, ``--no-name`` False."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _converter(option: Option):
    """Text -> value of ``option`` (argparse ``type``), with a message naming the option."""
    flag = option.flags[0]

    def convert(text: str):
        if option.optional and text.lower() == "none":
            return None
        if option.choices is not None:
            if text not in option.choices:
                listed = ", ".join(map(repr, option.choices))
                listed += " or none" if option.optional else ""
                raise argparse.ArgumentTypeError(
                    f"invalid choice: {text!r} (choose from {listed})"
                )
            return text
        if option.kind is str:
            return text
        try:
            value = option.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if option.kind is int else 'a number'}"
                f"{' or none' if option.optional else ''} for {flag}, got {text!r}"
            ) from None
        if value < 0 and option.name not in _MAY_BE_NEGATIVE:
            raise argparse.ArgumentTypeError(f"{flag} must not be negative, got {text}")
        return value

    return convert


class ConfigOptions:
    """The options of one or more root configs, for one parser.

    Args:
      *defaults: a default instance of each root config (e.g. ``RunOptions(...)``,
        ``AdditionConfig()``); their values are the options' defaults.

    Raises:
      ValueError: two fields (at any nesting level) would make the same option.
    """

    def __init__(self, *defaults: Any):
        self.defaults = defaults
        self.options = [options_of(default) for default in defaults]
        seen = {"--help": "argparse's help", "-h": "argparse's help"}
        for option in (o for options in self.options for o in options):
            for flag in option.flags:
                if flag in seen:
                    raise ValueError(
                        f"{seen[flag]} and {option.owner} would both be the option {flag}: "
                        "nested configs share one command line; rename one of them"
                    )
                seen[flag] = option.owner

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Adds the options to ``parser``, one argument group per config (nested ones too)."""
        for default, options in zip(self.defaults, self.options, strict=True):
            groups: dict[tuple[str, ...], Any] = {}
            for option in options:
                where = option.path[:-1]
                if where not in groups:
                    inner = type(_get(default, where))
                    title = f"{'.'.join(where)} ({inner.__name__})" if where else inner.__name__
                    summary = (inner.__doc__ or "").strip().split("\n\n")[0]
                    groups[where] = parser.add_argument_group(title, " ".join(summary.split()))
                _add(groups[where], option)

    def build(self, values: Mapping[str, Any] | argparse.Namespace) -> tuple[Any, ...]:
        """The root configs with the parsed ``values`` (by option name) put in.

        Each config is rebuilt with `dataclasses.replace`, so its checks run: a bad value
        raises what the config raises (ValueError, TypeError).
        """
        values = vars(values) if isinstance(values, argparse.Namespace) else values
        return tuple(
            _replace(default, {o.path: values[o.name] for o in options if o.name in values}, ())
            for default, options in zip(self.defaults, self.options, strict=True)
        )

    def values(self, *configs: Any) -> dict[str, Any]:
        """The option values of ``configs`` (instances of the root configs), flat, by name."""
        return {
            o.name: _get(config, o.path)
            for config, options in zip(configs, self.options, strict=True)
            for o in options
        }


def _add(group, option: Option) -> None:
    default = "none" if option.default is None else option.default
    text = f"{option.help} (default: {default})".strip()
    if option.kind is bool:
        group.add_argument(
            *option.flags, dest=option.name, action=_Switch, default=option.default, help=text
        )
        return
    metavar = "{" + ",".join(option.choices) + "}" if option.choices else option.name.upper()
    group.add_argument(
        option.flags[0],
        dest=option.name,
        default=option.default,
        type=_converter(option),
        metavar=metavar,
        help=text,
    )


def _get(config: Any, path: Sequence[str]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def _replace(config: Any, values: Mapping[tuple[str, ...], Any], path: tuple[str, ...]) -> Any:
    changes = {}
    for field in dataclasses.fields(config):
        here = (*path, field.name)
        if here in values:
            changes[field.name] = values[here]
        elif any(key[: len(here)] == here for key in values):
            changes[field.name] = _replace(getattr(config, field.name), values, here)
    return dataclasses.replace(config, **changes)
