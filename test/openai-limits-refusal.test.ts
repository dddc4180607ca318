// A request too long for the memory limits (not for the model: a million positions, of which a
// block under 70 MiB holds ~1000) is refused as context_length_exceeded naming the field at fault:
// a text prompt surely too long before it is encoded (a 3.5 MB prompt was encoded whole, 40 s and
// 1.9 GB under --ram 100MiB, to be refused after), and a refusal by the engine names the prompt
// when it alone is too long, else the field that set the new tokens' limit (it always said max_tokens).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { initModel } from '../src/models/init.js';
import { type Engine, complete, engineFor } from '../src/openai/complete.js';
import { addTokenizer, tmpDir } from './helpers/fixtures.js';

let model: LanguageModel;
let engine: Engine;
/** The positions the limits hold a request. */
let positions: number;

beforeAll(async () => {
  const dir = path.join(tmpDir('limits-refusal'), 'long');
  initModel({ config: 'llama-test', out: dir, seed: 3 });
  addTokenizer(dir);
  const cfgFile = path.join(dir, 'config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), max_position_embeddings: 1_000_000 }));
  model = await loadModel(dir, { ramBytes: 70 * 2 ** 20, policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
  engine = engineFor(model, 'long');
  positions = engine.model.positionsUnderLimits!();
});

afterAll(async () => {
  await model?.close();
});

type Endpoint = '/v1/completions' | '/v1/chat/completions';
const run = (endpoint: Endpoint, body: object) => complete(engine, endpoint, { model: 'long', temperature: 0, ...body }, { priority: 'interactive' });
/** The ApiError a body is answered with. */
const refusal = (endpoint: Endpoint, body: object) => run(endpoint, body).then(() => { throw new Error('not refused'); }, (e: unknown) => e);

describe('requests too long for the memory limits', () => {
  it('the limits hold fewer positions than the model has', () => {
    expect(positions).toBeGreaterThan(500);
    expect(positions).toBeLessThan(100_000);
  });

  it('a text prompt surely longer than they hold is refused before it is encoded', async () => {
    const encode = vi.spyOn(model.tokenizer!, 'encode');
    try {
      // ~260 KB: a few thousand tokens at the least (minTokens), far fewer than the model's million
      const text = 'Hello world. '.repeat(20_000);
      expect(model.tokenizer!.minTokens(text)).toBeGreaterThanOrEqual(positions);
      const e = await refusal('/v1/completions', { prompt: text, max_tokens: 4 });
      expect(e).toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'prompt' });
      expect((e as Error).message).toMatch(new RegExp(`memory limits hold at most ${positions} positions a request \\(the model's context is 1000000 tokens\\); prompt \\(260000 characters\\) is at least \\d+ tokens`));
      const chat = await refusal('/v1/chat/completions', { messages: [{ role: 'user', content: text }] });
      expect(chat).toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'messages' });
      expect(encode).not.toHaveBeenCalled();
    } finally {
      encode.mockRestore();
    }
    // one that fits is still encoded and run
    const ok = await run('/v1/completions', { prompt: 'Hello world. '.repeat(20), max_tokens: 2 }) as { usage: { completion_tokens: number } };
    expect(ok.usage.completion_tokens).toBe(2);
  });

  it('a prompt one position short of the limits runs; one at them is refused naming the prompt, whatever max_tokens', async () => {
    const ids = (n: number) => Array.from({ length: n }, (_, i) => 100 + (i % 1000));
    const fits = await run('/v1/completions', { prompt: ids(positions - 1), max_tokens: 1 }) as { usage: { completion_tokens: number } };
    expect(fits.usage.completion_tokens).toBe(1);
    for (const body of [{ max_tokens: 1 }, { max_tokens: 50 }, {}]) {
      const e = await refusal('/v1/completions', { prompt: ids(positions), ...body });
      expect(e, JSON.stringify(body)).toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'prompt' });
      expect((e as Error).message).toMatch(/does not fit the memory limits/);
    }
  });

  it('a short prompt with too many new tokens blames the field that asked for them', async () => {
    const messages = [{ role: 'user', content: 'hi' }];
    expect(await refusal('/v1/chat/completions', { messages, max_completion_tokens: 900_000 })).toMatchObject({ code: 'context_length_exceeded', param: 'max_completion_tokens' });
    expect(await refusal('/v1/chat/completions', { messages, max_tokens: 900_000 })).toMatchObject({ code: 'context_length_exceeded', param: 'max_tokens' });
    expect(await refusal('/v1/completions', { prompt: 'hi', max_tokens: 900_000 })).toMatchObject({ code: 'context_length_exceeded', param: 'max_tokens' });
  });
});
