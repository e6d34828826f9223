/* Depthwise convolution: the ISA variants, chosen once. */
#include "kernels/conv.h"

typedef void (*fwd_fn)(const float *, int, const float *, float, const vmc_conv_geom *, float *);
typedef void (*bwd_fn)(const float *, int, const float *, const float *, const vmc_conv_geom *,
                       float *, float *);

typedef int (*planes_fn)(const float *, int, const float *, const vmc_dwconv_epi *,
                         const vmc_conv_geom *, float *);

typedef int (*planes_bwd_fn)(const float *, const float *, int, const float *,
                             const vmc_conv_geom *, float *, float *);

typedef struct {
  fwd_fn fwd;
  bwd_fn bwd;
  planes_fn planes;
  planes_bwd_fn planes_bwd;
  int avx512;
} dw_variant;

/* The variant vmc_isa_name() picks. */
static const dw_variant *pick(void) {
  static const dw_variant v512 = {vmc_dwconv_wide_forward__avx512, vmc_dwconv_wide_backward__avx512,
                                  vmc_dwconv_planes__avx512, vmc_dwconv_planes_backward__avx512, 1};
  static const dw_variant v2 = {vmc_dwconv_wide_forward__avx2, vmc_dwconv_wide_backward__avx2,
                                vmc_dwconv_planes__avx2, vmc_dwconv_planes_backward__avx2, 0};
  static const dw_variant vref = {vmc_dwconv_wide_forward__ref, vmc_dwconv_wide_backward__ref,
                                  vmc_dwconv_planes__ref, vmc_dwconv_planes_backward__ref, 0};
  static const dw_variant *const v[] = {&vref, &v2, &v512};
  return v[vmc_isa_level()];
}

void vmc_dwconv_wide_forward(const float *xp, int wp, const float *w, float bias,
                             const vmc_conv_geom *g, float *yw) {
  pick()->fwd(xp, wp, w, bias, g, yw);
}

void vmc_dwconv_wide_backward(const float *xp, int wp, const float *w, const float *dyw,
                              const vmc_conv_geom *g, float *dxp, float *dw) {
  pick()->bwd(xp, wp, w, dyw, g, dxp, dw);
}

void vmc_dwconv_forward(const float *x, const float *w, float bias, const vmc_conv_geom *g,
                        float *y) {
  if (pick()->avx512)
    vmc_dwconv_forward__avx512(x, w, bias, g, y);
  else
    vmc_dwconv_forward__ref(x, w, bias, g, y);
}

int vmc_dwconv_planes(const float *x, int ch, const float *w, const vmc_dwconv_epi *epi,
                      const vmc_conv_geom *g, float *y) {
  return pick()->planes(x, ch, w, epi, g, y);
}

int vmc_dwconv_planes_backward(const float *x, const float *dy, int ch, const float *w,
                               const vmc_conv_geom *g, float *dx, float *dw) {
  return pick()->planes_bwd(x, dy, ch, w, g, dx, dw);
}

/* The references: the per-channel loops (im2col.c), every geometry. */
int vmc_dwconv_planes__ref(const float *x, int ch, const float *w, const vmc_dwconv_epi *epi,
                           const vmc_conv_geom *g, float *y) {
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow, taps = (size_t)g->kh * g->kw;
  for (int c = 0; c < ch; c++) {
    float *yc = y + c * out;
    vmc_dwconv_forward__ref(x + c * in, w + c * taps, epi->bias ? epi->bias[c] : 0.0f, g, yc);
    for (size_t i = 0; epi->clamp && i < out; i++) {
      const float v = yc[i] > epi->lo ? yc[i] : epi->lo; /* vmc_clampf */
      yc[i] = v < epi->hi ? v : epi->hi;
    }
  }
  return 1;
}

int vmc_dwconv_planes_backward__ref(const float *x, const float *dy, int ch, const float *w,
                                    const vmc_conv_geom *g, float *dx, float *dw) {
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow, taps = (size_t)g->kh * g->kw;
  for (int c = 0; c < ch; c++)
    vmc_dwconv_backward(x + c * in, w + c * taps, dy + c * out, g, dx ? dx + c * in : NULL,
                        dw + c * taps);
  return 1;
}
