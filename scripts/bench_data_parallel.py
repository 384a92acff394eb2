#!/usr/bin/env python3
"""Throughput of one process against N data-parallel processes (`bllm launch`) on this machine.

Each configuration trains the same recipe twice, for S and 3·S steps; the time per step is the
difference of the two wall times over 2·S steps, so start-up, model loading, the final
evaluation and the checkpoint cancel. Prints one table (and `--json FILE`).

    python3 scripts/bench_data_parallel.py --cases lm-float,lm-6x256 --nproc 2
    python3 scripts/bench_data_parallel.py --cases smollm2-qat --steps 3    # needs models/smollm2

One process gets every core (`--threads cores`) and, for reference, one thread; each of N ranks
gets cores/N threads.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUIET = ["eval.every=0", "checkpoint.every=0", "monitors.every=1000000"]

CASES = {
    "lm-float": {
        "what": "float byte LM 2 x 64, context 64, batch 32",
        "recipe": "recipes/lm/float.toml",
        "overrides": ["data.eval_bytes=2048", "schedule.warmup_steps=1"],
        "tokens": 32 * 64,
    },
    "lm-6x256": {
        "what": "float byte LM 6 x 256, 8 heads, context 128, batch 16",
        "recipe": "recipes/lm/float.toml",
        "overrides": [
            "model.d_model=256",
            "model.layers=6",
            "model.heads=8",
            "model.context=128",
            "train.batch_size=16",
            "data.eval_bytes=4096",
            "schedule.warmup_steps=1",
        ],
        "tokens": 16 * 128,
    },
    "smollm2-qat": {
        "what": "SmolLM2-135M, 1-bit block projections (QAT), 4 x 128 tokens",
        "recipe": "recipes/pretrained/onebit-qat.toml",
        "overrides": ["train.batch_size=4", "data.eval_bytes=2000", "schedule.warmup_steps=1"],
        "tokens": 4 * 128,
    },
}


def run(bllm, case, steps, nproc, threads):
    c = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        args = [c["recipe"], *c["overrides"], *QUIET, f"train.steps={steps}"]
        if nproc == 1:
            cmd = [bllm, "--threads", str(threads), "run", *args, "--run-dir", f"{tmp}/run"]
        else:
            cmd = [bllm, "launch", "--nproc", str(nproc), "--threads-per-rank", str(threads),
                   *args, "--run-dir", f"{tmp}/run"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "BLLM_LOG": "warn"})
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
        return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bllm", default=os.path.join(ROOT, "target/release/bllm"))
    ap.add_argument("--cases", default="lm-float,lm-6x256")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="S: runs of S and 3·S steps")
    ap.add_argument("--json")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for case in a.cases.split(","):
        if case not in CASES:
            sys.exit(f"--cases: unknown case {case!r} (known: {', '.join(CASES)})")
        per = {}
        for key, nproc, threads in [("one", 1, cores), ("single", 1, 1),
                                    ("many", a.nproc, max(1, cores // a.nproc))]:
            short = run(a.bllm, case, a.steps, nproc, threads)
            long = run(a.bllm, case, 3 * a.steps, nproc, threads)
            per[key] = (long - short) / (2 * a.steps)
        one, single, many = per["one"], per["single"], per["many"]
        rows.append({
            "case": case, "what": CASES[case]["what"], "nproc": a.nproc, "cores": cores,
            "ms_per_step_1": one * 1e3, "ms_per_step_n": many * 1e3,
            "tokens_per_s_1": CASES[case]["tokens"] / one,
            "tokens_per_s_n": CASES[case]["tokens"] / many, "speedup": one / many,
            "ms_per_step_1x1": single * 1e3, "tokens_per_s_1x1": CASES[case]["tokens"] / single,
        })
    print(f"| case | 1 process × 1 thread: tokens/s | 1 process × {cores} threads: ms/step | "
          f"tokens/s | {a.nproc} processes × {max(1, cores // a.nproc)} threads: ms/step | "
          f"tokens/s | speed-up over 1 process |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['tokens_per_s_1x1']:.0f} | {r['ms_per_step_1']:.0f} | "
              f"{r['tokens_per_s_1']:.0f} | {r['ms_per_step_n']:.0f} | {r['tokens_per_s_n']:.0f} | "
              f"{r['speedup']:.2f}× |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
