// Row-wise ops: native kernels (every ISA level, 1 and 2 threads) against the float64 reference.
import { afterAll, describe, expect, it } from 'vitest';
import { getThreads, isaInfo, setIsa, setThreads, type Isa } from '../src/backend/index.js';
import { cpuKernels } from '../src/backend/cpu/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { type RopeScaling, ropeInvFreq } from '../src/models/rope.js';
import type { FloatDType } from '../src/tensor/dtype.js';
import { cpu, expectClose, expectSameValues, randomF32, randomFloat, ref, specialValues } from './helpers/harness.js';

const ALL: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const detected = isaInfo().detected as Isa;
const ISAS = ALL.slice(0, ALL.indexOf(detected) + 1);
const startThreads = getThreads();
afterAll(() => {
  setIsa(detected);
  setThreads(startThreads);
});

const COLS = [1, 3, 17, 31, 33, 100, 257, 1031];
const ROWS = [1, 4];
let seed = 1;

function ids(n: number, vocab: number): Tensor<'i32'> {
  return Tensor.i32(Array.from({ length: n }, (_, i) => (i * 7919 + 3) % vocab));
}

for (const isa of ISAS) {
  for (const threads of [1, 2]) {
    describe(`${isa}, ${threads} thread(s)`, () => {
      const setup = () => {
        expect(setIsa(isa)).toBe(true);
        setThreads(threads);
      };

      it('layerNorm and rmsNorm', () => {
        setup();
        for (const cols of COLS) {
          for (const rows of [...ROWS, cols < 100 ? 3000 : 40]) {
            const x = randomF32([rows, cols], seed++, 3);
            for (let i = 0; i < x.size; i++) x.data[i] += 1.5; // an offset mean
            const gamma = randomF32([cols], seed++);
            const beta = randomF32([cols], seed++);
            expectClose(cpu().layerNorm(x, gamma, beta, 1e-5).data, ref().layerNorm(x, gamma, beta, 1e-5).data, 1e-5, `layerNorm ${rows}x${cols}`);
            expectClose(cpu().layerNorm(x, gamma, null, 1e-5).data, ref().layerNorm(x, gamma, null, 1e-5).data, 1e-5, `layerNorm(no beta) ${rows}x${cols}`);
            expectClose(cpu().rmsNorm(x, gamma, 1e-6).data, ref().rmsNorm(x, gamma, 1e-6).data, 2e-6, `rmsNorm ${rows}x${cols}`);
          }
        }
        // zero rows and in place
        const empty = Tensor.zeros('f32', [0, 8]);
        expect(cpu().rmsNorm(empty, randomF32([8], 1), 1e-6).size).toBe(0);
        const x = randomF32([5, 33], seed++);
        const gamma = randomF32([33], seed++);
        const want = ref().rmsNorm(x, gamma, 1e-6);
        cpu().rmsNorm(x, gamma, 1e-6, x);
        expectClose(x.data, want.data, 2e-6, 'rmsNorm in place');
      });

      it('relu, gelu, siluMul, add', () => {
        setup();
        for (const n of [1, 3, 17, 31, 33, 100, 257, 1031, 70001]) {
          const x = randomF32([n], seed++, 6);
          const y = randomF32([n], seed++, 2);
          expect(Array.from(cpu().relu(x).data)).toEqual(Array.from(ref().relu(x).data));
          expectClose(cpu().gelu(x, false).data, ref().gelu(x, false).data, 5e-6, `gelu ${n}`);
          expectClose(cpu().gelu(x, true).data, ref().gelu(x, true).data, 1e-6, `gelu tanh ${n}`);
          expectClose(cpu().siluMul(x, y).data, ref().siluMul(x, y).data, 1e-6, `siluMul ${n}`);
          expect(Array.from(cpu().add(x, y).data)).toEqual(Array.from(ref().add(x, y).data));
        }
        // large magnitudes saturate cleanly
        const big = Tensor.f32([6], [-100, -30, -9, 9, 30, 100]);
        expectClose(cpu().gelu(big, false).data, ref().gelu(big, false).data, 1e-7, 'gelu big');
        expectClose(cpu().gelu(big, true).data, ref().gelu(big, true).data, 1e-7, 'gelu tanh big');
        expectClose(cpu().siluMul(big, big).data, ref().siluMul(big, big).data, 1e-7, 'siluMul big');
        // in place
        const x = randomF32([3, 5], seed++);
        const want = ref().gelu(x);
        cpu().gelu(x, false, x);
        expectClose(x.data, want.data, 1e-6, 'gelu in place');
      });

      it('relu, gelu, siluMul and add at NaN, ±inf, ±0 and huge inputs give what the reference gives', () => {
        setup();
        // (a NaN through ReLU stays NaN, as in PyTorch, so a diverging activation is not hidden;
        // GELU and SiLU of a large negative input are -0, not a value made of exp's clamp)
        for (const n of [19, 37, 40001]) {
          const x = Tensor.f32([n], specialValues(n));
          const y = Tensor.f32([n], Array.from(x.data, (v, i) => (i % 3 ? 0.5 + (i % 5) : v)));
          const cases: [string, (b: ReturnType<typeof cpu>) => Tensor<'f32'>, number][] = [
            ['relu', (b) => b.relu(x), 0], ['gelu', (b) => b.gelu(x, false), 5e-6], ['gelu tanh', (b) => b.gelu(x, true), 1e-6],
            ['siluMul', (b) => b.siluMul(x, y), 1e-6], ['add', (b) => b.add(x, y), 0],
          ];
          for (const [name, f, tol] of cases) expectSameValues(f(cpu()).data, f(ref()).data, tol, `${name} ${n}`, x.data);
        }
      });

      it('softmax, logSoftmax and the norms at NaN, ±inf and huge rows give what the reference gives', () => {
        setup();
        // (a row holding NaN or +inf, or only -inf, is NaN throughout, as exp(x - max) makes it in
        // float and in PyTorch, not finite numbers from exp's clamps. Layer norm squares x - mean in
        // float, so a row past ~1e19 overflows its variance where the float64 reference does not:
        // not tested.)
        const heads = [[1, 2, NaN, 4], [1, Infinity, 3, 4], [-Infinity, 1, 2, 3], [3e18, 2e18, -3e18, 1], [-1e18, 1e17, 0, -0]];
        for (const cols of [4, 37, 1031]) {
          const rows = [...heads, Array(cols).fill(-Infinity)];
          const x = Tensor.f32([rows.length, cols], rows.flatMap((h) => Array.from({ length: cols }, (_, i) => (i < h.length ? h[i]! : (i % 7) - 3))));
          const g = Tensor.f32([cols], Array.from({ length: cols }, (_, i) => 1 + i / 50));
          const b = Tensor.f32([cols], Array.from({ length: cols }, (_, i) => i / 100));
          expectSameValues(cpu().softmax(x).data, ref().softmax(x).data, 1e-6, `softmax ${cols}`, x.data);
          expectSameValues(cpu().logSoftmax(x).data, ref().logSoftmax(x).data, 1e-6, `logSoftmax ${cols}`, x.data);
          expectSameValues(cpu().layerNorm(x, g, b, 1e-5).data, ref().layerNorm(x, g, b, 1e-5).data, 1e-5, `layerNorm ${cols}`, x.data);
          expectSameValues(cpu().rmsNorm(x, g, 1e-6).data, ref().rmsNorm(x, g, 1e-6).data, 1e-5, `rmsNorm ${cols}`, x.data);
        }
      });

      it('softmax and logSoftmax', () => {
        setup();
        const shapes: [number, number][] = [...COLS.flatMap((c) => ROWS.map((r): [number, number] => [r, c])), [2, 50272], [100, 513], [0, 5]];
        for (const [rows, cols] of shapes) {
          const x = randomF32([rows, cols], seed++, 20);
          expectClose(cpu().softmax(x).data, ref().softmax(x).data, 1e-6, `softmax ${rows}x${cols}`);
          const ls = cpu().logSoftmax(x).data;
          const lr = ref().logSoftmax(x).data;
          expectClose(ls, lr, 1e-6, `logSoftmax ${rows}x${cols}`);
        }
        // exact log: very negative entries stay finite and accurate
        const x = Tensor.f32([1, 4], [0, -200, -1000, 5]);
        const ls = cpu().logSoftmax(x).data;
        const lr = ref().logSoftmax(x).data;
        for (let i = 0; i < 4; i++) expect(Math.abs(ls[i]! - lr[i]!)).toBeLessThan(1e-4 * Math.max(1, Math.abs(lr[i]!)));
        // in place
        const y = randomF32([3, 40], seed++, 4);
        const want = ref().softmax(y);
        cpu().softmax(y, y);
        expectClose(y.data, want.data, 1e-6, 'softmax in place');
      });

      it('rope, unscaled and with linear and llama3 frequency tables', () => {
        setup();
        const freqs = (theta: number, rotaryDim: number, scaling: RopeScaling | null = null) => ropeInvFreq({ kind: 'rope', theta, rotaryDim, scaling });
        const llama3: RopeScaling = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64 };
        // Its own seeds, so adding a case here does not move the inputs of the other ops' cases.
        let seed = 1_000_000;
        for (const [t, heads, d, rot, scaling] of [
          [1, 1, 2, 2, null], [5, 3, 64, 64, null], [7, 2, 40, 40, { type: 'linear', factor: 4 }], [3, 4, 24, 8, llama3], [9, 2, 17, 10, null], [6, 2, 48, 48, llama3],
        ] as const) {
          const x = randomF32([t, heads, d], seed++);
          const pos = Tensor.i32(Array.from({ length: t }, (_, i) => (i * 977) % 5000));
          const a = Tensor.f32([t, heads, d], x.data);
          const b = Tensor.f32([t, heads, d], x.data);
          const inv = freqs(10000, rot, scaling);
          cpu().rope(a, pos, inv);
          ref().rope(b, pos, inv);
          expectClose(a.data, b.data, 2e-6, `rope ${t},${heads},${d},${rot} ${scaling?.type ?? 'unscaled'}`);
          // untouched tail
          for (let i = 0; i < t * heads; i++) for (let j = rot; j < d; j++) expect(a.data[i * d + j]).toBe(x.data[i * d + j]);
        }
        const big = randomF32([300, 4, 64], seed++);
        const pos = Tensor.i32(Array.from({ length: 300 }, (_, i) => i * 13));
        const a = Tensor.f32([300, 4, 64], big.data);
        const b = Tensor.f32([300, 4, 64], big.data);
        cpu().rope(a, pos, freqs(500000, 64, { ...llama3, originalMaxPositions: 8192 }));
        ref().rope(b, pos, freqs(500000, 64, { ...llama3, originalMaxPositions: 8192 }));
        expectClose(a.data, b.data, 2e-6, 'rope large');
      });

      it('embedding', () => {
        setup();
        for (const dtype of ['f32', 'f16', 'bf16'] as FloatDType[]) {
          for (const dim of [1, 17, 100, 1031]) {
            const table = randomFloat(dtype, [50, dim], seed++);
            const id = ids(dim > 100 ? 40 : 9, 50);
            expect(Array.from(cpu().embedding(table, id).data)).toEqual(Array.from(ref().embedding(table, id).data));
          }
        }
      });
    });
  }
}

