"""DPO specifics: training from sequences, the reference sources, every loss type
against a NumPy reference, length normalisation, SimPO, the update step and bad input.

A probe policy whose per-token log-probs *are* its parameters makes the sequence
log-probs known exactly: rows `0..B-1` of the `[2B, T]` parameters are the chosen
responses, rows `B..2B-1` the rejected ones.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlgen import algorithms as A

B, T = 6, 4
RNG = np.random.default_rng(2)
PARAMS = jnp.asarray(RNG.normal(-1.0, 0.5, (2 * B, T)), jnp.float32)
REF_PARAMS = jnp.asarray(PARAMS + RNG.normal(0.0, 0.3, (2 * B, T)), jnp.float32)
CHOSEN_LEN = np.array([4, 1, 2, 3, 4, 2])
REJECTED_LEN = np.array([2, 4, 4, 1, 3, 3])


def lengths_mask(lengths):
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)


class Probe:
    """A stand-in for a distribution: `log_prob` returns the given per-token log-probs."""

    def __init__(self, log_probs):
        self.log_probs = log_probs

    def log_prob(self, actions):
        return self.log_probs

    def entropy(self):
        return jnp.zeros_like(self.log_probs)


def probe_fn(params, rows):
    return Probe(params[rows])


def seq_batch(**extra):
    out = {
        "chosen_observations": jnp.arange(B),
        "chosen_actions": jnp.zeros((B, T), jnp.int32),
        "rejected_observations": jnp.arange(B, 2 * B),
        "rejected_actions": jnp.zeros((B, T), jnp.int32),
        "chosen_mask": jnp.asarray(lengths_mask(CHOSEN_LEN)),
        "rejected_mask": jnp.asarray(lengths_mask(REJECTED_LEN)),
    }
    out.update(extra)
    return out


def sums(params):
    """Float64 summed sequence log-probs (chosen, rejected) of the probe batch."""
    p = np.asarray(params, np.float64)
    return ((p[:B] * lengths_mask(CHOSEN_LEN)).sum(1), (p[B:] * lengths_mask(REJECTED_LEN)).sum(1))


def ref_keys():
    c, r = sums(REF_PARAMS)
    return {
        "ref_chosen_log_probs": jnp.asarray(c, jnp.float32),
        "ref_rejected_log_probs": jnp.asarray(r, jnp.float32),
    }


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_dpo(config, params, ref_params):
    """Float64 NumPy losses and metrics of every DPO loss type (module doc of ops)."""
    c, r = sums(params)
    if config.loss_type == "simpo":
        cr = rr = np.zeros(B)
    else:
        cr, rr = sums(ref_params)
    if config.loss_type in ("ipo", "simpo") or config.length_normalize:
        c, cr, r, rr = c / CHOSEN_LEN, cr / CHOSEN_LEN, r / REJECTED_LEN, rr / REJECTED_LEN
    beta, e = config.beta, config.label_smoothing
    h = (c - cr) - (r - rr)
    losses = {
        "sigmoid": -(1 - e) * log_sigmoid(beta * h) - e * log_sigmoid(-beta * h),
        "robust": (-(1 - e) * log_sigmoid(beta * h) + e * log_sigmoid(-beta * h)) / (1 - 2 * e),
        "hinge": np.maximum(0.0, 1.0 - beta * h),
        "ipo": (h - 1.0 / (2.0 * beta)) ** 2,
        "simpo": -(1 - e) * log_sigmoid(beta * h - config.simpo_gamma)
        - e * log_sigmoid(-(beta * h - config.simpo_gamma)),
    }[config.loss_type]
    chosen, rejected = beta * (c - cr), beta * (r - rr)
    return {
        "loss": losses.mean(),
        "dpo_loss": losses.mean(),
        "reward_accuracy": np.mean(chosen - rejected > 0),
        "chosen_reward": chosen.mean(),
        "rejected_reward": rejected.mean(),
        "reward_margin": (chosen - rejected).mean(),
    }


LOSS_CONFIGS = {
    "sigmoid": A.DPOConfig(beta=0.5),
    "cdpo": A.DPOConfig(beta=0.5, label_smoothing=0.2),
    "robust": A.DPOConfig(loss_type="robust", beta=0.3, label_smoothing=0.1),
    "hinge": A.DPOConfig(loss_type="hinge", beta=2.0),
    "ipo": A.DPOConfig(loss_type="ipo", beta=0.4),
    "simpo": A.DPOConfig(reference_free=True, beta=2.0, simpo_gamma=0.3, label_smoothing=0.1),
    "sigmoid-length-normalized": A.DPOConfig(beta=0.5, length_normalize=True),
}


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_sequence_loss_matches_numpy(name):
    config = LOSS_CONFIGS[name]
    expected = np_dpo(config, PARAMS, REF_PARAMS)
    if config.uses_reference:  # both reference sources give the same numbers
        runs = [
            A.dpo_sequence_loss(PARAMS, seq_batch(), probe_fn, config, ref_params=REF_PARAMS),
            A.dpo_sequence_loss(
                PARAMS,
                seq_batch(**ref_keys()),
                probe_fn,
                dataclasses.replace(config, reference="batch"),
            ),
        ]
    else:
        runs = [A.dpo_sequence_loss(PARAMS, seq_batch(), probe_fn, config)]
    for loss, metrics in runs:
        assert set(metrics) == set(expected)
        np.testing.assert_allclose(loss, expected["loss"], rtol=1e-5, atol=1e-6)
        for key, value in expected.items():
            np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert 0.0 < float(expected["reward_accuracy"]) < 1.0  # the data is not one-sided


def test_length_normalize_changes_the_loss_as_documented():
    summed = A.DPOConfig(beta=0.5, reference="batch")
    averaged = dataclasses.replace(summed, length_normalize=True)
    loss_sum, _ = A.dpo_sequence_loss(PARAMS, seq_batch(**ref_keys()), probe_fn, summed)
    loss_avg, _ = A.dpo_sequence_loss(PARAMS, seq_batch(**ref_keys()), probe_fn, averaged)
    np.testing.assert_allclose(loss_sum, np_dpo(summed, PARAMS, REF_PARAMS)["loss"], rtol=1e-5)
    np.testing.assert_allclose(loss_avg, np_dpo(averaged, PARAMS, REF_PARAMS)["loss"], rtol=1e-5)
    assert abs(float(loss_sum) - float(loss_avg)) > 1e-3
    # With equal lengths, averaging is the same as summing with beta / length.
    full = {"chosen_mask": jnp.ones((B, T)), "rejected_mask": jnp.ones((B, T))}
    refs = {
        "ref_chosen_log_probs": REF_PARAMS[:B].sum(1),
        "ref_rejected_log_probs": REF_PARAMS[B:].sum(1),
    }
    a, _ = A.dpo_sequence_loss(PARAMS, seq_batch(**full, **refs), probe_fn, averaged)
    s, _ = A.dpo_sequence_loss(
        PARAMS, seq_batch(**full, **refs), probe_fn, dataclasses.replace(summed, beta=0.5 / T)
    )
    np.testing.assert_allclose(a, s, rtol=1e-5)


@pytest.mark.parametrize(
    ("loss_type", "smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.3), ("robust", 0.2)]
)
def test_loss_is_log_2_when_policy_equals_reference(loss_type, smoothing):
    config = A.DPOConfig(loss_type=loss_type, label_smoothing=smoothing, beta=0.7)
    chosen, rejected = (jnp.asarray(RNG.normal(-5.0, 2.0, B), jnp.float32) for _ in range(2))
    lp_batch = {
        "chosen_log_probs": chosen,
        "rejected_log_probs": rejected,
        "ref_chosen_log_probs": chosen,
        "ref_rejected_log_probs": rejected,
    }
    loss, metrics = A.dpo_loss(lp_batch, config)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    assert float(metrics["reward_margin"]) == 0.0
    assert float(metrics["reward_accuracy"]) == 0.0
    seq_loss, _ = A.dpo_sequence_loss(PARAMS, seq_batch(), probe_fn, config, ref_params=PARAMS)
    np.testing.assert_allclose(seq_loss, np.log(2.0), rtol=1e-6)
    other, _ = A.dpo_loss({**lp_batch, "ref_chosen_log_probs": chosen - 1.0}, config)
    assert abs(float(other) - np.log(2.0)) > 1e-3


def test_dpo_loss_log_prob_form_matches_the_sequence_form():
    c, r = sums(PARAMS)
    lp_batch = {
        "chosen_log_probs": jnp.asarray(c, jnp.float32),
        "rejected_log_probs": jnp.asarray(r, jnp.float32),
        **ref_keys(),
    }
    config = A.DPOConfig(beta=0.5)
    loss, metrics = A.dpo_loss(lp_batch, config)
    expected = np_dpo(config, PARAMS, REF_PARAMS)
    for key, value in expected.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    ipo = A.DPOConfig(loss_type="ipo", beta=0.4)
    lengths = {
        "chosen_lengths": jnp.asarray(CHOSEN_LEN),
        "rejected_lengths": jnp.asarray(REJECTED_LEN),
    }
    loss, _ = A.dpo_loss({**lp_batch, **lengths}, ipo)
    np.testing.assert_allclose(loss, np_dpo(ipo, PARAMS, REF_PARAMS)["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="chosen_lengths"):
        A.dpo_loss(lp_batch, ipo)


# ---------------------------------------------------------------- the reference


def test_only_log_prob_keys_name_the_sequence_keys_needed():
    algo = A.dpo(probe_fn, optax.sgd(0.1), A.DPOConfig())
    c, r = sums(PARAMS)
    lp_batch = {
        "chosen_log_probs": jnp.asarray(c, jnp.float32),
        "rejected_log_probs": jnp.asarray(r, jnp.float32),
        **ref_keys(),
    }
    pattern = (
        "needs sequences.*'chosen_observations', 'chosen_actions', "
        "'rejected_observations', 'rejected_actions'"
    )
    with pytest.raises(ValueError, match=pattern):
        algo.update(algo.init(PARAMS), lp_batch)
    with pytest.raises(ValueError, match=pattern):
        jax.jit(algo.update)(algo.init(PARAMS), lp_batch)


def test_reference_batch_requires_the_reference_keys():
    algo = A.dpo(probe_fn, optax.sgd(0.1), A.DPOConfig(reference="batch"))
    assert algo.init(PARAMS).ref_params == ()  # nothing frozen: the batch brings it
    with pytest.raises(ValueError, match=r"\['ref_chosen_log_probs', 'ref_rejected_log_probs'\]"):
        jax.eval_shape(algo.update, algo.init(PARAMS), seq_batch())
    only_one = {"ref_chosen_log_probs": ref_keys()["ref_chosen_log_probs"]}
    with pytest.raises(ValueError, match="ref_rejected_log_probs"):
        jax.eval_shape(algo.update, algo.init(PARAMS), seq_batch(**only_one))
    with pytest.raises(ValueError, match="ref_chosen_log_probs.*shape"):
        jax.eval_shape(
            algo.update,
            algo.init(PARAMS),
            seq_batch(**{**ref_keys(), "ref_chosen_log_probs": jnp.zeros(B + 1)}),
        )


def test_reference_initial_rejects_reference_keys():
    algo = A.dpo(probe_fn, optax.sgd(0.1), A.DPOConfig())
    with pytest.raises(ValueError, match="reference"):
        jax.eval_shape(algo.update, algo.init(PARAMS), seq_batch(**ref_keys()))
    with pytest.raises(ValueError, match="ref_params"):
        A.dpo_sequence_loss(PARAMS, seq_batch(), probe_fn, A.DPOConfig())


def test_simpo_rejects_reference_keys():
    config = A.DPOConfig(reference_free=True)
    algo = A.dpo(probe_fn, optax.sgd(0.1), config)
    assert algo.init(PARAMS).ref_params == ()
    no_reference = r"reference_free=True\) takes no reference.*ref_chosen_log_probs"
    with pytest.raises(ValueError, match=no_reference):
        jax.eval_shape(algo.update, algo.init(PARAMS), seq_batch(**ref_keys()))
    c, r = sums(PARAMS)
    lp_batch = {
        "chosen_log_probs": jnp.asarray(c, jnp.float32),
        "rejected_log_probs": jnp.asarray(r, jnp.float32),
    }
    with pytest.raises(ValueError, match="simpo.*takes no reference.*ref_"):
        A.dpo_loss({**lp_batch, **ref_keys()}, config)


def test_update_steps_on_the_sequence_loss_and_keeps_the_reference_frozen():
    config = A.DPOConfig(beta=0.5, max_grad_norm=10.0)
    algo = A.dpo(probe_fn, optax.sgd(1.0), config)
    state = algo.init(PARAMS)
    step = jax.jit(algo.update)
    new_state, metrics = step(state, seq_batch())
    loss, grad = jax.value_and_grad(
        lambda p: A.dpo_sequence_loss(p, seq_batch(), probe_fn, config, ref_params=PARAMS)[0]
    )(PARAMS)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], np.log(2.0), rtol=1e-6)  # policy == reference
    np.testing.assert_allclose(new_state.params, PARAMS - grad, rtol=1e-5, atol=1e-6)
    newer_state, newer_metrics = step(new_state, seq_batch())
    np.testing.assert_array_equal(newer_state.ref_params, PARAMS)
    assert float(newer_metrics["reward_margin"]) > 0.0  # chosen now preferred
    assert float(newer_metrics["loss"]) < np.log(2.0)
    # Only the response tokens get a gradient: masked tokens of the table stay put.
    m = np.concatenate([lengths_mask(CHOSEN_LEN), lengths_mask(REJECTED_LEN)])
    moved = np.asarray(newer_state.params) != np.asarray(PARAMS)
    np.testing.assert_array_equal(moved, m > 0)


# ------------------------------------------------------------------------ bad input


def eval_update(b, config=None):
    config = A.DPOConfig() if config is None else config
    algo = A.dpo(probe_fn, optax.sgd(0.1), config)
    return jax.eval_shape(algo.update, algo.init(PARAMS), b)


def test_missing_batch_key_lists_the_required_keys():
    b = seq_batch()
    del b["rejected_actions"]
    with pytest.raises(
        ValueError,
        match=r"missing key\(s\) \['rejected_actions'\]; required "
        r"keys are \['chosen_observations', 'chosen_actions', "
        r"'rejected_observations', 'rejected_actions'\]",
    ):
        eval_update(b)


def test_bad_batches_are_clear_errors():
    with pytest.raises(ValueError, match="unknown key.*'prompt'"):
        eval_update(seq_batch(prompt=jnp.zeros(B)))
    with pytest.raises(ValueError, match="chosen_mask.*shape"):
        eval_update(seq_batch(chosen_mask=jnp.ones((B, T + 1))))
    with pytest.raises(ValueError, match="rejected_mask.*shape"):
        eval_update(seq_batch(rejected_mask=jnp.ones((B - 1, T))))
    with pytest.raises(ValueError, match="rejected_log_probs.*shape"):
        eval_update(
            seq_batch(
                rejected_observations=jnp.arange(B, 2 * B - 1), rejected_mask=jnp.ones((B - 1, T))
            )
        )
    with pytest.raises(ValueError, match=r"missing key\(s\) \['rejected_log_probs'\]"):
        A.dpo_loss({"chosen_log_probs": jnp.zeros(B)})


DPO_BAD_FIELDS = [
    ({"beta": 0.0}, ValueError, "beta"),
    ({"beta": -1.0}, ValueError, "beta"),
    ({"label_smoothing": 0.6}, ValueError, "label_smoothing"),
    ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, ValueError, "label_smoothing"),
    ({"loss_type": "hinge", "label_smoothing": 0.1}, ValueError, "label_smoothing"),
    ({"reference_free": 1}, TypeError, "reference_free"),
    ({"loss_type": "kto"}, ValueError, "loss_type"),
    ({"reference_free": True, "loss_type": "sigmoid"}, ValueError, "reference_free"),
    ({"loss_type": "simpo"}, ValueError, "reference_free=True"),
    ({"reference_free": True, "simpo_gamma": float("nan")}, ValueError, "simpo_gamma"),
    ({"reference_free": True, "simpo_gamma": "0.5"}, TypeError, "simpo_gamma"),
    ({"length_normalize": 1}, TypeError, "length_normalize"),
    ({"loss_type": "ipo", "length_normalize": True}, ValueError, "length_normalize"),
    ({"reference": "model"}, ValueError, "reference"),
    ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm"),
]


@pytest.mark.parametrize(("fields", "error", "match"), DPO_BAD_FIELDS)
def test_config_validates_every_field(fields, error, match):
    with pytest.raises(error, match=match):
        A.DPOConfig(**fields)


def test_config_defaults_and_loss_type_selection():
    config = A.DPOConfig()
    assert (config.beta, config.label_smoothing, config.reference_free) == (0.1, 0.0, False)
    assert config.loss_type == "sigmoid" and config.uses_reference
    simpo = A.DPOConfig(reference_free=True)
    assert simpo.loss_type == "simpo" and not simpo.uses_reference


def test_factory_rejects_another_config_type():
    with pytest.raises(TypeError, match="DPOConfig"):
        A.dpo(probe_fn, optax.sgd(0.1), A.GRPOConfig())


_NEW_LOSS_TYPE = """
import jax, jax.numpy as jnp, optax, distrax
import rlgen.ops as ops
import rlgen.ops.preference as preference

