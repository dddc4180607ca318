// Checkpoints of a run whose states are split over data-parallel ranks. The checkpoint directory
// is the one-process layout (../checkpoint.ts): rank 0 writes the Hugging Face model files (the
// masters gathered from every rank) and training-state/state.json (with "ranks" in its options and
// no tensors, so its optimizer.safetensors is empty); every rank writes its own slices beside them:
//   training-state/optimizer-rank-<r>-of-<N>.safetensors
//     for each group i (./layout.ts): "group<i>.master", "group<i>.exp_avg", "group<i>.exp_avg_sq", F32 [slice]
// The save stays atomic: rank 0 makes the temporary directory and sends its name to all, every
// rank writes and fsyncs its file, a barrier, then rank 0 writes its part and renames the directory
// into place. A resume needs the same number of ranks (run.ts checks "ranks" first).

import fs from 'node:fs';
import path from 'node:path';
import type { Comm } from '../../dist/comm.js';
import { UserError } from '../../util/errors.js';
import { type SaveOptions, commitSave, keepCount, startSave, writeCheckpointFiles } from '../checkpoint.js';
import type { Weight } from '../model-writer.js';
import { readTensorFile, writeTensorFile } from '../tensor-file.js';
import { type F32Source, STATE_DIR, type TrainingState, f32Chunk, readTrainingState } from '../training-state.js';
import type { PartitionedStore } from './store.js';
import { writeFully } from '../../util/write-fully.js';

const PARTS = [['master', 'master'], ['m', 'exp_avg'], ['v', 'exp_avg_sq']] as const;

export function sliceFileName(rank: number, ranks: number): string {
  return `optimizer-rank-${rank}-of-${ranks}.safetensors`;
}

/** Sends a short string from rank 0 to every rank. */
function broadcastString(comm: Comm, s: string): string {
  const buf = new Uint8Array(4096);
  const len = new Int32Array(1);
  if (comm.rank === 0) {
    const bytes = new TextEncoder().encode(s);
    if (bytes.length > buf.length) throw new Error(`broadcastString: ${bytes.length} bytes is too long`);
    buf.set(bytes);
    len[0] = bytes.length;
  }
  comm.broadcast(len, 0).wait();
  comm.broadcast(buf, 0).wait();
  return new TextDecoder().decode(buf.subarray(0, len[0]!));
}

/** Saves the run (every rank calls it); returns the checkpoint's directory. */
export async function savePartitioned(store: PartitionedStore, comm: Comm, outDir: string, modelDir: string,
  state: Omit<TrainingState, 'tensors'>, o: SaveOptions = {}): Promise<string> {
  const keep = keepCount(o);
  const started = comm.rank === 0 ? startSave(outDir, state.step) : null;
  const [name, tmp] = JSON.parse(broadcastString(comm, JSON.stringify(started ? [started.name, started.tmp] : null))) as [string, string];
  const weights = new Map<string, Weight>();
  // Offloaded ranks: rank 0 spills the gathered masters to its disk tier (the model is not whole
  // in its RAM), and the model writer reads them back chunk by chunk.
  const spill = comm.rank === 0 && store.disk ? new MasterSpill(path.join(store.disk.states.dir, 'masters-save.bin')) : null;
  try {
    store.gatherMasters((n, shape, values) => {
      if (comm.rank === 0) weights.set(n, { shape, data: spill ? spill.put(values) : values });
    });
    return await saveGathered(store, comm, outDir, modelDir, state, keep, name, tmp, weights);
  } finally {
    spill?.close();
  }
}

async function saveGathered(store: PartitionedStore, comm: Comm, outDir: string, modelDir: string, state: Omit<TrainingState, 'tensors'>,
  keep: number, name: string, tmp: string, weights: Map<string, Weight>): Promise<string> {
  const entries = store.layout.groups.flatMap((g, i) => PARTS.map(([key, suffix]) => ({
    name: `group${i}.${suffix}`, dtype: 'f32' as const, shape: [g.slice],
    fill: (dst: Uint8Array, offset: number) => {
      const a = f32Chunk(store.slice(i, key), offset, dst.byteLength / 4);
      dst.set(new Uint8Array(a.buffer, a.byteOffset, dst.byteLength));
    },
  })));
  await writeTensorFile(path.join(tmp, STATE_DIR, sliceFileName(comm.rank, comm.size)), entries, { format: 'tierlm-training-state-slice' });
  comm.barrier().wait();
  let dir = path.join(outDir, name);
  if (comm.rank === 0) {
    await writeCheckpointFiles(tmp, modelDir, weights, { ...state, tensors: new Map() });
    dir = commitSave(outDir, name, tmp, keep);
  }
  // No rank goes on (or ends) before the checkpoint is in place.
  comm.barrier().wait();
  return dir;
}

/** A file of f32 values appended in turn, each read back as an F32Source. */
export class MasterSpill {
  private readonly fd: number;
  private end = 0;

  constructor(private readonly file: string) {
    this.fd = fs.openSync(file, 'w+');
  }

  put(values: Float32Array): F32Source {
    const base = this.end, fd = this.fd, file = this.file;
    writeFully(fd, new Uint8Array(values.buffer, values.byteOffset, values.byteLength), file, base);
    this.end += values.byteLength;
    return {
      length: values.length,
      copyTo(dst: Float32Array, offset: number) {
        const bytes = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
        for (let done = 0; done < bytes.byteLength;) {
          const n = fs.readSync(fd, bytes, done, bytes.byteLength - done, base + offset * 4 + done);
          if (n === 0) throw new Error(`${file}: ends early`);
          done += n;
        }
      },
    };
  }

  close(): void {
    fs.closeSync(this.fd);
    fs.rmSync(this.file, { force: true });
  }
}

/** Reads checkpoint `dir`'s state (step, data position, options) and this rank's slices into the
 *  store's buffers (every rank calls it). */
export async function loadPartitioned(store: PartitionedStore, comm: Comm, dir: string): Promise<Omit<TrainingState, 'tensors'>> {
  const stateDir = path.join(dir, STATE_DIR);
  const state = await readTrainingState(stateDir);
  const file = path.join(stateDir, sliceFileName(comm.rank, comm.size));
  if (!fs.existsSync(file)) throw new UserError(`${file}: missing (the checkpoint was not saved by ${comm.size} ranks, or is incomplete)`);
  if (store.disk) {
    await store.disk.restore(file);
    return state;
  }
  const wanted = new Map<string, Float32Array>(store.states.flatMap((s, i) => PARTS.map(([key, suffix]) => [`group${i}.${suffix}`, s[key].data] as const)));
  const found = await readTensorFile(file, (info) => {
    const a = wanted.get(info.name);
    if (!a) throw new UserError(`${file}: tensor '${info.name}' is not a slice of this model's partition`);
    if (info.dtype !== 'f32' || info.shape.length !== 1 || info.shape[0] !== a.length) {
      throw new UserError(`${file}: tensor '${info.name}' is ${info.dtype} [${info.shape.join(', ')}], this model's partition needs f32 [${a.length}] (another model?)`);
    }
    return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  });
  for (const n of wanted.keys()) if (!found.has(n)) throw new UserError(`${file}: tensor '${n}' is missing`);
  store.syncParams();
  return state;
}
