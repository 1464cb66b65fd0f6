"""The TRL side of `benchmarks/bench_trl.py`: one GRPO or DPO run with TRL, in TRL's venv.

Run by the orchestrator as ``.venv-trl/bin/python benchmarks/trl_side.py SPEC WORK SETTING
SEED``; it reads the shared data and settings from the JSON file SPEC (written by
``bench_trl.py``: token symbols, prompts, preference pairs, model shape, learning rate,
steps), trains with TRL's public API (``GRPOTrainer`` / ``DPOTrainer``) on the CPU and prints
one line ``BENCH_RESULT {json}`` (timings, peak RSS, curves, held-out accuracy) to stdout.
It imports nothing from rlgen and needs only torch, transformers, tokenizers, datasets and
trl (``benchmarks/trl_requirements.txt``).

Nothing is downloaded: the tokenizer is built in memory (one token per character) and the
GPT-2 model from random init; TRL builds its reference model from the model's
``_name_or_path``, so the initial model is saved to a temporary folder first and loaded from
there (the reference is then exactly the initial weights).

TRL settings that differ from TRL's defaults, to run the same work as rlgen (the reasons are
in ``bench_trl.py``'s docstring): ``bf16=False`` (TRL turns bf16 on by default),
``activation_checkpointing=False`` (transformers 5's name for
``gradient_checkpointing``, on by default in TRL), ``lr_scheduler_type="constant"``
(the Trainer decays linearly by default), ``use_bias_correction_kl=False`` (TRL 1.16
multiplies the KL term by the importance ratio), ``shuffle_dataset=False`` /
``train_sampling_strategy="sequential"`` (both sides see the prompts and pairs in the same
order), ``logging_steps=1`` (a per-step curve), ``use_cpu=True``, ``report_to="none"``,
``save_strategy="no"``, ``disable_tqdm=True``. Threads: torch's default (one per core).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# Offline: nothing may reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import datasets  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from tokenizers import Regex, decoders, models, pre_tokenizers  # noqa: E402

T_IMPORTED = time.perf_counter()


def build_tokenizer(spec) -> transformers.PreTrainedTokenizerFast:
    """One id per character: ``spec["symbols"][i]`` is token ``i`` (pad and eos are
    special tokens written ``<pad>`` / ``<eos>``)."""
    symbols = spec["symbols"]
    pad, eos = symbols[spec["pad_id"]], symbols[spec["eos_id"]]
    vocab = {s: i for i, s in enumerate(symbols)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab))  # an unknown character raises
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([pad, eos])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos)


def build_model(spec, seed: int, folder: str) -> transformers.GPT2LMHeadModel:
    """GPT-2 from random init (seeded), no dropout, saved to and loaded from ``folder``."""
    m = spec["model"]
    config = transformers.GPT2Config(
        vocab_size=m["vocab_size"],
        n_positions=m["max_len"],
        n_embd=m["d_model"],
        n_layer=m["num_layers"],
        n_head=m["num_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=spec["eos_id"],
        eos_token_id=spec["eos_id"],
        pad_token_id=spec["pad_id"],
    )
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return transformers.GPT2LMHeadModel.from_pretrained(folder)


def text(spec, ids) -> str:
    return "".join(spec["symbols"][i] for i in ids)


class Clock(transformers.TrainerCallback):
    """Wall-clock time at the start of training and at the end of every optimiser step,
    and the logged training loss of each step."""

    def __init__(self):
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.begin = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def common_args(spec, seed: int, folder: str) -> dict:
    """The Trainer settings both works share (see the module docstring)."""
    return {
        "output_dir": folder,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "max_steps": spec["steps"],
        "learning_rate": spec["learning_rate"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": spec["max_grad_norm"],
        "optim": "adamw_torch",
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


def run_grpo(spec, setting, seed, folder, tokenizer, model, clock):
    g = spec["grpo"]
    even = set(spec["even_ids"])
    new_tokens = g["max_new_tokens"]
    rewards_per_step: list[float] = []

    def even_digit_reward(prompts, completions, completion_ids, **kwargs):
        # completion_ids end at the first EOS (TRL masks what follows): those count 0.
        scores = [sum(t in even for t in ids) / new_tokens for ids in completion_ids]
        rewards_per_step.append(sum(scores) / len(scores))
        return scores

    prompts = [text(spec, p) for p in g["prompts"]]
    args = trl.GRPOConfig(
        **common_args(spec, seed, folder),
        per_device_train_batch_size=g["prompts_per_step"] * g["num_generations"],
        num_generations=g["num_generations"],
        max_completion_length=new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=setting["beta"],
        epsilon=g["clip"],
        num_iterations=1,
        loss_type=g["trl_loss_type"],
        scale_rewards=g["scale_rewards"],
        use_bias_correction_kl=False,
        entropy_coef=0.0,
        shuffle_dataset=False,
        disable_dropout=True,
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=even_digit_reward,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    return trainer, lambda: {"curve": rewards_per_step}


def sequence_log_probs(model, prompt_ids, completion_ids) -> torch.Tensor:
    """``[N]`` summed log-probs of the completions given the prompts (equal lengths)."""
    prompt, completion = torch.tensor(prompt_ids), torch.tensor(completion_ids)
    tokens = torch.cat([prompt, completion], dim=1)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, prompt.shape[1] - 1 : -1]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, completion[..., None])[..., 0].sum(-1)


def preference_accuracy(policy, reference, pairs, eos_id) -> float:
    """Share of pairs whose implicit reward log pi/ref prefers chosen (ties count half)."""
    chosen = [c + [eos_id] for c in pairs["chosen"]]
    rejected = [r + [eos_id] for r in pairs["rejected"]]
    margin = (
        sequence_log_probs(policy, pairs["prompt"], chosen)
        - sequence_log_probs(reference, pairs["prompt"], chosen)
        - sequence_log_probs(policy, pairs["prompt"], rejected)
        + sequence_log_probs(reference, pairs["prompt"], rejected)
    )
    return float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean())


def run_dpo(spec, setting, seed, folder, tokenizer, model, clock):
    d = spec["dpo"]
    train = d["train"]
    dataset = datasets.Dataset.from_dict(
        {
            "prompt": [text(spec, p) for p in train["prompt"]],
            "chosen": [text(spec, c) for c in train["chosen"]],
            "rejected": [text(spec, r) for r in train["rejected"]],
        }
    )
    args = trl.DPOConfig(
        **common_args(spec, seed, folder),
        per_device_train_batch_size=d["pairs_per_step"],
        beta=d["beta"],
        loss_type=["sigmoid"],
        precompute_ref_log_probs=setting["precompute"],
        train_sampling_strategy="sequential",
        disable_dropout=True,
    )
    trainer = trl.DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
    )
    # The initial weights, for the held-out accuracy (policy == reference before training).
    reference = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(folder, "init"))
    held = d["heldout"]
    before = preference_accuracy(model, reference, held, spec["eos_id"])

    def results():
        model.eval()
        after = preference_accuracy(model, reference, held, spec["eos_id"])
        return {"curve": clock.losses, "heldout_before": before, "heldout_after": after}

    return trainer, results


def main(argv):
    spec_path, work, setting_name, seed = argv[1], argv[2], argv[3], int(argv[4])
    with open(spec_path) as f:
        spec = json.load(f)
    spec = {**spec, **spec[work]}  # the work's steps, learning rate, ...
    setting = spec[work]["settings"][setting_name]
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as folder:
        os.environ["HF_DATASETS_CACHE"] = os.path.join(folder, "datasets")
        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        tokenizer = build_tokenizer(spec)
        model = build_model(spec, seed, os.path.join(folder, "init"))
        clock = Clock()
        run = run_grpo if work == "grpo" else run_dpo
        trainer, results = run(spec, setting, seed, folder, tokenizer, model, clock)
        t_ready = time.perf_counter()
        trainer.remove_callback(transformers.PrinterCallback)  # no log lines on stdout
        trainer.train()
        out = results()
    starts = [clock.begin, *clock.ends[:-1]]
    times = [end - begin for begin, end in zip(starts, clock.ends, strict=True)]
    skip = spec["warmup_steps"]
    median = statistics.median(times[skip:])
    out.update(
        library="trl",
        work=work,
        setting=setting_name,
        seed=seed,
        steps=len(times),
        import_s=T_IMPORTED - T_START,
        setup_s=t_ready - T_IMPORTED,
        first_step_s=times[0],
        median_step_s=median,
        step_s=times,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=torch.get_num_threads(),
        versions={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
    )
    if work == "grpo":
        out["completions_per_s"] = spec["grpo"]["completions_per_step"] / median
    print("BENCH_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv)
