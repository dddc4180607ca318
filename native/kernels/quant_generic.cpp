// Group-wise quantization (see quant.h): the quantizer, standalone quantize/dequantize, packing,
// row gathering, the scalar dequantizer and the threaded GEMM driver over quantized weights
// (baseline flags; the per-ISA dequantizers and the VNNI tile live in gemm_q_*.cpp).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/quant.h"

namespace tierlm {
namespace quant {
namespace {

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

using gemm::f16_to_f32;
using gemm::f32_to_f16;

// The largest f16 value <= f (f finite, |f| <= 65504).
inline uint16_t f16_round_down(float f) {
  uint16_t h = f32_to_f16(f);
  if (f16_to_f32(h) > f) {
    if (h == 0x0000) h = 0x8001;
    else if (h & 0x8000) h = static_cast<uint16_t>(h + 1);
    else h = static_cast<uint16_t>(h - 1);
  }
  return h;
}

inline float load_src(const void* src, int fmt, int64_t i) {
  if (fmt == 0) return static_cast<const float*>(src)[i];
  uint16_t h = static_cast<const uint16_t*>(src)[i];
  return fmt == 1 ? f16_to_f32(h) : bits_to_f32(static_cast<uint32_t>(h) << 16);
}

inline bool representable(float v) { return std::fabs(v) <= 65504.0f; }  // false for NaN too

// Quantizes v[0..len) (representable, len >= 1) into q[0..len).
void quantize_group(const float* v, int64_t len, int bits, uint8_t* q, uint16_t* step_bits, uint16_t* min_bits) {
  float mn = v[0], mx = v[0];
  for (int64_t i = 1; i < len; i++) {
    mn = std::min(mn, v[i]);
    mx = std::max(mx, v[i]);
  }
  const int levels = (1 << bits) - 1;
  const uint16_t minh = f16_round_down(mn);
  const float minf = f16_to_f32(minh);
  *min_bits = minh;
  if (minf == mx) {
    *step_bits = 0;
    std::memset(q, 0, static_cast<size_t>(len));
    return;
  }
  const float s = static_cast<float>((static_cast<double>(mx) - static_cast<double>(minf)) / levels);
  uint16_t sh = f32_to_f16(s);
  if (sh == 0) sh = 1;
  while (static_cast<double>(minf) + levels * static_cast<double>(f16_to_f32(sh)) < static_cast<double>(mx)) sh++;
  *step_bits = sh;
  const float inv = 1.0f / f16_to_f32(sh);
  for (int64_t i = 0; i < len; i++) {
    const float d = v[i] - minf;
    const float t = std::nearbyint(d * inv);
    q[i] = static_cast<uint8_t>(t <= 0.0f ? 0.0f : t >= levels ? levels : t);
  }
}

inline float deq(int q, float step, float mn) { return static_cast<float>(q) * step + mn; }  // q*step is exact

// Code of (column c, k step kk) in a packed group block.
inline int packed_code(const uint8_t* block, int bits, int kk, int c) {
  if (bits == 8) return block[((kk >> 2) * kNR + c) * 4 + (kk & 3)];
  const uint8_t b = block[((kk >> 3) * kNR + c) * 4 + (kk & 3)];
  return (kk & 4) ? b >> 4 : b & 15;
}

void dequant_scalar(const uint8_t* blocks, int bits, int ng, float* tile) {
  const int64_t gb = group_block_bytes(bits), cb = code_bytes_per_group(bits);
  for (int g = 0; g < ng; g++) {
    const uint8_t* block = blocks + g * gb;
    const uint16_t* sp = reinterpret_cast<const uint16_t*>(block + cb);
    float step[kNR], mn[kNR];
    for (int c = 0; c < kNR; c++) {
      step[c] = f16_to_f32(sp[c]);
      mn[c] = f16_to_f32(sp[kNR + c]);
    }
    float* t = tile + static_cast<int64_t>(g) * kQGroup * kNR;
    for (int kk = 0; kk < kQGroup; kk++)
      for (int c = 0; c < kNR; c++) t[kk * kNR + c] = deq(packed_code(block, bits, kk, c), step[c], mn[c]);
  }
}

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

thread_local Scratch tls_x, tls_tile;

// fp32 path: k blocks of 1024, one panel's 128 KiB f32 tile dequantized per sweep of the row
// blocks. Each k block stores and reloads the tiles' y from beyond the caches, so fewer and longer
// blocks (as kKBlock in gemm.h): against 128 × 8 panels (the same tile memory) 0.80–0.93 of the
// time for q4 at 16–1024 rows, 0.75–0.90 for q8 (two addons side by side); 2048 gained nothing more.
constexpr int kTileGroups = 16;
constexpr int kTilePanels = 1;
constexpr int kVnniGroups = 64;   // VNNI path: k block of 4096
constexpr int64_t kL2Bytes = 1 << 20;

// Row blocks of near-equal size, at most max_rows each.
struct Blocks {
  int64_t n, base, extra;
  Blocks(int64_t m, int max_rows) {
    n = (m + max_rows - 1) / max_rows;
    base = m / n;
    extra = m % n;
  }
  int64_t start(int64_t b) const { return b * base + (b < extra ? b : extra); }
};

// Splits work between threads as gemm::matmul does: panels, or row blocks when there are few panels.
inline bool split_range(int t, int nt, int64_t np, int64_t nb, int64_t* p0, int64_t* p1, int64_t* b0, int64_t* b1) {
  *p0 = 0, *p1 = np, *b0 = 0, *b1 = nb;
  if (np >= nt || nb < nt) {
    *p0 = np * t / nt;
    *p1 = np * (t + 1) / nt;
  } else {
    *b0 = nb * t / nt;
    *b1 = nb * (t + 1) / nt;
  }
  return *p0 < *p1 && *b0 < *b1;
}

gemm::Kernel f32_kernel() {
  gemm::Kernel k;
  Isa isa = active_isa();
  if (isa >= Isa::Avx512 && gemm::kernel_avx512(gemm::Fmt::F32, false, &k)) {
  } else if (isa >= Isa::Avx2 && gemm::kernel_avx2(gemm::Fmt::F32, &k)) {
  } else {
    gemm::kernel_scalar(gemm::Fmt::F32, &k);
  }
  return k;
}

DequantFn dequant_fn() {
  Isa isa = active_isa();
  if (isa >= Isa::Avx512) return dequant_avx512();
  if (isa >= Isa::Avx2) return dequant_avx2();
  return dequant_scalar;
}

void matmul_fp32(const float* x, int64_t m, int64_t k, const uint8_t* w, int bits, int64_t n, const float* bias,
                 float* y, const Epilogue& ep) {
  if (m <= kSmallRows && active_isa() >= Isa::Avx2) {
    const SmallFn fn = active_isa() >= Isa::Avx512 ? small_avx512() : small_avx2();
    const int64_t np = (n + kNR - 1) / kNR;
    // Chunks of 4 panels (the AVX-512 kernel's width; AVX2's takes one at a time) split between the threads.
    ThreadPool::instance().run([&](int t, int nt) {
      const int64_t chunks = (np + 3) / 4;
      const int64_t c0 = chunks * t / nt, c1 = chunks * (t + 1) / nt;
      if (c0 >= c1) return;
      fn(static_cast<int>(m), x, k, w, bits, c0 * 4, std::min(np, c1 * 4), n, bias, y);
      if (ep.any()) ep.apply(y, n, 0, m, c0 * 4 * kNR, std::min(n, c1 * 4 * kNR));
    });
    return;
  }
  const gemm::Kernel kern = f32_kernel();
  const DequantFn dq = dequant_fn();
  const int64_t np = (n + kNR - 1) / kNR, pb = panel_bytes(bits, k), gb = group_block_bytes(bits);
  const int64_t ng = groups(k, kQGroup);
  const Blocks blocks(m, kern.max_rows);
  float* xpack = static_cast<float*>(tls_x.get(static_cast<size_t>(m * k * 4) + 64));
  ThreadPool& pool = ThreadPool::instance();
  pool.parallel_for(blocks.n, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t r0 = blocks.start(b);
      const int rows = static_cast<int>(blocks.start(b + 1) - r0);
      float* d = xpack + r0 * k;
      for (int i = 0; i < rows; i++) {
        const float* xr = x + (r0 + i) * k;
        for (int64_t kk = 0; kk < k; kk++) d[kk * rows + i] = xr[kk];
      }
    }
  });
  const int64_t kcb = static_cast<int64_t>(kTileGroups) * kQGroup;
  const int64_t tile_floats = kcb * kNR;
  pool.run([&](int t, int nt) {
    int64_t p0, p1, b0, b1;
    if (!split_range(t, nt, np, blocks.n, &p0, &p1, &b0, &b1)) return;
    float* tile = static_cast<float*>(tls_tile.get(static_cast<size_t>(kTilePanels * tile_floats * 4)));
    for (int64_t g0 = 0; g0 < ng; g0 += kTileGroups) {
      const int gn = static_cast<int>(std::min<int64_t>(kTileGroups, ng - g0));
      const int64_t k0 = g0 * kQGroup;
      const int kc = static_cast<int>(std::min<int64_t>(kcb, k - k0));
      const int flags = (k0 == 0 ? gemm::kFirst : 0) | (k0 + kc >= k ? gemm::kLast : 0);
      for (int64_t q0 = p0; q0 < p1; q0 += kTilePanels) {
        const int64_t q1 = std::min(p1, q0 + kTilePanels);
        for (int64_t p = q0; p < q1; p++) dq(w + p * pb + g0 * gb, bits, gn, tile + (p - q0) * tile_floats);
        for (int64_t b = b0; b < b1; b++) {
          const int64_t r0 = blocks.start(b);
          const int rows = static_cast<int>(blocks.start(b + 1) - r0);
          const float* xp = xpack + r0 * k + k0 * rows;
          for (int64_t p = q0; p < q1; p++) {
            const int ncols = static_cast<int>(n - p * kNR < kNR ? n - p * kNR : kNR);
            const float* bp = bias ? bias + p * kNR : nullptr;
            kern.fn(rows, xp, reinterpret_cast<const uint8_t*>(tile + (p - q0) * tile_floats), kc, y + r0 * n + p * kNR,
                    n, ncols, flags, bp);
          }
          if ((flags & gemm::kLast) && ep.any()) ep.apply(y, n, r0, rows, q0 * kNR, std::min(n, q1 * kNR));
        }
      }
    }
  });
}

void matmul_vnni(VnniFn fn, XQuantFn xquant, int max_rows, const float* x, int64_t m, int64_t k, const uint8_t* w,
                 int bits, int64_t n, const float* bias, float* y, const Epilogue& ep) {
  const int64_t np = (n + kNR - 1) / kNR, pb = panel_bytes(bits, k), gb = group_block_bytes(bits);
  const int64_t ng = groups(k, kQGroup), q16 = kQGroup / 4;
  const Blocks blocks(m, max_rows);
  // Per row block starting at r0: xq at r0*ng*16 int32, sx / xsum at r0*ng floats.
  const size_t xq_bytes = static_cast<size_t>(m * ng * q16 * 4), s_bytes = static_cast<size_t>(m * ng * 4);
  uint8_t* scratch = static_cast<uint8_t*>(tls_x.get(xq_bytes + 2 * s_bytes + 192));
  int32_t* xq = reinterpret_cast<int32_t*>(scratch);
  float* sx = reinterpret_cast<float*>(scratch + ((xq_bytes + 63) & ~size_t(63)));
  float* xsum = sx + m * ng;
  ThreadPool& pool = ThreadPool::instance();
  pool.parallel_for(blocks.n, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t r0 = blocks.start(b);
      const int rows = static_cast<int>(blocks.start(b + 1) - r0);
      int32_t* dq = xq + r0 * ng * q16;
      float* ds = sx + r0 * ng;
      float* dsum = xsum + r0 * ng;
      for (int i = 0; i < rows; i++) xquant(x + (r0 + i) * k, k, rows, i, dq, ds, dsum);
    }
  });
  // k blocks of kVnniGroups groups keep a slice of panels in L2 for the next row block (4096: a
  // layer's whole k, so a tile stores y once rather than reloading it from beyond the caches each
  // block; 512 took 1.1–1.5× the time at 16 rows, as kKBlock in gemm.h says of the float GEMM). With one
  // row block (decode, m <= max_rows) nothing is reused: each panel is read whole, so a thread's panels
  // are one contiguous stream (the hardware prefetchers' best case; a decode step at batch 1 is
  // bound by this read).
  const int64_t vg = blocks.n == 1 ? ng : kVnniGroups;
  const int64_t slice = vg * gb;
  const int64_t pgroup = std::max<int64_t>(1, kL2Bytes / slice);
  pool.run([&](int t, int nt) {
    int64_t p0, p1, b0, b1;
    if (!split_range(t, nt, np, blocks.n, &p0, &p1, &b0, &b1)) return;
    for (int64_t g0 = 0; g0 < ng; g0 += vg) {
      const int gn = static_cast<int>(std::min<int64_t>(vg, ng - g0));
      const int flags = (g0 == 0 ? gemm::kFirst : 0) | (g0 + gn >= ng ? gemm::kLast : 0);
      for (int64_t q0 = p0; q0 < p1; q0 += pgroup) {
        const int64_t q1 = std::min(p1, q0 + pgroup);
        for (int64_t b = b0; b < b1; b++) {
          const int64_t r0 = blocks.start(b);
          const int rows = static_cast<int>(blocks.start(b + 1) - r0);
          const int32_t* xb = xq + r0 * ng * q16 + g0 * q16 * rows;
          const float* sb = sx + r0 * ng + g0 * rows;
          const float* mb = xsum + r0 * ng + g0 * rows;
          for (int64_t p = q0; p < q1; p++) {
            const int ncols = static_cast<int>(n - p * kNR < kNR ? n - p * kNR : kNR);
            const float* bp = bias ? bias + p * kNR : nullptr;
            fn(rows, xb, sb, mb, w + p * pb + g0 * gb, bits, gn, y + r0 * n + p * kNR, n, ncols, flags, bp);
          }
          if ((flags & gemm::kLast) && ep.any()) ep.apply(y, n, r0, rows, q0 * kNR, std::min(n, q1 * kNR));
        }
      }
    }
  });
}

}  // namespace

