// A whole training run, as `tierlm train` and the API's train() both run it: read the data (bad
// lines skipped and reported, nothing usable = an error before any compute), open the model, resume
// from OUT's latest checkpoint if asked, then step, writing OUT/metrics.jsonl, evaluating and
// saving as the options say, and yield each step's metrics.
//
// Exact resume: everything the math of the coming steps depends on is either saved (master
// weights, Adam's moments and step, the data position with the data's fingerprint) or a pure
// function of options the resume must repeat (the data order is a function of seed and epoch; the
// schedule of lr, warmup and total steps; see mathOptions). The bf16 copies are the masters
// rounded, exactly as AdamW writes them, and a bf16 run reuses the saved choice of GEMM kernel. So a run killed at any moment and resumed takes the same
// steps, bit for bit, as one never interrupted (test/train-resume.test.ts kills one with SIGKILL).

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { positionsNote } from '../models/config.js';
import { readConfig } from '../models/registry.js';
import { UserError } from '../util/errors.js';
import { type Bf16Kernel, isBf16Kernel, selectBf16Kernel } from '../backend/cpu/bf16-kernel.js';
import { Batcher, evalBatches } from './batcher.js';
import { LATEST, latestCheckpoint, loadCheckpoint, removeTemporaries, saveCheckpoint, settleCheckpoints } from './checkpoint.js';
import { type Dataset, dataContextFor, dataLineLimit, datasetBytes, readDataset } from './dataset.js';
import { MetricsWriter } from './metrics.js';
import { publishModel } from './publish.js';
import { type ResolvedOptions, type TrainRunInfo, type TrainRunOptions, mathOptions, resolveOptions } from './run-options.js';
import { defaultProfilePath, loadProfile, savedBf16Kernel } from '../policy/profile.js';
import type { Sequence } from './sequence.js';
import { type Trainer, openTrainer } from './trainer.js';
import { type Json, STATE_DIR, type TrainingState } from './training-state.js';
import type { OffloadOptions } from './offload/open.js';
import type { OffloadStepStats } from './offload/stats.js';
import { type Comm, worldComm } from '../dist/comm.js';
import { type RankEnv, rankEnv, threadsPerRank } from '../dist/env.js';
import { FileLock, lockRunFile, lockTarget } from '../tensor/disk/lock.js';
import { removeAtExit } from '../schedule/spill-files.js';
import { tokenizerRamBytes } from '../formats/tokenizer.js';
import { loadPartitioned, savePartitioned } from './partition/checkpoint.js';
import { nameStyle, optionName } from '../util/names.js';

export interface TrainStepMetrics {
  /** Optimizer steps count from 1. */
  step: number;
  totalSteps: number;
  /** Epoch (from 0) of the step's first micro-batch. */
  epoch: number;
  /** Mean cross-entropy over every target of the step's micro-batches. */
  loss: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  tokens: number;
  targets: number;
  /** Tokens over the step's compute time (forward, backward and update). */
  tokensPerSecond: number;
  seconds: number;
  /** On evaluation steps: the eval data's mean loss and exp(evalLoss). */
  evalLoss?: number;
  evalPerplexity?: number;
  /** On save steps: the checkpoint directory written. */
  checkpoint?: string;
  /** Under mpirun: bytes this rank's all-gathers received and its reduce-scatters sent in the step. */
  gatheredBytes?: number;
  reduceScatteredBytes?: number;
  /** Offloaded runs (ram, diskDir): bytes read and written per state kind, I/O hidden per phase. */
  offload?: OffloadStepStats;
}

/** Trains as `tierlm train` does, yielding each step's metrics as it ends. */
export async function* train(options: TrainRunOptions): AsyncGenerator<TrainStepMetrics, void, undefined> {
  const o = resolveOptions(options);
  // Under mpirun: this rank's share of each global batch (batch size × ranks), its slices of the
  // model states (src/train/partition); only rank 0 writes metrics and the model files.
  const env = rankEnv();
  const comm = worldComm(env);
  checkOut(o.out, o.model);
  const unlock = lockOut(o.out, comm);
  try {
    yield* trainLocked(o, options.seqLen === undefined, env, comm);
  } finally {
    unlock();
  }
}

