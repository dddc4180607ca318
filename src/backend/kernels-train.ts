// The raw training kernels every compute backend implements beside its forward kernels
// (kernels.ts): plain typed arrays and sizes, no validation (train.ts validates every call).
// Conventions: a gradient of an input (dx, dq, ...) is overwritten; a gradient of a parameter
// (dw, dgamma, dbeta, dbias, dtable) is accumulated (+=), so micro-batches and tied uses add into
// one buffer. Shapes use the names of kernels.ts.
//
// The reference backend runs these on Float64Array as well (reference/*.ts are written over
// FloatArray), which is how the backward formulas are checked against finite differences.

import type { FloatDType } from '../tensor/dtype.js';
import type { ComputeMode, WeightFormat } from './kernels.js';

/** Float32Array in the product; the reference also accepts Float64Array. */
export type FloatArray = Float32Array | Float64Array;

/** Hugging Face's ignore index: a target with this label has no loss. */
export const IGNORE_INDEX = -100;

/** One AdamW step's hyper-parameters (PyTorch's torch.optim.AdamW semantics). */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** The gradient is multiplied by this first (global-norm clipping coefficient; 1 = none). */
  gradScale: number;
  /** The step number t ≥ 1 of the bias corrections 1 − β^t. */
  step: number;
}

export interface TrainKernels {
  // ---- linear layers: y[m,n] = x[m,k] · W[n,k]ᵀ (+ b) ----------------------------------------
  /** Packs Wᵀ (a weight of k rows over n inputs) from row-major W[n,k] into dst, so that
   *  matmul(dy, m, n, dst, format, k) is the input gradient dx[m,k] = dy[m,n] · W. */
  packWeightT(src: Float32Array | Uint16Array, srcDtype: FloatDType, n: number, k: number, format: WeightFormat, dst: Uint8Array): void;
  /** dw[n,k] += dy[m,n]ᵀ · x[m,k], fp32 accumulation (bf16 mode: dy and x rounded to bf16 first). */
  matmulGradWeight(dy: Float32Array, x: Float32Array, m: number, n: number, k: number, dw: Float32Array, mode: ComputeMode): void;
  /** The same off the JavaScript thread (native: on the compute pool via the async dispatcher). */
  matmulGradWeightAsync(dy: Float32Array, x: Float32Array, m: number, n: number, k: number, dw: Float32Array, mode: ComputeMode): Promise<void>;
  /** dbias[cols] += Σ over rows of dy[rows, cols]. */
  biasGrad(dy: FloatArray, rows: number, cols: number, dbias: FloatArray): void;

  // ---- row-wise ---------------------------------------------------------------------------------
  /** LayerNorm backward from its input x (statistics recomputed): dx; dgamma += Σ dy·x̂; dbeta += Σ dy. */
  layerNormBackward(x: FloatArray, dy: FloatArray, rows: number, cols: number, gamma: FloatArray, eps: number,
    dx: FloatArray, dgamma: FloatArray, dbeta: FloatArray | null): void;
  rmsNormBackward(x: FloatArray, dy: FloatArray, rows: number, cols: number, gamma: FloatArray, eps: number,
    dx: FloatArray, dgamma: FloatArray): void;
  reluBackward(x: FloatArray, dy: FloatArray, dx: FloatArray): void;
  /** approximate: the tanh form ("gelu_new"); otherwise the erf form. */
  geluBackward(x: FloatArray, dy: FloatArray, dx: FloatArray, approximate: boolean): void;
  /** For out = silu(gate) · up: dgate and dup. */
  siluMulBackward(gate: FloatArray, up: FloatArray, dy: FloatArray, dgate: FloatArray, dup: FloatArray): void;
  /** dtable[ids[i], :] += dy[i, :] for dy[ids.length, dim]; dtable[vocab, dim]. */
  embeddingBackward(dy: FloatArray, ids: Int32Array, vocab: number, dim: number, dtable: FloatArray): void;

  // ---- loss -------------------------------------------------------------------------------------
  /** In place over logits[rows, vocab]: a row labelled IGNORE_INDEX becomes 0 and has no loss;
   *  any other row r adds logsumexp(row) − row[labels[r]] to the loss and becomes
   *  (softmax(row) − onehot(labels[r])) · scale. Returns the loss sum and the rows counted. */
  softmaxCrossEntropy(logits: FloatArray, rows: number, vocab: number, labels: Int32Array, scale: number): { loss: number; count: number };

  // ---- attention ----------------------------------------------------------------------------
  /** Causal attention over a ragged batch as attentionPrefill (q[t,hq,d], k/v[t,hkv,d]), also
   *  writing lse[t,hq] = log Σ_j exp(scale · q·k_j) over each row's keys, for the backward. */
  attentionTrainForward(q: FloatArray, k: FloatArray, v: FloatArray, t: number, hq: number, hkv: number, d: number,
    seqStarts: Int32Array, scale: number, out: FloatArray, lse: FloatArray): void;
  /** dq[t,hq,d], dk/dv[t,hkv,d] from dout and the forward's out and lse; the softmax is recomputed
   *  block by block, never a [t, t] matrix. */
  attentionTrainBackward(q: FloatArray, k: FloatArray, v: FloatArray, out: FloatArray, lse: FloatArray, dout: FloatArray,
    t: number, hq: number, hkv: number, d: number, seqStarts: Int32Array, scale: number,
    dq: FloatArray, dk: FloatArray, dv: FloatArray): void;

  // ---- optimizer ----------------------------------------------------------------------------
  /** One fused AdamW step over n = master.length parameters: reads grad (f32, or bf16 bits),
   *  updates master, m and v in place and writes paramBf16 (the new master rounded to bf16) when
   *  given. p ← p·(1 − lr·wd); m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²;
   *  p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + eps), with g = grad · gradScale. */
  adamw(grad: FloatArray | Uint16Array, gradDtype: 'f32' | 'bf16', master: FloatArray, m: FloatArray, v: FloatArray,
    paramBf16: Uint16Array | null, hyper: AdamWHyper): void;
  adamwAsync(grad: FloatArray | Uint16Array, gradDtype: 'f32' | 'bf16', master: FloatArray, m: FloatArray, v: FloatArray,
    paramBf16: Uint16Array | null, hyper: AdamWHyper): Promise<void>;
  /** Σ x² (f32, or bf16 bits) accumulated in double: the global gradient norm is its square root. */
  sumSquares(x: FloatArray | Uint16Array, dtype: 'f32' | 'bf16'): number;
}

export const TRAIN_KERNEL_NAMES: (keyof TrainKernels)[] = [
  'packWeightT', 'matmulGradWeight', 'matmulGradWeightAsync', 'biasGrad', 'layerNormBackward', 'rmsNormBackward', 'reluBackward', 'geluBackward',
  'siluMulBackward', 'embeddingBackward', 'softmaxCrossEntropy', 'attentionTrainForward', 'attentionTrainBackward',
  'adamw', 'adamwAsync', 'sumSquares',
];