int64_t find_f16_overflow(const float* x, int64_t len) {
  // Blocks of 256 reduced without a branch (vectorised), the index looked for only in a bad block:
  // every decode step's cache rows go through this.
  for (int64_t b0 = 0; b0 < len; b0 += 256) {
    const int64_t b1 = std::min<int64_t>(len, b0 + 256);
    int bad = 0;
    for (int64_t i = b0; i < b1; i++) {
      const float a = std::fabs(x[i]);
      bad |= (a >= 65520.0f) & (a < INFINITY);
    }
    if (!bad) continue;
    for (int64_t i = b0; i < b1; i++)
      if (std::fabs(x[i]) >= 65520.0f && std::fabs(x[i]) < INFINITY) return i;
  }
  return -1;
}

int64_t find_unrepresentable(const float* x, int64_t len) {
  for (int64_t i = 0; i < len; i++)
    if (!representable(x[i])) return i;
  return -1;
}

void quantize(const float* src, int64_t n, int64_t k, int bits, int64_t group, uint8_t* codes, uint16_t* params) {
  const int64_t ng = groups(k, group), rb = row_code_bytes(bits, k);
  ThreadPool::instance().parallel_for(n, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    uint8_t* q = static_cast<uint8_t*>(std::malloc(static_cast<size_t>(std::max<int64_t>(group, 1))));
    if (!q) throw std::bad_alloc();
    for (int64_t r = r0; r < r1; r++) {
      uint8_t* out = codes + r * rb;
      if (bits == 4) std::memset(out, 0, static_cast<size_t>(rb));
      for (int64_t g = 0; g < ng; g++) {
        const int64_t k0 = g * group, len = std::min(group, k - k0);
        uint16_t* pr = params + (r * ng + g) * 2;
        quantize_group(src + r * k + k0, len, bits, q, &pr[0], &pr[1]);
        for (int64_t j = 0; j < len; j++) {
          const int64_t kk = k0 + j;
          if (bits == 8) out[kk] = q[j];
          else out[kk >> 1] = static_cast<uint8_t>(out[kk >> 1] | (q[j] << ((kk & 1) * 4)));
        }
      }
    }
    std::free(q);
  });
}

