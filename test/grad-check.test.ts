// The reference backward of every training op against central finite differences, all in float64:
// the reference kernels run on Float64Array (forward references, typed for Float32Array, take a
// Float64Array through `f64` since they only index and store numbers).
import { describe, expect, it } from 'vitest';
import { referenceKernels as K } from '../src/backend/reference/index.js';
import { rng } from './helpers/random.js';

const f64 = (a: Float64Array) => a as unknown as Float32Array;
let seed = 77;

function random(n: number, scale = 1): Float64Array {
  const r = rng(seed++);
  return Float64Array.from({ length: n }, () => (r() * 2 - 1) * scale);
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};

/** Compares analytic[i] with (f(x + h·e_i) − f(x − h·e_i)) / 2h at up to 25 entries. */
function expectGradient(what: string, x: Float64Array, analytic: ArrayLike<number>, f: () => number): void {
  const h = 1e-6;
  let scale = 1e-3;
  for (let i = 0; i < analytic.length; i++) scale = Math.max(scale, Math.abs(analytic[i]!));
  const step = Math.max(1, Math.floor(x.length / 25));
  for (let i = 0; i < x.length; i += step) {
    const x0 = x[i]!;
    x[i] = x0 + h;
    const up = f();
    x[i] = x0 - h;
    const down = f();
    x[i] = x0;
    const numeric = (up - down) / (2 * h);
    expect(Math.abs(numeric - analytic[i]!) / scale, `${what}[${i}]: numeric ${numeric}, analytic ${analytic[i]}`).toBeLessThan(1e-6);
  }
}

