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
import type { Comm } from '../dist/comm.js';
import { type LrSchedule, checkSchedule, learningRate } from './schedule.js';

export interface TrainerOptions {
  /** 'fp32' (default): fp32 parameters, gradients and Adam state. 'bf16': bf16 parameters for
   *  compute, fp32 gradients, master weights and moments. */
  precision?: Precision;
  /** The mode GEMMs compute in with bf16 parameters: 'fp32' (default: activations stay f32, the
   *  bf16 weights are widened inside the kernel, at the fp32 rate with half the weight bytes) or
   *  'bf16' (activations rounded to bf16 as well). Which is faster depends on the CPU: on the
   *  AVX512-BF16 machines without AMX we measured, 'fp32' (docs/benchmarks.md). fp32 precision
   *  always computes in fp32. */
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
  /** Data-parallel ranks (src/dist): with more than one, every model state is split over them
   *  (ZeRO-3, src/train/partition) and each step's batch is this rank's share of the global one. */
  comm?: Comm;
}

/** Where a Trainer's parameters live: the layer code's ParamSource plus what the optimizer updates. */
export interface TrainSource extends ParamSource {
  /** The states AdamW updates (under ranks: this rank's slices). */
  readonly states: readonly ParamState[];
  beginStep(): void;
  endStep(): void;
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
}

export class Trainer {
  private readonly model: TrainModel;
  private readonly optimizer: AdamW;
  private readonly schedule: { lr: number; schedule: LrSchedule; warmupSteps: number; totalSteps: number };
  private readonly ranked: PartitionedStore | null;

  constructor(
    readonly config: ModelConfig,
    private readonly store: TrainSource,
    backend: Backend,
    options: TrainerOptions,
  ) {
    this.schedule = { lr: options.lr ?? 5e-5, schedule: options.lrSchedule ?? 'constant', warmupSteps: options.warmupSteps ?? 0,
      totalSteps: options.totalSteps ?? 0 };
    checkSchedule(this.schedule);
    this.ranked = store instanceof PartitionedStore ? store : null;
    this.model = new TrainModel(store, backend, options.checkpointActivations ?? true);
    this.optimizer = new AdamW(backend, store.states, {
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

  /** One optimizer step over `batch`: one micro-batch (a list of sequences), or several (a list
   *  of lists) whose gradients are accumulated. */
  async step(batch: readonly TrainSequence[] | readonly (readonly TrainSequence[])[]): Promise<StepMetrics> {
    const t0 = performance.now();
    const c = this.config;
    if (!Array.isArray(batch) || batch.length === 0) throw new TypeError('step: batch must be a non-empty array of sequences, or of micro-batches');
    const micro = batch.length > 0 && Array.isArray(batch[0]) ? (batch as TrainSequence[][]) : [batch as TrainSequence[]];
    // Under ranks each micro-batch is this rank's share of a global one, and a share may be empty.
    const packed = micro.map((m) => (this.ranked && m.length === 0 ? null : packMicroBatch(m, c.vocabSize, c.maxPositions)));
    const [targets, tokens] = this.sum([packed.reduce((n, m) => n + (m?.count ?? 0), 0), packed.reduce((n, m) => n + (m?.ids.length ?? 0), 0)]) as [number, number];
    if (targets === 0) throw new UserError('the step has no target to learn (every label is -100)');
    this.optimizer.zeroGrad();
    let loss = 0;
    this.store.beginStep();
    try {
      for (const m of packed) {
        if (m) loss += this.model.lossAndGrad(m, 1 / targets).loss;
        else this.ranked!.skipMicroBatch();
      }
    } finally {
      this.store.endStep();
    }
    loss = this.sum([loss])[0]!;
    const lr = learningRate(this.schedule, this.optimizer.step);
    const { gradNorm } = this.optimizer.update(lr);
    return { step: this.optimizer.step, loss: loss / targets, gradNorm, lr, tokens, targets,
      seconds: (performance.now() - t0) / 1000 };
  }

  /** Mean cross-entropy of the sequences under the current weights (no update). */
  async evaluate(seqs: readonly TrainSequence[]): Promise<{ loss: number; targets: number }> {
    const m = packMicroBatch(seqs, this.config.vocabSize, this.config.maxPositions);
    const { loss, count } = this.model.loss(m);
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
    return this.store.states;
  }

  /** Writes the current weights (the fp32 masters, rounded to `dtype`) to a safetensors file under
   *  their Hugging Face names. Under ranks every rank calls it (the masters are gathered) and rank 0
   *  writes. */
  saveParams(file: string, dtype: 'f32' | 'bf16' | 'f16' = 'f32'): void {
    const masters = new Map<string, { shape: readonly number[]; data: Float32Array }>();
    if (this.ranked) this.ranked.gatherMasters((name, shape, data) => masters.set(name, { shape, data }));
    else for (const s of this.store.states) masters.set(s.name, { shape: s.shape, data: s.master.data });
    if (this.ranked && this.ranked.layout.rank !== 0) return;
    writeSafetensors(file, [...masters].map(([name, m]) => ({ name, dtype, shape: [...m.shape] })), (e, dst, offset) => {
      const n = dst.byteLength / (dtype === 'f32' ? 4 : 2);
      const src = masters.get(e.name)!.data.subarray(offset, offset + n);
      dst.set(new Uint8Array(dtype === 'f32' ? src.slice().buffer : fromFloat32(dtype, src).buffer));
    });
  }
}

/** Opens DIR (config.json + safetensors, any architecture tierlm generates with) for training. */
export async function openTrainer(dir: string, options: TrainerOptions = {}): Promise<Trainer> {
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new UserError(`${dir} is not a model directory (no config.json)`);
  const precision = options.precision ?? 'fp32';
  if (precision !== 'fp32' && precision !== 'bf16') throw new RangeError(`precision must be 'fp32' or 'bf16', got ${String(precision)}`);
  const backend = options.backend ?? cpuBackend();
  if (options.threads !== undefined) setThreads(options.threads);
  const { arch, config } = readConfig(dir);
  const tensors = TensorStore.open(dir);
  try {
    const names = arch.names(config, (n) => tensors.has(n));
    const mode = precision === 'bf16' ? options.computeMode ?? 'fp32' : 'fp32';
    if (mode !== 'fp32' && mode !== 'bf16') throw new RangeError(`computeMode must be 'fp32' or 'bf16', got ${String(mode)}`);
    const comm = options.comm;
    const store = comm && comm.size > 1
      ? PartitionedStore.fromValues(config, names, comm, backend, precision, checkpointValues(config, tensors), mode)
      : ParamStore.fromTensors(config, names, backend, precision, tensors, mode);
    return new Trainer(config, store, backend, options);
  } finally {
    tensors.close();
  }
}