describe.runIf(ISAS.includes('avx2'))('GELU at avx2', () => {
  // (the AVX2 kernel computes in float, through erfc and e^x polynomials, where the scalar loop
  // takes float64 erf/tanh per element, about 30x slower: some rounding must differ, which is how
  // this tells, without timing, that avx2 runs its own kernel and not the scalar loop)
  it('runs its vector kernel, not the scalar loop: within the tolerances of the reference, not its values', () => {
    const x = randomF32([4099], seed++, 6);
    for (const approximate of [false, true]) {
      setIsa('scalar');
      const scalar = Array.from(cpu().gelu(x, approximate).data);
      setIsa('avx2');
      const avx2 = cpu().gelu(x, approximate).data;
      setIsa(detected);
      expectClose(avx2, ref().gelu(x, approximate).data, approximate ? 1e-6 : 5e-6, `gelu${approximate ? ' tanh' : ''}`);
      expect(avx2.some((v, i) => v !== scalar[i]), `avx2 gelu${approximate ? ' tanh' : ''} gave the scalar loop's values`).toBe(true);
    }
  });

  it('every tail length (masked loads and stores) and special value, nothing written past the end', () => {
    const k = cpuKernels;
    setIsa('avx2');
    try {
      for (let n = 1; n <= 41; n++) {
        const x = randomF32([n], seed++, 6);
        const sv = specialValues(n + 3).subarray(3); // a different special value in each lane over n
        for (let i = 0; i < n; i += 3) x.data[i] = sv[i]!;
        for (const approximate of [false, true]) {
          const buf = new Float32Array(n + 9).fill(-7);
          k.gelu(x.data, buf.subarray(0, n), approximate);
          expectSameValues(buf.subarray(0, n), ref().gelu(x, approximate).data, approximate ? 1e-6 : 5e-6, `gelu n=${n}${approximate ? ' tanh' : ''}`, x.data);
          expect(Array.from(buf.subarray(n)), `n=${n}: written past the end`).toEqual(Array(9).fill(-7));
          const inPlace = Float32Array.from(x.data);
          k.gelu(inPlace, inPlace, approximate);
          expect(Array.from(inPlace), `n=${n} in place`).toEqual(Array.from(buf.subarray(0, n)));
        }
      }
    } finally {
      setIsa(detected);
    }
  });
});

