// A server batch job that the engine fails midway (ENOSPC reserving a cache file, or another error)
// was marked 'failed' with output_file_id null: the lines it had answered were in the data dir but
// no request returned them, and a restart did not go on with a job the disk had failed.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { type Engine, engineFor } from '../src/openai/complete.js';
import { type Server, buildServer } from '../src/server/app.js';
import type { BatchObject } from '../src/server/store.js';
import { tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

let dir: string;
let model: LanguageModel;

beforeAll(async () => {
  dir = tmpDir('server-batch-enospc');
  model = await loadModel(tinyChatModel(dir), { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
});

afterAll(async () => {
  await model?.close();
});

const LINES = 8;

/** Line 0 has an invalid body (it fails without reaching the engine); the others are completions. */
const input = () => Array.from({ length: LINES }, (_, i) => JSON.stringify({
  custom_id: `r${i}`, method: 'POST', url: '/v1/completions',
  body: i === 0 ? { model: 'tiny', prompt: 'x', top_p: 3 } : { model: 'tiny', prompt: `line ${i} says`, max_tokens: 4, temperature: 0 },
})).join('\n') + '\n';

/** The engine, whose `fail`th request (from 1) fails as the engine does, with `error`. */
function failingEngine(fail: number, error: Error): Engine {
  const engine = engineFor(model, 'tiny');
  const real = engine.scheduler;
  let n = 0;
  const submit: typeof real.submit = (...a) => (++n === fail ? Promise.reject(error) : real.submit(...a));
  const scheduler = new Proxy(real, {
    get: (t, k) => {
      if (k === 'submit') return submit;
      const v = Reflect.get(t, k) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  return { ...engine, scheduler };
}

const enospc = () => Object.assign(new Error('ENOSPC (No space left on device) preallocating 24739840 bytes for /disk/cache-1.bin'), { code: 'ENOSPC' });

// (one line at a time: the 5th request is line 5, after lines 1-4 were answered)
const server = (data: string, engine: Engine, batchRetryMs?: number) =>
  buildServer({ engine, dataDir: data, maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 1, batchRetryMs });

async function createBatch(s: Server): Promise<string> {
  const boundary = 'b0undary';
  const payload = `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
    `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n${input()}\r\n--${boundary}--\r\n`;
  const file = (await s.app.inject({ method: 'POST', url: '/v1/files', headers: { 'content-type': `multipart/form-data; boundary=${boundary}` }, payload })).json() as { id: string };
  const created = await s.app.inject({ method: 'POST', url: '/v1/batches', payload: { input_file_id: file.id, endpoint: '/v1/completions', completion_window: '24h' } });
  return (created.json() as BatchObject).id;
}

async function ended(s: Server, id: string): Promise<BatchObject> {
  for (;;) {
    const b = (await s.app.inject({ method: 'GET', url: `/v1/batches/${id}` })).json() as BatchObject;
    if (['completed', 'failed', 'cancelled'].includes(b.status)) return b;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function content(s: Server, id: string | null): Promise<string[]> {
  expect(id).not.toBeNull();
  const body = (await s.app.inject({ method: 'GET', url: `/v1/files/${id}/content` })).body;
  return body.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { custom_id: string }).custom_id);
}

describe('a server batch the engine fails', () => {
  it('publishes the lines it answered, reports the disk error, and goes on after a restart', async () => {
    const data = path.join(dir, 'enospc');
    const first = await server(data, failingEngine(5, enospc()));
    let id: string;
    try {
      id = await createBatch(first);
      const b = await ended(first, id);
      expect(b.status).toBe('failed');
      expect(b.request_counts).toEqual({ total: LINES, completed: 4, failed: 1 });
      expect(await content(first, b.output_file_id)).toEqual(['r1', 'r2', 'r3', 'r4']);
      expect(await content(first, b.error_file_id)).toEqual(['r0']);
      expect(b.errors!.data[0]!.code).toBe('insufficient_storage');
      expect(b.errors!.data[0]!.message).toMatch(/^ENOSPC .*preallocating 24739840 bytes for \/disk\/cache-1\.bin .*when it restarts/);
      const listed = (await first.app.inject({ method: 'GET', url: '/v1/files?purpose=batch_output' })).json() as { data: { id: string }[] };
      expect(listed.data.map((f) => f.id).sort()).toEqual([b.output_file_id, b.error_file_id].sort());
    } finally {
      await first.close();
    }

    const second = await server(data, engineFor(model, 'tiny'));
    try {
      second.jobs.resume();
      const b = await ended(second, id);
      expect(b.status).toBe('completed');
      expect(b.errors).toBeNull();
      expect(b.failed_at).toBeNull();
      expect(b.request_counts).toEqual({ total: LINES, completed: LINES - 1, failed: 1 });
      // (the lines answered before the failure are not run again)
      expect(await content(second, b.output_file_id)).toEqual(['r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7']);
      expect(await content(second, b.error_file_id)).toEqual(['r0']);
      const file = (await second.app.inject({ method: 'GET', url: `/v1/files/${b.output_file_id}` })).json() as { bytes: number };
      expect(file.bytes).toBe(fs.statSync(path.join(data, 'files', `${b.output_file_id}.jsonl`)).size);
    } finally {
      await second.close();
    }
  });

  it('is tried again while the server runs: failed while the disk fails it (each wait twice the last), then it goes on', async () => {
    // (it stayed failed until a restart, however long the server ran after the disk was freed)
    const data = path.join(dir, 'retry');
    const engine = engineFor(model, 'tiny');
    const real = engine.scheduler;
    let full = false;
    let requests = 0;
    const submit: typeof real.submit = (...a) => (++requests === 3 && (full = true), full ? Promise.reject(enospc()) : real.submit(...a));
    const scheduler = new Proxy(real, {
      get: (t, k) => (k === 'submit' ? submit : (Reflect.get(t, k) as (...a: unknown[]) => unknown)?.bind?.(t) ?? Reflect.get(t, k)),
    });
    const s = await server(data, { ...engine, scheduler }, 40);
    try {
      const id = await createBatch(s);
      const messages: string[] = [];
      // Three tries fail (the first and two more, 40 and 80 ms later); then the disk is freed.
      const deadline = performance.now() + 20_000;
      for (;;) {
        if (performance.now() > deadline) throw new Error(`not completed in 20 s (failures seen: ${messages.length})`);
        const b = (await s.app.inject({ method: 'GET', url: `/v1/batches/${id}` })).json() as BatchObject;
        if (b.status === 'failed' && !messages.includes(b.errors!.data[0]!.message)) {
          messages.push(b.errors!.data[0]!.message);
          expect(await content(s, b.output_file_id)).toEqual(['r1', 'r2']);
          if (messages.length === 3) full = false;
        }
        if (b.status === 'completed') break;
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(messages.map((m) => /in (\d+ ms), or when it restarts/.exec(m)?.[1])).toEqual(['40 ms', '80 ms', '160 ms']);
      const b = (await s.app.inject({ method: 'GET', url: `/v1/batches/${id}` })).json() as BatchObject;
      expect(b.errors).toBeNull();
      expect(b.failed_at).toBeNull();
      expect(b.request_counts).toEqual({ total: LINES, completed: LINES - 1, failed: 1 });
      // (each line answered once: the tries go on from the lines answered)
      expect(await content(s, b.output_file_id)).toEqual(['r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7']);
      expect(await content(s, b.error_file_id)).toEqual(['r0']);
    } finally {
      await s.close();
    }
  });

  it('a job the disk failed, waiting to be tried again, can be cancelled: it is not tried again, nor after a restart', async () => {
    const data = path.join(dir, 'cancel-retry');
    const first = await server(data, failingEngine(5, enospc()), 60_000);
    let id: string;
    try {
      id = await createBatch(first);
      expect((await ended(first, id)).status).toBe('failed');
      const cancelled = await first.app.inject({ method: 'POST', url: `/v1/batches/${id}/cancel` });
      expect(cancelled.statusCode).toBe(200);
      const b = cancelled.json() as BatchObject;
      expect(b.status).toBe('cancelled');
      expect(b.cancelled_at).not.toBeNull();
      expect(await content(first, b.output_file_id)).toEqual(['r1', 'r2', 'r3', 'r4']);
      // (a cancelled job is not cancelled again)
      expect((await first.app.inject({ method: 'POST', url: `/v1/batches/${id}/cancel` })).statusCode).toBe(400);
    } finally {
      await first.close();
    }
    const second = await server(data, engineFor(model, 'tiny'), 10);
    try {
      second.jobs.resume();
      await new Promise((r) => setTimeout(r, 50));
      expect(second.jobs.get(id)!.batch.status).toBe('cancelled');
      expect(second.jobs.get(id)!.batch.request_counts.completed).toBe(4);
    } finally {
      await second.close();
    }
  });

  it('publishes the lines it answered when another error fails it, and leaves it failed after a restart', async () => {
    const data = path.join(dir, 'other');
    const first = await server(data, failingEngine(3, new Error('engine exploded')));
    let id: string;
    try {
      id = await createBatch(first);
      const b = await ended(first, id);
      expect(b.status).toBe('failed');
      expect(b.errors!.data).toEqual([{ code: 'engine_error', message: 'engine exploded', param: null, line: null }]);
      expect(await content(first, b.output_file_id)).toEqual(['r1', 'r2']);
      expect(await content(first, b.error_file_id)).toEqual(['r0']);
    } finally {
      await first.close();
    }
    const second = await server(data, engineFor(model, 'tiny'));
    try {
      second.jobs.resume();
      const b = second.jobs.get(id)!.batch;
      expect(b.status).toBe('failed');
      expect(b.request_counts.completed).toBe(2);
    } finally {
      await second.close();
    }
  });

  it('publishes the whole lines it answered when the data directory fills up, and goes on after a restart', async () => {
    // (a 48 KiB tmpfs as --data-dir: 46 lines answered, output_file_id null, as there was no room
    // for the file object, and the output file ended in a torn line)
    const data = path.join(dir, 'full');
    const first = await server(data, engineFor(model, 'tiny'));
    const root = fs.realpathSync(data);
    const real = fs.writeSync;
    let full = false;
    let answers = 0;
    // The disk fills up in the middle of the 4th answer's line: that write stores half of it, and
    // from then on every write into the data directory that needs a new byte fails (overwriting
    // bytes a file has does not).
    const spy = vi.spyOn(fs, 'writeSync').mockImplementation(((fd: number, buf: string | Uint8Array, ...rest: unknown[]) => {
      let where = '';
      try {
        where = fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch { /* not a file */ }
      if (where.startsWith(root)) {
        const bytes = typeof buf === 'string' ? Buffer.from(buf) : Buffer.from(buf.buffer, buf.byteOffset + ((rest[0] as number) ?? 0), (rest[1] as number) ?? buf.byteLength);
        const position = typeof buf === 'string' ? rest[0] : rest[2];
        if (!full && bytes.includes('"status_code":200') && ++answers === 4) {
          full = true;
          return real(fd, bytes.subarray(0, bytes.length >> 1));
        }
        const size = fs.fstatSync(fd).size;
        if (full && (typeof position === 'number' ? position : size) + bytes.length > size) {
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
        }
      }
      return (real as (...a: unknown[]) => number)(fd, buf, ...rest);
    }) as never);
    let id: string;
    try {
      id = await createBatch(first);
      const b = await ended(first, id);
      expect(full).toBe(true);
      expect(b.status).toBe('failed');
      expect(b.request_counts).toEqual({ total: LINES, completed: 3, failed: 1 });
      // (published: not 'output_not_published' for want of room for the file object)
      expect(b.output_file_id).not.toBeNull();
      expect(b.errors!.data.map((e) => e.code)).toEqual(['insufficient_storage']);
      // every line downloaded is whole: the torn one is cut
      const body = (await first.app.inject({ method: 'GET', url: `/v1/files/${b.output_file_id}/content` })).body;
      expect(body.endsWith('\n')).toBe(true);
      expect(await content(first, b.output_file_id)).toEqual(['r1', 'r2', 'r3']);
      expect(await content(first, b.error_file_id)).toEqual(['r0']);
      const file = (await first.app.inject({ method: 'GET', url: `/v1/files/${b.output_file_id}` })).json() as { bytes: number };
      expect(file.bytes).toBe(Buffer.byteLength(body));
    } finally {
      spy.mockRestore();
      await first.close();
    }

    // space freed: the job goes on from the three lines
    const second = await server(data, engineFor(model, 'tiny'));
    try {
      second.jobs.resume();
      const b = await ended(second, id);
      expect(b.status).toBe('completed');
      expect(b.request_counts).toEqual({ total: LINES, completed: LINES - 1, failed: 1 });
      expect(await content(second, b.output_file_id)).toEqual(['r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7']);
      expect(await content(second, b.error_file_id)).toEqual(['r0']);
    } finally {
      await second.close();
    }
  });
});
