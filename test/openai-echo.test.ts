// Completions' `echo`: the prompt's text before the completion's, and with `logprobs` each prompt
// token's log-probability (null for the first) before the completion's — how evaluation suites
// (lm-evaluation-harness's local-completions, OpenAI's legacy evals) score a continuation: a
// prompt and its continuation sent with echo, the continuation's tokens' logprobs summed. So the
// scores must be the ones the model gives those tokens when it generates them.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { type Engine, complete, engineFor } from '../src/openai/complete.js';
import { ApiError } from '../src/openai/errors.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

let model: LanguageModel;
let engine: Engine;

beforeAll(async () => {
  model = await loadModel(tinyChatModel(tmpDir('echo')), { policy: { gpuBatchSize: 3, numGpuBatches: 1 } });
  engine = engineFor(model, 'tiny');
});

afterAll(async () => {
  await model?.close();
});

type Logprobs = { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[] | null; text_offset: number[] };
type Choice = { index: number; text: string; finish_reason: string; logprobs: Logprobs | null };
type Body = { choices: Choice[]; usage: { prompt_tokens: number; completion_tokens: number } };

const run = async (body: object) => (await complete(engine, '/v1/completions', { model: 'tiny', temperature: 0, ...body }, { priority: 'interactive' })) as Body;

async function refusal(body: object): Promise<{ param: string | null; message: string }> {
  try {
    await complete(engine, '/v1/completions', { model: 'tiny', ...body }, { priority: 'interactive' });
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    return { param: (e as ApiError).param ?? null, message: (e as Error).message };
  }
  throw new Error('not refused');
}

