// Causal self-attention for training, in the flash style: the forward returns, beside the output,
// each row's log-sum-exp of scores; the backward recomputes the softmax block by block from it, so
// no [T, T] matrix of any head is ever held. Layouts as the inference prefill (attention.h):
// q[t,hq,d], k/v[t,hkv,d], out[t,hq,d], lse[t,hq]; sequence s holds tokens
// seq_starts[s]..seq_starts[s+1]-1 and attends only within itself; query head h reads key/value
// head h / (hq/hkv). The per-ISA bodies (attention_train_impl.h) are compiled once per instruction
// set and auto-vectorised: every inner loop runs along keys or features with independent lanes.
#pragma once

#include <cstdint>

namespace tierlm {
namespace attn_train {

// out and lse (natural log of Σ_j exp(scale · q·k_j) over the causal keys).
void forward(const float* q, const float* k, const float* v, int64_t t, int64_t hq, int64_t hkv, int64_t d,
             const int32_t* seq_starts, int64_t nseq, float scale, float* out, float* lse);
// dq[t,hq,d], dk/dv[t,hkv,d] (overwritten) from dout and the forward's out and lse. Two passes, each
// writing disjoint blocks (dk/dv per key block, then dq per query block), so no thread ever adds
// into another's output and the result does not depend on the thread count.
void backward(const float* q, const float* k, const float* v, const float* out, const float* lse,
              const float* dout, int64_t t, int64_t hq, int64_t hkv, int64_t d, const int32_t* seq_starts,
              int64_t nseq, float scale, float* dq, float* dk, float* dv);

// ---- per-ISA bodies ----------------------------------------------------------------------------
constexpr int64_t kBlock = 64;  // keys per block, queries per block
// Floats of scratch a body needs: key and value blocks transposed, up to four [block][d] blocks
// (accumulators, packed rows), two [block][block] probability blocks and per-row vectors.
constexpr int64_t scratch_floats(int64_t d) { return 6 * d * kBlock + 2 * kBlock * kBlock + 4 * kBlock + 64; }

// One sequence, every pointer at the sequence's first token (lse and delta: [n, hq]).
struct Seq {
  const float *q, *k, *v, *dout, *lse, *delta;
  float *out, *lse_out, *dq, *dk, *dv;
  int64_t n, hq, hkv, d;
  float scale;
};

struct Bodies {
  // Rows i0..i0+nq-1 of query head h: out, lse_out.
  void (*forward_rows)(const Seq& s, int64_t h, int64_t i0, int64_t nq, float* scratch);
  // Keys j0..j0+nk-1 of kv head kh: dk, dv.
  void (*backward_kv)(const Seq& s, int64_t kh, int64_t j0, int64_t nk, float* scratch);
  // Rows i0..i0+nq-1 of query head h: dq.
  void (*backward_q)(const Seq& s, int64_t h, int64_t i0, int64_t nq, float* scratch);
};

namespace generic { extern const Bodies bodies; }
namespace isa2 { extern const Bodies bodies; }
namespace isa512 { extern const Bodies bodies; }

}  // namespace attn_train
}  // namespace tierlm
