// GEMM: native kernels against the TypeScript reference, on every instruction-set level the CPU
// has, with odd sizes that hit every tail, in both compute modes and for every weight dtype.
import { afterAll, describe, expect, it } from 'vitest';
import { type Isa, cpuBackend, getThreads, isaInfo, referenceBackend, setIsa, setThreads } from '../src/backend/index.js';
import { GEMM_KERNEL_KINDS, gemmKernels, gemmBf16Dot, gemmIdlePrefetch, gemmOnePassRows, gemmWidenPanels, GEMM_WIDEN_BLOCKS } from '../src/backend/cpu/gemm.js';
import type { ComputeMode } from '../src/backend/kernels.js';
import { Tensor } from '../src/tensor/tensor.js';
import type { FloatDType } from '../src/tensor/dtype.js';
import { expectClose, randomF32, randomFloat } from './helpers/harness.js';

const cpu = cpuBackend();
const ref = referenceBackend();
const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];
const MODES: ComputeMode[] = ['fp32', 'bf16'];
const ALL_ISAS: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const info = isaInfo();
const startIsa = info.active as Isa;
const startThreads = getThreads();
const startDot = gemmBf16Dot();
// Levels this CPU can run (setIsa returns false for the others).
const ISAS = ALL_ISAS.filter((isa) => {
  const ok = setIsa(isa);
  setIsa(startIsa);
  return ok;
});
// bf16 mode on avx512bf16 has two paths: widening (default) and vdpbf16ps.
const VARIANTS: { isa: Isa; dot: boolean }[] = ISAS.flatMap((isa) =>
  isa === 'avx512bf16' ? [{ isa, dot: false }, { isa, dot: true }] : [{ isa, dot: false }]);

afterAll(() => {
  setIsa(startIsa);
  setThreads(startThreads);
  gemmBf16Dot(startDot);
});

const TOL = 1e-5;

// [m, k, n]: m crosses the row-block sizes (AVX-512: 14 rows a block, or one block of 15-16), k and
// n are multiples of no block size; the last three take several k blocks of the SIMD kernels
// (kKBlock 4096), with y stored and reloaded between.
const SHAPES: [number, number, number][] = [
  [1, 1, 1], [2, 3, 17], [3, 17, 31], [7, 31, 33], [13, 100, 3], [15, 37, 70], [16, 300, 33], [17, 33, 100],
  [33, 257, 65], [65, 100, 257], [1, 1000, 33], [5, 1000, 17], [129, 17, 40], [17, 4099, 33], [16, 4097, 65],
  [31, 8201, 40],
];

let seed = 100;

describe('matmul matches the reference', () => {
  for (const dtype of DTYPES) {
    for (const mode of MODES) {
      it(`${dtype} weights, ${mode} mode`, async () => {
        for (const [m, k, n] of SHAPES) {
          const x = randomF32([m, k], seed++);
          const w = randomFloat(dtype, [n, k], seed++);
          const bias = randomF32([n], seed++);
          const refW = ref.packWeight(w, mode);
          const expected = ref.matmul(x, refW, null);
          const expectedBias = ref.matmul(x, refW, bias);
          const packed = cpu.packWeight(w, mode);
          for (const { isa, dot } of VARIANTS) {
            expect(setIsa(isa)).toBe(true);
            gemmBf16Dot(dot);
            for (const threads of [1, 2]) {
              setThreads(threads);
              const what = `${isa}${dot ? '+dot' : ''} ${threads}t m=${m} k=${k} n=${n}`;
              expectClose(cpu.matmul(x, packed, null).data, expected.data, TOL, what);
              expectClose(cpu.matmul(x, packed, bias).data, expectedBias.data, TOL, `${what} +bias`);
            }
          }
          // async form, on the best ISA
          setIsa(startIsa);
          gemmBf16Dot(startDot);
          const y = await cpu.matmulAsync(x, packed, bias);
          expectClose(y.data, expectedBias.data, TOL, `async m=${m} k=${k} n=${n}`);
        }
      });
    }
  }
});

