// Prompt scoring (request.promptLogprobs, what OpenAI completions' `echo` with `logprobs` gives
// and evaluation suites compute log-likelihoods with): each prompt token's log-probability given
// the tokens before it. Checked against the float64 references: a prompt followed by its
// reference's greedy tokens scores those tokens with the reference's log-probabilities. Scores do
// not depend on batching, prompt chunks, placement or the sample count.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import type { GenerationRequest, GenerationResult } from '../src/engine/requests.js';
import type { Policy } from '../src/policy/policy.js';
import { type Reference, fixtureModels, fixturePrompts, readJsonl, tmpDir } from './helpers/fixtures.js';
import { cli } from './helpers/cli.js';

const models = fixtureModels();
const prompts = fixturePrompts();

async function run(dir: string, requests: GenerationRequest[], params: Record<string, unknown> = {}, policy: Partial<Policy> = {}, diskDir?: string): Promise<GenerationResult[]> {
  const model = await loadModel(dir, { policy, diskDir });
  const out: GenerationResult[] = [];
  try {
    for await (const r of model.generate(requests, { maxNewTokens: 1, logprobs: true, stopAtEos: false, ...params })) {
      if ('error' in r) throw new Error(r.error);
      out.push(r);
    }
  } finally {
    await model.close();
  }
  return out;
}

/** Each fixture prompt followed by all but the last of its reference's tokens. */
function scored(ref: Reference[], k = 2): GenerationRequest[] {
  return ref.map((r) => {
    const p = prompts.find((x) => x.id === r.id)!.prompt_token_ids;
    return { id: r.id, promptTokenIds: [...p, ...r.token_ids.slice(0, -1)], promptLogprobs: k };
  });
}

