// Quantized-weight GEMM pieces for AVX2 (quant.h): the group dequantizer of the fp32 path.
#include <immintrin.h>

#include "kernels/quant.h"

namespace tierlm {
namespace quant {
namespace {

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
      s[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 8 * j)));
      m[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 32 + 8 * j)));
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

}  // namespace

DequantFn dequant_avx2() { return dequant; }

}  // namespace quant
}  // namespace tierlm
