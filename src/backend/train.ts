// The validated training ops of a backend (Backend.train): backward of every forward op, the loss,
// the optimizer. Each checks dtypes, shapes and lengths and throws a TypeError or RangeError naming
// the argument at fault before a kernel runs (kernels-train.ts documents the kernels).
// Input gradients are returned (a new tensor unless `out` is given); parameter gradients are
// accumulated into the caller's buffers.

import { Tensor } from '../tensor/tensor.js';
import type { Backend, PackedWeight } from './backend.js';
import { TiledGrad, TiledWeight } from './tiled.js';
import { checkPair, checkQkv, checkRope, checkSeqStarts, expectF32, expectFinite, expectI32, expectRank, expectShape, fail, outOr, rowsCols } from './check.js';
import type { ComputeMode, Kernels } from './kernels.js';
import { type AdamWHyper, IGNORE_INDEX } from './kernels-train.js';

type F32 = Tensor<'f32'>;

/** Values of dlogits one GEMM of the LM head's input gradient takes at once, when the head comes in
 *  tiles (lmHeadLoss): the native GEMM packs its whole left operand into a per-thread scratch that
 *  keeps its largest size, and a whole chunk of dlogits (chunkRows × vocab: 62.5 MiB at 512 tokens
 *  and 32000 rows) made that scratch a second, uncounted copy of the logits. */
export const HEAD_PACK_VALUES = 1 << 20;

/** A gradient or optimizer input: f32, or bf16 (16-bit words). */
type GradTensor = Tensor<'f32'> | Tensor<'bf16'>;

function expectGrad(op: string, name: string, t: Tensor): asserts t is GradTensor {
  if (!(t instanceof Tensor) || (t.dtype !== 'f32' && t.dtype !== 'bf16')) throw new TypeError(`${op}: ${name} must be an f32 or bf16 Tensor`);
}

function expectSize(op: string, name: string, t: Tensor, size: number): void {
  if (t.size !== size) fail(op, `${name} has ${t.size} elements, expected ${size}`);
}

export class TrainOps {
  constructor(private readonly backend: Backend) {}

  private get kernels(): Kernels {
    return this.backend.kernels;
  }

  /** A tile's gathered operand (dy's columns, a tile's embedding rows), in one buffer reused tile
   *  after tile and grown as needed: a fresh array per tile left a micro-batch's tokens × vocab
   *  floats of garbage behind the LM head (62.5 MiB at 512 tokens, 32000 rows), which the
   *  collector let pile up past the RAM limit. Its contents are written before each use. */
  private tileScratch(elems: number): Float32Array {
    if (this.scratch.length < elems) this.scratch = new Float32Array(elems);
    return this.scratch.subarray(0, elems);
  }

  private scratch = new Float32Array(0);

  // ---- linear -------------------------------------------------------------------------------

  /** dw[n,k] += dyᵀ · x for y = x · Wᵀ: dy [.., n] and x [.., k] over the same rows. The input
   *  gradient dx = dy · W is backend.matmul(dy, backend.packWeightT(W)). */
  linearGradWeight(dy: F32, x: F32, dw: F32 | TiledGrad, mode: ComputeMode = 'fp32'): void {
    if (dw instanceof TiledGrad) {
      // Row tile [r0, r1) of dW takes columns [r0, r1) of dy: each dW row is its own sum over the
      // rows of dy and x, so the tiles give exactly the whole product.
      const [m, n] = rowsCols(dy);
      if (n !== dw.n) fail('linearGradWeight', `dy has ${n} columns, the tiled dw ${dw.n} rows`);
      for (const { r0, r1, dw: tile } of dw.tiles()) {
        const cols = new Tensor('f32', [m, r1 - r0], this.tileScratch(m * (r1 - r0)));
        for (let i = 0; i < m; i++) cols.data.set(dy.data.subarray(i * n + r0, i * n + r1), i * (r1 - r0));
        this.linearGradWeight(cols, x, tile, mode);
      }
      return;
    }
    const [m, n, k] = this.checkGradWeight(dy, x, dw, mode);
    this.kernels.matmulGradWeight(dy.data, x.data, m, n, k, dw.data, mode);
  }

  /** linearGradWeight off the JavaScript thread; the buffers must not change until it settles. */
  async linearGradWeightAsync(dy: F32, x: F32, dw: F32, mode: ComputeMode = 'fp32'): Promise<void> {
    const [m, n, k] = this.checkGradWeight(dy, x, dw, mode);
    await this.kernels.matmulGradWeightAsync(dy.data, x.data, m, n, k, dw.data, mode);
  }

