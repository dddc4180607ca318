// Bodies of the training attention kernels (attention_train.h), included inside a per-ISA
// namespace. Plain loops written for the auto-vectoriser: along keys (j) or features (c), with
// reductions kept in independent lanes. Only builtins are called, so no out-of-line copy compiled
// with wider flags can serve a narrower path.

#include "kernels/simd_math_impl.h"

namespace {

constexpr int64_t B = kBlock;

inline float lanes_sum(const float* __restrict x, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++) acc[j] += x[i + j];
  for (; i < n; i++) acc[i & 15] += x[i];
  float s = 0;
  for (int j = 0; j < 16; j++) s += acc[j];
  return s;
}

inline float lanes_dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
  for (; i < n; i++) acc[i & 15] += a[i] * b[i];
  float s = 0;
  for (int j = 0; j < 16; j++) s += acc[j];
  return s;
}

inline float lanes_max(const float* __restrict x, int64_t n) {
  float acc[16];
  for (int j = 0; j < 16; j++) acc[j] = -__builtin_inff();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  for (; i < n; i++) acc[i & 15] = x[i] > acc[i & 15] ? x[i] : acc[i & 15];
  float m = acc[0];
  for (int j = 1; j < 16; j++) m = acc[j] > m ? acc[j] : m;
  return m;
}

// xt[c*B + j] = rows j0..j0+nk-1 of a [n, heads, d] tensor at head `head`, transposed.
void load_t(const float* x, int64_t heads, int64_t head, int64_t d, int64_t j0, int64_t nk, float* __restrict xt) {
  for (int64_t j = 0; j < nk; j++) {
    const float* r = x + ((j0 + j) * heads + head) * d;
    for (int64_t c = 0; c < d; c++) xt[c * B + j] = r[c];
  }
}

// y[c] += Σ_r x[r] · rows[r·stride + c] for c < 16·V, r < nx. The V accumulators stay in
// registers across the whole sum over r (no store-to-load round trip per r); each y[c] is summed
// in order of r.
template <int V>
inline void gemv_block(const float* __restrict x, int64_t nx, const float* __restrict rows, int64_t stride, float* __restrict y) {
  constexpr int N = V * 16 / kVecLanes;
  vf t[N];
  for (int b = 0; b < N; b++) t[b] = loadv(y + kVecLanes * b);
  for (int64_t r = 0; r < nx; r++) {
    const float a = x[r];
    const float* row = rows + r * stride;
    for (int b = 0; b < N; b++) t[b] += a * loadv(row + kVecLanes * b);
  }
  for (int b = 0; b < N; b++) storev(y + kVecLanes * b, t[b]);
}

inline void gemv_t(const float* x, int64_t nx, const float* rows, int64_t stride, int64_t ncols, float* y) {
  int64_t c0 = 0;
  for (; c0 + 64 <= ncols; c0 += 64) gemv_block<4>(x, nx, rows + c0, stride, y + c0);
  for (; c0 + 16 <= ncols; c0 += 16) gemv_block<1>(x, nx, rows + c0, stride, y + c0);
  for (; c0 < ncols; c0++) {
    float t = y[c0];
    for (int64_t r = 0; r < nx; r++) t += x[r] * rows[r * stride + c0];
    y[c0] = t;
  }
}

// out[j*d + c] = the same rows, packed contiguously: rows of one head sit hq·d floats apart in
// the [t, heads, d] tensors, a stride that maps a block's rows onto a few L1 sets; packed, the
// block's sums over rows read it from L1.
void load_rows(const float* x, int64_t heads, int64_t head, int64_t d, int64_t j0, int64_t nk, float* __restrict out) {
  for (int64_t j = 0; j < nk; j++) __builtin_memcpy(out + j * d, x + ((j0 + j) * heads + head) * d, static_cast<unsigned long>(d) * 4);
}

