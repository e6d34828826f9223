/* Plane copies, AVX2: each row in 8-float steps of masked loads (lanes
 * outside the source row load 0) and stores of the lanes inside the
 * destination row, a row's partial last step in 4-, 2- and 1-float pieces
 * (ymm_store_first: a masked store costs about 12 cycles on AMD's Zen 2 and
 * 3); the phase split stores whole steps, the last spilling into the next
 * row, which it writes later (16x28x28 into 15x15 phases: 1.3-1.5x
 * faster).  Stride-2 phases split and merged with the even/odd shuffles; other
 * strides take the reference.  The masks of a call's rows are computed once
 * per call, for rows of at most MAX_BLOCKS steps (longer rows take the
 * reference). */
#include "kernels/planes.h"
#include "kernels/prefetch.h"
#include "kernels/ymm.h"

#include <immintrin.h>

#define MAX_BLOCKS 32 /* 8-float steps per row */

/* n zero floats. */
static inline void zero(float *p, size_t n) {
  const __m256 z = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(p + i, z);
  ymm_store_first(p + i, z, (int)(n - i));
}

static void pad_avx2(const float *x, int ch, int h, int w, int top, int left, int hp, int wp,
                     size_t slack, float *xp) {
  const int nb = (wp + 7) / 8;
  if (nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.pad(x, ch, h, w, top, left, hp, wp, slack, xp);
    return;
  }
  __m256i mi[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) mi[b] = ymm_span(left - 8 * b, left + w - 8 * b);
  for (int c = 0; c < ch; c++) {
    float *dst = xp + (size_t)c * hp * wp;
    const float *src = x + (size_t)c * h * w;
    if (c + 1 < ch && h > 0) vmc_prefetch_span(src + (size_t)h * w, (size_t)h * w);
    zero(dst, (size_t)top * wp);
    for (int y = 0; y < h; y++) {
      float *r = dst + (size_t)(top + y) * wp;
      const float *s = src + (size_t)y * w - left;
      for (int b = 0; b < nb; b++)
        ymm_store_first(r + 8 * b, _mm256_maskload_ps(s + 8 * b, mi[b]), wp - 8 * b);
    }
    zero(dst + (size_t)(top + h) * wp, (size_t)(hp - top - h) * wp);
  }
  zero(xp + (size_t)ch * hp * wp, slack);
}

static void crop_avx2(const float *src, int ch, size_t plane, int wp, int top, int left, int h,
                      int w, float *dst, int add) {
  const int nb = (w + 7) / 8;
  if (nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.crop(src, ch, plane, wp, top, left, h, w, dst, add);
    return;
  }
  __m256i m[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) m[b] = ymm_lanes(w - 8 * b);
  for (int c = 0; c < ch; c++) {
    if (c + 1 < ch && h > 0) vmc_prefetch_span(dst + (size_t)(c + 1) * h * w, (size_t)h * w);
    for (int y = 0; y < h; y++) {
      const float *s = src + (size_t)c * plane + (size_t)(top + y) * wp + left;
      float *d = dst + ((size_t)c * h + y) * w;
      for (int b = 0; b < nb; b++) {
        __m256 v = _mm256_maskload_ps(s + 8 * b, m[b]);
        if (add) v = _mm256_add_ps(_mm256_maskload_ps(d + 8 * b, m[b]), v);
        ymm_store_first(d + 8 * b, v, w - 8 * b);
      }
    }
  }
}

static float *phase_row(float *base, int ci, const vmc_phase_geom *g, int r, int s, int u) {
  const int sl = g->slot[r][s];
  if (sl < 0) return NULL;
  return base + ((size_t)ci * g->nslots + sl) * g->phh * g->phw + (size_t)u * g->phw;
}

static void split_avx2(const float *x, int ch, const vmc_phase_geom *g, size_t slack, float *xq) {
  const int phw = g->phw, w = g->w, nb = (phw + 7) / 8;
  if (g->sw != 2 || nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.phase_split(x, ch, g, slack, xq);
    return;
  }
  /* block b: the 16 source columns x0 = 16b - left ... (element e of the
   * two loads is column x0 + e: phase 0 the even elements, phase 1 the
   * odd), the lanes inside the image */
  __m256i ma[MAX_BLOCKS], mb[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) {
    const int x0 = 16 * b - g->left;
    ma[b] = ymm_span(-x0, w - x0);
    mb[b] = ymm_span(-x0 - 8, w - x0 - 8);
  }
  const size_t xrow = vmc_phase_xrow(g), xplane = vmc_phase_xplane(g);
  const size_t plane = (size_t)g->phh * phw;
  for (int ci = 0; ci < ch; ci++) {
    if (ci + 1 < ch) vmc_prefetch_span(x + (ci + 1) * xplane, (size_t)g->h * xrow);
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
        /* Whole 8-float stores, the last one spilling into the rows after
         * (written later), unless it would leave the plane. */
        const int last = (size_t)u * phw + 8 * nb <= plane ? 8 : phw - 8 * (nb - 1);
        for (int b = 0; b < nb; b++, s += 16) {
          __m256 even, odd;
          ymm_evens_odds(_mm256_maskload_ps(s, ma[b]), _mm256_maskload_ps(s + 8, mb[b]), &even,
                         &odd);
          if (b + 1 < nb) {
            if (d0) _mm256_storeu_ps(d0 + 8 * b, even);
            if (d1) _mm256_storeu_ps(d1 + 8 * b, odd);
          } else {
            if (d0) ymm_store_first(d0 + 8 * b, even, last);
            if (d1) ymm_store_first(d1 + 8 * b, odd, last);
          }
        }
      }
    }
  }
  zero(xq + (size_t)ch * g->nslots * g->phh * phw, slack);
}

