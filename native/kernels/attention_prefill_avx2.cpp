// Prefill attention, AVX2 + FMA. Compiled with AVX2 flags: internal helpers and intrinsics only.
//
// The tiled block of the AVX-512 kernel (attention_avx512.cpp) in 8-lane vectors: a block of query
// rows (tokens × the group's heads, ≤ 64) against the sequence's keys 64 at a time, flash-attention
// style, scores computed transposed (keys × rows, rows along the lanes) from a transposed copy of
// the query block, so the online softmax runs over rows in lanes.
// A key block's keys and values are first copied to dense buffers: a sequence's rows lie hkv·d
// floats apart, so a head's 64 rows fall into a few cache sets (the per-token decode core that ran
// prefill on AVX2 before missed on every key: 4.5 GFLOP/s at prompt 512, docs/benchmarks.md).
// AVX2 has 16 vector registers: a score tile is 6 keys × 16 rows (12 accumulators), a value tile
// 6 rows × 16 features.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/attention.h"

namespace tierlm {
namespace isa2 {
namespace {

constexpr int64_t kKeyBlock = 64;   // keys per block
constexpr int64_t kMaxRows = 64;    // query rows per block
constexpr int kQkKeys = 6;          // keys per score tile
constexpr int64_t kScoreRows = 66;  // score rows: a key block rounded up to whole tiles

inline int64_t round16(int64_t d) { return (d + 15) & ~(int64_t)15; }

#include "kernels/exp_avx2.h"

// st[j*64 + i] = Σ_c qt[c*64 + i]·k_j[c] for keys j0..j0+5 (clamped to nk-1; rows of kp, d apart)
// and row vectors [iv0, iv0+NV).
template <int NV>
inline void qk_tile(const float* qt, int64_t d, const float* kp, int64_t j0, int64_t nk, int64_t iv0, float* st) {
  constexpr int NK = kQkKeys;
  const float* kr[NK];
  #pragma GCC unroll 8
  for (int p = 0; p < NK; p++) kr[p] = kp + (j0 + p < nk ? j0 + p : nk - 1) * d;
  __m256 a[NK][NV];
  #pragma GCC unroll 8
  for (int p = 0; p < NK; p++)
    #pragma GCC unroll 8
    for (int u = 0; u < NV; u++) a[p][u] = _mm256_setzero_ps();
  const float* qc = qt + iv0 * 8;
  for (int64_t c = 0; c < d; c++) {
    __m256 qv[NV];
    #pragma GCC unroll 8
    for (int u = 0; u < NV; u++) qv[u] = _mm256_load_ps(qc + c * kMaxRows + 8 * u);
    #pragma GCC unroll 8
    for (int p = 0; p < NK; p++) {
      __m256 kb = _mm256_broadcast_ss(kr[p] + c);
      #pragma GCC unroll 8
      for (int u = 0; u < NV; u++) a[p][u] = _mm256_fmadd_ps(qv[u], kb, a[p][u]);
    }
  }
  #pragma GCC unroll 8
  for (int p = 0; p < NK; p++)
    #pragma GCC unroll 8
    for (int u = 0; u < NV; u++) _mm256_store_ps(st + (j0 + p) * kMaxRows + (iv0 + u) * 8, a[p][u]);
}

// o[i*ldo + c] = o·alpha[i] + Σ_{j<nj} pt[j*64 + i]·v_j[c], rows i0..i0+R-1, features c..c+15 (vp
// rows ldo apart, zero past d). Keys from nall on lie after some row's token (the diagonal block):
// row r adds only those it may see (j <= seen[r]), so a NaN or inf in a later key's value never
// reaches it as 0·NaN; the reference and decode never read those keys.
template <int R>
inline void pv_tile(const float* pt, const float* alpha, const float* vp, int64_t ldo, int64_t nj, int64_t nall,
                    const int64_t* seen, int64_t i0, int64_t c, float* o) {
  __m256 x[R][2];
  #pragma GCC unroll 8
  for (int r = 0; r < R; r++) {
    __m256 al = _mm256_set1_ps(alpha[i0 + r]);
    #pragma GCC unroll 8
    for (int u = 0; u < 2; u++) x[r][u] = _mm256_mul_ps(_mm256_load_ps(o + (i0 + r) * ldo + c + 8 * u), al);
  }
  if (nall > nj) nall = nj;
  for (int64_t j = 0; j < nall; j++) {
    const float* vr = vp + j * ldo + c;
    __m256 v0 = _mm256_load_ps(vr), v1 = _mm256_load_ps(vr + 8);
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      __m256 w = _mm256_broadcast_ss(pt + j * kMaxRows + i0 + r);
      x[r][0] = _mm256_fmadd_ps(w, v0, x[r][0]);
      x[r][1] = _mm256_fmadd_ps(w, v1, x[r][1]);
    }
  }
  for (int64_t j = nall; j < nj; j++) {
    const float* vr = vp + j * ldo + c;
    __m256 v0 = _mm256_load_ps(vr), v1 = _mm256_load_ps(vr + 8);
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      if (j > seen[r]) continue;
      __m256 w = _mm256_broadcast_ss(pt + j * kMaxRows + i0 + r);
      x[r][0] = _mm256_fmadd_ps(w, v0, x[r][0]);
      x[r][1] = _mm256_fmadd_ps(w, v1, x[r][1]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    #pragma GCC unroll 8
    for (int u = 0; u < 2; u++) _mm256_store_ps(o + (i0 + r) * ldo + c + 8 * u, x[r][u]);
}

// A key block's rows (`stride` floats apart) copied to n dense rows of ld floats, zero past d.
inline void copy_rows(const float* src, int64_t stride, int64_t n, int64_t d, int64_t ld, float* dst) {
  for (int64_t j = 0; j < n; j++) {
    memcpy(dst + j * ld, src + j * stride, (size_t)d * sizeof(float));
    for (int64_t c = d; c < ld; c++) dst[j * ld + c] = 0.f;
  }
}

}  // namespace

int64_t attn_prefill_rows() { return kMaxRows; }

int64_t attn_prefill_scratch_floats(int64_t d) {
  // q transposed (d × 64), scores (66 × 64), output rows and the block's values (64 × d rounded to
  // 16 each), the block's keys (64 × d), m, l, alpha, token of each row, 32-byte alignment
  const int64_t ld = round16(d);
  return d * kMaxRows + kScoreRows * kMaxRows + 2 * kMaxRows * ld + kKeyBlock * d + 4 * kMaxRows + 8;
}

void attn_prefill_block(const float* q, int64_t q_tok_stride, int64_t ntok, int64_t g, int64_t d, const float* k,
                        const float* v, int64_t stride, int64_t r0, float scale, float* scratch, float* out,
                        int64_t out_tok_stride) {
  const int64_t M = ntok * g;          // rows, row i = token r0 + i/g, head i%g
  const int64_t nvec = (M + 7) / 8;    // row vectors
  const int64_t ld = round16(d);
  float* base = (float*)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);
  float* qt = base;                       // d × 64
  float* st = qt + d * kMaxRows;          // 66 keys × 64 rows
  float* o = st + kScoreRows * kMaxRows;  // 64 × ld
  float* vp = o + kMaxRows * ld;          // the block's values, 64 × ld
  float* kp = vp + kKeyBlock * ld;        // the block's keys, 64 × d
  float* mrow = kp + kKeyBlock * d;
  float* lrow = mrow + kMaxRows;
  float* arow = lrow + kMaxRows;
  int32_t* tok = (int32_t*)(arow + kMaxRows);
  // The scaled queries, transposed; rows past M zero.
  for (int64_t i = 0; i < nvec * 8; i++) {
    const float* src = i < M ? q + (i / g) * q_tok_stride + (i % g) * d : nullptr;
    for (int64_t c = 0; c < d; c++) qt[c * kMaxRows + i] = src ? src[c] * scale : 0.f;
  }
  for (int64_t i = 0; i < nvec * 8; i++) {
    tok[i] = (int32_t)(i < M ? r0 + i / g : r0 + ntok - 1);
    mrow[i] = -INFINITY;
    lrow[i] = 0.f;
  }
  for (int64_t i = 0; i < M * ld; i++) o[i] = 0.f;
  const int64_t nkeys = r0 + ntok;  // keys 0..r0+ntok-1
  const __m256 ninf = _mm256_set1_ps(-INFINITY), pinf = _mm256_set1_ps(INFINITY);
  for (int64_t c0 = 0; c0 < nkeys; c0 += kKeyBlock) {
    const int64_t nk = nkeys - c0 < kKeyBlock ? nkeys - c0 : kKeyBlock;
    copy_rows(k + c0 * stride, stride, nk, d, d, kp);
    copy_rows(v + c0 * stride, stride, nk, d, ld, vp);
    const bool diag = c0 + nk - 1 > r0;  // some key lies after some row's token
    // Scores, transposed: two row vectors at a time against every key of the block, so the pair's
    // queries (d × 16 floats) stay in L1 while the keys stream past (the other order read the whole
    // transposed query block, 32 KiB at d = 128, from L2 for every 6 keys: 2× the time).
    for (int64_t iv = 0; iv < nvec; iv += 2) {
      const int64_t nv = nvec - iv < 2 ? nvec - iv : 2;
      for (int64_t j0 = 0; j0 < nk; j0 += kQkKeys) {
        int64_t iv0 = 0;  // row vectors below iv0 see none of keys c0+j0.. (their scores -inf)
        if (diag) {
          const int64_t first = (c0 + j0 - r0) * g;  // first row that sees key c0+j0
          iv0 = first <= 0 ? 0 : first / 8;
        }
        int64_t from = iv;
        for (; from < iv + nv && from < iv0; from++)
          for (int64_t p = 0; p < kQkKeys; p++) _mm256_store_ps(st + (j0 + p) * kMaxRows + from * 8, ninf);
        if (iv + nv - from == 2) qk_tile<2>(qt, d, kp, j0, nk, from, st);
        else if (iv + nv - from == 1) qk_tile<1>(qt, d, kp, j0, nk, from, st);
      }
    }
    // Online softmax over the block's keys, 8 rows at a time.
    for (int64_t u = 0; u < nvec; u++) {
      const __m256i tv = _mm256_load_si256((const __m256i*)(tok + u * 8));
      __m256 mx = ninf;
      if (diag) {
        for (int64_t j = 0; j < nk; j++) {
          // key c0+j visible to rows whose token >= c0+j
          const __m256 ok = _mm256_castsi256_ps(_mm256_cmpgt_epi32(tv, _mm256_set1_epi32((int32_t)(c0 + j - 1))));
          const __m256 sv = _mm256_blendv_ps(ninf, _mm256_load_ps(st + j * kMaxRows + u * 8), ok);
          _mm256_store_ps(st + j * kMaxRows + u * 8, sv);
          mx = _mm256_max_ps(mx, sv);
        }
      } else {
        for (int64_t j = 0; j < nk; j++) mx = _mm256_max_ps(mx, _mm256_load_ps(st + j * kMaxRows + u * 8));
      }
      const __m256 mold = _mm256_load_ps(mrow + u * 8);
      const __m256 mnew = _mm256_max_ps(mold, mx);
      // rows that have seen no key yet keep alpha 0 (their accumulators are still zero)
      const __m256 seen = _mm256_cmp_ps(mold, ninf, _CMP_NEQ_OQ);
      const __m256 al = _mm256_and_ps(seen, exp256(_mm256_sub_ps(mold, mnew)));
      // rows that see no key in this block at all keep their state (alpha 1, no weights)
      const __m256 none = _mm256_cmp_ps(mnew, ninf, _CMP_EQ_OQ);
      const __m256 msafe = _mm256_andnot_ps(none, mnew);
      __m256 sum = _mm256_setzero_ps();
      __m256 bad = _mm256_setzero_ps();  // rows with a NaN or +inf score: NaN, as the reference's (exp256 clamps would hide it)
      for (int64_t j = 0; j < nk; j++) {
        const __m256 sv = _mm256_load_ps(st + j * kMaxRows + u * 8);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(sv, pinf, _CMP_NLT_UQ));
        const __m256 live = _mm256_cmp_ps(sv, ninf, _CMP_NEQ_OQ);
        const __m256 e = _mm256_and_ps(live, exp256(_mm256_sub_ps(sv, msafe)));
        _mm256_store_ps(st + j * kMaxRows + u * 8, e);
        sum = _mm256_add_ps(sum, e);
      }
      const __m256 lnew = _mm256_fmadd_ps(_mm256_load_ps(lrow + u * 8), al, sum);
      _mm256_store_ps(lrow + u * 8, _mm256_blendv_ps(lnew, _mm256_set1_ps(NAN), bad));
      _mm256_store_ps(arow + u * 8, al);
      _mm256_store_ps(mrow + u * 8, mnew);
    }
    // Values: rows six at a time, each against the keys its last row can see.
    for (int64_t i0 = 0; i0 < M; i0 += 6) {
      const int R = M - i0 < 6 ? (int)(M - i0) : 6;
      // keys of this block row r sees: 0..seen[r]; the first row's are seen by all
      int64_t seen[6];
      for (int r = 0; r < R; r++) seen[r] = (int64_t)tok[i0 + r] - c0;
      int64_t nj = seen[R - 1] + 1;
      if (nj > nk) nj = nk;
      if (nj < 0) nj = 0;
      const int64_t nall = seen[0] + 1 < 0 ? 0 : seen[0] + 1;
      for (int64_t c = 0; c < d; c += 16) {
        switch (R) {
          case 6: pv_tile<6>(st, arow, vp, ld, nj, nall, seen, i0, c, o); break;
          case 5: pv_tile<5>(st, arow, vp, ld, nj, nall, seen, i0, c, o); break;
          case 4: pv_tile<4>(st, arow, vp, ld, nj, nall, seen, i0, c, o); break;
          case 3: pv_tile<3>(st, arow, vp, ld, nj, nall, seen, i0, c, o); break;
          case 2: pv_tile<2>(st, arow, vp, ld, nj, nall, seen, i0, c, o); break;
          default: pv_tile<1>(st, arow, vp, ld, nj, nall, seen, i0, c, o); break;
        }
      }
    }
  }
  for (int64_t i = 0; i < M; i++) {
    float* dst = out + (i / g) * out_tok_stride + (i % g) * d;
    const float* src = o + i * ld;
    const float inv = mrow[i] == -INFINITY ? NAN : 1.f / lrow[i];  // every score -inf: NaN, as the reference's
    const __m256 vinv = _mm256_set1_ps(inv);
    int64_t c = 0;
    for (; c + 8 <= d; c += 8) _mm256_storeu_ps(dst + c, _mm256_mul_ps(_mm256_load_ps(src + c), vinv));
    for (; c < d; c++) dst[c] = src[c] * inv;
  }
}

}  // namespace isa2
}  // namespace tierlm
