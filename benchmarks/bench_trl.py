"""rlgen vs TRL on the CPU: GRPO and DPO on a tiny GPT-2 style model, same work on both sides.

What is measured. Four works, each run by rlgen (this venv, JAX) and by TRL 1.16 (its own
venv, ``.venv-trl``, PyTorch; `benchmarks/trl_side.py`):

* GRPO, beta 0 and GRPO, beta 0.04 (k3 KL to the initial model): 2 prompts of 6 random
  digits x 8 generations = 16 completions of 16 new tokens per step, temperature 1.0, no
  top-k / top-p; reward = share of the 16 completion positions holding an even digit
  (tokens after the first EOS count 0).
* DPO, frozen reference and DPO, precomputed reference log-probs: 16 pairs per step
  (prompt of 6 digits; chosen / rejected of 16 digits, chosen holding more even digits),
  sigmoid loss, beta 0.1; held-out preference accuracy (the share of 256 held-out pairs
  whose implicit reward ``log pi/ref(chosen) - log pi/ref(rejected)`` is positive, ties
  counting half, so 0.5 before training) before and after.

The model is GPT-2 style from random init: 2 layers, width 128, 4 heads, 32 token ids
(pad, eos, the digits 0-9, 20 filler symbols), 32 positions, no dropout; Adam (no weight
decay), a constant learning rate (GRPO 2e-3, DPO 5e-4, the same on both sides), gradient
norm clipped at 1.0, 40 steps (one optimiser step each). Both sides read the same prompts
and pairs, in the same order, from one JSON file this script writes (``spec.json``); TRL
sees them as text through a one-character-per-token tokenizer built in memory, with the
same ids. Nothing is downloaded.

Each (library, work, setting, round) is its own process, interleaved: for round 1..R, for
each work and setting (GRPO beta 0, GRPO beta 0.04, DPO frozen, DPO precomputed), TRL's run
then rlgen's. A process builds everything, times the first step separately (rlgen: JIT
compilation; TRL: first-call warm-up), then reports the median seconds per step over the
steps after ``--warmup``, completions per second (GRPO), peak RSS (``ru_maxrss``), the
per-step curve (GRPO: mean reward of the step's completions; DPO: the training loss) and
held-out accuracy, as one line ``BENCH_RESULT {json}`` on stdout. The table shows medians
over rounds; the curves are averaged over rounds (the seed is the round number on both
sides, but the libraries draw different initial weights and samples from it, so the curves
agree in distribution, not exactly). A step is timed end to end: sampling (GRPO), the
reward, the update and reading the step's metrics back to Python (rlgen blocks on them;
TRL logs every step).

Settings TRL needs to run the same work (its defaults differ): ``bf16=False`` (TRL defaults
to bf16), ``activation_checkpointing=False`` (transformers 5's name for TRL's
``gradient_checkpointing``, on by default in TRL; rlgen does not rematerialise),
``lr_scheduler_type="constant"`` (the Trainer decays linearly by default),
``use_bias_correction_kl=False`` (TRL 1.16 multiplies the KL term by the importance ratio,
which changes its gradient; rlgen's penalty is the plain k3 estimate), ``loss_type="dapo"``
(TRL's default: token-mean over the batch, rlgen ``loss_aggregation="token-mean"``),
``scale_rewards="group"`` (both defaults), ``shuffle_dataset=False`` /
``train_sampling_strategy="sequential"`` (same data order), ``optim="adamw_torch"`` with
``weight_decay=0``. rlgen: ``entropy_coeff=0.0`` (its default is 0.01), ``DPOConfig(
max_grad_norm=1.0)`` (its default is no clipping; TRL's Trainer clips at 1.0); GRPO beta 0
uses rlgen's default ``reference="batch"`` with no reference key (no reference forward, as
TRL builds no reference model at beta 0), beta 0.04 ``reference="initial"``.

Differences that remain (the libraries' designs, stated, not hidden):

* Initialisation: GPT-2 draws every weight from N(0, 0.02^2) (its residual projections
  scaled down); rlgen's TransformerLM uses fan-in scaled normals for the dense layers
  (N(0, 0.02^2) for the embeddings). Both score tokens with the transposed token embedding
  (GPT-2's tied head, no bias; rlgen's ``tie_embeddings=True``, set when its
  ``TransformerConfig`` has the field: an untied head, with its ~N(0, 1/D) weights, makes
  the first steps several times larger on both libraries and the curves part ways).
* Sampling: TRL calls ``transformers`` ``generate`` (a dynamic KV cache, Python loop over
  tokens, stops when every row has emitted EOS); rlgen's sampler is one compiled
  ``lax.while_loop`` over a static KV cache that also stops when every row has ended.
* TRL tokenises the text prompts and decodes the completions every step (the reward gets
  token ids); rlgen works on ids throughout. TRL's DPO appends EOS to chosen and rejected
  (17 tokens); rlgen's pairs get the same EOS appended here.
* Precomputed DPO reference: TRL computes it in the trainer's constructor, in batches of
  16, and caches it as a ``datasets`` column; rlgen computes it here with one jitted call
  over all training pairs. Both count in ``setup_s``, not in the steps.
* Threads: each library as shipped (torch: one intra-op thread per core; XLA: its default
  CPU client). torch's pool is fragile next to other work: with one core busy elsewhere a
  TRL GRPO step went from 0.06 s to about 4 s (with ``OMP_NUM_THREADS=1``: 0.07 s), while
  rlgen's stayed near 0.03 s. So before each run the script waits (``--max-wait``) until
  other processes use under a quarter of a core, and reports the cores they used during
  each run (``other_cores_during``); numbers from a busy machine measure the machine.
* First step: rlgen compiles its sampler and update; TRL has nothing to compile
  (``generate`` runs eagerly, ``disable_compile=True``). The rlgen processes share one
  persistent compilation cache (``rlgen.enable_compilation_cache``, as the ``rlgen``
  command uses), empty at the start: round 1's first step is a cold compile ("first rlgen
  cold"), later rounds load the programs round 1 compiled, as a user's second run does
  ("first rlgen cached"). Peak memory is the median over rounds (a cold compile adds
  ~150 MB to round 1's).

Run: ``python benchmarks/bench_trl.py [--rounds 3] [--steps 40] [--quick] [--out
runs/bench_trl.json]``; the TRL side needs ``.venv-trl`` (``make bench`` creates it from
``benchmarks/trl_requirements.txt``). Without it the rlgen side still runs and one line
``TRL side skipped: <why>`` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TRL_SIDE = ROOT / "benchmarks" / "trl_side.py"

# Token ids, the same on both sides: pad, eos, digits 0-9, filler symbols up to 32 ids.
PAD, EOS, DIGIT0 = 0, 1, 2
SYMBOLS = ["<pad>", "<eos>", *"0123456789", *"abcdefghijklmnopqrst"]
EVEN_IDS = [DIGIT0 + d for d in (0, 2, 4, 6, 8)]
PROMPT_LEN, NEW_TOKENS = 6, 16
MODEL = {"vocab_size": len(SYMBOLS), "max_len": 32, "d_model": 128, "num_heads": 4, "num_layers": 2}

# (work, setting) -> the label in the table and the setting's options.
WORKS = {
    ("grpo", "beta0"): ("GRPO beta=0", {"beta": 0.0}),
    ("grpo", "beta0.04"): ("GRPO beta=0.04 (k3)", {"beta": 0.04}),
    ("dpo", "frozen"): ("DPO frozen ref", {"precompute": False}),
    ("dpo", "precomputed"): ("DPO precomputed ref", {"precompute": True}),
}


# ----------------------------------------------------------------------------------------
# The shared data and settings
# ----------------------------------------------------------------------------------------


def digits(rng, shape, even_share=None):
    """Digit token ids; with ``even_share``, each row holds ``round(share * len)`` evens."""
    if even_share is None:
        return DIGIT0 + rng.integers(0, 10, shape)
    rows, length = shape
    out = np.empty(shape, np.int64)
    for i in range(rows):
        n_even = int(even_share[i])
        evens = DIGIT0 + 2 * rng.integers(0, 5, n_even)
        odds = DIGIT0 + 1 + 2 * rng.integers(0, 5, length - n_even)
        out[i] = rng.permutation(np.concatenate([evens, odds]))
    return out


def preference_pairs(rng, n):
    """``n`` pairs: 6-digit prompts, 16-digit chosen with more even digits than rejected."""
    n_chosen = rng.binomial(NEW_TOKENS, 0.7, n)
    n_rejected = rng.binomial(NEW_TOKENS, 0.3, n)
    while np.any(bad := n_chosen <= n_rejected):  # redraw until chosen has strictly more
        n_chosen[bad] = rng.binomial(NEW_TOKENS, 0.7, bad.sum())
        n_rejected[bad] = rng.binomial(NEW_TOKENS, 0.3, bad.sum())
    return {
        "prompt": digits(rng, (n, PROMPT_LEN)).tolist(),
        "chosen": digits(rng, (n, NEW_TOKENS), n_chosen).tolist(),
        "rejected": digits(rng, (n, NEW_TOKENS), n_rejected).tolist(),
    }


def make_spec(args) -> dict:
    """Everything both sides need, as JSON: token symbols, data, model shape, settings."""
    rng = np.random.default_rng(0)
    prompts_per_step, generations = 2, 8
    return {
        "symbols": SYMBOLS,
        "pad_id": PAD,
        "eos_id": EOS,
        "even_ids": EVEN_IDS,
        "warmup_steps": args.warmup,
        "model": MODEL,
        "grpo": {
            "steps": args.steps,
            "learning_rate": args.grpo_lr,
            "max_grad_norm": 1.0,
            "prompts_per_step": prompts_per_step,
            "num_generations": generations,
            "completions_per_step": prompts_per_step * generations,
            "max_new_tokens": NEW_TOKENS,
            "clip": 0.2,
            "trl_loss_type": "dapo",
            "rlgen_loss_aggregation": "token-mean",
            "scale_rewards": "group",
            "prompts": digits(rng, (args.steps * prompts_per_step, PROMPT_LEN)).tolist(),
            "settings": {s: o for (w, s), (_, o) in WORKS.items() if w == "grpo"},
        },
        "dpo": {
            "steps": args.steps,
            "learning_rate": args.dpo_lr,
            "max_grad_norm": 1.0,
            "beta": 0.1,
            "pairs_per_step": 16,
            "train": preference_pairs(rng, args.steps * 16),
            "heldout": preference_pairs(rng, 256),
            "settings": {s: o for (w, s), (_, o) in WORKS.items() if w == "dpo"},
        },
    }


# ----------------------------------------------------------------------------------------
# The rlgen side (run as `bench_trl.py --worker SPEC WORK SETTING SEED`)
# ----------------------------------------------------------------------------------------


def rlgen_worker(spec_path, work, setting_name, seed):
    """One rlgen run; prints ``BENCH_RESULT {json}``. Imports JAX only here."""
    t_start = time.perf_counter()
    import dataclasses
    import resource

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from rlgen import enable_compilation_cache
    from rlgen.algorithms import DPOConfig, GRPOConfig
    from rlgen.models import SamplingConfig, TransformerConfig, TransformerLM
    from rlgen.trainers import DPOTrainer, GRPOTrainer

    enable_compilation_cache()  # the directory the orchestrator names (RLGEN_COMPILATION_CACHE)
    t_imported = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    w = spec[work]
    setting = w["settings"][setting_name]
    m = spec["model"]
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    tie = {"tie_embeddings": True} if "tie_embeddings" in fields else {}
    config = TransformerConfig(
        vocab_size=m["vocab_size"],
        max_len=m["max_len"],
        d_model=m["d_model"],
        num_heads=m["num_heads"],
        num_layers=m["num_layers"],
        pad_id=spec["pad_id"],
        eos_id=spec["eos_id"],
        **tie,
    )
    model = TransformerLM(
        config, rngs=nnx.Rngs(seed), sampling=SamplingConfig(max_new_tokens=NEW_TOKENS)
    )
    optimizer = nnx.Optimizer(model, optax.adam(w["learning_rate"]), wrt=nnx.Param)
    curve, times, out = [], [], {}

    if work == "grpo":
        even = jnp.asarray(spec["even_ids"])

        @jax.jit
        def even_digit_reward(samples, conditions=None):
            # Tokens after the first EOS are pad (not a digit): they count 0.
            return jnp.mean(jnp.isin(samples, even), axis=-1, dtype=jnp.float32)

        beta = setting["beta"]
        trainer = GRPOTrainer(
            model,
            optimizer,
            GRPOConfig(
                num_generations=w["num_generations"],
                clip_param=w["clip"],
                beta=beta,
                entropy_coeff=0.0,
                scale_rewards=w["scale_rewards"],
                loss_aggregation=w["rlgen_loss_aggregation"],
                kl_estimator="k3",
                reference="initial" if beta > 0 else "batch",
                num_iterations=1,
                max_grad_norm=w["max_grad_norm"],
            ),
            seed=seed,
        )
        prompts = np.asarray(w["prompts"], np.int32).reshape(w["steps"], -1, PROMPT_LEN)
        key = jax.random.key(seed)
        t_ready = time.perf_counter()
        for step in range(w["steps"]):
            t0 = time.perf_counter()
            batch = {"observations": jnp.asarray(prompts[step])}
            metrics = trainer.train_step(batch, even_digit_reward, jax.random.fold_in(key, step))
            curve.append(float(metrics["mean_reward"]))  # blocks until the step is done
            times.append(time.perf_counter() - t0)
    else:
        eos = spec["eos_id"]

        def pairs(p):  # host arrays: a step's batch is a NumPy slice, as a data loader's
            prompt = np.asarray(p["prompt"], np.int32)
            with_eos = lambda x: np.asarray([row + [eos] for row in x], np.int32)  # noqa: E731
            return prompt, with_eos(p["chosen"]), with_eos(p["rejected"])

        @nnx.jit
        def sequence_log_probs(model, prompt, completion):
            logits = model.policy(prompt, completion)
            lp = jnp.take_along_axis(jax.nn.log_softmax(logits), completion[..., None], -1)
            return lp[..., 0].sum(-1)

        def margins(prompt, chosen, rejected):
            return sequence_log_probs(model, prompt, chosen) - sequence_log_probs(
                model, prompt, rejected
            )

        def accuracy(margin):  # implicit-reward margin > 0; ties count half
            return float(jnp.mean((margin > 0) + 0.5 * (margin == 0)))

        held = pairs(w["heldout"])
        ref_held = margins(*held)  # the initial model is the reference
        out["heldout_before"] = accuracy(margins(*held) - ref_held)
        prompt, chosen, rejected = pairs(w["train"])
        data = {
            "chosen_observations": prompt,
            "chosen_actions": chosen,
            "rejected_observations": prompt,
            "rejected_actions": rejected,
        }
        precompute = setting["precompute"]
        if precompute:  # once, up front, with the initial model
            data["ref_chosen_log_probs"] = np.asarray(sequence_log_probs(model, prompt, chosen))
            data["ref_rejected_log_probs"] = np.asarray(
                sequence_log_probs(model, prompt, rejected)
            )
        trainer = DPOTrainer(
            model,
            optimizer,
            DPOConfig(
                beta=w["beta"],
                loss_type="sigmoid",
                reference="batch" if precompute else "initial",
                max_grad_norm=w["max_grad_norm"],
            ),
            seed=seed,
        )
        size = w["pairs_per_step"]
        t_ready = time.perf_counter()
        for step in range(w["steps"]):
            t0 = time.perf_counter()
            batch = {k: v[step * size : (step + 1) * size] for k, v in data.items()}
            metrics = trainer.train_step(batch)
            curve.append(float(metrics["dpo_loss"]))  # blocks until the step is done
            times.append(time.perf_counter() - t0)
        out["heldout_after"] = accuracy(margins(*held) - ref_held)

    median = statistics.median(times[spec["warmup_steps"] :])
    out.update(
        library="rlgen",
        work=work,
        setting=setting_name,
        seed=seed,
        steps=len(times),
        import_s=t_imported - t_start,
        setup_s=t_ready - t_imported,
        first_step_s=times[0],
        median_step_s=median,
        step_s=times,
        curve=curve,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        cpu_count=os.cpu_count(),
        versions={"jax": jax.__version__, "tie_embeddings": bool(tie)},
    )
    if work == "grpo":
        out["completions_per_s"] = w["completions_per_step"] / median
    print("BENCH_RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------
# The orchestrator
# ----------------------------------------------------------------------------------------


def trl_unavailable(python: Path) -> str | None:
    """Why TRL's side cannot run with ``python``, or None when it can."""
    if not python.exists():
        return f"{python} not found (make bench creates .venv-trl)"
    probe = subprocess.run(
        [str(python), "-c", "import torch, transformers, datasets, tokenizers, trl"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"cannot import TRL's stack with {python}: {last}"
    return None


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (``/proc/stat``; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait: float, threshold: float = 0.25) -> float | None:
    """Waits (up to ``max_wait`` s) until other processes use < ``threshold`` cores.

    Returns the cores they used in the last one-second sample (None without /proc/stat).
    torch's thread pool slows down by 10-100x when another process holds a core (its
    threads wait for each other at every op), so a TRL step timed next to other work
    measures the machine's load, not TRL.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = busy_cpu_seconds()
        if before is None:
            return None
        time.sleep(1.0)
        other = busy_cpu_seconds() - before
        if other < threshold or time.monotonic() >= deadline:
            return other


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_side(command, timeout, max_wait, env=None) -> dict:
    """Runs one side's process; returns its ``BENCH_RESULT`` (or an ``error``).

    Adds ``other_cores_before`` (other processes' CPU use, in cores, just before the run)
    and ``other_cores_during`` (the machine's CPU use during the run minus this process's,
    over its wall time).
    """
    other_before = wait_until_quiet(max_wait)
    busy0, own0, wall0 = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - wall0
    other_during = None
    if busy0 is not None:
        own = children_cpu_seconds() - own0
        other_during = max(0.0, (busy_cpu_seconds() - busy0 - own) / wall)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            out = json.loads(line[len("BENCH_RESULT ") :])
            out.update(other_cores_before=other_before, other_cores_during=other_during)
            return out
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return {"error": f"exit {proc.returncode}:\n{tail}"}


def median_of(runs, key):
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def mean_curve(runs):
    curves = [r["curve"] for r in runs if r.get("curve")]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves) for i in range(n)]


def fmt(x, spec="{:.3f}"):
    return "-" if x is None else spec.format(x)


def report(results, works, rounds):
    """The comparison table and the curves of ``works`` (keys of `WORKS`), as text."""
    works = {k: WORKS[k] for k in works}
    lines = [
        f"Medians over {rounds} round(s); s/step: median of the steps after the warm-up; "
        "first step s: TRL's warm-up; rlgen's compile, cold (round 1) and from the "
        "compilation cache (later rounds); peak MB: ru_maxrss.",
        "",
        f"{'work':<22} {'TRL s/step':>10} {'rlgen s/step':>12} {'TRL/rlgen':>9} "
        f"{'first TRL':>9} {'rlgen cold':>10} {'rlgen cached':>12} {'MB TRL':>7} "
        f"{'MB rlgen':>8} {'compl/s TRL':>11} {'compl/s rlgen':>13}",
    ]
    for (work, setting), (label, _) in works.items():
        trl, rl = results["trl"].get(f"{work}/{setting}", []), results["rlgen"][f"{work}/{setting}"]
        t, r = median_of(trl, "median_step_s"), median_of(rl, "median_step_s")
        cold = [x for x in rl if x.get("round") == 0]
        cached = [x for x in rl if x.get("round", 0) > 0]
        ratio = None if t is None or r is None else t / r
        lines.append(
            f"{label:<22} {fmt(t, '{:.4f}'):>10} {fmt(r, '{:.4f}'):>12} "
            f"{fmt(ratio, '{:.2f}x'):>9} {fmt(median_of(trl, 'first_step_s'), '{:.2f}'):>9} "
            f"{fmt(median_of(cold, 'first_step_s'), '{:.2f}'):>10} "
            f"{fmt(median_of(cached, 'first_step_s'), '{:.2f}'):>12} "
            f"{fmt(median_of(trl, 'peak_rss_mb'), '{:.0f}'):>7} "
            f"{fmt(median_of(rl, 'peak_rss_mb'), '{:.0f}'):>8} "
            f"{fmt(median_of(trl, 'completions_per_s'), '{:.0f}'):>11} "
            f"{fmt(median_of(rl, 'completions_per_s'), '{:.0f}'):>13}"
        )
    for lib, name in (("trl", "TRL"), ("rlgen", "rlgen")):
        other = [
            r["other_cores_during"]
            for k in (f"{w}/{s}" for w, s in works)
            for r in results[lib].get(k, [])
            if r.get("other_cores_during") is not None
        ]
        if other:
            busy = sum(x > 0.5 for x in other)
            lines.append(
                f"{name} runs: other processes used {statistics.median(other):.2f} cores "
                f"(median; max {max(other):.2f}); {busy} of {len(other)} runs shared the "
                "CPUs with > 0.5 core of other work"
            )
    lines += [
        "",
        f"{'work':<22} {'setup TRL':>9} {'setup rlgen':>11} {'import TRL':>10} "
        f"{'import rlgen':>12} {'held-out acc TRL':>16} {'held-out acc rlgen':>18}",
    ]
    for (work, setting), (label, _) in works.items():
        trl, rl = results["trl"].get(f"{work}/{setting}", []), results["rlgen"][f"{work}/{setting}"]

        def acc(runs):
            before, after = median_of(runs, "heldout_before"), median_of(runs, "heldout_after")
            return "-" if after is None else f"{before:.2f} -> {after:.2f}"

        lines.append(
            f"{label:<22} {fmt(median_of(trl, 'setup_s'), '{:.2f}'):>9} "
            f"{fmt(median_of(rl, 'setup_s'), '{:.2f}'):>11} "
            f"{fmt(median_of(trl, 'import_s'), '{:.2f}'):>10} "
            f"{fmt(median_of(rl, 'import_s'), '{:.2f}'):>12} {acc(trl):>16} {acc(rl):>18}"
        )
    for work, what in (("grpo", "mean reward"), ("dpo", "training loss")):
        settings = [(s, label) for (w, s), (label, _) in works.items() if w == work]
        if not settings:
            continue
        curves = {
            (lib, s): mean_curve(results[lib].get(f"{work}/{s}", []))
            for s, _ in settings
            for lib in ("trl", "rlgen")
        }
        n = max((len(c) for c in curves.values()), default=0)
        lines += ["", f"{work.upper()} {what} per step (mean over rounds), every 5th step:"]
        header = f"{'step':>4}"
        for _, label in settings:
            header += f" {label + ' TRL':>26} {label + ' rlgen':>28}"
        lines.append(header)
        for i in sorted(set(range(0, n, 5)) | {n - 1}):
            row = f"{i + 1:>4}"
            for s, _ in settings:
                for lib, width in (("trl", 26), ("rlgen", 28)):
                    c = curves[(lib, s)]
                    row += f" {fmt(c[i] if i < len(c) else None):>{width}}"
            lines.append(row)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    parser.add_argument("--grpo-lr", type=float, default=2e-3)
    parser.add_argument("--dpo-lr", type=float, default=5e-4)
    parser.add_argument("--quick", action="store_true", help="1 round of 8 steps (smoke test)")
    parser.add_argument("--trl-python", type=Path, default=ROOT / ".venv-trl" / "bin" / "python")
    parser.add_argument("--skip-trl", metavar="WHY", help="run the rlgen side only, saying why")
    parser.add_argument("--only", choices=["grpo", "dpo"], help="run one work only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process")
    parser.add_argument(
        "--max-wait",
        type=float,
        default=60,
        help="seconds to wait before each run for other processes to leave the CPUs",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_trl.json")
    parser.add_argument(
        "--worker", nargs=4, metavar=("SPEC", "WORK", "SETTING", "SEED"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        spec, work, setting, seed = args.worker
        return rlgen_worker(spec, work, setting, int(seed))
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 8, 2
        args.max_wait = min(args.max_wait, 5)

    skip = args.skip_trl or trl_unavailable(args.trl_python)
    if skip:
        print(f"TRL side skipped: {skip}", flush=True)
    works = [(w, s) for (w, s) in WORKS if args.only in (None, w)]
    results = {"trl": {}, "rlgen": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec = make_spec(args)
        spec_path.write_text(json.dumps(spec))
        for round_ in range(args.rounds):
            for work, setting in works:
                for lib in ("trl", "rlgen"):
                    if lib == "trl" and skip:
                        continue
                    task = [str(spec_path), work, setting, str(round_)]
                    command = (
                        [str(args.trl_python), str(TRL_SIDE), *task]
                        if lib == "trl"
                        else [sys.executable, __file__, "--worker", *task]
                    )
                    cache = {"RLGEN_COMPILATION_CACHE": str(Path(tmp) / "jax-cache")}
                    out = run_side(command, args.timeout, args.max_wait, cache)
                    out["round"] = round_
                    results[lib].setdefault(f"{work}/{setting}", []).append(out)
                    label = WORKS[(work, setting)][0]
                    if "error" in out:
                        print(
                            f"round {round_ + 1} {lib:<5} {label}: FAILED {out['error']}",
                            flush=True,
                        )
                    else:
                        print(
                            f"round {round_ + 1} {lib:<5} {label:<22} "
                            f"{out['median_step_s']:.4f} s/step, first "
                            f"{out['first_step_s']:.2f} s, {out['peak_rss_mb']:.0f} MB, "
                            f"other processes {fmt(out['other_cores_during'], '{:.2f}')} cores",
                            flush=True,
                        )
    # Keep only the successful runs for the summary (the failures are in the JSON).
    ok = {
        lib: {k: [r for r in v if "error" not in r] for k, v in d.items()}
        for lib, d in results.items()
    }
    for key in (f"{w}/{s}" for w, s in works):
        ok["rlgen"].setdefault(key, [])
    text = report(ok, works, args.rounds)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in spec.items() if k not in ("grpo", "dpo")}
    for work in ("grpo", "dpo"):
        settings[work] = {
            k: v for k, v in spec[work].items() if k not in ("prompts", "train", "heldout")
        }
    args.out.write_text(
        json.dumps(
            {
                "settings": settings,
                "rounds": args.rounds,
                "trl_skipped": skip,
                "seconds": time.perf_counter() - start,
                "results": results,
                "table": text,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
