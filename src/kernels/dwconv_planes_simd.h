/* vmc_dwconv_planes and its backward (conv.h), one body for every SIMD
 * width: every channel of an image in one call, straight from the unpadded
 * planes.  The including file defines, besides dwconv_simd.h's VL, vec,
 * VZERO(), VSET1(s), VFMA(a, b, c), VSUM(v):
 *   lmask               an unsigned type holding VL lane bits
 *   VADD(a, b) VMIN(a, b) VMAX(a, b)
 *   VMLOAD(m, p)        the lanes in m from p, zeros elsewhere; no other
 *                       lane is read (it may lie outside the plane)
 *   VMSTORE(p, m, v)    store the lanes in m
 *   vint VI_SET1(i) VI_ADD(a, b) VI_SUB(a, b) VI_MULLO(a, b) VI_IOTA()
 *   VI_LT(a, b)         lmask of the lanes with a < b (signed)
 *   VI_DIV(n, w)        n / w for 0 <= n < 2^16 (through a float division:
 *                       exact there)
 *   VINTERLEAVE(a, b, lo, hi)   lo = a0 b0 a1 b1 ... (VL lanes), hi the rest
 *   s2_lanes            per tap column j, what s2_gather needs, made by
 *                       s2_lanes_prepare(s2_lanes *, const vmc_conv_geom *)
 *   s2_gather(s, j, need_c, va, vb, vc)   tap column j's VL inputs, elements
 *                       2l + j*dw of the 3*VL-float window va vb vc (vc
 *                       unread unless need_c)
 *   PLANES(name)        the variant's name for name
 * and it may define S2_PAIRS, with
 *   VEVENS_SCR(lo, hi) VODDS_SCR(lo, hi)   the even (odd) floats of lo's VL
 *                       then hi's VL, in an order of the lanes the variant
 *                       chooses (the same for both)
 *   VUNSCRAMBLE(v)      that order back to the natural one
 *   vmask VMASK(m) VMLOADV(mv, p)   VMLOAD's mask made once, and the load
 * for the stride-2 forward and dw of 3-wide undilated kernels below.
 *
 * Stride 1 with the output the input's size ("same" padding): each plane is
 * one run of P pixels; tap t of output n reads x[n + off[t]] where lane
 * n % VL of msk[(n / VL) * taps + t] is set (the tap lands in the plane).
 * The masks are made once per call and shared by all channels.  Such a
 * convolution's padding is symmetric, so tap taps-1-t has offset -off[t]:
 * the input gradient is the same flat convolution of dY with the kernel
 * reversed.
 *
 * Stride 2: per block of VL output columns and image row, one window of
 * 3*VL input floats from column ws = 2*b0 - pw (masked loads: zeros outside
 * the row), from which s2_gather takes each tap column's inputs.  With
 * S2_PAIRS the forward and dw of a 3-wide undilated kernel instead load
 * two pairs of vectors, 2*VL floats from ws and from ws + 2: tap columns 0
 * and 1 take the first pair's even and odd floats, column 2 the second's
 * evens, one shuffle each, where a gather takes up to three permutes and
 * two blends.  The accumulators then hold the lanes in the shuffles' order,
 * put back before the store or the sum (the same floats).  The input
 * gradient is gathered per input row: column 2m + p (parity p) takes
 * w[i][j] * dY[oy][m + (p + pw - j*dw) / 2] from the tap columns j of its
 * parity, so each parity is a short correlation of the dY row, and the two
 * are interleaved.
 *
 * Four channels at a time (then the rest one by one) share the bookkeeping
 * and give independent accumulation chains; the channel loops are unrolled
 * so the chains stay in registers. */
#include <stddef.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define UNROLL4 _Pragma("unroll")
#else
#define UNROLL4 _Pragma("GCC unroll 4")
#endif

