// The forward pass shared by every architecture: a decoder-only transformer run over a ragged
// batch. A step concatenates its sequences' tokens (no padding: each sequence attends only to
// itself and its own cache row), so a sequence's result does not depend on what else is in the
// batch: prompts' first chunks (prefill), later prompt chunks and generated tokens (decode) mix
// freely in one step (continuous batching).
//
// The pass is exposed in pieces (embed, attention block, MLP block, head) so that schedules can
// run them layer by layer and batch by batch with weights and caches that come from any tier.

import type { Backend, LinearEpilogue } from '../backend/index.js';
import { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import { ropeInvFreq } from './rope.js';
import { activationForward, fusedActivation, normForward } from './ops.js';
import type { AttentionWeights, GlobalWeights, Linear, MlpWeights, Norm } from './weights.js';
import { Workspace } from './workspace.js';

type F32 = Tensor<'f32'>;

/** The tokens of one forward call over one batch: sequence s is tokens seqStarts[s]..seqStarts[s+1]-1
 *  in cache row rows[s], at positions from positions[seqStarts[s]] on (0 for a prompt's first
 *  chunk; more for a later chunk of one, or for a generated token). A step is not changed once
 *  made: the forward pass keeps what it derives from one for all its layers. */
export interface Step {
  /** Token ids [t]. */
  ids: Int32Array;
  /** Position of each token in its sequence [t]. */
  positions: Int32Array;
  seqStarts: Int32Array;
  /** The cache row of each sequence, ascending. */
  rows: Int32Array;
  /** Tokens whose next-token logits a caller wants besides each sequence's last (a prompt's
   *  log-probabilities): the head runs over them in chunks after the last layer. */
  score?: StepScore;
}

/** Prompt scoring in a step: the tokens (indices into the step's, ascending) and what takes each
 *  one's logits row, `at` its place in `tokens` (the row is reused after the call returns). */
export interface StepScore {
  tokens: Int32Array;
  sink: (at: number, logits: Float32Array) => void;
}

/** One layer's key/value cache for the rows of a batch: [rows, kvHeads, capacity, headDim]. */
export interface CacheBlock {
  k: Tensor;
  v: Tensor;
}

export function prefillStep(prompts: Int32Array[]): Step {
  const seqStarts = new Int32Array(prompts.length + 1);
  prompts.forEach((p, s) => (seqStarts[s + 1] = seqStarts[s]! + p.length));
  const t = seqStarts[prompts.length]!;
  const ids = new Int32Array(t);
  const positions = new Int32Array(t);
  prompts.forEach((p, s) => {
    ids.set(p, seqStarts[s]!);
    for (let i = 0; i < p.length; i++) positions[seqStarts[s]! + i] = i;
  });
  return { ids, positions, seqStarts, rows: Int32Array.from(prompts.keys()) };
}

/** A segment of a mixed step: tokens for cache row `row` from position `start` on. */
export interface Segment {
  row: number;
  ids: ArrayLike<number>;
  start: number;
}

/** A mixed step (continuous batching), segments by ascending row: a segment from position 0 is a
 *  prompt's first chunk, computed as prefill; any other (a later chunk of a prompt, or a
 *  generated token) attends to its row's cache, each token as decode computes it. So a token's
 *  result depends on where its prompt's first chunk ends, never on the other segments. */
export function segmentStep(segments: Segment[]): Step {
  const seqStarts = new Int32Array(segments.length + 1);
  segments.forEach((g, s) => (seqStarts[s + 1] = seqStarts[s]! + g.ids.length));
  const t = seqStarts[segments.length]!;
  const ids = new Int32Array(t);
  const positions = new Int32Array(t);
  segments.forEach((g, s) => {
    if (s > 0 && !(g.row > segments[s - 1]!.row)) throw new RangeError('mixed step: rows must ascend');
    ids.set(g.ids, seqStarts[s]!);
    for (let i = 0; i < g.ids.length; i++) positions[seqStarts[s]! + i] = g.start + i;
  });
  return { ids, positions, seqStarts, rows: Int32Array.from(segments, (g) => g.row) };
}

export class Transformer {
  private readonly ws = new Workspace();
  private readonly scale: number;
  /** Rotary frequencies [rotaryDim/2] (scaled per the config), or null for learned positions. */
  private readonly invFreq: Float64Array | null;

  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    readonly globals: GlobalWeights,
    /** Share of attention weights decode keeps (1 = dense attention). */
    readonly attnSparsity = 1,
  ) {
    this.scale = 1 / Math.sqrt(config.headDim);
    this.invFreq = config.positions.kind === 'rope' ? ropeInvFreq(config.positions) : null;
  }

  // ---- pieces ---------------------------------------------------------------------------------

  /** Token (and learned position) embeddings of a step into out [t, hidden]. */
  embed(step: Step, out: F32): F32 {
    const c = this.config;
    const b = this.backend;
    const t = step.ids.length;
    const ids = new Tensor('i32', [t], step.ids);
    const e = this.globals.embed;
    let x = this.ws.get('embed', [t, c.embedDim]);
    x = 'packed' in e ? b.gatherRows(e.packed, ids, x) : b.embedding(e.table, ids, x);
    if (this.globals.projectIn) x = this.linear(x, this.globals.projectIn, 'project_in');
    out.data.set(x.data);
    if (this.globals.posEmbed && c.positions.kind === 'learned') {
      const offset = c.positions.offset;
      const pos = new Tensor('i32', [t], step.positions.map((p) => p + offset));
      b.add(out, b.embedding(this.globals.posEmbed, pos, this.ws.get('pos', [t, c.hidden])), out);
    }
    return out;
  }

  /** x += attention(norm(x)) (or the post-norm order), writing this step's keys and values into the cache block. */
  attentionBlock(w: AttentionWeights, x: F32, cache: CacheBlock, step: Step): void {
    const c = this.config;
    const h = c.preNorm ? this.norm(x, w.attnNorm, 'h') : x;
    const a = this.attention(h, w, cache, step);
    this.linear(a, w.o, 'o', { addTo: x });
    if (!c.preNorm) normForward(this.backend, c, x, w.attnNorm, x);
  }

  /** x += mlp(norm(x)) (or the post-norm order). */
  mlpBlock(w: MlpWeights, x: F32): void {
    const c = this.config;
    const h = c.preNorm ? this.norm(x, w.mlpNorm, 'h') : x;
    this.linear(this.mlp(h, w), w.down, 'down', { addTo: x });
    if (!c.preNorm) normForward(this.backend, c, x, w.mlpNorm, x);
  }

  /** Rows of the last token of each prompt (the ones that predict the next token). */
  lastTokens(x: F32, step: Step): F32 {
    const hsz = this.config.hidden;
    const n = step.seqStarts.length - 1;
    const last = this.ws.get('last', [n, hsz]);
    for (let s = 0; s < n; s++) {
      const row = step.seqStarts[s + 1]! - 1;
      last.data.set(x.data.subarray(row * hsz, (row + 1) * hsz), s * hsz);
    }
    return last;
  }

  /** The logits of the step's scored tokens (step.score), `chunk` rows at a time through `out`
   *  [≥ chunk, vocab]: each chunk's rows go to the sink before the next is computed, so scoring
   *  a long prompt holds no more than one chunk of logits. */
  scoreTokens(x: F32, step: Step, out: F32, chunk: number): void {
    const score = step.score;
    if (!score || score.tokens.length === 0) return;
    const hsz = this.config.hidden;
    const vocab = this.config.vocabSize;
    for (let a = 0; a < score.tokens.length; a += chunk) {
      const n = Math.min(chunk, score.tokens.length - a);
      const rows = this.ws.get('scored', [n, hsz]);
      for (let i = 0; i < n; i++) {
        const t = score.tokens[a + i]!;
        rows.data.set(x.data.subarray(t * hsz, (t + 1) * hsz), i * hsz);
      }
      const logits = this.head(rows, out.rows(0, n));
      for (let i = 0; i < n; i++) score.sink(a + i, logits.data.subarray(i * vocab, (i + 1) * vocab));
    }
  }

  /** Final norm, projection and LM head over rows of hidden states → logits [rows, vocab]. */
  head(x: F32, out?: F32): F32 {
    let h = this.globals.finalNorm ? this.norm(x, this.globals.finalNorm, 'final') : x;
    if (this.globals.projectOut) h = this.linear(h, this.globals.projectOut, 'project_out');
    // Not the workspace: callers keep the logits of every batch until the step ends.
    return this.backend.matmul(h, this.globals.lmHead, null, out);
  }

  /** x · Wᵀ + b into the workspace slot, with the epilogue fused (an activation, or the result
   *  added onto the residual stream as the GEMM finishes each part of it). */
  private linear(x: F32, l: Linear, slot: string, epilogue?: LinearEpilogue): F32 {
    const rows = x.size / l.w.k;
    return this.backend.matmul(x, l.w, l.b, this.ws.get(slot, [rows, l.w.n]), epilogue);
  }

  private norm(x: F32, n: Norm, slot: string): F32 {
    return normForward(this.backend, this.config, x, n, this.ws.get(slot, x.shape));
  }

  private attention(h: F32, w: AttentionWeights, cache: CacheBlock, step: Step): F32 {
    const c = this.config;
    const b = this.backend;
    const t = step.ids.length;
    const q = this.linear(h, w.q, 'q').reshape([t, c.heads, c.headDim]);
    const k = this.linear(h, w.k, 'k').reshape([t, c.kvHeads, c.headDim]);
    const v = this.linear(h, w.v, 'v').reshape([t, c.kvHeads, c.headDim]);
    if (this.invFreq) {
      const pos = new Tensor('i32', [t], step.positions);
      b.rope(q, pos, this.invFreq);
      b.rope(k, pos, this.invFreq);
    }
    const out = this.ws.get('attn', [t, c.heads, c.headDim]);
    const plan = this.attentionPlan(step);
    // Every token's keys and values to its row and position: one call each for the step (a
    // call per sequence cost ~2 µs plus the engine's glue, 768 calls a step at batch 16). A
    // decode step hands them to attention instead, which writes each while it reads the cache
    // (the same bytes; a separate write waited on a miss for every row and head).
    if (!plan.decode) {
      b.cacheWriteTokens(cache.k, k, plan.rows, plan.positions);
      b.cacheWriteTokens(cache.v, v, plan.rows, plan.positions);
    }
    for (const r of plan.runs) {
      const { from, to } = r;
      if (r.kind === 'prefill') {
        b.attentionPrefill(q.rows(from, to), k.rows(from, to), v.rows(from, to), r.starts, this.scale, out.rows(from, to));
      } else {
        b.attentionCached(q.rows(from, to), cache.k, cache.v, r.rows, r.lens, this.scale, out.rows(from, to), this.attnSparsity,
          plan.decode ? { k, v } : undefined);
      }
    }
    return out.reshape([t, c.heads * c.headDim]);
  }

  /** How a step's tokens meet the cache, the same in every layer: made once per step. */
  private attentionPlan(step: Step): AttentionPlan {
    let plan = this.plans.get(step);
    if (!plan) this.plans.set(step, (plan = attentionPlan(step)));
    return plan;
  }

  private readonly plans = new WeakMap<Step, AttentionPlan>();

  private mlp(h: F32, w: MlpWeights): F32 {
    const activation = fusedActivation(this.config, !!w.gate);
    const up = this.linear(h, w.up, 'up', activation && { activation });
    return activation ? up : activationForward(this.backend, this.config, up, w.gate ? this.linear(h, w.gate, 'gate') : null, up);
  }
}

