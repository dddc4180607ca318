// Scratch tensors reused across layers and steps. Allocating (and zero-filling) fresh buffers of
// tens of MB for every GEMM output would cost more than some of the kernels themselves; each
// named slot grows to the largest size asked of it and is then reused.

import { Tensor } from '../tensor/tensor.js';

export class Workspace {
  private buffers = new Map<string, Float32Array>();

  /** A float32 tensor of `shape` over the slot's buffer. Contents are whatever was left there. */
  get(slot: string, shape: readonly number[]): Tensor<'f32'> {
    const size = shape.reduce((a, b) => a * b, 1);
    let buf = this.buffers.get(slot);
    if (!buf || buf.length < size) {
      buf = new Float32Array(Math.max(size, Math.ceil((buf?.length ?? 0) * 1.25)));
      this.buffers.set(slot, buf);
    }
    return new Tensor('f32', shape, buf.subarray(0, size));
  }

  /** Bytes held. */
  get bytes(): number {
    let n = 0;
    for (const b of this.buffers.values()) n += b.byteLength;
    return n;
  }

  clear(): void {
    this.buffers.clear();
  }
}
