// Writes that fill a disk or hit a read-only one: a write is finished or fails naming its file (a
// short write left half a metrics line and the run went on), an atomic update leaves no
// temporary beside its file, a run refused before any result creates no results file, and a disk
// directory removed under a run does not fail its cleanup.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ResultWriter } from '../src/formats/jsonl.js';
import { initModel } from '../src/models/init.js';
import { SpillFiles } from '../src/schedule/spill-files.js';
import { writeFileDurable } from '../src/util/atomic.js';
import { writeFully } from '../src/util/write-fully.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

afterEach(() => vi.restoreAllMocks());

const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });

describe('writes', () => {
  it('a short write is finished; a failing one names its file and keeps its code', () => {
    const file = path.join(tmpDir('write-fully'), 'metrics.jsonl');
    const fd = fs.openSync(file, 'w');
    const real = fs.writeSync;
    let calls = 0;
    // The disk takes 5 bytes, then the rest: writeSync returns a short count, as it does when full.
    vi.spyOn(fs, 'writeSync').mockImplementation(((f: number, b: Uint8Array) => (calls++ === 0 ? real(f, b.subarray(0, 5)) : real(f, b))) as never);
    writeFully(fd, '{"step":32,"loss":1.5}\n', file);
    expect(fs.readFileSync(file, 'utf8')).toBe('{"step":32,"loss":1.5}\n');
    vi.spyOn(fs, 'writeSync').mockImplementation((() => { throw enospc(); }) as never);
    let err: NodeJS.ErrnoException | null = null;
    try {
      writeFully(fd, 'more', file);
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    fs.closeSync(fd);
    expect(err?.message).toBe(`${file}: writing failed: ENOSPC: no space left on device, write`);
    expect(err?.code).toBe('ENOSPC');
  });

  it('init that fills the disk leaves no half-written model, and no directory it made', () => {
    const parent = tmpDir('init-enospc');
    const real = fs.writeSync;
    let bytes = 0;
    // the disk takes 64 KiB, then fails (the header and config.json fit; the weights do not)
    vi.spyOn(fs, 'writeSync').mockImplementation(((fd: number, b: Uint8Array, ...rest: unknown[]) => {
      bytes += typeof b === 'string' ? Buffer.byteLength(b) : b.byteLength;
      if (bytes > 64 << 10) throw enospc();
      return (real as (...a: unknown[]) => number)(fd, b, ...rest);
    }) as never);
    const fresh = path.join(parent, 'new-model');
    expect(() => initModel({ config: 'opt-test', out: fresh })).toThrow(/model\.safetensors: writing failed: ENOSPC/);
    expect(fs.existsSync(fresh)).toBe(false);
    // into a directory that was there (--force): its other files stay, the model's are gone
    const existing = tmpDir('init-enospc-existing');
    fs.writeFileSync(path.join(existing, 'notes.txt'), 'mine');
    bytes = 0;
    expect(() => initModel({ config: 'opt-test', out: existing })).toThrow(/ENOSPC/);
    expect(fs.readdirSync(existing)).toEqual(['notes.txt']);
  });

  it('an atomic update that fails leaves the old file and no temporary, naming the file', () => {
    const dir = tmpDir('durable');
    const file = path.join(dir, 'batch.json');
    writeFileDurable(file, '{"old":1}');
    vi.spyOn(fs, 'writeSync').mockImplementation((() => { throw enospc(); }) as never);
    expect(() => writeFileDurable(file, '{"new":2}')).toThrow(`${file}: writing failed: ENOSPC`);
    vi.restoreAllMocks();
    expect(fs.readFileSync(file, 'utf8')).toBe('{"old":1}');
    expect(fs.readdirSync(dir)).toEqual(['batch.json']);
  });

  it('a results file is created by the first result, not before: a refused run leaves none', () => {
    const dir = tmpDir('lazy-out');
    const out = path.join(dir, 'out.jsonl');
    const w = new ResultWriter(out);
    expect(fs.existsSync(out)).toBe(false);
    w.write({ id: 'a', error: 'x' });
    w.close();
    expect(fs.readFileSync(out, 'utf8')).toBe('{"id":"a","error":"x"}\n');
    const refused = path.join(dir, 'refused.jsonl');
    const r = cli(['generate', '--model', path.join(fixturesDir, 'opt-tiny'), '--prompts', path.join(fixturesDir, 'prompts.jsonl'), '--out', refused, '--ram', '64KiB']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/RAM limit 64\.0 KiB/);
    expect(fs.existsSync(refused)).toBe(false);
  });

  it('a disk directory removed under a run: its cleanup does not fail (it hid the run\'s own result or error)', () => {
    const dir = tmpDir('gone');
    const spill = SpillFiles.claim(dir);
    fs.writeFileSync(spill.path('cache'), 'x');
    spill.makeDir('train');
    fs.rmSync(dir, { recursive: true, force: true });
    expect(() => spill.remove()).not.toThrow();
  });
});
