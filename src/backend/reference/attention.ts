// Reference attention in plain TypeScript, float64 accumulation: scores, softmax and the weighted
// sum of values written out as in the definition. q4 caches are quantized and dequantized record
// by record with the reference quantizer (reference/quant.ts), then read as float32.
import { f16ToF32, f32ToF16 } from '../../tensor/dtype.js';
import { type CacheArray, type CacheDType, type Kernels, Q4_CACHE_GROUP, q4RecordBytes } from '../kernels.js';
import { dequantize, quantize, representable } from './quant.js';
import type { FloatArray, TrainKernels } from '../kernels-train.js';

/** out[0..d) = Σ_p softmax(scale·q·k_p) v_p over n positions read through kAt/vAt. With sparsity
 *  F < 1 only the top max(1, ceil(F·(n−1))) scores of positions 0..n−2 (ties: lower position; a
 *  NaN above every number, as torch.topk ranks it) and position n−1 take part. */
function attend(q: Float32Array, qo: number, d: number, n: number, kAt: (p: number, c: number) => number,
  vAt: (p: number, c: number) => number, scale: number, out: Float32Array, oo: number, sparsity = 1): void {
  const s = new Float64Array(n);
  for (let p = 0; p < n; p++) {
    let dot = 0;
    for (let c = 0; c < d; c++) dot += q[qo + c]! * kAt(p, c);
    s[p] = dot * scale;
  }
  let kept: number[];
  if (sparsity >= 1) {
    kept = Array.from({ length: n }, (_, p) => p);
  } else {
    const older = n - 1;
    const k = Math.min(older, Math.max(1, Math.ceil(sparsity * older)));
    const nan = (p: number) => Number.isNaN(s[p]!);
    const order = Array.from({ length: older }, (_, p) => p)
      .sort((a, b) => (nan(a) || nan(b) ? Number(nan(b)) - Number(nan(a)) : s[b]! - s[a]!) || a - b);
    kept = order.slice(0, k).sort((a, b) => a - b);
    kept.push(n - 1);
  }
  let m = -Infinity;
  for (const p of kept) m = Math.max(m, s[p]!);
  let sum = 0;
  const w = new Float64Array(n);
  for (const p of kept) sum += w[p] = Math.exp(s[p]! - m);
  for (let c = 0; c < d; c++) {
    let a = 0;
    for (const p of kept) a += w[p]! * vAt(p, c);
    out[oo + c] = a / sum;
  }
}

/** The RangeError a cache write of `dtype` gives for values it cannot store (as the native one,
 *  naming the element of `src`). */
function checkStorable(dtype: CacheDType, src: Float32Array, what: string): void {
  if (dtype === 'q4') {
    const bad = src.findIndex((x) => !representable(x));
    if (bad >= 0) throw new RangeError(`${what}element ${bad} (${src[bad]}) cannot be quantized: values must be finite with |x| <= 65504`);
  } else if (dtype === 'f16') {
    // f16 rounds |x| >= 65520 to infinity (below, to at most 65504).
    const bad = src.findIndex((x) => Math.abs(x) >= 65520 && Number.isFinite(x));
    if (bad >= 0) throw new RangeError(`${what}element ${bad} (${src[bad]}) is beyond an f16 cache's range (it would be stored as infinity): keep the cache in f32 (cacheDtype "f32")`);
  }
}

/** Features of record `r` of a q4 cache, dequantized. */
export function q4ReadRecord(cache: Uint8Array, r: number, d: number, out: Float32Array, oo = 0): void {
  const rb = q4RecordBytes(d), cb = Math.ceil(d / 2), ng = Math.ceil(d / Q4_CACHE_GROUP);
  const rec = cache.subarray(r * rb, (r + 1) * rb);
  const params = new Uint16Array(ng * 2);
  for (let i = 0; i < ng * 2; i++) params[i] = rec[cb + 2 * i]! | (rec[cb + 2 * i + 1]! << 8);
  dequantize(rec.subarray(0, cb), params, 1, d, 4, Q4_CACHE_GROUP, out.subarray(oo, oo + d));
}

