// A finished block's KV cache buffers are kept for the next block of the same sizes
// (src/schedule/cache-buffers.ts): fresh memory cost 130 thousand page faults and ~6% of an
// OPT-1.3B batch-32 generation. The next block must compute exactly as on fresh memory, whatever
// the cache type and placement, and blocks of other sizes must neither take nor keep the wrong
// buffers.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import type { Policy } from '../src/policy/policy.js';
import type { GenerationResult } from '../src/engine/requests.js';
import { CacheBuffers } from '../src/schedule/cache-buffers.js';
import { fixturePrompts, fixturesDir, tmpDir } from './helpers/fixtures.js';

describe('CacheBuffers', () => {
  it('hands a kept buffer of the same type and size back zeroed, and allocates otherwise', () => {
    const b = new CacheBuffers();
    const a = b.take('f16', [2, 3, 5, 7]);
    expect(a.data.every((x) => x === 0)).toBe(true);
    a.data.fill(513);
    const c = b.take('u8', [1, 2, 3]);
    c.data.fill(9);
    b.keep([a, c]);
    expect(b.bytes).toBe(2 * 210 + 6);
    // Another shape of the same size takes it (a view in that shape), zeroed.
    const again = b.take('f16', [3, 2, 5, 7]);
    expect(again.data.buffer).toBe(a.data.buffer);
    expect(again.shape).toEqual([3, 2, 5, 7]);
    expect(again.data.every((x) => x === 0)).toBe(true);
    expect(b.reusedBytes).toBe(420);
    // Taken once only: the next asks for new memory.
    expect(b.take('f16', [210]).data.buffer).not.toBe(a.data.buffer);
    // Same size in another type is not taken.
    expect(b.take('f32', [105 / 5, 5]).data.buffer).not.toBe(a.data.buffer);
    expect(b.take('u8', [6]).data.buffer).toBe(c.data.buffer);
    expect(b.bytes).toBe(0);
  });

  it('dropUnless keeps only what the next block will take, as many of each size as it takes', () => {
    const b = new CacheBuffers();
    const ts = [b.take('f32', [4]), b.take('f32', [4]), b.take('f32', [4]), b.take('f16', [4]), b.take('f32', [8])];
    b.keep(ts);
    b.dropUnless([{ dtype: 'f32', size: 4 }, { dtype: 'f32', size: 4 }, { dtype: 'f16', size: 8 }]);
    expect(b.bytes).toBe(2 * 16);
    expect(b.take('f32', [4]).data.buffer).toBe(ts[0]!.data.buffer);
    expect(b.take('f32', [2, 2]).data.buffer).toBe(ts[1]!.data.buffer);
    expect(b.take('f32', [4]).data.buffer).not.toBe(ts[2]!.data.buffer);
  });
});

const prompts = fixturePrompts();
const all = prompts.map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));

async function generate(model: Awaited<ReturnType<typeof loadModel>>, requests: typeof all, params: object): Promise<GenerationResult[]> {
  const out: GenerationResult[] = [];
  for await (const r of model.generate(requests, { maxNewTokens: 6, logprobs: true, stopAtEos: false, ...params })) {
    if ('error' in r) throw new Error(r.error);
    out.push(r);
  }
  return out;
}

// Calls on one loaded model, each one block of `rows` rows per batch (a block reuses the last
// one's buffers when its rows are the same and its longest sequence fits the last one's
// capacity): the same shape twice (the second reuses every buffer, left dirty by the first), a
// shorter block of one batch (the last one's capacity, half its buffers), other rows (nothing
// reused, nothing stale kept), and the first shape after it. Each equals the same call on a
// freshly loaded model, which sizes every block afresh.
const [p0, p1, p2, p3] = all as [typeof all[0], typeof all[0], typeof all[0], typeof all[0]];
const calls: { requests: typeof all; params: object; reuses: boolean }[] = [
  { requests: [p0, p1, p2, p3], params: { batchSize: 2, numGpuBatches: 2 }, reuses: false },
  { requests: [p0, p1, p2, p3], params: { batchSize: 2, numGpuBatches: 2 }, reuses: true },
  { requests: [p0, p1], params: { batchSize: 2, numGpuBatches: 2 }, reuses: true },
  { requests: [p0, p1], params: { batchSize: 1, numGpuBatches: 2 }, reuses: false },
  { requests: [p0, p1, p2, p3], params: { batchSize: 2, numGpuBatches: 2 }, reuses: false },
];

describe('a model reusing its KV cache buffers between blocks', () => {
  const cases: [string, string, Partial<Policy>, boolean][] = [
    ['llama-tiny', 'f32 cache in RAM', { cacheDtype: 'f32' }, false],
    ['llama-tiny', 'bf16: f16 cache', { precision: 'bf16' }, false],
    ['opt-tiny', '4-bit cache', { compressCache: true }, false],
    ['llama3-tiny', 'f16 cache, 55% in RAM', { cacheDtype: 'f16', cacheCpuPercent: 55 }, true],
    ['opt-tiny', 'cache on disk', { cacheCpuPercent: 0 }, true],
  ];
  for (const [name, what, policy, disk] of cases) {
    it(`${name}, ${what}: every call gives what a fresh model gives`, async () => {
      const dir = path.join(fixturesDir, name);
      const open = () => loadModel(dir, { policy, ...(disk ? { diskDir: tmpDir('cache-reuse') } : {}) });
      const model = await open();
      try {
        let reused = 0;
        for (const [i, c] of calls.entries()) {
          const got = await generate(model, c.requests, c.params);
          const fresh = await open();
          try {
            expect(got, `call ${i}`).toEqual(await generate(fresh, c.requests, c.params));
          } finally {
            await fresh.close();
          }
          const { keptCacheBytes, io } = model.placement;
          const inRam = policy.cacheCpuPercent !== 0;
          expect(keptCacheBytes > 0, `call ${i} keeps its cache`).toBe(inRam);
          expect(io.cacheBytesReused > reused, `call ${i} reuses`).toBe(c.reuses && inRam);
          // The same shape again takes every buffer the last call kept.
          if (i === 1 && inRam) expect(io.cacheBytesReused - reused).toBe(keptCacheBytes);
          reused = io.cacheBytesReused;
        }
      } finally {
        await model.close();
      }
      expect(model.placement.keptCacheBytes).toBe(0);
    });
  }
});
