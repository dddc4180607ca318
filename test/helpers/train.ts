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

/** ‖(a − base) − (b − base)‖ / ‖b − base‖, the relative error of an update, without element
 *  `skip` (none by default) in either norm. */
export function updateErr(a: Float32Array, b: Float32Array, base: Float32Array, skip = -1): number {
  let d = 0, n = 0;
  for (let i = 0; i < b.length; i++) {
    if (i === skip) continue;
    d += (a[i]! - b[i]!) ** 2;
    n += (b[i]! - base[i]!) ** 2;
  }
  return Math.sqrt(d / Math.max(n, 1e-30));
}
