// N-API exports of the GEMM kernels (native/kernels/gemm.h).
//   gemmPackedByteLength(format, n, k)
//   gemmPackWeight(src, srcDtype, n, k, format, dst)
//   gemmMatmul(x, m, k, w, format, n, bias|null, y, mode, async[, activation, addTo]) -> undefined | Promise
//     activation: undefined | 'relu' | 'gelu' | 'gelu_tanh', addTo: undefined | null | Float32Array [m, n]
//     (kernels/epilogue.h: fused after y is computed; synchronous calls only)
//   gemmGatherRows(w, format, n, k, ids, out)
//   quantQuantize(src, n, k, bits, group, codes, params), quantDequantize(codes, params, n, k, bits, group, out)
// Formats 'q4' / 'q8' are group-wise quantized weights (native/kernels/quant.h).
#include <napi.h>

#include <cmath>
#include <cstring>
#include <string>

#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/quant.h"
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
  if (s == "q4") return Fmt::Q4;
  if (s == "q8") return Fmt::Q8;
  throw Napi::RangeError::New(info.Env(), std::string(what) + " must be 'f32', 'f16', 'bf16', 'q4' or 'q8', got '" + s + "'");
}

Fmt float_fmt_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Fmt f = fmt_arg(info, i, what);
  if (gemm::is_quant(f)) throw Napi::RangeError::New(info.Env(), std::string(what) + " must be 'f32', 'f16' or 'bf16'");
  return f;
}

Napi::RangeError unrepresentable(Napi::Env env, int64_t index, float v) {
  return Napi::RangeError::New(env, "element " + std::to_string(index) + " (" + std::to_string(v) +
                                        ") cannot be quantized: values must be finite with |x| <= 65504");
}

Mode mode_arg(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "mode must be a string");
  std::string s = info[i].As<Napi::String>();
  if (s == "fp32") return Mode::Fp32;
  if (s == "bf16") return Mode::Bf16;
  throw Napi::RangeError::New(info.Env(), "mode must be 'fp32' or 'bf16', got '" + s + "'");
}

constexpr int64_t kMaxDim = INT64_C(1) << 31;

// gemm::packed_bytes with its product checked: f32 panels of n, k up to kMaxDim pass 2^63.
int64_t packed_bytes(Napi::Env env, const char* what, Fmt f, int64_t n, int64_t k) {
  return checked_mul(env, what, gemm::panels(n), gemm::panel_bytes(f, k));
}

Napi::Value PackedByteLength(const Napi::CallbackInfo& info) {
  Fmt f = fmt_arg(info, 0, "format");
  int64_t n = int_arg(info, 1, "n", 0, kMaxDim), k = int_arg(info, 2, "k", 0, kMaxDim);
  return Napi::Number::New(info.Env(), static_cast<double>(packed_bytes(info.Env(), "packed weight", f, n, k)));
}

Napi::Value PackWeight(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6) throw Napi::TypeError::New(env, "gemmPackWeight(src, srcDtype, n, k, format, dst)");
  Fmt sf = float_fmt_arg(info, 1, "srcDtype");
  int64_t n = int_arg(info, 2, "n", 1, kMaxDim), k = int_arg(info, 3, "k", 1, kMaxDim);
  Fmt f = fmt_arg(info, 4, "format");
  Bytes src = checked_bytes(info[0], "src", {n, k, gemm::elem_bytes(sf)});
  Bytes dst = checked_bytes(info[5], "dst", {packed_bytes(env, "dst", f, n, k)});
  if ((reinterpret_cast<uintptr_t>(src.data) % gemm::elem_bytes(sf)) != 0) throw Napi::RangeError::New(env, "src is misaligned");
  if (gemm::is_quant(f)) {
    int64_t bad = quant::pack(src.data, static_cast<int>(sf), n, k, gemm::quant_bits(f), dst.data);
    if (bad >= 0) {
      float v = sf == Fmt::F32 ? reinterpret_cast<const float*>(src.data)[bad] : 0.0f;
      if (sf != Fmt::F32) {
        uint16_t h = reinterpret_cast<const uint16_t*>(src.data)[bad];
        if (sf == Fmt::Bf16) {
          uint32_t u = static_cast<uint32_t>(h) << 16;
          std::memcpy(&v, &u, 4);
        } else {
          v = (h & 0x7c00) == 0x7c00 ? ((h & 0x3ff) ? NAN : ((h & 0x8000) ? -INFINITY : INFINITY)) : 0.0f;
        }
      }
      throw unrepresentable(env, bad, v);
    }
    return env.Undefined();
  }
  gemm::pack_weight(src.data, sf, n, k, f, dst.data);
  return env.Undefined();
}

