// Row-wise ops: entry points (ISA dispatch, threading) and the plain C++ versions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/rowwise.h"

namespace tierlm {

float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t ax = x & 0x7fffffff;
  if (ax > 0x7f800000) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));  // quiet NaN
  if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00);                        // rounds to infinity
  if (ax < 0x38800000) {                                                         // half subnormal or zero
    if (ax < 0x33000000) return (uint16_t)sign;
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e;
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = (ax - 0x38000000) >> 13;
  uint32_t rem = ax & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

namespace {

float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

bool use512() { return active_isa() >= Isa::Avx512; }
bool use2() { return active_isa() == Isa::Avx2; }

constexpr int64_t kParallelElems = 32768;

// Runs fn(row0, row1) over [0, rows), in parallel when the work is large enough.
template <typename F>
void for_rows(int64_t rows, int64_t cols, F&& fn) {
  if (rows <= 0) return;
  if (rows * cols <= kParallelElems || rows == 1) {
    fn(0, rows);
    return;
  }
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  ThreadPool::instance().parallel_for(rows, grain, [&](int64_t a, int64_t b) { fn(a, b); });
}

template <typename F>
void for_span(int64_t n, F&& fn) {
  if (n <= 0) return;
  if (n <= kParallelElems) {
    fn(0, n);
    return;
  }
  ThreadPool::instance().parallel_for(n, 16384, [&](int64_t a, int64_t b) { fn(a, b); });
}

// ---- generic rows -------------------------------------------------------------------------------

void layer_norm_row_g(const float* x, int64_t cols, const float* gamma, const float* beta, float eps, float* out) {
  double sum = 0;
  for (int64_t i = 0; i < cols; i++) sum += x[i];
  float mean = (float)(sum / (double)cols);
  double var = 0;
  for (int64_t i = 0; i < cols; i++) {
    double c = (double)(x[i] - mean);
    var += c * c;
  }
  float rstd = (float)(1.0 / std::sqrt(var / (double)cols + (double)eps));
  for (int64_t i = 0; i < cols; i++) {
    float y = (x[i] - mean) * rstd * gamma[i];
    out[i] = beta ? y + beta[i] : y;
  }
}

void rms_norm_row_g(const float* x, int64_t cols, const float* gamma, float eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < cols; i++) ss += (double)x[i] * (double)x[i];
  float r = (float)(1.0 / std::sqrt(ss / (double)cols + (double)eps));
  for (int64_t i = 0; i < cols; i++) out[i] = (x[i] * r) * gamma[i];
}

void softmax_row_g(const float* x, int64_t cols, float* out) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < cols; i++) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < cols; i++) {
    float e = std::exp(x[i] - mx);
    out[i] = e;
    sum += e;
  }
  float inv = (float)(1.0 / sum);
  for (int64_t i = 0; i < cols; i++) out[i] *= inv;
}

void log_softmax_row_g(const float* x, int64_t cols, float* out) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < cols; i++) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < cols; i++) sum += std::exp((double)(x[i] - mx));
  float ls = (float)std::log(sum);
  for (int64_t i = 0; i < cols; i++) out[i] = (x[i] - mx) - ls;
}

}  // namespace

// ---- entry points -------------------------------------------------------------------------------

void rw_embedding(const void* table, int dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n, float* out) {
  (void)vocab;
  bool v512 = use512();
  bool v2 = use2();
  for_rows(n, dim, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; i++) {
      float* o = out + i * dim;
      int64_t id = ids[i];
      if (dtype == kDtF32) {
        std::memcpy(o, static_cast<const float*>(table) + id * dim, (size_t)dim * 4);
      } else {
        const uint16_t* src = static_cast<const uint16_t*>(table) + id * dim;
        if (dtype == kDtF16) {
          if (v512) isa512::widen_f16(src, dim, o);
          else if (v2) isa2::widen_f16(src, dim, o);
          else for (int64_t j = 0; j < dim; j++) o[j] = half_to_float(src[j]);
        } else {
          if (v512) isa512::widen_bf16(src, dim, o);
          else for (int64_t j = 0; j < dim; j++) o[j] = bf16_to_float(src[j]);
        }
      }
    }
  });
}

void rw_layer_norm(const float* x, int64_t rows, int64_t cols, const float* gamma, const float* beta, float eps, float* out) {
  auto fn = use512() ? isa512::layer_norm_row : use2() ? isa2::layer_norm_row : layer_norm_row_g;
  for_rows(rows, cols, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r++) fn(x + r * cols, cols, gamma, beta, eps, out + r * cols);
  });
}

