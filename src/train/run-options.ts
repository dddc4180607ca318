// The options of a training run (train() in ./run.ts, `tierlm train` in src/cli/train.ts): their
// defaults, their checks, and which of them a resumed run must share with the run it continues.
// The CLI's flags are these names in kebab-case; every default lives here, once.

import fs from 'node:fs';
import { checkApiValue } from '../util/options.js';
import { nameStyle, optionName } from '../util/names.js';
import type { Precision } from '../optim/state.js';
import type { LrSchedule } from './schedule.js';

export interface TrainRunOptions {
  /** Hugging Face model directory to start from. */
  model: string;
  /** Training data, JSONL (see docs/api.md for the line shapes). */
  data: string;
  /** Output directory: the model, checkpoints and metrics.jsonl. */
  out: string;
  precision?: Precision;
  /** Tokens per sequence: text is packed into chunks of this length; longer given sequences are skipped. */
  seqLen?: number;
  /** Sequences per micro-batch. */
  batchSize?: number;
  /** Micro-batches per optimizer step. */
  gradAccum?: number;
  /** Optimizer steps to run (instead of epochs). */
  maxSteps?: number;
  /** Passes over the data (default 1 when maxSteps is not given). */
  epochs?: number;
  lr?: number;
  lrSchedule?: LrSchedule;
  warmupSteps?: number;
  weightDecay?: number;
  /** Global gradient-norm clipping; 0 = off. */
  maxGradNorm?: number;
  /** Seeds the data order (shuffled per epoch). */
  seed?: number;
  /** Save a checkpoint every N steps (0 = only at the end). */
  saveEvery?: number;
  /** Checkpoints kept in OUT (the newest). */
  keepCheckpoints?: number;
  /** Continue the run in OUT from its latest checkpoint (from the start when it has none). */
  resume?: boolean;
  /** Evaluation data (JSONL, same shapes); its loss and perplexity are reported. */
  evalData?: string;
  /** Evaluate every N steps (0 = only after the last step). */
  evalEvery?: number;
  threads?: number;
  checkpointActivations?: boolean;
  /** RAM limit in bytes: the model states go on RAM and disk under it (a hard limit; peak RSS
   *  within it plus the runtime's overhead). Needs diskDir. */
  ram?: number;
  /** Directory of the disk tier for the states (must exist and be writable). */
  diskDir?: string;
  /** Disk tier capacity in bytes. */
  disk?: number;
  /** Elements per optimizer sub-group streamed disk → RAM → update → disk (default: planned). */
  subGroupSize?: number;
  /** Bytes of a weight tile: linear weights larger are computed in tiles (default: planned from ram). */
  tileSize?: number;
  /** Percent of each state kept in RAM, six numbers: bf16 parameters, gradients, master weights,
   *  momentum, variance, activation checkpoints (default: planned from ram). */
  ramPercent?: number[];
  /** Hardware profile file (as `tierlm profile --out FILE` writes it): the bf16 kernel it chose
   *  and, offloaded, the predicted step time (default: the saved profile, $TIERLM_PROFILE or
   *  ~/.cache/tierlm/hardware.json; training never stops to measure one). */
  profile?: string;
  /** Called once the data is read and the run's plan is known, before the first step. */
  onStart?: (info: TrainRunInfo) => void;
}

export interface TrainRunInfo {
  /** Step the run starts after (0, or the resumed checkpoint's step). */
  startStep: number;
  totalSteps: number;
  /** The checkpoint resumed from, if any. */
  resumedFrom: string | null;
  sequences: number;
  tokens: number;
  /** "FILE:LINE: reason" of the data lines skipped (training and eval data), the first
   *  SKIPPED_KEPT of each file. */
  skipped: string[];
  /** Data lines skipped in all, training and eval data. */
  skippedLines: number;
  parameters: number;
  /** Offloaded runs: the training state's bytes in RAM and on disk, and the sub-group size. */
  offload?: { ramBytes: number; diskBytes: number; subGroupSize: number; tiledWeights: number; tileBytes: number };
  /** Offloaded runs with a saved hardware profile: the cost model's step time and what bounds it. */
  predicted?: { seconds: number; bound: string; computeSeconds: number; passIoSeconds: number; tileIoSeconds: number; optimizerSeconds: number; optimizerHiddenSeconds: number };
  /** Offloaded runs without `predicted`: why not (no saved profile; or ranks, whose step
   *  `tierlm plan --train --ranks N` predicts). */
  unpredicted?: string;
}

