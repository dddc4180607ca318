// attentionCached: each query token against its own cache row (a prompt's later chunk in one
// call). Native (every ISA level) against the float64 reference on odd sizes, GQA, f32/f16/q4
// caches and sparse attention; every token equal to attentionDecode for its row alone; a chunk over
// a cached prefix equal to one whole prefill within the kernels' tolerance.
import { afterAll, describe, expect, it } from 'vitest';
import { isaInfo, setIsa, type CacheDType, type Isa } from '../src/backend/index.js';
import { q4RecordBytes } from '../src/backend/kernels.js';
import { Tensor } from '../src/tensor/tensor.js';
import { cacheRow, cpu, expectClose, randomF32, ref, rowsOf } from './helpers/harness.js';

const ALL: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const detected = isaInfo().detected as Isa;
const ISAS = ALL.slice(0, ALL.indexOf(detected) + 1);
afterAll(() => void setIsa(detected));

function emptyCache(dtype: CacheDType, b: number, hkv: number, cap: number, d: number): Tensor {
  return dtype === 'q4' ? Tensor.zeros('u8', [b, hkv, cap, q4RecordBytes(d)]) : Tensor.zeros(dtype, [b, hkv, cap, d]);
}



let seed = 4400;

for (const isa of ISAS) {
  describe(`attentionCached, ${isa}`, () => {
    it('matches the reference and attentionDecode row by row (f32/f16/q4, GQA, odd sizes, sparse)', () => {
      expect(setIsa(isa)).toBe(true);
      for (const dtype of ['f32', 'f16', 'q4'] as CacheDType[]) {
        for (const [hq, hkv, d] of [[6, 2, 17], [4, 4, 40], [8, 1, 33]] as const) {
          const [b, cap] = [3, 151];
          const kc = emptyCache(dtype, b, hkv, cap, d), vc = emptyCache(dtype, b, hkv, cap, d);
          for (let r = 0; r < b; r++) {
            cpu().cacheWrite(kc, randomF32([cap, hkv, d], seed++, 2), r, 0);
            cpu().cacheWrite(vc, randomF32([cap, hkv, d], seed++), r, 0);
          }
          // a chunk of 7 tokens on row 2, then 2 decode tokens on rows 0 and 1, a chunk of 3 on row 0
          const rows = [2, 2, 2, 2, 2, 2, 2, 0, 1, 0, 0, 0];
          const lens = [94, 95, 96, 97, 98, 99, 100, 1, 151, 60, 61, 62];
          const t = rows.length;
          const q = randomF32([t, hq, d], seed++, 2);
          const scale = 1 / Math.sqrt(d);
          for (const sparsity of [1, 0.3]) {
            const got = cpu().attentionCached(q, kc, vc, Tensor.i32(rows), Tensor.i32(lens), scale, undefined, sparsity);
            const want = ref().attentionCached(q, kc, vc, Tensor.i32(rows), Tensor.i32(lens), scale, undefined, sparsity);
            expectClose(got.data, want.data, 1e-5, `cached ${dtype} ${hq}/${hkv}/${d} F=${sparsity}`);
            for (let i = 0; i < t; i++) {
              const alone = cpu().attentionDecode(rowsOf(q, i, i + 1), cacheRow(kc, rows[i]!), cacheRow(vc, rows[i]!), Tensor.i32([lens[i]!]), scale, undefined, sparsity);
              expect(alone.data).toEqual(rowsOf(got, i, i + 1).data);
            }
          }
        }
      }
    });
  });
}

describe('attentionCached', () => {
  it('a chunk over its cached prefix equals the same rows of one whole prefill', () => {
    setIsa(detected);
    for (const [hq, hkv, d] of [[6, 2, 64], [3, 3, 17]] as const) {
      const n = 203, from = 77;
      const q = randomF32([n, hq, d], seed++, 2), k = randomF32([n, hkv, d], seed++, 2), v = randomF32([n, hkv, d], seed++);
      const scale = 1 / Math.sqrt(d);
      const kc = emptyCache('f32', 2, hkv, 256, d), vc = emptyCache('f32', 2, hkv, 256, d);
      cpu().cacheWrite(kc, k, 1, 0);
      cpu().cacheWrite(vc, v, 1, 0);
      const whole = cpu().attentionPrefill(q, k, v, Tensor.i32([0, n]), scale);
      const lens = Tensor.i32(Array.from({ length: n - from }, (_, i) => from + i + 1));
      const chunk = cpu().attentionCached(rowsOf(q, from, n), kc, vc, Tensor.i32(new Array(n - from).fill(1)), lens, scale);
      expectClose(chunk.data, rowsOf(whole, from, n).data, 1e-5, `chunk vs prefill ${hq}/${hkv}/${d}`);
    }
  });

  it('rejects rows and lens out of range, by name', () => {
    const q = randomF32([2, 4, 8], 1), kc = randomF32([2, 2, 10, 8], 2);
    expect(() => cpu().attentionCached(q, kc, kc, Tensor.i32([0, 2]), Tensor.i32([1, 1]), 1)).toThrow(/rows\[1\] = 2/);
    expect(() => cpu().attentionCached(q, kc, kc, Tensor.i32([0, 1]), Tensor.i32([1, 11]), 1)).toThrow(/lens\[1\] = 11/);
    expect(() => cpu().attentionCached(q, kc, kc, Tensor.i32([0]), Tensor.i32([1, 1]), 1)).toThrow(/rows must be/);
    const out = new Float32Array(64);
    expect(() => cpu().kernels.attentionCached(q.data, kc.data, kc.data, 'f32', 2, 4, 2, 8, 2, 10, Int32Array.of(0, 5), Int32Array.of(1, 1), 1, out)).toThrow(/rows\[1\] = 5/);
  });
});
