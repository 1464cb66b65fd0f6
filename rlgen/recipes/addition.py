"""The main job: pretrain a small language model on two-digit addition, then fine-tune it
with GRPO against an exact-answer reward, and report held-out accuracy before and after.

The file reads top to bottom:

1. **The task and the reward.** Prompts are ``ab+cd=`` (two zero-padded two-digit
   numbers, 10,000 pairs) and the answer is the sum's digits followed by an end token
   (``23+45=68<eos>``); `AdditionReward` is 1 for the exact answer, else 0.
2. **The data.** A fixed, seeded tenth of the pairs is held out: neither phase ever
   trains on them. The batches of step ``s`` depend only on ``(seed, s)``, so a resumed
   run is the same run.
3. **The settings** (`AdditionConfig`, the ``rlgen addition`` options), nesting GRPO's.
4. **The model**: the built-in transformer LM with its KV-cache sampler.
5. **Pretraining** (`rlgen.trainers.AutoregressiveTrainer`): teacher forcing on the
   answer tokens of the training pairs, stopped early on purpose (partial competence).
6. **GRPO** (`rlgen.trainers.GRPOTrainer`): each step takes ``prompts_per_step`` training
   prompts, samples ``num_generations`` answers per prompt, scores them with
   `AdditionReward` and updates; the KL penalty is to the frozen pretrained model.
7. **Evaluation**: greedy decoding on the held-out prompts, exact match.

`run` tells the story with these pieces. It runs in a run folder handed to it by the
``rlgen`` command (`rlgen.cli.RunFolder`), which owns the output folder and what lands in
it: ``metrics.jsonl`` (every step of both phases and the held-out evaluations),
``reward_curve.png``, ``summary.json`` and Orbax checkpoints (``checkpoints/pretrain``,
``checkpoints/grpo``) from which ``--resume`` continues.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlgen.algorithms import GRPOConfig
from rlgen.callbacks import Callback
from rlgen.models import SamplingConfig, TransformerConfig, TransformerLM
from rlgen.recipes import check_pinned, nested
from rlgen.trainers import AutoregressiveConfig, AutoregressiveTrainer, GRPOTrainer

# Vocabulary: pad, end of answer, '+', '=', digits 0-9.
PAD, EOS, PLUS, EQUALS, DIGIT0 = 0, 1, 2, 3, 4
VOCAB_SIZE = DIGIT0 + 10
PROMPT_LEN = 6  # "ab+cd="
ANSWER_LEN = 4  # up to three digits and the end token
_CHARS = {PAD: "", EOS: "", PLUS: "+", EQUALS: "="} | {DIGIT0 + d: str(d) for d in range(10)}


# ----------------------------------------------------------------------------------------
# 1. The task and the reward
# ----------------------------------------------------------------------------------------


def encode_prompts(a, b) -> np.ndarray:
    """``[N]`` operands in [0, 99] -> ``[N, 6]`` int32 prompt tokens ``ab+cd=``."""
    a, b = np.asarray(a), np.asarray(b)
    return np.stack(
        [DIGIT0 + a // 10, DIGIT0 + a % 10, np.full_like(a, PLUS),
         DIGIT0 + b // 10, DIGIT0 + b % 10, np.full_like(a, EQUALS)], axis=1
    ).astype(np.int32)


def answer_tokens(prompts):
    """The exact answer of ``[N, 6]`` prompts as ``[N, 4]`` tokens: digits, EOS, padding.

    Works on NumPy and JAX arrays alike (jittable).
    """
    xp = jnp if isinstance(prompts, jax.Array) else np
    d = prompts - DIGIT0
    total = (10 * d[:, 0] + d[:, 1]) + (10 * d[:, 3] + d[:, 4])
    ndigits = 1 + (total >= 10) + (total >= 100)
    place = xp.arange(ANSWER_LEN)[None, :]
    power = ndigits[:, None] - 1 - place  # 10**power is the digit's place value
    digit = (total[:, None] // 10 ** xp.maximum(power, 0)) % 10
    tokens = xp.where(place < ndigits[:, None], DIGIT0 + digit, PAD)
    return xp.where(place == ndigits[:, None], EOS, tokens).astype(xp.int32)


def decode(tokens) -> str:
    """Token ids -> text (debugging and reports)."""
    return "".join(_CHARS[int(t)] for t in np.asarray(tokens))


@dataclasses.dataclass(frozen=True)
class AdditionReward:
    """1.0 when a completion is exactly the answer to its prompt (digits then EOS), else 0.

    A `rlgen.RewardFunction`: ``reward(samples [B, 4], conditions=prompts [B, 6]) -> [B]``.
    Jittable.

    Example:
      >>> prompts = jnp.asarray(encode_prompts([23, 99], [45, 1]))
      >>> AdditionReward()(answer_tokens(prompts), prompts)
      Array([1., 1.], dtype=float32)
    """

    def __call__(self, samples, conditions=None, **kwargs):
        if conditions is None:
            raise ValueError("AdditionReward needs the prompts as `conditions`")
        expected = answer_tokens(jnp.asarray(conditions))
        return jnp.all(jnp.asarray(samples) == expected, axis=-1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------
# 2. The data
# ----------------------------------------------------------------------------------------


def split_pairs(seed: int, held_out: int):
    """All 10,000 ``(a, b)`` pairs, shuffled by ``seed``: ``(train [N, 2], held_out [M, 2])``."""
    pairs = np.stack(np.meshgrid(np.arange(100), np.arange(100), indexing="ij"), -1).reshape(-1, 2)
    pairs = np.random.default_rng(seed).permutation(pairs)
    return pairs[held_out:], pairs[:held_out]


def _step_rng(seed: int, phase: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, phase, step])


def pretrain_batches(train_pairs, batch_size: int, seed: int, start: int = 0):
    """Endless teacher-forcing batches; step ``s``'s batch depends only on ``(seed, s)``."""
    step = start
    while True:
        pick = train_pairs[_step_rng(seed, 0, step).integers(0, len(train_pairs), batch_size)]
        prompts = encode_prompts(pick[:, 0], pick[:, 1])
        answers = answer_tokens(prompts)
        tokens = np.concatenate([prompts, answers], axis=1)
        # Train on the answer tokens through EOS (the padding after it is not a target).
        through_eos = np.cumsum(answers == EOS, axis=1) - (answers == EOS) == 0
        mask = np.concatenate([np.zeros_like(prompts), through_eos], axis=1)
        yield {"tokens": tokens, "mask": mask.astype(np.float32)}
        step += 1


