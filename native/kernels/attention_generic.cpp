// Attention: entry points (work split, threading, ISA dispatch, split combine) and the plain C++
// core.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/rowwise.h"

namespace tierlm {

namespace generic {

void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc) {
  const int64_t B = kAttnBlock;
  float* s = scratch;
  for (int64_t h = 0; h < g; h++) {
    m[h] = -INFINITY;
    l[h] = 0.f;
  }
  std::fill(acc, acc + g * d, 0.f);
  auto kat = [&](int64_t p, int64_t c) -> float {
    return f16 ? half_to_float(static_cast<const uint16_t*>(k)[p * stride + c]) : static_cast<const float*>(k)[p * stride + c];
  };
  auto vat = [&](int64_t p, int64_t c) -> float {
    return f16 ? half_to_float(static_cast<const uint16_t*>(v)[p * stride + c]) : static_cast<const float*>(v)[p * stride + c];
  };
  for (int64_t p0 = 0; p0 < n; p0 += B) {
    int64_t nb = std::min(B, n - p0);
    for (int64_t j = 0; j < nb; j++) {
      for (int64_t h = 0; h < g; h++) {
        float dot = 0.f;
        for (int64_t c = 0; c < d; c++) dot += q[h * d + c] * kat(p0 + j, c);
        s[h * B + j] = dot;
      }
    }
    for (int64_t h = 0; h < g; h++) {
      float bm = -INFINITY;
      for (int64_t j = 0; j < nb; j++) bm = std::max(bm, s[h * B + j]);
      float mnew = std::max(m[h], bm);
      float alpha = std::exp(m[h] - mnew);
      float sum = 0.f;
      for (int64_t j = 0; j < nb; j++) {
        float e = std::exp(s[h * B + j] - mnew);
        s[h * B + j] = e;
        sum += e;
      }
      l[h] = l[h] * alpha + sum;
      m[h] = mnew;
      for (int64_t c = 0; c < d; c++) acc[h * d + c] *= alpha;
    }
    for (int64_t j = 0; j < nb; j++) {
      for (int64_t h = 0; h < g; h++) {
        float w = s[h * B + j];
        for (int64_t c = 0; c < d; c++) acc[h * d + c] += w * vat(p0 + j, c);
      }
    }
  }
}

}  // namespace generic

namespace {

AttnCoreFn core_fn() {
  Isa isa = active_isa();
  if (isa >= Isa::Avx512) return isa512::attn_core;
  if (isa == Isa::Avx2) return isa2::attn_core;
  return generic::attn_core;
}

// Calls fn(item, thread) for every item in [0, n), handed out dynamically over the pool.
template <typename F>
void run_items(int64_t n, F&& fn) {
  if (n <= 0) return;
  ThreadPool& pool = ThreadPool::instance();
  if (n == 1 || pool.size() == 1) {
    for (int64_t i = 0; i < n; i++) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.run([&](int thread, int) {
    for (;;) {
      int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) break;
      fn(i, thread);
    }
  });
}

// Positions per decode split. Fixed (it depends on nothing but the row's length), so a row's
// result is the same whatever the batch or thread count.
constexpr int64_t kSplit = 256;

// Buffers reused from call to call (one set per calling thread: the JS thread and the async
// dispatcher), so a decode step allocates and page-faults nothing.
thread_local std::vector<float> tl_partial, tl_scratch;
float* grow(std::vector<float>& v, int64_t n) {
  if ((int64_t)v.size() < n) v.resize((size_t)n);
  return v.data();
}

}  // namespace

