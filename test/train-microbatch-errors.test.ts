// A step of several micro-batches names the micro-batch of a bad sequence: a bad token in the
// second was reported as "sequence 0", which the first one also has.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { openTrainer } from '../src/train/index.js';
import { TRAIN_FIXTURES } from './helpers/train.js';

const OPT = path.join(TRAIN_FIXTURES, 'opt-train');

describe('errors in a step of several micro-batches', () => {
  it('name the micro-batch and the sequence; a step of one micro-batch names the sequence alone', async () => {
    const trainer = await openTrainer(OPT, { threads: 1 });
    try {
      const good = [{ tokenIds: [5, 6, 7] }];
      await expect(trainer.step([good, [{ tokenIds: [1, 9999] }]])).rejects.toThrow(/^micro-batch 1, sequence 0: token 1 = 9999 is outside the vocabulary of 512$/);
      await expect(trainer.step([good, good, [{ tokenIds: [1, 2] }, { tokenIds: [1, 2, 3], labels: [1, 2, 600] }]]))
        .rejects.toThrow(/^micro-batch 2, sequence 1: label 2 = 600 is neither -100 nor a token id below 512$/);
      await expect(trainer.step([good, [{ tokenIds: [] }]])).rejects.toThrow(/^micro-batch 1, sequence 0 is empty$/);
      await expect(trainer.step([[{ tokenIds: Array(129).fill(5) }], good])).rejects.toThrow(/^micro-batch 0, sequence 0 has 129 tokens, more than the model's 128 positions/);
      await expect(trainer.step([good, []])).rejects.toThrow(/^micro-batch 1 is empty: a micro-batch needs at least one sequence$/);
      await expect(trainer.step([[{ tokenIds: [1, 9999] }]])).rejects.toThrow(/^sequence 0: token 1 = 9999/);
      await expect(trainer.step([{ tokenIds: [1, 9999] }])).rejects.toThrow(/^sequence 0: token 1 = 9999/);
      expect(trainer.stepsDone).toBe(0);
    } finally {
      await trainer.close();
    }
  });
});
