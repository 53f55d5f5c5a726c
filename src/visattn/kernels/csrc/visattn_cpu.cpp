// The fused CPU kernels for SE (arXiv:1709.01507) and CBAM (arXiv:1807.06521).
//
// The tensor x is viewed as (N, C, P) with P = H W, either NCHW-contiguous (`cl = 0`: p is the
// fastest index) or channels_last (`cl = 1`: c is the fastest index). Per-channel vectors
// (`a`: SE's s or CBAM's M_c, `zmax`, `cavg`, `cmax`) are float32 (N, C); per-position
// vectors (`b`: CBAM's M_s, `gavg`, `gmax`, `pmax`) are float32 (N, P). Element types are
// float32 (`dt = 0`) or bfloat16 (`dt = 1`); all arithmetic is float32.
//
// Kernels (each one pass over its full-size operands):
//
// - `va_stats_c`  sum_p x and max_p x per (n, c)                (SE squeeze / CBAM AvgPool, MaxPool)
// - `va_apply`    y = (x * a_c) * b_p  (b optional)               (SE eq. 4 / CBAM eq. 1)
// - `va_stats_p`  sum_c a_c x and max_c a_c x per (n, p)          (CBAM AvgPool_c, MaxPool_c of F')
// - `va_bwd_reduce`  q_c = sum_p dy x b_p, db_p = sum_c dy a_c x, tie counts of both maxima
// - `va_bwd_channel` out_c = sum_p x (gavg_p + [a_c x == pmax_p] gmax_p)
// - `va_bwd_apply`   dx = a_c (dy b_p + gavg_p + [a_c x == pmax_p] gmax_p) + cavg_c + [x == zmax_c] cmax_c
//
// With a folded BatchNorm (`nrm` rows al, be[, mu, v, w], float32 (K, C); see
// visattn/kernels/ops.py) the input is the BatchNorm's input c and x = fma(c, al, be), rounded
// to c's type, is computed on load. Every kernel takes `nrm` (nullptr: none); each is one
// template whose bool parameter AFF says whether it is given, so that both cases compile to
// their own loops. `va_bwd_apply` then writes dL/dc = al r + v (c - mu) + w for the r above, and
// the two reductions return sums on d = c - mu_c instead (rows of `mom`, see bwd_reduce and
// bwd_channel below):
//
// - `va_bwd_reduce`   per (n, c): sum_p dy b_p, sum_p dy b_p d, sum_p d and, over the ties
//   [x == zmax_c], their count and sum of d; per (n, p): db_p and tie counts as above
// - `va_bwd_channel`  per (n, c): sum_p [a_c x == pmax_p] gmax_p and sum_p d (gavg_p + that)
//
// Work is split into (n, block of positions) tiles that OpenMP threads take dynamically; partial
// per-channel sums of the tiles are added in a fixed tile order afterwards, so every result is
// deterministic (independent of which thread ran which tile).
//
// Built and loaded by visattn/kernels/cpu.py, which reads the ctypes signatures from the
// extern "C" definitions at the end of this file (only the C types listed in cpu._SCALARS, and
// pointers to them). Tests: tests/kernels/test_kernels_se_cbam.py and test_kernels_norm_fusion.py
// (values), tests/kernels/test_kernels_cpu_source.py (builds with -Wall -Wextra -Werror, bindings).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

typedef uint16_t bf16_t;

