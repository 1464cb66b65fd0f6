"""The contract every algorithm keeps, tested the way Optax tests its optimisers.

One suite, run over REINFORCE, several GRPO variants and three DPO loss types:

* the jitted `update` compiles once (a second call, and a call with a new learning rate
  held in the optimiser state, reuse the compiled program);
* the state's tree structure, shapes and dtypes are the same before and after `update`;
* `update` runs as a `lax.scan` carry, under `vmap` over seeds (params and batches) and
  over a hyperparameter (the learning rate, via `optax.inject_hyperparams`), and each
  mapped lane equals the plain jitted update applied step by step;
* the metrics are exactly the algorithm's `METRICS`, each a 0-d float32 array.

Then the composition and numerics claims: data parallelism under
`shard_map` on 8 CPU devices equals one device; bfloat16 params give float32 losses;
huge log-ratios stay finite; all-equal-reward groups do not move the params;
non-finite rewards are reported, not trained on.

The task is a table policy: `params[prompt]` are `[T, V]` logits of a T-token response.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend import core as jax_core
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rlgen import algorithms as A

K, T, V, G = 4, 4, 5, 4  # prompts, response length, vocabulary, group size
B = 8  # rows per batch: 2 prompts x 4 completions (GRPO), or 8 preference pairs (DPO)
STEPS = 2  # scan length

METRIC_KEYS = {  # defined once, by the algorithms
    "reinforce": set(A.REINFORCE_METRICS),
    "grpo": set(A.GRPO_METRICS),
    "ppo": set(A.PPO_METRICS),
    "dpo": set(A.DPO_METRICS),
}


def policy_fn(params, prompts):
    return A.TokenCategorical(params[prompts])


def ppo_policy_fn(params, observations):
    """The same table policy on per-step observations `[B, T]` (each row's prompt id,
    repeated), with a value head read off the logits (so values train too)."""
    logits = params[observations[:, 0]]
    return A.TokenCategorical(logits), jnp.mean(logits, axis=-1)


def ppo_batch(key, rows=B):
    """Per-step rewards, bootstrap values, behaviour log-probs, episode ends, ragged masks."""
    k = jax.random.split(key, 6)
    return {
        "observations": jnp.repeat(jax.random.randint(k[0], (rows, 1), 0, K), T, axis=1),
        "actions": jax.random.randint(k[1], (rows, T), 0, V),
        "rewards": jax.random.normal(k[2], (rows, T)),
        "values": jax.random.normal(k[3], (rows, T + 1)),
        "log_probs": -jnp.log(V) + 0.3 * jax.random.normal(k[4], (rows, T)),
        "dones": jax.random.bernoulli(k[5], 0.2, (rows, T)).astype(jnp.float32),
        "mask": ragged_mask(k[5], rows),
    }


def ragged_mask(key, rows):
    lengths = jax.random.randint(key, (rows,), 1, T + 1)
    return (jnp.arange(T)[None, :] < lengths[:, None]).astype(jnp.float32)


def rl_batch(key, *, old=False, group=G, rows=B):
    """Contiguous groups of `group` completions per prompt, ragged masks, random rewards."""
    k = jax.random.split(key, 5)
    prompts = jnp.repeat(jax.random.randint(k[0], (rows // group,), 0, K), group)
    batch = {
        "observations": prompts,
        "actions": jax.random.randint(k[1], (rows, T), 0, V),
        "rewards": jax.random.normal(k[2], (rows,)),
        "mask": ragged_mask(k[3], rows),
    }
    if old:  # off-policy behaviour log-probs and a reference: ratio != 1 and KL > 0
        noise = 0.3 * jax.random.normal(k[4], (2, rows, T))
        batch["log_probs"] = -jnp.log(V) + noise[0]
        batch["ref_log_probs"] = -jnp.log(V) + noise[1]
    return batch


def dpo_batch(key, rows=B):
    k = jax.random.split(key, 5)
    prompts = jax.random.randint(k[0], (rows,), 0, K)
    return {
        "chosen_observations": prompts,
        "chosen_actions": jax.random.randint(k[1], (rows, T), 0, V),
        "rejected_observations": prompts,
        "rejected_actions": jax.random.randint(k[2], (rows, T), 0, V),
        "chosen_mask": ragged_mask(k[3], rows),
        "rejected_mask": ragged_mask(k[4], rows),
    }


def init_params(seed, dtype=jnp.float32):
    return (0.5 * jax.random.normal(jax.random.key(seed), (K, T, V))).astype(dtype)


# name: (family, factory, config, batch maker)
CASES = {
    "reinforce": ("reinforce", A.reinforce, A.REINFORCEConfig(baseline="mean"), rl_batch),
    "grpo": ("grpo", A.grpo, A.GRPOConfig(), functools.partial(rl_batch, old=True)),
    "grpo-dapo-drgrpo": (
        "grpo",
        A.grpo,
        A.GRPOConfig(loss_aggregation="token-mean", epsilon_high=0.28, scale_rewards="none"),
        rl_batch,
    ),
    "grpo-gspo": ("grpo", A.grpo, A.GRPOConfig(importance_sampling_level="sequence"), rl_batch),
    "grpo-kl-initial": ("grpo", A.grpo, A.GRPOConfig(reference="initial"), rl_batch),
    "grpo-iterations": (
        "grpo",
        A.grpo,
        A.GRPOConfig(num_iterations=2),
        functools.partial(rl_batch, old=True),
    ),
    "grpo-accumulation": (
        "grpo",
        A.grpo,
        A.GRPOConfig(gradient_accumulation_steps=2),
        functools.partial(rl_batch, old=True),
    ),
    "ppo": (
        "ppo",
        A.ppo,
        A.PPOConfig(num_epochs=2, num_minibatches=2, clip_value=0.2, target_kl=1.0),
        ppo_batch,
    ),
    "dpo-sigmoid": ("dpo", A.dpo, A.DPOConfig(label_smoothing=0.1), dpo_batch),
    "dpo-ipo": ("dpo", A.dpo, A.DPOConfig(loss_type="ipo"), dpo_batch),
    "dpo-simpo": ("dpo", A.dpo, A.DPOConfig(reference_free=True), dpo_batch),
}


def set_lr(state, lr):
    """The state with the learning rate held by `optax.inject_hyperparams` replaced."""
    lr = jnp.asarray(lr, jnp.float32)
    return state._replace(opt_state=optax.tree_utils.tree_set(state.opt_state, learning_rate=lr))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6, msg=""):
    assert jax.tree.structure(a) == jax.tree.structure(b), msg
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # PPO's shuffling key
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol, err_msg=msg
        )


def signature(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


class Case:
    """One algorithm under test, its jitted update and a trace counter."""

    def __init__(self, name):
        self.family, factory, config, self.make_batch = CASES[name]
        optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=0.05)
        policy = ppo_policy_fn if self.family == "ppo" else policy_fn
        self.algo = factory(policy, optimizer, config)
        self.traces = 0

        def counted_update(state, batch):
            self.traces += 1  # a Python side effect: runs once per trace
            return self.algo.update(state, batch)

        self.update = jax.jit(counted_update)

    def init(self, seed, lr=0.05):
        return set_lr(self.algo.init(init_params(seed)), lr)

    def batch(self, seed):
        return self.make_batch(jax.random.key(seed))

    @functools.cached_property
    def first(self):
        """(initial state, updated state, metrics) of one update from seed 0."""
        state = self.init(0)
        return state, *self.update(state, self.batch(0))


@functools.cache
def get_case(name):
    return Case(name)


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", CASES)
def test_second_call_does_not_recompile(name):
    case = get_case(name)
    _, new_state, _ = case.first
    newer_state, _ = case.update(new_state, case.batch(1))
    # A swept/scheduled learning rate lives in the state: changing it is not a recompile.
    case.update(set_lr(newer_state, 0.3), case.batch(2))
    assert case.traces == 1
    assert case.update._cache_size() == 1
    assert not np.allclose(newer_state.params, new_state.params)  # the calls did work


@pytest.mark.parametrize("name", CASES)
def test_state_structure_and_dtypes_are_stable(name):
    state, new_state, _ = get_case(name).first
    assert isinstance(new_state, type(state))
    assert signature(new_state) == signature(state)
    assert int(new_state.step) == int(state.step) + 1
    assert not np.allclose(new_state.params, state.params)


@pytest.mark.parametrize("name", CASES)
def test_metrics_are_exactly_the_spec_names(name):
    case = get_case(name)
    metrics = case.first[2]
    assert set(metrics) == METRIC_KEYS[case.family]
    for key, value in metrics.items():
        assert isinstance(value, jax.Array), key
        assert value.shape == (), key
        assert value.dtype == jnp.float32, key
        assert np.isfinite(value), key


@pytest.mark.parametrize("name", CASES)
def test_scan_carry_and_vmap_over_seeds_and_learning_rate(name):
    case = get_case(name)
    algo = case.algo
    # Lanes: (params seed, batch seed, learning rate). Lanes 0 and 1 differ in the seeds
    # only, lanes 0 and 2 in the learning rate only.
    lanes = [(0, 0, 0.05), (1, 1, 0.05), (0, 0, 0.2)]
    per_lane = [[case.batch(100 * b + i) for i in range(STEPS)] for _, b, _ in lanes]
    batches = jax.tree.map(
        lambda *x: jnp.stack(x).reshape(len(lanes), STEPS, *x[0].shape),
        *[b for lane in per_lane for b in lane],
    )
    params = jnp.stack([init_params(p) for p, _, _ in lanes])
    lrs = jnp.array([lr for _, _, lr in lanes], jnp.float32)

    def run(p, lr, lane_batches):
        return jax.lax.scan(algo.update, set_lr(algo.init(p), lr), lane_batches)

    final, metrics = jax.jit(jax.vmap(run))(params, lrs, batches)
    assert metrics["loss"].shape == (len(lanes), STEPS)
    for i, (p, _, lr) in enumerate(lanes):  # each lane, one jitted update at a time
        state = case.init(p, lr)
        for step, batch in enumerate(per_lane[i]):
            state, expected = case.update(state, batch)
            got = {k: v[i, step] for k, v in metrics.items()}
            assert_trees_close(got, expected, rtol=1e-4, atol=1e-5, msg=f"lane {i} step {step}")
        lane = jax.tree.map(lambda x, i=i: x[i], final)
        assert_trees_close(lane, state, rtol=1e-4, atol=1e-5, msg=f"lane {i}")
    gap = lambda a, b: float(jnp.max(jnp.abs(final.params[a] - final.params[b])))  # noqa: E731
    assert gap(0, 2) > 1e-3  # the learning rate matters, lane by lane
    assert gap(0, 1) > 1e-3  # so do the seeds
    assert case.traces == 1  # stepping reused the one compiled update


# ------------------------------------------------------------------------- data parallel

DP_ROWS = 16  # 2 rows per device; GRPO groups of 2 never straddle devices
DP_CASES = {
    "grpo-group-token-mean": A.GRPOConfig(
        num_generations=2, scale_rewards="group", loss_aggregation="token-mean", beta=0.1
    ),
    "grpo-batch-token-mean-accumulation": A.GRPOConfig(
        num_generations=2,
        scale_rewards="batch",
        loss_aggregation="token-mean",
        beta=0.1,
        gradient_accumulation_steps=2,
    ),
    "reinforce-mean-normalized": A.REINFORCEConfig(baseline="mean", normalize_returns=True),
    "dpo-sigmoid": A.DPOConfig(),
}


def shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    from jax.experimental.shard_map import shard_map as legacy

    return legacy(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def dp_batch(config, key):
    if isinstance(config, A.DPOConfig):
        return dpo_batch(key, rows=DP_ROWS // 2)
    batch = rl_batch(key, old=isinstance(config, A.GRPOConfig), group=2, rows=DP_ROWS)
    if isinstance(config, A.REINFORCEConfig):  # per-step rewards with episode ends
        k1, k2 = jax.random.split(key)
        batch["rewards"] = jax.random.normal(k1, (DP_ROWS, T))
        batch["dones"] = jax.random.bernoulli(k2, 0.3, (DP_ROWS, T))
    return batch


@functools.cache
def data_parallel_runs():
    """Every DP case on one device and under shard_map over 8, compiled as one program."""
    mesh = Mesh(np.array(jax.devices()[:8]), ("d",))
    factory = {A.GRPOConfig: A.grpo, A.REINFORCEConfig: A.reinforce, A.DPOConfig: A.dpo}
    single, sharded, states, batches = {}, {}, {}, {}
    for i, (name, config) in enumerate(DP_CASES.items()):
        make = factory[type(config)]
        algo = make(policy_fn, optax.sgd(0.5), config)
        dp_algo = make(policy_fn, optax.sgd(0.5), dataclasses.replace(config, axis_name="d"))
        single[name] = algo.update
        sharded[name] = shard_map(
            dp_algo.update, mesh, in_specs=(P(), P("d")), out_specs=(P(), P())
        )
        states[name] = algo.init(init_params(i))
        batches[name] = dp_batch(config, jax.random.key(i))

    @jax.jit
    def both(states, batches):
        return {
            n: (single[n](states[n], batches[n]), sharded[n](states[n], batches[n]))
            for n in DP_CASES
        }

    return states, both(states, batches)


@pytest.mark.parametrize("name", DP_CASES)
def test_shard_map_over_8_devices_equals_one_device(name):
    states, runs = data_parallel_runs()
    (s1, m1), (s8, m8) = runs[name]
    assert set(m8) == set(m1)
    assert_trees_close(m8, m1, rtol=1e-4, atol=1e-6, msg="metrics")
    assert_trees_close(s8, s1, rtol=1e-4, atol=1e-6, msg="state")
    assert float(jnp.max(jnp.abs(s1.params - states[name].params))) > 1e-3


# ------------------------------------------------------------------------------ numerics


@functools.cache
def numerics_runs():
    """bfloat16 params, huge log-ratios and zero-variance groups, compiled as one program."""
    bf16 = {
        "reinforce": (A.reinforce(policy_fn, optax.sgd(0.5), A.REINFORCEConfig()), rl_batch),
        "grpo": (
            A.grpo(policy_fn, optax.sgd(0.5), A.GRPOConfig(loss_aggregation="token-mean")),
            functools.partial(rl_batch, old=True),
        ),
        "dpo": (A.dpo(policy_fn, optax.sgd(0.5), A.DPOConfig()), dpo_batch),
    }
    bf16_params = init_params(0, jnp.bfloat16)
    bf16_states = {k: a.init(bf16_params) for k, (a, _) in bf16.items()}
    bf16_batches = {k: make(jax.random.key(1)) for k, (_, make) in bf16.items()}

    huge_config = A.GRPOConfig(beta=0.1, loss_aggregation="token-mean")
    huge_algo = A.grpo(policy_fn, optax.sgd(0.1), huge_config)
    params = init_params(0)
    huge_batch = rl_batch(jax.random.key(2))
    current = policy_fn(params, huge_batch["observations"]).log_prob(huge_batch["actions"])
    signs = jnp.where(jnp.arange(B)[:, None] % 2 == 0, 1.0, -1.0)
    huge_batch["log_probs"] = current + 1e4 * signs  # ratios e^{-1e4} and e^{+1e4}
    huge_batch["ref_log_probs"] = current - 1e4 * signs

    # Zero-variance groups: each group of G rows shares one reward (groups differ).
    flat_batch = rl_batch(jax.random.key(3))
    flat_batch["rewards"] = jnp.repeat(jnp.array([0.0, 1.0]), G)
    flat = {
        scale: A.grpo(
            policy_fn,
            optax.adam(0.1),
            A.GRPOConfig(scale_rewards=scale, beta=0.0, entropy_coeff=0.0, advantage_eps=0.0),
        )
        for scale in ("group", "batch", "none")
    }
    flat["reinforce-rloo"] = A.reinforce(
        # gamma=1: equal rewards give equal returns whatever the lengths of the rows.
        policy_fn,
        optax.adam(0.1),
        A.REINFORCEConfig(baseline="rloo", entropy_coeff=0.0, gamma=1.0),
    )

    @jax.jit
    def run(bf16_states, bf16_batches, params, huge_batch, flat_batch):
        huge_loss = lambda p: A.grpo_loss(p, huge_batch, policy_fn, huge_config)  # noqa: E731
        return {
            "bf16": {k: bf16[k][0].update(bf16_states[k], bf16_batches[k]) for k in bf16},
            "huge": (
                huge_loss(params),
                jax.grad(lambda p: huge_loss(p)[0])(params),
                huge_algo.update(huge_algo.init(params), huge_batch),
            ),
            "flat": {k: a.update(a.init(params), flat_batch) for k, a in flat.items()},
        }

    out = run(bf16_states, bf16_batches, params, huge_batch, flat_batch)
    return {"bf16_states": bf16_states, "params": params, **out}


def test_bfloat16_params_give_float32_losses_and_stay_bfloat16():
    runs = numerics_runs()
    for name, (new_state, metrics) in runs["bf16"].items():
        old_state = runs["bf16_states"][name]
        assert signature(new_state) == signature(old_state), name
        assert new_state.params.dtype == jnp.bfloat16, name
        assert not np.array_equal(
            np.asarray(new_state.params, np.float32), np.asarray(old_state.params, np.float32)
        ), name
        for key, value in metrics.items():
            assert value.dtype == jnp.float32, (name, key)
            assert np.isfinite(value), (name, key)


def test_huge_log_ratios_give_finite_losses_and_params():
    (loss, metrics), grads, (new_state, update_metrics) = numerics_runs()["huge"]
    assert np.isfinite(loss)
    for tree in (metrics, grads, new_state, update_metrics):
        for leaf in jax.tree.leaves(tree):
            assert np.all(np.isfinite(leaf))
    assert float(metrics["clip_fraction"]) > 0.0  # the ratios were far outside the clip
    assert float(metrics["kl_penalty"]) > 1.0


def test_all_equal_reward_groups_leave_params_unchanged():
    """Zero-variance groups: zero advantage (never NaN), hence no policy gradient."""
    runs = numerics_runs()
    for name, (state, metrics) in runs["flat"].items():
        np.testing.assert_array_equal(state.params, runs["params"], err_msg=name)
        assert float(metrics["policy_loss"]) == 0.0, name
        assert float(metrics["mean_reward"]) == 0.5, name
        if "group_advantage_std" in metrics:
            assert float(metrics["group_advantage_std"]) == 0.0, name


# --------------------------------------------------------------------- non-finite rewards

RL_CASES = [n for n in CASES if CASES[n][0] != "dpo"]


@pytest.mark.parametrize("name", RL_CASES)
def test_nonfinite_rewards_raise_eagerly(name):
    case = get_case(name)
    state, batch = case.init(0), case.batch(0)
    for bad in (jnp.nan, jnp.inf):
        batch["rewards"] = batch["rewards"].at[3].set(bad)
        with pytest.raises(ValueError, match="rewards.*non-finite"):
            case.algo.update(state, batch)


@pytest.mark.parametrize("name", RL_CASES)
def test_nonfinite_rewards_skip_the_update_and_say_so_in_the_metrics(name):
    case = get_case(name)
    state, batch = case.init(0), case.batch(0)
    batch["rewards"] = batch["rewards"].at[3].set(jnp.nan)
    new_state, metrics = case.update(state, batch)
    assert_trees_close(new_state.params, state.params, rtol=0, atol=0)
    assert_trees_close(new_state.opt_state, state.opt_state, rtol=0, atol=0)
    assert np.isnan(metrics["mean_reward"]) and float(metrics["skipped"]) == 1.0
    # Finite rewards through the same compiled update: the params move, nothing skipped.
    moved, metrics = case.update(state, case.batch(0))
    assert not np.allclose(moved.params, state.params)
    assert float(metrics["skipped"]) == 0.0
    assert case.traces == 1


_CALLBACKS = ("callback", "debug_callback", "pure_callback", "io_callback")


def _primitives(jaxpr):
    """Every primitive name in a jaxpr, sub-jaxprs (scan, cond, jit) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax_core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize("name", list(CASES))
def test_the_update_compiles_no_host_callback(name):
    """A host callback inside the update fails on a backend with no CPU device and runs on
    every step under vmap: the reward guard is a metric (`skipped`), not a callback."""
    case = get_case(name)
    found = _primitives(jax.make_jaxpr(case.algo.update)(case.init(0), case.batch(0)).jaxpr)
    assert len(found) > 10  # the walk does see the program
    assert not found & set(_CALLBACKS), found & set(_CALLBACKS)


@pytest.mark.parametrize("name", RL_CASES)
def test_nonfinite_rewards_under_vmap_skip_only_that_lane(name):
    case = get_case(name)
    states = jax.vmap(case.init)(jnp.arange(2))
    batches = jax.vmap(case.batch)(jnp.arange(2))
    batches["rewards"] = batches["rewards"].at[0, 3].set(jnp.inf)
    new, metrics = jax.jit(jax.vmap(case.algo.update))(states, batches)
    np.testing.assert_array_equal(metrics["skipped"], [1.0, 0.0])
    assert_trees_close(new.params[0], states.params[0], rtol=0, atol=0)
    assert not np.allclose(new.params[1], states.params[1])
