"""The main job: pretrain a small language model on two-digit addition, then fine-tune it
with GRPO against an exact-answer reward, and report held-out accuracy before and after.

The task. Prompts are ``ab+cd=`` (two zero-padded two-digit numbers, 10,000 pairs) and the
answer is the sum's digits followed by an end token (``23+45=68<eos>``). A fixed, seeded
tenth of the pairs is held out: neither phase ever trains on them.

1. **Pretraining** (`rlgen.trainers.AutoregressiveTrainer`): teacher forcing on the
   answer tokens of the training pairs, stopped early on purpose (partial competence).
2. **GRPO** (`rlgen.trainers.GRPOTrainer`): each step takes ``prompts_per_step`` training
   prompts, samples ``num_generations`` answers per prompt with the model's KV-cache
   sampler, scores them with `AdditionReward` (1 for the exact answer, else 0) and
   updates; the KL penalty is to the frozen pretrained model.
3. **Evaluation**: greedy decoding on the held-out prompts, exact match.

Everything lands in ``out_dir``: ``metrics.jsonl`` (every step of both phases and the
held-out evaluations), ``reward_curve.png``, ``summary.json``, and Orbax checkpoints
(``checkpoints/pretrain``, ``checkpoints/grpo``) from which ``resume=True`` continues. The
batches of step ``s`` depend only on ``(seed, s)``, so a resumed run is the same run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlgen.algorithms import GRPOConfig
from rlgen.callbacks import Callback
from rlgen.models import SamplingConfig, TransformerConfig, TransformerLM
from rlgen.trainers import AutoregressiveConfig, AutoregressiveTrainer, GRPOTrainer

# Vocabulary: pad, end of answer, '+', '=', digits 0-9.
PAD, EOS, PLUS, EQUALS, DIGIT0 = 0, 1, 2, 3, 4
VOCAB_SIZE = DIGIT0 + 10
PROMPT_LEN = 6  # "ab+cd="
ANSWER_LEN = 4  # up to three digits and the end token
_CHARS = {PAD: "", EOS: "", PLUS: "+", EQUALS: "="} | {DIGIT0 + d: str(d) for d in range(10)}


# ----------------------------------------------------------------------------- the task
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


# ----------------------------------------------------------------------------- the recipe
@dataclasses.dataclass(frozen=True)
class AdditionConfig:
    """Settings of the addition recipe (the ``rlgen addition`` options)."""

    out_dir: str = "runs/addition"
    seed: int = 0
    devices: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    plot: bool = True
    # model
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
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
    num_generations: int = 8
    learning_rate: float = 5e-4
    clip_param: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.01
    kl_estimator: str = "k3"
    loss_aggregation: str = "sequence-mean-token-mean"
    scale_rewards: str = "group"
    num_iterations: int = 1
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_grad_norm: float | None = 1.0
    # evaluation
    held_out: int = 1000
    eval_every: int = 50
    checkpoint_every: int = 50

    def grpo_config(self) -> GRPOConfig:
        return GRPOConfig(
            num_generations=self.num_generations,
            clip_param=self.clip_param,
            epsilon_high=self.epsilon_high,
            beta=self.beta,
            kl_estimator=self.kl_estimator,
            reference="initial",
            loss_aggregation=self.loss_aggregation,
            scale_rewards=self.scale_rewards,
            num_iterations=self.num_iterations,
            max_grad_norm=self.max_grad_norm,
        )


class _StopAtAccuracy(Callback):
    """Stops pretraining once greedy accuracy on ``pairs`` reaches ``target``."""

    def __init__(self, model, pairs, target: float, every: int):
        self.model, self.pairs, self.target, self.every = model, pairs, target, every

    def on_train_batch_end(self, trainer, metrics, step):
        if (step + 1) % self.every == 0 and accuracy(self.model, self.pairs) >= self.target:
            trainer.stop_training = True


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
            self._evaluate(trainer)

    def _evaluate(self, trainer):
        score = accuracy(self.model, self.pairs)
        self.logger.log({"step": trainer.step, "heldout_accuracy": score})


def _check_out_dir(out: Path, config: AdditionConfig) -> None:
    """Fails before any work when ``out`` cannot be written or holds another run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".rlgen-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"cannot write to the output folder {str(out)!r}: {err}") from None
    previous = (out / "checkpoints").exists() or (out / "metrics.jsonl").exists()
    if previous and not config.resume and not config.overwrite:
        raise OutputDirError(
            f"the output folder {str(out)!r} already holds a run; pass --resume to continue "
            "it or --overwrite to start over"
        )


