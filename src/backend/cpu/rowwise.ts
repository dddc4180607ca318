// Native rowwise kernels (native/kernels, native/napi/rowwise.cpp). Placeholder until implemented.
import type { Kernels } from '../kernels.js';

export const rowwiseKernels: Partial<Kernels> = {};
