// Mistral: the Llama layout with grouped-query attention and rope_theta 10000 by default.
// Sliding-window attention only matters past `sliding_window` positions (4096 for Mistral-7B
// v0.1, and when the key is absent; null in v0.2 on: none); parseLlamaFamily limits sequences to
// the window.

import type { Architecture } from './architecture.js';
import { llamaFamilyNames, parseLlamaFamily, slidingWindow } from './llama.js';

export const mistral: Architecture = {
  modelTypes: ['mistral'],
  parseConfig: (r) => parseLlamaFamily(r, { modelType: 'mistral', ropeTheta: 10000, kvHeads: 8, tied: false, window: slidingWindow }),
  names: llamaFamilyNames,
};
