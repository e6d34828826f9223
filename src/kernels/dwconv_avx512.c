/* Depthwise "wide" convolution, AVX-512F (see dwconv_simd.h). */
#include <immintrin.h>

#define VL 16
typedef __m512 vec;
#define VZERO() _mm512_setzero_ps()
#define VSET1(s) _mm512_set1_ps(s)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
#define FN(name) name##__avx512
#include "kernels/dwconv_simd.h"

#include <stddef.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define UNROLL4 _Pragma("unroll")
#else
#define UNROLL4 _Pragma("GCC unroll 4")
#endif

/* ---- stride 2 ---------------------------------------------------------------
 * A block of 16 output columns (b0, b0 + 1, ...) keeps its accumulator in a
 * register across all taps.  Tap column j's 16 inputs x[2*ox + off] are one
 * masked 32-float load from the first in-bounds column and a two-source
 * permute picking the even elements; lanes whose input is padding are
 * zeroed by the permute's mask, so nothing outside the row's valid span is
 * read.  s2_column works out that load for one block and tap column (the
 * same for every row and channel). */
typedef struct {
  int used;          /* some lane of the block has its input in the row */
  int col;           /* the first column loaded */
  int shift;         /* output lanes before the first in-bounds one */
  __mmask16 ma, mb;  /* valid elements of the two 16-float halves */
  __mmask16 lanes;   /* output lanes with their input in the row */
} s2_col;

static s2_col s2_column(const vmc_conv_geom *g, int b0, int nb, int j) {
  s2_col c = {0};
  const int off = j * g->dw - g->pw;
  /* Columns ox in [lo, hi) of this block read x[2*ox + off] in bounds. */
  int lo = off < 0 ? (-off + 1) / 2 : 0, hi = (g->w - off - 1) / 2 + 1;
  if (g->w - off <= 0) hi = 0;
  if (lo < b0) lo = b0;
  if (hi > b0 + nb) hi = b0 + nb;
  if (lo >= hi) return c;
  /* Element e of the load is column 2*lo + off + e; lane l (ox = b0 + l)
   * wants e = 2*(b0 + l - lo). */
  const int span = 2 * (hi - lo) - 1; /* floats needed */
  c.used = 1;
  c.col = 2 * lo + off;
  c.shift = lo - b0;
  c.ma = (__mmask16)(span >= 16 ? 0xffff : (1u << span) - 1);
  c.mb = (__mmask16)(span > 16 ? (1u << (span - 16)) - 1 : 0);
  c.lanes = (__mmask16)(((1u << (hi - b0)) - 1) & ~((1u << c.shift) - 1));
  return c;
}

/* The 16 inputs of one tap column from image row xr (zeros where padding). */
INLINE __m512 s2_tap(const float *xr, const s2_col *c) {
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512 a = _mm512_maskz_loadu_ps(c->ma, xr + c->col);
  const __m512 b = c->mb ? _mm512_maskz_loadu_ps(c->mb, xr + c->col + 16) : _mm512_setzero_ps();
  const __m512i idx = _mm512_sub_epi32(even, _mm512_set1_epi32(2 * c->shift));
  return _mm512_maskz_permutex2var_ps(c->lanes, a, idx, b);
}

/* Strided depthwise forward (vmc_dwconv_forward's contract, conv.h) for
 * stride-2 rows, one channel. */
void vmc_dwconv_forward__avx512(const float *x, const float *w, float bias,
                                const vmc_conv_geom *g, float *y) {
  if (g->sw != 2) {
    vmc_dwconv_forward__ref(x, w, bias, g, y);
    return;
  }
  const int ow = g->ow;
  for (int oy = 0; oy < g->oh; oy++) {
    float *yr = y + (size_t)oy * ow;
    for (int b0 = 0; b0 < ow; b0 += 16) {
      const int nb = ow - b0 < 16 ? ow - b0 : 16;
      __m512 acc = _mm512_set1_ps(bias);
      for (int i = 0; i < g->kh; i++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        const float *xr = x + (size_t)iy * g->w;
        for (int j = 0; j < g->kw; j++) {
          const s2_col c = s2_column(g, b0, nb, j);
          if (c.used) acc = _mm512_fmadd_ps(_mm512_set1_ps(w[i * g->kw + j]), s2_tap(xr, &c), acc);
        }
      }
      _mm512_mask_storeu_ps(yr + b0, (__mmask16)((1u << nb) - 1), acc);
    }
  }
}