// The fused epilogue of a synchronous matmul (arguments 10 and 11).
Epilogue epilogue_args(const Napi::CallbackInfo& info, const float* x, int64_t m, int64_t k, const float* bias,
                       const float* y, int64_t n) {
  Napi::Env env = info.Env();
  Epilogue ep;
  if (info.Length() > 10 && !info[10].IsUndefined() && !info[10].IsNull()) {
    if (!info[10].IsString()) throw Napi::TypeError::New(env, "activation must be a string");
    const std::string a = info[10].As<Napi::String>();
    if (a == "relu") ep.act = Act::Relu;
    else if (a == "gelu") ep.act = Act::Gelu;
    else if (a == "gelu_tanh") ep.act = Act::GeluTanh;
    else throw Napi::RangeError::New(env, "activation must be 'relu', 'gelu' or 'gelu_tanh', got '" + a + "'");
  }
  if (info.Length() > 11) {
    ep.add_to = checked_ptr<float>(info[11], "addTo", {m, n}, true);
    if (ep.add_to) {
      const uintptr_t a0 = reinterpret_cast<uintptr_t>(ep.add_to), a1 = a0 + static_cast<uintptr_t>(m * n) * 4;
      auto overlaps = [&](const float* p, int64_t len) {
        const uintptr_t p0 = reinterpret_cast<uintptr_t>(p);
        return a0 < p0 + static_cast<uintptr_t>(len) * 4 && p0 < a1;
      };
      if (overlaps(y, m * n) || overlaps(x, m * k) || (bias && overlaps(bias, n))) {
        throw Napi::RangeError::New(env, "addTo must not overlap x, bias or y");
      }
      if (reinterpret_cast<uintptr_t>(ep.add_to) % 4 != 0) throw Napi::RangeError::New(env, "addTo must be 4-byte aligned");
    }
  }
  return ep;
}

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 9) throw Napi::TypeError::New(env, "gemmMatmul(x, m, k, w, format, n, bias, y, mode, async)");
  int64_t m = int_arg(info, 1, "m", 0, kMaxDim), k = int_arg(info, 2, "k", 1, kMaxDim);
  Fmt f = fmt_arg(info, 4, "format");
  int64_t n = int_arg(info, 5, "n", 1, kMaxDim);
  Mode mode = mode_arg(info, 8);
  const float* x = checked_ptr<float>(info[0], "x", {m, k});
  const uint8_t* w = checked_ptr<uint8_t>(info[3], "w", {packed_bytes(env, "w", f, n, k)});
  const float* bias = checked_ptr<float>(info[6], "bias", {n}, true);
  float* y = checked_ptr<float>(info[7], "y", {m, n});
  if ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(bias)) % 4 != 0) {
    throw Napi::RangeError::New(env, "x, y and bias must be 4-byte aligned");
  }
  const Epilogue ep = epilogue_args(info, x, m, k, bias, y, n);
  if (is_async(info, 9)) {
    if (ep.any()) throw Napi::TypeError::New(env, "gemmMatmul: a fused epilogue is for synchronous calls");
    Napi::Value keep_bias = info[6];
    return run_async(env, [=] { gemm::matmul(x, m, k, w, f, n, bias, y, mode); },
                     {info[0], info[3], keep_bias, info[7]});
  }
  gemm::matmul(x, m, k, w, f, n, bias, y, mode, ep);
  return env.Undefined();
}

Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6) throw Napi::TypeError::New(env, "gemmGatherRows(w, format, n, k, ids, out)");
  Fmt f = fmt_arg(info, 1, "format");
  int64_t n = int_arg(info, 2, "n", 1, kMaxDim), k = int_arg(info, 3, "k", 1, kMaxDim);
  const uint8_t* w = checked_ptr<uint8_t>(info[0], "w", {packed_bytes(env, "w", f, n, k)});
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
  float* out = checked_ptr<float>(info[5], "out", {count, k});
  gemm::gather_rows(w, f, n, k, ids, count, out);
  return env.Undefined();
}