describe('bf16 mode rounds x to bf16 exactly as the reference does', () => {
  // Times an identity weight, each output is one product x·1 (and zeros), so y is bf16(x) itself:
  // the vdpbf16ps path's vectorised pair packing (16 floats at a time, a masked tail and the zero
  // pad of an odd k) and the widening path's rounding against the reference, value for value.
  it('on ties, denormals, signed zeros and random values, odd k, every variant', () => {
    for (const k of [37, 16, 1, 2049]) {
      const m = 5;
      const ties = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 5 * 2 ** -8), 2 ** -126 * 1.5, 1e-40, -1e-40, -0, 0, 65535.5, 3.3e38];
      const x = randomF32([m, k], seed++, 4);
      for (let i = 0; i < x.size; i += 3) x.data[i] = ties[(i / 3) % ties.length]!;
      // An infinity right after row 0's last element: a packing that read past k would put it in
      // row 0's zero pad (odd k), and ∞·0 would turn row 0 to NaN. (Row 1 is NaN either way.)
      x.data[k] = Infinity;
      const eye = Tensor.f32([k, k], Float32Array.from({ length: k * k }, (_, i) => (i % (k + 1) === 0 ? 1 : 0)));
      const want = ref.matmul(x, ref.packWeight(eye, 'bf16'), null).data;
      const packed = cpu.packWeight(eye, 'bf16');
      for (const { isa, dot } of VARIANTS) {
        setIsa(isa);
        gemmBf16Dot(dot);
        const got = cpu.matmul(x, packed, null).data;
        // vdpbf16ps itself treats denormal inputs as zero (the packing keeps them, as the reference).
        const flushed = (v: number) => dot && Math.abs(v) < 2 ** -126 ? 0 : v;
        const diff = got.findIndex((v, i) => !Object.is(v, flushed(want[i]!)) && !(v === 0 && flushed(want[i]!) === 0));
        expect(diff, `${isa}${dot ? '+dot' : ''} k=${k}: element ${diff} x=${x.data[diff]} got ${got[diff]} want ${want[diff]}`).toBe(-1);
      }
    }
    setIsa(startIsa);
    gemmBf16Dot(startDot);
  });
});

describe('NaN and infinities in x reach y as in the reference', () => {
  // Row 0 holds a NaN, row 1 a +inf, row 2 a -inf and a +inf; the other rows are finite and must stay
  // so. (The int8 path of quantized weights in bf16 mode scales x by its largest magnitude, and
  // turned these rows finite; such an x now takes the float path.)
  it('every weight format and mode, every variant', () => {
    for (const [m, k, n] of [[3, 67, 37], [7, 129, 40], [17, 260, 33]] as [number, number, number][]) {
      const x = randomF32([m, k], m);
      x.data[3] = NaN;
      x.data[k + 5] = Infinity;
      x.data[2 * k + 7] = -Infinity;
      x.data[2 * k + 9] = Infinity;
      for (const format of ['f32', 'f16', 'bf16', 'q4', 'q8'] as const) {
        for (const mode of MODES) {
          const src = randomF32([n, k], m + 1);
          const packed = (b: typeof cpu) => (format === 'q4' || format === 'q8'
            ? b.packWeight(src, mode, 'w', { quantize: format }) : b.packWeight(randomFloat(format, [n, k], m + 1), mode));
          const want = ref.matmul(x, packed(ref)).data;
          const w = packed(cpu);
          for (const { isa, dot } of VARIANTS) {
            setIsa(isa);
            gemmBf16Dot(dot);
            const got = cpu.matmul(x, w).data;
            for (let i = 0; i < got.length; i++) {
              const [a, e] = [got[i]!, want[i]!];
              const same = Number.isNaN(e) ? Number.isNaN(a) : Number.isFinite(e) ? Number.isFinite(a) : a === e;
              if (!same) throw new Error(`${format} ${mode} ${isa}${dot ? '+dot' : ''} m=${m}: y[${Math.floor(i / n)}, ${i % n}] is ${a}, the reference's ${e}`);
            }
          }
        }
      }
    }
    setIsa(startIsa);
    gemmBf16Dot(startDot);
  });
});

