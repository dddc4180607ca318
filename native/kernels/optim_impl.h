// The AdamW and sum-of-squares bodies, included inside a per-ISA namespace by optim_generic.cpp,
// optim_avx2.cpp and optim_avx512.cpp (see optim.h). Everything here is static or in that
// namespace and calls no out-of-line library code, so no copy compiled with wider flags can be
// picked by the linker for a narrower path.

namespace {

inline float bf16_bits_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays a (quiet) NaN. Branch-free so that it vectorises.
inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t b;
  __builtin_memcpy(&b, &f, 4);
  const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const uint32_t nan = (b >> 16) | 0x40u;
  return static_cast<uint16_t>((b & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

template <bool kBf16Grad, bool kParamOut>
void adamw_body(const void* grad, float* __restrict master, float* __restrict m, float* __restrict v,
                uint16_t* __restrict param_bf16, int64_t n, const AdamWStep& s) {
  const float decay = s.decay;
  const float b1 = s.beta1, b2 = s.beta2, c1 = s.one_minus_beta1, c2 = s.one_minus_beta2;
  const float scale = s.grad_scale, eps = s.eps, step = s.step_size, bc2 = s.bc2_sqrt;
  const float* __restrict gf = static_cast<const float*>(grad);
  const uint16_t* __restrict gh = static_cast<const uint16_t*>(grad);
  for (int64_t i = 0; i < n; i++) {
    const float g = (kBf16Grad ? bf16_bits_to_f32(gh[i]) : gf[i]) * scale;
    const float mi = b1 * m[i] + c1 * g;
    const float vi = b2 * v[i] + c2 * (g * g);
    // PyTorch's order of operations: denom = sqrt(v) / bc2_sqrt + eps; p -= step_size · m / denom.
    const float denom = __builtin_sqrtf(vi) / bc2 + eps;
    const float p = master[i] * decay - step * (mi / denom);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (kParamOut) param_bf16[i] = f32_to_bf16_bits(p);
  }
}

// 16 independent double lanes: vectorises without reassociating a single running sum.
template <bool kBf16>
double sum_squares_body(const void* x, int64_t n) {
  const float* __restrict xf = static_cast<const float*>(x);
  const uint16_t* __restrict xh = static_cast<const uint16_t*>(x);
  double acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; j++) {
      const double e = kBf16 ? bf16_bits_to_f32(xh[i + j]) : xf[i + j];
      acc[j] += e * e;
    }
  }
  for (; i < n; i++) {
    const double e = kBf16 ? bf16_bits_to_f32(xh[i]) : xf[i];
    acc[i & 15] += e * e;
  }
  double s = 0;
  for (int j = 0; j < 16; j++) s += acc[j];
  return s;
}

}  // namespace

void adamw_span(const void* grad, bool grad_bf16, float* master, float* m, float* v, uint16_t* param_bf16, int64_t n,
                const AdamWStep& s) {
  if (grad_bf16) {
    if (param_bf16) return adamw_body<true, true>(grad, master, m, v, param_bf16, n, s);
    return adamw_body<true, false>(grad, master, m, v, param_bf16, n, s);
  }
  if (param_bf16) return adamw_body<false, true>(grad, master, m, v, param_bf16, n, s);
  return adamw_body<false, false>(grad, master, m, v, param_bf16, n, s);
}

double sum_squares_span(const void* x, bool bf16, int64_t n) {
  return bf16 ? sum_squares_body<true>(x, n) : sum_squares_body<false>(x, n);
}
