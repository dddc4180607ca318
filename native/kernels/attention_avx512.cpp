// Attention, AVX-512. Compiled with AVX-512 flags: internal helpers and intrinsics only.
//
// Decode core: scores for 16 (position, head) pairs at a time (the group's heads share each loaded
// key vector), reduced together by one transpose-add tree; half caches converted on the fly; the
// value sum keeps a (heads × features) tile in registers and reuses each loaded value vector across
// the heads.
//
// Prefill block: a block of query rows (tokens × the group's heads, ≤ 64) against the sequence's keys
// 64 at a time, flash-attention style. Scores are computed transposed (keys × rows, rows along the
// vector lanes) from a transposed copy of the query block, so the online softmax runs over rows in
// vector lanes and neither keys nor values are repacked.
// GCC 12 flags the _mm512_reduce_* helpers' internal undefined vectors.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/attention.h"


namespace tierlm {
namespace isa512 {
namespace {

inline __mmask16 mask_at(int64_t d, int64_t c) {
  int64_t r = d - c;
  return r >= 16 ? (__mmask16)0xffff : r <= 0 ? (__mmask16)0 : (__mmask16)((1u << r) - 1u);
}

template <bool F16>
inline __m512 load(const void* base, int64_t idx, __mmask16 m) {
  if (F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + idx));
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + idx);
}
template <bool F16>
inline __m512 load_full(const void* base, int64_t idx) {
  if (F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(base) + idx)));
  return _mm512_loadu_ps(static_cast<const float*>(base) + idx);
}

inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.f)), _mm512_set1_ps(88.7f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// Lane i of the result = the sum of the lanes of a[i]. Every input goes through the same tree, so a
// sum does not depend on the slot it was computed in.
inline __m512 reduce16(__m512* a) {
  __m512 x[8], y[4], z[2];
  for (int i = 0; i < 8; i++)
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; i++) {
    __m512d p = _mm512_castps_pd(x[2 * i]), q = _mm512_castps_pd(x[2 * i + 1]);
    y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)), _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
  }
  // y[i] holds, in each 128-bit lane, partial sums of a[4i..4i+3].
  for (int i = 0; i < 2; i++)
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88), _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xdd));
  // z[i]: lanes (a[8i..8i+3] half sums, a[8i..8i+3] other half, a[8i+4..] ..., ...)
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
}

// ---- decode ------------------------------------------------------------------------------------

#include "kernels/attention_prefetch.h"

// Scores of heads [h0, h0+H) against positions [0, nb): s[h*B + j]. 16/H positions per pass.
// pf: the next block's keys (or values), prefetched into L2 along the way (nullptr: none).
template <bool F16, int H>
void scores(const float* q, int64_t d, const void* k, int64_t stride, int64_t nb, int64_t h0, float* s, const char* pf,
            PfStream* ps = nullptr, int64_t p0 = 0) {
  constexpr int P = 16 / H;
  const int64_t B = kAttnBlock;
  const int64_t dfull = d & ~(int64_t)15;
  const __mmask16 dtail = mask_at(d, dfull);
  const float* qh = q + h0 * d;
  for (int64_t j0 = 0; j0 < nb; j0 += P) {
    int64_t ko[P];
    for (int p = 0; p < P; p++) ko[p] = (j0 + p < nb ? j0 + p : nb - 1) * stride;
    if (pf) {
      const int64_t bytes = P * stride * (F16 ? 2 : 4);
      const char* b = pf + j0 * stride * (F16 ? 2 : 4);
      for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(b + o, _MM_HINT_T1);
    }
    if (ps) ps->reach(p0, false, j0 + P - 1 < nb ? j0 + P - 1 : nb - 1);
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c < dfull; c += 16) {
      __m512 qv[H];
      for (int h = 0; h < H; h++) qv[h] = _mm512_loadu_ps(qh + h * d + c);
      for (int p = 0; p < P; p++) {
        __m512 kv = load_full<F16>(k, ko[p] + c);
        for (int h = 0; h < H; h++) a[p * H + h] = _mm512_fmadd_ps(qv[h], kv, a[p * H + h]);
      }
    }
    if (dtail) {
      __m512 qv[H];
      for (int h = 0; h < H; h++) qv[h] = _mm512_maskz_loadu_ps(dtail, qh + h * d + c);
      for (int p = 0; p < P; p++) {
        __m512 kv = load<F16>(k, ko[p] + c, dtail);
        for (int h = 0; h < H; h++) a[p * H + h] = _mm512_fmadd_ps(qv[h], kv, a[p * H + h]);
      }
    }
    __m512 r = reduce16(a);
    if (H == 1) {
      _mm512_mask_storeu_ps(s + h0 * B + j0, mask_at(nb, j0), r);
    } else {
      alignas(64) float t[16];
      _mm512_store_ps(t, r);
      const int np = nb - j0 < P ? (int)(nb - j0) : P;
      for (int h = 0; h < H; h++)
        for (int p = 0; p < np; p++) s[(h0 + h) * B + j0 + p] = t[p * H + h];
    }
  }
}

