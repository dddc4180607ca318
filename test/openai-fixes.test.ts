// Fixes to the OpenAI-compatible server: completions' top_logprobs at byte-fallback tokens (their
// pieces were all "", so the alternatives overwrote each other and the chosen token's logprob was
// lost), `Authorization: bearer KEY`, `"user": null`, the error naming a chat content part, and a
// batch whose input file has no requests.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Scheduler } from '../src/engine/scheduler.js';
import type { GenerationRequest, GenerationResult } from '../src/engine/requests.js';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import type { Engine } from '../src/openai/complete.js';
import { type ServedModel, prepare, responseBody } from '../src/openai/translate.js';
import { checkBody } from '../src/openai/validate.js';
import { type Server, buildServer } from '../src/server/app.js';
import { tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const t = TextTokenizer.load(tokenizerModelDir())!;
const model: ServedModel = { id: 'm', maxPositions: 512, vocabSize: 32000, tokenizer: t, created: 0 };
/** The token whose bytes are `bytes` (but `skip`): a byte-fallback token `<0xNN>` for one byte past ASCII. */
const byBytes = (bytes: Buffer, skip = -1) => Array.from({ length: 32000 }, (_, i) => i).find((i) => i !== skip && t.tokenBytes(i)?.equals(bytes))!;
const [HELLO, OK] = [' Hello', ' ok'].map((s) => byBytes(Buffer.from(s)));
/** 園 (E5 9C 92) and é (C3 A9), a byte token each. */
const [E5, X9C, X92, C3, A9] = [0xe5, 0x9c, 0x92, 0xc3, 0xa9].map((b) => byBytes(Buffer.from([b])));

type Logprobs = { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] };

/** The completions response's logprobs for a sample of `ids`, each place's alternatives `top(i)`
 *  (most likely first), its text cut to its first `keep` characters when given (a stop sequence). */
function completion(ids: number[], top: (i: number) => { token: number; logprob: number }[], keep?: number): { lp: Logprobs; text: string } {
  const p = prepare('/v1/completions', { model: 'm', prompt: [1, 15043], logprobs: 2 }, model);
  const prompt = p.requests[0]!.promptTokenIds;
  const whole = t.decode([...prompt, ...ids]).slice(t.decode(prompt).length);
  const text = keep === undefined ? whole : whole.slice(0, keep);
  const result: GenerationResult = {
    id: '0', promptTokens: prompt.length, tokenIds: ids, text, finishReason: keep === undefined ? 'length' : 'stop',
    logprobs: ids.map((_, i) => -1 - i), topLogprobs: ids.map((_, i) => top(i)),
  };
  const body = responseBody(p, [result], 'x', 0, model) as { choices: { text: string; logprobs: Logprobs }[] };
  expect(body.choices[0]!.text).toBe(text);
  return { lp: body.choices[0]!.logprobs, text };
}

describe('completions logprobs at byte-fallback tokens', () => {
  const ids = [HELLO, E5, X9C, X92, C3, A9, OK];
  /** The chosen token, then another byte token a little less likely. */
  const chosenThenByte = (i: number) => [{ token: ids[i]!, logprob: -1 - i }, { token: i % 2 ? C3 : E5, logprob: -1.5 - i }];

  it('names a byte token bytes:\\xNN in tokens and top_logprobs: every alternative kept, the chosen one with its logprob', () => {
    const { lp, text } = completion(ids, (i) => (i === 0 ? [{ token: HELLO, logprob: -1 }] : chosenThenByte(i)));
    expect(text).toBe(' Hello園é ok');
    expect(lp.tokens).toEqual([' Hello', 'bytes:\\xe5', 'bytes:\\x9c', 'bytes:\\x92', 'bytes:\\xc3', 'bytes:\\xa9', ' ok']);
    expect(lp.text_offset).toEqual([0, 6, 6, 6, 7, 7, 8]);
    lp.tokens.forEach((token, i) => {
      expect(lp.top_logprobs[i]![token], `${i}: ${token}`).toBe(lp.token_logprobs[i]);
      expect(Object.keys(lp.top_logprobs[i]!)).toHaveLength(i === 0 ? 1 : 2);
    });
    // the place of é's first byte: <0xC3> itself chosen, <0xE5> the alternative
    expect(lp.top_logprobs[4]).toEqual({ 'bytes:\\xc3': -5, 'bytes:\\xe5': -5.5 });
    expect(lp.top_logprobs[5]).toEqual({ 'bytes:\\xa9': -6, 'bytes:\\xc3': -6.5 });
  });

  it('two tokens named alike keep one key: the chosen token its own logprob, else the likelier', () => {
    // "A" and its byte token <0x41> are both "A"
    const A = byBytes(Buffer.from('A'));
    const A41 = byBytes(Buffer.from('A'), A);
    expect(A41).toBeGreaterThanOrEqual(0);
    const likelierByte = [{ token: A41, logprob: -0.5 }, { token: A, logprob: -1 }];
    expect(completion([A], () => likelierByte).lp.top_logprobs[0]).toEqual({ A: -1 });
    expect(completion([HELLO], () => likelierByte).lp.top_logprobs[0]).toEqual({ A: -0.5 });
  });

  it('cut by a stop sequence, the tokens before the cut keep their names and offsets', () => {
    const { lp } = completion([HELLO, E5, X9C, X92, OK], (i) => [{ token: [HELLO, E5, X9C, X92, OK][i]!, logprob: -1 - i }], ' Hello園 o'.length);
    expect(lp.tokens).toEqual([' Hello', 'bytes:\\xe5', 'bytes:\\x9c', 'bytes:\\x92', ' o']);
    expect(lp.text_offset).toEqual([0, 6, 6, 6, 7]);
    expect(lp.token_logprobs).toEqual([-1, -2, -3, -4, -5]);
  });
});

