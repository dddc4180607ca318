#!/usr/bin/python3
"""PyTorch eager bf16 generation of an OPT or Llama shape with random weights, for bench/peers
(run by hand with Debian's python3-torch; never part of CI). Prints one JSON line.

    /usr/bin/python3 bench/peers/torch_gen.py --arch llama --hidden 4096 --layers 4 --heads 32 \
        --ffn 11008 --vocab 32000 --batch 16 [--prompt 64] [--new 16] [--threads 2] [--serve] [--dtype fp32]

The models are written out in plain torch (what eager PyTorch inference on a CPU does): bf16
(--dtype fp32: fp32) weights and activations, a KV cache, greedy argmax. Prefill computes the LM head for the last
position only (Hugging Face computes it for all; this favours PyTorch). The first new token comes
from prefill, the other new-1 from decode steps, as in tierlm's GenerateStats.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
for name, dflt in [('hidden', 2048), ('layers', 24), ('heads', 32), ('ffn', 8192), ('vocab', 50272),
                   ('batch', 1), ('prompt', 64), ('new', 16), ('threads', 2)]:
    p.add_argument('--' + name, type=int, default=dflt)
p.add_argument('--arch', choices=['opt', 'llama'], default='opt')
# fp32: on a CPU without AVX512-BF16 PyTorch 1.13's bf16 matmuls take a scalar loop (~1.4 GFLOP/s on
# 2 Zen 3 cores, where its fp32 ones through OpenBLAS run ~135), so fp32 is what a PyTorch user there runs.
p.add_argument('--dtype', choices=['bf16', 'fp32'], default='bf16')
p.add_argument('--serve', action='store_true', help='a run per line of stdin (bench/peers --pairs)')
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(1)
dt = torch.bfloat16 if a.dtype == 'bf16' else torch.float32
H, D = a.hidden, a.hidden // a.heads


def rnd(*shape):
    return (torch.randn(*shape) * 0.02).to(dt)


def ones(n):
    return torch.ones(n, dtype=dt)


llama = a.arch == 'llama'
layers = []
for _ in range(a.layers):
    L = {'q': rnd(H, H), 'k': rnd(H, H), 'v': rnd(H, H), 'o': rnd(H, H), 'n1': ones(H), 'n2': ones(H)}
    if llama:
        L.update(gate=rnd(a.ffn, H), up=rnd(a.ffn, H), down=rnd(H, a.ffn))
    else:
        L.update(up=rnd(a.ffn, H), down=rnd(H, a.ffn), n1b=rnd(H), n2b=rnd(H), ub=rnd(a.ffn), db=rnd(H),
                 qb=rnd(H), kb=rnd(H), vb=rnd(H), ob=rnd(H))
    layers.append(L)
embed = rnd(a.vocab, H)
head = rnd(a.vocab, H) if llama else embed  # OPT ties the head to the embedding
pos = None if llama else rnd(2048 + 2, H)
fn, fnb = ones(H), rnd(H)
maxlen = a.prompt + a.new
inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
ang = torch.outer(torch.arange(maxlen).float(), inv)
cos, sin = torch.cat([ang.cos(), ang.cos()], -1).to(dt), torch.cat([ang.sin(), ang.sin()], -1).to(dt)


def norm(x, w, b):
    if llama:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dt) * w
    return F.layer_norm(x, (H,), w, b)


def rope(x, start):  # x: [b, heads, t, D]
    t = x.shape[2]
    c, s = cos[start:start + t], sin[start:start + t]
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return x * c + torch.cat([-x2, x1], -1) * s


def forward(ids, cache, start):
    b, t = ids.shape
    x = F.embedding(ids, embed)
    if not llama:
        x = x + pos[start + 2:start + 2 + t]
    mask = None
    if t > 1:
        mask = torch.full((t, start + t), float('-inf'), dtype=dt).triu(start + 1)
    for j, L in enumerate(layers):
        h = norm(x, L['n1'], L.get('n1b'))
        q = F.linear(h, L['q'], L.get('qb')).view(b, t, a.heads, D).transpose(1, 2)
        k = F.linear(h, L['k'], L.get('kb')).view(b, t, a.heads, D).transpose(1, 2)
        v = F.linear(h, L['v'], L.get('vb')).view(b, t, a.heads, D).transpose(1, 2)
        if llama:
            q, k = rope(q, start), rope(k, start)
        K, V = cache[j]
        K[:, :, start:start + t], V[:, :, start:start + t] = k, v
        k, v = K[:, :, :start + t], V[:, :, :start + t]
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        if mask is not None:
            s = s + mask
        o = (s.float().softmax(-1).to(dt) @ v).transpose(1, 2).reshape(b, t, H)
        x = x + F.linear(o, L['o'], L.get('ob'))
        h = norm(x, L['n2'], L.get('n2b'))
        if llama:
            h = F.silu(F.linear(h, L['gate'])) * F.linear(h, L['up'])
            x = x + F.linear(h, L['down'])
        else:
            x = x + F.linear(F.relu(F.linear(h, L['up'], L['ub'])), L['down'], L['db'])
    x = norm(x[:, -1], fn, None if llama else fnb)
    return F.linear(x, head).argmax(-1)


def run(b, new):
    ids = torch.randint(3, min(a.vocab, 30000), (b, a.prompt))
    cache = [(torch.zeros(b, a.heads, maxlen, D, dtype=dt), torch.zeros(b, a.heads, maxlen, D, dtype=dt)) for _ in layers]
    with torch.inference_mode():
        t0 = time.perf_counter()
        tok = forward(ids, cache, 0)
        t1 = time.perf_counter()
        for i in range(new - 1):
            tok = forward(tok.view(b, 1), cache, a.prompt + i)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


run(1, 2)  # warm-up
b = a.batch
if a.serve:
    # One run per line read, each printed as {"pre": s, "dec": s}: bench/peers --pairs keeps this
    # process (and its model) between runs, alternating with tierlm's.
    print(json.dumps({'ready': True}), flush=True)
    for _ in sys.stdin:
        pre, dec = run(b, a.new)
        print(json.dumps({'pre': pre, 'dec': dec}), flush=True)
    sys.exit(0)
pre, dec = run(a.batch, a.new)
print(json.dumps({'engine': 'pytorch', 'torch': torch.__version__, 'dtype': a.dtype, 'batch': b,
                  'prefillTokS': round(b * a.prompt / pre, 1),
                  'decodeTokS': round(b * (a.new - 1) / dec, 1) if a.new > 1 else None,
                  'totalTokS': round(b * a.new / (pre + dec), 1)}))
