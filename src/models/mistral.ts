// Mistral: the Llama layout with grouped-query attention and rope_theta 10000 by default.
// Sliding-window attention only matters past `sliding_window` positions (4096 for Mistral-7B);
// parseLlamaFamily limits requests to the window.

import type { Architecture } from './architecture.js';
import { llamaFamilyNames, parseLlamaFamily } from './llama.js';

export const mistral: Architecture = {
  modelTypes: ['mistral'],
  parseConfig: (r) => parseLlamaFamily(r, { modelType: 'mistral', ropeTheta: 10000, tied: false }),
  names: llamaFamilyNames,
};
