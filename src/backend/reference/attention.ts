// Reference attention ops in plain TypeScript. Placeholder until implemented.
import type { Kernels } from '../kernels.js';

export const attentionReference: Partial<Kernels> = {};
