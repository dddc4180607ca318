// AdamW and sum of squares: the baseline bodies (optim_impl.h with baseline flags), ISA dispatch
// and the split over the thread pool.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/optim.h"

namespace tierlm {
namespace optim {
namespace generic {
#include "kernels/optim_impl.h"
}  // namespace generic

namespace {

// Elements per work item: large enough to amortise the hand-out, a multiple of 64 so every chunk
// but the last starts on a cache line for all four streams. Fixed, so chunk partial sums (and thus
// the norm) are the same at any thread count.
constexpr int64_t kChunk = INT64_C(1) << 16;

AdamWFn adamw_fn() {
  Isa isa = active_isa();
  return isa >= Isa::Avx512 ? isa512::adamw_span : isa == Isa::Avx2 ? isa2::adamw_span : generic::adamw_span;
}

SumSquaresFn sum_squares_fn() {
  Isa isa = active_isa();
  return isa >= Isa::Avx512 ? isa512::sum_squares_span : isa == Isa::Avx2 ? isa2::sum_squares_span
                                                                           : generic::sum_squares_span;
}

}  // namespace

void adamw(const void* grad, bool grad_bf16, float* master, float* m, float* v, uint16_t* param_bf16, int64_t n,
           const AdamWStep& s) {
  if (n <= 0) return;
  const AdamWFn fn = adamw_fn();
  const int64_t es = grad_bf16 ? 2 : 4;
  ThreadPool::instance().parallel_for((n + kChunk - 1) / kChunk, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; c++) {
      const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
      fn(static_cast<const uint8_t*>(grad) + i0 * es, grad_bf16, master + i0, m + i0, v + i0,
         param_bf16 ? param_bf16 + i0 : nullptr, len, s);
    }
  });
}

double sum_squares(const void* x, bool bf16, int64_t n) {
  if (n <= 0) return 0.0;
  const SumSquaresFn fn = sum_squares_fn();
  const int64_t es = bf16 ? 2 : 4, chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
  ThreadPool::instance().parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; c++) {
      const int64_t i0 = c * kChunk;
      partial[c] = fn(static_cast<const uint8_t*>(x) + i0 * es, bf16, std::min(kChunk, n - i0));
    }
  });
  double s = 0;
  for (double p : partial) s += p;  // in chunk order: deterministic
  return s;
}

}  // namespace optim
}  // namespace tierlm
