// The CLI and the API refuse the same values, in the user's own names, before any work: an
// explicit --seq-len past the model's positions, --threads past the addon's bound, a --data-dir,
// --host or --port the server cannot use, a demo --config or --dir, a missing --input, a text
// prompt's length, empty --stop-token-ids items, and the option planPolicy's refusal names.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decimal, int, intList, rule } from '../src/cli/parse.js';
import { trainPlan } from '../src/cli/plan-train.js';
import { runDemo } from '../src/engine/demo.js';
import { loadModel } from '../src/engine/model.js';
import { openTrainer } from '../src/train/index.js';
import { resolveOptions } from '../src/train/run-options.js';
import { planPolicy } from '../src/engine/plan.js';
import { openPrompts } from '../src/formats/jsonl.js';
import { presetNames } from '../src/models/presets.js';
import { loadProfile } from '../src/policy/profile.js';
import { Store } from '../src/server/store.js';
import { checkValue } from '../src/util/options.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, repoRoot, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny'); // 128 positions, vocabulary 512
const llama = path.join(fixturesDir, 'llama-tiny');
const profile = loadProfile(process.env.TIERLM_PROFILE!)!;
const readme = path.join(repoRoot, 'README.md');

describe('plan --train --seq-len', () => {
  it('refuses an explicit --seq-len past the positions with train\'s message; the default still shrinks to them', () => {
    expect(() => trainPlan({ model: opt, ram: 64 * 2 ** 20, seqLen: 100000 }, profile)).toThrow("--seq-len 100000 is longer than the model's 128 positions");
    expect(trainPlan({ model: opt, ram: 64 * 2 ** 20 }, profile).seqLen).toBe(128);
    expect(trainPlan({ model: opt, ram: 64 * 2 ** 20, seqLen: 128 }, profile).seqLen).toBe(128);
  });
});

describe('--threads / threads', () => {
  it('is refused past 1024 by the shared rule, in the flag\'s and the option\'s own names', async () => {
    expect(checkValue('threads', 2000, 'flag')).toBe('--threads must be an integer in [1, 1024], got "2000"');
    expect(() => rule('threads')('2000')).toThrow('--threads must be an integer in [1, 1024], got "2000"');
    expect(rule('threads')('1024')).toBe(1024);
    await expect(loadModel(opt, { threads: 100000 })).rejects.toThrow(/^threads must be an integer in \[1, 1024\], got 100000$/);
    // training too: the flag, train() and openTrainer()
    expect(cli(['train', '--model', opt, '--data', readme, '--out', tmpDir('threads-out'), '--threads', '2000']).stderr)
      .toMatch(/^tierlm: option '--threads <n>' argument '2000' is invalid\. --threads must be an integer in \[1, 1024\], got "2000"/);
    await expect(openTrainer(opt, { threads: 2000 })).rejects.toThrow(/^threads must be an integer in \[1, 1024\], got 2000$/);
    expect(() => resolveOptions({ model: opt, data: readme, out: 'o', threads: 2000 })).toThrow(/^threads must be an integer in \[1, 1024\], got 2000$/);
    // (and a schedule without its step count says it is missing, not "got 0")
    await expect(openTrainer(opt, { lrSchedule: 'cosine' })).rejects.toThrow('the cosine schedule needs totalSteps, a positive integer (none was given)');
  });
});

