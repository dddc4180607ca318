// Attention core, AVX2 + FMA + F16C. Compiled with AVX2 flags: internal helpers and intrinsics only.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include <type_traits>

#include "kernels/attention.h"

namespace tierlm {
namespace isa2 {
namespace {

template <bool F16>
inline __m256 load8(const void* base, int64_t idx) {
  if (F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(base) + idx)));
  return _mm256_loadu_ps(static_cast<const float*>(base) + idx);
}
template <bool F16>
inline float load1(const void* base, int64_t idx) {
  if (F16) return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<const uint16_t*>(base)[idx])));
  return static_cast<const float*>(base)[idx];
}

inline float hsum(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_shuffle_ps(a, a, 1));
  return _mm_cvtss_f32(a);
}

#include "kernels/exp_avx2.h"
#include "kernels/attention_prefetch.h"

// Lane i of the result = the sum of the lanes of a[i]. Every input goes through the same tree, so a
// sum does not depend on the slot it was computed in (a row's result is the same batched or alone).
inline __m256 reduce8(const __m256* a) {
  const __m256 x0 = _mm256_hadd_ps(a[0], a[1]), x1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 x2 = _mm256_hadd_ps(a[4], a[5]), x3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 y0 = _mm256_hadd_ps(x0, x1), y1 = _mm256_hadd_ps(x2, x3);
  // y0: a[0..3]'s sums of lanes 0-3, then of lanes 4-7; y1 the same for a[4..7]
  return _mm256_add_ps(_mm256_permute2f128_ps(y0, y1, 0x20), _mm256_permute2f128_ps(y0, y1, 0x31));
}

// Scores of heads [h0, h0+H) against positions [0, nb): s[h*B + j]. 8/H positions per pass, each
// key vector loaded once for the H heads; a d tail (d % 8) is added after the tree, in order.
template <bool F16, int H>
void scores(const float* q, int64_t d, const void* k, int64_t stride, int64_t nb, int64_t h0, float* s, PfStream* ps,
            int64_t p0) {
  constexpr int P = 8 / H;
  const int64_t B = kAttnBlock;
  const int64_t d8 = d & ~(int64_t)7;
  const float* qh = q + h0 * d;
  for (int64_t j0 = 0; j0 < nb; j0 += P) {
    int64_t ko[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; p++) ko[p] = (j0 + p < nb ? j0 + p : nb - 1) * stride;
    if (ps) ps->reach(p0, false, j0 + P - 1 < nb ? j0 + P - 1 : nb - 1);
    __m256 a[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < d8; c += 8) {
#pragma GCC unroll 8
      for (int p = 0; p < P; p++) {
        const __m256 kv = load8<F16>(k, ko[p] + c);
#pragma GCC unroll 8
        for (int h = 0; h < H; h++) a[p * H + h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + h * d + c), kv, a[p * H + h]);
      }
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, reduce8(a));
    const int np = nb - j0 < P ? (int)(nb - j0) : P;
    for (int p = 0; p < np; p++)
      for (int h = 0; h < H; h++) {
        float r = t[p * H + h];
        for (int64_t c = d8; c < d; c++) r += qh[h * d + c] * load1<F16>(k, ko[p] + c);
        s[(h0 + h) * B + j0 + p] = r;
      }
  }
}

// acc[h*d + c] = acc·alpha[h] + Σ_j s[h*B + j]·v_j[c] for heads [h0, h0+H): NV vectors of features
// at a time while they fill, then one, then a scalar tail; each loaded value vector serves the H heads.
template <bool F16, int H, int NV>
void accum(const float* s, const float* alpha, int64_t d, const void* v, int64_t stride, int64_t nb, int64_t h0,
           float* acc, PfStream* ps, int64_t p0) {
  const int64_t B = kAttnBlock;
  const float* sh = s + h0 * B;
  int64_t c = 0;
  auto chunk = [&](auto nv_tag) {
    constexpr int N = decltype(nv_tag)::value;
    __m256 x[H][N];
#pragma GCC unroll 8
    for (int h = 0; h < H; h++) {
      const __m256 al = _mm256_set1_ps(alpha[h0 + h]);
#pragma GCC unroll 8
      for (int u = 0; u < N; u++) x[h][u] = _mm256_mul_ps(_mm256_loadu_ps(acc + (h0 + h) * d + c + 8 * u), al);
    }
    for (int64_t j = 0; j < nb; j++) {
      // (every fourth row: the bookkeeping per row was a large share of a short row's work)
      if (ps && c == 0 && ((j & 3) == 3 || j == nb - 1)) ps->reach(p0, true, j);
      __m256 vv[N];
#pragma GCC unroll 8
      for (int u = 0; u < N; u++) vv[u] = load8<F16>(v, j * stride + c + 8 * u);
#pragma GCC unroll 8
      for (int h = 0; h < H; h++) {
        const __m256 w = _mm256_broadcast_ss(sh + h * B + j);
#pragma GCC unroll 8
        for (int u = 0; u < N; u++) x[h][u] = _mm256_fmadd_ps(w, vv[u], x[h][u]);
      }
    }
#pragma GCC unroll 8
    for (int h = 0; h < H; h++)
#pragma GCC unroll 8
      for (int u = 0; u < N; u++) _mm256_storeu_ps(acc + (h0 + h) * d + c + 8 * u, x[h][u]);
    c += 8 * N;
  };
  while (c + 8 * NV <= d) chunk(std::integral_constant<int, NV>());
  while (c + 8 <= d) chunk(std::integral_constant<int, 1>());
  for (; c < d; c++) {
    for (int h = 0; h < H; h++) {
      float x = acc[(h0 + h) * d + c] * alpha[h0 + h];
      for (int64_t j = 0; j < nb; j++) x += sh[h * B + j] * load1<F16>(v, j * stride + c);
      acc[(h0 + h) * d + c] = x;
    }
  }
}

