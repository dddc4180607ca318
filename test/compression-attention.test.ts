// KV cache compression and sparse decode attention: the 4-bit ('q4') cache records, decode over q4
// caches at every ISA level against the float64 reference, and top-k sparse decode (F = 1 is dense
// bit for bit; F < 1 against the reference and a hand computation).
import { afterAll, describe, expect, it } from 'vitest';
import { getThreads, isaInfo, setIsa, setThreads, type CacheDType, type Isa } from '../src/backend/index.js';
import { cpuKernels } from '../src/backend/cpu/index.js';
import { Q4_CACHE_GROUP, q4RecordBytes } from '../src/backend/kernels.js';
import { q4ReadRecord } from '../src/backend/reference/attention.js';
import { Tensor } from '../src/tensor/tensor.js';
import { f16ToF32, f32ToF16 } from '../src/tensor/dtype.js';
import { cacheRow, cpu, expectClose, expectSameValues, randomF32, ref, rowsOf } from './helpers/harness.js';

const ALL: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const detected = isaInfo().detected as Isa;
const ISAS = ALL.slice(0, ALL.indexOf(detected) + 1);
const startThreads = getThreads();
afterAll(() => {
  setIsa(detected);
  setThreads(startThreads);
});

let seed = 9000;

/** A cache of `dtype` [b, hkv, cap, d] filled (positions 0..cap-1) from random f32 values. */
function cacheOf(dtype: CacheDType, b: number, hkv: number, cap: number, d: number, s: number, scale = 1): Tensor {
  const f = randomF32([b, hkv, cap, d], s, scale);
  if (dtype === 'f32') return f;
  if (dtype === 'f16') {
    const h = new Uint16Array(f.size);
    for (let i = 0; i < f.size; i++) h[i] = f32ToF16(f.data[i]!);
    return new Tensor('f16', [b, hkv, cap, d], h);
  }
  const c = Tensor.zeros('u8', [b, hkv, cap, q4RecordBytes(d)]);
  // rows of the cache are [hkv, cap, d]: write each row's positions as t = cap tokens
  for (let bi = 0; bi < b; bi++) {
    const src = Tensor.zeros('f32', [cap, hkv, d]);
    for (let h = 0; h < hkv; h++)
      for (let p = 0; p < cap; p++)
        src.data.set(f.data.subarray(((bi * hkv + h) * cap + p) * d, ((bi * hkv + h) * cap + p + 1) * d), (p * hkv + h) * d);
    cpu().cacheWrite(c, src, bi, 0);
  }
  return c;
}



describe('q4 cache records', () => {
  it('layout and size: codes ceil(d/2) bytes, then (step, min) f16 per 64 features', () => {
    expect(q4RecordBytes(128)).toBe(64 + 8);
    expect(q4RecordBytes(64)).toBe(32 + 4);
    expect(q4RecordBytes(40)).toBe(20 + 4);
    expect(q4RecordBytes(17)).toBe(9 + 4);
    expect(q4RecordBytes(130)).toBe(65 + 12);
  });

  it('round-trips within half a step per element; constant groups are exact; native == reference bytes', () => {
    for (const d of [128, 64, 40, 17, 130]) {
      const hkv = 3, t = 5, cap = 8;
      const src = randomF32([t, hkv, d], seed++, 3);
      // a constant group (an f16 value) in token 0, head 1
      for (let c = 0; c < Math.min(d, Q4_CACHE_GROUP); c++) src.data[(0 * hkv + 1) * d + c] = 0.375;
      const a = Tensor.zeros('u8', [2, hkv, cap, q4RecordBytes(d)]), r = Tensor.zeros('u8', [2, hkv, cap, q4RecordBytes(d)]);
      cpu().cacheWrite(a, src, 1, 2);
      ref().cacheWrite(r, src, 1, 2);
      expect(Array.from(a.data)).toEqual(Array.from(r.data));
      const rb = q4RecordBytes(d), cb = Math.ceil(d / 2);
      const back = new Float32Array(d);
      for (let i = 0; i < t; i++) {
        for (let h = 0; h < hkv; h++) {
          const rec = (1 * hkv + h) * cap + 2 + i;
          q4ReadRecord(a.data as Uint8Array, rec, d, back);
          for (let c = 0; c < d; c++) {
            const g = Math.floor(c / Q4_CACHE_GROUP);
            const o = rec * rb + cb + 4 * g;
            const step = f16ToF32((a.data[o]! | (a.data[o + 1]! << 8)));
            const x = src.data[(i * hkv + h) * d + c]!;
            expect(Math.abs(back[c]! - x)).toBeLessThanOrEqual(step / 2 + 1e-6 * Math.abs(x));
            if (i === 0 && h === 1 && g === 0) {
              expect(step).toBe(0);
              expect(back[c]).toBe(0.375);
            }
          }
        }
      }
      // untouched records stay zero
      expect(Array.from(a.data.subarray(0, hkv * cap * rb)).every((x) => x === 0)).toBe(true);
    }
  });
});

