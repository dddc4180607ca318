// Attention kernels: causal prefill over a ragged batch, decode against a KV cache, cache writes.
#pragma once

#include <cstdint>

namespace tierlm {

void attn_prefill(const float* q, const float* k, const float* v, int64_t t, int64_t hq, int64_t hkv, int64_t d,
                  const int32_t* seq_starts, int64_t nseq_plus1, float scale, float* out);
// Cache element formats. kCacheQ4: one record of q4_record_bytes(d) bytes per (row, kv head,
// position): ceil(d/2) bytes of 4-bit codes (element c in byte c/2, low nibble for even c), then
// per group of kQ4Group features along d (the last one shorter) an f16 (step, min) pair; x' =
// code·step + min. Quantized with the scheme of kernels/quant.h (|x - x'| <= step/2).
enum CacheKind : int { kCacheF32 = 0, kCacheF16 = 1, kCacheQ4 = 2 };
constexpr int64_t kQ4Group = 64;
constexpr int64_t q4_code_bytes(int64_t d) { return (d + 1) / 2; }
constexpr int64_t q4_groups(int64_t d) { return (d + kQ4Group - 1) / kQ4Group; }
constexpr int64_t q4_record_bytes(int64_t d) { return q4_code_bytes(d) + 4 * q4_groups(d); }
// Bytes one position of one kv head takes in a cache of `kind`.
constexpr int64_t cache_row_bytes(int kind, int64_t d) {
  return kind == kCacheQ4 ? q4_record_bytes(d) : kind == kCacheF16 ? 2 * d : 4 * d;
}

// sparsity F in (0, 1]: F < 1 keeps, per row and query head, the max(1, ceil(F·(len-1))) highest
// scores among positions 0..len-2 (ties: the lower position) plus position len-1, and softmaxes
// over those only. F = 1 is dense attention.
void attn_decode(const float* q, const void* k_cache, const void* v_cache, int kind, int64_t b, int64_t hq,
                 int64_t hkv, int64_t d, int64_t cap, const int32_t* lens, float scale, double sparsity, float* out);
// Token i of q[t, hq, d] against positions 0..lens[i]-1 of cache row rows[i] (caches [b, hkv, cap, ..]
// of any b): a prompt's later chunk (its keys already written) in one call. Each token's result
// equals attn_decode's for that row and length.
// k_new, v_new (optional, [t, hkv, d]; no row twice among the tokens): a decode step's own keys
// and values, written at position lens[i]-1 of row rows[i] before anything reads them, as
// attn_cache_write writes them (its conditions on the values hold). In an f32 or f16 cache each
// thread writes the next item of its run while it computes the current one, so the write's miss
// (lines of every (row, head), which a separate cache write waits for one after another) overlaps
// the run's read stream; a q4 cache or sparse attention writes them all first.
void attn_cached(const float* q, const void* k_cache, const void* v_cache, int kind, int64_t t, int64_t hq,
                 int64_t hkv, int64_t d, int64_t cap, const int32_t* rows, const int32_t* lens, float scale,
                 double sparsity, float* out, const float* k_new = nullptr, const float* v_new = nullptr);
// Token i of src[t, hkv, d] into cache[b, hkv, cap, ..] at row rows[i], position pos[i] (each in
// range; the transformer writes every sequence of a step in one call).
// kCacheQ4: src must be representable (quant::find_unrepresentable(src, t*hkv*d) < 0).
void attn_cache_write(void* cache, int kind, int64_t b, int64_t hkv, int64_t cap, int64_t d, const float* src,
                      int64_t t, const int32_t* rows, const int32_t* pos);

// Dequantizes n q4 records (consecutive, q4_record_bytes(d) apart) into out[r*ld + c].
typedef void (*Q4DequantFn)(const uint8_t* rec, int64_t d, int64_t n, float* out, int64_t ld);
// Scores of g query heads (q: g×d) against n positions: s[h*lds + j] = q_h · k_j, key j at
// k + j*stride elements (f16 or f32). scratch: at least kAttnBlock * g floats.
typedef void (*AttnScoresFn)(const float* q, int64_t g, int64_t d, const void* k, bool f16, int64_t stride,
                             int64_t n, float* s, int64_t lds, float* scratch);

// The per-ISA core: g query heads (q: g×d, already multiplied by the scale) against n positions of
// one key/value head, position p at k + p*stride (elements). Returns the running softmax state:
// m[h] the max score, l[h] = Σ exp(s - m), acc[h×d] = Σ exp(s - m)·v (unnormalised).
// scratch holds at least attn_scratch_floats(g, d) floats.
constexpr int64_t kAttnBlock = 64;
// Decode's in-stream prefetch distance in bytes (0: off, the next-block prefetch only). The core
// reads an item's keys and values row after row (each block's keys, then its values); a cache the
// weight stream evicted comes from RAM at the rate of the misses in flight, so the SIMD cores
// prefetch the row this many bytes further along that order as they read each row, into L2
// (prefetcht2; into L1 it was slower at every distance on the f32 cache). Results do not depend
// on it. attnPrefetch(bytes?) / TIERLM_ATTN_PREFETCH set it (AVX-512 and AVX2; the scalar core does not prefetch).
// 8192: the best of 4, 8, 12 and 16 KiB with the L2 hint (docs/benchmarks.md, issue #14).
constexpr int64_t kAttnPrefetchDefault = 8192;
int64_t attn_prefetch_bytes();
void set_attn_prefetch_bytes(int64_t bytes);
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
void q4_dequant(const uint8_t* rec, int64_t d, int64_t n, float* out, int64_t ld);
void attn_scores(const float* q, int64_t g, int64_t d, const void* k, bool f16, int64_t stride, int64_t n, float* s,
                 int64_t lds, float* scratch);
int64_t attn_prefill_rows();
int64_t attn_prefill_scratch_floats(int64_t d);
void attn_prefill_block(const float* q, int64_t q_tok_stride, int64_t ntok, int64_t g, int64_t d, const float* k,
                        const float* v, int64_t stride, int64_t r0, float scale, float* scratch, float* out,
                        int64_t out_tok_stride);
}
namespace isa2 {
void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc);
void q4_dequant(const uint8_t* rec, int64_t d, int64_t n, float* out, int64_t ld);
// Sparse decode's scores, as isa512's (the decode core's score kernel, 8-lane).
void attn_scores(const float* q, int64_t g, int64_t d, const void* k, bool f16, int64_t stride, int64_t n, float* s,
                 int64_t lds, float* scratch);
// The tiled prefill block, as isa512's (attention_prefill_avx2.cpp).
int64_t attn_prefill_rows();
int64_t attn_prefill_scratch_floats(int64_t d);
void attn_prefill_block(const float* q, int64_t q_tok_stride, int64_t ntok, int64_t g, int64_t d, const float* k,
                        const float* v, int64_t stride, int64_t r0, float scale, float* scratch, float* out,
                        int64_t out_tok_stride);
}
namespace generic {
void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc);
void q4_dequant(const uint8_t* rec, int64_t d, int64_t n, float* out, int64_t ld);
void attn_scores(const float* q, int64_t g, int64_t d, const void* k, bool f16, int64_t stride, int64_t n, float* s,
                 int64_t lds, float* scratch);
}

}  // namespace tierlm