describe('completions with echo', () => {
  it('a text prompt: its text, then the completion, and logprobs for both', async () => {
    const prompt = 'The capital of France is';
    const plain = (await run({ prompt, max_tokens: 4, logprobs: 2 })).choices[0]!;
    const body = await run({ prompt, max_tokens: 4, logprobs: 2, echo: true });
    const c = body.choices[0]!;
    const P = body.usage.prompt_tokens;
    expect(c.text).toBe(prompt + plain.text);
    expect(c.finish_reason).toBe(plain.finish_reason);
    const lp = c.logprobs!;
    expect(lp.tokens).toHaveLength(P + plain.logprobs!.tokens.length);
    expect(lp.token_logprobs[0]).toBeNull();
    expect(lp.top_logprobs![0]).toBeNull();
    for (let i = 1; i < P; i++) {
      expect(lp.token_logprobs[i]).toBeLessThanOrEqual(0);
      expect(Object.keys(lp.top_logprobs![i]!).length).toBeGreaterThanOrEqual(1);
    }
    // the completion's part is the plain answer's, its offsets after the prompt's text
    expect(lp.tokens.slice(P)).toEqual(plain.logprobs!.tokens);
    expect(lp.token_logprobs.slice(P)).toEqual(plain.logprobs!.token_logprobs);
    expect(lp.top_logprobs!.slice(P)).toEqual(plain.logprobs!.top_logprobs);
    expect(lp.text_offset.slice(P)).toEqual(plain.logprobs!.text_offset.map((o) => o + prompt.length));
    // the prompt's tokens join to its text, at their offsets
    expect(lp.tokens.slice(0, P).join('')).toBe(prompt);
    lp.text_offset.slice(0, P).forEach((o, i) => expect(prompt.slice(o).startsWith(lp.tokens[i]!)).toBe(true));
    expect(body.usage.completion_tokens).toBe(plain.logprobs!.tokens.length);
  });

  it('scores a continuation with the logprobs its tokens had when generated (max_tokens 0, token ids)', async () => {
    const ids = [1, 450, 7483, 310, 3444, 338];
    const gen = await run({ prompt: ids, max_tokens: 6, logprobs: 1 });
    // the same greedy answer's token ids, from the library
    let cont: number[] = [];
    for await (const r of model.generate([{ id: 'g', promptTokenIds: ids, maxNewTokens: 6 }])) if (!('error' in r)) cont = r.tokenIds;
    expect(cont).toHaveLength(gen.choices[0]!.logprobs!.tokens.length);
    const both = [...ids, ...cont];
    const scored = await run({ prompt: both, max_tokens: 0, logprobs: 1, echo: true });
    const s = scored.choices[0]!;
    expect(scored.usage).toMatchObject({ prompt_tokens: both.length, completion_tokens: 0 });
    expect(s.finish_reason).toBe('length');
    expect(s.logprobs!.tokens).toHaveLength(both.length);
    const got = s.logprobs!.token_logprobs.slice(ids.length) as number[];
    const want = gen.choices[0]!.logprobs!.token_logprobs as number[];
    expect(got).toHaveLength(want.length);
    got.forEach((x, i) => expect(Math.abs(x - want[i]!), `token ${i}`).toBeLessThan(1e-4));
    // greedy tokens are their place's most likely: each top-1 holds the token itself
    s.logprobs!.top_logprobs!.slice(ids.length).forEach((top, i) => expect(top![s.logprobs!.tokens[ids.length + i]!]).toBeCloseTo(got[i]!, 5));
    // the echoed text is the ids decoded
    expect(s.text).toBe(model.tokenizer!.decode(both));
  });

  it('a list of prompts, as evaluation suites send (max_tokens 1, logprobs 1): each choice scores its own prompt', async () => {
    const prompts = [[1, 450, 7483], [1, 29871, 13, 450, 4799], [1, 3444]];
    const body = await run({ prompt: prompts, max_tokens: 1, logprobs: 1, echo: true });
    expect(body.choices).toHaveLength(3);
    for (const [i, p] of prompts.entries()) {
      const alone = (await run({ prompt: p, max_tokens: 1, logprobs: 1, echo: true })).choices[0]!;
      const c = body.choices[i]!;
      expect(c.index).toBe(i);
      expect(c.logprobs!.tokens).toHaveLength(p.length + 1);
      expect(c).toEqual({ ...alone, index: i });
    }
  });

  it('without logprobs: the text only; n samples each echo the prompt', async () => {
    const body = await run({ prompt: 'Hello', max_tokens: 3, echo: true, n: 2, temperature: 1, seed: 4 });
    for (const c of body.choices) {
      expect(c.text.startsWith('Hello')).toBe(true);
      expect(c.logprobs).toBeNull();
    }
    const zero = await run({ prompt: 'Hello', max_tokens: 0, echo: true });
    expect(zero.choices[0]).toMatchObject({ text: 'Hello', logprobs: null, finish_reason: 'length' });
  });

  it('streams the prompt\'s text first; the chunks join to the whole text, the last carries the logprobs', async () => {
    const body = { model: 'tiny', prompt: 'Once upon', max_tokens: 5, temperature: 0, logprobs: 1, echo: true };
    const whole = (await run(body)).choices[0]!;
    const chunks: { text: string; logprobs: unknown }[] = [];
    await complete(engine, '/v1/completions', { ...body, stream: true }, {
      priority: 'interactive',
      onChunk: (c) => {
        const choice = (c.choices as { text: string; logprobs: unknown }[])[0];
        if (choice) chunks.push(choice);
      },
    });
    expect(chunks[0]!.text.startsWith('Once upon')).toBe(true);
    expect(chunks.map((c) => c.text).join('')).toBe(whole.text);
    expect(chunks.filter((c) => c.logprobs !== null).map((c) => c.logprobs)).toEqual([whole.logprobs]);
    // max_tokens 0 streams the prompt alone
    const zero: string[] = [];
    await complete(engine, '/v1/completions', { ...body, max_tokens: 0, stream: true }, {
      priority: 'interactive', onChunk: (c) => (c.choices as { text: string }[]).forEach((x) => zero.push(x.text)),
    });
    expect(zero.join('')).toBe('Once upon');
  });

  it('a text that does not survive encoding ("<s>" is the BOS token): the echoed text is what the tokens join to, offsets inside it', async () => {
    const body = await run({ prompt: 'a <s> b', max_tokens: 2, logprobs: 1, echo: true });
    const c = body.choices[0]!;
    const lp = c.logprobs!;
    expect(lp.tokens.join('')).toBe(c.text);
    lp.text_offset.forEach((o, i) => expect(c.text.slice(o).startsWith(lp.tokens[i]!), `token ${i}`).toBe(true));
    for (let i = 1; i < lp.text_offset.length; i++) expect(lp.text_offset[i]).toBeGreaterThanOrEqual(lp.text_offset[i - 1]!);
  });

  it('a model without a tokenizer: text_offset keeps counting through the completion', async () => {
    const opt = await loadModel(path.join(fixturesDir, 'opt-tiny'), { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
    try {
      const b = (await complete(engineFor(opt, 'opt'), '/v1/completions', { model: 'opt', prompt: [5, 9, 13, 2], max_tokens: 2, logprobs: 1, echo: true, temperature: 0 },
        { priority: 'interactive' })) as Body;
      const lp = b.choices[0]!.logprobs!;
      // (the prompt's 4 tokens and at least one new one)
      expect(lp.tokens.length).toBeGreaterThan(4);
      expect(lp.tokens[0]).toBe('token_id:5');
      for (let i = 1; i < lp.tokens.length; i++) expect(lp.text_offset[i]).toBe(lp.text_offset[i - 1]! + lp.tokens[i - 1]!.length);
    } finally {
      await opt.close();
    }
  });

  it('refuses max_tokens 0 without echo, and on chat', async () => {
    expect(await refusal({ prompt: 'Hi', max_tokens: 0 })).toMatchObject({ param: 'max_tokens', message: expect.stringContaining('echo') });
    await expect(complete(engine, '/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 0 }, { priority: 'interactive' }))
      .rejects.toThrow(/max_tokens/);
    // a prompt filling the context: scoring it still computes one position past it
    const max = model.config.maxPositions;
    expect(await refusal({ prompt: Array.from({ length: max }, (_, i) => 5 + (i % 50)), max_tokens: 0, echo: true, logprobs: 1 }))
      .toMatchObject({ param: 'prompt', message: expect.stringContaining(`scoring it takes one position more (at most ${max - 1} tokens)`) });
  });
});
