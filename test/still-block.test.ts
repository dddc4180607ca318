// A block with nothing to move (weights, KV cache and activations all in RAM) runs the zig-zag
// order without transfers (src/schedule/runner.ts, computeInPlace): no weight load, no promise per
// unit. Anything on disk must still take the transfer schedule, and both must give the same
// tokens and log-probabilities, under either schedule and with several batches.
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { loadModel } from '../src/index.js';
import type { Policy } from '../src/policy/policy.js';
import type { GenerationResult } from '../src/engine/requests.js';
import { fixturePrompts, fixturesDir, tmpDir } from './helpers/fixtures.js';

const requests = fixturePrompts().map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));

async function run(name: string, policy: Partial<Policy>, disk: boolean): Promise<{ out: GenerationResult[]; loads: number; store: string }> {
  const model = await loadModel(path.join(fixturesDir, name), { policy, ...(disk ? { diskDir: tmpDir('still-block') } : {}) });
  try {
    const load = vi.spyOn(model.layers, 'load');
    const out: GenerationResult[] = [];
    for await (const r of model.generate(requests, { maxNewTokens: 5, logprobs: true, stopAtEos: false, batchSize: 2, numGpuBatches: 2 })) {
      if ('error' in r) throw new Error(r.error);
      out.push(r);
    }
    return { out, loads: load.mock.calls.length, store: model.layers.constructor.name };
  } finally {
    await model.close();
  }
}

describe('a block with nothing to move', () => {
  for (const name of ['opt-tiny', 'llama-tiny']) {
    it(`${name}: runs without weight loads, and gives what the transfer schedule gives`, async () => {
      const still = await run(name, {}, false);
      expect(still.loads).toBe(0);
      const row = await run(name, { schedule: 'row' }, false);
      expect(row.loads).toBe(0);
      expect(row.out).toEqual(still.out);
      // A disk share too small to put a byte of any weight on disk: the packed weight file's
      // store, wholly resident, is still.
      const packed = await run(name, { wCpuPercent: 99.9999 }, true);
      expect([packed.store, packed.loads]).toEqual(['WeightStore', 0]);
      expect(packed.out).toEqual(still.out);
      // Each of these moves something, so each runs the transfer schedule.
      const moving: [string, Partial<Policy>][] = [
        ['weights half on disk', { wCpuPercent: 50 }],
        ['cache on disk', { cacheCpuPercent: 0 }],
        ['activations on disk', { actCpuPercent: 0 }],
        ['cache on disk, row by row', { cacheCpuPercent: 0, schedule: 'row' }],
      ];
      for (const [what, policy] of moving) {
        const r = await run(name, policy, true);
        expect(r.loads, what).toBeGreaterThan(0);
        expect(r.out, what).toEqual(still.out);
      }
    });
  }
});
