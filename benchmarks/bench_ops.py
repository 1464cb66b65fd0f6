"""Benchmarks of the `rlgen.ops` kernels (numbers go in the README, never in tests).

1. GAE: rlgen's scan and associative forms vs `rlax.truncated_generalized_advantage_estimation`
   (vmapped over rows) vs a NumPy loop, at (T, B) = (1024, 256), (16384, 8), (128, 4096).
   Medians of interleaved runs in shuffled order; ratio to rlax, to the memory floor (the
   bytes GAE reads and writes divided by the main-memory copy bandwidth measured in the
   same run), and to a compiled copy of as many bytes timed in the same rounds (which
   runs from cache at these sizes, so it is the stricter floor).
2. Token log-probs: direct vs memory-light at B=8, T=1024, V=32768 (forward, and value and
   gradient): median time and peak temporary memory from the compiled program's memory
   analysis.

Run: `make bench` (or `python benchmarks/bench_ops.py [--quick]`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import rlax

from rlgen import ops

GAMMA, LAMBDA = 0.99, 0.95


def _timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def interleaved_medians(candidates: dict, args_for: dict, repeats: int) -> dict:
    """Median seconds per candidate over `repeats` rounds.

    Each round visits the candidates in a fresh random order (seeded) and times each one
    right after an untimed call of the same candidate, so no candidate always pays for
    following another's cache and thread-pool disturbance (measured: whatever ran right
    after the NumPy loop was up to 1.5x slower).
    """
    for name, fn in candidates.items():  # warm up (compile) outside the timing
        jax.block_until_ready(fn(*args_for[name]))
    rng = np.random.default_rng(0)
    names = list(candidates)
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name in rng.permutation(names):
            jax.block_until_ready(candidates[name](*args_for[name]))
            times[name].append(_timed(candidates[name], *args_for[name]))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _copy(x):
    return x * 1.0000001  # an out-of-place copy XLA cannot elide


def copy_bandwidth(repeats: int) -> float:
    """Bytes per second (read + write) of a compiled copy of 256 MiB: main-memory speed."""
    x = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    seconds = interleaved_medians({"copy": jax.jit(_copy)}, {"copy": (x,)}, repeats)["copy"]
    return 2 * x.nbytes / seconds


def numpy_gae(rewards, dones, values):
    """Reference NumPy loop, time-major over a batch-major array."""
    batch, horizon = rewards.shape
    adv = np.zeros_like(rewards)
    last = np.zeros(batch, rewards.dtype)
    for t in range(horizon - 1, -1, -1):
        discount = GAMMA * (1.0 - dones[:, t])
        delta = rewards[:, t] + discount * values[:, t + 1] - values[:, t]
        last = delta + discount * LAMBDA * last
        adv[:, t] = last
    return adv


def bench_gae(shapes, repeats, bandwidth):
    rows = []
    for horizon, batch in shapes:
        key = jax.random.key(horizon * 7 + batch)
        k1, k2, k3 = jax.random.split(key, 3)
        rewards = jax.random.normal(k1, (batch, horizon))
        dones = jax.random.bernoulli(k2, 0.01, (batch, horizon)).astype(jnp.float32)
        values = jax.random.normal(k3, (batch, horizon + 1))

        scan = jax.jit(lambda r, d, v: ops.gae_advantages(r, v, GAMMA, LAMBDA, dones=d))
        assoc = jax.jit(
            lambda r, d, v: ops.gae_advantages(r, v, GAMMA, LAMBDA, dones=d, method="associative")
        )
        rlax_gae = jax.jit(
            jax.vmap(
                lambda r, d, v: rlax.truncated_generalized_advantage_estimation(
                    r, GAMMA * (1.0 - d), LAMBDA, v
                )
            )
        )
        np_args = tuple(np.asarray(a) for a in (rewards, dones, values))
        # Memory floors: bytes moved at main-memory copy bandwidth, and a compiled copy
        # moving as many bytes (cache-resident at these sizes), timed in the same rounds.
        bytes_moved = 4 * (3 * batch * horizon + batch * (horizon + 1))
        copy_src = jnp.ones((bytes_moved // 8,), jnp.float32)  # read + write = bytes_moved
        candidates = {
            "rlgen scan": scan,
            "rlgen associative": assoc,
            "rlax (vmapped)": rlax_gae,
            "NumPy loop": numpy_gae,
            "same-size copy": jax.jit(_copy),
        }
        args = {name: (rewards, dones, values) for name in candidates}
        args["NumPy loop"] = np_args
        args["same-size copy"] = (copy_src,)
        ref = np.asarray(rlax_gae(rewards, dones, values))
        for name in ("rlgen scan", "rlgen associative"):
            got = np.asarray(candidates[name](rewards, dones, values))
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
        medians = interleaved_medians(candidates, args, repeats)
        floor = bytes_moved / bandwidth
        same_size = medians["same-size copy"]
        for name, seconds in medians.items():
            rows.append(
                (
                    f"({horizon}, {batch})",
                    name,
                    seconds * 1e3,
                    seconds / medians["rlax (vmapped)"],
                    seconds / floor,
                    seconds / same_size,
                )
            )
    return rows


def bench_log_probs(batch, horizon, vocab, repeats):
    key = jax.random.key(0)
    logits = jax.random.normal(key, (batch, horizon, vocab), jnp.float32)
    actions = jax.random.randint(jax.random.key(1), (batch, horizon), 0, vocab)
    weights = jax.random.normal(jax.random.key(2), (batch, horizon))
    kernels = {"direct": ops.token_log_probs, "memory-light": ops.token_log_probs_memory_light}
    rows = []
    programs, args = {}, {}
    for name, kernel in kernels.items():
        fwd = jax.jit(kernel)

        def loss(z, a, kernel=kernel):
            return jnp.sum(kernel(z, a) * weights)

        grad = jax.jit(jax.value_and_grad(loss))
        programs[f"{name} forward"] = fwd
        programs[f"{name} value+grad"] = grad
        for program in (f"{name} forward", f"{name} value+grad"):
            args[program] = (logits, actions)
    np.testing.assert_allclose(
        programs["direct forward"](logits, actions),
        programs["memory-light forward"](logits, actions),
        rtol=1e-5,
        atol=1e-5,
    )
    medians = interleaved_medians(programs, args, repeats)
    for program, fn in programs.items():
        analysis = fn.lower(logits, actions).compile().memory_analysis()
        temp = analysis.temp_size_in_bytes if analysis is not None else float("nan")
        rows.append((program, medians[program] * 1e3, temp / 2**20))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    opts = parser.parse_args()
    repeats = opts.repeats or (3 if opts.quick else 15)
    if opts.quick:
        gae_shapes = [(128, 64), (1024, 4), (32, 512)]
        lp_shape = (2, 128, 4096)
    else:
        gae_shapes = [(1024, 256), (16384, 8), (128, 4096)]
        lp_shape = (8, 1024, 32768)

    print(f"# rlgen ops benchmark — jax {jax.__version__}, {jax.devices()[0].device_kind}, "
          f"{len(jax.devices())} device(s), medians of {repeats} interleaved runs\n")
    bandwidth = copy_bandwidth(repeats)
    print(f"main-memory copy bandwidth (read + write, 256 MiB): {bandwidth / 1e9:.2f} GB/s\n")
    print("## GAE (gamma=0.99, lambda=0.95, 1% episode ends)\n")
    print("| (T, B) | implementation | median ms | vs rlax | vs memory floor | "
          "vs same-size copy |")
    print("|---|---|---:|---:|---:|---:|")
    for shape, name, ms, vs_rlax, vs_floor, vs_copy in bench_gae(gae_shapes, repeats, bandwidth):
        print(f"| {shape} | {name} | {ms:.3f} | {vs_rlax:.2f}x | {vs_floor:.1f}x | "
              f"{vs_copy:.1f}x |")
    b, t, v = lp_shape
    print(f"\n## Token log-probs (B={b}, T={t}, V={v}, float32 logits)\n")
    print("| program | median ms | peak temporary MiB |")
    print("|---|---:|---:|")
    lp_repeats = max(3, repeats // 3)
    for program, ms, mib in bench_log_probs(b, t, v, lp_repeats):
        print(f"| {program} | {ms:.1f} | {mib:.1f} |")


if __name__ == "__main__":
    main()