describe('serve --data-dir, --host, --port', () => {
  const serve = (...args: string[]) => cli(['serve', '--model', opt, ...args]);

  it('refuses a --data-dir that is a file, or whose parent does not exist, creating nothing', () => {
    const file = serve('--port', '0', '--data-dir', readme);
    expect(file.code).toBe(1);
    expect(file.stderr).toContain(`tierlm: --data-dir ${readme}: is a file, not a directory`);
    const dir = tmpDir('serve-typo');
    const typo = path.join(dir, 'typo', 'a', 'b');
    const missing = serve('--port', '0', '--data-dir', typo);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`tierlm: --data-dir ${typo}: its parent ${path.dirname(typo)} does not exist`);
    expect(fs.existsSync(path.join(dir, 'typo'))).toBe(false);
    // an empty value (an unset variable's) is refused: it was the working directory, written into
    const empty = serve('--port', '0', '--data-dir', '');
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('tierlm: --data-dir "": give a directory');
    expect(fs.existsSync(path.join(repoRoot, 'server.lock'))).toBe(false);
  });

  it('refuses a --stream-heartbeat past what a timer keeps (it fired every 1 ms), as the API refuses streamHeartbeatMs', async () => {
    const long = serve('--port', '0', '--stream-heartbeat', '2147484');
    expect(long.code).toBe(1);
    expect(long.stderr).toContain('tierlm: --stream-heartbeat must be at most 2147483 seconds (0 turns it off), got 2147484');
    const { buildServer } = await import('../src/server/app.js');
    for (const bad of [2 ** 31, Infinity, -1, 1.5, NaN]) {
      await expect(buildServer({ streamHeartbeatMs: bad } as never)).rejects.toThrow(`streamHeartbeatMs must be an integer from 0 (off) to 2147483647, got ${bad}`);
    }
  });

  it('the store names a data directory that is a file (the API\'s buildServer)', () => {
    expect(() => new Store(readme)).toThrow(`data directory ${readme}: it, or a directory above it, is a file`);
  });

  it('refuses an address it cannot listen on before the model loads, naming --host and --port', async () => {
    const data = tmpDir('serve-host');
    const foreign = serve('--host', '192.0.2.1', '--port', '0', '--data-dir', data);
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toMatch(/^tierlm: --host 192\.0\.2\.1 --port 0: not an address of this machine \(.*EADDRNOTAVAIL.*\)\n$/);
    const taken = net.createServer();
    const port = await new Promise<number>((resolve) => taken.listen({ host: '127.0.0.1', port: 0 }, () => resolve((taken.address() as net.AddressInfo).port)));
    try {
      const busy = serve('--port', String(port), '--data-dir', data);
      expect(busy.code).toBe(1);
      expect(busy.stderr).toMatch(new RegExp(`^tierlm: --host 127\\.0\\.0\\.1 --port ${port}: the port is in use \\(.*EADDRINUSE.*\\)\\n$`));
    } finally {
      taken.close();
    }
  });
});