/* ---- all channels in one call (vmc_dwconv_planes) ------------------------------
 * NC channels at a time (4, then the rest one by one) share each block's
 * loads' masks and give four independent accumulation chains. */
#define PL_MAX_MASKS 4096
#define S2_MAX_BLOCKS 16
#define S2_MAX_KW 8

INLINE __m512 finish(__m512 v, int clamp, __m512 lo, __m512 hi) {
  return clamp ? _mm512_min_ps(_mm512_max_ps(v, lo), hi) : v; /* vmc_clampf */
}

/* Stride 1, output the input's size: each plane is one run of P pixels and
 * tap t of output n reads x[n + off[t]] where msk[b * taps + t] (block b =
 * n / 16) has n's lane.  The address of a lane outside the plane is formed
 * as an integer and never dereferenced (masked off).  Such a convolution's
 * padding is symmetric, so tap taps-1-t has offset -off[t]: with REV the
 * weights are taken in reverse, which makes it the input gradient's
 * convolution of dY (and ADD adds the result to y instead of bias). */
INLINE const float *at_offset(const float *p, ptrdiff_t off) {
  return (const float *)((uintptr_t)p + (uintptr_t)(off * (ptrdiff_t)sizeof(float)));
}

INLINE void s1_channels(const int NC, const int REV, const int ADD, const float *x, size_t P,
                        const float *w, const float *bias, int taps, int nb,
                        const __mmask16 *msk, const ptrdiff_t *off, int clamp, __m512 lo,
                        __m512 hi, float *y) {
  for (int b = 0; b < nb; b++) {
    const size_t n0 = 16 * (size_t)b;
    __m512 acc[4];
    for (int k = 0; k < NC; k++) acc[k] = _mm512_set1_ps(bias && !ADD ? bias[k] : 0.0f);
    const __mmask16 *m = msk + (size_t)b * taps;
    for (int t = 0; t < taps; t++) {
      const float *at = at_offset(x + n0, off[t]);
      const int wt = REV ? taps - 1 - t : t;
      for (int k = 0; k < NC; k++) {
        const __m512 v = _mm512_maskz_loadu_ps(m[t], at + k * P);
        acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(w[(size_t)k * taps + wt]), v, acc[k]);
      }
    }
    const __mmask16 keep = (__mmask16)(n0 + 16 <= P ? 0xffffu : (1u << (P - n0)) - 1);
    for (int k = 0; k < NC; k++) {
      float *yk = y + k * P + n0;
      const __m512 v = ADD ? _mm512_add_ps(_mm512_maskz_loadu_ps(keep, yk), acc[k])
                           : finish(acc[k], clamp, lo, hi);
      _mm512_mask_storeu_ps(yk, keep, v);
    }
  }
}

/* The tap masks and offsets of a stride-1 "same" geometry (above), or 0. */
typedef struct {
  size_t P;
  int taps, nb;
  ptrdiff_t off[DW_MAX_TAPS];
  __mmask16 msk[PL_MAX_MASKS];
} s1_geom;

static int s1_prepare(const vmc_conv_geom *g, s1_geom *s) {
  const int h = g->h, wd = g->w, taps = g->kh * g->kw;
  const size_t P = (size_t)h * wd, nb = (P + 15) / 16;
  if (g->sh != 1 || g->sw != 1 || g->oh != h || g->ow != wd || taps > DW_MAX_TAPS ||
      nb * (size_t)taps > PL_MAX_MASKS)
    return 0;
  s->P = P;
  s->taps = taps;
  s->nb = (int)nb;
  /* Pixel n = oy*w + ox of a block: oy from a float division, exact for the
   * P < 2^16 these planes have. */
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 fw = _mm512_set1_ps((float)wd);
  for (size_t b = 0; b < nb; b++) {
    const __m512i n = _mm512_add_epi32(_mm512_set1_epi32((int)(16 * b)), iota);
    const __m512i oy = _mm512_cvttps_epi32(_mm512_div_ps(_mm512_cvtepi32_ps(n), fw));
    const __m512i ox = _mm512_sub_epi32(n, _mm512_mullo_epi32(oy, _mm512_set1_epi32(wd)));
    const __mmask16 in = _mm512_cmplt_epi32_mask(n, _mm512_set1_epi32((int)P));
    for (int i = 0; i < g->kh; i++) {
      const int di = i * g->dh - g->ph;
      const __m512i iy = _mm512_add_epi32(oy, _mm512_set1_epi32(di));
      const __mmask16 rows = in & _mm512_cmpge_epi32_mask(iy, _mm512_setzero_si512()) &
                             _mm512_cmplt_epi32_mask(iy, _mm512_set1_epi32(h));
      for (int j = 0; j < g->kw; j++) {
        const int dj = j * g->dw - g->pw;
        const __m512i ix = _mm512_add_epi32(ox, _mm512_set1_epi32(dj));
        s->msk[b * taps + i * g->kw + j] = rows &
                                           _mm512_cmpge_epi32_mask(ix, _mm512_setzero_si512()) &
                                           _mm512_cmplt_epi32_mask(ix, _mm512_set1_epi32(wd));
        s->off[i * g->kw + j] = (ptrdiff_t)di * wd + dj;
      }
    }
  }
  return 1;
}