// acc[h*d + c] = acc·alpha[h] + Σ_j s[h*B + j]·v_j[c] for heads [h0, h0+H), NV vectors of features
// at a time.
template <bool F16, int H, int NV>
void accum(const float* s, const float* alpha, int64_t d, const void* v, int64_t stride, int64_t nb, int64_t h0,
           float* acc, const char* pf, PfStream* ps = nullptr, int64_t p0 = 0) {
  const int64_t row_bytes = stride * (F16 ? 2 : 4);
  const int64_t B = kAttnBlock;
  for (int64_t c = 0; c < d; c += 16 * NV) {
    __mmask16 mk[NV];
    bool full = true;
    for (int u = 0; u < NV; u++) {
      mk[u] = mask_at(d, c + 16 * u);
      full = full && mk[u] == 0xffff;
    }
    __m512 x[H][NV];
    for (int h = 0; h < H; h++) {
      __m512 al = _mm512_set1_ps(alpha[h0 + h]);
      for (int u = 0; u < NV; u++) x[h][u] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[u], acc + (h0 + h) * d + c + 16 * u), al);
    }
    const float* sh = s + h0 * B;
    if (full) {
      for (int64_t j = 0; j < nb; j++) {
        if (pf && c == 0)
          for (int64_t o = 0; o < row_bytes; o += 64) _mm_prefetch(pf + j * row_bytes + o, _MM_HINT_T1);
        // (every fourth row: the distance is many rows, and the bookkeeping per row was a large
        // share of an f16 row's work)
        if (ps && c == 0 && ((j & 3) == 3 || j == nb - 1)) ps->reach(p0, true, j);
        __m512 vv[NV];
        for (int u = 0; u < NV; u++) vv[u] = load_full<F16>(v, j * stride + c + 16 * u);
        for (int h = 0; h < H; h++) {
          __m512 w = _mm512_set1_ps(sh[h * B + j]);
          for (int u = 0; u < NV; u++) x[h][u] = _mm512_fmadd_ps(w, vv[u], x[h][u]);
        }
      }
    } else {
      for (int64_t j = 0; j < nb; j++) {
        if (ps && c == 0 && ((j & 3) == 3 || j == nb - 1)) ps->reach(p0, true, j);
        __m512 vv[NV];
        for (int u = 0; u < NV; u++) vv[u] = load<F16>(v, j * stride + c + 16 * u, mk[u]);
        for (int h = 0; h < H; h++) {
          __m512 w = _mm512_set1_ps(sh[h * B + j]);
          for (int u = 0; u < NV; u++) x[h][u] = _mm512_fmadd_ps(w, vv[u], x[h][u]);
        }
      }
    }
    for (int h = 0; h < H; h++)
      for (int u = 0; u < NV; u++) _mm512_mask_storeu_ps(acc + (h0 + h) * d + c + 16 * u, mk[u], x[h][u]);
  }
}

