#!/usr/bin/env python3
"""Throughput of the Python reference stack on this machine's CPU, to compare BinaryLLM's Rust
models against (same models, same data, same thread count).

    /tmp/pyref/bin/python scripts/bench_models_vs_torch.py                 # full run
    /tmp/pyref/bin/python scripts/bench_models_vs_torch.py --quick         # small sizes, a smoke test
    /tmp/pyref/bin/python scripts/bench_models_vs_torch.py --json out.json # also write the numbers

Measures
  minilm_encode     sentence-transformers all-MiniLM-L6-v2 `encode(texts, batch_size=128,
                    normalize_embeddings=True)` on the 10,000 verses of
                    datasets/kjv-minilm/verses.txt (the verse text after the TAB, as
                    datasets/kjv-minilm/generate.py embedded them), after a warm-up on 256;
                    texts/s (and tokens/s, counting [CLS]/[SEP]).
  smollm2_prefill   transformers SmolLM2-135M-Instruct, the Q4_1 GGUF dequantised to f32
                    (attention: torch sdpa, the transformers default), one forward of a batch of 1
                    x 256 tokens of KJV text (no KV cache kept), `--repeats` times after one
                    warm-up; median seconds -> tokens/s.
  minilm_tokenize   the HF `tokenizers` library (models/minilm/tokenizer.json, with its built-in
                    Fixed(128) padding removed and truncation set to 256, as sentence-transformers
                    does), Tokenizer.encode one verse at a time (single thread), same verses.
  smollm2_tokenize  the correct SmolLM2 tokenizer (scripts/make_model_references.py
                    build_smollm_tokenizer: tokenizers BPE from the GGUF with the smollm
                    pre-tokenizer) on datasets/kjv-text/valid.txt, one line at a time (single
                    thread), and the whole file as one string; MB/s and tokens/s.

Threads: OMP_NUM_THREADS=2, OMP_WAIT_POLICY=PASSIVE and torch.set_num_threads(2) are set by the
script before importing torch (change with --threads); tokenizers run single threaded
(RAYON_NUM_THREADS / TOKENIZERS_PARALLELISM=false). Offline: HF_HUB_OFFLINE=1,
TRANSFORMERS_OFFLINE=1.
"""

import argparse
import os
import sys

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--quick", action="store_true", help="small sizes: 512 verses, context 64, 2 repeats")
ap.add_argument("--json", metavar="OUT", help="write the numbers as JSON to OUT")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=None, help="prefill repeats (default 5, quick 2)")
ap.add_argument("--context", type=int, default=None, help="prefill context (default 256, quick 64)")
ap.add_argument("--only", nargs="*", default=None,
                help="subset of: minilm_encode smollm2_prefill minilm_tokenize smollm2_tokenize")
args = ap.parse_args()

os.environ["OMP_NUM_THREADS"] = str(args.threads)
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(args.threads)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model_references as ref  # noqa: E402

ROOT = ref.ROOT
N_VERSES = 512 if args.quick else 10_000
WARMUP = 64 if args.quick else 256
CONTEXT = args.context or (64 if args.quick else 256)
REPEATS = args.repeats or (2 if args.quick else 5)
ONLY = set(args.only) if args.only else None


def verse_texts():
    return [line.split("\t", 1)[1] for line in ref.read_verses()]


def want(name):
    return ONLY is None or name in ONLY


results = {}


def bench_minilm_encode():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(ref.MINILM_DIR, device="cpu")
    texts = verse_texts()[:N_VERSES]
    model.encode(texts[:WARMUP], batch_size=128, normalize_embeddings=True, show_progress_bar=False)
    t = time.perf_counter()
    emb = model.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=False)
    dt = time.perf_counter() - t
    tokens = sum(len(x) for x in model.tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    assert emb.shape == (len(texts), 384)
    results["minilm_encode"] = {"texts": len(texts), "seconds": dt, "texts_per_s": len(texts) / dt,
                                "tokens": tokens, "tokens_per_s": tokens / dt, "batch_size": 128}


def bench_smollm2_prefill():
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(ref.SMOL_DIR, gguf_file=ref.SMOL_FILE, dtype=torch.float32)
    model.eval()
    tk, _ = ref.build_smollm_tokenizer()
    text, _ = ref.ppl_text()
    ids = ref.encode(tk, text)[:CONTEXT]
    assert len(ids) == CONTEXT
    x = torch.tensor([ids], dtype=torch.long)
    times = []
    with torch.inference_mode():
        model(x, use_cache=False)
        for _ in range(REPEATS):
            t = time.perf_counter()
            model(x, use_cache=False)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    results["smollm2_prefill"] = {"context": CONTEXT, "batch": 1, "repeats": REPEATS, "seconds": times,
                                  "median_s": med, "tokens_per_s": CONTEXT / med,
                                  "attn_implementation": model.config._attn_implementation}


def bench_minilm_tokenize():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(ref.MINILM_DIR, "tokenizer.json"))
    tok.no_padding()  # tokenizer.json pads to a fixed 128 and truncates at 128; ST uses 256, no padding
    tok.enable_truncation(256)
    texts = verse_texts()[:N_VERSES]
    for s in texts[:WARMUP]:
        tok.encode(s)
    t = time.perf_counter()
    n = sum(len(tok.encode(s).ids) for s in texts)
    dt = time.perf_counter() - t
    nbytes = sum(len(s.encode()) for s in texts)
    results["minilm_tokenize"] = {"texts": len(texts), "seconds": dt, "texts_per_s": len(texts) / dt,
                                  "tokens_per_s": n / dt, "mb_per_s": nbytes / dt / 1e6}