// [hq, hkv, d]: GQA and MHA
const HEADS: [number, number, number][] = [[6, 2, 64], [4, 4, 128], [6, 3, 40], [2, 2, 17], [8, 1, 128], [4, 2, 100], [2, 1, 135]];

// Cases built once (reference results are slow).
interface Case { name: string; q: Tensor<'f32'>; kc: Tensor; vc: Tensor; ln: Tensor<'i32'>; scale: number; want: Float32Array; wantSparse: Float32Array }
let cases: Case[] | undefined;
function decodeCases(): Case[] {
  if (cases) return cases;
  cases = [];
  let s = 7000;
  for (const [hq, hkv, d] of HEADS) {
    for (const lens of [[300], [1, 37, 290]]) {
      const b = lens.length, cap = 300 + 7;
      const q = randomF32([b, hq, d], s++, 2);
      const kc = cacheOf('q4', b, hkv, cap, d, s++, 2), vc = cacheOf('q4', b, hkv, cap, d, s++);
      const ln = Tensor.i32(lens);
      const scale = 1 / Math.sqrt(d);
      cases.push({
        name: `q4 ${hq}/${hkv}/${d} b=${b}`, q, kc, vc, ln, scale,
        want: ref().attentionDecode(q, kc, vc, ln, scale).data,
        wantSparse: ref().attentionDecode(q, kc, vc, ln, scale, undefined, 0.25).data,
      });
    }
  }
  return cases;
}

