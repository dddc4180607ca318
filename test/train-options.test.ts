// train()'s option checks (src/train/run-options.ts) name the option as the caller wrote it: the
// API's name to a library caller, the flag in `tierlm train` (docs/cli.md: every failure names the
// flag). Options that only an offloaded run or evaluation uses are refused without it, in both,
// rather than ignored (--sub-group-size, --disk and --eval-every were accepted and did nothing).
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resolveOptions, type TrainRunOptions } from '../src/train/run-options.js';
import { cli } from './helpers/cli.js';
import { tmpDir } from './helpers/fixtures.js';
import { TRAIN_FIXTURES as FIX } from './helpers/train.js';

const MiB = 2 ** 20;
const paths = { model: 'm', data: 'd.jsonl', out: 'o' };
const offload = { ram: 40 * MiB, diskDir: 'disk' };
const refusal = (o: Partial<TrainRunOptions>) => {
  try {
    resolveOptions({ ...paths, ...o });
  } catch (e) {
    return (e as Error).message;
  }
  return 'accepted';
};

describe('train() options', () => {
  it('name the API option in a library call', () => {
    expect(refusal({ ...offload, ramPercent: [1, 2, 3] })).toMatch(/^ramPercent must be six percents in \[0, 100\] .*, got \[1,2,3\]$/);
    expect(refusal({ ...offload, tileSize: 100 })).toBe('tileSize must be an integer >= 4096, got 100');
    expect(refusal({ subGroupSize: 1000 })).toBe('subGroupSize needs ram and diskDir (sub-groups are how an offloaded run streams the optimizer states through RAM)');
    expect(refusal({ disk: 1 << 30 })).toBe('disk needs ram and diskDir (it caps the disk tier of an offloaded run)');
    expect(refusal({ evalEvery: 5 })).toBe('evalEvery needs evalData (the data it evaluates)');
    expect(refusal({ evalData: '' })).toBe('evalData must be a path (a non-empty string)');
  });

  it('accept the same options where what they need is given (and evalEvery 0, the default, alone)', () => {
    expect(refusal({ ...offload, subGroupSize: 1000, disk: 1 << 30, tileSize: 4096, ramPercent: [0, 0, 0, 0, 0, 0] })).toBe('accepted');
    expect(refusal({ evalEvery: 5, evalData: 'e.jsonl' })).toBe('accepted');
    expect(refusal({ evalEvery: 0 })).toBe('accepted');
  });
});

describe('tierlm train', () => {
  it('names the flag in the same refusals', () => {
    const dir = tmpDir('train-options');
    const run = (flags: string[]) => cli(['train', '--model', path.join(FIX, 'opt-train'), '--data', path.join(FIX, 'batch.jsonl'), '--out', path.join(dir, 'out'),
      '--max-steps', '1', ...flags]);
    const ram = ['--ram', '40MiB', '--disk-dir', dir];
    const cases: [string[], string][] = [
      [[...ram, '--ram-percent', '1', '2', '3'], 'tierlm: --ram-percent must be six percents in [0, 100] (parameters, gradients, master, momentum, variance, activation checkpoints), got [1,2,3]'],
      [[...ram, '--tile-size', '100B'], 'tierlm: --tile-size must be an integer >= 4096, got 100'],
      [['--sub-group-size', '1000'], 'tierlm: --sub-group-size needs --ram and --disk-dir (sub-groups are how an offloaded run streams the optimizer states through RAM)'],
      [['--disk', '1GiB'], 'tierlm: --disk needs --ram and --disk-dir (it caps the disk tier of an offloaded run)'],
      [['--eval-every', '5'], 'tierlm: --eval-every needs --eval-data (the data it evaluates)'],
    ];
    for (const [flags, message] of cases) {
      const r = run(flags);
      expect(r.code, flags.join(' ')).toBe(1);
      expect(r.stderr).toBe(`${message}\n`);
    }
  });
});
