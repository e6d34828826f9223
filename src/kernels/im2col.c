/* im2col / col2im and the direct depthwise convolution (scalar; the inner
 * loops over contiguous output columns vectorise). */
#include "kernels/conv.h"

#include <string.h>

void vmc_im2col(const float *x, const vmc_conv_geom *g, float *col) {
  const int P = g->oh * g->ow;
  for (int c = 0; c < g->c; c++)
    for (int i = 0; i < g->kh; i++)
      for (int j = 0; j < g->kw; j++) {
        float *dst = col + (size_t)((c * g->kh + i) * g->kw + j) * P;
        const float *src = x + (size_t)c * g->h * g->w;
        for (int oy = 0; oy < g->oh; oy++) {
          int iy = oy * g->sh - g->ph + i * g->dh;
          float *d = dst + oy * g->ow;
          if (iy < 0 || iy >= g->h) {
            memset(d, 0, sizeof(float) * (size_t)g->ow);
            continue;
          }
          const float *row = src + (size_t)iy * g->w;
          int off = j * g->dw - g->pw;
          if (g->sw == 1) {
            /* columns ox with 0 <= ox + off < w */
            int lo = off < 0 ? -off : 0, hi = g->w - off;
            if (hi > g->ow) hi = g->ow;
            if (lo > g->ow) lo = g->ow;
            for (int ox = 0; ox < lo; ox++) d[ox] = 0;
            if (hi > lo) memcpy(d + lo, row + lo + off, sizeof(float) * (size_t)(hi - lo));
            for (int ox = hi > lo ? hi : lo; ox < g->ow; ox++) d[ox] = 0;
          } else {
            for (int ox = 0; ox < g->ow; ox++) {
              int ix = ox * g->sw + off;
              d[ox] = (ix >= 0 && ix < g->w) ? row[ix] : 0.0f;
            }
          }
        }
      }
}

void vmc_col2im_add(const float *col, const vmc_conv_geom *g, float *dx) {
  const int P = g->oh * g->ow;
  for (int c = 0; c < g->c; c++)
    for (int i = 0; i < g->kh; i++)
      for (int j = 0; j < g->kw; j++) {
        const float *src = col + (size_t)((c * g->kh + i) * g->kw + j) * P;
        float *dst = dx + (size_t)c * g->h * g->w;
        for (int oy = 0; oy < g->oh; oy++) {
          int iy = oy * g->sh - g->ph + i * g->dh;
          if (iy < 0 || iy >= g->h) continue;
          float *row = dst + (size_t)iy * g->w;
          const float *s = src + oy * g->ow;
          int off = j * g->dw - g->pw;
          if (g->sw == 1) {
            int lo = off < 0 ? -off : 0, hi = g->w - off;
            if (hi > g->ow) hi = g->ow;
            for (int ox = lo; ox < hi; ox++) row[ox + off] += s[ox];
          } else {
            for (int ox = 0; ox < g->ow; ox++) {
              int ix = ox * g->sw + off;
              if (ix >= 0 && ix < g->w) row[ix] += s[ox];
            }
          }
        }
      }
}

/* Range of output columns ox for which ix = ox*s + off lies in [0, w). */
static void valid_range(int off, int s, int w, int ow, int *lo, int *hi) {
  int a = off < 0 ? (-off + s - 1) / s : 0;
  int b = w - off <= 0 ? 0 : (w - off - 1) / s + 1;
  if (b > ow) b = ow;
  if (a > b) a = b;
  *lo = a;
  *hi = b;
}

void vmc_dwconv_forward__ref(const float *x, const float *w, float bias, const vmc_conv_geom *g,
                             float *y) {
  const int ow = g->ow;
  for (int oy = 0; oy < g->oh; oy++) {
    float *yr = y + (size_t)oy * ow;
    for (int ox = 0; ox < ow; ox++) yr[ox] = bias;
    for (int i = 0; i < g->kh; i++) {
      int iy = oy * g->sh - g->ph + i * g->dh;
      if (iy < 0 || iy >= g->h) continue;
      const float *xr = x + (size_t)iy * g->w;
      for (int j = 0; j < g->kw; j++) {
        float wv = w[i * g->kw + j];
        int off = j * g->dw - g->pw, lo, hi;
        valid_range(off, g->sw, g->w, ow, &lo, &hi);
        if (g->sw == 1)
          for (int ox = lo; ox < hi; ox++) yr[ox] += wv * xr[ox + off];
        else
          for (int ox = lo; ox < hi; ox++) yr[ox] += wv * xr[ox * g->sw + off];
      }
    }
  }
}

void vmc_dwconv_backward(const float *x, const float *w, const float *dy, const vmc_conv_geom *g,
                         float *dx, float *dw) {
  const int ow = g->ow, sw = g->sw;
  for (int oy = 0; oy < g->oh; oy++) {
    const float *dyr = dy + (size_t)oy * ow;
    for (int i = 0; i < g->kh; i++) {
      int iy = oy * g->sh - g->ph + i * g->dh;
      if (iy < 0 || iy >= g->h) continue;
      const float *xr = x + (size_t)iy * g->w;
      float *dxr = dx ? dx + (size_t)iy * g->w : NULL;
      for (int j = 0; j < g->kw; j++) {
        float wv = w[i * g->kw + j], acc = 0;
        int off = j * g->dw - g->pw, lo, hi;
        valid_range(off, sw, g->w, ow, &lo, &hi);
        /* Separate loops: the reduction and the scatter each vectorise. */
#pragma omp simd reduction(+ : acc)
        for (int ox = lo; ox < hi; ox++) acc += dyr[ox] * xr[ox * sw + off];
        dw[i * g->kw + j] += acc;
        if (!dxr) continue;
        if (sw == 1)
          for (int ox = lo; ox < hi; ox++) dxr[ox + off] += wv * dyr[ox];
        else
          for (int ox = lo; ox < hi; ox++) dxr[ox * sw + off] += wv * dyr[ox];
      }
    }
  }
}

void vmc_dwconv_wide_forward__ref(const float *xp, int wp, const float *w, float bias,
                             const vmc_conv_geom *g, float *yw) {
  const int n = g->oh * wp;
  for (int k = 0; k < n; k++) yw[k] = bias;
  for (int i = 0; i < g->kh; i++)
    for (int j = 0; j < g->kw; j++) {
      const float wv = w[i * g->kw + j], *src = xp + (size_t)i * g->dh * wp + (size_t)j * g->dw;
      for (int k = 0; k < n; k++) yw[k] += wv * src[k];
    }
}

void vmc_dwconv_wide_backward__ref(const float *xp, int wp, const float *w, const float *dyw,
                              const vmc_conv_geom *g, float *dxp, float *dw) {
  const int n = g->oh * wp;
  for (int i = 0; i < g->kh; i++)
    for (int j = 0; j < g->kw; j++) {
      const size_t off = (size_t)i * g->dh * wp + (size_t)j * g->dw;
      const float wv = w[i * g->kw + j], *src = xp + off;
      float acc = 0, *dst = dxp ? dxp + off : NULL;
#pragma omp simd reduction(+ : acc)
      for (int k = 0; k < n; k++) acc += dyw[k] * src[k];
      dw[i * g->kw + j] += acc;
      if (dst)
        for (int k = 0; k < n; k++) dst[k] += wv * dyw[k];
    }
}
