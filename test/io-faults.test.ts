// I/O faults in the middle of a job (a full disk, an I/O error, a short read): the job stops
// with the original error, every transfer in flight settles before files close, every result
// finished before the fault is kept, and a rerun completes the job.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { loadModel } from '../src/index.js';
import { runJob } from '../src/engine/job.js';
import { ResultWriter } from '../src/formats/jsonl.js';
import { DirectFile } from '../src/tensor/disk/io.js';
import { type Reference, readJsonl, fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const prompts = path.join(fixturesDir, 'prompts.jsonl');
const reference = readJsonl<Reference>(path.join(opt, 'reference.jsonl'));
// Everything on disk, one sequence per block: five blocks, each a chance to fail.
const policy = { wGpuPercent: 0, wCpuPercent: 0, cacheGpuPercent: 0, cacheCpuPercent: 0, actGpuPercent: 0, actCpuPercent: 0, gpuBatchSize: 1 };
const params = { maxNewTokens: 8, stopAtEos: false };

type Op = 'read' | 'write';
interface Fault {
  name: string;
  op: Op;
  error: (file: string, offset: number) => Error;
}

const faults: Fault[] = [
  { name: 'ENOSPC on a write', op: 'write', error: (f, o) => Object.assign(new Error(`ENOSPC: no space left on device, write ${f} at offset ${o}`), { code: 'ENOSPC' }) },
  { name: 'EIO on a read', op: 'read', error: (f, o) => Object.assign(new Error(`EIO: i/o error, read ${f} at offset ${o}`), { code: 'EIO' }) },
  { name: 'a short read', op: 'read', error: (f, o) => Object.assign(new Error(`EOF reading ${f} at offset ${o}`), { code: 'EOF' }) },
];

/** Counts the model's reads and writes and those still outstanding; the `failAt`-th call of
 *  `fault.op` fails at once, while every other transfer is held back a little, so that the fault
 *  arrives while its siblings are still in flight. */
function inject(fault: Fault | null, failAt: number) {
  const counts = { read: 0, write: 0, outstanding: 0 };
  let thrown: Error | null = null;
  for (const op of ['read', 'write'] as const) {
    const real = DirectFile.prototype[op];
    vi.spyOn(DirectFile.prototype, op).mockImplementation(function (this: DirectFile, buf: ArrayBufferView, offset: number, options) {
      const n = ++counts[op];
      counts.outstanding++;
      let p: Promise<void>;
      if (fault && op === fault.op && n === failAt) p = Promise.reject((thrown = fault.error(this.path, offset)));
      else p = new Promise((resolve) => setTimeout(resolve, 3)).then(() => real.call(this, buf, offset, options));
      const settled = () => void counts.outstanding--;
      p.then(settled, settled);
      return p;
    });
  }
  return { counts, thrown: () => thrown };
}

async function job(out: string, disk: string) {
  const model = await loadModel(opt, { policy, diskDir: disk });
  return { model, writer: new ResultWriter(out) };
}

afterEach(() => vi.restoreAllMocks());

describe('I/O faults during a job', () => {
  for (const fault of faults) {
    it(`${fault.name}: the original error, finished results kept, a rerun completes`, async () => {
      const dir = tmpDir('fault');
      const disk = path.join(dir, 'disk');
      fs.mkdirSync(disk);
      // A clean run counts the transfers, so that the fault lands in the middle of the job.
      const clean = await job(path.join(dir, 'clean.jsonl'), disk);
      const spy = inject(null, 0);
      await runJob(clean.model, clean.writer, { prompts, params });
      clean.writer.close();
      await clean.model.close();
      vi.restoreAllMocks();
      const out = path.join(dir, 'out.jsonl');
      const { model, writer } = await job(out, disk);
      const faulty = inject(fault, Math.ceil(spy.counts[fault.op] * 0.6));
      const failure = await runJob(model, writer, { prompts, params }).then(() => null, (e: Error) => e);
      // Every transfer had settled before the error reached the caller.
      expect(faulty.counts.outstanding).toBe(0);
      writer.close();
      expect(faulty.thrown(), 'the fault was injected').not.toBeNull();
      expect(failure).toBe(faulty.thrown());
      // Nothing is left in flight: the files close without complaint.
      await expect(model.close()).resolves.toBeUndefined();
      vi.restoreAllMocks();
      const kept = readJsonl<{ id: string; token_ids: number[] }>(out);
      expect(kept.length).toBeGreaterThan(0);
      expect(kept.length).toBeLessThan(5);
      for (const r of kept) expect(r.token_ids).toEqual(reference.find((x) => x.id === r.id)!.token_ids);
      const rerun = await job(out, disk);
      const summary = await runJob(rerun.model, rerun.writer, { prompts, params });
      rerun.writer.close();
      await rerun.model.close();
      expect(summary.skipped).toBe(kept.length);
      const all = readJsonl<{ id: string; token_ids: number[] }>(out);
      expect(all.map((r) => r.id).sort()).toEqual(reference.map((r) => r.id).sort());
      for (const r of all) expect(r.token_ids).toEqual(reference.find((x) => x.id === r.id)!.token_ids);
    });
  }
});
