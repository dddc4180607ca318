// AdamW and the sum of squares: native (every ISA level, 1 and 2 threads) against the reference,
// and several steps against the float64 reference of PyTorch's formula.
import { describe, expect, it } from 'vitest';
import type { AdamWHyper } from '../src/backend/kernels-train.js';
import { Tensor } from '../src/tensor/tensor.js';
import { fromFloat32 } from '../src/tensor/dtype.js';
import { referenceKernels } from '../src/backend/reference/index.js';
import { AdamW } from '../src/optim/adamw.js';
import { allocParamState, stateBytes } from '../src/optim/state.js';
import { cpu, expectClose, randomF32, ref } from './helpers/harness.js';
import { atEveryIsa, restoreSettingsAfterAll } from './helpers/isa.js';

restoreSettingsAfterAll();
const C = cpu(), R = ref();
let seed = 1300;
const HYPER: AdamWHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, gradScale: 0.7, step: 1 };
const copy = (t: Tensor<'f32'>) => new Tensor('f32', t.shape, t.data.slice());

function state(n: number) {
  const v = randomF32([n], seed++, 1e-3);
  for (let i = 0; i < n; i++) v.data[i] = Math.abs(v.data[i]!);
  return { master: randomF32([n], seed++), m: randomF32([n], seed++, 1e-2), v };
}

describe('AdamW', () => {
  for (const gradDtype of ['f32', 'bf16'] as const) {
    it(`one step, ${gradDtype} gradients, with and without the bf16 parameter copy`, () => {
      for (const n of [1, 15, 17, 1000, 65536 * 2 + 77]) {
        const g32 = randomF32([n], seed++, 0.1);
        const grad = gradDtype === 'f32' ? g32 : new Tensor('bf16', [n], fromFloat32('bf16', g32.data));
        const s0 = state(n), hyper = { ...HYPER, step: 3 };
        const want = { master: copy(s0.master), m: copy(s0.m), v: copy(s0.v) };
        const wantBf16 = Tensor.zeros('bf16', [n]);
        R.train.adamw(grad, want.master, want.m, want.v, wantBf16, hyper);
        atEveryIsa((what) => {
          for (const withCopy of [false, true]) {
            const got = { master: copy(s0.master), m: copy(s0.m), v: copy(s0.v) };
            const bf16 = withCopy ? Tensor.zeros('bf16', [n]) : null;
            C.train.adamw(grad, got.master, got.m, got.v, bf16, hyper);
            const at = `${what} n=${n}`;
            expectClose(got.m.data, want.m.data, 1e-6, `${at} m`);
            expectClose(got.v.data, want.v.data, 1e-6, `${at} v`);
            expectClose(got.master.data, want.master.data, 1e-6, `${at} master`);
            if (bf16) {
              let off = 0;  // the copy is the master rounded: it may differ by one bf16 ulp where the masters differ
              for (let i = 0; i < n; i++) off = Math.max(off, Math.abs(bf16.data[i]! - wantBf16.data[i]!));
              expect(off, `${at} bf16 copy`).toBeLessThanOrEqual(1);
            }
          }
        });
      }
    });
  }

  it('five steps with clipping follow the float64 reference of PyTorch\'s formula', () => {
    const n = 4099;
    const s0 = state(n);
    const f64 = { master: Float64Array.from(s0.master.data), m: Float64Array.from(s0.m.data), v: Float64Array.from(s0.v.data) };
    const got = { master: copy(s0.master), m: copy(s0.m), v: copy(s0.v) };
    for (let step = 1; step <= 5; step++) {
      const grad = randomF32([n], seed++, 0.5);
      const norm = Math.sqrt(C.train.sumSquares(grad)), clip = Math.min(1, 1 / (norm + 1e-6));
      const hyper = { ...HYPER, gradScale: clip, step };
      referenceKernels.adamw(Float64Array.from(grad.data), 'f32', f64.master, f64.m, f64.v, null, hyper);
      C.train.adamw(grad, got.master, got.m, got.v, null, hyper);
    }
    // each update (after − before) within 1e-5 relative (Frobenius) of the float64 one
    let diff = 0, size = 0;
    for (let i = 0; i < n; i++) {
      const want = f64.master[i]! - s0.master.data[i]!, have = got.master.data[i]! - s0.master.data[i]!;
      diff += (have - want) ** 2;
      size += want ** 2;
    }
    expect(Math.sqrt(diff / size)).toBeLessThan(1e-4);
    expectClose(got.m.data, f64.m, 1e-6, 'm');
    expectClose(got.v.data, f64.v, 1e-6, 'v');
  });

  it('adamwAsync gives the synchronous result bit for bit', async () => {
    const n = 70_001, grad = randomF32([n], seed++, 0.1), s0 = state(n), hyper = { ...HYPER, step: 2 };
    const a = { master: copy(s0.master), m: copy(s0.m), v: copy(s0.v) }, b = { master: copy(s0.master), m: copy(s0.m), v: copy(s0.v) };
    const pa = Tensor.zeros('bf16', [n]), pb = Tensor.zeros('bf16', [n]);
    C.train.adamw(grad, a.master, a.m, a.v, pa, hyper);
    await C.train.adamwAsync(grad, b.master, b.m, b.v, pb, hyper);
    for (const key of ['master', 'm', 'v'] as const) expect(Buffer.compare(a[key].bytes, b[key].bytes), key).toBe(0);
    expect(Buffer.compare(pa.bytes, pb.bytes)).toBe(0);
    await expect(C.train.adamwAsync(grad, b.master, b.m, randomF32([3], 1), null, hyper)).rejects.toThrow(/v has 3 elements/);
  });

  it('rejects bad arguments', () => {
    const s = state(4), g = randomF32([4], 1);
    expect(() => C.train.adamw(g, s.master, randomF32([3], 2), s.v, null, HYPER)).toThrow(/m has 3 elements, expected 4/);
    expect(() => C.train.adamw(g, s.master, s.m, s.v, null, { ...HYPER, beta2: 1 })).toThrow(/beta2 must be in \[0, 1\)/);
    expect(() => C.train.adamw(g, s.master, s.m, s.v, null, { ...HYPER, step: 0 })).toThrow(/step must be an integer >= 1/);
    expect(() => C.train.adamw(g, s.master, s.m, s.v, Tensor.zeros('f16', [4]) as never, HYPER)).toThrow(/paramBf16 must be a bf16 Tensor/);
    expect(() => C.train.adamw(Tensor.zeros('i32', [4]) as never, s.master, s.m, s.v, null, HYPER)).toThrow(/grad must be an f32 or bf16 Tensor/);
  });
});