inline int pow2_heads(int64_t n) { return n >= 16 ? 16 : n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1; }

template <bool F16>
void core(const float* q, int64_t g, int64_t d, const void* k, const void* v, int64_t stride, int64_t n,
          float* scratch, float* m, float* l, float* acc) {
  const int64_t B = kAttnBlock;
  float* s = scratch;
  float* alpha = s + B * g;
  for (int64_t h = 0; h < g; h++) {
    m[h] = -INFINITY;
    l[h] = 0.f;
  }
  for (int64_t i = 0; i < g * d; i++) acc[i] = 0.f;
  const int64_t rb = stride * (F16 ? 2 : 4);
  const int64_t pf_bytes = attn_prefetch_bytes();
  PfStream stream(static_cast<const char*>(k), static_cast<const char*>(v), rb, n, (pf_bytes + rb - 1) / rb);
  PfStream* ps = pf_bytes > 0 && stride == d ? &stream : nullptr;
  for (int64_t p0 = 0; p0 < n; p0 += B) {
    const int64_t nb = n - p0 < B ? n - p0 : B;
    const void* kb = F16 ? (const void*)(static_cast<const uint16_t*>(k) + p0 * stride)
                         : (const void*)(static_cast<const float*>(k) + p0 * stride);
    const void* vb = F16 ? (const void*)(static_cast<const uint16_t*>(v) + p0 * stride)
                         : (const void*)(static_cast<const float*>(v) + p0 * stride);
    // Prefetch the next block (its keys while scoring, its values while summing) when it is a
    // whole one and the rows are contiguous.
    // (one block ahead measured best; the hardware prefetcher alone leaves the f16 and grouped
    // kernels waiting on memory)
    constexpr int64_t ahead = 1;
    const bool pf_next = p0 + (ahead + 1) * B <= n && stride == d && !ps;
    const char* pfk = pf_next ? static_cast<const char*>(kb) + ahead * B * stride * (F16 ? 2 : 4) : nullptr;
    const char* pfv = pf_next ? static_cast<const char*>(vb) + ahead * B * stride * (F16 ? 2 : 4) : nullptr;
    for (int64_t h0 = 0; h0 < g;) {
      int H = pow2_heads(g - h0);
      const char* pf = h0 == 0 ? pfk : nullptr;
      switch (H) {
        case 16: scores<F16, 16>(q, d, kb, stride, nb, h0, s, pf, h0 == 0 ? ps : nullptr, p0); break;
        case 8: scores<F16, 8>(q, d, kb, stride, nb, h0, s, pf, h0 == 0 ? ps : nullptr, p0); break;
        case 4: scores<F16, 4>(q, d, kb, stride, nb, h0, s, pf, h0 == 0 ? ps : nullptr, p0); break;
        case 2: scores<F16, 2>(q, d, kb, stride, nb, h0, s, pf, h0 == 0 ? ps : nullptr, p0); break;
        default: scores<F16, 1>(q, d, kb, stride, nb, h0, s, pf, h0 == 0 ? ps : nullptr, p0); break;
      }
      h0 += H;
    }
    // Online softmax per head; s becomes the weights.
    for (int64_t h = 0; h < g; h++) {
      float* sh = s + h * B;
      __m512 mx = _mm512_set1_ps(-INFINITY);
      __mmask16 bad = 0;  // a NaN or +inf score: the head's result is NaN, as the reference's (exp512 clamps would hide it)
      for (int64_t j = 0; j < nb; j += 16) {
        const __m512 sv = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask_at(nb, j), sh + j);
        bad |= _mm512_cmp_ps_mask(sv, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ);
        mx = _mm512_max_ps(mx, sv);
      }
      float bm = _mm512_reduce_max_ps(mx);
      float mnew = m[h] > bm ? m[h] : bm;
      __m512 vm = _mm512_set1_ps(mnew);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < nb; j += 16) {
        __mmask16 mk = mask_at(nb, j);
        __m512 e = _mm512_maskz_mov_ps(mk, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sh + j), vm)));
        _mm512_mask_storeu_ps(sh + j, mk, e);
        sum = _mm512_add_ps(sum, e);
      }
      float al = m[h] == -INFINITY ? 0.f : expf(m[h] - mnew);
      alpha[h] = al;
      l[h] = bad ? NAN : l[h] * al + _mm512_reduce_add_ps(sum);
      m[h] = mnew;
    }
    for (int64_t h0 = 0; h0 < g;) {
      int64_t r = g - h0;
      if (r >= 8) {
        accum<F16, 8, 2>(s, alpha, d, vb, stride, nb, h0, acc, h0 == 0 ? pfv : nullptr, h0 == 0 ? ps : nullptr, p0);
        h0 += 8;
      } else if (r >= 4) {
        accum<F16, 4, 4>(s, alpha, d, vb, stride, nb, h0, acc, h0 == 0 ? pfv : nullptr, h0 == 0 ? ps : nullptr, p0);
        h0 += 4;
      } else if (r >= 2) {
        accum<F16, 2, 8>(s, alpha, d, vb, stride, nb, h0, acc, h0 == 0 ? pfv : nullptr, h0 == 0 ? ps : nullptr, p0);
        h0 += 2;
      } else if (d > 64) {
        accum<F16, 1, 8>(s, alpha, d, vb, stride, nb, h0, acc, h0 == 0 ? pfv : nullptr, h0 == 0 ? ps : nullptr, p0);
        h0 += 1;
      } else {
        // One head of at most 64 features (OPT's 64): four vectors a row, not eight half masked.
        accum<F16, 1, 4>(s, alpha, d, vb, stride, nb, h0, acc, h0 == 0 ? pfv : nullptr, h0 == 0 ? ps : nullptr, p0);
        h0 += 1;
      }
    }
  }
}

