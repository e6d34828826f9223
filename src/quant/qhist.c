/* The calibration histogram (power-of-two range, exact merges when it grows)
 * and the three searches on it: percentile, MSE-optimal clipping, KL
 * (TensorRT entropy calibration).  The algorithms are specified in quant.h. */
#include "quant/qhist.h"

#include <string.h>

vmc_status vmc_qhist_init(vmc_qhist *h, int bins) {
  memset(h, 0, sizeof *h);
  if (bins < 512 || bins > 8192 || (bins & (bins - 1)))
    return vmc_error(VMC_ERR_INVALID_ARG,
                     "observer: %d histogram bins (need a power of two in [512, 8192])", bins);
  const int fine = bins * VMC_QHIST_FINE;
  h->pos = vmc_malloc_plain(2 * (size_t)fine * sizeof *h->pos);
  if (!h->pos) return vmc_error(VMC_ERR_NOMEM, "observer: histogram of %d bins", fine);
  h->neg = h->pos + fine;
  h->bins = bins;
  h->fine = fine;
  return VMC_OK;
}

void vmc_qhist_free(vmc_qhist *h) {
  vmc_free(h->pos);
  memset(h, 0, sizeof *h);
}

/* The smallest e with 2^e >= m > 0. */
static int exp_ceil(double m) {
  int e;
  const double f = frexp(m, &e); /* m = f 2^e, f in [0.5, 1) */
  return f == 0.5 ? e - 1 : e;
}

/* Range times 2^shift: new bin j = old bins [j 2^shift, (j+1) 2^shift). */
static void merge_bins(uint64_t *c, int bins, int shift) {
  if (shift <= 0) return;
  if (shift >= 30 || (1 << shift) >= bins) {
    uint64_t all = 0;
    for (int i = 0; i < bins; i++) all += c[i];
    memset(c, 0, (size_t)bins * sizeof *c);
    c[0] = all;
    return;
  }
  const int f = 1 << shift, nb = bins >> shift;
  for (int j = 0; j < nb; j++) { /* reads [j f, j f + f) >= j: not yet overwritten */
    uint64_t s = 0;
    for (int t = 0; t < f; t++) s += c[j * f + t];
    c[j] = s;
  }
  memset(c + nb, 0, (size_t)(bins - nb) * sizeof *c);
}

void vmc_qhist_add(vmc_qhist *h, const float *x, size_t n, float amax) {
  if (amax > 0) {
    const int e = exp_ceil(amax);
    if (!h->has_range) {
      h->exp = e;
      h->has_range = 1;
    } else if (e > h->exp) {
      merge_bins(h->pos, h->fine, e - h->exp);
      merge_bins(h->neg, h->fine, e - h->exp);
      h->exp = e;
    }
  }
  const double inv_w = h->has_range ? ldexp((double)h->fine, -h->exp) : 0.0;
  const size_t last = (size_t)h->fine - 1;
  for (size_t i = 0; i < n; i++) {
    const float v = x[i];
    if (!isfinite(v)) continue;
    if (v == 0) {
      h->zeros++;
      continue;
    }
    size_t b = (size_t)(fabs((double)v) * inv_w);
    b = b < last ? b : last;
    (v > 0 ? h->pos : h->neg)[b]++;
  }
}

/* ---- views: bins to search, their values taken as uniform over each bin ------------- */

/* Counts of x > 0 and x < 0 over n bins of width w (bin i: |x| in
 * [i w, (i+1) w)), and the observed extremes the intervals are clipped to. */
typedef struct hview {
  const uint64_t *pos, *neg;
  uint64_t zeros;
  int n;
  double w, min, max;
} hview;

typedef struct seg {
  double a, b; /* a <= b */
  double c;    /* count */
} seg;

/* Bin i on side sgn (+1: x > 0, -1: x < 0), clipped to the observed extremes. */
static seg seg_of(const hview *hv, int sgn, int i) {
  const double w = hv->w;
  seg s;
  if (sgn > 0) {
    s.a = i * w;
    s.b = fmin((i + 1) * w, hv->max);
    s.c = (double)hv->pos[i];
  } else {
    s.a = fmax(-(i + 1) * w, hv->min);
    s.b = -i * w;
    s.c = (double)hv->neg[i];
  }
  if (s.b < s.a) s.b = s.a; /* only by rounding */
  return s;
}

static hview fine_view(const vmc_qhist_view *v) {
  const hview hv = {v->h->pos, v->h->neg, v->h->zeros, v->h->fine,
                    vmc_qhist_width(v->h), v->min, v->max};
  return hv;
}

