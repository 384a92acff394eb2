#!/usr/bin/env python3
"""PyTorch side of `bllm bench train`: the same models, batches and optimizers, ms per step.

Usage (from the repository root; PyTorch CPU and numpy needed, not in CI):

    OMP_WAIT_POLICY=PASSIVE python3 scripts/bench_vs_torch.py --threads 2 --json torch.json
    ./target/release/bllm --threads 2 bench train --torch torch.json

The cases mirror `crates/bllm-cli/src/bench_train.rs` (the recipes named there):

* lm-float   — recipes/lm/float.toml: byte LM, d 64, 2 layers, 4 heads, MLP ×4, context 64,
               batch 32; pre-norm RMS gain norms (eps 1e-6), learned positions, causal
               softmax attention (mask −1e9), exact-erf GELU, biases on every projection,
               float embedding and head; cross-entropy; Adam lr 0.006, global-norm clip 1.0.
* lm-binary  — recipes/ablation/ste.toml: the same with q k v o up down 1-bit: sign(W) times
               the detached per-output-channel mean |W|, clipped STE (gradient 1{|w| ≤ 1});
               Adam lr 0.01, clip 1.0.
* lm-6x256   — lm-float at d 256, 6 layers, 8 heads, context 128, batch 16.
* retrieval  — recipes/quickstart.toml: hash head 384 → 256 (+ bias) on the centred, normalised
               MiniLM embeddings of the 9,000 training verses; codes tanh(u) + 0.001·u with
               u = z / const(mean|z|) for every row each step; 256 anchors; listwise loss
               (teacher softmax of cos/0.02 against log-softmax of ⟨h_a, h_j⟩/(256·0.02), the
               anchor itself masked); Adam lr 0.001, no clipping.

The step is what bllm's loop times: sample the batch, forward, loss, backward, clip, optimizer
step, read the loss as a float. Reported: the median interval over `--steps` steps after
`--warmup` warm-up steps. Timing only: the two sides do not share initial weights.
"""

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def clipped_sign(w):
    """sign(w) (sign(0) = +1) forward, gradient 1{|w| <= 1} (the clipped STE)."""
    c = w.clamp(-1.0, 1.0)
    s = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))
    return c + (s - c).detach()


class Proj(nn.Module):
    def __init__(self, d_in, d_out, binary):
        super().__init__()
        bound = math.sqrt(6.0 / d_in) / math.sqrt(2.0)
        self.weight = nn.Parameter(torch.empty(d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.binary = binary

    def forward(self, x):
        w = self.weight
        if self.binary:
            scale = w.abs().mean(dim=0, keepdim=True).detach()
            w = clipped_sign(w) * scale
        return x @ w + self.bias


class RmsGain(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * self.gain


class Block(nn.Module):
    def __init__(self, d, heads, ratio, binary):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RmsGain(d), RmsGain(d)
        self.q, self.k, self.v, self.o = (Proj(d, d, binary) for _ in range(4))
        self.up = Proj(d, ratio * d, binary)
        self.down = Proj(ratio * d, d, binary)

    def forward(self, x, future):
        b, t, d = x.shape
        h, dh = self.heads, d // self.heads
        n = self.norm1(x)
        q, k, v = (p(n).reshape(b, t, h, dh).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = (q @ k.transpose(2, 3)) / math.sqrt(dh)
        w = torch.softmax(scores.masked_fill(future, -1e9), dim=3)
        x = x + self.o((w @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class ByteLm(nn.Module):
    def __init__(self, d, layers, heads, ratio, context, binary):
        super().__init__()
        self.embed = nn.Parameter(torch.empty(256, d).uniform_(-0.1, 0.1))
        self.positions = nn.Parameter(torch.empty(context, d).uniform_(-0.1, 0.1))
        self.blocks = nn.ModuleList(Block(d, heads, ratio, binary) for _ in range(layers))
        self.norm = RmsGain(d)
        self.head = Proj(d, 256, False)

    def forward(self, tokens):
        t = tokens.shape[1]
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        x = self.embed[tokens] + self.positions[:t]
        for blk in self.blocks:
            x = blk(x, future)
        return self.head(self.norm(x))


def lm_case(text, d, layers, heads, context, batch, lr, binary, steps, warmup, rng):
    model = ByteLm(d, layers, heads, 4, context, binary)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        starts = rng.integers(0, len(text) - context - 1, size=batch)
        win = np.stack([text[s : s + context + 1] for s in starts]).astype(np.int64)
        x, y = torch.from_numpy(win[:, :-1]), torch.from_numpy(win[:, 1:])
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return timed(step, steps, warmup)


def retrieval_case(emb_path, queries, steps, warmup, rng):
    e = np.load(emb_path).astype(np.float32)[queries:]
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    unit = torch.from_numpy(e)
    xc = unit - unit.mean(0, keepdim=True)
    n, d = xc.shape
    k, tt, tc = 256, 0.02, 0.02
    w = nn.Parameter(torch.randn(d, k) / math.sqrt(d))
    b = nn.Parameter(torch.zeros(k))
    opt = torch.optim.Adam([w, b], lr=0.001)

    def step():
        idx = torch.from_numpy(rng.choice(n, size=256, replace=False))
        anchors = unit[idx]
        cos = anchors @ unit.T
        exclude = torch.zeros(256, n, dtype=torch.bool)
        exclude[torch.arange(256), idx] = True
        z = xc @ w + b
        u = z / z.abs().mean().detach().clamp_min(1e-12)
        h = torch.tanh(u) + 0.001 * u
        sc = (h[idx] @ h.T) / (k * tc)
        teacher = torch.softmax((cos / tt).masked_fill(exclude, -1e9), dim=1)
        logp = torch.log_softmax(sc.masked_fill(exclude, -1e9), dim=1)
        loss = -(teacher * logp).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return timed(step, steps, warmup)


def timed(step, steps, warmup):
    for _ in range(warmup):
        step()
    dt = []
    for _ in range(steps):
        s = time.perf_counter()
        step()
        dt.append(time.perf_counter() - s)
    return float(np.median(dt) * 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cases", default="lm-float,lm-binary,lm-6x256,retrieval")
    ap.add_argument("--text", default="datasets/kjv-text/train.txt")
    ap.add_argument("--embeddings", default="datasets/kjv-minilm/embeddings.npy")
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: set OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads distort a shared machine)")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    text = np.frombuffer(open(a.text, "rb").read(), dtype=np.uint8)
    cases = {
        "lm-float": lambda: lm_case(text, 64, 2, 4, 64, 32, 0.006, False, a.steps, a.warmup, rng),
        "lm-binary": lambda: lm_case(text, 64, 2, 4, 64, 32, 0.01, True, a.steps, a.warmup, rng),
        "lm-6x256": lambda: lm_case(text, 256, 6, 8, 128, 16, 0.006, False, a.steps, a.warmup, rng),
        "retrieval": lambda: retrieval_case(a.embeddings, 1000, a.steps, a.warmup, rng),
    }
    out = {}
    for name in a.cases.split(","):
        if name not in cases:
            raise SystemExit(f"--cases: unknown case {name!r}; expected one of {', '.join(cases)}")
        ms = cases[name]()
        out[name] = {"ms_per_step": ms}
        print(f"  {name:<10} {ms:9.1f} ms/step")
    res = {
        "torch": torch.__version__,
        "threads": a.threads,
        "machine": platform.processor() or platform.machine(),
        "cases": out,
    }
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
