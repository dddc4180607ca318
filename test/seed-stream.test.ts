// A sample's random stream is its seed and its request's seedKey (default the id): the CLI's
// --prompt rerun into the same results file (id "prompt-2") and a prompt at any place of an API
// `prompt` list give the same tokens for the same seed; requests and samples still differ where
// their keys do.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onePromptRequest } from '../src/cli/generate.js';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import type { GenerationRequest, GenerationResult, RequestError } from '../src/engine/requests.js';
import { type Engine, check, engineFor } from '../src/openai/complete.js';
import { tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

let model: LanguageModel;
let engine: Engine;

beforeAll(async () => {
  model = await loadModel(tinyChatModel(tmpDir('seed-stream')), { policy: { gpuBatchSize: 4, numGpuBatches: 1 } });
  engine = engineFor(model, 'tiny');
});

afterAll(async () => {
  await model?.close();
});

const SAMPLING = { temperature: 1, seed: 3 };

/** Every sample's tokens of each request, run together in one call. */
async function run(reqs: GenerationRequest[]): Promise<number[][][]> {
  const out = new Map<string, GenerationResult | RequestError>();
  for await (const r of model.generate(reqs, { maxNewTokens: 8, stopAtEos: false })) out.set(r.id, r);
  return reqs.map((q) => {
    const r = out.get(q.id)!;
    if ('error' in r) throw new Error(`request ${q.id}: ${r.error}`);
    return (r.samples ?? [r]).map((s) => s.tokenIds);
  });
}

/** A completions body's samples, per prompt, as the server runs them (translate, then submit). */
async function completions(body: Record<string, unknown>): Promise<number[][][]> {
  const p = await check(engine, '/v1/completions', { model: 'tiny', max_tokens: 8, ...body });
  const results = await Promise.all(p.requests.map((r) => engine.scheduler.submit(r)));
  return results.map((r) => {
    if ('error' in r) throw new Error(r.error);
    return (r.samples ?? [r]).map((s) => s.tokenIds);
  });
}

describe('seed streams', () => {
  it('a prompt gives the same tokens with a seed alone or second in a prompt list', async () => {
    const [alone] = await completions({ prompt: 'The cat', seed: 3, temperature: 1 });
    const [first, second] = await completions({ prompt: ['Hello', 'The cat'], seed: 3, temperature: 1 });
    expect(second).toEqual(alone);
    expect(first).not.toEqual(alone);
  });

  it('n > 1: each sample keeps its own stream, in a list as alone', async () => {
    const [alone] = await completions({ prompt: 'The cat', seed: 3, temperature: 1, n: 2 });
    const [, second] = await completions({ prompt: ['Hello', 'The cat'], seed: 3, temperature: 1, n: 2 });
    expect(alone![0]).not.toEqual(alone![1]);
    expect(second).toEqual(alone);
  });

  it('the CLI --prompt request draws the same tokens whatever id it is written under', async () => {
    const o = { prompt: 'Hello world' };
    const [a, b] = [onePromptRequest(o, 'prompt'), onePromptRequest(o, 'prompt-2')];
    expect(b.id).toBe('prompt-2');
    const [ta, tb] = await run([{ ...a, sampling: SAMPLING }, { ...b, sampling: SAMPLING }]);
    expect(tb).toEqual(ta);
  });

  it('without a seedKey the id picks the stream; equal seedKeys draw alike', async () => {
    const req = (id: string, seedKey?: string): GenerationRequest => ({ id, prompt: 'The cat', sampling: SAMPLING, ...(seedKey !== undefined ? { seedKey } : {}) });
    const [a, b, c, d] = await run([req('a'), req('b'), req('c', 'k'), req('d', 'k')]);
    expect(b).not.toEqual(a);
    expect(d).toEqual(c);
    expect(c).not.toEqual(a);
  });

  it('a seedKey that is not a string is refused, naming the field', async () => {
    const bad = { id: 'x', prompt: 'The cat', seedKey: 5 } as unknown as GenerationRequest;
    const out: (GenerationResult | RequestError)[] = [];
    for await (const r of model.generate([bad], { maxNewTokens: 2 })) out.push(r);
    expect(out).toEqual([{ id: 'x', error: '"seedKey" must be a string, not 5' }]);
  });
});
