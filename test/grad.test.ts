// Backward kernels of the linear layer, row-wise ops, embedding, RoPE and the loss: native (every
// ISA level, 1 and 2 threads) against the float64 reference, on odd sizes that hit every tail.
import { describe, expect, it } from 'vitest';
import type { ComputeMode } from '../src/backend/kernels.js';
import { Tensor } from '../src/tensor/tensor.js';
import { cpu, expectClose, expectSameValues, randomF32, randomFloat, ref, specialValues } from './helpers/harness.js';
import { ISAS, atEveryIsa, restoreSettingsAfterAll } from './helpers/isa.js';
import { gemmBf16Dot, gemmBf16Kernel } from '../src/backend/cpu/gemm.js';

restoreSettingsAfterAll();
const C = cpu(), R = ref();
let seed = 500;
const TOL = 2e-5;

const zeros = (shape: number[]) => Tensor.zeros('f32', shape);
const copy = (t: Tensor<'f32'>) => new Tensor('f32', t.shape, t.data.slice());

describe('linear layer gradients', () => {
  // [m, n, k]: tokens, outputs, inputs
  const SHAPES: [number, number, number][] = [[1, 1, 1], [3, 17, 31], [7, 33, 65], [17, 100, 3], [65, 40, 257], [130, 70, 33]];
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const mode of ['fp32', 'bf16'] as ComputeMode[]) {
      it(`dX = dY·W with ${dtype} weights, ${mode} mode`, () => {
        for (const [m, n, k] of SHAPES) {
          const w = randomFloat(dtype, [n, k], seed++), dy = randomF32([m, n], seed++);
          const want = R.matmul(dy, R.packWeightT(w, mode));
          const wt = C.packWeightT(w, mode);
          atEveryIsa((what) => expectClose(C.matmul(dy, wt).data, want.data, TOL, `${what} m=${m} n=${n} k=${k}`));
        }
      });
    }
  }
  for (const mode of ['fp32', 'bf16'] as ComputeMode[]) {
    it(`dW += dYᵀ·X accumulates, ${mode} mode`, () => {
      for (const [m, n, k] of SHAPES) {
        const dy = randomF32([m, n], seed++), x = randomF32([m, k], seed++), dw0 = randomF32([n, k], seed++);
        const want = copy(dw0);
        R.train.linearGradWeight(dy, x, want, mode);
        const check = (what: string) => {
          const got = copy(dw0);
          C.train.linearGradWeight(dy, x, got, mode);
          expectClose(got.data, want.data, TOL, `${what} m=${m} n=${n} k=${k}`);
        };
        atEveryIsa(check);
        if (mode === 'bf16' && ISAS.includes('avx512bf16')) {  // the vdpbf16ps path packs dYᵀ as bf16 pairs
          const was = gemmBf16Dot();
          gemmBf16Dot(true);
          check('avx512bf16 + vdpbf16ps');
          gemmBf16Dot(was);
        }
        if (mode === 'bf16') {  // the AMX kernel packs dYᵀ as bf16 rows (emulated where the CPU has no AMX)
          const was = gemmBf16Kernel();
          gemmBf16Kernel('amx-emulated');
          check('amx (emulated)');
          gemmBf16Kernel(was);
        }
      }
    });
  }
  it('dW asynchronously equals dW synchronously, bit for bit', async () => {
    const dy = randomF32([65, 70], seed++), x = randomF32([65, 33], seed++), a = randomF32([70, 33], seed++), b = copy(a);
    C.train.linearGradWeight(dy, x, a, 'bf16');
    await C.train.linearGradWeightAsync(dy, x, b, 'bf16');
    expect(Buffer.compare(a.bytes, b.bytes)).toBe(0);
  });
  it('dbias += column sums', () => {
    for (const [rows, cols] of [[1, 1], [5, 33], [300, 257]]) {
      const dy = randomF32([rows, cols], seed++), b0 = randomF32([cols], seed++);
      const want = copy(b0);
      R.train.biasGrad(dy, want);
      atEveryIsa((what) => {
        const got = copy(b0);
        C.train.biasGrad(dy, got);
        expectClose(got.data, want.data, 1e-6, what);
      });
    }
  });
  it('rejects mismatched shapes', () => {
    expect(() => C.train.linearGradWeight(randomF32([3, 4], 1), randomF32([2, 5], 2), zeros([4, 5]))).toThrow(/dy has 3 rows, x has 2/);
    expect(() => C.train.linearGradWeight(randomF32([3, 4], 1), randomF32([3, 5], 2), zeros([5, 4]))).toThrow(/dw has shape/);
    expect(() => C.train.biasGrad(randomF32([3, 4], 1), zeros([5]))).toThrow(/dbias has 5 elements/);
  });
});