static int planes_s1(const float *x, int ch, const float *w, const float *bias,
                     const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  s1_geom s;
  if (!s1_prepare(g, &s)) return 0;
  const size_t P = s.P, taps = (size_t)s.taps;
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  int c = 0;
  for (; c + 4 <= ch; c += 4)
    s1_channels(4, 0, 0, x + c * P, P, w + c * taps, bias ? bias + c : NULL, s.taps, s.nb, s.msk,
                s.off, clamp, vlo, vhi, y + c * P);
  for (; c < ch; c++)
    s1_channels(1, 0, 0, x + c * P, P, w + c * taps, bias ? bias + c : NULL, s.taps, s.nb, s.msk,
                s.off, clamp, vlo, vhi, y + c * P);
  return 1;
}

/* Stride 2 over all channels: per block of 16 output columns and image row,
 * one window of up to 48 input floats from column ws = 2*b0 - pw (masked
 * loads: zeros outside the row), from which tap column j's inputs are
 * elements 2l + j*dw: one permute of the window's first two vectors, and
 * for lanes reaching element 32 or beyond, one more of its last two.  The
 * same floats as s2_tap gives, so the sums are those of
 * vmc_dwconv_forward__avx512 bit for bit. */
typedef struct {
  __m512i idx[S2_MAX_KW], idx2[S2_MAX_KW]; /* elements 2l + j*dw, and minus 16 */
  __mmask16 hi[S2_MAX_KW];                 /* lanes whose element is >= 32 */
  ptrdiff_t ws[S2_MAX_BLOCKS];             /* window start column per block */
  __mmask16 ma[S2_MAX_BLOCKS], mb[S2_MAX_BLOCKS], mc[S2_MAX_BLOCKS];
  unsigned char used[S2_MAX_BLOCKS][S2_MAX_KW]; /* some stored lane reads the row */
  int nbk;
} s2_geom;

/* The stride-2 geometries the kernels here take: a window's 48 floats
 * cover every tap column of 16 outputs. */
static int s2_takes(const vmc_conv_geom *g) {
  return g->sw == 2 && g->kw <= S2_MAX_KW && g->ow <= 16 * S2_MAX_BLOCKS &&
         30 + (g->kw - 1) * g->dw <= 47;
}

static int s2_prepare(const vmc_conv_geom *g, s2_geom *s) {
  if (!s2_takes(g)) return 0;
  const __m512i two_l = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int j = 0; j < g->kw; j++) {
    s->idx[j] = _mm512_add_epi32(two_l, _mm512_set1_epi32(j * g->dw));
    s->idx2[j] = _mm512_sub_epi32(s->idx[j], _mm512_set1_epi32(16));
    s->hi[j] = _mm512_cmpge_epi32_mask(s->idx[j], _mm512_set1_epi32(32));
  }
  s->nbk = (g->ow + 15) / 16;
  for (int bo = 0; bo < s->nbk; bo++) {
    const int b0 = 16 * bo, nb = g->ow - b0 < 16 ? g->ow - b0 : 16;
    const int ws = 2 * b0 - g->pw;
    s->ws[bo] = ws;
    unsigned m[3] = {0, 0, 0};
    for (int e = 0; e < 48; e++)
      if (ws + e >= 0 && ws + e < g->w) m[e / 16] |= 1u << (e % 16);
    s->ma[bo] = (__mmask16)m[0];
    s->mb[bo] = (__mmask16)m[1];
    s->mc[bo] = (__mmask16)m[2];
    for (int j = 0; j < g->kw; j++) s->used[bo][j] = s2_column(g, b0, nb, j).used != 0;
  }
  return 1;
}

