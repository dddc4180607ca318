// Argument helpers of the training exports (grad.cpp, optim.cpp), on top of args.h: element
// counts multiplied with overflow checks, Float32Array checks and the ragged-batch seqStarts.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "napi/args.h"

namespace tierlm {

// a · b (· c), or a RangeError naming `what` when the product overflows int64.
inline int64_t checked_count(const Napi::Env& env, const char* what, int64_t a, int64_t b, int64_t c = 1) {
  int64_t ab, abc;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) || abc > (INT64_C(1) << 46))
    throw Napi::RangeError::New(env, std::string(what) + ": size overflows");
  return abc;
}

// A Float32Array of at least `count` elements.
inline float* f32_arg(const Napi::Value& v, const char* what, int64_t count, bool optional = false) {
  if (optional && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Float32Array");
  return checked_ptr<float>(v, what, static_cast<size_t>(count));
}

// An Int32Array of at least `count` elements.
inline int32_t* i32_arg(const Napi::Value& v, const char* what, int64_t count) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an Int32Array");
  return checked_ptr<int32_t>(v, what, static_cast<size_t>(count));
}

// seqStarts of a ragged batch of t tokens: from 0 to t, never decreasing. Returns a copy.
inline std::vector<int32_t> seq_starts_arg(const Napi::Value& v, int64_t t) {
  Bytes b = typed_bytes(v, "seqStarts");
  if (v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(v.Env(), "seqStarts must be an Int32Array");
  const int32_t* p = reinterpret_cast<const int32_t*>(b.data);
  std::vector<int32_t> s(p, p + b.length / 4);
  if (s.size() < 2 || s.front() != 0 || s.back() != t)
    throw Napi::RangeError::New(v.Env(), "seqStarts must run from 0 to " + std::to_string(t));
  for (size_t i = 1; i < s.size(); i++)
    if (s[i] < s[i - 1]) throw Napi::RangeError::New(v.Env(), "seqStarts must not decrease");
  return s;
}

// 'f32' → false, 'bf16' → true: the element type of a gradient or norm input.
inline bool bf16_dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i < info.Length() && info[i].IsString()) {
    std::string s = info[i].As<Napi::String>();
    if (s == "f32") return false;
    if (s == "bf16") return true;
    throw Napi::RangeError::New(info.Env(), std::string(what) + " must be 'f32' or 'bf16', got '" + s + "'");
  }
  throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
}

}  // namespace tierlm
