// Argument unpacking for the N-API boundary. JavaScript (src/backend/cpu) validates shapes and
// dtypes first and throws precise errors; these checks are the last line, so that a bad call
// from anywhere throws instead of reading or writing out of bounds.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace tierlm {

struct Bytes {
  uint8_t* data = nullptr;
  size_t length = 0;  // in bytes
};

// Any TypedArray, DataView-free: returns its bytes. Throws a TypeError naming `what` otherwise.
inline Bytes typed_bytes(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a TypedArray");
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  Napi::ArrayBuffer buf = t.ArrayBuffer();
  Bytes b;
  b.data = static_cast<uint8_t*>(buf.Data()) + t.ByteOffset();
  b.length = t.ByteLength();
  return b;
}

// Like typed_bytes, but requires at least `min_bytes` bytes; null/undefined gives an empty Bytes
// when `optional` is set.
inline Bytes checked_bytes(const Napi::Value& v, const char* what, size_t min_bytes, bool optional = false) {
  if (optional && (v.IsNull() || v.IsUndefined())) return Bytes{};
  Bytes b = typed_bytes(v, what);
  if (b.length < min_bytes) {
    throw Napi::RangeError::New(v.Env(), std::string(what) + " holds " + std::to_string(b.length) +
                                             " bytes, needs at least " + std::to_string(min_bytes));
  }
  return b;
}

template <typename T>
inline T* checked_ptr(const Napi::Value& v, const char* what, size_t min_elements, bool optional = false) {
  Bytes b = checked_bytes(v, what, min_elements * sizeof(T), optional);
  return reinterpret_cast<T*>(b.data);
}

inline int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* what, int64_t lo = 0,
                       int64_t hi = INT64_C(1) << 40) {
  if (i >= info.Length() || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  int64_t v = static_cast<int64_t>(d);
  if (static_cast<double>(v) != d || v < lo || v > hi) {
    throw Napi::RangeError::New(info.Env(), std::string(what) + " must be an integer in [" + std::to_string(lo) +
                                                ", " + std::to_string(hi) + "], got " + std::to_string(d));
  }
  return v;
}

inline double num_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  }
  return info[i].As<Napi::Number>().DoubleValue();
}

inline bool is_async(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() && info[i].IsBoolean() && info[i].As<Napi::Boolean>().Value();
}

}  // namespace tierlm
