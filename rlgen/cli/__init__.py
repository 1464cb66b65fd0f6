"""The ``rlgen`` command: runs a recipe.

    rlgen addition [options]     pretrain a small LM on two-digit addition, fine-tune it
                                 with GRPO, report held-out accuracy (the main job)
    rlgen cartpole [options]     PPO on CartPole-v1 as one compiled program

The command is built from a registry (`RECIPES` in `rlgen.cli.registry`): one `Recipe`
entry per sub-command names the recipe's module, its config dataclass and its summary
line. A recipe's options are its config's fields, nested configs flattened
(`rlgen.cli.options`): ``--beta`` sets ``AdditionConfig.grpo.beta``. A recipe that writes
outputs runs in a `RunFolder` (`rlgen.cli.run_folder`), which adds the `RunOptions`
(``--out-dir``, ``--devices``, ``--resume``, ``--overwrite``, ``--no-progress``,
``--no-plot``, ``--checkpoint-every``) and owns the folder, the checkpoints, the plot and
``summary.json``.

``rlgen <recipe> --help`` lists a recipe's options. Bad usage (an unknown recipe or
option, a malformed value, an output folder that cannot be used) exits with code 2 and a
hint; Ctrl-C during training saves a checkpoint and exits with code 130 (``--resume``
continues). ``--devices N`` is read before JAX is imported, so that it can set up N host
devices on a CPU machine. Every run keeps its compiled programs on disk
(`rlgen.enable_compilation_cache`: ``~/.cache/rlgen/jax``, or the directory named by
``RLGEN_COMPILATION_CACHE``; ``off`` disables it), so a rerun starts in seconds.
"""

from rlgen.cli.command import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Command,
    build_parser,
    main,
    parse,
    recipe_options,
    run_recipe,
)
from rlgen.cli.options import ConfigOptions, Option, options_of
from rlgen.cli.registry import RECIPES, Recipe
from rlgen.cli.run_folder import (
    Interrupted,
    MissingExtraError,
    OutputDirError,
    RunFolder,
    RunOptions,
    UsageError,
    plot_reward_curve,
    read_metrics,
)

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "RECIPES",
    "Command",
    "ConfigOptions",
    "Interrupted",
    "MissingExtraError",
    "Option",
    "OutputDirError",
    "Recipe",
    "RunFolder",
    "RunOptions",
    "UsageError",
    "build_parser",
    "main",
    "options_of",
    "parse",
    "plot_reward_curve",
    "read_metrics",
    "recipe_options",
    "run_recipe",
]