void attn_decode(const float* q, const void* k_cache, const void* v_cache, bool cache_f16, int64_t b, int64_t hq,
                 int64_t hkv, int64_t d, int64_t cap, const int32_t* lens, float scale, float* out) {
  if (b <= 0 || hq <= 0 || d <= 0) return;
  const int64_t g = hq / hkv;
  const size_t esize = cache_f16 ? 2 : 4;
  struct Item {
    int64_t bi, kh, p0, p1, part;
  };
  thread_local std::vector<Item> items;
  items.clear();
  std::vector<int64_t> first_split((size_t)b), nsplit((size_t)b);
  int64_t parts = 0;
  for (int64_t bi = 0; bi < b; bi++) {
    int64_t len = lens[bi];
    int64_t ns = (len + kSplit - 1) / kSplit;
    nsplit[bi] = ns;
    first_split[bi] = parts;
    for (int64_t kh = 0; kh < hkv; kh++)
      for (int64_t s = 0; s < ns; s++) items.push_back({bi, kh, s * kSplit, std::min(len, (s + 1) * kSplit), parts + kh * ns + s});
    parts += hkv * ns;
  }
  // Partial state of each (row, kv head, split): g maxima, g sums, g×d accumulators.
  const int64_t part_floats = g * (d + 2);
  float* partial = grow(tl_partial, parts * part_floats);
  const int64_t scratch_floats = g * d + attn_scratch_floats(g, d);
  int nthreads = ThreadPool::instance().size();
  float* scratch = grow(tl_scratch, scratch_floats * nthreads);
  AttnCoreFn core = core_fn();
  // (thread_local: the workers must read this thread's list through a plain pointer)
  const Item* item_list = items.data();
  run_items((int64_t)items.size(), [&](int64_t idx, int thread) {
    const Item& it = item_list[idx];
    float* qs = scratch + (size_t)thread * scratch_floats;
    const float* qsrc = q + (it.bi * hq + it.kh * g) * d;
    for (int64_t i = 0; i < g * d; i++) qs[i] = qsrc[i] * scale;
    int64_t off = ((it.bi * hkv + it.kh) * cap + it.p0) * d;
    const char* kb = static_cast<const char*>(k_cache) + off * esize;
    const char* vb = static_cast<const char*>(v_cache) + off * esize;
    float* pm = partial + it.part * part_floats;
    core(qs, g, d, kb, vb, cache_f16, d, it.p1 - it.p0, qs + g * d, pm, pm + g, pm + 2 * g);
  });
  // Combine the splits in order.
  for (int64_t bi = 0; bi < b; bi++) {
    int64_t ns = nsplit[bi];
    for (int64_t kh = 0; kh < hkv; kh++) {
      const float* base = partial + (first_split[bi] + kh * ns) * part_floats;
      for (int64_t h = 0; h < g; h++) {
        float* o = out + (bi * hq + kh * g + h) * d;
        if (ns == 1) {
          float inv = 1.f / base[g + h];
          const float* a = base + 2 * g + h * d;
          for (int64_t c = 0; c < d; c++) o[c] = a[c] * inv;
          continue;
        }
        float M = -INFINITY;
        for (int64_t s = 0; s < ns; s++) M = std::max(M, base[s * part_floats + h]);
        float L = 0.f;
        for (int64_t c = 0; c < d; c++) o[c] = 0.f;
        for (int64_t s = 0; s < ns; s++) {
          const float* ps = base + s * part_floats;
          float w = std::exp(ps[h] - M);
          L += ps[g + h] * w;
          const float* a = ps + 2 * g + h * d;
          for (int64_t c = 0; c < d; c++) o[c] += a[c] * w;
        }
        float inv = 1.f / L;
        for (int64_t c = 0; c < d; c++) o[c] *= inv;
      }
    }
  }
}