// ---- prefill -----------------------------------------------------------------------------------

constexpr int64_t kKeyBlock = 64;   // keys per block
constexpr int64_t kMaxRows = 64;    // query rows per block

constexpr int kQkKeys = 6;          // keys per score tile
constexpr int64_t kScoreRows = 72;  // score rows: a key block rounded up to whole tiles

// st[j*64 + i] = Σ_c qt[c*64 + i]·k_j[c] for keys j0..j0+5 (clamped to nk-1) and row vectors
// [iv0, iv0+NV).
template <int NV>
inline void qk_tile(const float* qt, int64_t d, const float* k, int64_t stride, int64_t j0, int64_t nk, int64_t iv0,
                    float* st) {
  constexpr int NK = kQkKeys;
  const float* kr[NK];
  for (int p = 0; p < NK; p++) kr[p] = k + (j0 + p < nk ? j0 + p : nk - 1) * stride;
  __m512 a[NK][NV];
  for (int p = 0; p < NK; p++)
    for (int u = 0; u < NV; u++) a[p][u] = _mm512_setzero_ps();
  const float* qc = qt + iv0 * 16;
  for (int64_t c = 0; c < d; c++) {
    __m512 qv[NV];
    for (int u = 0; u < NV; u++) qv[u] = _mm512_load_ps(qc + c * kMaxRows + 16 * u);
    for (int p = 0; p < NK; p++) {
      __m512 kb = _mm512_set1_ps(kr[p][c]);
      for (int u = 0; u < NV; u++) a[p][u] = _mm512_fmadd_ps(qv[u], kb, a[p][u]);
    }
  }
  for (int p = 0; p < NK; p++)
    for (int u = 0; u < NV; u++) _mm512_store_ps(st + (j0 + p) * kMaxRows + (iv0 + u) * 16, a[p][u]);
}

