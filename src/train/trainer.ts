// Training from code: open a Hugging Face model directory, then step() over batches of token-id
// sequences. One step = one optimizer update over one or more micro-batches (gradient
// accumulation); its loss is the mean cross-entropy over every counted target of all of them
// (the targets are counted first, and every gradient is scaled by 1 / that total), so k
// micro-batches of b sequences give the same step as one micro-batch of k·b.
//
// The parameters live in a ParamStore (./params.ts): fp32, or bf16 for compute with fp32 master
// weights and moments; gradients are f32 in both, so accumulation over micro-batches and tokens is
// fp32 throughout. AdamW (src/optim/adamw.ts) clips the global norm and updates in one pass.

import fs from 'node:fs';
import path from 'node:path';
import { type Backend, type ComputeMode, cpuBackend, setThreads } from '../backend/index.js';
import { TensorStore } from '../formats/safetensors.js';
import { writeSafetensors } from '../formats/safetensors-writer.js';
import type { ModelConfig } from '../models/config.js';
import { readConfig } from '../models/registry.js';
import { AdamW } from '../optim/adamw.js';
import type { ParamState, Precision } from '../optim/state.js';
import { fromFloat32 } from '../tensor/dtype.js';
import { UserError } from '../util/errors.js';
import { type TrainSequence, packMicroBatch } from './batch.js';
import { TrainModel } from './model.js';
import { ParamStore, type ParamSource, checkpointValues } from './params.js';
import { PartitionedStore } from './partition/store.js';
import { openRankOffload } from './partition/open.js';
import { MasterSpill } from './partition/checkpoint.js';
import type { Comm } from '../dist/comm.js';
import { type LrSchedule, checkSchedule, learningRate } from './schedule.js';
import { type Offloaded, type OffloadOptions, checkModelTensors, openOffload, restoreOffload } from './offload/open.js';
import { modelDtype } from './model-writer.js';
import type { OffloadStore } from './offload/store.js';
import type { OffloadStepStats } from './offload/stats.js';
import { type OffloadCost, predictOffloadStep } from './offload/cost.js';
import type { HardwareProfile } from '../policy/profile.js';
import { alignUp } from '../tensor/disk/io.js';
import { type F32Source, type TrainingState, f32Chunk } from './training-state.js';
import { checkTrainerOptions } from './trainer-options.js';

export interface TrainerOptions {
  /** 'fp32' (default): fp32 parameters, gradients and Adam state. 'bf16': bf16 parameters for
   *  compute, fp32 gradients, master weights and moments. */
  precision?: Precision;
  /** The mode GEMMs compute in with bf16 parameters: 'bf16' (default: activations rounded to
   *  bf16 as well, as PyTorch's bf16 autocast does, so the GEMMs can run on vdpbf16ps where the
   *  CPU has it and it is faster — selectBf16Kernel measures; 1.5× the training speed of 'fp32' on
   *  the AMD EPYC of docs/benchmarks.md) or 'fp32' (activations stay f32, the bf16 weights are
   *  widened inside the kernel, at the fp32 FMA rate). Every GEMM accumulates in fp32 either way.
   *  fp32 precision always computes in fp32. */
  computeMode?: ComputeMode;
  /** Peak learning rate (default 5e-5). */
  lr?: number;
  lrSchedule?: LrSchedule;
  warmupSteps?: number;
  /** Steps the linear and cosine schedules decay over (required for them). */
  totalSteps?: number;
  /** Decoupled weight decay on every parameter (default 0.01, PyTorch's AdamW). */
  weightDecay?: number;
  betas?: [number, number];
  eps?: number;
  /** Clip the global gradient norm to this (default 1.0; 0 = off). */
  maxGradNorm?: number;
  /** Keep only each layer's input and recompute the layer in backward (default true). */
  checkpointActivations?: boolean;
  /** Compute backend (default: the native CPU backend). */
  backend?: Backend;
  /** Compute threads (sets the process-wide native pool; default: unchanged, every core). */
  threads?: number;
  /** Train beyond memory: the model states on RAM and disk under a RAM limit
   *  (src/train/offload). Absent: every state in RAM. */
  offload?: OffloadOptions;
  /** Data-parallel ranks (src/dist): with more than one, every model state is split over them
   *  (ZeRO-3, src/train/partition) and each step's batch is this rank's share of the global one. */
  comm?: Comm;
}

/** Where a Trainer's parameters live in RAM: the layer code's ParamSource plus what the optimizer
 *  updates (ParamStore, or this rank's slices in a PartitionedStore). */
