// Native attention kernels (native/kernels, native/napi/attention.cpp). Placeholder until implemented.
import type { Kernels } from '../kernels.js';

export const attentionKernels: Partial<Kernels> = {};
