// Group-wise 4/8-bit quantization: reconstruction bounds, native == reference bit for bit, and the
// fused q4/q8 GEMM against a float64 GEMM over the same dequantized weights, on every ISA level,
// 1 and 2 threads, both compute modes.
import { afterAll, describe, expect, it } from 'vitest';
import { type Isa, cpuBackend, getThreads, isaInfo, referenceBackend, setIsa, setThreads } from '../src/backend/index.js';
import { gemmKernels } from '../src/backend/cpu/gemm.js';
import { type ComputeMode, type QuantBits, type QuantFormat, quantCodeBytes, quantParamsLength } from '../src/backend/kernels.js';
import { Tensor } from '../src/tensor/tensor.js';
import { type FloatDType, f16ToF32 } from '../src/tensor/dtype.js';
import { expectClose, randomF32, randomFloat, rng } from './helpers/harness.js';

const cpu = cpuBackend();
const ref = referenceBackend();
const ALL_ISAS: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const startIsa = isaInfo().active as Isa;
const startThreads = getThreads();
const ISAS = ALL_ISAS.filter((isa) => {
  const ok = setIsa(isa);
  setIsa(startIsa);
  return ok;
});
afterAll(() => {
  setIsa(startIsa);
  setThreads(startThreads);
});

const FORMATS: QuantFormat[] = ['q4', 'q8'];
const MODES: ComputeMode[] = ['fp32', 'bf16'];
// fp32 mode dequantizes exactly. bf16 mode with AVX512-VNNI (the avx512bf16 level), and for q4 from
// the avx2 level up (AVX2's vpmaddubsw), rounds x to int8 per group of 64 (q = nearbyint(x·127/amax),
// x' = q·amax/127) and is compared with the exact product of that rounded x; otherwise bf16 mode
// computes like fp32 mode.
const TOL = 2e-5;

/** x rounded per row and 64-group to the int8 grid the VNNI path multiplies with. */
function int8Rounded(x: Tensor<'f32'>): Tensor<'f32'> {
  const [m, k] = x.shape as [number, number];
  const out = Tensor.zeros('f32', [m, k]);
  for (let i = 0; i < m; i++) {
    for (let g = 0; g < k; g += 64) {
      const end = Math.min(k, g + 64);
      let amax = 0;
      for (let j = g; j < end; j++) amax = Math.max(amax, Math.abs(x.data[i * k + j]!));
      const inv = amax > 0 ? Math.fround(127 / amax) : 0;
      const scale = Math.fround(amax / 127);
      for (let j = g; j < end; j++) {
        const t = Math.fround(x.data[i * k + j]! * inv);
        let q = Math.round(t);
        if (Math.abs(t - Math.trunc(t)) === 0.5) q = 2 * Math.round(t / 2); // ties to even, as nearbyint
        out.data[i * k + j] = Math.max(-127, Math.min(127, q)) * scale;
      }
    }
  }
  return out;
}

let seed = 7000;

/** Rows mixing scales, offsets and outliers, so groups range from tiny to huge. */
function testMatrix(n: number, k: number, s: number): Float32Array {
  const r = rng(s);
  const out = new Float32Array(n * k);
  for (let i = 0; i < n; i++) {
    const scale = [1, 1e-3, 100, 3e-7, 2][i % 5]!;
    const offset = [0, 5, -300, 0, 1000][i % 5]!;
    for (let j = 0; j < k; j++) out[i * k + j] = offset + (r() * 2 - 1) * scale;
  }
  return out;
}

function quantizeBoth(x: Float32Array, n: number, k: number, bits: QuantBits, g: number) {
  const native = { codes: new Uint8Array(quantCodeBytes(bits, n, k)), params: new Uint16Array(quantParamsLength(n, k, g)), out: new Float32Array(n * k) };
  const refq = { codes: new Uint8Array(quantCodeBytes(bits, n, k)), params: new Uint16Array(quantParamsLength(n, k, g)), out: new Float32Array(n * k) };
  cpu.kernels.quantize(x, n, k, bits, g, native.codes, native.params);
  cpu.kernels.dequantize(native.codes, native.params, n, k, bits, g, native.out);
  ref.kernels.quantize(x, n, k, bits, g, refq.codes, refq.params);
  ref.kernels.dequantize(refq.codes, refq.params, n, k, bits, g, refq.out);
  return { native, refq };
}