static inline float ld(const float* p, int64_t i) { return p[i]; }
static inline float ld(const bf16_t* p, int64_t i) {
  uint32_t u = ((uint32_t)p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void st(float* p, int64_t i, float v) { p[i] = v; }
static inline void st(bf16_t* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t q = (u >> 16) | 0x40u;
  p[i] = (bf16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? q : r);
}

struct Geo {
  int64_t N, C, P, nb, pb;
};

static Geo make_geo(int64_t N, int64_t C, int64_t P, int nt) {
  Geo g;
  g.N = N; g.C = C; g.P = P;
  // About 16 tiles per thread, handed out dynamically: a thread that the OS deschedules on a
  // busy machine delays its current tile only, not half of the pass.
  int64_t want = std::max<int64_t>(1, (16 * (int64_t)nt + N - 1) / N);
  // Tiles of at least 64 positions: shorter rows spend their time in loop tails.
  int64_t nb = std::max<int64_t>(1, std::min<int64_t>(want, P / 64));
  g.pb = (P + nb - 1) / nb;
  g.nb = (P + g.pb - 1) / g.pb;
  return g;
}

static int64_t row_block(int64_t rows, int nt) {
  return std::max<int64_t>(1, (rows + 16 * (int64_t)nt - 1) / (16 * (int64_t)nt));
}

static const float NEG_INF = -std::numeric_limits<float>::infinity();

// By-value maximum: std::max takes references, which stops GCC from vectorising simd loops.
static inline float vmax(float a, float b) { return a > b ? a : b; }

// v rounded to T, as float (the value st() would store).
static inline float round_as(float v, const float*) { return v; }
static inline float round_as(float v, const bf16_t*) {  // st()'s rounding, branch-free
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return v != v ? v : r;  // NaN stays NaN
}

// The block's input as the kernels see it: x, or with a folded BatchNorm (AFF) x~ = c al_c + be_c
// from the BatchNorm's input c, rounded to c's type as nn.BatchNorm2d's output is. One fma
// everywhere, so that a maximum found in one kernel is recognised by equality in another.
template <typename T>
static inline float bn_x(float c, float al, float be, const T* type) {
  return round_as(std::fma(c, al, be), type);
}
template <bool AFF, typename T>
static inline float xin(const T* p, int64_t i, float al, float be) {
  return AFF ? bn_x(ld(p, i), al, be, p) : ld(p, i);
}
// The same before the rounding, for the forward product y = x~ a b, which is rounded on store
// (everything that feeds a decision -- pools, maxima, equality tests -- sees the rounded x~).
template <bool AFF, typename T>
static inline float xin_unrounded(const T* p, int64_t i, float al, float be) {
  return AFF ? std::fma(ld(p, i), al, be) : ld(p, i);
}
// The same for a value already loaded (raw: the element of x, or of c with AFF).
template <bool AFF, typename T>
static inline float xval(float raw, float al, float be, const T* type) {
  return AFF ? bn_x(raw, al, be, type) : raw;
}

// The reductions' per-tile partial sums part[(k nblk + tile) C + c] (K rows, nblk = N nb tiles)
// added in tile order: mom[(k N + n) C + c] = sum over the tiles of sample n. A fixed order, so
// the result does not depend on which thread ran which tile.
static void sum_tiles(const float* part, int64_t K, const Geo& g, float* mom) {
  const int64_t C = g.C, N = g.N, nblk = N * g.nb;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        float acc = 0.f;
        for (int64_t bb = 0; bb < g.nb; ++bb) acc += part[(k * nblk + n * g.nb + bb) * C + c];
        mom[(k * N + n) * C + c] = acc;
      }
}

// ---------------------------------------------------------------- sum_p x, max_p x
template <typename T, bool CL, bool AFF>
static void stats_c(const T* x, const Geo& g, int nt, float* sum, float* mx, const float* nal,
                    const float* nbe) {
  const int64_t C = g.C, P = g.P, nblk = g.N * g.nb;
  std::vector<float> ps(nblk * C), pm(nblk * C);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t n = blk / g.nb, p0 = (blk % g.nb) * g.pb, p1 = std::min(P, p0 + g.pb);
    float* s = &ps[blk * C];
    float* m = &pm[blk * C];
    if (CL) {
      for (int64_t c = 0; c < C; ++c) { s[c] = 0.f; m[c] = NEG_INF; }
      int64_t p = p0;
      for (; p + 4 <= p1; p += 4) {  // 4 rows per update of the accumulators: 4x less traffic
        const T* r0 = x + (n * P + p) * C;
        const T *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float al = AFF ? nal[c] : 1.f, be = AFF ? nbe[c] : 0.f;
          float v0 = xin<AFF>(r0, c, al, be), v1 = xin<AFF>(r1, c, al, be);
          float v2 = xin<AFF>(r2, c, al, be), v3 = xin<AFF>(r3, c, al, be);
          s[c] += (v0 + v1) + (v2 + v3);
          m[c] = vmax(m[c], vmax(vmax(v0, v1), vmax(v2, v3)));
        }
      }
      for (; p < p1; ++p) {
        const T* row = x + (n * P + p) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          float v = xin<AFF>(row, c, AFF ? nal[c] : 1.f, AFF ? nbe[c] : 0.f);
          s[c] += v;
          m[c] = vmax(m[c], v);
        }
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const T* row = x + (n * C + c) * P;
        const float al = AFF ? nal[c] : 1.f, be = AFF ? nbe[c] : 0.f;
        float acc = 0.f, mm = NEG_INF;
#pragma omp simd reduction(+ : acc) reduction(max : mm)
        for (int64_t p = p0; p < p1; ++p) {
          float v = xin<AFF>(row, p, al, be);
          acc += v;
          mm = vmax(mm, v);
        }
        s[c] = acc;
        m[c] = mm;
      }
    }
  }
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      float acc = 0.f, mm = NEG_INF;
      for (int64_t b = 0; b < g.nb; ++b) {
        acc += ps[(n * g.nb + b) * C + c];
        mm = vmax(mm, pm[(n * g.nb + b) * C + c]);
      }
      sum[n * C + c] = acc;
      mx[n * C + c] = mm;
    }
}

// ---------------------------------------------------------------- y = (x a_c) b_p
template <typename T, bool CL, bool HAS_B, bool AFF>
static void apply_k(const T* x, T* y, const float* a, const float* b, const Geo& g, int nt,
                    const float* nal, const float* nbe) {
  const int64_t C = g.C, P = g.P;
  if (!CL) {
    // NCHW: tiles of whole (n, c) rows, so that every tile writes one contiguous range and the
    // threads fault in (and zero) disjoint pages of the fresh output.
    const int64_t rows = g.N * C, rb = row_block(rows, nt);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < rows; r0 += rb) {
      for (int64_t r = r0; r < std::min(rows, r0 + rb); ++r) {
        const int64_t n = r / C, o = r * P;
        const float ac = a[r];
        const float al = AFF ? nal[r % C] : 1.f, be = AFF ? nbe[r % C] : 0.f;
        const float* bn = HAS_B ? b + n * P : nullptr;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) {
          float v = xin_unrounded<AFF>(x + o, p, al, be) * ac;
          st(y + o, p, HAS_B ? v * bn[p] : v);
        }
      }
    }
    return;
  }
  const int64_t nblk = g.N * g.nb;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t n = blk / g.nb, p0 = (blk % g.nb) * g.pb, p1 = std::min(P, p0 + g.pb);
    const float* an = a + n * C;
    const float* bn = HAS_B ? b + n * P : nullptr;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t o = (n * P + p) * C;
      const float bp = HAS_B ? bn[p] : 1.f;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        float v = xin_unrounded<AFF>(x + o, c, AFF ? nal[c] : 1.f, AFF ? nbe[c] : 0.f) * an[c];
        st(y + o, c, HAS_B ? v * bp : v);
      }
    }
  }
}

