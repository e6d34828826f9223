/* Plane copies, AVX-512: each row in 16-float steps of masked loads and
 * stores (lanes outside the source row load 0, lanes outside the
 * destination row are not written); stride-2 phases split and merged with
 * two-source permutes.  Other strides take the reference. */
#include "kernels/planes.h"

#include <immintrin.h>

/* Lanes l with lo <= l < hi. */
static inline __mmask16 range(int lo, int hi) {
  if (lo < 0) lo = 0;
  if (hi > 16) hi = 16;
  if (hi <= lo) return 0;
  return (__mmask16)((((1u << hi) - 1u) >> lo) << lo);
}

/* n zero floats: inline stores (the blocks are short; a memset call per
 * plane border costs more than the stores). */
static inline void zero(float *p, size_t n) {
  const __m512 z = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(p + i, z);
  if (i < n) _mm512_mask_storeu_ps(p + i, range(0, (int)(n - i)), z);
}

static void pad_avx512(const float *x, int ch, int h, int w, int top, int left, int hp, int wp,
                       size_t slack, float *xp) {
  for (int c = 0; c < ch; c++) {
    float *dst = xp + (size_t)c * hp * wp;
    const float *src = x + (size_t)c * h * w;
    zero(dst, (size_t)top * wp);
    for (int y = 0; y < h; y++) {
      float *r = dst + (size_t)(top + y) * wp;
      const float *s = src + (size_t)y * w;
      for (int k = 0; k < wp; k += 16) {
        const __mmask16 mo = range(0, wp - k), mi = mo & range(left - k, left + w - k);
        _mm512_mask_storeu_ps(r + k, mo, _mm512_maskz_loadu_ps(mi, s + (k - left)));
      }
    }
    zero(dst + (size_t)(top + h) * wp, (size_t)(hp - top - h) * wp);
  }
  zero(xp + (size_t)ch * hp * wp, slack);
}

static void crop_avx512(const float *src, int ch, size_t plane, int wp, int top, int left, int h,
                        int w, float *dst, int add) {
  for (int c = 0; c < ch; c++)
    for (int y = 0; y < h; y++) {
      const float *s = src + (size_t)c * plane + (size_t)(top + y) * wp + left;
      float *d = dst + ((size_t)c * h + y) * w;
      for (int k = 0; k < w; k += 16) {
        const __mmask16 m = range(0, w - k);
        __m512 v = _mm512_maskz_loadu_ps(m, s + k);
        if (add) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, d + k), v);
        _mm512_mask_storeu_ps(d + k, m, v);
      }
    }
}

static float *phase_row(float *base, int ci, const vmc_phase_geom *g, int r, int s, int u) {
  const int sl = g->slot[r][s];
  if (sl < 0) return NULL;
  return base + ((size_t)ci * g->nslots + sl) * g->phh * g->phw + (size_t)u * g->phw;
}

static void split_avx512(const float *x, int ch, const vmc_phase_geom *g, size_t slack,
                         float *xq) {
  if (g->sw != 2) {
    vmc_planes_kernels__ref.phase_split(x, ch, g, slack, xq);
    return;
  }
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const int phw = g->phw, w = g->w;
  for (int ci = 0; ci < ch; ci++)
    for (int r = 0; r < g->sh; r++)
      for (int u = 0; u < g->phh; u++) {
        float *d0 = phase_row(xq, ci, g, r, 0, u), *d1 = phase_row(xq, ci, g, r, 1, u);
        const int y = g->sh * u + r - g->top;
        if (y < 0 || y >= g->h) {
          if (d0) zero(d0, (size_t)phw);
          if (d1) zero(d1, (size_t)phw);
          continue;
        }
        const float *s = x + ci * vmc_phase_xplane(g) + y * vmc_phase_xrow(g);
        for (int v0 = 0; v0 < phw; v0 += 16) {
          /* element e of the 32 loaded is source column x0 + e: phase 0 the
           * even elements, phase 1 the odd */
          const int x0 = 2 * v0 - g->left;
          const __m512 a = _mm512_maskz_loadu_ps(range(-x0, w - x0), s + x0);
          const __m512 b = _mm512_maskz_loadu_ps(range(-x0 - 16, w - x0 - 16), s + (x0 + 16));
          const __mmask16 mo = range(0, phw - v0);
          if (d0) _mm512_mask_storeu_ps(d0 + v0, mo, _mm512_permutex2var_ps(a, ie, b));
          if (d1) _mm512_mask_storeu_ps(d1 + v0, mo, _mm512_permutex2var_ps(a, io, b));
        }
      }
  zero(xq + (size_t)ch * g->nslots * g->phh * phw, slack);
}

static void merge_avx512(const float *dq, int ch, const vmc_phase_geom *g, float *dx, int add) {
  if (g->sw != 2) {
    vmc_planes_kernels__ref.phase_merge(dq, ch, g, dx, add);
    return;
  }
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const int phw = g->phw, w = g->w;
  float *base = (float *)dq;
  for (int ci = 0; ci < ch; ci++)
    for (int y = 0; y < g->h; y++) {
      const int yy = y + g->top, r = yy % g->sh, u = yy / g->sh;
      const float *s0 = phase_row(base, ci, g, r, 0, u), *s1 = phase_row(base, ci, g, r, 1, u);
      float *d = dx + ((size_t)ci * g->h + y) * w;
      /* lane l of a block is column xb + l, padded column xb + left + l,
       * even at l = 0: phase 0 at even lanes, phase 1 at odd */
      __mmask16 keep = 0xffff;
      if (add && !s0) keep &= 0xaaaa;
      if (add && !s1) keep &= 0x5555;
      for (int xb = -(g->left & 1); xb < w; xb += 32) {
        const int vb = (xb + g->left) / 2;
        const __mmask16 mv = range(0, phw - vb);
        const __m512 p0 = s0 ? _mm512_maskz_loadu_ps(mv, s0 + vb) : _mm512_setzero_ps();
        const __m512 p1 = s1 ? _mm512_maskz_loadu_ps(mv, s1 + vb) : _mm512_setzero_ps();
        __m512 lo = _mm512_permutex2var_ps(p0, ilo, p1), hi = _mm512_permutex2var_ps(p0, ihi, p1);
        const __mmask16 ml = range(-xb, w - xb) & keep, mh = range(-xb - 16, w - xb - 16) & keep;
        if (add) {
          lo = _mm512_add_ps(_mm512_maskz_loadu_ps(ml, d + xb), lo);
          hi = _mm512_add_ps(_mm512_maskz_loadu_ps(mh, d + (xb + 16)), hi);
        }
        _mm512_mask_storeu_ps(d + xb, ml, lo);
        _mm512_mask_storeu_ps(d + (xb + 16), mh, hi);
      }
    }
}

const vmc_planes_kernels vmc_planes_kernels__avx512 = {"avx512", pad_avx512, crop_avx512,
                                                       split_avx512, merge_avx512};
