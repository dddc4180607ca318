// One transformer layer for training: its forward, which saves what the backward needs (a tape),
// and the backward beside it. There is one such layer for every architecture: like the generation
// forward (src/models/transformer.ts), it follows the ModelConfig switches — pre- or post-norm,
// LayerNorm or RMSNorm, learned or rotary positions, grouped-query attention, biases, plain or
// gated MLP — and takes its norms and activations from src/models/ops.ts, where each forward
// sits beside its backward and which transformer.ts uses too. test/train-model.test.ts checks
// that this forward's loss equals the generation forward's on every fixture architecture.
//
// A layer is two residual blocks, each   s = r + branch(h),  h = preNorm ? norm(r) : r,
// out = preNorm ? s : norm(s); the attention branch is o(attention(rope(q(h)), rope(k(h)), v(h)))
// and the MLP branch down(act(up(h)[, gate(h)])). Backward of a block from dOut:
//   ds = preNorm ? dOut : normBackward(s, dOut);  dh = branchBackward(ds);
//   dr = ds + (preNorm ? normBackward(r, dh) : dh).
//
// Parameters come in as LayerParams (fetched by the caller from a ParamSource) and parameter
// gradients accumulate into LayerGrads; the layer holds neither. Activations live in Workspaces
// the caller owns: one per layer when every tape is kept, one shared when layers are recomputed
// (activation checkpointing).

import type { Backend, ComputeMode } from '../backend/index.js';
import type { ModelConfig } from '../models/config.js';
import { activationBackward, activationForward, normBackward, normForward } from '../models/ops.js';
import { ropeInvFreq } from '../models/rope.js';
import type { Workspace } from '../models/workspace.js';
import type { Norm } from '../models/weights.js';
import type { NormGrad } from '../models/ops.js';
import { Tensor } from '../tensor/tensor.js';
import type { MicroBatch } from './batch.js';
import type { LayerGrads, LayerParams, LinearGrad, TrainLinear } from './params.js';

type F32 = Tensor<'f32'>;

/** What a residual block keeps for its backward. */
interface BlockTape {
  r: F32; // residual input [t, hidden] (owned by the caller or the previous block)
  h: F32; // branch input: norm(r) (pre-norm) or r
  s: F32; // r + branch [t, hidden]
  out: F32; // s (pre-norm) or norm(s)
}

interface AttnTape extends BlockTape {
  q: F32; // [t, heads·headDim], rotated
  k: F32; // [t, kvHeads·headDim], rotated
  v: F32; // [t, kvHeads·headDim]
  a: F32; // attention output [t, heads·headDim]
  lse: F32; // log-sum-exp of each query row [t, heads]
}

interface MlpTape extends BlockTape {
  up: F32; // [t, ffn], before the activation
  gate: F32 | null; // [t, ffn]
  act: F32; // [t, ffn]
}

export interface LayerTape {
  attn: AttnTape;
  mlp: MlpTape;
}

export class TrainLayer {
  private readonly scale: number;
  /** Rotary frequencies (with the config's rope scaling), as generation uses them. */
  private readonly invFreq: Float64Array | null;

  constructor(
    readonly config: ModelConfig,
    private readonly b: Backend,
    private readonly mode: ComputeMode,
    /** Scratch for gradients flowing through a layer (shared by all layers). */
    private readonly grads: Workspace,
  ) {
    this.scale = 1 / Math.sqrt(config.headDim);
    this.invFreq = config.positions.kind === 'rope' ? ropeInvFreq(config.positions) : null;
  }

  /** Runs the layer on x [t, hidden] (kept unchanged: it is the tape's input); the output is tape.mlp.out. */
  forward(p: LayerParams, x: F32, batch: MicroBatch, ws: Workspace): LayerTape {
    const attn = this.attnForward(p, x, batch, ws);
    return { attn, mlp: this.mlpForward(p, attn.out, ws) };
  }