/** The run, once it holds OUT. */
async function* trainLocked(o: ResolvedOptions, seqLenByDefault: boolean, env: RankEnv, comm: Comm): AsyncGenerator<TrainStepMetrics, void, undefined> {
  fitSeqLen(o, seqLenByDefault);
  const { data, evalData } = await readData(o);
  const globalBatch = o.batchSize * comm.size;
  const existing = latestCheckpoint(o.out);
  const totalSteps = stepsOf(o, data.sequences.length, globalBatch, o.resume && existing ? savedState(existing) : null);
  const math = mathOptions(o, totalSteps, sha256(fs.readFileSync(path.join(o.model, 'config.json'))));
  checkRanksAgree(comm, data, evalData, math);
  if (!existing && holdsModel(o.out)) {
    // The trained model is published into OUT: over a model directory's own files (the model
    // being trained, say) it would replace them.
    throw new UserError(`${optionName('out')} ${o.out} holds a model (config.json or *.safetensors) and no training run; its files would be replaced: choose another ${optionName('out')}`);
  }
  if (existing && !o.resume) {
    throw new UserError(`${optionName('out')} ${o.out} already holds a training run (${path.basename(existing)}); pass ${optionName('resume')} to continue it, or choose another ${optionName('out')}`);
  }
  if (existing && o.resume) {
    checkResume(existing, math, comm.size, data, evalData);
    // A save or prune killed midway left a temporary copy (a whole checkpoint's size), one killed
    // after its rename the link or the prune undone; a run with nothing left to train makes no
    // save that would set them right.
    if (comm.rank === 0) {
      removeTemporaries(o.out);
      settleCheckpoints(o.out, o.keepCheckpoints);
    }
  }
  const trainer = await openTrainer(o.model, {
    precision: o.precision, lr: o.lr, lrSchedule: o.lrSchedule, warmupSteps: o.warmupSteps, totalSteps, weightDecay: o.weightDecay,
    maxGradNorm: o.maxGradNorm, checkpointActivations: o.checkpointActivations,
    threads: o.threads ?? (env.localSize > 1 ? threadsPerRank(env.localSize) : undefined), comm,
    offload: offloadOptions(o, heldBytes(o, data, evalData)),
  });
  let failed = false;
  try {
    yield* runSteps(trainer, o, data, evalData, totalSteps, math, existing, comm);
  } catch (e) {
    // The run's own error is the one to report, not a failure of the cleanup after it.
    failed = true;
    await trainer.close().catch(() => undefined);
    throw e;
  } finally {
    // (also when the caller stops iterating early)
    if (!failed) await trainer.close();
  }
}

/** The run's steps: --max-steps, or in epoch mode the micro-batches of --epochs over --grad-accum.
 *  A resume counts the micro-batches its epochs have left from the checkpoint's data position:
 *  batches never run past the last epoch, so a finished run's last step may have been short, and
 *  a resume raising --epochs took as many steps as an uninterrupted run (whose steps span the epoch
 *  boundary) and left the new epochs' last batches unread. */
function stepsOf(o: ResolvedOptions, sequences: number, globalBatch: number, saved: Record<string, Json> | null): number {
  if (o.maxSteps !== undefined) return o.maxSteps;
  const perEpoch = Math.ceil(sequences / globalBatch), all = (o.epochs ?? 1) * perEpoch;
  const p = saved?.data_position as { epoch?: Json; index?: Json } | undefined;
  // (a position that does not fit the data is the data's error, reported by the resume's checks)
  if (!p || !Number.isSafeInteger(saved!.step) || !Number.isSafeInteger(p.epoch) || !Number.isSafeInteger(p.index) || (p.index as number) > sequences) {
    return Math.ceil(all / o.gradAccum);
  }
  const read = (p.epoch as number) * perEpoch + Math.ceil((p.index as number) / globalBatch);
  return (saved!.step as number) + Math.ceil(Math.max(0, all - read) / o.gradAccum);
}

/** The training data and the eval data, tokenized. The tokenizer is dropped once they are read:
 *  nothing later needs it (chat templates are applied while reading). */
