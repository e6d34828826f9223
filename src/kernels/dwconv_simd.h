/* Depthwise convolution over a zero-padded plane ("wide" layout, conv.h),
 * one body for every SIMD width.  The including file defines:
 *   VL              lanes per vector
 *   vec             the vector type
 *   VZERO() VSET1(s) VLOAD(p) VSTORE(p, v) VFMA(a, b, c) (= a*b + c)
 *   VSUM(v)         horizontal sum, lanes in a fixed order
 *   FN(name)        the variant's name for `name`
 * Register blocking: each output vector accumulates every tap before it is
 * stored once (the reference makes one pass per tap); the weight gradient
 * keeps one accumulator per tap across the plane; the input gradient is
 * gathered (dx[m] = sum_t w_t dy[m - off_t]) instead of scattered.  Edges
 * too short for a whole vector run the same arithmetic lane by lane. */
#include "kernels/conv.h"

#define DW_MAX_TAPS 64 /* larger kernels use the reference */

static int tap_offsets(int wp, const vmc_conv_geom *g, size_t *off) {
  const int taps = g->kh * g->kw;
  if (taps > DW_MAX_TAPS) return 0;
  for (int i = 0; i < g->kh; i++)
    for (int j = 0; j < g->kw; j++)
      off[i * g->kw + j] = (size_t)i * g->dh * wp + (size_t)j * g->dw;
  return taps;
}

void FN(vmc_dwconv_wide_forward)(const float *xp, int wp, const float *w, float bias,
                                 const vmc_conv_geom *g, float *yw) {
  size_t off[DW_MAX_TAPS];
  const int taps = tap_offsets(wp, g, off);
  if (!taps) {
    vmc_dwconv_wide_forward__ref(xp, wp, w, bias, g, yw);
    return;
  }
  const int n = g->oh * wp;
  int k = 0;
  /* Four independent chains per tap sweep: enough to cover FMA latency. */
  for (; k + 4 * VL <= n; k += 4 * VL) {
    vec a0 = VSET1(bias), a1 = a0, a2 = a0, a3 = a0;
    for (int t = 0; t < taps; t++) {
      const vec wv = VSET1(w[t]);
      const float *s = xp + off[t] + k;
      a0 = VFMA(wv, VLOAD(s), a0);
      a1 = VFMA(wv, VLOAD(s + VL), a1);
      a2 = VFMA(wv, VLOAD(s + 2 * VL), a2);
      a3 = VFMA(wv, VLOAD(s + 3 * VL), a3);
    }
    VSTORE(yw + k, a0);
    VSTORE(yw + k + VL, a1);
    VSTORE(yw + k + 2 * VL, a2);
    VSTORE(yw + k + 3 * VL, a3);
  }
  for (; k + VL <= n; k += VL) {
    vec a0 = VSET1(bias);
    for (int t = 0; t < taps; t++) a0 = VFMA(VSET1(w[t]), VLOAD(xp + off[t] + k), a0);
    VSTORE(yw + k, a0);
  }
  for (; k < n; k++) {
    float a = bias;
    for (int t = 0; t < taps; t++) a = __builtin_fmaf(w[t], xp[off[t] + k], a);
    yw[k] = a;
  }
}

void FN(vmc_dwconv_wide_backward)(const float *xp, int wp, const float *w, const float *dyw,
                                  const vmc_conv_geom *g, float *dxp, float *dw) {
  size_t off[DW_MAX_TAPS];
  const int taps = tap_offsets(wp, g, off);
  if (!taps) {
    vmc_dwconv_wide_backward__ref(xp, wp, w, dyw, g, dxp, dw);
    return;
  }
  const int n = g->oh * wp, nv = n / VL * VL;
  /* dw[t] += sum_k dy[k] x[off_t + k], eight taps per sweep. */
  for (int t0 = 0; t0 < taps; t0 += 8) {
    const int m = taps - t0 < 8 ? taps - t0 : 8;
    vec acc[8];
    for (int t = 0; t < 8; t++) acc[t] = VZERO();
    for (int k = 0; k < nv; k += VL) {
      const vec d = VLOAD(dyw + k);
      for (int t = 0; t < m; t++) acc[t] = VFMA(d, VLOAD(xp + off[t0 + t] + k), acc[t]);
    }
    for (int t = 0; t < m; t++) {
      float s = VSUM(acc[t]);
      for (int k = nv; k < n; k++) s = __builtin_fmaf(dyw[k], xp[off[t0 + t] + k], s);
      dw[t0 + t] += s;
    }
  }
  if (!dxp) return;
  /* dx[m] += sum_t w_t dy[m - off_t] over the m the taps reach. */
  const size_t reach = (size_t)n + off[taps - 1];
  const size_t first = off[taps - 1]; /* from here on every tap has m - off_t >= 0 */
  const size_t last = (size_t)n;      /* below here every m - off_t < n */
  size_t mpos = 0;
  for (; mpos < reach; mpos++) {
    if (mpos >= first && mpos + VL <= last) break;
    float a = dxp[mpos];
    for (int t = 0; t < taps; t++)
      if (mpos >= off[t] && mpos - off[t] < (size_t)n) a = __builtin_fmaf(w[t], dyw[mpos - off[t]], a);
    dxp[mpos] = a;
  }
  for (; mpos + 4 * VL <= last; mpos += 4 * VL) {
    vec a0 = VLOAD(dxp + mpos), a1 = VLOAD(dxp + mpos + VL);
    vec a2 = VLOAD(dxp + mpos + 2 * VL), a3 = VLOAD(dxp + mpos + 3 * VL);
    for (int t = 0; t < taps; t++) {
      const vec wv = VSET1(w[t]);
      const float *s = dyw + mpos - off[t];
      a0 = VFMA(wv, VLOAD(s), a0);
      a1 = VFMA(wv, VLOAD(s + VL), a1);
      a2 = VFMA(wv, VLOAD(s + 2 * VL), a2);
      a3 = VFMA(wv, VLOAD(s + 3 * VL), a3);
    }
    VSTORE(dxp + mpos, a0);
    VSTORE(dxp + mpos + VL, a1);
    VSTORE(dxp + mpos + 2 * VL, a2);
    VSTORE(dxp + mpos + 3 * VL, a3);
  }
  for (; mpos + VL <= last; mpos += VL) {
    vec a = VLOAD(dxp + mpos);
    for (int t = 0; t < taps; t++) a = VFMA(VSET1(w[t]), VLOAD(dyw + mpos - off[t]), a);
    VSTORE(dxp + mpos, a);
  }
  for (; mpos < reach; mpos++) {
    float a = dxp[mpos];
    for (int t = 0; t < taps; t++)
      if (mpos >= off[t] && mpos - off[t] < (size_t)n) a = __builtin_fmaf(w[t], dyw[mpos - off[t]], a);
    dxp[mpos] = a;
  }
}
