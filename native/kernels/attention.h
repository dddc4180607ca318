// Attention kernels: causal prefill over a ragged batch, decode against a KV cache, cache writes.
#pragma once

#include <cstdint>

namespace tierlm {

void attn_prefill(const float* q, const float* k, const float* v, int64_t t, int64_t hq, int64_t hkv, int64_t d,
                  const int32_t* seq_starts, int64_t nseq_plus1, float scale, float* out);
// cache_f16: caches hold IEEE halves, otherwise float32.
void attn_decode(const float* q, const void* k_cache, const void* v_cache, bool cache_f16, int64_t b, int64_t hq,
                 int64_t hkv, int64_t d, int64_t cap, const int32_t* lens, float scale, float* out);
void attn_cache_write(void* cache, bool cache_f16, int64_t b, int64_t hkv, int64_t cap, int64_t d, const float* src,
                      int64_t t, int64_t row, int64_t pos);

// The per-ISA core: g query heads (q: g×d, already multiplied by the scale) against n positions of
// one key/value head, position p at k + p*stride (elements). Returns the running softmax state:
// m[h] the max score, l[h] = Σ exp(s - m), acc[h×d] = Σ exp(s - m)·v (unnormalised).
// scratch holds at least attn_scratch_floats(g, d) floats.
constexpr int64_t kAttnBlock = 64;
constexpr int64_t attn_scratch_floats(int64_t g, int64_t d) { return 2 * kAttnBlock * (g + d) + 32; }
typedef void (*AttnCoreFn)(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16,
                           int64_t stride, int64_t n, float* scratch, float* m, float* l, float* acc);
namespace isa512 {
void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc);
// Tiled causal prefill of one block of a sequence: tokens r0..r0+ntok-1 (counted from the
// sequence's start) × the g query heads of one key/value head, ntok·g <= attn_prefill_rows(),
// against keys 0..r0+ntok-1. q points at token r0's first head of the group (q_tok_stride floats
// from token to token), k and v at the sequence's first key of the head (stride floats from key to
// key), out like q. scratch holds attn_prefill_scratch_floats(d) floats. The result of a row
// depends only on the block's (r0, ntok) and the sequence's data.
int64_t attn_prefill_rows();
int64_t attn_prefill_scratch_floats(int64_t d);
void attn_prefill_block(const float* q, int64_t q_tok_stride, int64_t ntok, int64_t g, int64_t d, const float* k,
                        const float* v, int64_t stride, int64_t r0, float scale, float* scratch, float* out,
                        int64_t out_tok_stride);
}
namespace isa2 {
void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc);
}
namespace generic {
void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc);
}

}  // namespace tierlm