async function readData(o: ResolvedOptions): Promise<{ data: Dataset; evalData: Dataset | null }> {
  const ctx = dataContextFor(o.model, o.seqLen);
  const limit = o.ram !== undefined ? dataLineLimit(o.ram) : undefined;
  const data = await readDataset(o.data, ctx, limit);
  const evalData = o.evalData !== undefined ? await readDataset(o.evalData, ctx, limit) : null;
  return { data, evalData };
}

/** RAM the run holds besides the trainer's buffers for as long as it trains, which an offloaded
 *  run's plan counts against --ram: the tokenized data, and the tokenizer that read it (dropped,
 *  but V8 keeps the heap its parse grew: ~44 MiB for Llama 2's, which took a run under --ram 40MiB
 *  to 197 MiB; generation counts it the same way). */
function heldBytes(o: ResolvedOptions, data: Dataset, evalData: Dataset | null): number {
  return datasetBytes(data) + (evalData ? datasetBytes(evalData) : 0) + tokenizerRamBytes(o.model);
}

/** One run at a time trains into OUT: two runs on one OUT cleared each other's save in progress
 *  as a leftover, pruned each other's checkpoints, or both saved every step (checkpoint-21 beside
 *  checkpoint-21-1). Rank 0 holds `OUT.lock` (an flock: the kernel drops it when the run dies, so
 *  a killed run's is taken over) with its pid in it for the refusal to name; every rank gets the
 *  answer, so none waits in a collective for a rank that stopped. Returns the release, which
 *  deletes the file, as generation does with its output's lock. */
function lockOut(out: string, comm: Comm): () => void {
  // Named after what OUT names: a run through a link to OUT takes the same lock.
  const file = `${lockTarget(out)}.lock`;
  // Rank 0's answer, for every rank: [0] 0 = taken, 1 = held by another run ([1] its pid, 0 if
  // unknown), 2 = rank 0 could not lock.
  const answer = new Int32Array(2);
  let lock: FileLock | null = null, error: unknown = null;
  if (comm.rank === 0) {
    try {
      const r = takeLock(out, file);
      if (r instanceof FileLock) lock = r;
      else answer.set([1, r.holder]);
    } catch (e) {
      error = e;
      answer[0] = 2;
    }
  }
  comm.broadcast(answer, 0).wait();
  if (error) throw error;
  if (answer[0] === 2) throw new UserError(`${optionName('out')} ${out}: rank 0 cannot lock ${file}`);
  if (answer[0] === 1) {
    throw new UserError(`${optionName('out')} ${out}: another training run${answer[1] ? ` (pid ${answer[1]})` : ''} is writing it (it holds ${file}); ` +
      `wait for it to end, or choose another ${optionName('out')}`);
  }
  // A run ended by SIGTERM or Ctrl-C never reaches train()'s finally: the file went at exit only.
  const forget = lock ? removeAtExit(file) : () => {};
  return () => {
    if (!lock) return;
    fs.rmSync(file, { force: true });
    forget();
    lock.release();
  };
}

/** Takes `file`'s lock and writes this process's pid in it, or returns the pid its holder wrote
 *  (0 when it has not yet). */
function takeLock(out: string, file: string): FileLock | { holder: number } {
  const lock = lockRunFile(file, `${optionName('out')} ${out}`);
  if (!lock) return { holder: lockHolder(file) };
  fs.writeFileSync(file, `${process.pid}\n`);
  return lock;
}

function lockHolder(file: string): number {
  try {
    const pid = fs.readFileSync(file, 'utf8').trim();
    return /^\d+$/.test(pid) ? Number(pid) : 0;
  } catch {
    return 0;
  }
}