void dequantize(const uint8_t* codes, const uint16_t* params, int64_t n, int64_t k, int bits, int64_t group, float* out) {
  const int64_t ng = groups(k, group), rb = row_code_bytes(bits, k);
  ThreadPool::instance().parallel_for(n, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const uint8_t* in = codes + r * rb;
      for (int64_t g = 0; g < ng; g++) {
        const float step = f16_to_f32(params[(r * ng + g) * 2]), mn = f16_to_f32(params[(r * ng + g) * 2 + 1]);
        const int64_t k0 = g * group, k1 = std::min(k, k0 + group);
        for (int64_t kk = k0; kk < k1; kk++) {
          const int q = bits == 8 ? in[kk] : (in[kk >> 1] >> ((kk & 1) * 4)) & 15;
          out[r * k + kk] = deq(q, step, mn);
        }
      }
    }
  });
}

int64_t pack(const void* src, int src_fmt, int64_t n, int64_t k, int bits, uint8_t* dst) {
  // Reject unrepresentable inputs first (bf16 / f32 sources can exceed the f16 range).
  std::atomic<int64_t> bad{-1};
  ThreadPool::instance().parallel_for(n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0 * k; i < r1 * k; i++) {
      if (!representable(load_src(src, src_fmt, i))) {
        int64_t cur = bad.load();
        while ((cur < 0 || i < cur) && !bad.compare_exchange_weak(cur, i)) {
        }
        return;
      }
    }
  });
  if (bad.load() >= 0) return bad.load();
  const int64_t np = (n + kNR - 1) / kNR, pb = panel_bytes(bits, k), gb = group_block_bytes(bits);
  const int64_t ng = groups(k, kQGroup), cb = code_bytes_per_group(bits);
  std::memset(dst, 0, static_cast<size_t>(np * pb));
  ThreadPool::instance().parallel_for(np, 1, [&](int64_t b, int64_t e) {
    float v[kQGroup];
    uint8_t q[kQGroup];
    for (int64_t p = b; p < e; p++) {
      for (int64_t g = 0; g < ng; g++) {
        uint8_t* block = dst + p * pb + g * gb;
        uint16_t* sp = reinterpret_cast<uint16_t*>(block + cb);
        const int64_t k0 = g * kQGroup;
        const int len = static_cast<int>(std::min<int64_t>(kQGroup, k - k0));
        for (int c = 0; c < kNR; c++) {
          const int64_t r = p * kNR + c;
          if (r >= n) break;
          for (int j = 0; j < len; j++) v[j] = load_src(src, src_fmt, r * k + k0 + j);
          quantize_group(v, len, bits, q, &sp[c], &sp[kNR + c]);
          for (int kk = 0; kk < len; kk++) {
            if (bits == 8) {
              block[((kk >> 2) * kNR + c) * 4 + (kk & 3)] = q[kk];
            } else {
              uint8_t& byte = block[((kk >> 3) * kNR + c) * 4 + (kk & 3)];
              byte = static_cast<uint8_t>(byte | (q[kk] << ((kk & 4) ? 4 : 0)));
            }
          }
        }
      }
    }
  });
  return -1;
}

