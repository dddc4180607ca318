// What one body may ask of the server: a completions `prompt` list of at most 2048 prompts, at most
// 2048 completions (prompts × n), counted in sequences against --max-queue (400 for a body that
// alone passes it, 429 beyond what is free), a list run a window of sequences at a time, and its
// text prompts encoded giving the event loop turns. (One 475 KB body of 60,000 prompts × n 8 was
// 480,000 sequences counted as one request: RSS past --ram by 600 MB, /health 5.7 s.) And a chat
// message's `content: null` on an assistant turn, as OpenAI takes it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Scheduler } from '../src/engine/scheduler.js';
import type { GenerationRequest, GenerationResult } from '../src/engine/requests.js';
import { TextTokenizer } from '../src/formats/tokenizer.js';
import { ApiError } from '../src/openai/errors.js';
import { runBatch } from '../src/openai/batch-run.js';
import { type Engine, complete } from '../src/openai/complete.js';
import type { ResultWriter } from '../src/formats/jsonl.js';
import { type ServedModel, prepare, prepareAsync } from '../src/openai/translate.js';
import { checkBody } from '../src/openai/validate.js';
import { type Server, buildServer } from '../src/server/app.js';
import { tmpDir } from './helpers/fixtures.js';
import { tokenizerModelDir } from './helpers/tokenizer-model.js';

const t = TextTokenizer.load(tokenizerModelDir())!;
const model: ServedModel = { id: 'tiny', maxPositions: 4096, vocabSize: 32000, tokenizer: t, created: 0 };

/** An engine whose requests wait for `release()` (each answered with one token), counting how many
 *  sequences are submitted at once. */
function gatedEngine(window?: number) {
  let open: () => void = () => {};
  let gate = new Promise<void>((r) => (open = r));
  const submitted: GenerationRequest[] = [];
  let now = 0;
  const stats = { most: 0 };
  const scheduler = {
    stats: { generatedTokens: 0, timeToFirstTokenSeconds: [] },
    positionsUnderLimits: 0,
    submit: async (req: GenerationRequest): Promise<GenerationResult> => {
      submitted.push(req);
      now += req.n ?? 1;
      stats.most = Math.max(stats.most, now);
      await gate;
      now -= req.n ?? 1;
      return { id: req.id, promptTokens: req.promptTokenIds!.length, tokenIds: [3], text: 'x', finishReason: 'length' };
    },
  };
  const engine: Engine = { scheduler: scheduler as unknown as Scheduler, model, ...(window ? { window } : {}) };
  return {
    engine, submitted, stats,
    release: () => open(),
    /** Waits until `count` requests were submitted. */
    until: async (count: number) => {
      while (submitted.length < count) await new Promise((r) => setImmediate(r));
    },
    reset: () => (gate = new Promise<void>((r) => (open = r))),
  };
}

const errorOf = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    return e as ApiError;
  }
  throw new Error('no error');
};

