// Row-wise ops: norms, activations, softmax, rotary embedding, embedding lookup.
// The entry points (rowwise_generic.cpp) dispatch on active_isa() and split large inputs over the
// thread pool; the per-ISA row functions live in rowwise_avx512.cpp / rowwise_avx2.cpp.
#pragma once

#include <cstdint>

namespace tierlm {

// dtype codes shared with the N-API layer.
enum : int { kDtF32 = 0, kDtF16 = 1, kDtBf16 = 2 };

void rw_embedding(const void* table, int dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n, float* out);
void rw_layer_norm(const float* x, int64_t rows, int64_t cols, const float* gamma, const float* beta, float eps, float* out);
void rw_rms_norm(const float* x, int64_t rows, int64_t cols, const float* gamma, float eps, float* out);
void rw_relu(const float* x, int64_t n, float* out);
void rw_gelu(const float* x, int64_t n, float* out, bool approximate);
void rw_silu_mul(const float* gate, const float* up, int64_t n, float* out);
void rw_add(const float* a, const float* b, int64_t n, float* out);
void rw_softmax(const float* x, int64_t rows, int64_t cols, float* out);
void rw_log_softmax(const float* x, int64_t rows, int64_t cols, float* out);
// The same elementwise ops on the calling thread alone (no thread pool), for other kernels'
// epilogues (kernels/epilogue.h): the same values as rw_relu / rw_gelu / rw_add.
void relu_span(const float* x, int64_t n, float* out);
void gelu_span(const float* x, int64_t n, float* out, bool approximate);
void add_span(const float* a, const float* b, int64_t n, float* out);
// The index of the first largest value of x[0..n) (n >= 1), as a scan keeping the first x[i] > best
// does: NaN is never larger, so a NaN x[0] gives 0; +0 and -0 tie. Greedy sampling's argmax.
int64_t rw_argmax(const float* x, int64_t n);
// inv_freq: rot/2 frequencies; features j and j + rot/2 turn by positions[i] * inv_freq[j].
void rw_rope(float* x, int64_t t, int64_t heads, int64_t d, const int32_t* positions, const double* inv_freq, int64_t rot);

// For the per-ISA softmax rows: a row whose largest value `mx` is not finite (a NaN in it, +inf, or
// every value -inf) is NaN throughout, as exp(x - max) summed in float makes it (the reference,
// PyTorch), where the SIMD exp's clamps would make finite numbers of it. Returns whether it was.
bool nan_row_unless_finite(float mx, int64_t cols, float* out);

// Scalar IEEE half conversions (round to nearest even), shared by the generic kernels.
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

// Per-ISA row kernels (one row, or a contiguous span for elementwise ops).
namespace isa512 {
void layer_norm_row(const float* x, int64_t cols, const float* gamma, const float* beta, float eps, float* out);
void rms_norm_row(const float* x, int64_t cols, const float* gamma, float eps, float* out);
void relu(const float* x, int64_t n, float* out);
void gelu(const float* x, int64_t n, float* out, bool approximate);
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
void add(const float* a, const float* b, int64_t n, float* out);
void softmax_row(const float* x, int64_t cols, float* out);
void log_softmax_row(const float* x, int64_t cols, float* out);
void widen_f16(const uint16_t* src, int64_t n, float* out);
void widen_bf16(const uint16_t* src, int64_t n, float* out);
int64_t argmax(const float* x, int64_t n);
}  // namespace isa512
namespace isa2 {
void layer_norm_row(const float* x, int64_t cols, const float* gamma, const float* beta, float eps, float* out);
void rms_norm_row(const float* x, int64_t cols, const float* gamma, float eps, float* out);
void softmax_row(const float* x, int64_t cols, float* out);
void log_softmax_row(const float* x, int64_t cols, float* out);
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
void gelu(const float* x, int64_t n, float* out, bool approximate);
void narrow_f16(const float* src, int64_t n, uint16_t* out);
void widen_f16(const uint16_t* src, int64_t n, float* out);
}  // namespace isa2

}  // namespace tierlm
