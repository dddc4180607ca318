#!/usr/bin/python3
"""PyTorch eager training of an OPT shape, for comparison with bench/train.ts (run by hand with
Debian's python3-torch; never part of CI):

    /usr/bin/python3 bench/torch_train.py [--config opt-125m] [--layers N] [--batch 4] [--seq 256]
        [--steps 2] [--threads 2] [--precision bf16|fp32]
    /usr/bin/python3 bench/torch_train.py --adamw [--n 100000000] [--threads 2]

The model is OPT written out in plain torch (pre-LayerNorm decoder, learned positions, ReLU MLP,
tied LM head, the same layout Hugging Face's OPTForCausalLM has), random init, random token ids,
torch.optim.AdamW (weight decay 0.01), gradient clipping at 1.0, and bf16 autocast for
--precision bf16 (fp32 weights and optimizer, bf16 GEMMs): what eager PyTorch fine-tuning on a CPU
does. One warm-up step, then the mean of --steps timed steps. No activation checkpointing (PyTorch
keeps every activation, which is faster than recomputing, so the comparison favours PyTorch).

--adamw times torch.optim.AdamW alone on --n parameters (one flat fp32 tensor, gradients given),
foreach and single-tensor, beside bench/adamw.ts's fused kernel.
"""
import argparse
import math
import resource
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {  # hidden, layers, heads, ffn, vocab
    'opt-125m': (768, 12, 12, 3072, 50272),
    'opt-350m': (1024, 24, 16, 4096, 50272),
    'opt-1.3b': (2048, 24, 32, 8192, 50272),
    'opt-2.7b': (2560, 32, 32, 10240, 50272),
}


class Layer(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(h) * (d // self.heads) ** -0.5), split(self.k(h)), split(self.v(h))
        scores = q @ k.transpose(-1, -2)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = torch.softmax(scores.masked_fill(mask, float('-inf')).float(), dim=-1).to(v.dtype)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.relu(self.fc1(self.ln2(x))))


class Opt(nn.Module):
    def __init__(self, d, layers, heads, ffn, vocab, positions=2048):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(positions + 2, d)
        self.layers = nn.ModuleList(Layer(d, heads, ffn) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]) + 2)
        for layer in self.layers:
            x = layer(x)
        return self.ln(x) @ self.embed.weight.t()  # tied head


def bench_train(a):
    d, layers, heads, ffn, vocab = SHAPES[a.config]
    try:
        run_train(a, d, layers, heads, ffn, vocab)
    except (RuntimeError, MemoryError) as e:
        # Under --mem-limit an allocation past it fails here (not the kernel's OOM killer).
        print(f'torch {torch.__version__} eager {a.config}{f" ({a.layers} layers)" if a.layers else ""} {a.precision} '
              f'{a.batch}x{a.seq}: out of memory ({type(e).__name__}: {str(e)[:120]}); peak RSS {peak_rss() / 2**30:.2f} GiB')


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_train(a, d, layers, heads, ffn, vocab):
    model = Opt(d, a.layers or layers, heads, ffn, vocab)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g)
        t = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.precision == 'bf16'):
            logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, loss.item()

    step()
    times = [step()[0] for _ in range(a.steps)]
    s = sum(times) / len(times)
    tps = a.batch * a.seq / s
    print(f'torch {torch.__version__} eager {a.config}{f" ({a.layers} layers)" if a.layers else ""} {a.precision} '
          f'{a.batch}x{a.seq}, {torch.get_num_threads()} threads: {tps:.1f} tokens/s ({s:.2f} s/step), '
          f'{6 * params * tps / 1e9:.1f} GFLOP/s of model FLOPs (6·{params / 1e6:.1f}M·tokens/s); peak RSS {peak_rss() / 2**30:.2f} GiB')


def bench_adamw(a):
    p = nn.Parameter(torch.full((a.n,), 0.02))
    p.grad = torch.full((a.n,), 1e-2)
    for foreach in (True, False):
        opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01, foreach=foreach)
        opt.step()
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            opt.step()
            best = min(best, time.perf_counter() - t)
        # fp32 everything: reads grad, param, m, v (16 bytes), writes param, m, v (12).
        print(f'torch.optim.AdamW foreach={foreach} on {a.n:.0e} fp32 parameters, {torch.get_num_threads()} threads: '
              f'{best * 1e3:.0f} ms/step, {a.n / best / 1e9:.2f} Gparam/s, {28 * a.n / best / 1e9:.1f} GB/s')


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--config', default='opt-125m', choices=SHAPES)
    ap.add_argument('--layers', type=int, default=0)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--precision', default='bf16', choices=['bf16', 'fp32'])
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    ap.add_argument('--adamw', action='store_true')
    ap.add_argument('--n', type=int, default=100_000_000)
    ap.add_argument('--mem-limit-gib', type=float, default=0, help='cap the address space (RLIMIT_AS): the machine\'s RAM, so a run that needs more fails cleanly')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.mem_limit_gib > 0:
        lim = int(a.mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    torch.manual_seed(0)
    bench_adamw(a) if a.adamw else bench_train(a)
