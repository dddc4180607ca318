// Vectorisable float math shared by the per-ISA bodies (attention_train_impl.h,
// grad_row_impl.h): included inside each per-ISA namespace, so every copy is compiled with that
// file's flags and none can be picked by the linker for another. Builtins only.

// FP exceptions are never unmasked in these files: saying so lets selects (clamps, rounding,
// ReLU) become vector blends. It changes no result.
#pragma GCC optimize("no-trapping-math")
// vf values never cross a call boundary (everything here is inlined, internal): no ABI to note.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

// exp(x) for x <= 88 (Cephes' expf: range reduction by ln 2, degree-6 polynomial, ~1 ulp);
// below −87 it returns about 1e-38 instead of 0, which no sum in here can tell apart.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
  const float t = x * 1.44269504088896341f;
  const int ni = static_cast<int>(t + (t >= 0.f ? 0.5f : -0.5f));
  const float n = static_cast<float>(ni);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(ni + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, 4);
  return p * scale;
}

// exp_approx, but exactly 0 below −87 (e^x is under 1.7e-38 there), so that x·e^(−x²/2) in GELU's
// derivative is 0 for a huge finite x rather than x·1e-38, and NaN for an infinite one, as in the
// reference. (A product by the comparison, not a select: GCC leaves a select with a constant as a
// branch, and the loop unvectorised.)
inline float exp_or_zero(float x) { return exp_approx(x) * static_cast<float>(x >= -87.0f); }

// The widest float vector of the file's instruction set, one register. (A 64-byte vector type was
// lowered on AVX2 through the stack, each scalar·vector splat 16 scalar stores: the training
// attention's sums ran 15× slower than on AVX-512.)
#if defined(__AVX512F__)
constexpr int kVecLanes = 16;
#elif defined(__AVX__)
constexpr int kVecLanes = 8;
#else
constexpr int kVecLanes = 4;
#endif
typedef float vf __attribute__((vector_size(kVecLanes * 4)));

inline vf loadv(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void storev(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }

// erf(x) by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), given e = exp(-x²).
inline float erf_with_exp(float x, float e) {
  const float ax = x < 0.f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float r = 1.0f - poly * e;
  return x < 0.f ? -r : r;
}

}  // namespace