void rw_rms_norm(const float* x, int64_t rows, int64_t cols, const float* gamma, float eps, float* out) {
  auto fn = use512() ? isa512::rms_norm_row : use2() ? isa2::rms_norm_row : rms_norm_row_g;
  for_rows(rows, cols, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r++) fn(x + r * cols, cols, gamma, eps, out + r * cols);
  });
}

int64_t rw_argmax(const float* x, int64_t n) {
  if (use512()) return isa512::argmax(x, n);
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

bool nan_row_unless_finite(float mx, int64_t cols, float* out) {
  if (std::isfinite(mx)) return false;
  for (int64_t i = 0; i < cols; i++) out[i] = NAN;
  return true;
}

void relu_span(const float* x, int64_t n, float* out) {
  if (use512()) return isa512::relu(x, n, out);
  for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0.f || x[i] != x[i] ? x[i] : 0.f;  // NaN kept, as isa512::relu
}

void gelu_span(const float* x, int64_t n, float* out, bool approximate) {
  if (use512()) return isa512::gelu(x, n, out, approximate);
  if (use2()) return isa2::gelu(x, n, out, approximate);
  for (int64_t i = 0; i < n; i++) {
    double v = x[i];
    if (approximate) {
      double u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
      out[i] = (float)(0.5 * v * (1.0 + std::tanh(u)));
    } else {
      out[i] = (float)(0.5 * v * (1.0 + std::erf(v * 0.7071067811865476)));
    }
  }
}

void add_span(const float* a, const float* b, int64_t n, float* out) {
  if (use512()) return isa512::add(a, b, n, out);
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void rw_relu(const float* x, int64_t n, float* out) {
  for_span(n, [&](int64_t a, int64_t b) { relu_span(x + a, b - a, out + a); });
}

void rw_gelu(const float* x, int64_t n, float* out, bool approximate) {
  for_span(n, [&](int64_t a, int64_t b) { gelu_span(x + a, b - a, out + a, approximate); });
}

void rw_silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  bool v512 = use512(), v2 = use2();
  for_span(n, [&](int64_t a, int64_t b) {
    if (v512) return isa512::silu_mul(gate + a, up + a, b - a, out + a);
    if (v2) return isa2::silu_mul(gate + a, up + a, b - a, out + a);
    for (int64_t i = a; i < b; i++) {
      float g = gate[i];
      out[i] = g / (1.f + std::exp(-g)) * up[i];
    }
  });
}

void rw_add(const float* a_, const float* b_, int64_t n, float* out) {
  for_span(n, [&](int64_t a, int64_t b) { add_span(a_ + a, b_ + a, b - a, out + a); });
}

void rw_softmax(const float* x, int64_t rows, int64_t cols, float* out) {
  auto fn = use512() ? isa512::softmax_row : use2() ? isa2::softmax_row : softmax_row_g;
  for_rows(rows, cols, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r++) fn(x + r * cols, cols, out + r * cols);
  });
}

void rw_log_softmax(const float* x, int64_t rows, int64_t cols, float* out) {
  auto fn = use512() ? isa512::log_softmax_row : use2() ? isa2::log_softmax_row : log_softmax_row_g;
  for_rows(rows, cols, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r++) fn(x + r * cols, cols, out + r * cols);
  });
}

// The frequency table comes from the caller (src/models/rope.ts), which applies the config's
// rope_scaling; angles, cos and sin are taken in double so long positions lose no precision.
void rw_rope(float* x, int64_t t, int64_t heads, int64_t d, const int32_t* positions, const double* inv_freq, int64_t rot) {
  int64_t half = rot / 2;
  if (t <= 0 || heads <= 0 || half <= 0) return;
  auto body = [&](int64_t a, int64_t b) {
    std::vector<float> cs((size_t)half * 2);
    for (int64_t i = a; i < b; i++) {
      double pos = positions[i];
      for (int64_t j = 0; j < half; j++) {
        double ang = pos * inv_freq[j];
        cs[j] = (float)std::cos(ang);
        cs[half + j] = (float)std::sin(ang);
      }
      for (int64_t h = 0; h < heads; h++) {
        float* p = x + (i * heads + h) * d;
        for (int64_t j = 0; j < half; j++) {
          float x1 = p[j], x2 = p[j + half];
          float c = cs[j], s = cs[half + j];
          p[j] = x1 * c - x2 * s;
          p[j + half] = x2 * c + x1 * s;
        }
      }
    }
  };
  if (t * heads * d <= kParallelElems || t == 1) body(0, t);
  else ThreadPool::instance().parallel_for(t, std::max<int64_t>(1, 4096 / std::max<int64_t>(heads * d, 1)), body);
}

}  // namespace tierlm
