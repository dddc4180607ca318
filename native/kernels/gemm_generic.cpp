// GEMM: weight packing, row gathering, the scalar micro-kernel and the threaded driver that
// dispatches to the micro-kernel of the active instruction set (baseline flags).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <new>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/quant.h"

namespace tierlm {
namespace gemm {
namespace {

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16(float f) {
  uint32_t b = f32_to_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((b >> 16) | 0x40);
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

}  // namespace

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0) {
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);  // 2^-24
    return (h & 0x8000) ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

// Round to nearest even; overflow gives infinity.
uint16_t f32_to_f16(float f) {
  uint32_t b = f32_to_bits(f);
  uint32_t sign = (b >> 16) & 0x8000;
  int32_t exp = (b >> 23) & 0xff;
  uint32_t mant = b & 0x7fffff;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mant ? 0x200 : 0));
  int32_t e = exp - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000;
    int shift = 14 - e;
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return static_cast<uint16_t>(sign | h);
}

namespace {

inline float load_elem(const void* src, Fmt f, int64_t i) {
  switch (f) {
    case Fmt::F32: return static_cast<const float*>(src)[i];
    case Fmt::F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    default: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
  }
}

inline float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// ---- scalar micro-kernel ----------------------------------------------------------------------

constexpr int kScalarRows = 4;

template <Fmt F>
inline float wget(const uint8_t* wp, int kk, int c) {
  if (F == Fmt::F32) return reinterpret_cast<const float*>(wp)[kk * kNR + c];
  if (F == Fmt::F16) return f16_to_f32(reinterpret_cast<const uint16_t*>(wp)[kk * kNR + c]);
  return bf16_to_f32(reinterpret_cast<const uint16_t*>(wp)[(kk >> 1) * 2 * kNR + c * 2 + (kk & 1)]);
}

template <Fmt F>
void scalar_kernel(int rows, const void* xpv, const uint8_t* wp, int kc, float* y, int64_t ldy, int ncols, int flags,
                   const float* bias) {
  const float* xp = static_cast<const float*>(xpv);
  for (int i0 = 0; i0 < rows; i0 += kScalarRows) {
    int r = rows - i0 < kScalarRows ? rows - i0 : kScalarRows;
    float acc[kScalarRows][kNR];
    for (int i = 0; i < r; i++)
      for (int c = 0; c < kNR; c++) acc[i][c] = (flags & kFirst) || c >= ncols ? 0.0f : y[(i0 + i) * ldy + c];
    float wrow[kNR];
    for (int kk = 0; kk < kc; kk++) {
      for (int c = 0; c < kNR; c++) wrow[c] = wget<F>(wp, kk, c);
      for (int i = 0; i < r; i++) {
        float a = xp[kk * rows + i0 + i];
        for (int c = 0; c < kNR; c++) acc[i][c] = std::fma(a, wrow[c], acc[i][c]);
      }
    }
    for (int i = 0; i < r; i++)
      for (int c = 0; c < ncols; c++) {
        float v = acc[i][c];
        if ((flags & kLast) && bias) v += bias[c];
        y[(i0 + i) * ldy + c] = v;
      }
  }
}

// ---- per-thread scratch ---------------------------------------------------------------------

struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  ~Scratch() { std::free(p); }
  void* get(size_t want) {
    if (want > bytes) {
      std::free(p);
      bytes = (want + 4095) & ~size_t(4095);
      p = std::aligned_alloc(64, bytes);
      if (!p) {
        bytes = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
};

thread_local Scratch tls_xpack;
thread_local Scratch tls_wpack;   // Xᵀ packed by matmul_grad_weight
thread_local Scratch tls_widen;   // a worker's panel group widened to f32 (widen_panels)

// Bytes of weight k slices a row block sweeps while its packed x stays in L1 (half of L2).
constexpr int64_t kGroupBytes = 1 << 20;

std::atomic<int> g_bf16_kernel{-1};  // -1: not decided yet (the environment's, else Fma)

Kernel select_kernel(Fmt fmt, Mode mode) {
  Kernel k;
  Isa isa = active_isa();
  bool bf16 = mode == Mode::Bf16;
  Bf16Kernel bk = bf16 && fmt == Fmt::Bf16 ? bf16_kernel() : Bf16Kernel::Fma;
  if (bk == Bf16Kernel::AmxEmulated) {
    kernel_amx_emulated(&k);
    return k;
  }
  // AMX's code is built with the AVX-512 kernels: it runs only where they may (a lowered ISA
  // lowers it too); where it cannot, vdpbf16ps, the nearest in rounding, takes its place.
  if (bk == Bf16Kernel::Amx && isa >= Isa::Avx512Bf16 && amx_usable() && kernel_amx(&k)) return k;
  bool dot = (bk == Bf16Kernel::Dot || bk == Bf16Kernel::Amx) && isa >= Isa::Avx512Bf16;
  if (isa >= Isa::Avx512 && kernel_avx512(fmt, dot, &k)) {
  } else if (isa >= Isa::Avx2 && kernel_avx2(fmt, &k)) {
  } else {
    kernel_scalar(fmt, &k);
  }
  if (bf16 && k.xpack == XPack::F32) k.xpack = XPack::Bf16F32;
  const int kind = dot ? kOnePassBf16Dot : fmt == Fmt::F32 ? kOnePassF32 : fmt == Fmt::F16 ? kOnePassF16 : kOnePassBf16;
  if (!(one_pass_rows() & kind)) k.one_pass_rows = 0;
  return k;
}

// x as the driver reads it: row-major [m][k], or transposed ([k][m] in memory, element (i, kk) at
// x[kk*m + i]) for the weight gradient, whose left operand dYᵀ is never materialised.
struct XSrc {
  const float* x;
  int64_t m, k;
  bool transposed;
  float at(int64_t i, int64_t kk) const { return transposed ? x[kk * m + i] : x[i * k + kk]; }
};

// Packs rows [r0, r0+rows) of x, k steps [0, ks) (zero beyond k), for the kernel's x layout.
void pack_x_block(const XSrc& x, int64_t ks, int64_t r0, int rows, XPack xp, void* dst) {
  const int64_t k = x.k;
  if (xp == XPack::Bf16Rows) {  // [rows][ks] bf16: each row's k steps side by side (AMX)
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int i = 0; i < rows; i++) {
      uint16_t* di = d + i * ks;
      for (int64_t kk = 0; kk < k; kk++) di[kk] = f32_to_bf16(x.at(r0 + i, kk));
      for (int64_t kk = k; kk < ks; kk++) di[kk] = 0;
    }
    return;
  }
  if (xp == XPack::Bf16Pair && x.transposed) {
    // The weight gradient's dYᵀ: the block's rows are contiguous for each k step, so walk k
    // outside and the rows inside (the row-outside order below read one cache line per element,
    // a stride of m floats, and was 9% of a bf16 training step). Same values, same layout.
    uint32_t* d = static_cast<uint32_t*>(dst);
    for (int64_t kk = 0; kk < ks; kk += 2) {
      const float* lo = kk < k ? x.x + kk * x.m + r0 : nullptr;
      const float* hi = kk + 1 < k ? x.x + (kk + 1) * x.m + r0 : nullptr;
      uint32_t* dk = d + (kk >> 1) * rows;
      for (int i = 0; i < rows; i++) {
        uint32_t l = lo ? f32_to_bf16(lo[i]) : 0, h = hi ? f32_to_bf16(hi[i]) : 0;
        dk[i] = l | (h << 16);
      }
    }
    return;
  }
  // Only the vdpbf16ps kernel takes bf16 pairs (select_kernel: AVX512_BF16), so AVX-512 is there.
  if (xp == XPack::Bf16Pair) return pack_bf16_pairs_avx512(x.x + r0 * k, k, k, ks, rows, static_cast<uint32_t*>(dst));
  float* d = static_cast<float*>(dst);
  bool round = xp == XPack::Bf16F32;
  if (x.transposed) {  // rows of the packed block are contiguous in memory here
    for (int64_t kk = 0; kk < k; kk++) {
      const float* xr = x.x + kk * x.m + r0;
      for (int i = 0; i < rows; i++) d[kk * rows + i] = round ? bf16_round(xr[i]) : xr[i];
    }
  } else {
    for (int i = 0; i < rows; i++) {
      const float* xr = x.x + (r0 + i) * k;
      for (int64_t kk = 0; kk < k; kk++) d[kk * rows + i] = round ? bf16_round(xr[kk]) : xr[kk];
    }
  }
  for (int i = 0; i < rows; i++)
    for (int64_t kk = k; kk < ks; kk++) d[kk * rows + i] = 0.0f;
}

}  // namespace

const char* bf16_kernel_name(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::Fma: return "fma";
    case Bf16Kernel::Dot: return "dot";
    case Bf16Kernel::Amx: return "amx";
    case Bf16Kernel::AmxEmulated: return "amx-emulated";
  }
  return "fma";
}

