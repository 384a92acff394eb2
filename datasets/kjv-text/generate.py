#!/usr/bin/env python3
"""Generates the bundled `kjv-text` byte-level language-modelling corpus from the King James
Bible (public domain). A one-off step, not part of set-up or CI:

    apt-get install bible-kjv              # the `bible` reader and the text (bible-kjv-text)
    python3 datasets/kjv-text/generate.py

The books in BOOKS (the Pentateuch, the histories to 2 Samuel, and the four Gospels) are read in
canonical order with `bible`; each verse becomes one line of plain text (no references), each
chapter ends with an empty line. The split is by chapter and fixed: every 10th chapter (the
10th, 20th, ... in reading order) goes to `valid.txt`, all others to `train.txt`. Writes
train.txt, valid.txt and MANIFEST.json (SHA-256 of both files).
"""
import hashlib
import json
import os
import re
import subprocess

BOOKS = [
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1Samuel", "2Samuel", "Matthew", "Mark", "Luke", "John",
]


def chapters():
    """Every chapter of BOOKS in order, as a list of verse texts."""
    out = []
    for book in BOOKS:
        text = subprocess.run(["bible", "-l10000", f"{book}1:1-{book}200:200"],
                              capture_output=True, text=True, check=True).stdout
        current = None
        for line in text.splitlines():
            if re.match(r"^(\S.*\S) (\d+)$", line) and not line.startswith(" "):
                current = []
                out.append(current)
                continue
            m = re.match(r"^\s+(\d+) (.*)$", line)
            if m and current is not None:
                current.append(re.sub(r"\s+", " ", m.group(2).strip()))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    train, valid = [], []
    for i, ch in enumerate(chapters()):
        block = "\n".join(ch) + "\n\n"
        (valid if i % 10 == 9 else train).append(block)
    files = {"train.txt": "".join(train), "valid.txt": "".join(valid)}
    manifest = {
        "name": "kjv-text",
        "description": "Byte-level LM corpus: King James Bible, Genesis-2 Samuel and the four Gospels, one verse per line, chapters separated by an empty line; every 10th chapter held out in valid.txt.",
        "source": "Debian package bible-kjv-text 4.38 (read with bible-kjv's `bible`); generator: datasets/kjv-text/generate.py",
        "licence": "public domain (King James Version)",
        "chapters": len(train) + len(valid),
        "files": {},
    }
    for name, text in files.items():
        data = text.encode("ascii")
        with open(os.path.join(here, name), "wb") as f:
            f.write(data)
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with open(os.path.join(here, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
