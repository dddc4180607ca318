// A matmul's fused epilogue (an activation, then the result added onto a residual stream) gives
// the separate ops' values bit for bit, on every GEMM path (float formats with one and many k
// blocks, the quantized small-row, tiled and VNNI paths), at every ISA level, 1 and 2 threads;
// the reference backend's matches; weights in pieces fall back to the same ops; bad input is
// named.
import { describe, expect, it } from 'vitest';
import { type LinearEpilogue, type PackedWeight, cpuBackend, referenceBackend } from '../src/backend/index.js';
import { nativeFn } from '../src/backend/cpu/addon.js';
import { gemmBf16Dot, gemmKernels } from '../src/backend/cpu/gemm.js';
import type { ComputeMode, QuantFormat } from '../src/backend/kernels.js';
import { Tensor } from '../src/tensor/tensor.js';
import type { ModelConfig } from '../src/models/config.js';
import { activationForward, fusedActivation } from '../src/models/ops.js';
import { expectClose, randomF32, randomFloat } from './helpers/harness.js';
import { atEveryIsa, restoreSettingsAfterAll } from './helpers/isa.js';

restoreSettingsAfterAll();
const cpu = cpuBackend();
const ref = referenceBackend();
const startDot = gemmBf16Dot();
let seed = 7000;

const ACTIVATIONS = [undefined, 'relu', 'gelu', 'gelu_tanh'] as const;
// [m, k, n]: m across the small-row (<= 2), VNNI (<= 6 a block) and GEMM row blocks; k across
// one and several k blocks (float kKBlock 4096, q4/q8 fp32 tiles of 1024, VNNI 4096); n with a panel tail.
const SHAPES: [number, number, number][] = [[1, 33, 70], [2, 300, 97], [5, 129, 33], [7, 517, 65], [16, 260, 130], [33, 70, 40], [17, 4111, 40]];

type Format = 'f32' | 'f16' | 'bf16' | QuantFormat;
function pack(b: typeof cpu, format: Format, mode: ComputeMode, n: number, k: number, s: number): PackedWeight {
  if (format === 'q4' || format === 'q8') return b.packWeight(randomF32([n, k], s), mode, 'w', { quantize: format });
  return b.packWeight(randomFloat(format, [n, k], s), mode);
}

/** matmul, then the separate ops, into a fresh residual copy: what the epilogue must equal. */
function unfused(x: Tensor<'f32'>, w: PackedWeight, bias: Tensor<'f32'>, residual: Tensor<'f32'> | null, act: LinearEpilogue['activation']) {
  const y = cpu.matmul(x, w, bias);
  if (act === 'relu') cpu.relu(y, y);
  else if (act) cpu.gelu(y, act === 'gelu_tanh', y);
  const r = residual && new Tensor('f32', residual.shape, residual.data.slice());
  if (r) cpu.add(r, y, r);
  return { y: Array.from(y.data), r: r && Array.from(r.data) };
}

describe('the fused epilogue equals matmul then the separate ops, bit for bit', () => {
  for (const format of ['f32', 'f16', 'bf16', 'q4', 'q8'] as const) {
    for (const mode of ['fp32', 'bf16'] as const) {
      it(`${format} weights, ${mode} mode`, () => {
        for (const [si, [m, k, n]] of SHAPES.entries()) {
          const x = randomF32([m, k], seed++);
          const bias = randomF32([n], seed++);
          // every other shape: columns made NaN, ±inf and huge by the bias (the activations keep NaN)
          if (si % 2) [NaN, -3e38, Infinity, -Infinity, 3e38].forEach((v, j) => void (j < n && (bias.data[(j * 7) % n] = v)));
          const residual = randomF32([m, n], seed++);
          const w = pack(cpu, format, mode, n, k, seed++);
          atEveryIsa((label) => {
            for (const dot of label.startsWith('avx512bf16') ? [false, true] : [false]) {
              gemmBf16Dot(dot);
              for (const activation of ACTIVATIONS) {
                for (const withResidual of [false, true]) {
                  if (!activation && !withResidual) continue;
                  const want = unfused(x, w, bias, withResidual ? residual : null, activation);
                  const r = new Tensor('f32', residual.shape, residual.data.slice());
                  const y = cpu.matmul(x, w, bias, undefined, { activation, ...(withResidual ? { addTo: r } : {}) });
                  const what = `${label}${dot ? '+dot' : ''} m=${m} k=${k} n=${n} ${activation ?? 'none'}${withResidual ? ' +residual' : ''}`;
                  expect(Array.from(y.data), what).toEqual(want.y);
                  if (withResidual) expect(Array.from(r.data), `${what} (residual)`).toEqual(want.r);
                  else expect(Array.from(r.data), `${what} (residual untouched)`).toEqual(Array.from(residual.data));
                }
              }
            }
          });
          gemmBf16Dot(startDot);
        }
      });
    }
  }
});

