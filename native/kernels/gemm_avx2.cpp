// GEMM micro-kernels for AVX2 + FMA (+ F16C): fp32 FMA on f32/f16/bf16 weights. A call of 4-6
// rows covers a 32-column panel as its two 16-column halves in turn, 6 × 16 a tile at most (12
// accumulators, 2 weight registers, a broadcast: 15 of the 16 ymm registers, the bf16 mask the
// 16th), the second half from L1/L2; 1-3 rows take the whole panel in one pass (3 × 32). Row
// blocks of 3 × 32 alone, as before, loaded each weight vector for 3 rows only (docs/benchmarks.md).
// Helpers are internal to this file.
#include <immintrin.h>

#include "kernels/gemm.h"

namespace tierlm {
namespace gemm {
namespace {

constexpr int kRows = 6;
constexpr int kHalf = kNR / 2;

// (Every loop over the rows is unrolled, so that GCC keeps the accumulators in registers: one
// loop indexing them at run time, the partial-tile one, kept the whole array on the stack, and it
// stored every accumulator after each FMA.)
template <int R>
inline void load_acc(__m256* c0, __m256* c1, const float* y, int64_t ldy, int ncols, int flags) {
  if (flags & kFirst) {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) c0[i] = c1[i] = _mm256_setzero_ps();
  } else if (ncols == kHalf) {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      c0[i] = _mm256_loadu_ps(y + i * ldy);
      c1[i] = _mm256_loadu_ps(y + i * ldy + 8);
    }
  } else {
    alignas(32) float t[kHalf];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      for (int q = 0; q < kHalf; q++) t[q] = q < ncols ? y[i * ldy + q] : 0.0f;
      c0[i] = _mm256_load_ps(t);
      c1[i] = _mm256_load_ps(t + 8);
    }
  }
}

template <int R>
inline void store_acc(__m256* c0, __m256* c1, float* y, int64_t ldy, int ncols, int flags, const float* bias) {
  if ((flags & kLast) && bias) {
    alignas(32) float bb[kHalf];
    for (int q = 0; q < kHalf; q++) bb[q] = q < ncols ? bias[q] : 0.0f;
    const __m256 b0 = _mm256_load_ps(bb), b1 = _mm256_load_ps(bb + 8);
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      c0[i] = _mm256_add_ps(c0[i], b0);
      c1[i] = _mm256_add_ps(c1[i], b1);
    }
  }
  if (ncols == kHalf) {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      _mm256_storeu_ps(y + i * ldy, c0[i]);
      _mm256_storeu_ps(y + i * ldy + 8, c1[i]);
    }
  } else {
    alignas(32) float t[kHalf];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      _mm256_store_ps(t, c0[i]);
      _mm256_store_ps(t + 8, c1[i]);
      for (int q = 0; q < ncols; q++) y[i * ldy + q] = t[q];
    }
  }
}

// One half of a panel: columns [16h, 16h+16) of the panel at wp (h = 0 or 1), ncols of them real.
template <int R, int F>
void half_tile(const float* xp, const uint8_t* wp, int h, int kc, float* y, int64_t ldy, int ncols, int flags,
               const float* bias) {
  __m256 c0[R], c1[R];
  load_acc<R>(c0, c1, y, ldy, ncols, flags);
  if (F == static_cast<int>(Fmt::Bf16)) {
    // bf16 pairs: per k pair, 32 lanes of (W[c][k], W[c][k+1]); this half's are lanes 16h..16h+15.
    const uint16_t* w = reinterpret_cast<const uint16_t*>(wp) + 2 * kHalf * h;
    const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int kk = 0; kk < kc; kk += 2) {
      const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
      const __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16));
      {
        const __m256 b0 = _mm256_castsi256_ps(_mm256_slli_epi32(p0, 16));
        const __m256 b1 = _mm256_castsi256_ps(_mm256_slli_epi32(p1, 16));
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
          const __m256 a = _mm256_set1_ps(xp[i]);
          c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
          c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
        }
      }
      {
        const __m256 b0 = _mm256_castsi256_ps(_mm256_and_si256(p0, hi_mask));
        const __m256 b1 = _mm256_castsi256_ps(_mm256_and_si256(p1, hi_mask));
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
          const __m256 a = _mm256_set1_ps(xp[R + i]);
          c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
          c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
        }
      }
      w += 2 * kNR;
      xp += 2 * R;
    }
  } else {
    const int es = F == static_cast<int>(Fmt::F32) ? 4 : 2;
    const uint8_t* w = wp + kHalf * h * es;
    for (int kk = 0; kk < kc; kk++) {
      __m256 b0, b1;
      if (F == static_cast<int>(Fmt::F32)) {
        b0 = _mm256_loadu_ps(reinterpret_cast<const float*>(w));
        b1 = _mm256_loadu_ps(reinterpret_cast<const float*>(w) + 8);
      } else {
        b0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
        b1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16)));
      }
#pragma GCC unroll 8
      for (int i = 0; i < R; i++) {
        const __m256 a = _mm256_set1_ps(xp[i]);
        c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
        c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
      }
      w += kNR * es;
      xp += R;
    }
  }
  store_acc<R>(c0, c1, y, ldy, ncols, flags, bias);
}

