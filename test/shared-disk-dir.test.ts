// Runs sharing one disk directory: spill files are per run and go at close or on a signal, a killed
// run's files are cleared by the next run, weight conversion is serialized by a lock (a waiting run
// says so), a half-finished conversion is redone, and two concurrent CLI runs both reproduce the
// reference tokens.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel } from '../src/index.js';
import { DiskTier } from '../src/schedule/disk-tier.js';
import { type Reference, fixturePrompts, readJsonl, repoRoot, fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const reference = readJsonl<Reference>(path.join(opt, 'reference.jsonl'));
const dirs: string[] = [];
const children: ChildProcess[] = [];

function freshDir(prefix: string): string {
  const d = tmpDir(prefix);
  dirs.push(d);
  return d;
}

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Starts `node --import tsx ARGS` and resolves with it and its first line of stdout. */
async function start(args: string[]): Promise<{ child: ChildProcess; firstLine: Promise<string> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const firstLine = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')));
    });
    // 'close', not 'exit': it comes after the last of stdout has been read.
    child.on('close', (code, signal) => reject(new Error(`${args.join(' ')} exited (${code ?? signal}) before a line: ${err}`)));
  });
  return { child, firstLine };
}

async function holdTier(dir: string): Promise<{ child: ChildProcess; cache: string; act: string }> {
  const { child, firstLine } = await start(['test/helpers/hold-disk.ts', 'tier', dir]);
  return { child, ...(JSON.parse(await firstLine) as { cache: string; act: string }) };
}

/** A stand-in started as `hold-disk.ts MODE DIR`, and the path it prints under `key`. */
async function holdPath(mode: string, dir: string, key: string): Promise<{ child: ChildProcess; path: string }> {
  const { child, firstLine } = await start(['test/helpers/hold-disk.ts', mode, dir]);
  return { child, path: (JSON.parse(await firstLine) as Record<string, string>)[key]! };
}

/** For SIGTERM then SIGINT: a fresh stand-in's `path` exists, the signal still ends it, and then
 *  `cleared()` holds (its files are gone). */
async function stopEachBySignal(hold: () => Promise<{ child: ChildProcess; path: string }>, cleared: (path: string) => boolean): Promise<void> {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const held = await hold();
    expect(fs.existsSync(held.path)).toBe(true);
    await kill(held.child, signal);
    expect(held.child.signalCode).toBe(signal);
    expect(cleared(held.path), signal).toBe(true);
  }
}

async function kill(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  const exited = once(child, 'exit');
  child.kill(signal);
  await exited;
}

/** Names in `dir` other than packed-weights folders. */
function loose(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => !n.startsWith('weights-')).sort();
}

