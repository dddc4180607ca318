// Row-wise ops, AVX2 + FMA + F16C versions of the hot ones (norms, softmax, SwiGLU, GELU) and the half
// conversions. Compiled with AVX2 flags: static helpers and intrinsics only, no STL.
#include <immintrin.h>
#include <math.h>

#include "kernels/rowwise.h"

namespace tierlm {
namespace isa2 {
namespace {

#include "kernels/exp_avx2.h"

// Eight GELUs, isa512::gelu's arithmetic (see there) lane for lane.
inline __m256 gelu8(__m256 v, bool approximate) {
  const __m256 one = _mm256_set1_ps(1.f), half = _mm256_set1_ps(0.5f);
  if (approximate) {
    // 0.5 v (1 + tanh u) = v / (1 + e^(-2u)); e^(-2u) is +inf past 88.7 (exp256 clamps there),
    // so a large negative v gives -0 and -inf NaN, as in float arithmetic.
    __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), v3, v));
    __m256 a = _mm256_mul_ps(u, _mm256_set1_ps(-2.f));
    __m256 e = _mm256_blendv_ps(exp256(a), _mm256_set1_ps(INFINITY), _mm256_cmp_ps(a, _mm256_set1_ps(88.7f), _CMP_GT_OQ));
    return _mm256_div_ps(v, _mm256_add_ps(one, e));
  }
  // 0.5 v (1 + erf z) through erfc(|z|) (Numerical Recipes' erfcc, relative error < 1.2e-7), so that
  // the small values on the negative side keep their relative accuracy.
  __m256 z = _mm256_andnot_ps(_mm256_set1_ps(-0.f), _mm256_mul_ps(v, _mm256_set1_ps(0.7071067811865476f)));
  __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(half, z, one));
  __m256 p = _mm256_set1_ps(0.17087277f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.82215223f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.48851587f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.13520398f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.27886807f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.18628806f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.09678418f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.37409196f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.00002368f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.26551223f));
  __m256 ec = _mm256_mul_ps(t, exp256_to_zero(_mm256_fnmadd_ps(z, z, p)));
  __m256 hv = _mm256_mul_ps(half, v);
  // v itself where erfc underflowed to 0 (+inf gives +inf rather than inf - inf·0); the negative
  // side (by the sign bit, which blendv reads: -0 gives -0) is ½v·erfc.
  __m256 pos = _mm256_blendv_ps(_mm256_fnmadd_ps(hv, ec, v), v, _mm256_cmp_ps(ec, _mm256_setzero_ps(), _CMP_EQ_OQ));
  return _mm256_blendv_ps(pos, _mm256_mul_ps(hv, ec), v);
}

inline double hsum_pd(__m256d v) {
  __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}

inline void acc_pd(__m256 e, __m256d& lo, __m256d& hi) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
}

inline float hmax(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
  return _mm_cvtss_f32(a);
}

inline float exp1(float x) {
  return _mm_cvtss_f32(_mm256_castps256_ps128(exp256(_mm256_set1_ps(x))));
}

// The row's largest value, NaN if it holds one (max_ps alone would step over it).
float row_max(const float* x, int64_t cols) {
  __m256 m = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    m = _mm256_max_ps(m, v);
  }
  float r = hmax(m);
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  for (; i < cols; i++) {
    any_nan = any_nan || x[i] != x[i];
    r = x[i] > r ? x[i] : r;
  }
  return any_nan ? NAN : r;
}

}  // namespace

