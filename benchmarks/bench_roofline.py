"""The GRPO step against its hardware floor: generation and update, measured vs. roofline.

For the built-in transformer (`rlgen.models.TransformerLM`) at a given size, this script
measures on the default JAX device:

* **generation**: `generate` of `prompts x num_generations` completions (compiled,
  cached decoding, every row running to `max_new_tokens`: no EOS);
* **update**: one compiled GRPO update (`rlgen.algorithms.grpo` through `GRPOTrainer`'s
  step) on that batch, with `beta = 0` and with a k3 KL to the initial model
  (`beta = 0.04`, one more forward pass);
* **compile**: the seconds to trace and compile each program, with the layers scanned
  (`scan_layers=True`, the default) and unrolled.

and sets each time against its floor, the least time the hardware needs:

    generation >= sum_t max(bytes_t / bandwidth, flops_t / peak)
        bytes_t = parameter bytes (read once per token) + KV-cache bytes up to token t
        flops_t = 2 * parameters * rows (+ attention over the cache)
    update     >= flops / peak,   flops = (6 [+ 2 for the reference]) * parameters * tokens
                                          (+ attention)

`peak` (matmul FLOP/s in the compute dtype) and `bandwidth` (bytes/s of a large copy) are
measured on the device by the script itself, so the floors are those of this machine.
Parameters count every matrix the tokens pass through (the embedding table is read, not
multiplied: its rows count as bytes only).

Run: `python benchmarks/bench_roofline.py --size small` (CPU, about two minutes),
`--size tiny` (the size `bench_trl.py` compares with TRL), `--size gpt2` (12 layers,
width 768, vocabulary 32768, 16 prompts x 8, 64 + 128 tokens, bfloat16: the GPU table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlgen.algorithms import GRPOConfig
from rlgen.models import SamplingConfig, TransformerConfig, TransformerLM
from rlgen.trainers import DPOTrainer, GRPOTrainer


@dataclasses.dataclass(frozen=True)
class Size:
    layers: int
    width: int
    vocab: int
    prompts: int
    generations: int
    prompt_len: int
    new_tokens: int
    dpo_pairs: int
    dtype: str = "float32"


SIZES = {
    "tiny": Size(2, 128, 32, 2, 8, 6, 16, 16),
    "small": Size(4, 256, 4096, 8, 8, 32, 64, 32),
    "gpt2": Size(12, 768, 32768, 16, 8, 64, 128, 32, "bfloat16"),
}


def median_time(fn, repeats):
    return interleaved_medians({"fn": fn}, repeats)["fn"]


def interleaved_medians(fns, repeats):
    """Median seconds of each of `fns` (a dict of thunks), timed in turn, round by round,
    so that a noisy machine slows all of them alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # warm
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def device_peaks(dtype, repeats=5):
    """(matmul FLOP/s in `dtype`, copy bytes/s) measured on the default device."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x: x @ x)
    flops = 2 * n**3 / median_time(lambda: matmul(a), repeats)
    big = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MB
    copy = jax.jit(lambda x: x * 1.0001)
    bandwidth = 2 * big.nbytes / median_time(lambda: copy(big), repeats)  # read + write
    return flops, bandwidth


def model_counts(cfg: TransformerConfig):
    """(matmul parameters per token, stored parameters)."""
    d, f = cfg.d_model, cfg.ff_dim
    per_layer = 3 * d * d + d * d + 2 * d * f
    matmul = cfg.num_layers * per_layer + d * cfg.vocab_size  # the head (tied or not)
    stored = matmul + cfg.vocab_size * d * (0 if cfg.tie_embeddings else 1) + cfg.max_len * d
    return matmul, stored


def floors(size: Size, cfg: TransformerConfig, peak, bandwidth):
    rows = size.prompts * size.generations
    matmul, stored = model_counts(cfg)
    itemsize = jnp.dtype(cfg.dtype).itemsize
    kv_per_position = 2 * cfg.num_layers * cfg.d_model * itemsize * rows
    generation = 0.0
    for t in range(size.new_tokens):
        cache = size.prompt_len + t
        nbytes = stored * itemsize + kv_per_position * cache
        nflops = 2 * matmul * rows + 4 * rows * cfg.num_layers * cfg.d_model * cache
        generation += max(nbytes / bandwidth, nflops / peak)
    tokens = rows * (size.prompt_len + size.new_tokens - 1)
    length = size.prompt_len + size.new_tokens - 1
    attention = 4 * rows * cfg.num_layers * cfg.d_model * length * length / 2  # causal
    forward = 2 * matmul * tokens + attention
    # DPO: forward and backward of chosen and rejected (2 x pairs rows of `length` tokens)
    # and the frozen reference's forward: 4 forward passes' flops
    per_row = 2 * matmul * length + 4 * cfg.num_layers * cfg.d_model * length * length / 2
    dpo = 4 * 2 * size.dpo_pairs * per_row
    return {"generation": generation, "update": 3 * forward / peak,
            "update_kl": 4 * forward / peak, "dpo": dpo / peak}


def build(size: Size, *, beta: float, scan: bool):
    cfg = TransformerConfig(
        vocab_size=size.vocab,
        max_len=size.prompt_len + size.new_tokens,
        d_model=size.width,
        num_heads=max(1, size.width // 64),
        num_layers=size.layers,
        dtype=size.dtype,
        tie_embeddings=True,
        scan_layers=scan,
    )
    model = TransformerLM(cfg, rngs=nnx.Rngs(0), sampling=SamplingConfig(size.new_tokens))
    config = GRPOConfig(
        num_generations=size.generations, beta=beta, reference="initial", entropy_coeff=0.0
    )
    trainer = GRPOTrainer(model, nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param), config)
    return cfg, model, trainer


def measure_one(size: Size, *, scan: bool, beta: float):
    """Compile seconds of the generation and update programs, and thunks running them."""
    rows = size.prompts * size.generations
    key = jax.random.key(0)
    prompts = jax.random.randint(key, (rows, size.prompt_len), 0, size.vocab)
    cfg, model, trainer = build(size, beta=beta, scan=scan)
    graphdef, state = nnx.split(model)

    def generate(state, prompts, key):
        return nnx.merge(graphdef, state).generate(prompts, key, max_new_tokens=size.new_tokens)

    gen = jax.jit(generate)
    start = time.perf_counter()
    gen.lower(state, prompts, key).compile()
    out = {"generation_compile_s": time.perf_counter() - start}
    actions, mask = gen(state, prompts, key)
    batch = {
        "observations": prompts,
        "actions": actions,
        "rewards": jax.random.normal(key, (rows,)),
        "mask": mask,
    }
    static = (("group_size", size.generations),)
    step = trainer._compiled_update  # the trainer's compiled GRPO update
    start = time.perf_counter()
    step.lower(trainer.state, trainer._rest, batch, static=static).compile()
    out["update_compile_s"] = time.perf_counter() - start
    runners = {
        "generation_s": lambda: gen(state, prompts, key),
        "update_s": lambda: step(trainer.state, trainer._rest, batch, static=static),
    }
    if beta == 0.0:  # DPO once per layout: frozen reference, sigmoid loss
        pairs = size.dpo_pairs
        seqs = jax.random.randint(key, (2, pairs, size.new_tokens), 0, size.vocab)
        dpo_batch = {
            "chosen_observations": prompts[:pairs],
            "chosen_actions": seqs[0],
            "rejected_observations": prompts[:pairs],
            "rejected_actions": seqs[1],
        }
        dpo = DPOTrainer(model, nnx.Optimizer(model, optax.adam(1e-5), wrt=nnx.Param))
        start = time.perf_counter()
        dpo._compiled_update.lower(dpo.state, dpo._rest, dpo_batch).compile()
        out["dpo_compile_s"] = time.perf_counter() - start
        runners["dpo_s"] = lambda: dpo._compiled_update(dpo.state, dpo._rest, dpo_batch)
    return cfg, out, runners


def measure(size: Size, repeats: int):
    out, runners = {}, {}
    for scan in (True, False):
        for beta in (0.0, 0.04):
            name = f"{'scan' if scan else 'unrolled'} beta={beta}"
            cfg, out[name], run = measure_one(size, scan=scan, beta=beta)
            if scan:  # run times of the scanned default only
                runners.update({(name, part): fn for part, fn in run.items()})
    for (name, part), seconds in interleaved_medians(runners, repeats).items():
        out[name][part] = seconds
    return cfg, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    size = SIZES[args.size]
    peak, bandwidth = device_peaks(jnp.dtype(size.dtype))
    cfg, results = measure(size, args.repeats)
    floor = floors(size, cfg, peak, bandwidth)
    device = jax.devices()[0]
    print(f"# {args.size}: {size}")
    print(f"# device {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"measured peak {peak / 1e9:.1f} GFLOP/s ({size.dtype}), copy {bandwidth / 1e9:.1f} GB/s")
    print("| part | measured s | floor s | measured / floor |")
    print("|---|---:|---:|---:|")
    scanned = results["scan beta=0.0"], results["scan beta=0.04"]
    rows = [
        ("generation", scanned[0]["generation_s"], floor["generation"]),
        ("update, beta = 0", scanned[0]["update_s"], floor["update"]),
        ("update, k3 KL (beta = 0.04)", scanned[1]["update_s"], floor["update_kl"]),
        ("GRPO step (generation + update with KL)",
         scanned[0]["generation_s"] + scanned[1]["update_s"],
         floor["generation"] + floor["update_kl"]),
        (f"DPO step ({size.dpo_pairs} pairs, frozen reference)", scanned[0]["dpo_s"],
         floor["dpo"]),
    ]
    for name, measured, low in rows:
        print(f"| {name} | {measured:.4f} | {low:.4f} | {measured / low:.1f}x |")
    print("\n| compile s | generation | update (beta 0) | update (KL) | DPO |")
    print("|---|---:|---:|---:|---:|")
    for layout in ("scan", "unrolled"):
        a, b = results[f"{layout} beta=0.0"], results[f"{layout} beta=0.04"]
        print(f"| {layout} layers | {a['generation_compile_s']:.1f} | "
              f"{a['update_compile_s']:.1f} | {b['update_compile_s']:.1f} | "
              f"{a['dpo_compile_s']:.1f} |")
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
    if "peak_bytes_in_use" in stats:
        print(f"\npeak device memory {stats['peak_bytes_in_use'] / 2**30:.1f} GiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": dataclasses.asdict(size), "peak_flops": peak,
                       "bandwidth": bandwidth, "floors": floor, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
