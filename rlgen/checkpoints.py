"""Checkpoint I/O on Orbax: atomic one-shot saves, checked restores, and the flat form of
a trainer's state.

Every save is atomic: Orbax writes into a temporary directory and renames it into place
only when every file is written, so a process killed mid-save leaves either the previous
checkpoint untouched or the new one complete.

Restores go into the structure of a given tree (`like`) and check it first: a checkpoint
whose leaf paths, shapes or dtypes differ from `like` raises a `ValueError` that lists the
differences, instead of being cast or padded silently. PRNG keys may be stored either as
key data (`jax.random.key_data`, what the trainers do) or as typed keys; a typed key in
`like` is restored as a typed key of the same implementation.

Used by `rlgen.trainers.Trainer` (``save_checkpoint``/``restore_checkpoint``) and by the
`rlgen.callbacks.ModelCheckpoint` callback.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlgen import _checks


def orbax_checkpoint():
    # Imported on first use: orbax takes about a second to import, which `import rlgen`
    # should not pay when no checkpoint is written.
    import orbax.checkpoint as ocp

    return ocp


def as_path(directory: Any, name: str) -> Path:
    if not isinstance(directory, (str, os.PathLike)) or str(directory) == "":
        raise TypeError(
            f"`{name}` must be a non-empty path (str or os.PathLike), got {directory!r}"
        )
    return Path(directory).expanduser().absolute()


# -- checking a checkpoint against `like` ----------------------------------------------------


def _path_str(path: tuple) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts) or "<root>"


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _stored_shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a leaf has on disk (typed keys are stored as their key data)."""
    if _is_key(x):
        x = jax.random.key_data(x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return tuple(x.shape), np.dtype(x.dtype)
    arr = np.asarray(x)
    return tuple(arr.shape), arr.dtype


def check_like(saved_tree: Any, like: Any, where: str) -> None:
    """Raises ValueError listing every path, shape and dtype where `like` differs."""
    saved = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    wanted = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(like)[0]}
    problems = []
    missing = [k for k in wanted if k not in saved]
    extra = [k for k in saved if k not in wanted]
    if missing:
        problems.append(f"in `like` but not in the checkpoint: {missing[:10]}")
    if extra:
        problems.append(f"in the checkpoint but not in `like`: {extra[:10]}")
    for k in wanted:
        if k not in saved:
            continue
        want_shape, want_dtype = _stored_shape_dtype(wanted[k])
        meta = saved[k]
        name = f"`{k}` (PRNG key data)" if _is_key(wanted[k]) else f"`{k}`"
        got_shape = tuple(getattr(meta, "shape", ()) or ())
        got_dtype = getattr(meta, "dtype", None)
        if got_shape != want_shape:
            problems.append(f"{name}: checkpoint shape {got_shape}, `like` shape {want_shape}")
        if got_dtype is not None and np.dtype(got_dtype) != want_dtype:
            problems.append(
                f"{name}: checkpoint dtype {np.dtype(got_dtype)}, `like` dtype {want_dtype}"
            )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"the checkpoint at {where} does not match `like`:\n  {shown}{more}")


def restore_target(like: Any) -> Any:
    """Abstract arrays (shape, dtype, sharding) for jax leaves; host leaves as they are."""

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, like)


def match_keys(restored: Any, like: Any) -> Any:
    """Typed PRNG keys where `like` has them, key data where it has plain arrays.

    Orbax gives back what was stored (a typed key or its key data) whatever the target;
    this puts each key leaf into the form `like` asks for (same implementation).
    """

    def one(got, want):
        if _is_key(want) and not _is_key(got):
            return jax.random.wrap_key_data(got, impl=jax.random.key_impl(want))
        if _is_key(got) and not _is_key(want):
            return jax.random.key_data(got)
        return got

    return jax.tree.map(one, restored, like)


def check_tree(tree: Any, name: str) -> None:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(
            f"`{name}` must hold at least one array, got {type(tree).__name__} {tree!r}"
        )
    for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, bool)):
            raise TypeError(
                f"`{name}` leaves must be arrays or numbers; `{_path_str(p)}` is "
                f"{type(leaf).__name__}"
            )


# -- one-shot save / restore -----------------------------------------------------------------