describe('prompt log-probabilities', () => {
  for (const [name, dir] of models) {
    it(`${name}: a prompt's continuation scores the reference's log-probabilities within 2e-3`, async () => {
      const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
      const got = await run(dir, scored(ref), { batchSize: 5 });
      for (const r of ref) {
        const g = got.find((x) => x.id === r.id)!;
        const plen = prompts.find((x) => x.id === r.id)!.prompt_token_ids.length;
        const n = plen + r.token_ids.length - 1;
        expect(g.promptLogprobs, `${name} ${r.id}`).toHaveLength(n);
        expect(g.promptLogprobs![0]).toBeNull();
        expect(g.promptTopLogprobs![0]).toBeNull();
        for (let j = 0; j + 1 < r.token_ids.length; j++) {
          expect(Math.abs(g.promptLogprobs![plen + j]! - r.logprobs[j]!), `${name} ${r.id} token ${j}`).toBeLessThan(2e-3);
          // the greedy token is the most likely one, unless the reference had a near tie there
          const top = g.promptTopLogprobs![plen + j]!;
          expect(top).toHaveLength(2);
          expect(top[0]!.logprob).toBeGreaterThanOrEqual(top[1]!.logprob);
          if (r.gaps[j]! > 1e-3) expect(top[0]!.token, `${name} ${r.id} top ${j}`).toBe(r.token_ids[j]);
        }
        // the first new token is the reference's last, as generated
        expect(g.tokenIds).toEqual([r.token_ids.at(-1)]);
        expect(Math.abs(g.logprobs![0]! - r.logprobs.at(-1)!)).toBeLessThan(2e-3);
        // every place is a log-probability, and the scored token's is among the top when it is first
        for (const lp of g.promptLogprobs!.slice(1)) expect(lp!).toBeLessThanOrEqual(0);
      }
    });
  }

  const [, opt] = models.find(([n]) => n === 'opt-tiny')!;
  const [, llama] = models.find(([n]) => n === 'llama-tiny')!;

  it('are the same batched or alone, in any prompt chunks, with any batch size (scored in chunks of the batch)', async () => {
    for (const dir of [opt, llama]) {
      const ref = readJsonl<Reference>(path.join(dir, 'reference.jsonl'));
      const reqs = scored(ref, 3);
      const base = await run(dir, reqs, { batchSize: 5 });
      const pick = (rs: GenerationResult[]) => rs.map((r) => [r.id, r.promptLogprobs, r.promptTopLogprobs]);
      for (const params of [{ batchSize: 1 }, { batchSize: 2, numGpuBatches: 3 }, { batchSize: 5, prefillChunk: 3 }, { batchSize: 3, prefillChunk: 7 }]) {
        const got = await run(dir, reqs, params);
        const a = pick(got), b = pick(base);
        // (the head over a chunk of rows gives each row what it gives alone, up to rounding)
        a.forEach((x, i) => {
          expect(x[0]).toBe(b[i]![0]);
          const [la, lb] = [x[1] as number[], b[i]![1] as number[]];
          expect(la.length, JSON.stringify(params)).toBe(lb.length);
          la.forEach((v, j) => (j === 0 ? expect(v).toBeNull() : expect(Math.abs(v - lb[j]!), `${JSON.stringify(params)} ${x[0]} ${j}`).toBeLessThan(1e-5)));
          const [ta, tb] = [x[2] as { token: number }[][], b[i]![2] as { token: number }[][]];
          expect(ta.map((t) => t?.map((e) => e.token) ?? null)).toEqual(tb.map((t) => t?.map((e) => e.token) ?? null));
        });
      }
    }
  });

  it('are the same with weights, cache and activations on disk', async () => {
    const ref = readJsonl<Reference>(path.join(llama, 'reference.jsonl'));
    const reqs = scored(ref, 1);
    const plain = await run(llama, reqs, { batchSize: 2, numGpuBatches: 2 });
    const off = await run(llama, reqs, { batchSize: 2, numGpuBatches: 2 },
      { wGpuPercent: 0, wCpuPercent: 0, cacheGpuPercent: 0, cacheCpuPercent: 0, actGpuPercent: 0, actCpuPercent: 0 }, tmpDir('score-disk'));
    expect(off.map((r) => r.promptLogprobs)).toEqual(plain.map((r) => r.promptLogprobs));
  });

  it('come once per request whatever n is, beside generated logprobs; absent unless asked; 0 gives no alternatives', async () => {
    const p = prompts[2]!.prompt_token_ids;
    const [one, many, none, zero] = await run(opt, [
      { id: 'one', promptTokenIds: p, promptLogprobs: 1 },
      { id: 'many', promptTokenIds: p, promptLogprobs: 1, n: 3, sampling: { temperature: 1, seed: 3 } },
      { id: 'none', promptTokenIds: p },
      { id: 'zero', promptTokenIds: p, promptLogprobs: 0 },
    ], { maxNewTokens: 3 });
    expect(many!.samples).toHaveLength(3);
    expect(many!.promptLogprobs).toEqual(one!.promptLogprobs);
    expect(one!.promptLogprobs).toHaveLength(p.length);
    expect(none!.promptLogprobs).toBeUndefined();
    expect(none!.promptTopLogprobs).toBeUndefined();
    expect(zero!.promptLogprobs).toEqual(one!.promptLogprobs);
    expect(zero!.promptTopLogprobs).toBeUndefined();
    // a one-token prompt has nothing to score but its first place
    const [single] = await run(opt, [{ id: 's', promptTokenIds: [7], promptLogprobs: 2 }]);
    expect(single!.promptLogprobs).toEqual([null]);
  });

  it('refuses a count outside [0, 20], naming the field', async () => {
    const got = await loadModel(opt).then(async (m) => {
      const out = [];
      for await (const r of m.generate([{ id: 'a', promptTokenIds: [5, 6], promptLogprobs: 21 }, { id: 'b', promptTokenIds: [5, 6], promptLogprobs: 1.5 }])) out.push(r);
      await m.close();
      return out;
    });
    expect(got).toEqual([
      { id: 'a', error: '"promptLogprobs" must be an integer in [0, 20]' },
      { id: 'b', error: '"promptLogprobs" must be an integer in [0, 20]' },
    ]);
  });

  it('tierlm generate: a line\'s prompt_logprobs gives the result line prompt_logprobs and prompt_top_logprobs; a bad one is an error line naming it', async () => {
    const dir = tmpDir('score-cli');
    const input = path.join(dir, 'in.jsonl'), out = path.join(dir, 'out.jsonl');
    fs.writeFileSync(input, [
      { id: 'a', prompt_token_ids: [5, 9, 13, 2], prompt_logprobs: 2, max_new_tokens: 2 },
      { id: 'b', prompt_token_ids: [5, 9], prompt_logprobs: 'yes' },
      { id: 'c', prompt_token_ids: [5, 9, 13, 2], max_new_tokens: 2 },
    ].map((l) => JSON.stringify(l)).join('\n') + '\n');
    const r = cli(['generate', '--model', opt, '--prompts', input, '--out', out, '--ignore-eos']);
    // (2: a request failed, the others answered)
    expect(r.code, r.stderr).toBe(2);
    const lines = new Map(readJsonl<{ id: string; [k: string]: unknown }>(out).map((l) => [l.id, l]));
    const [lib] = await run(opt, [{ id: 'a', promptTokenIds: [5, 9, 13, 2], promptLogprobs: 2 }], { maxNewTokens: 2, logprobs: false });
    expect(lines.get('a')).toMatchObject({ prompt_logprobs: lib!.promptLogprobs, prompt_top_logprobs: lib!.promptTopLogprobs, token_ids: lib!.tokenIds });
    expect(lines.get('b')!.error).toMatch(/in\.jsonl:2: prompt_logprobs must be an integer in \[0, 20\], got "yes"/);
    expect(lines.get('c')).not.toHaveProperty('prompt_logprobs');
  });
});