describe('a completions body\'s prompts', () => {
  it('400 naming prompt for a list of more than 2048, by the schema (server and batch lines alike)', () => {
    for (const prompt of [Array.from({ length: 2049 }, (_, i) => [1, 100 + i]), Array.from({ length: 2049 }, () => 'a')]) {
      const e = errorOf(() => checkBody('/v1/completions', { model: 'tiny', prompt }));
      expect(e).toBeInstanceOf(ApiError);
      expect(e).toMatchObject({ status: 400, param: 'prompt', message: "Invalid value for 'prompt': lists more than 2048 prompts; at most 2048 may be sent in one request." });
      // 2048 is within it, and so is one prompt of more than 2048 token ids
      expect(() => checkBody('/v1/completions', { model: 'tiny', prompt: prompt.slice(0, 2048) })).not.toThrow();
    }
    expect(() => checkBody('/v1/completions', { model: 'tiny', prompt: Array.from({ length: 3000 }, () => 5) })).not.toThrow();
  });

  it('400 for more than 2048 completions (prompts × n), before any prompt is encoded', () => {
    const body = { model: 'tiny', prompt: Array.from({ length: 300 }, () => 'a b c'), n: 8 };
    expect(() => checkBody('/v1/completions', body)).not.toThrow();
    const e = errorOf(() => prepare('/v1/completions', body, model));
    expect(e).toMatchObject({ status: 400, param: 'prompt' });
    expect(e.message).toBe('This request asks for 2400 completions (300 prompts × n 8); one request may ask for at most 2048: send fewer prompts in each request');
    expect(prepare('/v1/completions', { ...body, n: 6 }, model).requests).toHaveLength(300);
  });

  it('runs a list a window of sequences at a time, each answer in its place', async () => {
    const g = gatedEngine(4);
    g.release();
    const body = await complete(g.engine, '/v1/completions', { model: 'tiny', prompt: Array.from({ length: 20 }, (_, i) => [1, 100 + i]), n: 2, max_tokens: 1 }, { priority: 'interactive' });
    // a window of 4 sequences is 2 prompts of n 2, submitted in order
    expect(g.stats.most).toBe(4);
    expect(g.submitted.map((r) => r.promptTokenIds![1])).toEqual(Array.from({ length: 20 }, (_, i) => 100 + i));
    // (the fake answers one sample a prompt: choice i·n is prompt i's)
    expect((body.choices as { index: number; text: string }[]).map((c) => c.index)).toEqual(Array.from({ length: 20 }, (_, i) => 2 * i));
  });

  it('encodes a list of text prompts giving the event loop turns, to what prepare() makes', async () => {
    // 40 prompts of ~1800 characters: far more than the 10 ms between turns
    const words = 'the quick brown fox jumps over the lazy dog'.split(' ');
    const prompt = Array.from({ length: 40 }, (_, i) => `${i} ${Array.from({ length: 400 }, (_, j) => words[(i + j) % words.length]).join(' ')}`);
    let turns = 0;
    const count = () => {
      turns++;
      if (!done) setImmediate(count);
    };
    let done = false;
    setImmediate(count);
    const p = await prepareAsync('/v1/completions', { model: 'tiny', prompt }, model);
    done = true;
    expect(turns).toBeGreaterThan(1);
    expect(p).toEqual(prepare('/v1/completions', { model: 'tiny', prompt }, model));
  });
});

describe('--max-queue counts sequences', () => {
  let server: Server;
  const g = gatedEngine();
  beforeAll(async () => {
    server = await buildServer({ engine: g.engine, dataDir: tmpDir('request-caps'), maxQueue: 4, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 1 });
  });
  afterAll(async () => {
    g.release();
    await server?.close();
  });
  const post = (prompt: unknown, n = 1) => server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'tiny', prompt, n, max_tokens: 1 } });
  const prompts = (k: number) => Array.from({ length: k }, (_, i) => [1, 100 + i]);

  it('429 for a body whose prompts × n pass what is free; 400 for one that alone passes it', async () => {
    // 2 of the 4 held by a request in flight
    const first = post([1, 2], 2);
    await g.until(1);
    const refused = await post(prompts(3));
    expect(refused.statusCode, refused.body).toBe(429);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.json().error).toMatchObject({ type: 'rate_limit_error', code: 'rate_limit_exceeded' });
    expect(refused.json().error.message).toBe("too many sequences in flight (2 of 4, --max-queue; this request's prompts × n: 3); retry later");
    // alone more than --max-queue: never servable, so 400, naming the list (or n for one prompt)
    const tooMany = await post(prompts(5));
    expect([tooMany.statusCode, tooMany.json().error.param]).toEqual([400, 'prompt']);
    expect(tooMany.json().error.message).toBe('This request asks for 5 completions (5 prompts × n 1); this server runs at most 4 at once (--max-queue): send fewer prompts in each request');
    const tooManyN = await post([1, 2], 5);
    expect([tooManyN.statusCode, tooManyN.json().error.param]).toEqual([400, 'n']);
    // what is free is taken
    const second = post(prompts(2));
    await g.until(3);
    g.release();
    expect((await first).statusCode).toBe(200);
    expect((await second).json().choices).toHaveLength(2);
    // and given back
    expect((await post(prompts(4))).statusCode).toBe(200);
  });
});