describe('batched rows equal unbatched rows bit for bit', () => {
  for (const dtype of DTYPES) {
    for (const mode of MODES) {
      it(`${dtype} weights, ${mode} mode`, () => {
        for (const [m, k, n] of [[37, 300, 70], [29, 4500, 33], [16, 300, 70]] as const) {
        const x = randomF32([m, k], seed++);
        const w = cpu.packWeight(randomFloat(dtype, [n, k], seed++), mode);
        const bias = randomF32([n], seed++);
        for (const { isa, dot } of VARIANTS) {
          setIsa(isa);
          gemmBf16Dot(dot);
          for (const threads of [1, 2]) {
            setThreads(threads);
            const all = cpu.matmul(x, w, bias);
            for (const i of [0, 1, 13, 14, 15, m - 1]) {
              const row = new Tensor('f32', [1, k], x.data.slice(i * k, (i + 1) * k));
              const one = cpu.matmul(row, w, bias);
              const same = one.data.every((v, j) => Object.is(v, all.data[i * n + j]));
              expect(same, `${isa}${dot ? '+dot' : ''} ${threads}t k=${k} row ${i}`).toBe(true);
            }
          }
        }
        }
        setIsa(startIsa);
        gemmBf16Dot(startDot);
      });
    }
  }
});

describe('bf16 and f16 panels widened to f32 once per group (gemmWidenPanels)', () => {
  // The f32 kernel over a widened group runs each output's FMA chain over k in the order the
  // widening kernels do, so the two paths must agree bit for bit: with bias and a fused epilogue,
  // across several k blocks (k > 4096) and panel groups, on one and two threads, with the threads
  // splitting panels (n > 32) or row blocks (one panel). Rows: at least GEMM_WIDEN_BLOCKS row blocks
  // a thread on every ISA (AVX-512 blocks hold 14 rows, AVX2 6).
  it('equals widening in every tile, bit for bit', () => {
    const start = gemmWidenPanels();
    try {
      for (const dtype of ['f16', 'bf16'] as const) {
        for (const mode of MODES) {
          for (const [m, k, n] of [[113, 37, 70], [127, 301, 290], [99, 4500, 33], [240, 64, 20]] as const) {
            const x = randomF32([m, k], seed++);
            const src = randomFloat(dtype, [n, k], seed++);
            const w = cpu.packWeight(src, mode);
            const bias = randomF32([n], seed++);
            const residual = randomF32([m, n], seed++);
            const expected = ref.matmul(x, ref.packWeight(src, mode), bias).data;
            for (const { isa, dot } of VARIANTS) {
              setIsa(isa);
              gemmBf16Dot(dot);
              for (const threads of [1, 2]) {
                setThreads(threads);
                const run = (widen: boolean) => {
                  gemmWidenPanels(widen ? ['f16', 'bf16'] : []);
                  const addTo = new Tensor('f32', residual.shape, residual.data.slice());
                  cpu.matmul(x, w, bias, undefined, { activation: 'gelu', addTo });
                  return [cpu.matmul(x, w, null).data, cpu.matmul(x, w, bias).data, addTo.data];
                };
                const [widened, inTile] = [run(true), run(false)];
                const what = `${dtype} ${mode} ${isa}${dot ? '+dot' : ''} ${threads}t m=${m} k=${k} n=${n}`;
                for (const [i, y] of widened.entries()) expect(y.every((v, j) => Object.is(v, inTile[i]![j])), `${what} (${['plain', 'bias', 'epilogue'][i]})`).toBe(true);
                expectClose(widened[1]!, expected, TOL, what);
              }
            }
          }
        }
      }
    } finally {
      gemmWidenPanels(start);
      setIsa(startIsa);
      setThreads(startThreads);
      gemmBf16Dot(startDot);
    }
  });

  it('defaults to bf16 (and f16 on AVX-512), takes kernel names, and refuses others', () => {
    expect(GEMM_WIDEN_BLOCKS).toBe(8);
    if (process.env.TIERLM_GEMM_WIDEN === undefined) expect(gemmWidenPanels()).toEqual(startIsa.startsWith('avx512') ? ['f16', 'bf16'] : ['bf16']);
    const start = gemmWidenPanels();
    try {
      expect(gemmWidenPanels(['bf16'])).toEqual(['bf16']);
      // f32 and vdpbf16ps have nothing to widen: their bits are dropped.
      expect(gemmWidenPanels(['f32', 'f16', 'bf16-dot'])).toEqual(['f16']);
      expect(gemmWidenPanels([])).toEqual([]);
      expect(() => gemmWidenPanels(['q4' as never])).toThrow(/unknown kernel 'q4'/);
    } finally {
      gemmWidenPanels(start);
    }
  });
});