  /** Adds this layer's parameter gradients into g; writes the gradient of its input into dIn. */
  backward(p: LayerParams, g: LayerGrads, tape: LayerTape, batch: MicroBatch, dOut: F32, dIn: F32): F32 {
    const dMid = this.blockBackward(tape.mlp, p.mlpNorm, g.mlpNorm, dOut, 'mlp', (ds, dh) => this.mlpBackward(p, g, tape.mlp, ds, dh),
      this.grads.get('mid', dOut.shape));
    return this.blockBackward(tape.attn, p.attnNorm, g.attnNorm, dMid, 'attn', (ds, dh) => this.attnBackward(p, g, tape.attn, batch, ds, dh), dIn);
  }

  // ---- blocks ---------------------------------------------------------------------------------

  private blockIn(r: F32, n: Norm, ws: Workspace, name: string): F32 {
    return this.config.preNorm ? normForward(this.b, this.config, r, n, ws.get(`${name}.h`, r.shape)) : r;
  }

  private blockOut(s: F32, n: Norm, ws: Workspace, name: string): F32 {
    return this.config.preNorm ? s : normForward(this.b, this.config, s, n, ws.get(`${name}.out`, s.shape));
  }

  private blockBackward(tape: BlockTape, n: Norm, gn: NormGrad, dOut: F32, name: string,
    branch: (ds: F32, dh: F32) => void, dr: F32): F32 {
    const c = this.config;
    const ds = c.preNorm ? dOut : normBackward(this.b, c, tape.s, dOut, n, gn, this.grads.get(`${name}.ds`, dOut.shape));
    const dh = this.grads.get(`${name}.dh`, dOut.shape);
    branch(ds, dh);
    if (c.preNorm) normBackward(this.b, c, tape.r, dh, n, gn, dr);
    else dr.data.set(dh.data);
    return this.b.add(dr, ds, dr);
  }

  // ---- attention ------------------------------------------------------------------------------

  private attnForward(p: LayerParams, r: F32, batch: MicroBatch, ws: Workspace): AttnTape {
    const c = this.config;
    const t = r.shape[0]!;
    const h = this.blockIn(r, p.attnNorm, ws, 'attn');
    const q = this.linear(h, p.q, ws.get('q', [t, c.heads * c.headDim]));
    const k = this.linear(h, p.k, ws.get('k', [t, c.kvHeads * c.headDim]));
    const v = this.linear(h, p.v, ws.get('v', [t, c.kvHeads * c.headDim]));
    if (this.invFreq) {
      const pos = new Tensor('i32', [t], batch.positions);
      this.b.rope(q.reshape([t, c.heads, c.headDim]), pos, this.invFreq);
      this.b.rope(k.reshape([t, c.kvHeads, c.headDim]), pos, this.invFreq);
    }
    const a = ws.get('a', [t, c.heads * c.headDim]), lse = ws.get('lse', [t, c.heads]);
    this.b.train.attentionForward(...this.heads(q, k, v), this.seqStarts(batch), this.scale, a.reshape([t, c.heads, c.headDim]), lse);
    const s = this.linear(a, p.o, ws.get('attn.s', r.shape));
    this.b.add(s, r, s);
    return { r, h, s, out: this.blockOut(s, p.attnNorm, ws, 'attn'), q, k, v, a, lse };
  }

