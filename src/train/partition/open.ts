// Opens a rank's offloaded slices (./offload.ts): plans them for this rank's share of the states
// (./plan.ts), creates its state files in a directory of its own under the disk tier (removed when
// the trainer closes, or the process exits) and fills them from the model's safetensors.

import fs from 'node:fs';
import type { Backend, ComputeMode } from '../../backend/index.js';
import type { Comm } from '../../dist/comm.js';
import type { TensorStore } from '../../formats/safetensors.js';
import type { NameTable } from '../../models/architecture.js';
import { SpillFiles } from '../../schedule/spill-files.js';
import type { ModelConfig } from '../../models/config.js';
import type { Precision } from '../../optim/state.js';
import { UserError } from '../../util/errors.js';
import { fillStates, widenRows } from '../offload/init.js';
import { checkModelTensors, type OffloadOptions } from '../offload/open.js';
import { StreamingAdamW } from '../offload/optimizer.js';
import { States } from '../offload/states.js';
import { type Layout, ownedPart, partitionLayout } from './layout.js';
import { DiskSlices } from './offload.js';
import { planRank } from './plan.js';
import { PartitionedStore } from './store.js';

/** This rank's store with its slices on RAM and disk, filled from the model's safetensors without
 *  the model (or the rank's share) ever being whole in RAM. */
export async function openRankOffload(config: ModelConfig, names: NameTable, comm: Comm, backend: Backend, precision: Precision, mode: ComputeMode,
  tensors: TensorStore, o: OffloadOptions, checkpointActivations: boolean): Promise<PartitionedStore> {
  if (!fs.existsSync(o.diskDir) || !fs.statSync(o.diskDir).isDirectory()) throw new UserError(`--disk-dir ${o.diskDir} is not a directory`);
  const maxTokens = o.maxTokens ?? config.maxPositions;
  const plan = planRank({ config, names, precision, maxTokens, ram: o.ram, disk: o.disk, shares: o.shares, subGroupSize: o.subGroupSize,
    checkpointActivations, ranks: comm.size, heldBytes: o.heldBytes });
  checkModelTensors(config, names, tensors);
  const partition = partitionLayout(config, names, comm.size, comm.rank);
  // Deleted at close, at exit or on a signal, and by the next run when this one was killed outright.
  const spill = SpillFiles.claim(o.diskDir);
  const dir = spill.makeDir(`train-rank-${comm.rank}-of-${comm.size}`);
  const remove = () => spill.remove();
  try {
    const states = new States(plan.layout, dir);
    await fillStates(states, (name, _part, r0, r1, dst) => sliceValues(partition, tensors, Number(name.slice('group'.length)), r0, r1, dst), false);
    const disk = new DiskSlices(states, plan, precision, backend, comm, remove);
    disk.optimizer = new StreamingAdamW(disk, backend, plan.subGroupSize);
    disk.maxTokens = maxTokens;
    return new PartitionedStore(config, names, partition, comm, backend, precision, disk, mode);
  } catch (e) {
    remove();
    throw e;
  }
}

/** Elements [e0, e1) of this rank's slice of group g (zeros in the padding), from the model's
 *  tensors read row range by row range. */
function sliceValues(p: Layout, tensors: TensorStore, g: number, e0: number, e1: number, dst: Float32Array): void {
  const group = p.groups[g]!;
  dst.fill(0);
  for (const e of group.entries) {
    const own = ownedPart(group, e, p.rank);
    if (!own) continue;
    // The part of the entry that lands in [e0, e1) of the slice, as tensor elements [a, b).
    const a = own.from + Math.max(0, e0 - own.at), b = own.from + Math.min(own.to - own.from, e1 - own.at);
    if (a >= b) continue;
    const row = e.size / Math.max(1, e.shape[0] ?? 1);
    const r0 = Math.floor(a / row), r1 = Math.ceil(b / row);
    const rows = new Float32Array((r1 - r0) * row);
    widenRows(tensors, e.name, r0, r1, rows);
    dst.set(rows.subarray(a - r0 * row, b - r0 * row), own.at + (a - own.from) - e0);
  }
}
