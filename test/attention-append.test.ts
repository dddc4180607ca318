// A decode step's keys and values written by attention itself (attentionCached's `append`,
// issue #14): the caches and the result must equal a cacheWriteTokens of the same rows followed
// by the same attention, bit for bit — every ISA level, f32/f16/q4 caches, GQA, odd head sizes,
// rows out of order and lengths across blocks (64) and splits (256), items in runs of many sizes
// (1–3 threads, the prefetch on and off), sparse attention — and a refused call must write
// nothing. The transformer must take the fused path in decode steps and only there.
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { getThreads, isaInfo, setIsa, setThreads, type CacheDType, type Isa } from '../src/backend/index.js';
import { Backend } from '../src/backend/backend.js';
import { attnPrefetch as prefetch } from '../src/backend/cpu/attention.js';
import { q4RecordBytes } from '../src/backend/kernels.js';
import { loadModel } from '../src/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { fixturePrompts, fixturesDir } from './helpers/fixtures.js';
import { cpu, expectClose, randomF32, ref } from './helpers/harness.js';

const ALL: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const detected = isaInfo().detected as Isa;
const ISAS = ALL.slice(0, ALL.indexOf(detected) + 1);
const startThreads = getThreads(), startBytes = prefetch();
afterAll(() => {
  setIsa(detected);
  setThreads(startThreads);
  prefetch(startBytes);
});

let seed = 9100;
type B = ReturnType<typeof cpu>;

/** Caches [b, hkv, cap, ..] of `dtype` with positions 0..cap-1 of every row written. */
function filledCaches(be: B, dtype: CacheDType, b: number, hkv: number, cap: number, d: number): [Tensor, Tensor] {
  const shape = dtype === 'q4' ? [b, hkv, cap, q4RecordBytes(d)] : [b, hkv, cap, d];
  const make = () => (dtype === 'q4' ? Tensor.zeros('u8', shape) : Tensor.zeros(dtype, shape));
  const kc = make(), vc = make();
  for (let r = 0; r < b; r++) {
    be.cacheWrite(kc, randomF32([cap, hkv, d], seed++, 2), r, 0);
    be.cacheWrite(vc, randomF32([cap, hkv, d], seed++), r, 0);
  }
  return [kc, vc];
}

const copy = (t: Tensor) => new Tensor(t.dtype, t.shape, (t.data as Uint8Array).slice());
/** Bit-for-bit equality of two typed arrays (toEqual walks large ones element by element). */
const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const same = (a: ArrayBufferView, b: ArrayBufferView) => a.byteLength === b.byteLength && bytes(a).equals(bytes(b));

/** The fused call and the separate write + attention on copies of the same caches. */
function both(be: B, kc: Tensor, vc: Tensor, q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, rows: number[], lens: number[], sparsity: number) {
  const scale = 1 / Math.sqrt(q.shape[2]!);
  const [k1, v1, k2, v2] = [copy(kc), copy(vc), copy(kc), copy(vc)];
  const fused = be.attentionCached(q, k1, v1, Tensor.i32(rows), Tensor.i32(lens), scale, undefined, sparsity, { k, v });
  const positions = Tensor.i32(lens.map((n) => n - 1));
  be.cacheWriteTokens(k2, k, Tensor.i32(rows), positions);
  be.cacheWriteTokens(v2, v, Tensor.i32(rows), positions);
  const separate = be.attentionCached(q, k2, v2, Tensor.i32(rows), Tensor.i32(lens), scale, undefined, sparsity);
  return { fused, separate, caches: [k1.data, v1.data], want: [k2.data, v2.data] };
}

for (const isa of ISAS) {
  describe(`attentionCached with append, ${isa}`, () => {
    it('equals the cache write and then the attention, bit for bit (f32/f16/q4, GQA, odd sizes, splits, runs, threads, sparse)', () => {
      expect(setIsa(isa)).toBe(true);
      const threadCounts = isa === detected ? [1, 2, 3] : [2];
      for (const dtype of ['f32', 'f16', 'q4'] as CacheDType[]) {
        for (const [hq, hkv, d, b, cap] of [[6, 2, 17, 5, 301], [4, 4, 40, 24, 70], [8, 1, 33, 3, 600], [2, 2, 64, 9, 90]] as const) {
          const [kc, vc] = filledCaches(cpu(), dtype, b, hkv, cap, d);
          // every row but one (a cache row no token uses), out of order; lengths 1, inside a block,
          // the whole capacity, and past one and two splits where the capacity allows
          const rows = Array.from({ length: b - 1 }, (_, i) => (i * 7 + 3) % b).filter((r, i, a) => a.indexOf(r) === i);
          const lens = rows.map((_, i) => [1, 63, 64, 65, cap, 257, 513, 2][i % 8]!).map((n) => Math.min(n, cap));
          const t = rows.length;
          const q = randomF32([t, hq, d], seed++, 2), k = randomF32([t, hkv, d], seed++, 2), v = randomF32([t, hkv, d], seed++);
          for (const sparsity of [1, 0.3]) {
            for (const threads of threadCounts) {
              setThreads(threads);
              for (const bytes of sparsity === 1 && dtype !== 'q4' ? [0, startBytes] : [startBytes]) {
                prefetch(bytes);
                const what = `${dtype} ${hq}/${hkv}/${d} b${b} F=${sparsity} ${threads} threads prefetch ${bytes}`;
                const r = both(cpu(), kc, vc, q, k, v, rows, lens, sparsity);
                expect(same(r.caches[0]!, r.want[0]!), `${what}: keys`).toBe(true);
                expect(same(r.caches[1]!, r.want[1]!), `${what}: values`).toBe(true);
                expect(same(r.fused.data, r.separate.data), what).toBe(true);
              }
            }
          }
          setThreads(startThreads);
          prefetch(startBytes);
        }
      }
    });
  });
}

