// Quantized-weight GEMM pieces for AVX-512 (quant.h): the group dequantizer of the fp32 path and
// the AVX512-VNNI tile of the fast (bf16-mode) path. Helpers are internal to this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "kernels/gemm.h"
#include "kernels/quant.h"

namespace tierlm {
namespace quant {
namespace {

inline void params(const uint8_t* block, int bits, __m512* s0, __m512* s1, __m512* m0, __m512* m1) {
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(block + code_bytes_per_group(bits));
  *s0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp)));
  *s1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + 16)));
  *m0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + 32)));
  *m1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + 48)));
}

// Byte b of every 32-bit lane, zero-extended.
template <int B>
inline __m512i byte_of(__m512i v) {
  if (B == 0) return _mm512_and_si512(v, _mm512_set1_epi32(0xff));
  if (B == 3) return _mm512_srli_epi32(v, 24);
  return _mm512_and_si512(_mm512_srli_epi32(v, 8 * B), _mm512_set1_epi32(0xff));
}

// Four k steps (bytes 0..3 of each lane) of 32 columns: v0 cols 0..15, v1 cols 16..31.
inline void deq4(__m512i v0, __m512i v1, __m512 s0, __m512 s1, __m512 m0, __m512 m1, float* t) {
#define TIERLM_DQ(B)                                                                                   \
  _mm512_store_ps(t + (B) * kNR, _mm512_fmadd_ps(_mm512_cvtepi32_ps(byte_of<B>(v0)), s0, m0));         \
  _mm512_store_ps(t + (B) * kNR + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(byte_of<B>(v1)), s1, m1));
  TIERLM_DQ(0) TIERLM_DQ(1) TIERLM_DQ(2) TIERLM_DQ(3)
#undef TIERLM_DQ
}

void dequant(const uint8_t* blocks, int bits, int ng, float* tile) {
  const int64_t gb = group_block_bytes(bits);
  for (int g = 0; g < ng; g++) {
    const uint8_t* block = blocks + g * gb;
    __m512 s0, s1, m0, m1;
    params(block, bits, &s0, &s1, &m0, &m1);
    float* t = tile + static_cast<int64_t>(g) * kQGroup * kNR;
    if (bits == 8) {
      for (int q = 0; q < kQGroup / 4; q++) {
        const __m512i v0 = _mm512_loadu_si512(block + q * 128), v1 = _mm512_loadu_si512(block + q * 128 + 64);
        deq4(v0, v1, s0, s1, m0, m1, t + q * 4 * kNR);
      }
    } else {
      const __m512i nib = _mm512_set1_epi8(0x0f);
      for (int o = 0; o < kQGroup / 8; o++) {
        const __m512i v0 = _mm512_loadu_si512(block + o * 128), v1 = _mm512_loadu_si512(block + o * 128 + 64);
        deq4(_mm512_and_si512(v0, nib), _mm512_and_si512(v1, nib), s0, s1, m0, m1, t + o * 8 * kNR);
        deq4(_mm512_and_si512(_mm512_srli_epi16(v0, 4), nib), _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib), s0, s1,
             m0, m1, t + (o * 8 + 4) * kNR);
      }
    }
  }
}

inline __mmask16 mask_lo(int ncols) { return ncols >= 16 ? 0xffff : static_cast<__mmask16>((1u << ncols) - 1); }
inline __mmask16 mask_hi(int ncols) {
  return ncols >= 32 ? 0xffff : ncols <= 16 ? 0 : static_cast<__mmask16>((1u << (ncols - 16)) - 1);
}

