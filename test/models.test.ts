// Every fixture model reproduces its float64 reference: every greedy token, and each token's
// log-probability within 2e-3. Batched generation equals one prompt at a time.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import type { GenerationResult } from '../src/engine/requests.js';
import { type Reference, fixtureModels, fixturePrompts, readJsonl } from './helpers/fixtures.js';
import path from 'node:path';

const models = fixtureModels();
const prompts = fixturePrompts();
const requests = prompts.map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));

async function run(dir: string, batchSize: number, precision: 'fp32' | 'bf16' = 'fp32', cacheDtype: 'f32' | 'f16' = 'f32'): Promise<GenerationResult[]> {
  const model = await loadModel(dir, { precision });
  const out: GenerationResult[] = [];
  for await (const r of model.generate(requests, { maxNewTokens: 8, logprobs: true, stopAtEos: false, batchSize, cacheDtype })) {
    if ('error' in r) throw new Error(r.error);
    out.push(r);
  }
  return out;
}

describe('fixture models reproduce their float64 references', () => {
  it('finds the shared fixtures and our own', () => {
    expect(models.map(([n]) => n)).toEqual(expect.arrayContaining(['opt-tiny', 'llama-tiny', 'qwen2-tiny', 'opt-350m-style', 'opt-unprefixed', 'mistral-tiny', 'llama-headdim', 'opt-sharded']));
  });

  for (const [name, dir] of models) {
    it(`${name}: tokens exact, logprobs within 2e-3, batched = unbatched`, async () => {
      const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
      const batched = await run(dir, 5);
      for (const r of ref) {
        const got = batched.find((b) => b.id === r.id)!;
        expect(got.tokenIds, `${name} ${r.id} tokens`).toEqual(r.token_ids);
        got.logprobs!.forEach((lp, i) => expect(Math.abs(lp - r.logprobs[i]!), `${name} ${r.id} logprob ${i}`).toBeLessThan(2e-3));
      }
      const single = await run(dir, 1);
      expect(single).toEqual(batched);
    });
  }

  it('an f16 KV cache keeps the greedy tokens of llama-tiny', async () => {
    const dir = models.find(([n]) => n === 'llama-tiny')![1];
    const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
    const got = await run(dir, 5, 'fp32', 'f16');
    ref.forEach((r, i) => expect(got[i]!.tokenIds).toEqual(r.token_ids));
  });
});