export interface TrainSource extends ParamSource {
  /** The states AdamW updates (under ranks: this rank's slices). */
  readonly states: readonly ParamState[];
  beginStep(): void;
  endStep(): void;
}

function inRam(s: TrainSource | Offloaded): s is TrainSource {
  return s instanceof ParamStore || s instanceof PartitionedStore;
}

export interface StepMetrics {
  /** The step just taken, counting from 1. */
  step: number;
  /** Mean cross-entropy over the step's counted targets. */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Learning rate the step used. */
  lr: number;
  /** Tokens run through the model. */
  tokens: number;
  /** Targets the loss counted (labels not −100). */
  targets: number;
  seconds: number;
  /** Offloaded runs: bytes moved per tier and state kind, and I/O hidden under compute. */
  offload?: OffloadStepStats;
}

export class Trainer {
  private readonly model: TrainModel;
  private readonly optimizer: AdamW;
  private readonly schedule: { lr: number; schedule: LrSchedule; warmupSteps: number; totalSteps: number };

  private readonly offloaded: Offloaded | null;
  private readonly store: TrainSource | OffloadStore;
  private readonly ranked: PartitionedStore | null;
  /** Set by the first close(): every later call is refused, and a second close() waits for it. */
  private closing: Promise<void> | null = null;
  /** The last public call's settlement (never rejects): each step, evaluation, save, restore or
   *  sync starts when the call before it has settled, so calls made without awaiting run in call
   *  order with the results of awaiting each (run at once, they shared the offloaded buffers and
   *  read weights mid-update). close() waits for it before it closes the store. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly config: ModelConfig,
    store: TrainSource | Offloaded,
    backend: Backend,
    options: TrainerOptions,
  ) {
    this.offloaded = inRam(store) ? null : store;
    this.store = inRam(store) ? store : store.store;
    this.ranked = store instanceof PartitionedStore ? store : null;
    this.schedule = { lr: options.lr ?? 5e-5, schedule: options.lrSchedule ?? 'constant', warmupSteps: options.warmupSteps ?? 0,
      totalSteps: options.totalSteps ?? 0 };
    checkSchedule(this.schedule);
    this.model = new TrainModel(this.store, backend, options.checkpointActivations ?? true);
    this.optimizer = new AdamW(backend, inRam(store) ? store.states : [], {
      lr: this.schedule.lr, betas: options.betas ?? [0.9, 0.999], eps: options.eps ?? 1e-8, weightDecay: options.weightDecay ?? 0.01,
      maxGradNorm: options.maxGradNorm ?? 1, sumSquares: this.ranked ? (s) => this.ranked!.sum([s])[0]! : undefined,
    });
  }

  /** Optimizer steps taken (the bias correction's t). Settable to resume from saved moments. */
  get stepsDone(): number {
    return this.optimizer.step;
  }

