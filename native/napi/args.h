// Argument unpacking for the N-API boundary. JavaScript (src/backend/cpu) validates shapes and
// dtypes first and throws precise errors; these checks are the last line, so that a bad call
// from anywhere throws instead of reading or writing out of bounds.
#pragma once

#include <napi.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
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

// Sizes computed from arguments: every product and sum is checked, because int_arg admits values
// up to 2^40 and two of them multiplied wrap int64 (a wrapped size passes the buffer-length check
// below and the kernel then runs far past the buffer). A RangeError names the size and its factors.
[[noreturn]] inline void throw_overflow(Napi::Env env, const char* what, int64_t a, const char* op, int64_t b) {
  throw Napi::RangeError::New(env, std::string(what) + ": " + std::to_string(a) + op + std::to_string(b) +
                                       " overflows a 64-bit size");
}

inline int64_t checked_mul(Napi::Env env, const char* what, int64_t a, int64_t b) {
  int64_t p;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &p)) throw_overflow(env, what, a, " × ", b);
  return p;
}

inline int64_t checked_add(Napi::Env env, const char* what, int64_t a, int64_t b) {
  int64_t s;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &s)) throw_overflow(env, what, a, " + ", b);
  return s;
}

// The product of `factors` (dimensions, bytes per element), checked. A zero factor makes the size
// zero but the others must still multiply without overflow: kernels compute strides from them.
inline int64_t checked_product(Napi::Env env, const char* what, std::initializer_list<int64_t> factors) {
  int64_t p = 1;
  bool zero = false;
  for (int64_t f : factors) {
    if (f == 0) zero = true;
    else p = checked_mul(env, what, p, f);
  }
  return zero ? 0 : p;
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

// At least the product of `factors` bytes (checked for overflow first).
inline Bytes checked_bytes(const Napi::Value& v, const char* what, std::initializer_list<int64_t> factors,
                           bool optional = false) {
  return checked_bytes(v, what, static_cast<size_t>(checked_product(v.Env(), what, factors)), optional);
}

template <typename T>
inline T* checked_ptr(const Napi::Value& v, const char* what, size_t min_elements, bool optional = false) {
  int64_t bytes = checked_mul(v.Env(), what, static_cast<int64_t>(min_elements), static_cast<int64_t>(sizeof(T)));
  return reinterpret_cast<T*>(checked_bytes(v, what, static_cast<size_t>(bytes), optional).data);
}

// At least the product of `factors` elements of T.
template <typename T>
inline T* checked_ptr(const Napi::Value& v, const char* what, std::initializer_list<int64_t> factors, bool optional = false) {
  return checked_ptr<T>(v, what, static_cast<size_t>(checked_product(v.Env(), what, factors)), optional);
}

inline int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* what, int64_t lo = 0,
                       int64_t hi = INT64_C(1) << 40) {
  if (i >= info.Length() || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  // Range first: converting a double outside int64 (or NaN) to an integer is undefined behaviour.
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || d != std::trunc(d)) {
    throw Napi::RangeError::New(info.Env(), std::string(what) + " must be an integer in [" + std::to_string(lo) +
                                                ", " + std::to_string(hi) + "], got " + std::to_string(d));
  }
  return static_cast<int64_t>(d);
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