def prompt_batches(train_pairs, batch_size: int, seed: int, start: int = 0):
    """Endless GRPO prompt batches ``{"observations": [P, 6]}``; step ``s``'s by ``(seed, s)``."""
    step = start
    while True:
        pick = train_pairs[_step_rng(seed, 1, step).integers(0, len(train_pairs), batch_size)]
        yield {"observations": encode_prompts(pick[:, 0], pick[:, 1])}
        step += 1


# ----------------------------------------------------------------------------------------
# 3. The settings
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdditionConfig:
    """Settings of the addition recipe.

    With `rlgen.cli.RunOptions` they are the ``rlgen addition`` options, the nested
    configs' fields included (``--beta`` sets ``grpo.beta``, ``--top-p``
    ``sampling.top_p``).

    Attributes:
      seed: seeds the data split, the model and sampling.
      d_model: the transformer's width.
      num_heads: attention heads per layer.
      num_layers: transformer blocks.
      sampling: how GRPO samples answers (``max_new_tokens`` is pinned to the answer
        length).
      pretrain_steps: the most pretraining steps.
      pretrain_target: pretraining stops once greedy accuracy on training prompts
        reaches this.
      pretrain_check_every: how often (in steps) that accuracy is checked.
      pretrain_batch_size: sequences per pretraining step.
      pretrain_lr: Adam's step size in pretraining.
      grpo_steps: GRPO steps.
      prompts_per_step: prompts per GRPO step (each sampled ``grpo.num_generations``
        times).
      learning_rate: Adam's step size in GRPO.
      grpo: GRPO's settings; its KL penalty is to the frozen pretrained model
        (``reference`` is pinned to ``"initial"``).
      held_out: problems held out of training, for the evaluations.
      eval_every: how often (in GRPO steps) held-out accuracy is logged.
    """

    seed: int = 0
    # model
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    sampling: SamplingConfig = nested(
        SamplingConfig(max_new_tokens=ANSWER_LEN), pinned=("max_new_tokens",)
    )
    # pretraining: stops at `pretrain_target` greedy accuracy on training prompts (checked
    # every `pretrain_check_every` steps) or after `pretrain_steps` steps
    pretrain_steps: int = 1500
    pretrain_target: float = 0.3
    pretrain_check_every: int = 10
    pretrain_batch_size: int = 128
    pretrain_lr: float = 3e-3
    # GRPO
    grpo_steps: int = 300
    prompts_per_step: int = 32
    learning_rate: float = 5e-4
    grpo: GRPOConfig = nested(
        GRPOConfig(
            num_generations=8, clip_param=0.2, beta=0.01, kl_estimator="k3", reference="initial"
        ),
        pinned=("reference",),
    )
    # evaluation
    held_out: int = 1000
    eval_every: int = 50

    def __post_init__(self):
        check_pinned(self)