describe('a product of 15-16 rows in one row block', () => {
  // AVX-512 tiles hold 14 rows in registers; 15-16 rows go in one tile that keeps a few
  // accumulators on the stack (gemmOnePassRows). A row's sums run in the same order either way.
  it('equals the same product in blocks of at most 14 rows, bit for bit, with bias and epilogue', () => {
    const startOnePass = gemmOnePassRows();
    try {
      for (const dtype of DTYPES) {
        for (const mode of MODES) {
          for (const [m, k, n] of [[15, 37, 70], [16, 4500, 33], [16, 300, 97]] as const) {
            const x = randomF32([m, k], seed++);
            const w = cpu.packWeight(randomFloat(dtype, [n, k], seed++), mode);
            const bias = randomF32([n], seed++);
            const residual = randomF32([m, n], seed++);
            for (const { isa, dot } of VARIANTS) {
              setIsa(isa);
              gemmBf16Dot(dot);
              for (const threads of [1, 2]) {
                setThreads(threads);
                const run = (onePass: boolean) => {
                  gemmOnePassRows(onePass ? GEMM_KERNEL_KINDS : []);
                  const addTo = new Tensor('f32', residual.shape, residual.data.slice());
                  cpu.matmul(x, w, bias, undefined, { activation: 'gelu', addTo });
                  return [cpu.matmul(x, w, null).data, cpu.matmul(x, w, bias).data, addTo.data];
                };
                const [one, blocks] = [run(true), run(false)];
                const what = `${dtype} ${mode} ${isa}${dot ? '+dot' : ''} ${threads}t m=${m} k=${k} n=${n}`;
                for (const [i, y] of one.entries()) expect(y.every((v, j) => Object.is(v, blocks[i]![j])), `${what} (${['plain', 'bias', 'epilogue'][i]})`).toBe(true);
              }
            }
          }
        }
      }
    } finally {
      gemmOnePassRows(startOnePass);
      setIsa(startIsa);
      setThreads(startThreads);
      gemmBf16Dot(startDot);
    }
  });

  it('defaults to f32 and bf16-dot, takes kernel names, and refuses others', () => {
    if (process.env.TIERLM_GEMM_ONE_PASS === undefined) expect(gemmOnePassRows()).toEqual(['f32', 'bf16-dot']);
    const start = gemmOnePassRows();
    try {
      expect(gemmOnePassRows(['bf16', 'f16'])).toEqual(['f16', 'bf16']);
      expect(gemmOnePassRows([])).toEqual([]);
      expect(() => gemmOnePassRows(['q4' as never])).toThrow(/unknown kernel 'q4'/);
    } finally {
      gemmOnePassRows(start);
    }
  });
});

describe("decode's idle-thread prefetch of the next weight", () => {
  // Each decode GEMV (up to 6 rows) has the idle workers prefetch the weight that followed it last
  // time: a sequence repeated like decode steps, with 4-bit, 8-bit and bf16 weights of odd sizes,
  // sync and async (the dispatcher thread keeps its own sequence), equals the same sequence with
  // the prefetch off, bit for bit.
  it('changes no result', async () => {
    const shapes: [number, number][] = [[77, 67], [131, 200], [33, 1000], [300, 65]];
    const weights = shapes.flatMap(([n, k], i) => [
      cpu.packWeight(randomFloat('bf16', [n, k], seed++), 'bf16', `w${i}`, { quantize: 'q4' }),
      cpu.packWeight(randomFloat('bf16', [k, n], seed++), 'bf16', `v${i}`, { quantize: 'q8' }),
      cpu.packWeight(randomFloat('bf16', [n, k], seed++), 'bf16', `u${i}`),
    ]);
    const inputs = [1, 3, 6].map((m) => weights.map((w) => randomF32([m, w.k], seed++)));
    const run = async () => {
      const out: Float32Array[] = [];
      for (let step = 0; step < 3; step++) {
        for (const xs of inputs) {
          for (let i = 0; i < weights.length; i++) {
            const y = i % 4 === 3 ? await cpu.matmulAsync(xs[i]!, weights[i]!) : cpu.matmul(xs[i]!, weights[i]!);
            out.push(y.data);
          }
        }
      }
      return out;
    };
    const on = gemmIdlePrefetch();
    expect(on).toBeGreaterThan(0);
    try {
      for (const threads of [2, 3]) {
        setThreads(threads);
        gemmIdlePrefetch(0);
        const off = await run();
        gemmIdlePrefetch(on);
        const withPrefetch = await run();
        withPrefetch.forEach((y, i) => expect(y.every((v, j) => Object.is(v, off[i]![j])), `${threads}t product ${i}`).toBe(true));
      }
    } finally {
      gemmIdlePrefetch(on);
    }
  });

  it('takes a byte count, and refuses a negative one', () => {
    const on = gemmIdlePrefetch();
    expect(gemmIdlePrefetch(1 << 20)).toBe(1 << 20);
    expect(() => gemmIdlePrefetch(-1)).toThrow(/bytes must be/);
    expect(gemmIdlePrefetch(on)).toBe(on);
  });
});

