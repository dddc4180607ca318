// The offloading engine: every placement (all in RAM, all on disk, mixed, cache on disk,
// activations on disk) and every schedule produces the same tokens as the plain run.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import type { Policy } from '../src/policy/policy.js';
import type { GenerationResult } from '../src/engine/requests.js';
import { fixturePrompts, fixturesDir, tmpDir, readJsonl, type Reference } from './helpers/fixtures.js';

const prompts = fixturePrompts();
const requests = prompts.map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));

async function run(dir: string, policy: Partial<Policy>, diskDir?: string, params = {}, backend: 'cpu' | 'reference' = 'cpu'): Promise<GenerationResult[]> {
  const model = await loadModel(dir, { policy, diskDir, backend });
  const out: GenerationResult[] = [];
  try {
    for await (const r of model.generate(requests, { maxNewTokens: 8, logprobs: true, stopAtEos: false, ...params })) {
      if ('error' in r) throw new Error(r.error);
      out.push(r);
    }
  } finally {
    await model.close();
  }
  return out;
}

const placements: [string, Partial<Policy>][] = [
  ['all on disk', { wGpuPercent: 0, wCpuPercent: 0, cacheGpuPercent: 0, cacheCpuPercent: 0, actGpuPercent: 0, actCpuPercent: 0 }],
  ['weights mixed 30/40/30', { wGpuPercent: 30, wCpuPercent: 40 }],
  ['cache on disk', { cacheCpuPercent: 0 }],
  ['cache split 55%', { cacheCpuPercent: 55 }],
  ['activations on disk', { actCpuPercent: 0 }],
  ['activations split', { actCpuPercent: 37 }],
];

const schedules: [string, Partial<Policy>][] = [
  ['zig-zag with overlap', { schedule: 'zigzag', overlap: true }],
  ['zig-zag without overlap', { schedule: 'zigzag', overlap: false }],
  ['row by row', { schedule: 'row', overlap: false }],
  ['zig-zag, whole layers', { schedule: 'zigzag', sepLayer: false }],
];

describe('offloading gives identical tokens', () => {
  for (const model of ['opt-tiny', 'llama-tiny']) {
    const dir = path.join(fixturesDir, model);
    const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
    it(`${model}: every placement × schedule matches the plain run`, async () => {
      const plain = await run(dir, {}, undefined, { batchSize: 2, numGpuBatches: 3 });
      ref.forEach((r, i) => expect(plain[i]!.tokenIds).toEqual(r.token_ids));
      for (const [pname, placement] of placements) {
        for (const [sname, schedule] of schedules) {
          const disk = tmpDir('offload');
          const got = await run(dir, { ...placement, ...schedule }, disk, { batchSize: 2, numGpuBatches: 3 });
          expect(got, `${model}: ${pname}, ${sname}`).toEqual(plain);
        }
      }
    });
  }

  // qwen2-tiny: GQA with q/k/v biases; llama3-tiny: GQA, explicit head_dim, llama3 rope scaling
  // and a tied head (the embedding is a global weight read by both ends of the pass).
  for (const model of ['qwen2-tiny', 'llama3-tiny']) {
    it(`${model}: mostly on disk, batch 3 × 2, matches the plain run and the reference`, async () => {
      const dir = path.join(fixturesDir, model);
      const plain = await run(dir, {}, undefined, { batchSize: 3, numGpuBatches: 2 });
      readJsonl<Reference>(path.join(dir, 'reference.jsonl')).forEach((r, i) => expect(plain[i]!.tokenIds).toEqual(r.token_ids));
      const got = await run(dir, { wCpuPercent: 10, cacheCpuPercent: 20, actCpuPercent: 50 }, tmpDir(model), { batchSize: 3, numGpuBatches: 2 });
      expect(got).toEqual(plain);
    });
  }

  it('4-bit weights (compress_weight): every placement gives the compressed plain run\'s tokens, with fewer bytes', async () => {
    const dir = path.join(fixturesDir, 'llama-tiny');
    const plain = await run(dir, { compressWeight: true }, undefined, { batchSize: 2, numGpuBatches: 2 });
    for (const placement of [{ wCpuPercent: 0 }, { wCpuPercent: 45, cacheCpuPercent: 30 }]) {
      const got = await run(dir, { compressWeight: true, ...placement }, tmpDir('q4'), { batchSize: 2, numGpuBatches: 2 });
      expect(got).toEqual(plain);
    }
    const full = await loadModel(dir);
    const q4 = await loadModel(dir, { policy: { compressWeight: true } });
    expect(q4.layers.stats.ramBytes).toBeLessThan(0.4 * full.layers.stats.ramBytes);
  });

  it('weights cut inside a packed row block (reference backend, 4-bit) are assembled in the slot, same tokens', async () => {
    // The CPU backend cuts at 32-row panels and multiplies by the two pieces; the reference
    // backend's 4-bit layout cannot be cut by rows, so the resident rows are copied into the slot.
    const dir = path.join(fixturesDir, 'opt-tiny');
    const params = { batchSize: 2, numGpuBatches: 2, maxNewTokens: 4 };
    const plain = await run(dir, { compressWeight: true }, undefined, params, 'reference');
    const got = await run(dir, { compressWeight: true, wCpuPercent: 45 }, tmpDir('q4ref'), params, 'reference');
    expect(got).toEqual(plain);
  });

  it('4-bit KV cache (compress_cache) and sparse attention: every placement gives the plain run\'s tokens', async () => {
    const dir = path.join(fixturesDir, 'opt-tiny');
    for (const base of [{ compressCache: true }, { compressCache: true, compressWeight: true, attnSparsity: 0.5 }, { attnSparsity: 0.3 }] as Partial<Policy>[]) {
      const plain = await run(dir, base, undefined, { batchSize: 2, numGpuBatches: 3 });
      for (const placement of [{ cacheCpuPercent: 0 }, { cacheCpuPercent: 40, wCpuPercent: 50, actCpuPercent: 0 }]) {
        const got = await run(dir, { ...base, ...placement }, tmpDir('q4c'), { batchSize: 2, numGpuBatches: 3 });
        expect(got, JSON.stringify({ ...base, ...placement })).toEqual(plain);
      }
    }
    // Sparsity 1 is dense attention, bit for bit.
    expect(await run(dir, { attnSparsity: 1 })).toEqual(await run(dir, {}));
  });

  it('clear errors when the disk directory is missing, not a directory or not writable', async () => {
    const dir = path.join(fixturesDir, 'opt-tiny');
    const onDisk = { wCpuPercent: 50 };
    await expect(loadModel(dir, { policy: onDisk })).rejects.toThrow(/no disk directory was given/);
    await expect(loadModel(dir, { policy: onDisk, diskDir: '/nonexistent/tierlm' })).rejects.toThrow(/disk directory \/nonexistent\/tierlm does not exist/);
    const file = path.join(tmpDir('notdir'), 'f');
    fs.writeFileSync(file, 'x');
    await expect(loadModel(dir, { policy: onDisk, diskDir: file })).rejects.toThrow(/is not a directory/);
    // A directory that nobody may write, root included (a chmod-ed one would not stop root).
    expect(fs.statSync('/proc/self').isDirectory()).toBe(true);
    await expect(loadModel(dir, { policy: onDisk, diskDir: '/proc/self' })).rejects.toThrow(/disk directory \/proc\/self is not writable/);
    await expect(loadModel(dir, { policy: onDisk, diskDir: path.join(file, 'sub') })).rejects.toThrow(/does not exist|not a directory/);
  });
});
