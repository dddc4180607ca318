// The server's budget for request bodies in flight: bodies are counted from before they are read
// (one sent chunked: as its bytes arrive) until their answer is sent, a body past the budget gets
// 429 with Retry-After (unread), and the budget comes back when requests end or their clients go
// away. (--max-queue bodies of up to --body-limit each were held at once, none of it within --ram:
// 100 bodies of 3.5 MB took a server at --ram 100MiB to 660 MiB. A chunked body was then counted
// as --body-limit for the life of its answer: only two were taken at once, whatever their size.)
import http from 'node:http';
import path from 'node:path';
import OpenAI, { toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { engineFor } from '../src/openai/complete.js';
import { type Server, buildServer } from '../src/server/app.js';
import { tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

const LIMIT = 64 * 1024;
const BUDGET = 2 * LIMIT;

let dir: string;
let model: LanguageModel;
let server: Server;
let url: string;

beforeAll(async () => {
  dir = tmpDir('body-budget');
  model = await loadModel(tinyChatModel(dir), { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
  server = await buildServer({
    engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data'), maxQueue: 64,
    bodyLimit: LIMIT, bodyBudget: BUDGET, fileLimit: 1 << 20, batchConcurrency: 8,
  });
  url = await server.app.listen({ host: '127.0.0.1', port: 0 });
});

afterAll(async () => {
  await server?.close();
  await model?.close();
});

/** A completion body of about `bytes` bytes (a long `user` field the request does not use). */
const bodyOf = (bytes: number) => JSON.stringify({ model: 'tiny', prompt: 'Hello', max_tokens: 2, user: 'u'.repeat(Math.max(0, bytes - 60)) });

const post = (body: string) => fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

describe('a body of more objects and arrays than a request may hold', () => {
  // The budget counts 6 bytes of RAM a byte; `{}` is 3 bytes and ~60 parsed: such a body is
  // refused before it is parsed, as a JSONL line of them is skipped.
  it('is refused unparsed with 400 invalid_json; one of many prompts (lists of ids) is not', async () => {
    const big = await buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data-objects'), maxQueue: 64,
      bodyLimit: 1 << 20, bodyBudget: 2 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
    });
    try {
      const at = await big.app.listen({ host: '127.0.0.1', port: 0 });
      const send = (body: string) => fetch(`${at}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      const junk = JSON.stringify({ model: 'tiny', prompt: 'Hello', max_tokens: 2 }).slice(0, -1) + ', "user": [' + '{},'.repeat(70_000) + '{}]}';
      const r = await send(junk);
      expect(r.status).toBe(400);
      expect((await r.json()).error).toMatchObject({ code: 'invalid_json', message: 'The request body is not valid JSON: it holds more than 65536 objects and arrays, more than a request may (each takes tens of bytes of RAM when parsed)' });
      const lists = await send(JSON.stringify({ model: 'tiny', prompt: Array.from({ length: 64 }, () => [1, 450]), max_tokens: 1 }));
      expect(lists.status).toBe(200);
    } finally {
      await big.close();
    }
  });
});

/** A request whose body is sent up to its last byte and held there, until finish() or abort(). */
function holdUpload(body: string, chunked = false, base = url) {
  const req = http.request(`${base}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', ...(chunked ? {} : { 'content-length': Buffer.byteLength(body) }) },
  });
  const answered = new Promise<number>((resolve, reject) => {
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
  });
  req.write(body.slice(0, -1));
  return { answered, finish: () => (req.end(body.slice(-1)), answered), abort: () => {
    answered.catch(() => {}); // (the socket hangs up: what abort means)
    req.destroy();
  } };
}

/** A chunked request sent as it is given (never ended), and its answer as soon as one comes. */
function sendChunked(first: string) {
  const req = http.request(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } });
  const answer = new Promise<{ status: number; retryAfter?: string; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, retryAfter: res.headers['retry-after'] as string | undefined, body }));
    });
    req.on('error', reject);
  });
  req.write(first);
  return { send: (more: string) => req.write(more), answer };
}

async function bodiesReach(bytes: number, s = server): Promise<void> {
  for (let i = 0; i < 500 && s.bodies.bytes !== bytes; i++) await new Promise((r) => setTimeout(r, 10));
  expect(s.bodies.bytes).toBe(bytes);
}

