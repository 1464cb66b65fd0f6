"""The recipes of the ``rlgen`` command: one `Recipe` entry each, in `RECIPES`.

Adding a recipe to the command is adding its entry here. A recipe named with two words,
``"digits vae"``, is a sub-command of a group (``rlgen digits vae``); the group's lines of
help are in `GROUPS`. The recipe's module defines its
config dataclass (every field with a default; `rlgen.cli.options` makes the options from
it) and ``run``: ``run(config, folder)`` with a run folder (`rlgen.cli.RunFolder`, whose
`rlgen.cli.RunOptions` are then options too), else ``run(config)``; either returns the
results the summary line is written from. The module is imported only when its recipe is
chosen, after ``--devices`` has set up the devices.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One sub-command of ``rlgen``.

    Args:
      name: the sub-command (``rlgen <name>``).
      help: its line in ``rlgen --help``.
      description: the text at the top of ``rlgen <name> --help``.
      module: the recipe's module (imported when the recipe is chosen).
      config: the name of the recipe's config dataclass in ``module``.
      report: the summary line printed when the run finishes, a `str.format` template
        over the results (``{accuracy_after:.1%}``) and ``config``
        (``{config.eval_episodes}``); runs with a run folder add where their outputs are.
      run_folder: whether ``run`` takes a run folder (``run(config, folder)``).
      checkpoint_every: the default of ``--checkpoint-every`` (steps between a phase's
        checkpoints): long runs of small models save less often.
    """

    name: str
    help: str
    description: str
    module: str
    config: str
    report: str
    run_folder: bool = True
    checkpoint_every: int = 50

    @property
    def slug(self) -> str:
        """The name as one word (``"digits-vae"``): the default output folder's name."""
        return self.name.replace(" ", "-")

    @property
    def group(self) -> str | None:
        """The group of a two-word name (``"digits"``), else None."""
        return self.name.split(" ", 1)[0] if " " in self.name else None

    def run_options(self, **options):
        """The recipe's default `rlgen.cli.RunOptions` (``options`` override them)."""
        from rlgen.cli.run_folder import RunOptions

        defaults = {"out_dir": f"runs/{self.slug}", "checkpoint_every": self.checkpoint_every}
        return RunOptions(**{**defaults, **options})

    def load(self):
        """The recipe's module."""
        return importlib.import_module(self.module)

    def config_type(self) -> type:
        """The recipe's config dataclass."""
        return getattr(self.load(), self.config)

    def summary_line(self, results: dict[str, Any], config: Any) -> str:
        """The line reporting a finished run (``config`` is the config, not the summary's
        copy of the settings)."""
        return self.report.format_map({**results, "config": config})


#: The recipe groups: ``{group: (help, description)}``.
GROUPS: dict[str, tuple[str, str]] = {
    "digits": (
        "train a generative family (vae, gan, diffusion, flow, energy) on the 8x8 digits",
        "Train one generative model family on scikit-learn's 8x8 digits and measure its "
        "samples with the built-in digit classifier: Fréchet distance to held-out digits "
        "before and after training, and for class-conditional models the share of samples "
        "drawn as the requested class.",
    ),
}

_DIGITS_REPORT = (
    "Fréchet distance {frechet_before:.1f} -> {frechet_after:.1f} (real digits: "
    "{frechet_floor:.1f}) in {seconds:.0f} s"
)


