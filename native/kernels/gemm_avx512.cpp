// GEMM micro-kernels for AVX-512 (fp32 FMA on f32/f16/bf16 weights) and AVX512_BF16 (vdpbf16ps).
// Helpers are internal (anonymous namespace) so nothing compiled with these flags is shared with
// baseline code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in _mm512_slli_epi32
#include <immintrin.h>

#include <algorithm>

#include "kernels/gemm.h"

namespace tierlm {
namespace gemm {
namespace {

constexpr int kRows = 14;  // 28 accumulators + 2 weight registers + 1 broadcast
// Up to 16 rows also go in one tile, the compiler keeping a few accumulators on the stack: a
// 15-16-row product (a decode step at batch 15-16) then reads each weight panel once while it
// computes, instead of streaming it from RAM for the first 8 rows and computing the second 8 on
// the panels afterwards (docs/benchmarks.md, issue #14: 4-14% less time on Zen 4).
constexpr int kOnePassRows = 16;

inline __mmask16 mask_lo(int ncols) { return ncols >= 16 ? 0xffff : static_cast<__mmask16>((1u << ncols) - 1); }
inline __mmask16 mask_hi(int ncols) {
  return ncols >= 32 ? 0xffff : ncols <= 16 ? 0 : static_cast<__mmask16>((1u << (ncols - 16)) - 1);
}

template <int R>
inline void load_acc(__m512* c0, __m512* c1, float* y, int64_t ldy, int ncols, int flags) {
  if (flags & kFirst) {
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) c0[i] = c1[i] = _mm512_setzero_ps();
  } else {
    const __mmask16 m0 = mask_lo(ncols), m1 = mask_hi(ncols);
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) {
      c0[i] = _mm512_maskz_loadu_ps(m0, y + i * ldy);
      c1[i] = _mm512_maskz_loadu_ps(m1, y + i * ldy + 16);
    }
  }
}

template <int R>
inline void store_acc(__m512* c0, __m512* c1, float* y, int64_t ldy, int ncols, int flags, const float* bias) {
  const __mmask16 m0 = mask_lo(ncols), m1 = mask_hi(ncols);
  if ((flags & kLast) && bias) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bias), b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) {
      c0[i] = _mm512_add_ps(c0[i], b0);
      c1[i] = _mm512_add_ps(c1[i], b1);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; i++) {
    _mm512_mask_storeu_ps(y + i * ldy, m0, c0[i]);
    _mm512_mask_storeu_ps(y + i * ldy + 16, m1, c1[i]);
  }
}

// fp32 FMA, x packed [kc][R] floats, W of format F.
template <int R, int F>
void tile_fp32(const float* xp, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
               const float* bias) {
  __m512 c0[R], c1[R];
  load_acc<R>(c0, c1, y, ldy, ncols, flags);
  if (F == static_cast<int>(Fmt::F32)) {
    const float* w = reinterpret_cast<const float*>(wp);
    for (int kk = 0; kk < kc; kk++) {
      const __m512 b0 = _mm512_loadu_ps(w), b1 = _mm512_loadu_ps(w + 16);
#pragma GCC unroll 16
      for (int i = 0; i < R; i++) {
        const __m512 a = _mm512_set1_ps(xp[i]);
        c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
        c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
      }
      w += 32;
      xp += R;
    }
  } else if (F == static_cast<int>(Fmt::F16)) {
    const uint16_t* w = reinterpret_cast<const uint16_t*>(wp);
    for (int kk = 0; kk < kc; kk++) {
      const __m512 b0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
      const __m512 b1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16)));
#pragma GCC unroll 16
      for (int i = 0; i < R; i++) {
        const __m512 a = _mm512_set1_ps(xp[i]);
        c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
        c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
      }
      w += 32;
      xp += R;
    }
  } else {
    // bf16 pairs: a 32-bit lane holds (W[c][k], W[c][k+1]); kc is even.
    const uint16_t* w = reinterpret_cast<const uint16_t*>(wp);
    const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (int kk = 0; kk < kc; kk += 2) {
      {
        const __m512 b0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(w), 16));
        const __m512 b1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(w + 32), 16));
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) {
          const __m512 a = _mm512_set1_ps(xp[i]);
          c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
          c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
      }
      {
        const __m512 b0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(w), hi_mask));
        const __m512 b1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(w + 32), hi_mask));
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) {
          const __m512 a = _mm512_set1_ps(xp[R + i]);
          c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
          c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
      }
      w += 64;
      xp += 2 * R;
    }
  }
  store_acc<R>(c0, c1, y, ldy, ncols, flags, bias);
}

