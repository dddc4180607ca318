// The golden training runs' batch (test/fixtures/train/batch.jsonl) as the trainer takes it.
import path from 'node:path';
import { SafetensorsFile } from '../../src/formats/safetensors.js';
import { toFloat32 } from '../../src/tensor/dtype.js';
import type { TrainSequence } from '../../src/train/index.js';
import { fixturesDir, readJsonl } from './fixtures.js';

export const TRAIN_FIXTURES = path.join(fixturesDir, 'train');

export function fixtureBatch(): TrainSequence[] {
  return readJsonl<{ token_ids: number[]; labels?: number[] }>(path.join(TRAIN_FIXTURES, 'batch.jsonl'))
    .map((l) => ({ tokenIds: l.token_ids, labels: l.labels }));
}

/** Every tensor of a safetensors file, widened to f32. */
export function readAll(file: string): Map<string, Float32Array> {
  const f = SafetensorsFile.open(file);
  try {
    return new Map([...f.tensors.keys()].map((n) => {
      const t = f.read(n);
      return [n, toFloat32(t.dtype as 'f32', t.data as Float32Array, true)];
    }));
  } finally {
    f.close();
  }
}
