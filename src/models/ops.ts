// The config-chosen pieces a transformer layer is made of, each forward beside its backward:
// the norm (LayerNorm with bias, or RMSNorm) and the MLP's activation (ReLU, GELU erf or tanh,
// SiLU-gated). The generation forward (transformer.ts) and the training layer
// (src/train/layer.ts) both call these, so a ModelConfig switch means the same op in both and
// cannot drift between them.

import type { Backend, LinearEpilogue } from '../backend/index.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';
import type { Norm } from './weights.js';

type F32 = Tensor<'f32'>;

/** A norm's parameter gradients (accumulated): w [hidden], b [hidden] (LayerNorm only). */
export interface NormGrad {
  w: F32;
  b: F32 | null;
}

/** norm(x [rows, hidden]) into out. */
export function normForward(b: Backend, c: ModelConfig, x: F32, n: Norm, out: F32): F32 {
  return c.norm === 'rmsnorm' ? b.rmsNorm(x, n.w, c.normEps, out) : b.layerNorm(x, n.w, n.b, c.normEps, out);
}

/** dx of normForward from its input x and dy (into out); the parameter gradients accumulate into g. */
export function normBackward(b: Backend, c: ModelConfig, x: F32, dy: F32, n: Norm, g: NormGrad, out: F32): F32 {
  return c.norm === 'rmsnorm'
    ? b.train.rmsNormBackward(x, dy, n.w, c.normEps, g.w, out)
    : b.train.layerNormBackward(x, dy, n.w, c.normEps, g.w, g.b, out);
}

/** The MLP's activation of up [rows, ffn] (gated: silu(gate) · up) into out (which may be up). */
export function activationForward(b: Backend, c: ModelConfig, up: F32, gate: F32 | null, out: F32): F32 {
  if (gate) {
    if (c.activation !== 'silu') throw new Error(`gated MLP with ${c.activation} is not supported`);
    return b.siluMul(gate, up, out);
  }
  switch (c.activation) {
    case 'relu':
      return b.relu(up, out);
    case 'gelu':
      return b.gelu(up, false, out);
    case 'gelu_new':
      return b.gelu(up, true, out);
    default:
      throw new Error(`activation ${c.activation} without a gate is not supported`);
  }
}

/** The activation of an ungated MLP as a matmul epilogue (LinearEpilogue), which applies it to the
 *  up projection as that is computed, with activationForward's values; undefined for a gated MLP. */
export function fusedActivation(c: ModelConfig, gated: boolean): LinearEpilogue['activation'] {
  if (gated) return undefined;
  const fused: Partial<Record<ModelConfig['activation'], LinearEpilogue['activation']>> = { relu: 'relu', gelu: 'gelu', gelu_new: 'gelu_tanh' };
  return fused[c.activation];
}

/** Gradients of activationForward's inputs from its output's dy: dUp (and dGate when gated),
 *  from the saved pre-activation up and gate (neither may have been overwritten). */
export function activationBackward(b: Backend, c: ModelConfig, up: F32, gate: F32 | null, dy: F32, dUp: F32, dGate: F32 | null): void {
  if (gate) {
    b.train.siluMulBackward(gate, up, dy, dGate!, dUp);
    return;
  }
  switch (c.activation) {
    case 'relu':
      b.train.reluBackward(up, dy, dUp);
      return;
    case 'gelu':
    case 'gelu_new':
      b.train.geluBackward(up, dy, c.activation === 'gelu_new', dUp);
      return;
    default:
      throw new Error(`activation ${c.activation} without a gate is not supported`);
  }
}
