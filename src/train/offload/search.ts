// The training plan (`tierlm plan --train`, and `tierlm train` under --ram): for each way to split
// a step's sequences into micro-batches (micro-batch × gradient accumulation = the step's batch;
// the step's math is the same, the loss is averaged over the step's targets either way), the
// placement ./plan.ts chooses under the limits, then the cost model's step time
// (./cost.ts); the fastest split that fits wins. The prefetch depth is what hides one layer's read
// under one layer's compute, within the depth the RAM allows.

import type { ModelConfig } from '../../models/config.js';
import type { NameTable } from '../../models/architecture.js';
import type { Precision } from '../../optim/state.js';
import type { HardwareProfile } from '../../policy/profile.js';
import { diskReadRate } from '../../policy/profile.js';
import { alignUp } from '../../tensor/disk/io.js';
import { UserError } from '../../util/errors.js';
import { type OffloadCost, predictOffloadStep } from './cost.js';
import type { Shares } from './layout.js';
import { type OffloadPlan, planOffload } from './plan.js';
import { partitionLayout } from '../partition/layout.js';
import { planRank } from '../partition/plan.js';

export interface TrainPlanInput {
  config: ModelConfig;
  names: NameTable;
  precision: Precision;
  seqLen: number;
  /** Sequences per optimizer step (per rank). */
  batchSize: number;
  ram: number;
  disk?: number;
  profile: HardwareProfile;
  checkpointActivations: boolean;
  shares?: Partial<Shares>;
  subGroupSize?: number;
  tileSize?: number;
  /** Sequences per micro-batch, when the user fixes it (else every divisor of batchSize is tried). */
  microBatch?: number;
  /** Data-parallel ranks (default 1): with more, the plan is one rank's (src/train/partition/plan.ts). */
  ranks?: number;
  /** Bytes the run holds in RAM besides the plan's buffers (the tokenized data, the tokenizer). */
  heldBytes?: number;
}

export interface TrainPlan {
  microBatch: number;
  gradAccum: number;
  /** Units read ahead that hide a layer's read under a layer's compute (at most plan.maxDepth). */
  prefetchDepth: number;
  plan: OffloadPlan;
  cost: OffloadCost;
  /** Bytes of activation checkpoints on disk per micro-batch. */
  actDiskBytes: number;
}

/** The fastest micro-batch under the limits, each planned as `tierlm train` plans it (planOffload:
 *  the default tiles, smaller ones where those do not fit). The cost model weighs a larger
 *  micro-batch in smaller tiles against a smaller one in larger tiles: it counts the tiles' disk
 *  traffic, which the compute waits for (./cost.ts). (Before it did, smaller tiles were tried only
 *  where no micro-batch fit the default ones, and a larger --ram could get a plan predicted
 *  slower: opt-test, 8 layers, 1097 tokens/s at 45 MiB, 836 at 48.) */
export function planTraining(o: TrainPlanInput): TrainPlan {
  const tries = o.microBatch !== undefined ? [o.microBatch] : divisors(o.batchSize).reverse();
  let best: TrainPlan | null = null;
  let refusal: unknown = null;
  const ranks = o.ranks ?? 1;
  const computeParams = ranks > 1 ? partitionLayout(o.config, o.names, 1, 0).groups.reduce((n, g) => n + g.total, 0) : undefined;
  for (const micro of tries) {
    const tokens = micro * o.seqLen, gradAccum = Math.ceil(o.batchSize / micro);
    let plan: OffloadPlan;
    try {
      const input = { config: o.config, names: o.names, precision: o.precision, maxTokens: tokens, ram: o.ram, disk: o.disk, shares: o.shares,
        subGroupSize: o.subGroupSize, tileSize: o.tileSize, checkpointActivations: o.checkpointActivations, heldBytes: o.heldBytes };
      plan = ranks > 1 ? planRank({ ...input, ranks }) : planOffload(input);
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      refusal = e;
      continue;
    }
    const actDiskBytes = o.checkpointActivations && plan.shares.act < 1 ? o.config.layers * alignUp(4 * tokens * o.config.hidden) : 0;
    const cost = predictOffloadStep({ layout: plan.layout, tokens, gradAccum, seqLen: o.seqLen, actDiskBytes, profile: o.profile, computeParams,
      // Under ranks the update does not overlap the next forward (trainer.ts): no hidden part.
      optimizer: ranks > 1 ? undefined : { subGroupSize: plan.subGroupSize, sets: plan.optimizerSets } });
    // A layer's read against a layer's compute (forward: a third of the pass's compute).
    const layerRead = plan.layout.fileBytes[plan.layout.computeKind] / Math.max(1, o.config.layers) / diskReadRate(o.profile);
    const layerCompute = cost.computeSeconds / gradAccum / 3 / Math.max(1, o.config.layers);
    const prefetchDepth = Math.max(1, Math.min(plan.maxDepth, Math.ceil(layerRead / Math.max(layerCompute, 1e-12))));
    if (!best || cost.seconds < best.cost.seconds) best = { microBatch: micro, gradAccum, prefetchDepth, plan, cost, actDiskBytes };
  }
  if (!best) throw refusal ?? new UserError('no micro-batch fits the limits');
  return best;
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n; d++) if (n % d === 0) out.push(d);
  return out;
}
