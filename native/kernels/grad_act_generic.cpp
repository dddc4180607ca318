// Activation backward: the baseline bodies (grad_act_impl.h), ISA dispatch and the split over the
// thread pool.
#include <algorithm>
#include <cstdint>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/grad.h"

namespace tierlm {
namespace grad_act {
namespace generic {
#include "kernels/grad_act_impl.h"
}  // namespace generic

namespace {

const Bodies& bodies() {
  static const Bodies b512{isa512::relu_span, isa512::gelu_span, isa512::silu_mul_span};
  static const Bodies b2{isa2::relu_span, isa2::gelu_span, isa2::silu_mul_span};
  static const Bodies bg{generic::relu_span, generic::gelu_span, generic::silu_mul_span};
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

}  // namespace
}  // namespace grad_act

void grad_relu(const float* x, const float* dy, int64_t n, float* dx) {
  const auto f = grad_act::bodies().relu;
  grad_act::over_span(n, [=](int64_t a, int64_t b) { f(x + a, dy + a, b - a, dx + a); });
}

void grad_gelu(const float* x, const float* dy, int64_t n, float* dx, bool approximate) {
  const auto f = grad_act::bodies().gelu;
  grad_act::over_span(n, [=](int64_t a, int64_t b) { f(x + a, dy + a, b - a, dx + a, approximate); });
}

void grad_silu_mul(const float* gate, const float* up, const float* dy, int64_t n, float* dgate, float* dup) {
  const auto f = grad_act::bodies().silu_mul;
  grad_act::over_span(n, [=](int64_t a, int64_t b) { f(gate + a, up + a, dy + a, b - a, dgate + a, dup + a); });
}

}  // namespace tierlm