bool parse_bf16_kernel(const char* name, Bf16Kernel* out) {
  for (int i = 0; i <= 3; i++) {
    if (std::strcmp(name, bf16_kernel_name(static_cast<Bf16Kernel>(i))) == 0) {
      *out = static_cast<Bf16Kernel>(i);
      return true;
    }
  }
  return false;
}

bool bf16_kernel_runs_here(Bf16Kernel k) {
  if (k == Bf16Kernel::Amx) return amx_usable();
  if (k == Bf16Kernel::Dot) return detected_isa() >= Isa::Avx512Bf16;
  return true;
}

Bf16Kernel bf16_kernel() {
  int v = g_bf16_kernel.load(std::memory_order_relaxed);
  if (v < 0) {
    // TIERLM_BF16_KERNEL names one; else the older TIERLM_BF16_DOT=1. Only one this CPU can run:
    // a setting of one it cannot would read back as that kernel while select_kernel ran FMA (the
    // addon's loader refuses such values first, src/backend/cpu/env.ts).
    const char* env = std::getenv("TIERLM_BF16_KERNEL");
    const char* dot = std::getenv("TIERLM_BF16_DOT");
    Bf16Kernel k = dot && dot[0] == '1' && bf16_kernel_runs_here(Bf16Kernel::Dot) ? Bf16Kernel::Dot : Bf16Kernel::Fma;
    Bf16Kernel named;
    if (env && parse_bf16_kernel(env, &named) && bf16_kernel_runs_here(named)) k = named;
    v = static_cast<int>(k);
    g_bf16_kernel.store(v, std::memory_order_relaxed);
  }
  return static_cast<Bf16Kernel>(v);
}

