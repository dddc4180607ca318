// Ranks that offload (`mpirun -np N tierlm train --ram SIZE --disk-dir DIR`): each rank keeps its
// slices (./layout.ts) of the parameters, gradients, masters and moments on its own tiers — the
// offload layout's tensors are its slices, one per group (./plan.ts), placed on RAM and in files of
// a directory of its own under DIR (--ram is per rank) — while the PartitionedStore (./store.ts)
// gathers and reduce-scatters as it does in RAM:
//   - a gather sends this rank's compute slice of the group, read from its file first when on disk;
//   - a reduced gradient slice is added into the rank's (read back from disk after the step's first
//     micro-batch, written again), and its Σ g² recorded for the global norm;
//   - the optimizer streams the slices in sub-groups disk → RAM → AdamW → disk (../offload/optimizer.ts).
// The reads and writes here are synchronous (a slice is 1/N of a layer) through buffered handles;
// the optimizer's go through the native O_DIRECT pool, which the kernel keeps coherent with them.
// Same math as the slices in RAM: the same values sent, the same additions in the same order, the
// same norm (each slice's Σ g² added in group order, then summed over ranks), the same AdamW kernel.

import fs from 'node:fs';
import type { Backend } from '../../backend/index.js';
import type { Comm } from '../../dist/comm.js';
import { sumOverRanks } from '../../dist/comm.js';
import { SafetensorsFile } from '../../formats/safetensors.js';
import type { Precision } from '../../optim/state.js';
import { Tensor } from '../../tensor/tensor.js';
import { UserError } from '../../util/errors.js';
import { namedError, writeFully } from '../../util/write-fully.js';
import { fillStates } from '../offload/init.js';
import type { Layout as OffloadLayout, StateKind } from '../offload/layout.js';
import type { StreamingAdamW } from '../offload/optimizer.js';
import type { OffloadPlan } from '../offload/plan.js';
import type { States } from '../offload/states.js';
import type { OffloadStepStats, Phase } from '../offload/stats.js';
import type { F32Source } from '../training-state.js';

type ParamData = Float32Array | Uint16Array;

export class DiskSlices {
  /** For StreamingAdamW, after quiesce(): Σ g² over every rank (one number; see quiesce). */
  readonly sumSquares = new Float64Array(1);
  /** Each slice's Σ g² at its last addition: the step's, once the last micro-batch is reduced. */
  private readonly local: Float64Array;
  private readonly zero: boolean[];
  private readonly fds = new Map<StateKind, number>();
  private scratch = new Float32Array(0);
  readonly computeKind: StateKind;
  optimizer!: StreamingAdamW;
  /** Tokens of the largest micro-batch the plan made room for. */
  maxTokens = Infinity;

  constructor(readonly states: States, readonly plan: OffloadPlan, readonly precision: Precision, private readonly backend: Backend,
    private readonly comm: Comm, private readonly onClose: () => void) {
    this.local = new Float64Array(states.layout.params.length);
    this.zero = states.layout.params.map(() => true);
    this.computeKind = precision === 'bf16' ? 'param' : 'master';
  }

  get layout(): OffloadLayout {
    return this.states.layout;
  }

  private fd(kind: StateKind): number {
    let fd = this.fds.get(kind);
    if (fd === undefined) this.fds.set(kind, (fd = fs.openSync(this.states.path(kind), 'r+')));
    return fd;
  }

  /** The pass the next transfers belong to (for the per-phase statistics). */
  phase: Phase = 'forward';

  private io(dir: 'read' | 'write', kind: StateKind, g: number, bytes: Uint8Array): void {
    const at = this.layout.offsets[kind][g]!, t0 = performance.now();
    const file = this.states.path(kind);
    if (dir === 'write') writeFully(this.fd(kind), bytes, file, at);
    for (let done = 0; dir === 'read' && done < bytes.byteLength;) {
      let n: number;
      try {
        n = fs.readSync(this.fd(kind), bytes, done, bytes.byteLength - done, at + done);
      } catch (e) {
        throw namedError(file, 'reading', e);
      }
      if (n === 0) throw new Error(`${file}: ends inside slice ${g}`);
      done += n;
    }
    this.states.io.counted(kind === 'grad' ? 'backward' : this.phase, kind, dir, bytes.byteLength, t0, performance.now());
  }

