// An f32 or f16 KV cache asked for beside compress_cache (a 4-bit cache) is refused, naming both
// as the caller wrote them: it was silently overridden with q4 (docs/api.md calls a call's
// cacheDtype an override of the policy's).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LanguageModel, loadModel } from '../src/engine/model.js';
import { policyFromJson } from '../src/policy/policy.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const requests = [{ id: 'a', promptTokenIds: [2, 100, 200] }];
let compressed: LanguageModel;

async function tokens(model: LanguageModel, params: object): Promise<number[]> {
  for await (const r of model.generate(requests, { maxNewTokens: 3, stopAtEos: false, ...params })) {
    if ('error' in r) throw new Error(r.error);
    return r.tokenIds;
  }
  throw new Error('no result');
}

beforeAll(async () => {
  compressed = await loadModel(opt, { policy: { compressCache: true } });
});

afterAll(async () => {
  await compressed.close();
});

describe('cacheDtype f32/f16 together with compressCache', () => {
  it("generate() and scheduler() refuse a call's f32 or f16 cache on a compressCache policy", async () => {
    for (const d of ['f32', 'f16'] as const) {
      const msg = `cacheDtype "${d}" contradicts the model's policy.compressCache (a 4-bit KV cache): leave cacheDtype out (or give "q4"), or load the model without compressCache`;
      expect(() => compressed.generate(requests, { cacheDtype: d })).toThrow(new RangeError(msg));
      expect(() => compressed.scheduler({ cacheDtype: d })).toThrow(new RangeError(msg));
    }
    // q4, 'auto' and no cacheDtype are the policy's own cache
    const plain = await tokens(compressed, {});
    expect(await tokens(compressed, { cacheDtype: 'q4' })).toEqual(plain);
    expect(await tokens(compressed, { cacheDtype: 'auto' })).toEqual(plain);
  });

  it('a policy with both is refused, named as the API, a policy file or the flags name them', async () => {
    await expect(loadModel(opt, { policy: { compressCache: true, cacheDtype: 'f32' } })).rejects.toThrow(
      new RangeError('policy: policy.cacheDtype "f32" contradicts policy.compressCache (a 4-bit cache): give one of them (policy.cacheDtype "auto" goes with it)'));
    expect(() => policyFromJson({ compress_cache: true, cache_dtype: 'f16' }, 'p.json')).toThrow(
      new RangeError('p.json: cache_dtype "f16" contradicts compress_cache (a 4-bit cache): give one of them (cache_dtype "auto" goes with it)'));
    // 'auto' goes with compression
    expect(policyFromJson({ compress_cache: true, cache_dtype: 'auto' }).compressCache).toBe(true);
  });

  it('the CLI refuses --cache-dtype f32 with --compress-cache, naming both flags', () => {
    const dir = tmpDir('cache-conflict');
    const prompts = path.join(dir, 'prompts.jsonl');
    fs.writeFileSync(prompts, '{"id": "a", "prompt_token_ids": [2, 100, 200]}\n');
    const r = cli(['generate', '--model', opt, '--prompts', prompts, '--out', path.join(dir, 'out.jsonl'), '--max-new-tokens', '2',
      '--percent', '0', '100', '0', '100', '0', '100', '--cache-dtype', 'f32', '--compress-cache']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('tierlm: --cache-dtype "f32" contradicts --compress-cache (a 4-bit cache): give one of them (--cache-dtype "auto" goes with it)\n');
    expect(fs.existsSync(path.join(dir, 'out.jsonl'))).toBe(false);
  });

  it("--compress-cache over a policy file's cache dtype takes its place; plan refuses the flags together", () => {
    const dir = tmpDir('cache-conflict-file');
    const prompts = path.join(dir, 'prompts.jsonl');
    fs.writeFileSync(prompts, '{"id": "a", "prompt_token_ids": [2, 100, 200]}\n');
    // (`plan --json` writes an explicit cache_dtype the user never typed)
    const policy = path.join(dir, 'policy.json');
    fs.writeFileSync(policy, JSON.stringify({ policy: { w_gpu_percent: 0, w_cpu_percent: 100, cache_gpu_percent: 0, cache_cpu_percent: 100, act_gpu_percent: 0, act_cpu_percent: 100, cache_dtype: 'f16' } }));
    const r = cli(['generate', '--model', opt, '--prompts', prompts, '--out', path.join(dir, 'out.jsonl'), '--max-new-tokens', '2',
      '--policy', policy, '--compress-cache']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/q4 cache/);
    const p = cli(['plan', '--model', opt, '--prompt-len', '8', '--gen-len', '4', '--cache-dtype', 'f32', '--compress-cache']);
    expect(p.code).toBe(1);
    expect(p.stderr).toBe('tierlm: --cache-dtype f32 contradicts --compress-cache (a 4-bit cache): give one of them\n');
  });
});
