// The reference backend: every op written as plainly as possible in TypeScript, with float64
// accumulation. It is the yardstick the native kernels are tested against, not a fast path.
import type { Kernels } from '../kernels.js';
import { attentionGradReference, attentionReference } from './attention.js';
import { gemmGradReference, gemmReference } from './gemm.js';
import { optimReference } from './optim.js';
import { rowwiseGradReference, rowwiseReference } from './rowwise.js';
import { completeKernels } from '../complete.js';

export const referenceKernels: Kernels = completeKernels('reference', {
  ...gemmReference, ...rowwiseReference, ...attentionReference,
  ...gemmGradReference, ...rowwiseGradReference, ...attentionGradReference, ...optimReference,
});