bool set_bf16_kernel(Bf16Kernel k) {
  if (!bf16_kernel_runs_here(k)) return false;
  g_bf16_kernel.store(static_cast<int>(k), std::memory_order_relaxed);
  return true;
}

bool bf16_dot() { return bf16_kernel() == Bf16Kernel::Dot; }

bool set_bf16_dot(bool on) { return set_bf16_kernel(on ? Bf16Kernel::Dot : Bf16Kernel::Fma); }

namespace {
std::atomic<int> g_widen{-1};  // -1: not set (the active ISA's default) nor read from the environment yet
}  // namespace

int widen_panels() {
  int v = g_widen.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("TIERLM_GEMM_WIDEN");
    if (!env) return active_isa() >= Isa::Avx512 ? kWidenDefaultAvx512 : kWidenDefaultAvx2;
    v = std::atoi(env) & (kOnePassF16 | kOnePassBf16);
    g_widen.store(v, std::memory_order_relaxed);
  }
  return v;
}

void set_widen_panels(int mask) { g_widen.store(mask & (kOnePassF16 | kOnePassBf16), std::memory_order_relaxed); }

namespace {
std::atomic<int> g_one_pass{-1};  // -1: not read from the environment yet
}

int one_pass_rows() {
  int v = g_one_pass.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("TIERLM_GEMM_ONE_PASS");
    char* end = nullptr;
    const long e = env ? std::strtol(env, &end, 10) : -1;
    v = env && *env && end && *end == '\0' && e >= 0 && e <= 15 ? static_cast<int>(e) : kOnePassDefault;
    g_one_pass.store(v, std::memory_order_relaxed);
  }
  return v;
}

void set_one_pass_rows(int mask) { g_one_pass.store(mask & 15, std::memory_order_relaxed); }

