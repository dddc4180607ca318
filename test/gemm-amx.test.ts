// bf16 mode's AMX kernel (native/kernels/gemm_amx_impl.h). Where this CPU lets the process run AMX
// tiles, the real kernel is checked; everywhere, the same tile code with each tile instruction
// emulated as the architecture defines it ('amx-emulated'), which checks the kernel's blocking
// (32 rows × 32 columns a tile, the whole of k), addressing and edges (a k tail under 32 steps, row
// blocks of 1-32 rows read past their end, panel tails) on machines without AMX.
// TIERLM_REQUIRE_AMX=1 makes a machine without usable AMX fail here instead of checking only the
// emulation (for a run on a machine that should have it).
import { afterAll, describe, expect, it } from 'vitest';
import { type Isa, cpuBackend, getThreads, isaInfo, referenceBackend, setIsa, setThreads } from '../src/backend/index.js';
import { type Bf16GemmKernel, gemmBf16Dot, gemmBf16Kernel } from '../src/backend/cpu/gemm.js';
import type { LinearEpilogue, PackedWeight } from '../src/backend/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { expectClose, randomF32, randomFloat } from './helpers/harness.js';

const cpu = cpuBackend();
const ref = referenceBackend();
const info = isaInfo();
const startIsa = info.active as Isa;
const startThreads = getThreads();
const startKernel = gemmBf16Kernel();
const KERNELS: Bf16GemmKernel[] = ['amx-emulated', ...(info.amx ? ['amx' as const] : [])];

afterAll(() => {
  setIsa(startIsa);
  setThreads(startThreads);
  gemmBf16Kernel(startKernel);
});

/** Runs fn with each AMX kernel set (the real one at the best ISA, the emulated one at the best
 *  ISA and at scalar: it needs no SIMD), at 1-3 threads, restoring the setting after. */
function eachKernel(fn: (label: string) => void, threads: number[] = [1, 2, 3]): void {
  try {
    for (const kernel of KERNELS) {
      for (const isa of kernel === 'amx' ? [startIsa] : [startIsa, 'scalar' as Isa]) {
        expect(setIsa(isa)).toBe(true);
        gemmBf16Kernel(kernel);
        for (const t of threads) {
          setThreads(t);
          fn(`${kernel} ${isa} ${t}t`);
        }
      }
    }
  } finally {
    setIsa(startIsa);
    setThreads(startThreads);
    gemmBf16Kernel(startKernel);
  }
}

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

// [m, k, n]: m across the 16-row tile halves and 32-row blocks (1, 15-17, 31-33, 47, 65, 100),
// k below, at and across the 32 steps of a tile instruction (odd: a zero pad), beyond the other
// kernels' k block (4096), n with panel tails.
const SHAPES: [number, number, number][] = [
  [1, 1, 1], [2, 3, 17], [3, 31, 31], [7, 32, 33], [15, 33, 70], [16, 64, 32], [17, 100, 3], [31, 95, 65],
  [32, 300, 33], [33, 257, 40], [47, 129, 97], [65, 100, 257], [100, 40, 50], [5, 4133, 33], [33, 4099, 17],
];
let seed = 31000;