template <int R, int BITS>
void vnni_tile(const int32_t* xq, const float* sx, const float* xsum, const uint8_t* blocks, int ng, float* y,
               int64_t ldy, int ncols, int flags, const float* bias) {
  const __mmask16 k0 = mask_lo(ncols), k1 = mask_hi(ncols);
  __m512 f0[R], f1[R];
  if (flags & gemm::kFirst) {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) f0[i] = f1[i] = _mm512_setzero_ps();
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      f0[i] = _mm512_maskz_loadu_ps(k0, y + i * ldy);
      f1[i] = _mm512_maskz_loadu_ps(k1, y + i * ldy + 16);
    }
  }
  const int64_t gb = group_block_bytes(BITS);
  const __m512i nib = _mm512_set1_epi8(0x0f);
  for (int g = 0; g < ng; g++) {
    const uint8_t* blk = blocks + g * gb;
    __m512i a0[R], a1[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) a0[i] = a1[i] = _mm512_setzero_si512();
    if (BITS == 8) {
      for (int q = 0; q < kQGroup / 4; q++) {
        const __m512i w0 = _mm512_loadu_si512(blk + q * 128), w1 = _mm512_loadu_si512(blk + q * 128 + 64);
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
          const __m512i xb = _mm512_set1_epi32(xq[q * R + i]);
          a0[i] = _mm512_dpbusd_epi32(a0[i], w0, xb);
          a1[i] = _mm512_dpbusd_epi32(a1[i], w1, xb);
        }
      }
    } else {
      // Up to four rows, the high nibbles are multiplied in place (16 times their value, masked,
      // not shifted down) into accumulators of their own, divided by 16 once a group: one
      // instruction fewer per 64 bytes of weights, which a batch-1 decode step (compute and reads
      // hardly overlapping) feels. The integer sums are the same, so the result is too. Five and
      // six rows have no registers for the second set.
      constexpr bool kInPlace = R <= 4;
      const __m512i high = _mm512_set1_epi8(static_cast<char>(0xf0));
      __m512i c0[R], c1[R];
      if constexpr (kInPlace) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) c0[i] = c1[i] = _mm512_setzero_si512();
      }
      for (int o = 0; o < kQGroup / 8; o++) {
        const __m512i v0 = _mm512_loadu_si512(blk + o * 128), v1 = _mm512_loadu_si512(blk + o * 128 + 64);
        const __m512i lo0 = _mm512_and_si512(v0, nib), lo1 = _mm512_and_si512(v1, nib);
        const __m512i hi0 = kInPlace ? _mm512_and_si512(v0, high) : _mm512_and_si512(_mm512_srli_epi16(v0, 4), nib);
        const __m512i hi1 = kInPlace ? _mm512_and_si512(v1, high) : _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib);
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
          const __m512i xb = _mm512_set1_epi32(xq[2 * o * R + i]);
          a0[i] = _mm512_dpbusd_epi32(a0[i], lo0, xb);
          a1[i] = _mm512_dpbusd_epi32(a1[i], lo1, xb);
        }
        __m512i* h0 = kInPlace ? c0 : a0;
        __m512i* h1 = kInPlace ? c1 : a1;
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
          const __m512i xb = _mm512_set1_epi32(xq[(2 * o + 1) * R + i]);
          h0[i] = _mm512_dpbusd_epi32(h0[i], hi0, xb);
          h1[i] = _mm512_dpbusd_epi32(h1[i], hi1, xb);
        }
      }
      if constexpr (kInPlace) {
        // Each sum of 16·h·x is a multiple of 16: the arithmetic shift divides it exactly.
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
          a0[i] = _mm512_add_epi32(a0[i], _mm512_srai_epi32(c0[i], 4));
          a1[i] = _mm512_add_epi32(a1[i], _mm512_srai_epi32(c1[i], 4));
        }
      }
    }
    xq += (kQGroup / 4) * R;
    __m512 s0, s1, m0, m1;
    params(blk, BITS, &s0, &s1, &m0, &m1);
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      const __m512 sc = _mm512_set1_ps(sx[g * R + i]), sm = _mm512_set1_ps(xsum[g * R + i]);
      f0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[i]), _mm512_mul_ps(s0, sc), f0[i]);
      f1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1[i]), _mm512_mul_ps(s1, sc), f1[i]);
      f0[i] = _mm512_fmadd_ps(m0, sm, f0[i]);
      f1[i] = _mm512_fmadd_ps(m1, sm, f1[i]);
    }
  }
  if ((flags & gemm::kLast) && bias) {
    const __m512 b0 = _mm512_maskz_loadu_ps(k0, bias), b1 = _mm512_maskz_loadu_ps(k1, bias + 16);
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      f0[i] = _mm512_add_ps(f0[i], b0);
      f1[i] = _mm512_add_ps(f1[i], b1);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; i++) {
    _mm512_mask_storeu_ps(y + i * ldy, k0, f0[i]);
    _mm512_mask_storeu_ps(y + i * ldy + 16, k1, f1[i]);
  }
}

