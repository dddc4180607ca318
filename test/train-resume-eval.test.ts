// A resume must evaluate on the eval data the run evaluated on before: metrics.jsonl mixed the
// eval losses of two sets when --eval-data changed (only --data was compared). Checkpoints record
// the eval data's fingerprint; one saved before they did (no eval_data in state.json) is accepted.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type TrainRunOptions, train } from '../src/train/index.js';
import { cli } from './helpers/cli.js';
import { readJsonl, tmpDir } from './helpers/fixtures.js';
import { TRAIN_FIXTURES as FIX } from './helpers/train.js';

const model = path.join(FIX, 'opt-train');

function writeData(file: string, seed: number): void {
  const lines = Array.from({ length: 4 }, (_, i) => JSON.stringify({ token_ids: Array.from({ length: 6 + i }, (_, t) => (seed + i * 37 + t * 11) % 512) }));
  fs.writeFileSync(file, lines.join('\n') + '\n');
}

async function run(o: Partial<TrainRunOptions> & { out: string; data: string }): Promise<void> {
  for await (const _ of train({ model, maxSteps: 2, batchSize: 2, seqLen: 32, lrSchedule: 'constant', threads: 1, ...o })) void _;
}

describe('resuming with other eval data', () => {
  const dir = tmpDir('train-resume-eval');
  const [data, evalA, evalB, copyA] = ['data', 'eval-a', 'eval-b', 'eval-a-copy'].map((n) => path.join(dir, `${n}.jsonl`)) as [string, string, string, string];
  writeData(data, 1);
  writeData(evalA, 2);
  writeData(evalB, 3);
  fs.copyFileSync(evalA, copyA);

  it('is refused when the eval data changed, was added or was removed, naming the option and the files', async () => {
    const out = path.join(dir, 'with-eval');
    await run({ data, out, evalData: evalA });
    await expect(run({ data, out, evalData: evalB, resume: true })).rejects.toThrow(
      /checkpoint-2: cannot resume: the run being resumed evaluated on evalData .*eval-a\.jsonl, .*eval-b\.jsonl differs from it .*; resume with the same evalData/);
    await expect(run({ data, out, resume: true })).rejects.toThrow(/cannot resume: the run being resumed evaluated on evalData .*eval-a\.jsonl, this one has no evalData/);
    const none = path.join(dir, 'without-eval');
    await run({ data, out: none });
    await expect(run({ data, out: none, evalData: evalA, resume: true })).rejects.toThrow(/cannot resume: the run being resumed had no evalData, this one has evalData .*eval-a\.jsonl/);
    // The command line names the flag.
    const r = cli(['train', '--model', model, '--data', data, '--out', out, '--eval-data', evalB, '--max-steps', '2', '--batch-size', '2', '--seq-len', '32',
      '--lr-schedule', 'constant', '--threads', '1', '--resume']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/evaluated on --eval-data .*eval-a\.jsonl, .*eval-b\.jsonl differs from it .*resume with the same --eval-data/);
  });

  it('goes on with the same eval data (also from another file), and from a checkpoint that recorded none', async () => {
    const out = path.join(dir, 'same');
    await run({ data, out, evalData: evalA });
    await run({ data, out, evalData: copyA, resume: true, maxSteps: 4 });
    expect(readJsonl<{ step: number; eval_loss?: number }>(path.join(out, 'metrics.jsonl')).map((m) => [m.step, m.eval_loss !== undefined])).toEqual([[1, false], [2, true], [3, false], [4, true]]);
    // A checkpoint saved before the eval data was recorded: accepted whatever the eval data, as before.
    const state = path.join(out, 'checkpoint-4', 'training-state', 'state.json');
    const j = JSON.parse(fs.readFileSync(state, 'utf8')) as { options: Record<string, unknown> };
    expect(j.options.eval_data).toMatchObject({ file: copyA });
    delete j.options.eval_data;
    fs.writeFileSync(state, JSON.stringify(j));
    await run({ data, out, evalData: evalB, resume: true, maxSteps: 5 });
    expect(readJsonl<{ step: number }>(path.join(out, 'metrics.jsonl')).map((m) => m.step)).toEqual([1, 2, 3, 4, 5]);
  });
});
