// Argument checks shared by the backend's validated ops (backend.ts, train.ts): each throws a
// TypeError or RangeError that names the op and the argument at fault.
import { Tensor, shapeString } from '../tensor/tensor.js';

type F32 = Tensor<'f32'>;

export function fail(op: string, msg: string): never {
  throw new RangeError(`${op}: ${msg}`);
}

/** Whether two typed arrays share any byte of memory. */
export function sharesMemory(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

export function expectF32(op: string, name: string, t: Tensor): asserts t is F32 {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: ${name} must be a Tensor`);
  if (t.dtype !== 'f32') throw new TypeError(`${op}: ${name} must be f32, got ${t.dtype}`);
}

export function expectShape(op: string, name: string, t: Tensor, shape: readonly number[]): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    fail(op, `${name} has shape ${shapeString(t.shape)}, expected ${shapeString(shape)}`);
  }
}

export function expectRank(op: string, name: string, t: Tensor, rank: number): void {
  if (t.rank !== rank) fail(op, `${name} must have rank ${rank}, got shape ${shapeString(t.shape)}`);
}

/** `x` must be an i32 Tensor (of `entries` elements, when given). */
export function expectI32(op: string, name: string, x: Tensor, entries?: number): asserts x is Tensor<'i32'> {
  if (!(x instanceof Tensor) || x.dtype !== 'i32' || (entries !== undefined && x.size !== entries)) {
    throw new TypeError(`${op}: ${name} must be an i32 Tensor${entries === undefined ? '' : ` of ${entries} entries`}`);
  }
}

export function expectInt(op: string, name: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) fail(op, `${name} must be an integer >= ${min}, got ${v}`);
}

export function expectFinite(op: string, name: string, v: number): void {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(op, `${name} must be a finite number, got ${v}`);
}

export function outOr(op: string, out: F32 | undefined, shape: readonly number[]): F32 {
  if (!out) return Tensor.zeros('f32', shape);
  expectF32(op, 'out', out);
  expectShape(op, 'out', out, shape);
  return out;
}

/** rows × cols view of a tensor whose last dimension is cols. */
export function rowsCols(t: Tensor): [number, number] {
  const cols = t.shape[t.rank - 1] ?? 1;
  return [cols === 0 ? 0 : t.size / cols, cols];
}

/** q[t,hq,d], k and v [t,hkv,d], hq a multiple of hkv; returns [t, hq, hkv, d]. */
export function checkQkv(op: string, q: F32, k: F32, v: F32): [number, number, number, number] {
  for (const [name, t] of [['q', q], ['k', k], ['v', v]] as const) {
    expectF32(op, name, t);
    expectRank(op, name, t, 3);
  }
  const [t, hq, d] = q.shape as [number, number, number];
  const hkv = k.shape[1]!;
  expectShape(op, 'k', k, [t, hkv, d]);
  expectShape(op, 'v', v, [t, hkv, d]);
  if (hkv < 1 || hq % hkv !== 0) fail(op, `${hq} query heads cannot be grouped over ${hkv} key/value heads`);
  return [t, hq, hkv, d];
}

/** The starts of a ragged batch's sequences: from 0 to t, never decreasing. */
export function checkSeqStarts(op: string, seqStarts: Tensor<'i32'>, t: number): void {
  expectI32(op, 'seqStarts', seqStarts);
  const s = seqStarts.data;
  if (s.length < 2 || s[0] !== 0 || s[s.length - 1] !== t) fail(op, `seqStarts must run from 0 to ${t}`);
  for (let i = 1; i < s.length; i++) if (s[i]! < s[i - 1]!) fail(op, `seqStarts must not decrease (at ${i})`);
}

/** x[t, heads, d] and its rotary arguments (positions ≥ 0); returns [t, heads, d, rotaryDim]. */
/** x [t, heads, d], positions [t] and a frequency table (ropeInvFreq) of at most d/2 entries;
 *  returns [t, heads, d, rotated features]. */
export function checkRope(op: string, x: F32, positions: Tensor<'i32'>, invFreq: Float64Array): [number, number, number, number] {
  expectF32(op, 'x', x);
  expectRank(op, 'x', x, 3);
  const [t, heads, d] = x.shape as [number, number, number];
  if (!(invFreq instanceof Float64Array)) throw new TypeError(`${op}: invFreq must be a Float64Array`);
  const rot = 2 * invFreq.length;
  if (rot < 2 || rot > d) fail(op, `invFreq must hold 1 to ${d / 2} frequencies (half the rotated features), got ${invFreq.length}`);
  if (!invFreq.every(Number.isFinite)) fail(op, 'invFreq must hold finite numbers');
  expectI32(op, 'positions', positions);
  if (positions.size !== t) fail(op, `positions has ${positions.size} entries for ${t} tokens`);
  return [t, heads, d, rot];
}

/** Two f32 tensors of one shape (named by `names`), and the output of that shape. */
export function checkPair(op: string, names: [string, string], a: F32, b: F32, out: F32 | undefined): F32 {
  expectF32(op, names[0], a);
  expectF32(op, names[1], b);
  expectShape(op, names[1], b, a.shape);
  return outOr(op, out, a.shape);
}
