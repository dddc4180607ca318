// `plan --json` → `generate --policy` / `bench --policy` runs exactly what was planned: over
// several models and RAM limits (some that push weights, cache or activations to disk), the run
// fits the same limit and has the planned block shape, cache type and placement; and what
// `bench --json` prints, `--policy` reads back.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

const dir = tmpDir('roundtrip');
const disk = path.join(dir, 'disk');
const models: Record<string, string> = {};

beforeAll(() => {
  fs.mkdirSync(disk);
  for (const config of ['opt-test', 'llama-test']) {
    const r = cli(['init', '--config', config, '--out', path.join(dir, config)]);
    expect(r.code, r.stderr).toBe(0);
    models[config] = path.join(dir, config);
  }
  models['opt-tiny'] = path.join(fixturesDir, 'opt-tiny');
});

const promptLen = 16;
const genLen = 8;

/** Enough prompts of exactly promptLen tokens to fill the planned block twice. */
function promptsFile(n: number): string {
  const file = path.join(dir, `in-${n}.jsonl`);
  const lines = Array.from({ length: n }, (_, i) => JSON.stringify({ id: `r${i}`, prompt_token_ids: Array.from({ length: promptLen }, (_, j) => ((i * 7 + j * 13) % 500) + 3) }));
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

const cases: [string, string, string[]][] = [
  ['opt-test', '6MiB', []], ['opt-test', '7MiB', ['--cache-dtype', 'f16']], ['llama-test', '20MiB', []], ['llama-test', '40MiB', ['--compress-weight']],
  ['opt-tiny', '64MiB', ['--gpu-batch-size', '4']], ['opt-test', '12MiB', ['--gpu-batch-size', '8']],
  ['llama-test', '24MiB', ['--precision', 'bf16']], ['llama-test', '26MiB', ['--precision', 'bf16', '--cache-dtype', 'f32']],
];

describe('plan --json → --policy', () => {
  for (const [name, ram, extra] of cases) {
    it(`${name} under --ram ${ram} ${extra.join(' ')}`.trim(), () => {
      const limits = ['--ram', ram, '--disk-dir', disk];
      const plan = cli(['plan', '--model', models[name]!, '--prompt-len', String(promptLen), '--gen-len', String(genLen), ...limits, ...extra, '--json']);
      expect(plan.code, plan.stderr).toBe(0);
      const file = path.join(dir, `${name}-${ram}.json`);
      fs.writeFileSync(file, plan.stdout);
      const policy = JSON.parse(plan.stdout).policy;
      // The cache's type follows the precision unless given (auto: f16 at bf16).
      expect(policy.cache_dtype).toBe(extra.includes('f16') || (extra.includes('bf16') && !extra.includes('f32')) ? 'f16' : 'f32');
      expect(policy.compress_weight).toBe(extra.includes('--compress-weight'));
      expect(policy.precision).toBe(extra.includes('bf16') ? 'bf16' : 'fp32');

      const block = policy.gpu_batch_size * policy.num_gpu_batches;
      const out = path.join(dir, `${name}-${ram}.out.jsonl`);
      const gen = cli(['generate', '--model', models[name]!, '--prompts', promptsFile(2 * block), '--out', out, '--policy', file, ...limits,
        '--max-new-tokens', String(genLen), '--ignore-eos']);
      expect(gen.code, gen.stderr).toBe(0);
      expect(gen.stderr).toContain(`${2 * block} results, 0 failed`);
      expect(gen.stderr).toContain(`gpu batch ${policy.gpu_batch_size} × ${policy.num_gpu_batches} batches, ${policy.cache_dtype} cache, ${policy.precision}`);

      const bench = cli(['bench', '--model', models[name]!, '--prompt-len', String(promptLen), '--gen-len', String(genLen), '--policy', file, ...limits, '--json']);
      expect(bench.code, bench.stderr).toBe(0);
      const run = JSON.parse(bench.stdout);
      expect(run.policy).toEqual(policy);
      expect(run.batch).toBe(block);

      // Planned by generate itself (--policy auto) for the same workload and flags: the same shape,
      // since plan and generate search one list of block shapes.
      if (extra.includes('--gpu-batch-size')) {
        const auto = cli(['generate', '--model', models[name]!, '--prompts', promptsFile(2 * block), '--out', `${out}.auto`, ...limits, ...extra,
          '--max-new-tokens', String(genLen), '--ignore-eos']);
        expect(auto.code, auto.stderr).toBe(0);
        expect(auto.stderr).toContain(`gpu batch ${policy.gpu_batch_size} × ${policy.num_gpu_batches} batches`);
      }

      // What bench prints, --policy reads: the same policy again.
      const benchFile = path.join(dir, `${name}-${ram}.bench.json`);
      fs.writeFileSync(benchFile, bench.stdout);
      const again = cli(['bench', '--model', models[name]!, '--prompt-len', String(promptLen), '--gen-len', '2', '--policy', benchFile, ...limits, '--json']);
      expect(again.code, again.stderr).toBe(0);
      expect(JSON.parse(again.stdout).policy).toEqual(policy);
    });
  }

  it('some of these plans put data on disk, so the limits were binding', () => {
    const placed = fs.readdirSync(dir).filter((f) => /MiB\.json$/.test(f)).map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')).policy);
    expect(placed.some((p) => p.w_cpu_percent < 100 || p.cache_cpu_percent < 100 || p.act_cpu_percent < 100)).toBe(true);
  });
});
