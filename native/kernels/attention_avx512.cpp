// Attention core, AVX-512. Compiled with AVX-512 flags: internal helpers and intrinsics only.
// GCC 12 flags the _mm512_reduce_* helpers' internal undefined vectors.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include <math.h>

#include "kernels/attention.h"

namespace tierlm {
namespace isa512 {
namespace {

inline __mmask16 mask_at(int64_t d, int64_t c) {
  int64_t r = d - c;
  return r >= 16 ? (__mmask16)0xffff : r <= 0 ? (__mmask16)0 : (__mmask16)((1u << r) - 1u);
}

template <bool F16>
inline __m512 load(const void* base, int64_t idx, __mmask16 m) {
  if (F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + idx));
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + idx);
}
template <bool F16>
inline __m512 load_full(const void* base, int64_t idx) {
  if (F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(base) + idx)));
  return _mm512_loadu_ps(static_cast<const float*>(base) + idx);
}

inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.f)), _mm512_set1_ps(88.7f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// One block of nb <= kAttnBlock positions: k and v point at the block's first position.
template <bool F16>
void block(const float* q, int64_t g, int64_t d, const void* k, const void* v, int64_t stride, int64_t nb,
           float* s, float* m, float* l, float* acc) {
  const int64_t B = kAttnBlock;
  const int64_t p0 = 0;
  const int64_t dfull = d & ~(int64_t)15;
  const __mmask16 dtail = mask_at(d, dfull);
    // Scores: (position, head) pairs four at a time, each a dot product over d.
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
      const float* qp[4];
      int64_t ko[4];
      for (int u = 0; u < 4; u++) {
        qp[u] = q + ph[u] * d;
        ko[u] = (p0 + pj[u]) * stride;
      }
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
      int64_t c = 0;
      for (; c < dfull; c += 16) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qp[0] + c), load_full<F16>(k, ko[0] + c), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qp[1] + c), load_full<F16>(k, ko[1] + c), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(qp[2] + c), load_full<F16>(k, ko[2] + c), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(qp[3] + c), load_full<F16>(k, ko[3] + c), a3);
      }
      if (dtail) {
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(dtail, qp[0] + c), load<F16>(k, ko[0] + c, dtail), a0);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(dtail, qp[1] + c), load<F16>(k, ko[1] + c, dtail), a1);
        a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(dtail, qp[2] + c), load<F16>(k, ko[2] + c, dtail), a2);
        a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(dtail, qp[3] + c), load<F16>(k, ko[3] + c, dtail), a3);
      }
      float r[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2), _mm512_reduce_add_ps(a3)};
      for (int u = 0; u < np; u++) s[ph[u] * B + pj[u]] = r[u];
    }
    // Online softmax per head; s becomes the weights, scratch[B*g + h] the rescale factor.
    float* alpha = s + B * g;
    for (int64_t h = 0; h < g; h++) {
      float* sh = s + h * B;
      __m512 mx = _mm512_set1_ps(-INFINITY);
      for (int64_t j = 0; j < nb; j += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask_at(nb, j), sh + j));
      float bm = _mm512_reduce_max_ps(mx);
      float mnew = m[h] > bm ? m[h] : bm;
      __m512 vm = _mm512_set1_ps(mnew);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < nb; j += 16) {
        __mmask16 mk = mask_at(nb, j);
        __m512 e = _mm512_maskz_mov_ps(mk, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sh + j), vm)));
        _mm512_mask_storeu_ps(sh + j, mk, e);
        sum = _mm512_add_ps(sum, e);
      }
      float al = m[h] == -INFINITY ? 0.f : expf(m[h] - mnew);
      alpha[h] = al;
      l[h] = l[h] * al + _mm512_reduce_add_ps(sum);
      m[h] = mnew;
    }
    // acc = acc·alpha + Σ_j w_j v_j, 64 features at a time kept in registers.
    const void* vb = F16 ? (const void*)(static_cast<const uint16_t*>(v) + p0 * stride)
                         : (const void*)(static_cast<const float*>(v) + p0 * stride);
    for (int64_t c = 0; c < d; c += 64) {
      const __mmask16 m0 = mask_at(d, c), m1 = mask_at(d, c + 16), m2 = mask_at(d, c + 32), m3 = mask_at(d, c + 48);
      const bool full = d - c >= 64;
      for (int64_t h = 0; h < g; h++) {
        float* ah = acc + h * d + c;
        const float* sh = s + h * B;
        __m512 al = _mm512_set1_ps(alpha[h]);
        __m512 x0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, ah), al);
        __m512 x1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m1, ah + 16), al);
        __m512 x2 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m2, ah + 32), al);
        __m512 x3 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m3, ah + 48), al);
        if (full) {
          for (int64_t j = 0; j < nb; j++) {
            __m512 w = _mm512_set1_ps(sh[j]);
            int64_t o = j * stride + c;
            x0 = _mm512_fmadd_ps(w, load_full<F16>(vb, o), x0);
            x1 = _mm512_fmadd_ps(w, load_full<F16>(vb, o + 16), x1);
            x2 = _mm512_fmadd_ps(w, load_full<F16>(vb, o + 32), x2);
            x3 = _mm512_fmadd_ps(w, load_full<F16>(vb, o + 48), x3);
          }
        } else {
          for (int64_t j = 0; j < nb; j++) {
            __m512 w = _mm512_set1_ps(sh[j]);
            int64_t o = j * stride + c;
            x0 = _mm512_fmadd_ps(w, load<F16>(vb, o, m0), x0);
            if (m1) x1 = _mm512_fmadd_ps(w, load<F16>(vb, o + 16, m1), x1);
            if (m2) x2 = _mm512_fmadd_ps(w, load<F16>(vb, o + 32, m2), x2);
            if (m3) x3 = _mm512_fmadd_ps(w, load<F16>(vb, o + 48, m3), x3);
          }
        }
        _mm512_mask_storeu_ps(ah, m0, x0);
        _mm512_mask_storeu_ps(ah + 16, m1, x1);
        _mm512_mask_storeu_ps(ah + 32, m2, x2);
        _mm512_mask_storeu_ps(ah + 48, m3, x3);
      }
    }
  }