class UsageError(ValueError):
    """A setting the recipe cannot run with (the `rlgen` command exits with code 2)."""


class OutputDirError(UsageError):
    """The output folder cannot be used (not writable, or holds another run)."""


class MissingExtraError(ImportError):
    """An optional dependency the settings need is not installed."""


def _mesh(devices: int):
    if devices == 1:
        return None
    available = jax.devices()
    if len(available) < devices:
        raise UsageError(
            f"--devices {devices} asked for {devices} devices but JAX sees {len(available)} "
            f"({available[0].platform}); on CPU set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices} before JAX starts (the "
            "`rlgen` command does this itself)"
        )
    return jax.sharding.Mesh(np.asarray(available[:devices]), ("data",))


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
        sampling=SamplingConfig(
            max_new_tokens=ANSWER_LEN,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
        ),
    )


def _phase(trainer, batches, num_steps, ckpt_dir, callbacks, config, **fit_kwargs):
    """Runs one phase to ``num_steps`` steps in all, resuming from ``ckpt_dir`` if asked."""
    from rlgen.callbacks import CheckpointConfig, ModelCheckpoint

    if config.resume and ModelCheckpoint.latest_step(ckpt_dir) is not None:
        ModelCheckpoint.restore(trainer, ckpt_dir)
    remaining = num_steps - trainer.step
    if remaining <= 0:
        return
    checkpoint = ModelCheckpoint(
        CheckpointConfig(
            dirpath=str(ckpt_dir), every_n_steps=config.checkpoint_every, save_top_k=1
        )
    )
    trainer.fit(
        batches(trainer.step), num_steps=remaining, callbacks=[*callbacks, checkpoint], **fit_kwargs
    )


