/* Depthwise convolution: the ISA variants, chosen once. */
#include "kernels/conv.h"

#include <stdatomic.h>
#include <string.h>

typedef void (*fwd_fn)(const float *, int, const float *, float, const vmc_conv_geom *, float *);
typedef void (*bwd_fn)(const float *, int, const float *, const float *, const vmc_conv_geom *,
                       float *, float *);

typedef int (*planes_fn)(const float *, int, const float *, const float *, const vmc_conv_geom *,
                         int, float, float, float *);

typedef int (*planes_bwd_fn)(const float *, const float *, int, const float *,
                             const vmc_conv_geom *, float *, float *);

typedef struct {
  fwd_fn fwd;
  bwd_fn bwd;
  planes_fn planes;
  planes_bwd_fn planes_bwd;
  int avx512;
} dw_variant;

/* Chosen once (vmc_isa_name() is fixed after its first call); the kernels
 * run once per channel, so the choice is not remade per call. */
static const dw_variant *pick(void) {
  static const dw_variant v512 = {vmc_dwconv_wide_forward__avx512, vmc_dwconv_wide_backward__avx512,
                                  vmc_dwconv_planes__avx512, vmc_dwconv_planes_backward__avx512, 1};
  static const dw_variant v2 = {vmc_dwconv_wide_forward__avx2, vmc_dwconv_wide_backward__avx2,
                                vmc_dwconv_planes__avx2, vmc_dwconv_planes_backward__avx2, 0};
  static const dw_variant vref = {vmc_dwconv_wide_forward__ref, vmc_dwconv_wide_backward__ref, NULL,
                                  NULL, 0};
  static _Atomic(const dw_variant *) best;
  const dw_variant *v = atomic_load_explicit(&best, memory_order_acquire);
  if (v) return v;
  const char *isa = vmc_isa_name();
  v = !strcmp(isa, "avx512") ? &v512 : !strcmp(isa, "avx2") ? &v2 : &vref;
  atomic_store_explicit(&best, v, memory_order_release);
  return v;
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

int vmc_dwconv_planes(const float *x, int ch, const float *w, const float *bias,
                      const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  const dw_variant *v = pick();
  return v->planes ? v->planes(x, ch, w, bias, g, clamp, lo, hi, y) : 0;
}

int vmc_dwconv_planes_backward(const float *x, const float *dy, int ch, const float *w,
                               const vmc_conv_geom *g, float *dx, float *dw) {
  const dw_variant *v = pick();
  return v->planes_bwd ? v->planes_bwd(x, dy, ch, w, g, dx, dw) : 0;
}
