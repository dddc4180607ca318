// A policy's block shape (a --policy file, flags, or the API's policy) that does not hold a job's
// requests within the RAM limit is refused, naming the limit and the shape: it ran every request
// in blocks of fewer rows (~10× slower), said nothing, and the CLI printed the policy's shape. A
// block of fewer rows stays for the odd request the shape does not hold while others fit, said
// once, and the summary prints the shapes that ran. opt-test (4 layers of 256, f16 weights: 7.3 MiB
// with the embeddings) with a block of 8 × 4: 24 positions a row need 13.8 MiB in all.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { type GenerationRequest, type GenerationResult, type RequestError, loadModel } from '../src/index.js';
import { initModel } from '../src/models/init.js';
import { shapesRun } from '../src/cli/generate.js';
import { cli } from './helpers/cli.js';
import { readJsonl, tmpDir } from './helpers/fixtures.js';

const MiB = 2 ** 20;
const policy = { gpuBatchSize: 8, numGpuBatches: 4 };
let dir: string;
let model: string;

/** `n` requests of 16 prompt tokens each (ids r0, r1, …). */
const shortOnes = (n: number, from = 0): GenerationRequest[] =>
  Array.from({ length: n }, (_, i) => ({ id: `r${from + i}`, promptTokenIds: Array.from({ length: 16 }, (_, j) => 3 + (((from + i) * 7 + j * 13) % 900)) }));

async function run(ramBytes: number, requests: GenerationRequest[], log: string[] = []) {
  const m = await loadModel(model, { ramBytes, policy, log: (s) => log.push(s) });
  try {
    const out: (GenerationResult | RequestError)[] = [];
    for await (const r of m.generate(requests, { maxNewTokens: 8, stopAtEos: false })) out.push(r);
    return { out, blocks: m.blocksRun, summary: shapesRun(m) };
  } finally {
    await m.close();
  }
}

beforeAll(() => {
  dir = tmpDir('policy-fit');
  model = path.join(dir, 'm');
  initModel({ config: 'opt-test', out: model, seed: 5 });
});

describe('a policy block that does not hold the job within --ram', () => {
  it('tierlm generate --policy FILE is refused before the model loads, naming the limit, the shape and the longest request; one that fits runs in it', () => {
    const policyFile = path.join(dir, 'p.json');
    fs.writeFileSync(policyFile, JSON.stringify({ policy: { gpu_batch_size: 8, num_gpu_batches: 4 } }));
    const prompts = path.join(dir, 'in.jsonl');
    fs.writeFileSync(prompts, shortOnes(64).map((r) => JSON.stringify({ id: r.id, prompt_token_ids: r.promptTokenIds })).join('\n') + '\n');
    const gen = (ram: string) => cli(['generate', '--model', model, '--prompts', prompts, '--out', path.join(dir, `out-${ram}.jsonl`),
      '--max-new-tokens', '8', '--ignore-eos', '--threads', '1', '--ram', ram, '--policy', policyFile]);
    const refused = gen('10MiB');
    expect(refused.code, refused.stderr).toBe(1);
    expect(refused.stderr).toMatch(/RAM limit 10\.0 MiB is too small by [\d.]+ MiB for a block of 8 × 4 \(gpu batch size × batches\), the smallest the policy allows for this job, holding its longest request "r0" \(24 positions: a prompt of 16 tokens and up to 8 new ones\)/);
    const none = path.join(dir, 'out-10MiB.jsonl');
    expect(fs.existsSync(none) ? readJsonl(none) : []).toEqual([]);
    const ok = gen('16MiB');
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stderr).toContain('64 results, 0 failed');
    expect(ok.stderr).toContain('gpu batch 8 × 4 batches, f32 cache, fp32');
    expect(ok.stderr).not.toMatch(/fewer rows/);
  });

  it('through the API (planned shapes rest on estimated lengths) it runs in smaller blocks and says so; the results are the same', async () => {
    const log: string[] = [];
    const small = await run(10 * MiB, shortOnes(32), log);
    const fits = await run(16 * MiB, shortOnes(32));
    expect(fits.out.map((r) => ('error' in r ? r.error : r.tokenIds.length))).toEqual(Array(32).fill(8));
    expect(small.out).toEqual(fits.out);
    expect(fits.blocks).toEqual({ shapes: [{ rows: 8, batches: 4, blocks: 1 }], smaller: 0 });
    expect(fits.summary).toBe('gpu batch 8 × 4 batches');
    expect(small.blocks.smaller).toBeGreaterThan(0);
    expect(small.blocks.shapes.every((s) => s.rows * s.batches < 32)).toBe(true);
    expect(log).toEqual([expect.stringMatching(/^\d+ blocks ran with fewer rows than 8 × \d \(gpu batch size × batches\)/)]);
  });

  it('one request the shape does not hold while the others fit runs in a smaller block, said once; the rest run in the full shape', async () => {
    // 16 + 40 positions: a block of 8 × 4 would need 21.8 MiB, one batch of 8 rows 11.5 MiB.
    const long: GenerationRequest = { id: 'long', promptTokenIds: [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], maxNewTokens: 40 };
    const requests = [...shortOnes(32), long, ...shortOnes(64, 32)];
    const log: string[] = [];
    const got = await run(16 * MiB, requests, log);
    expect(got.out.map((r) => r.id)).toEqual(requests.map((r) => r.id));
    expect(got.out.map((r) => ('error' in r ? r.error : r.tokenIds.length))).toEqual(requests.map((r) => (r.id === 'long' ? 40 : 8)));
    // (tokens do not depend on the block a sequence ran in)
    const alone = await run(64 * MiB, [long, shortOnes(1, 40)[0]!]);
    expect(got.out.find((r) => r.id === 'long')).toEqual(alone.out[0]);
    expect(got.out.find((r) => r.id === 'r40')).toEqual(alone.out[1]);
    expect(got.blocks.smaller).toBe(1);
    // Once the long one has left, the next block has the call's shape again.
    expect(got.blocks.shapes).toEqual(expect.arrayContaining([{ rows: 8, batches: 1, blocks: 1 }]));
    expect(got.blocks.shapes.find((s) => s.rows === 8 && s.batches === 4)?.blocks).toBeGreaterThanOrEqual(2);
    expect(log).toEqual([expect.stringMatching(/^1 block ran with fewer rows than 8 × 4 \(gpu batch size × batches\), for a request that a block of that shape does not hold within the memory limits \(the last, "long", needs 56 positions\)/)]);
    expect(got.summary).toMatch(/^gpu batch × batches 8 × 4 \(\d+ blocks\), 8 × 1 \(1 block\); 1 of fewer rows, for requests the full block did not hold within the limits$/);
  });
});
