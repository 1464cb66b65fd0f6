"""The addition recipe: the task's pieces, its settings, and a shortened run (in a run
folder, as the `rlgen` command runs it) that must raise held-out accuracy by at least 20
points."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlgen import cli
from rlgen.algorithms import GRPOConfig
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


def test_settings_nest_grpo_with_the_kl_to_the_pretrained_model_pinned():
    config = A.AdditionConfig()
    assert isinstance(config.grpo, GRPOConfig)
    assert config.grpo.reference == "initial"  # KL to the frozen pretrained model
    assert (config.grpo.num_generations, config.grpo.clip_param, config.grpo.beta) == (8, 0.2, 0.01)
    assert config.sampling.max_new_tokens == A.ANSWER_LEN
    with pytest.raises(ValueError, match="grpo.reference"):
        A.AdditionConfig(grpo=GRPOConfig(reference="batch"))
    with pytest.raises(ValueError, match="sampling.max_new_tokens"):
        A.AdditionConfig(sampling=dataclasses.replace(config.sampling, max_new_tokens=9))
    fields = {f.name for f in dataclasses.fields(A.AdditionConfig)}
    assert not fields & {f.name for f in dataclasses.fields(GRPOConfig)}  # nested, not copied


def test_shortened_run_raises_held_out_accuracy(tmp_path):
    config = A.AdditionConfig(grpo_steps=250, eval_every=50)
    options = cli.RunOptions(out_dir=str(tmp_path / "run"), progress=False)
    summary = cli.run_recipe("addition", config, options, echo=lambda *_: None)
    before, after = summary["accuracy_before"], summary["accuracy_after"]
    assert 0.05 <= before <= 0.75, "pretraining should stop at partial competence"
    assert after - before >= 0.20, (before, after)
    out = tmp_path / "run"
    written = json.loads((out / "summary.json").read_text())
    assert written["accuracy_after"] == after and written["interrupted"] is False
    assert written["config"]["grpo_steps"] == 250 and written["config"]["beta"] == 0.01
    records = cli.read_metrics(out / "metrics.jsonl")
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
    config = A.AdditionConfig()
    with pytest.raises(cli.OutputDirError, match="cannot write"):
        cli.run_recipe("addition", config, cli.RunOptions(out_dir=str(blocker / "sub")))
    existing = tmp_path / "old"
    (existing / "checkpoints").mkdir(parents=True)
    with pytest.raises(cli.OutputDirError, match="--resume"):
        cli.run_recipe("addition", config, cli.RunOptions(out_dir=str(existing)))


def test_too_many_devices_is_a_clear_error(tmp_path):
    options = cli.RunOptions(out_dir=str(tmp_path), devices=64, plot=False)
    with pytest.raises(ValueError, match="--devices 64"):
        cli.run_recipe("addition", A.AdditionConfig(), options)