def _digits(family: str, help: str, config: str, report: str = _DIGITS_REPORT) -> Recipe:
    return Recipe(
        name=f"digits {family}",
        help=help,
        description=f"{help[0].upper()}{help[1:]}; report the quality of its samples.",
        module=f"rlgen.recipes.digits.{family}",
        config=config,
        report=report,
        checkpoint_every=500,
    )


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="addition",
            help="pretrain a small LM on two-digit addition, fine-tune it with GRPO (main job)",
            description=(
                "Pretrain the built-in transformer LM on two-digit addition to partial "
                "competence, fine-tune it with GRPO against an exact-answer reward, and "
                "report held-out accuracy before and after."
            ),
            module="rlgen.recipes.addition",
            config="AdditionConfig",
            report=(
                "held-out accuracy {accuracy_before:.1%} -> {accuracy_after:.1%} in "
                "{seconds:.0f} s"
            ),
        ),
        Recipe(
            name="cartpole",
            help="PPO on CartPole-v1, one compiled program",
            description="PPO on the built-in JAX CartPole-v1; reports the greedy return.",
            module="rlgen.recipes.ppo_cartpole",
            config="CartPoleConfig",
            report=(
                "PPO CartPole-v1: mean greedy return {mean_greedy_return:.1f} over "
                "{config.eval_episodes} episodes after {timesteps} steps ({seconds} s)"
            ),
            run_folder=False,
        ),
        Recipe(
            name="vae-ppo",
            help="fine-tune a digit VAE's encoder with PPO, the decoder's reconstruction as reward",
            description=(
                "Pretrain the digit VAE on its ELBO, then fine-tune its encoder as a Gaussian "
                "policy over latents with PPO, the reward being the frozen decoder's "
                "reconstruction of each image; report the held-out reconstruction error of "
                "the ELBO encoder and of the PPO encoder."
            ),
            module="rlgen.recipes.vae_ppo",
            config="VAEPPOConfig",
            report=(
                "held-out reconstruction error {recon_error_elbo_encoder:.4f} (ELBO encoder) "
                "-> {recon_error_after:.4f} (PPO encoder) in {seconds:.0f} s"
            ),
            checkpoint_every=500,
        ),
        Recipe(
            name="gan-reinforce",
            help="fine-tune a digit GAN's generator with REINFORCE, the discriminator as reward",
            description=(
                "Pretrain the digit GAN, then fine-tune its generator as a Gaussian policy "
                "with REINFORCE, the reward being the discriminator's score; report the "
                "discriminator's mean score and the Fréchet distance of the generator's "
                "samples before and after."
            ),
            module="rlgen.recipes.gan_reinforce",
            config="GANReinforceConfig",
            report=(
                "discriminator score {disc_score_before:.2f} -> {disc_score_after:.2f}; "
                "Fréchet distance {frechet_before:.2f} -> {frechet_after:.2f} (real digits: "
                "{frechet_floor:.2f}) in {seconds:.0f} s"
            ),
            checkpoint_every=500,
        ),
        _digits("vae", "train a VAE on the digits", "VAEDigitsConfig"),
        _digits("gan", "train a GAN on the digits", "GANDigitsConfig"),
        _digits(
            "diffusion",
            "train a class-conditional diffusion model on the digits",
            "DiffusionDigitsConfig",
            _DIGITS_REPORT + "; drawn as the requested class {class_share_after:.0%}",
        ),
        _digits(
            "flow",
            "train a class-conditional flow-matching model on the digits",
            "FlowDigitsConfig",
            _DIGITS_REPORT + "; drawn as the requested class {class_share_after:.0%}",
        ),
        _digits("energy", "train an energy-based model on the digits", "EnergyDigitsConfig"),
        Recipe(
            name="diffusion-grpo",
            help="fine-tune the digit diffusion model with RL to draw one chosen digit",
            description=(
                "Pretrain (or restore) the digit diffusion model, then fine-tune its sampler "
                "with RL (--method) so that it draws the digit --target, the reward being the "
                "digit classifier's probability of that digit; report the share of samples "
                "drawn as the target and their quality before and after."
            ),
            module="rlgen.recipes.diffusion_grpo",
            config="DiffusionGRPOConfig",
            report=(
                "{method}: samples drawn as a {target}: {target_share_before:.0%} -> "
                "{target_share_after:.0%}; Fréchet distance to real {target}s "
                "{frechet_target_before:.1f} -> {frechet_target_after:.1f} (the pretrained "
                "model asked for a {target}: {frechet_target_conditional:.1f}) in {seconds:.0f} s"
            ),
            checkpoint_every=50,
        ),
    )
}
