// The command line as a new user meets it: one JSON style, messages in the user's own words,
// paths refused before any work, pipes, units and bounds, conflicting flags.
import fs from 'node:fs';
import path from 'node:path';
import { parseSize } from '../src/tensor/tiers/size.js';
import { describe, expect, it } from 'vitest';
import { cli, shell, tierlm } from './helpers/cli.js';
import { loadModel } from '../src/index.js';
import { buildProgram } from '../src/cli/main.js';
import { addTokenizer, readJsonl, fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const prompts = path.join(fixturesDir, 'prompts.jsonl');

/** Every key of a JSON value, recursively. */
function keys(v: unknown): string[] {
  if (Array.isArray(v)) return v.flatMap(keys);
  if (typeof v !== 'object' || v === null) return [];
  return Object.entries(v).flatMap(([k, x]) => [k, ...keys(x)]);
}

describe('one JSON style', () => {
  it('plan --json and bench --json are snake_case throughout', () => {
    const plan = cli(['plan', '--model', opt, '--prompt-len', '8', '--gen-len', '4', '--ram', '1GiB', '--json']);
    const bench = cli(['bench', '--model', opt, '--prompt-len', '8', '--gen-len', '2', '--gpu-batch-size', '2', '--json']);
    for (const r of [plan, bench]) {
      expect(r.code, r.stderr).toBe(0);
      const bad = keys(JSON.parse(r.stdout)).filter((k) => !/^[a-z0-9_]+$/.test(k));
      expect(bad).toEqual([]);
    }
    expect(JSON.parse(bench.stdout).policy.gpu_batch_size).toBe(2);
    expect(JSON.parse(bench.stdout).total_tokens_per_second).toBeGreaterThan(0);
  });

  it('messages name the JSON key or the flag the user wrote, with the value as written', () => {
    const dir = tmpDir('keys');
    const file = path.join(dir, 'policy.json');
    fs.writeFileSync(file, '{"gpu_batch_size": "2"}');
    const r = cli(['generate', '--model', opt, '--prompts', prompts, '--out', path.join(dir, 'o.jsonl'), '--policy', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('gpu_batch_size must be a positive integer, got "2"');
    expect(r.stderr).not.toMatch(/gpuBatchSize/);
    const pct = cli(['generate', '--model', opt, '--prompts', prompts, '--out', path.join(dir, 'o.jsonl'), '--percent', '0', '150', '0', '100', '0', '100']);
    expect(pct.code).toBe(1);
    expect(pct.stderr).toBe('tierlm: --percent (2nd number, WC) must be a percent in [0, 100], got 150\n');
    expect(pct.stderr).not.toMatch(/wCpuPercent/);
  });
});

describe('paths are refused before any work', () => {
  const dir = tmpDir('paths');

  it('--profile naming a missing file is refused, and the file is not created', () => {
    const missing = path.join(dir, 'nonexistent.json');
    const r = cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--profile', missing]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`--profile ${missing}: does not exist`);
    expect(r.stderr).not.toMatch(/measuring/);
    expect(fs.existsSync(missing)).toBe(false);
  });

  it('under mpirun a failure before the ranks connect names its rank, as later ones do', () => {
    const args = ['train', '--model', 'm', '--data', 'd', '--out', path.join(dir, 'out'), '--batch-size', '0'];
    const r = cli(args, { OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '1' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^tierlm: rank 1 of 2: option '--batch-size <n>' argument '0' is invalid/);
    // (MPI itself, absent here, refuses the launcher's rank 1 of 2 after the flags: named once)
    const late = cli(['train', '--model', 'm', '--data', 'd', '--out', path.join(dir, 'out')], { OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '1' });
    expect(late.stderr).toMatch(/^tierlm: rank 1 of 2: [^r]/);
    expect(cli(args).stderr).toMatch(/^tierlm: option '--batch-size/);
  });

  it('--disk-dir is checked the same way by plan, generate, bench and profile', () => {
    const nowhere = '/no/such/dir';
    const runs = [
      cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--disk-dir', nowhere]),
      cli(['generate', '--model', opt, '--prompt', 'x', '--disk-dir', nowhere]),
      cli(['bench', '--model', opt, '--prompt-len', '8', '--gen-len', '2', '--disk-dir', nowhere]),
      cli(['profile', '--quick', '--out', path.join(dir, 'hw.json'), '--disk-dir', nowhere]),
    ];
    for (const r of runs) {
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`tierlm: --disk-dir ${nowhere}: does not exist\n`);
    }
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, '');
    expect(cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--disk-dir', file]).stderr).toContain(`--disk-dir ${file}: is a file, not a directory`);
    expect(fs.existsSync(path.join(dir, 'hw.json'))).toBe(false);
  });

  it.skipIf(!fs.existsSync('/dev/shm') || fs.statfsSync('/dev/shm').type !== 0x01021994)('--disk-dir in memory (tmpfs) under --ram is warned about: it takes RAM --ram does not count', () => {
    const shm = fs.mkdtempSync('/dev/shm/tierlm-test-');
    try {
      const r = cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--ram', '2GiB', '--disk-dir', shm, '--disk', '1GiB']);
      expect(r.stderr).toContain(`tierlm: warning: --disk-dir ${shm} is in memory (tmpfs or ramfs): what the disk tier keeps there takes RAM outside --ram`);
      // (a directory on disk is not: where the test's own temporary directory is on disk too)
      if (fs.statfsSync(dir).type !== 0x01021994) {
        expect(cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--ram', '2GiB', '--disk-dir', dir, '--disk', '1GiB']).stderr).not.toContain('is in memory');
      }
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
  });

  it('files where directories are expected and the reverse; missing parents are never created', () => {
    const file = path.join(dir, 'f.txt');
    fs.writeFileSync(file, 'x');
    expect(cli(['generate', '--model', file, '--prompt', 'x']).stderr).toContain(`--model ${file}: is a file, not a directory`);
    expect(cli(['generate', '--model', dir, '--prompt', 'x']).stderr).toContain(`--model ${dir}: has no config.json`);
    expect(cli(['generate', '--model', opt, '--prompts', dir, '--out', path.join(dir, 'o.jsonl')]).stderr).toContain(`${dir}: is a directory`);
    const deep = path.join(dir, 'missing', 'out.jsonl');
    expect(cli(['generate', '--model', opt, '--prompts', prompts, '--out', deep]).stderr).toContain(`--out ${deep}: its directory ${path.dirname(deep)} does not exist`);
    const hw = path.join(dir, 'missing', 'hw.json');
    expect(cli(['profile', '--quick', '--out', hw]).stderr).toContain(`--out ${hw}: its directory`);
    expect(fs.existsSync(path.join(dir, 'missing'))).toBe(false);
  });

  it('init refuses a directory that is not empty unless --force', () => {
    const out = tmpDir('init');
    fs.writeFileSync(path.join(out, 'notes.txt'), 'mine');
    const r = cli(['init', '--config', 'llama-test', '--out', out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`--out ${out}: is not empty (add --force to write into it)`);
    expect(fs.readdirSync(out)).toEqual(['notes.txt']);
    const forced = cli(['init', '--config', 'llama-test', '--out', out, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(fs.existsSync(path.join(out, 'config.json'))).toBe(true);
    expect(fs.readFileSync(path.join(out, 'notes.txt'), 'utf8')).toBe('mine');
  });
});

describe('pipes', () => {
  const many = () => {
    const file = path.join(tmpDir('pipe'), 'many.jsonl');
    fs.writeFileSync(file, Array.from({ length: 40 }, (_, i) => JSON.stringify({ id: `q${i}`, prompt_token_ids: [5 + i, 9] })).join('\n') + '\n');
    return file;
  };

  it('cat in.jsonl | generate --prompts - --out - | head -3 works and ends', () => {
    const r = shell(`cat '${many()}' | ${tierlm} generate --model '${opt}' --prompts - --out - --max-new-tokens 4 --batch-size 1 | head -3`);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((x) => x.id)).toEqual(['q0', 'q1', 'q2']);
    // The reader closing early ends the job quietly.
    expect(r.stderr).not.toMatch(/EPIPE|internal error/);
  });

  it('the writer exits 0 when the reader closes, and --out /dev/stdout | head ends too', () => {
    const r = shell(`set -o pipefail; ${tierlm} generate --model '${opt}' --prompts '${many()}' --out - --max-new-tokens 2 --batch-size 1 | head -1`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    const dev = shell(`${tierlm} generate --model '${opt}' --prompts '${prompts}' --out /dev/stdout --max-new-tokens 2 | head -2`);
    expect(dev.stdout.trim().split('\n')).toHaveLength(2);
  });

  it('--prompts /dev/stdin reads the pipe once: every request is answered', () => {
    const r = shell(`cat '${prompts}' | ${tierlm} generate --model '${opt}' --prompts /dev/stdin --out - --max-new-tokens 3`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n').map((l) => JSON.parse(l).id)).toEqual(['p0', 'p1', 'p2', 'p3', 'p4']);
    expect(r.stderr).toContain('standard output: 5 results, 0 failed');
  });
});

describe('units, bounds and conflicting flags', () => {
  it('a size without a unit is refused', () => {
    const r = cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--ram', '4']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--ram: "4" has no unit; write 4GiB, 4MiB or 4B (bytes)');
    // less than a byte is refused by the flag (it failed in the planner's process as an internal error)
    // (each saying what leaving that flag out gives)
    for (const [flag, v, omitted] of [['--ram', '0B', 'for no limit'], ['--disk', '0.5B', 'to take the free space in --disk-dir']]) {
      const z = cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--disk-dir', tmpDir('zero'), flag!, v!]);
      expect(z.code).toBe(1);
      expect(z.stderr).toContain(`${flag}: "${v}" is less than one byte (leave ${flag} out ${omitted})`);
    }
    // beyond 2^53 bytes: refused by the flag, naming it (it was an internal error of the planner
    // naming limits.ram)
    for (const [flag, v] of [['--ram', '99999999TiB'], ['--disk', '9999999TiB']]) {
      const z = cli(['plan', '--config', 'opt-125m', '--prompt-len', '8', '--gen-len', '4', '--disk-dir', tmpDir('huge'), flag!, v!]);
      expect(z.code).toBe(1);
      expect(z.stderr).toContain(`${flag}: "${v}" is too large (at most 8 PiB, 8191TiB)`);
      expect(z.stderr).not.toMatch(/internal error/);
    }
    expect(parseSize('8191TiB', '--ram')).toBe(8191 * 2 ** 40);
  });

  it('every default --help shows is a value its flag accepts, meaning the default', () => {
    // (serve --help showed --body-limit's default as 4194304, which the flag refuses: no unit)
    for (const c of buildProgram().commands) {
      for (const o of c.options) {
        if (o.defaultValue === undefined || !o.parseArg || typeof o.defaultValue === 'boolean') continue;
        const shown = o.defaultValueDescription ?? String(o.defaultValue);
        expect(() => o.parseArg!(shown, undefined), `${c.name()} ${o.long} (default: ${shown})`).not.toThrow();
        expect(o.parseArg!(shown, undefined), `${c.name()} ${o.long}`).toEqual(o.defaultValue);
      }
    }
  });

  it('the CLI and the engine share each bound: --top-p 0 is refused by the flag', () => {
    const r = cli(['generate', '--model', opt, '--prompt', 'x', '--top-p', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--top-p must be a number in (0, 1], got "0"');
    expect(cli(['generate', '--model', opt, '--prompt', 'x', '--min-p', '1.5']).stderr).toContain('--min-p must be a number in [0, 1], got "1.5"');
    // commander's own refusals end as every failure does, `tierlm: message` (they were "error: ...")
    expect(r.stderr).toMatch(/^tierlm: option '--top-p <p>' argument '0' is invalid/);
    expect(cli(['generate', '--model', opt, '--prompt', 'x', '--bogus']).stderr).toMatch(/^tierlm: unknown option '--bogus'/);
    expect(cli(['frobnicate']).stderr).toMatch(/^tierlm: unknown command 'frobnicate'/);
  });

  it('--threads above the cores warns; --batch-size with --gpu-batch-size and bench --model with --layers are refused', () => {
    const dir = tmpDir('flags');
    const t = cli(['generate', '--model', opt, '--prompts', path.join(dir, 'none.jsonl'), '--out', path.join(dir, 'o.jsonl'), '--threads', '512']);
    expect(t.stderr).toMatch(/warning: --threads 512 is more than this machine's \d+ cores/);
    const both = cli(['generate', '--model', opt, '--prompt', 'x', '--batch-size', '2', '--gpu-batch-size', '4']);
    expect(both.code).toBe(1);
    expect(both.stderr).toContain('--batch-size 2 and --gpu-batch-size 4 set the same thing; give one of them');
    const layers = cli(['bench', '--model', opt, '--layers', '2']);
    expect(layers.code).toBe(1);
    expect(layers.stderr).toContain('--layers works with --config only');
  });
});

describe('generate --prompt', () => {
  const dir = tmpDir('prompt');
  const model = path.join(dir, 'llama');
  const text = 'The capital of France is';

  it('streams the text, honours --out and --logprobs, and --chat --system applies the chat template', () => {
    expect(cli(['init', '--config', 'llama-test', '--out', model, '--seed', '3']).code).toBe(0);
    addTokenizer(model);
    const out = path.join(dir, 'one.jsonl');
    const one = cli(['generate', '--model', model, '--prompt', text, '--max-new-tokens', '6', '--logprobs', '--out', out]);
    expect(one.code, one.stderr).toBe(0);
    const [rec] = readJsonl<Record<string, any>>(out);
    expect(rec!.id).toBe('prompt');
    expect(rec!.logprobs).toHaveLength(rec!.token_ids.length);
    expect(one.stdout).toBe(rec!.text + '\n');
    expect(one.stderr).toContain(`logprobs: ${rec!.token_ids.map((t: number, i: number) => `${t}:${rec!.logprobs[i].toFixed(4)}`).join(' ')}`);
    // again into the same file: a second line under the next free id, not a second "prompt"
    expect(cli(['generate', '--model', model, '--prompt', 'Paris is', '--max-new-tokens', '2', '--out', out]).code).toBe(0);
    expect(readJsonl<Record<string, any>>(out).map((x) => x.id)).toEqual(['prompt', 'prompt-2']);

    const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: text }];
    const input = path.join(dir, 'chat.jsonl');
    fs.writeFileSync(input, JSON.stringify({ id: 'chat', messages }) + '\n');
    const job = cli(['generate', '--model', model, '--prompts', input, '--out', '-', '--max-new-tokens', '6']);
    expect(job.code, job.stderr).toBe(0);
    const chat = cli(['generate', '--model', model, '--prompt', text, '--chat', '--system', 'Be brief.', '--max-new-tokens', '6']);
    expect(chat.code, chat.stderr).toBe(0);
    expect(chat.stdout).toBe(JSON.parse(job.stdout).text + '\n');
    expect(chat.stdout).not.toBe(one.stdout);
    expect(cli(['generate', '--model', model, '--prompt', text, '--system', 'x']).stderr).toContain('--system needs --chat');
  });

  it('tokens reach the caller as they are generated, before the result', async () => {
    const m = await loadModel(model);
    const events: string[] = [];
    try {
      for await (const r of m.generate([{ id: 'a', prompt: text }], { maxNewTokens: 4, stopAtEos: false, onToken: (id, t) => events.push(`${id}:${t}`) })) {
        events.push('result');
        expect('error' in r ? r.error : r.tokenIds.map((t) => `a:${t}`)).toEqual(events.slice(0, 4));
      }
    } finally {
      await m.close();
    }
    expect(events).toHaveLength(5);
  });
});