// ---------------------------------------------------------------- sum_c a x, max_c a x
template <typename T, bool CL, bool AFF>
static void stats_p(const T* x, const float* a, float* psum, float* pmax, const Geo& g, int nt,
                    const float* nal, const float* nbe) {
  const int64_t C = g.C, P = g.P, nblk = g.N * g.nb;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t n = blk / g.nb, p0 = (blk % g.nb) * g.pb, p1 = std::min(P, p0 + g.pb);
    const float* an = a + n * C;
    if (CL) {
      for (int64_t p = p0; p < p1; ++p) {
        const T* row = x + (n * P + p) * C;
        float acc = 0.f, mm = NEG_INF;
#pragma omp simd reduction(+ : acc) reduction(max : mm)
        for (int64_t c = 0; c < C; ++c) {
          float v = an[c] * xin<AFF>(row, c, AFF ? nal[c] : 1.f, AFF ? nbe[c] : 0.f);
          acc += v;
          mm = vmax(mm, v);
        }
        psum[n * P + p] = acc;
        pmax[n * P + p] = mm;
      }
    } else {
      float* s = psum + n * P;
      float* m = pmax + n * P;
      for (int64_t p = p0; p < p1; ++p) { s[p] = 0.f; m[p] = NEG_INF; }
      int64_t c = 0;
      for (; c + 4 <= C; c += 4) {  // 4 channels per update of the per-position accumulators
        const T* r0 = x + (n * C + c) * P;
        const T *r1 = r0 + P, *r2 = r1 + P, *r3 = r2 + P;
        const float a0 = an[c], a1 = an[c + 1], a2 = an[c + 2], a3 = an[c + 3];
        float l0 = 1.f, l1 = 1.f, l2 = 1.f, l3 = 1.f, e0 = 0.f, e1 = 0.f, e2 = 0.f, e3 = 0.f;
        if (AFF) {
          l0 = nal[c]; l1 = nal[c + 1]; l2 = nal[c + 2]; l3 = nal[c + 3];
          e0 = nbe[c]; e1 = nbe[c + 1]; e2 = nbe[c + 2]; e3 = nbe[c + 3];
        }
#pragma omp simd
        for (int64_t p = p0; p < p1; ++p) {
          float v0 = a0 * xin<AFF>(r0, p, l0, e0), v1 = a1 * xin<AFF>(r1, p, l1, e1);
          float v2 = a2 * xin<AFF>(r2, p, l2, e2), v3 = a3 * xin<AFF>(r3, p, l3, e3);
          s[p] += (v0 + v1) + (v2 + v3);
          m[p] = vmax(m[p], vmax(vmax(v0, v1), vmax(v2, v3)));
        }
      }
      for (; c < C; ++c) {
        const T* row = x + (n * C + c) * P;
        const float ac = an[c];
        const float al = AFF ? nal[c] : 1.f, be = AFF ? nbe[c] : 0.f;
#pragma omp simd
        for (int64_t p = p0; p < p1; ++p) {
          float v = ac * xin<AFF>(row, p, al, be);
          s[p] += v;
          m[p] = vmax(m[p], v);
        }
      }
    }
  }
}

