// GEMM micro-kernels for AVX2 + FMA (+ F16C): fp32 FMA on f32/f16/bf16 weights, 3 rows × 32
// columns per tile (12 accumulators). Helpers are internal to this file.
#include <immintrin.h>

#include "kernels/gemm.h"

namespace tierlm {
namespace gemm {
namespace {

constexpr int kRows = 3;

template <int R>
inline void load_acc(__m256 (*c)[4], float* y, int64_t ldy, int ncols, int flags) {
  if (flags & kFirst) {
    for (int i = 0; i < R; i++)
      for (int j = 0; j < 4; j++) c[i][j] = _mm256_setzero_ps();
  } else if (ncols == kNR) {
    for (int i = 0; i < R; i++)
      for (int j = 0; j < 4; j++) c[i][j] = _mm256_loadu_ps(y + i * ldy + 8 * j);
  } else {
    alignas(32) float t[kNR];
    for (int i = 0; i < R; i++) {
      for (int q = 0; q < kNR; q++) t[q] = q < ncols ? y[i * ldy + q] : 0.0f;
      for (int j = 0; j < 4; j++) c[i][j] = _mm256_load_ps(t + 8 * j);
    }
  }
}

template <int R>
inline void store_acc(__m256 (*c)[4], float* y, int64_t ldy, int ncols, int flags, const float* bias) {
  alignas(32) float bb[kNR];
  const bool add = (flags & kLast) && bias;
  if (add) {
    for (int q = 0; q < kNR; q++) bb[q] = q < ncols ? bias[q] : 0.0f;
    for (int i = 0; i < R; i++)
      for (int j = 0; j < 4; j++) c[i][j] = _mm256_add_ps(c[i][j], _mm256_load_ps(bb + 8 * j));
  }
  if (ncols == kNR) {
    for (int i = 0; i < R; i++)
      for (int j = 0; j < 4; j++) _mm256_storeu_ps(y + i * ldy + 8 * j, c[i][j]);
  } else {
    alignas(32) float t[kNR];
    for (int i = 0; i < R; i++) {
      for (int j = 0; j < 4; j++) _mm256_store_ps(t + 8 * j, c[i][j]);
      for (int q = 0; q < ncols; q++) y[i * ldy + q] = t[q];
    }
  }
}

template <int R, int F>
void tile(const float* xp, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags, const float* bias) {
  __m256 c[R][4];
  load_acc<R>(c, y, ldy, ncols, flags);
  if (F == static_cast<int>(Fmt::Bf16)) {
    const uint16_t* w = reinterpret_cast<const uint16_t*>(wp);
    const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int kk = 0; kk < kc; kk += 2) {
      __m256 a[R];
      for (int i = 0; i < R; i++) a[i] = _mm256_broadcast_ss(xp + i);
      for (int j = 0; j < 4; j++) {
        const __m256 b = _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16 * j)), 16));
        for (int i = 0; i < R; i++) c[i][j] = _mm256_fmadd_ps(a[i], b, c[i][j]);
      }
      for (int i = 0; i < R; i++) a[i] = _mm256_broadcast_ss(xp + R + i);
      for (int j = 0; j < 4; j++) {
        const __m256 b = _mm256_castsi256_ps(
            _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16 * j)), hi_mask));
        for (int i = 0; i < R; i++) c[i][j] = _mm256_fmadd_ps(a[i], b, c[i][j]);
      }
      w += 64;
      xp += 2 * R;
    }
  } else {
    for (int kk = 0; kk < kc; kk++) {
      __m256 a[R];
      for (int i = 0; i < R; i++) a[i] = _mm256_broadcast_ss(xp + i);
      for (int j = 0; j < 4; j++) {
        __m256 b;
        if (F == static_cast<int>(Fmt::F32)) {
          b = _mm256_loadu_ps(reinterpret_cast<const float*>(wp) + 8 * j);
        } else {
          b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp + 16 * j)));
        }
        for (int i = 0; i < R; i++) c[i][j] = _mm256_fmadd_ps(a[i], b, c[i][j]);
      }
      wp += kNR * (F == static_cast<int>(Fmt::F32) ? 4 : 2);
      xp += R;
    }
  }
  store_acc<R>(c, y, ldy, ncols, flags, bias);
}

template <int F>
void kernel(int rows, const void* xpv, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
            const float* bias) {
  const float* xp = static_cast<const float*>(xpv);
  switch (rows) {
    case 1: return tile<1, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    case 2: return tile<2, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    case 3: return tile<3, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    default: break;
  }
}

}  // namespace

bool kernel_avx2(Fmt fmt, Kernel* out) {
  out->max_rows = kRows;
  out->kc = kKBlock;
  out->xpack = XPack::F32;
  switch (fmt) {
    case Fmt::F32: out->fn = kernel<0>; break;
    case Fmt::F16: out->fn = kernel<1>; break;
    default: out->fn = kernel<2>; break;
  }
  return true;
}

}  // namespace gemm
}  // namespace tierlm
