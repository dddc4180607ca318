// A property test over the policy space: random placements (RAM, disk, mixed) of weights, cache
// and activations, block shapes with short last blocks, mixed prompt lengths, token limits that
// reach the model's position limit, stop tokens, overlap, sep-layer, row and zig-zag, compressed
// weights and cache. Every request must get exactly the tokens it gets when run alone in RAM
// (with the same compression). The seed is random per run and printed with every failure;
// TIERLM_PROPERTY_SEED=N reruns one, TIERLM_PROPERTY_CASES=N changes the count.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LanguageModel } from '../src/index.js';
import type { GenerateParams } from '../src/engine/generate.js';
import type { GenerationRequest, GenerationResult } from '../src/engine/requests.js';
import type { Policy } from '../src/policy/policy.js';
import { tmpDir } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';
import { PropertyModels, type Rand, int, pick, randomPlacement } from './helpers/policy-space.js';

const SEED = Number(process.env.TIERLM_PROPERTY_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CASES = Number(process.env.TIERLM_PROPERTY_CASES ?? 200);

const work = tmpDir('properties');
const models = new PropertyModels(work);
const MODELS = models.models;

interface Case {
  model: string;
  policy: Partial<Policy>;
  params: Partial<GenerateParams>;
  requests: GenerationRequest[];
}

/** Tokens the models often produce (filled in beforeAll), so that stop tokens do stop things. */
const frequent: Record<string, number[]> = {};

function makeCase(r: Rand, index: number): Case {
  const model = pick(r, Object.keys(MODELS));
  const m = MODELS[model]!;
  const schedule = r() < 0.25 ? 'row' : 'zigzag';
  const policy: Partial<Policy> = {
    ...randomPlacement(r),
    gpuBatchSize: int(r, 1, 4), numGpuBatches: int(r, 1, 5), schedule, overlap: r() < 0.7, sepLayer: r() < 0.5,
    compressWeight: r() < 0.25, compressCache: r() < 0.25,
  };
  const block = policy.gpuBatchSize! * policy.numGpuBatches!;
  // Often a whole block or two plus a short last one.
  const count = r() < 0.5 ? int(r, 1, 2 * block + 1) : block * int(r, 1, 2) + int(r, 1, Math.max(1, block - 1));
  const requests = Array.from({ length: count }, (_, i): GenerationRequest => ({
    id: `c${index}-r${i}`,
    promptTokenIds: Array.from({ length: int(r, 1, r() < 0.2 ? m.maxPositions - 2 : 30) }, () => int(r, 3, m.vocab - 1)),
  }));
  const maxNewTokens = pick(r, [1, 2, 5, 9, 200]);
  const stops = frequent[model]!;
  const params: Partial<GenerateParams> = {
    maxNewTokens,
    stopTokenIds: r() < 0.4 ? [pick(r, stops), pick(r, stops)] : [],
    stopAtEos: r() < 0.5,
    // (drawn either way, so that the cases after it stay the same; a compressed cache takes none)
    cacheDtype: ((d) => (policy.compressCache ? undefined : d))(pick(r, ['f32', 'f16'] as const)),
    logprobs: true,
    sampling: r() < 0.3 ? { temperature: 0.8, topK: 0, topP: 1, seed: int(r, 0, 1000) } : { temperature: 0, topK: 0, topP: 1, seed: 0 },
  };
  return { model, policy, params, requests };
}

const aloneCache = new Map<string, GenerationResult>();

async function collect(model: LanguageModel, requests: GenerationRequest[], params: Partial<GenerateParams>): Promise<GenerationResult[]> {
  const out: GenerationResult[] = [];
  for await (const r of model.generate(requests, params)) {
    if ('error' in r) throw new Error(`${r.id}: ${r.error}`);
    out.push(r);
  }
  return out;
}

/** The request run alone (a batch of one) in RAM. */
async function alone(c: Case, req: GenerationRequest): Promise<GenerationResult> {
  const key = JSON.stringify([c.model, c.policy.compressWeight, c.policy.compressCache, c.params, req]);
  let res = aloneCache.get(key);
  if (!res) {
    const model = await models.ram(c.model, c.policy);
    [res] = await collect(model, [req], { ...c.params, batchSize: 1, numGpuBatches: 1 });
    aloneCache.set(key, res!);
  }
  return res!;
}

describe(`every policy gives each request its tokens alone (seed ${SEED})`, () => {
  beforeAll(async () => {
    models.prepare();
    for (const name of Object.keys(MODELS)) {
      const r = rng(SEED ^ 0x5eed);
      const requests = Array.from({ length: 4 }, (_, i) => ({ id: `f${i}`, promptTokenIds: [int(r, 3, MODELS[name]!.vocab - 1)] }));
      const got = await collect(await models.ram(name, {}), requests, { maxNewTokens: 12, stopAtEos: false });
      frequent[name] = got.flatMap((g) => g.tokenIds);
    }
  });

  afterAll(async () => {
    await models.close();
  });

  const r = rng(SEED);
  for (let i = 0; i < CASES; i++) {
    const caseSeed = Math.floor(r() * 2 ** 31);
    it(`case ${i} (case seed ${caseSeed})`, async () => {
      const c = makeCase(rng(caseSeed), i);
      const what = `seed ${SEED}, case ${i}: ${JSON.stringify({ model: c.model, policy: c.policy, params: c.params, prompts: c.requests.map((q) => q.promptTokenIds!.length) })}`;
      const disk = path.join(work, `case-${i}`);
      fs.mkdirSync(disk);
      const model = await loadModel(MODELS[c.model]!.dir, { policy: c.policy, diskDir: disk });
      let got: GenerationResult[];
      try {
        got = await collect(model, c.requests, c.params);
      } finally {
        await model.close();
        fs.rmSync(disk, { recursive: true, force: true });
      }
      expect(got.map((g) => g.id), what).toEqual(c.requests.map((q) => q.id));
      for (let q = 0; q < c.requests.length; q++) {
        const want = await alone(c, c.requests[q]!);
        expect(got[q], `${what}\nrequest ${c.requests[q]!.id}`).toEqual(want);
      }
    });
  }
});