  set stepsDone(n: number) {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`stepsDone must be an integer >= 0, got ${n}`);
    this.optimizer.step = n;
  }

  /** Waits until the last step's update is done. An offloaded run updates in the background,
   *  overlapping the next step's (or evaluation's) forward, which waits for each layer as it
   *  fetches it; whatever reads the states as a whole (saveParams, stateSources, a checkpoint)
   *  waits for all of it. Rethrows the update's error (an I/O failure). In RAM it only waits for
   *  the calls made before it. */
  sync(): Promise<void> {
    // Queued: a sync() right after step() waits for that step's update too.
    return this.track('sync', async () => {
      await this.offloaded?.optimizer.settle();
    });
  }

  /** After close() the buffers are gone and an offloaded run's files removed (and in RAM a call
   *  would seem to work on a trainer its owner has let go): refused by name. */
  private checkOpen(method: string): void {
    if (this.closing) throw new UserError(`${method}() was called after close(): open the trainer again`);
  }

  /** Runs `work` as `method` once every call before it has settled; refused after close(). */
  private async track<T>(method: string, work: () => Promise<T>): Promise<T> {
    this.checkOpen(method);
    // Queued before the first await: a close() right after the call waits for it. A failed call
    // reports to its own caller and does not stop the ones after it.
    const p = this.queue.then(work);
    this.queue = p.catch(() => {});
    return p;
  }

  /** Whether the last step's update is still running in the background (offloaded runs). */
  get updating(): boolean {
    return this.offloaded?.optimizer.busy ?? false;
  }

  /** One optimizer step over `batch`: one micro-batch (a list of sequences), or several (a list
   *  of lists) whose gradients are accumulated. */
  step(batch: readonly TrainSequence[] | readonly (readonly TrainSequence[])[]): Promise<StepMetrics> {
    return this.track('step', () => this.takeStep(batch));
  }

  private async takeStep(batch: readonly TrainSequence[] | readonly (readonly TrainSequence[])[]): Promise<StepMetrics> {
    const t0 = performance.now();
    const c = this.config;
    if (!Array.isArray(batch) || batch.length === 0) throw new TypeError('step: batch must be a non-empty array of sequences, or of micro-batches');
    const micro = batch.length > 0 && Array.isArray(batch[0]) ? (batch as TrainSequence[][]) : [batch as TrainSequence[]];
    // Under ranks each micro-batch is this rank's share of a global one, and a share may be empty.
    // (errors name the micro-batch when there are several)
    const packed = micro.map((m, i) => (this.ranked && m.length === 0 ? null : packMicroBatch(m, c, micro.length > 1 ? i : undefined)));
    const [targets, tokens] = this.sum([packed.reduce((n, m) => n + (m?.count ?? 0), 0), packed.reduce((n, m) => n + (m?.ids.length ?? 0), 0)]) as [number, number];
    if (targets === 0) throw new UserError('the step has no target to learn (every label is -100)');
    this.checkTokens(packed.filter((m) => m !== null));
    this.optimizer.zeroGrad();
    let loss = 0;
    if (this.offloaded) {
      const store = this.offloaded.store;
      store.zeroGrad();
      for (const [i, m] of packed.entries()) {
        store.lastMicroBatch = i === packed.length - 1;
        loss += (await this.model.lossAndGrad(m!, 1 / targets)).loss;
      }
    } else {
      const store = this.store as TrainSource;
      store.beginStep();
      try {
        for (const m of packed) {
          if (m) loss += (await this.model.lossAndGrad(m, 1 / targets)).loss;
          else this.ranked!.skipMicroBatch();
        }
      } finally {
        store.endStep();
      }
    }
    loss = this.sum([loss])[0]!;
    const lr = learningRate(this.schedule, this.optimizer.step);
    const result = (gradNorm: number, offload?: OffloadStepStats): StepMetrics => ({
      step: this.optimizer.step, loss: loss / targets, gradNorm, lr, tokens, targets, seconds: (performance.now() - t0) / 1000, ...(offload ? { offload } : {}),
    });
    if (this.offloaded) {
      // The update runs in the background, overlapping the next forward (./offload/optimizer.ts).
      // This step's statistics end once its gradient writes and the reads it started ahead have
      // landed (quiesce); its update's transfers count in the next step's.
      const off = this.offloaded;
      await off.store.quiesce();
      const stats = off.store.stats();
      return result(off.optimizer.start(this.optimizer, lr).gradNorm, stats);
    }
    const disk = this.ranked?.disk;
    if (disk) {
      // A rank's slices on disk: the update streams them and is waited for here (each rank's
      // gathers read its slices without waiting per unit, so nothing overlaps the next forward).
      await disk.quiesce();
      const { gradNorm } = disk.optimizer.start(this.optimizer, lr);
      await disk.optimizer.settle();
      return result(gradNorm, disk.stats());
    }
    return result(this.optimizer.update(lr).gradNorm);
  }

  /** An offloaded run's buffers were planned for micro-batches of at most offload.maxTokens. */
  private checkTokens(packed: { ids: ArrayLike<number> }[]): void {
    const max = this.offloaded?.maxTokens ?? this.ranked?.disk?.maxTokens;
    const most = Math.max(0, ...packed.map((m) => m.ids.length));
    if (max !== undefined && most > max) {
      throw new UserError(`a micro-batch of ${most} tokens is larger than the ${max} the offloaded run planned its RAM for (offload.maxTokens)`);
    }
  }

  /** Mean cross-entropy of the sequences under the current weights (no update). */
  evaluate(seqs: readonly TrainSequence[]): Promise<{ loss: number; targets: number }> {
    return this.track('evaluate', () => this.lossOf(seqs));
  }

  private async lossOf(seqs: readonly TrainSequence[]): Promise<{ loss: number; targets: number }> {
    const m = packMicroBatch(seqs, this.config);
    this.checkTokens([m]);
    const { loss, count } = await this.model.loss(m);
    return { loss: count > 0 ? loss / count : NaN, targets: count };
  }

  /** Sums over ranks (identity in one process). */
  private sum(values: number[]): number[] {
    return this.ranked ? this.ranked.sum(values) : values;
  }

  /** The partitioned store when the states are split over ranks, else null. */
  get partition(): PartitionedStore | null {
    return this.ranked;
  }

  /** Every parameter's model states (Hugging Face name, shape, param, grad, master, m, v), in a
   *  fixed order; a tied head appears once, as the embedding. Under ranks: this rank's slices. */
  parameters(): readonly ParamState[] {
    this.checkOpen('parameters');
    if (this.offloaded) {
      throw new UserError('parameters(): this trainer offloads its states to disk; read them with stateSources(), saveParams() or a checkpoint');
    }
    return (this.store as TrainSource).states;
  }

  /** Number of trainable values. */
  parameterCount(): number {
    this.checkOpen('parameterCount');
    if (this.ranked) return this.ranked.parameterCount;
    if (this.offloaded) return this.offloaded.store.layout.params.reduce((n, p) => n + p.size, 0);
    return this.sources().reduce((n, s) => n + s.size, 0);
  }

  /** Every parameter's name, shape, and master weight and moments as sources a writer pulls
   *  from (in RAM, or read chunk by chunk from the disk tier), in the parameters' order. */
  stateSources(): { name: string; shape: number[]; size: number; master: F32Source; m: F32Source; v: F32Source }[] {
    this.checkOpen('stateSources');
    return this.sources();
  }

  /** stateSources() for the trainer's own use (a save under way when close() was called goes on). */
  private sources(): { name: string; shape: number[]; size: number; master: F32Source; m: F32Source; v: F32Source }[] {
    if (!this.offloaded) {
      return (this.store as TrainSource).states.map((p) => ({ name: p.name, shape: [...p.shape], size: p.master.size, master: p.master.data, m: p.m.data, v: p.v.data }));
    }
    if (this.offloaded.optimizer.busy) throw new Error('stateSources(): the last step\'s update is still running; await trainer.sync() first');
    const st = this.offloaded.store.states;
    return st.layout.params.map((p) => ({ name: p.name, shape: p.shape, size: p.size, master: st.reader('master', p.index), m: st.reader('m', p.index), v: st.reader('v', p.index) }));
  }

  /** Loads a checkpoint's training-state directory (checked by readTrainingState) into the states. */
  restoreStates(stateDir: string, state: TrainingState): Promise<void> {
    return this.track('restoreStates', () => this.restore(stateDir, state));
  }

  private async restore(stateDir: string, state: TrainingState): Promise<void> {
    await this.offloaded?.optimizer.settle();
    if (!this.offloaded) {
      for (const p of (this.store as TrainSource).states) {
        const s = state.tensors.get(p.name)!;
        p.master.data.set(s.master);
        p.m.data.set(s.m);
        p.v.data.set(s.v);
        if (p.param.dtype === 'bf16') p.param.data.set(fromFloat32('bf16', p.master.data));
      }
    } else await restoreOffload(this.offloaded.store, stateDir);
    this.stepsDone = state.step;
  }

  /** Whether the states are read straight from a checkpoint (restoreStates reads the file itself). */
  get offloads(): boolean {
    return this.offloaded !== null;
  }

  /** An offloaded run's predicted step time for micro-batches of `tokens` tokens, from a
   *  hardware profile (./offload/cost.ts); null in RAM. */
  predictStep(profile: HardwareProfile, tokens: number, gradAccum = 1, seqLen?: number): OffloadCost | null {
    this.checkOpen('predictStep');
    const off = this.offloaded;
    if (!off) return null;
    const act = off.plan.shares.act < 1 ? this.config.layers * alignUp(4 * off.maxTokens * this.config.hidden) : 0;
    return predictOffloadStep({ layout: off.plan.layout, tokens, gradAccum, seqLen, actDiskBytes: act, profile,
      optimizer: { subGroupSize: off.optimizer.subGroupSize, sets: off.optimizer.sets } });
  }

  /** An offloaded run's model states in RAM and on disk (bytes), and its sub-group size; null in RAM. */
  offloadPlacement(): { ramBytes: number; diskBytes: number; subGroupSize: number; tiledWeights: number; tileBytes: number } | null {
    this.checkOpen('offloadPlacement');
    // Under ranks: this rank's slices.
    const off = this.offloaded ?? this.ranked?.disk;
    if (!off) return null;
    const layout = off.plan.layout;
    const b = layout.kinds.map((k) => layout.bytes(k));
    return {
      ramBytes: b.reduce((n, x) => n + x.ram, 0), diskBytes: b.reduce((n, x) => n + x.disk, 0), subGroupSize: off.optimizer.subGroupSize,
      tiledWeights: off.plan.tiled.size, tileBytes: off.plan.tileBytes,
    };
  }

  /** Ends the trainer: waits for every step, evaluation or save under way or queued, then for an
   *  offloaded run's transfers, and removes its state files. Every later call throws; a second close() waits for
   *  the first and does nothing more. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    // What is under way or queued reports its own result or error to its caller; close only waits
    // for it (its buffers are still leased and its files in use until it ends). No call joins the
    // queue after this: closing is set.
    await this.queue;
    // A failed update was reported by the step or sync() that met it; close only waits for it.
    await this.offloaded?.optimizer.settle().catch(() => {});
    await this.offloaded?.store.close();
    await this.ranked?.close();
  }

  /** Writes the current weights (the fp32 masters, rounded to `dtype`) to a safetensors file under
   *  their Hugging Face names. Under ranks every rank calls it (the masters are gathered) and rank 0
   *  writes. Offloaded, it first waits for the last step's update (sync()). */
  saveParams(file: string, dtype: 'f32' | 'bf16' | 'f16' = 'f32'): Promise<void> {
    return this.track('saveParams', () => this.writeParams(file, dtype));
  }

  private async writeParams(file: string, dtype: 'f32' | 'bf16' | 'f16'): Promise<void> {
    if (dtype !== 'f32' && dtype !== 'bf16' && dtype !== 'f16') throw new RangeError(`saveParams: dtype must be 'f32', 'bf16' or 'f16', got ${JSON.stringify(dtype)}`);
    // In RAM nothing is pending and the file is written before this returns.
    if (this.offloaded?.optimizer.busy) await this.offloaded.optimizer.settle();
    const masters = new Map<string, { shape: readonly number[]; data: F32Source }>();
    const lead = !this.ranked || this.ranked.layout.rank === 0;
    // Offloaded ranks: rank 0 spills the gathered masters to its disk tier (./partition/checkpoint.ts).
    const spill = lead && this.ranked?.disk ? new MasterSpill(path.join(this.ranked.disk.states.dir, 'masters-params.bin')) : null;
    try {
      if (this.ranked) this.ranked.gatherMasters((name, shape, data) => lead && masters.set(name, { shape, data: spill ? spill.put(data) : data }));
      else for (const s of this.sources()) masters.set(s.name, { shape: s.shape, data: s.master });
      if (!lead) return;
      writeSafetensors(file, [...masters].map(([name, m]) => ({ name, dtype, shape: [...m.shape] })), (e, dst, offset) => {
        const n = dst.byteLength / (dtype === 'f32' ? 4 : 2);
        const src = f32Chunk(masters.get(e.name)!.data, offset, n);
        dst.set(new Uint8Array(dtype === 'f32' ? src.slice().buffer : fromFloat32(dtype, src).buffer));
      });
    } finally {
      spill?.close();
    }
  }
}