// ------------------------------------------------------------- backward reductions of y = (x a_c) b_p
// Per (n, c), rows of mom (each N C). Without a folded BatchNorm (AFF false):
//   0: q_c = sum_p dy x b_p   1 (CNT): sum_p [x == zmax_c]
// With one (AFF; x~ = c al_c + be_c, nrm rows al, be, mu): sums on d = c - mu_c, from which the
// operators get both the block's and the BatchNorm's gradients (visattn/kernels/ops.py):
//   0: sum_p dy b_p   1: sum_p dy b_p d   2: sum_p d   3 (CNT): sum_p [x~ == zmax_c]   4: same sum of d
// Per (n, p), both: db_p = sum_c dy a_c x, pcnt_p = sum_c [a_c x == pmax_p] (x~ with AFF).
template <typename T, bool CL, bool CBAM, bool CNT, bool AFF>
static void bwd_reduce(const T* dy, const T* x, const float* a, const float* b,
                       const float* zmax, const float* pmax, const float* nrm, float* mom,
                       float* db, float* pcnt, const Geo& g, int nt) {
  constexpr int64_t K = AFF ? (CNT ? 5 : 3) : (CNT ? 2 : 1), ZROW = AFF ? 3 : 1;
  const int64_t C = g.C, P = g.P, N = g.N, nblk = N * g.nb;
  const float* nal = AFF ? nrm : nullptr;
  const float* nbe = AFF ? nrm + C : nullptr;
  const float* nmu = AFF ? nrm + 2 * C : nullptr;
  std::vector<float> part(K * nblk * C);  // part[(k nblk + blk) C + c]
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t n = blk / g.nb, p0 = (blk % g.nb) * g.pb, p1 = std::min(P, p0 + g.pb);
    const float* an = a + n * C;
    const float* zn = CNT ? zmax + n * C : nullptr;
    float* s0 = &part[blk * C];  // row 0: q_c, or sum_p dy b_p with AFF
    float* s1 = AFF ? s0 + nblk * C : nullptr;
    float* s2 = AFF ? s1 + nblk * C : nullptr;
    float* sz = CNT ? s0 + ZROW * nblk * C : nullptr;  // the tie counts of zmax
    float* s4 = (AFF && CNT) ? sz + nblk * C : nullptr;
    if (CL) {
      for (int64_t c = 0; c < C; ++c) {
        s0[c] = 0.f;
        if constexpr (AFF) { s1[c] = 0.f; s2[c] = 0.f; }
        if (CNT) sz[c] = 0.f;
        if (AFF && CNT) s4[c] = 0.f;
      }
      int64_t p = p0;
      for (; p + 4 <= p1; p += 4) {  // 4 rows per update of the per-channel accumulators
        const int64_t o0 = (n * P + p) * C, o1 = o0 + C, o2 = o1 + C, o3 = o2 + C;
        const float* bq = CBAM ? b + n * P + p : nullptr;
        const float* mq = (CBAM && CNT) ? pmax + n * P + p : nullptr;
        const float b0 = CBAM ? bq[0] : 1.f, b1 = CBAM ? bq[1] : 1.f;
        const float b2 = CBAM ? bq[2] : 1.f, b3 = CBAM ? bq[3] : 1.f;
        const float m0 = mq ? mq[0] : 0.f, m1 = mq ? mq[1] : 0.f;
        const float m2 = mq ? mq[2] : 0.f, m3 = mq ? mq[3] : 0.f;
        float q0 = 0.f, q1 = 0.f, q2 = 0.f, q3 = 0.f, k0 = 0.f, k1 = 0.f, k2 = 0.f, k3 = 0.f;
#pragma omp simd reduction(+ : q0, q1, q2, q3, k0, k1, k2, k3)
        for (int64_t c = 0; c < C; ++c) {
          float v0, v1, v2, v3, t0, t1, t2, t3;  // x (x~ with AFF) and dy x
          float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
          if constexpr (AFF) {
            const float al = nal[c], be = nbe[c], mu = nmu[c];
            const float r0 = ld(x + o0, c), r1 = ld(x + o1, c), r2 = ld(x + o2, c), r3 = ld(x + o3, c);
            const float e0 = ld(dy + o0, c), e1 = ld(dy + o1, c);
            const float e2 = ld(dy + o2, c), e3 = ld(dy + o3, c);
            v0 = bn_x(r0, al, be, x); v1 = bn_x(r1, al, be, x);
            v2 = bn_x(r2, al, be, x); v3 = bn_x(r3, al, be, x);
            d0 = r0 - mu; d1 = r1 - mu; d2 = r2 - mu; d3 = r3 - mu;
            const float f0 = e0 * b0, f1 = e1 * b1, f2 = e2 * b2, f3 = e3 * b3;
            s0[c] += (f0 + f1) + (f2 + f3);
            s1[c] += (f0 * d0 + f1 * d1) + (f2 * d2 + f3 * d3);
            s2[c] += (d0 + d1) + (d2 + d3);
            t0 = e0 * v0; t1 = e1 * v1; t2 = e2 * v2; t3 = e3 * v3;
          } else {
            v0 = ld(x + o0, c); v1 = ld(x + o1, c); v2 = ld(x + o2, c); v3 = ld(x + o3, c);
            t0 = ld(dy + o0, c) * v0; t1 = ld(dy + o1, c) * v1;
            t2 = ld(dy + o2, c) * v2; t3 = ld(dy + o3, c) * v3;
            s0[c] += CBAM ? (t0 * b0 + t1 * b1) + (t2 * b2 + t3 * b3) : (t0 + t1) + (t2 + t3);
          }
          if (CBAM) {
            const float ac = an[c];
            q0 += t0 * ac; q1 += t1 * ac; q2 += t2 * ac; q3 += t3 * ac;
          }
          if (CNT) {
            const float zc = zn[c];
            const bool h0 = v0 == zc, h1 = v1 == zc, h2 = v2 == zc, h3 = v3 == zc;
            if constexpr (AFF) {
              sz[c] += ((h0 ? 1.f : 0.f) + (h1 ? 1.f : 0.f)) + ((h2 ? 1.f : 0.f) + (h3 ? 1.f : 0.f));
              s4[c] += ((h0 ? d0 : 0.f) + (h1 ? d1 : 0.f)) + ((h2 ? d2 : 0.f) + (h3 ? d3 : 0.f));
            } else {
              sz[c] += (h0 ? 1.f : 0.f) + (h1 ? 1.f : 0.f) + (h2 ? 1.f : 0.f) + (h3 ? 1.f : 0.f);
            }
          }
          if (CBAM && CNT) {
            const float ac = an[c];
            k0 += (ac * v0 == m0) ? 1.f : 0.f; k1 += (ac * v1 == m1) ? 1.f : 0.f;
            k2 += (ac * v2 == m2) ? 1.f : 0.f; k3 += (ac * v3 == m3) ? 1.f : 0.f;
          }
        }
        if (CBAM) {
          float* dq = db + n * P + p;
          dq[0] = q0; dq[1] = q1; dq[2] = q2; dq[3] = q3;
        }
        if (CBAM && CNT) {
          float* kq = pcnt + n * P + p;
          kq[0] = k0; kq[1] = k1; kq[2] = k2; kq[3] = k3;
        }
      }
      for (; p < p1; ++p) {
        const int64_t o = (n * P + p) * C;
        const float bp = CBAM ? b[n * P + p] : 1.f;
        const float pm = (CBAM && CNT) ? pmax[n * P + p] : 0.f;
        float dacc = 0.f, cacc = 0.f;
#pragma omp simd reduction(+ : dacc, cacc)
        for (int64_t c = 0; c < C; ++c) {
          float v, t, d = 0.f;
          if constexpr (AFF) {
            const float raw = ld(x + o, c), e = ld(dy + o, c);
            v = bn_x(raw, nal[c], nbe[c], x);
            d = raw - nmu[c];
            const float eb = CBAM ? e * bp : e;
            s0[c] += eb;
            s1[c] += eb * d;
            s2[c] += d;
            t = e * v;
          } else {
            v = ld(x + o, c);
            t = ld(dy + o, c) * v;
            s0[c] += CBAM ? t * bp : t;
          }
          if (CBAM) dacc += t * an[c];
          if (CNT) {
            const bool hit = v == zn[c];
            sz[c] += hit ? 1.f : 0.f;
            if (AFF) s4[c] += hit ? d : 0.f;
          }
          if (CBAM && CNT) cacc += (an[c] * v == pm) ? 1.f : 0.f;
        }
        if (CBAM) db[n * P + p] = dacc;
        if (CBAM && CNT) pcnt[n * P + p] = cacc;
      }
    } else {
      float* dbn = CBAM ? db + n * P : nullptr;
      float* pcn = (CBAM && CNT) ? pcnt + n * P : nullptr;
      const float* bn = CBAM ? b + n * P : nullptr;
      const float* pmn = (CBAM && CNT) ? pmax + n * P : nullptr;
      if (CBAM)
        for (int64_t p = p0; p < p1; ++p) { dbn[p] = 0.f; if (CNT) pcn[p] = 0.f; }
      int64_t c = 0;
      for (; CBAM && !AFF && c + 4 <= C; c += 4) {  // 4 channels per update of db_p and the counts
        const int64_t o0 = (n * C + c) * P, o1 = o0 + P, o2 = o1 + P, o3 = o2 + P;
        const float a0 = an[c], a1 = an[c + 1], a2 = an[c + 2], a3 = an[c + 3];
        const float z0 = CNT ? zn[c] : 0.f, z1 = CNT ? zn[c + 1] : 0.f;
        const float z2 = CNT ? zn[c + 2] : 0.f, z3 = CNT ? zn[c + 3] : 0.f;
        float q0 = 0.f, q1 = 0.f, q2 = 0.f, q3 = 0.f, y0 = 0.f, y1 = 0.f, y2 = 0.f, y3 = 0.f;
#pragma omp simd reduction(+ : q0, q1, q2, q3, y0, y1, y2, y3)
        for (int64_t p = p0; p < p1; ++p) {
          float v0 = ld(x + o0, p), v1 = ld(x + o1, p), v2 = ld(x + o2, p), v3 = ld(x + o3, p);
          float t0 = ld(dy + o0, p) * v0, t1 = ld(dy + o1, p) * v1;
          float t2 = ld(dy + o2, p) * v2, t3 = ld(dy + o3, p) * v3;
          const float bp = bn[p];
          q0 += t0 * bp; q1 += t1 * bp; q2 += t2 * bp; q3 += t3 * bp;
          dbn[p] += (t0 * a0 + t1 * a1) + (t2 * a2 + t3 * a3);
          if (CNT) {
            y0 += (v0 == z0) ? 1.f : 0.f; y1 += (v1 == z1) ? 1.f : 0.f;
            y2 += (v2 == z2) ? 1.f : 0.f; y3 += (v3 == z3) ? 1.f : 0.f;
            const float pm = pmn[p];
            pcn[p] += ((a0 * v0 == pm) ? 1.f : 0.f) + ((a1 * v1 == pm) ? 1.f : 0.f) +
                      ((a2 * v2 == pm) ? 1.f : 0.f) + ((a3 * v3 == pm) ? 1.f : 0.f);
          }
        }
        s0[c] = q0; s0[c + 1] = q1; s0[c + 2] = q2; s0[c + 3] = q3;
        if (CNT) { sz[c] = y0; sz[c + 1] = y1; sz[c + 2] = y2; sz[c + 3] = y3; }
      }
      for (; c < C; ++c) {
        const int64_t o = (n * C + c) * P;
        const float ac = an[c];
        const float al = AFF ? nal[c] : 1.f, be = AFF ? nbe[c] : 0.f, mu = AFF ? nmu[c] : 0.f;
        const float zc = CNT ? zn[c] : 0.f;
        float t0 = 0.f, t1 = 0.f, t2 = 0.f, t3 = 0.f, t4 = 0.f;  // rows 0-2 and the zmax ties
#pragma omp simd reduction(+ : t0, t1, t2, t3, t4)
        for (int64_t p = p0; p < p1; ++p) {
          float v, t, d = 0.f;
          if constexpr (AFF) {
            const float raw = ld(x + o, p), e = ld(dy + o, p);
            v = bn_x(raw, al, be, x);
            d = raw - mu;
            const float eb = CBAM ? e * bn[p] : e;
            t0 += eb;
            t1 += eb * d;
            t2 += d;
            t = e * v;
          } else {
            v = ld(x + o, p);
            t = ld(dy + o, p) * v;
            t0 += CBAM ? t * bn[p] : t;
          }
          if (CBAM) dbn[p] += t * ac;
          if (CNT) {
            const bool hit = v == zc;
            t3 += hit ? 1.f : 0.f;
            if (AFF) t4 += hit ? d : 0.f;
          }
          if (CBAM && CNT) pcn[p] += (ac * v == pmn[p]) ? 1.f : 0.f;
        }
        s0[c] = t0;
        if constexpr (AFF) { s1[c] = t1; s2[c] = t2; }
        if (CNT) sz[c] = t3;
        if (AFF && CNT) s4[c] = t4;
      }
    }
  }
  sum_tiles(part.data(), K, g, mom);
}

