// `tierlm batch` under --ram plans its block as `tierlm serve` does (prompts of 512, answers of
// 128, chunked prefill), not for the file's largest line: a line the block cannot hold gets its
// own error line while the rest run (the whole file was refused, exit 1), and a chat line without
// max_tokens runs to the same context as in the server's batch (the default length is what the
// block's shape leaves; planned for another shape, it stopped at 282 positions against 824).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fitWorkload, loadOptions } from '../src/cli/policy-options.js';
import { SERVER_PREFILL_CHUNK } from '../src/engine/generate.js';
import { loadModel } from '../src/engine/model.js';
import { engineFor } from '../src/openai/complete.js';
import { buildServer } from '../src/server/app.js';
import { cli } from './helpers/cli.js';
import { tmpDir } from './helpers/fixtures.js';
import { tinyChatModel } from './helpers/serve.js';

const RAM = 100 * 2 ** 20;
const line = (custom_id: string, body: object, url = '/v1/completions') => JSON.stringify({ custom_id, method: 'POST', url, body });
const read = (file: string) => new Map(fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).map((l) => [l.custom_id, l]));

/** The tiny chat model with a million positions: --ram, not the model, bounds the context. */
function longChatModel(dir: string): string {
  const model = tinyChatModel(dir);
  const cfg = path.join(model, 'config.json');
  fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, 'utf8')), max_position_embeddings: 1_000_000 }));
  return model;
}

/** `file` run as a Batch API job by a server whose model is loaded as `tierlm serve --ram` loads
 *  it (src/cli/serve.ts's workload), in this process; its output lines. */
async function serverBatch(model: string, file: string, dir: string): Promise<string> {
  const work = { ...fitWorkload(model, { source: { model }, promptLen: 512, genLen: 128 }), prefillChunk: SERVER_PREFILL_CHUNK };
  const m = await loadModel(model, await loadOptions({ ram: RAM }, work));
  const server = await buildServer({
    engine: engineFor(m, 'tiny'), dataDir: path.join(dir, 'data'), maxQueue: 8, bodyLimit: 1 << 20, fileLimit: 1 << 20, batchConcurrency: 8,
  });
  const url = await server.app.listen({ host: '127.0.0.1', port: 0 });
  try {
    const form = new FormData();
    form.append('purpose', 'batch');
    form.append('file', new Blob([fs.readFileSync(file)]), 'in.jsonl');
    const up = await (await fetch(`${url}/v1/files`, { method: 'POST', body: form })).json();
    const post = { method: 'POST', headers: { 'content-type': 'application/json' } };
    let b = await (await fetch(`${url}/v1/batches`, { ...post, body: JSON.stringify({ input_file_id: up.id, endpoint: '/v1/chat/completions', completion_window: '24h' }) })).json();
    for (const end = Date.now() + 60_000; !['completed', 'failed', 'cancelled'].includes(b.status) && Date.now() < end;) {
      await new Promise((r) => setTimeout(r, 50));
      b = await (await fetch(`${url}/v1/batches/${b.id}`)).json();
    }
    expect(b.status).toBe('completed');
    return await (await fetch(`${url}/v1/files/${b.output_file_id}/content`)).text();
  } finally {
    await server.app.close();
    await server.jobs.close();
    await m.close();
  }
}

describe('tierlm batch plans as the server does', () => {
  const dir = tmpDir('batch-plan');
  const model = longChatModel(dir);
  const batch = (input: string, output: string) => cli(['batch', '--model', model, '--served-model-name', 'tiny', '--input', input, '--output', output, '--ram', `${RAM}B`]);

  it('a line too big for --ram gets its own error line; the others are answered', () => {
    const input = path.join(dir, 'big.jsonl');
    fs.writeFileSync(input, [
      line('ok', { model: 'tiny', prompt: 'Hello', max_tokens: 4 }),
      line('huge', { model: 'tiny', prompt: 'Hello', max_tokens: 900_000 }),
    ].join('\n') + '\n');
    const out = path.join(dir, 'big-out.jsonl');
    const r = batch(input, out);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('1 answered, 1 failed');
    const lines = read(out);
    expect(lines.get('ok').response).toMatchObject({ status_code: 200, body: { usage: { completion_tokens: 4 } } });
    expect(lines.get('huge').response).toMatchObject({ status_code: 400, body: { error: { code: 'context_length_exceeded', param: 'max_tokens' } } });
    expect(lines.get('huge').response.body.error.message).toMatch(/^line 2: .*needs 900\d+ positions .*RAM limit 100\.0 MiB/);
  });

  it('a chat line without max_tokens gets the same answer as from the server\'s batch', async () => {
    const input = path.join(dir, 'chat.jsonl');
    fs.writeFileSync(input, line('c', { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], temperature: 0 }, '/v1/chat/completions') + '\n');
    const out = path.join(dir, 'chat-out.jsonl');
    const r = batch(input, out);
    expect(r.code, r.stderr).toBe(0);
    const offline = read(out).get('c').response.body;
    const served = JSON.parse((await serverBatch(model, input, dir)).trim()).response.body;
    // (run to the end of the context the limits give: 824 positions under 100 MiB, against 282
    // when the block was planned for this file's line)
    expect(offline.choices[0].finish_reason).toBe('length');
    expect(offline.usage).toEqual(served.usage);
    expect(offline.choices).toEqual(served.choices);
  });
});
