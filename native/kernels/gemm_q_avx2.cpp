// Quantized-weight GEMM pieces for AVX2 (quant.h): the group dequantizer and the 1-2 row path of the
// fp32 path, and the int8 tile of the fast (bf16-mode) path for q4 weights on CPUs without AVX512-VNNI.
#include <immintrin.h>

#include <cstring>

#include "kernels/gemm.h"
#include "kernels/quant.h"

namespace tierlm {
namespace quant {
namespace {

// Column vector j's steps and mins (8 columns, f32) of a group block whose parameters are at sp.
inline __m256 steps(const uint16_t* sp, int j) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 8 * j)));
}
inline __m256 mins(const uint16_t* sp, int j) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 32 + 8 * j)));
}

// Four k steps (bytes 0..3 of each 32-bit lane) of 8 columns.
inline void deq4(__m256i v, __m256 s, __m256 m, float* t) {
  const __m256i ff = _mm256_set1_epi32(0xff);
  _mm256_store_ps(t, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, ff)), s, m));
  _mm256_store_ps(t + kNR, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 8), ff)), s, m));
  _mm256_store_ps(t + 2 * kNR, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 16), ff)), s, m));
  _mm256_store_ps(t + 3 * kNR, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 24)), s, m));
}

void dequant(const uint8_t* blocks, int bits, int ng, float* tile) {
  const int64_t gb = group_block_bytes(bits), cb = code_bytes_per_group(bits);
  const __m256i nib = _mm256_set1_epi8(0x0f);
  for (int g = 0; g < ng; g++) {
    const uint8_t* block = blocks + g * gb;
    const uint16_t* sp = reinterpret_cast<const uint16_t*>(block + cb);
    __m256 s[4], m[4];
    for (int j = 0; j < 4; j++) {
      s[j] = steps(sp, j);
      m[j] = mins(sp, j);
    }
    float* t = tile + static_cast<int64_t>(g) * kQGroup * kNR;
    if (bits == 8) {
      for (int q = 0; q < kQGroup / 4; q++)
        for (int j = 0; j < 4; j++) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + q * 128 + 32 * j));
          deq4(v, s[j], m[j], t + q * 4 * kNR + 8 * j);
        }
    } else {
      for (int o = 0; o < kQGroup / 8; o++)
        for (int j = 0; j < 4; j++) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + o * 128 + 32 * j));
          deq4(_mm256_and_si256(v, nib), s[j], m[j], t + o * 8 * kNR + 8 * j);
          deq4(_mm256_and_si256(_mm256_srli_epi16(v, 4), nib), s[j], m[j], t + (o * 8 + 4) * kNR + 8 * j);
        }
    }
  }
}

// ---- int8 tile (q4): vpdpbusd from vpmaddubsw and vpmaddwd ------------------------------------
//
// AVX2 has no u8 × s8 → s32 dot product. vpmaddubsw multiplies u8 by s8 and adds adjacent pairs
// into s16, saturating; a q4 code (0..15) times |x| <= 127, twice, is at most 3810, so eight such
// pairs added in s16 (30480) still fit: eight k quads (four octets, both nibbles) accumulate in
// s16, then one vpmaddwd by ones makes them s32. The integer sums are exact, so a group's dot
// products equal vpdpbusd's, and the same f32 operations follow as in the AVX512-VNNI tile: the
// result is that tile's bit for bit. (q8 codes reach 255 and would saturate; split into nibbles
// they took 2-3× q4's time a row, slower than the fp32 path from 4 rows up, so q8 stays there.)
// A group's int32 dot products of 8 columns into their f32 sums f[0..8), as the VNNI tile does:
// dot · (step · sx), then min · (sx · Σ int8 x). (Both tiles below; the order of these steps is
// what makes the result the VNNI tile's bit for bit.)
inline void add_group(__m256i a, __m256 s, __m256 m, float sx, float xsum, float* f) {
  const __m256 acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(s, _mm256_set1_ps(sx)), _mm256_load_ps(f));
  _mm256_store_ps(f, _mm256_fmadd_ps(m, _mm256_set1_ps(xsum), acc));
}

// A row's f32 sums: from y (zero on the first k block, and past ncols), and back, the bias added last.
inline void load_row(float* f, const float* y, int ncols, int flags) {
  for (int c = 0; c < kNR; c++) f[c] = (flags & gemm::kFirst) || c >= ncols ? 0.0f : y[c];
}
inline void store_row(const float* f, float* y, int ncols, int flags, const float* bias) {
  for (int c = 0; c < ncols; c++) y[c] = (flags & gemm::kLast) && bias ? f[c] + bias[c] : f[c];
}