describe('the reference backend', () => {
  it('applies the epilogue as its own ops, and matches the native one', () => {
    for (const format of ['f32', 'bf16', 'q8'] as const) {
      for (const [m, k, n] of SHAPES.slice(0, 4)) {
        const x = randomF32([m, k], seed++);
        const bias = randomF32([n], seed++);
        const residual = randomF32([m, n], seed++);
        const s = seed++;
        const wr = pack(ref, format, 'fp32', n, k, s);
        const wc = pack(cpu, format, 'fp32', n, k, s);
        for (const activation of ['relu', 'gelu', 'gelu_tanh'] as const) {
          const rr = new Tensor('f32', residual.shape, residual.data.slice());
          const yr = ref.matmul(x, wr, bias, undefined, { activation, addTo: rr });
          const plain = ref.matmul(x, wr, bias);
          if (activation === 'relu') ref.relu(plain, plain);
          else ref.gelu(plain, activation === 'gelu_tanh', plain);
          expect(Array.from(yr.data)).toEqual(Array.from(plain.data));
          expect(Array.from(rr.data)).toEqual(Array.from(ref.add(residual, plain).data));
          const rc = new Tensor('f32', residual.shape, residual.data.slice());
          const yc = cpu.matmul(x, wc, bias, undefined, { activation, addTo: rc });
          const what = `${format} m=${m} k=${k} n=${n} ${activation}`;
          expectClose(yc.data, yr.data, 1e-5, what);
          expectClose(rc.data, rr.data, 1e-5, `${what} residual`);
        }
      }
    }
  });
});

describe('weights in pieces (RowSplitWeight)', () => {
  it('give the same result and residual as the whole weight', () => {
    for (const backend of [cpu, ref]) {
      const [m, k, n] = [5, 40, 130];
      const x = randomF32([m, k], seed++);
      const bias = randomF32([n], seed++);
      const residual = randomF32([m, n], seed++);
      const whole = backend.packWeight(randomFloat('bf16', [n, k], seed++), 'fp32');
      const cut = backend.packedByteLength(whole.format, 64, k);
      const split = backend.rowSplitWeight([
        backend.packedWeight(whole.format, 'fp32', 64, k, whole.data.slice(0, cut)),
        backend.packedWeight(whole.format, 'fp32', n - 64, k, whole.data.slice(cut)),
      ]);
      for (const activation of ACTIVATIONS) {
        const [a, b] = [0, 1].map(() => new Tensor('f32', residual.shape, residual.data.slice()));
        const ya = backend.matmul(x, whole, bias, undefined, { activation, addTo: a! });
        const yb = backend.matmul(x, split, bias, undefined, { activation, addTo: b! });
        expect(Array.from(yb.data), `${backend.name} ${activation}`).toEqual(Array.from(ya.data));
        expect(Array.from(b!.data), `${backend.name} ${activation} residual`).toEqual(Array.from(a!.data));
      }
    }
  });
});

