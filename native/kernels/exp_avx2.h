// exp for AVX2 + FMA bodies (rowwise, attention): included only by files compiled with AVX2 flags,
// inside their anonymous namespace, so every copy is internal to its object (no weak symbol another
// ISA's object could resolve to). The includer includes <immintrin.h> first.
#pragma once

// e^x for x clamped below at `lo`: exp256's -87.33 stops at e^x ~ 1.2e-38; exp256_to_zero's -104 goes on
// down through the subnormals to exactly 0, as isa512's exp512 does (GELU's erfc needs the 0: it tells
// +inf and huge inputs apart from the rest). 2^n is split in two factors, each a normal float for n in
// [-150, 128] (so n = 128 does not overflow the exponent field); the second product rounds once into
// the subnormals.
inline __m256 exp256_above(__m256 x, float lo) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(lo)), _mm256_set1_ps(88.7f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1);
  __m256i n2 = _mm256_sub_epi32(ni, n1);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

inline __m256 exp256(__m256 x) { return exp256_above(x, -87.33f); }
inline __m256 exp256_to_zero(__m256 x) { return exp256_above(x, -104.f); }
