// What `tierlm train` (train() in src/train/run.ts) settles before it opens the trainer:
// - one run at a time per OUT: a run holds OUT.lock with its pid; a second run is refused naming
//   it (two runs on one OUT deleted each other's saves in progress, or both saved every step), and
//   a killed run's lock is taken over;
// - a resume with other data is refused before the trainer opens (an offloaded one fills its
//   states on disk first: minutes at OPT-1.3B scale);
// - an offloaded run's plan counts the tokenizer it read the data with (~44 MiB for Llama 2's),
//   as generation's does: a run under --ram 40MiB peaked at 197 MiB, over the limit + 128 MiB.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { tokenizerRamBytes } from '../src/formats/tokenizer.js';
import { initModel } from '../src/models/init.js';
import { FileLock } from '../src/tensor/disk/lock.js';
import { dataContextFor, datasetBytes, readDataset } from '../src/train/dataset.js';
import { train } from '../src/train/index.js';
import * as trainer from '../src/train/trainer.js';
import { cli } from './helpers/cli.js';
import { addTokenizer, repoRoot, tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';
import { haveMpi, mpirun } from './helpers/ranks.js';
import { TRAIN_FIXTURES } from './helpers/train.js';

vi.mock('../src/train/trainer.js', async (importOriginal) => {
  const m = await importOriginal<typeof import('../src/train/trainer.js')>();
  return { ...m, openTrainer: vi.fn(m.openTrainer) };
});
const openTrainer = vi.mocked(trainer.openTrainer);

afterEach(() => {
  openTrainer.mockClear();
});

const model = path.join(TRAIN_FIXTURES, 'opt-train');

function tokenData(vocab: number, lines = 6): string {
  const r = rng(3);
  const file = path.join(tmpDir('guards-data'), 'data.jsonl');
  fs.writeFileSync(file, Array.from({ length: lines }, () => JSON.stringify({ token_ids: Array.from({ length: 10 }, () => Math.floor(r() * vocab)) })).join('\n') + '\n');
  return file;
}

async function drain(run: AsyncGenerator<unknown>): Promise<void> {
  for await (const _ of run) void _;
}

/** The trainer's options of the next openTrainer call, which is stopped there. */
function stopAtOpen(): { options?: trainer.TrainerOptions } {
  const seen: { options?: trainer.TrainerOptions } = {};
  openTrainer.mockImplementationOnce((_dir, options) => {
    seen.options = options;
    return Promise.reject(new Error('stopped at openTrainer'));
  });
  return seen;
}

describe('one run at a time per --out', () => {
  it('a run on an OUT whose lock is held is refused, naming the holder\'s pid, before reading anything', async () => {
    const out = path.join(tmpDir('guards-held'), 'out');
    const lockFile = `${out}.lock`;
    const held = FileLock.tryAcquire(lockFile)!;
    try {
      fs.writeFileSync(lockFile, '4242\n');
      await expect(drain(train({ model, data: tokenData(500), out, maxSteps: 1 })))
        .rejects.toThrow(`out ${out}: another training run (pid 4242) is writing it (it holds ${lockFile}); wait for it to end, or choose another out`);
      expect(openTrainer).not.toHaveBeenCalled();
      expect(fs.existsSync(out)).toBe(false);
    } finally {
      held.release();
    }
  });

  it('a lock its holder left behind (killed) is taken over, holds this run\'s pid, and is removed when the run ends', async () => {
    const out = path.join(tmpDir('guards-stale'), 'out');
    const lockFile = `${out}.lock`;
    fs.writeFileSync(lockFile, '999999999\n'); // no one holds its flock
    let during = '';
    openTrainer.mockImplementationOnce(() => {
      during = fs.readFileSync(lockFile, 'utf8');
      return Promise.reject(new Error('stopped at openTrainer'));
    });
    await expect(drain(train({ model, data: tokenData(500), out, maxSteps: 1 }))).rejects.toThrow('stopped at openTrainer');
    expect(during).toBe(`${process.pid}\n`);
    expect(fs.existsSync(lockFile)).toBe(false);
  });

  // Two processes: the first stopped in the middle of its first save (its checkpoint being
  // written in OUT/.checkpoint-1.tmp-PID, which the second run's save used to delete as a crash's
  // leftover). The second is refused naming the first; once the first is killed, a run takes over.
  it('tierlm train: a second run on the same --out is refused while the first runs; after the first is killed, a resume runs', async () => {
    const out = path.join(tmpDir('guards-cli'), 'out');
    const data = tokenData(500);
    const args = ['train', '--model', model, '--data', data, '--out', out, '--max-steps', '2', '--batch-size', '2', '--seq-len', '16', '--threads', '1'];
    const first = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), ...args], {
      cwd: repoRoot, env: { ...process.env, TIERLM_TEST_CHECKPOINT_PAUSE: 'model' },
    });
    try {
      await printed(first, 'checkpoint save paused');
      const second = cli([...args, '--resume']);
      expect(second.code).toBe(1);
      expect(second.stderr).toContain(`tierlm: --out ${out}: another training run (pid ${first.pid}) is writing it (it holds ${out}.lock)`);
      expect(fs.readdirSync(out)).toContain(`.checkpoint-2.tmp-${first.pid}`);
    } finally {
      first.kill('SIGKILL');
      await new Promise((resolve) => first.exitCode !== null || first.signalCode !== null ? resolve(null) : first.on('exit', resolve));
    }
    const resumed = cli([...args, '--resume']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(fs.existsSync(path.join(out, 'checkpoint-2'))).toBe(true);
    expect(fs.existsSync(`${out}.lock`)).toBe(false);
  });
});