/* The fine bins merged by m = ceil(used / bins) (used: up to the last
 * non-empty fine bin, more than half of them), so that the data spans
 * between 8/9 bins and bins bins; buf (2 bins counts) is allocated here,
 * vmc_free it. */
static vmc_status coarse_view(const vmc_qhist_view *v, uint64_t **buf, hview *out) {
  const vmc_qhist *h = v->h;
  int used = 0;
  for (int i = 0; i < h->fine; i++)
    if (h->pos[i] || h->neg[i]) used = i + 1;
  const int m = used > h->bins ? (used + h->bins - 1) / h->bins : 1;
  uint64_t *c = vmc_malloc_plain(2 * (size_t)h->bins * sizeof *c);
  if (!c) return vmc_error(VMC_ERR_NOMEM, "observer: histogram search");
  for (int i = 0; i < used; i++) {
    c[i / m] += h->pos[i];
    c[h->bins + i / m] += h->neg[i];
  }
  *buf = c;
  *out = (hview){c, c + h->bins, h->zeros, h->bins, m * vmc_qhist_width(h), v->min, v->max};
  return VMC_OK;
}

/* ---- percentile ----------------------------------------------------------------------- */

/* The value where the cumulative count reaches target inside s (cum before it). */
static double interp(seg s, double cum, double target) {
  return s.a + (s.b - s.a) * ((target - cum) / s.c);
}

/* q-quantile (q in [0, 1]) of x, or of |x| (absolute). */
static double quantile(const hview *hv, double q, int absolute) {
  double total = (double)hv->zeros;
  for (int i = 0; i < hv->n; i++) total += (double)hv->pos[i] + (double)hv->neg[i];
  const double target = q * total;
  double cum = 0;
  if (absolute) {
    cum = (double)hv->zeros;
    if (hv->zeros && target <= cum) return 0.0;
    for (int i = 0; i < hv->n; i++) {
      const seg sp = seg_of(hv, 1, i), sn = seg_of(hv, -1, i);
      if (sp.c + sn.c == 0) continue;
      /* |x| interval: from the bin's edge to the wider side's clipped end. */
      const seg s = {sp.a, fmax(sp.c ? sp.b : sp.a, sn.c ? -sn.a : sp.a), sp.c + sn.c};
      if (cum + s.c >= target) return interp(s, cum, target);
      cum += s.c;
    }
    return fmax(-hv->min, hv->max);
  }
  for (int i = hv->n - 1; i >= 0; i--) {
    const seg s = seg_of(hv, -1, i);
    if (s.c == 0) continue;
    if (cum + s.c >= target) return interp(s, cum, target);
    cum += s.c;
  }
  cum += (double)hv->zeros;
  if (hv->zeros && target <= cum) return 0.0;
  for (int i = 0; i < hv->n; i++) {
    const seg s = seg_of(hv, 1, i);
    if (s.c == 0) continue;
    if (cum + s.c >= target) return interp(s, cum, target);
    cum += s.c;
  }
  return hv->max;
}

static float clampf(double x, float lo, float hi) {
  return x < lo ? lo : x > hi ? hi : (float)x;
}

void vmc_qhist_percentile(const vmc_qhist_view *v, double pct, float *lo, float *hi) {
  const double p = pct / 100.0;
  const hview hv = fine_view(v);
  if (v->si->symmetric) {
    const float amax = fmaxf(-v->min, v->max);
    const float t = clampf(quantile(&hv, p, 1), 0, amax);
    *lo = -t;
    *hi = t;
  } else {
    *lo = clampf(quantile(&hv, 1.0 - p, 0), v->min, v->max);
    *hi = clampf(quantile(&hv, p, 0), v->min, v->max);
  }
}

/* ---- MSE ----------------------------------------------------------------------------- */

/* The quantization grid g0, g0 + d, ..., g1 of a candidate's parameters. */
typedef struct grid {
  double g0, g1, d;
} grid;

/* int_0^y e(u)^2 du for the sawtooth e(u) = (u mod d) - d/2. */
static double saw2(double y, double d) {
  const double j = floor(y / d), r = y - j * d, h = d / 2;
  return j * d * d * d / 12 + ((r - h) * (r - h) * (r - h) + h * h * h) / 3;
}

