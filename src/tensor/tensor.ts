// A tensor: a dtype, a shape and the typed array that holds its elements in row-major order.
// Tensors here always live in addressable memory; placement across tiers (device, RAM, disk) is
// described by src/tensor/tiers and moves whole tensors or row ranges of them.

import { type ArrayFor, type DType, DTYPE_BYTES, allocArray, viewAs } from './dtype.js';

/** Where a tensor's bytes live. On a CPU-only machine 'device' and 'ram' are the same memory. */
export type Tier = 'device' | 'ram' | 'disk';

export class Tensor<D extends DType = DType> {
  readonly size: number;

  constructor(
    readonly dtype: D,
    readonly shape: readonly number[],
    readonly data: ArrayFor<D>,
    readonly tier: Tier = 'ram',
  ) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new RangeError(`invalid tensor shape [${shape.join(', ')}]`);
    }
    this.size = shape.reduce((a, b) => a * b, 1);
    if (data.length !== this.size) {
      throw new RangeError(`tensor of shape [${shape.join(', ')}] needs ${this.size} elements, data holds ${data.length}`);
    }
  }

  static zeros<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    return new Tensor(dtype, shape, allocArray(dtype, shape.reduce((a, b) => a * b, 1)));
  }

  static f32(shape: readonly number[], data?: ArrayLike<number>): Tensor<'f32'> {
    const t = Tensor.zeros('f32', shape);
    if (data) {
      if (data.length !== t.size) throw new RangeError(`expected ${t.size} values for shape [${shape.join(', ')}], got ${data.length}`);
      t.data.set(data);
    }
    return t;
  }

  static i32(data: ArrayLike<number>): Tensor<'i32'> {
    const t = Tensor.zeros('i32', [data.length]);
    t.data.set(data);
    return t;
  }

  get rank(): number {
    return this.shape.length;
  }

  get byteLength(): number {
    return this.size * DTYPE_BYTES[this.dtype];
  }

  /** The raw bytes (a view, not a copy). */
  get bytes(): Uint8Array {
    return new Uint8Array(this.data.buffer, this.data.byteOffset, this.data.byteLength);
  }

  /** The same elements under another shape of equal size (a view). */
  reshape(shape: readonly number[]): Tensor<D> {
    return new Tensor(this.dtype, shape, this.data, this.tier);
  }

  /** Rows [start, end) of the first dimension (a view). */
  rows(start: number, end: number): Tensor<D> {
    const n = this.shape[0] ?? 0;
    if (!(0 <= start && start <= end && end <= n)) throw new RangeError(`rows ${start}..${end} out of range for first dimension ${n}`);
    const inner = this.shape.slice(1).reduce((a, b) => a * b, 1);
    const data = viewAs(this.dtype, this.data.buffer, this.data.byteOffset + start * inner * DTYPE_BYTES[this.dtype], (end - start) * inner);
    return new Tensor(this.dtype, [end - start, ...this.shape.slice(1)], data, this.tier);
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}])`;
  }
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}