#define PL_MAX_MASKS 4096           /* stride-1 blocks x taps */
#define S2_MAX_KW 8                 /* stride-2 tap columns */
#define S2_MAX_BLOCKS (256 / VL)    /* stride-2 output blocks: ow <= 256 */
#define S2_MAX_QBLOCKS (512 / (2 * VL)) /* stride-2 dx: input rows of <= 512 */
#define LANES_ALL ((lmask)((1u << VL) - 1))

static inline lmask lanes_below(long n) {
  return (lmask)(n >= VL ? LANES_ALL : n <= 0 ? 0u : (1u << n) - 1);
}

/* p + off floats, formed as an integer: a lane outside the plane is never
 * dereferenced (masked off), but its address is not a C pointer into it. */
INLINE const float *at_offset(const float *p, ptrdiff_t off) {
  return (const float *)((uintptr_t)p + (uintptr_t)(off * (ptrdiff_t)sizeof(float)));
}

INLINE vec finish(vec v, const vmc_dwconv_epi *e) {
  return e->clamp ? VMIN(VMAX(v, VSET1(e->lo)), VSET1(e->hi)) : v; /* vmc_clampf */
}

/* ---- stride 1 ---------------------------------------------------------------- */
typedef struct {
  size_t P;
  int taps, nb;
  ptrdiff_t off[DW_MAX_TAPS];
  lmask msk[PL_MAX_MASKS];
} s1_geom;

static int s1_prepare(const vmc_conv_geom *g, s1_geom *s) {
  const int h = g->h, wd = g->w, taps = g->kh * g->kw;
  const size_t P = (size_t)h * wd, nb = (P + VL - 1) / VL;
  if (g->sh != 1 || g->sw != 1 || g->oh != h || g->ow != wd || taps > DW_MAX_TAPS ||
      nb * (size_t)taps > PL_MAX_MASKS)
    return 0; /* P <= VL * 4096 < 2^16 from here on */
  s->P = P;
  s->taps = taps;
  s->nb = (int)nb;
  const vint zero = VI_SET1(0), vh = VI_SET1(h), vw = VI_SET1(wd);
  for (size_t b = 0; b < nb; b++) {
    const vint n = VI_ADD(VI_SET1((int)(VL * b)), VI_IOTA());
    const vint oy = VI_DIV(n, wd), ox = VI_SUB(n, VI_MULLO(oy, vw));
    const lmask in = VI_LT(n, VI_SET1((int)P));
    for (int i = 0; i < g->kh; i++) {
      const int di = i * g->dh - g->ph;
      const vint iy = VI_ADD(oy, VI_SET1(di));
      const lmask rows = in & (lmask)~VI_LT(iy, zero) & VI_LT(iy, vh);
      for (int j = 0; j < g->kw; j++) {
        const int dj = j * g->dw - g->pw;
        const vint ix = VI_ADD(ox, VI_SET1(dj));
        s->msk[b * taps + i * g->kw + j] = rows & (lmask)~VI_LT(ix, zero) & VI_LT(ix, vw);
        s->off[i * g->kw + j] = (ptrdiff_t)di * wd + dj;
      }
    }
  }
  return 1;
}

/* y = the flat convolution of NC planes of x with their kernels (REV:
 * reversed), from the bias (or, ADD, added to y). */
INLINE void s1_channels(const int NC, const int REV, const int ADD, const float *x,
                        const float *w, const vmc_dwconv_epi *e, const float *bias,
                        const s1_geom *s, float *y) {
  const size_t P = s->P;
  const int taps = s->taps, nb = s->nb;
  const ptrdiff_t *off = s->off;
  for (int b = 0; b < nb; b++) {
    const size_t n0 = VL * (size_t)b;
    vec acc[4];
    UNROLL4
    for (int k = 0; k < NC; k++) acc[k] = VSET1(bias && !ADD ? bias[k] : 0.0f);
    const lmask *m = s->msk + (size_t)b * taps;
    for (int t = 0; t < taps; t++) {
      const float *at = at_offset(x + n0, off[t]);
      const int wt = REV ? taps - 1 - t : t;
      UNROLL4
      for (int k = 0; k < NC; k++)
        acc[k] = VFMA(VSET1(w[(size_t)k * taps + wt]), VMLOAD(m[t], at + k * P), acc[k]);
    }
    const lmask keep = lanes_below((long)(P - n0));
    UNROLL4
    for (int k = 0; k < NC; k++) {
      float *yk = y + k * P + n0;
      VMSTORE(yk, keep, ADD ? VADD(VMLOAD(keep, yk), acc[k]) : finish(acc[k], e));
    }
  }
}