describe('attentionCached with append', () => {
  it('the reference backend gives the same caches, and results within the kernels\' tolerance', () => {
    setIsa(detected);
    for (const dtype of ['f32', 'f16', 'q4'] as CacheDType[]) {
      const [hq, hkv, d, b, cap] = [6, 3, 19, 4, 140];
      const [kc, vc] = filledCaches(ref(), dtype, b, hkv, cap, d);
      const rows = [2, 0, 3], lens = [140, 1, 77];
      const q = randomF32([3, hq, d], seed++, 2), k = randomF32([3, hkv, d], seed++, 2), v = randomF32([3, hkv, d], seed++);
      const want = both(ref(), kc, vc, q, k, v, rows, lens, 1);
      expect(want.fused.data).toEqual(want.separate.data);
      expect(want.caches).toEqual(want.want);
      const got = both(cpu(), kc, vc, q, k, v, rows, lens, 1);
      expect(got.caches).toEqual(want.caches);
      expectClose(got.fused.data, want.fused.data, 1e-5, `native vs reference, ${dtype}`);
    }
  });

  it('refuses a repeated row, values the cache cannot store, wrong shapes and shared memory, writing nothing', () => {
    for (const be of [cpu(), ref()]) {
      for (const dtype of ['f16', 'q4'] as CacheDType[]) {
        const [kc, vc] = filledCaches(be, dtype, 3, 2, 5, 8);
        const before = [copy(kc).data, copy(vc).data];
        const q = randomF32([2, 4, 8], seed++), k = randomF32([2, 2, 8], seed++), v = randomF32([2, 2, 8], seed++);
        const call = (rows: number[], append: { k: Tensor<'f32'>; v: Tensor<'f32'> }) =>
          () => be.attentionCached(q, kc, vc, Tensor.i32(rows), Tensor.i32([3, 5]), 1, undefined, 1, append);
        expect(call([1, 1], { k, v })).toThrow(/rows\[1\] = 1 repeats an earlier token's row/);
        const big = Tensor.f32([2, 2, 8], v.data.slice());
        big.data[13] = dtype === 'f16' ? 70000 : Infinity;
        expect(call([0, 1], { k, v: big })).toThrow(dtype === 'f16' ? /vNew element 13 \(70000(\.0+)?\) is beyond an f16 cache's range/ : /vNew element 13 \((Infinity|inf)\) cannot be quantized/);
        expect(call([0, 1], { k: randomF32([2, 2, 7], 1), v })).toThrow(/append.k/);
        expect([kc.data, vc.data]).toEqual(before);
        // the raw native kernel checks the same
        if (be === cpu()) {
          expect(() => be.kernels.attentionCached(q.data, kc.data as Uint8Array, vc.data as Uint8Array, dtype, 2, 4, 2, 8, 3, 5,
            Int32Array.of(2, 2), Int32Array.of(1, 1), 1, new Float32Array(64), 1, k.data, v.data)).toThrow(/rows\[1\] = 2 repeats/);
          expect(() => be.kernels.attentionCached(q.data, kc.data as Uint8Array, vc.data as Uint8Array, dtype, 2, 4, 2, 8, 3, 5,
            Int32Array.of(0, 2), Int32Array.of(1, 1), 1, new Float32Array(64), 1, k.data, big.data)).toThrow(/vNew element 13/);
          expect([kc.data, vc.data]).toEqual(before);
        }
      }
      const [kc, vc] = filledCaches(be, 'f32', 3, 2, 5, 8);
      const inCache = new Tensor('f32', [2, 2, 8], (kc.data as Float32Array).subarray(0, 32));
      expect(() => be.attentionCached(randomF32([2, 4, 8], 3), kc, vc, Tensor.i32([0, 1]), Tensor.i32([3, 5]), 1, undefined, 1,
        { k: inCache, v: randomF32([2, 2, 8], 4) })).toThrow(/append.k shares memory with the cache/);
    }
  });
});

describe('the transformer', () => {
  it('writes a decode step\'s keys and values through attention, and a prefill step\'s beforehand', async () => {
    const model = await loadModel(path.join(fixturesDir, 'llama-tiny'));
    const writes = vi.spyOn(Backend.prototype, 'cacheWriteTokens');
    const attend = vi.spyOn(Backend.prototype, 'attentionCached');
    try {
      const requests = fixturePrompts().slice(0, 2).map((p) => ({ id: p.id, promptTokenIds: p.prompt_token_ids }));
      for await (const r of model.generate(requests, { maxNewTokens: 4, stopAtEos: false, batchSize: 2 })) if ('error' in r) throw new Error(r.error);
      const layers = model.config.layers;
      // prefill: two writes a layer; three decode steps: none, each attention call appending
      expect(writes.mock.calls.length).toBe(2 * layers);
      expect(attend.mock.calls.length).toBe(3 * layers);
      for (const call of attend.mock.calls) expect(call[8]).toBeDefined();
    } finally {
      writes.mockRestore();
      attend.mockRestore();
      await model.close();
    }
  });
});
