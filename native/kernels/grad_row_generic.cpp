// Row-wise backward (norms, activations): the baseline bodies (grad_row_impl.h), ISA dispatch and
// the split over the thread pool.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/grad.h"

namespace tierlm {
namespace grad_row {
namespace generic {
#include "kernels/grad_row_impl.h"
}  // namespace generic

namespace {

const Bodies& bodies() {
#define TIERLM_BODIES(ns) \
  { ns::norm_stats, ns::norm_dx, ns::norm_param_grads, ns::relu_span, ns::gelu_span, ns::silu_mul_span }
  static const Bodies b512 TIERLM_BODIES(isa512), b2 TIERLM_BODIES(isa2), bg TIERLM_BODIES(generic);
#undef TIERLM_BODIES
  const Isa isa = active_isa();
  return isa >= Isa::Avx512 ? b512 : isa == Isa::Avx2 ? b2 : bg;
}

// fn(begin, end) over [0, n) in chunks of 16 Ki elements, on the pool when n is large.
template <typename F>
void over_span(int64_t n, F&& fn) {
  if (n <= 0) return;
  if (n <= 32768) return fn(0, n);
  ThreadPool::instance().parallel_for(n, 16384, fn);
}

void norm_backward(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps, bool rms,
                   float* dx, float* dgamma, float* dbeta) {
  if (rows <= 0 || cols <= 0) return;
  const Bodies& b = bodies();
  std::vector<float> mean((size_t)rows), rstd((size_t)rows);
  const bool serial = rows * cols <= 32768;
  const int64_t grain = std::max<int64_t>(1, 16384 / cols);
  auto by_rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      b.norm_stats(x + r * cols, cols, eps, rms, &mean[r], &rstd[r]);
      b.norm_dx(x + r * cols, dy + r * cols, cols, gamma, mean[r], rstd[r], rms, dx + r * cols);
    }
  };
  // Parameter gradients by column ranges, each summed over the rows in order: the same result at
  // any thread count.
  auto by_cols = [&](int64_t c0, int64_t c1) { b.norm_param_grads(x, dy, rows, cols, mean.data(), rstd.data(), c0, c1, dgamma, dbeta); };
  if (serial) {
    by_rows(0, rows);
    by_cols(0, cols);
    return;
  }
  ThreadPool::instance().parallel_for(rows, grain, by_rows);
  ThreadPool::instance().parallel_for(cols, 64, by_cols);
}

}  // namespace
}  // namespace grad_row

void grad_layer_norm(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps,
                     float* dx, float* dgamma, float* dbeta) {
  grad_row::norm_backward(x, dy, rows, cols, gamma, eps, false, dx, dgamma, dbeta);
}

void grad_rms_norm(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps,
                   float* dx, float* dgamma) {
  grad_row::norm_backward(x, dy, rows, cols, gamma, eps, true, dx, dgamma, nullptr);
}

void grad_relu(const float* x, const float* dy, int64_t n, float* dx) {
  const auto f = grad_row::bodies().relu;
  grad_row::over_span(n, [=](int64_t a, int64_t b) { f(x + a, dy + a, b - a, dx + a); });
}

void grad_gelu(const float* x, const float* dy, int64_t n, float* dx, bool approximate) {
  const auto f = grad_row::bodies().gelu;
  grad_row::over_span(n, [=](int64_t a, int64_t b) { f(x + a, dy + a, b - a, dx + a, approximate); });
}

void grad_silu_mul(const float* gate, const float* up, const float* dy, int64_t n, float* dgate, float* dup) {
  const auto f = grad_row::bodies().silu_mul;
  grad_row::over_span(n, [=](int64_t a, int64_t b) { f(gate + a, up + a, dy + a, b - a, dgate + a, dup + a); });
}

}  // namespace tierlm