void vnni(int rows, const int32_t* xq, const float* sx, const float* xsum, const uint8_t* blocks, int bits, int ng,
          float* y, int64_t ldy, int ncols, int flags, const float* bias) {
#define TIERLM_CASE(R)                                                                              \
  case R:                                                                                           \
    if (bits == 8) return vnni_tile<R, 8>(xq, sx, xsum, blocks, ng, y, ldy, ncols, flags, bias);    \
    return vnni_tile<R, 4>(xq, sx, xsum, blocks, ng, y, ldy, ncols, flags, bias);
  switch (rows) {
    TIERLM_CASE(1) TIERLM_CASE(2) TIERLM_CASE(3) TIERLM_CASE(4) TIERLM_CASE(5) TIERLM_CASE(6)
    default: break;
  }
#undef TIERLM_CASE
}

static_assert(kVnniRows == 6, "vnni() handles up to 6 rows");

void xquant(const float* xr, int64_t k, int rows, int i, int32_t* dq, float* ds, float* dsum) {
  const int64_t ng = groups(k, kQGroup), q16 = kQGroup / 4;
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t g = 0; g < ng; g++) {
    const int64_t k0 = g * kQGroup, len = k - k0 < kQGroup ? k - k0 : kQGroup;
    __m512 v[4];
    __m512 mx = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      const int64_t left = len - 16 * c;
      const __mmask16 m = left >= 16 ? 0xffff : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
      v[c] = _mm512_maskz_loadu_ps(m, xr + k0 + 16 * c);
      mx = _mm512_max_ps(_mm512_and_ps(v[c], absmask), mx);  // a NaN lane keeps mx, as std::max(amax, NaN)
    }
    const float amax = _mm512_reduce_max_ps(mx);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    __m512i isum = _mm512_setzero_si512();
    alignas(64) int8_t b[kQGroup];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(v[c], vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);  // NaN -> -127, as min(127, max(-127, NaN))
      const __m512i qi = _mm512_cvtps_epi32(q);
      isum = _mm512_add_epi32(isum, qi);
      _mm_store_si128(reinterpret_cast<__m128i*>(b + 16 * c), _mm512_cvtepi32_epi8(qi));
    }
    const int sum = _mm512_reduce_add_epi32(isum);
    // The min term uses the sum of the quantized x, so a group's result is exactly the dot
    // product of the int8-rounded x with the dequantized weights (half the error of sum(x)).
    ds[g * rows + i] = amax / 127.0f;
    dsum[g * rows + i] = static_cast<float>(sum) * (amax / 127.0f);
    for (int q = 0; q < q16; q++) std::memcpy(dq + (g * q16 + q) * rows + i, b + 4 * q, 4);
  }
}