def run(config: AdditionConfig = AdditionConfig(), *, echo=print) -> dict[str, Any]:
    """Runs the recipe; returns the summary (also written to ``out_dir/summary.json``).

    The summary holds ``accuracy_before`` / ``accuracy_after`` (held-out, greedy),
    the phase times and ``interrupted`` (True when Ctrl-C stopped it; the checkpoint of
    the step reached is saved and ``resume=True`` continues).
    """
    from rlgen.callbacks import JSONLLogger, ModelCheckpoint

    out = Path(config.out_dir)
    _check_out_dir(out, config)
    if config.plot:
        _require_matplotlib()
    if config.overwrite and not config.resume:
        import shutil

        for name in (
            "checkpoints", "metrics.jsonl", "summary.json", "reward_curve.png", "pretrain.json"
        ):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    mesh = _mesh(config.devices)
    train_pairs, held_out = split_pairs(config.seed, config.held_out)
    model = build_model(config)
    summary: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "devices": 1 if mesh is None else int(mesh.devices.size),
        "interrupted": False,
    }
    start = time.perf_counter()

    # 1. Pretraining to partial competence.
    pretrainer = AutoregressiveTrainer(
        model,
        nnx.Optimizer(model, optax.adam(config.pretrain_lr), wrt=nnx.Param),
        AutoregressiveConfig(),
        seed=config.seed,
        mesh=mesh,
    )
    marker = out / "pretrain.json"
    if config.resume and marker.exists():  # pretraining finished in an earlier run
        ModelCheckpoint.restore(pretrainer, out / "checkpoints" / "pretrain")
        summary.update(json.loads(marker.read_text()))
    else:
        probe = train_pairs[: min(500, len(train_pairs))]
        _phase(
            pretrainer,
            lambda s: pretrain_batches(train_pairs, config.pretrain_batch_size, config.seed, s),
            config.pretrain_steps,
            out / "checkpoints" / "pretrain",
            [
                *_progress(config, "pretrain", ("loss", "token_accuracy")),
                JSONLLogger(out / "metrics.jsonl", fields={"phase": "pretrain"}),
                _StopAtAccuracy(model, probe, config.pretrain_target, config.pretrain_check_every),
            ],
            config,
        )
        if pretrainer.interrupted:
            return _finish(out, summary, interrupted="pretrain", echo=echo)
        done = {
            "pretrain_steps_taken": pretrainer.step,
            "pretrain_seconds": round(time.perf_counter() - start, 1),
            "accuracy_before": accuracy(model, held_out),
        }
        marker.write_text(json.dumps(done) + "\n")
        summary.update(done)
    echo(
        f"pretrained for {summary['pretrain_steps_taken']} steps; held-out accuracy "
        f"{summary['accuracy_before']:.3f}"
    )

    # 2. GRPO fine-tuning against the exact-answer reward.
    t0 = time.perf_counter()
    grpo_log = JSONLLogger(out / "metrics.jsonl", fields={"phase": "grpo"})
    evaluation = _HeldOutEval(
        model, held_out, config.eval_every, grpo_log, summary["accuracy_before"]
    )
    trainer = GRPOTrainer(
        model,
        nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param),
        config.grpo_config(),
        seed=config.seed,
        mesh=mesh,
    )
    _phase(
        trainer,
        lambda s: prompt_batches(train_pairs, config.prompts_per_step, config.seed, s),
        config.grpo_steps,
        out / "checkpoints" / "grpo",
        [*_progress(config, "GRPO", ("mean_reward", "kl_penalty")), grpo_log, evaluation],
        config,
        reward_fn=AdditionReward(),
    )
    if trainer.interrupted:
        return _finish(out, summary, interrupted="grpo", echo=echo)
    summary["grpo_seconds"] = round(time.perf_counter() - t0, 1)
    summary["accuracy_after"] = accuracy(model, held_out)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    echo(f"held-out accuracy after GRPO: {summary['accuracy_after']:.3f}")
    if config.plot:
        plot_reward_curve(out / "metrics.jsonl", out / "reward_curve.png")
    return _finish(out, summary, echo=echo)


def _progress(config: AdditionConfig, description: str, metrics) -> list:
    from rlgen.callbacks import ProgressBarCallback

    if not config.progress:
        return []
    return [ProgressBarCallback(metrics=metrics, description=description)]


def _finish(out: Path, summary, *, interrupted=None, echo=print):
    if interrupted:
        summary["interrupted"] = interrupted
        echo(
            f"interrupted during {interrupted}: checkpoint saved under {out / 'checkpoints'}; "
            "run again with --resume to continue"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            "the reward-curve plot needs matplotlib: pip install 'rlgen[demo]' (or pass "
            "--no-plot)"
        ) from None


def read_metrics(path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_reward_curve(metrics_path, png_path) -> None:
    """Writes the GRPO reward curve (mean reward per step, held-out accuracy) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if r.get("phase") == "grpo"]
    steps = [r["step"] + 1 for r in records if "mean_reward" in r]
    reward = np.array([float(r["mean_reward"]) for r in records if "mean_reward" in r])
    evals = [(r["step"], r["heldout_accuracy"]) for r in records if "heldout_accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, reward, color="tab:blue", alpha=0.35, label="mean reward (batch)")
    if len(reward) >= 10:
        width = max(5, len(reward) // 20)
        smooth = np.convolve(reward, np.ones(width) / width, mode="valid")
        label = f"mean reward ({width}-step mean)"
        ax.plot(steps[width - 1 :], smooth, color="tab:blue", label=label)
    if evals:
        label = "held-out accuracy (greedy)"
        ax.plot(*zip(*evals, strict=True), "o-", color="tab:orange", label=label)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("rlgen: GRPO on two-digit addition")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
