// Backward of the bias and the embedding (grad.h; norms and activations: grad_row_*): sums over
// rows, columns split over the thread pool, rows in order (the same result at any thread count).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/grad.h"

namespace tierlm {
namespace {

constexpr int64_t kSerialElems = 32768;

// Column ranges over threads; each range is summed over rows in order (deterministic).
template <typename F>
void over_cols(int64_t rows, int64_t cols, F&& fn) {
  if (cols <= 0) return;
  if (rows * cols <= kSerialElems) return fn(0, cols);
  ThreadPool::instance().parallel_for(cols, 64, fn);
}

}  // namespace

void grad_bias(const float* dy, int64_t rows, int64_t cols, float* dbias) {
  over_cols(rows, cols, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t i = c0; i < c1; i++) dbias[i] += dy[r * cols + i];
  });
}

void grad_embedding(const float* dy, const int32_t* ids, int64_t n, int64_t dim, float* dtable) {
  over_cols(n, dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < n; r++) {
      float* t = dtable + (int64_t)ids[r] * dim;
      for (int64_t i = c0; i < c1; i++) t[i] += dy[r * dim + i];
    }
  });
}

}  // namespace tierlm