void widen_rows(const uint16_t* src, int64_t stride, int64_t nb, int64_t d, float* dst) {
  for (int64_t j = 0; j < nb; j++) {
    const uint16_t* r = src + j * stride;
    float* o = dst + j * d;
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) _mm512_storeu_ps(o + c, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(r + c))));
    if (c < d) {
      __mmask16 mk = mask_at(d, c);
      _mm512_mask_storeu_ps(o + c, mk, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, r + c)));
    }
  }
}

// Half caches are widened a block at a time into scratch, so each element is converted once
// however many query heads share it.
template <bool F16>
void core(const float* q, int64_t g, int64_t d, const void* k, const void* v, int64_t stride, int64_t n,
          float* scratch, float* m, float* l, float* acc) {
  const int64_t B = kAttnBlock;
  for (int64_t h = 0; h < g; h++) {
    m[h] = -INFINITY;
    l[h] = 0.f;
  }
  for (int64_t i = 0; i < g * d; i++) acc[i] = 0.f;
  float* kf = scratch + 2 * B * g + 16;
  float* vf = kf + B * d;
  for (int64_t p0 = 0; p0 < n; p0 += B) {
    const int64_t nb = n - p0 < B ? n - p0 : B;
    if (F16) {
      widen_rows(static_cast<const uint16_t*>(k) + p0 * stride, stride, nb, d, kf);
      widen_rows(static_cast<const uint16_t*>(v) + p0 * stride, stride, nb, d, vf);
      block<false>(q, g, d, kf, vf, d, nb, scratch, m, l, acc);
    } else {
      block<false>(q, g, d, static_cast<const float*>(k) + p0 * stride, static_cast<const float*>(v) + p0 * stride, stride,
                   nb, scratch, m, l, acc);
    }
  }
}

}  // namespace

void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc) {
  if (f16) core<true>(q, g, d, k, v, stride, n, scratch, m, l, acc);
  else core<false>(q, g, d, k, v, stride, n, scratch, m, l, acc);
}

}  // namespace isa512
}  // namespace tierlm
