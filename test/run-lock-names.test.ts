// One run at a time per results file and per training OUT, whatever name each run gives it: the
// lock was named after the path as typed, so a run through a symbolic link (alias -> out) ran
// beside one on out — generation wrote every id twice (600 lines for 300 ids), and a training run
// deleted the other's checkpoint in progress (ENOENT) while both appended to metrics.jsonl. A
// hard link to a results file is another name too. And `batch --errors DIR/./f --output DIR/f`
// was refused as "another run is writing it" (its own --output lock) instead of as one file.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { lockTarget } from '../src/tensor/disk/lock.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, repoRoot, tmpDir } from './helpers/fixtures.js';
import { TRAIN_FIXTURES } from './helpers/train.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const prompts = path.join(fixturesDir, 'prompts.jsonl');

function start(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), ...args], { cwd: repoRoot, env: { ...process.env, ...env } });
}

async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  const ended = new Promise((resolve) => child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.on('exit', resolve));
  child.kill(signal);
  await ended;
}

/** Resolves once the child has printed `text` on stdout, or once `ready()` holds (polled). */
function waitFor(child: ChildProcess, text: string | null, ready: () => boolean = () => false): Promise<void> {
  return new Promise((resolve, reject) => {
    let stdout = '', stderr = '';
    const done = (error?: Error) => {
      clearInterval(timer);
      if (error) reject(error);
      else resolve();
    };
    const timer = setInterval(() => {
      if (ready()) done();
    }, 50);
    child.stdout!.on('data', (d) => {
      stdout += d;
      if (text !== null && stdout.includes(text)) done();
    });
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('exit', (code) => done(new Error(`exited (${code}) too soon: ${stderr}`)));
  });
}

