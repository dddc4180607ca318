// Fused softmax cross-entropy (grad.h). The softmax of each row is the forward's own vectorised
// row kernel (rw_softmax dispatches on the ISA and runs inline inside a pool job).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/grad.h"
#include "kernels/rowwise.h"

namespace tierlm {

double softmax_cross_entropy(float* logits, const int32_t* labels, int64_t rows, int64_t vocab, float scale,
                             int64_t* count) {
  std::vector<double> loss((size_t)std::max<int64_t>(rows, 0), 0.0);
  ThreadPool::instance().parallel_for(rows, 1, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r++) {
      float* row = logits + r * vocab;
      const int32_t label = labels[r];
      if (label == kIgnoreIndex) {
        std::fill(row, row + vocab, 0.f);
        continue;
      }
      // loss = logsumexp − target = (max − target) − log p[argmax]: p at the row's maximum is at
      // least 1/vocab, so this stays exact where p[label] itself would underflow.
      int64_t arg = 0;
      for (int64_t i = 1; i < vocab; i++)
        if (row[i] > row[arg]) arg = i;
      const double gap = (double)row[arg] - (double)row[label];
      rw_softmax(row, 1, vocab, row);
      loss[r] = gap - std::log((double)row[arg]);
      for (int64_t i = 0; i < vocab; i++) row[i] *= scale;
      row[label] -= scale;
    }
  });
  double s = 0;
  int64_t used = 0;
  for (int64_t r = 0; r < rows; r++) {
    s += loss[r];  // in row order: the same at any thread count
    used += labels[r] != kIgnoreIndex;
  }
  *count = used;
  return s;
}

}  // namespace tierlm
