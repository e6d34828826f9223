/* Depthwise "wide" convolution, AVX2+FMA (see dwconv_simd.h). */
#include <immintrin.h>

static inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

#define VL 8
typedef __m256 vec;
#define VZERO() _mm256_setzero_ps()
#define VSET1(s) _mm256_set1_ps(s)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSUM(v) sum8(v)
#define FN(name) name##__avx2
#include "kernels/dwconv_simd.h"

/* ---- all channels in one call (vmc_dwconv_planes), 8 lanes ---------------------
 * The avx512 variant's scheme (dwconv_avx512.c) with AVX2's tools: lane masks
 * as bytes expanded to vectors at use, vmaskmovps loads (no fault on
 * masked-off lanes), and the stride-2 window gathered with one in-lane
 * permute per source vector and blends. */
#include <stddef.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))
#define PL_MAX_MASKS 4096
#define S2_MAX_KW 8
#define S2_MAX_BLOCKS 32

INLINE const float *at_offset(const float *p, ptrdiff_t off) {
  return (const float *)((uintptr_t)p + (uintptr_t)(off * (ptrdiff_t)sizeof(float)));
}

/* Lane l of the result is all ones where bit l of bits is set. */
INLINE __m256i expand8(unsigned bits) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), bit), bit);
}

INLINE __m256 finish8(__m256 v, int clamp, __m256 lo, __m256 hi) {
  return clamp ? _mm256_min_ps(_mm256_max_ps(v, lo), hi) : v; /* vmc_clampf */
}

INLINE void store8(float *y, unsigned keep, __m256 v) {
  if (keep == 0xff)
    _mm256_storeu_ps(y, v);
  else
    _mm256_maskstore_ps(y, expand8(keep), v);
}

/* Stride 1, output the input's size: one flat run of P pixels per plane,
 * msk[b * taps + t] the lanes of block b (8 pixels) whose tap t lies in the
 * plane, off[t] the tap's offset.  REV takes the kernel reversed and ADD
 * adds to y (the input gradient's convolution of dY, as in the avx512
 * variant). */
INLINE void s1_channels8(const int NC, const int REV, const int ADD, const float *x, size_t P,
                         const float *w, const float *bias, int taps, int nb, const uint8_t *msk,
                         const ptrdiff_t *off, int clamp, __m256 lo, __m256 hi, float *y) {
  for (int b = 0; b < nb; b++) {
    const size_t n0 = 8 * (size_t)b;
    __m256 acc[4];
    for (int k = 0; k < NC; k++) acc[k] = _mm256_set1_ps(bias && !ADD ? bias[k] : 0.0f);
    const uint8_t *m = msk + (size_t)b * taps;
    for (int t = 0; t < taps; t++) {
      const float *at = at_offset(x + n0, off[t]);
      const __m256i mv = expand8(m[t]);
      const int wt = REV ? taps - 1 - t : t;
      for (int k = 0; k < NC; k++)
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(w[(size_t)k * taps + wt]),
                                 _mm256_maskload_ps(at + k * P, mv), acc[k]);
    }
    const unsigned keep = n0 + 8 <= P ? 0xffu : (1u << (P - n0)) - 1;
    for (int k = 0; k < NC; k++) {
      float *yk = y + k * P + n0;
      const __m256 v = ADD ? _mm256_add_ps(_mm256_maskload_ps(yk, expand8(keep)), acc[k])
                           : finish8(acc[k], clamp, lo, hi);
      store8(yk, keep, v);
    }
  }
}

/* The tap masks and offsets of a stride-1 "same" geometry, or 0. */
typedef struct {
  size_t P;
  int taps, nb;
  ptrdiff_t off[DW_MAX_TAPS];
  uint8_t msk[PL_MAX_MASKS];
} s1_geom8;