describe('reference backward against finite differences (float64)', () => {
  it('linear layer: dX = dY·W, dW = dYᵀ·X, dbias', () => {
    const [m, n, k] = [5, 4, 3];
    const x = random(m * k), w = random(n * k), b = random(n), dy = random(m * n);
    const loss = () => {
      let s = 0;
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) s += dy[i * n + j]! * (dot(x.subarray(i * k, i * k + k), w.subarray(j * k, j * k + k)) + b[j]!);
      return s;
    };
    const dw = new Float64Array(n * k), db = new Float64Array(n);
    K.matmulGradWeight(f64(dy), f64(x), m, n, k, f64(dw), 'fp32');
    K.biasGrad(dy, m, n, db);
    const wt = new Uint8Array(n * k * 4);
    K.packWeightT(Float32Array.from(w), 'f32', n, k, 'f32', wt);
    const dx = new Float32Array(m * k);
    K.matmul(Float32Array.from(dy), m, n, wt, 'f32', k, null, dx, 'fp32');  // float32 packing: compare loosely below
    expectGradient('dW', w, dw, loss);
    expectGradient('dbias', b, db, loss);
    const dx64 = new Float64Array(m * k);
    for (let i = 0; i < m; i++) for (let c = 0; c < k; c++) for (let j = 0; j < n; j++) dx64[i * k + c] += dy[i * n + j]! * w[j * k + c]!;
    for (let i = 0; i < dx.length; i++) expect(Math.abs(dx[i]! - dx64[i]!)).toBeLessThan(1e-5);
    expectGradient('dX', x, dx64, loss);
  });

  for (const rms of [false, true]) {
    it(rms ? 'RMSNorm: dx, dgamma' : 'LayerNorm: dx, dgamma, dbeta', () => {
      const [rows, cols] = [3, 7];
      const x = random(rows * cols, 2), gamma = random(cols), beta = random(cols), dy = random(rows * cols);
      const y = new Float64Array(rows * cols);
      const loss = () => {
        if (rms) K.rmsNorm(f64(x), rows, cols, f64(gamma), 1e-5, f64(y));
        else K.layerNorm(f64(x), rows, cols, f64(gamma), f64(beta), 1e-5, f64(y));
        return dot(dy, y);
      };
      const dx = new Float64Array(rows * cols), dg = new Float64Array(cols), db = new Float64Array(cols);
      if (rms) K.rmsNormBackward(x, dy, rows, cols, gamma, 1e-5, dx, dg);
      else K.layerNormBackward(x, dy, rows, cols, gamma, 1e-5, dx, dg, db);
      expectGradient('dx', x, dx, loss);
      expectGradient('dgamma', gamma, dg, loss);
      if (!rms) expectGradient('dbeta', beta, db, loss);
    });
  }

  it('activations: relu, gelu (erf and tanh), SwiGLU', () => {
    const n = 40;
    const x = random(n, 3), up = random(n), dy = random(n);
    for (let i = 0; i < n; i++) if (Math.abs(x[i]!) < 1e-3) x[i] = 0.5;  // relu: away from the kink
    const y = new Float64Array(n), dx = new Float64Array(n), du = new Float64Array(n);
    K.reluBackward(x, dy, dx);
    expectGradient('relu', x, dx, () => (K.relu(f64(x), f64(y)), dot(dy, y)));
    for (const approximate of [false, true]) {
      K.geluBackward(x, dy, dx, approximate);
      expectGradient(approximate ? 'gelu_new' : 'gelu', x, dx, () => (K.gelu(f64(x), f64(y), approximate), dot(dy, y)));
    }
    K.siluMulBackward(x, up, dy, dx, du);
    const swiglu = () => (K.siluMul(f64(x), f64(up), f64(y)), dot(dy, y));
    expectGradient('dgate', x, dx, swiglu);
    expectGradient('dup', up, du, swiglu);
  });

  it('embedding (repeated ids) and RoPE', () => {
    const [n, vocab, dim] = [6, 4, 3];
    const ids = Int32Array.from([1, 3, 1, 0, 1, 2]), table = random(vocab * dim), dy = random(n * dim);
    const dt = new Float64Array(vocab * dim);
    K.embeddingBackward(dy, ids, vocab, dim, dt);
    expectGradient('dtable', table, dt, () => {
      let s = 0;
      for (let i = 0; i < n; i++) for (let c = 0; c < dim; c++) s += dy[i * dim + c]! * table[ids[i]! * dim + c]!;
      return s;
    });
    const [t, heads, d] = [3, 2, 6];
    const pos = Int32Array.from([0, 5, 9]), x = random(t * heads * d), g = random(t * heads * d);
    const invFreq4 = Float64Array.from([1, 10000 ** -0.5]);
    const dx = g.slice();
    K.rope(f64(dx), t, heads, d, Int32Array.from(pos, (p) => -p), invFreq4, 4);  // ropeBackward: the forward at −positions
    expectGradient('rope', x, dx, () => {
      const y = x.slice();
      K.rope(f64(y), t, heads, d, pos, invFreq4, 4);
      return dot(g, y);
    });
  });

  it('softmax cross-entropy with an ignored row', () => {
    const [rows, vocab] = [4, 9];
    const logits = random(rows * vocab, 3), labels = Int32Array.from([2, -100, 8, 0]);
    const d = logits.slice();
    const r = K.softmaxCrossEntropy(d, rows, vocab, labels, 1 / 3);
    expect(r.count).toBe(3);
    expectGradient('dlogits', logits, d, () => K.softmaxCrossEntropy(logits.slice(), rows, vocab, labels, 1).loss / 3);
  });

  it('causal attention with GQA over a ragged batch: dq, dk, dv', () => {
    const [hq, hkv, d] = [4, 2, 3];
    const starts = Int32Array.from([0, 3, 8]), t = 8;
    const q = random(t * hq * d), k = random(t * hkv * d), v = random(t * hkv * d), dout = random(t * hq * d);
    const out = new Float64Array(t * hq * d), lse = new Float64Array(t * hq);
    const loss = () => (K.attentionTrainForward(q, k, v, t, hq, hkv, d, starts, 0.7, out, lse), dot(dout, out));
    loss();
    const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
    K.attentionTrainBackward(q, k, v, out, lse, dout, t, hq, hkv, d, starts, 0.7, dq, dk, dv);
    expectGradient('dq', q, dq, loss);
    expectGradient('dk', k, dk, loss);
    expectGradient('dv', v, dv, loss);
  });
});