describe('packing', () => {
  it('f32 and f16 sources packed as bf16 match the reference', () => {
    for (const dtype of ['f32', 'f16'] as const) {
      const [m, k, n] = [3, 45, 37];
      const x = randomF32([m, k], seed++);
      const w = randomFloat(dtype, [n, k], seed++);
      const got = cpu.matmul(x, cpu.packWeight(w, 'bf16'));
      const want = ref.matmul(x, ref.packWeight(w, 'bf16'));
      expectClose(got.data, want.data, TOL, `${dtype} -> bf16`);
    }
  });

  it('packed bytes are position independent (copied into another buffer)', () => {
    const [m, k, n] = [4, 33, 50];
    const x = randomF32([m, k], seed++);
    for (const dtype of DTYPES) {
      const w = cpu.packWeight(randomFloat(dtype, [n, k], seed++), 'fp32');
      const copy = new Uint8Array(new ArrayBuffer(w.data.byteLength + 64), 16, w.data.byteLength);
      copy.set(w.data);
      const w2 = cpu.packedWeight(w.format, w.mode, n, k, copy);
      expect(Array.from(cpu.matmul(x, w2).data)).toEqual(Array.from(cpu.matmul(x, w).data));
    }
  });
});

describe('weights cut by rows (RowSplitWeight)', () => {
  it('multiplying by the pieces equals multiplying by the whole weight, bit for bit, sync and async', async () => {
    for (const backend of [cpu, ref]) {
      for (const dtype of DTYPES) {
        for (const [m, k, n] of [[1, 33, 97], [5, 17, 64], [17, 40, 130]] as const) {
          const x = randomF32([m, k], seed++);
          const bias = randomF32([n], seed++);
          const whole = backend.packWeight(randomFloat(dtype, [n, k], seed++), 'fp32');
          const block = backend.packedRowBlock(whole.format)!;
          for (const rows of [block, Math.floor(n / block / 2) * block || block, Math.floor((n - 1) / block) * block]) {
            const cut = backend.packedByteLength(whole.format, rows, k);
            const split = backend.rowSplitWeight([
              backend.packedWeight(whole.format, 'fp32', rows, k, whole.data.slice(0, cut)),
              backend.packedWeight(whole.format, 'fp32', n - rows, k, whole.data.slice(cut)),
            ]);
            const want = Array.from(backend.matmul(x, whole, bias).data);
            const what = `${backend.name} ${dtype} m=${m} k=${k} n=${n} cut at ${rows}`;
            expect(Array.from(backend.matmul(x, split, bias).data), what).toEqual(want);
            expect(Array.from((await backend.matmulAsync(x, split, bias)).data), `${what} async`).toEqual(want);
          }
        }
      }
    }
  });

  it('products wider than one output chunk (4 Mi elements) are computed in row chunks, still exact', () => {
    const [m, k, n] = [70, 3, 65600];
    const x = randomF32([m, k], seed++);
    const bias = randomF32([n], seed++);
    const whole = cpu.packWeight(randomFloat('f16', [n, k], seed++), 'fp32');
    const rows = 32 * 1000;
    const cut = cpu.packedByteLength(whole.format, rows, k);
    const split = cpu.rowSplitWeight([
      cpu.packedWeight(whole.format, 'fp32', rows, k, whole.data.subarray(0, cut)),
      cpu.packedWeight(whole.format, 'fp32', n - rows, k, whole.data.subarray(cut)),
    ]);
    expect(Buffer.compare(Buffer.from(cpu.matmul(x, split, bias).data.buffer), Buffer.from(cpu.matmul(x, whole, bias).data.buffer))).toBe(0);
  });

  it('refuses pieces that do not fit together', () => {
    const a = cpu.packWeight(randomFloat('f32', [40, 8], seed++), 'fp32');
    const b = cpu.packWeight(randomFloat('f32', [32, 8], seed++), 'fp32');
    const c = cpu.packWeight(randomFloat('f32', [32, 9], seed++), 'fp32');
    expect(() => cpu.rowSplitWeight([a, b])).toThrow(/part 0 has 40 rows, not a multiple of 32/);
    expect(() => cpu.rowSplitWeight([b, c])).toThrow(/part 1 differs from part 0/);
    expect(() => cpu.rowSplitWeight([])).toThrow(/at least one part/);
    const q = ref.packWeight(randomFloat('f32', [32, 64], seed++), 'fp32', 'w', { quantize: 'q4' });
    expect(() => ref.rowSplitWeight([q, q])).toThrow(/cannot be cut by rows/);
  });
});