/** Every element within half a step (+ f32 rounding) of its group; steps not needlessly large. */
function checkReconstruction(x: Float32Array, y: Float32Array, params: Uint16Array, n: number, k: number, bits: QuantBits, g: number, what: string): void {
  const ng = Math.ceil(k / g);
  const levels = (1 << bits) - 1;
  for (let r = 0; r < n; r++) {
    for (let gi = 0; gi < ng; gi++) {
      const step = f16ToF32(params[(r * ng + gi) * 2]!);
      const mn = f16ToF32(params[(r * ng + gi) * 2 + 1]!);
      let lo = Infinity;
      let hi = -Infinity;
      for (let j = gi * g; j < Math.min(k, (gi + 1) * g); j++) {
        const i = r * k + j;
        const x0 = x[i]!;
        lo = Math.min(lo, x0);
        hi = Math.max(hi, x0);
        const err = Math.abs(x0 - y[i]!);
        const tol = (step / 2) * (1 + 1e-4) + Math.abs(x0) * 2 ** -23;
        if (!(err <= tol)) throw new Error(`${what}: row ${r} col ${j}: |${x0} - ${y[i]}| = ${err} > step/2 = ${step / 2}`);
      }
      expect(mn <= lo, `${what}: min ${mn} above group min ${lo}`).toBe(true);
      if (step > 0) {
        expect(mn + levels * step >= hi, `${what}: group not covered`).toBe(true);
        // min rounded down by at most one f16 ulp, step up by at most ~2 f16 ulps
        const ulp = Math.max(2 ** -24, 2 ** (Math.floor(Math.log2(Math.max(Math.abs(lo), 2 ** -14))) - 10));
        expect(step <= ((hi - lo + ulp) / levels) * (1 + 2 ** -9) + 2 ** -24, `${what}: step ${step} too large`).toBe(true);
      }
    }
  }
}

describe('quantize / dequantize', () => {
  for (const bits of [4, 8] as QuantBits[]) {
    it(`${bits}-bit: within half a step, native == reference bit for bit`, () => {
      for (const k of [1, 3, 63, 65, 100, 257]) {
        for (const g of [64, 32, 7, 1000]) {
          const n = 10;
          const x = testMatrix(n, k, seed++);
          const { native, refq } = quantizeBoth(x, n, k, bits, g);
          const what = `${bits}-bit k=${k} g=${g}`;
          expect(Array.from(native.codes), `${what} codes`).toEqual(Array.from(refq.codes));
          expect(Array.from(native.params), `${what} params`).toEqual(Array.from(refq.params));
          expect(native.out.every((v, i) => Object.is(v, refq.out[i])), `${what} dequantized`).toBe(true);
          checkReconstruction(x, native.out, native.params, n, k, bits, g, what);
        }
      }
    });

    it(`${bits}-bit: constant groups, ±large values, f16 range edges`, () => {
      const k = 130;
      const rows: number[][] = [
        Array(k).fill(0.5), // constant at an f16 value: step 0, exact
        Array(k).fill(0.1), // constant, not an f16 value: tiny step
        Array(k).fill(0),
        Array(k).fill(-3e4),
        Array.from({ length: k }, (_, j) => (j % 9 === 0 ? 6e4 : j % 9 === 1 ? -6e4 : Math.sin(j) * 1e-3)),
        Array.from({ length: k }, (_, j) => (j % 2 ? 65504 : -65504)),
        Array.from({ length: k }, (_, j) => (j === 5 ? 1e4 : 1e-6 * j)),
        Array.from({ length: k }, (_, j) => 1000 + j * 1e-4),
      ];
      const n = rows.length;
      const x = Float32Array.from(rows.flat());
      const { native, refq } = quantizeBoth(x, n, k, bits, 64);
      expect(Array.from(native.codes)).toEqual(Array.from(refq.codes));
      expect(Array.from(native.params)).toEqual(Array.from(refq.params));
      checkReconstruction(x, native.out, native.params, n, k, bits, 64, `${bits}-bit special`);
      const ng = 3;
      for (const r of [0, 2, 3]) {
        for (let gi = 0; gi < ng; gi++) expect(native.params[(r * ng + gi) * 2], `row ${r} step`).toBe(0);
        for (let j = 0; j < k; j++) expect(native.out[r * k + j]).toBe(x[r * k + j]);
      }
    });
  }

  it('rejects values it cannot represent, and bad arguments', () => {
    for (const bad of [7e4, -65520, NaN, Infinity]) {
      const x = Float32Array.from([1, 2, bad, 3]);
      expect(() => cpu.kernels.quantize(x, 1, 4, 4, 64, new Uint8Array(2), new Uint16Array(2)), `${bad}`).toThrow(/cannot be quantized/);
      expect(() => ref.kernels.quantize(x, 1, 4, 4, 64, new Uint8Array(2), new Uint16Array(2)), `${bad}`).toThrow(/cannot be quantized/);
    }
    const x = new Float32Array(12);
    expect(() => cpu.kernels.quantize(x, 2, 6, 4, 4, new Uint8Array(5), new Uint16Array(8))).toThrow(/codes holds/);
    expect(() => cpu.kernels.quantize(x, 2, 6, 8, 4, new Uint8Array(12), new Uint16Array(7))).toThrow(/params holds/);
    expect(() => cpu.kernels.quantize(x, 2, 6, 5 as QuantBits, 4, new Uint8Array(12), new Uint16Array(8))).toThrow(/bits/);
    expect(() => cpu.kernels.quantize(x, 2, 6, 4, 0, new Uint8Array(12), new Uint16Array(8))).toThrow(/group/);
    expect(() => cpu.kernels.dequantize(new Uint8Array(6), new Uint16Array(8), 2, 6, 4, 4, new Float32Array(11))).toThrow(/out holds/);
  });
});