/* dw of NC channels, tap by tap, one chain per channel. */
INLINE void s1_dw_channels(const int NC, const float *x, const float *dy, const s1_geom *s,
                           float *dw) {
  const size_t P = s->P;
  for (int t = 0; t < s->taps; t++) {
    vec acc[4];
    UNROLL4
    for (int k = 0; k < NC; k++) acc[k] = VZERO();
    const float *xt = at_offset(x, s->off[t]);
    for (int b = 0; b < s->nb; b++) {
      const lmask m = s->msk[(size_t)b * s->taps + t];
      const size_t n0 = VL * (size_t)b;
      UNROLL4
      for (int k = 0; k < NC; k++)
        acc[k] = VFMA(VMLOAD(m, dy + k * P + n0), VMLOAD(m, xt + k * P + n0), acc[k]);
    }
    UNROLL4
    for (int k = 0; k < NC; k++) dw[(size_t)k * s->taps + t] += VSUM(acc[k]);
  }
}

/* ---- stride 2 ---------------------------------------------------------------- */
typedef struct {
  s2_lanes lanes;
  int nbk;
  ptrdiff_t ws[S2_MAX_BLOCKS];                   /* window start column */
  lmask ma[S2_MAX_BLOCKS], mb[S2_MAX_BLOCKS], mc[S2_MAX_BLOCKS]; /* window columns in the row */
  unsigned char used[S2_MAX_BLOCKS][S2_MAX_KW];  /* some stored lane reads the row */
#ifdef S2_PAIRS
  int pairs3;                                    /* kw == 3, dw == 1: by pairs */
  lmask pm[S2_MAX_BLOCKS][2][2];                 /* pair q's columns in the row */
#endif
} s2_geom;

static int s2_prepare(const vmc_conv_geom *g, s2_geom *s) {
  if (g->sw != 2 || g->kw > S2_MAX_KW || g->ow > VL * S2_MAX_BLOCKS ||
      2 * (VL - 1) + (g->kw - 1) * g->dw > 3 * VL - 1)
    return 0;
  s2_lanes_prepare(&s->lanes, g);
  s->nbk = (g->ow + VL - 1) / VL;
  for (int bo = 0; bo < s->nbk; bo++) {
    const int b0 = VL * bo, nb = g->ow - b0 < VL ? g->ow - b0 : VL, ws = 2 * b0 - g->pw;
    unsigned m[3] = {0, 0, 0};
    for (int e = 0; e < 3 * VL; e++)
      if (ws + e >= 0 && ws + e < g->w) m[e / VL] |= 1u << (e % VL);
    s->ws[bo] = ws;
    s->ma[bo] = (lmask)m[0];
    s->mb[bo] = (lmask)m[1];
    s->mc[bo] = (lmask)m[2];
    for (int j = 0; j < g->kw; j++) {
      s->used[bo][j] = 0;
      for (int l = 0; l < nb; l++) {
        const int col = ws + 2 * l + j * g->dw;
        if (col >= 0 && col < g->w) s->used[bo][j] = 1;
      }
    }
#ifdef S2_PAIRS
    for (int q = 0; q < 2; q++)
      for (int h = 0; h < 2; h++) {
        unsigned mq = 0;
        for (int e = 0; e < VL; e++) {
          const int col = ws + 2 * q + h * VL + e;
          if (col >= 0 && col < g->w) mq |= 1u << e;
        }
        s->pm[bo][q][h] = (lmask)mq;
      }
#endif
  }
#ifdef S2_PAIRS
  s->pairs3 = g->kw == 3 && g->dw == 1;
#endif
  return 1;
}