void gather_rows(const uint8_t* w, int bits, int64_t n, int64_t k, const int32_t* ids, int64_t count, float* out) {
  const int64_t pb = panel_bytes(bits, k), gb = group_block_bytes(bits), cb = code_bytes_per_group(bits);
  const int64_t ng = groups(k, kQGroup);
  for (int64_t i = 0; i < count; i++) {
    int64_t r = ids[i];
    if (r < 0 || r >= n) r = 0;  // callers validate; never read out of bounds
    const int c = static_cast<int>(r % kNR);
    for (int64_t g = 0; g < ng; g++) {
      const uint8_t* block = w + (r / kNR) * pb + g * gb;
      const uint16_t* sp = reinterpret_cast<const uint16_t*>(block + cb);
      const float step = f16_to_f32(sp[c]), mn = f16_to_f32(sp[kNR + c]);
      const int64_t k0 = g * kQGroup;
      const int len = static_cast<int>(std::min<int64_t>(kQGroup, k - k0));
      for (int kk = 0; kk < len; kk++) out[i * k + k0 + kk] = deq(packed_code(block, bits, kk, c), step, mn);
    }
  }
}

namespace {

// Whether no element is NaN or ±inf (exponent bits all ones): an integer OR, which vectorises.
// Whether every |x| is below 2^100 (~1.3e30): NaN and infinities are not, nor are values so large
// that a group's first partial sum, dot·step·sx ≈ 64·(w spread)·max|x|, overflows to +inf before
// the min·Σx that cancels most of it is added (2e38 gave +inf where the product is 1.7e38).
bool all_moderate(const float* x, int64_t n) {
  const uint32_t* b = reinterpret_cast<const uint32_t*>(x);
  constexpr uint32_t kLimit = static_cast<uint32_t>(127 + 100) << 23;
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad |= static_cast<uint32_t>((b[i] & 0x7f800000u) >= kLimit);
  return bad == 0;
}

}  // namespace