  /** Bytes moved since the last call, per kind and phase (this rank's). */
  stats(): OffloadStepStats {
    return this.states.io.take({ prefetchDepth: 1, traces: 0 });
  }

  /** Group g's compute slice, to send in a gather: its RAM tensor, or read into `into`. */
  paramSlice(g: number, into: ParamData): ParamData {
    const r = this.states.residentTensor(this.computeKind, g);
    if (r) return r.data as ParamData;
    const out = into.subarray(0, this.layout.params[g]!.size);
    this.io('read', this.computeKind, g, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
    return out;
  }

  /** Adds a reduced gradient slice into group g's, as the slices in RAM do (from zeros first). */
  addGrad(g: number, recv: Float32Array): void {
    const r = this.states.residentTensor('grad', g);
    let grad: Float32Array;
    if (r) grad = r.data as Float32Array;
    else {
      if (this.scratch.length < recv.length) this.scratch = new Float32Array(recv.length);
      grad = this.scratch.subarray(0, recv.length);
      if (this.zero[g]) grad.fill(0);
      else this.io('read', 'grad', g, new Uint8Array(grad.buffer, grad.byteOffset, grad.byteLength));
    }
    for (let i = 0; i < grad.length; i++) grad[i]! += recv[i]!;
    this.zero[g] = false;
    this.local[g] = this.backend.train.sumSquares(new Tensor('f32', [grad.length], grad));
    if (!r) this.io('write', 'grad', g, new Uint8Array(grad.buffer, grad.byteOffset, grad.byteLength));
  }

  /** Before a step's first micro-batch. */
  zeroGrad(): void {
    this.zero.fill(true);
    this.local.fill(0);
    for (const p of this.layout.params) this.states.residentTensor('grad', p.index)?.data.fill(0);
  }

  /** Called by the optimizer before the step (every rank at once): the global Σ g², summed as
   *  AdamW.gradNorm sums the slices in RAM — this rank's in group order, then over ranks — and
   *  kept as the single element StreamingAdamW adds up. */
  async quiesce(): Promise<void> {
    let s = 0;
    for (const x of this.local) s += x;
    this.sumSquares[0] = sumOverRanks(this.comm, [s])[0]!;
  }

  /** Group g's master or moment, for checkpoints (chunk by chunk from disk). */
  source(kind: 'master' | 'm' | 'v', g: number): F32Source {
    return this.states.reader(kind, g);
  }

  /** Reads a checkpoint's slice file (checked) into the states. */
  async restore(file: string): Promise<void> {
    const f = SafetensorsFile.open(file);
    const suffix = { master: 'master', m: 'exp_avg', v: 'exp_avg_sq' } as const;
    try {
      for (const p of this.layout.params) {
        for (const s of Object.values(suffix)) {
          const n = `${p.name}.${s}`;
          if (!f.has(n)) throw new UserError(`${file}: tensor '${n}' is missing`);
          const info = f.info(n);
          if (info.dtype !== 'f32' || info.shape.length !== 1 || info.shape[0] !== p.size) {
            throw new UserError(`${file}: tensor '${n}' is ${info.dtype} [${info.shape.join(', ')}], this model's partition needs f32 [${p.size}] (another model?)`);
          }
        }
      }
      await fillStates(this.states, (name, part, r0, r1, dst) =>
        f.readRowsInto(`${name}.${suffix[part]}`, r0, r1, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength)), true);
    } finally {
      f.close();
    }
  }

  async close(): Promise<void> {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    await this.states.close();
    this.onClose();
  }
}
