/* Internal: the calibration histogram and the range searches on it
 * (percentile, MSE, KL); see quant.h for the algorithms. */
#ifndef VMC_QHIST_H
#define VMC_QHIST_H

#include "quant/quant.h"

#define VMC_QHIST_FINE 16 /* fine bins per search bin */

typedef struct vmc_qhist {
  int bins;            /* search resolution: a power of two */
  int fine;            /* bins * VMC_QHIST_FINE, the stored bins */
  int has_range;       /* a non-zero finite value has been seen */
  int exp;             /* R = 2^exp when has_range */
  uint64_t *pos, *neg; /* |x| counts of x > 0 and x < 0, fine bin i: [i w, (i+1) w) */
  uint64_t zeros;      /* exact zeros (either sign) */
} vmc_qhist;

/* The observed finite extremes, and the target scheme. */
typedef struct vmc_qhist_view {
  const vmc_qhist *h;
  float min, max;
  const vmc_qscheme_info *si;
  vmc_qscheme scheme;
} vmc_qhist_view;

vmc_status vmc_qhist_init(vmc_qhist *h, int bins);
void vmc_qhist_free(vmc_qhist *h);
/* Width of a fine bin. */
static inline double vmc_qhist_width(const vmc_qhist *h) {
  return h->has_range ? ldexp(1.0, h->exp) / h->fine : 0.0;
}
/* Adds the finite values of x; amax = their largest |x| (0 if none). */
void vmc_qhist_add(vmc_qhist *h, const float *x, size_t n, float amax);

/* Ranges: [lo, hi] within [min, max] of the view (never called without a
 * finite value).  pct in (50, 100]. */
void vmc_qhist_percentile(const vmc_qhist_view *v, double pct, float *lo, float *hi);
vmc_status vmc_qhist_mse(const vmc_qhist_view *v, float *lo, float *hi);
vmc_status vmc_qhist_kl(const vmc_qhist_view *v, float *lo, float *hi);

/* Internal, exposed for tests: the KL threshold bin count i (the range is
 * i * w) for |x| counts h[0..used) with nq <= 256 levels, or 0 if none qualifies. */
int vmc_qhist_kl_search(const uint64_t *h, int used, int nq);

#endif
