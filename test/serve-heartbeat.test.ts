// A streamed response that waits behind other requests (ServerOptions.streamHeartbeatMs): its
// headers and keep-alive comments go out while it waits, so that clients with a headers timeout
// (Node's fetch: 300 s) and proxies with an idle timeout keep it; clients read it as any stream;
// and a refusal after its headers went is an error event in the 200 stream. The engine runs one
// sequence at a time, so a request behind a long one waits for it.
import http from 'node:http';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { engineFor } from '../src/openai/complete.js';
import { type Server, buildServer } from '../src/server/app.js';
import { longContextModel, tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

let dir: string;
let model: LanguageModel;
const servers: Server[] = [];

beforeAll(async () => {
  dir = tmpDir('serve-heartbeat');
  model = await loadModel(tinyChatModel(dir), { policy: { gpuBatchSize: 1, numGpuBatches: 1 } });
});

afterAll(async () => {
  for (const s of servers) await s.app.close();
  await model?.close();
});

async function serve(m: LanguageModel, name: string, streamHeartbeatMs: number, engine = engineFor(m, name)): Promise<string> {
  const s = await buildServer({
    engine, dataDir: path.join(dir, `data-${servers.length}`), maxQueue: 8,
    bodyLimit: 8 << 20, fileLimit: 1 << 20, batchConcurrency: 8, streamHeartbeatMs,
  });
  servers.push(s);
  return s.app.listen({ host: '127.0.0.1', port: 0 });
}

interface Streamed {
  status: number;
  /** Milliseconds (performance.now()) when the headers came, and when the body ended. */
  headersAt: number;
  endAt: number;
  /** The body's bytes as they came, in pieces. */
  pieces: { at: number; text: string }[];
}

/** POSTs `body` and records when its headers and each piece of its body arrived. */
function stream(url: string, body: unknown): Promise<Streamed> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      const s: Streamed = { status: res.statusCode!, headersAt: performance.now(), endAt: NaN, pieces: [] };
      res.setEncoding('utf8');
      res.on('data', (text: string) => s.pieces.push({ at: performance.now(), text }));
      res.on('end', () => resolve({ ...s, endAt: performance.now() }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** The stream's events in order: 'comment' for each `: ...` line, else the data (parsed, or '[DONE]'). */
function events(s: Streamed): unknown[] {
  return s.pieces.map((p) => p.text).join('').split('\n\n').filter((e) => e !== '')
    .map((e) => (e.startsWith(':') ? 'comment' : e === 'data: [DONE]' ? '[DONE]' : JSON.parse(e.replace(/^data: /, ''))));
}

/** A streamed request that keeps the one-row engine busy: resolves once the engine has it (its
 *  first byte came: a token, or a heartbeat's comment, sent once the request was submitted), with
 *  when it ended. */
function busy(url: string, model: string, prompt: unknown, maxTokens: number): Promise<{ done: Promise<number> }> {
  return new Promise((running, reject) => {
    const req = http.request(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      const done = new Promise<number>((ended) => res.on('end', () => ended(performance.now())));
      res.once('data', () => running({ done }));
      res.resume();
    });
    req.on('error', reject);
    req.end(JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0, stream: true }));
  });
}

