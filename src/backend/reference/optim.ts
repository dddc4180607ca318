// Reference optimizer kernels in plain TypeScript: AdamW as PyTorch's torch.optim.AdamW writes it
// (single-tensor), each step's arithmetic in float64 and stored in the state's own arrays; run
// over Float64Array state it is the float64 reference of the formula itself.
import { bf16ToF32, f32ToBf16 } from '../../tensor/dtype.js';
import type { FloatArray, TrainKernels } from '../kernels-train.js';

function gradAt(grad: FloatArray | Uint16Array, dtype: 'f32' | 'bf16', i: number): number {
  return dtype === 'bf16' ? bf16ToF32(grad[i]!) : grad[i]!;
}

export const optimReference: Partial<TrainKernels> = {
  adamw(grad, gradDtype, master, m, v, paramBf16, h) {
    const bc1 = 1 - h.beta1 ** h.step, bc2Sqrt = Math.sqrt(1 - h.beta2 ** h.step);
    for (let i = 0; i < master.length; i++) {
      const g = gradAt(grad, gradDtype, i) * h.gradScale;
      m[i] = h.beta1 * m[i]! + (1 - h.beta1) * g;
      v[i] = h.beta2 * v[i]! + (1 - h.beta2) * g * g;
      const p = master[i]! * (1 - h.lr * h.weightDecay);
      master[i] = p - (h.lr / bc1) * (m[i]! / (Math.sqrt(v[i]!) / bc2Sqrt + h.eps));
      if (paramBf16) paramBf16[i] = f32ToBf16(master[i]!);
    }
  },
  async adamwAsync(grad, gradDtype, master, m, v, paramBf16, h) {
    optimReference.adamw!(grad, gradDtype, master, m, v, paramBf16, h);
  },
  sumSquares(x, dtype) {
    let s = 0;
    for (let i = 0; i < x.length; i++) s += gradAt(x, dtype, i) ** 2;
    return s;
  },
};
