// Bodies of the activation backward kernels (grad.h), included inside a per-ISA namespace by
// grad_act_generic.cpp, grad_act_avx2.cpp and grad_act_avx512.cpp. Element-wise and branch-free
// (exp and erf from simd_math_impl.h), so each file's build is vectorised for its own ISA.

#include "kernels/simd_math_impl.h"

void relu_span(const float* __restrict x, const float* __restrict dy, int64_t n, float* __restrict dx) {
  for (int64_t i = 0; i < n; i++) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
}

// y = ½x(1 + erf(x/√2)):  y' = Φ(x) + x·φ(x), one exp(−x²/2) serving both terms.
// y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³):  y' = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²).
void gelu_span(const float* __restrict x, const float* __restrict dy, int64_t n, float* __restrict dx, bool approximate) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f, inv_sqrt_2pi = 0.3989422804014327f;
  if (approximate) {
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i], u = k0 * (v + k1 * v * v * v);
      const float t = 1.f - 2.f / (exp_approx(2.f * u) + 1.f);
      dx[i] = dy[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * k0 * (1.f + 3.f * k1 * v * v));
    }
  } else {
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i], e = exp_approx(-0.5f * v * v);
      dx[i] = dy[i] * (0.5f * (1.f + erf_with_exp(v * 0.7071067811865476f, e)) + v * e * inv_sqrt_2pi);
    }
  }
}

// y = silu(g)·u: dg = dy·u·σ(g)(1 + g(1 − σ(g))), du = dy·g·σ(g).
void silu_mul_span(const float* __restrict gate, const float* __restrict up, const float* __restrict dy, int64_t n,
                   float* __restrict dgate, float* __restrict dup) {
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i], sig = 1.f / (1.f + exp_approx(-g)), d = dy[i];
    dgate[i] = d * up[i] * sig * (1.f + g * (1.f - sig));
    dup[i] = d * g * sig;
  }
}