async function* runSteps(trainer: Trainer, o: ResolvedOptions, data: Dataset, evalData: Dataset | null, totalSteps: number,
  math: Record<string, string | number>, existing: string | null, comm: Comm): AsyncGenerator<TrainStepMetrics, void, undefined> {
  const lead = comm.rank === 0;
  const globalBatch = o.batchSize * comm.size;
  const resumed = o.resume && existing ? await restore(trainer, existing, comm) : null;
  const kernelShape = { rows: o.batchSize * o.seqLen, n: trainer.config.ffn, k: trainer.config.hidden };
  // Rank 0 chooses (a resume's saved kernel, else the machine's) and every rank computes with
  // its choice: the kernels round differently. The others neither measure nor keep one.
  // A saved kernel this machine cannot run is replaced by the nearest that can, with a note (the
  // run goes on, not bit for bit as it would have there), and the next checkpoint records it.
  let bf16Kernel = o.precision === 'bf16' && lead
    ? selectBf16Kernel(kernelShape, existing && o.resume ? checkpointBf16Kernel(existing) : null,
      // (a profile whose kernel choice goes unused says why, as a model load does)
      savedBf16Kernel(o.profile, (m) => process.stderr.write(`tierlm: ${m}\n`)),
      { savedFrom: existing ? `checkpoint ${path.join(existing, STATE_DIR, 'state.json')} (options.bf16_kernel)` : undefined })
    : null;
  if (o.precision === 'bf16' && comm.size > 1) {
    const kernels: Bf16Kernel[] = ['fma', 'dot', 'amx'];
    const chosen = Int32Array.of(Math.max(0, kernels.indexOf(bf16Kernel ?? 'fma')));
    comm.broadcast(chosen, 0).wait();
    bf16Kernel = selectBf16Kernel(kernelShape, kernels[chosen[0]!] ?? 'fma', null, { savedFrom: "rank 0's choice" });
  }
  const batcher = new Batcher(data, { batchSize: globalBatch, seed: o.seed }, resumed?.dataPosition);
  const startStep = resumed?.step ?? 0;
  o.onStart?.({
    startStep, totalSteps, resumedFrom: resumed?.dir ?? null, sequences: data.counts.sequences, tokens: data.counts.tokens,
    skipped: [...data.skipped, ...(evalData?.skipped ?? [])].map((s) => s.message), skippedLines: data.skippedLines + (evalData?.skippedLines ?? 0),
    parameters: trainer.parameterCount(),
    ...(trainer.offloadPlacement() ? { offload: trainer.offloadPlacement()! } : {}),
    ...predicted(trainer, o, comm.size),
  });
  const metrics = lead ? MetricsWriter.open(o.out, startStep) : null;
  try {
    let saved = startStep;
    for (let step = startStep + 1; step <= totalSteps; step++) {
      const epoch = batcher.position.epoch;
      const micro: Sequence[][] = [];
      // In epoch mode the last step may have fewer micro-batches: batches never run past the last epoch.
      while (micro.length < o.gradAccum && !(o.maxSteps === undefined && batcher.position.epoch >= (o.epochs ?? 1))) {
        micro.push(batcher.next().sequences.slice(comm.rank * o.batchSize, (comm.rank + 1) * o.batchSize));
      }
      const traffic = trainer.partition && { ...trainer.partition.traffic };
      const m = await trainer.step(micro.map((seqs) => seqs.map((s) => ({ tokenIds: s.ids, labels: s.labels }))));
      const out: TrainStepMetrics = {
        step: m.step, totalSteps, epoch, loss: m.loss, lr: m.lr, gradNorm: m.gradNorm, tokens: m.tokens, targets: m.targets,
        tokensPerSecond: m.seconds > 0 ? m.tokens / m.seconds : 0, seconds: m.seconds, ...(m.offload ? { offload: m.offload } : {}),
      };
      if (traffic) {
        out.gatheredBytes = trainer.partition!.traffic.gatheredBytes - traffic.gatheredBytes;
        out.reduceScatteredBytes = trainer.partition!.traffic.reduceScatteredBytes - traffic.reduceScatteredBytes;
      }
      if (evalData && ((o.evalEvery > 0 && step % o.evalEvery === 0) || step === totalSteps)) {
        out.evalLoss = await evaluate(trainer, evalData, o.batchSize);
        out.evalPerplexity = Math.exp(out.evalLoss);
      }
      metrics?.write(out);
      if ((o.saveEvery > 0 && step % o.saveEvery === 0) || step === totalSteps) {
        const options = { math, bf16_kernel: bf16Kernel, ranks: comm.size, eval_data: evalRecord(evalData) };
        out.checkpoint = await save(trainer, o, options, step, batcher, comm);
        saved = step;
      }
      yield out;
    }
    // A resume of a finished run (or one killed between its last save and publishing the model).
    if (saved === startStep && startStep > 0 && lead) publishModel(o.out, path.join(o.out, LATEST));
  } finally {
    metrics?.close();
  }
}

