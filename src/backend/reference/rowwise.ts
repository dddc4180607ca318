// Reference rowwise ops in plain TypeScript. Placeholder until implemented.
import type { Kernels } from '../kernels.js';

export const rowwiseReference: Partial<Kernels> = {};