for (const isa of ISAS) {
  for (const threads of [1, 2]) {
    describe(`${isa}, ${threads} thread(s)`, () => {
      const setup = () => {
        expect(setIsa(isa)).toBe(true);
        setThreads(threads);
      };

      it('q4 decode matches the reference; batched rows equal rows alone; async equals sync', async () => {
        setup();
        for (const c of decodeCases()) {
          const got = cpu().attentionDecode(c.q, c.kc, c.vc, c.ln, c.scale);
          expectClose(got.data, c.want, 1e-5, c.name);
          const got2 = await cpu().attentionDecodeAsync(c.q, c.kc, c.vc, c.ln, c.scale);
          expect(got2.data).toEqual(got.data);
          const lens = Array.from(c.ln.data);
          if (lens.length > 1) {
            for (let i = 0; i < lens.length; i++) {
              const alone = cpu().attentionDecode(rowsOf(c.q, i, i + 1), cacheRow(c.kc, i), cacheRow(c.vc, i), Tensor.i32([lens[i]!]), c.scale);
              expect(alone.data).toEqual(rowsOf(got, i, i + 1).data);
            }
          }
        }
      });

      it('sparse decode: F = 1 is dense exactly; F = 0.25 matches the reference, batched == alone', async () => {
        setup();
        for (const c of decodeCases()) {
          const dense = cpu().attentionDecode(c.q, c.kc, c.vc, c.ln, c.scale);
          expect(cpu().attentionDecode(c.q, c.kc, c.vc, c.ln, c.scale, undefined, 1).data).toEqual(dense.data);
          const sp = cpu().attentionDecode(c.q, c.kc, c.vc, c.ln, c.scale, undefined, 0.25);
          expectClose(sp.data, c.wantSparse, 1e-5, `sparse ${c.name}`);
          const sp2 = await cpu().attentionDecodeAsync(c.q, c.kc, c.vc, c.ln, c.scale, undefined, 0.25);
          expect(sp2.data).toEqual(sp.data);
          const lens = Array.from(c.ln.data);
          for (let i = 0; i < lens.length && lens.length > 1; i++) {
            const alone = cpu().attentionDecode(rowsOf(c.q, i, i + 1), cacheRow(c.kc, i), cacheRow(c.vc, i), Tensor.i32([lens[i]!]), c.scale, undefined, 0.25);
            expect(alone.data).toEqual(rowsOf(sp, i, i + 1).data);
          }
        }
        // f32 and f16 caches too (groups of 3, 1 and 10 query heads: the SIMD score kernels take
        // heads 8, 4, 2 or 1 at a time)
        for (const dtype of ['f32', 'f16'] as CacheDType[]) {
          for (const [hq, hkv, d] of [[6, 2, 64], [3, 3, 17], [20, 2, 40]] as const) {
            const lens = [1, 2, 140, 300];
            const b = lens.length, cap = 300;
            const q = randomF32([b, hq, d], seed++, 2);
            const kc = cacheOf(dtype, b, hkv, cap, d, seed++, 2), vc = cacheOf(dtype, b, hkv, cap, d, seed++);
            const ln = Tensor.i32(lens);
            const scale = 1 / Math.sqrt(d);
            for (const F of [0.1, 0.25, 0.9]) {
              const got = cpu().attentionDecode(q, kc, vc, ln, scale, undefined, F);
              expectClose(got.data, ref().attentionDecode(q, kc, vc, ln, scale, undefined, F).data, 1e-5, `sparse ${dtype} ${hq}/${hkv}/${d} F=${F}`);
              setThreads(3 - threads);
              expect(cpu().attentionDecode(q, kc, vc, ln, scale, undefined, F).data).toEqual(got.data);
              setThreads(threads);
            }
          }
        }
      });

      it('sparse decode: a NaN score ranks first, so its head is NaN wherever the NaN lies, as in the reference', () => {
        setup();
        // (std::nth_element's ranking is undefined with a NaN in it; torch.topk ranks NaN highest)
        for (const dtype of ['f32', 'f16'] as CacheDType[]) {
          for (const [hq, hkv, d] of [[6, 2, 64], [3, 3, 17]] as const) {
            const lens = [200, 9, 140, 2], b = lens.length, cap = 200;
            const q = randomF32([b, hq, d], seed++, 2);
            const kc = cacheOf(dtype, b, hkv, cap, d, seed++, 2), vc = cacheOf(dtype, b, hkv, cap, d, seed++);
            const nan = dtype === 'f32' ? NaN : 0x7e00, kd = kc.data as Float32Array | Uint16Array;
            kd[((0 * hkv + 0) * cap + 150) * d + 1] = nan;      // row 0: a low-ranked position would be dropped
            kd[((1 * hkv + hkv - 1) * cap + 8) * d] = nan;      // row 1: the newest position, always kept
            kd[((2 * hkv + 0) * cap + 0) * d + d - 1] = nan;    // row 2: the first position
            q.data[(3 * hq + hq - 1) * d] = Infinity;           // row 3: an infinite query
            const ln = Tensor.i32(lens), scale = 1 / Math.sqrt(d);
            for (const F of [0.02, 0.5]) {
              const want = ref().attentionDecode(q, kc, vc, ln, scale, undefined, F).data;
              expectSameValues(cpu().attentionDecode(q, kc, vc, ln, scale, undefined, F).data, want, 1e-5, `sparse ${dtype} ${hq}/${hkv}/${d} F=${F}`);
              expect(want.some(Number.isNaN) && want.some(Number.isFinite)).toBe(true);
            }
          }
        }
      });

      it('sparse decode with one dominant score matches a hand computation', () => {
        setup();
        for (const dtype of ['f32', 'f16', 'q4'] as CacheDType[]) {
          // one head, d = 4, len 9: key 3 aligns with q (score 8), the others score 0; F = 0.1 keeps
          // max(1, ceil(0.8)) = 1 older position (3) plus the newest (8).
          const d = 4, len = 9, cap = 10;
          const k = Tensor.zeros('f32', [cap, 1, d]), v = Tensor.zeros('f32', [cap, 1, d]);
          for (let p = 0; p < cap; p++) {
            k.data.set(p === 3 ? [4, 4, 4, 4] : [0, 0, 0, 0], p * d);
            v.data.set([p, 2 * p, -p, 1], p * d);
          }
          const shape = dtype === 'q4' ? [1, 1, cap, q4RecordBytes(d)] : [1, 1, cap, d];
          const kc = Tensor.zeros(dtype === 'q4' ? 'u8' : dtype, shape), vc = Tensor.zeros(dtype === 'q4' ? 'u8' : dtype, shape);
          cpu().cacheWrite(kc, k, 0, 0);
          cpu().cacheWrite(vc, v, 0, 0);
          const q = Tensor.f32([1, 1, d], [1, 1, 1, 1]);
          const got = cpu().attentionDecode(q, kc, vc, Tensor.i32([len]), 0.5, undefined, 0.1);
          // scores: position 3: 0.5·16 = 8, position 8: 0
          const w3 = 1 / (1 + Math.exp(-8)), w8 = 1 - w3;
          const want = [3 * w3 + 8 * w8, 6 * w3 + 16 * w8, -3 * w3 - 8 * w8, 1];
          // q4 records of v: [p, 2p, -p, 1] quantized (step ~ (3p)/15); compare loosely there
          expectClose(got.data, want, dtype === 'q4' ? 0.05 : 1e-6, `hand ${dtype}`);
          expectClose(got.data, ref().attentionDecode(q, kc, vc, Tensor.i32([len]), 0.5, undefined, 0.1).data, 1e-6, `hand vs ref ${dtype}`);
        }
      });

      it('ties keep the lower positions', () => {
        setup();
        // all older keys equal: k = 2 of 8 older positions kept → positions 0 and 1, plus 8.
        const d = 2, len = 9;
        const k = Tensor.zeros('f32', [1, 1, len, d]), v = Tensor.zeros('f32', [1, 1, len, d]);
        for (let p = 0; p < len; p++) {
          k.data.set([1, 0], p * d);
          v.data.set([p, 1], p * d);
        }
        const got = cpu().attentionDecode(Tensor.f32([1, 1, d], [1, 0]), k, v, Tensor.i32([len]), 1, undefined, 0.25);
        expect(got.data[0]).toBeCloseTo((0 + 1 + 8) / 3, 6);
        expect(got.data[1]).toBeCloseTo(1, 6);
      });
    });
  }
}