int bits_arg(const Napi::CallbackInfo& info, size_t i) {
  int64_t b = int_arg(info, i, "bits", 4, 8);
  if (b != 4 && b != 8) throw Napi::RangeError::New(info.Env(), "bits must be 4 or 8, got " + std::to_string(b));
  return static_cast<int>(b);
}

Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7) throw Napi::TypeError::New(env, "quantQuantize(src, n, k, bits, group, codes, params)");
  int64_t n = int_arg(info, 1, "n", 0, kMaxDim), k = int_arg(info, 2, "k", 1, kMaxDim);
  int bits = bits_arg(info, 3);
  int64_t g = int_arg(info, 4, "group", 1, kMaxDim);
  const float* src = checked_ptr<float>(info[0], "src", {n, k});
  uint8_t* codes = checked_ptr<uint8_t>(info[5], "codes", {n, quant::row_code_bytes(bits, k)});
  uint16_t* params = checked_ptr<uint16_t>(info[6], "params", {n, quant::groups(k, g), 2});
  if ((reinterpret_cast<uintptr_t>(src) % 4) != 0 || (reinterpret_cast<uintptr_t>(params) % 2) != 0) {
    throw Napi::RangeError::New(env, "src or params is misaligned");
  }
  int64_t bad = quant::find_unrepresentable(src, n * k);
  if (bad >= 0) throw unrepresentable(env, bad, src[bad]);
  quant::quantize(src, n, k, bits, g, codes, params);
  return env.Undefined();
}

Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7) throw Napi::TypeError::New(env, "quantDequantize(codes, params, n, k, bits, group, out)");
  int64_t n = int_arg(info, 2, "n", 0, kMaxDim), k = int_arg(info, 3, "k", 1, kMaxDim);
  int bits = bits_arg(info, 4);
  int64_t g = int_arg(info, 5, "group", 1, kMaxDim);
  const uint8_t* codes = checked_ptr<uint8_t>(info[0], "codes", {n, quant::row_code_bytes(bits, k)});
  const uint16_t* params = checked_ptr<uint16_t>(info[1], "params", {n, quant::groups(k, g), 2});
  float* out = checked_ptr<float>(info[6], "out", {n, k});
  if ((reinterpret_cast<uintptr_t>(out) % 4) != 0 || (reinterpret_cast<uintptr_t>(params) % 2) != 0) {
    throw Napi::RangeError::New(env, "out or params is misaligned");
  }
  quant::dequantize(codes, params, n, k, bits, g, out);
  return env.Undefined();
}

// gemmBf16Kernel(name?): returns bf16 mode's GEMM kernel on bf16 weights ('fma', 'dot', 'amx',
// 'amx-emulated'; kernels/gemm.h Bf16Kernel); a name sets it ('amx' only where AMX is usable,
// 'dot' only where the CPU has AVX512_BF16: elsewhere it would read back while FMA computed).
Napi::Value Bf16KernelFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "gemmBf16Kernel: the kernel must be a string");
    const std::string name = info[0].As<Napi::String>();
    gemm::Bf16Kernel k;
    if (!gemm::parse_bf16_kernel(name.c_str(), &k)) {
      throw Napi::RangeError::New(env, "gemmBf16Kernel: unknown kernel '" + name + "' (fma, dot, amx, amx-emulated)");
    }
    if (!gemm::set_bf16_kernel(k)) {
      throw Napi::RangeError::New(env, k == gemm::Bf16Kernel::Dot
        ? "gemmBf16Kernel: 'dot' (vdpbf16ps) needs AVX512_BF16, which this CPU lacks (isaInfo().features.avx512bf16); accepted here: fma, amx-emulated"
        : "gemmBf16Kernel: 'amx' needs AMX-BF16 tiles that this CPU and OS let the process use");
    }
  }
  return Napi::String::New(env, gemm::bf16_kernel_name(gemm::bf16_kernel()));
}

