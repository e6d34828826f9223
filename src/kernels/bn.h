/* BatchNorm kernels over n image planes of hw contiguous floats, plane k at
 * x + k*stride and belonging to its own channel k (the op passes the
 * channels a thread owns, one image at a time: consecutive planes, so each
 * call streams one contiguous block).  Each plane has its own constants
 * and, for reductions, its own accumulator.
 *
 * Every variant reduces in the same fixed order, so all of them give the
 * same bits (tested), whatever the compiler: 16 float lanes, lane l summing
 * the plane's elements i = l (mod 16) in increasing i, over a chunk of at
 * most VMC_BN_CHUNK floats of one plane; after each chunk every lane is
 * added to its own double accumulator (vmc_bn_acc); the op feeds a
 * channel's planes in image order and adds the 16 doubles in lane order at
 * the end (vmc_bn_total).  Products and sums are rounded separately (no FMA
 * contraction anywhere).
 *
 * A fused activation (relu/relu6 after the BN) is a clamp to [lo, hi]; its
 * gradient passes where lo < v < hi, v = a*x + b the pre-clamp value, which
 * the backward kernels recompute from x (the same rounding as forward), so
 * they need not read y. */
#ifndef VMC_KERNELS_BN_H
#define VMC_KERNELS_BN_H

#include "core/core.h"

#define VMC_BN_LANES 16
#define VMC_BN_CHUNK 1024 /* floats per float-lane partial sum */

/* One channel's constants. */
typedef struct vmc_bn_chan {
  float mu;       /* mean used to normalise */
  float a, b;     /* forward: v = a*x + b (a = gamma*invstd, b = beta - mu*a) */
  int clamp;      /* nonzero: y = min(max(v, lo), hi) and the gradient mask */
  float lo, hi;
  /* backward: dx = k*d - c1 - (x - mu)*c2, d = the masked dy; with
   * use_x == 0, dx = k*d (inference-mode statistics) */
  float k, c1, c2;
  int use_x;
} vmc_bn_chan;

/* Where the planes lie. */
typedef struct vmc_bn_planes {
  int n;         /* planes (channels) */
  int hw;        /* floats per plane */
  size_t stride; /* floats from one plane to the next */
} vmc_bn_planes;

/* One channel's reduction in progress: two quantities, 16 double lanes. */
typedef struct vmc_bn_acc {
  double l[2][VMC_BN_LANES];
} vmc_bn_acc;

typedef struct vmc_bn_kernels {
  const char *isa;
  /* Shifted sums into acc[k]: quantity 0 sum (x - shift[k]), 1 sum of its
   * square.  With a shift near the mean (the op passes the channel's first
   * plane's mean) the variance s2/M - (s1/M)^2 loses nothing to
   * cancellation. */
  void (*stats)(const float *x, const vmc_bn_planes *p, const float *shift, vmc_bn_acc *acc);
  /* y = v, or clamped, with plane k's constants c[k] */
  void (*apply)(const float *x, const vmc_bn_planes *p, const vmc_bn_chan *c, float *y);
  /* into acc[k]: quantity 0 sum d, 1 sum d*(x - mu) */
  void (*bwd_sums)(const float *x, const float *dy, const vmc_bn_planes *p, const vmc_bn_chan *c,
                   vmc_bn_acc *acc);
  /* dx = (accumulate: dx +) the formula above */
  void (*bwd_dx)(const float *x, const float *dy, const vmc_bn_planes *p, const vmc_bn_chan *c,
                 float *dx, int accumulate);
} vmc_bn_kernels;

extern const vmc_bn_kernels vmc_bn_kernels__ref;
extern const vmc_bn_kernels vmc_bn_kernels__avx2;
extern const vmc_bn_kernels vmc_bn_kernels__avx512;

/* The variant vmc_isa_name() picks, chosen once. */
const vmc_bn_kernels *vmc_bn_kernels_best(void);

/* Quantity q's total: the lanes added in lane order. */
static inline double vmc_bn_total(const vmc_bn_acc *a, int q) {
  double s = 0;
  for (int i = 0; i < VMC_BN_LANES; i++) s += a->l[q][i];
  return s;
}

#endif
