import type { Kernels } from './kernels.js';
import { TRAIN_KERNEL_NAMES } from './kernels-train.js';

const KERNEL_NAMES: (keyof Kernels)[] = [
  'packedByteLength', 'packedRowBlock', 'packedBuffer', 'packWeight', 'matmul', 'matmulAsync', 'gatherRows', 'quantize', 'dequantize', 'embedding', 'layerNorm', 'rmsNorm',
  'relu', 'gelu', 'siluMul', 'add', 'softmax', 'logSoftmax', 'rope', 'attentionPrefill', 'attentionPrefillAsync',
  'attentionDecode', 'attentionDecodeAsync', 'attentionCached', 'cacheWrite', ...TRAIN_KERNEL_NAMES,
];

/** Fills the kernels a backend lacks with ones that throw, so a missing kernel is a clear error. */
export function completeKernels(name: string, parts: Partial<Kernels>): Kernels {
  const out: Record<string, unknown> = { name };
  for (const key of KERNEL_NAMES) {
    out[key] = parts[key] ?? (() => {
      throw new Error(`backend '${name}' does not implement ${key}`);
    });
  }
  return out as unknown as Kernels;
}
