"""Two trainers built on the public trainer contract alone, as the coming model families
will be: a two-model adversarial trainer (a GAN: each model with its own `nnx.Optimizer`,
several discriminator updates per generator update, noise from the state's key) and an EMA
trainer (an exponential moving average of the parameters updated inside the compiled
step). Neither overrides anything of `Trainer` but `make_algorithm`.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlgen.algorithms import (
    Algorithm,
    SupervisedState,
    apply_gradients,
    ema_update,
    supervised,
)
from rlgen.trainers import Trainer


class AdversarialState(NamedTuple):
    params: dict  # {"discriminator": ..., "generator": ...}
    opt_state: dict  # the same keys: one optimiser state per model
    step: jax.Array
    key: jax.Array  # the generator's noise


class AdversarialTrainer(Trainer):
    """Non-saturating GAN (Goodfellow et al. 2014): ``d_steps`` discriminator steps, then
    one generator step, per batch of real ``data`` ``[B, D]``."""

    def __init__(self, generator, discriminator, g_optimizer, d_optimizer, *, d_steps=2, **kw):
        self.d_steps, self.latent = d_steps, generator.in_features
        models = {"generator": generator, "discriminator": discriminator}
        super().__init__(models, {"generator": g_optimizer, "discriminator": d_optimizer}, **kw)

    def make_algorithm(self, merge):
        tx = {name: optimizer.tx for name, optimizer in self.optimizer.items()}

        def losses(params, real, z):
            models = merge(params)
            fake, critic = models["generator"](z), models["discriminator"]
            d_loss = jnp.mean(jax.nn.softplus(-critic(real)) + jax.nn.softplus(critic(fake)))
            return {"discriminator": d_loss, "generator": jnp.mean(jax.nn.softplus(-critic(fake)))}

        def train(name, params, opt_state, real, z):  # one optimiser step of one model
            grads = jax.grad(lambda p: losses({**params, name: p}, real, z)[name])(params[name])
            new, state = apply_gradients(tx[name], params[name], opt_state[name], grads)
            return {**params, name: new}, {**opt_state, name: state}

        def init(params):
            opt_state = {name: tx[name].init(params[name]) for name in tx}
            step, key = jnp.zeros((), jnp.int32), jax.random.key(self.seed)
            return AdversarialState(params, opt_state, step, key)

        def update(state, batch):
            real = batch["data"]
            key, *keys = jax.random.split(state.key, self.d_steps + 2)
            noise = lambda k: jax.random.normal(k, (real.shape[0], self.latent))  # noqa: E731
            d_step = lambda carry, k: (train("discriminator", *carry, real, noise(k)), None)  # noqa: E731
            carry, _ = jax.lax.scan(d_step, (state.params, state.opt_state), jnp.stack(keys[:-1]))
            params, opt_state = train("generator", *carry, real, noise(keys[-1]))
            metrics = {f"{k}_loss": v for k, v in losses(params, real, noise(keys[-1])).items()}
            metrics["fake_mean"] = jnp.mean(merge(params)["generator"](noise(keys[-1])))
            return AdversarialState(params, opt_state, state.step + 1, key), metrics

        return Algorithm(init, update)


class EMAState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    ema_params: Any  # the moving average, updated inside the compiled step


class EMARegression(Trainer):
    """Least squares ``model(x) ~ y``, keeping ``ema_params`` with decay ``decay``: the
    supervised algorithm's state with one more field."""

    def __init__(self, model, optimizer, *, decay=0.9, **kwargs):
        self.decay = decay
        super().__init__(model, optimizer, **kwargs)

    def make_algorithm(self, merge):
        def loss(params, batch, key, step):
            return jnp.mean((merge(params)(batch["x"]) - batch["y"]) ** 2), {}

        inner = supervised(loss, self.tx, seed=self.seed)

        def init(params):
            return EMAState(*inner.init(params), ema_params=jax.tree.map(jnp.copy, params))

        def update(state, batch):
            new, metrics = inner.update(SupervisedState(*state[:4]), batch)
            average = ema_update(state.ema_params, new.params, self.decay)
            return EMAState(*new, ema_params=average), metrics

        return Algorithm(init, update)


def make_gan(seed=0, lr=0.05, d_steps=2, **kwargs):
    """A 1-D GAN: affine generator of 1-D noise; logistic discriminator on ``(x, x^2)``."""
    import optax

    class Quadratic(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 1, rngs=rngs)

        def __call__(self, x):
            return self.linear(jnp.concatenate([x, x**2], axis=-1))[..., 0]

    generator = nnx.Linear(1, 1, rngs=nnx.Rngs(seed))
    discriminator = Quadratic(nnx.Rngs(seed + 1))
    optimizer = lambda m: nnx.Optimizer(m, optax.adam(lr, b1=0.5), wrt=nnx.Param)  # noqa: E731
    return AdversarialTrainer(
        generator, discriminator, optimizer(generator), optimizer(discriminator),
        d_steps=d_steps, seed=seed, **kwargs,
    )


def make_ema(seed=0, decay=0.9, **kwargs):
    import optax

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
    return EMARegression(model, optimizer, decay=decay, seed=seed, **kwargs)
