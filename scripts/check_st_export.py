#!/usr/bin/env python3
"""Load a fine-tuning run's export with Python's sentence-transformers and code text with it.

    python3 scripts/check_st_export.py RUN_DIR/export/encoder TEXTS.txt [--tab-field 1] \
        [--codes RUN_DIR/export/codes] [--rows 300]

Embeds the first --rows lines of TEXTS.txt with `SentenceTransformer(EXPORT)` (the fine-tuned
transformer, its pooling and normalisation, read from the directory's own files), applies the
exported head (`encoder.safetensors`: bit_j = ((x - mean) @ projection - thresholds)_j >= 0,
packed LSB-first in little-endian u64 words) and compares the codes with the first --rows rows
of CODES_DIR/codes.bcodes (the run's database codes, so TEXTS.txt must be the database lines:
the run's text file without its first data.queries lines). Prints the fraction of differing
bits (float rounding of a projection at 0 may flip a few) and fails above --max-bit-fraction.

Needs torch, sentence-transformers and safetensors (not installed by CI: PyTorch is large).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


def fail(msg):
    print(f"check_st_export: {msg}", file=sys.stderr)
    sys.exit(1)


def read_bcodes(codes_dir):
    path = os.path.join(codes_dir, "codes.bcodes")
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"BLLMCODE":
        fail(f"{path}: bad magic")
    header_len = struct.unpack_from("<I", data, 12)[0]
    manifest = json.load(open(os.path.join(codes_dir, "manifest.json")))
    rows, wpr = manifest["rows"], manifest["words_per_row"]
    payload = np.frombuffer(data[header_len:], dtype="<u8")
    if payload.size != rows * wpr:
        fail(f"{path}: {payload.size} words, expected {rows} x {wpr}")
    return manifest["bits"], payload.reshape(rows, wpr)


def pack(bits):
    """[n, k] bool -> [n, ceil(k/64)] little-endian u64, bit j of a row at word j // 64, bit j % 64."""
    n, k = bits.shape
    words = (k + 63) // 64
    padded = np.zeros((n, words * 64), dtype=bool)
    padded[:, :k] = bits
    as_bytes = np.packbits(padded.reshape(n, words * 8, 8), axis=2, bitorder="little")
    return as_bytes.reshape(n, words * 8).view("<u8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("texts")
    ap.add_argument("--tab-field", type=int, default=None)
    ap.add_argument("--codes", default=None, help="default: EXPORT/../codes")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--max-bit-fraction", type=float, default=1e-3)
    a = ap.parse_args()

    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    lines = open(a.texts, encoding="utf-8").read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if a.tab_field is not None:
        lines = [l.split("\t")[a.tab_field] for l in lines]
    texts = lines[: a.rows]
    model = SentenceTransformer(a.export, device="cpu")
    emb = model.encode(texts, batch_size=64, convert_to_numpy=True).astype(np.float64)
    meta = json.load(open(os.path.join(a.export, "encoder.json")))
    head = load_file(os.path.join(a.export, "encoder.safetensors"))
    if meta.get("normalize"):
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    z = (emb - head["mean"].astype(np.float64)) @ head["projection"].astype(np.float64)
    bits = (z - head["thresholds"].astype(np.float64)) >= 0
    codes_dir = a.codes or os.path.join(os.path.dirname(os.path.abspath(a.export)), "codes")
    k, want = read_bcodes(codes_dir)
    if k != bits.shape[1]:
        fail(f"{codes_dir}: {k} bits, the head gives {bits.shape[1]}")
    got = pack(bits)
    diff = np.unpackbits((got ^ want[: len(texts)]).view(np.uint8)).sum()
    frac = diff / (len(texts) * k)
    print(
        f"sentence-transformers {__import__('sentence_transformers').__version__} loaded {a.export}: "
        f"{len(texts)} texts, {diff} of {len(texts) * k} code bits differ from {codes_dir} ({frac:.2e})"
    )
    if frac > a.max_bit_fraction:
        fail(f"bit fraction {frac:.2e} above {a.max_bit_fraction}")


if __name__ == "__main__":
    main()