// In-register transpose: r[c] becomes column c of the 16×16 block whose rows were r[0..15].
inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    __m512d c = _mm512_castps_pd(t[4 * i + 2]), e = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  for (int k = 0; k < 4; k++) {
    t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
    t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
  }
  for (int k = 0; k < 4; k++) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd);
  }
}

// o[i*d + c] = o·alpha[i] + Σ_{j<nj} pt[j*64 + i]·v_j[c], rows i0..i0+R-1, features c..c+63.
// Keys from nall on lie after some row's token (the diagonal block): row r adds only those it may
// see (j <= seen[r]), so a NaN or inf in a later key's value never reaches it as 0·NaN (its weight
// there is 0); the reference and decode never read those keys.
template <int R>
inline void pv_tile(const float* pt, const float* alpha, int64_t d, const float* v, int64_t stride, int64_t nj,
                    int64_t nall, const int64_t* seen, int64_t i0, int64_t c, float* o) {
  __mmask16 mk[4];
  for (int u = 0; u < 4; u++) mk[u] = mask_at(d, c + 16 * u);
  __m512 x[R][4];
  for (int r = 0; r < R; r++) {
    __m512 al = _mm512_set1_ps(alpha[i0 + r]);
    for (int u = 0; u < 4; u++) x[r][u] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[u], o + (i0 + r) * d + c + 16 * u), al);
  }
  if (nall > nj) nall = nj;
  if (mk[3] == 0xffff) {
    for (int64_t j = 0; j < nall; j++) {
      const float* vr = v + j * stride + c;
      __m512 vv[4];
      for (int u = 0; u < 4; u++) vv[u] = _mm512_loadu_ps(vr + 16 * u);
      for (int r = 0; r < R; r++) {
        __m512 w = _mm512_set1_ps(pt[j * kMaxRows + i0 + r]);
        for (int u = 0; u < 4; u++) x[r][u] = _mm512_fmadd_ps(w, vv[u], x[r][u]);
      }
    }
  } else {
    for (int64_t j = 0; j < nall; j++) {
      const float* vr = v + j * stride + c;
      __m512 vv[4];
      for (int u = 0; u < 4; u++) vv[u] = _mm512_maskz_loadu_ps(mk[u], vr + 16 * u);
      for (int r = 0; r < R; r++) {
        __m512 w = _mm512_set1_ps(pt[j * kMaxRows + i0 + r]);
        for (int u = 0; u < 4; u++) x[r][u] = _mm512_fmadd_ps(w, vv[u], x[r][u]);
      }
    }
  }
  for (int64_t j = nall; j < nj; j++) {
    const float* vr = v + j * stride + c;
    __m512 vv[4];
    for (int u = 0; u < 4; u++) vv[u] = _mm512_maskz_loadu_ps(mk[u], vr + 16 * u);
    for (int r = 0; r < R; r++) {
      if (j > seen[r]) continue;
      __m512 w = _mm512_set1_ps(pt[j * kMaxRows + i0 + r]);
      for (int u = 0; u < 4; u++) x[r][u] = _mm512_fmadd_ps(w, vv[u], x[r][u]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int u = 0; u < 4; u++) _mm512_mask_storeu_ps(o + (i0 + r) * d + c + 16 * u, mk[u], x[r][u]);
}

}  // namespace

void attn_core(const float* q, int64_t g, int64_t d, const void* k, const void* v, bool f16, int64_t stride, int64_t n,
               float* scratch, float* m, float* l, float* acc) {
  if (f16) core<true>(q, g, d, k, v, stride, n, scratch, m, l, acc);
  else core<false>(q, g, d, k, v, stride, n, scratch, m, l, acc);
}

