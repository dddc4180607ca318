// N-API exports of the backward kernels (native/kernels/grad.h, gemm.h's gradients,
// attention_train.h). src/backend/cpu/grad.ts wraps them; the checks here keep a raw call inside
// its buffers.
//   gemmPackWeightT(src, srcDtype, n, k, format, dst)         Wᵀ packed, for dX = dY · W
//   gemmGradWeight(dy, x, m, n, k, dw, mode, async)            dw[n,k] += dyᵀ · x (-> Promise if async)
//   layerNormBackward(x, dy, rows, cols, gamma, eps, dx, dgamma, dbeta|null)
//   rmsNormBackward(x, dy, rows, cols, gamma, eps, dx, dgamma)
//   reluBackward(x, dy, dx), geluBackward(x, dy, dx, approximate), siluMulBackward(gate, up, dy, dgate, dup)
//   biasGrad(dy, rows, cols, dbias), embeddingBackward(dy, ids, vocab, dim, dtable)
//   softmaxCrossEntropy(logits, rows, vocab, labels, scale) -> [lossSum, count]
//   attentionTrainForward(q, k, v, t, hq, hkv, d, seqStarts, scale, out, lse)
//   attentionTrainBackward(q, k, v, out, lse, dout, t, hq, hkv, d, seqStarts, scale, dq, dk, dv)
#include <napi.h>

#include <string>

#include "kernels/attention_train.h"
#include "kernels/gemm.h"
#include "kernels/grad.h"
#include "napi/async.h"
#include "napi/register.h"
#include "napi/train_args.h"

namespace tierlm {
namespace {

constexpr int64_t kMaxDim = INT64_C(1) << 31;

gemm::Fmt weight_fmt_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i < info.Length() && info[i].IsString()) {
    std::string s = info[i].As<Napi::String>();
    if (s == "f32") return gemm::Fmt::F32;
    if (s == "f16") return gemm::Fmt::F16;
    if (s == "bf16") return gemm::Fmt::Bf16;
    throw Napi::RangeError::New(info.Env(), std::string(what) + " must be 'f32', 'f16' or 'bf16', got '" + s + "'");
  }
  throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
}

Napi::Value PackWeightT(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  gemm::Fmt sf = weight_fmt_arg(info, 1, "srcDtype"), f = weight_fmt_arg(info, 4, "format");
  int64_t n = int_arg(info, 2, "n", 1, kMaxDim), k = int_arg(info, 3, "k", 1, kMaxDim);
  const int64_t count = checked_count(env, "src", n, k);
  Bytes src = checked_bytes(info[0], "src", static_cast<size_t>(count * gemm::elem_bytes(sf)));
  if (reinterpret_cast<uintptr_t>(src.data) % gemm::elem_bytes(sf) != 0) throw Napi::RangeError::New(env, "src is misaligned");
  Bytes dst = checked_bytes(info[5], "dst", static_cast<size_t>(gemm::packed_bytes(f, k, n)));
  gemm::pack_weight_t(src.data, sf, n, k, f, dst.data);
  return env.Undefined();
}

Napi::Value GradWeight(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t m = int_arg(info, 2, "m", 0, kMaxDim), n = int_arg(info, 3, "n", 1, kMaxDim), k = int_arg(info, 4, "k", 1, kMaxDim);
  const float* dy = f32_arg(info[0], "dy", checked_count(env, "dy", m, n));
  const float* x = f32_arg(info[1], "x", checked_count(env, "x", m, k));
  float* dw = f32_arg(info[5], "dw", checked_count(env, "dw", n, k));
  std::string mode = info[6].IsString() ? info[6].As<Napi::String>().Utf8Value() : "";
  if (mode != "fp32" && mode != "bf16") throw Napi::RangeError::New(env, "mode must be 'fp32' or 'bf16'");
  const gemm::Mode md = mode == "bf16" ? gemm::Mode::Bf16 : gemm::Mode::Fp32;
  auto work = [=] { gemm::matmul_grad_weight(dy, x, m, n, k, dw, md); };
  if (is_async(info, 7)) return run_async(env, work, {info[0], info[1], info[5]});
  work();
  return env.Undefined();
}

