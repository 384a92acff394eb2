#!/usr/bin/env python3
"""Condensed tables of a KV-probe sweep (`bllm sweep recipes/kv/probe.toml --run-dir DIR`),
as the README shows them: python3 scripts/kv_tables.py DIR."""
import json
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1])
    order = json.loads((root / "runs.json").read_text())
    runs = []
    for name in order:
        p = root / name / "results.json"
        if p.is_file():
            runs.append(json.loads(p.read_text()))
    if not runs:
        sys.exit(f"{root}: no finished runs")
    ctxs = sorted({r["context"] for r in runs[0]["results"]})
    texts = list(dict.fromkeys(r["text"] for r in runs[0]["results"]))
    big = ctxs[-1]
    cell = lambda s, t, c: next(r for r in s["results"] if r["text"] == t and r["context"] == c)
    head = ["cache", f"B/token @{big}", "saving"]
    head += [f"Δppl {t.split('-')[0]} {c}" for t in texts for c in ctxs]
    head += [f"top-1 {t.split('-')[0]} {big}" for t in texts]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for s in runs:
        b = dict((c, v) for c, v in s["bytes_per_token"])[big]
        row = [s["cache"], f"{b:.0f}", f"{s['f16_bytes_per_token'] / b:.2f}×"]
        row += [f"{100 * cell(s, t, c)['perplexity_change']:+.1f} %" for t in texts for c in ctxs]
        row += [f"{cell(s, t, big)['top1_agreement']:.3f}" for t in texts]
        print("| " + " | ".join(row) + " |")
    print()
    t = texts[0]
    print(f"Attention at context {big} on {t} (KL in nats; thirds of the 270 heads by float entropy):")
    print()
    print("| cache | key err | value err | score err | attn KL | peaked | middle | flat | ρ(entropy, KL) | logit KL | KL first → last position bucket | worst layer (KL) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in runs:
        r = cell(s, t, big)
        pos = r["positions"]
        worst = max(r["layers"], key=lambda l: l["attention_kl"])
        print(
            f"| {s['cache']} | {r['key_error']:.3f} | {r['value_error']:.3f} | {r['score_error']:.3f} | "
            f"{r['attention_kl']:.2e} | {r['attention_kl_peaked']:.2e} | {r['attention_kl_middle']:.2e} | "
            f"{r['attention_kl_flat']:.2e} | {r['entropy_kl_spearman']:+.2f} | {r['logit_kl']:.3f} | "
            f"{pos[0]['attention_kl']:.2e} → {pos[-1]['attention_kl']:.2e} | {worst['layer']} ({worst['attention_kl']:.2e}) |"
        )
    print()
    o = runs[0]["outliers"]
    names = ["keys before RoPE", "keys after RoPE", "values"]
    print("Float cache, per layer (min / median / max over the 30 layers):")
    print()
    print("| tensor | kurtosis | max / median channel max \\|x\\| |")
    print("|---|---:|---:|")
    for i, n in enumerate(names):
        k = sorted(l["kurtosis"][i] for l in o)
        m = sorted(l["max_over_median"][i] for l in o)
        print(f"| {n} | {k[0]:.1f} / {k[len(k)//2]:.1f} / {k[-1]:.1f} | {m[0]:.1f} / {m[len(m)//2]:.1f} / {m[-1]:.1f} |")


if __name__ == "__main__":
    main()