# ----------------------------------------------------------------------------------------
# 4. The model
# ----------------------------------------------------------------------------------------


def build_model(config: AdditionConfig) -> TransformerLM:
    """The recipe's language model, sampling as GRPO does."""
    return TransformerLM(
        TransformerConfig(
            vocab_size=VOCAB_SIZE,
            max_len=PROMPT_LEN + ANSWER_LEN,
            d_model=config.d_model,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            pad_id=PAD,
            eos_id=EOS,
        ),
        rngs=nnx.Rngs(config.seed),
        sampling=config.sampling,
    )


# ----------------------------------------------------------------------------------------
# 5. Pretraining: stopped on purpose at partial competence
# ----------------------------------------------------------------------------------------


class _StopAtAccuracy(Callback):
    """Stops pretraining once greedy accuracy on ``pairs`` reaches ``target``."""

    def __init__(self, model, pairs, target: float, every: int):
        self.model, self.pairs, self.target, self.every = model, pairs, target, every

    def on_train_batch_end(self, trainer, metrics, step):
        if (step + 1) % self.every == 0 and accuracy(self.model, self.pairs) >= self.target:
            trainer.stop_training = True


# ----------------------------------------------------------------------------------------
# 6. GRPO: the trainer takes `config.grpo` as it is; the held-out curve is logged along
# ----------------------------------------------------------------------------------------


class _HeldOutEval(Callback):
    """Logs held-out greedy accuracy every ``every`` steps (``step``: steps taken)."""

    def __init__(self, model, pairs, every: int, logger, initial: float):
        self.model, self.pairs, self.every, self.logger = model, pairs, every, logger
        self.initial = initial

    def on_train_begin(self, trainer):
        if trainer.step == 0:  # the pretrained model's accuracy starts the curve
            self.logger.log({"step": 0, "heldout_accuracy": self.initial})

    def on_train_batch_end(self, trainer, metrics, step):
        if (step + 1) % self.every == 0:
            score = accuracy(self.model, self.pairs)
            self.logger.log({"step": trainer.step, "heldout_accuracy": score})


# ----------------------------------------------------------------------------------------
# 7. Evaluation
# ----------------------------------------------------------------------------------------


