// Row-wise ops, AVX-512 versions. Compiled with AVX-512 flags: static helpers and intrinsics
// only, no STL or shared inline templates (see binding.gyp).
// GCC 12 flags the _mm512_reduce_* helpers' internal undefined vectors.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>

#include "kernels/rowwise.h"

namespace tierlm {
namespace isa512 {
namespace {

inline __mmask16 tail_mask(int64_t n) { return (__mmask16)((1u << n) - 1u); }

// e^x, about 1 ulp on the clamped range; underflows smoothly to 0 through scalef.
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
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// e^x where it is finite in float, +inf above (exp512 clamps there): v / (1 + e^-x) then falls to
// -0 for a large negative v (and NaN for -inf), as in float arithmetic, not to v / 3.3e38.
inline __m512 exp_or_inf(__m512 x) {
  return _mm512_mask_mov_ps(exp512(x), _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.7f), _CMP_GT_OQ), _mm512_set1_ps(INFINITY));
}

inline double hsum_pd(__m512d v) { return _mm512_reduce_add_pd(v); }

inline void acc_pd(__m512 e, __m512d& lo, __m512d& hi) {
  lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
  hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
}

// The row's largest value, NaN if it holds one (max_ps alone would step over it).
inline float row_max(const float* x, int64_t cols) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, v);
  }
  if (i < cols) {
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(cols - i), x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, v);
  }
  return nan ? NAN : _mm512_reduce_max_ps(m);
}

}  // namespace

void layer_norm_row(const float* x, int64_t cols, const float* gamma, const float* beta, float eps, float* out) {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) acc_pd(_mm512_loadu_ps(x + i), lo, hi);
  if (i < cols) acc_pd(_mm512_maskz_loadu_ps(tail_mask(cols - i), x + i), lo, hi);
  float mean = (float)(hsum_pd(_mm512_add_pd(lo, hi)) / (double)cols);
  __m512 vm = _mm512_set1_ps(mean);
  lo = _mm512_setzero_pd();
  hi = _mm512_setzero_pd();
  for (i = 0; i + 16 <= cols; i += 16) {
    __m512 c = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm);
    acc_pd(_mm512_mul_ps(c, c), lo, hi);
  }
  if (i < cols) {
    __m512 c = _mm512_maskz_sub_ps(tail_mask(cols - i), _mm512_maskz_loadu_ps(tail_mask(cols - i), x + i), vm);
    acc_pd(_mm512_mul_ps(c, c), lo, hi);
  }
  double var = hsum_pd(_mm512_add_pd(lo, hi)) / (double)cols;
  __m512 rstd = _mm512_set1_ps((float)(1.0 / std::sqrt(var + (double)eps)));
  for (i = 0; i < cols; i += 16) {
    __mmask16 m = cols - i >= 16 ? (__mmask16)0xffff : tail_mask(cols - i);
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), rstd),
                             _mm512_maskz_loadu_ps(m, gamma + i));
    if (beta) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, beta + i));
    _mm512_mask_storeu_ps(out + i, m, y);
  }
}

void rms_norm_row(const float* x, int64_t cols, const float* gamma, float eps, float* out) {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    lo = _mm512_fmadd_pd(a, a, lo);
    hi = _mm512_fmadd_pd(b, b, hi);
  }
  if (i < cols) {
    __m512 v = _mm512_maskz_loadu_ps(tail_mask(cols - i), x + i);
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    lo = _mm512_fmadd_pd(a, a, lo);
    hi = _mm512_fmadd_pd(b, b, hi);
  }
  double ms = hsum_pd(_mm512_add_pd(lo, hi)) / (double)cols;
  __m512 r = _mm512_set1_ps((float)(1.0 / std::sqrt(ms + (double)eps)));
  for (i = 0; i < cols; i += 16) {
    __mmask16 m = cols - i >= 16 ? (__mmask16)0xffff : tail_mask(cols - i);
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r), _mm512_maskz_loadu_ps(m, gamma + i));
    _mm512_mask_storeu_ps(out + i, m, y);
  }
}

// max(x, 0), NaN kept (max_ps returns its second operand, 0, for a NaN; PyTorch and the reference
// pass NaN through, so that a diverging activation is not hidden).
void relu(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    __m512 y = _mm512_mask_mov_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
    _mm512_mask_storeu_ps(out + i, m, y);
  }
}