static int s1_prepare8(const vmc_conv_geom *g, s1_geom8 *s) {
  const int h = g->h, wd = g->w, taps = g->kh * g->kw;
  const size_t P = (size_t)h * wd, nb = (P + 7) / 8;
  if (g->sh != 1 || g->sw != 1 || g->oh != h || g->ow != wd || taps > DW_MAX_TAPS ||
      nb * (size_t)taps > PL_MAX_MASKS)
    return 0;
  s->P = P;
  s->taps = taps;
  s->nb = (int)nb;
  /* oy = n / w by a float division: exact for these planes (P < 2^15). */
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 fw = _mm256_set1_ps((float)wd);
  const __m256i minus1 = _mm256_set1_epi32(-1), vh = _mm256_set1_epi32(h),
                vw = _mm256_set1_epi32(wd), vP = _mm256_set1_epi32((int)P);
  for (size_t b = 0; b < nb; b++) {
    const __m256i n = _mm256_add_epi32(_mm256_set1_epi32((int)(8 * b)), iota);
    const __m256i oy = _mm256_cvttps_epi32(_mm256_div_ps(_mm256_cvtepi32_ps(n), fw));
    const __m256i ox = _mm256_sub_epi32(n, _mm256_mullo_epi32(oy, vw));
    const __m256i in = _mm256_cmpgt_epi32(vP, n);
    for (int i = 0; i < g->kh; i++) {
      const int di = i * g->dh - g->ph;
      const __m256i iy = _mm256_add_epi32(oy, _mm256_set1_epi32(di));
      const __m256i rows = _mm256_and_si256(
          in, _mm256_and_si256(_mm256_cmpgt_epi32(iy, minus1), _mm256_cmpgt_epi32(vh, iy)));
      for (int j = 0; j < g->kw; j++) {
        const int dj = j * g->dw - g->pw;
        const __m256i ix = _mm256_add_epi32(ox, _mm256_set1_epi32(dj));
        const __m256i ok = _mm256_and_si256(
            rows, _mm256_and_si256(_mm256_cmpgt_epi32(ix, minus1), _mm256_cmpgt_epi32(vw, ix)));
        s->msk[b * taps + i * g->kw + j] = (uint8_t)_mm256_movemask_ps(_mm256_castsi256_ps(ok));
        s->off[i * g->kw + j] = (ptrdiff_t)di * wd + dj;
      }
    }
  }
  return 1;
}

static int planes8_s1(const float *x, int ch, const float *w, const float *bias,
                      const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  s1_geom8 s;
  if (!s1_prepare8(g, &s)) return 0;
  const size_t P = s.P, taps = (size_t)s.taps;
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  int c = 0;
  for (; c + 4 <= ch; c += 4)
    s1_channels8(4, 0, 0, x + c * P, P, w + c * taps, bias ? bias + c : NULL, s.taps, s.nb, s.msk,
                 s.off, clamp, vlo, vhi, y + c * P);
  for (; c < ch; c++)
    s1_channels8(1, 0, 0, x + c * P, P, w + c * taps, bias ? bias + c : NULL, s.taps, s.nb, s.msk,
                 s.off, clamp, vlo, vhi, y + c * P);
  return 1;
}

/* Stride 2: per block of 8 outputs and image row a window of 24 floats from
 * column ws = 2*b0 - pw (zeros outside the row); tap column j's inputs are
 * elements e = 2l + j*dw, taken from window vector e / 8 by one permute each
 * and blended. */
typedef struct {
  __m256i idx[S2_MAX_KW];            /* e % 8 */
  __m256i from_b[S2_MAX_KW], from_c[S2_MAX_KW]; /* lanes whose e is in 8..15, 16..23 */
  int uses_c[S2_MAX_KW];
  ptrdiff_t ws[S2_MAX_BLOCKS];
  __m256i ma[S2_MAX_BLOCKS], mb[S2_MAX_BLOCKS], mc[S2_MAX_BLOCKS];
  int nbk;
} s2_geom8;