describe('a streamed response waiting behind others', () => {
  it('sends its headers and keep-alive comments while queued; its events are those of a stream that did not wait', async () => {
    const url = await serve(model, 'tiny', 20);
    const ask = { model: 'tiny', prompt: 'The capital of France is', max_tokens: 5, temperature: 0, stream: true };
    const alone = await stream(url, ask);
    const first = await busy(url, 'tiny', 'Once upon a time', 500);
    const queued = await stream(url, ask);
    const firstDone = await first.done;
    expect([queued.status, alone.status]).toEqual([200, 200]);
    // Its headers and a comment came while the request ahead still ran; its first token after.
    expect(queued.headersAt).toBeLessThan(firstDone);
    expect(queued.pieces[0]!.text.startsWith(': keep-alive\n\n')).toBe(true);
    expect(queued.pieces[0]!.at).toBeLessThan(firstDone);
    const got = events(queued);
    const waited = got.findIndex((e) => e !== 'comment');
    expect(waited).toBeGreaterThan(0);
    // Past the comments, the same events as the stream that did not wait (ids and times aside).
    const strip = (es: unknown[]) => es.filter((e) => e !== 'comment').map((e) => (typeof e === 'object' ? { ...e as object, id: 0, created: 0 } : e));
    expect(strip(got)).toEqual(strip(events(alone)));
    expect(got.at(-1)).toBe('[DONE]');
    expect(events(alone)).not.toContain('comment');
  });

  it('the official client reads a stream with comments in it', async () => {
    const url = await serve(model, 'tiny', 20);
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
    const whole = await c.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 6, temperature: 0 });
    const first = await busy(url, 'tiny', 'Once upon a time', 500);
    let text = '';
    for await (const chunk of await c.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 6, temperature: 0, stream: true })) {
      text += chunk.choices[0]?.text ?? '';
    }
    await first.done;
    expect(text).toBe(whole.choices[0]!.text);
  });

  it('with the heartbeat off, the headers wait for the first token', async () => {
    const url = await serve(model, 'tiny', 0);
    const first = await busy(url, 'tiny', 'Once upon a time', 500);
    const queued = await stream(url, { model: 'tiny', prompt: 'x', max_tokens: 3, temperature: 0, stream: true });
    const firstDone = await first.done;
    expect(queued.headersAt).toBeGreaterThan(firstDone);
    expect(events(queued)).not.toContain('comment');
  });

  it('an error after a heartbeat opened the stream is an error event before [DONE], counted in /metrics', async () => {
    const engine = engineFor(model, 'tiny');
    // an engine that answers late with an error (as a shutting-down scheduler answers a request)
    const scheduler = Object.create(engine.scheduler) as typeof engine.scheduler;
    scheduler.submit = async (req) => {
      await new Promise((r) => setTimeout(r, 100));
      return { id: String(req.id ?? ''), error: 'shutting down' };
    };
    const url = await serve(model, 'tiny', 20, { ...engine, scheduler });
    const late = await stream(url, { model: 'tiny', prompt: 'x', max_tokens: 3, stream: true });
    expect(late.status).toBe(200);
    const got = events(late);
    expect(got[0]).toBe('comment');
    expect(got.filter((e) => e !== 'comment')).toEqual([{ error: expect.objectContaining({ code: 'shutting_down' }) }, '[DONE]']);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^tierlm_stream_errors_total\{code="503"\} 1$/m);
    expect(metrics).toMatch(/^tierlm_http_responses_total\{code="200"\} 1$/m);
  });

  it('a request too large for the memory limits is refused on arrival with its status, whatever runs ahead of it', async () => {
    // (the engine refuses one only at the queue's front: behind a request waiting for the running
    // one, once that had finished, long after a heartbeat had opened the stream)
    const long = await loadModel(longContextModel(), { ramBytes: 64 * 2 ** 20, policy: { gpuBatchSize: 1, numGpuBatches: 1 } });
    try {
      const url = await serve(long, 'long', 1);
      const first = await busy(url, 'long', [5, 6, 7], 1500);
      const second = await busy(url, 'long', [5, 6, 7], 10);
      const refused = await stream(url, { model: 'long', prompt: [5, 6, 7], max_tokens: 100_000, stream: true });
      expect(refused.endAt).toBeLessThan(await first.done);
      await second.done;
      expect(refused.status).toBe(400);
      const { error } = JSON.parse(refused.pieces.map((p) => p.text).join(''));
      expect(error).toMatchObject({ code: 'context_length_exceeded', param: 'max_tokens' });
      // in the engine's words
      expect(error.message).toMatch(/^the request needs 100003 positions \(a prompt of 3 tokens and up to 100000 new ones\), and a block with that many does not fit the memory limits: RAM limit 64\.0 MiB is too small by/);
      // A list names the prompt; a later prompt past the model's context is named first, as before.
      const list = await stream(url, { model: 'long', prompt: [[5, 6, 7], [5]], max_tokens: 100_000 });
      expect(JSON.parse(list.pieces.map((p) => p.text).join('')).error.message).toMatch(/^prompt \[0\]: the request needs 100003 positions/);
      const past = await stream(url, { model: 'long', prompt: [[5, 6, 7], Array(1_000_000).fill(5)], max_tokens: 100_000 });
      expect(JSON.parse(past.pieces.map((p) => p.text).join('')).error).toMatchObject({ param: 'prompt', message: expect.stringMatching(/^This model's maximum context length is 1000000 tokens; the prompt \[1\] is 1000000 tokens/) });
      const fine = await stream(url, { model: 'long', prompt: [5, 6, 7], max_tokens: 3, stream: true });
      expect(fine.status).toBe(200);
      expect(events(fine).at(-1)).toBe('[DONE]');
    } finally {
      await long.close();
    }
  });
});
