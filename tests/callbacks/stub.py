"""A stub trainer with the interface the callbacks see, and helpers to compare trees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


class StubTrainer:
    """Holds params of several dtypes, a real optax state, a step and an RNG key.

    `train_step(**metrics)` changes every leaf, advances `step` and returns the given
    metrics as 0-d device arrays (default: loss and mean_reward from the step).
    """

    def __init__(self, num_steps=None, seed=0):
        self.step = 0
        self.num_steps = num_steps
        self.config = None
        k1, k2, self.key = jax.random.split(jax.random.key(seed), 3)
        self.params = {
            "w": jax.random.normal(k1, (4, 3), jnp.float32),
            "h": jax.random.normal(k2, (5,), jnp.bfloat16),
            "counts": jnp.arange(3, dtype=jnp.int32),
        }
        self.optimizer = optax.adam(1e-2)
        self.opt_state = self.optimizer.init(self.params["w"])

    def train_step(self, **metrics):
        self.key, sub = jax.random.split(self.key)
        grad = jax.random.normal(sub, self.params["w"].shape)
        updates, self.opt_state = self.optimizer.update(grad, self.opt_state)
        self.params = {
            "w": optax.apply_updates(self.params["w"], updates),
            "h": (self.params["h"] * 1.5 + 0.25).astype(jnp.bfloat16),
            "counts": self.params["counts"] + 1,
        }
        self.step += 1
        if not metrics:
            metrics = {"loss": 1.0 / self.step, "mean_reward": float(self.step)}
        return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    def checkpoint_state(self):
        return {
            "params": self.params,
            "opt_state": self.opt_state,
            "step": jnp.asarray(self.step, jnp.int32),
            "rng": jax.random.key_data(self.key),
        }

    def load_checkpoint_state(self, tree):
        self.params = tree["params"]
        self.opt_state = tree["opt_state"]
        self.step = int(tree["step"])
        self.key = jax.random.wrap_key_data(tree["rng"])


def host_copy(tree):
    """A host snapshot of a pytree (typed keys as key data)."""

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.array(x)

    return jax.tree.map(one, tree)


def assert_bitwise_equal(a, b):
    """Same structure, shapes, dtypes and bytes (NaN == NaN when the bits agree)."""
    a, b = host_copy(a), host_copy(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, x.shape, y.dtype, y.shape)
        assert x.tobytes() == y.tobytes()