describe('packed q4 / q8 weights', () => {
  for (const format of FORMATS) {
    it(`${format}: gatherRows == reference dequantization bit for bit, every source dtype`, () => {
      for (const dtype of ['f32', 'f16', 'bf16'] as FloatDType[]) {
        for (const [n, k] of [[1, 1], [33, 3], [70, 65], [40, 257], [5, 1000]] as [number, number][]) {
          const w = randomFloat(dtype, [n, k], seed++);
          const ids = new Tensor('i32', [Math.min(n, 6)], Int32Array.from({ length: Math.min(n, 6) }, (_, i) => (i * 37) % n));
          const got = cpu.gatherRows(cpu.packWeight(w, 'fp32', 'w', { quantize: format }), ids);
          const want = ref.gatherRows(ref.packWeight(w, 'fp32', 'w', { quantize: format }), ids);
          expect(got.data.every((v, i) => Object.is(v, want.data[i])), `${format} ${dtype} n=${n} k=${k}`).toBe(true);
        }
      }
    });
  }

  it('packed bytes: size, position independence', () => {
    expect(cpu.kernels.packedByteLength('q4', 4096, 4096)).toBe(4096 * 4096 * 0.5625);
    expect(cpu.kernels.packedByteLength('q8', 4096, 4096)).toBe(4096 * 4096 * 1.0625);
    const [m, k, n] = [5, 100, 50];
    const x = randomF32([m, k], seed++);
    for (const format of FORMATS) {
      for (const mode of MODES) {
        const w = cpu.packWeight(randomF32([n, k], seed++), mode, 'w', { quantize: format });
        const copy = new Uint8Array(new ArrayBuffer(w.data.byteLength + 64), 16, w.data.byteLength);
        copy.set(w.data);
        const w2 = cpu.packedWeight(w.format, w.mode, n, k, copy);
        expect(Array.from(cpu.matmul(x, w2).data)).toEqual(Array.from(cpu.matmul(x, w).data));
      }
    }
  });

  it('rejects weights beyond the f16 range and bad options', () => {
    const w = randomF32([4, 8], seed++);
    w.data[13] = 1e5;
    expect(() => cpu.packWeight(w, 'fp32', 'w', { quantize: 'q4' })).toThrow(/element 13 .*cannot be quantized/);
    expect(() => ref.packWeight(w, 'fp32', 'w', { quantize: 'q8' })).toThrow(/cannot be quantized/);
    expect(() => cpu.packWeight(randomF32([4, 8], 1), 'fp32', 'w', { quantize: 'q3' as QuantFormat })).toThrow(/quantize/);
    const good = cpu.packWeight(randomF32([10, 8], 1), 'fp32', 'w', { quantize: 'q4' });
    const x = new Float32Array(16);
    const y = new Float32Array(20);
    expect(() => gemmKernels.matmul!(x, 2, 8, good.data.subarray(1), 'q4', 10, null, y, 'fp32')).toThrow(/w holds/);
    expect(() => gemmKernels.packWeight!(new Float32Array(80), 'f32', 10, 8, 'q8', new Uint8Array(100))).toThrow(/dst holds/);
    expect(() => gemmKernels.packWeight!(new Uint8Array(80) as never, 'q8' as never, 10, 8, 'q8', new Uint8Array(5000))).toThrow(/srcDtype/);
    expect(() => gemmKernels.gatherRows!(good.data, 'q4', 10, 8, Int32Array.from([10]), new Float32Array(8))).toThrow(/outside/);
    expect(() => cpu.packedWeight('q4', 'fp32', 10, 8, new Uint8Array(100))).toThrow(/bytes/);
  });
});