  private checkGradWeight(dy: F32, x: F32, dw: F32, mode: ComputeMode): [number, number, number] {
    const op = 'linearGradWeight';
    expectF32(op, 'dy', dy);
    expectF32(op, 'x', x);
    expectF32(op, 'dw', dw);
    const [m, n] = rowsCols(dy), [mx, k] = rowsCols(x);
    if (mx !== m) fail(op, `dy has ${m} rows, x has ${mx}`);
    expectShape(op, 'dw', dw, [n, k]);
    if (mode !== 'fp32' && mode !== 'bf16') throw new TypeError(`${op}: mode must be 'fp32' or 'bf16', got ${String(mode)}`);
    return [m, n, k];
  }

  /** dbias[n] += Σ over rows of dy [.., n]. */
  biasGrad(dy: F32, dbias: F32): void {
    const op = 'biasGrad';
    expectF32(op, 'dy', dy);
    expectF32(op, 'dbias', dbias);
    const [rows, cols] = rowsCols(dy);
    expectSize(op, 'dbias', dbias, cols);
    this.kernels.biasGrad(dy.data, rows, cols, dbias.data);
  }

  // ---- row-wise -----------------------------------------------------------------------------

  private checkNorm(op: string, x: F32, dy: F32, gamma: F32, eps: number, dgamma: F32, out: F32 | undefined): [number, number, F32] {
    expectF32(op, 'x', x);
    expectF32(op, 'dy', dy);
    expectShape(op, 'dy', dy, x.shape);
    const [rows, cols] = rowsCols(x);
    for (const [name, t] of [['gamma', gamma], ['dgamma', dgamma]] as const) {
      expectF32(op, name, t);
      expectSize(op, name, t, cols);
    }
    expectFinite(op, 'eps', eps);
    return [rows, cols, outOr(op, out, x.shape)];
  }

  /** LayerNorm backward from the forward's input x: returns dx; dgamma (and dbeta) accumulate. */
  layerNormBackward(x: F32, dy: F32, gamma: F32, eps: number, dgamma: F32, dbeta: F32 | null, out?: F32): F32 {
    const op = 'layerNormBackward';
    const [rows, cols, dx] = this.checkNorm(op, x, dy, gamma, eps, dgamma, out);
    if (dbeta) {
      expectF32(op, 'dbeta', dbeta);
      expectSize(op, 'dbeta', dbeta, cols);
    }
    this.kernels.layerNormBackward(x.data, dy.data, rows, cols, gamma.data, eps, dx.data, dgamma.data, dbeta?.data ?? null);
    return dx;
  }

  rmsNormBackward(x: F32, dy: F32, gamma: F32, eps: number, dgamma: F32, out?: F32): F32 {
    const [rows, cols, dx] = this.checkNorm('rmsNormBackward', x, dy, gamma, eps, dgamma, out);
    this.kernels.rmsNormBackward(x.data, dy.data, rows, cols, gamma.data, eps, dx.data, dgamma.data);
    return dx;
  }

  private checkPointwise(op: string, x: F32, dy: F32, out: F32 | undefined): F32 {
    return checkPair(op, ['x', 'dy'], x, dy, out);
  }

  reluBackward(x: F32, dy: F32, out?: F32): F32 {
    const dx = this.checkPointwise('reluBackward', x, dy, out);
    this.kernels.reluBackward(x.data, dy.data, dx.data);
    return dx;
  }

  /** approximate: the tanh form ("gelu_new"); otherwise the erf form. */
  geluBackward(x: F32, dy: F32, approximate = false, out?: F32): F32 {
    const dx = this.checkPointwise('geluBackward', x, dy, out);
    this.kernels.geluBackward(x.data, dy.data, dx.data, approximate);
    return dx;
  }

  /** For y = silu(gate) · up: [dgate, dup]. */
  siluMulBackward(gate: F32, up: F32, dy: F32, dgate?: F32, dup?: F32): [F32, F32] {
    const op = 'siluMulBackward';
    const g = this.checkPointwise(op, gate, dy, dgate);
    expectF32(op, 'up', up);
    expectShape(op, 'up', up, gate.shape);
    const u = outOr(op, dup, gate.shape);
    this.kernels.siluMulBackward(gate.data, up.data, dy.data, g.data, u.data);
    return [g, u];
  }

  /** In place on dx[t, heads, d]: the rotary embedding's backward is the rotation by −angle, i.e.
   *  the forward at negated positions (cos is even, sin odd: exact). */
  ropeBackward(dx: F32, positions: Tensor<'i32'>, invFreq: Float64Array): F32 {
    const [t, heads, d, rot] = checkRope('ropeBackward', dx, positions, invFreq);
    this.kernels.rope(dx.data, t, heads, d, Int32Array.from(positions.data, (p) => -p), invFreq, rot);
    return dx;
  }