/** The default sequence length shrinks to the model's positions; a given one must fit them. */
function fitSeqLen(o: ResolvedOptions, byDefault: boolean): void {
  if (!fs.existsSync(path.join(o.model, 'config.json'))) throw new UserError(`${optionName('model')} ${o.model} is not a model directory (no config.json)`);
  const { config } = readConfig(o.model);
  const max = config.maxPositions;
  if (byDefault) o.seqLen = Math.min(o.seqLen, max);
  else if (o.seqLen > max) throw new UserError(`${optionName('seqLen')} ${o.seqLen} is longer than the model's ${max} positions${positionsNote(config)}`);
}

/** Every rank must train on the same data with the same options (each reads its own files and
 *  flags): ranks given different files planned different step counts, and one waited forever in
 *  a collective the others never reached — or, with files of one size, trained on different data
 *  without a word. Compared before any compute; every rank gets the same error. */
function checkRanksAgree(comm: Comm, data: Dataset, evalData: Dataset | null, math: Record<string, string | number>): void {
  if (comm.size === 1) return;
  const words = 5;
  const digest = createHash('sha256').update(JSON.stringify([data.fingerprint, evalData?.fingerprint ?? null, math])).digest();
  const mine = new Uint32Array(words);
  mine.set(new Uint32Array(Uint8Array.from(digest.subarray(0, 16)).buffer));
  mine[4] = data.sequences.length;
  const all = new Uint32Array(words * comm.size);
  comm.allGather(mine, all).wait();
  const of = (r: number) => all.subarray(r * words, (r + 1) * words);
  const differ = Array.from({ length: comm.size - 1 }, (_, i) => i + 1).filter((r) => of(r).some((w, j) => w !== of(0)[j]));
  if (differ.length === 0) return;
  const counts = Array.from({ length: comm.size }, (_, r) => `rank ${r}: ${of(r)[4]} sequences`).join(', ');
  throw new UserError(`the ranks were not given the same training data and options: rank${differ.length > 1 ? 's' : ''} ${differ.join(', ')} ` +
    `differ${differ.length > 1 ? '' : 's'} from rank 0 (${counts}); give every rank the same ${optionName('data')}, ${optionName('evalData')} and options`);
}

/** Checks that the run's options and data match those of the checkpoint `dir` it resumes (before
 *  any weight is read, so that another model is named as such, not by a missing tensor, and
 *  before the trainer opens: an offloaded one fills its states on disk first, minutes for
 *  OPT-1.3B). */
function checkResume(dir: string, math: Record<string, string | number>, ranks: number, data: Dataset, evalData: Dataset | null): void {
  // Each rank's slices of the state only fit the same number of ranks.
  const savedRanks = savedOptions(dir)?.ranks ?? 1;
  if (savedRanks !== ranks) {
    throw new UserError(`${dir}: cannot resume: the run was saved by ${savedRanks} rank${savedRanks === 1 ? '' : 's'}, this one has ${ranks}; ` +
      `resume with the same number (${savedRanks === 1 ? 'without mpirun' : `mpirun -np ${savedRanks}`}), or start a new run in another ${optionName('out')}`);
  }
  const saved = savedMathOptions(dir);
  for (const [k, v] of Object.entries(math)) {
    if (saved && saved[k] !== v) {
      throw new UserError(`${dir}: cannot resume: ${shownKey(k)} is ${JSON.stringify(v)}, the run being resumed used ${JSON.stringify(saved[k] ?? null)}; ` +
        `resume with the same value, or start a new run in another ${optionName('out')}`);
    }
  }
  // (Batcher.restore checks it again, for callers that resume without this check.)
  const fingerprint = (savedState(dir)?.data_position as { fingerprint?: Json } | undefined)?.fingerprint;
  if (typeof fingerprint === 'string' && fingerprint !== data.fingerprint) {
    throw new UserError(`${data.file}: the data differs from the run being resumed (${dir}; file, tokenizer or sequence length changed); its sequences would not continue ` +
      `where that run stopped; resume with the same ${optionName('data')}, or start a new run in another ${optionName('out')}`);
  }
  checkEvalData(dir, evalData);
}