type Optional = 'maxSteps' | 'epochs' | 'evalData' | 'threads' | 'onStart' | 'ram' | 'diskDir' | 'disk' | 'subGroupSize' | 'ramPercent' | 'tileSize' | 'profile';
export type ResolvedOptions = Required<Omit<TrainRunOptions, Optional>> & Pick<TrainRunOptions, Optional>;

export const TRAIN_DEFAULTS = {
  precision: 'fp32' as Precision,
  seqLen: 512,
  batchSize: 4,
  gradAccum: 1,
  lr: 5e-5,
  lrSchedule: 'constant' as LrSchedule,
  warmupSteps: 0,
  weightDecay: 0.01,
  maxGradNorm: 1,
  seed: 0,
  saveEvery: 500,
  keepCheckpoints: 1,
  resume: false,
  evalEvery: 0,
  checkpointActivations: true,
};

const KEYS = new Set(['model', 'data', 'out', 'maxSteps', 'epochs', 'evalData', 'threads', 'onStart', 'ram', 'diskDir', 'disk', 'subGroupSize',
  'ramPercent', 'tileSize', 'profile', ...Object.keys(TRAIN_DEFAULTS)]);

const OFFLOAD_ONLY = [
  ['tileSize', 'tiles are how an offloaded run fits a large weight'],
  ['subGroupSize', 'sub-groups are how an offloaded run streams the optimizer states through RAM'],
  ['disk', 'it caps the disk tier of an offloaded run'],
] as const;

/** An option as the user wrote it: on the command line its flag, the name in kebab-case. */
function name(k: string): string {
  return nameStyle() === 'flags' ? `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` : k;
}

