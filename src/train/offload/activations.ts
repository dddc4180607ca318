// Activation checkpoints (each layer's input, kept for the backward's recompute) in the disk tier
// of an offloaded run, when the plan leaves no room for them in RAM.

import { DirectFile, alignedBytes } from '../../tensor/disk/io.js';
import { Tensor } from '../../tensor/tensor.js';
import type { States } from './states.js';

type F32 = Tensor<'f32'>;

/** Activation checkpoints (each layer's input) in the disk tier: written as the forward passes
 *  them, read back in the backward, the one below read ahead while a layer computes. */
export class ActivationSpill {
  private readonly slot: number;
  private readonly file: DirectFile;
  private readonly stage: [Uint8Array, Uint8Array];
  private readonly writes: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
  private readonly shapes: number[][] = [];
  private next: { j: number; done: Promise<void>; buf: Uint8Array } | null = null;
  private turn = 0;

  constructor(private readonly states: States, hidden: number, maxTokens: number, layers: number) {
    this.slot = Math.ceil((maxTokens * hidden * 4) / 4096) * 4096;
    this.stage = [alignedBytes(this.slot), alignedBytes(this.slot)];
    this.file = states.openScratch('act.bin', this.slot * layers);
  }

  /** Copies x into a stage (once the stage's previous write is done) and starts writing it. */
  async keep(j: number, x: F32): Promise<void> {
    const k = this.turn;
    this.turn ^= 1;
    this.shapes[j] = [...x.shape];
    const buf = this.stage[k];
    await this.states.io.wait('forward', this.writes[k]!);
    new Float32Array(buf.buffer, buf.byteOffset, x.size).set(x.data);
    this.writes[k] = this.states.io.track('forward', 'act', 'write', this.slot, this.file.write(buf.subarray(0, this.slot), j * this.slot));
  }

  async recall(j: number, into: F32): Promise<F32> {
    await Promise.all(this.writes);
    const shape = this.shapes[j]!;
    const size = shape.reduce((a, b) => a * b, 1);
    const cur = this.next?.j === j ? this.next : this.read(j, this.stage[0]);
    await cur.done;
    const out = new Tensor('f32', shape, into.data.subarray(0, size));
    out.data.set(new Float32Array(cur.buf.buffer, cur.buf.byteOffset, size));
    this.next = j > 0 ? this.read(j - 1, cur.buf === this.stage[0] ? this.stage[1] : this.stage[0]) : null;
    return out;
  }

  private read(j: number, buf: Uint8Array): { j: number; done: Promise<void>; buf: Uint8Array } {
    return { j, buf, done: this.states.io.track('backward', 'act', 'read', this.slot, this.file.read(buf.subarray(0, this.slot), j * this.slot, { background: true })) };
  }

  /** Closes the file once its writes and the read ahead have settled (after a failed step some
   *  may still be in flight; their errors were reported where they were awaited). */
  async close(): Promise<void> {
    await Promise.allSettled([...this.writes, this.next?.done ?? Promise.resolve()]);
    await this.file.settled();
    this.file.close();
  }
}