describe('demo --config, --dir', () => {
  it('refuses an unknown shape before printing or making anything', async () => {
    const dir = path.join(tmpDir('demo-config'), 'x');
    const lines: string[] = [];
    await expect(runDemo({ dir, config: 'nosuch', log: (l) => lines.push(l) })).rejects.toThrow(/^config nosuch: unknown shape \(known: opt-125m, /);
    expect(lines).toEqual([]);
    expect(fs.existsSync(dir)).toBe(false);
    const r = cli(['demo', '--dir', dir, '--config', 'nosuch']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^tierlm: --config nosuch: unknown shape \(known: /);
    expect(fs.existsSync(dir)).toBe(false);
  });

  it('refuses a --dir that is a file, or in a directory that does not exist', async () => {
    const r = cli(['demo', '--dir', readme]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`tierlm: --dir ${readme}: is a file, not a directory\n`);
    const deep = path.join(tmpDir('demo-dir'), 'a', 'b');
    await expect(runDemo({ dir: deep, config: 'opt-test', log: () => {} })).rejects.toThrow(`dir ${deep}: its parent ${path.dirname(deep)} does not exist`);
    expect(fs.existsSync(path.dirname(deep))).toBe(false);
  });
});

describe('the prompts file, named by its flag', () => {
  it('says which flag names a file that does not exist, or a directory', async () => {
    const dir = tmpDir('prompts-flag');
    const nofile = path.join(dir, 'nofile.jsonl');
    await expect(openPrompts(nofile, '--input')).rejects.toThrow(`--input ${nofile}: does not exist`);
    await expect(openPrompts(dir, '--input')).rejects.toThrow(`--input ${dir}: is a directory, not a JSONL file`);
    await expect(openPrompts(nofile)).rejects.toThrow(`prompts ${nofile}: does not exist`);
    const batch = cli(['batch', '--model', opt, '--input', nofile, '--output', path.join(dir, 'out.jsonl')]);
    expect(batch.code).toBe(1);
    expect(batch.stderr).toContain(`tierlm: --input ${nofile}: does not exist`);
    const generate = cli(['generate', '--model', opt, '--prompts', nofile, '--out', path.join(dir, 'out.jsonl')]);
    expect(generate.code).toBe(1);
    expect(generate.stderr).toContain(`tierlm: --prompts ${nofile}: does not exist`);
  });
});

describe("the pre-load refusal of a block for a job's longest request", () => {
  it("names a text prompt's length as the lower bound it is", () => {
    const dir = tmpDir('text-prompt-bound');
    const prompts = path.join(dir, 'in.jsonl');
    fs.writeFileSync(prompts, Array.from({ length: 8 }, (_, i) => JSON.stringify({ id: `r${i}`, prompt: `a considerably longer prompt of many words, number ${i}` }) + '\n').join(''));
    const policy = path.join(dir, 'policy.json');
    fs.writeFileSync(policy, JSON.stringify({ policy: {
      gpu_batch_size: 8, num_gpu_batches: 1, w_gpu_percent: 0, w_cpu_percent: 100, cache_gpu_percent: 0, cache_cpu_percent: 100,
      act_gpu_percent: 0, act_cpu_percent: 100, overlap: true, sep_layer: true, cpu_cache_compute: false, compress_weight: false,
      compress_cache: false, attn_sparsity: 1, schedule: 'zigzag', cache_dtype: 'f32', precision: 'fp32',
    } }));
    // (the weights need 643 KiB of it, the block of 8 holding 5 positions 747 KiB)
    const r = cli(['generate', '--model', llama, '--prompts', prompts, '--out', path.join(dir, 'out.jsonl'), '--policy', policy, '--ram', '700KiB', '--max-new-tokens', '4']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('holding its longest request "r0" (5 positions: a prompt of at least 1 token and up to 4 new ones)');
  });
});

describe('numbers on the command line', () => {
  it('are read as decimals only: 0x64, 0b1 and an empty value are refused (Number() took them as 100, 1 and 0)', () => {
    expect(decimal('12')).toBe(12);
    expect(decimal(' -0.5 ')).toBe(-0.5);
    expect(decimal('1e-3')).toBe(1e-3);
    for (const v of ['0x64', '0b1', '0o7', '', ' ', 'Infinity', '1_000']) expect(decimal(v)).toBeNaN();
    expect(() => int('--seed')('')).toThrow('--seed must be an integer >= 0, got ""');
    expect(() => rule('threads')('0x2')).toThrow('--threads must be an integer in [1, 1024], got "0x2"');
    const r = cli(['generate', '--model', opt, '--prompt', 'x', '--percent', '0', '0x64', '0', '100', '0', '100']);
    expect(r.code).toBe(1);
    // quoting what was typed (it printed "got 0 NaN 0 100 0 100")
    expect(r.stderr).toContain('--percent takes six numbers (WG WC CG CC HG HC), got "0x64" in "0" "0x64" "0" "100" "0" "100"');
  });
});

describe('--stop-token-ids', () => {
  it('refuses an empty item instead of dropping it', () => {
    const parse = intList('--stop-token-ids');
    expect(parse('1,2')).toEqual([1, 2]);
    expect(() => parse('1,,2')).toThrow('--stop-token-ids must be comma-separated integers >= 0, got "1,,2" (item 2 is empty)');
    expect(() => parse('')).toThrow('--stop-token-ids must be comma-separated integers >= 0, got "" (item 1 is empty)');
    const r = cli(['generate', '--model', opt, '--prompt', 'x', '--stop-token-ids', '']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--stop-token-ids must be comma-separated integers >= 0, got "" (item 1 is empty)');
  });

  it('refuses an id past the vocabulary (it is never sampled, so it stopped nothing), for the call and for a request', async () => {
    const r = cli(['generate', '--model', opt, '--prompts', path.join(fixturesDir, 'prompts.jsonl'), '--out', '-', '--stop-token-ids', '99999']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--stop-token-ids: 99999 is outside the model's vocabulary of 512 tokens");
    const model = await loadModel(opt);
    try {
      const all = async (it: AsyncIterable<unknown>) => {
        const out = [];
        for await (const x of it) out.push(x);
        return out;
      };
      expect(() => model.generate([{ id: 'a', promptTokenIds: [1] }], { stopTokenIds: [512] })).toThrow("stopTokenIds: 512 is outside the model's vocabulary of 512 tokens");
      expect(await all(model.generate([{ id: 'a', promptTokenIds: [1], stopTokenIds: [7, 600] }], { maxNewTokens: 2 })))
        .toEqual([{ id: 'a', error: "\"stopTokenIds\": 600 is outside the model's vocabulary of 512 tokens" }]);
    } finally {
      await model.close();
    }
  });
});

describe("planPolicy's refusal", () => {
  it("names planPolicy's own options (limits.ram, disk: true), not loadModel's", async () => {
    const GiB = 2 ** 30;
    await expect(planPolicy({ config: 'opt-6.7b', promptLen: 64, genLen: 32, limits: { ram: 8 * GiB }, disk: false, profile }))
      .rejects.toThrow(/no disk tier was given: pass disk: true \(with at least .*\), or raise limits\.ram by about/);
    const both = await planPolicy({ config: 'opt-30b', promptLen: 64, genLen: 32, limits: { ram: 512 * 2 ** 20 }, disk: false, profile }).catch((e: Error) => e);
    expect((both as Error).message).toMatch(/^the model does not fit in the RAM limit 512\.0 MiB: raise limits\.ram by about .*; with disk: true, raise it by about/);
  });
});

describe('the docs', () => {
  const api = fs.readFileSync(path.join(repoRoot, 'docs/api.md'), 'utf8');
  const cliDoc = fs.readFileSync(path.join(repoRoot, 'docs/cli.md'), 'utf8');

  it("docs/cli.md's init list names every full-size shape", () => {
    const line = /`tierlm init --config NAME --out DIR \[options\]`: [^]*?\)\./.exec(cliDoc)![0].replace(/\s+/g, ' ');
    const full = presetNames().filter((n) => !/-(test|demo-1b)$/.test(n) && !/^opt-/.test(n));
    for (const n of full) expect(line).toMatch(new RegExp(`\\b${n.replace(/-\d+b$/, '').replace(/\./g, '\\.')}`));
    expect(line).toContain('llama-3.1-8b');
    expect(line).toContain('llama-3.2-1b');
  });

  it('docs/api.md says which options are required, what benchJson returns, and that train\'s out needs its parent', () => {
    expect(api).not.toContain('Every option is optional.');
    expect(api.replace(/\s+/g, ' ')).toContain('`planPolicy` needs `promptLen`, `genLen`, `limits`');
    expect(api).not.toMatch(/`benchJson\(result\)` is the\s+line/);
    expect(api.replace(/\s+/g, ' ')).toContain('`benchJson(result)` returns the object `tierlm bench --json` prints as one line');
    expect(api).toMatch(/runs\/ must exist\)\nfor await \(const m of train\(\{ model: 'models\/opt-125m', data: 'train\.jsonl', out: 'runs\/a'/);
  });
});

describe('a refusal of --ram names what the command holds beside the model', () => {
  // serve's request-body budget was called "the job's request ids": nothing told the user that a
  // smaller --body-limit needs less
  it('serve: the request bodies in flight', () => {
    const r = cli(['serve', '--model', opt, '--ram', '20MiB', '--disk-dir', tmpDir('serve-held'), '--port', '0', '--threads', '1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/and the request bodies in flight, 2 × --body-limit at 6 bytes of RAM a byte \(48\.0 MiB\) need/);
    expect(r.stderr).not.toContain('request ids');
  });
  it('the API: heldWhat, or what heldBytes is', async () => {
    const plan = (heldWhat?: string) => planPolicy({ model: opt, promptLen: 8, genLen: 8, limits: { ram: 4 * 1024 * 1024 }, disk: true, profile, heldBytes: 64 * 1024 * 1024, heldWhat });
    await expect(plan()).rejects.toThrow(/and RAM held beside the model \(heldBytes\) \(64\.0 MiB\) need/);
    await expect(plan('my queue')).rejects.toThrow(/and my queue \(64\.0 MiB\) need/);
  });
});