void matmul(const float* x, int64_t m, int64_t k, const uint8_t* w, int bits, int64_t n, const float* bias, float* y,
            bool fast, const Epilogue& ep) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) y[i * n + j] = bias ? bias[j] : 0.0f;
    if (ep.any()) ep.apply(y, n, 0, m, 0, n);
    return;
  }
  // The int8 path scales each x group by its largest magnitude, which a NaN or an infinity would
  // make meaningless (the outputs came out finite): such an x takes the float path, whose sums
  // carry them as the reference's do, and so does one too large for the int8 path's partial sums.
  // The check reads x once, ~1% of a GEMV's time.
  const bool vnni = active_isa() >= Isa::Avx512Bf16 && cpu_features().avx512vnni;
  if (fast && (vnni || (bits == 4 && active_isa() >= Isa::Avx2)) && all_moderate(x, m * k)) {
    if (vnni) matmul_vnni(vnni_avx512(), xquant_avx512(), kVnniRows, x, m, k, w, bits, n, bias, y, ep);
    else matmul_vnni(dot8_avx2(), xquant_avx2(), kDot8Rows, x, m, k, w, bits, n, bias, y, ep);
    return;
  }
  matmul_fp32(x, m, k, w, bits, n, bias, y, ep);
}

}  // namespace quant
}  // namespace tierlm
