// Training attention: the baseline bodies (attention_train_impl.h), ISA dispatch and the work
// split. Work items are (sequence, head, block of 64 rows or keys), handed out dynamically.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "core/cpu.h"
#include "core/thread_pool.h"
#include "kernels/attention_train.h"

namespace tierlm {
namespace attn_train {
namespace generic {
#include "kernels/attention_train_impl.h"
}  // namespace generic

namespace {

const Bodies& bodies() {
  Isa isa = active_isa();
  return isa >= Isa::Avx512 ? isa512::bodies : isa == Isa::Avx2 ? isa2::bodies : generic::bodies;
}

// One item: a block of rows (or keys) of one head of one sequence.
struct Item {
  int64_t seq, head, r0, nr;
};

// late_first: query blocks late in a sequence see the most keys (forward, dQ); key blocks early in
// it are seen by the most queries (dK, dV). The costliest items go first so the dynamic hand-out
// ends evenly.
std::vector<Item> block_items(const int32_t* starts, int64_t nseq, int64_t heads, bool late_first) {
  std::vector<Item> items;
  for (int64_t s = 0; s < nseq; s++) {
    const int64_t n = starts[s + 1] - starts[s];
    for (int64_t h = 0; h < heads; h++)
      for (int64_t r0 = 0; r0 < n; r0 += kBlock) items.push_back({s, h, r0, std::min(kBlock, n - r0)});
  }
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) { return late_first ? a.r0 > b.r0 : a.r0 < b.r0; });
  return items;
}

template <typename F>
void run_items(const std::vector<Item>& items, int64_t d, F&& fn) {
  std::atomic<size_t> next{0};
  ThreadPool::instance().run([&](int, int) {
    thread_local std::vector<float> scratch;
    if ((int64_t)scratch.size() < scratch_floats(d)) scratch.resize((size_t)scratch_floats(d));
    for (;;) {
      const size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= items.size()) break;
      fn(items[i], scratch.data());
    }
  });
}

// The sequence's view of the whole-batch tensors.
Seq seq_view(const Seq& all, const int32_t* starts, int64_t s) {
  const int64_t st = starts[s], qd = all.hq * all.d, kd = all.hkv * all.d;
  Seq v = all;
  v.n = starts[s + 1] - st;
  auto at = [](auto* p, int64_t off) { return p ? p + off : p; };
  v.q = at(all.q, st * qd);
  v.dout = at(all.dout, st * qd);
  v.out = at(all.out, st * qd);
  v.dq = at(all.dq, st * qd);
  v.k = at(all.k, st * kd);
  v.v = at(all.v, st * kd);
  v.dk = at(all.dk, st * kd);
  v.dv = at(all.dv, st * kd);
  v.lse = at(all.lse, st * all.hq);
  v.lse_out = at(all.lse_out, st * all.hq);
  v.delta = at(all.delta, st * all.hq);
  return v;
}

}  // namespace

void forward(const float* q, const float* k, const float* v, int64_t t, int64_t hq, int64_t hkv, int64_t d,
             const int32_t* seq_starts, int64_t nseq, float scale, float* out, float* lse) {
  (void)t;
  const Bodies& b = bodies();
  const Seq all{q, k, v, nullptr, nullptr, nullptr, out, lse, nullptr, nullptr, nullptr, 0, hq, hkv, d, scale};
  run_items(block_items(seq_starts, nseq, hq, true), d, [&](const Item& it, float* scratch) {
    b.forward_rows(seq_view(all, seq_starts, it.seq), it.head, it.r0, it.nr, scratch);
  });
}

void backward(const float* q, const float* k, const float* v, const float* out, const float* lse,
              const float* dout, int64_t t, int64_t hq, int64_t hkv, int64_t d, const int32_t* seq_starts,
              int64_t nseq, float scale, float* dq, float* dk, float* dv) {
  // delta[i, h] = dO_i · O_i: the softmax backward's row term, shared by both passes.
  std::vector<float> delta((size_t)(t * hq));
  ThreadPool::instance().parallel_for(t * hq, 256, [&](int64_t a, int64_t e) {
    for (int64_t r = a; r < e; r++) {
      const float* o = out + r * d;
      const float* g = dout + r * d;
      float acc = 0.f;
      for (int64_t c = 0; c < d; c++) acc += o[c] * g[c];
      delta[r] = acc;
    }
  });
  const Bodies& b = bodies();
  const Seq all{q, k, v, dout, lse, delta.data(), nullptr, nullptr, dq, dk, dv, 0, hq, hkv, d, scale};
  run_items(block_items(seq_starts, nseq, hkv, false), d, [&](const Item& it, float* scratch) {
    b.backward_kv(seq_view(all, seq_starts, it.seq), it.head, it.r0, it.nr, scratch);
  });
  run_items(block_items(seq_starts, nseq, hq, true), d, [&](const Item& it, float* scratch) {
    b.backward_q(seq_view(all, seq_starts, it.seq), it.head, it.r0, it.nr, scratch);
  });
}

}  // namespace attn_train
}  // namespace tierlm