/* Tap column j's 16 inputs from a row's window (s2_channels). */
INLINE __m512 s2_gather(const s2_geom *s, int j, int need_c, __m512 va, __m512 vb, __m512 vc) {
  __m512 v = _mm512_permutex2var_ps(va, s->idx[j], vb);
  if (need_c && s->hi[j])
    v = _mm512_mask_mov_ps(v, s->hi[j], _mm512_permutex2var_ps(vb, s->idx2[j], vc));
  return v;
}

INLINE void s2_channels(const int NC, const float *x, const vmc_conv_geom *g, const float *w,
                        const float *bias, const s2_geom *s, int clamp, __m512 lo, __m512 hi,
                        float *y) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
  for (int oy = 0; oy < g->oh; oy++)
    for (int bo = 0; bo < s->nbk; bo++) {
      const int b0 = 16 * bo, nb = g->ow - b0 < 16 ? g->ow - b0 : 16;
      /* lanes below nb reaching the window's third vector */
      const int need_c = 2 * (nb - 1) + (g->kw - 1) * g->dw >= 32;
      __m512 acc[4];
      for (int k = 0; k < NC; k++) acc[k] = _mm512_set1_ps(bias ? bias[k] : 0.0f);
      for (int i = 0; i < g->kh; i++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        const float *win = at_offset(x + (size_t)iy * g->w, s->ws[bo]);
        __m512 va[4], vb[4], vc[4];
        UNROLL4
        for (int k = 0; k < NC; k++) {
          const float *wk = win + k * in_plane;
          va[k] = _mm512_maskz_loadu_ps(s->ma[bo], wk);
          vb[k] = _mm512_maskz_loadu_ps(s->mb[bo], wk + 16);
          vc[k] = need_c ? _mm512_maskz_loadu_ps(s->mc[bo], wk + 32) : _mm512_setzero_ps();
        }
        for (int j = 0; j < g->kw; j++) {
          if (!s->used[bo][j]) continue;
          UNROLL4
          for (int k = 0; k < NC; k++)
            acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(w[(size_t)k * taps + i * g->kw + j]),
                                     s2_gather(s, j, need_c, va[k], vb[k], vc[k]), acc[k]);
        }
      }
      float *yr = y + (size_t)oy * g->ow + b0;
      for (int k = 0; k < NC; k++)
        _mm512_mask_storeu_ps(yr + k * out_plane, (__mmask16)((1u << nb) - 1),
                              finish(acc[k], clamp, lo, hi));
    }
}

static int planes_s2(const float *x, int ch, const float *w, const float *bias,
                     const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  s2_geom s;
  if (!s2_prepare(g, &s)) return 0;
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const size_t taps = (size_t)g->kh * g->kw;
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  int c = 0;
  for (; c + 4 <= ch; c += 4)
    s2_channels(4, x + c * in_plane, g, w + c * taps, bias ? bias + c : NULL, &s, clamp, vlo, vhi,
                y + c * out_plane);
  for (; c < ch; c++)
    s2_channels(1, x + c * in_plane, g, w + c * taps, bias ? bias + c : NULL, &s, clamp, vlo, vhi,
                y + c * out_plane);
  return 1;
}

int vmc_dwconv_planes__avx512(const float *x, int ch, const float *w, const float *bias,
                              const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  if (ch < 1 || g->oh < 1 || g->ow < 1) return 0;
  if (g->sh == 1 && g->sw == 1) return planes_s1(x, ch, w, bias, g, clamp, lo, hi, y);
  return planes_s2(x, ch, w, bias, g, clamp, lo, hi, y);
}

/* ---- backward of vmc_dwconv_planes (vmc_dwconv_planes_backward) ------------------
 * Four channels at a time, as the forward.  dw[t] is one dot product per
 * channel over the plane, dY re-read per tap from L1.  Stride 1: dx is the
 * forward's flat convolution of dY with the kernel reversed.  Stride 2: dx
 * is gathered per input row (s2_dx_channels). */

/* dw of NC channels, tap by tap, one chain per channel (kept in registers:
 * the channel loops are unrolled). */
INLINE void s1_dw_channels(const int NC, const float *x, const float *dy, const s1_geom *s,
                           float *dw) {
  const int nb = s->nb, taps = s->taps;
  const size_t P = s->P;
  for (int t = 0; t < taps; t++) {
    __m512 acc[4];
    UNROLL4
    for (int k = 0; k < NC; k++) acc[k] = _mm512_setzero_ps();
    const float *xt = at_offset(x, s->off[t]);
    for (int b = 0; b < nb; b++) {
      const __mmask16 m = s->msk[(size_t)b * taps + t];
      const size_t n0 = 16 * (size_t)b;
      UNROLL4
      for (int k = 0; k < NC; k++)
        acc[k] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dy + k * P + n0),
                                 _mm512_maskz_loadu_ps(m, xt + k * P + n0), acc[k]);
    }
    UNROLL4
    for (int k = 0; k < NC; k++) dw[(size_t)k * taps + t] += _mm512_reduce_add_ps(acc[k]);
  }
}

