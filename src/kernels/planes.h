/* Plane copies of conv2d's im2col-free layouts (src/ops/conv2d.c): images
 * copied into zero-padded planes, wide results cropped back, and strided
 * inputs split into their stride phases and merged back.  Pure data
 * movement: every variant gives exactly the reference's floats (tested).
 * The SIMD variants build each row with masked loads and stores instead of
 * a memcpy and two memsets per row. */
#ifndef VMC_KERNELS_PLANES_H
#define VMC_KERNELS_PLANES_H

#include "core/core.h"

#define VMC_MAX_PHASE 4 /* strides the phase layout takes */

/* Phase layout of one image (see conv2d.c, PHASE): the zero-padded image
 * (padding top, left) split into the sh x sw phases of its pixels; phase
 * (r, s) holds the padded pixels (sh*u + r, sw*v + s), u < phh, v < phw,
 * 0 outside the image.  Only the phases with slot[r][s] >= 0 exist; a
 * channel's phases are consecutive planes of phh*phw floats in slot order. */
typedef struct vmc_phase_geom {
  int h, w;
  int top, left;
  int sh, sw;
  int phh, phw;
  int nslots;
  signed char slot[VMC_MAX_PHASE][VMC_MAX_PHASE]; /* -1: not built */
  /* Where phase_split reads the image: row r of channel c at x + c*xplane
   * + r*xrow.  0, 0: a plain image (w, h*w). */
  int xrow;
  size_t xplane;
} vmc_phase_geom;

/* phase_split's source strides. */
static inline size_t vmc_phase_xrow(const vmc_phase_geom *g) {
  return g->xrow ? (size_t)g->xrow : (size_t)g->w;
}
static inline size_t vmc_phase_xplane(const vmc_phase_geom *g) {
  return g->xplane ? g->xplane : (size_t)g->h * g->w;
}

typedef struct vmc_planes_kernels {
  const char *isa;
  /* ch planes of h x w into planes of hp x wp at (top, left), zero
   * borders, and `slack` zero floats after the last plane. */
  void (*pad)(const float *x, int ch, int h, int w, int top, int left, int hp, int wp,
              size_t slack, float *xp);
  /* The inverse: ch planes of h x w taken at (top, left) from planes of
   * `plane` floats and row stride wp; written, or added with add != 0. */
  void (*crop)(const float *src, int ch, size_t plane, int wp, int top, int left, int h, int w,
               float *dst, int add);
  /* ch channels of h x w into their phase planes; `slack` zero floats after
   * the last one. */
  void (*phase_split)(const float *x, int ch, const vmc_phase_geom *g, size_t slack, float *xq);
  /* The adjoint: dx (=, or += with add) each pixel's value in its phase
   * plane; pixels of phases not built get 0 (or are left alone). */
  void (*phase_merge)(const float *dq, int ch, const vmc_phase_geom *g, float *dx, int add);
} vmc_planes_kernels;

extern const vmc_planes_kernels vmc_planes_kernels__ref;
extern const vmc_planes_kernels vmc_planes_kernels__avx2;
extern const vmc_planes_kernels vmc_planes_kernels__avx512;

/* The variant vmc_isa_name() picks, chosen once. */
const vmc_planes_kernels *vmc_planes_kernels_best(void);

#endif
