#!/usr/bin/env bash
# The GPU figures of rlgen's side (run from the repository root on a machine with a GPU and
# `pip install -e . "jax[cuda12]"`): the GRPO step (generation and update, beta 0 and a k3
# KL), the DPO step, compile seconds (layers scanned and unrolled) and peak device memory,
# each against its roofline floor, at the shape of issue 11's table: GPT-2 style, 12
# layers, width 768, vocabulary 32768, bf16 compute, 16 prompts x 8 samples, 64-token
# prompts, 128 new tokens; DPO 32 pairs of 192 tokens. Then the CPU-sized comparisons.
#
# TRL's side on a GPU is not scripted here: `benchmarks/bench_trl.py` runs it on the CPU.
set -euo pipefail
mkdir -p runs
python - <<'PY'
import jax
if jax.default_backend() == "cpu":
    raise SystemExit("bench_gpu.sh: JAX sees no GPU (install jax[cuda12]); nothing measured")
print("devices:", jax.devices())
PY
python benchmarks/bench_roofline.py --size gpt2 --repeats 5 --out runs/roofline_gpt2.json
python benchmarks/bench_roofline.py --size tiny --repeats 20 --out runs/roofline_tiny.json
