"""`Trainer`: the base of every rlgen trainer, an adapter over one pure init/update pair.

A trainer holds Flax NNX model(s) and ``nnx.Optimizer`` (s) and trains them through an
`rlgen.algorithms.Algorithm`: ``self.state`` is the algorithm's state (the protocol of
`rlgen.algorithms.base`: ``params``, ``opt_state``, ``step``, then what the family adds),
advanced by one compiled ``update`` per batch (``jax.jit``, traced once per batch shape
and reused). After every step the parameters and optimiser state are written back into
the models and optimizers, so they always show the trained values.

A subclass says which algorithm trains its models, in one of two ways:

* ``compute_loss(model, batch, key, step) -> (loss, metrics)``: the base minimises it
  with `rlgen.algorithms.supervised` (one optimiser step per batch, the config's
  ``max_grad_norm`` if it has one);
* ``make_algorithm(merge) -> Algorithm``: any init/update pair, where ``merge(params)``
  rebuilds the NNX model(s) from the state's parameters inside the compiled step (a dict
  of models for a trainer of several). Several models with their own optimisers and
  update ratios, an EMA of the parameters, persistent buffers, a frozen reference: all
  are fields of that algorithm's state, saved and restored like the rest.

The base gives every subclass the write-back, `fit` with callbacks (stopping cleanly on
Ctrl-C), checkpoints that resume exactly (`checkpoint_state`, `save_checkpoint`,
`restore_checkpoint`), and data parallelism over a ``jax.sharding.Mesh``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen import _checks, algorithms, checkpoints
from rlgen.algorithms import base as algo_base
from rlgen.callbacks.base import CallbackList
from rlgen.trainers.binding import ModelBinding


class Trainer:
    """Base trainer: NNX model(s) and optimizer(s), one compiled step, callbacks, checkpoints.

    Args:
      model: an ``nnx.Module``, or a dict ``{name: nnx.Module}`` for a trainer of several
        models (see `rlgen.trainers.protocol` for what the RL trainers need of a model).
      optimizer: an ``nnx.Optimizer(model, tx, wrt=...)``, or a dict with the same keys as
        ``model``; ``tx`` is the optax transformation applied and ``wrt`` selects the
        trained variables. Its optimiser state is adopted, so an optimizer used before
        continues where it was; its ``step`` counts the trainer steps that updated it.
      config: the trainer's frozen config dataclass.
      seed: seeds the algorithm's PRNG key and the trainer's sampling key.
      mesh: a ``jax.sharding.Mesh`` for data parallelism (None: the default device).
      data_axis: the mesh axis the batch is split over.

    Example:
      >>> import optax
      >>> class Regression(Trainer):
      ...     def compute_loss(self, model, batch, key, step):
      ...         loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
      ...         return loss, {}
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> trainer = Regression(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
      >>> batch = {"x": jnp.ones((4, 2)), "y": jnp.zeros((4, 1))}
      >>> first = trainer.train_step(batch)["loss"]
      >>> for _ in range(20):
      ...     last = trainer.train_step(batch)["loss"]
      >>> bool(last < first), trainer.step
      (True, 21)
    """

    #: Batch keys passed to the compiled step as static Python ints (they fix shapes).
    static_batch_keys: tuple[str, ...] = ()
    #: Whether `fit` calls the epoch hooks (model trainers; an RL loop has no epochs).
    has_epochs: bool = True

    def __init__(
        self,
        model: nnx.Module | Mapping[str, nnx.Module],
        optimizer: nnx.Optimizer | Mapping[str, nnx.Optimizer],
        config: Any = None,
        *,
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
        data_axis: str = "data",
    ):
        cls = type(self)
        defines = (cls.make_algorithm, cls.compute_loss)
        if defines == (Trainer.make_algorithm, Trainer.compute_loss):
            raise TypeError(
                f"{cls.__name__} must define compute_loss(model, batch, key, step) or "
                "make_algorithm(merge) (see rlgen.trainers.Trainer)"
            )
        if mesh is not None:
            if not isinstance(mesh, jax.sharding.Mesh):
                raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}")
            if data_axis not in mesh.axis_names:
                raise ValueError(
                    f"`data_axis` {data_axis!r} is not an axis of `mesh` {mesh.axis_names}"
                )
        _checks.check_int(seed, "seed", what="a Python int")
        self.model, self.optimizer, self.config, self.seed = model, optimizer, config, seed
        self.mesh, self.data_axis = mesh, data_axis
        self._binding = ModelBinding(model, optimizer)
        self._rest = self._replicate(self._binding.rest())
        state = self._algorithm(self._rest).init(self._binding.params())
        algo_base.check_state(state, f"{cls.__name__}.make_algorithm(...).init")
        state = state._replace(opt_state=self._binding.adopt(state.opt_state))
        self.state = self._replicate(state)
        self.rng = jax.random.key(seed)
        self.step = 0
        self.num_steps: int | None = None
        self.interrupted = False
        self.stop_training = False
        self._compiled_update = jax.jit(self._update, static_argnames=("static",))
        self._unchecked_skip: tuple[int, jax.Array] | None = None

    # --------------------------------------------------------------- the algorithm
    @property
    def tx(self):
        """The optax transformation of the state's ``opt_state`` (one per model, if several)."""
        return self._binding.tx

    def make_algorithm(self, merge: Callable[[Any], Any]) -> algorithms.Algorithm:
        """The init/update pair that trains this trainer's model(s).

        ``merge(params)`` rebuilds the NNX model (or the dict of models) from parameters;
        call it inside ``update``. The default minimises `compute_loss` with
        `rlgen.algorithms.supervised`.
        """
        return algorithms.supervised(
            lambda params, batch, key, step: self.compute_loss(merge(params), batch, key, step),
            self.tx,
            max_grad_norm=getattr(self.config, "max_grad_norm", None),
            seed=self.seed,
        )

    def compute_loss(self, model, batch, key, step) -> tuple[jax.Array, dict]:
        """A model trainer's loss: ``(scalar loss, metrics dict)``; subclasses define it.

        ``model`` is the NNX model rebuilt from the parameters being differentiated,
        ``key`` this step's PRNG key and ``step`` the number of updates so far.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no compute_loss")

    def prepare_batch(self, batch: dict) -> dict:
        """The batch the algorithm sees (inside the compiled step); identity by default."""
        return batch

    def merge(self, params):
        """The NNX model (or dict of models) with ``params``: e.g. a state's EMA or reference.

        A new module; the trainer's own ``model`` is untouched.
        """
        return self._binding.merge(params, self._rest)

    def _algorithm(self, rest) -> algorithms.Algorithm:
        return self.make_algorithm(lambda params: self._binding.merge(params, rest))

    def _update(self, state, rest, batch, static=()):
        batch = self.prepare_batch({**batch, **dict(static)})
        return self._algorithm(rest).update(state, batch)

    # --------------------------------------------------------------------- the step
    def _run_update(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Runs the compiled step on ``batch`` and commits the result."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"`batch` must be a dict of arrays, got {type(batch).__name__}")
        batch = dict(batch)
        static = tuple((k, batch.pop(k)) for k in self.static_batch_keys if k in batch)
        for name, value in static:
            _checks.check_int(value, f"batch[{name!r}]", what="a Python int (it fixes shapes)")
        self.report_skipped_update()
        state, metrics = self._compiled_update(
            self.state, self._rest, self.shard(batch), static=static
        )
        self.state = state
        self.step += 1
        self._binding.write_back(state)
        self._binding.count_update()
        if "skipped" in metrics:
            self._unchecked_skip = (self.step - 1, metrics["skipped"])
        return metrics

    def report_skipped_update(self) -> None:
        """Warns (RuntimeWarning) if the last step reported a skipped update.

        An algorithm refuses to train on non-finite rewards, losses or gradients: the
        compiled step leaves the parameters unchanged and reports ``skipped > 0``. The
        trainer reads that metric on the host when the next step starts (and at the end of
        `fit`), so the check never stalls the device pipeline and no host callback is
        compiled into the step.
        """
        if self._unchecked_skip is None:
            return
        step, skipped = self._unchecked_skip
        self._unchecked_skip = None
        if float(skipped) > 0:
            warnings.warn(
                f"{type(self).__name__} step {step}: the update was skipped (non-finite "
                "rewards, loss or gradient); the parameters and optimiser state are unchanged",
                RuntimeWarning,
                stacklevel=3,
            )

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """One update on ``batch``; returns the metrics dict (0-d arrays).

        Compiled once per batch shape and reused.
        """
        return self._run_update(batch)

    def next_key(self) -> jax.Array:
        """This step's sampling key: ``fold_in(trainer RNG, step)`` (resumes exactly)."""
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
            "state": self.state,
            "rng": self.rng,
            "step": jnp.asarray(self.step, jnp.int32),
            "optimizer_step": self._binding.optimizer_steps(),
        }

    def checkpoint_state(self) -> dict[str, jax.Array]:
        """Everything needed to resume exactly, as a flat dict of arrays.

        The algorithm's whole state (every model's parameters and optimiser state, and
        what the family adds: PRNG key, reference, EMA, buffers), the trainer's sampling
        key and step count, and each optimizer's update count. Keys are stable names from
        the tree paths (``"00003_state_params_..."``, `rlgen.checkpoints.flatten_state`).
        """
        return checkpoints.flatten_state(self._resume_tree())

    def load_checkpoint_state(self, tree: Mapping[str, Any]) -> None:
        """Restores a `checkpoint_state()` dict (names, shapes and dtypes must match)."""
        restored = checkpoints.unflatten_state(tree, self._resume_tree())
        self.state = self._replicate(restored["state"])
        self.rng = restored["rng"]
        self.step = int(restored["step"])
        self._binding.set_optimizer_steps(restored["optimizer_step"])
        self._binding.write_back(self.state)

    def save_checkpoint(self, directory, *, force: bool = False) -> None:
        """Saves `checkpoint_state()` to ``directory`` (one atomic Orbax save)."""
        checkpoints.save_checkpoint(
            directory, jax.device_get(self.checkpoint_state()), force=force
        )

    def restore_checkpoint(self, directory) -> None:
        """Loads a checkpoint written by `save_checkpoint` into this trainer."""
        like = self.checkpoint_state()
        self.load_checkpoint_state(checkpoints.restore_checkpoint(directory, like))

    # ----------------------------------------------------------------- the loop
    def fit(
        self,
        data: Iterable[Mapping[str, Any]],
        num_steps: int | None = None,
        callbacks: Sequence[Any] = (),
        *,
        num_epochs: int = 1,
    ) -> dict[str, jax.Array] | None:
        """Trains on ``data`` with callbacks; returns the last step's metrics.

        Runs ``num_epochs`` passes over ``data`` (re-iterated each epoch, so it must be a
        re-iterable collection, not a one-shot iterator, when ``num_epochs > 1``),
        stopping after ``num_steps`` steps in all when given. Hooks:
        ``on_train_begin(trainer)``, ``on_epoch_begin(trainer, epoch)``,
        ``on_train_batch_end(trainer, metrics, step)`` with ``step`` the 0-based index of
        the step just taken, ``on_epoch_end(trainer, epoch, metrics)``,
        ``on_train_end(trainer)``; the RL trainers have no epochs and skip the epoch hooks
        (``has_epochs``). When a step or hook raises, the callbacks get
        ``on_exception(trainer, error)`` instead of ``on_train_end`` (they release what
        they hold, saving nothing new) and the error propagates. A callback ends training
        early by setting ``trainer.stop_training = True``. Ctrl-C (SIGINT) stops after the
        current step, runs ``on_train_end`` and sets ``trainer.interrupted``; a second
        Ctrl-C interrupts at once.
        """
        return self._fit(data, self.train_step, num_steps, callbacks, num_epochs)

    def _fit_sampling(self, data, reward_fn, num_steps, callbacks, num_epochs):
        """`fit` of a trainer that samples: each step is ``train_step(batch, reward_fn)``
        (``reward_fn`` None: plain `Trainer.fit` on complete batches)."""
        if reward_fn is None:
            return Trainer.fit(self, data, num_steps, callbacks, num_epochs=num_epochs)
        if not callable(reward_fn):
            raise TypeError(f"`reward_fn` must be callable, got {type(reward_fn).__name__}")
        step = lambda batch: self.train_step(batch, reward_fn)  # noqa: E731
        return self._fit(data, step, num_steps, callbacks, num_epochs)

    def _fit(self, data, step_fn, num_steps, callbacks, num_epochs):
        """The loop of `fit`, taking each step with ``step_fn(batch)``."""
        if num_steps is not None:
            _checks.check_int(num_steps, "num_steps", low=0)
        _checks.check_int(num_epochs, "num_epochs", low=1)
        if num_epochs > 1 and isinstance(data, Iterator):
            raise ValueError(
                f"`num_epochs`={num_epochs} re-iterates `data`, but {type(data).__name__} is a "
                "one-shot iterator (its second pass would be empty): pass a list or another "
                "re-iterable collection, or num_epochs=1"
            )
        hooks = CallbackList(callbacks)
        total = num_steps  # the run's length where it is known (progress bars use it)
        if isinstance(data, Sized):
            available = len(data) * num_epochs
            total = available if total is None else min(total, available)
        self.num_steps, self.interrupted, self.stop_training = total, False, False
        metrics = None
        taken = 0

        def done():
            capped = num_steps is not None and taken >= num_steps
            return capped or self.interrupted or self.stop_training

        with _stop_on_sigint(self):
            hooks.on_train_begin(self)
            try:
                for epoch in range(num_epochs):
                    if self.has_epochs:
                        hooks.on_epoch_begin(self, epoch)
                    # The cap is checked after each step, never by pulling one more batch
                    # (an iterator shared across `fit` calls must not lose a batch).
                    for batch in () if done() else data:
                        metrics = step_fn(batch)
                        taken += 1
                        hooks.on_train_batch_end(self, metrics, self.step - 1)
                        if done():
                            break
                    if self.has_epochs:
                        hooks.on_epoch_end(self, epoch, metrics)
                    if done():
                        break
            except BaseException as error:
                hooks.on_exception(self, error)  # release files, bars, pending saves
                raise
            self.report_skipped_update()
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
