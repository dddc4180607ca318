// RAM read bandwidth, for `tierlm profile`: a decode step at batch 1 only reads its weights, so
// the rate to compare its kernels with is how fast the compute threads can read RAM, not a copy's
// (which also writes). readPass(u8) reads the whole array once on every compute thread (contiguous
// slices, as a GEMV's threads read their panels) and returns a checksum, so the reads cannot be
// optimised away; the caller times it.
#include <napi.h>

#include <cstring>
#include <vector>

#include "core/thread_pool.h"
#include "napi/register.h"

namespace tierlm {
namespace {

Napi::Value ReadPass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(info.Env(), "readPass(u8): expected a Uint8Array");
  Napi::TypedArray a = info[0].As<Napi::TypedArray>();
  const uint8_t* base = static_cast<const uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  const int64_t words = static_cast<int64_t>(a.ByteLength() / 64) * 8;  // whole cache lines of uint64
  ThreadPool& pool = ThreadPool::instance();
  std::vector<uint64_t> sums(static_cast<size_t>(pool.size()) * 8, 0);  // a cache line per thread
  pool.run([&](int t, int nt) {
    const int64_t w0 = words / 8 * t / nt * 8, w1 = words / 8 * (t + 1) / nt * 8;
    // Eight independent xor chains over whole lines: the compiler vectorises them with the
    // widest loads of the base ISA, which is enough to saturate RAM from a core.
    uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = w0; i < w1; i += 8) {
      uint64_t line[8];
      std::memcpy(line, base + i * 8, 64);
      for (int j = 0; j < 8; j++) acc[j] ^= line[j];
    }
    uint64_t s = 0;
    for (int j = 0; j < 8; j++) s ^= acc[j];
    sums[static_cast<size_t>(t) * 8] = s;
  });
  uint64_t s = 0;
  for (size_t t = 0; t < sums.size(); t += 8) s ^= sums[t];
  return Napi::Number::New(info.Env(), static_cast<double>(s & 0xffffffffu));
}

}  // namespace

void register_membw(Napi::Env env, Napi::Object exports) { exports.Set("readPass", Napi::Function::New(env, ReadPass)); }

}  // namespace tierlm
