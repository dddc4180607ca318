// The continuous engine between callers: a generate() iterator dropped in the middle (never
// finished, never return()ed) gives the runner up to the scheduler instead of holding it forever,
// and its sequences, computed again later, get the same tokens; a mixed step's time is split
// between prefill and decode.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GenerateStats, type GenerationRequest, type GenerationResult, type LanguageModel, type RequestError, loadModel } from '../src/index.js';
import { fixturesDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');

async function all(it: AsyncIterable<GenerationResult | RequestError>): Promise<(GenerationResult | RequestError)[]> {
  const out: (GenerationResult | RequestError)[] = [];
  for await (const r of it) out.push(r);
  return out;
}

describe('continuous engine between callers', () => {
  let model: LanguageModel;
  beforeAll(async () => {
    model = await loadModel(opt);
  });
  afterAll(async () => model?.close());

  // The first request finishes early; the others are mid-decode when its result is yielded.
  const reqs: GenerationRequest[] = [4, 20, 25, 30].map((n, i) => ({ id: `r${i}`, promptTokenIds: [5 + i, 6, 7 + i], maxNewTokens: n }));
  const params = { stopAtEos: false, batchSize: 2, numGpuBatches: 2 };

  it('an abandoned generate() iterator lets the scheduler run; resumed later, its results are unchanged', async () => {
    const want = await all(model.generate(reqs, params));
    const it = model.generate(reqs, params);
    const first = await it.next();
    expect(first.value).toEqual(want[0]);
    // The iterator now holds a block with running sequences and is not driven: the scheduler
    // must still serve (before the fix this waited for the runner lock forever).
    const s = model.scheduler({ maxNewTokens: 3, stopAtEos: false });
    const served = (await s.submit({ id: 'x', promptTokenIds: [9, 8, 7] })) as GenerationResult;
    expect(served.tokenIds.length).toBe(3);
    const rest: (GenerationResult | RequestError)[] = [];
    for (let r = await it.next(); !r.done; r = await it.next()) rest.push(r.value);
    expect(rest).toEqual(want.slice(1));
  });

  it('a mixed step counts its decode tokens as decode time', async () => {
    // r0 decodes while r1's 15-token prompt goes in one token per step, and finishes before it:
    // every step holds prompt tokens, some decode ones too.
    const stats = {} as GenerateStats;
    const mixed: GenerationRequest[] = [
      { id: 'a', promptTokenIds: [5], maxNewTokens: 5 },
      { id: 'b', promptTokenIds: Array.from({ length: 15 }, (_, i) => 3 + i), maxNewTokens: 1 },
    ];
    const got = await all(model.generate(mixed, { stopAtEos: false, batchSize: 2, numGpuBatches: 1, prefillChunk: 1 }, stats));
    expect(got.map((r) => (r as GenerationResult).tokenIds.length)).toEqual([5, 1]);
    expect(stats.decodeSeconds).toBeGreaterThan(0);
    expect(stats.prefillSeconds).toBeGreaterThan(stats.decodeSeconds);
  });
});