/** The eval data must be the one the run evaluated before, or metrics.jsonl would mix the losses
 *  of two sets. Compared by fingerprint, as the data is (a copy elsewhere is the same data); a
 *  checkpoint saved before the eval data was recorded has no `eval_data`: accepted. */
function checkEvalData(dir: string, evalData: Dataset | null): void {
  const options = savedOptions(dir);
  if (!options || !('eval_data' in options)) return;
  const saved = options.eval_data as { file?: Json; fingerprint?: Json } | null;
  if ((saved?.fingerprint ?? null) === (evalData?.fingerprint ?? null)) return;
  const flag = optionName('evalData');
  const was = saved ? `evaluated on ${flag} ${String(saved.file)}` : `had no ${flag}`;
  const change = !evalData ? `this one has no ${flag}; metrics.jsonl would evaluate only part of the run`
    : saved ? `${evalData.file} differs from it (file, tokenizer or sequence length changed); metrics.jsonl would mix the losses of two eval sets`
      : `this one has ${flag} ${evalData.file}; metrics.jsonl would evaluate only part of the run`;
  throw new UserError(`${dir}: cannot resume: the run being resumed ${was}, ${change}; resume with the same ${flag}, or start a new run in another ${optionName('out')}`);
}

/** What a checkpoint records of the eval data, for a resume to compare (checkEvalData). */
function evalRecord(evalData: Dataset | null): Json {
  return evalData && { file: evalData.file, fingerprint: evalData.fingerprint };
}

/** A saved option's name as this caller spells it: checkpoints store the flags (`--seq-len`), which
 *  the API calls `seqLen`. */
function shownKey(key: string): string {
  return key.startsWith('--') && nameStyle() === 'api' ? key.slice(2).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()) : key;
}

/** Loads the checkpoint `dir` into the trainer's states (checked first; an offloaded trainer
 *  streams the optimizer file itself; under ranks each rank reads its slices). */
async function restore(trainer: Trainer, dir: string, comm: Comm): Promise<Omit<TrainingState, 'tensors'> & { dir: string }> {
  if (trainer.partition) {
    const state = await loadPartitioned(trainer.partition, comm, dir);
    trainer.stepsDone = state.step;
    return { ...state, dir };
  }
  const expected = new Map(trainer.stateSources().map((p) => [p.name, p.shape]));
  const { state } = await loadCheckpoint(dir, expected, trainer.offloads ? () => null : undefined);
  await trainer.restoreStates(path.join(dir, STATE_DIR), state);
  return { ...state, dir };
}

/** A checkpoint's state.json, or null when it cannot be read (then loadCheckpoint reports what
 *  is wrong with it). */
function savedState(dir: string): Record<string, Json> | null {
  try {
    const j = JSON.parse(fs.readFileSync(path.join(dir, STATE_DIR, 'state.json'), 'utf8')) as Json;
    return typeof j === 'object' && j !== null && !Array.isArray(j) ? j : null;
  } catch {
    return null;
  }
}

/** The options a checkpoint was saved with, or null when its state.json cannot be read. */
function savedOptions(dir: string): Record<string, Json> | null {
  const j = savedState(dir);
  return j && ((j.options ?? {}) as Record<string, Json>);
}

function savedMathOptions(dir: string): Record<string, Json> | null {
  const o = savedOptions(dir);
  return o && ((o.math ?? {}) as Record<string, Json>);
}

function checkpointBf16Kernel(dir: string): Bf16Kernel | null {
  const k = savedOptions(dir)?.bf16_kernel;
  return isBf16Kernel(k) ? k : null;
}