static int backward_s1(const float *x, const float *dy, int ch, const float *w,
                       const vmc_conv_geom *g, float *dx, float *dw) {
  s1_geom s;
  if (!s1_prepare(g, &s)) return 0;
  const size_t P = s.P, taps = (size_t)s.taps;
  const __m512 z = _mm512_setzero_ps();
  int c = 0;
  for (; c + 4 <= ch; c += 4) s1_dw_channels(4, x + c * P, dy + c * P, &s, dw + c * taps);
  for (; c < ch; c++) s1_dw_channels(1, x + c * P, dy + c * P, &s, dw + c * taps);
  if (!dx) return 1;
  c = 0;
  for (; c + 4 <= ch; c += 4)
    s1_channels(4, 1, 1, dy + c * P, P, w + c * taps, NULL, s.taps, s.nb, s.msk, s.off, 0, z, z,
                dx + c * P);
  for (; c < ch; c++)
    s1_channels(1, 1, 1, dy + c * P, P, w + c * taps, NULL, s.taps, s.nb, s.msk, s.off, 0, z, z,
                dx + c * P);
  return 1;
}

/* dx of a stride-2 row, gathered: input column 2m + p (parity p) takes
 * w[i][j] * dY[oy][m + (p + pw - j*dw) / 2] from every tap column j of its
 * parity, so each parity is a short correlation of the dY row (masked
 * shifted loads), and the two are interleaved into 32 input columns.  All
 * tap rows reaching input row iy are summed before one add into it.  NC
 * channels at a time share the bookkeeping (these planes are small). */
#define S2_MAX_QBLOCKS 16 /* 32-column blocks: w <= 512 */

typedef struct {
  __mmask16 dmask[S2_MAX_QBLOCKS][2][S2_MAX_KW]; /* dY lanes of block q, parity p, column j */
  ptrdiff_t shift[2][S2_MAX_KW];
  int nq;
} s2_dx_geom;

INLINE void s2_dx_parity(const int NC, const int p, const vmc_conv_geom *g, const s2_dx_geom *s,
                         int q, int i, const float *dyr, size_t out_plane, const float *w,
                         int taps, __m512 *e) {
  for (int j = 0; j < g->kw; j++) {
    const __mmask16 m = s->dmask[q][p][j];
    if (!m) continue;
    const float *src = at_offset(dyr, s->shift[p][j]);
    UNROLL4
    for (int k = 0; k < NC; k++)
      e[k] = _mm512_fmadd_ps(_mm512_set1_ps(w[(size_t)k * taps + i * g->kw + j]),
                             _mm512_maskz_loadu_ps(m, src + k * out_plane), e[k]);
  }
}

INLINE void s2_dx_channels(const int NC, const vmc_conv_geom *g, const s2_dx_geom *s,
                           const float *w, const float *dy, float *dx) {
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
  for (int iy = 0; iy < g->h; iy++)
    for (int q = 0; q < s->nq; q++) {
      __m512 e0[4], e1[4];
      UNROLL4
      for (int k = 0; k < NC; k++) e0[k] = e1[k] = _mm512_setzero_ps();
      int any = 0;
      for (int i = 0; i < g->kh; i++) {
        const int t = iy + g->ph - i * g->dh;
        if (t < 0 || t % g->sh || t / g->sh >= g->oh) continue;
        const float *dyr = dy + (size_t)(t / g->sh) * g->ow + 16 * q;
        s2_dx_parity(NC, 0, g, s, q, i, dyr, out_plane, w, taps, e0);
        s2_dx_parity(NC, 1, g, s, q, i, dyr, out_plane, w, taps, e1);
        any = 1;
      }
      if (!any) continue;
      const int left = g->w - 32 * q;
      const __mmask16 klo = (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1);
      const __mmask16 khi =
          (__mmask16)(left >= 32 ? 0xffffu : left <= 16 ? 0u : (1u << (left - 16)) - 1);
      UNROLL4
      for (int k = 0; k < NC; k++) {
        float *d = dx + k * in_plane + (size_t)iy * g->w + 32 * q;
        _mm512_mask_storeu_ps(d, klo, _mm512_add_ps(_mm512_maskz_loadu_ps(klo, d),
                                                    _mm512_permutex2var_ps(e0[k], ilo, e1[k])));
        if (khi)
          _mm512_mask_storeu_ps(d + 16, khi,
                                _mm512_add_ps(_mm512_maskz_loadu_ps(khi, d + 16),
                                              _mm512_permutex2var_ps(e0[k], ihi, e1[k])));
      }
    }
}