void kernel_scalar(Fmt fmt, Kernel* out) {
  out->fn = fmt == Fmt::F32 ? scalar_kernel<Fmt::F32> : fmt == Fmt::F16 ? scalar_kernel<Fmt::F16> : scalar_kernel<Fmt::Bf16>;
  out->max_rows = 16;
  out->kc = 256;
  out->xpack = XPack::F32;
}

void pack_weight(const void* src, Fmt src_fmt, int64_t n, int64_t k, Fmt fmt, uint8_t* dst) {
  if (is_quant(fmt)) {  // callers check representability first (quant::find_unrepresentable / quant::pack)
    quant::pack(src, static_cast<int>(src_fmt), n, k, quant_bits(fmt), dst);
    return;
  }
  const int64_t ks = stored_k(fmt, k), np = panels(n), pb = panel_bytes(fmt, k);
  std::memset(dst, 0, static_cast<size_t>(np * pb));
  ThreadPool::instance().parallel_for(np, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; p++) {
      uint8_t* panel = dst + p * pb;
      for (int c = 0; c < kNR; c++) {
        int64_t r = p * kNR + c;
        if (r >= n) break;
        const int64_t base = r * k;
        if (fmt == Fmt::F32) {
          float* d = reinterpret_cast<float*>(panel);
          for (int64_t kk = 0; kk < k; kk++) d[kk * kNR + c] = load_elem(src, src_fmt, base + kk);
        } else if (fmt == Fmt::F16) {
          uint16_t* d = reinterpret_cast<uint16_t*>(panel);
          for (int64_t kk = 0; kk < k; kk++) {
            d[kk * kNR + c] = src_fmt == Fmt::F16 ? static_cast<const uint16_t*>(src)[base + kk]
                                                   : f32_to_f16(load_elem(src, src_fmt, base + kk));
          }
        } else {
          uint16_t* d = reinterpret_cast<uint16_t*>(panel);
          for (int64_t kk = 0; kk < k; kk++) {
            d[(kk >> 1) * 2 * kNR + c * 2 + (kk & 1)] = src_fmt == Fmt::Bf16 ? static_cast<const uint16_t*>(src)[base + kk]
                                                                             : f32_to_bf16(load_elem(src, src_fmt, base + kk));
          }
        }
      }
    }
  });
  (void)ks;
}

void pack_weight_t(const void* src, Fmt src_fmt, int64_t n, int64_t k, Fmt fmt, uint8_t* dst) {
  // Wᵀ is a weight of k rows over n inputs; its panel p holds W's columns 32p..32p+31, and each k
  // step of the panel is a contiguous run of one row of W, so this is a streaming copy.
  const int64_t np = panels(k), pb = panel_bytes(fmt, n);
  ThreadPool::instance().parallel_for(np, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; p++) {
      uint8_t* panel = dst + p * pb;
      const int64_t c0 = p * kNR;
      const int cols = static_cast<int>(k - c0 < kNR ? k - c0 : kNR);
      for (int64_t kk = 0; kk < stored_k(fmt, n); kk++) {
        if (src_fmt == fmt && fmt != Fmt::F32 && kk < n) {  // 16-bit to the same format: copy the bits
          const uint16_t* s16 = static_cast<const uint16_t*>(src) + kk * k + c0;
          uint16_t* d = reinterpret_cast<uint16_t*>(panel);
          const bool pairs = fmt == Fmt::Bf16;
          for (int c = 0; c < kNR; c++) {
            d[pairs ? (kk >> 1) * 2 * kNR + c * 2 + (kk & 1) : kk * kNR + c] = c < cols ? s16[c] : 0;
          }
          continue;
        }
        float row[kNR] = {};  // the k step's 32 values, zero past W's last row or column
        if (kk < n) {
          if (src_fmt == Fmt::F32) {
            std::memcpy(row, static_cast<const float*>(src) + kk * k + c0, static_cast<size_t>(cols) * 4);
          } else {
            for (int c = 0; c < cols; c++) row[c] = load_elem(src, src_fmt, kk * k + c0 + c);
          }
        }
        if (fmt == Fmt::F32) {
          std::memcpy(panel + kk * kNR * 4, row, sizeof row);
        } else if (fmt == Fmt::F16) {
          uint16_t* d = reinterpret_cast<uint16_t*>(panel) + kk * kNR;
          for (int c = 0; c < kNR; c++) d[c] = f32_to_f16(row[c]);
        } else {
          uint16_t* d = reinterpret_cast<uint16_t*>(panel) + (kk >> 1) * 2 * kNR + (kk & 1);
          for (int c = 0; c < kNR; c++) d[c * 2] = f32_to_bf16(row[c]);
        }
      }
    }
  });
}

