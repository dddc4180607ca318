// Attention kernels: native (every ISA level, 1 and 2 threads) against the float64 reference, plus
// the invariants the engine relies on (batching and ragged prefill change nothing, decode agrees
// with prefill).
import { afterAll, describe, expect, it } from 'vitest';
import { getThreads, isaInfo, setIsa, setThreads, type CacheDType, type Isa } from '../src/backend/index.js';
import { cpuKernels } from '../src/backend/cpu/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { f32ToF16 } from '../src/tensor/dtype.js';
import { q4RecordBytes } from '../src/backend/kernels.js';
import { cacheRow, cpu, expectClose, expectSameValues, randomF32, ref, rowsOf } from './helpers/harness.js';

const ALL: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const detected = isaInfo().detected as Isa;
const ISAS = ALL.slice(0, ALL.indexOf(detected) + 1);
const startThreads = getThreads();
afterAll(() => {
  setIsa(detected);
  setThreads(startThreads);
});

// [hq, hkv, d]
const HEADS: [number, number, number][] = [[6, 2, 64], [4, 4, 40], [6, 3, 17], [2, 1, 24], [2, 2, 128]];
let seed = 100;

function cacheOf(dtype: CacheDType, b: number, hkv: number, cap: number, d: number, s: number): Tensor {
  const f = randomF32([b, hkv, cap, d], s);
  if (dtype === 'f32') return f;
  const h = new Uint16Array(f.size);
  for (let i = 0; i < f.size; i++) h[i] = f32ToF16(f.data[i]!);
  return new Tensor('f16', [b, hkv, cap, d], h);
}