describe('norm backward', () => {
  for (const rms of [false, true]) {
    it(rms ? 'RMSNorm' : 'LayerNorm', () => {
      // (cols <= 2 makes dx a cancellation of equal terms: all rounding)
      for (const [rows, cols] of [[1, 3], [3, 17], [7, 100], [40, 1031], [600, 64]]) {
        const x = randomF32([rows, cols], seed++, 2), dy = randomF32([rows, cols], seed++);
        const gamma = randomF32([cols], seed++), g0 = randomF32([cols], seed++), b0 = randomF32([cols], seed++);
        const run = (B: typeof C) => {
          const dg = copy(g0), db = copy(b0);
          const dx = rms ? B.train.rmsNormBackward(x, dy, gamma, 1e-5, dg) : B.train.layerNormBackward(x, dy, gamma, 1e-5, dg, db);
          return { dx, dg, db };
        };
        const want = run(R);
        atEveryIsa((what) => {
          const got = run(C);
          const at = `${what} ${rows}x${cols}`;
          expectClose(got.dx.data, want.dx.data, TOL, `${at} dx`);
          expectClose(got.dg.data, want.dg.data, TOL, `${at} dgamma`);
          expectClose(got.db.data, want.db.data, TOL, `${at} dbeta`);
        });
      }
    });
  }
});

describe('activation backward', () => {
  const N = [1, 17, 1031, 70001];
  it('relu, gelu (erf and tanh) and SwiGLU', () => {
    for (const n of N) {
      const x = randomF32([n], seed++, 4), up = randomF32([n], seed++, 2), dy = randomF32([n], seed++);
      const want = {
        relu: R.train.reluBackward(x, dy), gelu: R.train.geluBackward(x, dy, false), geluNew: R.train.geluBackward(x, dy, true),
        swiglu: R.train.siluMulBackward(x, up, dy),
      };
      atEveryIsa((what) => {
        expectClose(C.train.reluBackward(x, dy).data, want.relu.data, 0, `${what} relu n=${n}`);
        // float32 exp/erf approximations (~1e-7) inside a sum of terms of size ~1: a few 1e-6
        expectClose(C.train.geluBackward(x, dy, false).data, want.gelu.data, 5e-6, `${what} gelu n=${n}`);
        expectClose(C.train.geluBackward(x, dy, true).data, want.geluNew.data, 5e-6, `${what} gelu_new n=${n}`);
        const [dg, du] = C.train.siluMulBackward(x, up, dy);
        expectClose(dg.data, want.swiglu[0].data, 5e-6, `${what} dgate n=${n}`);
        expectClose(du.data, want.swiglu[1].data, 5e-6, `${what} dup n=${n}`);
      });
    }
  });
});

describe('activation backward far from zero', () => {
  it('saturates cleanly (no NaN or overflow at |x| up to 200)', () => {
    const x = Tensor.f32([9], [-200, -90, -40, -10, 0, 10, 40, 90, 200]), dy = Tensor.f32([9], Array(9).fill(1));
    atEveryIsa((what) => {
      for (const approximate of [false, true]) {
        expectClose(C.train.geluBackward(x, dy, approximate).data, R.train.geluBackward(x, dy, approximate).data, 1e-6, `${what} gelu ${approximate}`);
      }
      const [dg, du] = C.train.siluMulBackward(x, dy, dy), [rg, ru] = R.train.siluMulBackward(x, dy, dy);
      expectClose(dg.data, rg.data, 1e-6, `${what} dgate`);
      expectClose(du.data, ru.data, 1e-6, `${what} dup`);
    });
  });
});

