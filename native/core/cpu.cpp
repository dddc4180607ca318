#include "core/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace tierlm {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
#endif
  return f;
}

Isa detect_isa(const CpuFeatures& f) {
  bool avx2 = f.avx2 && f.fma && f.f16c;
  bool avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  if (avx512 && f.avx512bf16 && f.avx512vnni) return Isa::Avx512Bf16;
  if (avx512) return Isa::Avx512;
  if (avx2) return Isa::Avx2;
  return Isa::Scalar;
}

std::atomic<int> g_active{-1};

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

Isa detected_isa() {
  static const Isa isa = detect_isa(cpu_features());
  return isa;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v >= 0) return static_cast<Isa>(v);
  Isa isa = detected_isa();
  const char* env = std::getenv("TIERLM_ISA");
  Isa wanted;
  if (env && parse_isa(env, &wanted) && wanted <= isa) isa = wanted;
  g_active.store(static_cast<int>(isa));
  return isa;
}

bool set_isa(Isa isa) {
  if (isa > detected_isa()) return false;
  g_active.store(static_cast<int>(isa));
  return true;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512bf16";
  }
  return "scalar";
}

bool parse_isa(const char* name, Isa* out) {
  for (int i = 0; i <= 3; i++) {
    if (std::strcmp(name, isa_name(static_cast<Isa>(i))) == 0) {
      *out = static_cast<Isa>(i);
      return true;
    }
  }
  return false;
}

}  // namespace tierlm