for (const isa of ISAS) {
  for (const threads of [1, 2]) {
    describe(`${isa}, ${threads} thread(s)`, () => {
      const setup = () => {
        expect(setIsa(isa)).toBe(true);
        setThreads(threads);
      };

      it('prefill over a ragged batch matches the reference and each sequence alone', async () => {
        setup();
        for (const [hq, hkv, d] of HEADS) {
          const starts = [0, 1, 6, 6, 23, 90];
          const t = starts[starts.length - 1]!;
          const q = randomF32([t, hq, d], seed++, 2), k = randomF32([t, hkv, d], seed++, 2), v = randomF32([t, hkv, d], seed++);
          const ss = Tensor.i32(starts);
          const scale = 1 / Math.sqrt(d);
          const got = cpu().attentionPrefill(q, k, v, ss, scale);
          expectClose(got.data, ref().attentionPrefill(q, k, v, ss, scale).data, 1e-5, `prefill ${hq}/${hkv}/${d}`);
          const got2 = await cpu().attentionPrefillAsync(q, k, v, ss, scale);
          expect(got2.data).toEqual(got.data);
          for (let s = 0; s + 1 < starts.length; s++) {
            const [a, b] = [starts[s]!, starts[s + 1]!];
            if (a === b) continue;
            const alone = cpu().attentionPrefill(rowsOf(q, a, b), rowsOf(k, a, b), rowsOf(v, a, b), Tensor.i32([0, b - a]), scale);
            expect(alone.data).toEqual(rowsOf(got, a, b).data);
          }
        }
      });

      it('decode matches the reference; batched rows equal rows alone', async () => {
        setup();
        for (const dtype of ['f32', 'f16'] as CacheDType[]) {
          for (const [hq, hkv, d] of HEADS) {
            const cap = 300;
            const lens = [1, 37, 300, 257];
            const b = lens.length;
            const q = randomF32([b, hq, d], seed++, 2);
            const kc = cacheOf(dtype, b, hkv, cap, d, seed++), vc = cacheOf(dtype, b, hkv, cap, d, seed++);
            const ln = Tensor.i32(lens);
            const scale = 1 / Math.sqrt(d);
            const got = cpu().attentionDecode(q, kc, vc, ln, scale);
            expectClose(got.data, ref().attentionDecode(q, kc, vc, ln, scale).data, 1e-5, `decode ${dtype} ${hq}/${hkv}/${d}`);
            const got2 = await cpu().attentionDecodeAsync(q, kc, vc, ln, scale);
            expect(got2.data).toEqual(got.data);
            for (let i = 0; i < b; i++) {
              const alone = cpu().attentionDecode(rowsOf(q, i, i + 1), cacheRow(kc, i), cacheRow(vc, i), Tensor.i32([lens[i]!]), scale);
              expect(alone.data).toEqual(rowsOf(got, i, i + 1).data);
            }
          }
        }
      });

      it('a NaN or +inf score makes its head NaN, as in the reference (prefill, decode, cached chunks)', () => {
        setup();
        // (the online softmax's exp clamps turned them into finite outputs; a NaN in a value row
        // reaches the output by itself, and only the tokens that may see it: one value NaN is at a
        // sequence's first position, seen by all of it, the other in the middle of a block of rows,
        // whose earlier tokens the tiled prefill once reached as 0·NaN.)
        for (const [hq, hkv, d] of HEADS) {
          const t = 70;
          const q = randomF32([t, hq, d], seed++), k = randomF32([t, hkv, d], seed++), v = randomF32([t, hkv, d], seed++);
          k.data[(3 * hkv + 0) * d + 1] = NaN;                  // key 3, kv head 0: every later token's group 0
          q.data[(40 * hq + (hq - 1)) * d + 2] = Infinity;      // token 40's last head
          v.data[(25 * hkv + (hkv - 1)) * d + (d - 1)] = NaN;  // the second sequence's first value, last feature
          v.data[(58 * hkv + 0) * d] = Infinity;                 // its 34th value, kv head 0: not its tokens 0..32
          const ss = Tensor.i32([0, 25, t]), scale = 1 / Math.sqrt(d);
          expectSameValues(cpu().attentionPrefill(q, k, v, ss, scale).data, ref().attentionPrefill(q, k, v, ss, scale).data, 1e-5, `prefill ${hq}/${hkv}/${d}`);
          for (const dtype of ['f32', 'f16'] as CacheDType[]) {
            const b = 3, cap = 300, lens = Tensor.i32([280, 5, 67]);
            const kc = cacheOf(dtype, b, hkv, cap, d, seed++), vc = cacheOf(dtype, b, hkv, cap, d, seed++);
            const nan = dtype === 'f32' ? NaN : 0x7e00;
            (kc.data as Float32Array | Uint16Array)[((0 * hkv + hkv - 1) * cap + 270) * d] = nan;  // row 0, past a split of 256
            (kc.data as Float32Array | Uint16Array)[((2 * hkv + 0) * cap + 10) * d + 3] = nan;
            const qd = randomF32([b, hq, d], seed++);
            qd.data[(1 * hq + 0) * d] = Infinity;
            // row 1's kv head 0 has a negative first feature at every position: every score of its
            // first head is -inf, which the reference's exp(-inf - -inf) makes NaN
            for (let p = 0; p < 5; p++) (kc.data as Float32Array | Uint16Array)[((1 * hkv + 0) * cap + p) * d] = dtype === 'f32' ? -1 : 0xbc00;
            const got = cpu().attentionDecode(qd, kc, vc, lens, scale).data, want = ref().attentionDecode(qd, kc, vc, lens, scale).data;
            expectSameValues(got, want, 1e-5, `decode ${dtype} ${hq}/${hkv}/${d}`);
            expect(want.some(Number.isNaN) && want.some(Number.isFinite)).toBe(true);
          }
        }
      });

      it('decode at position p agrees with prefill row p', () => {
        setup();
        for (const dtype of ['f32', 'f16'] as CacheDType[]) {
          for (const [hq, hkv, d] of [[6, 2, 64], [3, 3, 17]] as const) {
            const n = 530;
            const q = randomF32([n, hq, d], seed++, 2), k = randomF32([n, hkv, d], seed++, 2), v = randomF32([n, hkv, d], seed++);
            const scale = 1 / Math.sqrt(d);
            // round k/v through the cache dtype so both sides see the same values
            const cap = 600;
            const kc = Tensor.zeros(dtype, [2, hkv, cap, d]), vc = Tensor.zeros(dtype, [2, hkv, cap, d]);
            cpu().cacheWrite(kc, k, 1, 0);
            cpu().cacheWrite(vc, v, 1, 0);
            const kr = dtype === 'f16' ? roundF16(k) : k, vr = dtype === 'f16' ? roundF16(v) : v;
            const pre = cpu().attentionPrefill(q, kr, vr, Tensor.i32([0, n]), scale);
            for (const p of [0, 1, 255, 256, 529]) {
              const qb = Tensor.zeros('f32', [2, hq, d]);
              qb.data.set(q.data.subarray(p * hq * d, (p + 1) * hq * d), hq * d);
              const out = cpu().attentionDecode(qb, kc, vc, Tensor.i32([1, p + 1]), scale);
              expectClose(out.data.subarray(hq * d), pre.data.subarray(p * hq * d, (p + 1) * hq * d), 1e-5, `decode vs prefill ${dtype} p=${p}`);
            }
          }
        }
      });

      it('wide head groups and long sequences (every tile shape) match the reference, batched or alone, any thread count', () => {
        setup();
        const W = wide();
        for (const c of W.prefill) {
          const got = cpu().attentionPrefill(c.q, c.k, c.v, c.ss, c.scale);
          expectClose(got.data, c.want, 1e-5, `prefill ${c.name}`);
          const starts = Array.from(c.ss.data);
          for (let s = 0; s + 1 < starts.length; s++) {
            const [a, b] = [starts[s]!, starts[s + 1]!];
            const alone = cpu().attentionPrefill(rowsOf(c.q, a, b), rowsOf(c.k, a, b), rowsOf(c.v, a, b), Tensor.i32([0, b - a]), c.scale);
            expect(alone.data).toEqual(rowsOf(got, a, b).data);
          }
        }
        for (const c of W.decode) {
          const got = cpu().attentionDecode(c.q, c.kc, c.vc, c.ln, c.scale);
          expectClose(got.data, c.want, 1e-5, `decode ${c.name}`);
          setThreads(3 - threads);
          const other = cpu().attentionDecode(c.q, c.kc, c.vc, c.ln, c.scale);
          setThreads(threads);
          expect(other.data).toEqual(got.data);
          const lens = Array.from(c.ln.data);
          for (let i = 0; i < lens.length; i++) {
            const alone = cpu().attentionDecode(rowsOf(c.q, i, i + 1), cacheRow(c.kc, i), cacheRow(c.vc, i), Tensor.i32([lens[i]!]), c.scale);
            expect(alone.data).toEqual(rowsOf(got, i, i + 1).data);
          }
        }
      });

      it('cacheWrite converts and places rows', () => {
        setup();
        for (const dtype of ['f32', 'f16'] as CacheDType[]) {
          const [b, hkv, cap, d] = [3, 2, 20, 33];
          const src = randomF32([5, hkv, d], seed++, 65000); // up to f16's largest values
          src.data[0] = 1e-6; // subnormal in f16
          src.data[1] = -0;
          src.data[2] = 65519; // rounds to 65504
          src.data[3] = -Infinity; // an f16 value
          const a = Tensor.zeros(dtype, [b, hkv, cap, d]), r = Tensor.zeros(dtype, [b, hkv, cap, d]);
          cpu().cacheWrite(a, src, 2, 15);
          ref().cacheWrite(r, src, 2, 15);
          expect(Array.from(a.data)).toEqual(Array.from(r.data));
          // A finite value f16 would store as infinity is refused by both, naming the element; an
          // f32 cache takes it.
          src.data[37] = -65520;
          for (const [be, c] of [[cpu(), a], [ref(), r]] as const) {
            if (dtype === 'f16') expect(() => be.cacheWrite(c, src, 1, 0), be.name).toThrow(/element 37 \(-65520\S*\) is beyond an f16 cache's range .*cacheDtype "f32"/);
            else be.cacheWrite(c, src, 1, 0);
          }
          const small = randomF32([4, hkv, d], seed++, 3);
          cpu().cacheWrite(a, small, 0, 0);
          ref().cacheWrite(r, small, 0, 0);
          expect(Array.from(a.data)).toEqual(Array.from(r.data));
        }
      });

      it("cacheWriteTokens places each token at its own row and position, as one write per token does", () => {
        setup();
        for (const dtype of ['f32', 'f16', 'q4'] as CacheDType[]) {
          const [b, hkv, cap, d] = [4, 3, 11, 40];
          const t = 13;
          // Distinct (row, position) pairs in no order: the tokens of a ragged step.
          const pairs = Array.from({ length: b * cap }, (_, i) => [i % b, Math.floor(i / b)] as const)
            .sort((x, y) => ((x[0] * 7919 + x[1] * 104729 + seed) % 97) - ((y[0] * 7919 + y[1] * 104729 + seed) % 97)).slice(0, t);
          const rows = Tensor.i32(pairs.map((p) => p[0])), positions = Tensor.i32(pairs.map((p) => p[1]));
          const src = randomF32([t, hkv, d], seed++, 3);
          const rec = dtype === 'q4' ? q4RecordBytes(d) : d;
          const tdt = dtype === 'q4' ? 'u8' : dtype;
          const [a, r, one] = [0, 1, 2].map(() => Tensor.zeros(tdt, [b, hkv, cap, rec]));
          cpu().cacheWriteTokens(a!, src, rows, positions);
          ref().cacheWriteTokens(r!, src, rows, positions);
          for (let i = 0; i < t; i++) cpu().cacheWrite(one!, src.rows(i, i + 1), pairs[i]![0], pairs[i]![1]);
          expect(Array.from(a!.data), dtype).toEqual(Array.from(r!.data));
          expect(Array.from(a!.data), dtype).toEqual(Array.from(one!.data));
          expect(a!.data.some((x) => x !== 0)).toBe(true);
          // A token out of range is refused by both, by its index, before anything is written.
          const before = Array.from(a!.data);
          for (const be of [cpu(), ref()]) {
            const bad = Tensor.i32(pairs.map((p, i) => (i === 5 ? cap : p[1])));
            expect(() => be.cacheWriteTokens(a!, src, rows, bad), be.name).toThrow(/positions\[5\] = 11 overruns the cache capacity 11/);
            const badRow = Tensor.i32(pairs.map((p, i) => (i === 7 ? b : p[0])));
            expect(() => be.cacheWriteTokens(a!, src, badRow, positions), be.name).toThrow(/rows\[7\] = 4 is outside the cache's 4 rows/);
            expect(() => be.cacheWriteTokens(a!, src, Tensor.i32([0]), positions), be.name).toThrow(/rows must be an i32 Tensor of 13 entries/);
          }
          expect(Array.from(a!.data)).toEqual(before);
        }
      });
    });
  }
}

// Cases for the wide-group test, with their reference results, built once.
interface WideCases {
  prefill: { name: string; q: Tensor<'f32'>; k: Tensor<'f32'>; v: Tensor<'f32'>; ss: Tensor<'i32'>; scale: number; want: Float32Array }[];
  decode: { name: string; q: Tensor<'f32'>; kc: Tensor; vc: Tensor; ln: Tensor<'i32'>; scale: number; want: Float32Array }[];
}
let wideCases: WideCases | undefined;
function wide(): WideCases {
  if (wideCases) return wideCases;
  const w: WideCases = { prefill: [], decode: [] };
  let s = 5000;
  // [hq, hkv, d]: groups of 8, 6, 5, 4 and 1 query heads, feature counts with and without tails
  // (whole 8- and 16-lane vectors, and fewer features than one AVX2 vector)
  for (const [hq, hkv, d] of [[16, 2, 32], [12, 2, 20], [10, 2, 8], [4, 1, 16], [3, 3, 33], [7, 7, 5]] as const) {
    const starts = [0, 100, 101, 230];
    const t = starts[starts.length - 1]!;
    const q = randomF32([t, hq, d], s++, 2), k = randomF32([t, hkv, d], s++, 2), v = randomF32([t, hkv, d], s++);
    const ss = Tensor.i32(starts);
    const scale = 1 / Math.sqrt(d);
    w.prefill.push({ name: `${hq}/${hkv}/${d}`, q, k, v, ss, scale, want: ref().attentionPrefill(q, k, v, ss, scale).data });
  }
  // groups of 16, 8, 5 (4 + 1) and 4 query heads
  for (const dtype of ['f32', 'f16'] as CacheDType[]) {
    for (const [hq, hkv, d] of [[32, 2, 64], [16, 2, 48], [10, 2, 24], [8, 2, 128]] as const) {
      const cap = 520;
      const lens = [1, 64, 65, 513];
      const b = lens.length;
      const q = randomF32([b, hq, d], s++, 2);
      const kc = cacheOf(dtype, b, hkv, cap, d, s++), vc = cacheOf(dtype, b, hkv, cap, d, s++);
      const ln = Tensor.i32(lens);
      const scale = 1 / Math.sqrt(d);
      w.decode.push({ name: `${dtype} ${hq}/${hkv}/${d}`, q, kc, vc, ln, scale, want: ref().attentionDecode(q, kc, vc, ln, scale).data });
    }
  }
  return (wideCases = w);
}

function roundF16(t: Tensor<'f32'>): Tensor<'f32'> {
  const c = Tensor.zeros('f16', [1, 1, t.size, 1]);
  cpu().cacheWrite(c, Tensor.f32([t.size, 1, 1], t.data), 0, 0);
  const out = Tensor.zeros('f32', t.shape);
  const back = cpu().embedding(new Tensor('f16', [t.size, 1], c.data), Tensor.i32(Array.from({ length: t.size }, (_, i) => i)));
  out.data.set(back.data);
  return out;
}

describe('bad inputs', () => {
  const q = randomF32([2, 4, 8], 1);
  const kc = randomF32([2, 2, 10, 8], 2);
  it('the backend rejects wrong shapes, dtypes and lengths', () => {
    expect(() => cpu().attentionDecode(q, kc, kc, Tensor.i32([1, 11]), 1)).toThrow(/lens\[1\] = 11/);
    expect(() => cpu().attentionDecode(q, kc, kc, Tensor.i32([0, 1]), 1)).toThrow(/lens\[0\]/);
    expect(() => cpu().attentionDecode(q, kc, randomF32([2, 2, 9, 8], 3), Tensor.i32([1, 1]), 1)).toThrow(/vCache/);
    expect(() => cpu().attentionDecode(randomF32([2, 3, 8], 1), randomF32([2, 2, 10, 8], 2), randomF32([2, 2, 10, 8], 2), Tensor.i32([1, 1]), 1)).toThrow(/grouped/);
    const qp = randomF32([5, 4, 8], 1), kp = randomF32([5, 2, 8], 1);
    expect(() => cpu().attentionPrefill(qp, kp, kp, Tensor.i32([0, 4]), 1)).toThrow(/seqStarts/);
    expect(() => cpu().attentionPrefill(qp, kp, kp, Tensor.i32([0, 3, 2, 5]), 1)).toThrow(/decrease/);
    expect(() => cpu().attentionPrefill(qp, randomF32([5, 2, 7], 1), kp, Tensor.i32([0, 5]), 1)).toThrow(/shape/);
    expect(() => cpu().cacheWrite(kc, randomF32([3, 2, 8], 1), 0, 8)).toThrow(/overrun/);
    expect(() => cpu().cacheWrite(kc, randomF32([1, 2, 8], 1), 2, 0)).toThrow(/row 2/);
  });

  it('raw kernels refuse buffers too short and lens out of range', async () => {
    const k = cpuKernels;
    const out = new Float32Array(64);
    expect(() => k.attentionDecode(q.data, kc.data, new Float32Array(300), 'f32', 2, 4, 2, 8, 10, new Int32Array([1, 1]), 1, out)).toThrow(/vCache/);
    expect(() => k.attentionDecode(q.data, kc.data, kc.data, 'f32', 2, 4, 2, 8, 10, new Int32Array([1, 12]), 1, out)).toThrow(/lens\[1\]/);
    expect(() => k.attentionDecode(q.data, kc.data, kc.data, 'f32', 2, 4, 2, 8, 10, new Int32Array([1]), 1, out)).toThrow(/lens/);
    expect(() => k.attentionDecode(q.data, new Uint16Array(10), new Uint16Array(10), 'f16', 2, 4, 2, 8, 10, new Int32Array([1, 1]), 1, out)).toThrow(/kCache/);
    await expect(k.attentionDecodeAsync(q.data, kc.data, kc.data, 'f32', 2, 4, 2, 8, 10, new Int32Array([1, 1]), 1, new Float32Array(3))).rejects.toThrow(/out/);
    expect(() => k.attentionPrefill(new Float32Array(10), new Float32Array(10), new Float32Array(10), 5, 4, 2, 8, new Int32Array([0, 5]), 1, new Float32Array(160))).toThrow(/q holds/);
    expect(() => k.attentionPrefill(new Float32Array(160), new Float32Array(80), new Float32Array(80), 5, 4, 2, 8, new Int32Array([0, 7]), 1, new Float32Array(160))).toThrow(/seqStarts/);
    const [zero, ten, two] = [new Int32Array([0]), new Int32Array([10]), new Int32Array([2])];
    expect(() => k.cacheWrite(new Float32Array(10), 'f32', 2, 2, 10, 8, new Float32Array(16), 1, zero, zero)).toThrow(/cache/);
    expect(() => k.cacheWrite(kc.data, 'f32', 2, 2, 10, 8, new Float32Array(16), 1, zero, ten)).toThrow(/positions\[0\] = 10 overruns/);
    expect(() => k.cacheWrite(kc.data, 'f32', 2, 2, 10, 8, new Float32Array(16), 1, two, zero)).toThrow(/rows\[0\] = 2 is outside/);
    expect(() => k.cacheWrite(kc.data, 'f32', 2, 2, 10, 8, new Float32Array(32), 2, zero, zero)).toThrow(/rows/);
  });
});
