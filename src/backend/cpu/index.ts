// The CPU backend: C++ kernels with SIMD for the best instruction set the CPU has, on a
// persistent thread pool.
import type { Kernels } from '../kernels.js';
import { attentionKernels } from './attention.js';
import { gemmKernels } from './gemm.js';
import { rowwiseKernels } from './rowwise.js';
import { trainKernels } from './train.js';
import { completeKernels } from '../complete.js';

export const cpuKernels: Kernels = completeKernels('cpu', { ...gemmKernels, ...rowwiseKernels, ...attentionKernels, ...trainKernels });
