// `tierlm serve` driven by the official `openai` client: models, completions, chat, streaming
// equal to whole responses, every error status, concurrent requests equal to each made alone,
// the Batch API round trip, a restart in the middle of a batch job (one server at a time on a data
// directory), and `tierlm batch` giving the same answers as the server's batch for the same file.
import http from 'node:http';
import fs from 'node:fs';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import OpenAI, { toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { engineFor } from '../src/openai/complete.js';
import { type Server, buildServer } from '../src/server/app.js';
import { cli } from './helpers/cli.js';
import { initModel } from '../src/models/init.js';
import { addTokenizer, longContextModel, readJsonl, tmpDir } from './helpers/fixtures.js';
import { startServe, tinyChatModel } from './helpers/serve.js';

const KEY = 'sk-test-key';
let dir: string;
let modelDir: string;
let model: LanguageModel;
let server: Server;
let client: OpenAI;
let url: string;

beforeAll(async () => {
  dir = tmpDir('serve');
  modelDir = tinyChatModel(dir);
  model = await loadModel(modelDir, { policy: { gpuBatchSize: 4, numGpuBatches: 2 } });
  server = await buildServer({
    engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data'), apiKey: KEY, maxQueue: 64,
    bodyLimit: 64 * 1024, fileLimit: 1024 * 1024, batchConcurrency: 8,
  });
  url = await server.app.listen({ host: '127.0.0.1', port: 0 });
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey: KEY, maxRetries: 0 });
});

afterAll(async () => {
  await server?.app.close();
  await server?.jobs.close();
  await model?.close();
});

/** A response without what differs between two runs of the same request (ids, times). */
function answer(body: unknown): unknown {
  const b = structuredClone(body) as Record<string, unknown>;
  delete b.id;
  delete b.created;
  return b;
}