// norm backward: (x, dy, rows, cols, gamma, eps, dx, dgamma, dbeta?)
template <bool kRms>
Napi::Value NormBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t rows = int_arg(info, 2, "rows"), cols = int_arg(info, 3, "cols");
  const int64_t count = checked_count(env, "x", rows, cols);
  const float* x = f32_arg(info[0], "x", count);
  const float* dy = f32_arg(info[1], "dy", count);
  const float* gamma = f32_arg(info[4], "gamma", cols);
  float eps = static_cast<float>(num_arg(info, 5, "eps"));
  float* dx = f32_arg(info[6], "dx", count);
  float* dgamma = f32_arg(info[7], "dgamma", cols);
  if (kRms) {
    grad_rms_norm(x, dy, rows, cols, gamma, eps, dx, dgamma);
  } else {
    grad_layer_norm(x, dy, rows, cols, gamma, eps, dx, dgamma, f32_arg(info[8], "dbeta", cols, true));
  }
  return env.Undefined();
}

size_t f32_length(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Float32Array");
  return v.As<Napi::TypedArray>().ElementLength();
}

Napi::Value ReluBackward(const Napi::CallbackInfo& info) {
  const int64_t n = static_cast<int64_t>(f32_length(info[0], "x"));
  grad_relu(f32_arg(info[0], "x", n), f32_arg(info[1], "dy", n), n, f32_arg(info[2], "dx", n));
  return info.Env().Undefined();
}

Napi::Value GeluBackward(const Napi::CallbackInfo& info) {
  const int64_t n = static_cast<int64_t>(f32_length(info[0], "x"));
  grad_gelu(f32_arg(info[0], "x", n), f32_arg(info[1], "dy", n), n, f32_arg(info[2], "dx", n), is_async(info, 3));
  return info.Env().Undefined();
}

Napi::Value SiluMulBackward(const Napi::CallbackInfo& info) {
  const int64_t n = static_cast<int64_t>(f32_length(info[0], "gate"));
  grad_silu_mul(f32_arg(info[0], "gate", n), f32_arg(info[1], "up", n), f32_arg(info[2], "dy", n), n,
                f32_arg(info[3], "dgate", n), f32_arg(info[4], "dup", n));
  return info.Env().Undefined();
}

Napi::Value BiasGrad(const Napi::CallbackInfo& info) {
  int64_t rows = int_arg(info, 1, "rows"), cols = int_arg(info, 2, "cols");
  grad_bias(f32_arg(info[0], "dy", checked_count(info.Env(), "dy", rows, cols)), rows, cols, f32_arg(info[3], "dbias", cols));
  return info.Env().Undefined();
}

Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t vocab = int_arg(info, 2, "vocab"), dim = int_arg(info, 3, "dim");
  Bytes idb = typed_bytes(info[1], "ids");
  const int64_t n = static_cast<int64_t>(idb.length / 4);
  const int32_t* ids = i32_arg(info[1], "ids", n);
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Napi::RangeError::New(env, "ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " is outside [0, " + std::to_string(vocab) + ")");
  const float* dy = f32_arg(info[0], "dy", checked_count(env, "dy", n, dim));
  float* dtable = f32_arg(info[4], "dtable", checked_count(env, "dtable", vocab, dim));
  grad_embedding(dy, ids, n, dim, dtable);
  return env.Undefined();
}

Napi::Value SoftmaxCrossEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t rows = int_arg(info, 1, "rows"), vocab = int_arg(info, 2, "vocab", 1, kMaxDim);
  float* logits = f32_arg(info[0], "logits", checked_count(env, "logits", rows, vocab));
  const int32_t* labels = i32_arg(info[3], "labels", rows);
  for (int64_t r = 0; r < rows; r++)
    if (labels[r] != kIgnoreIndex && (labels[r] < 0 || labels[r] >= vocab))
      throw Napi::RangeError::New(env, "labels[" + std::to_string(r) + "] = " + std::to_string(labels[r]) + " is outside [0, " +
                                           std::to_string(vocab) + ") and is not -100");
  int64_t count = 0;
  const double loss = softmax_cross_entropy(logits, labels, rows, vocab, static_cast<float>(num_arg(info, 4, "scale")), &count);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, loss));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(count)));
  return out;
}

