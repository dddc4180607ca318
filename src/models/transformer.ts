// The forward pass shared by every architecture: a decoder-only transformer run over a ragged
// batch. Prefill concatenates all prompts' tokens (no padding: each sequence attends only to
// itself), so a sequence's result does not depend on what else is in the batch. Decode runs one
// new token for every row of the cache.

import type { Backend } from '../backend/index.js';
import { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import type { KVCache } from './kv-cache.js';
import type { GlobalWeights, LayerWeights, Linear, Norm } from './weights.js';
import { Workspace } from './workspace.js';

type F32 = Tensor<'f32'>;

/** The tokens one forward call runs: rows of the cache, and positions in each. */
interface Step {
  /** Token ids [t]. */
  ids: Int32Array;
  /** Position of each token in its sequence [t]. */
  positions: Int32Array;
  /** Prefill: sequence s is tokens seqStarts[s]..seqStarts[s+1]-1 and cache row rows[s]. */
  seqStarts: Int32Array;
  rows: number[];
  decode: boolean;
}

export class Transformer {
  private readonly ws = new Workspace();
  private readonly scale: number;

  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    readonly globals: GlobalWeights,
    readonly layers: LayerWeights[],
  ) {
    this.scale = 1 / Math.sqrt(config.headDim);
  }

  /** Runs each prompt into cache row rows[s] from position 0; returns logits [prompts, vocab]. */
  prefill(cache: KVCache, rows: number[], prompts: Int32Array[]): F32 {
    const seqStarts = new Int32Array(prompts.length + 1);
    prompts.forEach((p, s) => (seqStarts[s + 1] = seqStarts[s]! + p.length));
    const t = seqStarts[prompts.length]!;
    const ids = new Int32Array(t);
    const positions = new Int32Array(t);
    prompts.forEach((p, s) => {
      ids.set(p, seqStarts[s]!);
      for (let i = 0; i < p.length; i++) positions[seqStarts[s]! + i] = i;
    });
    const x = this.run(cache, { ids, positions, seqStarts, rows, decode: false });
    // Only each prompt's last token predicts the next one.
    const last = this.ws.get('last', [prompts.length, this.config.hidden]);
    for (let s = 0; s < prompts.length; s++) {
      const row = seqStarts[s + 1]! - 1;
      last.data.set(x.data.subarray(row * this.config.hidden, (row + 1) * this.config.hidden), s * this.config.hidden);
    }
    for (let s = 0; s < prompts.length; s++) cache.lengths[rows[s]!] = prompts[s]!.length;
    return this.head(last);
  }

  /** One new token for every cache row, each at that row's current length; returns logits [rows, vocab]. */
  decode(cache: KVCache, ids: Int32Array): F32 {
    const positions = Int32Array.from(cache.lengths);
    const rows = Array.from({ length: cache.rows }, (_, i) => i);
    const x = this.run(cache, { ids, positions, seqStarts: new Int32Array(0), rows, decode: true });
    for (let r = 0; r < cache.rows; r++) cache.lengths[r]!++;
    return this.head(x);
  }

  private run(cache: KVCache, step: Step): F32 {
    let x = this.embed(step);
    for (let j = 0; j < this.layers.length; j++) x = this.layer(j, x, cache, step);
    return x;
  }

  private embed(step: Step): F32 {
    const c = this.config;
    const b = this.backend;
    const t = step.ids.length;
    const ids = new Tensor('i32', [t], step.ids);
    const e = this.globals.embed;
    let x = this.ws.get('embed', [t, c.embedDim]);
    x = 'packed' in e ? b.gatherRows(e.packed, ids, x) : b.embedding(e.table, ids, x);
    if (this.globals.projectIn) x = this.linear(x, this.globals.projectIn, 'project_in');
    const h = this.ws.get('x', [t, c.hidden]);
    if (x !== h) h.data.set(x.data);
    if (this.globals.posEmbed && c.positions.kind === 'learned') {
      const offset = c.positions.offset;
      const pos = new Tensor('i32', [t], step.positions.map((p) => p + offset));
      b.add(h, b.embedding(this.globals.posEmbed, pos, this.ws.get('pos', [t, c.hidden])), h);
    }
    return h;
  }

  private linear(x: F32, l: Linear, slot: string): F32 {
    const rows = x.size / l.w.k;
    return this.backend.matmul(x, l.w, l.b, this.ws.get(slot, [rows, l.w.n]));
  }

  private norm(x: F32, n: Norm, slot: string): F32 {
    const out = this.ws.get(slot, x.shape);
    return this.config.norm === 'rmsnorm'
      ? this.backend.rmsNorm(x, n.w, this.config.normEps, out)
      : this.backend.layerNorm(x, n.w, n.b, this.config.normEps, out);
  }

  private layer(j: number, x: F32, cache: KVCache, step: Step): F32 {
    const c = this.config;
    const b = this.backend;
    const w = this.layers[j]!;
    // Attention block.
    let h = c.preNorm ? this.norm(x, w.attnNorm, 'h') : x;
    const a = this.attention(j, h, w, cache, step);
    b.add(x, this.linear(a, w.o, 'o'), x);
    if (!c.preNorm) this.backend.layerNorm(x, w.attnNorm.w, w.attnNorm.b, c.normEps, x);
    // MLP block.
    h = c.preNorm ? this.norm(x, w.mlpNorm, 'h') : x;
    b.add(x, this.linear(this.mlp(h, w), w.down, 'down'), x);
    if (!c.preNorm) this.backend.layerNorm(x, w.mlpNorm.w, w.mlpNorm.b, c.normEps, x);
    return x;
  }

  private attention(j: number, h: F32, w: LayerWeights, cache: KVCache, step: Step): F32 {
    const c = this.config;
    const b = this.backend;
    const t = step.ids.length;
    const q = this.linear(h, w.q, 'q').reshape([t, c.heads, c.headDim]);
    const k = this.linear(h, w.k, 'k').reshape([t, c.kvHeads, c.headDim]);
    const v = this.linear(h, w.v, 'v').reshape([t, c.kvHeads, c.headDim]);
    if (c.positions.kind === 'rope') {
      const pos = new Tensor('i32', [t], step.positions);
      b.rope(q, pos, c.positions.theta, c.positions.rotaryDim);
      b.rope(k, pos, c.positions.theta, c.positions.rotaryDim);
    }
    const out = this.ws.get('attn', [t, c.heads, c.headDim]);
    if (step.decode) {
      for (let r = 0; r < t; r++) {
        b.cacheWrite(cache.k[j]!, k.rows(r, r + 1), r, step.positions[r]!);
        b.cacheWrite(cache.v[j]!, v.rows(r, r + 1), r, step.positions[r]!);
      }
      const lens = new Tensor('i32', [t], step.positions.map((p) => p + 1));
      b.attentionDecode(q, cache.k[j]!, cache.v[j]!, lens, this.scale, out);
    } else {
      for (let s = 0; s < step.rows.length; s++) {
        const [from, to] = [step.seqStarts[s]!, step.seqStarts[s + 1]!];
        b.cacheWrite(cache.k[j]!, k.rows(from, to), step.rows[s]!, 0);
        b.cacheWrite(cache.v[j]!, v.rows(from, to), step.rows[s]!, 0);
      }
      b.attentionPrefill(q, k, v, new Tensor('i32', [step.seqStarts.length], step.seqStarts), this.scale, out);
    }
    return out.reshape([t, c.heads * c.headDim]);
  }

  private mlp(h: F32, w: LayerWeights): F32 {
    const b = this.backend;
    const up = this.linear(h, w.up, 'up');
    if (w.gate) {
      const gate = this.linear(h, w.gate, 'gate');
      if (this.config.activation !== 'silu') throw new Error(`gated MLP with ${this.config.activation} is not supported`);
      return b.siluMul(gate, up, up);
    }
    switch (this.config.activation) {
      case 'relu':
        return b.relu(up, up);
      case 'gelu':
        return b.gelu(up, false, up);
      case 'gelu_new':
        return b.gelu(up, true, up);
      default:
        throw new Error(`activation ${this.config.activation} without a gate is not supported`);
    }
  }

  /** Final norm, projection and LM head over rows of hidden states → logits [rows, vocab]. */
  private head(x: F32): F32 {
    let h = this.globals.finalNorm ? this.norm(x, this.globals.finalNorm, 'final') : x;
    if (this.globals.projectOut) h = this.linear(h, this.globals.projectOut, 'project_out');
    // Logits get a fresh buffer: callers keep them while the next step runs.
    return this.backend.matmul(h, this.globals.lmHead);
  }
}
