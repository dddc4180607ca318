// Reference gemm ops in plain TypeScript. Placeholder until implemented.
import type { Kernels } from '../kernels.js';

export const gemmReference: Partial<Kernels> = {};
