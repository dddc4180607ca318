// The API is what docs/api.md says: every name it lists is exported from the package entry point
// (and nothing undocumented is), options are optional in the types, unknown keys throw a TypeError
// naming them, messages name API options rather than CLI flags, generate() after close() throws.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import * as api from '../src/index.js';
import { loadModel } from '../src/index.js';
import { longContextModel, repoRoot, fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const doc = fs.readFileSync(path.join(repoRoot, 'docs/api.md'), 'utf8');
const documented = [...doc.matchAll(/^Exports: (.*)$/gm)].flatMap((m) => [...m[1]!.matchAll(/`([A-Za-z_][A-Za-z0-9_]*)`/g)].map((x) => x[1]!));
const index = fs.readFileSync(path.join(repoRoot, 'src/index.ts'), 'utf8');
/** Type-only exports: `type X` inside an export list, or `export type { X, Y }`. */
const typeExports = new Set([
  ...[...index.matchAll(/\btype ([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!),
  ...[...index.matchAll(/export type \{([^}]*)\}/g)].flatMap((m) => m[1]!.split(',').map((s) => s.trim()).filter(Boolean)),
]);

describe('the package entry point', () => {
  it('is src/index.ts compiled: package.json main and types point at its output', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'));
    expect([pkg.main, pkg.types]).toEqual(['dist/index.js', 'dist/index.d.ts']);
  });

  it('exports every name docs/api.md lists, and documents every export', () => {
    expect(documented.length).toBeGreaterThan(40);
    const missing = documented.filter((n) => !(n in api) && !typeExports.has(n));
    expect(missing).toEqual([]);
    const undocumented = [...Object.keys(api), ...typeExports].filter((n) => !documented.includes(n));
    expect(undocumented).toEqual([]);
  });

  it('type-checks the documented usage: optional options are optional, misspelt ones are errors', () => {
    const tsc = path.join(repoRoot, 'node_modules/typescript/bin/tsc');
    const out = (() => {
      try {
        return execFileSync(process.execPath, [tsc, '-p', path.join(repoRoot, 'test/types/tsconfig.json')], { encoding: 'utf8' });
      } catch (e) {
        return String((e as { stdout?: string }).stdout) + String((e as Error).message);
      }
    })();
    expect(out).toBe('');
  }, 180_000);
});

describe('options are checked by name', () => {
  it('runBench and ensureProfile check theirs by name and value (a misspelt genLen ran with none and failed deep inside)', async () => {
    const base = { model: opt, promptLen: 4, genLen: 2 };
    await expect(api.runBench({ ...base, gen_len: 2 } as never)).rejects.toThrow(/^runBench\(\) options: unknown option "gen_len" \(known: precision, .*promptLen, genLen, modelCache\)/);
    await expect(api.runBench({ model: opt, promptLen: 4 } as never)).rejects.toThrow(new RangeError('runBench(): genLen must be an integer >= 1, got undefined'));
    await expect(api.runBench({ ...base, promptLen: 0 })).rejects.toThrow(new RangeError('runBench(): promptLen must be an integer >= 1, got 0'));
    await expect(api.runBench({ ...base, config: 'opt-125m' })).rejects.toThrow(/needs exactly one of model \(a directory\) and config/);
    await expect(api.runBench({ promptLen: 4, genLen: 2 })).rejects.toThrow(/needs exactly one of model/);
    await expect(api.runBench({ ...base, layers: 1.5 } as never)).rejects.toThrow(/layers must be an integer >= 1, got 1.5/);
    const r = await api.runBench({ ...base, policy: { gpuBatchSize: 2 } });
    expect(r.batch).toBe(2);
    await expect(api.ensureProfile({ quick: 'yes' } as never)).rejects.toThrow(new TypeError('ensureProfile(): quick must be true or false, got "yes"'));
    await expect(api.ensureProfile({ disk_dir: '/tmp' } as never)).rejects.toThrow(/^ensureProfile\(\) options: unknown option "disk_dir"/);
    await expect(api.ensureProfile({ threads: 0 })).rejects.toThrow(/threads must be an integer in \[1, 1024\], got 0/);
  });

  it('unknown keys throw a TypeError naming them, in every options object', async () => {
    await expect(loadModel(opt, { ram: 1 } as never)).rejects.toThrow(new TypeError('loadModel() options: unknown option "ram" (known: precision, backend, threads, policy, diskDir, diskBytes, ramBytes, deviceBytes, log, requests, heldBytes, heldWhat)'));
    await expect(loadModel(opt, { policy: { gpu_batch_size: 2 } as never })).rejects.toThrow(/policy: unknown option "gpu_batch_size"/);
    // (a backend the engine does not have ran on the CPU without a word)
    await expect(loadModel(opt, { backend: 'gpu' as never })).rejects.toThrow(new TypeError(`backend must be 'cpu', 'reference' or a Backend, got "gpu"`));
    const model = await loadModel(opt);
    try {
      expect(() => model.generate([], { max_new_tokens: 3 } as never)).toThrow(TypeError);
      expect(() => model.generate([], { max_new_tokens: 3 } as never)).toThrow(/unknown option "max_new_tokens"/);
      expect(() => model.generate([], { sampling: { top_p: 0.5 } as never })).toThrow(/params.sampling: unknown option "top_p"/);
      expect(() => model.generate([], { sampling: { topP: 0 } })).toThrow(new RangeError('sampling.topP must be a number in (0, 1], got 0'));
      // NaN and Infinity shown as themselves (JSON made them null), a string quoted
      expect(() => model.generate([], { maxNewTokens: NaN })).toThrow(new RangeError('maxNewTokens must be an integer >= 1, got NaN'));
      expect(() => model.generate([], { maxNewTokens: '5' as never })).toThrow(new TypeError('maxNewTokens must be an integer >= 1, got "5"'));
      const results = [];
      for await (const r of model.generate([
        { id: 'a', promptTokenIds: [1, 2] }, { id: 'b', promptTokenIds: [1, 99999] }, { id: 'c', promptTokenIds: [3], max_tokens: 2 } as never,
        { id: 'd', promptTokenIds: [3], untilContext: 'yes' } as never, { id: 'e', promptTokenIds: [3, 4, 5], untilContext: true },
      ], { maxNewTokens: 2, stopAtEos: false })) results.push(r);
      expect(results.map((r) => ('error' in r ? r.error : 'ok'))).toEqual([
        'ok', 'promptTokenIds[1] = 99999 is not a token id in [0, 512)', 'request "c": unknown option "max_tokens" (known: id, prompt, promptTokenIds, messages, sampling, n, maxNewTokens, untilContext, stop, stopTokenIds, logprobs, topLogprobs, promptLogprobs, seedKey)',
        '"untilContext" must be true or false', 'ok',
      ]);
      // untilContext: to the model's last position (no limits here), over the call's maxNewTokens
      const positions = JSON.parse(fs.readFileSync(path.join(opt, 'config.json'), 'utf8')).max_position_embeddings;
      const e = results[4] as { tokenIds: number[]; finishReason: string };
      expect([e.tokenIds.length, e.finishReason]).toEqual([positions - 3, 'length']);
      // An option given as undefined is not given (it replaced the default, then failed its check:
      // "maxNewTokens must be an integer >= 1, got undefined"); cacheDtype 'auto', as a policy
      // says it, is the policy's cache type (it was refused).
      const tokens = async (params: object) => {
        const out = [];
        for await (const r of model.generate([{ id: 'x', promptTokenIds: [4, 5, 6] }], params)) out.push('error' in r ? r.error : r.tokenIds);
        return out;
      };
      const plain = await tokens({ maxNewTokens: 3 });
      expect(await tokens({ maxNewTokens: 3, batchSize: undefined, n: undefined, cacheDtype: 'auto', sampling: { temperature: undefined } })).toEqual(plain);
      expect(await tokens({ maxNewTokens: undefined })).toEqual(await tokens({}));
      expect(() => model.generate([], { cacheDtype: 'f8' as never })).toThrow(new RangeError('cacheDtype must be "auto", "f32", "f16" or "q4", got "f8"'));
    } finally {
      await model.close();
    }
  });

  it("untilContext without a RAM limit runs to what a block fits in 80% of the machine's memory, as under that limit", async () => {
    // (never tested: it needs a machine's worth of positions; the machine is made small instead)
    const dir = longContextModel();
    const length = async (options: object) => {
      const m = await loadModel(dir, { policy: { gpuBatchSize: 2 }, ...options });
      try {
        const out = [];
        for await (const r of m.generate([{ id: 'e', promptTokenIds: [3, 4, 5], untilContext: true }], { stopAtEos: false })) {
          out.push('error' in r ? r.error : [r.tokenIds.length, r.finishReason]);
        }
        return out;
      } finally {
        await m.close();
      }
    };
    const limited = await length({ ramBytes: 4 << 20 });
    const spy = vi.spyOn(os, 'totalmem').mockReturnValue((4 << 20) / 0.8);
    let machine;
    try {
      machine = await length({});
    } finally {
      spy.mockRestore();
    }
    expect(machine).toEqual(limited);
    const [[tokens, reason]] = limited as [[number, string]];
    expect(reason).toBe('length');
    expect(tokens).toBeGreaterThan(500);
    expect(tokens).toBeLessThan(1_000_000 - 3);
  });

  it('messages name API options, not CLI flags', async () => {
    const e1 = await loadModel(opt, { policy: { wCpuPercent: 50 } }).catch((e: Error) => e);
    expect((e1 as Error).message).toContain('no disk directory was given (diskDir)');
    const e2 = await loadModel(opt, { policy: { gpuBatchSize: 0 } }).catch((e: Error) => e);
    expect((e2 as Error).message).toBe('policy: policy.gpuBatchSize must be a positive integer, got 0');
    const e3 = await loadModel(opt, { ramBytes: 1000 }).catch((e: Error) => e);
    expect((e3 as Error).message).toMatch(/RAM limit .* too small/);
    // A block that does not fit names its shape as plan prints it: gpu batch size × batches.
    const m = await loadModel(opt, { ramBytes: 600 * 1024, policy: { gpuBatchSize: 16, numGpuBatches: 2 } });
    const requests = Array.from({ length: 32 }, (_, i) => ({ id: `r${i}`, promptTokenIds: [5, 6, 7] }));
    const e4 = await (async () => {
      for await (const r of m.generate(requests)) void r;
    })().catch((e: Error) => e).finally(() => m.close());
    expect((e4 as Error).message).toMatch(/for a block of 16 × 2 \(gpu batch size × batches\)/);
    for (const e of [e1, e2, e3, e4]) expect((e as Error).message).not.toMatch(/--[a-z]/);
  });

  it("generateNamed checks a request's values in both namings: 'json' names the JSONL keys", async () => {
    // ('json' checked nothing: n = 0 yielded a result with no tokens and no finish reason)
    const model = await loadModel(opt);
    try {
      const bad = [
        { id: 'n', promptTokenIds: [1, 2], n: 0 },
        { id: 'k', promptTokenIds: [1, 2], sampling: { topK: -5 } },
        { id: 'm', promptTokenIds: [1, 2], maxNewTokens: -3 },
        { id: 't', promptTokenIds: [1, 2], topLogprobs: 21 },
      ];
      const run = async (names: 'api' | 'json') => {
        const out = [];
        for await (const r of model.generateNamed(bad, { maxNewTokens: 2 }, undefined, names)) out.push(r);
        return out;
      };
      expect(await run('json')).toEqual([
        { id: 'n', error: 'n must be an integer in [1, 128], got 0' },
        { id: 'k', error: 'top_k must be an integer >= 0 (0 = no cut), got -5' },
        { id: 'm', error: 'max_new_tokens must be an integer >= 1, got -3' },
        { id: 't', error: '"top_logprobs" must be an integer in [0, 20]' },
      ]);
      expect((await run('api')).map((r) => ('error' in r ? r.error : r))).toEqual([
        'n must be an integer in [1, 128], got 0', 'sampling.topK must be an integer >= 0 (0 = no cut), got -5',
        'maxNewTokens must be an integer >= 1, got -3', '"topLogprobs" must be an integer in [0, 20]',
      ]);
    } finally {
      await model.close();
    }
  });

  it('generate() after close() throws', async () => {
    const model = await loadModel(opt);
    await model.close();
    expect(() => model.generate([{ id: 'a', promptTokenIds: [1] }])).toThrow(/after close\(\)/);
  });

  it('close() while a generate() runs: it waits for the block, closes cleanly, and the generate() stops with an error', async () => {
    // (close() rejected with "4 transfers are still in flight" and left the disk tier open, or
    // closed the files under a block still computing)
    const diskDir = tmpDir('close-during-generate');
    const model = await loadModel(opt, { diskDir, policy: { wCpuPercent: 50, cacheCpuPercent: 50, gpuBatchSize: 1, numGpuBatches: 1 } });
    const reqs = Array.from({ length: 4 }, (_, i) => ({ id: `r${i}`, promptTokenIds: [5, 6 + i] }));
    const it = model.generate(reqs, { maxNewTokens: 20, stopAtEos: false });
    expect((await it.next()).value).toMatchObject({ id: 'r0' });
    await model.close();
    await expect(it.next()).rejects.toThrow(/the model was closed \(close\(\)\) while generate\(\) was running/);
    expect(fs.readdirSync(diskDir).filter((n) => !n.startsWith('weights-'))).toEqual([]);
  });

  it('a policy file is read with snake_case keys and its messages name them', () => {
    const file = path.join(tmpDir('api'), 'p.json');
    fs.writeFileSync(file, JSON.stringify(api.policyToJson({ ...api.DEFAULT_POLICY, cacheDtype: 'f16' })));
    const p = api.policyFromJson(JSON.parse(fs.readFileSync(file, 'utf8')));
    expect(p.cacheDtype).toBe('f16');
    expect(() => api.policyFromJson({ cache_dtype: 'q8' })).toThrow('cache_dtype must be "auto", "f32" or "f16", got "q8"');
  });
});