describe('one run at a time per results file, whatever its name', () => {
  it('tierlm generate: while a run writes out.jsonl, a run through a symbolic link or a hard link to it is refused', async () => {
    const dir = tmpDir('lock-names-gen');
    const out = path.join(dir, 'out.jsonl');
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, Array.from({ length: 3000 }, (_, i) => JSON.stringify({ id: `r${i}`, prompt_token_ids: [5, 6, 7], max_new_tokens: 100 })).join('\n') + '\n');
    fs.writeFileSync(out, ''); // there before the first run: a hard link to it can be made
    fs.symlinkSync('out.jsonl', path.join(dir, 'alias.jsonl'));
    fs.linkSync(out, path.join(dir, 'hard.jsonl'));
    const first = start(['generate', '--model', opt, '--prompts', input, '--out', out, '--ignore-eos', '--threads', '1']);
    try {
      // results written: the first run holds its locks
      await waitFor(first, null, () => fs.statSync(out).size > 0);
      first.kill('SIGSTOP'); // its locks held, its cores left to the runs below
      const alias = cli(['generate', '--model', opt, '--prompts', input, '--out', path.join(dir, 'alias.jsonl'), '--ignore-eos']);
      expect(alias.code).toBe(1);
      expect(alias.stderr).toContain(`tierlm: --out ${path.join(dir, 'alias.jsonl')}: another run is writing it (it holds ${out}.lock)`);
      const hard = cli(['batch', '--model', opt, '--input', input, '--output', path.join(dir, 'hard.jsonl')]);
      expect(hard.code).toBe(1);
      expect(hard.stderr).toContain(`tierlm: --output ${path.join(dir, 'hard.jsonl')}: another run is writing it (under another name: it holds a lock on the file itself)`);
    } finally {
      await stop(first, 'SIGKILL'); // (SIGTERM would finish the lines in flight: seconds)
    }
    // the refused runs left no lock file of their own (the killed run's is there, as after a
    // crash), and nothing in the file twice
    expect(fs.readdirSync(dir).sort()).toEqual(['alias.jsonl', 'hard.jsonl', 'in.jsonl', 'out.jsonl', 'out.jsonl.lock']);
    const ids = fs.readFileSync(out, 'utf8').split('\n').slice(0, -1).map((l) => (JSON.parse(l) as { id: string }).id); // (less a torn last line)
    expect(ids.length).toBeGreaterThan(0);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('a results file a run makes is locked from its start: a hard link made to it then is refused; a run that fails leaves none', async () => {
    // (the file was made by the first result, unlocked: a run through a hard link made after that
    // wrote beside the first)
    const dir = tmpDir('lock-names-late-link');
    const out = path.join(dir, 'out.jsonl');
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, Array.from({ length: 3000 }, (_, i) => JSON.stringify({ id: `r${i}`, prompt_token_ids: [5, 6, 7], max_new_tokens: 100 })).join('\n') + '\n');
    const failed = cli(['generate', '--model', opt, '--prompts', path.join(dir, 'missing.jsonl'), '--out', out]);
    expect(failed.code).toBe(1);
    expect(fs.readdirSync(dir)).toEqual(['in.jsonl']);
    const first = start(['generate', '--model', opt, '--prompts', input, '--out', out, '--ignore-eos', '--threads', '1']);
    try {
      await waitFor(first, null, () => fs.existsSync(out));
      first.kill('SIGSTOP');
      fs.linkSync(out, path.join(dir, 'hard.jsonl'));
      const hard = cli(['generate', '--model', opt, '--prompts', input, '--out', path.join(dir, 'hard.jsonl'), '--ignore-eos']);
      expect(hard.code).toBe(1);
      expect(hard.stderr).toContain(`tierlm: --out ${path.join(dir, 'hard.jsonl')}: another run is writing it (under another name: it holds a lock on the file itself)`);
    } finally {
      await stop(first, 'SIGKILL');
    }
  });

  it('a run stopped by SIGTERM before its first result leaves no empty results file (nor its lock)', async () => {
    const dir = tmpDir('lock-names-empty');
    const out = path.join(dir, 'out.jsonl');
    // (prompts from a pipe that sends none: the run waits, its file made and locked)
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), 'generate', '--model', opt, '--prompts', '-', '--out', out],
      { cwd: repoRoot, stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      for (let i = 0; i < 600 && !fs.existsSync(out); i++) await new Promise((r) => setTimeout(r, 50));
      expect(fs.readdirSync(dir).sort()).toEqual(['out.jsonl', 'out.jsonl.lock']);
    } finally {
      await stop(child, 'SIGTERM');
    }
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('tierlm batch: --errors naming --output another way is refused as the same file, not as another run', () => {
    const dir = tmpDir('lock-names-batch');
    const same = path.join(dir, 'same.jsonl');
    fs.symlinkSync('same.jsonl', path.join(dir, 'link.jsonl'));
    // not there yet: `DIR/./f` and a link to it; there: a hard link too
    for (const errors of [`${dir}/./same.jsonl`, path.join(dir, 'link.jsonl'), 'HARD']) {
      if (errors === 'HARD') {
        fs.writeFileSync(same, '');
        fs.linkSync(same, path.join(dir, 'hard.jsonl'));
      }
      const r = cli(['batch', '--model', opt, '--input', prompts, '--output', same, '--errors', errors === 'HARD' ? path.join(dir, 'hard.jsonl') : errors]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('tierlm: --errors must be another file than --output');
    }
  });

  it('lockTarget: a link is followed to the end (dangling or not), anything else is kept as typed', () => {
    const dir = tmpDir('lock-names-target');
    fs.mkdirSync(path.join(dir, 'real'));
    fs.symlinkSync('real', path.join(dir, 'dirlink'));
    fs.symlinkSync('dirlink/out', path.join(dir, 'a'));
    fs.symlinkSync(path.join(dir, 'a'), path.join(dir, 'b'));
    expect(lockTarget(path.join(dir, 'b'))).toBe(path.join(dir, 'real/out')); // not there yet
    expect(lockTarget(path.join(dir, 'b') + '/')).toBe(path.join(dir, 'real/out'));
    expect(lockTarget(path.join(dir, 'dirlink/out'))).toBe(path.join(dir, 'dirlink/out')); // the kernel resolves dirlink
    expect(lockTarget('run/')).toBe('run');
  });
});

describe('one training run at a time per OUT, whatever its name', () => {
  // The first run stopped in its first save (OUT/.checkpoint-2.tmp-PID, which the second run's
  // save deleted as a crash's leftover); the second, through a link to OUT, is refused naming it.
  it('tierlm train: a run through a symbolic link to a running OUT is refused, naming the first run', async () => {
    const dir = tmpDir('lock-names-train');
    const out = path.join(dir, 'run');
    fs.symlinkSync('run', path.join(dir, 'alias'));
    const data = path.join(dir, 'data.jsonl');
    fs.writeFileSync(data, Array.from({ length: 6 }, (_, i) => JSON.stringify({ token_ids: Array.from({ length: 10 }, (_, j) => (i * 31 + j * 7) % 500) })).join('\n') + '\n');
    const args = (o: string) => ['train', '--model', path.join(TRAIN_FIXTURES, 'opt-train'), '--data', data, '--out', o, '--max-steps', '2', '--batch-size', '2', '--seq-len', '16', '--threads', '1'];
    const first = start(args(out), { TIERLM_TEST_CHECKPOINT_PAUSE: 'model' });
    try {
      await waitFor(first, 'checkpoint save paused');
      const second = cli(args(path.join(dir, 'alias')));
      expect(second.code).toBe(1);
      expect(second.stderr).toContain(`tierlm: --out ${path.join(dir, 'alias')}: another training run (pid ${first.pid}) is writing it (it holds ${out}.lock)`);
      expect(fs.readdirSync(out)).toContain(`.checkpoint-2.tmp-${first.pid}`);
    } finally {
      await stop(first, 'SIGKILL');
    }
    // the killed run's lock is taken over through the link as well
    const resumed = cli([...args(path.join(dir, 'alias')), '--resume']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(fs.existsSync(path.join(out, 'checkpoint-2'))).toBe(true);
    expect(fs.readdirSync(dir).sort()).toEqual(['alias', 'data.jsonl', 'run']);
  });
});
