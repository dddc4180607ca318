// Process-wide settings: threads, instruction set, aligned buffers.
#include <napi.h>

#include "core/aligned.h"
#include "core/cpu.h"
#include "core/thread_pool.h"
#include "napi/args.h"
#include "napi/register.h"

namespace tierlm {
namespace {

Napi::Value GetThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ThreadPool::instance().size());
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  int n = static_cast<int>(int_arg(info, 0, "threads", 1, 1024));
  ThreadPool::instance().resize(n);
  return info.Env().Undefined();
}

Napi::Value GetIsa(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("active", isa_name(active_isa()));
  o.Set("detected", isa_name(detected_isa()));
  const CpuFeatures& f = cpu_features();
  Napi::Object feats = Napi::Object::New(info.Env());
  feats.Set("avx2", f.avx2);
  feats.Set("fma", f.fma);
  feats.Set("f16c", f.f16c);
  feats.Set("avx512f", f.avx512f);
  feats.Set("avx512bw", f.avx512bw);
  feats.Set("avx512vl", f.avx512vl);
  feats.Set("avx512dq", f.avx512dq);
  feats.Set("avx512bf16", f.avx512bf16);
  feats.Set("avx512vnni", f.avx512vnni);
  o.Set("features", feats);
  o.Set("hardwareThreads", hardware_threads());
  return o;
}

Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "isa must be a string");
  std::string name = info[0].As<Napi::String>();
  Isa isa;
  if (!parse_isa(name.c_str(), &isa)) {
    throw Napi::RangeError::New(info.Env(), "unknown isa '" + name + "' (scalar, avx2, avx512, avx512bf16)");
  }
  return Napi::Boolean::New(info.Env(), set_isa(isa));
}

// alignedBuffer(bytes, alignment): an ArrayBuffer outside the V8 heap, zero-filled, whose start is
// aligned for SIMD loads and O_DIRECT I/O.
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  size_t bytes = static_cast<size_t>(int_arg(info, 0, "bytes", 0, INT64_C(1) << 46));
  size_t alignment = info.Length() > 1 ? static_cast<size_t>(int_arg(info, 1, "alignment", 1, 1 << 20)) : kIoAlignment;
  if ((alignment & (alignment - 1)) != 0 || alignment < sizeof(void*)) {
    throw Napi::RangeError::New(info.Env(), "alignment must be a power of two >= 8");
  }
  void* p = aligned_alloc_tracked(bytes, alignment, true);
  if (!p) throw Napi::Error::New(info.Env(), "out of memory allocating " + std::to_string(bytes) + " bytes");
  return Napi::ArrayBuffer::New(info.Env(), p, bytes, [](Napi::Env, void* data, size_t* hint) {
    aligned_free_tracked(data, *hint);
    delete hint;
  }, new size_t(bytes));
}

Napi::Value TrackedBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(tracked_bytes()));
}

}  // namespace

void register_core(Napi::Env env, Napi::Object exports) {
  exports.Set("getThreads", Napi::Function::New(env, GetThreads));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("getIsa", Napi::Function::New(env, GetIsa));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer));
  exports.Set("trackedBytes", Napi::Function::New(env, TrackedBytes));
}

}  // namespace tierlm