// s[j] = scale · q·k_j for j < lim (k transposed in kt, B columns). Whole blocks of 16 columns
// are computed (kt's columns past lim hold stale finite values; their scores are never read).
void scores(const float* q, const float* kt, int64_t d, int64_t lim, float scale, float* s) {
  const int64_t n16 = (lim + 15) / 16 * 16 < B ? (lim + 15) / 16 * 16 : B;
  for (int64_t j = 0; j < n16; j++) s[j] = 0.f;
  gemv_t(q, d, kt, B, n16, s);
  for (int64_t j = 0; j < lim; j++) s[j] *= scale;
}

void forward_rows(const Seq& s, int64_t h, int64_t i0, int64_t nq, float* scratch) {
  const int64_t d = s.d, kh = h / (s.hq / s.hkv);
  float* kt = scratch;
  float* vb = kt + d * B;   // [nk][d]
  float* acc = vb + B * d;  // [nq][d]
  float* sc = acc + B * d;
  float* m = sc + B;
  float* l = m + B;
  for (int64_t i = 0; i < nq; i++) {
    m[i] = -__builtin_inff();
    l[i] = 0.f;
    for (int64_t c = 0; c < d; c++) acc[i * d + c] = 0.f;
  }
  for (int64_t j0 = 0; j0 < i0 + nq; j0 += B) {
    const int64_t nk = i0 + nq - j0 < B ? i0 + nq - j0 : B;
    load_t(s.k, s.hkv, kh, d, j0, nk, kt);
    load_rows(s.v, s.hkv, kh, d, j0, nk, vb);
    for (int64_t i = 0; i < nq; i++) {
      const int64_t lim = i0 + i - j0 + 1 < nk ? i0 + i - j0 + 1 : nk;  // causal: keys j0+j <= i0+i
      if (lim <= 0) continue;
      scores(s.q + ((i0 + i) * s.hq + h) * d, kt, d, lim, s.scale, sc);
      const float bm = lanes_max(sc, lim), mnew = bm > m[i] ? bm : m[i];
      const float alpha = exp_approx(m[i] - mnew);  // m = −inf on the first block: alpha ≈ 0
      for (int64_t j = 0; j < lim; j++) sc[j] = exp_approx(sc[j] - mnew);
      l[i] = l[i] * alpha + lanes_sum(sc, lim);
      m[i] = mnew;
      float* a = acc + i * d;
      for (int64_t c = 0; c < d; c++) a[c] *= alpha;
      gemv_t(sc, lim, vb, d, d, a);
    }
  }
  for (int64_t i = 0; i < nq; i++) {
    float* o = s.out + ((i0 + i) * s.hq + h) * d;
    const float inv = 1.f / l[i];
    for (int64_t c = 0; c < d; c++) o[c] = acc[i * d + c] * inv;
    s.lse_out[(i0 + i) * s.hq + h] = m[i] + __builtin_logf(l[i]);
  }
}

// For query row i against keys j0..j0+lim-1 (kt, vt transposed): p = softmax probabilities from
// the saved lse, ds = p · (dO·v − delta). Returns nothing; fills p and ds.
void probs_and_grads(const Seq& s, int64_t h, int64_t i, const float* kt, const float* vt, int64_t lim, float* p,
                     float* ds) {
  const int64_t d = s.d;
  const float* q = s.q + (i * s.hq + h) * d;
  const float* go = s.dout + (i * s.hq + h) * d;
  const float lse = s.lse[i * s.hq + h], delta = s.delta[i * s.hq + h];
  scores(q, kt, d, lim, s.scale, p);
  for (int64_t j = 0; j < lim; j++) p[j] = exp_approx(p[j] - lse);
  scores(go, vt, d, lim, 1.0f, ds);  // dP = dO·v
  for (int64_t j = 0; j < lim; j++) ds[j] = p[j] * (ds[j] - delta);
}

