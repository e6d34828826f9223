/* Calibration observers: the lifecycle, the statistics every kind keeps
 * (count, non-finite count, exact min/max), min/max and moving-average
 * min/max; the histogram kinds defer to qhist.c. */
#include "quant/qhist.h"

#include <string.h>

struct vmc_observer {
  vmc_observer_kind kind;
  vmc_observer_opts opts;
  vmc_observer_stats st;
  float avg_min, avg_max; /* MOVING_AVG, valid once st.count > 0 */
  vmc_qhist hist;         /* PERCENTILE, MSE, KL */
};

static const char *const g_kind_names[VMC_OBSERVER_KIND_COUNT] = {
    [VMC_OBSERVER_MINMAX] = "minmax",
    [VMC_OBSERVER_MOVING_AVG] = "moving-avg",
    [VMC_OBSERVER_PERCENTILE] = "percentile",
    [VMC_OBSERVER_MSE] = "mse",
    [VMC_OBSERVER_KL] = "kl",
};
_Static_assert(sizeof g_kind_names / sizeof g_kind_names[0] == VMC_OBSERVER_KIND_COUNT,
               "observer names");

const char *vmc_observer_kind_name(vmc_observer_kind k) {
  return (int)k >= 0 && k < VMC_OBSERVER_KIND_COUNT ? g_kind_names[k] : "unknown";
}

vmc_status vmc_observer_kind_from_name(const char *name, vmc_observer_kind *out) {
  if (name) {
    for (int k = 0; k < VMC_OBSERVER_KIND_COUNT; k++)
      if (strcmp(name, g_kind_names[k]) == 0) return *out = (vmc_observer_kind)k, VMC_OK;
    if (strcmp(name, "ema") == 0) return *out = VMC_OBSERVER_MOVING_AVG, VMC_OK;
    if (strcmp(name, "entropy") == 0) return *out = VMC_OBSERVER_KL, VMC_OK;
  }
  return vmc_error(VMC_ERR_INVALID_ARG,
                   "unknown observer '%s' (minmax, moving-avg, percentile, mse, kl)",
                   name ? name : "(null)");
}

static int uses_hist(vmc_observer_kind k) {
  return k == VMC_OBSERVER_PERCENTILE || k == VMC_OBSERVER_MSE || k == VMC_OBSERVER_KL;
}

vmc_status vmc_observer_create(vmc_observer_kind kind, const vmc_observer_opts *opts,
                               vmc_observer **out) {
  if (!out) return vmc_error(VMC_ERR_INVALID_ARG, "observer: NULL output");
  *out = NULL;
  if ((int)kind < 0 || kind >= VMC_OBSERVER_KIND_COUNT)
    return vmc_error(VMC_ERR_INVALID_ARG, "observer: unknown kind %d", (int)kind);
  vmc_observer_opts o = {0};
  if (opts) o = *opts;
  if (!vmc_qscheme_get(o.scheme))
    return vmc_error(VMC_ERR_INVALID_ARG, "observer: unknown scheme %d", (int)o.scheme);
  if (o.momentum == 0) o.momentum = 0.01f;
  if (o.percentile == 0) o.percentile = 99.99;
  if (o.bins == 0) o.bins = 2048;
  if (!(o.momentum > 0 && o.momentum <= 1))
    return vmc_error(VMC_ERR_INVALID_ARG, "observer: momentum %g not in (0, 1]",
                     (double)o.momentum);
  if (!(o.percentile > 50 && o.percentile <= 100))
    return vmc_error(VMC_ERR_INVALID_ARG, "observer: percentile %g not in (50, 100]",
                     o.percentile);
  vmc_observer *obs = vmc_malloc_plain(sizeof *obs);
  if (!obs) return vmc_error(VMC_ERR_NOMEM, "observer");
  obs->kind = kind;
  obs->opts = o;
  if (uses_hist(kind)) {
    const vmc_status s = vmc_qhist_init(&obs->hist, o.bins);
    if (s != VMC_OK) {
      vmc_free(obs);
      return s;
    }
  }
  *out = obs;
  return VMC_OK;
}

