/* Plane copies, AVX-512: each row in 16-float steps of masked loads and
 * stores (lanes outside the source row load 0, lanes outside the
 * destination row are not written); stride-2 phases split and merged with
 * two-source permutes.  Other strides take the reference.  Every row of a
 * call has the same masks: they are computed once per call (for rows of at
 * most MAX_BLOCKS steps; longer rows take the reference), not per row, which
 * made these copies several times slower on Zen 4. */
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

#define MAX_BLOCKS 32 /* 16-float steps per row */

static void pad_avx512(const float *x, int ch, int h, int w, int top, int left, int hp, int wp,
                       size_t slack, float *xp) {
  const int nb = (wp + 15) / 16;
  if (nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.pad(x, ch, h, w, top, left, hp, wp, slack, xp);
    return;
  }
  __mmask16 mo[MAX_BLOCKS], mi[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) {
    const int k = 16 * b;
    mo[b] = range(0, wp - k);
    mi[b] = mo[b] & range(left - k, left + w - k);
  }
  for (int c = 0; c < ch; c++) {
    float *dst = xp + (size_t)c * hp * wp;
    const float *src = x + (size_t)c * h * w;
    zero(dst, (size_t)top * wp);
    for (int y = 0; y < h; y++) {
      float *r = dst + (size_t)(top + y) * wp;
      const float *s = src + (size_t)y * w - left;
      for (int b = 0; b < nb; b++)
        _mm512_mask_storeu_ps(r + 16 * b, mo[b], _mm512_maskz_loadu_ps(mi[b], s + 16 * b));
    }
    zero(dst + (size_t)(top + h) * wp, (size_t)(hp - top - h) * wp);
  }
  zero(xp + (size_t)ch * hp * wp, slack);
}

static void crop_avx512(const float *src, int ch, size_t plane, int wp, int top, int left, int h,
                        int w, float *dst, int add) {
  const int nb = (w + 15) / 16;
  if (nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.crop(src, ch, plane, wp, top, left, h, w, dst, add);
    return;
  }
  __mmask16 m[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) m[b] = range(0, w - 16 * b);
  /* Adding, channel innermost: a row's last vector reaches into the next
   * row, and a load overlapping a store still in flight waits for it. */
  for (int y = 0; y < h; y++)
    for (int c = 0; c < ch; c++) {
      const float *s = src + (size_t)c * plane + (size_t)(top + y) * wp + left;
      float *d = dst + ((size_t)c * h + y) * w;
      for (int b = 0; b < nb; b++) {
        __m512 v = _mm512_maskz_loadu_ps(m[b], s + 16 * b);
        if (add) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m[b], d + 16 * b), v);
        _mm512_mask_storeu_ps(d + 16 * b, m[b], v);
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
  const int phw = g->phw, w = g->w, nb = (phw + 15) / 16;
  if (g->sw != 2 || nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.phase_split(x, ch, g, slack, xq);
    return;
  }
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  /* block b: the 32 source columns x0 = 32b - left ... (element e of the
   * two loads is column x0 + e: phase 0 the even elements, phase 1 the
   * odd), the lanes inside the image, the phase columns that exist */
  __mmask16 ma[MAX_BLOCKS], mb[MAX_BLOCKS], mo[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) {
    const int x0 = 32 * b - g->left;
    ma[b] = range(-x0, w - x0);
    mb[b] = range(-x0 - 16, w - x0 - 16);
    mo[b] = range(0, phw - 16 * b);
  }
  const size_t xrow = vmc_phase_xrow(g), xplane = vmc_phase_xplane(g);
  for (int ci = 0; ci < ch; ci++)
    for (int r = 0; r < g->sh; r++) {
      float *d0 = phase_row(xq, ci, g, r, 0, 0), *d1 = phase_row(xq, ci, g, r, 1, 0);
      if (!d0 && !d1) continue;
      for (int u = 0; u < g->phh; u++, d0 = d0 ? d0 + phw : NULL, d1 = d1 ? d1 + phw : NULL) {
        const int y = g->sh * u + r - g->top;
        if (y < 0 || y >= g->h) {
          if (d0) zero(d0, (size_t)phw);
          if (d1) zero(d1, (size_t)phw);
          continue;
        }
        const float *s = x + ci * xplane + y * xrow - g->left;
        for (int b = 0; b < nb; b++, s += 32) {
          const __m512 a = _mm512_maskz_loadu_ps(ma[b], s);
          const __m512 c = _mm512_maskz_loadu_ps(mb[b], s + 16);
          if (d0) _mm512_mask_storeu_ps(d0 + 16 * b, mo[b], _mm512_permutex2var_ps(a, ie, c));
          if (d1) _mm512_mask_storeu_ps(d1 + 16 * b, mo[b], _mm512_permutex2var_ps(a, io, c));
        }
      }
    }
  zero(xq + (size_t)ch * g->nslots * g->phh * phw, slack);
}

