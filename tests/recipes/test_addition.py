"""The addition recipe: the task's pieces, and a shortened run that must raise held-out
accuracy by at least 20 points (the full run's figures are in the issue notes)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen.recipes import addition as A


def _text_answer(a, b):
    return str(a + b)


def test_answer_tokens_match_python_arithmetic_on_all_pairs():
    a, b = np.meshgrid(np.arange(100), np.arange(100), indexing="ij")
    a, b = a.ravel(), b.ravel()
    prompts = A.encode_prompts(a, b)
    answers = A.answer_tokens(prompts)
    assert answers.shape == (10_000, A.ANSWER_LEN) and answers.dtype == np.int32
    for i in np.random.default_rng(0).choice(10_000, 300, replace=False):
        text = _text_answer(a[i], b[i])
        assert A.decode(prompts[i]) == f"{a[i]:02d}+{b[i]:02d}="
        assert A.decode(answers[i]) == text
        assert list(answers[i]).index(A.EOS) == len(text)  # the end token right after
    # The jittable (JAX) path agrees with the NumPy one.
    np.testing.assert_array_equal(jax.jit(A.answer_tokens)(jnp.asarray(prompts)), answers)


def test_reward_is_one_only_for_the_exact_answer():
    prompts = jnp.asarray(A.encode_prompts([23, 99, 5], [45, 99, 7]))
    right = A.answer_tokens(prompts)
    reward = A.AdditionReward()
    np.testing.assert_array_equal(reward(right, prompts), [1.0, 1.0, 1.0])
    wrong_digit = right.at[0, 0].set(A.DIGIT0 + 7)
    no_end = right.at[2, 2].set(A.DIGIT0)  # "12" followed by a digit instead of EOS
    extra = right.at[0, 3].set(A.DIGIT0)  # a token after the end
    for bad in (wrong_digit, no_end, extra):
        assert float(jnp.sum(reward(bad, prompts))) == 2.0
    with pytest.raises(ValueError, match="conditions"):
        reward(right)


def test_split_is_seeded_and_disjoint():
    train, held = A.split_pairs(0, 1000)
    train2, held2 = A.split_pairs(0, 1000)
    np.testing.assert_array_equal(held, held2)
    assert len(train) == 9000 and len(held) == 1000
    assert not set(map(tuple, train)) & set(map(tuple, held))
    assert not np.array_equal(A.split_pairs(1, 1000)[1], held)


def test_batches_depend_only_on_seed_and_step():
    train, _ = A.split_pairs(0, 1000)
    gen = A.pretrain_batches(train, 8, seed=3)
    batches = [next(gen) for _ in range(5)]
    resumed = next(A.pretrain_batches(train, 8, seed=3, start=4))
    np.testing.assert_array_equal(batches[4]["tokens"], resumed["tokens"])
    b = batches[0]
    # Targets: the answer through EOS, never the prompt or the padding after EOS.
    answers = b["tokens"][:, A.PROMPT_LEN :]
    np.testing.assert_array_equal(b["mask"][:, : A.PROMPT_LEN], 0)
    for row, m in zip(answers, b["mask"][:, A.PROMPT_LEN :], strict=True):
        end = list(row).index(A.EOS)
        np.testing.assert_array_equal(m, np.arange(A.ANSWER_LEN) <= end)
    p1 = next(A.prompt_batches(train, 4, seed=3, start=2))["observations"]
    p2 = list(zip(range(3), A.prompt_batches(train, 4, seed=3), strict=False))[2][1]
    np.testing.assert_array_equal(p1, p2["observations"])


def test_shortened_run_raises_held_out_accuracy(tmp_path):
    config = A.AdditionConfig(
        out_dir=str(tmp_path / "run"), grpo_steps=250, progress=False, eval_every=50
    )
    summary = A.run(config, echo=lambda *_: None)
    before, after = summary["accuracy_before"], summary["accuracy_after"]
    assert 0.05 <= before <= 0.75, "pretraining should stop at partial competence"
    assert after - before >= 0.20, (before, after)
    out = tmp_path / "run"
    assert json.loads((out / "summary.json").read_text())["accuracy_after"] == after
    records = A.read_metrics(out / "metrics.jsonl")
    grpo = [r for r in records if r.get("phase") == "grpo" and "mean_reward" in r]
    assert [r["step"] for r in grpo] == list(range(250))
    evals = [r["heldout_accuracy"] for r in records if "heldout_accuracy" in r]
    assert evals[0] == before and evals[-1] == after
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from rlgen.callbacks import ModelCheckpoint

    assert ModelCheckpoint.latest_step(out / "checkpoints" / "grpo") == 250
    assert ModelCheckpoint.latest_step(out / "checkpoints" / "pretrain") == (
        summary["pretrain_steps_taken"]
    )


def test_bad_out_dir_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(A.OutputDirError, match="cannot write"):
        A.run(A.AdditionConfig(out_dir=str(blocker / "sub")))
    existing = tmp_path / "old"
    (existing / "checkpoints").mkdir(parents=True)
    with pytest.raises(A.OutputDirError, match="--resume"):
        A.run(A.AdditionConfig(out_dir=str(existing)))


def test_too_many_devices_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--devices 64"):
        A.run(A.AdditionConfig(out_dir=str(tmp_path), devices=64, plot=False))
