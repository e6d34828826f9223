/* BatchNorm kernels, AVX-512: one zmm holds the 16 float lanes of bn.h,
 * flushed into the plane's two zmm of doubles; a plane's tail is a masked
 * load and a masked accumulate, so the lanes see exactly the reference's
 * additions. */
#include "kernels/bn.h"

#include <immintrin.h>

static inline __mmask16 tail(int r) { return (__mmask16)((1u << r) - 1u); }

/* acc[0..7] += float lanes 0-7, acc[8..15] += lanes 8-15, in double. */
static inline void flush(double *acc, __m512 f) {
  __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
  __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
  _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), lo));
  _mm512_storeu_pd(acc + 8, _mm512_add_pd(_mm512_loadu_pd(acc + 8), hi));
}

static inline int chunk_end(int i0, int hw) {
  return hw - i0 < VMC_BN_CHUNK ? hw : i0 + VMC_BN_CHUNK;
}

static void stats_avx512(const float *x, const vmc_bn_planes *p, const float *shift,
                         vmc_bn_acc *acc) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride;
    const __m512 sh = _mm512_set1_ps(shift[k]);
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = chunk_end(i0, p->hw);
      __m512 f1 = _mm512_setzero_ps(), f2 = _mm512_setzero_ps();
      int i = i0;
      for (; i + 16 <= end; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xk + i), sh);
        f1 = _mm512_add_ps(f1, d);
        f2 = _mm512_add_ps(f2, _mm512_mul_ps(d, d));
      }
      if (i < end) {
        const __mmask16 m = tail(end - i);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xk + i), sh);
        f1 = _mm512_mask_add_ps(f1, m, f1, d);
        f2 = _mm512_mask_add_ps(f2, m, f2, _mm512_mul_ps(d, d));
      }
      flush(acc[k].l[0], f1);
      flush(acc[k].l[1], f2);
    }
  }
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
  const int hw = p->hw;
  const __mmask16 m = tail(hw % 16);
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride;
    float *yk = y + (size_t)k * p->stride;
    const __m512 a = _mm512_set1_ps(c[k].a), b = _mm512_set1_ps(c[k].b);
    const __m512 lo = _mm512_set1_ps(c[k].lo), hi = _mm512_set1_ps(c[k].hi);
    int i = 0;
    if (c[k].clamp) {
      for (; i + 16 <= hw; i += 16)
        _mm512_storeu_ps(yk + i, clamp(fwd(_mm512_loadu_ps(xk + i), a, b), lo, hi));
      if (i < hw)
        _mm512_mask_storeu_ps(yk + i, m, clamp(fwd(_mm512_maskz_loadu_ps(m, xk + i), a, b), lo, hi));
    } else {
      for (; i + 16 <= hw; i += 16) _mm512_storeu_ps(yk + i, fwd(_mm512_loadu_ps(xk + i), a, b));
      if (i < hw) _mm512_mask_storeu_ps(yk + i, m, fwd(_mm512_maskz_loadu_ps(m, xk + i), a, b));
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
                            const vmc_bn_chan *c, vmc_bn_acc *acc) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride, *dyk = dy + (size_t)k * p->stride;
    const __m512 a = _mm512_set1_ps(c[k].a), b = _mm512_set1_ps(c[k].b);
    const __m512 lo = _mm512_set1_ps(c[k].lo), hi = _mm512_set1_ps(c[k].hi);
    const __m512 mu = _mm512_set1_ps(c[k].mu);
    const int cl = c[k].clamp;
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = chunk_end(i0, p->hw);
      __m512 f1 = _mm512_setzero_ps(), f2 = _mm512_setzero_ps();
      int i = i0;
      for (; i + 16 <= end; i += 16) {
        __m512 xv = _mm512_loadu_ps(xk + i);
        __m512 d = mask_dy(cl, xv, _mm512_loadu_ps(dyk + i), a, b, lo, hi);
        f1 = _mm512_add_ps(f1, d);
        f2 = _mm512_add_ps(f2, _mm512_mul_ps(d, _mm512_sub_ps(xv, mu)));
      }
      if (i < end) {
        const __mmask16 m = tail(end - i);
        __m512 xv = _mm512_maskz_loadu_ps(m, xk + i);
        __m512 d = mask_dy(cl, xv, _mm512_maskz_loadu_ps(m, dyk + i), a, b, lo, hi);
        f1 = _mm512_mask_add_ps(f1, m, f1, d);
        f2 = _mm512_mask_add_ps(f2, m, f2, _mm512_mul_ps(d, _mm512_sub_ps(xv, mu)));
      }
      flush(acc[k].l[0], f1);
      flush(acc[k].l[1], f2);
    }
  }
}

static void bwd_dx_avx512(const float *x, const float *dy, const vmc_bn_planes *p,
                          const vmc_bn_chan *c, float *dx, int accumulate) {
  const int hw = p->hw;
  const __mmask16 tm = tail(hw % 16);
  for (int kk = 0; kk < p->n; kk++) {
    const float *xk = x + (size_t)kk * p->stride, *dyk = dy + (size_t)kk * p->stride;
    float *dxk = dx + (size_t)kk * p->stride;
    const vmc_bn_chan *ch = &c[kk];
    const __m512 a = _mm512_set1_ps(ch->a), b = _mm512_set1_ps(ch->b);
    const __m512 lo = _mm512_set1_ps(ch->lo), hi = _mm512_set1_ps(ch->hi);
    const __m512 mu = _mm512_set1_ps(ch->mu), k = _mm512_set1_ps(ch->k);
    const __m512 c1 = _mm512_set1_ps(ch->c1), c2 = _mm512_set1_ps(ch->c2);
    const int cl = ch->clamp, ux = ch->use_x;
    for (int i = 0; i < hw; i += 16) {
      const __mmask16 m = i + 16 <= hw ? (__mmask16)0xffff : tm;
      __m512 xv = _mm512_maskz_loadu_ps(m, xk + i);
      __m512 r = _mm512_mul_ps(k, mask_dy(cl, xv, _mm512_maskz_loadu_ps(m, dyk + i), a, b, lo, hi));
      if (ux) r = _mm512_sub_ps(_mm512_sub_ps(r, c1), _mm512_mul_ps(_mm512_sub_ps(xv, mu), c2));
      if (accumulate) r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dxk + i), r);
      _mm512_mask_storeu_ps(dxk + i, m, r);
    }
  }
}

const vmc_bn_kernels vmc_bn_kernels__avx512 = {"avx512", stats_avx512, apply_avx512,
                                               bwd_sums_avx512, bwd_dx_avx512};
