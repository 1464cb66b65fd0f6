"""`Trainer`: the base of every rlgen trainer (SPEC item 11).

A trainer holds a Flax NNX model and an `nnx.Optimizer`, and keeps the training state
functionally: ``self.state`` is a NamedTuple of arrays (``params`` as a pure dict,
``opt_state``, ``step``, and what the algorithm adds), updated by one compiled step
(``jax.jit``, traced once per batch shape and reused). After every step the new
parameters and optimiser state are written back into the model and the optimizer, so
``model`` and ``optimizer`` always show the trained values.

What the base provides to every subclass:

* the split/merge between the NNX model and pure arrays (`module`), the compiled step
  and the write-back (`_run_update`);
* `fit(data, num_steps, callbacks)` with the callback hooks of SPEC item 9
  (`rlgen.callbacks`), stopping cleanly on Ctrl-C (``trainer.interrupted``);
* checkpoints: `checkpoint_state()` / `load_checkpoint_state(tree)` (everything needed to
  resume exactly: the state, the trainer's RNG key and step count) and
  `save_checkpoint(dir)` / `restore_checkpoint(dir)` on Orbax;
* data parallelism through `jax.sharding`: with ``mesh=`` the batch is split along its
  leading axis over the mesh's ``data_axis`` and the state is replicated; the compiled
  step then runs on every device with the same (global) semantics as on one.

Model trainers implement `compute_loss(model, batch, key) -> (loss, metrics)`; the base
differentiates it and applies the optimizer. The RL trainers instead call an
`rlgen.algorithms` update (`rlgen.trainers.rl`).
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlgen.algorithms import base as algo_base
from rlgen.callbacks.base import CallbackList


class SupervisedState(NamedTuple):
    """State of a trainer driven by `Trainer.compute_loss`."""

    params: Any
    opt_state: Any
    step: jax.Array


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flat_name(index: int, path) -> str:
    """A checkpoint-safe, unique name for one leaf: index plus a sanitised key path."""
    text = re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")
    return f"{index:05d}_{text}"


class Trainer:
    """Base trainer: an NNX model, an `nnx.Optimizer`, one compiled step, callbacks, checkpoints.

    Args:
      model: an `nnx.Module` (see `rlgen.trainers.protocol` for what the RL trainers need).
      optimizer: an `nnx.Optimizer(model, tx, wrt=...)`; its ``tx`` is the optax
        transformation applied and ``wrt`` selects the trained variables. Its optimiser
        state is adopted, so an optimizer used before continues where it was.
      config: the trainer's frozen config dataclass.
      seed: seeds the trainer's RNG (sampling in ``fit`` and model trainers' losses).
      mesh: a `jax.sharding.Mesh` for data parallelism (None: the default device).
      data_axis: the mesh axis the batch is split over.

    Subclasses define `compute_loss` (model trainers) or override `init_state` and
    `_update` (algorithm trainers).

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> class Regression(Trainer):
      ...     def compute_loss(self, model, batch, key):
      ...         loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
      ...         return loss, {"loss": loss}
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> trainer = Regression(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
      >>> batch = {"x": jnp.ones((4, 2)), "y": jnp.zeros((4, 1))}
      >>> first = trainer.train_step(batch)["loss"]
      >>> for _ in range(20):
      ...     last = trainer.train_step(batch)["loss"]
      >>> bool(last < first), trainer.step
      (True, 21)
    """

    #: Batch keys passed to the compiled step as static Python values (not traced).
    static_batch_keys: tuple[str, ...] = ()
    #: Whether `fit` calls the epoch hooks (model trainers; an RL loop has no epochs).
    has_epochs: bool = True
    #: Whether `train_step(batch, reward_fn, key)` samples and scores (GRPO, REINFORCE).
    samples: bool = False

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        config: Any = None,
        *,
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
        data_axis: str = "data",
    ):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"`model` must be a flax.nnx.Module, got {type(model).__name__}")
        if not isinstance(optimizer, nnx.Optimizer):
            raise TypeError(
                "`optimizer` must be an nnx.Optimizer(model, tx, wrt=nnx.Param), got "
                f"{type(optimizer).__name__}"
            )
        if mesh is not None:
            if not isinstance(mesh, jax.sharding.Mesh):
                raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}")
            if data_axis not in mesh.axis_names:
                raise ValueError(
                    f"`data_axis` {data_axis!r} is not an axis of `mesh` {mesh.axis_names}"
                )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be a Python int, got {type(seed).__name__}")
        self.model, self.optimizer, self.config = model, optimizer, config
        self.mesh, self.data_axis = mesh, data_axis

        self.graphdef, param_state, rest_state = nnx.split(model, optimizer.wrt, ...)
        self._param_def = jax.tree.structure(param_state)
        self._rest_def = jax.tree.structure(rest_state)
        self._rest = self._replicate(jax.tree.leaves(rest_state))
        self._param_vars = jax.tree.leaves(nnx.state(model, optimizer.wrt), is_leaf=_is_variable)
        self._opt_vars = jax.tree.leaves(optimizer.opt_state, is_leaf=_is_variable)
        params = nnx.to_pure_dict(param_state)
        if [id(x) for x in jax.tree.leaves(params)] != [
            id(x) for x in jax.tree.leaves(param_state)
        ]:  # the pure dict and the State must list the parameters in the same order
            raise RuntimeError("internal: parameter order of nnx.to_pure_dict differs from State")

        state = self.init_state(params)
        state = state._replace(opt_state=self._adopt(state.opt_state))
        self.state = self._replicate(state)
        self.rng = jax.random.key(seed)
        self.step = 0
        self.num_steps: int | None = None
        self.interrupted = False
        self.stop_training = False
        self._compiled_update = jax.jit(self._update, static_argnames=("static",))

    # ----------------------------------------------------------------- model <-> arrays
    def module(self, params, rest=None) -> nnx.Module:
        """The NNX model rebuilt from pure ``params`` (and the non-trained state ``rest``)."""
        rest = self._rest if rest is None else rest
        return nnx.merge(
            self.graphdef,
            jax.tree.unflatten(self._param_def, jax.tree.leaves(params)),
            jax.tree.unflatten(self._rest_def, rest),
        )

    def _adopt(self, opt_state):
        """The algorithm's optimiser state with the values of ``optimizer.opt_state``.

        The algorithm may chain stateless transformations (gradient clipping) before the
        optimizer's ``tx``: their states have no leaves, so the leaves line up.
        """
        leaves, tree = jax.tree.flatten(opt_state)
        if len(leaves) != len(self._opt_vars):
            raise ValueError(
                f"the optimizer's state has {len(self._opt_vars)} arrays but the trainer's "
                f"has {len(leaves)}: build the nnx.Optimizer on this model with wrt="
                "nnx.Param (or the filter the trainer's parameters use)"
            )
        return jax.tree.unflatten(tree, [v.get_value() for v in self._opt_vars])

    def _write_back(self) -> None:
        """Puts the state's parameters and optimiser state into the model and optimizer."""
        for var, value in zip(self._param_vars, jax.tree.leaves(self.state.params), strict=True):
            var.set_value(value)
        for var, value in zip(self._opt_vars, jax.tree.leaves(self.state.opt_state), strict=True):
            var.set_value(value)

    # --------------------------------------------------------------------- the step
    def init_state(self, params):
        """The functional state for pure ``params`` (model trainers: `SupervisedState`)."""
        tx = algo_base.with_grad_clipping(self.optimizer.tx, self._max_grad_norm())
        return SupervisedState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def _max_grad_norm(self):
        return getattr(self.config, "max_grad_norm", None)

    def compute_loss(self, model: nnx.Module, batch, key) -> tuple[jax.Array, dict]:
        """The model trainer's loss: ``(scalar loss, metrics dict)``. Subclasses define it."""
        raise NotImplementedError(
            f"{type(self).__name__} must define compute_loss(model, batch, key)"
        )

    def _update(self, state, rest, batch, key, static=()):
        """One pure step: ``(state, metrics)``. The base differentiates `compute_loss`."""
        tx = algo_base.with_grad_clipping(self.optimizer.tx, self._max_grad_norm())
        batch = {**batch, **dict(static)}

        def loss_fn(params):
            return self.compute_loss(self.module(params, rest), batch, key)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state = algo_base.apply_gradients(tx, state.params, state.opt_state, grads)
        return SupervisedState(params, opt_state, state.step + 1), {"loss": loss, **metrics}

    def _run_update(self, batch: Mapping[str, Any], key=None) -> dict[str, jax.Array]:
        """Runs the compiled step on ``batch`` and commits the result."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"`batch` must be a dict of arrays, got {type(batch).__name__}")
        batch = dict(batch)
        static = tuple(
            (k, batch.pop(k)) for k in self.static_batch_keys if k in batch
        )
        for name, value in static:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(
                    f"batch[{name!r}] must be a Python int (it fixes array shapes), got "
                    f"{type(value).__name__}"
                )
        if key is None:
            key = self.next_key()
        batch = self.shard(batch)
        state, metrics = self._compiled_update(self.state, self._rest, batch, key, static=static)
        self.state = state
        self.step += 1
        self._write_back()
        self.optimizer.step.set_value(self.optimizer.step.get_value() + 1)  # updates applied
        return metrics

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """One optimiser step on ``batch``; returns the metrics dict (0-d arrays).

        Compiled once per batch shape and reused.
        """
        return self._run_update(batch)

    def next_key(self) -> jax.Array:
        """This step's key: ``fold_in(trainer RNG, step)`` (so a resumed run continues exactly)."""
        return jax.random.fold_in(self.rng, self.step)

    # ----------------------------------------------------------------- devices
    def _replicate(self, tree):
        if self.mesh is None:
            return tree
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.device_put(tree, replicated)

    def shard(self, batch):
        """``batch`` split along its leading axis over the mesh (as is without a mesh)."""
        if self.mesh is None:
            return batch
        n = self.mesh.shape[self.data_axis]
        for path, x in jax.tree_util.tree_leaves_with_path(batch):
            if jnp.ndim(x) == 0 or jnp.shape(x)[0] % n:
                raise ValueError(
                    f"batch{jax.tree_util.keystr(path)} has shape {jnp.shape(x)}; data "
                    f"parallelism over {n} devices needs a leading axis divisible by {n}"
                )
        sharding = jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec(self.data_axis)
        )
        return jax.device_put(batch, sharding)

    # ----------------------------------------------------------------- checkpoints
    def _resume_tree(self):
        return {
            "state": jax.tree.map(
                lambda x: jax.random.key_data(x) if _is_key(x) else x, self.state
            ),
            "rng": jax.random.key_data(self.rng),
            "step": jnp.asarray(self.step, jnp.int32),
            "optimizer_step": jnp.asarray(self.optimizer.step.get_value()),
        }

    def checkpoint_state(self) -> dict[str, jax.Array]:
        """Everything needed to resume exactly, as a flat dict of arrays.

        The functional state (parameters, optimiser state, the algorithm's step and RNG
        key), the trainer's RNG key and step count, and the optimizer's update count.
        Keys are stable names derived from the tree paths (``"00003_state_params_..."``).
        """
        flat = jax.tree_util.tree_leaves_with_path(self._resume_tree())
        return {_flat_name(i, path): leaf for i, (path, leaf) in enumerate(flat)}

    def load_checkpoint_state(self, tree: Mapping[str, Any]) -> None:
        """Restores a `checkpoint_state()` dict (shapes and dtypes must match)."""
        expected = self.checkpoint_state()
        if not isinstance(tree, Mapping) or set(tree) != set(expected):
            got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
            missing = sorted(set(expected) - set(tree)) if isinstance(tree, Mapping) else []
            raise ValueError(
                "checkpoint does not match this trainer: expected the keys of "
                f"checkpoint_state() ({len(expected)} arrays), missing {missing[:5]}; got "
                f"{got if isinstance(got, str) else len(got)} entries"
            )
        for name, like in expected.items():
            value = tree[name]
            if jnp.shape(value) != like.shape or jnp.asarray(value).dtype != like.dtype:
                raise ValueError(
                    f"checkpoint entry {name!r} has shape {jnp.shape(value)} and dtype "
                    f"{jnp.asarray(value).dtype}; this trainer expects {like.shape} {like.dtype}"
                )
        template = self._resume_tree()
        leaves, treedef = jax.tree.flatten(template)
        restored = jax.tree.unflatten(treedef, [jnp.asarray(tree[k]) for k in expected])
        self.state = self._replicate(
            jax.tree.map(
                lambda old, new: jax.random.wrap_key_data(new, impl=jax.random.key_impl(old))
                if _is_key(old)
                else new,
                self.state,
                restored["state"],
            )
        )
        self.rng = jax.random.wrap_key_data(restored["rng"], impl=jax.random.key_impl(self.rng))
        self.step = int(restored["step"])
        self.optimizer.step.set_value(restored["optimizer_step"])
        self._write_back()

    def save_checkpoint(self, directory, *, force: bool = False) -> None:
        """Saves `checkpoint_state()` to ``directory`` (one atomic Orbax save)."""
        from rlgen.callbacks.checkpoint import save_checkpoint

        save_checkpoint(directory, jax.device_get(self.checkpoint_state()), force=force)

    def restore_checkpoint(self, directory) -> None:
        """Loads a checkpoint written by `save_checkpoint` into this trainer."""
        from rlgen.callbacks.checkpoint import restore_checkpoint

        self.load_checkpoint_state(restore_checkpoint(directory, self.checkpoint_state()))

    # ----------------------------------------------------------------- the loop
    def fit(
        self,
        data: Iterable[Mapping[str, Any]],
        num_steps: int | None = None,
        callbacks: Sequence[Any] = (),
        *,
        reward_fn: Callable | None = None,
        num_epochs: int = 1,
    ) -> dict[str, jax.Array] | None:
        """Trains on ``data`` with callbacks; returns the last step's metrics.

        Runs ``num_epochs`` passes over ``data`` (re-iterated each epoch), stopping after
        ``num_steps`` steps in all when given. With ``reward_fn``, each batch holds
        prompts and the trainer samples and scores completions (`train_step(batch,
        reward_fn, key)` with ``key = next_key()``). Hooks: ``on_train_begin(trainer)``,
        ``on_epoch_begin(trainer, epoch)``, ``on_train_batch_end(trainer, metrics, step)``
        with ``step`` the 0-based index of the step just taken, ``on_epoch_end(trainer,
        epoch, metrics)``, ``on_train_end(trainer)``; the RL trainers have no epochs and
        skip the epoch hooks (``has_epochs``). When a step or hook raises, the callbacks
        get ``on_exception(trainer, error)`` instead of ``on_train_end`` (they release what
        they hold, saving nothing new) and the error propagates. A callback ends training early by
        setting ``trainer.stop_training = True``. Ctrl-C (SIGINT) stops after the current
        step, runs ``on_train_end`` and sets ``trainer.interrupted``; a second Ctrl-C
        interrupts at once.
        """
        bad_steps = isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0
        if num_steps is not None and bad_steps:
            raise ValueError(f"`num_steps` must be a non-negative int or None, got {num_steps!r}")
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"`num_epochs` must be a positive int, got {num_epochs!r}")
        if reward_fn is not None and not self.samples:
            raise TypeError(
                f"{type(self).__name__} does not sample completions, so `fit` takes no "
                "`reward_fn`: pass batches that hold the actions and rewards (GRPOTrainer "
                "and REINFORCETrainer sample and score)"
            )
        hooks = CallbackList(callbacks)
        total = num_steps  # the run's length where it is known (progress bars use it)
        if isinstance(data, Sized):
            available = len(data) * num_epochs
            total = available if total is None else min(total, available)
        self.num_steps, self.interrupted, self.stop_training = total, False, False
        metrics = None
        taken = 0
        with _stop_on_sigint(self):
            hooks.on_train_begin(self)
            try:
                for epoch in range(num_epochs):
                    if self.has_epochs:
                        hooks.on_epoch_begin(self, epoch)
                    # The cap is checked after each step, never by pulling one more batch
                    # (an iterator shared across `fit` calls must not lose a batch).
                    for batch in data if num_steps is None or taken < num_steps else ():
                        if reward_fn is None:
                            metrics = self.train_step(batch)
                        else:
                            metrics = self.train_step(batch, reward_fn)
                        taken += 1
                        hooks.on_train_batch_end(self, metrics, self.step - 1)
                        if self.interrupted or self.stop_training:
                            break
                        if num_steps is not None and taken >= num_steps:
                            break
                    if self.has_epochs:
                        hooks.on_epoch_end(self, epoch, metrics)
                    if self.interrupted or self.stop_training:
                        break
                    if num_steps is not None and taken >= num_steps:
                        break
            except BaseException as error:
                hooks.on_exception(self, error)  # release files, bars, pending saves
                raise
            hooks.on_train_end(self)
        return metrics


@contextlib.contextmanager
def _stop_on_sigint(trainer: Trainer):
    """While active, the first SIGINT sets ``trainer.interrupted``; the second raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def make_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> nnx.Optimizer:
    """``nnx.Optimizer(model, tx, wrt=nnx.Param)``: the optimizer the trainers expect."""
    return nnx.Optimizer(model, tx, wrt=nnx.Param)