/* Lanes below nb of block bo reach the window's third vector. */
static inline int s2_need_c(const vmc_conv_geom *g, int nb) {
  return 2 * (nb - 1) + (g->kw - 1) * g->dw >= 2 * VL;
}

/* The forward of NC channels: each tap column's inputs gathered from the
 * window, or with PAIRS (S2_PAIRS, a 3-wide undilated kernel) split from
 * two pairs of vectors (the header): tap columns 0 and 1 take pair 0's
 * evens and odds, column 2 pair 1's evens.  Both make the same FMAs in the
 * same order, so the same floats. */
#ifdef S2_PAIRS
#define S2_OUT(PAIRS, v) ((PAIRS) ? VUNSCRAMBLE(v) : (v))
/* The pairs' masks of every block, made once per call. */
INLINE void s2_pair_masks(const s2_geom *s, vmask pmv[][4]) {
  for (int bo = 0; bo < s->nbk; bo++)
    for (int q = 0; q < 4; q++) pmv[bo][q] = VMASK(s->pm[bo][q / 2][q % 2]);
}
#else
#define S2_OUT(PAIRS, v) (v)
#endif
INLINE void s2_channels(const int NC, const int PAIRS, const float *x, const float *w,
                        const vmc_dwconv_epi *e, const float *bias, const vmc_conv_geom *g,
                        const s2_geom *s, float *y) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
#ifdef S2_PAIRS
  vmask pmv[S2_MAX_BLOCKS][4];
  if (PAIRS) s2_pair_masks(s, pmv);
#endif
  for (int oy = 0; oy < g->oh; oy++)
    for (int bo = 0; bo < s->nbk; bo++) {
      const int b0 = VL * bo, nb = g->ow - b0 < VL ? g->ow - b0 : VL, need_c = s2_need_c(g, nb);
      vec acc[4];
      UNROLL4
      for (int k = 0; k < NC; k++) acc[k] = VSET1(bias ? bias[k] : 0.0f);
      for (int i = 0; i < g->kh; i++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        const float *win = at_offset(x + (size_t)iy * g->w, s->ws[bo]);
#ifdef S2_PAIRS
        if (PAIRS) {
          const int u0 = s->used[bo][0], u1 = s->used[bo][1], u2 = s->used[bo][2];
          UNROLL4
          for (int k = 0; k < NC; k++) {
            const float *wk = win + k * in_plane, *wt = w + (size_t)k * taps + i * 3;
            const vec a0 = VMLOADV(pmv[bo][0], wk), a1 = VMLOADV(pmv[bo][1], wk + VL);
            const vec c0 = VMLOADV(pmv[bo][2], wk + 2), c1 = VMLOADV(pmv[bo][3], wk + 2 + VL);
            if (u0) acc[k] = VFMA(VSET1(wt[0]), VEVENS_SCR(a0, a1), acc[k]);
            if (u1) acc[k] = VFMA(VSET1(wt[1]), VODDS_SCR(a0, a1), acc[k]);
            if (u2) acc[k] = VFMA(VSET1(wt[2]), VEVENS_SCR(c0, c1), acc[k]);
          }
          continue;
        }
#endif
        vec va[4], vb[4], vc[4];
        UNROLL4
        for (int k = 0; k < NC; k++) {
          const float *wk = win + k * in_plane;
          va[k] = VMLOAD(s->ma[bo], wk);
          vb[k] = VMLOAD(s->mb[bo], wk + VL);
          vc[k] = need_c ? VMLOAD(s->mc[bo], wk + 2 * VL) : VZERO();
        }
        for (int j = 0; j < g->kw; j++) {
          if (!s->used[bo][j]) continue;
          UNROLL4
          for (int k = 0; k < NC; k++)
            acc[k] = VFMA(VSET1(w[(size_t)k * taps + i * g->kw + j]),
                          s2_gather(&s->lanes, j, need_c, va[k], vb[k], vc[k]), acc[k]);
        }
      }
      float *yr = y + (size_t)oy * g->ow + b0;
      UNROLL4
      for (int k = 0; k < NC; k++)
        VMSTORE(yr + k * out_plane, lanes_below(nb), S2_OUT(PAIRS, finish(acc[k], e)));
    }
}

