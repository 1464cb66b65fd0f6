"""`DiffusionTrainer`: denoising diffusion training with an EMA of the parameters, and
DDPM/DDIM sampling with classifier-free guidance. The math is `rlgen.generative.diffusion`;
the init/update pair is `rlgen.algorithms.diffusion.diffusion`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from rlgen import _checks
from rlgen.algorithms.diffusion import diffusion
from rlgen.generative.diffusion import (
    SAMPLERS,
    DiffusionConfig,
    check_labels,
    classifier_free_guidance,
    diffusion_loss,
    sample_ddim,
    sample_ddpm,
)
from rlgen.trainers import protocol
from rlgen.trainers.base import Trainer

__all__ = ["DiffusionConfig", "DiffusionTrainer"]

#: DDIM's default number of sampling steps (DDPM's is the full chain of T steps).
DDIM_STEPS = 50


class DiffusionTrainer(Trainer):
    """Trains a denoising model ``model(x [B, ...], t [B] float in [0, 1), labels [B] int or
    None) -> [B, ...]`` (e.g. `rlgen.models.MLPDenoiser`) and samples from it.

    ``train_step(batch)`` with ``images`` (``[B, *data_shape]`` float, in
    ``[-clip_x0, clip_x0]``) and optional ``labels`` (``[B]`` int in ``[0, num_classes)``):
    one optimiser step on `rlgen.generative.diffusion.diffusion_loss`, then the EMA of the
    parameters (`rlgen.algorithms.diffusion.diffusion`; ``state.ema_params``). Metrics: ``loss`` and
    `rlgen.generative.diffusion.METRICS` (``mse``, ``mean_weight``). The batch is checked
    on the host before the compiled step (shape, range, labels).

    Args:
      model: the denoiser (an ``nnx.Module``). A conditional model has a ``num_classes``
        attribute (its null class, for guidance, is ``num_classes``).
      optimizer: its ``nnx.Optimizer``.
      config: a `DiffusionConfig`.
      data_shape: one example's shape (None: ``(model.dim,)``).
      num_classes: the model's classes (None: ``model.num_classes``, else 0).
      **kwargs: `Trainer`'s (``seed``, ``mesh``, ``data_axis``).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> class Tiny(nnx.Module):  # an unconditional epsilon model of 2-D data
      ...     dim, num_classes = 2, 0
      ...     def __init__(self, rngs):
      ...         self.linear = nnx.Linear(3, 2, rngs=rngs)
      ...     def __call__(self, x, t, labels=None):
      ...         return self.linear(jnp.concatenate([x, t[:, None]], axis=-1))
      >>> model = Tiny(nnx.Rngs(0))
      >>> trainer = DiffusionTrainer(model, nnx.Optimizer(model, optax.adam(1e-2),
      ...                            wrt=nnx.Param), DiffusionConfig(num_timesteps=100))
      >>> metrics = trainer.train_step({"images": jnp.zeros((8, 2))})
      >>> trainer.sample(4, jax.random.key(0), num_steps=10).shape
      (4, 2)
    """

    def __init__(
        self,
        model,
        optimizer,
        config: DiffusionConfig | None = None,
        *,
        data_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        **kwargs,
    ):
        config = DiffusionConfig() if config is None else config
        if not isinstance(config, DiffusionConfig):
            raise TypeError(f"`config` must be a DiffusionConfig, got {type(config).__name__}")
        self.data_shape, self.num_classes = protocol.denoiser_shapes(
            model, data_shape, num_classes
        )
        self.schedule = config.schedule_arrays()
        super().__init__(model, optimizer, config, **kwargs)
        self._compiled_sample = jax.jit(
            self._sample,
            static_argnames=(
                "num_samples", "sampler", "num_steps", "guided", "return_trajectory"
            ),
        )

    # ------------------------------------------------------------------ training
    def make_algorithm(self, merge):
        def loss_fn(params, batch, key, step):
            return diffusion_loss(
                merge(params), batch, key, self.config, self.schedule,
                num_classes=self.num_classes,
            )

        return diffusion(
            loss_fn,
            self.tx,
            ema_decay=self.config.ema_decay,
            max_grad_norm=self.config.max_grad_norm,
            seed=self.seed,
        )

    def train_step(self, batch):
        """One update on ``{"images": [B, *data_shape], "labels": optional [B]}``; the
        batch is checked on the host first (ValueError/TypeError naming what is wrong)."""
        self.check_batch(batch)
        return super().train_step(batch)

    def check_batch(self, batch) -> None:
        """Raises unless ``batch`` is a valid training batch for this trainer's model."""
        if not hasattr(batch, "keys") or "images" not in batch or set(batch) - {
            "images", "labels",
        }:
            got = sorted(batch) if hasattr(batch, "keys") else type(batch).__name__
            raise ValueError(
                f"the diffusion batch needs 'images' [B, *{self.data_shape}] (optional "
                f"'labels' [B]); got {got}"
            )
        images = _checks.float_array(np.asarray(batch["images"]), "images")
        expected = (images.shape[0] if images.ndim else 0, *self.data_shape)
        if images.ndim != 1 + len(self.data_shape) or images.shape != expected:
            raise ValueError(
                f"`images` must have shape [B, *{self.data_shape}] (the model's data_shape), "
                f"got shape {tuple(images.shape)}"
            )
        bound = self.config.clip_x0
        if bound is not None and images.size:
            peak = float(np.max(np.abs(np.asarray(images))))
            if not peak <= bound * (1 + 1e-6):
                raise ValueError(
                    f"`images` must lie in [-{bound:g}, {bound:g}] (config.clip_x0; e.g. "
                    f"rlgen.datasets.to_unit), got values up to |x| = {peak:g}"
                )
        check_labels(batch.get("labels"), self.num_classes, images.shape[0])

    # ------------------------------------------------------------------ sampling
    @property
    def ema_model(self):
        """The model with the EMA parameters (a new module; ``self.model`` is untouched)."""
        return self.merge(self.state.ema_params)

    def sample(
        self,
        num_samples: int,
        key,
        labels=None,
        *,
        sampler: str = "ddim",
        num_steps: int | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        use_ema: bool = True,
        return_trajectory: bool = False,
    ):
        """``num_samples`` samples ``[num_samples, *data_shape]`` (and, with
        ``return_trajectory``, the sampler's `rlgen.generative.diffusion.Trajectory`).

        Compiled once per ``(num_samples, sampler, num_steps, return_trajectory)``,
        labels or none, and guidance or none (``guidance_scale`` 1 calls the model once per
        step, any other value twice); the values of ``eta`` and ``guidance_scale`` are
        traced (new values reuse the program).

        Args:
          num_samples: how many samples.
          key: PRNG key.
          labels: ``[num_samples]`` int classes (None: unconditional, the null class).
          sampler: ``"ddim"`` (`rlgen.generative.diffusion.sample_ddim`) or ``"ddpm"``
            (`rlgen.generative.diffusion.sample_ddpm`).
          num_steps: sampling steps (None: 50 for DDIM, all ``T`` for DDPM).
          eta: DDIM's stochasticity (0: deterministic; ignored by DDPM).
          guidance_scale: classifier-free guidance scale (1: the conditional model; with
            labels only).
          use_ema: sample with the EMA parameters (else the current ones).
          return_trajectory: also return the whole chain.
        """
        _checks.check_positive_int(num_samples, "num_samples")
        _checks.check_choice(sampler, SAMPLERS, "sampler")
        if num_steps is None:
            num_steps = DDIM_STEPS if sampler == "ddim" else self.config.num_timesteps
        _checks.check_positive_int(num_steps, "num_steps")
        _checks.check_range(eta, "eta", 0.0)
        _checks.check_scalar(guidance_scale, "guidance_scale")
        _checks.check_bool(use_ema, "use_ema")
        if labels is not None:
            labels = check_labels(np.asarray(labels), self.num_classes, num_samples)
        params = self.state.ema_params if use_ema else self.state.params
        return self._compiled_sample(
            params, self._rest, key, labels, eta, guidance_scale,
            num_samples=num_samples, sampler=sampler, num_steps=num_steps,
            guided=labels is not None and float(guidance_scale) != 1.0,
            return_trajectory=return_trajectory,
        )

    def _sample(self, params, rest, key, labels, eta, guidance_scale, *, num_samples,
                sampler, num_steps, guided, return_trajectory):
        model = self._binding.merge(params, rest)
        denoise_fn = classifier_free_guidance(model, guidance_scale) if guided else model
        settings = dict(
            labels=labels,
            num_steps=num_steps,
            prediction=self.config.prediction,
            clip_x0=self.config.clip_x0,
            return_trajectory=return_trajectory,
        )
        shape = (num_samples, *self.data_shape)
        if sampler == "ddpm":
            return sample_ddpm(denoise_fn, self.schedule, shape, key, **settings)
        return sample_ddim(denoise_fn, self.schedule, shape, key, eta=eta, **settings)