// Under mpirun rank 0 takes the lock for the job (the ranks share OUT: each rank's lock would
// refuse the others) and tells every rank, so none waits in a collective for a rank that stopped.
describe.skipIf(!haveMpi)('one run at a time per --out, under mpirun', () => {
  it('every rank of a job on a held OUT is refused, naming the holder', () => {
    const out = path.join(tmpDir('guards-ranks'), 'out');
    const lockFile = `${out}.lock`;
    const held = FileLock.tryAcquire(lockFile)!;
    try {
      fs.writeFileSync(lockFile, '4242\n');
      const r = mpirun(2, ['--model', model, '--data', tokenData(500), '--out', out, '--max-steps', '1', '--batch-size', '1', '--threads', '1']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(new RegExp(`tierlm: rank [01] of 2: --out ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: another training run \\(pid 4242\\) is writing it`));
      expect(fs.existsSync(out)).toBe(false);
    } finally {
      held.release();
    }
  });
});

describe('resuming with other data', () => {
  it('is refused before the trainer opens', async () => {
    const out = path.join(tmpDir('guards-resume'), 'out');
    const data = tokenData(500);
    await drain(train({ model, data, out, maxSteps: 1, batchSize: 2, seqLen: 16, threads: 1 }));
    expect(openTrainer).toHaveBeenCalledTimes(1);
    openTrainer.mockClear();
    fs.appendFileSync(data, '{"token_ids": [1, 2, 3]}\n');
    await expect(drain(train({ model, data, out, maxSteps: 1, batchSize: 2, seqLen: 16, threads: 1, resume: true,
      ram: 64 * 2 ** 20, diskDir: tmpDir('guards-resume-disk') })))
      .rejects.toThrow(`${data}: the data differs from the run being resumed (${path.join(out, 'checkpoint-1')}; file, tokenizer or sequence length changed)`);
    expect(openTrainer).not.toHaveBeenCalled();
  });
});

describe('the RAM an offloaded run holds besides its states', () => {
  it('counts the tokenizer the data was read with, besides the tokenized data', async () => {
    const m = tmpDir('guards-tok-model');
    initModel({ config: 'llama-test', out: m, layers: 1, dtype: 'f32', seed: 3, overrides: { vocab_size: 512 } });
    addTokenizer(m);
    const data = tokenData(512);
    const seen = stopAtOpen();
    await expect(drain(train({ model: m, data, out: path.join(tmpDir('guards-tok-out'), 'out'), maxSteps: 1, seqLen: 16,
      ram: 256 * 2 ** 20, diskDir: tmpDir('guards-tok-disk') }))).rejects.toThrow('stopped at openTrainer');
    const tokenizer = tokenizerRamBytes(m);
    expect(tokenizer).toBeGreaterThan(40 * 2 ** 20); // Llama 2's
    const tokenized = datasetBytes(await readDataset(data, dataContextFor(m, 16)));
    expect(seen.options?.offload?.heldBytes).toBe(tokenized + tokenizer);
  });
});

/** Resolves once the child has printed `text` on stdout (rejects if it exits first). */
function printed(child: ChildProcess, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let stdout = '', stderr = '';
    child.stdout!.on('data', (d) => {
      stdout += d;
      if (stdout.includes(text)) resolve();
    });
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('exit', (code) => reject(new Error(`exited (${code}) before printing "${text}": ${stderr}`)));
  });
}