// [m, k, n]: odd sizes; k crosses the fp32 path's 1024 and the VNNI path's 4096 blocks (m <= 6: one
// row block, whose panels the VNNI path reads whole).
const SHAPES: [number, number, number][] = [
  [1, 1, 1], [2, 3, 17], [3, 65, 31], [7, 100, 33], [13, 257, 65], [17, 129, 100], [6, 64, 32], [65, 200, 40],
  [5, 1100, 33], [129, 70, 3], [1, 1300, 70], [4, 777, 97], [9, 4200, 40],
  // 1-2 rows (the fp32 path's register path) with a group's last quad short, after whole ones
  [1, 199, 33], [2, 1027, 45],
];

describe('q4 / q8 matmul matches a float64 GEMM over the dequantized weights', () => {
  for (const format of FORMATS) {
    for (const mode of MODES) {
      it(`${format}, ${mode} mode`, async () => {
        for (const [m, k, n] of SHAPES) {
          const x = randomF32([m, k], seed++);
          const w = randomF32([n, k], seed++, 0.1);
          const bias = randomF32([n], seed++);
          // The codes as this mode packs them, multiplied without any rounding of x.
          const packedRef = ref.packWeight(w, mode, 'w', { quantize: format });
          const refW = ref.packedWeight(packedRef.format, 'fp32', n, k, packedRef.data);
          const exact = [ref.matmul(x, refW, null), ref.matmul(x, refW, bias)];
          const xq = int8Rounded(x);
          const vnni = [ref.matmul(xq, refW, null), ref.matmul(xq, refW, bias)];
          const expect2 = (isa: string) => (mode === 'bf16' && (isa === 'avx512bf16' || (format === 'q4' && isa !== 'scalar')) ? vnni : exact);
          const packed = cpu.packWeight(w, mode, 'w', { quantize: format });
          for (const isa of ISAS) {
            expect(setIsa(isa)).toBe(true);
            for (const threads of [1, 2]) {
              setThreads(threads);
              const what = `${isa} ${threads}t m=${m} k=${k} n=${n}`;
              const [expected, expectedBias] = expect2(isa);
              expectClose(cpu.matmul(x, packed, null).data, expected!.data, TOL, what);
              expectClose(cpu.matmul(x, packed, bias).data, expectedBias!.data, TOL, `${what} +bias`);
            }
          }
          setIsa(startIsa);
          const y = await cpu.matmulAsync(x, packed, bias);
          expectClose(y.data, expect2(startIsa)[1]!.data, TOL, `async m=${m} k=${k} n=${n}`);
        }
      });
    }
  }

  it('bf16 mode with x near the float range: finite where the product is (the int8 path gave +Infinity for 2e38)', () => {
    const k = 64, n = 2;
    const w = new Tensor('f32', [n, k], Float32Array.from({ length: n * k }, (_, i) => ((i * 37) % 64) / 32 - 1));
    for (const big of [2e38, 5e35, 1e31]) {
      const x = new Tensor('f32', [1, k], new Float32Array(k));
      x.data[5] = big;
      for (const format of FORMATS) {
        const want = ref.matmul(x, ref.packWeight(w, 'fp32', 'w', { quantize: format })).data;
        for (const isa of ISAS) {
          setIsa(isa);
          const got = cpu.matmul(x, cpu.packWeight(w, 'bf16', 'w', { quantize: format })).data;
          for (let j = 0; j < n; j++) {
            expect(Number.isFinite(got[j]), `${format} ${isa} ${big}`).toBe(true);
            expect(Math.abs(got[j]! - want[j]!) / Math.abs(want[j]!), `${format} ${isa} ${big}`).toBeLessThan(2e-2);
          }
        }
        setIsa(startIsa);
      }
    }
  });

  // The AVX2 tile builds vpdpbusd's integer sums from vpmaddubsw and vpmaddwd and then takes the
  // VNNI tile's f32 steps, so q4 in bf16 mode gives one result at every SIMD level the CPU has.
  const INT8_LEVELS = ISAS.filter((isa) => isa !== 'scalar');
  it.skipIf(INT8_LEVELS.length < 2)(`q4 bf16 mode: the same bits at every SIMD level (${INT8_LEVELS.join(', ')})`, () => {
    for (const [m, k, n] of [[1, 4200, 70], [9, 300, 45], [6, 64, 33]] as const) {
      const x = randomF32([m, k], seed++);
      const w = cpu.packWeight(randomF32([n, k], seed++), 'bf16', 'w', { quantize: 'q4' });
      const bias = randomF32([n], seed++);
      const outs = INT8_LEVELS.map((isa) => {
        setIsa(isa);
        return cpu.matmul(x, w, bias).data;
      });
      setIsa(startIsa);
      for (let l = 1; l < outs.length; l++) {
        const same = outs[l]!.every((v, j) => Object.is(v, outs[0]![j]));
        expect(same, `${INT8_LEVELS[l]} vs ${INT8_LEVELS[0]} m=${m} k=${k} n=${n}`).toBe(true);
      }
    }
  });

  it('fp32 mode equals the f32 GEMM over the gathered (dequantized) rows bit for bit', () => {
    const [m, k, n] = [9, 300, 45];
    const x = randomF32([m, k], seed++);
    for (const format of FORMATS) {
      const q = cpu.packWeight(randomF32([n, k], seed++), 'fp32', 'w', { quantize: format });
      const deq = cpu.gatherRows(q, new Tensor('i32', [n], Int32Array.from({ length: n }, (_, i) => i)));
      const f = cpu.packWeight(new Tensor('f32', [n, k], deq.data), 'fp32');
      for (const isa of ISAS) {
        setIsa(isa);
        const a = cpu.matmul(x, q).data;
        const b = cpu.matmul(x, f).data;
        expect(a.every((v, i) => Object.is(v, b[i])), `${format} ${isa}`).toBe(true);
      }
      setIsa(startIsa);
    }
  });
});

describe('q4 / q8: batched rows equal unbatched rows bit for bit', () => {
  for (const format of FORMATS) {
    for (const mode of MODES) {
      it(`${format}, ${mode} mode`, () => {
        for (const [m, k, n] of [[37, 300, 70], [15, 4300, 33], [17, 1027, 45]] as const) {
          const x = randomF32([m, k], seed++);
          const w = cpu.packWeight(randomF32([n, k], seed++), mode, 'w', { quantize: format });
          const bias = randomF32([n], seed++);
          for (const isa of ISAS) {
            setIsa(isa);
            for (const threads of [1, 2]) {
              setThreads(threads);
              const all = cpu.matmul(x, w, bias);
              for (const i of [0, 1, 5, 6, 13, 14, m - 1]) {
                const row = new Tensor('f32', [1, k], x.data.slice(i * k, (i + 1) * k));
                const one = cpu.matmul(row, w, bias);
                const same = one.data.every((v, j) => Object.is(v, all.data[i * n + j]));
                expect(same, `${isa} ${threads}t k=${k} row ${i}`).toBe(true);
              }
            }
          }
        }
        setIsa(startIsa);
      });
    }
  }
});