// gemmBf16Dot(on?): returns whether bf16 mode uses vdpbf16ps; a boolean argument sets it (true
// only where the CPU has AVX512_BF16: elsewhere the setting stays, and the false returned says so).
Napi::Value Bf16Dot(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsBoolean()) gemm::set_bf16_dot(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), gemm::bf16_dot());
}

// gemmOnePassRows(mask?): returns the mask of kernels whose 15-16-row products take one row block
// (gemm.h, kOnePass*); a number in [0, 15] sets it.
Napi::Value OnePassRows(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    const double v = num_arg(info, 0, "mask");
    if (!(v >= 0 && v <= 15 && v == static_cast<int>(v))) throw Napi::RangeError::New(info.Env(), "gemmOnePassRows: mask must be an integer in [0, 15]");
    gemm::set_one_pass_rows(static_cast<int>(v));
  }
  return Napi::Number::New(info.Env(), gemm::one_pass_rows());
}

// gemmWidenPanels(mask?): returns the mask of kernels (gemm.h, kOnePassF16 / kOnePassBf16) whose
// panel groups are widened to f32 once where a thread sweeps kWidenBlocks row blocks or more; a
// number in [0, 15] sets it (other kernels' bits are ignored).
Napi::Value WidenPanels(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    const double v = num_arg(info, 0, "mask");
    if (!(v >= 0 && v <= 15 && v == static_cast<int>(v))) throw Napi::RangeError::New(info.Env(), "gemmWidenPanels: mask must be an integer in [0, 15]");
    gemm::set_widen_panels(static_cast<int>(v));
  }
  return Napi::Number::New(info.Env(), gemm::widen_panels());
}

// gemmIdlePrefetch(bytes?): returns how many bytes of the next weight the idle workers prefetch
// during batch-1 decode (ThreadPool::prefetch_while_idle); a number sets it (0: off).
Napi::Value IdlePrefetch(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    const double v = num_arg(info, 0, "bytes");
    if (!(v >= 0 && v <= 1e12)) throw Napi::RangeError::New(info.Env(), "gemmIdlePrefetch: bytes must be in [0, 1e12]");
    ThreadPool::instance().set_idle_prefetch_bytes(static_cast<int64_t>(v));
  }
  return Napi::Number::New(info.Env(), static_cast<double>(ThreadPool::instance().idle_prefetch_bytes()));
}

}  // namespace

void register_gemm(Napi::Env env, Napi::Object exports) {
  exports.Set("gemmPackedByteLength", Napi::Function::New(env, PackedByteLength));
  exports.Set("gemmPackWeight", Napi::Function::New(env, PackWeight));
  exports.Set("gemmMatmul", Napi::Function::New(env, Matmul));
  exports.Set("gemmGatherRows", Napi::Function::New(env, GatherRows));
  exports.Set("gemmBf16Dot", Napi::Function::New(env, Bf16Dot));
  exports.Set("gemmBf16Kernel", Napi::Function::New(env, Bf16KernelFn));
  exports.Set("gemmOnePassRows", Napi::Function::New(env, OnePassRows));
  exports.Set("gemmIdlePrefetch", Napi::Function::New(env, IdlePrefetch));
  exports.Set("gemmWidenPanels", Napi::Function::New(env, WidenPanels));
  exports.Set("quantQuantize", Napi::Function::New(env, Quantize));
  exports.Set("quantDequantize", Napi::Function::New(env, Dequantize));
}

}  // namespace tierlm
