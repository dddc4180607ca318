// Native gemm kernels (native/kernels, native/napi/gemm.cpp). Placeholder until implemented.
import type { Kernels } from '../kernels.js';

export const gemmKernels: Partial<Kernels> = {};