describe('the AMX kernel (bf16 weights, bf16 mode)', () => {
  it('is usable where TIERLM_REQUIRE_AMX says it must be', () => {
    if (process.env.TIERLM_REQUIRE_AMX === '1') expect(info.amx, `AMX features: ${JSON.stringify(info.features)}`).toBe(true);
    expect(typeof info.amx).toBe('boolean');
  });

  it('matches the reference, with and without bias, synchronously and not', async () => {
    for (const [m, k, n] of SHAPES) {
      const x = randomF32([m, k], seed++);
      const w = randomFloat('bf16', [n, k], seed++);
      const bias = randomF32([n], seed++);
      const refW = ref.packWeight(w, 'bf16');
      const want = ref.matmul(x, refW, null).data, wantBias = ref.matmul(x, refW, bias).data;
      const packed = cpu.packWeight(w, 'bf16');
      const pending: Promise<void>[] = [];
      eachKernel((label) => {
        const what = `${label} m=${m} k=${k} n=${n}`;
        expectClose(cpu.matmul(x, packed, null).data, want, 1e-5, what);
        expectClose(cpu.matmul(x, packed, bias).data, wantBias, 1e-5, `${what} +bias`);
      }, [1, 2]);
      gemmBf16Kernel(KERNELS[KERNELS.length - 1]!);
      pending.push(cpu.matmulAsync(x, packed, bias).then((y) => expectClose(y.data, wantBias, 1e-5, `async m=${m} k=${k} n=${n}`)));
      await Promise.all(pending);
      gemmBf16Kernel(startKernel);
    }
  });

  it('gives exact sums exactly: small integers, where no sum rounds (a misplaced element shows)', () => {
    for (const [m, k, n] of SHAPES.filter(([, k]) => k <= 300)) {
      const int = (len: number, s: number) => Float32Array.from({ length: len }, (_, i) => ((i * 7 + s * 13) % 17) - 8);
      const x = new Tensor('f32', [m, k], int(m * k, seed++));
      const w = new Tensor('f32', [n, k], int(n * k, seed++));
      const want = new Float32Array(m * n);
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
        let s = 0;
        for (let kk = 0; kk < k; kk++) s += x.data[i * k + kk]! * w.data[j * k + kk]!;
        want[i * n + j] = s;
      }
      const packed = cpu.packWeight(w, 'bf16');
      eachKernel((label) => {
        const got = cpu.matmul(x, packed, null).data;
        const bad = got.findIndex((v, i) => v !== want[i]);
        expect(bad, `${label} m=${m} k=${k} n=${n}: y[${Math.floor(bad / n)}, ${bad % n}] = ${got[bad]}, want ${want[bad]}`).toBe(-1);
      }, [1, 3]);
    }
  });

  it('batched rows equal unbatched rows, and every thread count the same, bit for bit', () => {
    for (const [m, k, n] of [[37, 300, 70], [33, 4500, 33], [16, 95, 70], [70, 64, 40]] as const) {
      const x = randomF32([m, k], seed++);
      const w = cpu.packWeight(randomFloat('bf16', [n, k], seed++), 'bf16');
      const bias = randomF32([n], seed++);
      let first: Float32Array | null = null;
      eachKernel((label) => {
        const all = cpu.matmul(x, w, bias).data;
        if (label.endsWith('1t')) first = all;
        else expect(same(all, first!), `${label} k=${k}: equals 1 thread`).toBe(true);
        for (const i of [0, 1, 15, 16, 17, 31, 32, m - 1]) {
          if (i >= m) continue;
          const one = cpu.matmul(new Tensor('f32', [1, k], x.data.slice(i * k, (i + 1) * k)), w, bias).data;
          expect(same(one, all.subarray(i * n, (i + 1) * n)), `${label} k=${k} row ${i}`).toBe(true);
        }
      });
    }
  });

  it('rounds x to bf16 as the reference does, taking denormals as zero as vdpbf16ps does', () => {
    for (const k of [37, 16, 1, 65]) {
      const m = 5;
      const ties = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 5 * 2 ** -8), 2 ** -126 * 1.5, 1e-40, -1e-40, -0, 0, 65535.5, 3.3e38];
      const x = randomF32([m, k], seed++, 4);
      for (let i = 0; i < x.size; i += 3) x.data[i] = ties[(i / 3) % ties.length]!;
      x.data[k] = Infinity;  // right after row 0: a kernel that read on would poison row 0's pad
      const eye = Tensor.f32([k, k], Float32Array.from({ length: k * k }, (_, i) => (i % (k + 1) === 0 ? 1 : 0)));
      const want = ref.matmul(x, ref.packWeight(eye, 'bf16'), null).data;
      const packed = cpu.packWeight(eye, 'bf16');
      const flushed = (v: number) => Math.abs(v) < 2 ** -126 ? 0 : v;
      eachKernel((label) => {
        const got = cpu.matmul(x, packed, null).data;
        const diff = got.findIndex((v, i) => !Object.is(v, flushed(want[i]!)) && !(v === 0 && flushed(want[i]!) === 0));
        expect(diff, `${label} k=${k}: element ${diff} got ${got[diff]} want ${want[diff]}`).toBe(-1);
      }, [1]);
    }
  });

  it('NaN and infinities in x reach y as in the reference; other rows stay finite', () => {
    for (const [m, k, n] of [[3, 67, 37], [17, 260, 33], [33, 40, 40]] as [number, number, number][]) {
      const x = randomF32([m, k], m);
      x.data[3] = NaN;
      x.data[k + 5] = Infinity;
      x.data[2 * k + 7] = -Infinity;
      x.data[2 * k + 9] = Infinity;
      const w = randomFloat('bf16', [n, k], m + 1);
      const want = ref.matmul(x, ref.packWeight(w, 'bf16')).data;
      const packed = cpu.packWeight(w, 'bf16');
      eachKernel((label) => {
        const got = cpu.matmul(x, packed).data;
        for (let i = 0; i < got.length; i++) {
          const [a, e] = [got[i]!, want[i]!];
          const ok = Number.isNaN(e) ? Number.isNaN(a) : Number.isFinite(e) ? Number.isFinite(a) : a === e;
          if (!ok) throw new Error(`${label} m=${m}: y[${Math.floor(i / n)}, ${i % n}] is ${a}, the reference's ${e}`);
        }
      }, [2]);
    }
  });

  it('the fused epilogue equals matmul then the separate ops, bit for bit', () => {
    for (const [m, k, n] of [[5, 129, 33], [33, 70, 40], [17, 300, 65]] as const) {
      const x = randomF32([m, k], seed++);
      const bias = randomF32([n], seed++);
      const residual = randomF32([m, n], seed++);
      const w: PackedWeight = cpu.packWeight(randomFloat('bf16', [n, k], seed++), 'bf16');
      eachKernel((label) => {
        for (const activation of ['relu', 'gelu', undefined] as LinearEpilogue['activation'][]) {
          const y0 = cpu.matmul(x, w, bias);
          if (activation === 'relu') cpu.relu(y0, y0);
          else if (activation) cpu.gelu(y0, false, y0);
          const r0 = new Tensor('f32', residual.shape, residual.data.slice());
          cpu.add(r0, y0, r0);
          const r = new Tensor('f32', residual.shape, residual.data.slice());
          const y = cpu.matmul(x, w, bias, undefined, { activation, addTo: r });
          expect(same(y.data, y0.data), `${label} ${activation ?? 'none'}`).toBe(true);
          expect(same(r.data, r0.data), `${label} ${activation ?? 'none'} (residual)`).toBe(true);
        }
      }, [1, 2]);
    }
  });

  it('training products: dW += dYᵀ·X and dX = dY·W match the reference', () => {
    for (const [m, n, k] of [[1, 1, 1], [7, 33, 65], [17, 100, 3], [65, 40, 257], [130, 70, 33]] as const) {
      const dy = randomF32([m, n], seed++), x = randomF32([m, k], seed++), dw0 = randomF32([n, k], seed++);
      const want = new Tensor('f32', dw0.shape, dw0.data.slice());
      ref.train.linearGradWeight(dy, x, want, 'bf16');
      const w = randomFloat('bf16', [n, k], seed++);
      const wantDx = ref.matmul(dy, ref.packWeightT(w, 'bf16')).data;
      const wt = cpu.packWeightT(w, 'bf16');
      eachKernel((label) => {
        const got = new Tensor('f32', dw0.shape, dw0.data.slice());
        cpu.train.linearGradWeight(dy, x, got, 'bf16');
        expectClose(got.data, want.data, 2e-5, `${label} dW m=${m} n=${n} k=${k}`);
        expectClose(cpu.matmul(dy, wt).data, wantDx, 2e-5, `${label} dX m=${m} n=${n} k=${k}`);
      }, [1, 2]);
    }
  });

  it('fp32 mode and quantized weights are untouched by the setting', () => {
    // (in bf16 mode every float weight is packed as bf16, so those take the AMX kernel)
    const x = randomF32([20, 70], seed++);
    const cases: [PackedWeight, string][] = [
      ...(['f32', 'f16', 'bf16'] as const).map((f): [PackedWeight, string] => [cpu.packWeight(randomFloat(f, [33, 70], seed++), 'fp32'), `${f} fp32`]),
      ...(['q4', 'q8'] as const).map((q): [PackedWeight, string] => [cpu.packWeight(randomF32([33, 70], seed++), 'bf16', 'w', { quantize: q }), `${q} bf16`]),
    ];
    for (const [w, what] of cases) {
      gemmBf16Kernel('fma');
      const want = cpu.matmul(x, w).data;
      gemmBf16Kernel('amx-emulated');
      expect(same(cpu.matmul(x, w).data, want), what).toBe(true);
    }
    gemmBf16Kernel(startKernel);
  });

  it('the setting takes kernel names; unknown ones, and dot or amx where they cannot run, are refused', () => {
    expect(gemmBf16Kernel('amx-emulated')).toBe('amx-emulated');
    expect(gemmBf16Kernel()).toBe('amx-emulated');
    // (dot where the CPU lacks AVX512_BF16 would read back 'dot' while the FMA kernel computed)
    const dot = info.features.avx512bf16;
    if (dot) expect(gemmBf16Kernel('dot')).toBe('dot');
    else {
      expect(() => gemmBf16Kernel('dot')).toThrow(/'dot' \(vdpbf16ps\) needs AVX512_BF16, which this CPU lacks/);
      expect(gemmBf16Kernel()).toBe('amx-emulated');
      expect(gemmBf16Dot(true), 'the older switch: left as it was, and says so').toBe(false);
      expect(gemmBf16Kernel()).toBe('amx-emulated');
    }
    const now = gemmBf16Kernel();
    expect(() => gemmBf16Kernel('vnni' as Bf16GemmKernel)).toThrow(/unknown kernel 'vnni' \(fma, dot, amx, amx-emulated\)/);
    expect(gemmBf16Kernel()).toBe(now);
    if (info.amx) expect(gemmBf16Kernel('amx')).toBe('amx');
    else {
      expect(() => gemmBf16Kernel('amx')).toThrow(/'amx' needs AMX-BF16 tiles/);
      expect(gemmBf16Kernel()).toBe(now);
    }
    gemmBf16Kernel(startKernel);
  });

  it.skipIf(!info.amx)('real AMX at a lowered ISA falls back to vdpbf16ps or FMA, bit for bit', () => {
    const x = randomF32([20, 70], seed++);
    const w = cpu.packWeight(randomFloat('bf16', [33, 70], seed++), 'bf16');
    try {
      for (const [isa, as] of [['avx512', 'fma'], ['avx2', 'fma']] as const) {
        setIsa(isa);
        gemmBf16Kernel(as);
        const want = cpu.matmul(x, w).data;
        gemmBf16Kernel('amx');
        expect(same(cpu.matmul(x, w).data, want), isa).toBe(true);
      }
    } finally {
      setIsa(startIsa);
      gemmBf16Kernel(startKernel);
    }
  });
});
