// The AMX-BF16 GEMM kernel (kernels/gemm.h, kernel_amx; the tile itself in gemm_amx_impl.h).
// Built with the AVX-512 kernels; only this file carries the AMX target, and its kernel runs only
// where cpu.cpp's amx_usable() said the CPU and the OS allow it. GCC 11+ only (its AMX intrinsics
// are inline assembly, usable under a target pragma); other compilers build without it.
#include "kernels/gemm.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define TIERLM_HAVE_AMX 1
#endif

#if defined(TIERLM_HAVE_AMX)
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16")

#define AMX_ZERO(t) _tile_zero(t)
#define AMX_LOAD(t, p, s) _tile_loadd(t, p, s)
#define AMX_STORE(t, p, s) _tile_stored(t, p, s)
#define AMX_DP(c, a, b) _tile_dpbf16ps(c, a, b)
#define AMX_FENCE() __asm__ volatile("" ::: "memory")
#include "kernels/gemm_amx_impl.h"

namespace tierlm {
namespace gemm {
namespace {

// Built on first use, not at namespace scope: this file is compiled for AVX-512, and GCC vectorises
// a dynamic initializer with zmm stores that would run when the addon is opened, before any CPU
// dispatch, and kill the process (SIGILL) on CPUs without AVX-512.
const amx::TileConfig& config() {
  static const amx::TileConfig c = amx::tile_config();
  return c;
}

// Tile state is per thread: each thread configures its tiles for a product and releases them
// after, so that a thread between products carries no 8 KiB of tile state through context
// switches and signal frames.
void enter() {
  AMX_FENCE();
  _tile_loadconfig(&config());
}

void leave() { _tile_release(); }

}  // namespace

bool kernel_amx(Kernel* out) {
  amx::describe(out);
  out->enter = enter;
  out->leave = leave;
  return true;
}

}  // namespace gemm
}  // namespace tierlm

#pragma GCC pop_options

#else

namespace tierlm {
namespace gemm {
bool kernel_amx(Kernel*) { return false; }
}  // namespace gemm
}  // namespace tierlm

#endif
