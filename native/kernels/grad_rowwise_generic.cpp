// Backward of the norms, bias and embedding (grad.h; the activations: grad_act_*). Plain C++ over
// the thread pool: these move a few bytes per flop; the norms' statistics use double sums as the
// forward does.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/grad.h"

namespace tierlm {
namespace {

constexpr int64_t kSerialElems = 32768;

template <typename F>
void over_rows(int64_t rows, int64_t cols, F&& fn) {
  if (rows <= 0) return;
  if (rows * cols <= kSerialElems) return fn(0, rows);
  ThreadPool::instance().parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), fn);
}

// Column ranges over threads; each range is summed over rows in order (deterministic).
template <typename F>
void over_cols(int64_t rows, int64_t cols, F&& fn) {
  if (cols <= 0) return;
  if (rows * cols <= kSerialElems) return fn(0, cols);
  ThreadPool::instance().parallel_for(cols, 64, fn);
}

// Per row: mean (0 for RMSNorm) and rstd, as the forward computes them.
void row_stats(const float* x, int64_t rows, int64_t cols, float eps, bool rms, float* mean, float* rstd) {
  over_rows(rows, cols, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r++) {
      const float* xr = x + r * cols;
      float mu = 0.f;
      if (!rms) {
        double s = 0;
        for (int64_t i = 0; i < cols; i++) s += xr[i];
        mu = (float)(s / (double)cols);
      }
      double v = 0;
      for (int64_t i = 0; i < cols; i++) {
        const double c = rms ? (double)xr[i] : (double)(xr[i] - mu);
        v += c * c;
      }
      mean[r] = mu;
      rstd[r] = (float)(1.0 / std::sqrt(v / (double)cols + (double)eps));
    }
  });
}

// dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)) with g = dy · gamma, x̂ = (x − mean) · rstd;
// RMSNorm drops the mean(g) term (mean = 0).
void norm_dx(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, bool rms,
             const float* mean, const float* rstd, float* dx) {
  over_rows(rows, cols, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r++) {
      const float* xr = x + r * cols;
      const float* gr = dy + r * cols;
      const float mu = mean[r], rs = rstd[r];
      double sg = 0, sgx = 0;
      for (int64_t i = 0; i < cols; i++) {
        const double g = (double)gr[i] * gamma[i];
        sg += g;
        sgx += g * (double)((xr[i] - mu) * rs);
      }
      const float mg = rms ? 0.f : (float)(sg / (double)cols), mgx = (float)(sgx / (double)cols);
      float* o = dx + r * cols;
      for (int64_t i = 0; i < cols; i++) o[i] = rs * (gr[i] * gamma[i] - mg - (xr[i] - mu) * rs * mgx);
    }
  });
}

void norm_backward(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps,
                   bool rms, float* dx, float* dgamma, float* dbeta) {
  std::vector<float> mean((size_t)rows), rstd((size_t)rows);
  row_stats(x, rows, cols, eps, rms, mean.data(), rstd.data());
  over_cols(rows, cols, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; r++) {
      const float* xr = x + r * cols;
      const float* gr = dy + r * cols;
      for (int64_t i = c0; i < c1; i++) dgamma[i] += gr[i] * ((xr[i] - mean[r]) * rstd[r]);
      if (dbeta)
        for (int64_t i = c0; i < c1; i++) dbeta[i] += gr[i];
    }
  });
  norm_dx(x, dy, rows, cols, gamma, rms, mean.data(), rstd.data(), dx);
}

}  // namespace

void grad_layer_norm(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps,
                     float* dx, float* dgamma, float* dbeta) {
  norm_backward(x, dy, rows, cols, gamma, eps, false, dx, dgamma, dbeta);
}

void grad_rms_norm(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps,
                   float* dx, float* dgamma) {
  norm_backward(x, dy, rows, cols, gamma, eps, true, dx, dgamma, nullptr);
}

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