void attn_prefill(const float* q, const float* k, const float* v, int64_t t, int64_t hq, int64_t hkv, int64_t d,
                  const int32_t* seq_starts, int64_t nseq_plus1, float scale, float* out) {
  if (t <= 0 || hq <= 0 || d <= 0) return;
  const int64_t g = hq / hkv;
  if (active_isa() >= Isa::Avx512 && g <= isa512::attn_prefill_rows()) {
    // Tiled: blocks of tokens (all heads of a group) of each sequence, counted from the sequence's
    // start, so a sequence's result does not depend on the rest of the batch.
    const int64_t R = isa512::attn_prefill_rows() / g;
    struct Item {
      int64_t start, r0, ntok, kh;
    };
    std::vector<Item> items;
    for (int64_t s = 0; s + 1 < nseq_plus1; s++) {
      int64_t st = seq_starts[s], len = seq_starts[s + 1] - st;
      for (int64_t r0 = 0; r0 < len; r0 += R)
        for (int64_t kh = 0; kh < hkv; kh++) items.push_back({st, r0, std::min(R, len - r0), kh});
    }
    // Most keys first, so the dynamic hand-out balances.
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.r0 + a.ntok > b.r0 + b.ntok; });
    const int64_t scratch_floats = isa512::attn_prefill_scratch_floats(d);
    int nthreads = ThreadPool::instance().size();
    float* scratch = grow(tl_scratch, scratch_floats * nthreads);
    const Item* list = items.data();
    run_items((int64_t)items.size(), [&](int64_t idx, int thread) {
      const Item& it = list[idx];
      const int64_t tok = it.start + it.r0;
      isa512::attn_prefill_block(q + (tok * hq + it.kh * g) * d, hq * d, it.ntok, g, d, k + (it.start * hkv + it.kh) * d,
                                 v + (it.start * hkv + it.kh) * d, hkv * d, it.r0, scale,
                                 scratch + (size_t)thread * scratch_floats, out + (tok * hq + it.kh * g) * d, hq * d);
    });
    return;
  }
  std::vector<int64_t> start_of((size_t)t);
  for (int64_t s = 0; s + 1 < nseq_plus1; s++)
    for (int64_t i = seq_starts[s]; i < seq_starts[s + 1]; i++) start_of[(size_t)i] = seq_starts[s];
  const int64_t scratch_floats = 2 * g * d + 2 * g + attn_scratch_floats(g, d);
  int nthreads = ThreadPool::instance().size();
  float* scratch = grow(tl_scratch, scratch_floats * nthreads);
  AttnCoreFn core = core_fn();
  // Items (token, kv head), longest first so the dynamic hand-out balances.
  const int64_t n = t * hkv;
  run_items(n, [&](int64_t idx, int thread) {
    int64_t r = n - 1 - idx;
    int64_t i = r / hkv, kh = r % hkv;
    float* qs = scratch + (size_t)thread * scratch_floats;
    float* acc = qs + g * d;
    float* ml = acc + g * d;
    float* sc = ml + 2 * g;
    const float* qsrc = q + (i * hq + kh * g) * d;
    for (int64_t c = 0; c < g * d; c++) qs[c] = qsrc[c] * scale;
    int64_t st = start_of[(size_t)i];
    int64_t off = (st * hkv + kh) * d;
    core(qs, g, d, k + off, v + off, false, hkv * d, i - st + 1, sc, ml, ml + g, acc);
    for (int64_t h = 0; h < g; h++) {
      float inv = 1.f / ml[g + h];
      float* o = out + (i * hq + kh * g + h) * d;
      for (int64_t c = 0; c < d; c++) o[c] = acc[h * d + c] * inv;
    }
  });
}

void attn_cache_write(void* cache, bool cache_f16, int64_t b, int64_t hkv, int64_t cap, int64_t d, const float* src,
                      int64_t t, int64_t row, int64_t pos) {
  (void)b;
  bool f16c = active_isa() >= Isa::Avx2;
  for (int64_t i = 0; i < t; i++) {
    for (int64_t h = 0; h < hkv; h++) {
      const float* s = src + (i * hkv + h) * d;
      int64_t off = ((row * hkv + h) * cap + pos + i) * d;
      if (!cache_f16) {
        std::memcpy(static_cast<float*>(cache) + off, s, (size_t)d * 4);
      } else {
        uint16_t* o = static_cast<uint16_t*>(cache) + off;
        if (f16c) isa2::narrow_f16(s, d, o);
        else for (int64_t c = 0; c < d; c++) o[c] = float_to_half(s[c]);
      }
    }
  }
}

}  // namespace tierlm