// fp32 path for 1 or 2 rows: dequantizes in registers and feeds P panels at once (8 or 16
// independent FMA chains, so the k-ordered chain of each output is not latency-bound). Each
// output is the same FMA chain over k as the tile path computes, so results are identical.
template <int R, int P, int BITS>
void small_rows(const float* x, int64_t k, const uint8_t* w, int64_t pb, int64_t p0, int64_t n, const float* bias,
                float* y) {
  const int64_t gb = group_block_bytes(BITS), ng = groups(k, kQGroup);
  __m512 acc[R][P][2];
#pragma GCC unroll 16
  for (int i = 0; i < R; i++)
#pragma GCC unroll 16
    for (int p = 0; p < P; p++) acc[i][p][0] = acc[i][p][1] = _mm512_setzero_ps();
  alignas(64) float prm[P][4][16];  // per panel: step lo, step hi, min lo, min hi (f32)
  const __m512i nib = _mm512_set1_epi8(0x0f);
  for (int64_t g = 0; g < ng; g++) {
    const uint8_t* blk[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; p++) {
      blk[p] = w + (p0 + p) * pb + g * gb;
      __m512 s0, s1, m0, m1;
      params(blk[p], BITS, &s0, &s1, &m0, &m1);
      _mm512_store_ps(prm[p][0], s0);
      _mm512_store_ps(prm[p][1], s1);
      _mm512_store_ps(prm[p][2], m0);
      _mm512_store_ps(prm[p][3], m1);
    }
    const int64_t k0 = g * kQGroup;
    const int len = static_cast<int>(k - k0 < kQGroup ? k - k0 : kQGroup);
    for (int q = 0; 4 * q < len; q++) {
      __m512i v[P][2];
#pragma GCC unroll 16
      for (int p = 0; p < P; p++) {
        const uint8_t* c = blk[p] + (BITS == 8 ? q : q >> 1) * 128;
        v[p][0] = _mm512_loadu_si512(c);
        v[p][1] = _mm512_loadu_si512(c + 64);
        if (BITS == 4) {
          if (q & 1) {
            v[p][0] = _mm512_srli_epi16(v[p][0], 4);
            v[p][1] = _mm512_srli_epi16(v[p][1], 4);
          }
          v[p][0] = _mm512_and_si512(v[p][0], nib);
          v[p][1] = _mm512_and_si512(v[p][1], nib);
        }
      }
      const int nb = len - 4 * q;
      const float* xk = x + k0 + 4 * q;
#define TIERLM_STEP(B)                                                                                        if (B < nb) {                                                                                                 _Pragma("GCC unroll 16") for (int p = 0; p < P; p++) {                                                        const __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(byte_of<B>(v[p][0])), _mm512_load_ps(prm[p][0]),                                         _mm512_load_ps(prm[p][2]));                                               const __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(byte_of<B>(v[p][1])), _mm512_load_ps(prm[p][1]),                                         _mm512_load_ps(prm[p][3]));                                               _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) {                                                         const __m512 a = _mm512_set1_ps(xk[i * k + B]);                                                             acc[i][p][0] = _mm512_fmadd_ps(a, w0, acc[i][p][0]);                                                        acc[i][p][1] = _mm512_fmadd_ps(a, w1, acc[i][p][1]);                                                      }                                                                                                         }                                                                                                         }
      TIERLM_STEP(0) TIERLM_STEP(1) TIERLM_STEP(2) TIERLM_STEP(3)
#undef TIERLM_STEP
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < P; p++) {
    const int64_t col = (p0 + p) * kNR;
    const int ncols = static_cast<int>(n - col < kNR ? n - col : kNR);
    const __mmask16 k0m = mask_lo(ncols), k1m = mask_hi(ncols);
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (bias) {
      b0 = _mm512_maskz_loadu_ps(k0m, bias + col);
      b1 = _mm512_maskz_loadu_ps(k1m, bias + col + 16);
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
      __m512 r0 = acc[i][p][0], r1 = acc[i][p][1];
      if (bias) {
        r0 = _mm512_add_ps(r0, b0);
        r1 = _mm512_add_ps(r1, b1);
      }
      _mm512_mask_storeu_ps(y + i * n + col, k0m, r0);
      _mm512_mask_storeu_ps(y + i * n + col + 16, k1m, r1);
    }
  }
}

void small(int rows, const float* x, int64_t k, const uint8_t* w, int bits, int64_t p0, int64_t p1, int64_t n,
           const float* bias, float* y) {
  const int64_t pb = panel_bytes(bits, k);
  int64_t p = p0;
  for (; p + 4 <= p1; p += 4) {
    if (rows == 1) {
      if (bits == 4) small_rows<1, 4, 4>(x, k, w, pb, p, n, bias, y);
      else small_rows<1, 4, 8>(x, k, w, pb, p, n, bias, y);
    } else {
      if (bits == 4) small_rows<2, 2, 4>(x, k, w, pb, p, n, bias, y), small_rows<2, 2, 4>(x, k, w, pb, p + 2, n, bias, y);
      else small_rows<2, 2, 8>(x, k, w, pb, p, n, bias, y), small_rows<2, 2, 8>(x, k, w, pb, p + 2, n, bias, y);
    }
  }
  for (; p < p1; p++) {
    if (rows == 1) {
      if (bits == 4) small_rows<1, 1, 4>(x, k, w, pb, p, n, bias, y);
      else small_rows<1, 1, 8>(x, k, w, pb, p, n, bias, y);
    } else {
      if (bits == 4) small_rows<2, 1, 4>(x, k, w, pb, p, n, bias, y);
      else small_rows<2, 1, 8>(x, k, w, pb, p, n, bias, y);
    }
  }
}

}  // namespace

DequantFn dequant_avx512() { return dequant; }
SmallFn small_avx512() { return small; }
VnniFn vnni_avx512() { return vnni; }
XQuantFn xquant_avx512() { return xquant; }

}  // namespace quant
}  // namespace tierlm
