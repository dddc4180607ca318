// Running `tierlm train` under mpirun in tests (test/train-ranks*.test.ts), and comparing a run
// with the 1-rank one.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { mpiAddonPath } from '../../src/dist/comm.js';
import { readJsonl, repoRoot } from './fixtures.js';
import { TRAIN_FIXTURES, readAll, updateErr } from './train.js';

export const haveMpi = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0 && fs.existsSync(mpiAddonPath());
export const ci = process.env.CI === 'true';

export interface Line { step: number; loss: number; grad_norm: number; tokens: number }

/** `mpirun -np np` of the CLI's train command; `nodeArgs` go to each rank's node. `built`: the
 *  compiled CLI, as test/helpers/cli.ts's cli() runs it to measure memory. */
export function mpirun(np: number, args: string[], nodeArgs: string[] = [], built = false): { code: number; stderr: string } {
  const entry = built ? [path.join(repoRoot, 'bin/tierlm.js')] : ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts')];
  const r = spawnSync('mpirun', ['--allow-run-as-root', '--oversubscribe', '-np', String(np),
    process.execPath, ...nodeArgs, ...entry, 'train', ...args], {
    cwd: repoRoot, encoding: 'utf8', timeout: 120_000,
    // Idle ranks yield their core (the tests oversubscribe 2 cores).
    env: { ...process.env, OMPI_MCA_mpi_yield_when_idle: '1' },
  });
  return { code: r.status ?? -1, stderr: `${r.stderr}${r.error ? String(r.error) : ''}` };
}

/** A partitioned run's update of one tensor against the 1-rank run's (lr 1e-3, 4 steps). Sums over
 *  ranks round differently from one process's, and Adam, which divides each gradient element by
 *  its own RMS, turns a difference in an element whose gradient is a near-cancelling sum into a
 *  difference of a few percent of that element's update: llama-train's layers.1 v_proj element 829
 *  differs by 5e-6 to 3e-5 (0.005-0.03 lr) depending on the rank count, data order and instruction
 *  set (AVX2: 1.2e-4 of that tensor's update norm from it alone), while every other element of
 *  every tensor agrees to ~1e-5 of its tensor's update. So: every tensor's update within 5e-5
 *  relative without its largest difference, and that difference within 0.1 lr, far below what a
 *  lost or doubled shard element gives (an update of about lr per step). */
export function expectUpdateClose(a: Float32Array, b: Float32Array, base: Float32Array, what: string): void {
  let worst = 0;
  for (let i = 0; i < b.length; i++) if (Math.abs(a[i]! - b[i]!) > Math.abs(a[worst]! - b[worst]!)) worst = i;
  expect(updateErr(a, b, base, worst), `${what}: update without element ${worst}`).toBeLessThanOrEqual(5e-5);
  expect(Math.abs(a[worst]! - b[worst]!), `${what}: update of element ${worst}`).toBeLessThanOrEqual(1e-4);
}

/** 7 sequences of 5..16 tokens (the fixture's 4 and 3 more), some with masked labels. */
export function dataFile(dir: string): string {
  const lines = fs.readFileSync(path.join(TRAIN_FIXTURES, 'batch.jsonl'), 'utf8').trim().split('\n');
  for (let i = 0; i < 3; i++) {
    const ids = Array.from({ length: 5 + 4 * i }, (_, p) => (37 * (i + 1) + 11 * p) % 500);
    lines.push(JSON.stringify({ token_ids: ids }));
  }
  const file = path.join(dir, 'data.jsonl');
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

export function expectSameRun(out: string, ref: string, base: string, what: string): void {
  const a = readJsonl<Line>(path.join(out, 'metrics.jsonl')), b = readJsonl<Line>(path.join(ref, 'metrics.jsonl'));
  expect(a.map((l) => l.step), what).toEqual(b.map((l) => l.step));
  for (const [i, l] of a.entries()) {
    expect(Math.abs(l.loss - b[i]!.loss) / b[i]!.loss, `${what}: loss of step ${l.step}`).toBeLessThanOrEqual(1e-6);
    expect(l.tokens, `${what}: tokens of step ${l.step}`).toBe(b[i]!.tokens);
  }
  const before = readAll(path.join(base, 'model.safetensors'));
  const want = readAll(path.join(ref, 'model.safetensors'));
  const got = readAll(path.join(out, 'model.safetensors'));
  expect([...got.keys()].sort(), what).toEqual([...want.keys()].sort());
  for (const [n, w] of got) {
    // OPT's k_proj biases: their true gradient is 0, so their update is rounding noise that Adam
    // magnifies (test/fixtures/train/README.md); only its size is checked.
    if (n.includes('k_proj.bias')) expect(Math.max(...w.map((x, i) => Math.abs(x - before.get(n)![i]!))), n).toBeLessThan(4e-3);
    else expectUpdateClose(w, want.get(n)!, before.get(n)!, `${what}: ${n}`);
  }
}