void q4_dequant(const uint8_t* rec, int64_t d, int64_t n, float* out, int64_t ld) {
  const int64_t cb = q4_code_bytes(d), rb = q4_record_bytes(d), dfull = d & ~(int64_t)15;
  const __m128i m0f = _mm_set1_epi8(0x0f);
  for (int64_t r = 0; r < n; r++) {
    const uint8_t* p = rec + r * rb;
    const uint8_t* pr = p + cb;
    float* o = out + r * ld;
    __m512 vs = _mm512_setzero_ps(), vm = _mm512_setzero_ps();
    float step = 0.f, mn = 0.f;
    int64_t c = 0;
    for (; c < dfull; c += 16) {
      if ((c & (kQ4Group - 1)) == 0) {
        uint16_t sm[2];
        memcpy(sm, pr + (c / kQ4Group) * 4, 4);
        step = _cvtsh_ss(sm[0]);
        mn = _cvtsh_ss(sm[1]);
        vs = _mm512_set1_ps(step);
        vm = _mm512_set1_ps(mn);
      }
      __m128i b = _mm_loadl_epi64((const __m128i*)(p + c / 2));
      __m128i lo = _mm_and_si128(b, m0f), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
      __m512 qf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
      _mm512_storeu_ps(o + c, _mm512_fmadd_ps(qf, vs, vm));  // q·step is exact: one rounding
    }
    for (; c < d; c++) {
      if ((c & (kQ4Group - 1)) == 0 || c == dfull) {
        uint16_t sm[2];
        memcpy(sm, pr + (c / kQ4Group) * 4, 4);
        step = _cvtsh_ss(sm[0]);
        mn = _cvtsh_ss(sm[1]);
      }
      const int code = (p[c >> 1] >> ((c & 1) * 4)) & 15;
      o[c] = (float)code * step + mn;
    }
  }
}

void attn_scores(const float* q, int64_t g, int64_t d, const void* k, bool f16, int64_t stride, int64_t n, float* s,
                 int64_t lds, float* scratch) {
  const int64_t B = kAttnBlock;
  const int64_t es = f16 ? 2 : 4;
  for (int64_t p0 = 0; p0 < n; p0 += B) {
    const int64_t nb = n - p0 < B ? n - p0 : B;
    const void* kb = static_cast<const char*>(k) + p0 * stride * es;
    for (int64_t h0 = 0; h0 < g;) {
      int H = pow2_heads(g - h0);
      if (f16) {
        switch (H) {
          case 16: scores<true, 16>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          case 8: scores<true, 8>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          case 4: scores<true, 4>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          case 2: scores<true, 2>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          default: scores<true, 1>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
        }
      } else {
        switch (H) {
          case 16: scores<false, 16>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          case 8: scores<false, 8>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          case 4: scores<false, 4>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          case 2: scores<false, 2>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
          default: scores<false, 1>(q, d, kb, stride, nb, h0, scratch, nullptr); break;
        }
      }
      h0 += H;
    }
    for (int64_t h = 0; h < g; h++)
      for (int64_t j = 0; j < nb; j++) s[h * lds + p0 + j] = scratch[h * B + j];
  }
}

int64_t attn_prefill_rows() { return kMaxRows; }

int64_t attn_prefill_scratch_floats(int64_t d) {
  // q transposed (d × 64), scores (72 × 64), output rows (64 × d), values (64 × d rounded to 16),
  // m, l, alpha, token of each row
  const int64_t ldv = (d + 15) & ~(int64_t)15;
  return d * kMaxRows + kScoreRows * kMaxRows + kMaxRows * d + kKeyBlock * ldv + 4 * kMaxRows + 16;
}