void gather_rows(const uint8_t* w, Fmt fmt, int64_t n, int64_t k, const int32_t* ids, int64_t count, float* out) {
  if (is_quant(fmt)) return quant::gather_rows(w, quant_bits(fmt), n, k, ids, count, out);
  const int64_t pb = panel_bytes(fmt, k);
  for (int64_t i = 0; i < count; i++) {
    int64_t r = ids[i];
    if (r < 0 || r >= n) r = 0;  // callers validate; never read out of bounds
    const uint8_t* panel = w + (r / kNR) * pb;
    int c = static_cast<int>(r % kNR);
    float* o = out + i * k;
    if (fmt == Fmt::F32) {
      const float* s = reinterpret_cast<const float*>(panel);
      for (int64_t kk = 0; kk < k; kk++) o[kk] = s[kk * kNR + c];
    } else if (fmt == Fmt::F16) {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(panel);
      for (int64_t kk = 0; kk < k; kk++) o[kk] = f16_to_f32(s[kk * kNR + c]);
    } else {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(panel);
      for (int64_t kk = 0; kk < k; kk++) o[kk] = bf16_to_f32(s[(kk >> 1) * 2 * kNR + c * 2 + (kk & 1)]);
    }
  }
}

namespace {

// The rows × 32 floats of a y tile (two lines a row), for writing.
inline void prefetch_tile(const float* y, int64_t ldy, int rows) {
  for (int i = 0; i < rows; i++) {
    __builtin_prefetch(y + i * ldy, 1, 3);
    __builtin_prefetch(y + i * ldy + 16, 1, 3);
  }
}

// y[m,n] (+)= x[m,k] · W[n,k]ᵀ (+ bias) for float formats; `accumulate` adds onto y (no kFirst);
// `ep` runs on each group of panels a row block finishes (its last k block), still in L1/L2.
void run_gemm(const XSrc& xs, const uint8_t* w, Fmt fmt, int64_t n, const float* bias, float* y, Mode mode,
              bool accumulate, const Epilogue& ep) {
  const int64_t m = xs.m, k = xs.k;
  const Kernel kern = select_kernel(fmt, mode);
  const int64_t ks = stored_k(fmt, k), np = panels(n), pb = panel_bytes(fmt, k);
  const int es = elem_bytes(fmt);
  const bool bf16_x = kern.xpack == XPack::Bf16Pair || kern.xpack == XPack::Bf16Rows;
  const int xes = bf16_x ? 2 : 4;  // bytes of packed x per (row, k step)

  // Row blocks of near-equal size, at most max_rows each, or one of up to one_pass_rows rows.
  const int64_t block_rows = m <= kern.one_pass_rows ? kern.one_pass_rows : kern.max_rows;
  const int64_t nblocks = (m + block_rows - 1) / block_rows;
  const int64_t base_rows = m / nblocks, extra = m % nblocks;  // first `extra` blocks get one more row
  auto block_start = [&](int64_t b) { return b * base_rows + (b < extra ? b : extra); };

  // Pack x once (all rows, all of k) on the calling thread's scratch, in parallel. (AMX tiles
  // load 16 rows at a time: up to 15 rows past the last block are read, and never stored.)
  const int64_t past = kern.xpack == XPack::Bf16Rows ? 15 * ks * xes : 0;
  uint8_t* xpack = static_cast<uint8_t*>(tls_xpack.get(static_cast<size_t>(m * ks * xes + past) + 64));
  ThreadPool& pool = ThreadPool::instance();
  pool.parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      int64_t r0 = block_start(b);
      int rows = static_cast<int>(block_start(b + 1) - r0);
      pack_x_block(xs, ks, r0, rows, kern.xpack, xpack + r0 * ks * xes);
    }
  });

  const int64_t kc_block = nblocks == 1 ? ks : kern.kc;
  // bf16 / f16 panels widened once per group for the f32 kernel (widen_panels), where a thread
  // sweeps enough row blocks over each group; not for vdpbf16ps, which takes bf16 as it is.
  const int widen_bit = fmt == Fmt::Bf16 ? kOnePassBf16 : fmt == Fmt::F16 ? kOnePassF16 : 0;
  const bool can_widen = (widen_panels() & widen_bit) && !bf16_x && active_isa() >= Isa::Avx2;
  const Kernel kern32 = can_widen ? select_kernel(Fmt::F32, mode) : kern;
  pool.run([&](int t, int nt) {
    int64_t p0 = 0, p1 = np, b0 = 0, b1 = nblocks;
    if (np >= nt || nblocks < nt) {
      p0 = np * t / nt;
      p1 = np * (t + 1) / nt;
    } else {
      b0 = nblocks * t / nt;
      b1 = nblocks * (t + 1) / nt;
    }
    if (p0 >= p1 || b0 >= b1) return;
    if (kern.enter) kern.enter();
    // Goto-style blocking: for each k block, a group of panels whose k slices fit in L2 is
    // swept by every row block; the row block's packed x (rows x kc) stays in L1 meanwhile.
    const bool wide = can_widen && b1 - b0 >= kWidenBlocks;
    const int64_t slice_bytes = std::min<int64_t>(kc_block, ks) * kNR * (wide ? 4 : es);
    const int64_t group = std::max<int64_t>(1, kGroupBytes / slice_bytes);
    const int64_t wide_panel = std::min<int64_t>(kc_block, ks) * kNR;  // floats of a widened k slice
    float* widened = wide ? static_cast<float*>(tls_widen.get(static_cast<size_t>(group * wide_panel) * 4)) : nullptr;
    const KernelFn fn = wide ? kern32.fn : kern.fn;
    for (int64_t k0 = 0; k0 < ks; k0 += kc_block) {
      const int kc = static_cast<int>(ks - k0 < kc_block ? ks - k0 : kc_block);
      const int flags = (k0 == 0 && !accumulate ? kFirst : 0) | (k0 + kc >= ks ? kLast : 0);
      for (int64_t g0 = p0; g0 < p1; g0 += group) {
        const int64_t g1 = std::min(p1, g0 + group);
        if (wide)
          for (int64_t p = g0; p < g1; p++) widen_panel_avx2(fmt, w + p * pb + k0 * kNR * es, kc, widened + (p - g0) * wide_panel);
        for (int64_t b = b0; b < b1; b++) {
          const int64_t r0 = block_start(b);
          const int rows = static_cast<int>(block_start(b + 1) - r0);
          // (XPack::Bf16Rows: k0 is 0, its kernel takes the whole of k in one block)
          const uint8_t* xp = xpack + r0 * ks * xes + k0 * rows * xes;
          for (int64_t p = g0; p < g1; p++) {
            const uint8_t* wp = wide ? reinterpret_cast<const uint8_t*>(widened + (p - g0) * wide_panel)
                                     : w + p * pb + k0 * kNR * es;
            const int ncols = static_cast<int>(n - p * kNR < kNR ? n - p * kNR : kNR);
            const float* bp = bias ? bias + p * kNR : nullptr;
            // A tile that accumulates loads its rows × 32 outputs from y before its first step,
            // and y left the caches since the last k block: the next tile's are fetched now.
            if (!(flags & kFirst)) {
              const bool last = p + 1 == g1;
              if (!last || b + 1 < b1) {
                const int64_t nr0 = last ? block_start(b + 1) : r0;
                const int nrows = static_cast<int>(last ? block_start(b + 2) - nr0 : rows);
                prefetch_tile(y + nr0 * n + (last ? g0 : p + 1) * kNR, n, nrows);
              }
            }
            fn(rows, xp, wp, kc, y + r0 * n + p * kNR, n, ncols, flags, bp);
          }
          if ((flags & kLast) && ep.any()) ep.apply(y, n, r0, rows, g0 * kNR, std::min(n, g1 * kNR));
        }
      }
    }
    if (kern.leave) kern.leave();
  });
}

}  // namespace

