// FlexGen's benchmark protocol: a batch of gpuBatchSize × numGpuBatches random prompts of
// promptLen tokens, genLen new tokens each (EOS ignored); generation throughput =
// batch × genLen ÷ (prefill + decode time), with prefill and decode reported apart.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initModel } from '../models/init.js';
import { FileLock } from '../tensor/disk/lock.js';
import { ioStats } from '../tensor/disk/io.js';
import { getThreads } from '../backend/index.js';
import { LOAD_KEYS, type LoadOptions, loadModel, loadOptionsOf } from './model.js';
import { type GenerateStats, emptyStats } from './generate.js';
import { type Policy, policyToJson } from '../policy/policy.js';
import { fsyncPath } from '../util/atomic.js';
import { snakeKeys } from '../util/json-case.js';
import { checkKeys } from '../util/names.js';
import { peakRssBytes } from '../util/peak-rss.js';

export interface BenchOptions extends LoadOptions {
  model?: string;
  config?: string;
  layers?: number;
  promptLen: number;
  genLen: number;
  /** Where dummy-weight models are kept between runs. */
  modelCache?: string;
}

export interface BenchResult {
  model: string;
  policy: Policy;
  batch: number;
  promptLen: number;
  genLen: number;
  threads: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  totalTokensPerSecond: number;
  prefillSeconds: number;
  decodeSeconds: number;
  peakRssBytes: number;
  bytes: { weightsRead: number; cacheRead: number; cacheWritten: number; actRead: number; actWritten: number; diskRead: number; diskWritten: number };
  placement: { weightsRam: number; weightsDisk: number };
  /** Share of the time the disk was busy that compute hid (1 = every transfer overlapped compute). */
  ioHiddenShare: number | null;
  ioSeconds: number;
  ioWaitSeconds: number;
  computeSeconds: number;
}

/** A dummy-weight model of a named shape, made once and kept under the model cache. Runs sharing
 *  the cache make it one at a time under `DIR.lock` (an flock, dropped by the kernel if the maker
 *  dies), in a temporary sibling renamed into place when complete: without the lock, a second run
 *  that found no marker deleted the first one's model while it was being written. A directory
 *  without its marker (generation_config.json, written last) is a half model, and is made again. */