void layer_norm_row(const float* x, int64_t cols, const float* gamma, const float* beta, float eps, float* out) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) acc_pd(_mm256_loadu_ps(x + i), lo, hi);
  double s = hsum_pd(_mm256_add_pd(lo, hi));
  for (; i < cols; i++) s += x[i];
  float mean = (float)(s / (double)cols);
  __m256 vm = _mm256_set1_ps(mean);
  lo = _mm256_setzero_pd();
  hi = _mm256_setzero_pd();
  for (i = 0; i + 8 <= cols; i += 8) {
    __m256 c = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
    acc_pd(_mm256_mul_ps(c, c), lo, hi);
  }
  double var = hsum_pd(_mm256_add_pd(lo, hi));
  for (; i < cols; i++) {
    float c = x[i] - mean;
    var += (double)(c * c);
  }
  float rstd = (float)(1.0 / sqrt(var / (double)cols + (double)eps));
  __m256 vr = _mm256_set1_ps(rstd);
  for (i = 0; i + 8 <= cols; i += 8) {
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr), _mm256_loadu_ps(gamma + i));
    if (beta) y = _mm256_add_ps(y, _mm256_loadu_ps(beta + i));
    _mm256_storeu_ps(out + i, y);
  }
  for (; i < cols; i++) {
    float y = (x[i] - mean) * rstd * gamma[i];
    out[i] = beta ? y + beta[i] : y;
  }
}

void rms_norm_row(const float* x, int64_t cols, const float* gamma, float eps, float* out) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    lo = _mm256_fmadd_pd(a, a, lo);
    hi = _mm256_fmadd_pd(b, b, hi);
  }
  double ss = hsum_pd(_mm256_add_pd(lo, hi));
  for (; i < cols; i++) ss += (double)x[i] * (double)x[i];
  float r = (float)(1.0 / sqrt(ss / (double)cols + (double)eps));
  __m256 vr = _mm256_set1_ps(r);
  for (i = 0; i + 8 <= cols; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vr), _mm256_loadu_ps(gamma + i)));
  for (; i < cols; i++) out[i] = (x[i] * r) * gamma[i];
}

void softmax_row(const float* x, int64_t cols, float* out) {
  if (cols <= 0) return;
  float mx = row_max(x, cols);
  if (nan_row_unless_finite(mx, cols, out)) return;
  __m256 vm = _mm256_set1_ps(mx);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(out + i, e);
    acc_pd(e, lo, hi);
  }
  double sum = hsum_pd(_mm256_add_pd(lo, hi));
  for (; i < cols; i++) {
    float e = exp1(x[i] - mx);
    out[i] = e;
    sum += e;
  }
  float inv = (float)(1.0 / sum);
  __m256 vi = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= cols; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(out + i), vi));
  for (; i < cols; i++) out[i] *= inv;
}

void log_softmax_row(const float* x, int64_t cols, float* out) {
  if (cols <= 0) return;
  float mx = row_max(x, cols);
  if (nan_row_unless_finite(mx, cols, out)) return;
  __m256 vm = _mm256_set1_ps(mx);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) acc_pd(exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)), lo, hi);
  double sum = hsum_pd(_mm256_add_pd(lo, hi));
  for (; i < cols; i++) sum += exp1(x[i] - mx);
  float ls = (float)log(sum);
  __m256 vl = _mm256_set1_ps(ls);
  for (i = 0; i + 8 <= cols; i += 8)
    _mm256_storeu_ps(out + i, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vl));
  for (; i < cols; i++) out[i] = (x[i] - mx) - ls;
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    // e^-g, +inf where that overflows (exp256 clamps): g / (1 + e^-g) then falls to -0 for a large
    // negative g (NaN for -inf), as in float arithmetic, not to g / 3.3e38.
    __m256 ng = _mm256_sub_ps(_mm256_setzero_ps(), g);
    __m256 e = _mm256_blendv_ps(exp256(ng), _mm256_set1_ps(INFINITY), _mm256_cmp_ps(ng, _mm256_set1_ps(88.7f), _CMP_GT_OQ));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; i++) {
    float g = gate[i];
    out[i] = g / (1.f + (-g > 88.7f ? INFINITY : exp1(-g))) * up[i];
  }
}

void gelu(const float* x, int64_t n, float* out, bool approximate) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, gelu8(_mm256_loadu_ps(x + i), approximate));
  if (i < n) {  // the tail through masked loads and stores (0 in the lanes past n, never stored)
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(out + i, m, gelu8(_mm256_maskload_ps(x + i, m), approximate));
  }
}

void narrow_f16(const float* src, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; i++) out[i] = (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(src[i]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0);
}

void widen_f16(const uint16_t* src, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
  for (; i < n; i++) out[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(src[i])));
}

}  // namespace isa2
}  // namespace tierlm