void attn_prefill_block(const float* q, int64_t q_tok_stride, int64_t ntok, int64_t g, int64_t d, const float* k,
                        const float* v, int64_t stride, int64_t r0, float scale, float* scratch, float* out,
                        int64_t out_tok_stride) {
  const int64_t M = ntok * g;               // rows, row i = token r0 + i/g, head i%g
  const int64_t nvec = (M + 15) / 16;       // row vectors
  // 64-byte aligned scratch
  float* base = (float*)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  float* qt = base;                          // d × 64
  float* st = qt + d * kMaxRows;             // 72 keys × 64 rows
  float* o = st + kScoreRows * kMaxRows;     // 64 × d
  const int64_t ldv = (d + 15) & ~(int64_t)15;
  float* vp = o + kMaxRows * d;              // the block's values, 64 × ldv
  float* mrow = vp + kKeyBlock * ldv;
  float* lrow = mrow + kMaxRows;
  float* arow = lrow + kMaxRows;
  int32_t* tok = (int32_t*)(arow + kMaxRows);
  // Transpose the scaled queries 16 rows × 16 features at a time.
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t i0 = 0; i0 < nvec * 16; i0 += 16) {
    for (int64_t c0 = 0; c0 < d; c0 += 16) {
      const __mmask16 mk = mask_at(d, c0);
      __m512 r[16];
      for (int64_t i = 0; i < 16; i++) {
        const int64_t row = i0 + i;
        r[i] = row < M ? _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, q + (row / g) * q_tok_stride + (row % g) * d + c0), vscale)
                       : _mm512_setzero_ps();
      }
      transpose16(r);
      const int64_t nc = d - c0 < 16 ? d - c0 : 16;
      for (int64_t c = 0; c < nc; c++) _mm512_store_ps(qt + (c0 + c) * kMaxRows + i0, r[c]);
    }
  }
  for (int64_t i = 0; i < nvec * 16; i++) {
    tok[i] = (int32_t)(i < M ? r0 + i / g : r0 + ntok - 1);
    mrow[i] = -INFINITY;
    lrow[i] = 0.f;
  }
  for (int64_t i = 0; i < M * d; i++) o[i] = 0.f;
  const int64_t nkeys = r0 + ntok;  // keys 0..r0+ntok-1
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t c0 = 0; c0 < nkeys; c0 += kKeyBlock) {
    const int64_t nk = nkeys - c0 < kKeyBlock ? nkeys - c0 : kKeyBlock;
    const float* kb = k + c0 * stride;
    // Values copied to a dense block: rows stride*4 bytes apart may all fall in one cache set.
    for (int64_t j = 0; j < nk; j++)
      for (int64_t c = 0; c < d; c += 16) {
        const __mmask16 mk = mask_at(d, c);
        _mm512_store_ps(vp + j * ldv + c, _mm512_maskz_loadu_ps(mk, v + (c0 + j) * stride + c));
      }
    const bool diag = c0 + nk - 1 > r0;  // some key lies after some row's token
    // Scores, transposed.
    for (int64_t j0 = 0; j0 < nk; j0 += kQkKeys) {
      int64_t iv0 = 0;
      if (diag) {
        int64_t first = (c0 + j0 - r0) * g;  // first row that sees key c0+j0
        iv0 = first <= 0 ? 0 : first / 16;
        if (iv0 > nvec) iv0 = nvec;
        for (int64_t p = 0; p < kQkKeys; p++)
          for (int64_t u = 0; u < iv0; u++) _mm512_store_ps(st + (j0 + p) * kMaxRows + u * 16, ninf);
      }
      switch (nvec - iv0) {
        case 4: qk_tile<4>(qt, d, kb, stride, j0, nk, iv0, st); break;
        case 3: qk_tile<3>(qt, d, kb, stride, j0, nk, iv0, st); break;
        case 2: qk_tile<2>(qt, d, kb, stride, j0, nk, iv0, st); break;
        case 1: qk_tile<1>(qt, d, kb, stride, j0, nk, iv0, st); break;
        default: break;
      }
    }
    // Online softmax over the block's keys, 16 rows at a time.
    for (int64_t u = 0; u < nvec; u++) {
      __m512i tv = _mm512_load_si512((const void*)(tok + u * 16));
      __m512 mx = ninf;
      if (diag) {
        for (int64_t j = 0; j < nk; j++) {
          __mmask16 ok = _mm512_cmple_epi32_mask(_mm512_set1_epi32((int32_t)(c0 + j)), tv);
          __m512 sv = _mm512_mask_blend_ps(ok, ninf, _mm512_load_ps(st + j * kMaxRows + u * 16));
          _mm512_store_ps(st + j * kMaxRows + u * 16, sv);
          mx = _mm512_max_ps(mx, sv);
        }
      } else {
        for (int64_t j = 0; j < nk; j++) mx = _mm512_max_ps(mx, _mm512_load_ps(st + j * kMaxRows + u * 16));
      }
      __m512 mold = _mm512_load_ps(mrow + u * 16);
      __m512 mnew = _mm512_max_ps(mold, mx);
      // rows that have seen no key yet keep alpha 0 (their accumulators are still zero)
      __mmask16 seen = _mm512_cmp_ps_mask(mold, ninf, _CMP_NEQ_OQ);
      __m512 al = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(mold, mnew)));
      // rows that see no key in this block at all keep their state (alpha 1, no weights)
      __mmask16 none = _mm512_cmp_ps_mask(mnew, ninf, _CMP_EQ_OQ);
      __m512 msafe = _mm512_mask_blend_ps(none, mnew, _mm512_setzero_ps());
      __m512 sum = _mm512_setzero_ps();
      __mmask16 bad = 0;  // rows with a NaN or +inf score: NaN, as the reference's (exp512 clamps would hide it)
      for (int64_t j = 0; j < nk; j++) {
        __m512 sv = _mm512_load_ps(st + j * kMaxRows + u * 16);
        bad |= _mm512_cmp_ps_mask(sv, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ);
        __mmask16 live = _mm512_cmp_ps_mask(sv, ninf, _CMP_NEQ_OQ);
        __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(sv, msafe)));
        _mm512_store_ps(st + j * kMaxRows + u * 16, e);
        sum = _mm512_add_ps(sum, e);
      }
      _mm512_store_ps(lrow + u * 16, _mm512_mask_mov_ps(_mm512_fmadd_ps(_mm512_load_ps(lrow + u * 16), al, sum), bad, _mm512_set1_ps(NAN)));
      _mm512_store_ps(arow + u * 16, al);
      _mm512_store_ps(mrow + u * 16, mnew);
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
      for (int64_t c = 0; c < d; c += 64) {
        switch (R) {
          case 6: pv_tile<6>(st, arow, d, vp, ldv, nj, nall, seen, i0, c, o); break;
          case 5: pv_tile<5>(st, arow, d, vp, ldv, nj, nall, seen, i0, c, o); break;
          case 4: pv_tile<4>(st, arow, d, vp, ldv, nj, nall, seen, i0, c, o); break;
          case 3: pv_tile<3>(st, arow, d, vp, ldv, nj, nall, seen, i0, c, o); break;
          case 2: pv_tile<2>(st, arow, d, vp, ldv, nj, nall, seen, i0, c, o); break;
          default: pv_tile<1>(st, arow, d, vp, ldv, nj, nall, seen, i0, c, o); break;
        }
      }
    }
  }
  for (int64_t i = 0; i < M; i++) {
    float* dst = out + (i / g) * out_tok_stride + (i % g) * d;
    const float* src = o + i * d;
    __m512 inv = _mm512_set1_ps(mrow[i] == -INFINITY ? NAN : 1.f / lrow[i]);  // every score -inf: NaN, as the reference's
    for (int64_t c = 0; c < d; c += 16) {
      __mmask16 mk = mask_at(d, c);
      _mm512_mask_storeu_ps(dst + c, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, src + c), inv));
    }
  }
}

}  // namespace isa512
}  // namespace tierlm