// matmul without the decode bookkeeping below.
static void matmul_rows(const float* x, int64_t m, int64_t k, const uint8_t* w, Fmt fmt, int64_t n, const float* bias,
                        float* y, Mode mode, const Epilogue& ep) {
  if (is_quant(fmt)) return quant::matmul(x, m, k, w, quant_bits(fmt), n, bias, y, mode == Mode::Bf16, ep);
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) y[i * n + j] = bias ? bias[j] : 0.0f;
    if (ep.any()) ep.apply(y, n, 0, m, 0, n);
    return;
  }
  run_gemm(XSrc{x, m, k, false}, w, fmt, n, bias, y, mode, false, ep);
}

namespace {

// Decode's GEMVs come in the same order every step (each layer's q, k, v, o, gate, up, down, then
// the head), with small ops run by the calling thread alone in between. Each GEMV notes which
// weight followed the one before it, and when it ends asks the pool's idle workers to prefetch the
// weight that followed it last time (ThreadPool::prefetch_while_idle): the next GEMV then starts
// on rows already in cache. Per calling thread (the JavaScript thread, the async dispatcher).
// A wrong guess costs only memory traffic: prefetches never fault and change no result.
class NextWeight {
 public:
  void before(const uint8_t* w, int64_t bytes) {
    if (last_) slot(last_) = {last_, w, bytes};
    last_ = w;
  }
  void after(const uint8_t* w) {
    const Entry& e = slot(w);
    ThreadPool& pool = ThreadPool::instance();
    if (e.w == w && e.next) pool.prefetch_while_idle(e.next, e.bytes, pool.size());
  }

