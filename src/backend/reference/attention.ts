// Reference attention in plain TypeScript, float64 accumulation: scores, softmax and the weighted
// sum of values written out as in the definition.
import { f16ToF32, f32ToF16 } from '../../tensor/dtype.js';
import type { CacheDType, Kernels } from '../kernels.js';

/** out[0..d) = Σ_p softmax(scale·q·k_p) v_p over n positions read through kAt/vAt. */
function attend(q: Float32Array, qo: number, d: number, n: number, kAt: (p: number, c: number) => number,
  vAt: (p: number, c: number) => number, scale: number, out: Float32Array, oo: number): void {
  const s = new Float64Array(n);
  let m = -Infinity;
  for (let p = 0; p < n; p++) {
    let dot = 0;
    for (let c = 0; c < d; c++) dot += q[qo + c]! * kAt(p, c);
    s[p] = dot * scale;
    m = Math.max(m, s[p]!);
  }
  let sum = 0;
  for (let p = 0; p < n; p++) sum += s[p] = Math.exp(s[p]! - m);
  for (let c = 0; c < d; c++) {
    let a = 0;
    for (let p = 0; p < n; p++) a += s[p]! * vAt(p, c);
    out[oo + c] = a / sum;
  }
}

function reader(cache: Float32Array | Uint16Array, dtype: CacheDType): (i: number) => number {
  return dtype === 'f16' ? (i) => f16ToF32(cache[i]!) : (i) => cache[i]!;
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
  attentionDecode(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out) {
    const g = hq / hkv;
    const kr = reader(kCache, cacheDtype), vr = reader(vCache, cacheDtype);
    for (let bi = 0; bi < b; bi++) {
      for (let h = 0; h < hq; h++) {
        const base = ((bi * hkv + Math.floor(h / g)) * cap) * d;
        attend(q, (bi * hq + h) * d, d, lens[bi]!, (p, c) => kr(base + p * d + c), (p, c) => vr(base + p * d + c),
          scale, out, (bi * hq + h) * d);
      }
    }
  },
  async attentionDecodeAsync(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out) {
    attentionReference.attentionDecode!(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out);
  },
  cacheWrite(cache, cacheDtype, _b, hkv, cap, d, src, t, row, pos) {
    for (let i = 0; i < t; i++) {
      for (let h = 0; h < hkv; h++) {
        const o = ((row * hkv + h) * cap + pos + i) * d;
        for (let c = 0; c < d; c++) {
          const x = src[(i * hkv + h) * d + c]!;
          cache[o + c] = cacheDtype === 'f16' ? f32ToF16(x) : x;
        }
      }
    }
  },
};