static void merge_avx2(const float *dq, int ch, const vmc_phase_geom *g, float *dx, int add) {
  const int phw = g->phw, w = g->w, nb = (w + 15) / 16;
  if (g->sw != 2 || nb > MAX_BLOCKS) {
    vmc_planes_kernels__ref.phase_merge(dq, ch, g, dx, add);
    return;
  }
  /* Image column x is padded column x + left: phase (x + left) & 1, phase
   * column (x + left) >> 1.  Block b: image columns 16b ... 16b + 15; its
   * even lanes come from phase `pe` at phase columns ve + j, its odd lanes
   * from phase 1 - pe at vo + j (j < 8). */
  const int pe = g->left & 1;
  __m256i me[MAX_BLOCKS], mo[MAX_BLOCKS], ml[MAX_BLOCKS], mh[MAX_BLOCKS];
  int ve[MAX_BLOCKS], vo[MAX_BLOCKS];
  for (int b = 0; b < nb; b++) {
    ve[b] = (16 * b + g->left) >> 1;
    vo[b] = (16 * b + 1 + g->left) >> 1;
    me[b] = ymm_lanes(phw - ve[b]);
    mo[b] = ymm_lanes(phw - vo[b]);
    ml[b] = ymm_lanes(w - 16 * b);
    mh[b] = ymm_lanes(w - 16 * b - 8);
  }
  const __m256 ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1)), none = _mm256_setzero_ps();
  float *base = (float *)dq;
  const size_t chan_q = (size_t)g->nslots * g->phh * phw, chan_x = (size_t)g->h * w;
  /* Phase row by phase row (no division per image row), channel innermost,
   * as in planes_avx512.c. */
  for (int r = 0; r < g->sh; r++) {
    const float *q[2] = {phase_row(base, 0, g, r, 0, 0), phase_row(base, 0, g, r, 1, 0)};
    const float *qe = q[pe], *qo = q[1 - pe];
    /* Adding, the lanes of a phase not built keep dx's value (+ 0 would
     * turn -0 into +0). */
    const __m256 keep_e = qe ? ones : none, keep_o = qo ? ones : none;
    const __m256 keep_lo = YMM_ZIP_LO(keep_e, keep_o), keep_hi = YMM_ZIP_HI(keep_e, keep_o);
    const int blend = add && !(qe && qo);
    if (add && !qe && !qo) continue; /* nothing to add in these rows */
    for (int u = 0; u < g->phh; u++) {
      const int y = g->sh * u + r - g->top;
      if (y < 0 || y >= g->h) continue;
      for (int ci = 0; ci < ch; ci++) {
        const float *se = qe ? qe + ci * chan_q + (size_t)u * phw : NULL;
        const float *so = qo ? qo + ci * chan_q + (size_t)u * phw : NULL;
        float *d = dx + ci * chan_x + (size_t)y * w;
        if (y + g->sh < g->h) vmc_prefetch_span(d + (size_t)g->sh * w, (size_t)w); /* next u's row */
        for (int b = 0; b < nb; b++) {
          const __m256 pe_v = se ? _mm256_maskload_ps(se + ve[b], me[b]) : none;
          const __m256 po_v = so ? _mm256_maskload_ps(so + vo[b], mo[b]) : none;
          __m256 lo = YMM_ZIP_LO(pe_v, po_v), hi = YMM_ZIP_HI(pe_v, po_v);
          float *db = d + 16 * b;
          const int n = w - 16 * b;
          if (add) {
            const __m256 dlo = _mm256_maskload_ps(db, ml[b]);
            const __m256 dhi = _mm256_maskload_ps(db + 8, mh[b]);
            lo = _mm256_add_ps(dlo, lo);
            hi = _mm256_add_ps(dhi, hi);
            if (blend) {
              lo = _mm256_blendv_ps(dlo, lo, keep_lo);
              hi = _mm256_blendv_ps(dhi, hi, keep_hi);
            }
          }
          ymm_store_first(db, lo, n);
          ymm_store_first(db + 8, hi, n - 8);
        }
      }
    }
  }
}

const vmc_planes_kernels vmc_planes_kernels__avx2 = {"avx2", pad_avx2, crop_avx2, split_avx2,
                                                     merge_avx2};
