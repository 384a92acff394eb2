#!/usr/bin/env python3
"""Exact Hamming top-k: `bllm codes bench` side by side with FAISS IndexBinaryFlat.

Runs `bllm codes bench --save-data` (which writes the random database, queries and its own
results as .npy), then searches the same data with faiss-cpu's IndexBinaryFlat on the same
number of threads, checks that both return the same distances, and prints the ratio.

    pip install numpy faiss-cpu
    cargo build --release -p bllm-cli
    python3 scripts/bench_vs_faiss.py --threads 2
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bllm", default=os.path.join("target", "release", "bllm"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--db-rows", type=int, default=1_000_000)
    p.add_argument("--bits", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.bits % 8:
        sys.exit("FAISS binary indexes need bits to be a multiple of 8")

    import faiss
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "bench.json")
        cmd = [args.bllm, "--threads", str(args.threads), "codes", "bench",
               "--db-rows", str(args.db_rows), "--bits", str(args.bits),
               "--queries", str(args.queries), "-k", str(args.k),
               "--repeats", str(args.repeats), "--save-data", tmp, "--json", report_path]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        with open(report_path) as f:
            ours = json.load(f)
        db = np.load(os.path.join(tmp, "db.npy"))
        q = np.load(os.path.join(tmp, "queries.npy"))
        our_ids = np.load(os.path.join(tmp, "ids.npy")).astype(np.int64)
        our_d = np.load(os.path.join(tmp, "dists.npy")).astype(np.int64)

    faiss.omp_set_num_threads(args.threads)
    index = faiss.IndexBinaryFlat(args.bits)
    index.add(db)
    best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        fd, fi = index.search(q, args.k)
        best = min(best, time.perf_counter() - t)

    # Same distances at every rank (ids may differ only among equal distances).
    if not np.array_equal(fd.astype(np.int64), our_d):
        print("MISMATCH: FAISS and bllm return different distances", file=sys.stderr)
        return 1
    same_ids = float((fi == our_ids).mean())
    # Each id FAISS returned really is at the distance it reports.
    bits = np.unpackbits(db[fi[:, -1]], axis=1, bitorder="little")
    qbits = np.unpackbits(q, axis=1, bitorder="little")
    assert np.array_equal((bits != qbits).sum(axis=1), fd[:, -1])

    faiss_qps = args.queries / best
    ours_qps = ours["search_queries_per_s"]
    print(f"| exact Hamming top-{args.k}, {args.db_rows} x {args.bits} bits, {args.queries} queries, "
          f"{args.threads} threads | queries/s |")
    print("|---|---|")
    print(f"| bllm codes (best of {args.repeats}) | {ours_qps:.1f} |")
    print(f"| faiss-cpu {faiss.__version__} IndexBinaryFlat (best of {args.repeats}) | {faiss_qps:.1f} |")
    print(f"| ratio bllm / faiss | {ours_qps / faiss_qps:.2f} |")
    print(f"distances identical at every rank; ids identical at {same_ids:.1%} of ranks (rest are ties)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
