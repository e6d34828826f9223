/* BatchNorm kernels, AVX2: two ymm (lanes 0-7, 8-15) hold the 16 float
 * lanes of bn.h, four ymm of doubles their accumulators; a plane's tail is a
 * masked load and a blended accumulate, so the lanes see exactly the
 * reference's additions. */
#include "kernels/bn.h"

#include <immintrin.h>

#include "kernels/ymm.h"

typedef struct {
  __m256 lo, hi;
} v16;

static inline v16 load(const float *p) { return (v16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }

/* Lane masks (all ones) for the first r of 16 lanes, 0 <= r < 16. */
static inline void tail(int r, __m256i *m0, __m256i *m1) {
  *m0 = ymm_lanes(r);
  *m1 = ymm_lanes(r - 8);
}

static inline v16 load_tail(const float *p, __m256i m0, __m256i m1) {
  return (v16){_mm256_maskload_ps(p, m0), _mm256_maskload_ps(p + 8, m1)};
}

/* The first r of 16 lanes. */
static inline void store_tail(float *p, int r, v16 v) {
  ymm_store_first(p, v.lo, r);
  ymm_store_first(p + 8, v.hi, r - 8);
}

static inline v16 add(v16 a, v16 b) { return (v16){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
static inline v16 sub(v16 a, v16 b) { return (v16){_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
static inline v16 mul(v16 a, v16 b) { return (v16){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
static inline v16 set1(float f) { return (v16){_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
static inline v16 zero(void) { return set1(0.0f); }

/* acc + v in the masked lanes, acc elsewhere. */
static inline v16 mask_add(v16 acc, v16 v, __m256i m0, __m256i m1) {
  return (v16){_mm256_blendv_ps(acc.lo, _mm256_add_ps(acc.lo, v.lo), _mm256_castsi256_ps(m0)),
               _mm256_blendv_ps(acc.hi, _mm256_add_ps(acc.hi, v.hi), _mm256_castsi256_ps(m1))};
}

/* acc[4j..4j+3] += float lanes 4j..4j+3, in double. */
static inline void flush(double *acc, v16 f) {
  const __m128 q[4] = {_mm256_castps256_ps128(f.lo), _mm256_extractf128_ps(f.lo, 1),
                       _mm256_castps256_ps128(f.hi), _mm256_extractf128_ps(f.hi, 1)};
  for (int j = 0; j < 4; j++)
    _mm256_storeu_pd(acc + 4 * j, _mm256_add_pd(_mm256_loadu_pd(acc + 4 * j), _mm256_cvtps_pd(q[j])));
}

static inline int chunk_end(int i0, int hw) {
  return hw - i0 < VMC_BN_CHUNK ? hw : i0 + VMC_BN_CHUNK;
}

static void stats_avx2(const float *x, const vmc_bn_planes *p, const float *shift,
                       vmc_bn_acc *acc) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride;
    const v16 sh = set1(shift[k]);
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = chunk_end(i0, p->hw);
      v16 f1 = zero(), f2 = zero();
      int i = i0;
      for (; i + 16 <= end; i += 16) {
        v16 d = sub(load(xk + i), sh);
        f1 = add(f1, d);
        f2 = add(f2, mul(d, d));
      }
      if (i < end) {
        __m256i m0, m1;
        tail(end - i, &m0, &m1);
        v16 d = sub(load_tail(xk + i, m0, m1), sh);
        f1 = mask_add(f1, d, m0, m1);
        f2 = mask_add(f2, mul(d, d), m0, m1);
      }
      flush(acc[k].l[0], f1);
      flush(acc[k].l[1], f2);
    }
  }
}

static inline v16 fwd(v16 x, v16 a, v16 b) { return add(mul(a, x), b); }

/* max(v, lo) returns lo for NaN v, as the reference's v > lo ? v : lo. */
static inline v16 clamp(v16 v, v16 lo, v16 hi) {
  return (v16){_mm256_min_ps(_mm256_max_ps(v.lo, lo.lo), hi.lo),
               _mm256_min_ps(_mm256_max_ps(v.hi, lo.hi), hi.hi)};
}

static void apply_avx2(const float *x, const vmc_bn_planes *p, const vmc_bn_chan *c, float *y) {
  const int hw = p->hw;
  __m256i m0, m1;
  tail(hw % 16, &m0, &m1);
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride;
    float *yk = y + (size_t)k * p->stride;
    const v16 a = set1(c[k].a), b = set1(c[k].b), lo = set1(c[k].lo), hi = set1(c[k].hi);
    const int cl = c[k].clamp;
    int i = 0;
    for (; i + 16 <= hw; i += 16) {
      v16 v = fwd(load(xk + i), a, b);
      if (cl) v = clamp(v, lo, hi);
      _mm256_storeu_ps(yk + i, v.lo);
      _mm256_storeu_ps(yk + i + 8, v.hi);
    }
    if (i < hw) {
      v16 v = fwd(load_tail(xk + i, m0, m1), a, b);
      if (cl) v = clamp(v, lo, hi);
      store_tail(yk + i, hw % 16, v);
    }
  }
}

/* dy where lo < v < hi (ordered compares: false for NaN), else 0. */
static inline v16 mask_dy(int clamped, v16 x, v16 dy, v16 a, v16 b, v16 lo, v16 hi) {
  if (!clamped) return dy;
  v16 v = fwd(x, a, b);
  __m256 k0 = _mm256_and_ps(_mm256_cmp_ps(v.lo, lo.lo, _CMP_GT_OQ), _mm256_cmp_ps(v.lo, hi.lo, _CMP_LT_OQ));
  __m256 k1 = _mm256_and_ps(_mm256_cmp_ps(v.hi, lo.hi, _CMP_GT_OQ), _mm256_cmp_ps(v.hi, hi.hi, _CMP_LT_OQ));
  return (v16){_mm256_and_ps(k0, dy.lo), _mm256_and_ps(k1, dy.hi)};
}

static void bwd_sums_avx2(const float *x, const float *dy, const vmc_bn_planes *p,
                          const vmc_bn_chan *c, vmc_bn_acc *acc) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride, *dyk = dy + (size_t)k * p->stride;
    const v16 a = set1(c[k].a), b = set1(c[k].b), lo = set1(c[k].lo), hi = set1(c[k].hi);
    const v16 mu = set1(c[k].mu);
    const int cl = c[k].clamp;
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = chunk_end(i0, p->hw);
      v16 f1 = zero(), f2 = zero();
      int i = i0;
      for (; i + 16 <= end; i += 16) {
        v16 xv = load(xk + i);
        v16 d = mask_dy(cl, xv, load(dyk + i), a, b, lo, hi);
        f1 = add(f1, d);
        f2 = add(f2, mul(d, sub(xv, mu)));
      }
      if (i < end) {
        __m256i m0, m1;
        tail(end - i, &m0, &m1);
        v16 xv = load_tail(xk + i, m0, m1);
        v16 d = mask_dy(cl, xv, load_tail(dyk + i, m0, m1), a, b, lo, hi);
        f1 = mask_add(f1, d, m0, m1);
        f2 = mask_add(f2, mul(d, sub(xv, mu)), m0, m1);
      }
      flush(acc[k].l[0], f1);
      flush(acc[k].l[1], f2);
    }
  }
}

static inline v16 dx_of(int use_x, v16 xv, v16 d, v16 k, v16 c1, v16 c2, v16 mu) {
  v16 r = mul(k, d);
  if (!use_x) return r;
  return sub(sub(r, c1), mul(sub(xv, mu), c2));
}

static void bwd_dx_avx2(const float *x, const float *dy, const vmc_bn_planes *p,
                        const vmc_bn_chan *c, float *dx, int accumulate) {
  const int hw = p->hw;
  __m256i m0, m1;
  tail(hw % 16, &m0, &m1);
  for (int kk = 0; kk < p->n; kk++) {
    const float *xk = x + (size_t)kk * p->stride, *dyk = dy + (size_t)kk * p->stride;
    float *dxk = dx + (size_t)kk * p->stride;
    const vmc_bn_chan *ch = &c[kk];
    const v16 a = set1(ch->a), b = set1(ch->b), lo = set1(ch->lo), hi = set1(ch->hi);
    const v16 mu = set1(ch->mu), k = set1(ch->k), c1 = set1(ch->c1), c2 = set1(ch->c2);
    const int cl = ch->clamp, ux = ch->use_x;
    int i = 0;
    for (; i + 16 <= hw; i += 16) {
      v16 xv = load(xk + i);
      v16 r = dx_of(ux, xv, mask_dy(cl, xv, load(dyk + i), a, b, lo, hi), k, c1, c2, mu);
      if (accumulate) r = add(load(dxk + i), r);
      _mm256_storeu_ps(dxk + i, r.lo);
      _mm256_storeu_ps(dxk + i + 8, r.hi);
    }
    if (i < hw) {
      v16 xv = load_tail(xk + i, m0, m1);
      v16 r = dx_of(ux, xv, mask_dy(cl, xv, load_tail(dyk + i, m0, m1), a, b, lo, hi), k, c1, c2,
                    mu);
      if (accumulate) r = add(load_tail(dxk + i, m0, m1), r);
      store_tail(dxk + i, hw % 16, r);
    }
  }
}

const vmc_bn_kernels vmc_bn_kernels__avx2 = {"avx2", stats_avx2, apply_avx2, bwd_sums_avx2,
                                             bwd_dx_avx2};