// ------------------------------------- out_c = sum_p x (gavg_p + [a x == pmax_p] gmax_p)
// Rows of mom (each N C): without a folded BatchNorm (AFF false) 0: out_c. With one (AFF, nrm
// rows al, be, mu): 0: sum_p [a_c x~ == pmax_p] gmax_p (MAXP), 1: sum_p d (gavg_p + that),
// d = c - mu_c; so that out_c = al_c row1 + (be_c + al_c mu_c) (sum_p gavg_p + row0).
template <typename T, bool CL, bool MAXP, bool AFF>
static void bwd_channel(const T* x, const float* a, const float* gavg, const float* gmax,
                        const float* pmax, const float* nrm, float* mom, const Geo& g, int nt) {
  constexpr int64_t K = AFF ? 2 : 1;
  const int64_t C = g.C, P = g.P, N = g.N, nblk = N * g.nb;
  const float* nal = AFF ? nrm : nullptr;
  const float* nbe = AFF ? nrm + C : nullptr;
  const float* nmu = AFF ? nrm + 2 * C : nullptr;
  std::vector<float> part(K * nblk * C);  // part[(k nblk + blk) C + c]
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t n = blk / g.nb, p0 = (blk % g.nb) * g.pb, p1 = std::min(P, p0 + g.pb);
    const float* an = a + n * C;
    float* sh = &part[blk * C];              // AFF: the row of the maxima's share
    float* sw = AFF ? sh + nblk * C : sh;    // the row of sum_p x w_p (d w_p with AFF)
    if (CL) {
      for (int64_t c = 0; c < C; ++c) { sh[c] = 0.f; if (AFF) sw[c] = 0.f; }
      int64_t p = p0;
      for (; p + 4 <= p1; p += 4) {  // 4 rows per update of the per-channel accumulators
        const int64_t o0 = (n * P + p) * C, o1 = o0 + C, o2 = o1 + C, o3 = o2 + C;
        const float* gq = gavg + n * P + p;
        const float* hq = MAXP ? gmax + n * P + p : nullptr;
        const float* mq = MAXP ? pmax + n * P + p : nullptr;
        const float w0 = gq[0], w1 = gq[1], w2 = gq[2], w3 = gq[3];
        const float g0 = MAXP ? hq[0] : 0.f, g1 = MAXP ? hq[1] : 0.f;
        const float g2 = MAXP ? hq[2] : 0.f, g3 = MAXP ? hq[3] : 0.f;
        const float m0 = MAXP ? mq[0] : 0.f, m1 = MAXP ? mq[1] : 0.f;
        const float m2 = MAXP ? mq[2] : 0.f, m3 = MAXP ? mq[3] : 0.f;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float mu = AFF ? nmu[c] : 0.f;
          const float r0 = ld(x + o0, c), r1 = ld(x + o1, c), r2 = ld(x + o2, c), r3 = ld(x + o3, c);
          float h0 = 0.f, h1 = 0.f, h2 = 0.f, h3 = 0.f;  // [a_c x == pmax_p] gmax_p
          if (MAXP) {
            const float ac = an[c], al = AFF ? nal[c] : 1.f, be = AFF ? nbe[c] : 0.f;
            h0 = (ac * xval<AFF>(r0, al, be, x) == m0) ? g0 : 0.f;
            h1 = (ac * xval<AFF>(r1, al, be, x) == m1) ? g1 : 0.f;
            h2 = (ac * xval<AFF>(r2, al, be, x) == m2) ? g2 : 0.f;
            h3 = (ac * xval<AFF>(r3, al, be, x) == m3) ? g3 : 0.f;
          }
          float u0 = w0, u1 = w1, u2 = w2, u3 = w3;  // w_p
          if (MAXP || AFF) { u0 += h0; u1 += h1; u2 += h2; u3 += h3; }
          if constexpr (AFF) {
            sh[c] += (h0 + h1) + (h2 + h3);
            sw[c] += ((r0 - mu) * u0 + (r1 - mu) * u1) + ((r2 - mu) * u2 + (r3 - mu) * u3);
          } else {
            sw[c] += (r0 * u0 + r1 * u1) + (r2 * u2 + r3 * u3);
          }
        }
      }
      for (; p < p1; ++p) {
        const int64_t o = (n * P + p) * C;
        const float ga = gavg[n * P + p];
        const float gm = MAXP ? gmax[n * P + p] : 0.f;
        const float pm = MAXP ? pmax[n * P + p] : 0.f;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float raw = ld(x + o, c);
          float h = 0.f;
          if (MAXP)
            h = (an[c] * xval<AFF>(raw, AFF ? nal[c] : 1.f, AFF ? nbe[c] : 0.f, x) == pm) ? gm : 0.f;
          float w = ga;
          if (MAXP || AFF) w += h;
          if constexpr (AFF) {
            sh[c] += h;
            sw[c] += (raw - nmu[c]) * w;
          } else {
            sw[c] += raw * w;
          }
        }
      }
    } else {
      const float* gan = gavg + n * P;
      const float* gmn = MAXP ? gmax + n * P : nullptr;
      const float* pmn = MAXP ? pmax + n * P : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t o = (n * C + c) * P;
        const float ac = an[c];
        const float al = AFF ? nal[c] : 1.f, be = AFF ? nbe[c] : 0.f, mu = AFF ? nmu[c] : 0.f;
        float t0 = 0.f, t1 = 0.f;
#pragma omp simd reduction(+ : t0, t1)
        for (int64_t p = p0; p < p1; ++p) {
          const float raw = ld(x + o, p);
          float h = 0.f;
          if (MAXP) h = (ac * xval<AFF>(raw, al, be, x) == pmn[p]) ? gmn[p] : 0.f;
          float w = gan[p];
          if (MAXP || AFF) w += h;
          if constexpr (AFF) {
            t0 += h;
            t1 += (raw - mu) * w;
          } else {
            t1 += raw * w;
          }
        }
        if (AFF) sh[c] = t0;
        sw[c] = t1;
      }
    }
  }
  sum_tiles(part.data(), K, g, mom);
}

