/* Depthwise convolution: the ISA variants, chosen once. */
#include "kernels/conv.h"

#include <string.h>

typedef void (*fwd_fn)(const float *, int, const float *, float, const vmc_conv_geom *, float *);
typedef void (*bwd_fn)(const float *, int, const float *, const float *, const vmc_conv_geom *,
                       float *, float *);

static void pick(fwd_fn *f, bwd_fn *b) {
  const char *isa = vmc_isa_name(); /* fixed after the first call */
  if (!strcmp(isa, "avx512")) {
    *f = vmc_dwconv_wide_forward__avx512, *b = vmc_dwconv_wide_backward__avx512;
  } else if (!strcmp(isa, "avx2")) {
    *f = vmc_dwconv_wide_forward__avx2, *b = vmc_dwconv_wide_backward__avx2;
  } else {
    *f = vmc_dwconv_wide_forward__ref, *b = vmc_dwconv_wide_backward__ref;
  }
}

void vmc_dwconv_wide_forward(const float *xp, int wp, const float *w, float bias,
                             const vmc_conv_geom *g, float *yw) {
  fwd_fn f;
  bwd_fn b;
  pick(&f, &b);
  f(xp, wp, w, bias, g, yw);
}

void vmc_dwconv_wide_backward(const float *xp, int wp, const float *w, const float *dyw,
                              const vmc_conv_geom *g, float *dxp, float *dw) {
  fwd_fn f;
  bwd_fn b;
  pick(&f, &b);
  b(xp, wp, w, dyw, g, dxp, dw);
}

void vmc_dwconv_forward(const float *x, const float *w, float bias, const vmc_conv_geom *g,
                        float *y) {
  if (!strcmp(vmc_isa_name(), "avx512"))
    vmc_dwconv_forward__avx512(x, w, bias, g, y);
  else
    vmc_dwconv_forward__ref(x, w, bias, g, y);
}