def save_checkpoint(directory: str | os.PathLike, tree: Any, *, force: bool = False) -> Path:
    """Saves a pytree of arrays to `directory` in one atomic Orbax write.

    The tree is written to a temporary sibling directory and renamed into place once
    complete: an interrupted save leaves no `directory` (or, with `force`, the old one).
    With `force=True` an existing `directory` is replaced only after the new checkpoint is
    fully written (old and new are swapped by two renames, then the old one is deleted).

    Args:
        directory: the checkpoint directory to create (its parent is created if needed).
        tree: a pytree of JAX/NumPy arrays or numbers (params, optimiser state, step,
            RNG key data...).
        force: replace `directory` if it exists; otherwise an existing `directory` is a
            `FileExistsError`.

    Returns:
        The absolute path written.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> d = tempfile.mkdtemp()
        >>> path = save_checkpoint(f"{d}/ckpt", {"w": jnp.arange(3.0), "step": jnp.asarray(7)})
        >>> restore_checkpoint(path, {"w": jnp.zeros(3), "step": jnp.asarray(0)})["step"]
        Array(7, dtype=int32)
    """
    path = as_path(directory, "directory")
    _checks.check_bool(force, "force")
    check_tree(tree, "tree")
    if path.exists() and not force:
        raise FileExistsError(
            f"`directory` {str(path)!r} already exists; pass force=True to replace it"
        )
    ocp = orbax_checkpoint()
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    target = path
    if path.exists():
        target = path.with_name(f"{path.name}.rlgen-new")
        if target.exists():  # left over by an interrupted overwrite
            shutil.rmtree(target)
    checkpointer.save(target, args=ocp.args.StandardSave(tree))
    checkpointer.close()
    if target != path:
        old = path.with_name(f"{path.name}.rlgen-old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(target, path)
        shutil.rmtree(old)
    return path


def restore_checkpoint(directory: str | os.PathLike, like: Any) -> Any:
    """Restores a checkpoint written by `save_checkpoint` into the structure of `like`.

    Args:
        directory: a directory written by `save_checkpoint` (or the `state` item of a
            `ModelCheckpoint` step).
        like: a pytree with the structure, shapes and dtypes to restore (its values are
            not used). JAX leaves come back as JAX arrays with the sharding of the
            corresponding `like` leaf; NumPy leaves as NumPy arrays.

    Returns:
        A pytree like `like` holding the saved values, bit for bit.

    Raises:
        FileNotFoundError: `directory` does not exist.
        ValueError: the checkpoint is incomplete, or its paths, shapes or dtypes differ
            from `like` (all differences are listed).

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> d = save_checkpoint(f"{tempfile.mkdtemp()}/c", {"w": jnp.ones(2, jnp.bfloat16)})
        >>> restore_checkpoint(d, {"w": jnp.zeros(2, jnp.bfloat16)})["w"]
        Array([1, 1], dtype=bfloat16)
        >>> restore_checkpoint(d, {"w": jnp.zeros(3)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint at ... does not match `like`:
          `w`: checkpoint shape (2,), `like` shape (3,)
          `w`: checkpoint dtype bfloat16, `like` dtype float32
    """
    path = as_path(directory, "directory")
    check_tree(like, "like")
    if not path.is_dir():
        raise FileNotFoundError(f"`directory` {str(path)!r}: no checkpoint there")
    ocp = orbax_checkpoint()
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        metadata = checkpointer.metadata(path).item_metadata
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"`directory` {str(path)!r} holds no readable checkpoint: {err}") from err
    check_like(metadata.tree, like, repr(str(path)))
    restored = checkpointer.restore(path, args=ocp.args.StandardRestore(restore_target(like)))
    checkpointer.close()
    return match_keys(restored, like)


# -- the flat form of a training state -------------------------------------------------------


def _is_typed_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _entry_name(index: int, path) -> str:
    """A checkpoint-safe, unique name for one leaf: its index and a sanitised key path."""
    text = re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")
    return f"{index:05d}_{text}"


def flatten_state(tree: Any) -> dict[str, Any]:
    """A pytree of arrays as a flat ``{name: array}`` dict; typed PRNG keys as key data.

    Names are stable and readable: the leaf's index and its key path
    (``"00003_state_params_kernel"``), so a checkpoint lists what it holds. The inverse
    is `unflatten_state`.

    Example:
      >>> flatten_state({"w": jnp.ones(2), "key": jax.random.key(0)})  # doctest: +ELLIPSIS
      {'00000_key': Array([0, 0], dtype=uint32), '00001_w': Array([1., 1.], dtype=float32)}
    """
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return {
        _entry_name(i, path): jax.random.key_data(leaf) if _is_typed_key(leaf) else leaf
        for i, (path, leaf) in enumerate(flat)
    }


def unflatten_state(flat: Mapping[str, Any], like: Any) -> Any:
    """The tree `like` with the values of a `flatten_state` dict, checked entry by entry.

    Every entry must be there with the shape and dtype of ``flatten_state(like)``; typed
    PRNG keys come back as typed keys of ``like``'s implementation.

    Raises:
      ValueError: naming the missing, extra or mismatched entries (nothing is cast).

    Example:
      >>> like = {"w": jnp.zeros(2), "key": jax.random.key(0)}
      >>> tree = unflatten_state(flatten_state({"w": jnp.ones(2), "key": jax.random.key(7)}), like)
      >>> tree["w"], jax.random.key_data(tree["key"])
      (Array([1., 1.], dtype=float32), Array([0, 7], dtype=uint32))
    """
    expected = flatten_state(like)
    if not isinstance(flat, Mapping) or set(flat) != set(expected):
        got = sorted(flat) if isinstance(flat, Mapping) else type(flat).__name__
        missing = sorted(set(expected) - set(flat)) if isinstance(flat, Mapping) else []
        extra = sorted(set(flat) - set(expected)) if isinstance(flat, Mapping) else []
        raise ValueError(
            f"checkpoint does not match: expected {len(expected)} entries, missing "
            f"{missing[:5]}, unexpected {extra[:5]}; got "
            f"{got if isinstance(got, str) else len(got)} entries"
        )
    for name, want in expected.items():
        value = flat[name]
        shape, dtype = np.shape(value), np.asarray(value).dtype
        if shape != tuple(want.shape) or dtype != want.dtype:
            raise ValueError(
                f"checkpoint entry {name!r} has shape {shape} and dtype {dtype}; "
                f"expected {tuple(want.shape)} {want.dtype}"
            )
    leaves, treedef = jax.tree.flatten(like)
    values = [jnp.asarray(flat[k]) for k in expected]
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.wrap_key_data(v, impl=jax.random.key_impl(old)) if _is_typed_key(old) else v
            for old, v in zip(leaves, values, strict=True)
        ],
    )
