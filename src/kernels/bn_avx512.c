/* BatchNorm kernels, AVX-512: one zmm holds the 16 float lanes of bn.h, two
 * zmm of doubles their accumulators; a plane's tail is a masked load and a
 * masked accumulate, so the lanes see exactly the reference's additions. */
#include "kernels/bn.h"

#include <immintrin.h>

static inline __mmask16 tail(int r) { return (__mmask16)((1u << r) - 1u); }

/* Double accumulators of float lanes 0-7 and 8-15. */
typedef struct {
  __m512d lo, hi;
} dacc;

static inline void flush(dacc *d, __m512 *f) {
  d->lo = _mm512_add_pd(d->lo, _mm512_cvtps_pd(_mm512_castps512_ps256(*f)));
  d->hi = _mm512_add_pd(
      d->hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(*f), 1))));
  *f = _mm512_setzero_ps();
}

static inline double total(dacc d) {
  double l[VMC_BN_LANES];
  _mm512_storeu_pd(l, d.lo);
  _mm512_storeu_pd(l + 8, d.hi);
  return vmc_bn_lanes_sum(l);
}

static inline int chunk_end(int i0, int hw) {
  return hw - i0 < VMC_BN_CHUNK ? hw : i0 + VMC_BN_CHUNK;
}

static void stats_avx512(const float *x, const vmc_bn_planes *p, float shift, double *s1,
                         double *s2) {
  const __m512 k = _mm512_set1_ps(shift);
  __m512 f1 = _mm512_setzero_ps(), f2 = _mm512_setzero_ps();
  dacc d1 = {_mm512_setzero_pd(), _mm512_setzero_pd()}, d2 = d1;
  for (int b = 0; b < p->n; b++) {
    const float *xb = x + (size_t)b * p->stride;
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = chunk_end(i0, p->hw);
      int i = i0;
      for (; i + 16 <= end; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xb + i), k);
        f1 = _mm512_add_ps(f1, d);
        f2 = _mm512_add_ps(f2, _mm512_mul_ps(d, d));
      }
      if (i < end) {
        const __mmask16 m = tail(end - i);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xb + i), k);
        f1 = _mm512_mask_add_ps(f1, m, f1, d);
        f2 = _mm512_mask_add_ps(f2, m, f2, _mm512_mul_ps(d, d));
      }
      flush(&d1, &f1);
      flush(&d2, &f2);
    }
  }
  *s1 = total(d1);
  *s2 = total(d2);
}

/* v = a*x + b, the product rounded first. */
static inline __m512 fwd(__m512 x, __m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_mul_ps(a, x), b);
}

/* max(v, lo) returns lo for NaN v, as the reference's v > lo ? v : lo. */
static inline __m512 clamp(__m512 v, __m512 lo, __m512 hi) {
  return _mm512_min_ps(_mm512_max_ps(v, lo), hi);
}

static void apply_avx512(const float *x, const vmc_bn_planes *p, const vmc_bn_chan *c, float *y) {
  const __m512 a = _mm512_set1_ps(c->a), b = _mm512_set1_ps(c->b);
  const __m512 lo = _mm512_set1_ps(c->lo), hi = _mm512_set1_ps(c->hi);
  const int hw = p->hw;
  const __mmask16 m = tail(hw % 16);
  for (int im = 0; im < p->n; im++) {
    const float *xb = x + (size_t)im * p->stride;
    float *yb = y + (size_t)im * p->stride;
    int i = 0;
    if (c->clamp) {
      for (; i + 16 <= hw; i += 16)
        _mm512_storeu_ps(yb + i, clamp(fwd(_mm512_loadu_ps(xb + i), a, b), lo, hi));
      if (i < hw)
        _mm512_mask_storeu_ps(yb + i, m, clamp(fwd(_mm512_maskz_loadu_ps(m, xb + i), a, b), lo, hi));
    } else {
      for (; i + 16 <= hw; i += 16) _mm512_storeu_ps(yb + i, fwd(_mm512_loadu_ps(xb + i), a, b));
      if (i < hw) _mm512_mask_storeu_ps(yb + i, m, fwd(_mm512_maskz_loadu_ps(m, xb + i), a, b));
    }
  }
}

