// Opens an offloaded run's states: plans the placement from the limits, creates the state files
// in a directory of its own under the disk tier (removed when the trainer closes, or the process
// exits), and fills them from the model's safetensors chunk by chunk.

import fs from 'node:fs';
import path from 'node:path';
import type { Backend, ComputeMode } from '../../backend/index.js';
import { SafetensorsFile, type TensorStore } from '../../formats/safetensors.js';
import { expectedShape, type NameTable } from '../../models/architecture.js';
import type { ModelConfig } from '../../models/config.js';
import { SpillFiles } from '../../schedule/spill-files.js';
import type { Precision } from '../../optim/state.js';
import { ModelFileError, UserError } from '../../util/errors.js';
import { optionName } from '../../util/names.js';
import { paramList } from '../params.js';
import { OPTIMIZER_FILE, PARTS } from '../training-state.js';
import { fillStates, widenRows } from './init.js';
import type { Shares } from './layout.js';
import { StreamingAdamW } from './optimizer.js';
import { type OffloadPlan, planOffload } from './plan.js';
import { States } from './states.js';
import { OffloadStore } from './store.js';

export interface OffloadOptions {
  /** RAM limit in bytes (a hard limit: peak RSS within it plus the runtime's overhead). */
  ram: number;
  /** Directory of the disk tier (must exist). */
  diskDir: string;
  /** Disk tier capacity in bytes. */
  disk?: number;
  /** Share of each state kind kept in RAM (0..1); the rest are planned from the limit. */
  shares?: Partial<Shares>;
  /** Elements per optimizer sub-group (default: planned from the limit). */
  subGroupSize?: number;
  /** Bytes of a weight tile: linear weights larger are computed in tiles (default: planned). */
  tileSize?: number;
  /** Tokens of the largest micro-batch (batch size × sequence length; default the model's positions). */
  maxTokens?: number;
  /** RAM the caller holds while training, counted against `ram` (train() passes its tokenized data's). */
  heldBytes?: number;
}

export interface Offloaded {
  store: OffloadStore;
  optimizer: StreamingAdamW;
  plan: OffloadPlan;
  maxTokens: number;
}

export async function openOffload(config: ModelConfig, names: NameTable, backend: Backend, precision: Precision, mode: ComputeMode,
  tensors: TensorStore, o: OffloadOptions, checkpointActivations: boolean): Promise<Offloaded> {
  if (!fs.existsSync(o.diskDir) || !fs.statSync(o.diskDir).isDirectory()) throw new UserError(`${optionName('trainDiskDir')} ${o.diskDir} is not a directory`);
  const maxTokens = o.maxTokens ?? config.maxPositions;
  const plan = planOffload({ config, names, precision, maxTokens, ram: o.ram, disk: o.disk, shares: o.shares, subGroupSize: o.subGroupSize,
    tileSize: o.tileSize, checkpointActivations, heldBytes: o.heldBytes });
  checkModelTensors(config, names, tensors);
  // Deleted at close, at exit or SIGINT/SIGTERM/SIGHUP, and by the next run in the directory when
  // this one was killed outright (src/schedule/spill-files.ts).
  const spill = SpillFiles.claim(o.diskDir);
  const dir = spill.makeDir('train');
  const remove = () => spill.remove();
  try {
    const states = new States(plan.layout, dir);
    await fillStates(states, (name, _part, r0, r1, dst) => widenRows(tensors, name, r0, r1, dst), false);
    const store = new OffloadStore(config, names, backend, precision, mode, states, {
      maxDepth: plan.maxDepth, actOnDisk: checkpointActivations && plan.shares.act < 1, maxTokens, tileBytes: plan.tileBytes,
      onClose: remove,
    });
    const optimizer = new StreamingAdamW(store, backend, plan.subGroupSize, plan.optimizerSets);
    store.updated = (u) => optimizer.updated(u);
    return { store, optimizer, plan, maxTokens };
  } catch (e) {
    remove();
    throw e;
  }
}

/** Every tensor the model needs is in the checkpoint, with the shape config.json implies (before
 *  any state file is made). */
export function checkModelTensors(config: ModelConfig, names: NameTable, tensors: TensorStore): void {
  for (const { name, slot, part } of paramList(config, names)) {
    if (!tensors.has(name)) throw new ModelFileError(tensors.fileName(name), 'missing tensor', name);
    const got = tensors.info(name).shape, want = expectedShape(config, slot, part);
    if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
      throw new ModelFileError(tensors.fileName(name), `shape [${got.join(', ')}] disagrees with config.json (expected [${want.join(', ')}])`, name);
    }
  }
}

/** Reads a checkpoint's training-state (checked by readTrainingState first) into the states. */
export async function restoreOffload(store: OffloadStore, stateDir: string): Promise<void> {
  const f = SafetensorsFile.open(path.join(stateDir, OPTIMIZER_FILE));
  const suffix = Object.fromEntries(PARTS);
  try {
    await fillStates(store.states, (name, part, r0, r1, dst) =>
      f.readRowsInto(`${name}.${suffix[part]}`, r0, r1, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength)), true);
  } finally {
    f.close();
  }
}
