// Bodies of the row-wise backward kernels (grad.h): activations and norms, included inside a
// per-ISA namespace by grad_row_generic.cpp, grad_row_avx2.cpp and grad_row_avx512.cpp.
// Element-wise and branch-free (exp and erf from simd_math_impl.h), reductions in 16 independent
// lanes, so each file's build is vectorised for its own ISA.

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
      // (v capped at ±1e15 in the last factor: (1 − t²) is exactly 0 once |v| > ~9, and past
      // |v| ~ 1.5e19 the factor (1 + 3k1v²) would overflow, 0·inf making NaN where the derivative
      // is 1 or 0; an infinite v still gives NaN, as in the reference. Below the cap the
      // expression, and its rounding, is the same.)
      const float vc = v < -1e15f ? -1e15f : v > 1e15f ? 1e15f : v;
      dx[i] = dy[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * k0 * (1.f + 3.f * k1 * vc * vc));
    }
  } else {
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i], e = exp_or_zero(-0.5f * v * v);
      dx[i] = dy[i] * (0.5f * (1.f + erf_with_exp(v * 0.7071067811865476f, e)) + v * e * inv_sqrt_2pi);
    }
  }
}

// y = silu(g)·u: dg = dy·u·σ(g)(1 + g(1 − σ(g))), du = dy·g·σ(g).
void silu_mul_span(const float* __restrict gate, const float* __restrict up, const float* __restrict dy, int64_t n,
                   float* __restrict dgate, float* __restrict dup) {
  for (int64_t i = 0; i < n; i++) {
    // σ(g) = 1/(1 + e^−g), exactly 0 below g = −87 (e^−g would stop at the clamp, σ at ~6e-39,
    // and g·σ at a finite value); NaN for a NaN g. (A product by the comparison: see exp_or_zero.)
    const float g = gate[i], d = dy[i];
    const float sig = 1.f / (1.f + exp_approx(-g)) * static_cast<float>(g >= -87.0f);
    dgate[i] = d * up[i] * sig * (1.f + g * (1.f - sig));
    dup[i] = d * g * sig;
  }
}

namespace {

inline float lane_sum(const float* acc) {
  float s = 0.f;
  for (int j = 0; j < 16; j++) s += acc[j];
  return s;
}

}  // namespace

// mean (0 for RMSNorm) and rstd of one row, summed in 16 float lanes.
void norm_stats(const float* __restrict x, int64_t cols, float eps, bool rms, float* mean, float* rstd) {
  float acc[16] = {};
  int64_t i = 0;
  float mu = 0.f;
  if (!rms) {
    for (; i + 16 <= cols; i += 16)
      for (int j = 0; j < 16; j++) acc[j] += x[i + j];
    for (; i < cols; i++) acc[i & 15] += x[i];
    mu = lane_sum(acc) / static_cast<float>(cols);
  }
  float sq[16] = {};
  for (i = 0; i + 16 <= cols; i += 16)
    for (int j = 0; j < 16; j++) sq[j] += (x[i + j] - mu) * (x[i + j] - mu);
  for (; i < cols; i++) sq[i & 15] += (x[i] - mu) * (x[i] - mu);
  *mean = mu;
  *rstd = 1.f / __builtin_sqrtf(lane_sum(sq) / static_cast<float>(cols) + eps);
}

// dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · gamma, x̂ = (x − mean) · rstd (RMSNorm: no
// mean(g) term).
void norm_dx(const float* __restrict x, const float* __restrict dy, int64_t cols, const float* __restrict gamma, float mean,
             float rstd, bool rms, float* __restrict dx) {
  float sg[16] = {}, sgx[16] = {};
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) {
    for (int j = 0; j < 16; j++) {
      const float g = dy[i + j] * gamma[i + j];
      sg[j] += g;
      sgx[j] += g * ((x[i + j] - mean) * rstd);
    }
  }
  for (; i < cols; i++) {
    const float g = dy[i] * gamma[i];
    sg[i & 15] += g;
    sgx[i & 15] += g * ((x[i] - mean) * rstd);
  }
  const float mg = rms ? 0.f : lane_sum(sg) / static_cast<float>(cols), mgx = lane_sum(sgx) / static_cast<float>(cols);
  for (i = 0; i < cols; i++) dx[i] = rstd * (dy[i] * gamma[i] - mg - (x[i] - mean) * rstd * mgx);
}

// dgamma[c] += Σ_r dy[r, c] · x̂[r, c] and dbeta[c] += Σ_r dy[r, c] (if dbeta) for c in [c0, c1),
// rows in order.
void norm_param_grads(const float* x, const float* dy, int64_t rows, int64_t cols, const float* mean, const float* rstd,
                      int64_t c0, int64_t c1, float* __restrict dgamma, float* __restrict dbeta) {
  for (int64_t r = 0; r < rows; r++) {
    const float* __restrict xr = x + r * cols;
    const float* __restrict gr = dy + r * cols;
    const float mu = mean[r], rs = rstd[r];
    for (int64_t i = c0; i < c1; i++) dgamma[i] += gr[i] * ((xr[i] - mu) * rs);
    if (dbeta)
      for (int64_t i = c0; i < c1; i++) dbeta[i] += gr[i];
  }
}