template <int R>
void dot8_tile(const int32_t* xq, const float* sx, const float* xsum, const uint8_t* blocks, int ng, float* y,
               int64_t ldy, int ncols, int flags, const float* bias) {
  // The f32 sums of the R × 32 outputs stay in L1 between groups: the integer sums take the registers.
  alignas(32) float f[R][kNR];
  for (int i = 0; i < R; i++) load_row(f[i], y + i * ldy, ncols, flags);
  const int64_t gb = group_block_bytes(4);
  const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  for (int g = 0; g < ng; g++) {
    const uint8_t* blk = blocks + g * gb;
    const uint16_t* sp = reinterpret_cast<const uint16_t*>(blk + code_bytes_per_group(4));
    for (int j = 0; j < 4; j++) {  // 8 columns at a time
      __m256i a[R];
#pragma GCC unroll 8
      for (int i = 0; i < R; i++) a[i] = _mm256_setzero_si256();
      for (int h = 0; h < 2; h++) {
        __m256i t[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) t[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int o = 4 * h; o < 4 * h + 4; o++) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + o * 128 + 32 * j));
          const __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
#pragma GCC unroll 8
          for (int i = 0; i < R; i++) {
            t[i] = _mm256_add_epi16(t[i], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xq[2 * o * R + i])));
            t[i] = _mm256_add_epi16(t[i], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xq[(2 * o + 1) * R + i])));
          }
        }
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(t[i], ones));
      }
      const __m256 s = steps(sp, j), m = mins(sp, j);
#pragma GCC unroll 8
      for (int i = 0; i < R; i++) add_group(a[i], s, m, sx[g * R + i], xsum[g * R + i], f[i] + 8 * j);
    }
    xq += (kQGroup / 4) * R;
  }
  for (int i = 0; i < R; i++) store_row(f[i], y + i * ldy, ncols, flags, bias);
}

// One row (a decode step at batch 1, bound by the weights' read): the group's octets in order, all
// four column vectors of each (128 contiguous bytes), so the panel is read as one stream; by column
// vector (dot8_tile), each group's 18 lines were visited four times in a stride of two lines, and
// the loads stalled (perf: a third of the time on the first use of a load).
void dot8_row(const int32_t* xq, const float* sx, const float* xsum, const uint8_t* blocks, int ng, float* y,
              int ncols, int flags, const float* bias) {
  alignas(32) float f[kNR];
  load_row(f, y, ncols, flags);
  const int64_t gb = group_block_bytes(4);
  const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  for (int g = 0; g < ng; g++) {
    const uint8_t* blk = blocks + g * gb;
    const uint16_t* sp = reinterpret_cast<const uint16_t*>(blk + code_bytes_per_group(4));
    __m256i a[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) a[j] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i t[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) t[j] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int o = 4 * h; o < 4 * h + 4; o++) {
        const __m256i xl = _mm256_set1_epi32(xq[2 * o]), xh = _mm256_set1_epi32(xq[2 * o + 1]);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + o * 128 + 32 * j));
          t[j] = _mm256_add_epi16(t[j], _mm256_maddubs_epi16(_mm256_and_si256(v, nib), xl));
          t[j] = _mm256_add_epi16(t[j], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), nib), xh));
        }
      }
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(t[j], ones));
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) add_group(a[j], steps(sp, j), mins(sp, j), sx[g], xsum[g], f + 8 * j);
    xq += kQGroup / 4;
  }
  store_row(f, y, ncols, flags, bias);
}

// (bits is always 4: quant::matmul sends q8 to the fp32 path on AVX2.)
void dot8(int rows, const int32_t* xq, const float* sx, const float* xsum, const uint8_t* blocks, int /*bits*/, int ng,
          float* y, int64_t ldy, int ncols, int flags, const float* bias) {
  switch (rows) {
    case 1: return dot8_row(xq, sx, xsum, blocks, ng, y, ncols, flags, bias);
    case 2: return dot8_tile<2>(xq, sx, xsum, blocks, ng, y, ldy, ncols, flags, bias);
    case 3: return dot8_tile<3>(xq, sx, xsum, blocks, ng, y, ldy, ncols, flags, bias);
    case 4: return dot8_tile<4>(xq, sx, xsum, blocks, ng, y, ldy, ncols, flags, bias);
    default: break;
  }
}