  /** dtable[vocab, dim] += the rows of dy [ids.size, dim] at ids (scatter-add; a tied LM head's
   *  weight gradient adds into the same buffer through linearGradWeight). */
  embeddingBackward(dy: F32, ids: Tensor<'i32'>, dtable: F32 | TiledGrad): void {
    if (dtable instanceof TiledGrad) {
      // Row tile [r0, r1) of the table takes the tokens whose id falls in it, in their order: each
      // row gets the same additions in the same order as from the whole table.
      const dim = dtable.k;
      for (const { r0, r1, dw } of dtable.tiles()) {
        const mine: number[] = [];
        for (let i = 0; i < ids.size; i++) if (ids.data[i]! >= r0 && ids.data[i]! < r1) mine.push(i);
        if (mine.length === 0) continue;
        const sub = new Tensor('f32', [mine.length, dim], this.tileScratch(mine.length * dim));
        mine.forEach((i, j) => sub.data.set(dy.data.subarray(i * dim, (i + 1) * dim), j * dim));
        this.embeddingBackward(sub, new Tensor('i32', [mine.length], Int32Array.from(mine, (i) => ids.data[i]! - r0)), dw);
      }
      return;
    }
    const op = 'embeddingBackward';
    expectF32(op, 'dy', dy);
    expectF32(op, 'dtable', dtable);
    expectRank(op, 'dtable', dtable, 2);
    const [vocab, dim] = dtable.shape as [number, number];
    expectI32(op, 'ids', ids);
    expectShape(op, 'dy', dy, [ids.size, dim]);
    for (let i = 0; i < ids.size; i++) {
      const id = ids.data[i]!;
      if (id < 0 || id >= vocab) fail(op, `ids[${i}] = ${id} is outside [0, ${vocab})`);
    }
    this.kernels.embeddingBackward(dy.data, ids.data, vocab, dim, dtable.data);
  }

  // ---- loss ---------------------------------------------------------------------------------

  private checkLabels(op: string, labels: Tensor<'i32'>, rows: number, vocab: number): void {
    expectI32(op, 'labels', labels);
    expectSize(op, 'labels', labels, rows);
    for (let i = 0; i < rows; i++) {
      const l = labels.data[i]!;
      if (l !== IGNORE_INDEX && (l < 0 || l >= vocab)) fail(op, `labels[${i}] = ${l} is outside [0, ${vocab}) and is not ${IGNORE_INDEX}`);
    }
  }

  /** In place over logits [rows, vocab]: becomes dlogits = (softmax − onehot) · scale (0 on rows
   *  labelled -100); returns the loss summed over the counted rows and their count. */
  softmaxCrossEntropy(logits: F32, labels: Tensor<'i32'>, scale: number): { loss: number; count: number } {
    const op = 'softmaxCrossEntropy';
    expectF32(op, 'logits', logits);
    const [rows, vocab] = rowsCols(logits);
    this.checkLabels(op, labels, rows, vocab);
    expectFinite(op, 'scale', scale);
    return this.kernels.softmaxCrossEntropy(logits.data, rows, vocab, labels.data, scale);
  }

