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
* minilm     — recipes/retrieval/finetune-kjv.toml with encoder.train_layers=6: BERT
               (all-MiniLM-L6-v2's shape: 6 post-norm layers, d 384, 12 heads, FFN 1536, exact
               GELU, LayerNorm eps 1e-12, biases everywhere) on the frozen embedding output of
               64 verses drawn from the 9,000 database verses, padded to the longest (token
               lengths from models/minilm/tokenizer.json via the `tokenizers` package, no
               padding to 128), key-padding mask; mean pooling, L2 normalisation, minus the
               database mean, the 256-bit head and codes of the retrieval case over the 64
               anchors and a bank of 2,048 fixed rows; listwise loss against the bank; Adam
               (encoder lr 2e-5, head 1e-3), no clipping. bllm's bank refresh (every 50
               steps) is outside its measured steps, so it is not mirrored.
* smollm2    — recipes/pretrained/onebit-qat.toml: SmolLM2-135M's shape (30 layers, d 576,
               9 query / 3 key-value heads of 64, SwiGLU 1536, RMSNorm eps 1e-5, RoPE θ 1e5,
               vocabulary 49,152, tied embeddings), batch 4 × 128 tokens of KJV text (random
               ids here: the embedding lookup cost does not depend on them); every block
               projection (q k v o gate up down) 1-bit as sign(W) ⊙ g hᵀ with the identity
               STE (OneBit), g, h and the latent W trained; embeddings, norms and the head
               frozen; cross-entropy; Adam lr 3e-4, clip 1.0.

`--packed DIR` times instead the float evaluation of the trained 1-bit model that
`bllm bench packed --export DIR` wrote (see `bllm bench packed --help`).

Attention is the explicit masked softmax, as bllm computes it; `--sdpa` switches the LM cases
to torch's scaled_dot_product_attention (its fused CPU kernel), the fastest PyTorch path.

minilm runs padded, as `transformers`' BertModel does. bllm's encoder runs packed (no padding
token is computed: 64 random verses are 45 % real tokens when padded to the longest), so
`--unpad` gives PyTorch the same saving: projections, norms and GELU on the real tokens only
(`x[mask]`), and the packed rows scattered into the padded layout for the masked attention and
gathered back (the unpad/pad pattern of MosaicBERT and flash-attn's `bert_padding`).

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


SDPA = False


def attention(q, k, v, future):
    """softmax(q kᵀ / √d_h) v under the causal mask `future`, `[b, h, t, d_h]`."""
    if SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    scores = (q @ k.transpose(2, 3)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(future, -1e9), dim=3) @ v


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
        x = x + self.o(attention(q, k, v, future).transpose(1, 2).reshape(b, t, d))
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


def hash_codes(x, w, b, k=256):
    """The retrieval head's surrogate codes tanh(u) + 0.001·u, u = z / const(mean|z|)."""
    z = x @ w + b
    u = z / z.abs().mean().detach().clamp_min(1e-12)
    return torch.tanh(u) + 0.001 * u


class BertLayer(nn.Module):
    def __init__(self, d=384, heads=12, ffn=1536):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.up, self.down = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x, key_bias, real=None):
        """x [b, t, d] padded, or with `real` (indices of the real tokens in the flattened
        [b·t] layout) x [n, d] packed."""
        b, _, _, t = key_bias.shape
        d = x.shape[-1]
        h, dh = self.heads, d // self.heads

        def split(y):  # → padded heads [b, h, t, dh]
            if real is not None:
                y = y.new_zeros(b * t, d).index_copy(0, real, y)
            return y.reshape(b, t, h, dh).transpose(1, 2)

        q, k, v = (split(p(x)) for p in (self.q, self.k, self.v))
        w = torch.softmax((q @ k.transpose(2, 3)) / math.sqrt(dh) + key_bias, dim=3)
        att = (w @ v).transpose(1, 2).reshape(b * t, d)
        att = att[real] if real is not None else att.reshape(b, t, d)
        x = self.ln1(x + self.o(att))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