  /** dh (the gradient of the attention's input h) from ds, the gradient of the block's sum. */
  private attnBackward(p: LayerParams, g: LayerGrads, tape: AttnTape, batch: MicroBatch, ds: F32, dh: F32): void {
    const t = ds.shape[0]!;
    const da = this.linearBackward(tape.a, ds, p.o, g.o, this.grads.get('da', tape.a.shape));
    const [q, k, v] = this.heads(tape.q, tape.k, tape.v);
    const { dq, dk, dv } = this.b.train.attentionBackward({
      q, k, v, out: tape.a.reshape(q.shape), lse: tape.lse, dout: da.reshape(q.shape), seqStarts: this.seqStarts(batch), scale: this.scale,
      dq: this.grads.get('dq', q.shape), dk: this.grads.get('dk', k.shape), dv: this.grads.get('dv', v.shape),
    });
    if (this.invFreq) {
      const pos = new Tensor('i32', [t], batch.positions);
      this.b.train.ropeBackward(dq, pos, this.invFreq);
      this.b.train.ropeBackward(dk, pos, this.invFreq);
    }
    const flat = (x: F32) => x.reshape([t, x.size / t]);
    this.linearBackward(tape.h, flat(dq), p.q, g.q, dh);
    const part = this.grads.get('dh.part', dh.shape);
    this.b.add(dh, this.linearBackward(tape.h, flat(dk), p.k, g.k, part), dh);
    this.b.add(dh, this.linearBackward(tape.h, flat(dv), p.v, g.v, part), dh);
  }

  /** q [t, heads, d], k and v [t, kvHeads, d] views of the projections. */
  private heads(q: F32, k: F32, v: F32): [F32, F32, F32] {
    const c = this.config;
    const t = q.shape[0]!;
    return [q.reshape([t, c.heads, c.headDim]), k.reshape([t, c.kvHeads, c.headDim]), v.reshape([t, c.kvHeads, c.headDim])];
  }

  private seqStarts(batch: MicroBatch): Tensor<'i32'> {
    return new Tensor('i32', [batch.seqStarts.length], batch.seqStarts);
  }

  // ---- MLP ------------------------------------------------------------------------------------

  private mlpForward(p: LayerParams, r: F32, ws: Workspace): MlpTape {
    const c = this.config;
    const t = r.shape[0]!;
    const h = this.blockIn(r, p.mlpNorm, ws, 'mlp');
    const up = this.linear(h, p.up, ws.get('up', [t, c.ffn]));
    const gate = p.gate ? this.linear(h, p.gate, ws.get('gate', [t, c.ffn])) : null;
    const act = activationForward(this.b, c, up, gate, ws.get('act', [t, c.ffn]));
    const s = this.linear(act, p.down, ws.get('mlp.s', r.shape));
    this.b.add(s, r, s);
    return { r, h, s, out: this.blockOut(s, p.mlpNorm, ws, 'mlp'), up, gate, act };
  }

  private mlpBackward(p: LayerParams, g: LayerGrads, tape: MlpTape, ds: F32, dh: F32): void {
    const dAct = this.linearBackward(tape.act, ds, p.down, g.down, this.grads.get('dact', tape.act.shape));
    const dUp = this.grads.get('dup', tape.up.shape);
    const dGate = tape.gate ? this.grads.get('dgate', tape.up.shape) : null;
    activationBackward(this.b, this.config, tape.up, tape.gate, dAct, dUp, dGate);
    this.linearBackward(tape.h, dUp, p.up, g.up, dh);
    if (dGate) this.b.add(dh, this.linearBackward(tape.h, dGate, p.gate!, g.gate!, this.grads.get('dh.part', dh.shape)), dh);
  }

  // ---- linear ---------------------------------------------------------------------------------

  private linear(x: F32, l: TrainLinear, out: F32): F32 {
    return this.b.matmul(x, l.w, l.b, out);
  }

  /** For y = x·Wᵀ + b: dW += dyᵀ·x, db += Σ dy; returns dx = dy·W (into dx). */
  linearBackward(x: F32, dy: F32, l: TrainLinear, g: LinearGrad, dx: F32): F32 {
    if (!l.wT) throw new Error('linearBackward: the layer was fetched without its transposed weights');
    this.b.train.linearGradWeight(dy, x, g.w, this.mode);
    if (g.b) this.b.train.biasGrad(dy, g.b);
    return this.b.matmul(dy, l.wT, null, dx);
  }
}
