// A training state built from a model directory: the stored weights widened to fp32 as the master
// weights, and seeded moments, as a trainer would hold them after `step` steps.
import { TensorStore } from '../../src/formats/safetensors.js';
import { toFloat32 } from '../../src/tensor/dtype.js';
import type { ParamState, TrainingState } from '../../src/train/training-state.js';
import { rng } from './random.js';

export function stateFromModel(modelDir: string, step: number): TrainingState {
  const store = TensorStore.open(modelDir);
  const r = rng(1000 + step);
  const tensors = new Map<string, ParamState>();
  try {
    for (const name of store.names()) {
      const t = store.read(name);
      const master = toFloat32(t.dtype as 'f32' | 'f16' | 'bf16', t.data as Float32Array | Uint16Array);
      const m = Float32Array.from(master, () => r() - 0.5);
      const v = Float32Array.from(master, () => r() * 1e-3);
      tensors.set(name, { shape: t.shape, master, m, v });
    }
  } finally {
    store.close();
  }
  return {
    step,
    dataPosition: { epoch: 1, index: step, fingerprint: 'f'.repeat(64) },
    rng: { seed: 7, draws: step * 3 },
    options: { lr: 1e-3, batchSize: 2, seqLen: 64, precision: 'fp32' },
    tensors,
  };
}