/* dw of NC channels for tap columns j0 .. j0 + nj - 1 (nj <= 3) of every
 * tap row: each channel's window and dY block are loaded once per row for
 * those taps (up to 12 chains for four channels).  Taps whose columns lie
 * outside the row gather zeros, so nothing is skipped.  With PAIRS (all
 * three columns of a 3-wide undilated kernel) the inputs come by pairs as
 * in the forward, dY's lanes are put in their order (the same permutation
 * both ways), and the sums back in the natural order before the horizontal
 * add: each lane's chain is the gather's, so the same floats. */
INLINE void s2_dw_channels(const int NC, const int PAIRS, int j0, int nj, const float *x,
                           const float *dy, const vmc_conv_geom *g, const s2_geom *s,
                           float *dw) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
#ifdef S2_PAIRS
  vmask pmv[S2_MAX_BLOCKS][4];
  if (PAIRS) s2_pair_masks(s, pmv);
#endif
  for (int i = 0; i < g->kh; i++) {
    vec a0[4], a1[4], a2[4];
    UNROLL4
    for (int k = 0; k < NC; k++) a0[k] = a1[k] = a2[k] = VZERO();
    for (int oy = 0; oy < g->oh; oy++) {
      const int iy = oy * g->sh - g->ph + i * g->dh;
      if (iy < 0 || iy >= g->h) continue;
      for (int bo = 0; bo < s->nbk; bo++) {
        const int b0 = VL * bo, nb = g->ow - b0 < VL ? g->ow - b0 : VL, need_c = s2_need_c(g, nb);
        const float *win = at_offset(x + (size_t)iy * g->w, s->ws[bo]);
        const float *dyr = dy + (size_t)oy * g->ow + b0;
#ifdef S2_PAIRS
        if (PAIRS) {
          UNROLL4
          for (int k = 0; k < NC; k++) {
            const float *wk = win + k * in_plane;
            const vec p0 = VMLOADV(pmv[bo][0], wk), p1 = VMLOADV(pmv[bo][1], wk + VL);
            const vec q0 = VMLOADV(pmv[bo][2], wk + 2), q1 = VMLOADV(pmv[bo][3], wk + 2 + VL);
            const vec d = VUNSCRAMBLE(VMLOAD(lanes_below(nb), dyr + k * out_plane));
            a0[k] = VFMA(d, VEVENS_SCR(p0, p1), a0[k]);
            a1[k] = VFMA(d, VODDS_SCR(p0, p1), a1[k]);
            a2[k] = VFMA(d, VEVENS_SCR(q0, q1), a2[k]);
          }
          continue;
        }
#endif
        UNROLL4
        for (int k = 0; k < NC; k++) {
          const float *wk = win + k * in_plane;
          const vec va = VMLOAD(s->ma[bo], wk), vb = VMLOAD(s->mb[bo], wk + VL);
          const vec vc = need_c ? VMLOAD(s->mc[bo], wk + 2 * VL) : VZERO();
          const vec d = VMLOAD(lanes_below(nb), dyr + k * out_plane);
          a0[k] = VFMA(d, s2_gather(&s->lanes, j0, need_c, va, vb, vc), a0[k]);
          if (nj > 1) a1[k] = VFMA(d, s2_gather(&s->lanes, j0 + 1, need_c, va, vb, vc), a1[k]);
          if (nj > 2) a2[k] = VFMA(d, s2_gather(&s->lanes, j0 + 2, need_c, va, vb, vc), a2[k]);
        }
      }
    }
    UNROLL4
    for (int k = 0; k < NC; k++) {
      float *dk = dw + (size_t)k * taps + i * g->kw + j0;
      dk[0] += VSUM(S2_OUT(PAIRS, a0[k]));
      if (nj > 1) dk[1] += VSUM(S2_OUT(PAIRS, a1[k]));
      if (nj > 2) dk[2] += VSUM(S2_OUT(PAIRS, a2[k]));
    }
  }
}

