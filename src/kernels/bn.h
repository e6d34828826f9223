/* BatchNorm kernels over one channel: n image planes of hw contiguous
 * floats each, `stride` floats apart (NCHW: stride = C*H*W).  The op
 * (src/ops/batchnorm.c) runs channels in parallel, one call per channel.
 *
 * Every variant reduces in the same fixed order, so all of them give the
 * same bits (tested), whatever the compiler: 16 float lanes, lane l summing
 * the plane's elements i = l (mod 16) in increasing i, over a chunk of at
 * most VMC_BN_CHUNK floats of one plane; after each chunk every lane is
 * added to its own double accumulator; at the end the 16 doubles are added
 * in lane order (vmc_bn_lanes_sum).  Products and sums are rounded
 * separately (no FMA contraction anywhere).
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

/* Where a channel's planes lie. */
typedef struct vmc_bn_planes {
  int n;         /* planes (images) */
  int hw;        /* floats per plane */
  size_t stride; /* floats from one plane to the next */
} vmc_bn_planes;

typedef struct vmc_bn_kernels {
  const char *isa;
  /* Shifted sums: *s1 = sum (x - shift), *s2 = sum (x - shift)^2.  With a
   * shift near the mean (the op passes the first plane's mean) the
   * variance s2/M - (s1/M)^2 loses no precision to cancellation. */
  void (*stats)(const float *x, const vmc_bn_planes *p, float shift, double *s1, double *s2);
  /* y = v, or clamped */
  void (*apply)(const float *x, const vmc_bn_planes *p, const vmc_bn_chan *c, float *y);
  /* *sdy = sum d, *sdyx = sum d*(x - mu) */
  void (*bwd_sums)(const float *x, const float *dy, const vmc_bn_planes *p, const vmc_bn_chan *c,
                   double *sdy, double *sdyx);
  /* dx = (accumulate: dx +) the formula above */
  void (*bwd_dx)(const float *x, const float *dy, const vmc_bn_planes *p, const vmc_bn_chan *c,
                 float *dx, int accumulate);
} vmc_bn_kernels;

extern const vmc_bn_kernels vmc_bn_kernels__ref;
extern const vmc_bn_kernels vmc_bn_kernels__avx2;
extern const vmc_bn_kernels vmc_bn_kernels__avx512;

/* The variant vmc_isa_name() picks, chosen once. */
const vmc_bn_kernels *vmc_bn_kernels_best(void);

/* The lanes' total, added in lane order. */
static inline double vmc_bn_lanes_sum(const double *l) {
  double s = 0;
  for (int i = 0; i < VMC_BN_LANES; i++) s += l[i];
  return s;
}

#endif