static_assert(kDot8Rows == 4, "dot8() handles up to 4 rows");

// As the AVX-512 xquant (quant.h): the same int8 values, scales and sums.
void xquant(const float* xr, int64_t k, int rows, int i, int32_t* dq, float* ds, float* dsum) {
  const int64_t ng = groups(k, kQGroup), q16 = kQGroup / 4;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int64_t g = 0; g < ng; g++) {
    const int64_t k0 = g * kQGroup, len = k - k0 < kQGroup ? k - k0 : kQGroup;
    alignas(32) float v[kQGroup];
    std::memcpy(v, xr + k0, static_cast<size_t>(len) * 4);
    for (int64_t c = len; c < kQGroup; c++) v[c] = 0.0f;
    __m256 mx = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int c = 0; c < kQGroup / 8; c++) mx = _mm256_max_ps(_mm256_and_ps(_mm256_load_ps(v + 8 * c), absmask), mx);
    alignas(32) float m8[8];
    _mm256_store_ps(m8, mx);
    float amax = 0.0f;
    for (int c = 0; c < 8; c++) amax = m8[c] > amax ? m8[c] : amax;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i isum = _mm256_setzero_si256();
    alignas(32) int32_t qi[kQGroup];
#pragma GCC unroll 8
    for (int c = 0; c < kQGroup / 8; c++) {
      __m256 q = _mm256_round_ps(_mm256_mul_ps(_mm256_load_ps(v + 8 * c), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
      const __m256i n = _mm256_cvtps_epi32(q);
      isum = _mm256_add_epi32(isum, n);
      _mm256_store_si256(reinterpret_cast<__m256i*>(qi + 8 * c), n);
    }
    alignas(32) int32_t s8[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(s8), isum);
    int sum = 0;
    for (int c = 0; c < 8; c++) sum += s8[c];
    alignas(4) int8_t b[kQGroup];
    for (int c = 0; c < kQGroup; c++) b[c] = static_cast<int8_t>(qi[c]);
    ds[g * rows + i] = amax / 127.0f;
    dsum[g * rows + i] = static_cast<float>(sum) * (amax / 127.0f);
    for (int q = 0; q < q16; q++) std::memcpy(dq + (g * q16 + q) * rows + i, b + 4 * q, 4);
  }
}

// fp32 path for 1 or 2 rows (quant.h SmallFn): one panel at a time, dequantized in registers. Each
// output is the same FMA chain over k as the tile path computes (the f32 kernel after dequant()), so
// results are identical. A row's four chains and the dequantizing FMAs beside them keep both FMA
// pipes busy. Without it AVX2 dequantized each panel slice to a tile in memory and read it back: a
// batch-1 GEMV of 4-bit weights in fp32 mode (the default precision) ran at 5-8 GB/s of weights.

// One k quad (four k steps; nb < 4 of them in a group's last, partial quad) of a panel's 32 columns.
template <int R, int BITS, bool FULL, bool HIGH>
inline void small_quad(const uint8_t* c, const float* xk, int64_t k, const float* sp, const float* mp,
                       __m256 (&acc)[R][4], int nb) {
  // The steps and mins are read from L1 each quad: the compiler, seeing them unchanged, held all
  // eight in registers and moved the sums to the stack instead. (An empty asm that "changes" the
  // pointers; nothing is emitted.)
  asm("" : "+r"(sp), "+r"(mp));
  const __m256i nib = _mm256_set1_epi8(0x0f), ff = _mm256_set1_epi32(0xff);
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32 * j));
    if (BITS == 4) v = _mm256_and_si256(HIGH ? _mm256_srli_epi16(v, 4) : v, nib);
    const __m256 s = _mm256_load_ps(sp + 8 * j), m = _mm256_load_ps(mp + 8 * j);
#pragma GCC unroll 4
    for (int b = 0; b < 4; b++) {
      if (!FULL && b >= nb) break;
      const __m256i code = b == 3 ? _mm256_srli_epi32(v, 24) : _mm256_and_si256(_mm256_srli_epi32(v, 8 * b), ff);
      const __m256 wv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(code), s, m);
#pragma GCC unroll 2
      for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(xk[i * k + b]), wv, acc[i][j]);
    }
  }
}