/** A step's tokens against the cache: each token's row and position (where its keys and values
 *  go), and the runs of consecutive sequences attention handles in one call. */
interface AttentionPlan {
  rows: Tensor<'i32'>;
  positions: Tensor<'i32'>;
  /** One token a sequence, every one against its cache: a single cached run over the step. */
  decode: boolean;
  runs: ({ kind: 'prefill'; from: number; to: number; starts: Tensor<'i32'> }
    | { kind: 'cached'; from: number; to: number; rows: Tensor<'i32'>; lens: Tensor<'i32'> })[];
}

function attentionPlan(step: Step): AttentionPlan {
  const t = step.ids.length;
  const n = step.seqStarts.length - 1;
  const start = (s: number) => step.positions[step.seqStarts[s]!]!;
  const rowOf = new Int32Array(t);
  for (let s = 0; s < n; s++) rowOf.fill(step.rows[s]!, step.seqStarts[s]!, step.seqStarts[s + 1]!);
  const runs: AttentionPlan['runs'] = [];
  for (let s = 0; s < n;) {
    let e = s + 1;
    const from = step.seqStarts[s]!;
    if (start(s) === 0) {
      // Runs of sequences from position 0 (a whole prefill step is one run): causal attention within each.
      while (e < n && start(e) === 0) e++;
      const to = step.seqStarts[e]!;
      runs.push({ kind: 'prefill', from, to, starts: new Tensor('i32', [e - s + 1], step.seqStarts.slice(s, e + 1).map((x) => x - from)) });
    } else {
      // Any other token (a later prompt chunk, or a generated one) attends to its row's cache,
      // its keys written first: one call for the run of such segments.
      while (e < n && start(e) > 0) e++;
      const to = step.seqStarts[e]!;
      runs.push({
        kind: 'cached', from, to, rows: new Tensor('i32', [to - from], rowOf.slice(from, to)),
        lens: new Tensor('i32', [to - from], step.positions.slice(from, to).map((p) => p + 1)),
      });
    }
    s = e;
  }
  const decode = runs.length === 1 && runs[0]!.kind === 'cached' && t === n;
  return { rows: new Tensor('i32', [t], rowOf), positions: new Tensor('i32', [t], step.positions), runs, decode };
}