 private:
  struct Entry {
    const uint8_t* w = nullptr;
    const uint8_t* next = nullptr;
    int64_t bytes = 0;
  };
  static constexpr int kSlots = 512;  // a model's layer weights and head, or a mixed step's share
  Entry& slot(const uint8_t* w) {
    const uint64_t h = (reinterpret_cast<uintptr_t>(w) >> 6) * UINT64_C(0x9E3779B97F4A7C15);
    return table_[h >> 55];
  }
  Entry table_[kSlots];
  const uint8_t* last_ = nullptr;
};
thread_local NextWeight t_next_weight;

// Rows up to which a product counts as decode (one row per sequence of a small batch).
constexpr int64_t kDecodeRows = 6;

}  // namespace

void matmul(const float* x, int64_t m, int64_t k, const uint8_t* w, Fmt fmt, int64_t n, const float* bias, float* y,
            Mode mode, const Epilogue& ep) {
  if (m > 0 && m <= kDecodeRows && n > 0 && k > 0) {
    const int64_t bytes = is_quant(fmt) ? quant::packed_bytes(quant_bits(fmt), n, k) : packed_bytes(fmt, n, k);
    t_next_weight.before(w, bytes);
    matmul_rows(x, m, k, w, fmt, n, bias, y, mode, ep);
    t_next_weight.after(w);
    return;
  }
  matmul_rows(x, m, k, w, fmt, n, bias, y, mode, ep);
}

void matmul_grad_weight(const float* dy, const float* x, int64_t m, int64_t n, int64_t k, float* dw, Mode mode) {
  if (m <= 0 || n <= 0 || k <= 0) return;
  // dW[n,k] += dYᵀ[n,m] · X[m,k]: a GEMM over the token dimension whose right operand, Xᵀ, packs
  // from contiguous runs of X's rows (pack_weight_t) and whose left, dYᵀ, is read transposed.
  const Fmt fmt = mode == Mode::Bf16 ? Fmt::Bf16 : Fmt::F32;
  uint8_t* xt = static_cast<uint8_t*>(tls_wpack.get(static_cast<size_t>(packed_bytes(fmt, k, m))));
  pack_weight_t(x, Fmt::F32, m, k, fmt, xt);
  run_gemm(XSrc{dy, n, m, true}, xt, fmt, k, nullptr, dw, mode, true, Epilogue());
}

}  // namespace gemm
}  // namespace tierlm