describe('models, completions and chat', () => {
  it('lists the model, and 404s another', async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual(['tiny']);
    await expect(client.models.retrieve('gpt-4')).rejects.toMatchObject({ status: 404 });
  });

  it('completes text and token-id prompts, a list of prompts with n samples each, with usage and logprobs', async () => {
    const one = await client.completions.create({ model: 'tiny', prompt: 'The capital of France is', max_tokens: 6, temperature: 0, logprobs: 3 });
    expect(one.object).toBe('text_completion');
    expect(one.choices).toHaveLength(1);
    const c = one.choices[0]!;
    expect(c.text.length).toBeGreaterThan(0);
    expect(c.finish_reason).toBe('length');
    expect(one.usage).toMatchObject({ completion_tokens: 6 });
    expect(one.usage!.total_tokens).toBe(one.usage!.prompt_tokens + 6);
    expect(c.logprobs!.tokens).toHaveLength(6);
    expect(c.logprobs!.token_logprobs!.every((x) => x < 0)).toBe(true);
    // each token's text in context (a SentencePiece token alone drops its leading space): they
    // add up to the text, at their offsets
    const lp = c.logprobs!;
    expect(lp.tokens!.join('')).toBe(c.text);
    lp.tokens!.forEach((t, i) => expect(c.text.slice(lp.text_offset![i]!, lp.text_offset![i]! + t.length)).toBe(t));
    expect(lp.tokens!.slice(1).some((t) => t.startsWith(' '))).toBe(true);
    // The chosen token is the most likely one at temperature 0.
    c.logprobs!.top_logprobs!.forEach((top, i) => {
      expect(Object.keys(top).length).toBeGreaterThan(0);
      expect(Math.max(...Object.values(top))).toBeCloseTo(c.logprobs!.token_logprobs![i]!, 5);
    });
    const many = await client.completions.create({ model: 'tiny', prompt: ['one two', 'three'], n: 2, max_tokens: 4, seed: 5 });
    expect(many.choices.map((x) => x.index)).toEqual([0, 1, 2, 3]);
    expect(many.usage!.completion_tokens).toBe(16);
    const ids = await client.completions.create({ model: 'tiny', prompt: [[1, 450, 7483], [1, 29871]], max_tokens: 3, temperature: 0 });
    expect(ids.usage!.prompt_tokens).toBe(5);
    expect(ids.choices).toHaveLength(2);
  });

  it('a whole response says its time to first token and its total in Server-Timing', async () => {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ model: 'tiny', prompt: 'The capital of France is', max_tokens: 5, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    const m = /^ttft;dur=([\d.]+);desc="time to first token", total;dur=([\d.]+)$/.exec(res.headers.get('server-timing') ?? '');
    expect(m, res.headers.get('server-timing') ?? 'no header').not.toBeNull();
    const [ttft, total] = [Number(m![1]), Number(m![2])];
    expect(ttft).toBeGreaterThan(0);
    expect(ttft).toBeLessThanOrEqual(total);
  });

  it('chats through the chat template, with logprobs in the chat format', async () => {
    const r = await client.chat.completions.create({
      model: 'tiny', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello!' }], max_completion_tokens: 5, logprobs: true, top_logprobs: 2, temperature: 0,
    });
    expect(r.object).toBe('chat.completion');
    const c = r.choices[0]!;
    expect(c.message.role).toBe('assistant');
    expect(c.logprobs!.content).toHaveLength(5);
    for (const t of c.logprobs!.content!) {
      expect(t.top_logprobs).toHaveLength(2);
      expect(t.bytes).toEqual([...Buffer.from(t.token)]);
      // the chosen token is the likeliest at temperature 0, and its text is the same in both lists
      expect(t.top_logprobs[0]!.token).toBe(t.token);
    }
    expect(c.logprobs!.content!.map((t) => t.token).join('')).toBe(c.message.content);
    expect(r.usage!.completion_tokens).toBe(5);
  });

  it('streams what the whole response holds, ending with usage and [DONE]', async () => {
    const bodies = [
      { kind: 'completions', body: { model: 'tiny', prompt: ['Once upon a time', 'It was'], n: 2, max_tokens: 12, temperature: 0.9, seed: 3 } },
      { kind: 'completions', body: { model: 'tiny', prompt: 'Hello', max_tokens: 20, temperature: 0, stop: ['e', 'in'] } },
      { kind: 'chat', body: { model: 'tiny', messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 10, n: 2, seed: 1 } },
    ] as const;
    for (const { kind, body } of bodies) {
      const whole = kind === 'chat' ? await client.chat.completions.create(body as never) : await client.completions.create(body as never);
      const stream = kind === 'chat'
        ? await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } } as never)
        : await client.completions.create({ ...body, stream: true, stream_options: { include_usage: true } } as never);
      const text = new Map<number, string>();
      const finish = new Map<number, string | null>();
      let usage: unknown = null;
      for await (const chunk of stream as unknown as AsyncIterable<Record<string, never>>) {
        const ch = chunk as { choices: { index: number; text?: string; delta?: { content?: string }; finish_reason: string | null }[]; usage?: unknown };
        if (ch.usage) usage = ch.usage;
        for (const c of ch.choices) {
          text.set(c.index, (text.get(c.index) ?? '') + (c.text ?? c.delta?.content ?? ''));
          if (c.finish_reason) finish.set(c.index, c.finish_reason);
        }
      }
      const want = (whole.choices as { index: number; text?: string; message?: { content: string }; finish_reason: string }[]);
      expect([...text.keys()].sort()).toEqual(want.map((c) => c.index));
      for (const c of want) {
        expect(text.get(c.index)).toBe(c.text ?? c.message!.content);
        expect(finish.get(c.index)).toBe(c.finish_reason);
      }
      expect(usage).toEqual(whole.usage);
    }
    // The stop sequences cut the text, and no streamed chunk ran past them.
    const cut = await client.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 20, temperature: 0, stop: ['e', 'in'] });
    expect(cut.choices[0]!.text).not.toMatch(/e|in/);
  });

  it('answers 24 concurrent requests each exactly as it answers it alone', async () => {
    const bodies = Array.from({ length: 24 }, (_, i) => i % 3 === 2
      ? { chat: true, body: { model: 'tiny', messages: [{ role: 'user' as const, content: `question ${i}` }], max_tokens: 3 + (i % 7), temperature: 0.7, seed: i, n: 1 + (i % 2) } }
      : { chat: false, body: { model: 'tiny', prompt: `prompt number ${i} is`, max_tokens: 2 + (i % 9), temperature: i % 2 ? 0 : 1, seed: 100 + i, logprobs: i % 4 === 0 ? 2 : null } });
    const run = (b: (typeof bodies)[number]) => (b.chat ? client.chat.completions.create(b.body as never) : client.completions.create(b.body as never));
    const alone = [];
    for (const b of bodies) alone.push(answer(await run(b)));
    const together = await Promise.all(bodies.map(async (b) => answer(await run(b))));
    expect(together).toEqual(alone);
  });
});

