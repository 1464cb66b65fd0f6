"""`FlowTrainer`: flow matching (independent or OT coupling), rectified flow's reflow
against a frozen teacher, and `sample()` with the Euler or Heun ODE sampler. The math is
`rlgen.generative.flow`; the update is `rlgen.algorithms.flow.flow_matching`.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from rlgen import _checks
from rlgen.algorithms.flow import flow_matching
from rlgen.generative import flow
from rlgen.generative.flow import FlowConfig
from rlgen.trainers.base import Trainer

__all__ = ["FlowConfig", "FlowTrainer"]


class FlowTrainer(Trainer):
    """Trains a velocity model ``model(x [B, ...], t [B], labels [B] or None) -> v``.

    ``train_step(batch)`` with ``images`` (``[B, ...]`` float data) and, for a
    class-conditional model (``config.num_classes > 0``), optional ``labels`` (``[B]``
    int): one optimiser step on `rlgen.generative.flow.flow_matching_loss` (the coupling,
    ``sigma_min``, label dropout, reflow as set by `FlowConfig`). Metrics:
    `rlgen.algorithms.flow.METRICS` (``loss``, ``pair_cost``, ``skipped``). The batch is
    checked before the compiled step: image shape (``data_shape``), finite values, labels
    in ``[0, num_classes)``.

    Reflow (``FlowConfig(reflow=True)``) needs ``teacher``, an NNX velocity model whose
    current parameters are copied once into the state (``ref_params``: frozen, saved
    with checkpoints); passing the model being trained makes the student start from its
    teacher, as in Liu et al. (2022).

    Args:
      model: the NNX velocity model (e.g. `rlgen.models.MLPDenoiser`).
      optimizer: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
      config: a `FlowConfig` (default ``FlowConfig()``).
      teacher: the reflow teacher (an ``nnx.Module``), only with ``config.reflow``.
      data_shape: one example's shape (None: ``(model.dim,)`` when the model has ``dim``,
        else the first batch's); samples have it.
      **kwargs: `Trainer`'s (``seed``, ``mesh``, ``data_axis``).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> class Shift(nnx.Module):  # v(x, t) = b: the straight flow of data = noise + b
      ...     def __init__(self):
      ...         self.b = nnx.Param(jnp.zeros(2))
      ...     def __call__(self, x, t, labels=None):
      ...         return jnp.broadcast_to(self.b[...], x.shape)
      >>> model = Shift()
      >>> trainer = FlowTrainer(model, nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param),
      ...                       data_shape=(2,))
      >>> for _ in range(100):
      ...     metrics = trainer.train_step({"images": jnp.tile(jnp.array([3.0, -1.0]), (8, 1))})
      >>> samples = trainer.sample(4, jax.random.key(0), num_steps=1)
      >>> samples.shape, bool(abs(float(model.b[0]) - 3.0) < 0.3)
      ((4, 2), True)
    """

    def __init__(
        self,
        model,
        optimizer,
        config: FlowConfig | None = None,
        *,
        teacher: nnx.Module | None = None,
        data_shape: tuple[int, ...] | None = None,
        **kwargs,
    ):
        config = FlowConfig() if config is None else config
        if not isinstance(config, FlowConfig):
            raise TypeError(f"`config` must be a FlowConfig, got {type(config).__name__}")
        if config.reflow and teacher is None:
            raise ValueError(
                "FlowConfig(reflow=True) trains on a frozen teacher's ODE pairs: pass "
                "`teacher` (an nnx.Module velocity model; the trained model itself for a "
                "student that starts from its teacher)"
            )
        if teacher is not None and not config.reflow:
            raise ValueError("`teacher` is used by reflow only: set FlowConfig(reflow=True)")
        if teacher is not None and not isinstance(teacher, nnx.Module):
            raise TypeError(f"`teacher` must be a flax.nnx.Module, got {type(teacher).__name__}")
        classes = getattr(model, "num_classes", None)
        if isinstance(classes, int) and classes != config.num_classes:
            raise ValueError(
                f"the model has num_classes={classes} but the config's `num_classes` is "
                f"{config.num_classes}; set FlowConfig(num_classes={classes})"
            )
        if data_shape is None and isinstance(getattr(model, "dim", None), int):
            data_shape = (model.dim,)
        if data_shape is not None:
            data_shape = tuple(
                _checks.check_positive_int(n, f"data_shape[{i}]") for i, n in enumerate(data_shape)
            )
        self.data_shape = data_shape
        self._teacher = None if teacher is None else nnx.split(teacher, nnx.Param, ...)
        super().__init__(model, optimizer, config, **kwargs)
        self._compiled_sample = jax.jit(
            self._sample, static_argnames=("num_steps", "method", "guidance_scale", "trajectory")
        )

    def make_algorithm(self, merge):
        teacher_fn = teacher_params = None
        if self._teacher is not None:
            graphdef, param_state, rest = self._teacher
            structure = jax.tree.structure(param_state)
            teacher_params = nnx.to_pure_dict(param_state)

            def teacher_fn(params):
                state = jax.tree.unflatten(structure, jax.tree.leaves(params))
                return nnx.merge(graphdef, state, rest)

        return flow_matching(
            merge,
            self.tx,
            self.config,
            teacher_fn=teacher_fn,
            teacher_params=teacher_params,
            seed=self.seed,
        )

    def train_step(self, batch) -> dict[str, jax.Array]:
        """One update on ``batch`` (checked first; see the class doc)."""
        images, _ = flow.check_batch(batch, self.config)
        shape = tuple(images.shape[1:])
        if self.data_shape is None:
            self.data_shape = shape
        elif shape != self.data_shape:
            raise ValueError(
                f"`images` must have shape [B, {', '.join(map(str, self.data_shape))}] "
                f"(data_shape), got shape {tuple(images.shape)}"
            )
        if not bool(np.all(np.isfinite(np.asarray(images)))):
            raise ValueError("`images` holds non-finite values (NaN or inf)")
        return super().train_step(batch)

    def sample(
        self,
        num_samples: int,
        key,
        labels=None,
        *,
        num_steps: int = 50,
        method: str = "euler",
        guidance_scale: float = 1.0,
        use_ema: bool = True,
        return_trajectory: bool = False,
    ):
        """Samples by integrating the learned ODE from ``N(0, I)`` noise drawn with ``key``.

        `rlgen.generative.flow.sample_ode` with ``num_steps`` steps of ``method`` (one of
        `rlgen.generative.flow.METHODS`) and classifier-free guidance ``guidance_scale``
        for ``labels`` (``[num_samples]`` int in ``[0, num_classes)``; None:
        unconditional). With ``use_ema`` and ``config.ema_decay`` the parameters'
        moving average samples. Compiled once per setting and shape.

        Returns:
          ``[num_samples, *data_shape]`` samples, or ``(samples, trajectory)`` with
          ``return_trajectory`` (``[num_steps + 1, num_samples, *data_shape]``).
        """
        _checks.check_positive_int(num_samples, "num_samples")
        _checks.check_positive_int(num_steps, "num_steps")
        _checks.check_choice(method, flow.METHODS, "method")
        _checks.check_range(guidance_scale, "guidance_scale", 0.0)
        _checks.check_bool(use_ema, "use_ema")
        _checks.check_bool(return_trajectory, "return_trajectory")
        if self.data_shape is None:
            raise ValueError(
                "the trainer does not know the data's shape yet: pass `data_shape` to "
                "FlowTrainer or train a step first"
            )
        if labels is not None:
            if self.config.num_classes == 0:
                raise ValueError("`labels` given but FlowConfig(num_classes=0) is unconditional")
            labels = flow.check_labels(labels, self.config.num_classes, num_samples)
        averaged = use_ema and self.config.ema_decay is not None
        params = self.state.ema_params if averaged else self.state.params
        x0 = jax.random.normal(key, (num_samples, *self.data_shape))
        return self._compiled_sample(
            params,
            self._rest,
            x0,
            labels,
            num_steps=num_steps,
            method=method,
            guidance_scale=float(guidance_scale),
            trajectory=return_trajectory,
        )

    def _sample(self, params, rest, x0, labels, *, num_steps, method, guidance_scale, trajectory):
        return flow.sample_ode(
            self._binding.merge(params, rest),
            x0,
            num_steps,
            method=method,
            labels=labels,
            guidance_scale=guidance_scale,
            return_trajectory=trajectory,
        )
