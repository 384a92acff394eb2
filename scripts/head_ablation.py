"""The frozen-head objective of `kind = "retrieval"`, re-implemented in PyTorch for fast ablations.

    bllm codes fit --method itq --bits 256 --train DB.npy --out itq256/     # DB = rows 1000..
    OMP_WAIT_POLICY=PASSIVE python3 scripts/head_ablation.py --data datasets/kjv-minilm/embeddings.npy \
        --itq itq256/ [--mlp 1024 | --beta 1,5 | --mix 0.5 | --noise 0.1 | --ste_from 0.75 | --bs 1024 ...]

Same model as the Rust trainer (ITQ-initialised linear head on centred unit embeddings,
u = z / mean|z|, tanh(u) + 0.001u codes, listwise loss over all database rows at temperatures
0.02/0.02, Adam 1e-3, 200 steps of 256 anchors; the first 1,000 rows are the queries) plus the
variants the README's "what did not help" list measured: a residual GELU MLP (zero-initialised
output, so it starts at ITQ), a rising tanh sharpness beta (HashNet-style continuation), a final
hard-sign STE phase, anchor noise and mixup. Prints Recall@10 (Hamming, exact cosine truth) of
the queries and of 1,000 database rows ("train"). Its anchors come from numpy's generator, not
the trainer's ChaCha8 stream, so numbers match the Rust runs to about ±0.006, not bit for bit.
Needs torch, numpy, safetensors.
"""
import sys, time, argparse
import numpy as np, torch
from safetensors.numpy import load_file
torch.set_num_threads(2)
ap = argparse.ArgumentParser()
ap.add_argument('--data', required=True)
ap.add_argument('--itq', required=True)
ap.add_argument('--steps', type=int, default=200)
ap.add_argument('--bs', type=int, default=256)
ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--tf', type=float, default=0.02)
ap.add_argument('--tc', type=float, default=0.02)
ap.add_argument('--mlp', type=int, default=0)
ap.add_argument('--mlp_lr', type=float, default=None)
ap.add_argument('--noise', type=float, default=0.0)   # anchor augmentation: x + noise*eps
ap.add_argument('--mix', type=float, default=0.0)     # fraction of anchors that are mixups
ap.add_argument('--beta', default='')                 # "b0,b1": tanh(beta*u) with beta rising
ap.add_argument('--seed', type=int, default=0)
ap.add_argument('--eval_every', type=int, default=50)
ap.add_argument('--ste_from', type=float, default=2.0)
ap.add_argument('--dropout', type=float, default=0.0)
a = ap.parse_args()
torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed)
X = np.load(a.data).astype(np.float32)
X = torch.tensor(X / np.linalg.norm(X, axis=1, keepdims=True))
Q, D = X[:1000], X[1000:]
enc = load_file(f'{a.itq}/encoder.safetensors')
a.bits = enc['projection'].shape[1]
mu = torch.tensor(enc['mean']); P0 = torch.tensor(enc['projection']); t0 = torch.tensor(enc['thresholds'])
cosQD = Q @ D.T
truth = cosQD.topk(10, dim=1).indices

def train_recall(zd):
    # 1000 database rows as queries against the database, self excluded
    i = torch.arange(1000) * 9
    c = D[i] @ D.T; c[torch.arange(1000), i] = -9
    tr = c.topk(10, dim=1).indices
    hd = (zd >= 0).float() * 2 - 1
    s = hd[i] @ hd.T - torch.arange(hd.shape[0]).float() * 1e-6
    s[torch.arange(1000), i] = -1e9
    top = s.topk(10, dim=1).indices
    return ((top.unsqueeze(2) == tr.unsqueeze(1)).any(2).float().sum(1) / 10).mean().item()

def recall(zq, zd):
    hq = (zq >= 0).float() * 2 - 1; hd = (zd >= 0).float() * 2 - 1
    s = hq @ hd.T
    # stable tie-break by index: subtract tiny index term
    s = s - torch.arange(s.shape[1]).float() * 1e-6
    top = s.topk(10, dim=1).indices
    hit = (top.unsqueeze(2) == truth.unsqueeze(1)).any(2).float().sum(1)
    return (hit / 10).mean().item()

P = torch.nn.Parameter(P0.clone()); b = torch.nn.Parameter(-t0.clone())
params = [{'params': [P, b], 'lr': a.lr}]
if a.mlp:
    W1 = torch.nn.Parameter(torch.randn(384, a.mlp) / 384 ** 0.5)
    b1 = torch.nn.Parameter(torch.zeros(a.mlp))
    W2 = torch.nn.Parameter(torch.zeros(a.mlp, a.bits))
    params.append({'params': [W1, b1, W2], 'lr': a.mlp_lr or a.lr})
def logits(x, train=False):
    xc = x - mu
    z = xc @ P + b
    if a.mlp:
        h = torch.nn.functional.gelu(xc @ W1 + b1)
        if train and a.dropout: h = torch.nn.functional.dropout(h, a.dropout)
        z = z + h @ W2
    return z
opt = torch.optim.Adam(params)
Dc = D
n = D.shape[0]
t_start = time.time()
print(f'init recall {recall(logits(Q), logits(D)):.4f} train {train_recall(logits(D)):.4f}')
for step in range(a.steps):
    p = step / max(a.steps - 1, 1)
    beta = 1.0
    if a.beta:
        b0, b1_ = map(float, a.beta.split(','))
        beta = b0 * (b1_ / b0) ** p
    idx = torch.tensor(rng.choice(n, a.bs, replace=False))
    xa = D[idx]
    excl = torch.zeros(a.bs, n, dtype=torch.bool); excl[torch.arange(a.bs), idx] = True
    if a.noise > 0 or a.mix > 0:
        xa = xa.clone()
        if a.noise > 0:
            xa = xa + a.noise * torch.randn_like(xa) / 384 ** 0.5
        if a.mix > 0:
            m = int(a.mix * a.bs)
            j = torch.tensor(rng.choice(n, m))
            lam = torch.tensor(rng.uniform(0.5, 1.0, (m, 1)), dtype=torch.float32)
            xa[:m] = lam * xa[:m] + (1 - lam) * D[j]
        xa = xa / xa.norm(dim=1, keepdim=True)
        cos = xa @ D.T
        # the source row stays excluded: it is not a neighbour of a query that is not in the database
    else:
        cos = xa @ D.T
    zd = logits(D, True)
    za = logits(xa, True)
    s = zd.abs().mean().detach()
    f = lambda z: torch.tanh(beta * z / s) + 0.001 * z / s
    if p >= a.ste_from:
        g = lambda z: (torch.sign(z) - torch.tanh(z / s)).detach() + torch.tanh(z / s)
        hd, ha = g(zd), g(za)
    else:
        hd, ha = f(zd), f(za)
    sc = ha @ hd.T / (a.bits * a.tc)
    teacher = torch.softmax((cos / a.tf).masked_fill(excl, -1e9), 1)
    logp = torch.log_softmax(sc.masked_fill(excl, -1e9), 1)
    loss = -(teacher * logp).sum(1).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if (step + 1) % a.eval_every == 0:
        with torch.no_grad():
            print(f'step {step+1} loss {loss.item():.4f} recall {recall(logits(Q), logits(D)):.4f} train {train_recall(logits(D)):.4f} ({time.time()-t_start:.0f}s)', flush=True)
with torch.no_grad():
    print(f'FINAL {a.data} {a.bits} bits {vars(a)} recall {recall(logits(Q), logits(D)):.4f}')