// 1-3 rows × 32 columns (12 accumulators): the panel in one pass, one contiguous stream, as a
// decode step's GEMV needs (halves read every other line in turn: 10-20% slower at 1 row).
template <int R, int F>
void full_tile(const float* xp, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
               const float* bias) {
  static_assert(R <= 3, "12 accumulators at most");
  __m256 c0[R], c1[R], c2[R], c3[R];
  load_acc<R>(c0, c1, y, ldy, ncols < kHalf ? ncols : kHalf, flags);
  if (ncols > kHalf) {
    load_acc<R>(c2, c3, y + kHalf, ldy, ncols - kHalf, flags);
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) c2[i] = c3[i] = _mm256_setzero_ps();
  }
  auto step = [&](const float* xk, __m256 b0, __m256 b1, __m256 b2, __m256 b3) {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      const __m256 a = _mm256_set1_ps(xk[i]);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
      c2[i] = _mm256_fmadd_ps(a, b2, c2[i]);
      c3[i] = _mm256_fmadd_ps(a, b3, c3[i]);
    }
  };
  if (F == static_cast<int>(Fmt::Bf16)) {
    const __m256i* w = reinterpret_cast<const __m256i*>(wp);
    const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int kk = 0; kk < kc; kk += 2) {
      const __m256i p0 = _mm256_loadu_si256(w), p1 = _mm256_loadu_si256(w + 1), p2 = _mm256_loadu_si256(w + 2),
                    p3 = _mm256_loadu_si256(w + 3);
      step(xp, _mm256_castsi256_ps(_mm256_slli_epi32(p0, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(p1, 16)),
           _mm256_castsi256_ps(_mm256_slli_epi32(p2, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(p3, 16)));
      step(xp + R, _mm256_castsi256_ps(_mm256_and_si256(p0, hi_mask)), _mm256_castsi256_ps(_mm256_and_si256(p1, hi_mask)),
           _mm256_castsi256_ps(_mm256_and_si256(p2, hi_mask)), _mm256_castsi256_ps(_mm256_and_si256(p3, hi_mask)));
      w += 4;
      xp += 2 * R;
    }
  } else if (F == static_cast<int>(Fmt::F32)) {
    const float* w = reinterpret_cast<const float*>(wp);
    for (int kk = 0; kk < kc; kk++) {
      step(xp, _mm256_loadu_ps(w), _mm256_loadu_ps(w + 8), _mm256_loadu_ps(w + 16), _mm256_loadu_ps(w + 24));
      w += kNR;
      xp += R;
    }
  } else {
    const __m128i* w = reinterpret_cast<const __m128i*>(wp);
    for (int kk = 0; kk < kc; kk++) {
      step(xp, _mm256_cvtph_ps(_mm_loadu_si128(w)), _mm256_cvtph_ps(_mm_loadu_si128(w + 1)),
           _mm256_cvtph_ps(_mm_loadu_si128(w + 2)), _mm256_cvtph_ps(_mm_loadu_si128(w + 3)));
      w += 4;
      xp += R;
    }
  }
  store_acc<R>(c0, c1, y, ldy, ncols < kHalf ? ncols : kHalf, flags, bias);
  if (ncols > kHalf) store_acc<R>(c2, c3, y + kHalf, ldy, ncols - kHalf, flags, bias ? bias + kHalf : nullptr);
}

// 4-6 rows: the two halves of the panel in turn, 6 × 16 at most (the second half from L1/L2).
template <int R, int F>
void tile(const float* xp, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags, const float* bias) {
  half_tile<R, F>(xp, wp, 0, kc, y, ldy, ncols < kHalf ? ncols : kHalf, flags, bias);
  if (ncols > kHalf) half_tile<R, F>(xp, wp, 1, kc, y + kHalf, ldy, ncols - kHalf, flags, bias ? bias + kHalf : nullptr);
}

template <int F>
void kernel(int rows, const void* xpv, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
            const float* bias) {
  const float* xp = static_cast<const float*>(xpv);
  switch (rows) {
    case 1: return full_tile<1, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    case 2: return full_tile<2, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    case 3: return full_tile<3, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    case 4: return tile<4, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    case 5: return tile<5, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    case 6: return tile<6, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    default: break;
  }
}

}  // namespace

void widen_panel_avx2(Fmt fmt, const uint8_t* wp, int kc, float* dst) {
  if (fmt == Fmt::Bf16) {
    // Per k pair, four vectors of 8 columns' (k, k+1) pairs: the low halves are row k, the high k+1.
    const __m256i* s = reinterpret_cast<const __m256i*>(wp);
    const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int kk = 0; kk < kc; kk += 2, s += 4, dst += 2 * kNR) {
      for (int u = 0; u < 4; u++) {
        const __m256i p = _mm256_loadu_si256(s + u);
        _mm256_storeu_ps(dst + 8 * u, _mm256_castsi256_ps(_mm256_slli_epi32(p, 16)));
        _mm256_storeu_ps(dst + kNR + 8 * u, _mm256_castsi256_ps(_mm256_and_si256(p, hi_mask)));
      }
    }
    return;
  }
  const __m128i* s = reinterpret_cast<const __m128i*>(wp);
  for (int kk = 0; kk < kc; kk++, s += 4, dst += kNR)
    for (int u = 0; u < 4; u++) _mm256_storeu_ps(dst + 8 * u, _mm256_cvtph_ps(_mm_loadu_si128(s + u)));
}

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
