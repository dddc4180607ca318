// N-API exports of the row-wise ops (native/kernels/rowwise.h). src/backend/cpu/rowwise.ts wraps
// them; the checks here only keep a raw call inside its buffers.
#include <napi.h>

#include <string>

#include "kernels/rowwise.h"
#include "napi/args.h"
#include "napi/register.h"

namespace tierlm {
namespace {

int dtype_arg(const Napi::CallbackInfo& info, size_t i) {
  if (i < info.Length() && info[i].IsString()) {
    std::string s = info[i].As<Napi::String>();
    if (s == "f32") return kDtF32;
    if (s == "f16") return kDtF16;
    if (s == "bf16") return kDtBf16;
    throw Napi::RangeError::New(info.Env(), "dtype must be 'f32', 'f16' or 'bf16', got '" + s + "'");
  }
  throw Napi::TypeError::New(info.Env(), "dtype must be a string");
}

size_t float_count(const Napi::Value& v, const char* what) {
  Bytes b = typed_bytes(v, what);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Float32Array");
  return b.length / 4;
}

// embedding(table, dtype, vocab, dim, ids, out)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  int dt = dtype_arg(info, 1);
  int64_t vocab = int_arg(info, 2, "vocab");
  int64_t dim = int_arg(info, 3, "dim");
  int64_t es = dt == kDtF32 ? 4 : 2;
  const void* table = checked_bytes(info[0], "table", {vocab, dim, es}).data;
  Bytes idb = typed_bytes(info[4], "ids");
  int64_t n = (int64_t)(idb.length / 4);
  const int32_t* ids = reinterpret_cast<const int32_t*>(idb.data);
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Napi::RangeError::New(info.Env(), "ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " is outside [0, " + std::to_string(vocab) + ")");
  float* out = checked_ptr<float>(info[5], "out", {n, dim});
  rw_embedding(table, dt, vocab, dim, ids, n, out);
  return info.Env().Undefined();
}

// layerNorm(x, rows, cols, gamma, beta|null, eps, out)
Napi::Value LayerNorm(const Napi::CallbackInfo& info) {
  int64_t rows = int_arg(info, 1, "rows"), cols = int_arg(info, 2, "cols");
  const float* x = checked_ptr<float>(info[0], "x", {rows, cols});
  const float* gamma = checked_ptr<float>(info[3], "gamma", {cols});
  const float* beta = checked_ptr<float>(info[4], "beta", {cols}, true);
  float eps = (float)num_arg(info, 5, "eps");
  float* out = checked_ptr<float>(info[6], "out", {rows, cols});
  rw_layer_norm(x, rows, cols, gamma, beta, eps, out);
  return info.Env().Undefined();
}

// rmsNorm(x, rows, cols, gamma, eps, out)
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  int64_t rows = int_arg(info, 1, "rows"), cols = int_arg(info, 2, "cols");
  const float* x = checked_ptr<float>(info[0], "x", {rows, cols});
  const float* gamma = checked_ptr<float>(info[3], "gamma", {cols});
  float eps = (float)num_arg(info, 4, "eps");
  float* out = checked_ptr<float>(info[5], "out", {rows, cols});
  rw_rms_norm(x, rows, cols, gamma, eps, out);
  return info.Env().Undefined();
}

// argmax(x): the index of x's first largest value (NaN never larger); x holds at least one.
Napi::Value Argmax(const Napi::CallbackInfo& info) {
  size_t n = float_count(info[0], "x");
  if (n == 0) throw Napi::RangeError::New(info.Env(), "argmax: x is empty");
  const float* x = checked_ptr<float>(info[0], "x", n);
  return Napi::Number::New(info.Env(), static_cast<double>(rw_argmax(x, (int64_t)n)));
}

Napi::Value Relu(const Napi::CallbackInfo& info) {
  size_t n = float_count(info[0], "x");
  const float* x = checked_ptr<float>(info[0], "x", n);
  float* out = checked_ptr<float>(info[1], "out", n);
  rw_relu(x, (int64_t)n, out);
  return info.Env().Undefined();
}

// gelu(x, out, approximate)
Napi::Value Gelu(const Napi::CallbackInfo& info) {
  size_t n = float_count(info[0], "x");
  const float* x = checked_ptr<float>(info[0], "x", n);
  float* out = checked_ptr<float>(info[1], "out", n);
  rw_gelu(x, (int64_t)n, out, is_async(info, 2));
  return info.Env().Undefined();
}

Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  size_t n = float_count(info[0], "gate");
  const float* g = checked_ptr<float>(info[0], "gate", n);
  const float* u = checked_ptr<float>(info[1], "up", n);
  float* out = checked_ptr<float>(info[2], "out", n);
  rw_silu_mul(g, u, (int64_t)n, out);
  return info.Env().Undefined();
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  size_t n = float_count(info[0], "a");
  const float* a = checked_ptr<float>(info[0], "a", n);
  const float* b = checked_ptr<float>(info[1], "b", n);
  float* out = checked_ptr<float>(info[2], "out", n);
  rw_add(a, b, (int64_t)n, out);
  return info.Env().Undefined();
}

template <void (*F)(const float*, int64_t, int64_t, float*)>
Napi::Value RowOp(const Napi::CallbackInfo& info) {
  int64_t rows = int_arg(info, 1, "rows"), cols = int_arg(info, 2, "cols");
  const float* x = checked_ptr<float>(info[0], "x", {rows, cols});
  float* out = checked_ptr<float>(info[3], "out", {rows, cols});
  F(x, rows, cols, out);
  return info.Env().Undefined();
}

// rope(x, t, heads, d, positions, invFreq: Float64Array of rotaryDim/2, rotaryDim)
Napi::Value Rope(const Napi::CallbackInfo& info) {
  int64_t t = int_arg(info, 1, "t"), heads = int_arg(info, 2, "heads"), d = int_arg(info, 3, "d");
  float* x = checked_ptr<float>(info[0], "x", {t, heads, d});
  const int32_t* pos = checked_ptr<int32_t>(info[4], "positions", {t});
  int64_t rot = int_arg(info, 6, "rotaryDim", 0, d);
  if (rot % 2 != 0) throw Napi::RangeError::New(info.Env(), "rotaryDim must be even");
  if (!info[5].IsTypedArray() || info[5].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    throw Napi::TypeError::New(info.Env(), "invFreq must be a Float64Array");
  }
  const double* inv_freq = checked_ptr<double>(info[5], "invFreq", (size_t)(rot / 2));
  rw_rope(x, t, heads, d, pos, inv_freq, rot);
  return info.Env().Undefined();
}

}  // namespace

void register_rowwise(Napi::Env env, Napi::Object exports) {
  exports.Set("embedding", Napi::Function::New(env, Embedding));
  exports.Set("layerNorm", Napi::Function::New(env, LayerNorm));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm));
  exports.Set("relu", Napi::Function::New(env, Relu));
  exports.Set("argmax", Napi::Function::New(env, Argmax));
  exports.Set("gelu", Napi::Function::New(env, Gelu));
  exports.Set("siluMul", Napi::Function::New(env, SiluMul));
  exports.Set("add", Napi::Function::New(env, Add));
  exports.Set("softmax", Napi::Function::New(env, RowOp<rw_softmax>));
  exports.Set("logSoftmax", Napi::Function::New(env, RowOp<rw_log_softmax>));
  exports.Set("rope", Napi::Function::New(env, Rope));
}

}  // namespace tierlm