// --------- dx = a_c (dy b_p + gavg_p + [a x == pmax_p] gmax_p) + cavg_c + [x == zmax_c] cmax_c
// With a folded BatchNorm (AFF, nrm rows al, be, mu, v, w): that r = dL/dx~ is turned into
// dL/dc = al_c r + v_c (c - mu_c) + w_c, the BatchNorm's backward (v = w = 0 with running stats).
template <bool AFF>
static inline float out_norm(float r, float raw, const float* nrm, int64_t C, int64_t c) {
  if (!AFF) return r;
  return nrm[c] * r + nrm[3 * C + c] * (raw - nrm[2 * C + c]) + nrm[4 * C + c];
}

template <typename T, bool CL, bool CBAM, bool MAXP, bool MAXC, bool AFF>
static void bwd_apply(const T* dy, const T* x, const float* a, const float* b, const float* gavg,
                      const float* gmax, const float* pmax, const float* cavg, const float* cmax,
                      const float* zmax, T* dx, const Geo& g, int nt, const float* nrm) {
  const int64_t C = g.C, P = g.P, nblk = g.N * g.nb;
  const float* nal = nrm;
  const float* nbe = AFF ? nrm + C : nullptr;
  if (!CL) {  // NCHW: contiguous row tiles (see apply_k)
    const int64_t rows = g.N * C, rb = row_block(rows, nt);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < rows; r0 += rb) {
      for (int64_t r = r0; r < std::min(rows, r0 + rb); ++r) {
        const int64_t n = r / C, o = r * P;
        const float* bn = CBAM ? b + n * P : nullptr;
        const float* gan = CBAM ? gavg + n * P : nullptr;
        const float* gmn = MAXP ? gmax + n * P : nullptr;
        const float* pmn = MAXP ? pmax + n * P : nullptr;
        const float ac = a[r], ca = cavg[r];
        const float cm = MAXC ? cmax[r] : 0.f, zc = MAXC ? zmax[r] : 0.f;
        const int64_t ch = r % C;
        const float al = AFF ? nal[ch] : 1.f, be = AFF ? nbe[ch] : 0.f;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) {
          const float raw = ld(x + o, p);
          const float v = AFF ? bn_x(raw, al, be, x) : raw;
          float gg = CBAM ? ld(dy + o, p) * bn[p] + gan[p] : ld(dy + o, p);
          if (MAXP) gg += (ac * v == pmn[p]) ? gmn[p] : 0.f;
          float r2 = ac * gg + ca;
          if (MAXC) r2 += (v == zc) ? cm : 0.f;
          st(dx + o, p, out_norm<AFF>(r2, raw, nrm, C, ch));
        }
      }
    }
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t n = blk / g.nb, p0 = (blk % g.nb) * g.pb, p1 = std::min(P, p0 + g.pb);
    const float* an = a + n * C;
    const float* can = cavg + n * C;
    const float* cmn = MAXC ? cmax + n * C : nullptr;
    const float* zn = MAXC ? zmax + n * C : nullptr;
    if (CL) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t o = (n * P + p) * C;
        const float bp = CBAM ? b[n * P + p] : 1.f;
        const float ga = CBAM ? gavg[n * P + p] : 0.f;
        const float gm = MAXP ? gmax[n * P + p] : 0.f;
        const float pm = MAXP ? pmax[n * P + p] : 0.f;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float raw = ld(x + o, c);
          const float v = AFF ? bn_x(raw, nal[c], nbe[c], x) : raw;
          float gg = CBAM ? ld(dy + o, c) * bp + ga : ld(dy + o, c);
          if (MAXP) gg += (an[c] * v == pm) ? gm : 0.f;
          float r = an[c] * gg + can[c];
          if (MAXC) r += (v == zn[c]) ? cmn[c] : 0.f;
          st(dx + o, c, out_norm<AFF>(r, raw, nrm, C, c));
        }
      }
    } else {
      const float* bn = CBAM ? b + n * P : nullptr;
      const float* gan = CBAM ? gavg + n * P : nullptr;
      const float* gmn = MAXP ? gmax + n * P : nullptr;
      const float* pmn = MAXP ? pmax + n * P : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t o = (n * C + c) * P;
        const float ac = an[c], ca = can[c];
        const float cm = MAXC ? cmn[c] : 0.f, zc = MAXC ? zn[c] : 0.f;
        const float al = AFF ? nal[c] : 1.f, be = AFF ? nbe[c] : 0.f;
#pragma omp simd
        for (int64_t p = p0; p < p1; ++p) {
          const float raw = ld(x + o, p);
          const float v = AFF ? bn_x(raw, al, be, x) : raw;
          float gg = CBAM ? ld(dy + o, p) * bn[p] + gan[p] : ld(dy + o, p);
          if (MAXP) gg += (ac * v == pmn[p]) ? gmn[p] : 0.f;
          float r = ac * gg + ca;
          if (MAXC) r += (v == zc) ? cm : 0.f;
          st(dx + o, p, out_norm<AFF>(r, raw, nrm, C, c));
        }
      }
    }
  }
}