  /**
   * The LM head and its loss, chunk by chunk, so no more than chunkRows × vocab logits exist at
   * once: for hidden [rows, k] and a head W [vocab, k] (packed for the forward, and transposed),
   * adds each chunk's dW into dWeight [vocab, k] (f32; the embedding's gradient buffer when the
   * head is tied), writes dHidden [rows, k] and returns the loss sum and the counted targets.
   * scale multiplies every gradient (1 / the step's total target count gives the mean loss).
   * A head too large for memory comes in tiles (TiledWeight over vocab rows, its transpose over
   * columns, TiledGrad dW over vocab rows): each logit and gradient element is the same sum.
   */
  lmHeadLoss(args: {
    hidden: F32; head: PackedWeight | TiledWeight; headT: PackedWeight | TiledWeight; labels: Tensor<'i32'>; scale: number;
    dHidden: F32; dWeight: F32 | TiledGrad; chunkRows?: number; mode?: ComputeMode;
    /** Scratch for a chunk's logits (at least chunkRows × vocab elements, contents ignored): a
     *  caller that trains step after step passes the same one instead of a fresh buffer per call. */
    logits?: F32;
  }): { loss: number; count: number } {
    const op = 'lmHeadLoss';
    const { hidden, head, headT, labels, scale, dHidden, dWeight } = args;
    expectF32(op, 'hidden', hidden);
    expectRank(op, 'hidden', hidden, 2);
    const [rows, k] = hidden.shape as [number, number];
    const vocab = head.n;
    if (head.k !== k || headT.n !== k || headT.k !== vocab) fail(op, `head [${head.n}, ${head.k}] and headT [${headT.n}, ${headT.k}] do not fit hidden [${rows}, ${k}]`);
    this.checkLabels(op, labels, rows, vocab);
    expectFinite(op, 'scale', scale);
    expectF32(op, 'dHidden', dHidden);
    expectShape(op, 'dHidden', dHidden, [rows, k]);
    if (dWeight instanceof TiledGrad) {
      if (dWeight.n !== vocab || dWeight.k !== k) fail(op, `the tiled dWeight is [${dWeight.n}, ${dWeight.k}], needs [${vocab}, ${k}]`);
    } else {
      expectF32(op, 'dWeight', dWeight);
      expectShape(op, 'dWeight', dWeight, [vocab, k]);
    }
    const chunk = args.chunkRows ?? Math.max(1, Math.min(rows, Math.floor((16 << 20) / vocab)));
    if (!Number.isInteger(chunk) || chunk < 1) fail(op, `chunkRows must be a positive integer, got ${chunk}`);
    const chunkSize = Math.min(chunk, rows) * vocab;
    if (args.logits) {
      expectF32(op, 'logits', args.logits);
      if (args.logits.size < chunkSize) fail(op, `the logits scratch holds ${args.logits.size} elements, needs ${chunkSize}`);
    }
    const logits = args.logits ? new Tensor('f32', [Math.min(chunk, rows), vocab], args.logits.data.subarray(0, chunkSize)) : Tensor.zeros('f32', [Math.min(chunk, rows), vocab]);
    let loss = 0, count = 0;
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const r1 = Math.min(rows, r0 + chunk);
      const h = hidden.rows(r0, r1) as F32;
      const lg = r1 - r0 === logits.shape[0] ? logits : logits.rows(0, r1 - r0) as F32;
      this.backend.matmul(h, head, null, lg);
      const part = this.kernels.softmaxCrossEntropy(lg.data, r1 - r0, vocab, labels.data.subarray(r0, r1), scale);
      loss += part.loss;
      count += part.count;
      this.headInputGrad(lg, headT, dHidden.rows(r0, r1) as F32);
      this.linearGradWeight(lg, h, dWeight, args.mode ?? (head as { mode?: ComputeMode }).mode ?? 'fp32');
    }
    return { loss, count };
  }

  /** dHidden = dlogits · W. A tiled head's Wᵀ goes tile by tile (each read once), each tile over
   *  HEAD_PACK_VALUES of dlogits at a time (rows are independent: the same sums as one product). */
  private headInputGrad(dlogits: F32, headT: PackedWeight | TiledWeight, dHidden: F32): void {
    if (!(headT instanceof TiledWeight)) {
      this.backend.matmul(dlogits, headT, null, dHidden);
      return;
    }
    const [rows, vocab] = dlogits.shape as [number, number], width = headT.n;
    const step = Math.max(1, Math.floor(HEAD_PACK_VALUES / vocab));
    let col = 0;
    for (const p of headT.parts()) {
      for (let a = 0; a < rows; a += step) {
        const b = Math.min(rows, a + step);
        const part = this.backend.matmul(dlogits.rows(a, b) as F32, p, null, new Tensor('f32', [b - a, p.n], this.tileScratch((b - a) * p.n)));
        for (let i = 0; i < b - a; i++) dHidden.data.set(part.data.subarray(i * p.n, (i + 1) * p.n), (a + i) * width + col);
      }
      col += p.n;
    }
  }

  // ---- attention ----------------------------------------------------------------------------

  /** Causal attention over a ragged batch (as Backend.attentionPrefill) that also returns each
   *  row's log-sum-exp lse [t, hq], which attentionBackward needs. */
  attentionForward(q: F32, k: F32, v: F32, seqStarts: Tensor<'i32'>, scale: number, out?: F32, lse?: F32): { out: F32; lse: F32 } {
    const op = 'attentionForward';
    const [t, hq, hkv, d] = checkQkv(op, q, k, v);
    checkSeqStarts(op, seqStarts, t);
    expectFinite(op, 'scale', scale);
    const o = outOr(op, out, [t, hq, d]), l = outOr(op, lse, [t, hq]);
    this.kernels.attentionTrainForward(q.data, k.data, v.data, t, hq, hkv, d, seqStarts.data, scale, o.data, l.data);
    return { out: o, lse: l };
  }

  /** dq, dk, dv from dout and attentionForward's out and lse (nothing [t, t] is held). */
  attentionBackward(args: { q: F32; k: F32; v: F32; out: F32; lse: F32; dout: F32; seqStarts: Tensor<'i32'>; scale: number;
    dq?: F32; dk?: F32; dv?: F32 }): { dq: F32; dk: F32; dv: F32 } {
    const op = 'attentionBackward';
    const { q, k, v, out, lse, dout, seqStarts, scale } = args;
    const [t, hq, hkv, d] = checkQkv(op, q, k, v);
    checkSeqStarts(op, seqStarts, t);
    expectFinite(op, 'scale', scale);
    for (const [name, x, shape] of [['out', out, [t, hq, d]], ['lse', lse, [t, hq]], ['dout', dout, [t, hq, d]]] as const) {
      expectF32(op, name, x);
      expectShape(op, name, x, shape);
    }
    const dq = outOr(op, args.dq, [t, hq, d]), dk = outOr(op, args.dk, [t, hkv, d]), dv = outOr(op, args.dv, [t, hkv, d]);
    this.kernels.attentionTrainBackward(q.data, k.data, v.data, out.data, lse.data, dout.data, t, hq, hkv, d, seqStarts.data, scale,
      dq.data, dk.data, dv.data);
    return { dq, dk, dv };
  }

  // ---- optimizer ----------------------------------------------------------------------------

  /** One fused AdamW step (PyTorch's semantics, see TrainKernels.adamw) over one parameter's
   *  buffers: master, m, v f32 updated in place; paramBf16 (bf16) written when given. */
  adamw(grad: GradTensor, master: F32, m: F32, v: F32, paramBf16: Tensor<'bf16'> | null, hyper: AdamWHyper): void {
    this.checkAdamW(grad, master, m, v, paramBf16, hyper);
    this.kernels.adamw(grad.data, grad.dtype, master.data, m.data, v.data, paramBf16?.data ?? null, hyper);
  }

  /** adamw off the JavaScript thread (one sub-group's update can overlap the next one's I/O); the
   *  buffers must not change until it settles. */
  async adamwAsync(grad: GradTensor, master: F32, m: F32, v: F32, paramBf16: Tensor<'bf16'> | null, hyper: AdamWHyper): Promise<void> {
    this.checkAdamW(grad, master, m, v, paramBf16, hyper);
    await this.kernels.adamwAsync(grad.data, grad.dtype, master.data, m.data, v.data, paramBf16?.data ?? null, hyper);
  }

  private checkAdamW(grad: GradTensor, master: F32, m: F32, v: F32, paramBf16: Tensor<'bf16'> | null, hyper: AdamWHyper): void {
    const op = 'adamw';
    expectGrad(op, 'grad', grad);
    for (const [name, t] of [['master', master], ['m', m], ['v', v]] as const) {
      expectF32(op, name, t);
      expectSize(op, name, t, grad.size);
    }
    if (paramBf16 !== null) {
      if (!(paramBf16 instanceof Tensor) || paramBf16.dtype !== 'bf16') throw new TypeError(`${op}: paramBf16 must be a bf16 Tensor or null`);
      expectSize(op, 'paramBf16', paramBf16, grad.size);
    }
    checkHyper(op, hyper);
  }

  /** Σ x² in double over an f32 or bf16 tensor (the global gradient norm is √ of the total). */
  sumSquares(x: GradTensor): number {
    expectGrad('sumSquares', 'x', x);
    return this.kernels.sumSquares(x.data, x.dtype);
  }
}

function checkHyper(op: string, h: AdamWHyper): void {
  if (typeof h !== 'object' || h === null) throw new TypeError(`${op}: hyper must be an object`);
  for (const key of ['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'gradScale', 'step'] as const) expectFinite(op, key, h[key]);
  if (!(h.beta1 >= 0 && h.beta1 < 1)) fail(op, `beta1 must be in [0, 1), got ${h.beta1}`);
  if (!(h.beta2 >= 0 && h.beta2 < 1)) fail(op, `beta2 must be in [0, 1), got ${h.beta2}`);
  if (!(h.eps > 0)) fail(op, `eps must be positive, got ${h.eps}`);
  if (!(h.lr >= 0) || !(h.weightDecay >= 0) || !(h.gradScale >= 0)) fail(op, 'lr, weightDecay and gradScale must not be negative');
  if (!Number.isInteger(h.step) || h.step < 1) fail(op, `step must be an integer >= 1, got ${h.step}`);
}
