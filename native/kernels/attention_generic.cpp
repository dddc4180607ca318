// Attention: entry points (work split, threading, ISA dispatch, split combine) and the plain C++
// core.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/quant.h"
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

void q4_dequant(const uint8_t* rec, int64_t d, int64_t n, float* out, int64_t ld) {
  const int64_t cb = q4_code_bytes(d), rb = q4_record_bytes(d);
  for (int64_t r = 0; r < n; r++) {
    const uint8_t* p = rec + r * rb;
    float* o = out + r * ld;
    for (int64_t g0 = 0; g0 < d; g0 += kQ4Group) {
      uint16_t sm[2];
      std::memcpy(sm, p + cb + (g0 / kQ4Group) * 4, 4);
      const float step = half_to_float(sm[0]), mn = half_to_float(sm[1]);
      const int64_t g1 = std::min(d, g0 + kQ4Group);
      for (int64_t c = g0; c < g1; c++) o[c] = (float)((p[c >> 1] >> ((c & 1) * 4)) & 15) * step + mn;
    }
  }
}

void attn_scores(const float* q, int64_t g, int64_t d, const void* k, bool f16, int64_t stride, int64_t n, float* s,
                 int64_t lds, float* scratch) {
  (void)scratch;
  for (int64_t j = 0; j < n; j++) {
    for (int64_t h = 0; h < g; h++) {
      float dot = 0.f;
      if (f16) {
        const uint16_t* kr = static_cast<const uint16_t*>(k) + j * stride;
        for (int64_t c = 0; c < d; c++) dot += q[h * d + c] * half_to_float(kr[c]);
      } else {
        const float* kr = static_cast<const float*>(k) + j * stride;
        for (int64_t c = 0; c < d; c++) dot += q[h * d + c] * kr[c];
      }
      s[h * lds + j] = dot;
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

Q4DequantFn q4_fn() {
  Isa isa = active_isa();
  if (isa >= Isa::Avx512) return isa512::q4_dequant;
  if (isa == Isa::Avx2) return isa2::q4_dequant;
  return generic::q4_dequant;
}

// The tiled prefill kernel of the active ISA (none for the scalar level, which runs the core per token).
struct PrefillTiles {
  int64_t (*rows)();
  int64_t (*scratch_floats)(int64_t d);
  void (*block)(const float* q, int64_t q_tok_stride, int64_t ntok, int64_t g, int64_t d, const float* k,
                const float* v, int64_t stride, int64_t r0, float scale, float* scratch, float* out,
                int64_t out_tok_stride);
};
const PrefillTiles* prefill_tiles() {
  static const PrefillTiles t512{isa512::attn_prefill_rows, isa512::attn_prefill_scratch_floats, isa512::attn_prefill_block};
  static const PrefillTiles t2{isa2::attn_prefill_rows, isa2::attn_prefill_scratch_floats, isa2::attn_prefill_block};
  const Isa isa = active_isa();
  return isa >= Isa::Avx512 ? &t512 : isa == Isa::Avx2 ? &t2 : nullptr;
}

AttnScoresFn scores_fn() {
  const Isa isa = active_isa();
  return isa >= Isa::Avx512 ? isa512::attn_scores : isa == Isa::Avx2 ? isa2::attn_scores : generic::attn_scores;
}

// Calls fn(item, thread) for every item in [0, n), handed out dynamically over the pool, `chunk`
// consecutive items at a time.
template <typename F>
void run_items(int64_t n, F&& fn, int64_t chunk = 1) {
  if (n <= 0) return;
  ThreadPool& pool = ThreadPool::instance();
  if (n == 1 || pool.size() == 1) {
    for (int64_t i = 0; i < n; i++) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.run([&](int thread, int) {
    for (;;) {
      const int64_t i0 = next.fetch_add(chunk, std::memory_order_relaxed);
      if (i0 >= n) break;
      for (int64_t i = i0; i < i0 + chunk && i < n; i++) fn(i, thread);
    }
  });
}

// Decode items handed out in runs of consecutive ones: a run's caches lie one after another
// (consecutive kv heads of a row, [b, hkv, cap, d]), so a thread reads one stream rather than
// every other item of it, and it knows its next item. Up to 64 items a run while that leaves
// eight runs a thread for the balance. (At batch 32 of OPT-1.3B, 1024 items of ~70 positions, runs
// of 16 took 0.93 of the item-at-a-time time cold, and runs of 64 another 2-3% less; at batch 16,
// runs of 32, no difference. docs/benchmarks.md, issue #14.)
int64_t decode_run(int64_t items) {
  return std::clamp<int64_t>(items / (8 * ThreadPool::instance().size()), 1, 64);
}

// While one decode item is computed, its run's next item's first rows are prefetched into L2
// (keys and values, this many bytes of each): the in-stream prefetch of the core starts at an
// item's first row, so without it every item starts on a miss. Off with the in-stream prefetch
// (attn_prefetch_bytes() == 0: the old path). 8 KiB: the best of 2 KiB, 8 KiB and the whole item
// on the cold OPT-1.3B batch-32 layer.
constexpr int64_t kNextItemPrefetch = 8192;
inline void prefetch_item(const char* k, const char* v, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) {
    __builtin_prefetch(k + o, 0, 1);
    __builtin_prefetch(v + o, 0, 1);
  }
}

// attn_prefetch_bytes(): TIERLM_ATTN_PREFETCH (bytes) overrides the default.
std::atomic<int64_t>& prefetch_setting() {
  static std::atomic<int64_t> bytes{[] {
    const char* e = std::getenv("TIERLM_ATTN_PREFETCH");
    return e ? (int64_t)std::max(0LL, std::atoll(e)) : kAttnPrefetchDefault;
  }()};
  return bytes;
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

namespace {

void generic_widen_f16(const uint16_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i++) out[i] = half_to_float(src[i]);
}

// One f32 or f16 cache row (position `row` counted over [b, hkv, cap]) from d floats: the one
// conversion every cache write uses, so a row written with attention equals one written alone.
inline void write_cache_row(void* cache, bool f16, bool f16c, int64_t row, int64_t d, const float* s) {
  if (!f16) {
    std::memcpy(static_cast<float*>(cache) + row * d, s, (size_t)d * 4);
    return;
  }
  uint16_t* o = static_cast<uint16_t*>(cache) + row * d;
  if (f16c) isa2::narrow_f16(s, d, o);
  else for (int64_t c = 0; c < d; c++) o[c] = float_to_half(s[c]);
}

// Sparse decode (sparsity < 1): one item per (row, kv head) over the whole row, so a row's result
// depends on nothing else. Scores of every position (f32, the ISA's score kernel; q4 keys
// dequantized 64 positions at a time into a tile), per query head the kept set (top k of
// positions 0..len-2 by score, ties to the lower position, plus len-1), then a softmax and the
// weighted sum of the kept value rows in position order.
void decode_sparse(const float* q, const void* k_cache, const void* v_cache, int kind, int64_t b, int64_t hq,
                   int64_t hkv, int64_t d, int64_t cap, const int32_t* rows, const int32_t* lens, float scale,
                   double sparsity, float* out) {
  const int64_t g = hq / hkv;
  const int64_t rbytes = cache_row_bytes(kind, d);
  const bool f16 = kind == kCacheF16, q4 = kind == kCacheQ4;
  AttnScoresFn scores = scores_fn();
  Q4DequantFn dq = q4_fn();
  const Isa isa = active_isa();
  void (*widen)(const uint16_t*, int64_t, float*) =
      isa >= Isa::Avx512 ? isa512::widen_f16 : isa == Isa::Avx2 ? isa2::widen_f16 : generic_widen_f16;
  run_items(b * hkv, [&](int64_t idx, int) {
    const int64_t bi = idx / hkv, kh = idx % hkv;
    const int64_t len = lens[bi];
    thread_local std::vector<float> t_sc, t_buf, t_vals, t_w;
    thread_local std::vector<uint8_t> t_used;
    thread_local std::vector<int32_t> t_idx;
    float* sc = grow(t_sc, g * len);
    // qs (g×d) | tile (kAttnBlock×d) | scratch (kAttnBlock×g) | acc (g×d) | row (d) | sums (g)
    float* qs = grow(t_buf, 2 * g * d + kAttnBlock * d + kAttnBlock * g + d + g + 16);
    float* tile = qs + g * d;
    float* scr = tile + kAttnBlock * d;
    float* acc = scr + kAttnBlock * g;
    float* rowbuf = acc + g * d;
    float* sums = rowbuf + d;
    float* wt = grow(t_w, g * len);
    std::fill(wt, wt + g * len, 0.f);
    if ((int64_t)t_used.size() < len) t_used.resize((size_t)len);
    uint8_t* used = t_used.data();
    std::fill(used, used + len, (uint8_t)0);
    if ((int64_t)t_idx.size() < len) t_idx.resize((size_t)len);
    int32_t* ix = t_idx.data();
    const float* qsrc = q + (bi * hq + kh * g) * d;
    for (int64_t i = 0; i < g * d; i++) qs[i] = qsrc[i] * scale;
    const int64_t base = ((rows ? rows[bi] : bi) * hkv + kh) * cap;
    const char* kb = static_cast<const char*>(k_cache) + base * rbytes;
    const char* vb = static_cast<const char*>(v_cache) + base * rbytes;
    if (q4) {
      for (int64_t p0 = 0; p0 < len; p0 += kAttnBlock) {
        const int64_t nb = std::min(kAttnBlock, len - p0);
        dq(reinterpret_cast<const uint8_t*>(kb) + p0 * rbytes, d, nb, tile, d);
        scores(qs, g, d, tile, false, d, nb, sc + p0, len, scr);
      }
    } else {
      // (one call over the row: the score kernel reads the keys as one prefetched stream)
      scores(qs, g, d, kb, f16, d, len, sc, len, scr);
    }
    const int64_t older = len - 1;
    int64_t keep = (int64_t)std::ceil(sparsity * (double)older);
    keep = std::min(older, std::max<int64_t>(1, keep));
    float* vals = grow(t_vals, older + 1);
    for (int64_t h = 0; h < g; h++) {
      const float* s = sc + h * len;
      // The kept set, in position order: the keep-th highest score is the threshold; every score
      // above it, and as many equal to it as are still wanted from the lowest position up.
      int64_t nk = 0;
      // A NaN score ranks above every other (as torch.topk ranks it), so it is kept and the head is
      // NaN, as in dense attention; nth_element below needs a strict weak order, which NaN breaks.
      if (std::any_of(s, s + older, [](float x) { return x != x; })) {
        sums[h] = NAN;
        continue;
      }
      if (keep < older) {
        std::copy(s, s + older, vals);
        std::nth_element(vals, vals + (keep - 1), vals + older, std::greater<float>());
        const float thr = vals[keep - 1];
        int64_t above = 0;
        for (int64_t p = 0; p < older; p++) above += s[p] > thr;
        int64_t ties = keep - above;
        for (int64_t p = 0; p < older; p++) {
          if (s[p] > thr || (s[p] == thr && ties-- > 0)) ix[nk++] = (int32_t)p;
        }
      } else {
        for (int64_t p = 0; p < older; p++) ix[nk++] = (int32_t)p;
      }
      ix[nk++] = (int32_t)older;
      float mx = -INFINITY;
      for (int64_t i = 0; i < nk; i++) mx = std::max(mx, s[ix[i]]);
      float sum = 0.f;
      float* wh = wt + h * len;
      for (int64_t i = 0; i < nk; i++) {
        const int64_t p = ix[i];
        const float w = std::exp(s[p] - mx);
        sum += w;
        wh[p] = w;
        used[p] = 1;
      }
      sums[h] = sum;
    }
    // Values: each row kept by some head read once, in position order, added into the heads that
    // keep it (so every head sums its kept rows in position order).
    for (int64_t i = 0; i < g * d; i++) acc[i] = 0.f;
    // The kept rows are scattered: each is prefetched a few rows ahead (a row read on demand waits
    // for memory, line after line).
    int64_t nused = 0;
    for (int64_t p = 0; p < len; p++)
      if (used[p]) ix[nused++] = (int32_t)p;
    constexpr int64_t kAhead = 4;
    auto prefetch_row = [&](int64_t p) {
      const char* r = vb + p * rbytes;
      for (int64_t o = 0; o < rbytes; o += 64) __builtin_prefetch(r + o);
      __builtin_prefetch(r + rbytes - 1);
    };
    for (int64_t i = 0; i < std::min(kAhead, nused); i++) prefetch_row(ix[i]);
    for (int64_t i = 0; i < nused; i++) {
      if (i + kAhead < nused) prefetch_row(ix[i + kAhead]);
      const int64_t p = ix[i];
      const float* vr;
      if (q4) {
        dq(reinterpret_cast<const uint8_t*>(vb) + p * rbytes, d, 1, rowbuf, d);
        vr = rowbuf;
      } else if (f16) {
        widen(reinterpret_cast<const uint16_t*>(vb + p * rbytes), d, rowbuf);
        vr = rowbuf;
      } else {
        vr = reinterpret_cast<const float*>(vb + p * rbytes);
      }
      for (int64_t h = 0; h < g; h++) {
        const float w = wt[h * len + p];
        if (w == 0.f) continue;
        float* ah = acc + h * d;
        for (int64_t c = 0; c < d; c++) ah[c] += w * vr[c];
      }
    }
    for (int64_t h = 0; h < g; h++) {
      const float inv = 1.f / sums[h];
      float* o = out + (bi * hq + kh * g + h) * d;
      for (int64_t c = 0; c < d; c++) o[c] = acc[h * d + c] * inv;
    }
  });
}

}  // namespace

int64_t attn_prefetch_bytes() { return prefetch_setting().load(std::memory_order_relaxed); }
void set_attn_prefetch_bytes(int64_t bytes) { prefetch_setting().store(std::max<int64_t>(0, bytes), std::memory_order_relaxed); }

void attn_decode(const float* q, const void* k_cache, const void* v_cache, int kind, int64_t b, int64_t hq,
                 int64_t hkv, int64_t d, int64_t cap, const int32_t* lens, float scale, double sparsity, float* out) {
  attn_cached(q, k_cache, v_cache, kind, b, hq, hkv, d, cap, nullptr, lens, scale, sparsity, out);
}

// Each query token against its own cache row: decode's items (token, kv head, split of positions)
// with the row looked up, so a chunk of t tokens is one call of t·hkv·splits items in parallel
// rather than t calls, and each token's result is the one decode gives it.
void attn_cached(const float* q, const void* k_cache, const void* v_cache, int kind, int64_t b, int64_t hq,
                 int64_t hkv, int64_t d, int64_t cap, const int32_t* rows, const int32_t* lens, float scale,
                 double sparsity, float* out, const float* k_new, const float* v_new) {
  if (b <= 0 || hq <= 0 || d <= 0) return;
  bool append = k_new && v_new;
  if (append && (sparsity < 1.0 || kind == kCacheQ4)) {
    // Sparse items score a whole row, and a q4 row is quantized: the new rows are written first.
    std::vector<int32_t> pos((size_t)b), row((size_t)b);
    for (int64_t i = 0; i < b; i++) pos[i] = lens[i] - 1, row[i] = rows ? rows[i] : (int32_t)i;
    attn_cache_write(const_cast<void*>(k_cache), kind, 0, hkv, cap, d, k_new, b, row.data(), pos.data());
    attn_cache_write(const_cast<void*>(v_cache), kind, 0, hkv, cap, d, v_new, b, row.data(), pos.data());
    append = false;
  }
  if (sparsity < 1.0) {
    decode_sparse(q, k_cache, v_cache, kind, b, hq, hkv, d, cap, rows, lens, scale, sparsity, out);
    return;
  }
  const int64_t g = hq / hkv;
  const bool cache_f16 = kind == kCacheF16, q4 = kind == kCacheQ4;
  const int64_t rbytes = cache_row_bytes(kind, d);
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
  // q4 adds two dequantized tiles (kAttnBlock×d) and one block's partial state.
  const int64_t core_floats = attn_scratch_floats(g, d);
  const int64_t scratch_floats = g * d + core_floats + (q4 ? 2 * kAttnBlock * d + part_floats : 0);
  int nthreads = ThreadPool::instance().size();
  float* scratch = grow(tl_scratch, scratch_floats * nthreads);
  AttnCoreFn core = core_fn();
  Q4DequantFn dq = q4_fn();
  // (thread_local: the workers must read this thread's list through a plain pointer)
  const Item* item_list = items.data();
  const int64_t nitems = (int64_t)items.size(), run = decode_run(nitems);
  const bool pf_next = attn_prefetch_bytes() > 0;
  auto cache_offset = [&](const Item& it) { return (((rows ? rows[it.bi] : it.bi) * hkv + it.kh) * cap + it.p0) * rbytes; };
  // The appended row of an item: written by the split that holds the row's last position (no other
  // item reads it), when the run reaches the item before it, or first thing if it starts a run.
  const bool f16c = active_isa() >= Isa::Avx2;
  auto write_new = [&](const Item& it) {
    if (!append || it.p1 != lens[it.bi]) return;
    const int64_t row = ((rows ? rows[it.bi] : it.bi) * hkv + it.kh) * cap + it.p1 - 1, src = (it.bi * hkv + it.kh) * d;
    write_cache_row(const_cast<void*>(k_cache), cache_f16, f16c, row, d, k_new + src);
    write_cache_row(const_cast<void*>(v_cache), cache_f16, f16c, row, d, v_new + src);
  };
  run_items(nitems, [&](int64_t idx, int thread) {
    const Item& it = item_list[idx];
    if (idx % run == 0) write_new(it);
    if ((idx + 1) % run != 0 && idx + 1 < nitems) {
      const Item& nx = item_list[idx + 1];
      write_new(nx);
      if (pf_next) {
        const int64_t off = cache_offset(nx);
        prefetch_item(static_cast<const char*>(k_cache) + off, static_cast<const char*>(v_cache) + off,
                      std::min(kNextItemPrefetch, (nx.p1 - nx.p0) * rbytes));
      }
    }
    float* qs = scratch + (size_t)thread * scratch_floats;
    const float* qsrc = q + (it.bi * hq + it.kh * g) * d;
    for (int64_t i = 0; i < g * d; i++) qs[i] = qsrc[i] * scale;
    const int64_t off = cache_offset(it);
    const char* kb = static_cast<const char*>(k_cache) + off;
    const char* vb = static_cast<const char*>(v_cache) + off;
    float* pm = partial + it.part * part_floats;
    if (!q4) {
      core(qs, g, d, kb, vb, cache_f16, d, it.p1 - it.p0, qs + g * d, pm, pm + g, pm + 2 * g);
      return;
    }
    // q4: the split's positions kAttnBlock at a time, keys and values dequantized into tiles,
    // each block's softmax state merged into the split's in order.
    float* tk = qs + g * d + core_floats;
    float* tv = tk + kAttnBlock * d;
    float* sm = tv + kAttnBlock * d;
    for (int64_t s0 = it.p0; s0 < it.p1; s0 += kAttnBlock) {
      const int64_t nb = std::min(kAttnBlock, it.p1 - s0);
      const int64_t ro = (s0 - it.p0) * rbytes;
      dq(reinterpret_cast<const uint8_t*>(kb) + ro, d, nb, tk, d);
      dq(reinterpret_cast<const uint8_t*>(vb) + ro, d, nb, tv, d);
      float* dst = s0 == it.p0 ? pm : sm;
      core(qs, g, d, tk, tv, false, d, nb, qs + g * d, dst, dst + g, dst + 2 * g);
      if (dst == pm) continue;
      for (int64_t h = 0; h < g; h++) {
        const float M = std::max(pm[h], sm[h]);
        const float a = std::exp(pm[h] - M), c = std::exp(sm[h] - M);
        pm[h] = M;
        pm[g + h] = pm[g + h] * a + sm[g + h] * c;
        float* pa = pm + 2 * g + h * d;
        const float* sa = sm + 2 * g + h * d;
        for (int64_t e = 0; e < d; e++) pa[e] = pa[e] * a + sa[e] * c;
      }
    }
  }, run);
  // Combine the splits in order.
  for (int64_t bi = 0; bi < b; bi++) {
    int64_t ns = nsplit[bi];
    for (int64_t kh = 0; kh < hkv; kh++) {
      const float* base = partial + (first_split[bi] + kh * ns) * part_floats;
      for (int64_t h = 0; h < g; h++) {
        float* o = out + (bi * hq + kh * g + h) * d;
        // Every score -inf (an infinite query against keys of the other sign): NaN, as the
        // reference's exp(-inf - -inf); the SIMD cores would average the values instead.
        if (ns == 1) {
          float inv = base[h] == -INFINITY ? NAN : 1.f / base[g + h];
          const float* a = base + 2 * g + h * d;
          for (int64_t c = 0; c < d; c++) o[c] = a[c] * inv;
          continue;
        }
        float M = -INFINITY;
        for (int64_t s = 0; s < ns; s++) M = std::max(M, base[s * part_floats + h]);
        if (M == -INFINITY) {
          for (int64_t c = 0; c < d; c++) o[c] = NAN;
          continue;
        }
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
  const PrefillTiles* tiles = prefill_tiles();
  if (tiles && g <= tiles->rows()) {
    // Tiled: blocks of tokens (all heads of a group) of each sequence, counted from the sequence's
    // start, so a sequence's result does not depend on the rest of the batch.
    const int64_t R = tiles->rows() / g;
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
    const int64_t scratch_floats = tiles->scratch_floats(d);
    int nthreads = ThreadPool::instance().size();
    float* scratch = grow(tl_scratch, scratch_floats * nthreads);
    const Item* list = items.data();
    run_items((int64_t)items.size(), [&](int64_t idx, int thread) {
      const Item& it = list[idx];
      const int64_t tok = it.start + it.r0;
      tiles->block(q + (tok * hq + it.kh * g) * d, hq * d, it.ntok, g, d, k + (it.start * hkv + it.kh) * d,
                   v + (it.start * hkv + it.kh) * d, hkv * d, it.r0, scale, scratch + (size_t)thread * scratch_floats,
                   out + (tok * hq + it.kh * g) * d, hq * d);
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
      float inv = ml[h] == -INFINITY ? NAN : 1.f / ml[g + h];  // every score -inf: NaN, as in decode's combine
      float* o = out + (i * hq + kh * g + h) * d;
      for (int64_t c = 0; c < d; c++) o[c] = acc[h * d + c] * inv;
    }
  });
}

void attn_cache_write(void* cache, int kind, int64_t b, int64_t hkv, int64_t cap, int64_t d, const float* src,
                      int64_t t, const int32_t* rows, const int32_t* pos) {
  (void)b;
  if (kind == kCacheQ4) {
    // Quantize the t×hkv rows in the standalone layout, then scatter codes and params into records.
    const int64_t n = t * hkv, cb = q4_code_bytes(d), ng = q4_groups(d), rb = q4_record_bytes(d);
    std::vector<uint8_t> codes((size_t)(n * cb));
    std::vector<uint16_t> params((size_t)(n * ng * 2));
    quant::quantize(src, n, d, 4, kQ4Group, codes.data(), params.data());
    for (int64_t i = 0; i < t; i++) {
      for (int64_t h = 0; h < hkv; h++) {
        const int64_t r = i * hkv + h;
        uint8_t* rec = static_cast<uint8_t*>(cache) + ((rows[i] * hkv + h) * cap + pos[i]) * rb;
        std::memcpy(rec, codes.data() + r * cb, (size_t)cb);
        std::memcpy(rec + cb, params.data() + r * ng * 2, (size_t)(ng * 4));
      }
    }
    return;
  }
  const bool cache_f16 = kind == kCacheF16;
  const bool f16c = active_isa() >= Isa::Avx2;
  for (int64_t i = 0; i < t; i++)
    for (int64_t h = 0; h < hkv; h++)
      write_cache_row(cache, cache_f16, f16c, (rows[i] * hkv + h) * cap + pos[i], d, src + (i * hkv + h) * d);
}

}  // namespace tierlm