describe('the budget for request bodies in flight', () => {
  it('429s a body past it, serves those within it, and has it back once requests end', async () => {
    const big = bodyOf(50_000);
    const size = Buffer.byteLength(big);
    const first = holdUpload(big);
    const second = holdUpload(big);
    await bodiesReach(2 * size);

    // a third large body would pass the budget: 429, OpenAI's shape, with Retry-After
    const refused = await post(big);
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('1');
    const e = (await refused.json()).error;
    expect(e).toMatchObject({ type: 'rate_limit_error', code: 'rate_limit_exceeded' });
    expect(e.message).toMatch(/^request bodies in flight \(97\.7 KiB\) and this one \(48\.8 KiB\) would exceed the server's budget for them \(128\.0 KiB; tierlm serve: twice --body-limit\); retry later$/);
    // a small one fits beside them; one over --body-limit is still 413 (a retry cannot help it);
    // an upload (to disk as it comes) is not counted
    expect((await post(bodyOf(1000))).status).toBe(200);
    const huge = await post(bodyOf(LIMIT + 10));
    expect([huge.status, (await huge.json()).error.code]).toEqual([413, 'request_too_large']);
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
    const file = await c.files.create({ file: await toFile(Buffer.from('{"custom_id":"a"}\n'), 'x.jsonl'), purpose: 'batch' });
    expect(file.bytes).toBe(18);
    expect(server.bodies.bytes).toBe(2 * size);

    // the held requests are served, and their bytes come back: a large body is taken again
    expect(await Promise.all([first.finish(), second.finish()])).toEqual([200, 200]);
    await bodiesReach(0);
    expect((await post(big)).status).toBe(200);
    await bodiesReach(0);
  });

  it('counts a chunked body by the bytes received, and gives back what a client gone held', async () => {
    // (each was counted as --body-limit for the life of its answer: only two were taken at once)
    const body = bodyOf(1000);
    const small = Array.from({ length: 4 }, () => holdUpload(body, true));
    const sent = 4 * (Buffer.byteLength(body) - 1); // (all but their last bytes)
    await bodiesReach(sent);
    const big = bodyOf(LIMIT - 100);
    const held = holdUpload(big);
    await bodiesReach(sent + Buffer.byteLength(big));
    held.abort();
    await bodiesReach(sent);
    expect(await Promise.all(small.map((h) => h.finish()))).toEqual([200, 200, 200, 200]);
    await bodiesReach(0);
  });

  it('429s a chunked body once its bytes would pass it, and 413s one past --body-limit', async () => {
    const big = bodyOf(50_000);
    const size = Buffer.byteLength(big);
    const first = holdUpload(big);
    const second = holdUpload(big);
    await bodiesReach(2 * size);

    // within the budget so far: counted as it comes; then past it: 429, and what it held is given back
    const body = bodyOf(40_000);
    const third = sendChunked(body.slice(0, 20_000));
    await bodiesReach(2 * size + 20_000);
    third.send(body.slice(20_000, -1));
    const refused = await third.answer;
    expect([refused.status, refused.retryAfter]).toEqual([429, '1']);
    const e = JSON.parse(refused.body).error;
    expect(e).toMatchObject({ type: 'rate_limit_error', code: 'rate_limit_exceeded' });
    expect(e.message).toMatch(/^request bodies in flight \(97\.7 KiB\) and this one \(\d+\.\d KiB so far, sent chunked\) would exceed the server's budget for them \(128\.0 KiB; tierlm serve: twice --body-limit\); retry later$/);
    await bodiesReach(2 * size);

    expect(await Promise.all([first.finish(), second.finish()])).toEqual([200, 200]);
    await bodiesReach(0);
    // past --body-limit, the budget free: 413 as before (a retry cannot help it)
    const huge = sendChunked(bodyOf(LIMIT + 10));
    const tooLarge = await huge.answer;
    expect([tooLarge.status, JSON.parse(tooLarge.body).error.code]).toEqual([413, 'request_too_large']);
    await bodiesReach(0);
  });

  it('gives back what clients that stall midway held once their time to send is up (408)', async () => {
    // (nothing ended such a request: two stalled uploads got every other request 429 for good)
    const s = await buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data-stall'), maxQueue: 64,
      bodyLimit: LIMIT, bodyBudget: BUDGET, fileLimit: 1 << 20, batchConcurrency: 8, requestTimeoutMs: 400,
    });
    try {
      const at = await s.app.listen({ host: '127.0.0.1', port: 0 });
      const big = bodyOf(50_000);
      const stalled = [holdUpload(big, false, at), holdUpload(big, false, at)];
      await bodiesReach(2 * Buffer.byteLength(big), s);
      const postTo = () => fetch(`${at}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: big });
      expect((await postTo()).status).toBe(429);
      const t0 = Date.now();
      expect(await Promise.all(stalled.map((h) => h.answered))).toEqual([408, 408]);
      // (Node takes the larger of its headers' timeout, 60 s, and the request's: set both)
      expect(Date.now() - t0).toBeLessThan(10_000);
      await bodiesReach(0, s);
      expect((await postTo()).status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it('is at least --body-limit', async () => {
    await expect(buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'small'), maxQueue: 8, bodyLimit: LIMIT, bodyBudget: LIMIT - 1, fileLimit: 1 << 20, batchConcurrency: 8,
    })).rejects.toThrow(/bodyBudget \(65535\) must be at least bodyLimit \(65536\)/);
  });
});
