// The training state's layout: each parameter's model states as separate typed buffers (ZeRO's
// model states), so that a later tier can place, move or save each one on its own.
//
// Bytes per parameter:
//   fp32:       param = master (4) + grad (4) + m (4) + v (4)                    = 16
//   bf16 mixed: param (2) + grad (4 f32, or 2 bf16) + master (4) + m (4) + v (4) = 18, or 16
// Compute reads `param`; the optimizer reads the gradient and master, m, v, and writes the last
// three plus param (the new master rounded to bf16) in one pass (AdamW in ./adamw.ts).

import { fromFloat32 } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';

/** fp32: parameters, gradients and Adam state in fp32. bf16: bf16 parameters for compute, fp32
 *  master weights, momentum and variance (mixed precision). */
export type Precision = 'fp32' | 'bf16';
export type GradDType = 'f32' | 'bf16';

export interface ParamState {
  readonly name: string;
  /** The parameter's shape, e.g. [out, in] for a linear weight (row-major). */
  readonly shape: readonly number[];
  /** What compute reads: in fp32 the master itself, in bf16 its bf16 copy. */
  readonly param: Tensor<'f32'> | Tensor<'bf16'>;
  /** The gradient, summed over a step's micro-batches (zeroGrad clears it). */
  readonly grad: Tensor<'f32'> | Tensor<'bf16'>;
  /** fp32 master weights, Adam's momentum and variance. */
  readonly master: Tensor<'f32'>;
  readonly m: Tensor<'f32'>;
  readonly v: Tensor<'f32'>;
}

/** The states of one parameter, initialised from `init` (its values; zeros when omitted), with
 *  zero gradient and moments. */
export function allocParamState(name: string, shape: readonly number[], precision: Precision, init?: Float32Array,
  gradDtype: GradDType = 'f32'): ParamState {
  const master = Tensor.zeros('f32', shape);
  if (init) {
    if (init.length !== master.size) throw new RangeError(`allocParamState(${name}): init has ${init.length} values, shape needs ${master.size}`);
    master.data.set(init);
  }
  const param = precision === 'fp32' ? master : new Tensor('bf16', shape, fromFloat32('bf16', master.data));
  return { name, shape, param, grad: gradDtype === 'f32' ? Tensor.zeros('f32', shape) : Tensor.zeros('bf16', shape), master, m: Tensor.zeros('f32', shape), v: Tensor.zeros('f32', shape) };
}

/** Bytes the model states of n parameters take in this layout. */
export function stateBytes(n: number, precision: Precision, gradDtype: GradDType = 'f32'): number {
  const param = precision === 'fp32' ? 0 : 2;  // fp32 compute reads the master itself
  return n * (param + (gradDtype === 'f32' ? 4 : 2) + 4 + 4 + 4);
}
