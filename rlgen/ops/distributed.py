"""Reductions over a named device axis that are the identity without one.

Every kernel with an `axis_name` argument reduces through `psum`/`pmean` here, so the same
code runs on one device (`axis_name=None`) and, unchanged, inside `shard_map`/`pmap` over
a data-parallel axis. `shard_local` prepares replicated parameters for per-shard
differentiation. The global aggregates built on these (`global_token_mean`,
`global_count`) live with the other aggregation modes in `rlgen.ops.aggregation`.
"""

from __future__ import annotations

import jax


def psum(x, axis_name):
    """Sum of `x` over the mapped axis `axis_name`; `x` itself when `axis_name` is None.

    Math: `sum_d x_d` over the devices `d` of the axis (any pytree of arrays).

    Args:
      x: an array or pytree of arrays.
      axis_name: the name of a mapped axis (`shard_map`, `pmap`, `vmap(axis_name=...)`),
        or None.

    Returns:
      `x` summed over the axis, with the structure and shapes of `x`.

    Example:
      >>> import jax.numpy as jnp
      >>> psum(jnp.ones(2), None)
      Array([1., 1.], dtype=float32)
      >>> jax.vmap(lambda v: psum(v, "i"), axis_name="i")(jnp.arange(3.0))
      Array([3., 3., 3.], dtype=float32)

    Reference: the collective all-reduce of data-parallel SGD (Dean et al. 2012, Large
    Scale Distributed Deep Networks); `jax.lax.psum`.
    """
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def pmean(x, axis_name):
    """Mean of `x` over the mapped axis `axis_name`; `x` itself when `axis_name` is None.

    Math: `(1 / D) sum_d x_d` over the `D` devices of the axis.

    Args:
      x: an array or pytree of arrays.
      axis_name: the name of a mapped axis, or None.

    Returns:
      `x` averaged over the axis, with the structure and shapes of `x`.

    Example:
      >>> import jax.numpy as jnp
      >>> jax.vmap(lambda v: pmean(v, "i"), axis_name="i")(jnp.arange(3.0))
      Array([1., 1., 1.], dtype=float32)

    Reference: the gradient averaging of synchronous data parallelism (Goyal et al. 2017,
    Accurate, Large Minibatch SGD, arXiv 1706.02677); `jax.lax.pmean`.
    """
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def shard_local(tree, axis_name):
    """`tree` (replicated parameters) marked as varying over `axis_name`.

    Use it on the parameters before differentiating a shard's share of a loss whose
    gradients are then summed with `psum`. Under `shard_map` with its replication check on
    (the default), the gradient with respect to a *replicated* input comes out already
    summed over the axis (the transpose of JAX's implicit `pvary` is a `psum`), and an
    explicit `psum` would count it once per device. Differentiating with respect to a
    varying copy gives this shard's own gradient under every setting (check on or off,
    `pmap`, JAX versions without replication typing). Values are unchanged; an axis of
    None, or a leaf already varying over the axis, is left as is.

    Math: the identity on values; `d loss_d / d tree` per shard `d` in the backward pass.

    Args:
      tree: a pytree of arrays, replicated over `axis_name`.
      axis_name: the name of the mapped axis, or None.

    Returns:
      A pytree with the structure and values of `tree`.

    Example:
      >>> import jax.numpy as jnp
      >>> shard_local({"w": jnp.ones(2)}, None)
      {'w': Array([1., 1.], dtype=float32)}

    Reference: JAX's shard_map varying-manual-axes typing (`jax.lax.pcast`,
    `jax.lax.pvary`).
    """
    if axis_name is None:
        return tree
    if hasattr(jax.lax, "pcast"):
        cast = lambda x: jax.lax.pcast(x, axis_name, to="varying")  # noqa: E731
    elif hasattr(jax.lax, "pvary"):
        cast = lambda x: jax.lax.pvary(x, axis_name)  # noqa: E731
    else:  # no replication typing: gradients are per shard already
        return tree

    def one(x):
        try:
            return cast(x)
        except ValueError:  # already varying over `axis_name`
            return x

    return jax.tree.map(one, tree)