describe('errors, in OpenAI\'s format', () => {
  const post = (p: string, body: unknown, key = KEY) => fetch(`${url}${p}`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body),
  });

  it('400 names the field, 401 a wrong or missing key, 404 an unknown model or id, 413 a body too large', async () => {
    const bad = await client.completions.create({ model: 'tiny', prompt: 'x', temperature: 7 }).catch((e) => e);
    expect(bad).toBeInstanceOf(OpenAI.BadRequestError);
    expect(bad.error).toMatchObject({ param: 'temperature', type: 'invalid_request_error' });
    const unknown = await (await post('/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'x' }], tools: [] })).json();
    expect(unknown.error).toMatchObject({ param: 'tools', code: 'unsupported_parameter' });
    const role = await (await post('/v1/chat/completions', { model: 'tiny', messages: [{ role: 'robot', content: 'x' }] })).json();
    expect(role.error.param).toBe('messages[0].role');
    const long = await client.completions.create({ model: 'tiny', prompt: Array.from({ length: 600 }, () => 5), max_tokens: 2 }).catch((e) => e);
    expect(long.status).toBe(400);
    expect(long.error).toMatchObject({ code: 'context_length_exceeded', param: 'prompt' });

    const wrongKey = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'sk-wrong', maxRetries: 0 });
    await expect(wrongKey.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const noKey = await fetch(`${url}/v1/models`);
    expect(noKey.status).toBe(401);
    expect((await noKey.json()).error.code).toBe('invalid_api_key');
    // the path as Fastify routes it (decoded, any case of the escapes), and URLs it does not know
    for (const p of ['/%76%31/models', '/v%31/models', '/%761/batches', '/v1/%6dodels', '/V1/models', '/nowhere', '/v1/completions?x=/health']) {
      expect((await fetch(`${url}${p}`)).status, p).toBe(401);
    }
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect((await fetch(`${url}/metrics`)).status).toBe(200);

    const model = await client.completions.create({ model: 'gpt-4o', prompt: 'x' }).catch((e) => e);
    expect(model).toBeInstanceOf(OpenAI.NotFoundError);
    expect(model.error).toMatchObject({ param: 'model', code: 'model_not_found' });
    await expect(client.batches.retrieve('batch_0123456789abcdef01234567')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.files.retrieve('../../etc/passwd')).rejects.toBeInstanceOf(OpenAI.NotFoundError);

    const huge = await post('/v1/completions', { model: 'tiny', prompt: 'x'.repeat(70 * 1024) });
    expect(huge.status).toBe(413);
    expect((await huge.json()).error.code).toBe('request_too_large');
    const bigFile = await client.files.create({ file: await toFile(Buffer.alloc(1024 * 1024 + 10, 'a'), 'big.jsonl'), purpose: 'batch' }).catch((e) => e);
    expect(bigFile.status).toBe(413);
    const purpose = await client.files.create({ file: await toFile(Buffer.from('{}\n'), 'x.jsonl'), purpose: 'fine-tune' }).catch((e) => e);
    expect(purpose).toBeInstanceOf(OpenAI.BadRequestError);
    expect(purpose.error.param).toBe('purpose');
    // Bodies that are not the multipart/form-data their header says (they were answered 500)
    const boundary = 'xyz';
    for (const [type, body, why] of [
      ['multipart/form-data', 'abc', /Boundary not found/],
      [`multipart/form-data; boundary=${boundary}`, 'garbage', /Unexpected end of/],
      [`multipart/form-data; boundary=${boundary}`, `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--${boundary}\r\n` +
        'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\nabc', /Unexpected end of|terminated early/],
    ] as const) {
      const r = await server.app.inject({ method: 'POST', url: '/v1/files', headers: { authorization: `Bearer ${KEY}`, 'content-type': type }, payload: body });
      expect(r.statusCode, r.body).toBe(400);
      expect(r.json().error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_multipart' });
      expect(r.json().error.message).toMatch(why);
    }
    expect(fs.readdirSync(path.join(dir, 'data', 'files'))).toEqual([]);
  });

  it('a full data directory: 507 insufficient_storage, nothing half-stored, and the server goes on', async () => {
    const data = fs.realpathSync(path.join(dir, 'data'));
    const real = fs.writeSync;
    // every write into the data directory fails as on a full disk (the upload's stream is written;
    // the file's object, written durably, is not)
    const spy = vi.spyOn(fs, 'writeSync').mockImplementation(((fd: number, ...rest: unknown[]) => {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(data)) {
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
      }
      return (real as (...a: unknown[]) => number)(fd, ...rest);
    }) as never);
    const before = fs.readdirSync(path.join(data, 'files'));
    try {
      const full = await client.files.create({ file: await toFile(Buffer.from('{"custom_id":"a"}\n'), 'x.jsonl'), purpose: 'batch' }).catch((e) => e);
      expect(full.status).toBe(507);
      expect(full.error).toMatchObject({ type: 'server_error', code: 'insufficient_storage' });
      expect(full.error.message).toMatch(/the server cannot store this: .*files.*ENOSPC/);
    } finally {
      spy.mockRestore();
    }
    // nothing listed, no temporary left; the next upload is stored
    expect((await client.files.list()).data.map((f) => f.id).filter((id) => !before.includes(`${id}.json`))).toEqual([]);
    expect(fs.readdirSync(path.join(data, 'files')).filter((f) => !before.includes(f))).toEqual([]);
    const ok = await client.files.create({ file: await toFile(Buffer.from('{"custom_id":"a"}\n'), 'x.jsonl'), purpose: 'batch' });
    expect((await client.files.retrieve(ok.id)).bytes).toBe(18);
    await client.files.delete(ok.id);
  });

  it('400 for stream_options without stream, and for a max_tokens past the context; a message name reaches the template', async () => {
    const opts = await post('/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 2, stream_options: { include_usage: true } });
    expect([opts.status, (await opts.json()).error.param]).toEqual([400, 'stream_options']);
    const long = await client.completions.create({ model: 'tiny', prompt: Array.from({ length: 500 }, () => 5), max_tokens: 100 }).catch((e) => e);
    expect(long).toBeInstanceOf(OpenAI.BadRequestError);
    expect(long.error).toMatchObject({ code: 'context_length_exceeded', param: 'max_tokens' });
    expect(long.error.message).toMatch(/maximum context length is 512 tokens; you requested 600 tokens \(500 in the prompt, 100 in the completion\)/);
    const chat = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 600 }).catch((e) => e);
    expect(chat.error).toMatchObject({ code: 'context_length_exceeded', param: 'max_completion_tokens' });
    // (the test template ignores names: the same prompt with and without one)
    const named = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi', name: 'ann' }], max_tokens: 1 });
    expect(named.usage!.prompt_tokens).toBeGreaterThan(0);
  });

  it('503 in OpenAI\'s format for a request that comes while the server closes', async () => {
    const s = await buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data503'), maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
    });
    await s.app.ready();
    const closed = s.app.close();
    const r = await s.app.inject({ method: 'GET', url: '/v1/models' });
    await closed;
    expect(r.statusCode).toBe(503);
    expect(r.json().error).toMatchObject({ type: 'server_error', code: 'server_shutting_down' });
  });

  it('names what is wrong with a body that is not JSON, or not sent as JSON', async () => {
    const post = (payload: string, contentType?: string) => server.app.inject({
      method: 'POST', url: '/v1/completions', payload,
      headers: { authorization: `Bearer ${KEY}`, ...(contentType ? { 'content-type': contentType } : {}) },
    });
    const body = JSON.stringify({ model: 'tiny', prompt: 'a', max_tokens: 1 });
    // (a JSON body sent as text/plain was let through as a string: "'body' must be object")
    for (const ct of ['text/plain', 'application/x-www-form-urlencoded', undefined]) {
      const r = await post(body, ct);
      expect(r.statusCode, String(ct)).toBe(415);
      expect(r.json().error).toMatchObject({ code: 'unsupported_media_type', type: 'invalid_request_error' });
      expect(r.json().error.message).toContain(ct ? `Unsupported Content-Type '${ct}'` : 'Unsupported Content-Type (none given)');
      expect(r.json().error.message).toContain('Content-Type: application/json');
    }
    // (both were "Body is not valid JSON")
    const cut = await post('{"model":"tiny","prompt":', 'application/json');
    expect(cut.statusCode).toBe(400);
    expect(cut.json().error).toMatchObject({ code: 'invalid_json' });
    expect(cut.json().error.message).toMatch(/^The request body is not valid JSON: .*(end of JSON input|position)/);
    const proto = await post('{"model":"tiny","prompt":"a","__proto__":{}}', 'application/json');
    expect(proto.statusCode).toBe(400);
    expect(proto.json().error.message).toBe('The request body is not valid JSON: the key "__proto__" is not allowed');
    const empty = await post('', 'application/json');
    expect(empty.statusCode).toBe(400);
    expect(empty.json().error).toMatchObject({ code: 'invalid_json', message: 'The request body is empty: POST /v1/completions takes a JSON object.' });
    // a compressed body is refused as such (it was parsed as it came: "not valid UTF-8")
    const gz = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: gzipSync(body),
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'content-encoding': 'gzip' } });
    expect(gz.statusCode).toBe(415);
    expect(gz.json().error).toMatchObject({ code: 'unsupported_media_type', message: "Unsupported Content-Encoding 'gzip': send the body uncompressed" });
    // a JSON body still works, with a charset too
    expect((await post(body, 'application/json; charset=utf-8')).statusCode).toBe(200);
  });

  it('closes at once when its last request answers on a keep-alive connection', async () => {
    // (a connection busy when closing began stayed open until the keep-alive timeout: close()
    // took 72 s, and a restart on the data directory was refused meanwhile)
    const s = await buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data-keepalive'), maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
    });
    const at = await s.app.listen({ host: '127.0.0.1', port: 0 });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const answered = new Promise<{ status: number; connection: string | undefined }>((resolve, reject) => {
        const req = http.request(`${at}/v1/completions`, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection }));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ model: 'tiny', prompt: 'a b c', max_tokens: 30 }));
      });
      await new Promise((r) => setTimeout(r, 30));
      const t0 = performance.now();
      const closed = s.close();
      expect((await answered).status).toBe(200);
      await closed;
      expect(performance.now() - t0).toBeLessThan(5000);
    } finally {
      agent.destroy();
    }
  });

  it('429 with Retry-After when more interactive requests are in flight than --max-queue', async () => {
    const small = await buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data429'), maxQueue: 1, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
    });
    const at = await small.app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const c = new OpenAI({ baseURL: `${at}/v1`, apiKey: 'none', maxRetries: 0 });
      const results = await Promise.allSettled(Array.from({ length: 4 }, () => c.completions.create({ model: 'tiny', prompt: 'a b c', max_tokens: 40 })));
      expect(results.filter((r) => r.status === 'fulfilled').length).toBeGreaterThanOrEqual(1);
      const refused = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason);
      expect(refused.length).toBeGreaterThanOrEqual(1);
      for (const e of refused) {
        expect(e).toBeInstanceOf(OpenAI.RateLimitError);
        expect(e.headers.get('retry-after')).toBe('1');
      }
      // Metrics count what was served and refused.
      const metrics = await (await fetch(`${at}/metrics`)).text();
      expect(metrics).toMatch(/^tierlm_queue_depth \d+$/m);
      expect(metrics).toMatch(/^tierlm_http_responses_total\{code="429"\} [1-9]/m);
      expect(metrics).toMatch(/^tierlm_time_to_first_token_seconds_count [1-9]/m);
    } finally {
      await small.app.close();
    }
  });

  it('400 context_length_exceeded for a request whose cache cannot fit --ram; the requests beside it are served', async () => {
    const long = await loadModel(longContextModel(), { ramBytes: 64 * 2 ** 20, policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
    const limited = await buildServer({
      engine: engineFor(long, 'long'), dataDir: path.join(dir, 'data-long'), maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
    });
    const at = await limited.app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const c = new OpenAI({ baseURL: `${at}/v1`, apiKey: 'none', maxRetries: 0 });
      const ask = (maxTokens: number) => c.completions.create({ model: 'long', prompt: [5, 6, 7], max_tokens: maxTokens, temperature: 0 });
      const [a, big, b] = await Promise.allSettled([ask(4), ask(100_000), ask(3)]);
      expect(a).toMatchObject({ status: 'fulfilled', value: { usage: { completion_tokens: 4 } } });
      expect(b).toMatchObject({ status: 'fulfilled', value: { usage: { completion_tokens: 3 } } });
      const e = (big as PromiseRejectedResult).reason;
      expect(e).toBeInstanceOf(OpenAI.BadRequestError);
      expect(e.error).toMatchObject({ code: 'context_length_exceeded', param: 'max_tokens' });
      expect(e.error.message).toMatch(/needs 100003 positions .* does not fit the memory limits: RAM limit 64\.0 MiB is too small/);
      // streamed, the same status (it was a 200 stream holding an error event): the stream's
      // headers wait for its first chunk
      const body = { model: 'long', prompt: [5, 6, 7], max_tokens: 100_000, stream: true };
      const res = await fetch(`${at}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(res.status).toBe(400);
      expect((await res.json()).error).toMatchObject({ code: 'context_length_exceeded', param: 'max_tokens' });
      const fine = await fetch(`${at}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'long', prompt: [5, 6, 7], max_tokens: 2, stream: true }) });
      expect([fine.status, fine.headers.get('content-type')]).toEqual([200, 'text/event-stream']);
      expect((await fine.text()).trim().endsWith('data: [DONE]')).toBe(true);
    } finally {
      await limited.app.close();
      await long.close();
    }
  });

  it('a chat request without max_tokens runs to the end of the context the memory limits give, not refused', async () => {
    // llama-test with a million positions under 70 MiB (44.5 of them the tokenizer's): a block
    // holds ~1000 of them; OpenAI's chat
    // default ("to the end of the context") asked for all million, and every such request was refused.
    const longDir = path.join(dir, 'long-chat');
    initModel({ config: 'llama-test', out: longDir, seed: 3 });
    addTokenizer(longDir);
    const cfgFile = path.join(longDir, 'config.json');
    fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), max_position_embeddings: 1_000_000 }));
    const long = await loadModel(longDir, { ramBytes: 70 * 2 ** 20, policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
    const limited = await buildServer({
      engine: engineFor(long, 'long'), dataDir: path.join(dir, 'data-long-chat'), maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
    });
    const at = await limited.app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const c = new OpenAI({ baseURL: `${at}/v1`, apiKey: 'none', maxRetries: 0 });
      const ask = (content: string) => c.chat.completions.create({ model: 'long', messages: [{ role: 'user', content }], temperature: 0 });
      const [a, b] = await Promise.all([ask('hi'), ask('a somewhat longer question')]);
      const context = a.usage!.prompt_tokens + a.usage!.completion_tokens;
      expect(a.choices[0]!.finish_reason).toBe('length');
      expect(context).toBeGreaterThan(500);
      expect(context).toBeLessThan(100_000);
      // the same context for every request (it is the limits', not the batch's)
      expect(b.usage!.prompt_tokens + b.usage!.completion_tokens).toBe(context);
      expect(b.usage!.prompt_tokens).toBeGreaterThan(a.usage!.prompt_tokens);
      // an explicit max_tokens past it is still refused, as before
      const big = await c.chat.completions.create({ model: 'long', messages: [{ role: 'user', content: 'hi' }], max_tokens: 100_000 }).catch((e) => e);
      expect(big.error).toMatchObject({ code: 'context_length_exceeded' });
    } finally {
      await limited.app.close();
      await long.close();
    }
  });

  it('a client that goes away cancels its request', async () => {
    const abort = new AbortController();
    const stream = await client.completions.create({ model: 'tiny', prompt: 'go on', max_tokens: 400, stream: true }, { signal: abort.signal });
    const before = model.scheduler().stats.generatedTokens;
    for await (const _ of stream) {
      abort.abort();
      break;
    }
    // The request leaves the block at a step boundary: far fewer than its 400 tokens are made.
    await new Promise((r) => setTimeout(r, 500));
    const after = model.scheduler().stats.generatedTokens;
    await new Promise((r) => setTimeout(r, 300));
    expect(model.scheduler().stats.generatedTokens).toBe(after);
    expect(after - before).toBeLessThan(400);
  });

  it('/metrics counts every response by status: streams, and clients gone (499) whether streamed or not', async () => {
    const count = async (code: number) => {
      const text = await (await fetch(`${url}/metrics`)).text();
      return Number(new RegExp(`^tierlm_http_responses_total\\{code="${code}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    };
    const [ok0, gone0] = [await count(200), await count(499)];
    await client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 2, stream: true }).then(async (s) => { for await (const _ of s) void _; });
    for (const stream of [false, true]) {
      const abort = new AbortController();
      const req = client.completions.create({ model: 'tiny', prompt: 'go on', max_tokens: 400, stream }, { signal: abort.signal });
      setTimeout(() => abort.abort(), 150);
      await req.then(async (s) => { if (stream) for await (const _ of s as AsyncIterable<unknown>) void _; }).catch(() => undefined);
    }
    await new Promise((r) => setTimeout(r, 500));
    expect(await count(200)).toBeGreaterThanOrEqual(ok0 + 1);
    expect(await count(499)).toBe(gone0 + 2);
  });
});

/** A Batch API input file: completions and chat lines, and `bad` a line with an invalid body. */
function batchInput(lines: number, maxTokens: number, bad?: number): string {
  return Array.from({ length: lines }, (_, i) => JSON.stringify(i === bad
    ? { custom_id: `r${i}`, method: 'POST', url: '/v1/completions', body: { model: 'tiny', prompt: 'x', top_p: 3 } }
    : { custom_id: `r${i}`, method: 'POST', url: '/v1/completions', body: { model: 'tiny', prompt: `line ${i} says`, max_tokens: maxTokens, ...lineSampling(i) } })).join('\n') + '\n';
}

/** Most lines greedy (sampling and logprobs cost the engine a sort of the vocabulary per token), some sampled with a seed, some with logprobs. */
function lineSampling(i: number): object {
  return i % 5 === 0 ? { seed: i } : i % 5 === 1 ? { temperature: 0, logprobs: 1 } : { temperature: 0 };
}

async function waitFor<T>(get: () => Promise<T>, done: (v: T) => boolean, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (done(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const finished = (b: { status: string }) => ['completed', 'failed', 'cancelled'].includes(b.status);

/** Output lines by custom_id, each answer without what differs between runs. */
function byCustomId(text: string): Map<string, unknown> {
  const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const map = new Map<string, unknown>();
  for (const l of lines) {
    expect(map.has(l.custom_id), `custom_id ${l.custom_id} answered twice`).toBe(false);
    map.set(l.custom_id, { id: l.id, status: l.response?.status_code, body: l.response && (l.response.status_code === 200 ? answer(l.response.body) : l.response.body), error: l.error });
  }
  return map;
}

describe('the Batch API', () => {
  it('runs a file with a bad line: output and error files, counts; tierlm batch gives the same answers', async () => {
    const input = path.join(dir, 'batch.jsonl');
    fs.writeFileSync(input, batchInput(10, 5, 4));
    const file = await client.files.create({ file: await toFile(fs.createReadStream(input), 'batch.jsonl'), purpose: 'batch' });
    expect(file).toMatchObject({ object: 'file', purpose: 'batch', filename: 'batch.jsonl', bytes: fs.statSync(input).size });
    expect(await (await client.files.content(file.id)).text()).toBe(fs.readFileSync(input, 'utf8'));
    const created = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/completions', completion_window: '24h', metadata: { job: 't' } });
    expect(created.request_counts!.total).toBe(10);
    const b = await waitFor(() => client.batches.retrieve(created.id), finished);
    expect(b.status).toBe('completed');
    expect(b.request_counts).toEqual({ total: 10, completed: 9, failed: 1 });
    expect((await client.batches.list()).data.map((x) => x.id)).toContain(b.id);
    await expect(client.batches.cancel(b.id)).rejects.toBeInstanceOf(OpenAI.BadRequestError);

    const out = byCustomId(await (await client.files.content(b.output_file_id!)).text());
    const errs = byCustomId(await (await client.files.content(b.error_file_id!)).text());
    expect([...out.keys()].sort()).toEqual(['r0', 'r1', 'r2', 'r3', 'r5', 'r6', 'r7', 'r8', 'r9']);
    expect([...errs.keys()]).toEqual(['r4']);
    expect(errs.get('r4')).toMatchObject({ status: 400, body: { error: { param: 'top_p', message: expect.stringMatching(/^line 5: /) } } });
    // Each answer is what the endpoint itself returns for the body.
    const direct = await client.completions.create({ model: 'tiny', prompt: 'line 6 says', max_tokens: 5, temperature: 0, logprobs: 1 });
    expect((out.get('r6') as { body: unknown }).body).toEqual(answer(direct));

    const offOut = path.join(dir, 'offline.jsonl');
    const offErr = path.join(dir, 'offline-errors.jsonl');
    const r = cli(['batch', '--model', modelDir, '--served-model-name', 'tiny', '--input', input, '--output', offOut, '--errors', offErr, '--gpu-batch-size', '3']);
    expect(r.code, r.stderr).toBe(2);
    expect(byCustomId(fs.readFileSync(offOut, 'utf8'))).toEqual(out);
    expect(byCustomId(fs.readFileSync(offErr, 'utf8'))).toEqual(errs);

    // Files are listed (newest first, by purpose, paged) and deleted, as OpenAI's clients expect.
    const listed = (await client.files.list()).data.map((f) => f.id);
    for (const id of [file.id, b.output_file_id!, b.error_file_id!]) expect(listed).toContain(id);
    expect((await client.files.list({ purpose: 'batch_output' })).data.map((f) => f.id).sort()).toEqual([b.output_file_id!, b.error_file_id!].sort());
    const firstTwo = await fetch(`${url}/v1/files?limit=2&order=asc`, { headers: { authorization: `Bearer ${KEY}` } }).then((x) => x.json());
    expect(firstTwo).toMatchObject({ object: 'list', has_more: true });
    expect(firstTwo.data).toHaveLength(2);
    // (with application/json and no body, as the Python SDK sends it)
    const deleted = await server.app.inject({ method: 'DELETE', url: `/v1/files/${file.id}`, headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' } });
    expect(deleted.statusCode, deleted.body).toBe(200);
    expect(deleted.json()).toEqual({ id: file.id, object: 'file', deleted: true });
    await expect(client.files.retrieve(file.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.files.delete(file.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    expect((await client.files.list()).data.map((f) => f.id)).not.toContain(file.id);
    expect(fs.readdirSync(path.join(dir, 'data', 'files')).filter((n) => n.startsWith(file.id))).toEqual([]);
  });

  it('runs more lines at once than a signal\'s default listener limit without a leak warning', async () => {
    // (every line in flight listens to the batch's cancel signal; past 10 Node warned of a leak)
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    const wide = await buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'data-wide'), maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 24,
    });
    try {
      const c = new OpenAI({ baseURL: `${await wide.app.listen({ host: '127.0.0.1', port: 0 })}/v1`, apiKey: 'none', maxRetries: 0 });
      const file = await c.files.create({ file: await toFile(Buffer.from(batchInput(24, 2)), 'w.jsonl'), purpose: 'batch' });
      const created = await c.batches.create({ input_file_id: file.id, endpoint: '/v1/completions', completion_window: '24h' });
      expect(await waitFor(() => c.batches.retrieve(created.id), finished)).toMatchObject({ status: 'completed', request_counts: { completed: 24 } });
      await new Promise((r) => setImmediate(r));
      expect(warnings).toEqual([]);
    } finally {
      process.off('warning', onWarning);
      await wide.close();
    }
  });

  it('serves interactive requests before batch lines, and a cancelled batch ends cancelled', async () => {
    const file = await client.files.create({ file: await toFile(Buffer.from(batchInput(40, 30)), 'c.jsonl'), purpose: 'batch' });
    const created = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/completions', completion_window: '24h' });
    await waitFor(() => client.batches.retrieve(created.id), (b) => b.request_counts!.completed >= 1);
    // The block is full of batch lines: an interactive request takes the next free slot, before
    // the lines waiting, and is answered while the batch is still far from done.
    await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'first!' }], max_tokens: 5 });
    const meanwhile = await client.batches.retrieve(created.id);
    expect(meanwhile.status).toBe('in_progress');
    expect(meanwhile.request_counts!.completed).toBeLessThan(20);
    // its input is in use while it runs
    const inUse = await client.files.delete(file.id).catch((e) => e);
    expect(inUse).toBeInstanceOf(OpenAI.BadRequestError);
    expect(inUse.error).toMatchObject({ code: 'file_in_use', param: 'file_id' });
    // As OpenAI's Python SDK sends it: application/json with no body (refused as invalid JSON).
    const sent = await server.app.inject({ method: 'POST', url: `/v1/batches/${created.id}/cancel`,
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'content-length': '0' } });
    expect(sent.statusCode, sent.body).toBe(200);
    const cancelling = sent.json();
    expect(['cancelling', 'cancelled']).toContain(cancelling.status);
    const b = await waitFor(() => client.batches.retrieve(created.id), finished);
    expect(b.status).toBe('cancelled');
    expect(b.request_counts!.completed).toBeLessThan(40);
  });

  it('a batch running when the server is killed, then stopped, completes after restarts, every line answered once', async () => {
    const data = path.join(dir, 'restart');
    const args = ['--model', modelDir, '--served-model-name', 'tiny', '--data-dir', data, '--gpu-batch-size', '2', '--num-gpu-batches', '1'];
    const clientOf = (s: { url: string }) => new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const first = await startServe(args);
    const c = clientOf(first);
    const file = await c.files.create({ file: await toFile(Buffer.from(batchInput(24, 32, 7)), 'r.jsonl'), purpose: 'batch' });
    const created = await c.batches.create({ input_file_id: file.id, endpoint: '/v1/completions', completion_window: '24h' });
    const partway = await waitFor(() => c.batches.retrieve(created.id), (b) => b.request_counts!.completed >= 2);
    // A second server on the same data directory is refused (before its model loads): both
    // resumed the running batch and appended the lines in flight, many lines twice.
    const other = await startServe(args).catch((e: Error) => e);
    if (!(other instanceof Error)) other.child.kill('SIGKILL');
    expect(String(other)).toMatch(new RegExp(`exited \\(1\\): tierlm: ${data}: another server \\(pid ${first.child.pid}\\) keeps its files and batches here; stop it first`));
    first.child.kill('SIGKILL');
    await first.exited;
    expect(partway.status).toBe('in_progress');

    // SIGTERM: stops accepting, writes the lines in flight, keeps the job in_progress, exits 0.
    const second = await startServe(args);
    await waitFor(() => clientOf(second).batches.retrieve(created.id), (b) => b.request_counts!.completed >= partway.request_counts!.completed + 3);
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
    expect(second.stderr()).toMatch(/tierlm: stopped/);
    const saved = readJsonl<{ batch: { status: string; request_counts: { completed: number } }; outputId: string }>(path.join(data, 'batches', `${created.id}.json`))[0]!;
    expect(saved.batch.status).toBe('in_progress');
    const outputLines = fs.readFileSync(path.join(data, 'files', `${saved.outputId}.jsonl`), 'utf8').trim().split('\n');
    expect(saved.batch.request_counts.completed).toBe(outputLines.length);

    const third = await startServe(args);
    try {
      const c3 = clientOf(third);
      const b = await waitFor(() => c3.batches.retrieve(created.id), finished);
      expect(b.status).toBe('completed');
      expect(b.request_counts).toEqual({ total: 24, completed: 23, failed: 1 });
      const out = byCustomId(await (await c3.files.content(b.output_file_id!)).text());
      expect(out.size).toBe(23);
      expect(byCustomId(await (await c3.files.content(b.error_file_id!)).text()).size).toBe(1);
    } finally {
      third.child.kill('SIGTERM');
    }
    expect(await third.exited).toBe(0);
  });
});

describe('an empty API key', () => {
  it('an empty $TIERLM_API_KEY is no key: SDK requests (which send one) are served; an empty --api-key is refused', async () => {
    // (it made a server that took only requests without an Authorization header: every OpenAI
    // SDK sends one, so each of their calls got 401 "Incorrect API key")
    const saved = process.env.TIERLM_API_KEY;
    process.env.TIERLM_API_KEY = '';
    let s: Awaited<ReturnType<typeof startServe>> | undefined;
    try {
      s = await startServe(['--model', modelDir, '--served-model-name', 'tiny', '--data-dir', path.join(dir, 'empty-key'), '--gpu-batch-size', '2', '--num-gpu-batches', '1']);
    } finally {
      if (saved === undefined) delete process.env.TIERLM_API_KEY;
      else process.env.TIERLM_API_KEY = saved;
    }
    try {
      const sdk = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'sk-dummy', maxRetries: 0 });
      expect((await sdk.models.list()).data.map((m) => m.id)).toEqual(['tiny']);
      expect((await fetch(`${s.url}/v1/models`)).status).toBe(200);
    } finally {
      s.child.kill('SIGTERM');
    }
    expect(await s.exited).toBe(0);

    const typed = cli(['serve', '--model', modelDir, '--data-dir', path.join(dir, 'empty-flag'), '--api-key', '']);
    expect(typed.code).toBe(1);
    expect(typed.stderr).toMatch(/--api-key is empty: give the key requests must send, or leave --api-key out/);
    // (and an embedding's empty key)
    await expect(buildServer({
      engine: engineFor(model, 'tiny'), dataDir: path.join(dir, 'empty-api'), apiKey: '', maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
    })).rejects.toThrow(/apiKey is empty/);
  });
});