int64_t argmax(const float* x, int64_t n) {
  if (!(x[0] == x[0])) return 0;  // a NaN first value is never beaten
  // The largest value, NaN skipped (max_ps returns its second operand when the first is NaN),
  // then the first index holding it: the scalar scan's answer, ties to the first.
  __m512 m0 = _mm512_set1_ps(x[0]), m1 = m0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_max_ps(_mm512_loadu_ps(x + i), m0);
    m1 = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), m1);
  }
  for (; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    m0 = _mm512_mask_max_ps(m0, m, _mm512_maskz_loadu_ps(m, x + i), m0);
  }
  const float best = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  const __m512 b = _mm512_set1_ps(best);
  for (i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    __mmask16 eq = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, x + i), b, _CMP_EQ_OQ);
    if (eq) return i + __builtin_ctz(eq);
  }
  return 0;
}

void gelu(const float* x, int64_t n, float* out, bool approximate) {
  const __m512 one = _mm512_set1_ps(1.f), half = _mm512_set1_ps(0.5f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    __m512 y;
    if (approximate) {
      // 0.5 v (1 + tanh u) = v / (1 + e^(-2u))
      __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
      __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), v3, v));
      __m512 a = _mm512_mul_ps(u, _mm512_set1_ps(-2.f));
      y = _mm512_div_ps(v, _mm512_add_ps(one, exp_or_inf(a)));
    } else {
      // 0.5 v (1 + erf z) through erfc(|z|) (Numerical Recipes' erfcc, relative error < 1.2e-7),
      // so that the small values on the negative side keep their relative accuracy.
      __m512 z = _mm512_abs_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.7071067811865476f)));
      __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(half, z, one));
      __m512 p = _mm512_set1_ps(0.17087277f);
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.82215223f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.48851587f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.13520398f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.27886807f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.18628806f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.09678418f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.37409196f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.00002368f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.26551223f));
      __m512 ec = _mm512_mul_ps(t, exp512(_mm512_fnmadd_ps(z, z, p)));
      __m512 hv = _mm512_mul_ps(half, v);
      // (the sign bit, so -0 gives -0; and v itself where erfc underflowed to 0, so +inf gives +inf
      // rather than inf - inf·0)
      __mmask16 neg = _mm512_movepi32_mask(_mm512_castps_si512(v));
      __m512 pos = _mm512_mask_mov_ps(_mm512_fnmadd_ps(hv, ec, v), _mm512_cmp_ps_mask(ec, _mm512_setzero_ps(), _CMP_EQ_OQ), v);
      y = _mm512_mask_blend_ps(neg, pos, _mm512_mul_ps(hv, ec));
    }
    _mm512_mask_storeu_ps(out + i, m, y);
  }
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    __m512 e = exp_or_inf(_mm512_sub_ps(_mm512_setzero_ps(), g));
    __m512 y = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, up + i));
    _mm512_mask_storeu_ps(out + i, m, y);
  }
}

void add(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i)));
  }
}

void softmax_row(const float* x, int64_t cols, float* out) {
  if (cols <= 0) return;
  const float mx = row_max(x, cols);
  if (nan_row_unless_finite(mx, cols, out)) return;
  __m512 vm = _mm512_set1_ps(mx);
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(out + i, e);
    acc_pd(e, lo, hi);
  }
  if (i < cols) {
    __mmask16 m = tail_mask(cols - i);
    __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm)));
    _mm512_mask_storeu_ps(out + i, m, e);
    acc_pd(e, lo, hi);
  }
  __m512 inv = _mm512_set1_ps((float)(1.0 / hsum_pd(_mm512_add_pd(lo, hi))));
  for (i = 0; i < cols; i += 16) {
    __mmask16 m = cols - i >= 16 ? (__mmask16)0xffff : tail_mask(cols - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, out + i), inv));
  }
}

void log_softmax_row(const float* x, int64_t cols, float* out) {
  if (cols <= 0) return;
  const float mx = row_max(x, cols);
  if (nan_row_unless_finite(mx, cols, out)) return;
  __m512 vm = _mm512_set1_ps(mx);
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) acc_pd(exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)), lo, hi);
  if (i < cols) {
    __mmask16 m = tail_mask(cols - i);
    acc_pd(_mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm))), lo, hi);
  }
  __m512 ls = _mm512_set1_ps((float)std::log(hsum_pd(_mm512_add_pd(lo, hi))));
  for (i = 0; i < cols; i += 16) {
    __mmask16 m = cols - i >= 16 ? (__mmask16)0xffff : tail_mask(cols - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), ls));
  }
}

void widen_f16(const uint16_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

void widen_bf16(const uint16_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
    __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i)), 16);
    _mm512_mask_storeu_ps(out + i, m, _mm512_castsi512_ps(w));
  }
}

}  // namespace isa512
}  // namespace tierlm
