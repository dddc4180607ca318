#include "core/cpu.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
#if defined(__x86_64__)
  // (read from CPUID directly: older compilers' __builtin_cpu_supports do not know AMX)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
  }
#endif
  return f;
}

#if defined(__x86_64__)
// XCR0, the state components the OS saves and restores (OSXSAVE must be set to read it).
uint64_t xcr0() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0;
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

bool detect_amx() {
  const CpuFeatures& f = cpu_features();
  if (!f.amx_tile || !f.amx_bf16) return false;
#if defined(__x86_64__)
  constexpr uint64_t kTileState = (UINT64_C(1) << 17) | (UINT64_C(1) << 18);  // XTILECFG, XTILEDATA
  if ((xcr0() & kTileState) != kTileState) return false;
#if defined(__linux__)
  // Linux 5.16+ hands out the 8 KiB tile data state only to processes that ask (a thread without
  // it faults on its first tile instruction); the grant covers every thread of the process.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;  // no way known here to ask the OS for the tile state
#endif
#else
  return false;
#endif
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

bool amx_usable() {
  static const bool usable = detect_amx();
  return usable;
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