def accuracy(model: TransformerLM, pairs, *, batch_size: int = 1000) -> float:
    """Exact-match accuracy of greedy decoding on ``pairs`` ``[N, 2]``."""
    hits = 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        prompts = jnp.asarray(encode_prompts(chunk[:, 0], chunk[:, 1]))
        tokens, _ = model.generate(
            prompts, jax.random.key(0), max_new_tokens=ANSWER_LEN, temperature=0.0
        )
        hits += int(jnp.sum(AdditionReward()(tokens, prompts)))
    return hits / len(pairs)


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


def run(config: AdditionConfig, folder) -> dict[str, Any]:
    """Pretrains, fine-tunes with GRPO and evaluates, in ``folder``; returns the results.

    ``folder`` is the run folder the ``rlgen`` command hands over (`rlgen.cli.RunFolder`:
    ``phase``, ``log``, ``echo``, ``mesh``, ``plot_reward_curve``); the recipe does not
    import the command-line layer above it.

    The results are the phase figures (``pretrain_steps_taken``, ``pretrain_seconds``,
    ``grpo_seconds``, ``seconds``) and held-out greedy accuracy before and after GRPO
    (``accuracy_before``, ``accuracy_after``). A phase stopped by Ctrl-C raises
    `rlgen.cli.Interrupted` once its checkpoint is saved; a resumed run continues it.
    """
    train_pairs, held_out = split_pairs(config.seed, config.held_out)
    model = build_model(config)
    start = time.perf_counter()

    # Pretraining to partial competence. Once it has finished it is never continued: a
    # resumed run restores its checkpoint and these results.
    pretrainer = AutoregressiveTrainer(
        model,
        nnx.Optimizer(model, optax.adam(config.pretrain_lr), wrt=nnx.Param),
        AutoregressiveConfig(),
        seed=config.seed,
        mesh=folder.mesh,
    )
    probe = train_pairs[: min(500, len(train_pairs))]
    pretrained = folder.phase(
        "pretrain",
        pretrainer,
        lambda step: pretrain_batches(train_pairs, config.pretrain_batch_size, config.seed, step),
        config.pretrain_steps,
        show=("loss", "token_accuracy"),
        callbacks=[
            _StopAtAccuracy(model, probe, config.pretrain_target, config.pretrain_check_every)
        ],
        results=lambda: {
            "pretrain_steps_taken": pretrainer.step,
            "pretrain_seconds": round(time.perf_counter() - start, 1),
            "accuracy_before": accuracy(model, held_out),
        },
    )
    folder.echo(
        f"pretrained for {pretrained['pretrain_steps_taken']} steps; held-out accuracy "
        f"{pretrained['accuracy_before']:.3f}"
    )

    # GRPO fine-tuning against the exact-answer reward, held-out accuracy logged along.
    t0 = time.perf_counter()
    trainer = GRPOTrainer(
        model,
        nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param),
        config.grpo,
        seed=config.seed,
        mesh=folder.mesh,
    )
    evaluation = _HeldOutEval(
        model, held_out, config.eval_every, folder.log("grpo"), pretrained["accuracy_before"]
    )
    folder.phase(
        "grpo",
        trainer,
        lambda step: prompt_batches(train_pairs, config.prompts_per_step, config.seed, step),
        config.grpo_steps,
        show=("mean_reward", "kl_penalty"),
        callbacks=[evaluation],
        reward_fn=AdditionReward(),
    )
    grpo_seconds = round(time.perf_counter() - t0, 1)

    # Evaluation on the held-out prompts.
    after = accuracy(model, held_out)
    seconds = round(time.perf_counter() - start, 1)
    folder.echo(f"held-out accuracy after GRPO: {after:.3f}")
    folder.plot_reward_curve(
        "grpo",
        title="rlgen: GRPO on two-digit addition",
        xlabel="GRPO step",
        evaluations={"heldout_accuracy": "held-out accuracy (greedy)"},
    )
    return {
        **pretrained,
        "grpo_seconds": grpo_seconds,
        "accuracy_after": after,
        "seconds": seconds,
    }