/** An engine that answers every prompt with one token, and a server on it (with a key when given). */
function fakeEngine(): Engine {
  const scheduler = {
    stats: { generatedTokens: 0, timeToFirstTokenSeconds: [] },
    positionsUnderLimits: 0,
    submit: async (req: GenerationRequest): Promise<GenerationResult> => ({ id: req.id, promptTokens: req.promptTokenIds!.length, tokenIds: [3], text: 'x', finishReason: 'length' }),
  };
  return { scheduler: scheduler as unknown as Scheduler, model: { ...model, id: 'tiny' } };
}

describe('the server', () => {
  let server: Server;
  let keyed: Server;
  beforeAll(async () => {
    const o = { engine: fakeEngine(), maxQueue: 4, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 1 };
    server = await buildServer({ ...o, dataDir: tmpDir('openai-fixes') });
    keyed = await buildServer({ ...o, dataDir: tmpDir('openai-fixes-key'), apiKey: 'sk-1' });
  });
  afterAll(async () => {
    await server?.close();
    await keyed?.close();
  });

  it('takes the Bearer scheme in any case (RFC 7235), and still refuses a wrong key', async () => {
    const get = async (authorization: string) => (await keyed.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization } })).statusCode;
    expect(await get('Bearer sk-1')).toBe(200);
    expect(await get('bearer sk-1')).toBe(200);
    expect(await get('BEARER sk-1')).toBe(200);
    expect(await get('bearer sk-2')).toBe(401);
    expect(await get('Basic sk-1')).toBe(401);
  });

  it('takes "user": null, as the SDKs send for user=None', async () => {
    for (const endpoint of ['/v1/completions', '/v1/chat/completions'] as const) {
      const body = endpoint === '/v1/completions' ? { model: 'tiny', prompt: 'Hi', user: null } : { model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], user: null };
      expect(() => checkBody(endpoint, body)).not.toThrow();
    }
    const r = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'tiny', prompt: [1, 2], max_tokens: 1, user: null } });
    expect(r.statusCode, r.body).toBe(200);
    expect(checkError('/v1/completions', { model: 'tiny', prompt: 'Hi', user: 5 })).toMatchObject({ param: 'user' });
  });

  it('names the chat content part at fault, by the server and by checkBody alike', async () => {
    const body = { model: 'tiny', messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text' }] }] };
    const want = { param: 'messages[0].content[1].text', code: 'missing_required_parameter' };
    expect(checkError('/v1/chat/completions', body)).toMatchObject(want);
    const r = await server.app.inject({ method: 'POST', url: '/v1/chat/completions', payload: body });
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toMatchObject({ ...want, message: "Missing required parameter: 'messages[0].content[1].text'." });
    // a part of another type: its `type` named
    expect(checkError('/v1/chat/completions', { ...body, messages: [{ role: 'user', content: [{ type: 'image_url', text: 'a' }] }] }))
      .toMatchObject({ param: 'messages[0].content[0].type' });
    // content neither a string nor an array: said by what it must be, as before
    expect(checkError('/v1/chat/completions', { ...body, messages: [{ role: 'user', content: 5 }] }))
      .toMatchObject({ param: 'messages[0].content', message: expect.stringContaining('must be a string or an array of {"type": "text", "text"} parts') });
    // a prompt array matching neither strings nor token ids: which item is wrong depends on which was meant
    expect(checkError('/v1/completions', { model: 'tiny', prompt: ['a', 1] })).toMatchObject({ param: 'prompt', message: expect.stringContaining('must be a string, an array of strings') });
  });

  it('fails a batch whose input file has no requests, as OpenAI does at validation', async () => {
    for (const content of ['', '\n  \n\n']) {
      const form = new FormData();
      form.append('purpose', 'batch');
      form.append('file', new Blob([content]), 'empty.jsonl');
      const req = new Request('http://x/v1/files', { method: 'POST', body: form });
      const up = await server.app.inject({ method: 'POST', url: '/v1/files', headers: Object.fromEntries(req.headers), payload: Buffer.from(await req.arrayBuffer()) });
      expect(up.statusCode, up.body).toBe(200);
      const file = up.json().id as string;
      const created = await server.app.inject({ method: 'POST', url: '/v1/batches', payload: { input_file_id: file, endpoint: '/v1/completions', completion_window: '24h' } });
      expect(created.statusCode, created.body).toBe(200);
      const id = created.json().id as string;
      const got = (await server.app.inject({ method: 'GET', url: `/v1/batches/${id}` })).json();
      expect(got).toMatchObject({
        status: 'failed', request_counts: { total: 0, completed: 0, failed: 0 }, output_file_id: null, error_file_id: null, completed_at: null,
        errors: { object: 'list', data: [{ code: 'empty_file', param: null, line: null, message: expect.stringContaining(`${file} has no requests`) }] },
      });
      expect(got.failed_at).toBeTypeOf('number');
      expect(created.json()).toEqual(got);
    }
  });
});

/** The error body checkBody throws for `body`. */
function checkError(endpoint: '/v1/completions' | '/v1/chat/completions', body: unknown): { message: string; param: string | null; code: string | null } {
  try {
    checkBody(endpoint, body);
  } catch (e) {
    return (e as { body: { error: { message: string; param: string | null; code: string | null } } }).body.error;
  }
  throw new Error('checkBody took the body');
}