/** Quantizes x[xo..xo+d) into record `r` of a q4 cache. */
export function q4WriteRecord(cache: Uint8Array, r: number, d: number, x: Float32Array, xo = 0): void {
  const rb = q4RecordBytes(d), cb = Math.ceil(d / 2), ng = Math.ceil(d / Q4_CACHE_GROUP);
  const rec = cache.subarray(r * rb, (r + 1) * rb);
  const params = new Uint16Array(ng * 2);
  quantize(x.subarray(xo, xo + d), 1, d, 4, Q4_CACHE_GROUP, rec.subarray(0, cb), params);
  for (let i = 0; i < ng * 2; i++) {
    rec[cb + 2 * i] = params[i]! & 0xff;
    rec[cb + 2 * i + 1] = params[i]! >> 8;
  }
}

/** The cache widened to float32, [.., d] per position (q4 records dequantized). */
function widen(cache: CacheArray, dtype: CacheDType, d: number): Float32Array {
  if (dtype === 'f32') return cache as Float32Array;
  if (dtype === 'f16') return Float32Array.from(cache as Uint16Array, (h) => f16ToF32(h));
  const n = cache.length / q4RecordBytes(d);
  const out = new Float32Array(n * d);
  for (let r = 0; r < n; r++) q4ReadRecord(cache as Uint8Array, r, d, out, r * d);
  return out;
}

export const attentionReference: Partial<Kernels> = {
  attentionPrefill(q, k, v, _t, hq, hkv, d, seqStarts, scale, out) {
    const g = hq / hkv;
    for (let s = 0; s + 1 < seqStarts.length; s++) {
      const st = seqStarts[s]!;
      for (let i = st; i < seqStarts[s + 1]!; i++) {
        for (let h = 0; h < hq; h++) {
          const kh = Math.floor(h / g);
          attend(q, (i * hq + h) * d, d, i - st + 1, (p, c) => k[((st + p) * hkv + kh) * d + c]!,
            (p, c) => v[((st + p) * hkv + kh) * d + c]!, scale, out, (i * hq + h) * d);
        }
      }
    }
  },
  async attentionPrefillAsync(q, k, v, t, hq, hkv, d, seqStarts, scale, out) {
    attentionReference.attentionPrefill!(q, k, v, t, hq, hkv, d, seqStarts, scale, out);
  },
  attentionDecode(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, sparsity = 1) {
    const g = hq / hkv;
    const kf = widen(kCache, cacheDtype, d), vf = widen(vCache, cacheDtype, d);
    for (let bi = 0; bi < b; bi++) {
      for (let h = 0; h < hq; h++) {
        const base = ((bi * hkv + Math.floor(h / g)) * cap) * d;
        attend(q, (bi * hq + h) * d, d, lens[bi]!, (p, c) => kf[base + p * d + c]!, (p, c) => vf[base + p * d + c]!,
          scale, out, (bi * hq + h) * d, sparsity);
      }
    }
  },
  async attentionDecodeAsync(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, sparsity = 1) {
    attentionReference.attentionDecode!(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, sparsity);
  },
  attentionCached(q, kCache, vCache, cacheDtype, t, hq, hkv, d, b, cap, rows, lens, scale, out, sparsity = 1, kNew, vNew) {
    if (kNew && vNew) {
      if (new Set(rows.subarray(0, t)).size < t) throw new RangeError('keys and values appended in the call need one token a row (rows repeat)');
      const positions = lens.map((n) => n - 1);
      // Both checked before either is written, as the native call does.
      for (const [name, x] of [['kNew', kNew], ['vNew', vNew]] as const) checkStorable(cacheDtype, x.subarray(0, t * hkv * d), `${name} `);
      attentionReference.cacheWrite!(kCache, cacheDtype, b, hkv, cap, d, kNew, t, rows, positions);
      attentionReference.cacheWrite!(vCache, cacheDtype, b, hkv, cap, d, vNew, t, rows, positions);
    }
    const g = hq / hkv;
    const kf = widen(kCache, cacheDtype, d), vf = widen(vCache, cacheDtype, d);
    for (let i = 0; i < t; i++) {
      for (let h = 0; h < hq; h++) {
        const base = ((rows[i]! * hkv + Math.floor(h / g)) * cap) * d;
        attend(q, (i * hq + h) * d, d, lens[i]!, (p, c) => kf[base + p * d + c]!, (p, c) => vf[base + p * d + c]!,
          scale, out, (i * hq + h) * d, sparsity);
      }
    }
  },
  cacheWrite(cache, cacheDtype, b, hkv, cap, d, src, t, rows, positions) {
    for (let i = 0; i < t; i++) {
      if (!(rows[i]! >= 0 && rows[i]! < b)) throw new RangeError(`rows[${i}] = ${rows[i]} is outside the cache's ${b} rows`);
      if (!(positions[i]! >= 0 && positions[i]! < cap)) throw new RangeError(`positions[${i}] = ${positions[i]} overruns the cache capacity ${cap}`);
    }
    checkStorable(cacheDtype, src.subarray(0, t * hkv * d), '');
    for (let i = 0; i < t; i++) {
      for (let h = 0; h < hkv; h++) {
        const o = (rows[i]! * hkv + h) * cap + positions[i]!;
        if (cacheDtype === 'q4') {
          q4WriteRecord(cache as Uint8Array, o, d, src, (i * hkv + h) * d);
          continue;
        }
        for (let c = 0; c < d; c++) {
          const x = src[(i * hkv + h) * d + c]!;
          cache[o * d + c] = cacheDtype === 'f16' ? f32ToF16(x) : x;
        }
      }
    }
  },
};