describe('bad inputs', () => {
  const q = randomF32([2, 4, 8], 1);
  const kc = randomF32([2, 2, 10, 8], 2);
  const ln = Tensor.i32([1, 3]);
  it('sparsity outside (0, 1] throws a RangeError', async () => {
    for (const F of [0, -0.5, 1.5, NaN, Infinity]) {
      expect(() => cpu().attentionDecode(q, kc, kc, ln, 1, undefined, F)).toThrow(RangeError);
      expect(() => cpu().attentionDecode(q, kc, kc, ln, 1, undefined, F)).toThrow(/sparsity/);
      await expect(cpu().attentionDecodeAsync(q, kc, kc, ln, 1, undefined, F)).rejects.toThrow(/sparsity/);
    }
    const out = new Float32Array(64);
    expect(() => cpuKernels.attentionDecode(q.data, kc.data, kc.data, 'f32', 2, 4, 2, 8, 10, ln.data, 1, out, 0)).toThrow(/sparsity/);
    expect(() => cpuKernels.attentionDecode(q.data, kc.data, kc.data, 'f32', 2, 4, 2, 8, 10, ln.data, 1, out, 2)).toThrow(/sparsity/);
  });

  it('wrong q4 shapes, dtypes and unrepresentable values throw', () => {
    const good = Tensor.zeros('u8', [2, 2, 10, q4RecordBytes(8)]);
    expect(() => cpu().attentionDecode(q, good, good, ln, 1)).not.toThrow();
    const bad = Tensor.zeros('u8', [2, 2, 10, q4RecordBytes(8) + 1]);
    expect(() => cpu().attentionDecode(q, bad, bad, ln, 1)).toThrow(/kCache has shape/);
    expect(() => cpu().attentionDecode(q, good, kc, ln, 1)).toThrow(/share a dtype/);
    expect(() => cpu().attentionDecode(q, good, Tensor.zeros('u8', [2, 2, 9, q4RecordBytes(8)]), ln, 1)).toThrow(/vCache/);
    expect(() => cpu().cacheWrite(bad, randomF32([1, 2, 8], 1), 0, 0)).toThrow(/q4 records/);
    expect(() => cpu().cacheWrite(good, randomF32([1, 3, 8], 1), 0, 0)).toThrow(/src/);
    expect(() => cpu().cacheWrite(good, randomF32([1, 2, 8], 1), 0, 10)).toThrow(/overrun/);
    expect(() => cpu().cacheWrite(good, Tensor.f32([1, 2, 8], new Float32Array(16).fill(70000)), 0, 0)).toThrow(RangeError);
    expect(() => cpu().attentionDecode(q, Tensor.zeros('i32', [2, 2, 10, 8]), kc, ln, 1)).toThrow(TypeError);
    // raw kernel: q4 buffers too short
    expect(() => cpuKernels.attentionDecode(q.data, new Uint8Array(100), new Uint8Array(100), 'q4', 2, 4, 2, 8, 10, ln.data, 1, new Float32Array(64))).toThrow(/kCache/);
    expect(() => cpuKernels.cacheWrite(new Uint8Array(10), 'q4', 2, 2, 10, 8, new Float32Array(16), 1, new Int32Array([0]), new Int32Array([0]))).toThrow(/cache/);
  });
});