describe('spill files in a shared disk directory', () => {
  it('are named per run, do not disturb each other, and are removed at close with their lock', async () => {
    const dir = freshDir('spill');
    const a = await DiskTier.open(dir);
    const b = await DiskTier.open(dir);
    expect(new Set([a.cacheFile.path, a.actFile.path, b.cacheFile.path, b.actFile.path]).size).toBe(4);
    expect(path.basename(a.cacheFile.path)).toMatch(new RegExp(`^cache-${process.pid}-[0-9a-f]{8}\\.bin$`));
    expect(loose(dir)).toHaveLength(6); // two spill files and a run lock each
    await a.close();
    expect(fs.existsSync(a.cacheFile.path) || fs.existsSync(a.actFile.path)).toBe(false);
    expect(fs.existsSync(b.cacheFile.path) && fs.existsSync(b.actFile.path)).toBe(true);
    await b.close();
    expect(loose(dir)).toEqual([]);
  });

  it('of a live run are kept; of a SIGKILLed run, and of a dead pid, are removed at the next open', async () => {
    const dir = freshDir('stale');
    const held = await holdTier(dir);
    const own = await DiskTier.open(dir);
    await own.close();
    expect(fs.existsSync(held.cache) && fs.existsSync(held.act), 'a live run lost its spill files').toBe(true);

    await kill(held.child, 'SIGKILL');
    expect(fs.existsSync(held.cache), 'SIGKILL cannot clean up: the file is still there').toBe(true);
    // A run killed while claiming its tag, with a pid that is gone (a process that has exited).
    const dead = spawn(process.execPath, ['-e', '']);
    await once(dead, 'exit');
    const claiming = path.join(dir, `run-${dead.pid}-0badc0de.lock.tmp`);
    const orphan = path.join(dir, `activations-${dead.pid}-0badc0de.bin`);
    fs.writeFileSync(claiming, '');
    fs.writeFileSync(orphan, 'x');

    const next = await DiskTier.open(dir);
    for (const f of [held.cache, held.act, claiming, orphan]) expect(fs.existsSync(f), `${f} was left`).toBe(false);
    await next.close();
    expect(loose(dir)).toEqual([]);
  });

  it('are removed when the run is stopped with SIGTERM or SIGINT, which still ends it', async () => {
    const dir = freshDir('signal');
    await stopEachBySignal(() => holdPath('tier', dir, 'cache'), () => loose(dir).length === 0);
  });

  it("a training run's state directory goes on SIGTERM / SIGINT, and a SIGKILLed run's at the next open", async () => {
    // (it stayed: 930 MB per interrupted OPT-125m run, never removed, not even by --resume)
    const dir = freshDir('train-states');
    const holdStates = async () => {
      const held = await holdPath('train', dir, 'states');
      return { child: held.child, path: path.join(held.path, 'param.bin') };
    };
    await stopEachBySignal(holdStates, () => loose(dir).length === 0);
    const live = await holdStates();
    const killed = await holdStates();
    await kill(killed.child, 'SIGKILL');
    expect(fs.existsSync(killed.path)).toBe(true);
    const next = await DiskTier.open(dir);
    expect(fs.existsSync(path.dirname(killed.path)), 'a killed run left its states').toBe(false);
    expect(fs.existsSync(live.path), 'a live run lost its states').toBe(true);
    await next.close();
    await kill(live.child, 'SIGTERM');
    expect(loose(dir)).toEqual([]);
  });

  it("a weights conversion's partial file goes on SIGTERM / SIGINT, and a SIGKILLed one's at the next open, not a live one's", async () => {
    // (it stayed: up to the packed model's size, cleared only by converting that model again)
    const dir = freshDir('convert-partial');
    const hold = () => holdPath('convert', dir, 'partial');
    await stopEachBySignal(hold, (partial) => !fs.existsSync(partial));
    const live = await hold();
    const next = await DiskTier.open(dir);
    expect(fs.existsSync(live.path), "a live conversion's file was removed").toBe(true);
    await next.close();
    await kill(live.child, 'SIGKILL');
    expect(fs.existsSync(live.path)).toBe(true);
    const after = await DiskTier.open(dir);
    expect(fs.existsSync(live.path), 'a killed conversion left its file').toBe(false);
    await after.close();
  });

  it('are removed when the process exits without closing the tier', async () => {
    const dir = freshDir('exit');
    const exiting = await start(['test/helpers/hold-disk.ts', 'exit', dir]);
    const [[code]] = await Promise.all([once(exiting.child, 'close'), exiting.firstLine]);
    expect(code).toBe(7);
    expect(loose(dir)).toEqual([]);
  });
});

async function generate(diskDir: string, log?: (m: string) => void): Promise<number[][]> {
  const model = await loadModel(opt, { diskDir, log, policy: { wCpuPercent: 50, cacheCpuPercent: 50, actCpuPercent: 50 } });
  const tokens: number[][] = [];
  try {
    const requests = fixturePrompts().map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));
    for await (const r of model.generate(requests, { maxNewTokens: 8, stopAtEos: false, batchSize: 1, numGpuBatches: 5 })) {
      if ('error' in r) throw new Error(r.error);
      tokens.push(r.tokenIds);
    }
  } finally {
    await model.close();
  }
  return tokens;
}