void backward_kv(const Seq& s, int64_t kh, int64_t j0, int64_t nk, float* scratch) {
  const int64_t d = s.d, g = s.hq / s.hkv;
  float* kt = scratch;
  float* vt = kt + d * B;
  float* dk = vt + d * B;  // [nk][d]
  float* dv = dk + B * d;
  float* pt = dv + B * d;  // [key j][query i] of one query block: P, then dS · scale
  float* dst = pt + B * B;
  float* qb = dst + B * B;  // the query block's q and dO rows, packed
  float* gob = qb + B * d;
  float* p = gob + B * d;
  float* ds = p + B;
  for (int64_t x = 0; x < nk * d; x++) dk[x] = dv[x] = 0.f;
  load_t(s.k, s.hkv, kh, d, j0, nk, kt);
  load_t(s.v, s.hkv, kh, d, j0, nk, vt);
  for (int64_t h = kh * g; h < (kh + 1) * g; h++) {
    for (int64_t i0 = j0; i0 < s.n; i0 += B) {  // query blocks that see key j0 (j0 is a block start)
      const int64_t nq = s.n - i0 < B ? s.n - i0 : B;
      for (int64_t i = 0; i < nq; i++) {
        const int64_t lim = i0 + i - j0 + 1 < nk ? i0 + i - j0 + 1 : nk;
        probs_and_grads(s, h, i0 + i, kt, vt, lim, p, ds);
        for (int64_t j = 0; j < lim; j++) {
          pt[j * B + i] = p[j];
          dst[j * B + i] = ds[j] * s.scale;
        }
        for (int64_t j = lim; j < nk; j++) pt[j * B + i] = dst[j * B + i] = 0.f;
      }
      // dV[j] += Σ_i P[i][j] · dO_i and dK[j] += Σ_i scale · dS[i][j] · q_i, register-blocked
      load_rows(s.q, s.hq, h, d, i0, nq, qb);
      load_rows(s.dout, s.hq, h, d, i0, nq, gob);
      for (int64_t j = 0; j < nk; j++) {
        gemv_t(pt + j * B, nq, gob, d, d, dv + j * d);
        gemv_t(dst + j * B, nq, qb, d, d, dk + j * d);
      }
    }
  }
  for (int64_t j = 0; j < nk; j++) {
    float* ko = s.dk + ((j0 + j) * s.hkv + kh) * d;
    float* vo = s.dv + ((j0 + j) * s.hkv + kh) * d;
    for (int64_t c = 0; c < d; c++) {
      ko[c] = dk[j * d + c];
      vo[c] = dv[j * d + c];
    }
  }
}

void backward_q(const Seq& s, int64_t h, int64_t i0, int64_t nq, float* scratch) {
  const int64_t d = s.d, kh = h / (s.hq / s.hkv);
  float* kt = scratch;
  float* vt = kt + d * B;
  float* kb = vt + d * B;  // [nk][d]
  float* p = kb + B * d;
  float* ds = p + B;
  for (int64_t i = 0; i < nq; i++) {
    float* dq = s.dq + ((i0 + i) * s.hq + h) * d;
    for (int64_t c = 0; c < d; c++) dq[c] = 0.f;
  }
  for (int64_t j0 = 0; j0 < i0 + nq; j0 += B) {
    const int64_t nk = i0 + nq - j0 < B ? i0 + nq - j0 : B;
    load_t(s.k, s.hkv, kh, d, j0, nk, kt);
    load_t(s.v, s.hkv, kh, d, j0, nk, vt);
    load_rows(s.k, s.hkv, kh, d, j0, nk, kb);
    for (int64_t i = i0; i < i0 + nq; i++) {
      const int64_t lim = i - j0 + 1 < nk ? i - j0 + 1 : nk;
      if (lim <= 0) continue;
      probs_and_grads(s, h, i, kt, vt, lim, p, ds);
      for (int64_t j = 0; j < lim; j++) ds[j] *= s.scale;
      gemv_t(ds, lim, kb, d, d, s.dq + (i * s.hq + h) * d);
    }
  }
}

}  // namespace

const Bodies bodies = {forward_rows, backward_kv, backward_q};