/** Calls fn(seqStart, i, h, kh) for every token i and query head h of a ragged batch. */
function eachRow(seqStarts: Int32Array, hq: number, hkv: number, fn: (st: number, i: number, h: number, kh: number) => void): void {
  const g = hq / hkv;
  for (let s = 0; s + 1 < seqStarts.length; s++) {
    for (let i = seqStarts[s]!; i < seqStarts[s + 1]!; i++) for (let h = 0; h < hq; h++) fn(seqStarts[s]!, i, h, Math.floor(h / g));
  }
}

/** Row i, head h: the causal scores scale·q·k_j (j = st..i) and their softmax, in float64. */
function rowSoftmax(q: FloatArray, k: FloatArray, hq: number, hkv: number, d: number, scale: number,
  st: number, i: number, h: number, kh: number): { p: Float64Array; lse: number } {
  const n = i - st + 1, s = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let dot = 0;
    for (let c = 0; c < d; c++) dot += q[(i * hq + h) * d + c]! * k[((st + j) * hkv + kh) * d + c]!;
    s[j] = dot * scale;
  }
  const m = Math.max(...s);
  let sum = 0;
  for (let j = 0; j < n; j++) sum += Math.exp(s[j]! - m);
  const lse = m + Math.log(sum);
  return { p: s.map((x) => Math.exp(x - lse)), lse };
}

/** Training attention as its definition: softmax rows formed in full, gradients by the chain rule
 *  (dP = dO·vᵀ, dS = P ∘ (dP − Σ P·dP), dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·dO). */
export const attentionGradReference: Partial<TrainKernels> = {
  attentionTrainForward(q, k, v, _t, hq, hkv, d, seqStarts, scale, out, lse) {
    eachRow(seqStarts, hq, hkv, (st, i, h, kh) => {
      const r = rowSoftmax(q, k, hq, hkv, d, scale, st, i, h, kh);
      lse[i * hq + h] = r.lse;
      for (let c = 0; c < d; c++) {
        let a = 0;
        for (let j = 0; j < r.p.length; j++) a += r.p[j]! * v[((st + j) * hkv + kh) * d + c]!;
        out[(i * hq + h) * d + c] = a;
      }
    });
  },
  attentionTrainBackward(q, k, v, _out, _lse, dout, t, hq, hkv, d, seqStarts, scale, dq, dk, dv) {
    const gk = new Float64Array(t * hkv * d), gv = new Float64Array(t * hkv * d);
    eachRow(seqStarts, hq, hkv, (st, i, h, kh) => {
      const { p } = rowSoftmax(q, k, hq, hkv, d, scale, st, i, h, kh);
      const go = (i * hq + h) * d;
      const dp = p.map((_, j) => {
        let a = 0;
        for (let c = 0; c < d; c++) a += dout[go + c]! * v[((st + j) * hkv + kh) * d + c]!;
        return a;
      });
      const pdp = p.reduce((a, pj, j) => a + pj * dp[j]!, 0);
      const gq = new Float64Array(d);
      for (let j = 0; j < p.length; j++) {
        const ds = p[j]! * (dp[j]! - pdp), kv = ((st + j) * hkv + kh) * d;
        for (let c = 0; c < d; c++) {
          gq[c] += scale * ds * k[kv + c]!;
          gk[kv + c] += scale * ds * q[go + c]!;
          gv[kv + c] += p[j]! * dout[go + c]!;
        }
      }
      dq.set(gq, go);
    });
    dk.set(gk);
    dv.set(gv);
  },
};
