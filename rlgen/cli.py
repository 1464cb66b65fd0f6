"""The ``rlgen`` command: runs a recipe.

    rlgen addition [options]     pretrain a small LM on two-digit addition, fine-tune it
                                 with GRPO, report held-out accuracy (the main job)
    rlgen cartpole [options]     PPO on CartPole-v1 as one compiled program

``rlgen <recipe> --help`` lists a recipe's options. Bad usage (an unknown recipe or
option, a malformed value, an output folder that cannot be used) exits with code 2 and a
hint; Ctrl-C during training saves a checkpoint and exits with code 130 (``--resume``
continues). JAX is imported only after the options are read, so ``--devices N`` can set
up N host devices on a CPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import typing
from typing import Any

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Fields whose values are restricted to a few names (checked by argparse, listed in --help).
_CHOICES = {
    "kl_estimator": ("k1", "k2", "k3"),
    "loss_aggregation": (
        "token-mean",
        "sequence-mean-token-mean",
        "sequence-mean-token-sum",
        "sequence-mean-token-sum-norm",
    ),
    "scale_rewards": ("group", "batch", "none"),
}
# Boolean fields shown as --no-<name> (default on) or --<name> (default off).
_HELP = {
    "out_dir": "output folder (metrics.jsonl, reward_curve.png, summary.json, checkpoints)",
    "seed": "seeds the data split, the model and sampling",
    "devices": "number of devices for data parallelism (CPU: that many host devices)",
    "resume": "continue the run saved in the output folder",
    "overwrite": "start over in an output folder that holds a run",
    "progress": "live progress bar",
    "plot": "write reward_curve.png (needs matplotlib: pip install 'rlgen[demo]')",
}


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2, a 'did you mean' hint and a pointer to --help."""

    def error(self, message):
        hint = ""
        words = re.findall(r"--[\w-]+", message)
        known = [s for a in self._actions for s in a.option_strings]
        for action in self._actions:  # the recipes' options too
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    known += [s for a in sub._actions for s in a.option_strings]
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


def _optional_type(tp):
    """``X | None`` -> ``(X, True)``; ``X`` -> ``(X, False)``."""
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def _converter(base, optional, name):
    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if base is int else 'a number'}"
                f"{' or none' if optional else ''} for --{name.replace('_', '-')}, got {text!r}"
            ) from None
        if base in (int, float) and name not in ("seed",) and value < 0:
            raise argparse.ArgumentTypeError(
                f"--{name.replace('_', '-')} must not be negative, got {text}"
            )
        return value

    return convert


def _add_config_options(parser: argparse.ArgumentParser, config_type) -> None:
    """One option per field of a frozen dataclass config, typed from its annotations."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        name, default = field.name, field.default
        flag = "--" + name.replace("_", "-")
        help_text = _HELP.get(name, "")
        base, optional = _optional_type(hints[name])
        if base is bool:
            if default:
                parser.add_argument(
                    "--no-" + name.replace("_", "-"), dest=name, action="store_false",
                    help=f"turn off: {help_text}" if help_text else None,
                )
            else:
                parser.add_argument(flag, dest=name, action="store_true", help=help_text or None)
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": default, "metavar": name.upper()}
        if name in _CHOICES:
            kwargs.update(choices=_CHOICES[name], metavar=None)
        elif base in (int, float):
            kwargs["type"] = _converter(base, optional, name)
        shown = f"(default: {default})"
        parser.add_argument(flag, help=f"{help_text} {shown}".strip(), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``rlgen`` argument parser (recipes are sub-commands)."""
    from rlgen.recipes.addition import AdditionConfig
    from rlgen.recipes.ppo_cartpole import CartPoleConfig

    parser = _Parser(
        prog="rlgen",
        allow_abbrev=False,
        description="Fine-tune generative models with reinforcement learning (rlgen recipes).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="recipe", metavar="RECIPE", parser_class=_Parser)
    sub.required = True
    addition = sub.add_parser(
        "addition",
        allow_abbrev=False,
        help="pretrain a small LM on two-digit addition, fine-tune it with GRPO (main job)",
        description=(
            "Pretrain the built-in transformer LM on two-digit addition to partial "
            "competence, fine-tune it with GRPO against an exact-answer reward, and report "
            "held-out accuracy before and after."
        ),
    )
    _add_config_options(addition, AdditionConfig)
    cartpole = sub.add_parser(
        "cartpole",
        allow_abbrev=False, help="PPO on CartPole-v1, one compiled program",
        description="PPO on the built-in JAX CartPole-v1; reports the greedy return.",
    )
    _add_config_options(cartpole, CartPoleConfig)
    return parser


def _version() -> str:
    from rlgen import __version__

    return f"rlgen {__version__}"


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlgen`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "recipe"}
    if options.get("devices", 1) < 1:
        parser.error(f"--devices must be at least 1, got {options['devices']}")
    _set_host_devices(options.get("devices", 1))
    try:
        return _run(args.recipe, options)
    except KeyboardInterrupt:  # outside a training loop (which stops cleanly by itself)
        print("rlgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(recipe: str, options: dict[str, Any]) -> int:
    if recipe == "addition":
        from rlgen.recipes import addition

        try:
            config = addition.AdditionConfig(**options)
            summary = addition.run(config)
        except (addition.UsageError, addition.MissingExtraError) as err:
            print(f"rlgen: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        if summary.get("interrupted"):
            return EXIT_INTERRUPTED
        print(
            f"held-out accuracy {summary['accuracy_before']:.1%} -> "
            f"{summary['accuracy_after']:.1%} in {summary['seconds']:.0f} s; outputs in "
            f"{config.out_dir}"
        )
        return 0
    from rlgen.recipes import ppo_cartpole

    ppo_cartpole.run(ppo_cartpole.CartPoleConfig(**options))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