/* dw of NC channels, tap by tap: one chain per channel. */
INLINE void s2_dw_channels(const int NC, const vmc_conv_geom *g,
                           const s2_col (*cols)[S2_MAX_KW], int nbk, const float *x,
                           const float *dy, float *dw) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
  for (int i = 0; i < g->kh; i++)
    for (int j = 0; j < g->kw; j++) {
      __m512 acc[4];
      UNROLL4
      for (int k = 0; k < NC; k++) acc[k] = _mm512_setzero_ps();
      for (int oy = 0; oy < g->oh; oy++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        for (int bo = 0; bo < nbk; bo++) {
          const s2_col *col = &cols[bo][j];
          if (!col->used) continue;
          const int b0 = 16 * bo, nb = g->ow - b0 < 16 ? g->ow - b0 : 16;
          const __mmask16 keep = (__mmask16)((1u << nb) - 1);
          const float *dyr = dy + (size_t)oy * g->ow + b0, *xr = x + (size_t)iy * g->w;
          UNROLL4
          for (int k = 0; k < NC; k++)
            acc[k] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(keep, dyr + k * out_plane),
                                     s2_tap(xr + k * in_plane, col), acc[k]);
        }
      }
      UNROLL4
      for (int k = 0; k < NC; k++) dw[(size_t)k * taps + i * g->kw + j] += _mm512_reduce_add_ps(acc[k]);
    }
}

static int backward_s2(const float *x, const float *dy, int ch, const float *w,
                       const vmc_conv_geom *g, float *dx, float *dw) {
  if (!s2_takes(g) || (dx && g->w > 32 * S2_MAX_QBLOCKS)) return 0;
  s2_col cols[S2_MAX_BLOCKS][S2_MAX_KW];
  const int nbk = (g->ow + 15) / 16;
  for (int bo = 0; bo < nbk; bo++)
    for (int j = 0; j < g->kw; j++)
      cols[bo][j] = s2_column(g, 16 * bo, g->ow - 16 * bo < 16 ? g->ow - 16 * bo : 16, j);
  s2_dx_geom sx;
  sx.nq = (g->w + 31) / 32;
  for (int p = 0; p < 2; p++)
    for (int j = 0; j < g->kw; j++) {
      const int num = p + g->pw - j * g->dw;
      sx.shift[p][j] = num / 2; /* exact where used: num even */
      for (int q = 0; q < sx.nq; q++) {
        unsigned m = 0;
        for (int l = 0; l < 16 && num % 2 == 0; l++) {
          const int ox = 16 * q + l + num / 2, ix = 2 * (16 * q + l) + p;
          if (ox >= 0 && ox < g->ow && ix < g->w) m |= 1u << l;
        }
        sx.dmask[q][p][j] = (__mmask16)m;
      }
    }
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const size_t taps = (size_t)g->kh * g->kw;
  int c = 0;
  for (; c + 4 <= ch; c += 4) {
    s2_dw_channels(4, g, cols, nbk, x + c * in_plane, dy + c * out_plane, dw + c * taps);
    if (dx) s2_dx_channels(4, g, &sx, w + c * taps, dy + c * out_plane, dx + c * in_plane);
  }
  for (; c < ch; c++) {
    s2_dw_channels(1, g, cols, nbk, x + c * in_plane, dy + c * out_plane, dw + c * taps);
    if (dx) s2_dx_channels(1, g, &sx, w + c * taps, dy + c * out_plane, dx + c * in_plane);
  }
  return 1;
}

int vmc_dwconv_planes_backward__avx512(const float *x, const float *dy, int ch, const float *w,
                                       const vmc_conv_geom *g, float *dx, float *dw) {
  if (ch < 1 || g->oh < 1 || g->ow < 1) return 0;
  if (g->sh == 1 && g->sw == 1) return backward_s1(x, dy, ch, w, g, dx, dw);
  return backward_s2(x, dy, ch, w, g, dx, dw);
}