/* All tap columns, three at a time (a 3-wide undilated kernel by pairs
 * where the variant has them). */
INLINE void s2_dw_all(const int NC, const float *x, const float *dy, const vmc_conv_geom *g,
                      const s2_geom *s, float *dw) {
#ifdef S2_PAIRS
  if (s->pairs3) {
    s2_dw_channels(NC, 1, 0, 3, x, dy, g, s, dw);
    return;
  }
#endif
  for (int j0 = 0; j0 < g->kw; j0 += 3)
    s2_dw_channels(NC, 0, j0, g->kw - j0 < 3 ? g->kw - j0 : 3, x, dy, g, s, dw);
}

/* The dx gather's dY lanes: block q (2*VL input columns), parity p, tap
 * column j, and the dY offset of lane 0. */
typedef struct {
  int nq;
  lmask dmask[S2_MAX_QBLOCKS][2][S2_MAX_KW];
  ptrdiff_t shift[2][S2_MAX_KW];
} s2_dx_geom;

static int s2_dx_prepare(const vmc_conv_geom *g, s2_dx_geom *s) {
  if (g->w > 2 * VL * S2_MAX_QBLOCKS) return 0;
  s->nq = (g->w + 2 * VL - 1) / (2 * VL);
  for (int p = 0; p < 2; p++)
    for (int j = 0; j < g->kw; j++) {
      const int num = p + g->pw - j * g->dw;
      s->shift[p][j] = num / 2; /* exact where used: num even */
      for (int q = 0; q < s->nq; q++) {
        unsigned m = 0;
        for (int l = 0; l < VL && num % 2 == 0; l++) {
          const int ox = VL * q + l + num / 2, ix = 2 * (VL * q + l) + p;
          if (ox >= 0 && ox < g->ow && ix < g->w) m |= 1u << l;
        }
        s->dmask[q][p][j] = (lmask)m;
      }
    }
  return 1;
}

INLINE void s2_dx_parity(const int NC, const int p, const vmc_conv_geom *g, const s2_dx_geom *s,
                         int q, int i, const float *dyr, size_t out_plane, const float *w,
                         vec *acc) {
  const int taps = g->kh * g->kw;
  for (int j = 0; j < g->kw; j++) {
    const lmask m = s->dmask[q][p][j];
    if (!m) continue;
    const float *src = at_offset(dyr, s->shift[p][j]);
    UNROLL4
    for (int k = 0; k < NC; k++)
      acc[k] = VFMA(VSET1(w[(size_t)k * taps + i * g->kw + j]), VMLOAD(m, src + k * out_plane),
                    acc[k]);
  }
}

INLINE void s2_dx_channels(const int NC, const float *dy, const float *w, const vmc_conv_geom *g,
                           const s2_dx_geom *s, float *dx) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  for (int iy = 0; iy < g->h; iy++)
    for (int q = 0; q < s->nq; q++) {
      vec e0[4], e1[4];
      UNROLL4
      for (int k = 0; k < NC; k++) e0[k] = e1[k] = VZERO();
      int any = 0;
      for (int i = 0; i < g->kh; i++) {
        const int t = iy + g->ph - i * g->dh;
        if (t < 0 || t % g->sh || t / g->sh >= g->oh) continue;
        const float *dyr = dy + (size_t)(t / g->sh) * g->ow + VL * q;
        s2_dx_parity(NC, 0, g, s, q, i, dyr, out_plane, w, e0);
        s2_dx_parity(NC, 1, g, s, q, i, dyr, out_plane, w, e1);
        any = 1;
      }
      if (!any) continue;
      const long left = g->w - 2L * VL * q;
      const lmask klo = lanes_below(left), khi = lanes_below(left - VL);
      UNROLL4
      for (int k = 0; k < NC; k++) {
        float *d = dx + k * in_plane + (size_t)iy * g->w + 2 * VL * q;
        vec lo, hi;
        VINTERLEAVE(e0[k], e1[k], lo, hi);
        VMSTORE(d, klo, VADD(VMLOAD(klo, d), lo));
        if (khi) VMSTORE(d + VL, khi, VADD(VMLOAD(khi, d + VL), hi));
      }
    }
}