// A group's short last quad, out of line: inlined, its checks kept the sums on the stack throughout.
template <int R, int BITS>
__attribute__((noinline)) void small_tail(const uint8_t* blk, int q, const float* xk, int64_t k, const float* sp,
                                          const float* mp, __m256 (&acc)[R][4], int nb) {
  const uint8_t* c = blk + (BITS == 8 ? q : q >> 1) * 128;
  if (BITS == 4 && (q & 1)) small_quad<R, BITS, false, true>(c, xk, k, sp, mp, acc, nb);
  else small_quad<R, BITS, false, false>(c, xk, k, sp, mp, acc, nb);
}

template <int R, int BITS>
void small_panel(const float* x, int64_t k, const uint8_t* w, int64_t n, int64_t p, const float* bias, float* y) {
  const int64_t gb = group_block_bytes(BITS), ng = groups(k, kQGroup), pb = panel_bytes(BITS, k);
  __m256 acc[R][4];
#pragma GCC unroll 2
  for (int i = 0; i < R; i++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
  alignas(32) float prm[2][kNR];  // steps, then mins (f32)
  for (int64_t g = 0; g < ng; g++) {
    const uint8_t* blk = w + p * pb + g * gb;
    const uint16_t* sp = reinterpret_cast<const uint16_t*>(blk + code_bytes_per_group(BITS));
    for (int j = 0; j < 4; j++) {
      _mm256_store_ps(prm[0] + 8 * j, steps(sp, j));
      _mm256_store_ps(prm[1] + 8 * j, mins(sp, j));
    }
    const int64_t k0 = g * kQGroup;
    const int len = static_cast<int>(k - k0 < kQGroup ? k - k0 : kQGroup);
    // Whole quads (q4: an octet's low nibbles, then its high ones, so that the choice is made at
    // compile time: a branch in the loop split it and the sums went to the stack), then a short one.
    int q = 0;
    if (BITS == 4) {
      for (; 4 * q + 8 <= len; q += 2) {
        small_quad<R, 4, true, false>(blk + (q >> 1) * 128, x + k0 + 4 * q, k, prm[0], prm[1], acc, 4);
        small_quad<R, 4, true, true>(blk + (q >> 1) * 128, x + k0 + 4 * q + 4, k, prm[0], prm[1], acc, 4);
      }
      if (4 * q + 4 <= len) small_quad<R, 4, true, false>(blk + (q >> 1) * 128, x + k0 + 4 * q, k, prm[0], prm[1], acc, 4), q++;
    } else {
      for (; 4 * q + 4 <= len; q++) small_quad<R, 8, true, false>(blk + q * 128, x + k0 + 4 * q, k, prm[0], prm[1], acc, 4);
    }
    if (4 * q < len) {
      // (On a copy: the sums' address passed out kept them on the stack in the loop above.)
      __m256 part[R][4];
#pragma GCC unroll 2
      for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) part[i][j] = acc[i][j];
      small_tail<R, BITS>(blk, q, x + k0 + 4 * q, k, prm[0], prm[1], part, len - 4 * q);
#pragma GCC unroll 2
      for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[i][j] = part[i][j];
    }
  }
  const int64_t col = p * kNR;
  const int ncols = static_cast<int>(n - col < kNR ? n - col : kNR);
  for (int i = 0; i < R; i++) {
    alignas(32) float t[kNR];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) _mm256_store_ps(t + 8 * j, acc[i][j]);
    for (int c = 0; c < ncols; c++) y[i * n + col + c] = bias ? t[c] + bias[col + c] : t[c];
  }
}

void small(int rows, const float* x, int64_t k, const uint8_t* w, int bits, int64_t p0, int64_t p1, int64_t n,
           const float* bias, float* y) {
  for (int64_t p = p0; p < p1; p++) {
    if (rows == 1) {
      if (bits == 4) small_panel<1, 4>(x, k, w, n, p, bias, y);
      else small_panel<1, 8>(x, k, w, n, p, bias, y);
    } else {
      if (bits == 4) small_panel<2, 4>(x, k, w, n, p, bias, y);
      else small_panel<2, 8>(x, k, w, n, p, bias, y);
    }
  }
}

}  // namespace

DequantFn dequant_avx2() { return dequant; }
SmallFn small_avx2() { return small; }
VnniFn dot8_avx2() { return dot8; }
XQuantFn xquant_avx2() { return xquant; }

}  // namespace quant
}  // namespace tierlm
