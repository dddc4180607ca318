// `mpirun -np N tierlm train`: the model states split over N data-parallel ranks (ZeRO-3,
// src/train/partition) give the same run as one process with N times the batch size: the same
// per-step losses (fp32: within 1e-6 relative) and the same trained weights (each tensor's update
// within 5e-5 relative but for one element, expectUpdateClose), with accumulation over micro-batches and an epoch's short last batch, of
// which some ranks get no sequence. A resume under 2 ranks equals the run never interrupted; a
// resume with another number of ranks is refused; an error on one rank ends the job.
//
// Needs OpenMPI (mpirun, and the MPI addon `npm install` builds when libopenmpi-dev is present).
// Without it these tests are skipped, except under CI=true, where a missing MPI is a failure.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { readJsonl, repoRoot, tmpDir } from './helpers/fixtures.js';
import { type Line, ci, dataFile, expectSameRun, haveMpi, mpirun } from './helpers/ranks.js';
import { TRAIN_FIXTURES } from './helpers/train.js';

describe.skipIf(!haveMpi && !ci)('reduce-scatter', () => {
  // Open MPI's reduce_scatter_block reduced the whole buffer to rank 0 before scattering it: rank 0
  // grew by ~2x the buffer (+201 MB for 96 MiB at 3 ranks; a training run's rank 0 went 103 MiB
  // past --ram + 128 MiB). In pieces, each rank's temporaries stay a few MiB.
  const run = (env: Record<string, string>) => {
    const r = spawnSync('mpirun', ['--allow-run-as-root', '--oversubscribe', '-np', '3', process.execPath, '--import', 'tsx',
      path.join(repoRoot, 'test/helpers/reduce-scatter-ranks.ts')], {
      cwd: repoRoot, encoding: 'utf8', timeout: 120_000, env: { ...process.env, OMPI_MCA_mpi_yield_when_idle: '1', ...env },
    });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { rank: number; bad: string[]; grewBytes: number });
  };

  it('sums every element exactly, in pieces, and no rank holds the whole buffer', () => {
    // pieces of 4 KiB: many pieces, and blocks that end inside one
    for (const r of run({ TIERLM_MPI_PIECE_BYTES: '4096', RS_MB: '3' })) expect(r.bad, `rank ${r.rank}`).toEqual([]);
    const ranks = run({ RS_MB: '96' });
    expect(ranks.map((r) => r.rank).sort()).toEqual([0, 1, 2]);
    for (const r of ranks) {
      expect(r.bad, `rank ${r.rank}`).toEqual([]);
      expect(r.grewBytes, `rank ${r.rank}`).toBeLessThan(32 * 2 ** 20);
    }
  });
});