async function save(trainer: Trainer, o: ResolvedOptions, options: { [key: string]: Json }, step: number, batcher: Batcher, comm: Comm): Promise<string> {
  const state = {
    step,
    dataPosition: batcher.position,
    // The data order is the only randomness, and a pure function of (seed, epoch): nothing to carry.
    rng: { data_order: 'mulberry32(seed + epoch)', seed: o.seed },
    options,
  };
  const dir = trainer.partition
    ? await savePartitioned(trainer.partition, comm, o.out, o.model, state, { keep: o.keepCheckpoints })
    : await trainer.sync().then(() => saveCheckpoint(o.out, o.model, {
      ...state,
      tensors: new Map(trainer.stateSources().map((p) => [p.name, { shape: p.shape, master: p.master, m: p.m, v: p.v }])),
    }, { keep: o.keepCheckpoints }));
  if (comm.rank === 0) publishModel(o.out, dir);
  return dir;
}

/** Mean loss over every target of the eval data, in file order. */
async function evaluate(trainer: Trainer, data: Dataset, batchSize: number): Promise<number> {
  let sum = 0, count = 0;
  for (const b of evalBatches(data, batchSize)) {
    const r = await trainer.evaluate(b.sequences.map((s) => ({ tokenIds: s.ids, labels: s.labels })));
    if (r.targets === 0) continue;
    sum += r.loss * r.targets;
    count += r.targets;
  }
  return sum / count;
}

/** An offloaded run's predicted step time from the hardware profile (none when there is no
 *  saved profile: training does not stop to measure one). */
function predicted(trainer: Trainer, o: ResolvedOptions, ranks: number): Pick<TrainRunInfo, 'predicted' | 'unpredicted'> {
  // (a ranked store's states are partitioned, not offloaded: the cost model of one rank is plan's)
  if (ranks > 1 && o.ram !== undefined) return { unpredicted: 'no predicted step time under ranks (`tierlm plan --train --ranks N` predicts one rank\'s)' };
  if (!trainer.offloads) return {};
  const profile = loadProfile(o.profile ?? defaultProfilePath());
  if (!profile) return { unpredicted: 'no saved hardware profile (`tierlm profile`): no predicted step time' };
  const p = trainer.predictStep(profile, o.batchSize * o.seqLen, o.gradAccum, o.seqLen);
  return p ? { predicted: { seconds: p.seconds, bound: p.bound, computeSeconds: p.computeSeconds, passIoSeconds: p.passIoSeconds, tileIoSeconds: p.tileIoSeconds,
    optimizerSeconds: p.optimizerSeconds, optimizerHiddenSeconds: p.optimizerHiddenSeconds } } : {};
}

/** The trainer's offload options from the run's (none without a RAM limit). */
function offloadOptions(o: ResolvedOptions, heldBytes: number): OffloadOptions | undefined {
  if (o.ram === undefined || o.diskDir === undefined) return undefined;
  const p = o.ramPercent;
  return {
    ram: o.ram, diskDir: o.diskDir, disk: o.disk, subGroupSize: o.subGroupSize, tileSize: o.tileSize, maxTokens: o.batchSize * o.seqLen, heldBytes,
    shares: p ? { param: p[0]! / 100, grad: p[1]! / 100, master: p[2]! / 100, m: p[3]! / 100, v: p[4]! / 100, act: p[5]! / 100 } : undefined,
  };
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** --out: a directory or nothing yet, in a directory that exists (nothing the user did not name is created). */
function checkOut(out: string, model: string): void {
  if (fs.existsSync(out) && !fs.statSync(out).isDirectory()) throw new UserError(`${optionName('out')} ${out} exists and is not a directory`);
  const parent = path.dirname(path.resolve(out));
  if (!fs.existsSync(parent)) throw new UserError(`${optionName('out')} ${out}: directory ${parent} does not exist`);
  if (fs.existsSync(out) && fs.existsSync(model) && fs.realpathSync(out) === fs.realpathSync(model)) throw new UserError(`${optionName('out')} ${out} is the model directory; choose another ${optionName('out')}`);
}

function holdsModel(dir: string): boolean {
  return fs.existsSync(dir) && fs.readdirSync(dir).some((n) => n === 'config.json' || n.endsWith('.safetensors'));
}
