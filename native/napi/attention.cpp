// N-API exports of the attention kernels (native/kernels/attention.h). src/backend/cpu/attention.ts
// wraps them; the checks here only keep a raw call inside its buffers.
#include <napi.h>

#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/quant.h"
#include "napi/args.h"
#include "napi/async.h"
#include "napi/register.h"

namespace tierlm {
namespace {

// Throws "<what>[i] = v <why()>" as a RangeError unless lo <= v <= hi (why() is built only then).
template <typename Why>
void check_entry(Napi::Env env, const char* what, int64_t i, int64_t v, int64_t lo, int64_t hi, Why why) {
  if (v < lo || v > hi)
    throw Napi::RangeError::New(env, std::string(what) + "[" + std::to_string(i) + "] = " + std::to_string(v) + " " + why());
}

int cache_dtype_arg(const Napi::CallbackInfo& info, size_t i) {
  if (i < info.Length() && info[i].IsString()) {
    std::string s = info[i].As<Napi::String>();
    if (s == "f32") return kCacheF32;
    if (s == "f16") return kCacheF16;
    if (s == "q4") return kCacheQ4;
  }
  throw Napi::TypeError::New(info.Env(), "cacheDtype must be 'f32', 'f16' or 'q4'");
}

void check_heads(const Napi::CallbackInfo& info, int64_t hq, int64_t hkv) {
  if (hkv < 1 || hq % hkv != 0)
    throw Napi::RangeError::New(info.Env(), std::to_string(hq) + " query heads cannot be grouped over " + std::to_string(hkv) + " key/value heads");
}

// attentionPrefill(q, k, v, t, hq, hkv, d, seqStarts, scale, out, async)
Napi::Value Prefill(const Napi::CallbackInfo& info) {
  int64_t t = int_arg(info, 3, "t"), hq = int_arg(info, 4, "hq"), hkv = int_arg(info, 5, "hkv"), d = int_arg(info, 6, "d");
  check_heads(info, hq, hkv);
  const float* q = checked_ptr<float>(info[0], "q", {t, hq, d});
  const float* k = checked_ptr<float>(info[1], "k", {t, hkv, d});
  const float* v = checked_ptr<float>(info[2], "v", {t, hkv, d});
  Bytes sb = typed_bytes(info[7], "seqStarts");
  int64_t ns = (int64_t)(sb.length / 4);
  std::vector<int32_t> starts(reinterpret_cast<const int32_t*>(sb.data), reinterpret_cast<const int32_t*>(sb.data) + ns);
  if (ns < 2 || starts[0] != 0 || starts[ns - 1] != t)
    throw Napi::RangeError::New(info.Env(), "seqStarts must run from 0 to " + std::to_string(t));
  for (int64_t i = 1; i < ns; i++)
    if (starts[i] < starts[i - 1]) throw Napi::RangeError::New(info.Env(), "seqStarts must not decrease");
  float scale = (float)num_arg(info, 8, "scale");
  float* out = checked_ptr<float>(info[9], "out", {t, hq, d});
  auto work = [=, starts = std::move(starts)]() { attn_prefill(q, k, v, t, hq, hkv, d, starts.data(), ns, scale, out); };
  if (is_async(info, 10)) return run_async(info.Env(), work, {info[0], info[1], info[2], info[9]});
  work();
  return info.Env().Undefined();
}

// attentionDecode(q, kCache, vCache, cacheDtype, b, hq, hkv, d, cap, lens, scale, out, async, sparsity)
// sparsity: optional (undefined: 1), in (0, 1].
Napi::Value Decode(const Napi::CallbackInfo& info) {
  int kind = cache_dtype_arg(info, 3);
  int64_t b = int_arg(info, 4, "b"), hq = int_arg(info, 5, "hq"), hkv = int_arg(info, 6, "hkv"), d = int_arg(info, 7, "d"),
          cap = int_arg(info, 8, "cap");
  check_heads(info, hq, hkv);
  const float* q = checked_ptr<float>(info[0], "q", {b, hq, d});
  const void* kc = checked_bytes(info[1], "kCache", {b, hkv, cap, cache_row_bytes(kind, d)}).data;
  const void* vc = checked_bytes(info[2], "vCache", {b, hkv, cap, cache_row_bytes(kind, d)}).data;
  const int32_t* lp = checked_ptr<int32_t>(info[9], "lens", (size_t)b);
  std::vector<int32_t> lens(lp, lp + b);
  for (int64_t i = 0; i < b; i++)
    check_entry(info.Env(), "lens", i, lens[i], 1, cap, [&] { return "is outside [1, " + std::to_string(cap) + "]"; });
  float scale = (float)num_arg(info, 10, "scale");
  float* out = checked_ptr<float>(info[11], "out", {b, hq, d});
  double sparsity = 1.0;
  if (info.Length() > 13 && !info[13].IsUndefined()) {
    sparsity = num_arg(info, 13, "sparsity");
    if (!(sparsity > 0.0 && sparsity <= 1.0))
      throw Napi::RangeError::New(info.Env(), "sparsity must be in (0, 1], got " + std::to_string(sparsity));
  }
  auto work = [=, lens = std::move(lens)]() { attn_decode(q, kc, vc, kind, b, hq, hkv, d, cap, lens.data(), scale, sparsity, out); };
  if (is_async(info, 12)) return run_async(info.Env(), work, {info[0], info[1], info[2], info[11]});
  work();
  return info.Env().Undefined();
}

// Throws the RangeError a cache write of `kind` gives for src[0..n) it cannot store, naming the element.
void check_storable(const Napi::Env& env, int kind, const float* src, int64_t n, const std::string& what) {
  if (kind == kCacheQ4) {
    int64_t bad = quant::find_unrepresentable(src, n);
    if (bad >= 0)
      throw Napi::RangeError::New(env, what + "element " + std::to_string(bad) + " (" + std::to_string(src[bad]) +
                                           ") cannot be quantized: values must be finite with |x| <= 65504");
  } else if (kind == kCacheF16) {
    int64_t bad = quant::find_f16_overflow(src, n);
    if (bad >= 0)
      throw Napi::RangeError::New(env, what + "element " + std::to_string(bad) + " (" + std::to_string(src[bad]) +
                                           ") is beyond an f16 cache's range (it would be stored as infinity): keep the cache in f32 (cacheDtype \"f32\")");
  }
}

// attentionCached(q, kCache, vCache, cacheDtype, t, hq, hkv, d, b, cap, rows, lens, scale, out, async, sparsity,
//                 kNew, vNew)
// Token i reads cache row rows[i] (< b), positions 0..lens[i]-1. kNew and vNew (optional, [t, hkv, d],
// both or neither; rows distinct): token i's keys and values, written at position lens[i]-1 first.
Napi::Value Cached(const Napi::CallbackInfo& info) {
  int kind = cache_dtype_arg(info, 3);
  int64_t t = int_arg(info, 4, "t"), hq = int_arg(info, 5, "hq"), hkv = int_arg(info, 6, "hkv"), d = int_arg(info, 7, "d"),
          b = int_arg(info, 8, "b"), cap = int_arg(info, 9, "cap");
  check_heads(info, hq, hkv);
  const float* q = checked_ptr<float>(info[0], "q", {t, hq, d});
  const void* kc = checked_bytes(info[1], "kCache", {b, hkv, cap, cache_row_bytes(kind, d)}).data;
  const void* vc = checked_bytes(info[2], "vCache", {b, hkv, cap, cache_row_bytes(kind, d)}).data;
  const int32_t* rp = checked_ptr<int32_t>(info[10], "rows", (size_t)t);
  const int32_t* lp = checked_ptr<int32_t>(info[11], "lens", (size_t)t);
  std::vector<int32_t> rows(rp, rp + t), lens(lp, lp + t);
  for (int64_t i = 0; i < t; i++) {
    check_entry(info.Env(), "rows", i, rows[i], 0, b - 1, [&] { return "is outside [0, " + std::to_string(b) + ")"; });
    check_entry(info.Env(), "lens", i, lens[i], 1, cap, [&] { return "is outside [1, " + std::to_string(cap) + "]"; });
  }
  float scale = (float)num_arg(info, 12, "scale");
  float* out = checked_ptr<float>(info[13], "out", {t, hq, d});
  double sparsity = 1.0;
  if (info.Length() > 15 && !info[15].IsUndefined()) {
    sparsity = num_arg(info, 15, "sparsity");
    if (!(sparsity > 0.0 && sparsity <= 1.0))
      throw Napi::RangeError::New(info.Env(), "sparsity must be in (0, 1], got " + std::to_string(sparsity));
  }
  const bool append = info.Length() > 16 && !info[16].IsUndefined();
  const float* k_new = nullptr;
  const float* v_new = nullptr;
  if (append) {
    k_new = checked_ptr<float>(info[16], "kNew", {t, hkv, d});
    v_new = checked_ptr<float>(info[17], "vNew", {t, hkv, d});
    std::vector<char> seen((size_t)b, 0);
    for (int64_t i = 0; i < t; i++) {
      if (seen[rows[i]]) throw Napi::RangeError::New(info.Env(), "rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                                          " repeats an earlier token's row: keys and values appended in the call need one token a row");
      seen[rows[i]] = 1;
    }
    check_storable(info.Env(), kind, k_new, t * hkv * d, "kNew ");
    check_storable(info.Env(), kind, v_new, t * hkv * d, "vNew ");
  }
  auto work = [=, rows = std::move(rows), lens = std::move(lens)]() {
    attn_cached(q, kc, vc, kind, t, hq, hkv, d, cap, rows.data(), lens.data(), scale, sparsity, out, k_new, v_new);
  };
  if (is_async(info, 14)) {
    if (append) return run_async(info.Env(), work, {info[0], info[1], info[2], info[13], info[16], info[17]});
    return run_async(info.Env(), work, {info[0], info[1], info[2], info[13]});
  }
  work();
  return info.Env().Undefined();
}

// attnPrefetch(bytes?): returns decode attention's in-stream prefetch distance (bytes, 0: off),
// setting it first when given (kernels/attention.h attn_prefetch_bytes; for paired A/B runs).
Napi::Value Prefetch(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    double v = num_arg(info, 0, "bytes");
    if (!(v >= 0 && v <= 1e9)) throw Napi::RangeError::New(info.Env(), "attnPrefetch: bytes must be in [0, 1e9]");
    set_attn_prefetch_bytes(static_cast<int64_t>(v));
  }
  return Napi::Number::New(info.Env(), static_cast<double>(attn_prefetch_bytes()));
}

// cacheWrite(cache, cacheDtype, b, hkv, cap, d, src, t, rows, positions): token i of src into row
// rows[i] at position positions[i].
Napi::Value CacheWrite(const Napi::CallbackInfo& info) {
  int kind = cache_dtype_arg(info, 1);
  int64_t b = int_arg(info, 2, "b"), hkv = int_arg(info, 3, "hkv"), cap = int_arg(info, 4, "cap"), d = int_arg(info, 5, "d");
  int64_t t = int_arg(info, 7, "t");
  const int32_t* rp = checked_ptr<int32_t>(info[8], "rows", (size_t)t);
  const int32_t* pp = checked_ptr<int32_t>(info[9], "positions", (size_t)t);
  std::vector<int32_t> rows(rp, rp + t), pos(pp, pp + t);
  for (int64_t i = 0; i < t; i++) {
    check_entry(info.Env(), "rows", i, rows[i], 0, b - 1, [&] { return "is outside the cache's " + std::to_string(b) + " rows"; });
    check_entry(info.Env(), "positions", i, pos[i], 0, cap - 1, [&] { return "overruns the cache capacity " + std::to_string(cap); });
  }
  void* cache = checked_bytes(info[0], "cache", {b, hkv, cap, cache_row_bytes(kind, d)}).data;
  const float* src = checked_ptr<float>(info[6], "src", {t, hkv, d});
  check_storable(info.Env(), kind, src, t * hkv * d, "");
  attn_cache_write(cache, kind, b, hkv, cap, d, src, t, rows.data(), pos.data());
  return info.Env().Undefined();
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionPrefill", Napi::Function::New(env, Prefill));
  exports.Set("attentionDecode", Napi::Function::New(env, Decode));
  exports.Set("attentionCached", Napi::Function::New(env, Cached));
  exports.Set("cacheWrite", Napi::Function::New(env, CacheWrite));
  exports.Set("attnPrefetch", Napi::Function::New(env, Prefetch));
}

}  // namespace tierlm
