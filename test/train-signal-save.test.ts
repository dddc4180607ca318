// `tierlm train` stopped by SIGTERM or Ctrl-C (SIGINT) in the middle of a checkpoint save: the
// save's temporary directory (a whole checkpoint's size) and OUT.lock are removed as the process
// ends, by the signal, which still ends it; finished checkpoints and metrics.jsonl are untouched,
// and --resume continues from the last complete checkpoint as if never stopped.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { readJsonl, repoRoot, tmpDir } from './helpers/fixtures.js';
import { TRAIN_FIXTURES as FIX } from './helpers/train.js';

const model = path.join(FIX, 'opt-train');

function writeData(file: string): void {
  const lines = Array.from({ length: 8 }, (_, i) => JSON.stringify({ token_ids: Array.from({ length: 6 + i }, (_, t) => (i * 37 + t * 11) % 512) }));
  fs.writeFileSync(file, lines.join('\n') + '\n');
}

const args = (data: string, out: string, extra: string[] = []) => [
  'train', '--model', model, '--data', data, '--out', out, '--max-steps', '6', '--batch-size', '2', '--seq-len', '32',
  '--lr', '1e-3', '--save-every', '2', '--threads', '1', ...extra,
];

/** Runs the CLI until it prints that the save is paused (TIERLM_TEST_CHECKPOINT_PAUSE), sends it
 *  `signal`, and resolves with how it ended. */
function runAndSignal(argv: string[], pause: string, signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), ...argv],
      { cwd: repoRoot, env: { ...process.env, TIERLM_TEST_CHECKPOINT_PAUSE: pause } });
    let stdout = '', stderr = '', sent = false;
    child.stdout.on('data', (d) => {
      stdout += d;
      if (!sent && stdout.includes('checkpoint save paused')) {
        sent = true;
        child.kill(signal);
      }
    });
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (code, sig) => resolve({ code, signal: sig, stderr }));
  });
}

const metrics = (out: string) => readJsonl<{ step: number; loss: number; grad_norm: number }>(path.join(out, 'metrics.jsonl'))
  .map(({ step, loss, grad_norm }) => ({ step, loss, grad_norm }));

/** What a stopped run may leave: temporaries (dot names) in OUT, and OUT.lock beside it. */
function leftovers(out: string): string[] {
  return [...fs.readdirSync(out).filter((n) => n.startsWith('.')), ...(fs.existsSync(`${out}.lock`) ? [`${path.basename(out)}.lock`] : [])];
}

describe('tierlm train stopped by a signal inside a checkpoint save', () => {
  it('leaves no temporary checkpoint and no lock, ends by the signal, and resumes from the last complete checkpoint', async () => {
    const dir = tmpDir('train-signal');
    const data = path.join(dir, 'data.jsonl');
    writeData(data);
    const whole = path.join(dir, 'whole');
    const ref = cli(args(data, whole));
    expect(ref.code, ref.stderr).toBe(0);

    // SIGTERM in step 4's save (before its rename): checkpoint-2 stays the latest.
    const out = path.join(dir, 'out');
    const term = await runAndSignal(args(data, out), 'rename@4', 'SIGTERM');
    expect(term, term.stderr).toMatchObject({ code: null, signal: 'SIGTERM' });
    expect(leftovers(out)).toEqual([]);
    expect(fs.readlinkSync(path.join(out, 'latest'))).toBe('checkpoint-2');
    expect(metrics(out)).toEqual(metrics(whole).slice(0, 4));

    // Ctrl-C in step 6's save, resumed from checkpoint-2 (while its model files are written).
    const int = await runAndSignal(args(data, out, ['--resume']), 'model@6', 'SIGINT');
    expect(int, int.stderr).toMatchObject({ code: null, signal: 'SIGINT' });
    expect(int.stderr).toMatch(/resuming from .*checkpoint-2/);
    expect(leftovers(out)).toEqual([]);
    expect(fs.readlinkSync(path.join(out, 'latest'))).toBe('checkpoint-4');
    expect(fs.readdirSync(out).filter((n) => n.startsWith('checkpoint-'))).toEqual(['checkpoint-4']);

    const done = cli(args(data, out, ['--resume']));
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/resuming from .*checkpoint-4/);
    expect(metrics(out)).toEqual(metrics(whole));
    expect(fs.readFileSync(path.join(out, 'model.safetensors')).equals(fs.readFileSync(path.join(whole, 'model.safetensors')))).toBe(true);
    expect(leftovers(out)).toEqual([]);
  });
});