/* int_a^b (x - Q(x))^2 dx, Q rounding to the nearest grid point (clamped). */
static double err_integral(double a, double b, const grid *g) {
  double e = 0;
  if (a < g->g0) {
    const double t = fmin(b, g->g0);
    e += ((t - g->g0) * (t - g->g0) * (t - g->g0) - (a - g->g0) * (a - g->g0) * (a - g->g0)) / 3;
  }
  if (b > g->g1) {
    const double t = fmax(a, g->g1);
    e += ((b - g->g1) * (b - g->g1) * (b - g->g1) - (t - g->g1) * (t - g->g1) * (t - g->g1)) / 3;
  }
  const double lo = fmax(a, g->g0), hi = fmin(b, g->g1);
  if (hi > lo) e += saw2(hi - g->g0 + g->d / 2, g->d) - saw2(lo - g->g0 + g->d / 2, g->d);
  return e;
}

/* (x - Q(x))^2 at one point. */
static double err_point(double x, const grid *g) {
  double k = nearbyint((x - g->g0) / g->d);
  const double kmax = nearbyint((g->g1 - g->g0) / g->d);
  k = k < 0 ? 0 : k > kmax ? kmax : k;
  const double e = x - (g->g0 + k * g->d);
  return e * e;
}

static double range_error(const seg *s, int n, const vmc_qparams *p) {
  const grid g = {((double)p->qmin - p->zero_point) * p->scale,
                  ((double)p->qmax - p->zero_point) * p->scale, (double)p->scale};
  double e = 0;
  for (int i = 0; i < n; i++) {
    const double width = s[i].b - s[i].a;
    if (width > 1e-12 * fmax(fabs(s[i].a), fabs(s[i].b)))
      e += s[i].c / width * err_integral(s[i].a, s[i].b, &g);
    else
      e += s[i].c * err_point(s[i].a, &g);
  }
  return e;
}

/* The MSE search's state: the segments, the base range, the best so far. */
typedef struct mse_search {
  const vmc_qhist_view *v;
  const seg *s;
  int n, bins;
  float bmin, bmax, amax;
  double best;
  int best_k;
} mse_search;

/* Candidate k (range k / bins of the base range); keeps it if strictly better. */
static void mse_try(mse_search *m, int k) {
  const double f = (double)k / m->bins;
  const int sym = m->v->si->symmetric;
  const float clo = sym ? (float)(-f * m->amax) : (float)(f * m->bmin);
  const float chi = sym ? (float)(f * m->amax) : (float)(f * m->bmax);
  vmc_qparams p;
  if (vmc_qparams_from_range(clo, chi, m->v->scheme, &p) != VMC_OK) return;
  const double e = range_error(m->s, m->n, &p);
  if (e < m->best) {
    m->best = e;
    m->best_k = k;
  }
}

/* The grid k = bins, bins - c, ..., c (c = bins / 128), then every k within c
 * of the best; largest first, so ties keep the larger range. */
#define MSE_COARSE 128

vmc_status vmc_qhist_mse(const vmc_qhist_view *v, float *lo, float *hi) {
  const int bins = v->h->bins;
  const float bmin = fminf(v->min, 0), bmax = fmaxf(v->max, 0), amax = fmaxf(-bmin, bmax);
  *lo = *hi = 0;
  if (amax == 0) return VMC_OK;
  uint64_t *counts;
  hview hv;
  VMC_TRY(coarse_view(v, &counts, &hv));
  seg *s = vmc_malloc_plain(2 * (size_t)bins * sizeof *s);
  if (!s) {
    vmc_free(counts);
    return vmc_error(VMC_ERR_NOMEM, "observer: MSE search");
  }
  int n = 0;
  for (int i = 0; i < hv.n; i++) {
    if (hv.neg[i]) s[n++] = seg_of(&hv, -1, i);
    if (hv.pos[i]) s[n++] = seg_of(&hv, 1, i);
  }
  vmc_free(counts);
  mse_search m = {v, s, n, bins, bmin, bmax, amax, INFINITY, bins};
  const int c = bins / MSE_COARSE;
  for (int k = bins; k >= c; k -= c) mse_try(&m, k);
  const int k0 = m.best_k;
  m.best = INFINITY;
  for (int k = k0 + c - 1 < bins ? k0 + c - 1 : bins; k >= 1 && k > k0 - c; k--) mse_try(&m, k);
  vmc_free(s);
  const double f = (double)m.best_k / bins;
  *lo = v->si->symmetric ? (float)(-f * amax) : (float)(f * bmin);
  *hi = v->si->symmetric ? (float)(f * amax) : (float)(f * bmax);
  return VMC_OK;
}

