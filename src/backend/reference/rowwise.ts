// Reference row-wise ops in plain TypeScript, float64 throughout.
import { type FloatDType, toFloat32 } from '../../tensor/dtype.js';
import type { Kernels } from '../kernels.js';
import { type FloatArray, IGNORE_INDEX, type TrainKernels } from '../kernels-train.js';

/** erf to double precision (W. J. Cody's rational approximations, as in most libms). */
export function erf(x: number): number {
  const ax = Math.abs(x);
  let r: number;
  if (ax < 0.5) {
    const t = x * x;
    const p = [3.1611237438705655, 113.86415415105016, 377.485237685302, 3209.3775891384694, 0.18577770618460315];
    const q = [23.601290952344122, 244.02463793444417, 1282.6165260773723, 2844.236833439171];
    const num = ((((p[4]! * t + p[0]!) * t + p[1]!) * t + p[2]!) * t + p[3]!);
    const den = ((((t + q[0]!) * t + q[1]!) * t + q[2]!) * t + q[3]!);
    return (x * num) / den;
  }
  if (ax < 4) {
    const p = [0.5641884969886701, 8.883149794388377, 66.11919063714163, 298.6351381974001, 881.952221241769,
      1712.0476126340707, 2051.0783778260716, 1230.3393547979972, 2.1531153547440383e-8];
    const q = [15.744926110709835, 117.6939508913125, 537.1811018620099, 1621.3895745666903, 3290.799235733483,
      4362.619090143247, 3439.3676741437216, 1230.3393548037495];
    let num = p[8]! * ax;
    let den = ax;
    for (let i = 0; i < 7; i++) {
      num = (num + p[i]!) * ax;
      den = (den + q[i]!) * ax;
    }
    r = 1 - (Math.exp(-ax * ax) * (num + p[7]!)) / (den + q[7]!);
  } else {
    const p = [0.30532663496123236, 0.36034489994980445, 0.12578172611122926, 0.016083785148742275,
      6.587491615298378e-4, 0.016315387137302097];
    const q = [2.568520192289822, 1.8729528499234604, 0.5279051029514285, 0.06051834131244132, 0.0023352049762686918];
    const z = 1 / (ax * ax);
    let num = p[5]! * z;
    let den = z;
    for (let i = 0; i < 4; i++) {
      num = (num + p[i]!) * z;
      den = (den + q[i]!) * z;
    }
    let s = (z * (num + p[4]!)) / (den + q[4]!);
    s = (1 / Math.sqrt(Math.PI) - s) / ax;
    r = 1 - Math.exp(-ax * ax) * s;
  }
  return x < 0 ? -r : r;
}

function rowMax(x: Float32Array, o: number, cols: number): number {
  let m = -Infinity;
  for (let i = 0; i < cols; i++) m = Math.max(m, x[o + i]!);
  return m;
}

export const rowwiseReference: Partial<Kernels> = {
  embedding(table: Float32Array | Uint16Array, dtype: FloatDType, _vocab: number, dim: number, ids: Int32Array, out: Float32Array) {
    for (let i = 0; i < ids.length; i++) {
      const row = toFloat32(dtype, table.subarray(ids[i]! * dim, (ids[i]! + 1) * dim));
      out.set(row, i * dim);
    }
  },
  layerNorm(x, rows, cols, gamma, beta, eps, out) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let mean = 0;
      for (let i = 0; i < cols; i++) mean += x[o + i]!;
      mean /= cols;
      let v = 0;
      for (let i = 0; i < cols; i++) v += (x[o + i]! - mean) ** 2;
      const rstd = 1 / Math.sqrt(v / cols + eps);
      for (let i = 0; i < cols; i++) out[o + i] = (x[o + i]! - mean) * rstd * gamma[i]! + (beta ? beta[i]! : 0);
    }
  },
  rmsNorm(x, rows, cols, gamma, eps, out) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let ss = 0;
      for (let i = 0; i < cols; i++) ss += x[o + i]! ** 2;
      const rr = 1 / Math.sqrt(ss / cols + eps);
      for (let i = 0; i < cols; i++) out[o + i] = x[o + i]! * rr * gamma[i]!;
    }
  },
  relu(x, out) {
    for (let i = 0; i < x.length; i++) out[i] = Math.max(0, x[i]!);
  },
  gelu(x, out, approximate) {
    for (let i = 0; i < x.length; i++) {
      const v = x[i]!;
      out[i] = approximate
        ? 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)))
        : 0.5 * v * (1 + erf(v / Math.SQRT2));
    }
  },
  siluMul(gate, up, out) {
    for (let i = 0; i < gate.length; i++) {
      const g = gate[i]!;
      out[i] = (g / (1 + Math.exp(-g))) * up[i]!;
    }
  },
  add(a, b, out) {
    for (let i = 0; i < a.length; i++) out[i] = a[i]! + b[i]!;
  },
  softmax(x, rows, cols, out) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      const m = rowMax(x, o, cols);
      const e = new Float64Array(cols);
      let s = 0;
      for (let i = 0; i < cols; i++) s += e[i] = Math.exp(x[o + i]! - m);
      for (let i = 0; i < cols; i++) out[o + i] = e[i]! / s;
    }
  },
  logSoftmax(x, rows, cols, out) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      const m = rowMax(x, o, cols);
      let s = 0;
      for (let i = 0; i < cols; i++) s += Math.exp(x[o + i]! - m);
      const ls = Math.log(s);
      for (let i = 0; i < cols; i++) out[o + i] = x[o + i]! - m - ls;
    }
  },
  rope(x, t, heads, d, positions, invFreq, rotaryDim) {
    const half = rotaryDim / 2;
    for (let i = 0; i < t; i++) {
      for (let h = 0; h < heads; h++) {
        const o = (i * heads + h) * d;
        for (let j = 0; j < half; j++) {
          const ang = positions[i]! * invFreq[j]!;
          const c = Math.cos(ang), s = Math.sin(ang);
          const x1 = x[o + j]!, x2 = x[o + j + half]!;
          x[o + j] = x1 * c - x2 * s;
          x[o + j + half] = x2 * c + x1 * s;
        }
      }
    }
  },
};

