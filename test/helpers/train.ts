// The golden training runs' batch (test/fixtures/train/batch.jsonl) as the trainer takes it.
import path from 'node:path';
import type { TrainSequence } from '../../src/train/index.js';
import { fixturesDir, readJsonl } from './fixtures.js';

export const TRAIN_FIXTURES = path.join(fixturesDir, 'train');

export function fixtureBatch(): TrainSequence[] {
  return readJsonl<{ token_ids: number[]; labels?: number[] }>(path.join(TRAIN_FIXTURES, 'batch.jsonl'))
    .map((l) => ({ tokenIds: l.token_ids, labels: l.labels }));
}
