// A batch resumed after a restart counts the lines answered before it at once: its request_counts
// (what GET returns, and the object saved when the job starts again) were those of the last save
// before the server went away — up to a second old after a kill — until the first new line ended.
import fs from 'node:fs';
import path from 'node:path';
import OpenAI, { toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { engineFor } from '../src/openai/complete.js';
import { buildServer } from '../src/server/app.js';
import type { StoredBatch } from '../src/server/store.js';
import { tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

let dir: string;
let model: LanguageModel;

beforeAll(async () => {
  dir = tmpDir('batch-restart-counts');
  model = await loadModel(tinyChatModel(dir), { policy: { gpuBatchSize: 2, numGpuBatches: 1 } });
});

afterAll(async () => {
  await model?.close();
});

const LINES = 40;

/** Line 0 has an invalid body (it fails); the others are greedy completions. */
const input = () => Array.from({ length: LINES }, (_, i) => JSON.stringify({
  custom_id: `r${i}`, method: 'POST', url: '/v1/completions',
  body: i === 0 ? { model: 'tiny', prompt: 'x', top_p: 3 } : { model: 'tiny', prompt: `line ${i} says`, max_tokens: 16, temperature: 0 },
})).join('\n') + '\n';

const server = (data: string) => buildServer({ engine: engineFor(model, 'tiny'), dataDir: data, maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 1 });

const lineCount = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0);

describe('a batch resumed after a restart', () => {
  it('reports the lines answered before the restart at once, and saves them so', async () => {
    const data = path.join(dir, 'data');
    const first = await server(data);
    const c = new OpenAI({ baseURL: `${await first.app.listen({ host: '127.0.0.1', port: 0 })}/v1`, apiKey: 'none', maxRetries: 0 });
    const file = await c.files.create({ file: await toFile(Buffer.from(input()), 'in.jsonl'), purpose: 'batch' });
    const created = await c.batches.create({ input_file_id: file.id, endpoint: '/v1/completions', completion_window: '24h' });
    for (let b = created; b.request_counts!.completed < 3; b = await c.batches.retrieve(created.id)) await new Promise((r) => setTimeout(r, 20));
    await first.close();

    // As after a kill: the saved object holds the counts of a save before the last lines.
    const saved = path.join(data, 'batches', `${created.id}.json`);
    const stale = JSON.parse(fs.readFileSync(saved, 'utf8')) as StoredBatch;
    expect(stale.batch.status).toBe('in_progress');
    stale.batch.request_counts = { total: LINES, completed: 1, failed: 0 };
    fs.writeFileSync(saved, JSON.stringify(stale));
    const answered = lineCount(path.join(data, 'files', `${stale.outputId}.jsonl`));
    const failed = lineCount(path.join(data, 'files', `${stale.errorId}.jsonl`));
    expect(answered).toBeGreaterThanOrEqual(3);
    expect(answered).toBeLessThan(LINES - 10);
    expect(failed).toBe(1);

    const second = await server(data);
    try {
      second.jobs.resume();
      // (before any line of this run can end: the counts come from the files alone)
      const counts = { total: LINES, completed: answered, failed };
      expect(second.jobs.get(created.id)!.batch.request_counts).toEqual(counts);
      expect((JSON.parse(fs.readFileSync(saved, 'utf8')) as StoredBatch).batch.request_counts).toEqual(counts);
      const got = (await second.app.inject({ method: 'GET', url: `/v1/batches/${created.id}` })).json() as { request_counts: typeof counts };
      expect(got.request_counts.completed).toBeGreaterThanOrEqual(answered);
      expect(got.request_counts.failed).toBe(failed);
      await second.app.inject({ method: 'POST', url: `/v1/batches/${created.id}/cancel` });
    } finally {
      await second.close();
    }
    const end = (JSON.parse(fs.readFileSync(saved, 'utf8')) as StoredBatch).batch;
    expect(end.status).toBe('cancelled');
    expect(end.request_counts.completed).toBe(lineCount(path.join(data, 'files', `${stale.outputId}.jsonl`)));
  });
});