describe('a batch job', () => {
  it('keeps --concurrency sequences of its lines in flight, not lines; a line larger still runs', async () => {
    const g = gatedEngine();
    const lines = [3, 1, 5, 2, 2].map((k, i) => JSON.stringify({ custom_id: `c${i}`, method: 'POST', url: '/v1/completions', body: { model: 'tiny', prompt: Array.from({ length: k }, (_, j) => [1, 100 + j]), max_tokens: 1 } }));
    const written: { id: string }[] = [];
    const out = { done: new Set<string>(), failedBefore: new Set<string>(), write: (r: { id: string }) => written.push(r), sync: () => {} } as unknown as ResultWriter;
    const running = runBatch(g.engine, {
      lines: async function* () {
        yield* lines;
      }, out, errors: null, concurrency: 4,
    });
    // held at the engine: the first two lines (3 + 1 sequences), the third (5) waits for them
    await g.until(2);
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    expect([g.submitted.length, g.stats.most]).toEqual([4, 4]);
    g.release();
    expect(await running).toMatchObject({ completed: 5, failed: 0 });
    expect(written).toHaveLength(5);
    // the line of 5 ran alone
    expect(g.stats.most).toBe(5);
  });
});

describe('a cancelled batch job', () => {
  // (each line left was parsed, to count them: 10-15 s from cancel to 'cancelled' for 400,000)
  it('counts the lines left without parsing them', async () => {
    const g = gatedEngine();
    const cancel = new AbortController();
    const line = (i: number) => JSON.stringify({ custom_id: `c${i}`, method: 'POST', url: '/v1/completions', body: { model: 'tiny', prompt: [1, 100], max_tokens: 1 } });
    const out = { done: new Set<string>(), failedBefore: new Set<string>(), write: () => {}, sync: () => {} } as unknown as ResultWriter;
    const parse = JSON.parse;
    let parsed = 0;
    try {
      const running = runBatch(g.engine, {
        lines: async function* () {
          yield line(0);
          await g.until(1);
          cancel.abort();
          JSON.parse = (...a: Parameters<typeof JSON.parse>) => (parsed++, parse(...a));
          for (let i = 1; i <= 1000; i++) yield line(i);
        }, out, errors: null, concurrency: 4, signal: cancel.signal,
      });
      g.release();
      expect((await running).total).toBe(1001);
    } finally {
      JSON.parse = parse;
    }
    expect(parsed).toBe(0);
  });
});

describe('a batch job whose error line cannot be written', () => {
  // The write inside a running line's catch threw ENOSPC out of a promise nobody awaited yet (the
  // loop was reading the next line): an unhandled rejection, which ends the server's process.
  it('fails the job with the write error; nothing rejects unhandled', async () => {
    const g = gatedEngine();
    g.release();
    const line = (i: number, body: Record<string, unknown>) => JSON.stringify({ custom_id: `c${i}`, method: 'POST', url: '/v1/completions', body: { model: 'tiny', prompt: [1, 100], ...body } });
    const full = Object.assign(new Error('writing failed: ENOSPC'), { code: 'ENOSPC' });
    const writer = { done: new Set<string>(), failedBefore: new Set<string>(), write: () => { throw full; }, sync: () => {} } as unknown as ResultWriter;
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const running = runBatch(g.engine, {
        lines: async function* () {
          yield line(0, { max_tokens: 1, temperature: -1 });
          // the next line comes later: the first line's failure happens while the loop waits here
          await new Promise((r) => setTimeout(r, 100));
          yield line(1, { max_tokens: 1 });
        }, out: writer, errors: null, concurrency: 4,
      });
      await expect(running).rejects.toBe(full);
      await new Promise((r) => setTimeout(r, 50));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('chat content null', () => {
  it('takes null on an assistant message (as OpenAI), rendered as "", and refuses it on the others', async () => {
    const g = gatedEngine();
    g.release();
    const server = await buildServer({ engine: g.engine, dataDir: tmpDir('chat-null'), maxQueue: 4, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 1 });
    try {
      const r = await server.app.inject({
        method: 'POST', url: '/v1/chat/completions',
        payload: { model: 'tiny', messages: [{ role: 'assistant', content: null }, { role: 'user', content: 'x' }], max_tokens: 2 },
      });
      expect(r.statusCode, r.body).toBe(200);
      expect(t.decode(g.submitted.at(-1)!.promptTokenIds!)).toBe('[assistant] \n[user] x\n[assistant]');
      const user = await server.app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: 'tiny', messages: [{ role: 'user', content: null }] } });
      expect(user.statusCode).toBe(400);
      expect(user.json().error).toMatchObject({ param: 'messages[0].content', message: expect.stringContaining('null only on an assistant message, not a user one') });
    } finally {
      await server.close();
    }
  });
});