// vdpbf16ps: x packed [kc/2][R] uint32 bf16 pairs, W bf16 pairs.
template <int R>
void tile_bf16(const uint32_t* xp, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
               const float* bias) {
  __m512 c0[R], c1[R];
  load_acc<R>(c0, c1, y, ldy, ncols, flags);
  const uint16_t* w = reinterpret_cast<const uint16_t*>(wp);
  for (int kk = 0; kk < kc; kk += 2) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(w);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(w + 32);
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[i]));
      c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
    }
    w += 64;
    xp += R;
  }
  store_acc<R>(c0, c1, y, ldy, ncols, flags, bias);
}

template <int F>
void kernel_fp32(int rows, const void* xpv, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
                 const float* bias) {
  const float* xp = static_cast<const float*>(xpv);
  switch (rows) {
#define TIERLM_CASE(R) \
  case R: return tile_fp32<R, F>(xp, wp, kc, y, ldy, ncols, flags, bias);
    TIERLM_CASE(1) TIERLM_CASE(2) TIERLM_CASE(3) TIERLM_CASE(4) TIERLM_CASE(5) TIERLM_CASE(6) TIERLM_CASE(7)
    TIERLM_CASE(8) TIERLM_CASE(9) TIERLM_CASE(10) TIERLM_CASE(11) TIERLM_CASE(12) TIERLM_CASE(13) TIERLM_CASE(14)
    TIERLM_CASE(15) TIERLM_CASE(16)
#undef TIERLM_CASE
    default: break;
  }
}

void kernel_bf16(int rows, const void* xpv, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
                 const float* bias) {
  const uint32_t* xp = static_cast<const uint32_t*>(xpv);
  switch (rows) {
#define TIERLM_CASE(R) \
  case R: return tile_bf16<R>(xp, wp, kc, y, ldy, ncols, flags, bias);
    TIERLM_CASE(1) TIERLM_CASE(2) TIERLM_CASE(3) TIERLM_CASE(4) TIERLM_CASE(5) TIERLM_CASE(6) TIERLM_CASE(7)
    TIERLM_CASE(8) TIERLM_CASE(9) TIERLM_CASE(10) TIERLM_CASE(11) TIERLM_CASE(12) TIERLM_CASE(13) TIERLM_CASE(14)
    TIERLM_CASE(15) TIERLM_CASE(16)
#undef TIERLM_CASE
    default: break;
  }
}

}  // namespace

void pack_bf16_pairs_avx512(const float* x, int64_t ldx, int64_t k, int64_t ks, int rows, uint32_t* dst) {
  // Round to nearest even in integers (vcvtne2ps2bf16 would treat denormal inputs as zero, which
  // the scalar packing and the reference do not); a NaN keeps its bits, made quiet.
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x400000);
  const __m512i high_words = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 31, 29, 27, 25, 23, 21,
                                              19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  alignas(32) uint32_t pairs[8];
  for (int i = 0; i < rows; i++) {
    const float* xr = x + i * ldx;
    for (int64_t kk = 0; kk < ks; kk += 16) {
      // Past k the lanes load as zero, which is the zero pad of an odd k.
      const __mmask16 in = k - kk >= 16 ? 0xffff : static_cast<__mmask16>((1u << (k - kk)) - 1);
      const __m512i b = _mm512_castps_si512(_mm512_maskz_loadu_ps(in, xr + kk));
      const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(b, abs_mask), inf);
      const __m512i rounded = _mm512_add_epi32(b, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(b, 16), one)));
      const __m512i bits = _mm512_mask_or_epi32(rounded, nan, b, quiet);
      _mm256_store_si256(reinterpret_cast<__m256i*>(pairs),
                         _mm512_castsi512_si256(_mm512_permutexvar_epi16(high_words, bits)));
      uint32_t* d = dst + (kk >> 1) * rows + i;
      const int np = static_cast<int>(std::min<int64_t>(8, (ks - kk) >> 1));
      for (int j = 0; j < np; j++) d[j * rows] = pairs[j];
    }
  }
}

bool kernel_avx512(Fmt fmt, bool bf16_pairs, Kernel* out) {
  out->max_rows = kRows;
  out->one_pass_rows = kOnePassRows;
  if (bf16_pairs) {
    out->fn = kernel_bf16;
    out->kc = kKBlock;
    out->xpack = XPack::Bf16Pair;
    return true;
  }
  out->xpack = XPack::F32;
  out->kc = kKBlock;
  switch (fmt) {
    case Fmt::F32: out->fn = kernel_fp32<0>; break;
    case Fmt::F16: out->fn = kernel_fp32<1>; break;
    default: out->fn = kernel_fp32<2>; break;
  }
  return true;
}

}  // namespace gemm
}  // namespace tierlm