describe('gatherRows', () => {
  for (const dtype of DTYPES) {
    for (const mode of MODES) {
      it(`${dtype} weights, ${mode} mode`, () => {
        const [n, k] = [70, 33];
        const w = randomFloat(dtype, [n, k], seed++);
        const ids = new Tensor('i32', [5], Int32Array.from([0, 69, 31, 32, 5]));
        const got = cpu.gatherRows(cpu.packWeight(w, mode), ids);
        const want = ref.gatherRows(ref.packWeight(w, mode), ids);
        expect(Array.from(got.data)).toEqual(Array.from(want.data));
      });
    }
  }
});

describe('bad input throws', () => {
  const w = cpu.packWeight(randomF32([10, 8], 1), 'fp32');
  it('wrong x length', () => {
    expect(() => cpu.matmul(randomF32([2, 7], 2), w)).toThrow(/features/);
  });
  it('wrong bias size', () => {
    expect(() => cpu.matmul(randomF32([2, 8], 2), w, randomF32([9], 3))).toThrow(/bias/);
  });
  it('packed buffer too small', () => {
    expect(() => cpu.packedWeight('f32', 'fp32', 10, 8, new Uint8Array(16))).toThrow(/bytes/);
  });
  it('weight of another backend', () => {
    expect(() => ref.matmul(randomF32([2, 8], 2), w)).toThrow(/backend/);
  });
  it('raw kernel with short buffers throws instead of crashing', () => {
    const x = new Float32Array(16);
    const y = new Float32Array(20);
    expect(() => gemmKernels.matmul!(x, 2, 8, new Uint8Array(100), 'f32', 10, null, y, 'fp32')).toThrow(/w holds/);
    expect(() => gemmKernels.matmul!(new Float32Array(15), 2, 8, w.data, 'f32', 10, null, y, 'fp32')).toThrow(/x holds/);
    expect(() => gemmKernels.matmul!(x, 2, 8, w.data, 'f32', 10, new Float32Array(9), y, 'fp32')).toThrow(/bias holds/);
    expect(() => gemmKernels.matmul!(x, 2, 8, w.data, 'f32', 10, null, new Float32Array(19), 'fp32')).toThrow(/y holds/);
    expect(() => gemmKernels.packWeight!(new Float32Array(80), 'f32', 10, 8, 'f32', new Uint8Array(10))).toThrow(/dst holds/);
    expect(() => gemmKernels.gatherRows!(w.data, 'f32', 10, 8, Int32Array.from([10]), new Float32Array(8))).toThrow(/outside/);
    expect(() => gemmKernels.gatherRows!(w.data, 'f32', 10, 8, Int32Array.from([1, 2]), new Float32Array(8))).toThrow(/out holds/);
    expect(() => gemmKernels.matmul!(x, 2, 8, w.data, 'f64' as never, 10, null, y, 'fp32')).toThrow(/format/);
  });
  it('async raw kernel validates before starting', () => {
    expect(() => gemmKernels.matmulAsync!(new Float32Array(3), 2, 8, w.data, 'f32', 10, null, new Float32Array(20), 'fp32')).toThrow(/x holds/);
  });
});