describe('activation backward at NaN, ±inf, ±0 and huge inputs', () => {
  it('gives what the reference gives (0 where the derivative vanishes, NaN where it is NaN)', () => {
    for (const n of [19, 40001]) {
      const x = Tensor.f32([n], specialValues(n));
      const up = Tensor.f32([n], Array.from(x.data, (v, i) => (i % 3 ? 0.5 + (i % 5) : v)));
      // (dy at most 1: dy·g and dy·up, formed first as in every kernel, stay inside float at ±3e38)
      const dy = Tensor.f32([n], Array.from({ length: n }, (_, i) => 0.25 * (1 + (i % 4))));
      const [rg, ru] = R.train.siluMulBackward(x, up, dy);
      atEveryIsa((what) => {
        expectSameValues(C.train.reluBackward(x, dy).data, R.train.reluBackward(x, dy).data, 0, `${what} relu n=${n}`, x.data);
        for (const approximate of [false, true]) {
          expectSameValues(C.train.geluBackward(x, dy, approximate).data, R.train.geluBackward(x, dy, approximate).data, 5e-6, `${what} gelu ${approximate} n=${n}`, x.data);
        }
        const [dg, du] = C.train.siluMulBackward(x, up, dy);
        expectSameValues(dg.data, rg.data, 5e-6, `${what} dgate n=${n}`, x.data);
        expectSameValues(du.data, ru.data, 5e-6, `${what} dup n=${n}`, x.data);
      });
    }
  });
});

describe('embedding and RoPE backward', () => {
  it('scatter-adds rows by token id, repeated ids included', () => {
    for (const [n, vocab, dim] of [[1, 1, 1], [9, 5, 33], [300, 70, 257]]) {
      const ids = Tensor.i32(Array.from({ length: n }, (_, i) => (i * 7919 + 3) % vocab));
      const dy = randomF32([n, dim], seed++), t0 = randomF32([vocab, dim], seed++);
      const want = copy(t0);
      R.train.embeddingBackward(dy, ids, want);
      atEveryIsa((what) => {
        const got = copy(t0);
        C.train.embeddingBackward(dy, ids, got);
        expectClose(got.data, want.data, 1e-6, what);
      });
    }
    expect(() => C.train.embeddingBackward(zeros([1, 4]), Tensor.i32([5]), zeros([5, 4]))).toThrow(/ids\[0\] = 5 is outside/);
  });
  // theta 10000 over 16 of the 24 features (rotate-half, as ropeInvFreq builds it).
  const invFreq16 = Float64Array.from({ length: 8 }, (_, i) => 10000 ** (-(2 * i) / 16));
  it('is the rotation by −angle: backward after forward gives the input back', () => {
    const [t, heads, d] = [13, 3, 24];
    const x = randomF32([t, heads, d], seed++), pos = Tensor.i32(Array.from({ length: t }, (_, i) => 3 * i + 1));
    for (const B of [C, R]) {
      const y = B.rope(copy(x), pos, invFreq16);
      expectClose(B.train.ropeBackward(y, pos, invFreq16).data, x.data, 1e-6, B.name);
    }
    // and matches the reference's backward
    const dy = randomF32([t, heads, d], seed++);
    const want = R.train.ropeBackward(copy(dy), pos, invFreq16);
    atEveryIsa((what) => expectClose(C.train.ropeBackward(copy(dy), pos, invFreq16).data, want.data, 1e-6, what));
  });
});

describe('softmax cross-entropy', () => {
  it('loss, count and dlogits, with ignored rows', () => {
    for (const [rows, vocab] of [[1, 1], [3, 17], [9, 1031], [40, 5003]]) {
      const logits = randomF32([rows, vocab], seed++, 8);
      logits.data[0] = 60;  // a large logit: the loss must not lose it
      const labels = Tensor.i32(Array.from({ length: rows }, (_, i) => (i % 4 === 2 ? -100 : (i * 31) % vocab)));
      const want = copy(logits), got0 = R.train.softmaxCrossEntropy(want, labels, 0.25);
      atEveryIsa((what) => {
        const got = copy(logits);
        const r = C.train.softmaxCrossEntropy(got, labels, 0.25);
        expect(r.count, what).toBe(got0.count);
        expect(Math.abs(r.loss - got0.loss) / Math.max(1, Math.abs(got0.loss)), what).toBeLessThan(1e-6);
        expectClose(got.data, want.data, 1e-6, `${what} ${rows}x${vocab}`);
      });
    }
  });
  it('rejects labels outside the vocabulary', () => {
    expect(() => C.train.softmaxCrossEntropy(zeros([2, 5]), Tensor.i32([1, 5]), 1)).toThrow(/labels\[1\] = 5 is outside \[0, 5\) and is not -100/);
    expect(() => C.train.softmaxCrossEntropy(zeros([2, 5]), Tensor.i32([1]), 1)).toThrow(/labels has 1 elements/);
  });
  it('lmHeadLoss chunk by chunk equals the whole head at once', () => {
    const [rows, k, vocab] = [37, 33, 301];
    const hidden = randomF32([rows, k], seed++), w = randomF32([vocab, k], seed++, 0.5);
    const labels = Tensor.i32(Array.from({ length: rows }, (_, i) => (i < 5 ? -100 : (i * 13) % vocab)));
    const run = (B: typeof C, chunkRows: number) => {
      const dHidden = zeros([rows, k]), dWeight = zeros([vocab, k]);
      const r = B.train.lmHeadLoss({ hidden, head: B.packWeight(w, 'fp32'), headT: B.packWeightT(w, 'fp32'), labels, scale: 1 / 32,
        dHidden, dWeight, chunkRows });
      return { ...r, dHidden, dWeight };
    };
    const want = run(R, rows);
    for (const chunk of [1, 7, rows]) {
      const got = run(C, chunk);
      expect(got.count).toBe(32);
      expect(Math.abs(got.loss - want.loss) / want.loss).toBeLessThan(1e-6);
      expectClose(got.dHidden.data, want.dHidden.data, TOL, `dHidden chunk ${chunk}`);
      expectClose(got.dWeight.data, want.dWeight.data, TOL, `dWeight chunk ${chunk}`);
    }
  });
});