struct AttnDims {
  int64_t t, hq, hkv, d, qn, kn;
};

AttnDims attn_dims(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  AttnDims a{int_arg(info, i, "t"), int_arg(info, i + 1, "hq", 1), int_arg(info, i + 2, "hkv", 1), int_arg(info, i + 3, "d", 1), 0, 0};
  if (a.hq % a.hkv != 0)
    throw Napi::RangeError::New(env, std::to_string(a.hq) + " query heads cannot be grouped over " + std::to_string(a.hkv) + " key/value heads");
  a.qn = checked_count(env, "q", a.t, a.hq, a.d);
  a.kn = checked_count(env, "k", a.t, a.hkv, a.d);
  return a;
}

Napi::Value AttentionTrainForward(const Napi::CallbackInfo& info) {
  const AttnDims a = attn_dims(info, 3);
  std::vector<int32_t> starts = seq_starts_arg(info[7], a.t);
  attn_train::forward(f32_arg(info[0], "q", a.qn), f32_arg(info[1], "k", a.kn), f32_arg(info[2], "v", a.kn), a.t, a.hq,
                      a.hkv, a.d, starts.data(), static_cast<int64_t>(starts.size()) - 1,
                      static_cast<float>(num_arg(info, 8, "scale")), f32_arg(info[9], "out", a.qn),
                      f32_arg(info[10], "lse", a.t * a.hq));
  return info.Env().Undefined();
}

Napi::Value AttentionTrainBackward(const Napi::CallbackInfo& info) {
  const AttnDims a = attn_dims(info, 6);
  std::vector<int32_t> starts = seq_starts_arg(info[10], a.t);
  attn_train::backward(f32_arg(info[0], "q", a.qn), f32_arg(info[1], "k", a.kn), f32_arg(info[2], "v", a.kn),
                       f32_arg(info[3], "out", a.qn), f32_arg(info[4], "lse", a.t * a.hq), f32_arg(info[5], "dout", a.qn),
                       a.t, a.hq, a.hkv, a.d, starts.data(), static_cast<int64_t>(starts.size()) - 1,
                       static_cast<float>(num_arg(info, 11, "scale")), f32_arg(info[12], "dq", a.qn),
                       f32_arg(info[13], "dk", a.kn), f32_arg(info[14], "dv", a.kn));
  return info.Env().Undefined();
}

}  // namespace

void register_grad(Napi::Env env, Napi::Object exports) {
  exports.Set("gemmPackWeightT", Napi::Function::New(env, PackWeightT));
  exports.Set("gemmGradWeight", Napi::Function::New(env, GradWeight));
  exports.Set("layerNormBackward", Napi::Function::New(env, NormBackward<false>));
  exports.Set("rmsNormBackward", Napi::Function::New(env, NormBackward<true>));
  exports.Set("reluBackward", Napi::Function::New(env, ReluBackward));
  exports.Set("geluBackward", Napi::Function::New(env, GeluBackward));
  exports.Set("siluMulBackward", Napi::Function::New(env, SiluMulBackward));
  exports.Set("biasGrad", Napi::Function::New(env, BiasGrad));
  exports.Set("embeddingBackward", Napi::Function::New(env, EmbeddingBackward));
  exports.Set("softmaxCrossEntropy", Napi::Function::New(env, SoftmaxCrossEntropy));
  exports.Set("attentionTrainForward", Napi::Function::New(env, AttentionTrainForward));
  exports.Set("attentionTrainBackward", Napi::Function::New(env, AttentionTrainBackward));
}

}  // namespace tierlm
