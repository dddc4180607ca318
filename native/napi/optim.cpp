// N-API exports of the optimizer kernels (native/kernels/optim.h). src/backend/cpu/optim.ts wraps
// them; the checks here keep a raw call inside its buffers.
//   adamw(grad, gradDtype, master, m, v, paramBf16|null, n, lr, beta1, beta2, eps, weightDecay, gradScale, step, async)
//     -> undefined | Promise (async: runs off the JavaScript thread, so a step overlaps I/O)
//   sumSquares(x, dtype, n) -> number
#include <napi.h>

#include <cmath>

#include "kernels/optim.h"
#include "napi/async.h"
#include "napi/register.h"
#include "napi/train_args.h"

namespace tierlm {
namespace {

Napi::Value AdamW(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool gbf16 = bf16_dtype_arg(info, 1, "gradDtype");
  const int64_t n = int_arg(info, 6, "n", 0, INT64_C(1) << 44);
  const void* grad = checked_bytes(info[0], "grad", static_cast<size_t>(n * (gbf16 ? 2 : 4))).data;
  float* master = f32_arg(info[2], "master", n);
  float* m = f32_arg(info[3], "m", n);
  float* v = f32_arg(info[4], "v", n);
  uint16_t* param = info[5].IsNull() || info[5].IsUndefined() ? nullptr : checked_ptr<uint16_t>(info[5], "paramBf16", static_cast<size_t>(n));
  const double lr = num_arg(info, 7, "lr"), b1 = num_arg(info, 8, "beta1"), b2 = num_arg(info, 9, "beta2");
  const double eps = num_arg(info, 10, "eps"), wd = num_arg(info, 11, "weightDecay"), gs = num_arg(info, 12, "gradScale");
  const int64_t step = int_arg(info, 13, "step", 1);
  if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) throw Napi::RangeError::New(env, "beta1 and beta2 must be in [0, 1)");
  if (reinterpret_cast<uintptr_t>(grad) % (gbf16 ? 2 : 4) != 0 || reinterpret_cast<uintptr_t>(param) % 2 != 0)
    throw Napi::RangeError::New(env, "grad or paramBf16 is misaligned");
  // Bias corrections in double, as PyTorch computes them on the host.
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step)), bc2 = 1.0 - std::pow(b2, static_cast<double>(step));
  optim::AdamWStep s{static_cast<float>(lr), static_cast<float>(b1), static_cast<float>(b2), static_cast<float>(eps),
                     static_cast<float>(wd), static_cast<float>(gs), static_cast<float>(lr / bc1),
                     static_cast<float>(std::sqrt(bc2)), static_cast<float>(1.0 - b1), static_cast<float>(1.0 - b2),
                     static_cast<float>(1.0 - lr * wd)};
  auto work = [=] { optim::adamw(grad, gbf16, master, m, v, param, n, s); };
  if (is_async(info, 14)) return run_async(env, work, {info[0], info[2], info[3], info[4], info[5]});
  work();
  return env.Undefined();
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  const bool bf16 = bf16_dtype_arg(info, 1, "dtype");
  const int64_t n = int_arg(info, 2, "n", 0, INT64_C(1) << 44);
  Bytes x = checked_bytes(info[0], "x", static_cast<size_t>(n * (bf16 ? 2 : 4)));
  if (reinterpret_cast<uintptr_t>(x.data) % (bf16 ? 2 : 4) != 0) throw Napi::RangeError::New(info.Env(), "x is misaligned");
  return Napi::Number::New(info.Env(), optim::sum_squares(x.data, bf16, n));
}

}  // namespace

void register_optim(Napi::Env env, Napi::Object exports) {
  exports.Set("adamw", Napi::Function::New(env, AdamW));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares));
}

}  // namespace tierlm
