// Backward kernels of the row-wise ops and the loss (the forward ops: rowwise.h). Shapes:
// rows × cols activations, row-major. Every d<input> output (dx, dgate, ...) is overwritten;
// every parameter gradient (dgamma, dbeta, dbias, dtable) is accumulated (+=), so micro-batches
// and tied uses add into one buffer. Parameter gradients are summed over rows in row order
// (columns split over threads), so results are the same at any thread count.
#pragma once

#include <cstdint>

namespace tierlm {

// LayerNorm / RMSNorm backward; mean and rstd are recomputed from x (in float, 16 lanes).
// dbeta may be null (no bias).
void grad_layer_norm(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps,
                     float* dx, float* dgamma, float* dbeta);
void grad_rms_norm(const float* x, const float* dy, int64_t rows, int64_t cols, const float* gamma, float eps,
                   float* dx, float* dgamma);
// dx = dy · f'(x) for y = f(x). Outputs must not overlap inputs.
void grad_relu(const float* x, const float* dy, int64_t n, float* dx);
void grad_gelu(const float* x, const float* dy, int64_t n, float* dx, bool approximate);
// y = silu(gate) · up: dgate = dy · up · silu'(gate), dup = dy · silu(gate).
void grad_silu_mul(const float* gate, const float* up, const float* dy, int64_t n, float* dgate, float* dup);
// dbias[cols] += Σ_rows dy[rows, cols].
void grad_bias(const float* dy, int64_t rows, int64_t cols, float* dbias);
// dtable[ids[i], :] += dy[i, :] (ids validated by the caller).
void grad_embedding(const float* dy, const int32_t* ids, int64_t n, int64_t dim, float* dtable);

// Softmax cross-entropy over logits[rows, vocab], in place: row r with labels[r] = -100 is ignored
// (its row becomes 0); otherwise its loss is logsumexp(row) − row[label] and the row becomes
// (softmax(row) − onehot(label)) · scale. Returns Σ loss (double) and sets *count to the rows used.
double softmax_cross_entropy(float* logits, const int32_t* labels, int64_t rows, int64_t vocab, float scale,
                             int64_t* count);
constexpr int32_t kIgnoreIndex = -100;

// Per-ISA bodies of the row-wise backward (grad_row_impl.h): norms by row, activations by span. The
// inputs and outputs of one call must not overlap (the entry points above have the same rule:
// dx may not alias x or dy).
namespace grad_row {
struct Bodies {
  void (*norm_stats)(const float* x, int64_t cols, float eps, bool rms, float* mean, float* rstd);
  void (*norm_dx)(const float* x, const float* dy, int64_t cols, const float* gamma, float mean, float rstd, bool rms,
                  float* dx);
  void (*norm_param_grads)(const float* x, const float* dy, int64_t rows, int64_t cols, const float* mean,
                           const float* rstd, int64_t c0, int64_t c1, float* dgamma, float* dbeta);
  void (*relu)(const float* x, const float* dy, int64_t n, float* dx);
  void (*gelu)(const float* x, const float* dy, int64_t n, float* dx, bool approximate);
  void (*silu_mul)(const float* gate, const float* up, const float* dy, int64_t n, float* dgate, float* dup);
};
#define TIERLM_GRAD_ROW_DECLS                                                                              \
  void norm_stats(const float* x, int64_t cols, float eps, bool rms, float* mean, float* rstd);             \
  void norm_dx(const float* x, const float* dy, int64_t cols, const float* gamma, float mean, float rstd,    \
               bool rms, float* dx);                                                                        \
  void norm_param_grads(const float* x, const float* dy, int64_t rows, int64_t cols, const float* mean,     \
                        const float* rstd, int64_t c0, int64_t c1, float* dgamma, float* dbeta);            \
  void relu_span(const float* x, const float* dy, int64_t n, float* dx);                                   \
  void gelu_span(const float* x, const float* dy, int64_t n, float* dx, bool approximate);                 \
  void silu_mul_span(const float* gate, const float* up, const float* dy, int64_t n, float* dgate, float* dup);
namespace generic { TIERLM_GRAD_ROW_DECLS }
namespace isa2 { TIERLM_GRAD_ROW_DECLS }
namespace isa512 { TIERLM_GRAD_ROW_DECLS }
#undef TIERLM_GRAD_ROW_DECLS
}  // namespace grad_row

}  // namespace tierlm
