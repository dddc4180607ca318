// AdamW over a list of parameters' states (./state.ts), with PyTorch's semantics
// (torch.optim.AdamW: decoupled weight decay on every parameter, bias correction) and global-norm
// gradient clipping as torch.nn.utils.clip_grad_norm_: the clipping coefficient is applied inside
// the fused update (Kernels.adamw's gradScale), so clipping costs one read of the gradients (the
// norm) and no write.

import type { Backend } from '../backend/backend.js';
import type { AdamWHyper } from '../backend/kernels-train.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ParamState } from './state.js';

export interface AdamWOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  /** Decoupled weight decay, applied to every parameter (PyTorch's default for AdamW: 0.01). */
  weightDecay?: number;
  /** Clip the global gradient norm to this; 0 = no clipping. */
  maxGradNorm?: number;
  /** The sum of squares over every rank's parameters, from this rank's (when the parameters are
   *  split over data-parallel ranks, each holding a slice); default: this rank's alone. */
  sumSquares?: (local: number) => number;
}

export interface StepResult {
  /** The global gradient norm before clipping. */
  gradNorm: number;
  /** The factor the gradients were scaled by (1 when not clipped). */
  clipCoef: number;
}

export class AdamW {
  /** Steps taken so far (the next step's bias correction uses step + 1). */
  step = 0;
  private readonly opts: Required<Omit<AdamWOptions, 'sumSquares'>>;
  private readonly sumSquares: (local: number) => number;

  constructor(private readonly backend: Backend, readonly params: readonly ParamState[], opts: AdamWOptions) {
    const { sumSquares, ...rest } = opts;
    this.opts = { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01, maxGradNorm: 0, ...rest };
    this.sumSquares = sumSquares ?? ((s) => s);
    const { lr, betas, eps, weightDecay, maxGradNorm } = this.opts;
    for (const [k, v] of Object.entries({ lr, beta1: betas[0], beta2: betas[1], eps, weightDecay, maxGradNorm })) {
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new RangeError(`AdamW: ${k} must be a finite number >= 0, got ${v}`);
    }
  }

  /** √(Σ over every parameter (of every rank) of Σ grad²), accumulated in double. */
  gradNorm(): number {
    let s = 0;
    for (const p of this.params) s += this.backend.train.sumSquares(p.grad);
    return Math.sqrt(this.sumSquares(s));
  }

  /** One optimizer step at learning rate `lr` (default: the constructor's). */
  update(lr = this.opts.lr): StepResult {
    const { hyper, ...result } = this.begin(lr, this.gradNorm());
    for (const p of this.params) {
      // bf16 precision: the bf16 parameter is rewritten from the new master in the same pass.
      const copy = p.param.dtype === 'bf16' ? (p.param as Tensor<'bf16'>) : null;
      this.backend.train.adamw(p.grad, p.master, p.m, p.v, copy, hyper);
    }
    return result;
  }

  /** Counts a step and gives its fused-update parameters from the global gradient norm: for
   *  update() above, and for an optimizer that streams the states (src/train/offload) and applies
   *  Kernels.adamw to them piece by piece with the same parameters. */
  begin(lr: number, gradNorm: number): StepResult & { hyper: AdamWHyper } {
    const max = this.opts.maxGradNorm;
    // PyTorch: clip_coef = max_norm / (total_norm + 1e-6), applied when below 1.
    const clipCoef = max > 0 ? Math.min(1, max / (gradNorm + 1e-6)) : 1;
    this.step++;
    const hyper: AdamWHyper = {
      lr, beta1: this.opts.betas[0], beta2: this.opts.betas[1], eps: this.opts.eps, weightDecay: this.opts.weightDecay,
      gradScale: clipCoef, step: this.step,
    };
    return { gradNorm, clipCoef, hyper };
  }

  /** Clears every gradient (before a step's first micro-batch). */
  zeroGrad(): void {
    for (const p of this.params) p.grad.data.fill(0);
  }
}
