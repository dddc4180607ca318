// `tierlm plan --train`: the plan `tierlm train --ram` runs with (src/train/offload/search.ts):
// micro-batch and gradient accumulation, each state's placement, sub-group size, prefetch depth
// and tiles, with the predicted step time and what bounds it.
import { readConfig, readPreset } from '../models/registry.js';
import { tokenizerRamBytes } from '../formats/tokenizer.js';
import { type ModelConfig, positionsNote } from '../models/config.js';
import type { NameTable } from '../models/architecture.js';
import { TensorStore } from '../formats/safetensors.js';
import type { HardwareProfile } from '../policy/profile.js';
import { formatSize } from '../tensor/tiers/size.js';
import { type TrainPlan, planTraining } from '../train/offload/search.js';
import type { OffloadPlan } from '../train/offload/plan.js';
import type { Shares } from '../train/offload/layout.js';
import { UserError } from '../util/errors.js';

export interface TrainPlanFlags {
  model?: string;
  config?: string;
  layers?: number;
  precision?: 'fp32' | 'bf16';
  seqLen?: number;
  batchSize?: number;
  ranks?: number;
  tileSize?: number;
  subGroupSize?: number;
  ram?: number;
  disk?: number;
  json?: boolean;
}

/** The model's config and parameter names, from its directory or a named shape. */
function shape(o: TrainPlanFlags): { config: ModelConfig; names: NameTable } {
  if (o.model) {
    const { arch, config } = readConfig(o.model);
    const t = TensorStore.open(o.model);
    try {
      return { config, names: arch.names(config, (n) => t.has(n)) };
    } finally {
      t.close();
    }
  }
  const { arch, config } = readPreset(o.config, o.layers || undefined);
  return { config, names: arch.names(config, () => false) };
}

/** As `tierlm train` takes it: the default shrinks to the model's positions, a given --seq-len
 *  must fit them (a plan for fewer tokens than the run asks for would be planned for another run). */
function fitSeqLen(given: number | undefined, config: ModelConfig): number {
  if (given === undefined) return Math.min(512, config.maxPositions);
  if (given > config.maxPositions) throw new UserError(`--seq-len ${given} is longer than the model's ${config.maxPositions} positions${positionsNote(config)}`);
  return given;
}

export function trainPlan(o: TrainPlanFlags, profile: HardwareProfile): { plan: TrainPlan; config: ModelConfig; seqLen: number; batchSize: number } {
  if (o.ram === undefined) throw new UserError('plan --train needs --ram: the plan places the model states under a RAM limit');
  const { config, names } = shape(o);
  const seqLen = fitSeqLen(o.seqLen, config), batchSize = o.batchSize ?? 4;
  const plan = planTraining({ config, names, precision: o.precision ?? 'fp32', seqLen, batchSize, ram: o.ram, disk: o.disk, profile, checkpointActivations: true,
    ranks: o.ranks, tileSize: o.tileSize, subGroupSize: o.subGroupSize,
    // (a training run holds the model's tokenizer in RAM while it reads its data, as it counts it)
    heldBytes: o.model ? tokenizerRamBytes(o.model) : 0 });
  return { plan, config, seqLen, batchSize };
}

export function trainPlanJson(r: ReturnType<typeof trainPlan>): Record<string, unknown> {
  const { plan: p } = r;
  return {
    micro_batch: p.microBatch, grad_accum: p.gradAccum, seq_len: r.seqLen, sub_group_size: p.plan.subGroupSize, prefetch_depth: p.prefetchDepth,
    max_prefetch_depth: p.plan.maxDepth, tile_bytes: p.plan.tileBytes, tiled_weights: [...p.plan.tiled],
    // (what the layout placed, as the memory items say: it keeps whole tensors, up to the share)
    ram_percent: Object.fromEntries(Object.keys(p.plan.shares).map((k) => [k, Math.round(1000 * placedShare(p.plan, k as keyof Shares)) / 10])),
    predicted: {
      step_seconds: p.cost.seconds, tokens_per_second: (r.batchSize * r.seqLen) / p.cost.seconds, bound: p.cost.bound,
      compute_seconds: p.cost.computeSeconds, compute: p.cost.compute, pass_io_seconds: p.cost.passIoSeconds, tile_io_seconds: p.cost.tileIoSeconds, optimizer_seconds: p.cost.optimizerSeconds,
      optimizer_hidden_seconds: p.cost.optimizerHiddenSeconds, optimizer_sets: p.plan.optimizerSets,
      bytes: { pass_read: p.cost.bytes.passRead, pass_written: p.cost.bytes.passWritten, optimizer_read: p.cost.bytes.optimizerRead, optimizer_written: p.cost.bytes.optimizerWritten,
        tile_read: p.cost.bytes.tileRead, tile_written: p.cost.bytes.tileWritten },
    },
    memory: p.plan.items.map((i) => ({ what: i.what, ram: i.ram, disk: i.disk })),
  };
}

/** The share of a state the plan's layout keeps in RAM (activation checkpoints: all or none). */
function placedShare(plan: OffloadPlan, k: keyof Shares): number {
  if (k === 'act') return plan.shares.act;
  const b = plan.layout.bytes(k);
  return b.ram / Math.max(1, b.ram + b.disk);
}

export function trainPlanReport(r: ReturnType<typeof trainPlan>): string {
  const { plan: p, config: c } = r;
  const f = (x: number) => x.toFixed(2);
  const k = p.cost.compute;
  const lines = [
    `train    ${c.layers} layers, ${r.batchSize} sequences × ${r.seqLen} tokens per step: micro-batch ${p.microBatch} × ${p.gradAccum} accumulated (--batch-size ${p.microBatch} --grad-accum ${p.gradAccum})`,
    `optimizer sub-groups of ${p.plan.subGroupSize} parameters in ${p.plan.optimizerSets} buffer sets; prefetch depth ${p.prefetchDepth} (RAM allows ${p.plan.maxDepth})` +
      (p.plan.tiled.size > 0 ? `; ${p.plan.tiled.size} weights in tiles of ${formatSize(p.plan.tileBytes)}` : ''),
    `predicted step ${f(p.cost.seconds)} s, ${f((r.batchSize * r.seqLen) / p.cost.seconds)} tokens/s, bound by ${p.cost.bound}: ` +
      `compute ${f(p.cost.computeSeconds)} s (GEMM ${f(k.gemm)}, attention ${f(k.attention)}, elementwise ${f(k.elementwise)}, packing ${f(k.packing)}), ` +
      `forward/backward disk ${f(p.cost.passIoSeconds)} s, ${p.cost.tileIoSeconds > 0 ? `weight tiles' disk ${f(p.cost.tileIoSeconds)} s, ` : ''}optimizer ${f(p.cost.optimizerSeconds)} s (${f(p.cost.optimizerHiddenSeconds)} s of it under the next forward)`,
    'memory',
  ];
  for (const i of p.plan.items.filter((x) => x.ram > 0 || x.disk > 0)) {
    lines.push(`         ${i.what.padEnd(56)} RAM ${formatSize(i.ram).padStart(10)}  disk ${formatSize(i.disk).padStart(10)}`);
  }
  lines.push('');
  return lines.join('\n');
}