describe('bad epilogues are refused before anything is written', () => {
  const x = randomF32([3, 8], 1);
  const w = cpu.packWeight(randomF32([10, 8], 2), 'fp32', 'wo');
  it('names the argument at fault', () => {
    const out = Tensor.f32([3, 10]);
    expect(() => cpu.matmul(x, w, null, out, { addTo: Tensor.f32([3, 9]) })).toThrow(/matmul\(wo\): addTo has shape \[3, 9\], expected \[3, 10\]/);
    expect(() => cpu.matmul(x, w, null, out, { addTo: out })).toThrow(/addTo shares memory with x, bias or out/);
    const both = Tensor.f32([2, 30]);
    const x2 = new Tensor('f32', [3, 8], new Float32Array(both.data.buffer, 0, 24));
    const r2 = new Tensor('f32', [3, 10], new Float32Array(both.data.buffer, 80, 30));
    expect(() => cpu.matmul(x2, w, null, out, { addTo: r2 })).toThrow(/addTo shares memory/);
    const r3 = Tensor.f32([3, 10]);
    const b3 = new Tensor('f32', [10], r3.data.subarray(10, 20));
    expect(() => cpu.matmul(x, w, b3, out, { addTo: r3 })).toThrow(/addTo shares memory with x, bias or out/);
    expect(() => gemmKernels.matmul!(x.data, 3, 8, w.data, 'f32', 10, b3.data, out.data, 'fp32', { addTo: r3.data })).toThrow(/addTo must not overlap x, bias or y/);
    expect(() => cpu.matmul(x, w, null, out, { activation: 'tanh' as never })).toThrow(/activation must be 'relu', 'gelu' or 'gelu_tanh', got "tanh"/);
    expect(() => cpu.matmul(x, w, null, out, { addTo: Tensor.zeros('f16', [3, 10]) as never })).toThrow(/addTo must be f32/);
  });
  it('the raw kernel checks too, and a fused epilogue is for synchronous calls only', () => {
    const y = new Float32Array(30);
    const raw = (act?: string, addTo?: Float32Array) =>
      gemmKernels.matmul!(x.data, 3, 8, w.data, 'f32', 10, null, y, 'fp32', { activation: act as never, addTo });
    expect(() => raw('swish')).toThrow(/activation must be 'relu', 'gelu' or 'gelu_tanh', got 'swish'/);
    expect(() => raw('relu', new Float32Array(29))).toThrow(/addTo/);
    expect(() => raw('relu', y)).toThrow(/addTo must not overlap x, bias or y/);
    const big = new Float32Array(64);
    const xs = big.subarray(0, 24);
    xs.set(x.data);
    expect(() => gemmKernels.matmul!(xs, 3, 8, w.data, 'f32', 10, null, y, 'fp32', { addTo: big.subarray(20, 50) })).toThrow(/addTo must not overlap x, bias or y/);
    const native = nativeFn<(...a: unknown[]) => unknown>('gemmMatmul');
    expect(() => native(x.data, 3, 8, w.data, 'f32', 10, null, y, 'fp32', true, 'relu', null)).toThrow(/fused epilogue is for synchronous calls/);
    expect(y.every((v) => v === 0), 'nothing written').toBe(true);
  });
});

describe("the forward pass's fused activation", () => {
  it('is the activation activationForward applies, for every ungated one, and none when gated', () => {
    const [m, k, n] = [3, 40, 70];
    const x = randomF32([m, k], seed++);
    const bias = randomF32([n], seed++);
    const w = cpu.packWeight(randomFloat('bf16', [n, k], seed++), 'fp32');
    for (const activation of ['relu', 'gelu', 'gelu_new'] as const) {
      const c = { activation } as ModelConfig;
      const fused = fusedActivation(c, false);
      expect(fused, activation).toBeDefined();
      const want = cpu.matmul(x, w, bias);
      activationForward(cpu, c, want, null, want);
      const got = cpu.matmul(x, w, bias, undefined, { activation: fused });
      expect(Array.from(got.data), activation).toEqual(Array.from(want.data));
      expect(fusedActivation(c, true), `${activation} gated`).toBeUndefined();
    }
    expect(fusedActivation({ activation: 'silu' } as ModelConfig, true)).toBeUndefined();
  });
});