describe('sum of squares', () => {
  it('matches the float64 sum for f32 and bf16, at any thread count', () => {
    for (const n of [0, 1, 17, 65536 * 3 + 5, 1_000_003]) {
      const x = randomF32([n], seed++, 3);
      const b = new Tensor('bf16', [n], fromFloat32('bf16', x.data));
      const want32 = R.train.sumSquares(x), want16 = R.train.sumSquares(b);
      const results: number[] = [];
      atEveryIsa((what) => {
        const got = C.train.sumSquares(x);
        expect(Math.abs(got - want32) / Math.max(want32, 1e-30), `${what} n=${n}`).toBeLessThan(1e-12);
        expect(Math.abs(C.train.sumSquares(b) - want16) / Math.max(want16, 1e-30), `${what} bf16 n=${n}`).toBeLessThan(1e-12);
        results.push(got);
      });
      expect(new Set(results.slice(0, 2)).size, 'same at 1 and 2 threads').toBe(1);
    }
  });
});

describe('AdamW over parameter states (src/optim)', () => {
  it('clips by the global norm and keeps the bf16 parameters the rounded masters', () => {
    expect(stateBytes(10, 'bf16')).toBe(180);
    expect(stateBytes(10, 'bf16', 'bf16')).toBe(160);
    expect(stateBytes(10, 'fp32')).toBe(160);
    for (const precision of ['fp32', 'bf16'] as const) {
      const params = [allocParamState('w', [3, 5], precision, randomF32([15], 1).data), allocParamState('b', [5], precision, randomF32([5], 2).data)];
      const ref64 = params.map((p) => ({ master: Float64Array.from(p.master.data), m: new Float64Array(p.master.size), v: new Float64Array(p.master.size) }));
      const opt = new AdamW(C, params, { lr: 1e-2, maxGradNorm: 0.5 });
      for (let step = 1; step <= 3; step++) {
        opt.zeroGrad();
        params.forEach((p, i) => (p.grad.data as Float32Array).set(randomF32([p.master.size], 10 * step + i).data));
        let ss = 0;
        for (const p of params) for (const g of p.grad.data as Float32Array) ss += g * g;
        const r = opt.update();
        expect(Math.abs(r.gradNorm - Math.sqrt(ss)) / Math.sqrt(ss)).toBeLessThan(1e-12);
        expect(r.clipCoef).toBeCloseTo(0.5 / (Math.sqrt(ss) + 1e-6), 12);
        params.forEach((p, i) => referenceKernels.adamw(Float64Array.from(p.grad.data as Float32Array), 'f32', ref64[i]!.master, ref64[i]!.m, ref64[i]!.v, null,
          { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, gradScale: r.clipCoef, step }));
      }
      params.forEach((p, i) => {
        expectClose(p.master.data, ref64[i]!.master, 1e-6, `${precision} ${p.name}`);
        if (precision === 'bf16') expect(Array.from(p.param.data)).toEqual(Array.from(fromFloat32('bf16', p.master.data)));
        else expect(p.param).toBe(p.master);
      });
    }
  });
});