def exp_loss(chosen, rejected, beta, e, simpo_gamma):
    return jnp.exp(-beta * (chosen - rejected))

new = preference.PreferenceLossType("exp", exp_loss, formula="exp(-beta h)", paper="a test")
# what adding one entry to the registry in rlgen/ops/preference.py does, before any import
preference.LOSS_TYPES = ops.PREFERENCE_LOSS_TYPES = {**preference.LOSS_TYPES, "exp": new}

from rlgen.algorithms import DPOConfig, dpo
config = DPOConfig(loss_type="exp", beta=1.0)
assert config.uses_reference
algo = dpo(lambda p, obs: distrax.Categorical(logits=p[obs]), optax.sgd(0.5), config)
state = algo.init(jnp.zeros((1, 2)))
batch = {"chosen_observations": jnp.zeros(4, int), "chosen_actions": jnp.ones(4, int),
         "rejected_observations": jnp.zeros(4, int), "rejected_actions": jnp.zeros(4, int)}
first = None
for _ in range(20):
    state, metrics = jax.jit(algo.update)(state, batch)
    first = float(metrics["loss"]) if first is None else first
assert abs(first - 1.0) < 1e-6, first  # exp(0) while the policy equals the reference
assert float(metrics["loss"]) < 0.2 * first and float(metrics["reward_accuracy"]) == 1.0
try:
    DPOConfig(loss_type="exp", label_smoothing=0.1)