static int s2_prepare8(const vmc_conv_geom *g, s2_geom8 *s) {
  if (g->sw != 2 || g->kw > S2_MAX_KW || g->ow > 8 * S2_MAX_BLOCKS || 14 + (g->kw - 1) * g->dw > 23)
    return 0;
  for (int j = 0; j < g->kw; j++) {
    int idx[8], fb[8], fc[8], any_c = 0;
    for (int l = 0; l < 8; l++) {
      const int e = 2 * l + j * g->dw;
      idx[l] = e % 8;
      fb[l] = e / 8 == 1 ? -1 : 0;
      fc[l] = e / 8 == 2 ? -1 : 0;
      any_c |= fc[l];
    }
    s->idx[j] = _mm256_loadu_si256((const __m256i *)idx);
    s->from_b[j] = _mm256_loadu_si256((const __m256i *)fb);
    s->from_c[j] = _mm256_loadu_si256((const __m256i *)fc);
    s->uses_c[j] = any_c != 0;
  }
  s->nbk = (g->ow + 7) / 8;
  for (int bo = 0; bo < s->nbk; bo++) {
    const int ws = 16 * bo - g->pw;
    int m[24];
    for (int e = 0; e < 24; e++) m[e] = ws + e >= 0 && ws + e < g->w ? -1 : 0;
    s->ws[bo] = ws;
    s->ma[bo] = _mm256_loadu_si256((const __m256i *)m);
    s->mb[bo] = _mm256_loadu_si256((const __m256i *)(m + 8));
    s->mc[bo] = _mm256_loadu_si256((const __m256i *)(m + 16));
  }
  return 1;
}

INLINE __m256 s2_gather8(const s2_geom8 *s, int j, __m256 va, __m256 vb, __m256 vc) {
  __m256 v = _mm256_permutevar8x32_ps(va, s->idx[j]);
  v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(vb, s->idx[j]), _mm256_castsi256_ps(s->from_b[j]));
  if (s->uses_c[j])
    v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(vc, s->idx[j]),
                         _mm256_castsi256_ps(s->from_c[j]));
  return v;
}

INLINE void s2_channels8(const int NC, const float *x, const vmc_conv_geom *g, const float *w,
                         const float *bias, const s2_geom8 *s, int clamp, __m256 lo, __m256 hi,
                         float *y) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
  for (int oy = 0; oy < g->oh; oy++)
    for (int bo = 0; bo < s->nbk; bo++) {
      const int b0 = 8 * bo, nb = g->ow - b0 < 8 ? g->ow - b0 : 8;
      __m256 acc[4];
      for (int k = 0; k < NC; k++) acc[k] = _mm256_set1_ps(bias ? bias[k] : 0.0f);
      for (int i = 0; i < g->kh; i++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        const float *win = at_offset(x + (size_t)iy * g->w, s->ws[bo]);
        __m256 va[4], vb[4], vc[4];
        for (int k = 0; k < NC; k++) {
          const float *wk = win + k * in_plane;
          va[k] = _mm256_maskload_ps(wk, s->ma[bo]);
          vb[k] = _mm256_maskload_ps(wk + 8, s->mb[bo]);
          vc[k] = _mm256_maskload_ps(wk + 16, s->mc[bo]);
        }
        for (int j = 0; j < g->kw; j++)
          for (int k = 0; k < NC; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(w[(size_t)k * taps + i * g->kw + j]),
                                     s2_gather8(s, j, va[k], vb[k], vc[k]), acc[k]);
      }
      float *yr = y + (size_t)oy * g->ow + b0;
      for (int k = 0; k < NC; k++)
        store8(yr + k * out_plane, (1u << nb) - 1, finish8(acc[k], clamp, lo, hi));
    }
}

static int planes8_s2(const float *x, int ch, const float *w, const float *bias,
                      const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  s2_geom8 s;
  if (!s2_prepare8(g, &s)) return 0;
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const size_t taps = (size_t)g->kh * g->kw;
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  int c = 0;
  for (; c + 4 <= ch; c += 4)
    s2_channels8(4, x + c * in_plane, g, w + c * taps, bias ? bias + c : NULL, &s, clamp, vlo,
                 vhi, y + c * out_plane);
  for (; c < ch; c++)
    s2_channels8(1, x + c * in_plane, g, w + c * taps, bias ? bias + c : NULL, &s, clamp, vlo,
                 vhi, y + c * out_plane);
  return 1;
}

int vmc_dwconv_planes__avx2(const float *x, int ch, const float *w, const float *bias,
                            const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  if (ch < 1 || g->oh < 1 || g->ow < 1) return 0;
  if (g->sh == 1 && g->sw == 1) return planes8_s1(x, ch, w, bias, g, clamp, lo, hi, y);
  return planes8_s2(x, ch, w, bias, g, clamp, lo, hi, y);
}

/* ---- backward of vmc_dwconv_planes, 8 lanes (the avx512 variant's scheme) ------- */
static float hsum8(__m256 v) { return sum8(v); }