/* dy where lo < v < hi (ordered compares: false for NaN), else 0. */
static inline __m512 mask_dy(int clamped, __m512 x, __m512 dy, __m512 a, __m512 b, __m512 lo,
                             __m512 hi) {
  if (!clamped) return dy;
  __m512 v = fwd(x, a, b);
  __mmask16 k = _mm512_cmp_ps_mask(v, lo, _CMP_GT_OQ) & _mm512_cmp_ps_mask(v, hi, _CMP_LT_OQ);
  return _mm512_maskz_mov_ps(k, dy);
}

static void bwd_sums_avx512(const float *x, const float *dy, const vmc_bn_planes *p,
                            const vmc_bn_chan *c, double *sdy, double *sdyx) {
  const __m512 a = _mm512_set1_ps(c->a), b = _mm512_set1_ps(c->b);
  const __m512 lo = _mm512_set1_ps(c->lo), hi = _mm512_set1_ps(c->hi), mu = _mm512_set1_ps(c->mu);
  const int cl = c->clamp;
  __m512 f1 = _mm512_setzero_ps(), f2 = _mm512_setzero_ps();
  dacc d1 = {_mm512_setzero_pd(), _mm512_setzero_pd()}, d2 = d1;
  for (int im = 0; im < p->n; im++) {
    const float *xb = x + (size_t)im * p->stride, *dyb = dy + (size_t)im * p->stride;
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = chunk_end(i0, p->hw);
      int i = i0;
      for (; i + 16 <= end; i += 16) {
        __m512 xv = _mm512_loadu_ps(xb + i);
        __m512 d = mask_dy(cl, xv, _mm512_loadu_ps(dyb + i), a, b, lo, hi);
        f1 = _mm512_add_ps(f1, d);
        f2 = _mm512_add_ps(f2, _mm512_mul_ps(d, _mm512_sub_ps(xv, mu)));
      }
      if (i < end) {
        const __mmask16 m = tail(end - i);
        __m512 xv = _mm512_maskz_loadu_ps(m, xb + i);
        __m512 d = mask_dy(cl, xv, _mm512_maskz_loadu_ps(m, dyb + i), a, b, lo, hi);
        f1 = _mm512_mask_add_ps(f1, m, f1, d);
        f2 = _mm512_mask_add_ps(f2, m, f2, _mm512_mul_ps(d, _mm512_sub_ps(xv, mu)));
      }
      flush(&d1, &f1);
      flush(&d2, &f2);
    }
  }
  *sdy = total(d1);
  *sdyx = total(d2);
}

static void bwd_dx_avx512(const float *x, const float *dy, const vmc_bn_planes *p,
                          const vmc_bn_chan *c, float *dx, int accumulate) {
  const __m512 a = _mm512_set1_ps(c->a), b = _mm512_set1_ps(c->b);
  const __m512 lo = _mm512_set1_ps(c->lo), hi = _mm512_set1_ps(c->hi), mu = _mm512_set1_ps(c->mu);
  const __m512 k = _mm512_set1_ps(c->k), c1 = _mm512_set1_ps(c->c1), c2 = _mm512_set1_ps(c->c2);
  const int cl = c->clamp, ux = c->use_x, hw = p->hw;
  const __mmask16 tm = tail(hw % 16);
  for (int im = 0; im < p->n; im++) {
    const float *xb = x + (size_t)im * p->stride, *dyb = dy + (size_t)im * p->stride;
    float *dxb = dx + (size_t)im * p->stride;
    for (int i = 0; i < hw; i += 16) {
      const __mmask16 m = i + 16 <= hw ? (__mmask16)0xffff : tm;
      __m512 xv = _mm512_maskz_loadu_ps(m, xb + i);
      __m512 r = _mm512_mul_ps(k, mask_dy(cl, xv, _mm512_maskz_loadu_ps(m, dyb + i), a, b, lo, hi));
      if (ux) r = _mm512_sub_ps(_mm512_sub_ps(r, c1), _mm512_mul_ps(_mm512_sub_ps(xv, mu), c2));
      if (accumulate) r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dxb + i), r);
      _mm512_mask_storeu_ps(dxb + i, m, r);
    }
  }
}

const vmc_bn_kernels vmc_bn_kernels__avx512 = {"avx512", stats_avx512, apply_avx512,
                                               bwd_sums_avx512, bwd_dx_avx512};