except ValueError as err:
    assert "label_smoothing" in str(err)
else:
    raise AssertionError("label smoothing was accepted by a loss that does not use it")
print("ok")
"""


def test_a_new_loss_type_is_one_registry_entry():
    """DPO, its config and its validation read everything about a loss type from the
    registry of `rlgen.ops.preference`: an entry added there trains with no other edit."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _NEW_LOSS_TYPE], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_one_stacked_forward_and_two_separate_ones_give_the_same_loss_and_gradient():
    """Sides of one shape run through the policy once, stacked; sides of different shapes
    (here the rejected observations carry an extra axis) run separately: same values."""
    calls = []

    def counting(params, rows):
        calls.append(rows.shape)
        return Probe(params[rows.reshape(-1)])

    config = A.DPOConfig(reference="batch")
    grad = jax.grad(lambda p, b: A.dpo_sequence_loss(p, b, counting, config)[0])
    stacked = grad(PARAMS, seq_batch(**ref_keys()))
    assert calls == [(2 * B,)]  # one forward pass of both sides
    calls.clear()
    apart = seq_batch(rejected_observations=jnp.arange(B, 2 * B)[:, None], **ref_keys())
    separate = grad(PARAMS, apart)
    assert calls == [(B,), (B, 1)]
    np.testing.assert_allclose(stacked, separate, rtol=1e-6, atol=1e-7)
    assert np.abs(np.asarray(stacked)).max() > 0
