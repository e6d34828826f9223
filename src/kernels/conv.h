/* Convolution helpers: geometry, im2col/col2im, direct depthwise. */
#ifndef VMC_KERNELS_CONV_H
#define VMC_KERNELS_CONV_H

#include "core/core.h"

typedef struct vmc_conv_geom {
  int c, h, w;       /* input channels (of one group), height, width */
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int oh, ow;
} vmc_conv_geom;

/* Output size; <= 0 when the kernel does not fit. */
static inline int vmc_conv_out(int in, int k, int s, int p, int d) {
  if (in < 1 || k < 1 || s < 1 || p < 0 || d < 1) return 0;
  int64_t span = (int64_t)d * (k - 1) + 1, padded = (int64_t)in + 2 * (int64_t)p;
  if (padded < span) return 0;
  int64_t o = (padded - span) / s + 1;
  return o > (1 << 24) ? 0 : (int)o;
}

/* col[(c*kh + i)*kw + j][oy*ow + ox] = x[c][oy*sh - ph + i*dh][ox*sw - pw + j*dw] (0 outside). */
void vmc_im2col(const float *x, const vmc_conv_geom *g, float *col);
/* dx[c][...] += col[...]: the adjoint of vmc_im2col. */
void vmc_col2im_add(const float *col, const vmc_conv_geom *g, float *dx);

/* Depthwise: one channel at a time.  y = sum_ij w[i][j] * x[...] (+ bias). */
void vmc_dwconv_forward(const float *x, const float *w, float bias, const vmc_conv_geom *g,
                        float *y);
/* dx += w-weighted scatter of dy; dw += x-weighted dy (kh*kw). */
void vmc_dwconv_backward(const float *x, const float *w, const float *dy, const vmc_conv_geom *g,
                         float *dx, float *dw);

/* Depthwise with stride 1 over one zero-padded plane of width wp (the
 * "wide" layout of conv2d): yw[n] = bias + sum_ij w_ij * xp[n + i*dh*wp + j*dw]
 * for n < oh*wp; the columns ox >= ow of each wide row are garbage.  xp must
 * be readable (kw-1)*dw floats past the plane. */
void vmc_dwconv_wide_forward(const float *xp, int wp, const float *w, float bias,
                             const vmc_conv_geom *g, float *yw);
/* Its adjoint: dw_ij += sum_n dyw[n] * xp[n + off_ij] and
 * dxp[n + off_ij] += w_ij * dyw[n]; dyw must be 0 in the garbage columns. */
void vmc_dwconv_wide_backward(const float *xp, int wp, const float *w, const float *dyw,
                              const vmc_conv_geom *g, float *dxp, float *dw);

/* The variants of the two above (dwconv.c picks one by vmc_isa_name()):
 * __ref makes one pass per tap; the SIMD ones block in registers
 * (dwconv_simd.h) and use FMA, so they agree with __ref to rounding. */
#define VMC_DWCONV_WIDE_VARIANT(sfx)                                                    \
  void vmc_dwconv_wide_forward__##sfx(const float *xp, int wp, const float *w, float bias, \
                                      const vmc_conv_geom *g, float *yw);                 \
  void vmc_dwconv_wide_backward__##sfx(const float *xp, int wp, const float *w,           \
                                       const float *dyw, const vmc_conv_geom *g,          \
                                       float *dxp, float *dw);
/* vmc_dwconv_forward's variants: __avx512 handles stride-2 rows with
 * register accumulators (and defers other strides to __ref). */
void vmc_dwconv_forward__ref(const float *x, const float *w, float bias, const vmc_conv_geom *g,
                             float *y);
void vmc_dwconv_forward__avx512(const float *x, const float *w, float bias,
                                const vmc_conv_geom *g, float *y);
VMC_DWCONV_WIDE_VARIANT(ref)
VMC_DWCONV_WIDE_VARIANT(avx2)
VMC_DWCONV_WIDE_VARIANT(avx512)

/* Depthwise forward over ch channels in one call, straight from the
 * unpadded planes: channel c reads x + c*h*w and writes y + c*oh*ow,
 *   y = bias[c] + sum_ij w[c*kh*kw + i*kw + j] * x[oy*sh - ph + i*dh][ox*sw - pw + j*dw]
 * (x 0 outside the plane), then the epilogue's clamp.  Returns 0, writing
 * nothing, where the variant does not take the geometry; the caller then
 * runs the per-channel kernels above.  __ref takes every geometry (the
 * per-channel reference loops).  The SIMD variants (dwconv_planes_simd.h)
 * take stride 1 with the output the input's size ("same" padding) on planes
 * of up to 4096 / (kh*kw) blocks of VL pixels, and stride 2 with kw <= 8,
 * ow <= 256 and (kw-1)*dw <= VL + 1 (VL: 16 avx512, 8 avx2).  avx512 gives
 * exactly the floats of its per-channel kernels (the wide one for stride 1,
 * vmc_dwconv_forward__avx512 for stride 2) followed by the clamp; avx2 those
 * of vmc_dwconv_wide_forward__avx2 at stride 1, and agrees with the
 * reference to rounding (FMA) at stride 2. */
typedef struct vmc_dwconv_epi {
  const float *bias; /* per channel, or NULL: 0 */
  int clamp;         /* nonzero: min(max(y, lo), hi), as vmc_clampf */
  float lo, hi;
} vmc_dwconv_epi;

int vmc_dwconv_planes(const float *x, int ch, const float *w, const vmc_dwconv_epi *epi,
                      const vmc_conv_geom *g, float *y);
/* Its adjoint over the same channels and geometries (0, nothing written,
 * where the forward declines, and at stride 2 with dx on input rows wider
 * than 512): dw[c*kh*kw + t] += sum over the plane of dy * the input tap t
 * reads, and with dx non-NULL, dx += the input gradient.  The SIMD variants
 * agree with __ref (vmc_dwconv_backward per channel) to rounding. */
int vmc_dwconv_planes_backward(const float *x, const float *dy, int ch, const float *w,
                               const vmc_conv_geom *g, float *dx, float *dw);

#define VMC_DWCONV_PLANES_VARIANT(sfx)                                                         \
  int vmc_dwconv_planes__##sfx(const float *x, int ch, const float *w,                         \
                               const vmc_dwconv_epi *epi, const vmc_conv_geom *g, float *y);   \
  int vmc_dwconv_planes_backward__##sfx(const float *x, const float *dy, int ch, const float *w, \
                                        const vmc_conv_geom *g, float *dx, float *dw);
VMC_DWCONV_PLANES_VARIANT(ref)
VMC_DWCONV_PLANES_VARIANT(avx2)
VMC_DWCONV_PLANES_VARIANT(avx512)

#endif
