// Qwen2: the Llama layout with biases on the q/k/v projections (none on o_proj), rope_theta
// 1e6 by default, and tied embeddings in the small sizes.

import type { Architecture } from './architecture.js';
import { llamaFamilyNames, parseLlamaFamily } from './llama.js';

export const qwen2: Architecture = {
  modelTypes: ['qwen2'],
  parseConfig: (r) => parseLlamaFamily(r, { modelType: 'qwen2', ropeTheta: 1_000_000, qkvBias: true, tied: false }),
  names: llamaFamilyNames,
};
