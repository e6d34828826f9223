/* fp32 pooling kernels.
 *
 * 2x2 max pooling with stride 2 and no padding (LeNet's and VGG's), one
 * plane of h x w floats into oh = h / 2 rows of ow = w / 2:
 *   y[oy][ox] = the first largest of a = x[2oy][2ox], b = x[2oy][2ox + 1],
 *               c = x[2oy + 1][2ox], d = x[2oy + 1][2ox + 1]
 * in that order: a later candidate replaces the best only when greater (the
 * maxpool op's scalar rule, so a tie keeps the earlier one and a NaN is kept
 * only as a), and arg[oy * ow + ox] (arg not NULL) its index iy * w + ix in
 * the plane, which the backward scatters to.  Every variant gives the same
 * values and indices (tested). */
#ifndef VMC_KERNELS_POOL_H
#define VMC_KERNELS_POOL_H

#include "core/core.h"

typedef void (*vmc_maxpool2_fn)(const float *x, int h, int w, float *y, int32_t *arg);
void vmc_maxpool2__ref(const float *x, int h, int w, float *y, int32_t *arg);
void vmc_maxpool2__avx2(const float *x, int h, int w, float *y, int32_t *arg);
void vmc_maxpool2__avx512(const float *x, int h, int w, float *y, int32_t *arg);
/* The variant of vmc_isa_name() (chosen once). */
vmc_maxpool2_fn vmc_maxpool2_best(void);

#endif
