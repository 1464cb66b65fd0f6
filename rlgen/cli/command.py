"""The ``rlgen`` command: its parser (one sub-command per `RECIPES` entry), `main` and
`run_recipe`."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rlgen.cli.options import ConfigOptions
from rlgen.cli.registry import GROUPS, RECIPES, Recipe
from rlgen.cli.run_folder import (
    Interrupted,
    MissingExtraError,
    RunFolder,
    RunOptions,
    UsageError,
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2, a 'did you mean' hint and a pointer to --help."""

    def error(self, message):
        hint = ""
        words = re.findall(r"--[\w-]+", message)
        known = _option_strings(self)
        for word in words:
            name = word.split("=", 1)[0]
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                if close:
                    hint = f"\nhint: did you mean {close[0]}?"
                    break
        if "invalid choice" in message and not hint:
            hint = f"\nhint: run `{self.prog} --help` for the recipes"
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{hint}\nsee `{self.prog} --help`\n")


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """The options of ``parser`` and of its sub-commands, at every depth."""
    known = []
    for action in parser._actions:
        known += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                known += _option_strings(sub)
    return known


def recipe_options(recipe: Recipe) -> ConfigOptions:
    """The options of ``recipe``: its `RunOptions` (with a run folder), then its config's.

    Imports the recipe's module.
    """
    run = (recipe.run_options(),) if recipe.run_folder else ()
    return ConfigOptions(*run, recipe.config_type()())


def build_parser(recipes: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``rlgen`` argument parser: one sub-command per entry of `RECIPES`.

    Args:
      recipes: the names of the recipes whose options are added (their modules are
        imported); None: all of them. The others' sub-commands are listed only.

    Raises:
      ValueError: two fields of a recipe's configs would make the same option.
    """
    parser = _Parser(
        prog="rlgen",
        allow_abbrev=False,
        description="Fine-tune generative models with reinforcement learning (rlgen recipes).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="_recipe", metavar="RECIPE", parser_class=_Parser)
    sub.required = True
    groups: dict[str, Any] = {}
    for recipe in RECIPES.values():
        where, word = sub, recipe.name
        if recipe.group is not None:
            if recipe.group not in groups:
                help, description = GROUPS[recipe.group]
                group = sub.add_parser(
                    recipe.group, allow_abbrev=False, help=help, description=description
                )
                groups[recipe.group] = group.add_subparsers(
                    dest="_variant", metavar="FAMILY", parser_class=_Parser
                )
                groups[recipe.group].required = True
            where, word = groups[recipe.group], recipe.name.split(" ", 1)[1]
        command = where.add_parser(
            word, allow_abbrev=False, help=recipe.help, description=recipe.description
        )
        if recipes is None or recipe.name in recipes:
            options = recipe_options(recipe)
            options.add_to(command)
            command.set_defaults(_options=options, _parser=command)
    return parser


@dataclasses.dataclass(frozen=True)
class Command:
    """A parsed ``rlgen`` command line: the recipe, its config and its `RunOptions`."""

    recipe: Recipe
    config: Any
    options: RunOptions | None


def parse(argv: Sequence[str]) -> Command:
    """Parses an ``rlgen`` command line; bad usage exits with code 2 and a hint.

    Only the named recipe's module is imported (``rlgen --help`` imports none).
    """
    words = [a for a in argv if not a.startswith("-")][:2]
    named = " ".join(words) if words and words[0] in GROUPS else (words or [None])[0]
    parser = build_parser([named] if named in RECIPES else [])
    args = parser.parse_args(argv)
    name = f"{args._recipe} {args._variant}" if args._recipe in GROUPS else args._recipe
    try:
        *run, config = args._options.build(args)
    except (ValueError, TypeError) as err:  # the configs' own checks
        args._parser.error(str(err))
    return Command(RECIPES[name], config, run[0] if run else None)


def run_recipe(
    recipe: Recipe | str,
    config: Any,
    options: RunOptions | None = None,
    *,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Runs a recipe as the ``rlgen`` command does; returns its summary.

    A recipe with a run folder runs in one made from ``options`` (default:
    ``recipe.run_options()``, the folder ``runs/<name>``): the summary is also written to
    ``summary.json`` and holds the settings, the devices and ``interrupted`` (the phase
    Ctrl-C stopped, or False). A recipe without one returns its results.

    Raises:
      UsageError: the run folder cannot be used, or the devices are missing.
      MissingExtraError: an optional dependency the options need is not installed.
    """
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    module = recipe.load()
    if not recipe.run_folder:
        return module.run(config)
    options = options or recipe.run_options()
    settings = recipe_options(recipe).values(options, config)
    folder = RunFolder(options, config=settings, echo=echo)
    try:
        results = module.run(config, folder)
    except Interrupted as stop:
        return folder.finish(interrupted=stop.phase)
    return folder.finish(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlgen`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _set_host_devices(_requested_devices(argv))  # before a recipe (and JAX) is imported
    command = parse(argv)
    from rlgen.compilation import enable_compilation_cache

    enable_compilation_cache()  # a rerun loads its compiled programs instead of compiling
    try:
        summary = run_recipe(command.recipe, command.config, command.options)
    except (UsageError, MissingExtraError) as err:
        print(f"rlgen: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # outside a training loop (which stops cleanly by itself)
        print("rlgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.get("interrupted"):
        return EXIT_INTERRUPTED
    line = command.recipe.summary_line(summary, command.config)
    if command.options is not None:
        line += f"; outputs in {command.options.out_dir}"
    print(line)
    return 0


def _version() -> str:
    from rlgen import __version__

    return f"rlgen {__version__}"


def _requested_devices(argv: Sequence[str]) -> int:
    """The ``--devices`` value in ``argv``, read ahead of the parser (1 if absent or bad:
    the parser reports it)."""
    devices = 1
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--devices" and i + 1 < len(argv):
            text = argv[i + 1]
        elif arg.startswith("--devices="):
            text = arg.partition("=")[2]
        else:
            continue
        devices = int(text) if text.isdigit() else 1
    return devices


def _set_host_devices(devices: int) -> None:
    """Asks XLA for ``devices`` host (CPU) devices; must run before JAX starts."""
    if devices <= 1 or "jax" in sys.modules and _jax_started():
        return
    flag = f"--xla_force_host_platform_device_count={devices}"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def _jax_started() -> bool:
    try:
        import jax._src.xla_bridge as xb

        return bool(xb._backends)
    except Exception:  # noqa: BLE001 - private API moved: assume started, do not touch flags
        return True
