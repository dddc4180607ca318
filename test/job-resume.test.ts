// The output file of a batch job is its record of finished work: a rerun never loses a result.
// Only a torn last line is repaired, blank lines are skipped, any other bad line stops the job
// with the file untouched, error lines are tried again, and outputs that are not results files
// are refused before the model loads.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileLock } from '../src/tensor/disk/lock.js';
import { cli } from './helpers/cli.js';
import { type Reference, readJsonl, fixturesDir, repoRoot, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const prompts = path.join(fixturesDir, 'prompts.jsonl');
const reference = readJsonl<Reference>(path.join(opt, 'reference.jsonl'));
const run = (out: string, extra: string[] = []) =>
  cli(['generate', '--model', opt, '--prompts', prompts, '--out', out, '--max-new-tokens', '8', '--ignore-eos', ...extra]);
const line = (id: string, tokens: number[]) => JSON.stringify({ id, token_ids: tokens, finish_reason: 'length' });

describe('resuming a batch job', () => {
  it('skips blank lines and keeps every result after them', () => {
    const out = path.join(tmpDir('blank'), 'out.jsonl');
    const before = [line('p0', [1]), '', '   ', line('p3', [2]), line('p4', [3])].join('\n') + '\n';
    fs.writeFileSync(out, before);
    const r = run(out);
    expect(r.code, r.stderr).toBe(0);
    const text = fs.readFileSync(out, 'utf8');
    expect(text.startsWith(before)).toBe(true);
    const rows = readJsonl<{ id: string; token_ids: number[] }>(out);
    expect(rows.map((x) => x.id)).toEqual(['p0', 'p3', 'p4', 'p1', 'p2']);
    expect(rows[3]!.token_ids).toEqual(reference[1]!.token_ids);
    expect(r.stderr).toMatch(/2 results, 0 failed, 3 already done/);
  });

  it('repairs only a torn last line: cut when partial, completed when whole', () => {
    const dir = tmpDir('torn');
    const partial = path.join(dir, 'partial.jsonl');
    fs.writeFileSync(partial, `${line('p0', [1])}\n{"id":"p1","token_ids":[4`);
    expect(run(partial).code).toBe(0);
    const rows = readJsonl<{ id: string; token_ids: number[] }>(partial);
    expect(rows.map((x) => x.id).sort()).toEqual(['p0', 'p1', 'p2', 'p3', 'p4']);
    expect(rows.find((x) => x.id === 'p1')!.token_ids).toEqual(reference[1]!.token_ids);
    const whole = path.join(dir, 'whole.jsonl');
    fs.writeFileSync(whole, `${line('p0', [1])}\n${line('p1', [9])}`);
    const r = run(whole);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/2 already done/);
    expect(readJsonl<{ id: string; token_ids: number[] }>(whole).find((x) => x.id === 'p1')!.token_ids).toEqual([9]);
    // a write cut after its first bytes
    const short = path.join(dir, 'short.jsonl');
    fs.writeFileSync(short, `${line('p0', [1])}\n{"i`);
    expect(run(short).code).toBe(0);
    expect(readJsonl<{ id: string }>(short).map((x) => x.id).sort()).toEqual(['p0', 'p1', 'p2', 'p3', 'p4']);
  });

  it('never cuts a whole line that is not a result (an input file given as --out, its last line without a newline)', () => {
    const dir = tmpDir('input-as-out');
    for (const text of ['{"id":"a","prompt_token_ids":[5,6,7]}', `${line('p0', [1])}\n{"id":"a","prompt_token_ids":[5,6,7]}`]) {
      const file = path.join(dir, 'in.jsonl');
      fs.writeFileSync(file, text);
      const r = cli(['generate', '--model', '/nonexistent', '--prompts', file, '--out', file]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/in\.jsonl:[12]: is not a (tierlm )?result line/);
      expect(fs.readFileSync(file, 'utf8')).toBe(text);
    }
  });

  it('stops at any other bad line, naming the file and line, with the file left as it was', () => {
    const dir = tmpDir('badline');
    const out = path.join(dir, 'out.jsonl');
    const before = `${line('p0', [1])}\n{"id": "p1", "token_ids": [2\n${line('p2', [3])}\n`;
    fs.writeFileSync(out, before);
    const r = run(out);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`tierlm: ${out}:2: is not a result line`);
    expect(fs.readFileSync(out, 'utf8')).toBe(before);
    // A torn last line that does not look like a result is not ours to cut.
    const foreign = path.join(dir, 'foreign.jsonl');
    fs.writeFileSync(foreign, `${line('p0', [1])}\nsome notes`);
    expect(run(foreign).stderr).toContain(`${foreign}:2: is not a result line`);
    expect(fs.readFileSync(foreign, 'utf8')).toBe(`${line('p0', [1])}\nsome notes`);
  });

  it('refuses an output that is a directory or not a results file, before the model loads', () => {
    const dir = tmpDir('refuse');
    const notes = path.join(dir, 'README.md');
    fs.writeFileSync(notes, '# notes\n\nsome text\n');
    // A model that does not exist: the output is checked first.
    for (const [out, msg] of [[dir, 'is a directory'], [notes, ':1: is not a tierlm result line'], [path.join(dir, 'no/such/out.jsonl'), 'does not exist']]) {
      const r = cli(['generate', '--model', '/nonexistent', '--prompts', prompts, '--out', out!]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(msg);
      expect(r.stderr).not.toMatch(/model directory/);
    }
    expect(fs.readFileSync(notes, 'utf8')).toBe('# notes\n\nsome text\n');
    const p = cli(['generate', '--model', opt, '--prompts', dir, '--out', path.join(dir, 'o.jsonl')]);
    expect(p.code).toBe(1);
    expect(p.stderr).toContain(`tierlm: --prompts ${dir}: is a directory, not a JSONL file`);
    expect(p.stderr).not.toMatch(/\n\s+at /);
  });

  it('one run at a time writes a results file: another is refused while one holds FILE.lock (both wrote every result)', () => {
    const dir = tmpDir('locked');
    const out = path.join(dir, 'out.jsonl');
    const held = FileLock.tryAcquire(`${out}.lock`)!; // a run in progress (this process stands in for it)
    try {
      const r = run(out);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`tierlm: --out ${out}: another run is writing it (it holds ${out}.lock); wait for it to end, or write to another file`);
      expect(fs.existsSync(out)).toBe(false);
      const b = cli(['batch', '--model', opt, '--input', prompts, '--output', out]);
      expect(b.code).toBe(1);
      expect(b.stderr).toContain(`--output ${out}: another run is writing it`);
    } finally {
      held.release();
    }
    // the holder gone (its lock file left, as after a crash): the next run writes, and removes the lock file
    const r = run(out);
    expect(r.code, r.stderr).toBe(0);
    expect(readJsonl<{ id: string }>(out).map((l) => l.id)).toEqual(reference.map((x) => x.id));
    expect(fs.readdirSync(dir)).toEqual(['out.jsonl']);
  });

  it('a run stopped by SIGTERM leaves no FILE.lock, and keeps its finished lines', async () => {
    const dir = tmpDir('sigterm-lock');
    const out = path.join(dir, 'out.jsonl');
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, Array.from({ length: 3000 }, (_, i) => JSON.stringify({ id: `r${i}`, prompt_token_ids: [5, 6, 7], max_new_tokens: 100 })).join('\n') + '\n');
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), 'generate', '--model', opt, '--prompts', input, '--out', out,
      '--ignore-eos', '--threads', '1'], { cwd: repoRoot, stdio: 'ignore' });
    const ended = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    // once results are being written, and the lock file is there
    for (let i = 0; i < 600 && !(fs.existsSync(out) && fs.statSync(out).size > 0); i++) await new Promise((r) => setTimeout(r, 50));
    expect(fs.existsSync(`${out}.lock`)).toBe(true);
    child.kill('SIGTERM');
    expect(await ended).toBe('SIGTERM');
    expect(fs.readdirSync(dir).sort()).toEqual(['in.jsonl', 'out.jsonl']);
    const kept = readJsonl<{ id: string }>(out);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(3000);
  });

  it('tries error lines again (the newest line per id wins) and exits non-zero while any request fails', () => {
    const dir = tmpDir('retry');
    const out = path.join(dir, 'out.jsonl');
    fs.writeFileSync(out, `${JSON.stringify({ id: 'p1', error: 'out of memory' })}\n${line('p2', [7])}\n`);
    const r = run(out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/4 results, 0 failed, 1 already done/);
    const rows = readJsonl<{ id: string; token_ids?: number[] }>(out);
    expect(rows.filter((x) => x.id === 'p1').at(-1)!.token_ids).toEqual(reference[1]!.token_ids);
    // A request that keeps failing: reported per line, counted apart, exit code 2.
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, '{"id": "ok", "prompt_token_ids": [5]}\n{"id": "bad", "prompt_token_ids": [99999]}\n');
    const out2 = path.join(dir, 'out2.jsonl');
    for (let i = 0; i < 2; i++) {
      const again = cli(['generate', '--model', opt, '--prompts', input, '--out', out2, '--max-new-tokens', '2']);
      expect(again.code).toBe(2);
      expect(again.stderr).toMatch(i === 0 ? /1 results, 1 failed/ : /0 results, 1 failed, 1 already done/);
      expect(again.stderr).toMatch(/1 request failed/);
    }
    expect(readJsonl<{ id: string }>(out2).map((x) => x.id)).toEqual(['ok', 'bad', 'bad']);
  });
});