/** Opens DIR (config.json + safetensors, any architecture tierlm generates with) for training. */
export async function openTrainer(dir: string, options: TrainerOptions = {}): Promise<Trainer> {
  checkTrainerOptions(options);
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new UserError(`${dir} is not a model directory (no config.json)`);
  const precision = options.precision ?? 'fp32';
  const backend = options.backend ?? cpuBackend();
  if (options.threads !== undefined) setThreads(options.threads);
  const { arch, config } = readConfig(dir);
  const tensors = TensorStore.open(dir);
  try {
    const names = arch.names(config, (n) => tensors.has(n));
    // What saves need of the source, checked before any state is filled or step taken (a run
    // refused at its first save lost every step): each trained tensor present with the shape
    // config.json gives it (a save writes it under that name; every other tensor is copied
    // unchanged), and the dtype saves write in.
    checkModelTensors(config, names, tensors);
    modelDtype(dir);
    const mode = precision === 'bf16' ? options.computeMode ?? 'bf16' : 'fp32';
    if (mode !== 'fp32' && mode !== 'bf16') throw new RangeError(`computeMode must be 'fp32' or 'bf16', got ${String(mode)}`);
    const comm = options.comm;
    if (options.offload && comm && comm.size > 1) {
      const store = await openRankOffload(config, names, comm, backend, precision, mode, tensors, options.offload, options.checkpointActivations ?? true);
      return new Trainer(config, store, backend, options);
    }
    if (options.offload) {
      const off = await openOffload(config, names, backend, precision, mode, tensors, options.offload, options.checkpointActivations ?? true);
      return new Trainer(config, off, backend, options);
    }
    const store = comm && comm.size > 1
      ? PartitionedStore.fromValues(config, names, comm, backend, precision, checkpointValues(config, tensors), mode)
      : ParamStore.fromTensors(config, names, backend, precision, tensors, mode);
    return new Trainer(config, store, backend, options);
  } finally {
    tensors.close();
  }
}