void vmc_observer_destroy(vmc_observer *obs) {
  if (!obs) return;
  if (uses_hist(obs->kind)) vmc_qhist_free(&obs->hist);
  vmc_free(obs);
}

vmc_status vmc_observer_observe(vmc_observer *obs, const float *x, size_t n) {
  if (!obs) return vmc_error(VMC_ERR_INVALID_ARG, "observer: NULL");
  if (n == 0) return VMC_OK;
  if (!x) return vmc_error(VMC_ERR_INVALID_ARG, "observer: NULL batch of %zu values", n);
  uint64_t finite = 0;
  float bmin = INFINITY, bmax = -INFINITY;
  for (size_t i = 0; i < n; i++) {
    const float v = x[i];
    if (!isfinite(v)) continue;
    finite++;
    bmin = v < bmin ? v : bmin;
    bmax = v > bmax ? v : bmax;
  }
  vmc_observer_stats *st = &obs->st;
  st->batches++;
  st->nonfinite += n - finite;
  if (!finite) return VMC_OK;
  if (st->count == 0) {
    st->min = bmin, st->max = bmax;
    obs->avg_min = bmin, obs->avg_max = bmax;
  } else {
    st->min = bmin < st->min ? bmin : st->min;
    st->max = bmax > st->max ? bmax : st->max;
    /* PyTorch's update; in double so that bmin - avg_min cannot overflow. */
    const double c = obs->opts.momentum;
    obs->avg_min = (float)(obs->avg_min + c * ((double)bmin - obs->avg_min));
    obs->avg_max = (float)(obs->avg_max + c * ((double)bmax - obs->avg_max));
  }
  st->count += finite;
  if (uses_hist(obs->kind)) vmc_qhist_add(&obs->hist, x, n, fmaxf(-bmin, bmax));
  return VMC_OK;
}

void vmc_observer_stats_get(const vmc_observer *obs, vmc_observer_stats *st) {
  if (st) *st = obs ? obs->st : (vmc_observer_stats){0};
}

vmc_status vmc_observer_range(const vmc_observer *obs, float *lo, float *hi) {
  if (!obs || !lo || !hi) return vmc_error(VMC_ERR_INVALID_ARG, "observer: NULL argument");
  if (obs->st.count == 0)
    return vmc_error(VMC_ERR_INVALID_ARG,
                     "observer (%s): no finite value observed (%llu non-finite)",
                     vmc_observer_kind_name(obs->kind), (unsigned long long)obs->st.nonfinite);
  const vmc_qhist_view v = {&obs->hist, obs->st.min, obs->st.max,
                            vmc_qscheme_get(obs->opts.scheme), obs->opts.scheme};
  switch (obs->kind) {
  case VMC_OBSERVER_MINMAX: *lo = obs->st.min, *hi = obs->st.max; return VMC_OK;
  case VMC_OBSERVER_MOVING_AVG: *lo = obs->avg_min, *hi = obs->avg_max; return VMC_OK;
  case VMC_OBSERVER_PERCENTILE: vmc_qhist_percentile(&v, obs->opts.percentile, lo, hi); return VMC_OK;
  case VMC_OBSERVER_MSE: return vmc_qhist_mse(&v, lo, hi);
  case VMC_OBSERVER_KL: return vmc_qhist_kl(&v, lo, hi);
  default: return vmc_error(VMC_ERR_INTERNAL, "observer: kind %d", (int)obs->kind);
  }
}

vmc_status vmc_observer_qparams(const vmc_observer *obs, vmc_qparams *out) {
  float lo, hi;
  VMC_TRY(vmc_observer_range(obs, &lo, &hi));
  return vmc_qparams_from_range(lo, hi, obs->opts.scheme, out);
}
