// Qwen2: the Llama layout with biases on the q/k/v projections (none on o_proj) and tied
// embeddings in the small sizes. Defaults as transformers' Qwen2Config: rope_theta 10000 (the
// released checkpoints write 1e6; a config without it meant 1e6 here, and wrong tokens), and no
// sliding window unless use_sliding_window, and then only in layers from max_window_layers (28) on.

import type { Architecture } from './architecture.js';
import type { ConfigReader } from './config.js';
import { llamaFamilyNames, parseLlamaFamily, slidingWindow } from './llama.js';

export const qwen2: Architecture = {
  modelTypes: ['qwen2'],
  parseConfig: (r) => parseLlamaFamily(r, { modelType: 'qwen2', ropeTheta: 10000, kvHeads: 32, qkvBias: true, tied: false, window: qwen2Window }),
  names: llamaFamilyNames,
};

/** A window only where some layer slides: use_sliding_window, and a layer at max_window_layers or above. */
function qwen2Window(r: ConfigReader, layers: number): number | null {
  if (!r.bool('use_sliding_window', false) || r.int('max_window_layers', 28) >= layers) return null;
  return slidingWindow(r);
}