INLINE void s1_dw_channels8(const int NC, const float *x, const float *dy, const s1_geom8 *s,
                            float *dw) {
  const size_t P = s->P;
  for (int t = 0; t < s->taps; t++) {
    __m256 acc[4];
    for (int k = 0; k < NC; k++) acc[k] = _mm256_setzero_ps();
    const float *xt = at_offset(x, s->off[t]);
    for (int b = 0; b < s->nb; b++) {
      const __m256i m = expand8(s->msk[(size_t)b * s->taps + t]);
      const size_t n0 = 8 * (size_t)b;
      for (int k = 0; k < NC; k++)
        acc[k] = _mm256_fmadd_ps(_mm256_maskload_ps(dy + k * P + n0, m),
                                 _mm256_maskload_ps(xt + k * P + n0, m), acc[k]);
    }
    for (int k = 0; k < NC; k++) dw[(size_t)k * s->taps + t] += hsum8(acc[k]);
  }
}

static int backward8_s1(const float *x, const float *dy, int ch, const float *w,
                        const vmc_conv_geom *g, float *dx, float *dw) {
  s1_geom8 s;
  if (!s1_prepare8(g, &s)) return 0;
  const size_t P = s.P, taps = (size_t)s.taps;
  const __m256 z = _mm256_setzero_ps();
  int c = 0;
  for (; c + 4 <= ch; c += 4) s1_dw_channels8(4, x + c * P, dy + c * P, &s, dw + c * taps);
  for (; c < ch; c++) s1_dw_channels8(1, x + c * P, dy + c * P, &s, dw + c * taps);
  if (!dx) return 1;
  for (c = 0; c + 4 <= ch; c += 4)
    s1_channels8(4, 1, 1, dy + c * P, P, w + c * taps, NULL, s.taps, s.nb, s.msk, s.off, 0, z, z,
                 dx + c * P);
  for (; c < ch; c++)
    s1_channels8(1, 1, 1, dy + c * P, P, w + c * taps, NULL, s.taps, s.nb, s.msk, s.off, 0, z, z,
                 dx + c * P);
  return 1;
}

/* Stride 2: dw from the forward's window gather; dx per input row, each
 * parity a short correlation of the dY row, interleaved. */
#define S2_MAX_QBLOCKS 32 /* 16-column blocks: w <= 512 */

INLINE void s2_dw_channels8(const int NC, const vmc_conv_geom *g, const s2_geom8 *s,
                            const float *x, const float *dy, float *dw) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
  for (int i = 0; i < g->kh; i++)
    for (int j = 0; j < g->kw; j++) {
      __m256 acc[4];
      for (int k = 0; k < NC; k++) acc[k] = _mm256_setzero_ps();
      for (int oy = 0; oy < g->oh; oy++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        for (int bo = 0; bo < s->nbk; bo++) {
          const int b0 = 8 * bo, nb = g->ow - b0 < 8 ? g->ow - b0 : 8;
          const __m256i keep = expand8((1u << nb) - 1);
          const float *win = at_offset(x + (size_t)iy * g->w, s->ws[bo]);
          const float *dyr = dy + (size_t)oy * g->ow + b0;
          for (int k = 0; k < NC; k++) {
            const float *wk = win + k * in_plane;
            const __m256 v = s2_gather8(s, j, _mm256_maskload_ps(wk, s->ma[bo]),
                                        _mm256_maskload_ps(wk + 8, s->mb[bo]),
                                        _mm256_maskload_ps(wk + 16, s->mc[bo]));
            acc[k] = _mm256_fmadd_ps(_mm256_maskload_ps(dyr + k * out_plane, keep), v, acc[k]);
          }
        }
      }
      for (int k = 0; k < NC; k++) dw[(size_t)k * taps + i * g->kw + j] += hsum8(acc[k]);
    }
}

typedef struct {
  uint8_t dmask[S2_MAX_QBLOCKS][2][S2_MAX_KW]; /* dY lanes of block q, parity p, column j */
  ptrdiff_t shift[2][S2_MAX_KW];
  int nq;
} s2_dx_geom8;

