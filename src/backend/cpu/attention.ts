// Native attention kernels (native/kernels/attention*, native/napi/attention.cpp).
import type { Kernels } from '../kernels.js';
import { cachedFn, nativeFn } from './addon.js';

const fn = cachedFn;

export const attentionKernels: Partial<Kernels> = {
  attentionPrefill(q, k, v, t, hq, hkv, d, seqStarts, scale, out) {
    fn('attentionPrefill')(q, k, v, t, hq, hkv, d, seqStarts, scale, out, false);
  },
  async attentionPrefillAsync(q, k, v, t, hq, hkv, d, seqStarts, scale, out) {
    await (fn('attentionPrefill')(q, k, v, t, hq, hkv, d, seqStarts, scale, out, true) as Promise<void>);
  },
  attentionDecode(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, sparsity = 1) {
    fn('attentionDecode')(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, false, sparsity);
  },
  async attentionDecodeAsync(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, sparsity = 1) {
    await (fn('attentionDecode')(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, true, sparsity) as Promise<void>);
  },
  attentionCached(q, kCache, vCache, cacheDtype, t, hq, hkv, d, b, cap, rows, lens, scale, out, sparsity = 1, kNew, vNew) {
    fn('attentionCached')(q, kCache, vCache, cacheDtype, t, hq, hkv, d, b, cap, rows, lens, scale, out, false, sparsity, kNew, vNew);
  },
  cacheWrite(cache, cacheDtype, b, hkv, cap, d, src, t, rows, positions) {
    fn('cacheWrite')(cache, cacheDtype, b, hkv, cap, d, src, t, rows, positions);
  },
};

/** Decode attention's in-stream prefetch distance in bytes (native/kernels/attention.h,
 *  kAttnPrefetchDefault 8192; `TIERLM_ATTN_PREFETCH` at start-up). Pass a number to change it (0:
 *  the next-block prefetch only); returns the setting. Results never depend on it. */
export function attnPrefetch(bytes?: number): number {
  return nativeFn<(bytes?: number) => number>('attnPrefetch')(bytes);
}
