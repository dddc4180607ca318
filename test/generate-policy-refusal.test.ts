// A policy file's block is checked before the model loads against the job's longest request: the
// one with the most positions, its line's own max_new_tokens counted (at most --max-new-tokens).
// It was refused for the longest prompt with --max-new-tokens, though every line asked for one
// token. And --cache-dtype over a policy file's compress_cache replaces it (flags override the
// file): it was refused naming --compress-cache, a flag the user never typed.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { policyFromFlags } from '../src/cli/policy-options.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

const llama = path.join(fixturesDir, 'llama-tiny');
const prompt = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

/** A policy file as `plan --json` writes it: everything in RAM, `fields` over it. */
function policyFile(dir: string, fields: object): string {
  const file = path.join(dir, 'policy.json');
  fs.writeFileSync(file, JSON.stringify({ policy: {
    gpu_batch_size: 8, num_gpu_batches: 1, w_gpu_percent: 0, w_cpu_percent: 100, cache_gpu_percent: 0, cache_cpu_percent: 100,
    act_gpu_percent: 0, act_cpu_percent: 100, overlap: true, sep_layer: true, cpu_cache_compute: false, compress_weight: false,
    compress_cache: false, attn_sparsity: 1, schedule: 'zigzag', cache_dtype: 'f32', precision: 'fp32', ...fields,
  } }));
  return file;
}

/** A JSONL job of 8 lines of 120 prompt tokens, each asking for one new token unless `lines` says otherwise. */
function job(dir: string, lines: Record<number, object> = {}): string {
  const file = path.join(dir, 'prompts.jsonl');
  fs.writeFileSync(file, Array.from({ length: 8 }, (_, i) =>
    JSON.stringify({ id: `p${i}`, prompt_token_ids: prompt(120), max_new_tokens: 1, ...lines[i] }) + '\n').join(''));
  return file;
}

function generate(dir: string, prompts: string, policy: string, ...flags: string[]) {
  return cli(['generate', '--model', llama, '--prompts', prompts, '--out', path.join(dir, 'out.jsonl'), '--policy', policy, ...flags]);
}

describe("generate's check of a policy file's block before the model loads", () => {
  it("counts each line's own max_new_tokens: a job of one-token answers runs in the file's block", () => {
    const dir = tmpDir('refusal-own-tokens');
    // (the block of 8 holding 120 + 32 positions needs 2.2 MiB; 120 + 1, 2.0 MiB)
    const r = generate(dir, job(dir), policyFile(dir, {}), '--ram', '2050KiB');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/8 results, 0 failed; 8 tokens .*gpu batch 8 × 1 batches/);
  });

  it('refuses for the request with the most positions, not the longest prompt, naming it', () => {
    const dir = tmpDir('refusal-most-positions');
    // p5: 100 + 32 (--max-new-tokens) positions, more than the others' 120 + 1
    const r = generate(dir, job(dir, { 5: { prompt_token_ids: prompt(100), max_new_tokens: undefined } }), policyFile(dir, {}), '--ram', '1900KiB');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^tierlm: RAM limit 1\.9 MiB is too small by .* for a block of 8 × 1 \(gpu batch size × batches\), the smallest the policy allows for this job, holding its longest request "p5" \(132 positions: a prompt of 100 tokens and up to 32 new ones\)/);
    expect(fs.existsSync(path.join(dir, 'out.jsonl'))).toBe(false);
  });

  it('a line asking for more than --max-new-tokens is an odd one: it runs in a block of fewer rows, the job is not refused', () => {
    const dir = tmpDir('refusal-odd-line');
    const r = generate(dir, job(dir, { 3: { max_new_tokens: 40 } }), policyFile(dir, {}), '--ram', '2050KiB', '--max-new-tokens', '1', '--ignore-eos');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/8 results, 0 failed; 47 tokens /);
  });
});

describe("--cache-dtype over a policy file's compress_cache", () => {
  it('replaces it, for every command that reads a policy file (they merge it with the flags in policyFromFlags)', () => {
    const dir = tmpDir('cache-dtype-over-file');
    const policy = policyFile(dir, { compress_cache: true, cache_dtype: 'auto' });
    for (const d of ['f16', 'f32', 'auto'] as const) {
      expect(policyFromFlags({ policy, cacheDtype: d })).toMatchObject({ compressCache: false, cacheDtype: d });
    }
    expect(policyFromFlags({ policy })).toMatchObject({ compressCache: true, cacheDtype: 'auto' });
    expect(policyFromFlags({ policy, compressCache: true, cacheDtype: 'auto' })).toMatchObject({ compressCache: true, cacheDtype: 'auto' });
  });

  it('generate runs with the typed dtype; both flags typed together stay refused, naming both', () => {
    const dir = tmpDir('cache-dtype-over-file-cli');
    const policy = policyFile(dir, { gpu_batch_size: 1, compress_cache: true, cache_dtype: 'auto' });
    const prompts = path.join(dir, 'one.jsonl');
    fs.writeFileSync(prompts, '{"id": "a", "prompt_token_ids": [2, 100, 200]}\n');
    const r = generate(dir, prompts, policy, '--max-new-tokens', '2', '--cache-dtype', 'f16');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/, f16 cache, fp32\n$/);
    const both = generate(dir, prompts, policy, '--cache-dtype', 'f16', '--compress-cache');
    expect(both.code).toBe(1);
    expect(both.stderr).toBe('tierlm: --cache-dtype "f16" contradicts --compress-cache (a 4-bit cache): give one of them (--cache-dtype "auto" goes with it)\n');
  });
});
