"""The bridge between a trainer's Flax NNX models and the pure arrays of its state.

A trainer trains one model with one ``nnx.Optimizer``, or several models, each with its own
optimizer, given as dicts with the same keys (``{"generator": g, "discriminator": d}``).
`ModelBinding` splits each model into its trained parameters (the optimizer's ``wrt``
filter, as a pure dict) and the rest of its state, rebuilds the models from parameters
inside the compiled step (`merge`), and writes the results of a step back into the models
and optimizers, so they always show the trained values.

Layout of the algorithm state's ``params`` and ``opt_state`` (`rlgen.algorithms.base`):
one model's pure-dict parameters and its optax state; with several models, dicts keyed by
the model names, each model's optimiser being ``optimizer[name].tx`` (`per_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen.algorithms import base as algo_base


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


class _Slot:
    """One NNX model and its optimizer, seen as arrays."""

    def __init__(self, model: nnx.Module, optimizer: nnx.Optimizer, where: tuple[str, str]):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"`{where[0]}` must be a flax.nnx.Module, got {type(model).__name__}")
        if not isinstance(optimizer, nnx.Optimizer):
            raise TypeError(
                f"`{where[1]}` must be an nnx.Optimizer(model, tx, wrt=nnx.Param), got "
                f"{type(optimizer).__name__}"
            )
        self.model, self.optimizer = model, optimizer
        self.graphdef, param_state, rest_state = nnx.split(model, optimizer.wrt, ...)
        self.param_def = jax.tree.structure(param_state)
        self.rest_def = jax.tree.structure(rest_state)
        self.rest = jax.tree.leaves(rest_state)
        self.param_vars = jax.tree.leaves(nnx.state(model, optimizer.wrt), is_leaf=_is_variable)
        self.opt_vars = jax.tree.leaves(optimizer.opt_state, is_leaf=_is_variable)
        self.params = nnx.to_pure_dict(param_state)
        if [id(x) for x in jax.tree.leaves(self.params)] != [
            id(x) for x in jax.tree.leaves(param_state)
        ]:  # the pure dict and the State must list the parameters in the same order
            raise RuntimeError("internal: parameter order of nnx.to_pure_dict differs from State")

    def merge(self, params, rest) -> nnx.Module:
        return nnx.merge(
            self.graphdef,
            jax.tree.unflatten(self.param_def, jax.tree.leaves(params)),
            jax.tree.unflatten(self.rest_def, rest),
        )


class ModelBinding:
    """A trainer's model(s) and optimizer(s) as arrays: split, merge, adopt, write back.

    Args:
      model: an ``nnx.Module``, or a dict ``{name: nnx.Module}``.
      optimizer: an ``nnx.Optimizer`` on that model, or a dict with the same keys.
    """

    def __init__(self, model, optimizer):
        self.single = not isinstance(model, Mapping)
        if self.single:
            self.slots = {"model": _Slot(model, optimizer, ("model", "optimizer"))}
        else:
            if not isinstance(optimizer, Mapping) or set(optimizer) != set(model):
                got = sorted(optimizer) if isinstance(optimizer, Mapping) else type(optimizer)
                raise TypeError(
                    "with several models, `optimizer` must be a dict with the same keys as "
                    f"`model` ({sorted(model)}), one nnx.Optimizer per model; got {got}"
                )
            if not model or not all(isinstance(k, str) and k for k in model):
                raise TypeError(f"`model` dict keys must be non-empty str, got {list(model)}")
            self.slots = {
                k: _Slot(model[k], optimizer[k], (f"model[{k!r}]", f"optimizer[{k!r}]"))
                for k in sorted(model)
            }

    @property
    def tx(self):
        """The optax transformation of the state's ``opt_state`` (`per_model` for several)."""
        if self.single:
            return self.slots["model"].optimizer.tx
        return algo_base.per_model({k: s.optimizer.tx for k, s in self.slots.items()})

    def params(self):
        """The trained parameters as pure arrays (a dict per model when there are several)."""
        if self.single:
            return self.slots["model"].params
        return {k: s.params for k, s in self.slots.items()}

    def rest(self):
        """The models' untrained state (a list of arrays per model), a compiled-step input."""
        return {k: s.rest for k, s in self.slots.items()}

    def merge(self, params, rest):
        """The NNX model(s) rebuilt from ``params`` and ``rest`` (a dict when several)."""
        if self.single:
            return self.slots["model"].merge(params, rest["model"])
        return {k: s.merge(params[k], rest[k]) for k, s in self.slots.items()}

    def _opt_vars(self):
        return [v for s in self.slots.values() for v in s.opt_vars]  # names in sorted order

    def adopt(self, opt_state):
        """``opt_state`` holding the values of the optimizers' own state.

        The algorithm may chain stateless transformations (gradient clipping) around the
        optimizers' ``tx``: their states have no leaves, so the leaves line up (model
        names in sorted order, as a dict flattens).
        """
        leaves, tree = jax.tree.flatten(opt_state)
        opt_vars = self._opt_vars()
        if len(leaves) != len(opt_vars):
            raise ValueError(
                f"the optimizer's state has {len(opt_vars)} arrays but the trainer's has "
                f"{len(leaves)}: build each nnx.Optimizer on its model with wrt=nnx.Param (or "
                "the filter the trainer's parameters use)"
            )
        return jax.tree.unflatten(tree, [v.get_value() for v in opt_vars])

    def write_back(self, state) -> None:
        """Puts the state's parameters and optimiser state into the models and optimizers."""
        params = {"model": state.params} if self.single else state.params
        for name, slot in self.slots.items():
            for var, value in zip(slot.param_vars, jax.tree.leaves(params[name]), strict=True):
                var.set_value(value)
        for var, value in zip(self._opt_vars(), jax.tree.leaves(state.opt_state), strict=True):
            var.set_value(value)

    def count_update(self) -> None:
        """Adds one to each optimizer's ``step`` (the trainer steps that updated it)."""
        for slot in self.slots.values():
            slot.optimizer.step.set_value(slot.optimizer.step.get_value() + 1)

    def optimizer_steps(self) -> dict[str, jax.Array]:
        """Each optimizer's ``step`` counter (checkpointed with the state)."""
        return {k: jnp.asarray(s.optimizer.step.get_value()) for k, s in self.slots.items()}

    def set_optimizer_steps(self, steps: Mapping[str, Any]) -> None:
        for name, slot in self.slots.items():
            slot.optimizer.step.set_value(steps[name])
