// `mpirun -np 2 tierlm train --ram --disk-dir`: each rank keeps its slices of every model state on
// its own RAM and disk (src/train/partition/offload.ts). The run is the run with the slices in RAM,
// bit for bit (same losses, norms, weights and saved slices: the same values gathered, the same
// additions, the same norm, the same AdamW kernel), and so the 1-rank run within the ranks'
// tolerance (test/train-ranks.test.ts); a resume continues it exactly; each rank's peak RSS stays
// within its --ram plus the stated overhead on a model whose state is over 4× the two limits.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { initModel } from '../src/models/init.js';
import { RUNTIME_OVERHEAD_BYTES } from '../src/policy/memory.js';
import { cli } from './helpers/cli.js';
import { readJsonl, repoRoot, tmpDir } from './helpers/fixtures.js';
import { type Line, ci, dataFile, expectSameRun, haveMpi, mpirun } from './helpers/ranks.js';
import { rng } from './helpers/random.js';
import { TRAIN_FIXTURES } from './helpers/train.js';

const MiB = 2 ** 20;
const ALL_ON_DISK = ['--ram-percent', '0', '0', '0', '0', '0', '100'];
const SPLIT = ['--ram-percent', '50', '40', '50', '30', '70', '100'];

const metrics = (out: string) => readJsonl<Line>(path.join(out, 'metrics.jsonl')).map(({ step, loss, grad_norm, tokens }) => ({ step, loss, grad_norm, tokens }));
const file = (out: string, f: string) => fs.readFileSync(path.join(out, f));

/** Same metrics, model file and saved slices, byte for byte. */
function expectIdentical(out: string, ref: string): void {
  expect(metrics(out)).toEqual(metrics(ref));
  expect(file(out, 'model.safetensors').equals(file(ref, 'model.safetensors'))).toBe(true);
  for (let r = 0; r < 2; r++) {
    const f = `latest/training-state/optimizer-rank-${r}-of-2.safetensors`;
    expect(file(out, f).equals(file(ref, f)), f).toBe(true);
  }
}

describe.skipIf(!haveMpi && !ci)('tierlm train --ram under mpirun', () => {
  it.each([['opt-train', 'fp32', ALL_ON_DISK], ['llama-train', 'bf16', SPLIT]])('%s (%s): 2 offloaded ranks give the 2 ranks in RAM bit for bit', (name, precision, shares) => {
    const dir = tmpDir('ranks-offload');
    const model = path.join(TRAIN_FIXTURES, name);
    const data = dataFile(dir);
    // As test/train-ranks.test.ts: accumulation over a full micro-batch and the epoch's short last
    // one, of which rank 1 has no sequence.
    const common = ['--model', model, '--data', data, '--epochs', '2', '--grad-accum', '2', '--precision', precision, '--lr', '1e-3',
      '--weight-decay', '0.01', '--max-grad-norm', '1', '--seed', '7', '--threads', '1'];
    const two = [...common, '--batch-size', '3'];
    const inRam = path.join(dir, 'ram');
    expect(mpirun(2, [...two, '--out', inRam]).code).toBe(0);
    const disk = path.join(dir, 'disk');
    fs.mkdirSync(disk);
    const off = path.join(dir, 'off');
    const r = mpirun(2, [...two, '--out', off, '--ram', '64MiB', '--disk-dir', disk, ...shares]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/model states: .* in RAM, .* on disk/);
    // (it said "no saved hardware profile" whether or not one was saved)
    expect(r.stderr).toMatch(/no predicted step time under ranks \(`tierlm plan --train --ranks N` predicts one rank's\)/);
    expectIdentical(off, inRam);
    // Rank 0's transfers of each step, as one process reports its own.
    for (const l of readJsonl<{ disk_read_bytes?: number; disk_written_bytes?: number }>(path.join(off, 'metrics.jsonl'))) {
      expect(l.disk_read_bytes).toBeGreaterThan(0);
      expect(l.disk_written_bytes).toBeGreaterThan(0);
    }
    // Each rank's state files are gone with its run.
    expect(fs.readdirSync(disk)).toEqual([]);
    if (precision !== 'fp32') return;
    const one = path.join(dir, 'one');
    const r1 = cli(['train', ...common, '--batch-size', '6', '--out', one]);
    expect(r1.code, r1.stderr).toBe(0);
    expectSameRun(off, one, model, '2 offloaded ranks');

    // A resume with the same 2 ranks (its slices read back onto disk) continues exactly.
    const e = two.indexOf('--epochs');
    const steps = [...two.slice(0, e), ...two.slice(e + 2), '--ram', '64MiB', '--disk-dir', disk, ...shares];
    const whole = path.join(dir, 'whole'), cut = path.join(dir, 'cut');
    expect(mpirun(2, [...steps, '--out', whole, '--max-steps', '3']).code).toBe(0);
    expect(mpirun(2, [...steps, '--out', cut, '--max-steps', '1']).code).toBe(0);
    const resumed = mpirun(2, [...steps, '--out', cut, '--max-steps', '3', '--resume']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expectIdentical(cut, whole);
  });

  // 64 small layers, 12.9M parameters, 206 MB of fp32 state: over 4× one rank's --ram 40MiB, its
  // share over twice it. Each rank's peak RSS (the compiled CLI's, from outside: VmHWM at exit)
  // within its limit plus the overhead.
  it('each rank stays within its --ram plus the stated overhead', () => {
    const m = tmpDir('ranks-offload-big');
    initModel({ config: 'opt-test', out: m, layers: 64, dtype: 'f32', seed: 1, overrides: { hidden_size: 128, ffn_dim: 512 } });
    const data = path.join(tmpDir('ranks-offload-data'), 'data.jsonl');
    const r = rng(5);
    fs.writeFileSync(data, Array.from({ length: 8 }, () => JSON.stringify({ token_ids: Array.from({ length: 16 }, () => Math.floor(r() * 1000)) })).join('\n') + '\n');
    const ram = 40 * MiB;
    const run = mpirun(2, ['--model', m, '--data', data, '--out', tmpDir('ranks-offload-big-out'), '--max-steps', '2', '--batch-size', '1',
      '--seq-len', '16', '--threads', '1', '--lr', '1e-3', '--ram', '40MiB', '--disk-dir', tmpDir('ranks-offload-big-disk')],
    ['--import', pathToFileURL(path.join(repoRoot, 'test/helpers/report-peak.mjs')).href], true);
    expect(run.code, run.stderr).toBe(0);
    const params = Number(/training ([\d.]+)M parameters/.exec(run.stderr)![1]) * 1e6;
    expect(16 * params).toBeGreaterThan(4 * ram);
    expect(16 * params / 2).toBeGreaterThan(2 * ram);
    const peaks = [...run.stderr.matchAll(/test-peak-rss-bytes (\d+)/g)].map((x) => Number(x[1]));
    expect(peaks.length).toBe(2);
    for (const p of peaks) expect(p).toBeLessThanOrEqual(ram + RUNTIME_OVERHEAD_BYTES);
  });
});