INLINE void s2_dx_channels8(const int NC, const vmc_conv_geom *g, const s2_dx_geom8 *s,
                            const float *w, const float *dy, float *dx) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
  for (int iy = 0; iy < g->h; iy++)
    for (int q = 0; q < s->nq; q++) {
      __m256 e[2][4];
      for (int k = 0; k < NC; k++) e[0][k] = e[1][k] = _mm256_setzero_ps();
      int any = 0;
      for (int i = 0; i < g->kh; i++) {
        const int t = iy + g->ph - i * g->dh;
        if (t < 0 || t % g->sh || t / g->sh >= g->oh) continue;
        const float *dyr = dy + (size_t)(t / g->sh) * g->ow + 8 * q;
        any = 1;
        for (int p = 0; p < 2; p++)
          for (int j = 0; j < g->kw; j++) {
            if (!s->dmask[q][p][j]) continue;
            const __m256i m = expand8(s->dmask[q][p][j]);
            const float *src = at_offset(dyr, s->shift[p][j]);
            for (int k = 0; k < NC; k++)
              e[p][k] = _mm256_fmadd_ps(_mm256_set1_ps(w[(size_t)k * taps + i * g->kw + j]),
                                        _mm256_maskload_ps(src + k * out_plane, m), e[p][k]);
          }
      }
      if (!any) continue;
      const int left = g->w - 16 * q;
      const unsigned klo = left >= 8 ? 0xffu : (1u << left) - 1;
      const unsigned khi = left >= 16 ? 0xffu : left <= 8 ? 0u : (1u << (left - 8)) - 1;
      for (int k = 0; k < NC; k++) {
        const __m256 lo = _mm256_unpacklo_ps(e[0][k], e[1][k]), hi = _mm256_unpackhi_ps(e[0][k], e[1][k]);
        float *d = dx + k * in_plane + (size_t)iy * g->w + 16 * q;
        const __m256i mlo = expand8(klo);
        store8(d, klo, _mm256_add_ps(_mm256_maskload_ps(d, mlo), _mm256_permute2f128_ps(lo, hi, 0x20)));
        if (khi) {
          const __m256i mhi = expand8(khi);
          store8(d + 8, khi,
                 _mm256_add_ps(_mm256_maskload_ps(d + 8, mhi), _mm256_permute2f128_ps(lo, hi, 0x31)));
        }
      }
    }
}

static int backward8_s2(const float *x, const float *dy, int ch, const float *w,
                        const vmc_conv_geom *g, float *dx, float *dw) {
  s2_geom8 s;
  if (!s2_prepare8(g, &s) || (dx && g->w > 16 * S2_MAX_QBLOCKS)) return 0;
  s2_dx_geom8 sx;
  sx.nq = (g->w + 15) / 16;
  for (int p = 0; p < 2; p++)
    for (int j = 0; j < g->kw; j++) {
      const int num = p + g->pw - j * g->dw;
      sx.shift[p][j] = num / 2; /* exact where used: num even */
      for (int q = 0; q < sx.nq; q++) {
        unsigned m = 0;
        for (int l = 0; l < 8 && num % 2 == 0; l++) {
          const int ox = 8 * q + l + num / 2, ix = 2 * (8 * q + l) + p;
          if (ox >= 0 && ox < g->ow && ix < g->w) m |= 1u << l;
        }
        sx.dmask[q][p][j] = (uint8_t)m;
      }
    }
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const size_t taps = (size_t)g->kh * g->kw;
  int c = 0;
  for (; c + 4 <= ch; c += 4) {
    s2_dw_channels8(4, g, &s, x + c * in_plane, dy + c * out_plane, dw + c * taps);
    if (dx) s2_dx_channels8(4, g, &sx, w + c * taps, dy + c * out_plane, dx + c * in_plane);
  }
  for (; c < ch; c++) {
    s2_dw_channels8(1, g, &s, x + c * in_plane, dy + c * out_plane, dw + c * taps);
    if (dx) s2_dx_channels8(1, g, &sx, w + c * taps, dy + c * out_plane, dx + c * in_plane);
  }
  return 1;
}

int vmc_dwconv_planes_backward__avx2(const float *x, const float *dy, int ch, const float *w,
                                     const vmc_conv_geom *g, float *dx, float *dw) {
  if (ch < 1 || g->oh < 1 || g->ow < 1) return 0;
  if (g->sh == 1 && g->sw == 1) return backward8_s1(x, dy, ch, w, g, dx, dw);
  return backward8_s2(x, dy, ch, w, g, dx, dw);
}
