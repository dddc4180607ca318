// Optimizer kernels: fused AdamW over flat parameter buffers and the sum of squares for the global
// gradient norm. One source (optim_impl.h) is compiled once per instruction set (optim_generic.cpp,
// optim_avx2.cpp, optim_avx512.cpp) and auto-vectorised with that set's flags: the loops are
// element-wise (AdamW) or written with independent lanes (sums), so no flag that reorders floating
// point is needed. The entry points (optim_generic.cpp) dispatch on active_isa() and split the
// buffers over the thread pool in fixed chunks, so results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace tierlm {
namespace optim {

// One AdamW step with PyTorch's semantics (torch.optim.AdamW, single-tensor, fp32 math):
//   g = grad · grad_scale                    (grad_scale: the clipping coefficient, 1 = none)
//   p = p · (1 − lr·wd)                      (decoupled weight decay)
//   m = β1·m + (1 − β1)·g,  v = β2·v + (1 − β2)·g²
//   p = p − step_size · m / (√v / bc2_sqrt + eps)
// with step_size = lr / (1 − β1^t) and bc2_sqrt = √(1 − β2^t) computed in double by the caller,
// and so are 1 − β1, 1 − β2 and 1 − lr·wd, then rounded once, as PyTorch passes Python floats to
// its fp32 kernels: 1.0f − 0.999f is 0.00099998713, 1.3e-5 off 0.001, a bias in v that moved
// fp32 training 100x further from float64 references (2-step losses 3e-6 instead of 3e-8).
struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float step_size, bc2_sqrt;
  float one_minus_beta1, one_minus_beta2, decay;
};

// grad: n floats (grad_bf16 false) or n bf16 bits; master, m, v: n floats updated in place;
// param_bf16: n bf16 bits written with the new master rounded to nearest even, or null.
void adamw(const void* grad, bool grad_bf16, float* master, float* m, float* v, uint16_t* param_bf16, int64_t n,
           const AdamWStep& s);
// Σ x² over n floats or bf16 values, accumulated in double.
double sum_squares(const void* x, bool bf16, int64_t n);

// Per-ISA bodies over one contiguous span.
using AdamWFn = void (*)(const void* grad, bool grad_bf16, float* master, float* m, float* v, uint16_t* param_bf16,
                         int64_t n, const AdamWStep& s);
using SumSquaresFn = double (*)(const void* x, bool bf16, int64_t n);
namespace generic {
void adamw_span(const void*, bool, float*, float*, float*, uint16_t*, int64_t, const AdamWStep&);
double sum_squares_span(const void*, bool, int64_t);
}  // namespace generic
namespace isa2 {
void adamw_span(const void*, bool, float*, float*, float*, uint16_t*, int64_t, const AdamWStep&);
double sum_squares_span(const void*, bool, int64_t);
}  // namespace isa2
namespace isa512 {
void adamw_span(const void*, bool, float*, float*, float*, uint16_t*, int64_t, const AdamWStep&);
double sum_squares_span(const void*, bool, int64_t);
}  // namespace isa512

}  // namespace optim
}  // namespace tierlm