/** The folder a run on `dir` packs opt-tiny's weights into. */
async function weightsFolder(dir: string): Promise<string> {
  const probe = await DiskTier.open(dir);
  try {
    return probe.weightsDir(opt, 'fp32');
  } finally {
    await probe.close();
  }
}

describe('weight conversion in a shared disk directory', () => {
  it('waits, saying so, while another run holds the lock, then redoes a half-finished conversion', async () => {
    const dir = freshDir('convert');
    const weights = await weightsFolder(dir);
    // What a conversion killed midway leaves: a partial file, an old weights.bin, no manifest.
    fs.writeFileSync(path.join(weights, 'weights.bin.partial'), Buffer.alloc(8192, 7));
    fs.writeFileSync(path.join(weights, 'weights.bin'), Buffer.alloc(8192, 7));
    const holder = await start(['test/helpers/hold-disk.ts', 'lock', path.join(weights, 'convert.lock')]);
    await holder.firstLine;

    const logs: string[] = [];
    let waiting!: () => void;
    const saidWaiting = new Promise<void>((resolve) => (waiting = resolve));
    const run = generate(dir, (m) => {
      logs.push(m);
      waiting();
    });
    await saidWaiting;
    expect(logs.join('\n')).toMatch(/^waiting for another run that holds \/.*\/weights-opt-tiny-fp32-[0-9a-f]+\/convert\.lock \(converting/);
    await kill(holder.child, 'SIGKILL'); // the holder dies mid-conversion: the kernel drops its lock
    const tokens = await run;
    expect(tokens).toEqual(reference.map((r) => r.token_ids));
    expect(fs.existsSync(path.join(weights, 'weights.bin.partial'))).toBe(false);
    expect(JSON.parse(fs.readFileSync(path.join(weights, 'weights.json'), 'utf8')).tensors.length).toBeGreaterThan(0);
    expect(logs).toHaveLength(1);
  });
});

describe('a load that fails', () => {
  it('closes its disk tier: no spill files or run lock are left', async () => {
    const dir = freshDir('failed-load');
    const weights = await weightsFolder(dir);
    fs.mkdirSync(path.join(weights, 'weights.bin.partial')); // conversion cannot write its file
    await expect(generate(dir)).rejects.toThrow(/weights\.bin\.partial/);
    expect(loose(dir)).toEqual([]);
  });
});

describe('two runs on one --disk-dir at once', () => {
  it('both reproduce the reference tokens, with weights, cache and activations half on disk', async () => {
    const dir = freshDir('concurrent');
    // The fixture prompts four times over, so that the two runs' generation overlaps for longer.
    const prompts = path.join(dir, 'prompts.jsonl');
    const copies = [0, 1, 2, 3].flatMap((k) => fixturePrompts().map((p) => JSON.stringify({ ...p, id: `${p.id}-${k}` })));
    fs.writeFileSync(prompts, copies.join('\n') + '\n');
    const runs = [0, 1].map((i) => {
      const out = path.join(dir, `out-${i}.jsonl`);
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/run.ts', 'generate', '--model', opt,
        '--prompts', prompts, '--out', out, '--max-new-tokens', '8', '--ignore-eos',
        '--gpu-batch-size', '2', '--num-gpu-batches', '2', '--percent', '0', '50', '0', '50', '0', '50', '--disk-dir', dir], { cwd: repoRoot });
      children.push(child);
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      return once(child, 'close').then(([code]) => ({ code, stderr, out }));
    });
    for (const r of await Promise.all(runs)) {
      expect(r.code, r.stderr).toBe(0);
      const rows = readJsonl<{ id: string; token_ids: number[] }>(r.out);
      expect(rows).toHaveLength(copies.length);
      for (const row of rows) expect(row.token_ids, row.id).toEqual(reference.find((r) => row.id.startsWith(`${r.id}-`))!.token_ids);
    }
    expect(loose(dir).filter((n) => !n.startsWith('out-') && n !== 'prompts.jsonl'), 'spill files or locks were left').toEqual([]);
  });
});
