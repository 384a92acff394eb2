#!/usr/bin/env python3
"""Per-site monitor table of a run: the mean over the run of every `<monitor>/<site>` value in
its metrics.jsonl (shadow cosine and norm ratio, finite-difference sign agreement, flip ratio,
pass-through, quantisation error), one row per site, plus the run's events.jsonl firings.

    python3 scripts/monitor_sites.py RUN_DIR [--markdown]

Standard library only.
"""

import argparse
import collections
import json
import pathlib
import sys

MONITORS = [
    ("shadow_cosine", "shadow cos"),
    ("shadow_norm_ratio", "norm ratio"),
    ("fd_sign_agreement", "FD sign agree"),
    ("flip_ratio", "flips / check"),
    ("pass_through", "pass-through"),
    ("quant_error", "quant error"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=pathlib.Path)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    a = ap.parse_args()
    metrics = a.run / "metrics.jsonl"
    if not metrics.is_file():
        print(f"{metrics}: not found (is {a.run} a run directory?)", file=sys.stderr)
        return 1
    sums = collections.defaultdict(lambda: [0.0, 0])
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            print(f"{metrics}: line {n}: {e}", file=sys.stderr)
            return 1
        for k, v in row.items():
            if "/" in k and isinstance(v, (int, float)):
                m, site = k.split("/", 1)
                s = sums[(site, m)]
                s[0] += v
                s[1] += 1
    sites = sorted({s for s, _ in sums}, key=site_order)
    if not sites:
        print(f"{metrics}: no per-site monitor values", file=sys.stderr)
        return 1
    head = ["site"] + [label for _, label in MONITORS]
    rows = []
    for site in sites:
        cells = [site]
        for m, _ in MONITORS:
            s = sums.get((site, m))
            cells.append(f"{s[0] / s[1]:.4f}" if s else "–")
        rows.append(cells)
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|---" + "|---:" * (len(head) - 1) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        for r in [head] + rows:
            print("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)))
    events = a.run / "events.jsonl"
    if events.is_file():
        count = collections.Counter()
        for line in events.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("event") != "monitor":
                continue
            count[(e.get("monitor"), e.get("action"))] += 1
        for (m, act), c in sorted(count.items(), key=lambda x: str(x)):
            print(f"events: {m} ({act}) × {c}")
    return 0


def site_order(site: str):
    """layers.9.x before layers.19.x."""
    parts = site.split(".")
    return [int(p) if p.isdigit() else p for p in parts]


if __name__ == "__main__":
    sys.exit(main())