describe.skipIf(!haveMpi && !ci)('tierlm train under mpirun', () => {
  it('MPI is installed (CI=true requires it)', () => {
    expect(haveMpi, 'mpirun or build/Release/tierlm_mpi.node missing: install openmpi-bin and libopenmpi-dev, then npm install').toBe(true);
  });

  it.each([['opt-train', 'fp32'], ['llama-train', 'fp32']])('%s (%s): 2 and 3 ranks give the 1-rank run with the global batch', (name, precision) => {
    const dir = tmpDir('train-ranks');
    const model = path.join(TRAIN_FIXTURES, name);
    const data = dataFile(dir);
    // Global batch 6 of 7 sequences: each step accumulates a full micro-batch and the epoch's last
    // one (1 sequence: ranks 1 and 2 have none of it). Sums over ranks round differently from one
    // process's; expectSameRun allows for the one element whose update Adam magnifies that in.
    const common = ['--model', model, '--data', data, '--epochs', '2', '--grad-accum', '2', '--precision', precision, '--lr', '1e-3',
      '--weight-decay', '0.01', '--max-grad-norm', '1', '--seed', '7'];
    const one = path.join(dir, 'one');
    const r1 = cli(['train', ...common, '--out', one, '--batch-size', '6', '--threads', '1']);
    expect(r1.code, r1.stderr).toBe(0);
    for (const np of [2, 3]) {
      const out = path.join(dir, `np${np}`);
      const r = mpirun(np, [...common, '--out', out, '--batch-size', String(6 / np), '--threads', '1']);
      expect(r.code, r.stderr).toBe(0);
      expectSameRun(out, one, model, `${np} ranks`);
      // Rank 0 alone writes the model and metrics; each rank its slice of the training state.
      const state = path.join(out, 'latest', 'training-state');
      expect(fs.readdirSync(state).filter((f) => f.startsWith('optimizer-rank-')).sort())
        .toEqual(Array.from({ length: np }, (_, i) => `optimizer-rank-${i}-of-${np}.safetensors`));
    }
  });

  it('a resume under 2 ranks continues exactly; another number of ranks is refused; an error on one rank ends the job', () => {
    const dir = tmpDir('train-ranks-resume');
    const model = path.join(TRAIN_FIXTURES, 'opt-train');
    const data = dataFile(dir);
    const common = ['--model', model, '--data', data, '--batch-size', '2', '--lr', '1e-3', '--threads', '1'];
    const whole = path.join(dir, 'whole');
    expect(mpirun(2, [...common, '--out', whole, '--max-steps', '4']).code).toBe(0);
    const cut = path.join(dir, 'cut');
    expect(mpirun(2, [...common, '--out', cut, '--max-steps', '2']).code).toBe(0);
    const r = mpirun(2, [...common, '--out', cut, '--max-steps', '4', '--resume']);
    expect(r.code, r.stderr).toBe(0);
    expect(readJsonl<Line>(path.join(cut, 'metrics.jsonl')).map(({ step, loss, grad_norm }) => ({ step, loss, grad_norm })))
      .toEqual(readJsonl<Line>(path.join(whole, 'metrics.jsonl')).map(({ step, loss, grad_norm }) => ({ step, loss, grad_norm })));
    expect(fs.readFileSync(path.join(cut, 'model.safetensors'))).toEqual(fs.readFileSync(path.join(whole, 'model.safetensors')));

    const solo = cli(['train', ...common, '--out', cut, '--max-steps', '6', '--resume']);
    expect(solo.code).toBe(1);
    expect(solo.stderr).toMatch(/cannot resume: the run was saved by 2 ranks, this one has 1; resume with the same number \(mpirun -np 2\)/);

    // Rank 1's slice is gone: rank 1 fails reading it while rank 0 waits in the first step's
    // collectives; the job must end (not hang) and say why.
    fs.rmSync(path.join(cut, 'latest', 'training-state', 'optimizer-rank-1-of-2.safetensors'));
    const broken = mpirun(2, [...common, '--out', cut, '--max-steps', '6', '--resume']);
    expect(broken.code).not.toBe(0);
    expect(broken.stderr).toMatch(/tierlm: rank 1 of 2: .*optimizer-rank-1-of-2\.safetensors: missing/);
  });

  it('ranks given different data are refused before any step (they planned other step counts and one hung in a collective)', () => {
    const dir = tmpDir('train-ranks-data');
    const model = path.join(TRAIN_FIXTURES, 'opt-train');
    const data = dataFile(dir);
    const more = path.join(dir, 'more.jsonl');
    fs.writeFileSync(more, fs.readFileSync(data, 'utf8').repeat(3));
    const same = path.join(dir, 'same-size.jsonl');
    // the same number of sequences, other tokens: it trained on different data without a word
    fs.writeFileSync(same, fs.readFileSync(data, 'utf8').replace(/\[(\d+)/g, (_, t: string) => `[${(Number(t) + 1) % 50}`));
    for (const other of [more, same]) {
      const rank = (file: string, out: string) => ['-np', '1', process.execPath, '--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), 'train',
        '--model', model, '--data', file, '--out', out, '--batch-size', '1', '--threads', '1'];
      const out = path.join(dir, `out-${path.basename(other)}`);
      const r = spawnSync('mpirun', ['--allow-run-as-root', '--oversubscribe', ...rank(data, out), ':', ...rank(other, out)], {
        cwd: repoRoot, encoding: 'utf8', timeout: 120_000, env: { ...process.env, OMPI_MCA_mpi_yield_when_idle: '1' },
      });
      expect(r.error, 'mpirun timed out (a rank hung)').toBeUndefined();
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/the ranks were not given the same training data and options: rank 1 differs from rank 0 \(rank 0: \d+ sequences, rank 1: \d+ sequences\); give every rank the same --data, --eval-data and options/);
      expect(fs.existsSync(path.join(out, 'metrics.jsonl'))).toBe(false);
    }
  });
});