describe('bad inputs', () => {
  it('the backend rejects wrong shapes and dtypes', () => {
    const x = randomF32([2, 8], 1);
    expect(() => cpu().layerNorm(x, randomF32([7], 2), null, 1e-5)).toThrow(/gamma has 7 elements, expected 8/);
    expect(() => cpu().rmsNorm(x, randomF32([8], 2), NaN)).toThrow(/eps/);
    expect(() => cpu().add(x, randomF32([2, 7], 2))).toThrow(/shape/);
    expect(() => cpu().softmax(x, Tensor.zeros('f32', [2, 7]))).toThrow(/out/);
    expect(() => cpu().embedding(randomF32([4, 3], 1), Tensor.i32([4]))).toThrow(/outside/);
    expect(() => cpu().rope(randomF32([2, 1, 8], 1), Tensor.i32([0, 1]), new Float64Array(5))).toThrow(/invFreq must hold 1 to 4 frequencies/);
    expect(() => cpu().rope(randomF32([2, 1, 8], 1), Tensor.i32([0, 1]), new Float32Array(4) as unknown as Float64Array)).toThrow(/Float64Array/);
    expect(() => cpu().rope(randomF32([2, 1, 8], 1), Tensor.i32([0, 1]), new Float64Array([1, NaN]))).toThrow(/finite/);
    expect(() => cpu().rope(randomF32([2, 1, 8], 1), Tensor.i32([0]), new Float64Array(4))).toThrow(/positions/);
  });

  it('raw kernels refuse buffers too short', () => {
    const k = cpuKernels;
    expect(() => k.softmax(new Float32Array(3), 2, 2, new Float32Array(4))).toThrow(/needs at least/);
    expect(() => k.layerNorm(new Float32Array(8), 2, 4, new Float32Array(3), null, 1e-5, new Float32Array(8))).toThrow(/gamma/);
    expect(() => k.rmsNorm(new Float32Array(8), 2, 4, new Float32Array(4), 1e-5, new Float32Array(7))).toThrow(/out/);
    expect(() => k.add(new Float32Array(8), new Float32Array(7), new Float32Array(8))).toThrow(/b holds/);
    expect(() => k.gelu(new Float32Array(8), new Float32Array(7), false)).toThrow(/out/);
    expect(() => k.embedding(new Float32Array(10), 'f32', 4, 3, new Int32Array([0]), new Float32Array(3))).toThrow(/table/);
    expect(() => k.embedding(new Float32Array(12), 'f32', 4, 3, new Int32Array([4]), new Float32Array(3))).toThrow(/outside/);
    expect(() => k.rope(new Float32Array(16), 2, 1, 8, new Int32Array(1), new Float64Array(4), 8)).toThrow(/positions/);
    expect(() => k.rope(new Float32Array(16), 2, 1, 8, new Int32Array(2), new Float64Array(3), 8)).toThrow(/invFreq holds 24 bytes/);
    expect(() => k.rope(new Float32Array(16), 2, 1, 8, new Int32Array(2), new Float32Array(8) as unknown as Float64Array, 8)).toThrow(/Float64Array/);
  });
});