inline int pow2_heads(int64_t n) { return n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1; }

// scores() for H (pow2_heads) heads.
template <bool F16>
void scores_heads(int H, const float* q, int64_t d, const void* k, int64_t stride, int64_t nb, int64_t h0, float* s,
                  PfStream* ps, int64_t p0) {
  switch (H) {
    case 8: scores<F16, 8>(q, d, k, stride, nb, h0, s, ps, p0); break;
    case 4: scores<F16, 4>(q, d, k, stride, nb, h0, s, ps, p0); break;
    case 2: scores<F16, 2>(q, d, k, stride, nb, h0, s, ps, p0); break;
    default: scores<F16, 1>(q, d, k, stride, nb, h0, s, ps, p0); break;
  }
}

// The AVX-512 core's structure (attention_avx512.cpp) with 8-lane vectors: scores of 8 (position,
// head) pairs reduced together, the value sum a (heads × features) register tile.
template <bool F16>
void core(const float* q, int64_t g, int64_t d, const void* k, const void* v, int64_t stride, int64_t n,
          float* scratch, float* m, float* l, float* acc) {
  const int64_t B = kAttnBlock;
  float* s = scratch;
  float* alpha = s + B * g;
  for (int64_t h = 0; h < g; h++) {
    m[h] = -INFINITY;
    l[h] = 0.f;
  }
  for (int64_t i = 0; i < g * d; i++) acc[i] = 0.f;
  // The in-stream prefetch, as the AVX-512 core's (attention_prefetch.h).
  const int64_t rb = stride * (F16 ? 2 : 4);
  const int64_t pf_bytes = attn_prefetch_bytes();
  PfStream stream(static_cast<const char*>(k), static_cast<const char*>(v), rb, n, (pf_bytes + rb - 1) / rb);
  PfStream* ps = pf_bytes > 0 && stride == d ? &stream : nullptr;
  for (int64_t p0 = 0; p0 < n; p0 += B) {
    const int64_t nb = n - p0 < B ? n - p0 : B;
    const void* kb = F16 ? (const void*)(static_cast<const uint16_t*>(k) + p0 * stride)
                         : (const void*)(static_cast<const float*>(k) + p0 * stride);
    const void* vb = F16 ? (const void*)(static_cast<const uint16_t*>(v) + p0 * stride)
                         : (const void*)(static_cast<const float*>(v) + p0 * stride);
    for (int64_t h0 = 0; h0 < g;) {
      const int H = pow2_heads(g - h0);
      scores_heads<F16>(H, q, d, kb, stride, nb, h0, s, h0 == 0 ? ps : nullptr, p0);
      h0 += H;
    }
    // Online softmax per head; s becomes the weights.
    for (int64_t h = 0; h < g; h++) {
      float* sh = s + h * B;
      float bm = -INFINITY;
      bool bad = false;  // a NaN or +inf score: the head's result is NaN, as the reference's (exp256 clamps would hide it)
      for (int64_t j = 0; j < nb; j++) {
        bm = sh[j] > bm ? sh[j] : bm;
        bad = bad || !(sh[j] < INFINITY);
      }
      float mnew = m[h] > bm ? m[h] : bm;
      __m256 vm = _mm256_set1_ps(mnew);
      __m256 sum = _mm256_setzero_ps();
      int64_t j = 0;
      for (; j + 8 <= nb; j += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sh + j), vm));
        _mm256_storeu_ps(sh + j, e);
        sum = _mm256_add_ps(sum, e);
      }
      float tot = hsum(sum);
      for (; j < nb; j++) {
        float e = _mm_cvtss_f32(_mm256_castps256_ps128(exp256(_mm256_set1_ps(sh[j] - mnew))));
        sh[j] = e;
        tot += e;
      }
      float al = m[h] == -INFINITY ? 0.f : expf(m[h] - mnew);
      alpha[h] = al;
      l[h] = bad ? NAN : l[h] * al + tot;
      m[h] = mnew;
    }
    for (int64_t h0 = 0; h0 < g;) {
      const int64_t r = g - h0;
      PfStream* pf = h0 == 0 ? ps : nullptr;
      if (r >= 4) {
        accum<F16, 4, 2>(s, alpha, d, vb, stride, nb, h0, acc, pf, p0);
        h0 += 4;
      } else if (r >= 2) {
        accum<F16, 2, 4>(s, alpha, d, vb, stride, nb, h0, acc, pf, p0);
        h0 += 2;
      } else {
        accum<F16, 1, 4>(s, alpha, d, vb, stride, nb, h0, acc, pf, p0);
        h0 += 1;
      }
    }
  }
}

}  // namespace