/** dx (and dgamma, dbeta +=) of y = (x − mean)·rstd·gamma + beta; RMSNorm: mean = 0, no beta. */
function normBackward(x: FloatArray, dy: FloatArray, rows: number, cols: number, gamma: FloatArray, eps: number, rms: boolean,
  dx: FloatArray, dgamma: FloatArray, dbeta: FloatArray | null): void {
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let mean = 0;
    if (!rms) {
      for (let i = 0; i < cols; i++) mean += x[o + i]!;
      mean /= cols;
    }
    let v = 0;
    for (let i = 0; i < cols; i++) v += (x[o + i]! - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / cols + eps);
    // dx = rstd · (g − mean(g) − x̂·mean(g·x̂)), g = dy·gamma (RMSNorm: no mean(g) term)
    let sg = 0, sgx = 0;
    for (let i = 0; i < cols; i++) {
      const xh = (x[o + i]! - mean) * rstd, g = dy[o + i]! * gamma[i]!;
      sg += g;
      sgx += g * xh;
      dgamma[i] += dy[o + i]! * xh;
      if (dbeta) dbeta[i] += dy[o + i]!;
    }
    const mg = rms ? 0 : sg / cols, mgx = sgx / cols;
    for (let i = 0; i < cols; i++) {
      const xh = (x[o + i]! - mean) * rstd;
      dx[o + i] = rstd * (dy[o + i]! * gamma[i]! - mg - xh * mgx);
    }
  }
}

const sigmoid = (g: number) => 1 / (1 + Math.exp(-g));

/** The backward of the row-wise ops above and of the loss, in float64. */
export const rowwiseGradReference: Partial<TrainKernels> = {
  layerNormBackward(x, dy, rows, cols, gamma, eps, dx, dgamma, dbeta) {
    normBackward(x, dy, rows, cols, gamma, eps, false, dx, dgamma, dbeta);
  },
  rmsNormBackward(x, dy, rows, cols, gamma, eps, dx, dgamma) {
    normBackward(x, dy, rows, cols, gamma, eps, true, dx, dgamma, null);
  },
  reluBackward(x, dy, dx) {
    for (let i = 0; i < x.length; i++) dx[i] = x[i]! > 0 ? dy[i]! : 0;
  },
  geluBackward(x, dy, dx, approximate) {
    const k0 = Math.sqrt(2 / Math.PI), k1 = 0.044715;
    for (let i = 0; i < x.length; i++) {
      const v = x[i]!;
      let d: number;
      if (approximate) {
        const t = Math.tanh(k0 * (v + k1 * v ** 3));
        d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k0 * (1 + 3 * k1 * v * v);
      } else {
        d = 0.5 * (1 + erf(v / Math.SQRT2)) + (v * Math.exp(-0.5 * v * v)) / Math.sqrt(2 * Math.PI);
      }
      dx[i] = dy[i]! * d;
    }
  },
  siluMulBackward(gate, up, dy, dgate, dup) {
    for (let i = 0; i < gate.length; i++) {
      const g = gate[i]!, s = sigmoid(g);
      dgate[i] = dy[i]! * up[i]! * s * (1 + g * (1 - s));
      dup[i] = dy[i]! * g * s;
    }
  },
  embeddingBackward(dy, ids, _vocab, dim, dtable) {
    for (let i = 0; i < ids.length; i++) for (let c = 0; c < dim; c++) dtable[ids[i]! * dim + c] += dy[i * dim + c]!;
  },
  softmaxCrossEntropy(logits, rows, vocab, labels, scale) {
    let loss = 0, count = 0;
    for (let r = 0; r < rows; r++) {
      const o = r * vocab, label = labels[r]!;
      if (label === IGNORE_INDEX) {
        logits.fill(0, o, o + vocab);
        continue;
      }
      let m = -Infinity;
      for (let i = 0; i < vocab; i++) m = Math.max(m, logits[o + i]!);
      let s = 0;
      for (let i = 0; i < vocab; i++) s += Math.exp(logits[o + i]! - m);
      const lse = m + Math.log(s);
      loss += lse - logits[o + label]!;
      count++;
      for (let i = 0; i < vocab; i++) logits[o + i] = Math.exp(logits[o + i]! - lse) * scale;
      logits[o + label] -= scale;
    }
    return { loss, count };
  },
};
