"""`AutoregressiveTrainer`: learning a copy task, the loss mask, label smoothing against a
NumPy reference, scheduled sampling (0 is teacher forcing, schedules evaluated on the
step without recompiling), `generate` and the errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlgen.models import TransformerConfig, TransformerLM
from rlgen.trainers import AutoregressiveConfig, AutoregressiveTrainer

V, L = 8, 8


def lm(seed=0):
    config = TransformerConfig(vocab_size=V, max_len=L, d_model=32, num_heads=2, num_layers=1)
    return TransformerLM(config, rngs=nnx.Rngs(seed))


def make(config=None, seed=0, lr=1e-2):
    model = lm(seed)
    return AutoregressiveTrainer(
        model, nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param), config
    )


def copy_batch(seed, rows=32):
    """``[a0 a1 a2 a3 a0 a1 a2 a3]``; only the copied half (positions 5..7) is predicted
    (position 4 cannot be known from the first half)."""
    half = np.random.default_rng(seed).integers(1, V, (rows, L // 2))
    tokens = jnp.asarray(np.concatenate([half, half], axis=1), jnp.int32)
    mask = jnp.asarray(np.broadcast_to(np.arange(L) >= L // 2 + 1, (rows, L)), jnp.float32)
    return {"tokens": tokens, "mask": mask}


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_losses(model, tokens, eps=0.0):
    """Per-token smoothed cross-entropy and NLL of next-token prediction, float64."""
    logits = jax.jit(lambda t: model(t))(tokens[:, :-1])
    log_p = np_log_softmax(logits)
    targets = np.asarray(tokens[:, 1:])
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    smoothed = (1 - eps) * nll + eps * -log_p.mean(-1)
    return smoothed, nll, np.argmax(np.asarray(logits), -1) == targets


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def test_copy_task_learns_and_generalises():
    trainer = make()
    train = copy_batch(0)
    first = trainer.train_step(train)
    assert set(first) == {"loss", "nll", "token_accuracy", "sampling_prob", "skipped"}
    assert float(first["token_accuracy"]) < 0.4
    for _ in range(60):
        last = trainer.train_step(train)
    assert float(last["loss"]) < 0.05 * float(first["loss"])
    assert float(last["token_accuracy"]) == 1.0
    assert float(last["sampling_prob"]) == 0.0
    # held-out rows are copied too (the model learned to copy, not the rows)
    test = copy_batch(1)
    _, nll, correct = np_losses(trainer.model, test["tokens"])
    mask = np.asarray(test["mask"])[:, 1:]
    assert masked_mean(correct, mask) > 0.95
    assert trainer._compiled_update._cache_size() == 1


def test_mask_restricts_the_loss():
    trainer = make()
    batch = copy_batch(2, rows=8)
    start = trainer.checkpoint_state()
    m = trainer.train_step(batch)
    # the loss is the masked mean of the per-token NLL (targets 1..L-1, mask[:, 1:])
    smoothed, nll, correct = np_losses(lm(0), batch["tokens"])
    mask = np.asarray(batch["mask"])[:, 1:]
    np.testing.assert_allclose(float(m["loss"]), masked_mean(smoothed, mask), rtol=1e-5)
    np.testing.assert_allclose(float(m["nll"]), masked_mean(nll, mask), rtol=1e-5)
    np.testing.assert_allclose(float(m["token_accuracy"]), masked_mean(correct, mask), rtol=1e-6)
    assert abs(float(m["loss"]) - nll.mean()) > 1e-4  # the unmasked mean differs

    # A target outside the mask does not count: mask out the last position (a target
    # that is no model input), then changing that token changes neither loss nor update.
    cut = {**batch, "mask": batch["mask"].at[:, -1].set(0.0)}
    trainer.load_checkpoint_state(start)
    m_cut = trainer.train_step(cut)
    changed = {**cut, "tokens": cut["tokens"].at[:, -1].set((cut["tokens"][:, -1] + 1) % V)}
    trainer.load_checkpoint_state(start)
    m_changed = trainer.train_step(changed)
    np.testing.assert_allclose(float(m_changed["loss"]), float(m_cut["loss"]), rtol=1e-6)
    after_cut = trainer.state.params
    # ... while the same change under the full mask does change the loss
    trainer.load_checkpoint_state(start)
    m_full = trainer.train_step({**batch, "tokens": changed["tokens"]})
    assert abs(float(m_full["loss"]) - float(m["loss"])) > 1e-3
    # masked-out targets get no gradient: the update equals the one without the change
    trainer.load_checkpoint_state(start)
    trainer.train_step(cut)
    for a, b in zip(jax.tree.leaves(trainer.state.params), jax.tree.leaves(after_cut), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert trainer._compiled_update._cache_size() == 1
    # without a mask, every next token counts
    trainer.load_checkpoint_state(start)
    m_all = trainer.train_step({"tokens": batch["tokens"]})
    np.testing.assert_allclose(float(m_all["loss"]), nll.mean(), rtol=1e-5)


def test_label_smoothing_follows_the_formula():
    eps = 0.2
    trainer = make(AutoregressiveConfig(label_smoothing=eps))
    batch = copy_batch(3, rows=8)
    m = trainer.train_step(batch)
    smoothed, nll, _ = np_losses(lm(0), batch["tokens"], eps)
    mask = np.asarray(batch["mask"])[:, 1:]
    np.testing.assert_allclose(float(m["loss"]), masked_mean(smoothed, mask), rtol=1e-5)
    np.testing.assert_allclose(float(m["nll"]), masked_mean(nll, mask), rtol=1e-5)
    assert float(m["loss"]) != pytest.approx(float(m["nll"]), abs=1e-3)


def test_scheduled_sampling_zero_is_teacher_forcing_and_schedules_follow_the_step():
    batch = copy_batch(4, rows=8)
    teacher = make()
    # a schedule that starts at 0 (the second pass sees the true tokens) and then rises
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4, transition_begin=2)
    sampled = make(AutoregressiveConfig(scheduled_sampling=schedule, greedy_sampling=True))
    probs = []
    for step in range(8):
        mt, ms = teacher.train_step(batch), sampled.train_step(batch)
        probs.append(float(ms["sampling_prob"]))
        assert float(mt["sampling_prob"]) == 0.0
        if step < 3:  # prob 0 at steps 0..2: exactly teacher forcing, bitwise
            for k in mt:
                assert float(mt[k]) == float(ms[k]), (step, k)
            for a, b in zip(
                jax.tree.leaves(teacher.state.params),
                jax.tree.leaves(sampled.state.params),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(probs, [float(schedule(s)) for s in range(8)], rtol=1e-6)
    assert probs[-1] == 1.0 and probs[3] == pytest.approx(0.25)
    # once the probability is positive, training differs from teacher forcing
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(teacher.state.params),
            jax.tree.leaves(sampled.state.params),
            strict=True,
        )
    )
    assert diff > 1e-4
    # the schedule's value is traced: the step compiled once
    assert sampled._compiled_update._cache_size() == 1
    # the schedule follows the restored step after a checkpoint load
    start = sampled.checkpoint_state()
    sampled.train_step(batch)
    sampled.load_checkpoint_state(start)
    assert float(sampled.train_step(batch)["sampling_prob"]) == float(schedule(8))


def test_constant_sampling_probability_one_feeds_predictions():
    """With prob 1 and greedy, the loss is that of the model on its own argmax inputs."""
    trainer = make(AutoregressiveConfig(scheduled_sampling=1.0, greedy_sampling=True))
    batch = copy_batch(5, rows=8)
    m = trainer.train_step(batch)
    model = lm(0)
    tokens = batch["tokens"]
    first = jax.jit(lambda t: model(t))(tokens[:, :-1])
    mixed = jnp.concatenate([tokens[:, :1], jnp.argmax(first[:, :-1], -1)], axis=1)
    logits = jax.jit(lambda t: model(t))(mixed)
    nll = -np.take_along_axis(np_log_softmax(logits), np.asarray(tokens[:, 1:])[..., None], -1)
    mask = np.asarray(batch["mask"])[:, 1:]
    np.testing.assert_allclose(float(m["loss"]), masked_mean(nll[..., 0], mask), rtol=1e-5)
    assert float(m["sampling_prob"]) == 1.0


def test_generate_delegates_to_the_model():
    trainer = make()
    prompts = jnp.asarray(np.random.default_rng(6).integers(0, V, (3, 2)), jnp.int32)
    key = jax.random.key(0)
    got = trainer.generate(prompts, key, max_new_tokens=4, temperature=0.7, top_k=3)
    want = trainer.model.generate(prompts, key, max_new_tokens=4, temperature=0.7, top_k=3)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)

    class NoGenerate(nnx.Module):
        def __init__(self):
            self.embed = nnx.Embed(V, V, rngs=nnx.Rngs(0))

        def __call__(self, tokens):
            return self.embed(tokens)

    bare = NoGenerate()
    plain = AutoregressiveTrainer(bare, nnx.Optimizer(bare, optax.sgd(0.1), wrt=nnx.Param))
    with pytest.raises(TypeError, match=r"NoGenerate has no `generate\(prompts, key"):
        plain.generate(prompts, key, max_new_tokens=2)


def test_bad_batches_and_configs():
    trainer = make()
    tokens = copy_batch(7, rows=4)["tokens"]
    with pytest.raises(ValueError, match=r"needs 'tokens'.*got keys \['labels', 'tokens'\]"):
        trainer.train_step({"tokens": tokens, "labels": tokens})
    with pytest.raises(ValueError, match=r"needs 'tokens'.*got keys \['inputs'\]"):
        trainer.train_step({"inputs": tokens})
    with pytest.raises(ValueError, match="at least 2 positions"):
        trainer.train_step({"tokens": tokens[:, :1]})
    with pytest.raises((TypeError, ValueError), match="`tokens`"):
        trainer.train_step({"tokens": tokens.astype(jnp.float32)})
    with pytest.raises(ValueError, match="`tokens`"):
        trainer.train_step({"tokens": tokens[0]})
    with pytest.raises(ValueError, match="`mask`"):
        trainer.train_step({"tokens": tokens, "mask": jnp.ones((4, L - 1))})
    assert trainer.step == 0

    with pytest.raises(ValueError, match="`label_smoothing`"):
        AutoregressiveConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="`scheduled_sampling`"):
        AutoregressiveConfig(scheduled_sampling=1.5)
    with pytest.raises(TypeError, match="`greedy_sampling`"):
        AutoregressiveConfig(greedy_sampling=1)
    with pytest.raises(ValueError, match="`max_grad_norm`"):
        AutoregressiveConfig(max_grad_norm=0.0)
    model = lm()
    with pytest.raises(TypeError, match="AutoregressiveConfig"):
        AutoregressiveTrainer(
            model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), {"label_smoothing": 0.1}
        )