/* ---- the entry points -------------------------------------------------------- */
int PLANES(vmc_dwconv_planes)(const float *x, int ch, const float *w, const vmc_dwconv_epi *e,
                              const vmc_conv_geom *g, float *y) {
  if (ch < 1 || g->oh < 1 || g->ow < 1) return 0;
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow, taps = (size_t)g->kh * g->kw;
  const float *bias = e->bias;
  int c = 0;
  if (g->sh == 1 && g->sw == 1) {
    s1_geom s;
    if (!s1_prepare(g, &s)) return 0;
    for (; c + 4 <= ch; c += 4)
      s1_channels(4, 0, 0, x + c * in, w + c * taps, e, bias ? bias + c : NULL, &s, y + c * out);
    for (; c < ch; c++)
      s1_channels(1, 0, 0, x + c * in, w + c * taps, e, bias ? bias + c : NULL, &s, y + c * out);
    return 1;
  }
  s2_geom s;
  if (!s2_prepare(g, &s)) return 0;
#ifdef S2_PAIRS
  if (s.pairs3) {
    for (; c + 4 <= ch; c += 4)
      s2_channels(4, 1, x + c * in, w + c * taps, e, bias ? bias + c : NULL, g, &s, y + c * out);
    for (; c < ch; c++)
      s2_channels(1, 1, x + c * in, w + c * taps, e, bias ? bias + c : NULL, g, &s, y + c * out);
    return 1;
  }
#endif
  for (; c + 4 <= ch; c += 4)
    s2_channels(4, 0, x + c * in, w + c * taps, e, bias ? bias + c : NULL, g, &s, y + c * out);
  for (; c < ch; c++)
    s2_channels(1, 0, x + c * in, w + c * taps, e, bias ? bias + c : NULL, g, &s, y + c * out);
  return 1;
}

int PLANES(vmc_dwconv_planes_backward)(const float *x, const float *dy, int ch, const float *w,
                                       const vmc_conv_geom *g, float *dx, float *dw) {
  if (ch < 1 || g->oh < 1 || g->ow < 1) return 0;
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow, taps = (size_t)g->kh * g->kw;
  const vmc_dwconv_epi none = {NULL, 0, 0.0f, 0.0f};
  int c = 0;
  if (g->sh == 1 && g->sw == 1) {
    s1_geom s;
    if (!s1_prepare(g, &s)) return 0;
    for (; c + 4 <= ch; c += 4) s1_dw_channels(4, x + c * in, dy + c * out, &s, dw + c * taps);
    for (; c < ch; c++) s1_dw_channels(1, x + c * in, dy + c * out, &s, dw + c * taps);
    if (!dx) return 1;
    for (c = 0; c + 4 <= ch; c += 4)
      s1_channels(4, 1, 1, dy + c * out, w + c * taps, &none, NULL, &s, dx + c * in);
    for (; c < ch; c++)
      s1_channels(1, 1, 1, dy + c * out, w + c * taps, &none, NULL, &s, dx + c * in);
    return 1;
  }
  s2_geom s;
  s2_dx_geom sx = {0};
  if (!s2_prepare(g, &s) || (dx && !s2_dx_prepare(g, &sx))) return 0;
  for (; c + 4 <= ch; c += 4) {
    s2_dw_all(4, x + c * in, dy + c * out, g, &s, dw + c * taps);
    if (dx) s2_dx_channels(4, dy + c * out, w + c * taps, g, &sx, dx + c * in);
  }
  for (; c < ch; c++) {
    s2_dw_all(1, x + c * in, dy + c * out, g, &s, dw + c * taps);
    if (dx) s2_dx_channels(1, dy + c * out, w + c * taps, g, &sx, dx + c * in);
  }
  return 1;
}