describe('the native boundary', () => {
  it('raw training kernels with short or mistyped buffers throw instead of touching memory', () => {
    const K = C.kernels, f = (n: number) => new Float32Array(n);
    expect(() => K.matmulGradWeight(f(6), f(6), 2, 3, 3, f(8), 'fp32')).toThrow(/dw holds 32 bytes, needs at least 36/);
    expect(() => K.matmulGradWeight(f(5), f(6), 2, 3, 3, f(9), 'fp32')).toThrow(/dy holds/);
    expect(() => K.matmulGradWeight(f(6), f(6), 2, 3, 3, f(9), 'fp16' as never)).toThrow(/mode must be 'fp32' or 'bf16'/);
    expect(() => K.matmulGradWeight(f(6), f(6), 2 ** 31, 2 ** 31, 2 ** 31, f(9), 'fp32')).toThrow(/size overflows/);
    expect(() => K.packWeightT(f(6), 'f32', 2, 3, 'f32', new Uint8Array(10))).toThrow(/dst holds/);
    expect(() => K.layerNormBackward(f(6), f(5), 2, 3, f(3), 1e-5, f(6), f(3), null)).toThrow(/dy holds/);
    expect(() => K.rmsNormBackward(f(6), f(6), 2, 3, f(3), 1e-5, f(6), f(2))).toThrow(/dgamma holds/);
    expect(() => K.geluBackward(f(6), f(6), new Float64Array(6), false)).toThrow(/dx must be a Float32Array/);
    expect(() => K.siluMulBackward(f(6), f(6), f(6), f(6), f(5))).toThrow(/dup holds/);
    expect(() => K.biasGrad(f(6), 2, 3, f(2))).toThrow(/dbias holds/);
    expect(() => K.embeddingBackward(f(6), Int32Array.from([0, 3]), 3, 3, f(9))).toThrow(/ids\[1\] = 3 is outside/);
    expect(() => K.softmaxCrossEntropy(f(6), 2, 3, Int32Array.from([0]), 1)).toThrow(/labels holds/);
    expect(() => K.attentionTrainForward(f(8), f(8), f(8), 2, 2, 1, 2, Int32Array.from([0, 2]), 1, f(8), f(3))).toThrow(/lse holds/);
    expect(() => K.attentionTrainForward(f(8), f(8), f(8), 2, 2, 1, 2, Int32Array.from([0, 1]), 1, f(8), f(4))).toThrow(/seqStarts must run from 0 to 2/);
    expect(() => K.attentionTrainBackward(f(8), f(4), f(4), f(8), f(4), f(8), 2, 2, 1, 2, Int32Array.from([0, 2]), 1, f(8), f(4), f(3)))
      .toThrow(/dv holds/);
    const h = { lr: 1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0, gradScale: 1, step: 1 };
    expect(() => K.adamw(f(4), 'f32', f(4), f(4), f(3), null, h)).toThrow(/v holds/);
    expect(() => K.adamw(new Uint16Array(4), 'bf16', f(4), f(4), f(4), new Uint16Array(3), h)).toThrow(/paramBf16 holds/);
    expect(() => K.adamw(f(4), 'f16' as never, f(4), f(4), f(4), null, h)).toThrow(/gradDtype must be 'f32' or 'bf16'/);
    expect(() => K.sumSquares(new Uint16Array(3), 'bf32' as never)).toThrow(/dtype must be 'f32' or 'bf16'/);
  });
});
