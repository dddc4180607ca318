// N-API exports of the GEMM kernels (native/kernels/gemm.h).
//   gemmPackedByteLength(format, n, k)
//   gemmPackWeight(src, srcDtype, n, k, format, dst)
//   gemmMatmul(x, m, k, w, format, n, bias|null, y, mode, async) -> undefined | Promise
//   gemmGatherRows(w, format, n, k, ids, out)
#include <napi.h>

#include <string>

#include "kernels/gemm.h"
#include "napi/args.h"
#include "napi/async.h"
#include "napi/register.h"

namespace tierlm {
namespace {

using gemm::Fmt;
using gemm::Mode;

Fmt fmt_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
  std::string s = info[i].As<Napi::String>();
  if (s == "f32") return Fmt::F32;
  if (s == "f16") return Fmt::F16;
  if (s == "bf16") return Fmt::Bf16;
  throw Napi::RangeError::New(info.Env(), std::string(what) + " must be 'f32', 'f16' or 'bf16', got '" + s + "'");
}

Mode mode_arg(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "mode must be a string");
  std::string s = info[i].As<Napi::String>();
  if (s == "fp32") return Mode::Fp32;
  if (s == "bf16") return Mode::Bf16;
  throw Napi::RangeError::New(info.Env(), "mode must be 'fp32' or 'bf16', got '" + s + "'");
}

constexpr int64_t kMaxDim = INT64_C(1) << 31;

Napi::Value PackedByteLength(const Napi::CallbackInfo& info) {
  Fmt f = fmt_arg(info, 0, "format");
  int64_t n = int_arg(info, 1, "n", 0, kMaxDim), k = int_arg(info, 2, "k", 0, kMaxDim);
  return Napi::Number::New(info.Env(), static_cast<double>(gemm::packed_bytes(f, n, k)));
}

Napi::Value PackWeight(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6) throw Napi::TypeError::New(env, "gemmPackWeight(src, srcDtype, n, k, format, dst)");
  Fmt sf = fmt_arg(info, 1, "srcDtype");
  int64_t n = int_arg(info, 2, "n", 1, kMaxDim), k = int_arg(info, 3, "k", 1, kMaxDim);
  Fmt f = fmt_arg(info, 4, "format");
  Bytes src = checked_bytes(info[0], "src", static_cast<size_t>(n * k * gemm::elem_bytes(sf)));
  Bytes dst = checked_bytes(info[5], "dst", static_cast<size_t>(gemm::packed_bytes(f, n, k)));
  if ((reinterpret_cast<uintptr_t>(src.data) % gemm::elem_bytes(sf)) != 0) throw Napi::RangeError::New(env, "src is misaligned");
  gemm::pack_weight(src.data, sf, n, k, f, dst.data);
  return env.Undefined();
}

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 9) throw Napi::TypeError::New(env, "gemmMatmul(x, m, k, w, format, n, bias, y, mode, async)");
  int64_t m = int_arg(info, 1, "m", 0, kMaxDim), k = int_arg(info, 2, "k", 1, kMaxDim);
  Fmt f = fmt_arg(info, 4, "format");
  int64_t n = int_arg(info, 5, "n", 1, kMaxDim);
  Mode mode = mode_arg(info, 8);
  const float* x = checked_ptr<float>(info[0], "x", static_cast<size_t>(m * k));
  const uint8_t* w = checked_ptr<uint8_t>(info[3], "w", static_cast<size_t>(gemm::packed_bytes(f, n, k)));
  const float* bias = checked_ptr<float>(info[6], "bias", static_cast<size_t>(n), true);
  float* y = checked_ptr<float>(info[7], "y", static_cast<size_t>(m * n));
  if ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(bias)) % 4 != 0) {
    throw Napi::RangeError::New(env, "x, y and bias must be 4-byte aligned");
  }
  if (is_async(info, 9)) {
    Napi::Value keep_bias = info[6];
    return run_async(env, [=] { gemm::matmul(x, m, k, w, f, n, bias, y, mode); },
                     {info[0], info[3], keep_bias, info[7]});
  }
  gemm::matmul(x, m, k, w, f, n, bias, y, mode);
  return env.Undefined();
}

Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6) throw Napi::TypeError::New(env, "gemmGatherRows(w, format, n, k, ids, out)");
  Fmt f = fmt_arg(info, 1, "format");
  int64_t n = int_arg(info, 2, "n", 1, kMaxDim), k = int_arg(info, 3, "k", 1, kMaxDim);
  const uint8_t* w = checked_ptr<uint8_t>(info[0], "w", static_cast<size_t>(gemm::packed_bytes(f, n, k)));
  Bytes idb = typed_bytes(info[4], "ids");
  if (info[4].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) throw Napi::TypeError::New(env, "ids must be an Int32Array");
  const int64_t count = static_cast<int64_t>(idb.length / 4);
  const int32_t* ids = reinterpret_cast<const int32_t*>(idb.data);
  for (int64_t i = 0; i < count; i++) {
    if (ids[i] < 0 || ids[i] >= n) {
      throw Napi::RangeError::New(env, "ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " is outside [0, " +
                                           std::to_string(n) + ")");
    }
  }
  float* out = checked_ptr<float>(info[5], "out", static_cast<size_t>(count * k));
  gemm::gather_rows(w, f, n, k, ids, count, out);
  return env.Undefined();
}

// gemmBf16Dot(on?): returns whether bf16 mode uses vdpbf16ps; a boolean argument sets it.
Napi::Value Bf16Dot(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsBoolean()) gemm::set_bf16_dot(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), gemm::bf16_dot());
}

}  // namespace

void register_gemm(Napi::Env env, Napi::Object exports) {
  exports.Set("gemmPackedByteLength", Napi::Function::New(env, PackedByteLength));
  exports.Set("gemmPackWeight", Napi::Function::New(env, PackWeight));
  exports.Set("gemmMatmul", Napi::Function::New(env, Matmul));
  exports.Set("gemmGatherRows", Napi::Function::New(env, GatherRows));
  exports.Set("gemmBf16Dot", Napi::Function::New(env, Bf16Dot));
}

}  // namespace tierlm
