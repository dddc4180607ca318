// The cache and activation spill files reserve their disk space (fallocate) when a block opens:
// a run that another process's files squeezed out of its planned space fails before the block's
// work, naming the file, instead of with ENOSPC midway through a write (a sparse cache file of
// 13 MB was 7 MB written when the disk filled). No write of a spill file goes past what it reserved.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { loadModel } from '../src/index.js';
import { runJob } from '../src/engine/job.js';
import { ResultWriter } from '../src/formats/jsonl.js';
import { DirectFile } from '../src/tensor/disk/io.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const prompts = path.join(fixturesDir, 'prompts.jsonl');
// The cache and activations on disk; two sequences a block.
const policy = { wGpuPercent: 0, wCpuPercent: 100, cacheGpuPercent: 0, cacheCpuPercent: 0, actGpuPercent: 0, actCpuPercent: 0, gpuBatchSize: 2 };
const params = { maxNewTokens: 8, stopAtEos: false };
const spill = (file: string) => /(cache|activations)/.test(path.basename(file));

afterEach(() => vi.restoreAllMocks());

describe('spill files', () => {
  it('reserve their space when a block opens, and every write falls within it', async () => {
    const reserved = new Map<string, number>();
    const past: string[] = [];
    const allocate = DirectFile.prototype.allocate;
    vi.spyOn(DirectFile.prototype, 'allocate').mockImplementation(function (this: DirectFile, bytes: number) {
      reserved.set(this.path, Math.max(reserved.get(this.path) ?? 0, bytes));
      return allocate.call(this, bytes);
    });
    const write = DirectFile.prototype.write;
    vi.spyOn(DirectFile.prototype, 'write').mockImplementation(function (this: DirectFile, buf: ArrayBufferView, offset: number, options) {
      if (spill(this.path) && offset + buf.byteLength > (reserved.get(this.path) ?? 0)) past.push(`${this.path} at ${offset} + ${buf.byteLength}`);
      return write.call(this, buf, offset, options);
    });
    const disk = tmpDir('spill-reserve');
    const model = await loadModel(opt, { policy, diskDir: disk });
    const out = path.join(disk, 'out.jsonl');
    const writer = new ResultWriter(out);
    try {
      await runJob(model, writer, { prompts, params });
    } finally {
      writer.close();
      await model.close();
    }
    expect([...reserved.keys()].filter(spill).map((f) => path.basename(f).replace(/-.*/, '')).sort()).toEqual(['activations', 'cache']);
    expect(past).toEqual([]);
    expect(fs.readFileSync(out, 'utf8').trim().split('\n')).toHaveLength(5);
  });

  it('give back what a larger block reserved: the two files together never hold more than one block needs', async () => {
    // Block A: a 1-token prompt and 120 new tokens (a large cache, one activation row); block B: a
    // 100-token prompt and one new token (a smaller cache, 100 activation rows). The cache file kept
    // A's reservation and the activation file B's: together more than either block needs.
    const disk = tmpDir('spill-reserve-shrink');
    const sizes = () => Object.fromEntries(fs.readdirSync(disk).filter(spill).map((f) => [f.replace(/-.*/, ''), fs.statSync(path.join(disk, f)).size]));
    const model = await loadModel(opt, { policy: { ...policy, gpuBatchSize: 1 }, diskDir: disk });
    const after: Record<string, number>[] = [];
    try {
      const reqs = [{ id: 'A', promptTokenIds: [100], maxNewTokens: 120 }, { id: 'B', promptTokenIds: Array.from({ length: 100 }, (_, i) => 3 + i), maxNewTokens: 1 }];
      for (const r of reqs) {
        for await (const x of model.generate([r], params)) expect('error' in x).toBe(false);
        after.push(sizes());
      }
    } finally {
      await model.close();
    }
    const [a, b] = after as [Record<string, number>, Record<string, number>];
    expect(b.activations!).toBeGreaterThan(a.activations!);
    expect(b.cache!).toBeLessThan(a.cache!);
  });

  it('a disk without room for a block fails as it opens, naming the file, before any of its writes', async () => {
    const writes: string[] = [];
    vi.spyOn(DirectFile.prototype, 'allocate').mockImplementation(function (this: DirectFile, bytes: number): boolean {
      throw Object.assign(new Error(`ENOSPC (No space left on device) preallocating ${bytes} bytes for ${this.path}`), { code: 'ENOSPC' });
    });
    const write = DirectFile.prototype.write;
    vi.spyOn(DirectFile.prototype, 'write').mockImplementation(function (this: DirectFile, buf: ArrayBufferView, offset: number, options) {
      if (spill(this.path)) writes.push(this.path);
      return write.call(this, buf, offset, options);
    });
    const disk = tmpDir('spill-reserve-full');
    const model = await loadModel(opt, { policy, diskDir: disk });
    const writer = new ResultWriter(path.join(disk, 'out.jsonl'));
    try {
      await expect(runJob(model, writer, { prompts, params })).rejects.toThrow(/ENOSPC \(No space left on device\) preallocating \d+ bytes for .*(cache|activations)/);
    } finally {
      writer.close();
      await model.close();
    }
    expect(writes).toEqual([]);
  });
});
