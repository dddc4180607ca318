// Attention core, AVX2 + FMA + F16C. Compiled with AVX2 flags: internal helpers and intrinsics only.
#include <immintrin.h>
#include <math.h>
#include <string.h>

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
  const int64_t d8 = d & ~(int64_t)7;
  // The in-stream prefetch, as the AVX-512 core's (attention_prefetch.h).
  const int64_t rb = stride * (F16 ? 2 : 4);
  const int64_t pf_bytes = attn_prefetch_bytes();
  PfStream stream(static_cast<const char*>(k), static_cast<const char*>(v), rb, n, (pf_bytes + rb - 1) / rb);
  PfStream* ps = pf_bytes > 0 && stride == d ? &stream : nullptr;
  for (int64_t p0 = 0; p0 < n; p0 += B) {
    const int64_t nb = n - p0 < B ? n - p0 : B;
    const int64_t npairs = nb * g;
    int64_t cj = 0, ch = 0;  // (position, head) of pair pr, stepped without divisions
    for (int64_t pr = 0; pr < npairs; pr += 4) {
      const int np = npairs - pr < 4 ? (int)(npairs - pr) : 4;
      int64_t pj[4], ph[4];
      for (int u = 0; u < 4; u++) {
        if (u < np) {
          pj[u] = cj;
          ph[u] = ch;
          if (++ch == g) {
            ch = 0;
            cj++;
          }
        } else {
          pj[u] = pj[0];
          ph[u] = ph[0];
        }
      }
      if (ps) ps->reach(p0, false, pj[np - 1]);
      const float* qp[4];
      int64_t ko[4];
      for (int u = 0; u < 4; u++) {
        qp[u] = q + ph[u] * d;
        ko[u] = (p0 + pj[u]) * stride;
      }
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      for (int64_t c = 0; c < d8; c += 8) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp[0] + c), load8<F16>(k, ko[0] + c), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp[1] + c), load8<F16>(k, ko[1] + c), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qp[2] + c), load8<F16>(k, ko[2] + c), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qp[3] + c), load8<F16>(k, ko[3] + c), a3);
      }
      float r[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      for (int u = 0; u < np; u++) {
        for (int64_t c = d8; c < d; c++) r[u] += qp[u][c] * load1<F16>(k, ko[u] + c);
        s[ph[u] * B + pj[u]] = r[u];
      }
    }
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
    const void* vb = F16 ? (const void*)(static_cast<const uint16_t*>(v) + p0 * stride)
                         : (const void*)(static_cast<const float*>(v) + p0 * stride);
    for (int64_t h = 0; h < g; h++) {
      float* ah = acc + h * d;
      const float* sh = s + h * B;
      __m256 al = _mm256_set1_ps(alpha[h]);
      int64_t c = 0;
      for (; c + 32 <= d; c += 32) {
        __m256 x0 = _mm256_mul_ps(_mm256_loadu_ps(ah + c), al), x1 = _mm256_mul_ps(_mm256_loadu_ps(ah + c + 8), al);
        __m256 x2 = _mm256_mul_ps(_mm256_loadu_ps(ah + c + 16), al), x3 = _mm256_mul_ps(_mm256_loadu_ps(ah + c + 24), al);
        for (int64_t j = 0; j < nb; j++) {
          // (every fourth row: the bookkeeping per row was a large share of a short row's work)
          if (ps && h == 0 && c == 0 && ((j & 3) == 3 || j == nb - 1)) ps->reach(p0, true, j);
          __m256 w = _mm256_set1_ps(sh[j]);
          int64_t o = j * stride + c;
          x0 = _mm256_fmadd_ps(w, load8<F16>(vb, o), x0);
          x1 = _mm256_fmadd_ps(w, load8<F16>(vb, o + 8), x1);
          x2 = _mm256_fmadd_ps(w, load8<F16>(vb, o + 16), x2);
          x3 = _mm256_fmadd_ps(w, load8<F16>(vb, o + 24), x3);
        }
        _mm256_storeu_ps(ah + c, x0);
        _mm256_storeu_ps(ah + c + 8, x1);
        _mm256_storeu_ps(ah + c + 16, x2);
        _mm256_storeu_ps(ah + c + 24, x3);
      }
      for (; c + 8 <= d; c += 8) {
        __m256 x0 = _mm256_mul_ps(_mm256_loadu_ps(ah + c), al);
        for (int64_t j = 0; j < nb; j++) x0 = _mm256_fmadd_ps(_mm256_set1_ps(sh[j]), load8<F16>(vb, j * stride + c), x0);
        _mm256_storeu_ps(ah + c, x0);
      }
      for (; c < d; c++) {
        float x = ah[c] * alpha[h];
        for (int64_t j = 0; j < nb; j++) x += sh[j] * load1<F16>(vb, j * stride + c);
        ah[c] = x;
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
    __m256 vs = _mm256_setzero_ps(), vm = _mm256_setzero_ps();
    float step = 0.f, mn = 0.f;
    int64_t c = 0;
    for (; c < dfull; c += 8) {
      if ((c & (kQ4Group - 1)) == 0) {
        uint16_t sm[2];
        memcpy(sm, pr + (c / kQ4Group) * 4, 4);
        step = _cvtsh_ss(sm[0]);
        mn = _cvtsh_ss(sm[1]);
        vs = _mm256_set1_ps(step);
        vm = _mm256_set1_ps(mn);
      }
      int32_t w;
      memcpy(&w, p + c / 2, 4);
      __m128i b = _mm_cvtsi32_si128(w);
      __m128i lo = _mm_and_si128(b, m0f), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
      __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
      _mm256_storeu_ps(o + c, _mm256_fmadd_ps(qf, vs, vm));  // q·step is exact: one rounding
    }
    for (; c < d; c++) {
      if ((c & (kQ4Group - 1)) == 0 || c == dfull) {
        uint16_t sm[2];
        memcpy(sm, pr + (c / kQ4Group) * 4, 4);
        step = _cvtsh_ss(sm[0]);
        mn = _cvtsh_ss(sm[1]);
      }
      const int code = (p[c >> 1] >> ((c & 1) * 4)) & 15;
      o[c] = (float)code * step + mn;
    }
  }
}

void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc) {
  if (f16) core<true>(q, g, d, k, v, stride, n, scratch, m, l, acc);
  else core<false>(q, g, d, k, v, stride, n, scratch, m, l, acc);
}

}  // namespace isa2
}  // namespace tierlm