export async function dummyModel(config: string, layers: number | undefined, cacheDir: string,
  log: (msg: string) => void = (m) => process.stderr.write(`tierlm: ${m}\n`)): Promise<string> {
  const name = `${config}${layers ? `-l${layers}` : ''}-f16`;
  const dir = path.join(cacheDir, name);
  const complete = () => fs.existsSync(path.join(dir, 'generation_config.json'));
  // A model is only ever renamed in whole, so one with its marker needs no lock to be read.
  if (complete()) return dir;
  fs.mkdirSync(cacheDir, { recursive: true });
  const lock = await FileLock.acquire(`${dir}.lock`, { onWait: () => log(`waiting for another run that holds ${dir}.lock (making the dummy model ${dir})`) });
  try {
    if (complete()) return dir; // made by the run we waited for
    // Every maker holds the lock while its temporary exists, so any left now is a dead maker's.
    for (const f of fs.readdirSync(cacheDir)) if (f.startsWith(`${name}.tmp-`)) fs.rmSync(path.join(cacheDir, f), { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
    const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      initModel({ config, out: tmp, layers, dtype: 'f16', seed: 1 });
      // Durable before it is published: after a power cut the name holds a whole model or none.
      for (const f of fs.readdirSync(tmp)) fsyncPath(path.join(tmp, f));
      fs.renameSync(tmp, dir);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    fsyncPath(cacheDir);
    return dir;
  } finally {
    // The lock file stays: deleting it would let a waiter lock a file that no longer guards anything.
    lock.release();
  }
}


/** A result as `tierlm bench --json` prints it: snake_case, and the policy as a policy file holds
 *  it, so `--policy` reads the line back and runs the same policy. */
export function benchJson(r: BenchResult): Record<string, unknown> {
  return { ...(snakeKeys({ ...r, policy: undefined }) as Record<string, unknown>), policy: policyToJson(r.policy) };
}

export function defaultModelCache(): string {
  return path.join(os.homedir(), '.cache', 'tierlm', 'models');
}

const BENCH_KEYS = [...LOAD_KEYS, 'model', 'config', 'layers', 'promptLen', 'genLen', 'modelCache'];

/** runBench's options by name and value (a misspelt genLen ran with none, then failed deep inside). */
function checkBenchOptions(o: BenchOptions): void {
  checkKeys(o, BENCH_KEYS, 'runBench() options');
  if ((o.model === undefined) === (o.config === undefined)) throw new TypeError('runBench() needs exactly one of model (a directory) and config (a named shape)');
  for (const k of ['model', 'config', 'modelCache'] as const) {
    if (o[k] !== undefined && (typeof o[k] !== 'string' || o[k] === '')) throw new TypeError(`runBench(): ${k} must be a non-empty string, got ${JSON.stringify(o[k])}`);
  }
  for (const k of ['promptLen', 'genLen'] as const) {
    if (!Number.isSafeInteger(o[k]) || o[k] < 1) throw new RangeError(`runBench(): ${k} must be an integer >= 1, got ${JSON.stringify(o[k])}`);
  }
  if (o.layers !== undefined && (!Number.isSafeInteger(o.layers) || o.layers < 1)) throw new RangeError(`runBench(): layers must be an integer >= 1, got ${JSON.stringify(o.layers)}`);
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  checkBenchOptions(o);
  const dir = o.model ?? await dummyModel(o.config!, o.layers, o.modelCache ?? defaultModelCache(), o.log);
  const model = await loadModel(dir, loadOptionsOf(o));
  const p = model.policy;
  const batch = p.gpuBatchSize * p.numGpuBatches;
  const vocab = model.config.vocabSize;
  const requests = Array.from({ length: batch }, (_, i) => ({
    id: `bench-${i}`,
    promptTokenIds: Array.from({ length: o.promptLen }, (_, j) => (i * 7919 + j * 104729 + 13) % vocab),
  }));
  const before = ioStats();
  const stats: GenerateStats = emptyStats();
  try {
    for await (const r of model.generate(requests, { maxNewTokens: o.genLen, stopAtEos: false }, stats)) {
      if ('error' in r) throw new Error(`${r.id}: ${r.error}`);
    }
  } finally {
    await model.close();
  }
  const after = ioStats();
  const io = model.placement.io;
  const ioSeconds = after.readSeconds - before.readSeconds + (after.writeSeconds - before.writeSeconds);
  return {
    model: dir,
    policy: { ...p },
    batch,
    promptLen: o.promptLen,
    genLen: o.genLen,
    threads: getThreads(),
    prefillTokensPerSecond: (batch * o.promptLen) / stats.prefillSeconds,
    decodeTokensPerSecond: o.genLen > 1 ? (batch * (o.genLen - 1)) / stats.decodeSeconds : 0,
    totalTokensPerSecond: (batch * o.genLen) / (stats.prefillSeconds + stats.decodeSeconds),
    prefillSeconds: stats.prefillSeconds,
    decodeSeconds: stats.decodeSeconds,
    peakRssBytes: peakRssBytes(),
    bytes: {
      weightsRead: model.placement.weights.bytesRead,
      cacheRead: io.cacheBytesRead,
      cacheWritten: io.cacheBytesWritten,
      actRead: io.actBytesRead,
      actWritten: io.actBytesWritten,
      diskRead: after.bytesRead - before.bytesRead,
      diskWritten: after.bytesWritten - before.bytesWritten,
    },
    placement: { weightsRam: model.placement.weights.deviceBytes + model.placement.weights.ramBytes, weightsDisk: model.placement.weights.diskBytes },
    ioHiddenShare: ioSeconds > 0 ? Math.max(0, 1 - io.waitSeconds / ioSeconds) : null,
    ioSeconds,
    ioWaitSeconds: io.waitSeconds,
    computeSeconds: io.computeSeconds,
  };
}