def bench_smollm2_tokenize():
    tk, _ = ref.build_smollm_tokenizer()
    with open(ref.KJV_VALID, encoding="utf-8") as f:
        whole = f.read()
    if args.quick:
        whole = whole[:20_000]
    lines = whole.split("\n")
    for s in lines[:WARMUP]:
        ref.encode(tk, s)
    t = time.perf_counter()
    n = sum(len(ref.encode(tk, s)) for s in lines)
    dt_lines = time.perf_counter() - t
    t = time.perf_counter()
    n_whole = len(ref.encode(tk, whole))
    dt_whole = time.perf_counter() - t
    nbytes = len(whole.encode())
    results["smollm2_tokenize"] = {
        "bytes": nbytes, "lines": len(lines),
        "lines_seconds": dt_lines, "lines_mb_per_s": nbytes / dt_lines / 1e6, "lines_tokens_per_s": n / dt_lines,
        "whole_seconds": dt_whole, "whole_mb_per_s": nbytes / dt_whole / 1e6, "whole_tokens": n_whole,
        "whole_tokens_per_s": n_whole / dt_whole}


for name, fn in [("minilm_tokenize", bench_minilm_tokenize), ("smollm2_tokenize", bench_smollm2_tokenize),
                 ("minilm_encode", bench_minilm_encode), ("smollm2_prefill", bench_smollm2_prefill)]:
    if want(name):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        fn()

rows = []
if "minilm_encode" in results:
    r = results["minilm_encode"]
    rows.append(("minilm encode (ST, bs 128)", f"{r['texts_per_s']:.1f} texts/s", f"{r['tokens_per_s']:.0f} tok/s", f"{r['texts']} texts, {r['seconds']:.2f} s"))
if "smollm2_prefill" in results:
    r = results["smollm2_prefill"]
    rows.append((f"smollm2 prefill f32 (ctx {r['context']}, bs 1)", f"{r['tokens_per_s']:.1f} tok/s", f"median {r['median_s'] * 1e3:.1f} ms", f"{r['repeats']} repeats, {r['attn_implementation']}"))
if "minilm_tokenize" in results:
    r = results["minilm_tokenize"]
    rows.append(("minilm tokenizer (tokenizers)", f"{r['texts_per_s']:.0f} texts/s", f"{r['tokens_per_s']:.0f} tok/s", f"{r['mb_per_s']:.2f} MB/s"))
if "smollm2_tokenize" in results:
    r = results["smollm2_tokenize"]
    rows.append(("smollm2 tokenizer, per line", f"{r['lines_mb_per_s']:.2f} MB/s", f"{r['lines_tokens_per_s']:.0f} tok/s", f"{r['lines']} lines"))
    rows.append(("smollm2 tokenizer, whole file", f"{r['whole_mb_per_s']:.2f} MB/s", f"{r['whole_tokens_per_s']:.0f} tok/s", f"{r['bytes']} bytes"))
w = [max(len(r[i]) for r in rows) for i in range(4)] if rows else []
print(f"threads {args.threads}{' (quick)' if args.quick else ''}; torch {torch.__version__}")
for r in rows:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))

if args.json:
    import importlib.metadata as md

    meta = {"threads": args.threads, "quick": args.quick, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count()}
    for p in ["torch", "transformers", "sentence-transformers", "tokenizers", "numpy"]:
        meta[p] = md.version(p)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
        f.write("\n")
    print(f"wrote {args.json}")
