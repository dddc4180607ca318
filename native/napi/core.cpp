// Process-wide settings (threads, instruction set), aligned buffers and strided byte copies.
#include <napi.h>

#include <algorithm>
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

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

// poolSpin(micros?): returns how long an idle pool worker spins before it sleeps; a number sets it
// (0: sleep at once).
Napi::Value PoolSpin(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    const double v = num_arg(info, 0, "micros");
    const bool in_range = v >= 0 && v <= static_cast<double>(ThreadPool::kMaxSpinMicros);
    // (the cast only once v is in range: a NaN or a huge value cast to int64_t is undefined)
    if (!in_range || v != static_cast<double>(static_cast<int64_t>(v)))
      throw Napi::RangeError::New(info.Env(), "poolSpin: micros must be an integer in [0, 1e7]");
    ThreadPool::instance().set_spin_micros(static_cast<int64_t>(v));
  }
  return Napi::Number::New(info.Env(), static_cast<double>(ThreadPool::instance().spin_micros()));
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
  feats.Set("amxTile", f.amx_tile);
  feats.Set("amxBf16", f.amx_bf16);
  o.Set("features", feats);
  // AMX is not an ISA level (bf16 mode's GEMM kernels, gemmBf16Kernel): whether it may run here.
  o.Set("amx", amx_usable());
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

// copyStrided(dst, dstOffset, src, srcOffset, run, n0, n1, dstStride0, dstStride1, srcStride0,
// srcStride1): copies n0 × n1 runs of `run` bytes, run (i, j) from src + srcOffset + i·srcStride0 +
// j·srcStride1 to the same place in dst. Offsets and strides are in bytes and non-negative; both
// ranges are checked against the arrays. The disk tier uses it to re-lay KV cache records
// (one position of every head) into the attention kernels' layout (one head of every position)
// and back: it ran as JavaScript `set` calls per head and position, on the thread that drives
// compute, and cost more than the disk reads it followed.
Napi::Value CopyStrided(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 11) throw Napi::TypeError::New(env, "copyStrided: expected 11 arguments");
  Bytes dst = typed_bytes(info[0], "copyStrided: dst");
  Bytes src = typed_bytes(info[2], "copyStrided: src");
  const int64_t dst_off = int_arg(info, 1, "dstOffset");
  const int64_t src_off = int_arg(info, 3, "srcOffset");
  const int64_t run = int_arg(info, 4, "run");
  const int64_t n0 = int_arg(info, 5, "n0");
  const int64_t n1 = int_arg(info, 6, "n1");
  const int64_t ds0 = int_arg(info, 7, "dstStride0");
  const int64_t ds1 = int_arg(info, 8, "dstStride1");
  const int64_t ss0 = int_arg(info, 9, "srcStride0");
  const int64_t ss1 = int_arg(info, 10, "srcStride1");
  if (run == 0 || n0 == 0 || n1 == 0) return env.Undefined();
  auto check = [&](const char* what, const Bytes& b, int64_t off, int64_t s0, int64_t s1) {
    // off + (n0 - 1)·s0 + (n1 - 1)·s1 + run, each step checked: strides and counts up to 2^40 wrap int64.
    const std::string name = std::string("copyStrided: ") + what;
    int64_t end = checked_add(env, name.c_str(), off, checked_mul(env, name.c_str(), n0 - 1, s0));
    end = checked_add(env, name.c_str(), end, checked_mul(env, name.c_str(), n1 - 1, s1));
    end = checked_add(env, name.c_str(), end, run);
    if (end > static_cast<int64_t>(b.length)) {
      throw Napi::RangeError::New(env, std::string("copyStrided: ") + what + " needs " + std::to_string(end) +
                                           " bytes, holds " + std::to_string(b.length));
    }
  };
  check("dst", dst, dst_off, ds0, ds1);
  check("src", src, src_off, ss0, ss1);
  uint8_t* d = dst.data + dst_off;
  const uint8_t* s = src.data + src_off;
  // About 256 KiB per task; run · n1 can overflow when the inner stride is 0, so cap it first.
  const int64_t per_row = n1 > (INT64_C(1) << 18) / run ? (INT64_C(1) << 18) : run * n1;
  const int64_t grain = std::max<int64_t>(1, (INT64_C(1) << 18) / per_row);
  ThreadPool::instance().parallel_for(n0, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      for (int64_t j = 0; j < n1; j++) std::memcpy(d + i * ds0 + j * ds1, s + i * ss0 + j * ss1, static_cast<size_t>(run));
    }
  });
  return env.Undefined();
}

// adviseHugePages(view): marks the whole 2 MiB pages inside a typed array's bytes for transparent
// huge pages (core/aligned.h), for a large buffer allocated in JavaScript before it is first
// written. Returns the bytes advised (0 when off, too small, or refused).
Napi::Value AdviseHugePages(const Napi::CallbackInfo& info) {
  Bytes b = typed_bytes(info[0], "adviseHugePages: view");
  const size_t n = huge_pages_for(b.length) ? advise_huge_pages(b.data, b.length) : 0;
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value TrackedBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(tracked_bytes()));
}

// trimMemory(): hands memory that malloc holds free back to the OS, in every arena; returns
// whether any was released. V8 compiles WebAssembly (the planner's LP solver) on background threads
// whose arenas keep ~80 MB of freed compiler memory resident: without a trim that memory stays in
// RSS for the whole run, outside any --ram plan. Not glibc: nothing to do.
Napi::Value TrimMemory(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

}  // namespace

// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so once a
// block's buffers (KV cache staging, activations, tens of MB each) have been freed, the next
// block's come from the heap, and what those free again stays resident until a trim. A server
// that reopens its block for each wave of requests grew by the block's size per reopen (opt-350m
// under --ram 400MiB: 380 → 560 MiB of RSS with the tracked buffers constant). A fixed threshold
// keeps every buffer of 1 MiB or more in its own mapping, returned to the OS when freed, so RSS
// follows what is live; mapping costs nothing measurable here (decode and prefill unchanged
// within noise on opt-125m at batch 32). Process-wide, as the limits the engine keeps are.
static void fix_mmap_threshold() {
#if defined(__GLIBC__)
  static const bool done = mallopt(M_MMAP_THRESHOLD, 1 << 20) != 0;
  (void)done;
#endif
}

void register_core(Napi::Env env, Napi::Object exports) {
  fix_mmap_threshold();
  exports.Set("getThreads", Napi::Function::New(env, GetThreads));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("poolSpin", Napi::Function::New(env, PoolSpin));
  exports.Set("getIsa", Napi::Function::New(env, GetIsa));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer));
  exports.Set("trackedBytes", Napi::Function::New(env, TrackedBytes));
  exports.Set("adviseHugePages", Napi::Function::New(env, AdviseHugePages));
  exports.Set("copyStrided", Napi::Function::New(env, CopyStrided));
  exports.Set("trimMemory", Napi::Function::New(env, TrimMemory));
}

}  // namespace tierlm