/** Fills defaults and checks every value; unknown keys are a TypeError naming them. */
export function resolveOptions(o: TrainRunOptions): ResolvedOptions {
  if (typeof o !== 'object' || o === null) throw new TypeError('train() takes an options object');
  const unknown = Object.keys(o).filter((k) => !KEYS.has(k));
  if (unknown.length > 0) throw new TypeError(`train(): unknown option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}`);
  for (const k of ['model', 'data', 'out'] as const) {
    if (typeof o[k] !== 'string' || o[k] === '') throw new TypeError(`train(): ${k} must be a path (a non-empty string)`);
  }
  const defined = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  const r = { ...TRAIN_DEFAULTS, ...defined } as ResolvedOptions;
  const int = (k: keyof ResolvedOptions, min: number) => {
    const v = r[k];
    if (v !== undefined && !(Number.isSafeInteger(v) && (v as number) >= min)) throw new RangeError(`${name(k)} must be an integer >= ${min}, got ${String(v)}`);
  };
  int('seqLen', 2);
  int('batchSize', 1);
  int('gradAccum', 1);
  int('maxSteps', 1);
  int('epochs', 1);
  int('warmupSteps', 0);
  int('seed', 0);
  int('saveEvery', 0);
  int('keepCheckpoints', 1);
  int('evalEvery', 0);
  if (r.threads !== undefined) checkApiValue('threads', r.threads);
  int('ram', 1);
  int('disk', 1);
  int('subGroupSize', 1);
  int('tileSize', 4096);
  const [ram, diskDir] = [optionName('trainRam'), optionName('trainDiskDir')];
  // The options of an offloaded run are refused without one, not ignored.
  for (const [k, why] of OFFLOAD_ONLY) if (r[k] !== undefined && r.ram === undefined) throw new RangeError(`${name(k)} needs ${ram} and ${diskDir} (${why})`);
  if ((r.ram === undefined) !== (r.diskDir === undefined)) throw new RangeError(`${ram} and ${diskDir} go together: the states offloaded under the RAM limit need a disk tier`);
  if (r.diskDir !== undefined && (typeof r.diskDir !== 'string' || r.diskDir === '')) throw new TypeError(`${diskDir} must be a path (a non-empty string)`);
  if (r.ramPercent !== undefined) {
    if (r.ram === undefined) throw new RangeError(`${optionName('ramPercent')} needs ${ram} and ${diskDir}`);
    if (!Array.isArray(r.ramPercent) || r.ramPercent.length !== 6 || !r.ramPercent.every((x) => typeof x === 'number' && x >= 0 && x <= 100)) {
      throw new RangeError(`${optionName('ramPercent')} must be six percents in [0, 100] (parameters, gradients, master, momentum, variance, activation checkpoints), got ${JSON.stringify(r.ramPercent)}`);
    }
  }
  // The same rule as the flags' (src/util/options.ts), so the CLI and the API accept the same values.
  for (const k of ['lr', 'weightDecay', 'maxGradNorm'] as const) checkApiValue(k, r[k]);
  if (r.precision !== 'fp32' && r.precision !== 'bf16') throw new RangeError(`precision must be 'fp32' or 'bf16', got ${String(r.precision)}`);
  if (!['constant', 'linear', 'cosine'].includes(r.lrSchedule)) throw new RangeError(`lrSchedule must be constant, linear or cosine, got ${String(r.lrSchedule)}`);
  for (const k of ['resume', 'checkpointActivations'] as const) if (typeof r[k] !== 'boolean') throw new TypeError(`${k} must be a boolean`);
  if (r.evalData !== undefined && (typeof r.evalData !== 'string' || r.evalData === '')) throw new TypeError(`${optionName('evalData')} must be a path (a non-empty string)`);
  // (0, the default, is what the CLI passes when the flag is not given.)
  if (r.evalEvery > 0 && r.evalData === undefined) throw new RangeError(`${name('evalEvery')} needs ${optionName('evalData')} (the data it evaluates)`);
  if (r.onStart !== undefined && typeof r.onStart !== 'function') throw new TypeError('onStart must be a function');
  if (r.profile !== undefined) {
    if (typeof r.profile !== 'string' || r.profile === '') throw new TypeError(`${optionName('profile')} must be a path (a non-empty string)`);
    // (a profile named by the caller must exist; the saved one may not, and then nothing is predicted)
    if (!fs.existsSync(r.profile)) throw new RangeError(`${optionName('profile')} ${r.profile}: does not exist (measure one with \`tierlm profile --out FILE\`, or leave it out to use the saved one)`);
  }
  if (r.maxSteps !== undefined && r.epochs !== undefined) throw new RangeError(`give ${optionName('maxSteps')} or ${optionName('epochs')}, not both`);
  return r;
}

/** Options a resume must share with the run it continues, under the CLI's flag names: each changes
 *  the math of the steps to come (the data order, the batches, the update, the schedule). */
export function mathOptions(r: ResolvedOptions, totalSteps: number, modelConfigHash: string): Record<string, string | number> {
  return {
    'model config.json sha256': modelConfigHash,
    '--precision': r.precision,
    '--seq-len': r.seqLen,
    '--batch-size': r.batchSize,
    '--grad-accum': r.gradAccum,
    '--lr': r.lr,
    '--lr-schedule': r.lrSchedule,
    '--warmup-steps': r.warmupSteps,
    '--weight-decay': r.weightDecay,
    '--max-grad-norm': r.maxGradNorm,
    '--seed': r.seed,
    // A decaying schedule's rate at every step depends on the total; a constant one does not,
    // so a constant-rate run may be resumed with more steps.
    'total steps (of the linear or cosine schedule)': r.lrSchedule === 'constant' ? 0 : totalSteps,
  };
}