/* ---- KL --------------------------------------------------------------------------------- */

#define KL_EPS 1e-4  /* MXNet's _smooth_distribution eps, in counts */
#define KL_MAX_LEVELS 256

int vmc_qhist_kl_search(const uint64_t *h, int used, int nq) {
  if (nq < 2 || nq > KL_MAX_LEVELS || used < nq) return 0;
  double mass[KL_MAX_LEVELS], cnt[KL_MAX_LEVELS];
  uint64_t total = 0, inside = 0;
  for (int k = 0; k < used; k++) total += h[k];
  for (int k = 0; k < nq - 1; k++) inside += h[k];
  double best = INFINITY;
  int best_i = 0;
  for (int i = nq; i <= used; i++) {
    inside += h[i - 1];
    const uint64_t out = total - inside;
    /* Group j holds bins [ceil(j i / nq), ceil((j+1) i / nq)): floor(k nq / i) == j. */
    int nz_p = 0, z_q = 0;
    for (int j = 0; j < nq; j++) {
      const int k0 = (int)(((int64_t)j * i + nq - 1) / nq);
      const int k1 = (int)(((int64_t)(j + 1) * i + nq - 1) / nq);
      double m = 0, c = 0;
      for (int k = k0; k < k1; k++) {
        m += (double)h[k];
        c += h[k] || (k == i - 1 && out);
      }
      mass[j] = m;
      cnt[j] = c;
      nz_p += (int)c;
      if (m == 0) z_q += (int)c; /* P != 0 but Q == 0 */
    }
    const int z_p = i - nz_p;
    z_q += z_p;
    if (nz_p == 0 || z_q == i) continue;
    const double sp = (double)total, sq = (double)inside;
    const double eps_p = KL_EPS * z_p / nz_p, eps_q = KL_EPS * z_q / (i - z_q);
    /* sum over P != 0 of (pv/sp) log((pv/sp) / (qv/sq))
     *   = (1/sp) sum pv (log pv - log qv) + (sum pv / sp) log(sq / sp). */
    double acc = 0, psum = 0;
    int ok = 1;
    for (int j = 0; j < nq && ok; j++) {
      if (cnt[j] == 0) continue;
      const int k0 = (int)(((int64_t)j * i + nq - 1) / nq);
      const int k1 = (int)(((int64_t)(j + 1) * i + nq - 1) / nq);
      const double qv = mass[j] > 0 ? mass[j] / cnt[j] - eps_q : KL_EPS;
      if (qv <= 0) { /* smoothing failed: MXNet skips the candidate */
        ok = 0;
        break;
      }
      const double lq = log(qv);
      for (int k = k0; k < k1; k++) {
        const double pc = (double)h[k] + (k == i - 1 ? (double)out : 0.0);
        if (pc == 0) continue;
        const double pv = pc - eps_p;
        if (pv <= 0) {
          ok = 0;
          break;
        }
        acc += pv * (log(pv) - lq);
        psum += pv;
      }
    }
    if (!ok) continue;
    /* Where P == 0 (so Q == 0) both are smoothed to eps: (eps/sp) log(sq/sp) each. */
    double kl = acc / sp + (psum / sp) * log(sq / sp);
    kl += z_p * (KL_EPS / sp) * log(sq / sp);
    if (kl < best) {
      best = kl;
      best_i = i;
    }
  }
  return best_i;
}

vmc_status vmc_qhist_kl(const vmc_qhist_view *v, float *lo, float *hi) {
  const vmc_qscheme_info *si = v->si;
  const float amax = fmaxf(-v->min, v->max);
  int nq = si->symmetric ? si->qmax + 1 : si->qmax - si->qmin + 1;
  if (!si->symmetric && v->min < 0) nq /= 2;
  uint64_t *h;
  hview hv;
  VMC_TRY(coarse_view(v, &h, &hv));
  int used = 0;
  for (int k = 0; k < hv.n; k++) {
    h[k] += hv.neg[k]; /* h aliases hv.pos: |x| counts */
    if (h[k]) used = k + 1;
  }
  const int i = vmc_qhist_kl_search(h, used, nq);
  vmc_free(h);
  const double t = i ? fmin(i * hv.w, amax) : amax;
  if (si->symmetric) {
    *lo = (float)-t;
    *hi = (float)t;
  } else {
    *lo = fmaxf(v->min, (float)-t);
    *hi = fminf(v->max, (float)t);
  }
  return VMC_OK;
}