def verse_lengths(path, tokenizer, queries):
    """Token counts ([CLS] and [SEP] included, at most 256) of the database verses."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(tokenizer)
    tk.no_padding()
    tk.enable_truncation(256)
    lines = [l.rstrip("\n").split("\t", 1)[-1] for l in open(path, encoding="utf-8")]
    return np.array([len(e.ids) for e in tk.encode_batch(lines[queries:])])


def minilm_case(verses, tokenizer, steps, warmup, rng, unpad=False):
    lens = verse_lengths(verses, tokenizer, 1000)
    n, d, bits, bank, batch = len(lens), 384, 256, 2048, 64
    words = torch.randn(30522, d) * 0.02
    positions = torch.randn(512, d) * 0.02
    emb_ln = nn.LayerNorm(d, eps=1e-12)
    layers = nn.ModuleList(BertLayer() for _ in range(6))
    w = nn.Parameter(torch.randn(d, bits) / math.sqrt(d))
    b = nn.Parameter(torch.zeros(bits))
    mu = torch.randn(d) * 0.01
    bank_x = F.normalize(torch.randn(bank, d), dim=1) - mu
    bank_unit = F.normalize(torch.randn(bank, d), dim=1)
    opt = torch.optim.Adam([{"params": layers.parameters(), "lr": 2e-5}, {"params": [w, b], "lr": 1e-3}])

    def step():
        idx = rng.choice(n, size=batch, replace=False)
        ln = lens[idx]
        t = int(ln.max())
        mask = torch.from_numpy(np.arange(t)[None, :] < ln[:, None]).float()
        with torch.no_grad():  # the frozen embeddings: bllm's token-state cache
            ids = torch.randint(1000, 30522, (batch, t))
            x = emb_ln(words[ids] + positions[:t])
        key_bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        if unpad:
            real = mask.reshape(-1).nonzero().squeeze(1)
            x = x.reshape(batch * t, d)[real]
            for layer in layers:
                x = layer(x, key_bias, real)
            seq = real // t  # each packed token's verse
            pooled = x.new_zeros(batch, d).index_add(0, seq, x) / torch.from_numpy(ln).float()[:, None]
        else:
            for layer in layers:
                x = layer(x, key_bias)
            m = mask[:, :, None]
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        anchors = F.normalize(pooled, dim=1) - mu
        h = hash_codes(torch.cat([anchors, bank_x]), w, b, bits)
        sc = (h[:batch] @ h[batch:].T) / (bits * 0.02)
        cos = F.normalize(torch.randn(batch, d), dim=1) @ bank_unit.T
        teacher = torch.softmax(cos / 0.02, dim=1)
        loss = -(teacher * torch.log_softmax(sc, dim=1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return timed(step, steps, warmup)


def onebit(w, g, h):
    """sign(w) ⊙ g hᵀ with the identity STE: w is [d_in, d_out], g [d_in], h [d_out]."""
    s = w + (torch.where(w >= 0, 1.0, -1.0) - w).detach()
    return s * (g[:, None] * h[None, :])


class OneBitProj(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_in, d_out) * 0.02)
        self.g = nn.Parameter(torch.full((d_in,), 0.1))
        self.h = nn.Parameter(torch.full((d_out,), 0.1))

    def forward(self, x):
        return x @ onebit(self.w, self.g, self.h)


class RmsNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * sin


class LlamaLayer(nn.Module):
    def __init__(self, d=576, heads=9, kv=3, ffn=1536):
        super().__init__()
        self.heads, self.kv, self.dh = heads, kv, d // heads
        self.n1, self.n2 = RmsNorm(d), RmsNorm(d)
        self.q, self.o = OneBitProj(d, d), OneBitProj(d, d)
        self.k, self.v = OneBitProj(d, kv * self.dh), OneBitProj(d, kv * self.dh)
        self.gate, self.up, self.down = OneBitProj(d, ffn), OneBitProj(d, ffn), OneBitProj(ffn, d)

    def forward(self, x, cos, sin, future):
        b, t, d = x.shape
        n = self.n1(x)
        q = self.q(n).reshape(b, t, self.heads, self.dh).transpose(1, 2)
        k = self.k(n).reshape(b, t, self.kv, self.dh).transpose(1, 2)
        v = self.v(n).reshape(b, t, self.kv, self.dh).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        rep = self.heads // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        x = x + self.o(attention(q, k, v, future).transpose(1, 2).reshape(b, t, d))
        n = self.n2(x)
        return x + self.down(F.silu(self.gate(n)) * self.up(n))


def smollm2_case(steps, warmup, rng):
    d, vocab, layers_n, ctx, batch = 576, 49152, 30, 128, 4
    embed = torch.randn(vocab, d) * 0.02  # frozen, tied head
    layers = nn.ModuleList(LlamaLayer() for _ in range(layers_n))
    norm = RmsNorm(d)
    inv = 1.0 / (100000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    ang = torch.arange(ctx, dtype=torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=1)
    cos, sin = ang.cos().float(), ang.sin().float()
    future = torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), diagonal=1)
    params = [p for p in layers.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-4)

    def step():
        ids = torch.from_numpy(rng.integers(0, vocab, size=(batch, ctx + 1)))
        x = embed[ids[:, :-1]]
        for layer in layers:
            x = layer(x, cos, sin, future)
        logits = norm(x) @ embed.T
        loss = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    return timed(step, steps, warmup)


def packed_case(d, repeats):
    """Float evaluation of the model `bllm bench packed --export d` wrote: its layers as float
    matrices (a binary layer's α ⊙ sign(W)), sign or ReLU between them, on its inputs."""
    plan = json.load(open(os.path.join(d, "plan.json")))
    load = lambda name: torch.from_numpy(np.load(os.path.join(d, name)).astype(np.float32))
    x = load("x.npy")
    layers = [(load(l["weight"]), load(l["bias"])[0], l["activation"]) for l in plan["layers"]]

    @torch.inference_mode()
    def evaluate():
        h = x
        for w, b, act in layers:
            h = torch.addmm(b, h, w)
            if act == "sign":
                h = torch.where(h >= 0, 1.0, -1.0)
            elif act == "relu":
                h = torch.relu(h)
        return h

    logits = evaluate()
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        evaluate()
        t.append(time.perf_counter() - s)
    pred = logits.argmax(1).numpy()
    labels = np.load(os.path.join(d, "labels.npy"))[:, 0].astype(np.int64)
    bllm = np.load(os.path.join(d, "bllm_pred.npy"))[:, 0].astype(np.int64)
    return {
        "ms_per_eval": float(np.median(t) * 1e3),
        "rows": int(x.shape[0]),
        "accuracy": float((pred == labels).mean()),
        "agreement_with_bllm_packed": float((pred == bllm).mean()),
    }


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
    ap.add_argument("--steps", type=int, help="measured steps (default: 30; minilm 10, smollm2 5)")
    ap.add_argument("--warmup", type=int, help="warm-up steps (default: 5; minilm and smollm2 2)")
    ap.add_argument("--cases", default="lm-float,lm-binary,lm-6x256,retrieval,minilm,smollm2")
    ap.add_argument("--sdpa", action="store_true", help="attention by torch's scaled_dot_product_attention")
    ap.add_argument("--unpad", action="store_true", help="minilm on the real tokens only (see above)")
    ap.add_argument("--verses", default="datasets/kjv-minilm/verses.txt")
    ap.add_argument("--tokenizer", default="models/minilm/tokenizer.json")
    ap.add_argument("--text", default="datasets/kjv-text/train.txt")
    ap.add_argument("--embeddings", default="datasets/kjv-minilm/embeddings.npy")
    ap.add_argument("--packed", metavar="DIR", help="only the float evaluation of `bllm bench packed --export DIR`")
    ap.add_argument("--repeats", type=int, default=5, help="evaluations with --packed (median)")
    ap.add_argument("--json")
    a = ap.parse_args()
    global SDPA
    SDPA = a.sdpa
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: set OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads distort a shared machine)")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if a.packed:
        r = packed_case(a.packed, a.repeats)
        print(f"  packed-model float evaluation: {r['ms_per_eval']:.1f} ms for {r['rows']} rows, "
              f"accuracy {r['accuracy']:.4f}, predictions equal to bllm's packed path on "
              f"{100 * r['agreement_with_bllm_packed']:.2f} %")
        res = {"torch": torch.__version__, "threads": a.threads, "packed": r}
        if a.json:
            with open(a.json + ".tmp", "w") as f:
                json.dump(res, f, indent=2)
            os.replace(a.json + ".tmp", a.json)
        return
    text = np.frombuffer(open(a.text, "rb").read(), dtype=np.uint8)
    def n(default_steps, default_warmup):
        return (a.steps or default_steps, default_warmup if a.warmup is None else a.warmup)

    cases = {
        "lm-float": lambda: lm_case(text, 64, 2, 4, 64, 32, 0.006, False, *n(30, 5), rng),
        "lm-binary": lambda: lm_case(text, 64, 2, 4, 64, 32, 0.01, True, *n(30, 5), rng),
        "lm-6x256": lambda: lm_case(text, 256, 6, 8, 128, 16, 0.006, False, *n(30, 5), rng),
        "retrieval": lambda: retrieval_case(a.embeddings, 1000, *n(30, 5), rng),
        "minilm": lambda: minilm_case(a.verses, a.tokenizer, *n(10, 2), rng, a.unpad),
        "smollm2": lambda: smollm2_case(*n(5, 2), rng),
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
        "attention": "sdpa" if a.sdpa else "explicit masked softmax",
        "minilm_layout": "unpadded (--unpad)" if a.unpad else "padded to the longest",
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