static void merge_avx512(const float *dq, int ch, const vmc_phase_geom *g, float *dx, int add) {
  const int phw = g->phw, w = g->w, x_start = -(g->left & 1), nb = (w - x_start + 31) / 32;
  if (g->sw != 2 || nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.phase_merge(dq, ch, g, dx, add);
    return;
  }
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  /* block b: image columns xb = x_start + 32b ... (lane l of a half is
   * column xb + l, padded column xb + left + l, even at l = 0: phase 0 at
   * even lanes, phase 1 at odd), phase columns from vb = (xb + left) / 2 */
  __mmask16 mv[MAX_BLOCKS], ml[MAX_BLOCKS], mh[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) {
    const int xb = x_start + 32 * b, vb = (xb + g->left) / 2;
    mv[b] = range(0, phw - vb);
    ml[b] = range(-xb, w - xb);
    mh[b] = range(-xb - 16, w - xb - 16);
  }
  const int v_start = (x_start + g->left) / 2;
  float *base = (float *)dq;
  const size_t chan_q = (size_t)g->nslots * g->phh * phw, chan_x = (size_t)g->h * w;
  /* Phase row by phase row (no division per image row), channel innermost:
   * a row's first vector reaches back into the row above, and a load
   * overlapping a store still in flight waits for it. */
  for (int r = 0; r < g->sh; r++) {
    const float *q0 = phase_row(base, 0, g, r, 0, 0), *q1 = phase_row(base, 0, g, r, 1, 0);
    /* a phase not built leaves its columns alone when adding */
    __mmask16 keep = 0xffff;
    if (add && !q0) keep &= 0xaaaa;
    if (add && !q1) keep &= 0x5555;
    for (int u = 0; u < g->phh; u++) {
      const int y = g->sh * u + r - g->top;
      if (y < 0 || y >= g->h) continue;
      for (int ci = 0; ci < ch; ci++) {
        const float *s0 = q0 ? q0 + ci * chan_q + (size_t)u * phw : NULL;
        const float *s1 = q1 ? q1 + ci * chan_q + (size_t)u * phw : NULL;
        float *d = dx + ci * chan_x + (size_t)y * w + x_start;
        for (int b = 0; b < nb; b++, d += 32) {
          const int vb = v_start + 16 * b;
          const __m512 p0 = s0 ? _mm512_maskz_loadu_ps(mv[b], s0 + vb) : _mm512_setzero_ps();
          const __m512 p1 = s1 ? _mm512_maskz_loadu_ps(mv[b], s1 + vb) : _mm512_setzero_ps();
          __m512 lo = _mm512_permutex2var_ps(p0, ilo, p1), hi = _mm512_permutex2var_ps(p0, ihi, p1);
          const __mmask16 kl = ml[b] & keep, kh = mh[b] & keep;
          if (add) {
            lo = _mm512_add_ps(_mm512_maskz_loadu_ps(kl, d), lo);
            hi = _mm512_add_ps(_mm512_maskz_loadu_ps(kh, d + 16), hi);
          }
          _mm512_mask_storeu_ps(d, kl, lo);
          _mm512_mask_storeu_ps(d + 16, kh, hi);
        }
      }
    }
  }
}

const vmc_planes_kernels vmc_planes_kernels__avx512 = {"avx512", pad_avx512, crop_avx512,
                                                       split_avx512, merge_avx512};
