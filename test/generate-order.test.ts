// The order of generate()'s results (params.order). In input order a long first request holds
// back the results after it, so reading ahead stops once backlogCap requests wait: memory stays
// bounded. In finish order each result comes as soon as its request finishes.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/index.js';
import { backlogCap, type GenerateOrder } from '../src/engine/generate.js';
import type { GenerationRequest, GenerationResult } from '../src/engine/requests.js';
import { fixturesDir } from './helpers/fixtures.js';

const SLOTS = 2;
// One slot runs the head while the other answers a short request per step: all SHORT of them
// finish before the head, and unbounded read-ahead would take every one (past backlogCap).
const HEAD_TOKENS = 150;
const SHORT = 100;

let model: LanguageModel;
beforeAll(async () => {
  model = await loadModel(path.join(fixturesDir, 'llama-tiny'));
});
afterAll(async () => {
  await model.close();
});

/** Runs a long first request and SHORT one-token ones; returns the results in the order they
 *  came, and the most requests read from the input and not yet yielded at any result. */
async function run(order: GenerateOrder): Promise<{ ids: string[]; results: GenerationResult[]; maxOutstanding: number }> {
  let reads = 0;
  function* requests(): Generator<GenerationRequest> {
    reads++;
    yield { id: 'head', promptTokenIds: [5], maxNewTokens: HEAD_TOKENS };
    for (let i = 0; i < SHORT; i++) {
      reads++;
      yield { id: `s${i}`, promptTokenIds: [7 + (i % 50), 9] };
    }
  }
  const results: GenerationResult[] = [];
  let maxOutstanding = 0;
  const params = { maxNewTokens: 1, stopAtEos: false, batchSize: SLOTS, numGpuBatches: 1, order };
  for await (const r of model.generate(requests(), params)) {
    if ('error' in r) throw new Error(`${r.id}: ${r.error}`);
    maxOutstanding = Math.max(maxOutstanding, reads - results.length);
    results.push(r);
  }
  return { ids: results.map((r) => r.id), results, maxOutstanding };
}

describe('generate() order', () => {
  it("'finish': short requests come before a long first one, with the tokens input order gives", async () => {
    const finish = await run('finish');
    const input = await run('input');
    expect(finish.ids.at(-1)).toBe('head');
    expect(finish.ids.slice(0, SHORT)).toEqual(Array.from({ length: SHORT }, (_, i) => `s${i}`));
    expect(input.ids).toEqual(['head', ...finish.ids.slice(0, SHORT)]);
    const byId = (rs: GenerationResult[]) => Object.fromEntries(rs.map((r) => [r.id, r]));
    expect(byId(finish.results)).toEqual(byId(input.results));
    expect(finish.results.find((r) => r.id === 'head')!.tokenIds).toHaveLength(HEAD_TOKENS);
  });

  it("'input' (the default): while the first request runs, at most backlogCap requests are read ahead", async () => {
    const { ids, maxOutstanding } = await run('input');
    expect(ids).toEqual(['head', ...Array.from({ length: SHORT }, (_, i) => `s${i}`)]);
    // Unbounded, the read-ahead took a request per step of the head's: all SHORT of them.
    expect(backlogCap(SLOTS)).toBe(64);
    expect(maxOutstanding).toBeLessThanOrEqual(backlogCap(SLOTS));
    expect(maxOutstanding).toBeGreaterThan(SLOTS);
  });

  it('an order that is neither is refused, naming the option', () => {
    expect(() => model.generate([], { order: 'random' as GenerateOrder })).toThrow(/order must be "input" or "finish", got "random"/);
  });
});
