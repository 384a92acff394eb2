#!/usr/bin/env python3
"""Cross-checks bllm's code files against numpy and FAISS (run by the end-to-end tests).

    python3 scripts/verify_formats.py FLOAT.npy BITS CODES_DIR U64.npy U8.npy [INDEX.faiss QUERIES_DIR NEIGHBORS.tsv K]

Checks, failing loudly on any difference:
* U8.npy equals numpy.packbits(FLOAT[:, :BITS] >= 0, axis=1, bitorder="little");
* U64.npy's bytes equal U8's rows zero-padded to whole u64 words (the contract layout), and
  equal the payload of CODES_DIR/codes.bcodes after its 48-byte header;
* the manifest agrees with the data (bits, rows, words per row);
* with a FAISS index: faiss.read_index_binary loads it, ntotal and d match, its codes equal
  U8, and its exact search of QUERIES_DIR's codes returns the same distances as NEIGHBORS.tsv.
"""
import json
import os
import sys

import numpy as np


def fail(msg):
    print("MISMATCH: " + msg, file=sys.stderr)
    sys.exit(1)


def bcodes_payload(codes_dir):
    with open(os.path.join(codes_dir, "codes.bcodes"), "rb") as f:
        raw = f.read()
    if raw[:8] != b"BLLMCODE":
        fail("bad .bcodes magic")
    bits, rows = np.frombuffer(raw[16:32], dtype="<u8")
    wpr = int(np.frombuffer(raw[32:36], dtype="<u4")[0])
    return int(bits), int(rows), wpr, raw[48:]


def main():
    floats, bits, codes_dir, u64_path, u8_path = sys.argv[1:6]
    bits = int(bits)
    x = np.load(floats).astype(np.float32)
    expected_u8 = np.packbits(x[:, :bits] >= 0, axis=1, bitorder="little")
    u8 = np.load(u8_path)
    if u8.dtype != np.uint8 or not np.array_equal(u8, expected_u8):
        fail("uint8 codes differ from numpy.packbits(bitorder='little')")
    u64 = np.load(u64_path)
    wpr = (bits + 63) // 64
    if u64.dtype != np.dtype("<u8") or u64.shape != (x.shape[0], wpr):
        fail(f"uint64 codes have dtype {u64.dtype} shape {u64.shape}")
    padded = np.zeros((x.shape[0], wpr * 8), dtype=np.uint8)
    padded[:, : expected_u8.shape[1]] = expected_u8
    if u64.tobytes() != padded.tobytes() or not np.array_equal(padded.view("<u8"), u64):
        fail("uint64 words are not the zero-padded little-endian bytes of packbits")
    b_bits, b_rows, b_wpr, payload = bcodes_payload(codes_dir)
    if (b_bits, b_rows, b_wpr) != (bits, x.shape[0], wpr) or payload != u64.tobytes():
        fail(".bcodes header or payload differs from the contract bytes")
    with open(os.path.join(codes_dir, "manifest.json")) as f:
        m = json.load(f)
    if (m["bits"], m["rows"], m["words_per_row"]) != (bits, x.shape[0], wpr):
        fail("manifest disagrees with the codes")
    print(f"ok: {x.shape[0]} rows x {bits} bits match numpy packbits, .npy and .bcodes")

    if len(sys.argv) > 6:
        import faiss

        index_path, queries_dir, tsv, k = sys.argv[6:10]
        k = int(k)
        index = faiss.read_index_binary(index_path)
        if index.ntotal != x.shape[0] or index.d != bits:
            fail(f"FAISS index has ntotal={index.ntotal} d={index.d}")
        stored = index.reconstruct_n(0, index.ntotal)
        if not np.array_equal(stored, expected_u8):
            fail("FAISS index codes differ from packbits")
        _, _, _, qpayload = bcodes_payload(queries_dir)
        q = np.frombuffer(qpayload, dtype=np.uint8).reshape(-1, wpr * 8)[:, : bits // 8]
        d, _ = index.search(np.ascontiguousarray(q), k)
        ours = np.loadtxt(tsv, dtype=np.int64, skiprows=1, ndmin=2)
        ours_d = ours[:, 3].reshape(-1, k)
        if not np.array_equal(d.astype(np.int64), ours_d):
            fail("FAISS search distances differ from bllm codes search")
        print(f"ok: faiss {faiss.__version__} loads the index and returns the same distances for {q.shape[0]} queries")


if __name__ == "__main__":
    main()