void q4_dequant(const uint8_t* rec, int64_t d, int64_t n, float* out, int64_t ld) {
  const int64_t cb = q4_code_bytes(d), rb = q4_record_bytes(d), dfull = d & ~(int64_t)7;
  const __m128i m0f = _mm_set1_epi8(0x0f);
  for (int64_t r = 0; r < n; r++) {
    const uint8_t* p = rec + r * rb;
    const uint8_t* pr = p + cb;
    float* o = out + r * ld;
    int64_t c = 0;
    // Whole groups 32 features a load (16 bytes of codes: the nibbles split and interleaved back in
    // order once for 32 rather than for each 8); the same fma per element as the last group's.
    for (; c + kQ4Group <= d; c += kQ4Group) {
      uint16_t sm[2];
      memcpy(sm, pr + (c / kQ4Group) * 4, 4);
      const __m256 vs = _mm256_set1_ps(_cvtsh_ss(sm[0])), vm = _mm256_set1_ps(_cvtsh_ss(sm[1]));
#pragma GCC unroll 2
      for (int half = 0; half < 2; half++) {
        const __m128i b = _mm_loadu_si128((const __m128i*)(p + c / 2 + 16 * half));
        const __m128i lo = _mm_and_si128(b, m0f), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
        const __m128i x0 = _mm_unpacklo_epi8(lo, hi), x1 = _mm_unpackhi_epi8(lo, hi);
        float* oc = o + c + 32 * half;
        _mm256_storeu_ps(oc, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x0)), vs, vm));
        _mm256_storeu_ps(oc + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(x0, 8))), vs, vm));
        _mm256_storeu_ps(oc + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x1)), vs, vm));
        _mm256_storeu_ps(oc + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(x1, 8))), vs, vm));
      }
    }
    if (c == d) continue;
    // The last group, shorter than kQ4Group: 8 features at a time, then one at a time.
    uint16_t sm[2];
    memcpy(sm, pr + (c / kQ4Group) * 4, 4);
    const float step = _cvtsh_ss(sm[0]), mn = _cvtsh_ss(sm[1]);
    const __m256 vs = _mm256_set1_ps(step), vm = _mm256_set1_ps(mn);
    for (; c < dfull; c += 8) {
      int32_t w;
      memcpy(&w, p + c / 2, 4);
      __m128i b = _mm_cvtsi32_si128(w);
      __m128i lo = _mm_and_si128(b, m0f), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
      __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
      _mm256_storeu_ps(o + c, _mm256_fmadd_ps(qf, vs, vm));  // q·step is exact: one rounding
    }
    for (; c < d; c++) {
      const int code = (p[c >> 1] >> ((c & 1) * 4)) & 15;
      o[c] = (float)code * step + mn;
    }
  }
}

void attn_scores(const float* q, int64_t g, int64_t d, const void* k, bool f16, int64_t stride, int64_t n, float* s,
                 int64_t lds, float* scratch) {
  const int64_t B = kAttnBlock;
  const int64_t es = f16 ? 2 : 4;
  // The keys read as one stream (the decode core's in-stream prefetch, keys only), when contiguous.
  const int64_t rb = stride * es, pf_bytes = attn_prefetch_bytes();
  PfStream stream(static_cast<const char*>(k), nullptr, rb, n, (pf_bytes + rb - 1) / rb);
  PfStream* ps = pf_bytes > 0 && stride == d ? &stream : nullptr;
  for (int64_t p0 = 0; p0 < n; p0 += B) {
    const int64_t nb = n - p0 < B ? n - p0 : B;
    const void* kb = static_cast<const char*>(k) + p0 * stride * es;
    for (int64_t h0 = 0; h0 < g;) {
      const int H = pow2_heads(g - h0);
      PfStream* pf = h0 == 0 ? ps : nullptr;
      if (f16) scores_heads<true>(H, q, d, kb, stride, nb, h0, scratch, pf, p0);
      else scores_heads<false>(H, q, d, kb, stride, nb, h0, scratch, pf, p0);
      h0 += H;
    }
    for (int64_t h = 0; h < g; h++)
      for (int64_t j = 0; j < nb; j++) s[h * lds + p0 + j] = scratch[h * B + j];
  }
}

void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc) {
  if (f16) core<true>(q, g, d, k, v, stride, n, scratch, m, l, acc);
  else core<false>(q, g, d, k, v, stride, n, scratch, m, l, acc);
}

}  // namespace isa2
}  // namespace tierlm