#define DISPATCH_T_CL(dt, cl, CALL)                          \
  do {                                                       \
    if (dt == 0) {                                           \
      typedef float T;                                       \
      if (cl) { const bool CLV = true; CALL; }               \
      else { const bool CLV = false; CALL; }                 \
    } else {                                                 \
      typedef bf16_t T;                                      \
      if (cl) { const bool CLV = true; CALL; }               \
      else { const bool CLV = false; CALL; }                 \
    }                                                        \
  } while (0)

extern "C" {

int va_version() { return 3; }

// nrm: nullptr, or the folded BatchNorm's rows (al, be[, mu, v, w]) of C floats each.
#define VA_AFF(NRM, CALL) \
  do { if (NRM) { const bool AFFV = true; CALL; } else { const bool AFFV = false; CALL; } } while (0)

void va_stats_c(int dt, int cl, const void* x, int64_t N, int64_t C, int64_t P, int nt,
                float* sum, float* mx, const float* nrm) {
  Geo g = make_geo(N, C, P, nt);
  const float* nbe = nrm ? nrm + C : nullptr;
  VA_AFF(nrm, DISPATCH_T_CL(dt, cl, (stats_c<T, CLV, AFFV>((const T*)x, g, nt, sum, mx, nrm, nbe))));
}

void va_apply(int dt, int cl, const void* x, void* y, const float* a, const float* b, int64_t N,
              int64_t C, int64_t P, int nt, const float* nrm) {
  Geo g = make_geo(N, C, P, nt);
  const float* nbe = nrm ? nrm + C : nullptr;
  if (b)
    VA_AFF(nrm, DISPATCH_T_CL(dt, cl, (apply_k<T, CLV, true, AFFV>((const T*)x, (T*)y, a, b, g, nt, nrm, nbe))));
  else
    VA_AFF(nrm, DISPATCH_T_CL(dt, cl, (apply_k<T, CLV, false, AFFV>((const T*)x, (T*)y, a, b, g, nt, nrm, nbe))));
}

void va_stats_p(int dt, int cl, const void* x, const float* a, float* psum, float* pmax,
                int64_t N, int64_t C, int64_t P, int nt, const float* nrm) {
  Geo g = make_geo(N, C, P, nt);
  const float* nbe = nrm ? nrm + C : nullptr;
  VA_AFF(nrm, DISPATCH_T_CL(dt, cl, (stats_p<T, CLV, AFFV>((const T*)x, a, psum, pmax, g, nt, nrm, nbe))));
}

// mom: float32 (K, N, C), the rows of bwd_reduce above (K = 1 or 2, with nrm 3 or 5).
void va_bwd_reduce(int dt, int cl, const void* dy, const void* x, const float* a,
                   const float* b, const float* zmax, const float* pmax, const float* nrm,
                   float* mom, float* db, float* pcnt, int64_t N, int64_t C, int64_t P, int nt) {
  Geo g = make_geo(N, C, P, nt);
  const bool cbam = b != nullptr, cnt = zmax != nullptr;
#define VA_BR(CB, CN) \
  VA_AFF(nrm, DISPATCH_T_CL(dt, cl, (bwd_reduce<T, CLV, CB, CN, AFFV>((const T*)dy, (const T*)x, a, b, zmax, pmax, nrm, mom, db, pcnt, g, nt))))
  if (cbam) { if (cnt) VA_BR(true, true); else VA_BR(true, false); }
  else { if (cnt) VA_BR(false, true); else VA_BR(false, false); }
#undef VA_BR
}

// mom: float32 (K, N, C), the rows of bwd_channel above (K = 1, with nrm 2).
void va_bwd_channel(int dt, int cl, const void* x, const float* a, const float* gavg,
                    const float* gmax, const float* pmax, const float* nrm, float* mom,
                    int64_t N, int64_t C, int64_t P, int nt) {
  Geo g = make_geo(N, C, P, nt);
#define VA_BC(MP) \
  VA_AFF(nrm, DISPATCH_T_CL(dt, cl, (bwd_channel<T, CLV, MP, AFFV>((const T*)x, a, gavg, gmax, pmax, nrm, mom, g, nt))))
  if (gmax) VA_BC(true); else VA_BC(false);
#undef VA_BC
}

void va_bwd_apply(int dt, int cl, const void* dy, const void* x, const float* a, const float* b,
                  const float* gavg, const float* gmax, const float* pmax, const float* cavg,
                  const float* cmax, const float* zmax, void* dx, int64_t N, int64_t C,
                  int64_t P, int nt, const float* nrm) {
  Geo g = make_geo(N, C, P, nt);
  const bool cbam = b != nullptr, maxp = gmax != nullptr, maxc = cmax != nullptr;
#define VA_BA(CB, MP, MC) \
  VA_AFF(nrm, DISPATCH_T_CL(dt, cl, (bwd_apply<T, CLV, CB, MP, MC, AFFV>((const T*)dy, (const T*)x, a, b, gavg, gmax, pmax, cavg, cmax, zmax, (T*)dx, g, nt, nrm))))
  if (cbam) {
    if (maxp) { if (maxc) VA_BA(true, true, true); else VA_BA(true, true, false); }
    else { if (maxc) VA_BA(true, false, true); else VA_BA(true, false, false); }
  } else {
    if (maxc) VA_BA(false, false, true); else VA_BA(false, false, false);
  }
#undef VA_BA
}

#undef VA_AFF
}  // extern "C"
