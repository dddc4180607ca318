// Decode attention's in-stream prefetch (attnPrefetch, issue #14) only changes when rows reach the
// cache: with any distance (a part of a row, rows, past the end of a block or of the item) every
// result equals the one with the prefetch off bit for bit, f32/f16/q4 caches, odd sizes, GQA, rows
// shorter and longer than a block (64) and than a split (256), 1 and 2 threads.
import { afterAll, describe, expect, it } from 'vitest';
import { setIsa, setThreads, type CacheDType } from '../src/backend/index.js';
import { attnPrefetch as prefetch } from '../src/backend/cpu/attention.js';
import { q4RecordBytes } from '../src/backend/kernels.js';
import { Tensor } from '../src/tensor/tensor.js';
import { cpu, expectClose, randomF32, ref } from './helpers/harness.js';
import { ISAS, restoreSettingsAfterAll } from './helpers/isa.js';

const startBytes = prefetch();
restoreSettingsAfterAll();
afterAll(() => prefetch(startBytes));
// Every SIMD decode core prefetches (AVX-512 and AVX2); the scalar level has no prefetch to test.
const SIMD = ISAS.filter((isa) => isa !== 'scalar');

let seed = 7100;

/** Key and value caches [b, hkv, cap, d] of `dtype`, every position of every row written. */
function filledCaches(dtype: CacheDType, b: number, hkv: number, cap: number, d: number): [Tensor, Tensor] {
  const shape = dtype === 'q4' ? [b, hkv, cap, q4RecordBytes(d)] : [b, hkv, cap, d];
  const kc = dtype === 'q4' ? Tensor.zeros('u8', shape) : Tensor.zeros(dtype, shape);
  const vc = dtype === 'q4' ? Tensor.zeros('u8', shape) : Tensor.zeros(dtype, shape);
  for (let r = 0; r < b; r++) {
    cpu().cacheWrite(kc, randomF32([cap, hkv, d], seed++, 2), r, 0);
    cpu().cacheWrite(vc, randomF32([cap, hkv, d], seed++), r, 0);
  }
  return [kc, vc];
}

describe('attnPrefetch', () => {
  it.each(SIMD)('leaves decode results bit for bit unchanged (f32/f16/q4, odd sizes, GQA, 1 and 2 threads): %s', (isa) => {
    expect(setIsa(isa)).toBe(true);
    for (const dtype of ['f32', 'f16', 'q4'] as CacheDType[]) {
      for (const [hq, hkv, d, b, cap] of [[6, 2, 17, 3, 301], [4, 4, 40, 2, 130], [8, 1, 33, 1, 70], [2, 2, 128, 2, 90]] as const) {
        const [kc, vc] = filledCaches(dtype, b, hkv, cap, d);
        const q = randomF32([b, hq, d], seed++, 2);
        // lengths: 1, inside a block, a block and a bit, past a split (where the cache allows)
        for (const lens of [[1, 63, 64].slice(0, b), [65, 2, cap].slice(0, b), [cap, cap - 1, 129].slice(0, b)]) {
          for (const threads of [1, 2]) {
            setThreads(threads);
            prefetch(0);
            const want = cpu().attentionDecode(q, kc, vc, Tensor.i32(lens), 1 / Math.sqrt(d)).data;
            for (const bytes of [1, 100, 700, 2048, 9000, 100000]) {
              prefetch(bytes);
              const got = cpu().attentionDecode(q, kc, vc, Tensor.i32(lens), 1 / Math.sqrt(d)).data;
              expect(got, `${isa} ${dtype} ${hq}/${hkv}/${d} lens ${lens} ${threads} threads ${bytes} B`).toEqual(want);
            }
          }
        }
      }
    }
  });

  // Decode items go to the threads in runs of consecutive ones, and the next item of a run is
  // prefetched while one is computed: enough items that runs are longer than one (84 and more),
  // rows out of order (attentionCached), splits, every thread count, the prefetch off and on —
  // all equal bit for bit, and close to the reference.
  it('hands decode items out in runs without changing a result', () => {
    for (const dtype of ['f32', 'f16', 'q4'] as CacheDType[]) {
      const [hq, hkv, d, b, cap] = [12, 6, 40, 7, 600];
      const [kc, vc] = filledCaches(dtype, b, hkv, cap, d);
      const t = 11;
      const q = randomF32([t, hq, d], seed++, 2);
      const rows = Tensor.i32([6, 0, 3, 3, 1, 5, 2, 4, 0, 6, 1]);
      const lens = Tensor.i32([600, 1, 257, 300, 64, 513, 90, 2, 599, 129, 256]);
      const scale = 1 / Math.sqrt(d);
      setThreads(1);
      prefetch(0);
      const want = cpu().attentionCached(q, kc, vc, rows, lens, scale).data;
      expectClose(want, ref().attentionCached(q, kc, vc, rows, lens, scale).data, 1e-5, `${dtype} against the reference`);
      for (const threads of [1, 2, 3]) {
        setThreads(threads);
        for (const bytes of [0, 4096]) {
          prefetch(bytes);
          const got = cpu().attentionCached(q, kc, vc, rows, lens, scale).data;
          expect(got, `${dtype} ${threads} threads ${bytes} B`).toEqual(want);
        }
      }
    }
  });

  it('reports and sets the distance, and rejects a bad one', () => {
    expect(prefetch(3000)).toBe(3000);
    expect(prefetch()).toBe(3000);
    expect(() => prefetch(-1)).toThrow(/bytes must be/);
    prefetch(startBytes);
  });
});
