/* Calibration observers (src/quant): min/max and moving average on
 * hand-computed batches, percentiles of known sets, MSE clipping where the
 * optimum is known in closed form, KL (entropy) calibration on |N(0,1)|
 * with far outliers and on a uniform distribution, the histogram's
 * independence from how the data is split into batches, NaN/inf counting,
 * degenerate and invalid input. */
#include "quant/qhist.h"
#include "quant/quant.h"
#include "test.h"

#include <stdlib.h>

/* An observer of kind over the batches x[0..n) split at the given sizes. */
static vmc_status observe_all(vmc_observer_kind kind, vmc_qscheme scheme, const float *x,
                              size_t n, size_t batch, float *lo, float *hi) {
  vmc_observer_opts o = {.scheme = scheme};
  vmc_observer *obs;
  VMC_TRY(vmc_observer_create(kind, &o, &obs));
  vmc_status s = VMC_OK;
  for (size_t i = 0; i < n && s == VMC_OK; i += batch)
    s = vmc_observer_observe(obs, x + i, n - i < batch ? n - i : batch);
  if (s == VMC_OK) s = vmc_observer_range(obs, lo, hi);
  vmc_observer_destroy(obs);
  return s;
}

TEST(quant_obs_minmax) {
  vmc_observer *obs;
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_MINMAX, NULL, &obs));
  float lo, hi;
  CHECK(vmc_observer_range(obs, &lo, &hi) == VMC_ERR_INVALID_ARG); /* nothing seen */
  const float b1[] = {1, -2, 3}, b2[] = {NAN, 5, -INFINITY}, b4[] = {0.5f};
  CHECK_OK(vmc_observer_observe(obs, b1, 3));
  CHECK_OK(vmc_observer_observe(obs, b2, 3));
  CHECK_OK(vmc_observer_observe(obs, NULL, 0));
  CHECK_OK(vmc_observer_observe(obs, b4, 1));
  CHECK(vmc_observer_observe(obs, NULL, 2) == VMC_ERR_INVALID_ARG);
  vmc_observer_stats st;
  vmc_observer_stats_get(obs, &st);
  CHECK_EQ_INT(st.count, 5);
  CHECK_EQ_INT(st.nonfinite, 2);
  CHECK_EQ_INT(st.batches, 3);
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK(lo == -2.0f && hi == 5.0f);
  vmc_qparams p;
  REQUIRE_OK(vmc_observer_qparams(obs, &p)); /* default scheme: s8 */
  CHECK_NEAR(p.scale, 5.0 / 127, 1e-8);
  CHECK_EQ_INT(p.zero_point, 0);
  vmc_observer_destroy(obs);
}

TEST(quant_obs_moving_avg) {
  vmc_observer_opts o = {.scheme = VMC_QSCHEME_U8, .momentum = 0.5f};
  vmc_observer *obs;
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_MOVING_AVG, &o, &obs));
  const float b1[] = {-1, 2, 0}, b2[] = {-3, 4}, b3[] = {0, 1, NAN}, bn[] = {NAN, INFINITY};
  float lo, hi;
  CHECK_OK(vmc_observer_observe(obs, bn, 2)); /* no finite value: no update */
  CHECK(vmc_observer_range(obs, &lo, &hi) == VMC_ERR_INVALID_ARG);
  CHECK_OK(vmc_observer_observe(obs, b1, 3)); /* first: its own min/max */
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK(lo == -1 && hi == 2);
  CHECK_OK(vmc_observer_observe(obs, b2, 2)); /* -1 + .5(-3+1), 2 + .5(4-2) */
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK(lo == -2 && hi == 3);
  CHECK_OK(vmc_observer_observe(obs, bn, 2));
  CHECK_OK(vmc_observer_observe(obs, b3, 3)); /* -2 + .5(0+2), 3 + .5(1-3) */
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK(lo == -1 && hi == 2);
  vmc_observer_stats st;
  vmc_observer_stats_get(obs, &st);
  CHECK(st.min == -3 && st.max == 4); /* the exact extremes are kept too */
  CHECK_EQ_INT(st.nonfinite, 5);
  vmc_observer_destroy(obs);
  /* Default momentum 0.01. */
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_MOVING_AVG, NULL, &obs));
  const float c1[] = {-1, 1}, c2[] = {-2, 3};
  CHECK_OK(vmc_observer_observe(obs, c1, 2));
  CHECK_OK(vmc_observer_observe(obs, c2, 2));
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK_NEAR(lo, -1.01, 1e-6);
  CHECK_NEAR(hi, 1.02, 1e-6);
  vmc_observer_destroy(obs);
}

TEST(quant_obs_percentile) {
  enum { N = 10000 };
  float *x = malloc(N * sizeof *x);
  REQUIRE(x);
  vmc_observer_opts o = {.scheme = VMC_QSCHEME_U8, .percentile = 99};
  vmc_observer *obs;
  float lo, hi;
  /* 1..10000: the 99th percentile is 9900 (to within one fine bin, 0.5). */
  for (int i = 0; i < N; i++) x[i] = (float)(i + 1);
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_PERCENTILE, &o, &obs));
  CHECK_OK(vmc_observer_observe(obs, x, N));
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK_NEAR(hi, 9900, 1.0);
  CHECK_NEAR(lo, 100, 1.0); /* the 1st percentile */
  vmc_observer_destroy(obs);
  /* Signed, symmetric: the percentile of |x|. */
  for (int i = 0; i < N; i++) x[i] = (float)((i % 2 ? -1 : 1) * (i + 1));
  o.scheme = VMC_QSCHEME_S8;
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_PERCENTILE, &o, &obs));
  CHECK_OK(vmc_observer_observe(obs, x, N));
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK_NEAR(hi, 9900, 1.0);
  CHECK(lo == -hi);
  vmc_observer_destroy(obs);
  /* Signed, asymmetric: both tails of -5000..4999. */
  for (int i = 0; i < N; i++) x[i] = (float)(i - 5000);
  o.scheme = VMC_QSCHEME_U8;
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_PERCENTILE, &o, &obs));
  for (int b = 0; b < 10; b++) CHECK_OK(vmc_observer_observe(obs, x + b * 1000, 1000));
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK_NEAR(lo, -4900, 1.0);
  CHECK_NEAR(hi, 4900, 1.0);
  vmc_observer_destroy(obs);
  /* Exact zeros are a point mass: 9000 zeros and 1..1000. */
  for (int i = 0; i < N; i++) x[i] = i < 9000 ? 0.0f : (float)(i - 8999);
  o.percentile = 95;
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_PERCENTILE, &o, &obs));
  CHECK_OK(vmc_observer_observe(obs, x, N));
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK_NEAR(hi, 500, 1.0);
  CHECK(lo == 0);
  vmc_observer_destroy(obs);
  /* p = 100: the exact extremes. */
  o.percentile = 100;
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_PERCENTILE, &o, &obs));
  CHECK_OK(vmc_observer_observe(obs, x, N));
  REQUIRE_OK(vmc_observer_range(obs, &lo, &hi));
  CHECK(hi == 1000 && lo == 0);
  vmc_observer_destroy(obs);
  free(x);
}

/* Uniform on [0, 1], the midpoints of N equal cells. */
static void fill_uniform(float *x, int n, float lo, float hi) {
  for (int i = 0; i < n; i++) x[i] = lo + (hi - lo) * ((float)i + 0.5f) / (float)n;
}

TEST(quant_obs_mse) {
  enum { N = 100000 };
  float *x = malloc((N + 1) * sizeof *x);
  REQUIRE(x);
  float lo, hi;
  /* Uniform on [0, 1] with L steps: clipping at T costs (1-T)^3/3, rounding
   * T^3/(12 L^2); the optimum is T = 2L / (2L + 1): 0.998 (u8), 0.968 (u4). */
  fill_uniform(x, N, 0, 1);
  REQUIRE_OK(observe_all(VMC_OBSERVER_MSE, VMC_QSCHEME_U8, x, N, 4096, &lo, &hi));
  CHECK(lo == 0);
  CHECK_NEAR(hi, 510.0 / 511, 0.003);
  REQUIRE_OK(observe_all(VMC_OBSERVER_MSE, VMC_QSCHEME_U4, x, N, 4096, &lo, &hi));
  CHECK_NEAR(hi, 30.0 / 31, 0.005);
  /* u4 with one far outlier at 10: keeping it costs ~6000 (the bulk rounds
   * to 0 or 0.67), clipping it ~100: MSE clips near 0.97; min/max keeps 10. */
  x[N] = 10.0f;
  REQUIRE_OK(observe_all(VMC_OBSERVER_MSE, VMC_QSCHEME_U4, x, N + 1, 4096, &lo, &hi));
  CHECK(hi > 0.94f && hi < 1.0f);
  REQUIRE_OK(observe_all(VMC_OBSERVER_MINMAX, VMC_QSCHEME_U4, x, N + 1, 4096, &lo, &hi));
  CHECK(hi == 10.0f);
  /* Symmetric s8 on uniform [-1, 1]: the same optimum, 254/255 of the max. */
  fill_uniform(x, N, -1, 1);
  REQUIRE_OK(observe_all(VMC_OBSERVER_MSE, VMC_QSCHEME_S8, x, N, 4096, &lo, &hi));
  CHECK_NEAR(hi, 254.0 / 255, 0.003);
  CHECK(lo == -hi);
  free(x);
}

TEST(quant_obs_kl) {
  enum { N = 100000, OUT = 5 };
  float *x = malloc((N + OUT) * sizeof *x);
  REQUIRE(x);
  vmc_rng r;
  vmc_rng_seed(&r, 11);
  for (int i = 0; i < N; i++) x[i] = fabsf(vmc_rng_normal(&r));
  for (int i = 0; i < OUT; i++) x[N + i] = 50.0f;
  float lo, hi;
  /* |N(0,1)| with far outliers: a threshold of a few sigma, min/max 50. */
  REQUIRE_OK(observe_all(VMC_OBSERVER_KL, VMC_QSCHEME_S8, x, N + OUT, 10000, &lo, &hi));
  CHECK(hi > 2 && hi < 8);
  CHECK(lo == -hi);
  REQUIRE_OK(observe_all(VMC_OBSERVER_KL, VMC_QSCHEME_U8, x, N + OUT, 10000, &lo, &hi));
  CHECK(hi > 2 && hi < 8);
  CHECK(lo >= 0 && lo < 1e-3f); /* the smallest value: zp 0 */
  REQUIRE_OK(observe_all(VMC_OBSERVER_MINMAX, VMC_QSCHEME_U8, x, N + OUT, 10000, &lo, &hi));
  CHECK(hi == 50.0f);
  /* Signed N(0,1) with outliers at +-50, s8. */
  for (int i = 0; i < N; i++) x[i] = vmc_rng_normal(&r);
  x[N] = -50.0f;
  REQUIRE_OK(observe_all(VMC_OBSERVER_KL, VMC_QSCHEME_S8, x, N + OUT, 10000, &lo, &hi));
  CHECK(hi > 2 && hi < 8);
  /* Uniform: nothing worth clipping, the threshold is near the max. */
  fill_uniform(x, N, 0, 1);
  REQUIRE_OK(observe_all(VMC_OBSERVER_KL, VMC_QSCHEME_U8, x, N, 10000, &lo, &hi));
  CHECK(hi > 0.95f && hi <= 1.0f);
  REQUIRE_OK(observe_all(VMC_OBSERVER_KL, VMC_QSCHEME_S8, x, N, 10000, &lo, &hi));
  CHECK(hi > 0.95f && hi <= 1.0f);
  free(x);
}

TEST(quant_obs_kl_search_uniform_histogram) {
  /* A flat histogram of 512 bins: Q == P exactly without clipping (groups of
   * 4 equal bins), while any clipping piles mass into the last bin. */
  uint64_t h[512];
  for (int i = 0; i < 512; i++) h[i] = 100;
  CHECK_EQ_INT(vmc_qhist_kl_search(h, 512, 128), 512);
  CHECK_EQ_INT(vmc_qhist_kl_search(h, 100, 128), 0); /* fewer bins than levels */
  CHECK_EQ_INT(vmc_qhist_kl_search(h, 512, 1000), 0);
}

static int cmp_abs(const void *a, const void *b) {
  const float x = fabsf(*(const float *)a), y = fabsf(*(const float *)b);
  return (x > y) - (x < y);
}

/* The histogram's counts depend only on the values: one batch, or batches in
 * increasing magnitude (the range doubles many times), give the same ranges. */
TEST(quant_obs_batch_split_invariance) {
  enum { N = 20000 };
  float *x = malloc(N * sizeof *x);
  REQUIRE(x);
  vmc_rng r;
  vmc_rng_seed(&r, 3);
  for (int i = 0; i < N; i++) x[i] = vmc_rng_normal(&r) * (i % 1000 == 0 ? 30.0f : 1.0f);
  qsort(x, N, sizeof *x, cmp_abs);
  const vmc_observer_kind kinds[] = {VMC_OBSERVER_PERCENTILE, VMC_OBSERVER_MSE, VMC_OBSERVER_KL};
  for (int k = 0; k < 3; k++) {
    float lo1, hi1, lo2, hi2;
    REQUIRE_OK(observe_all(kinds[k], VMC_QSCHEME_U8, x, N, N, &lo1, &hi1));
    REQUIRE_OK(observe_all(kinds[k], VMC_QSCHEME_U8, x, N, 333, &lo2, &hi2));
    CHECK(lo1 == lo2 && hi1 == hi2);
    CHECK(lo1 < 0 && hi1 > 0);
  }
  free(x);
}

TEST(quant_obs_degenerate_and_errors) {
  /* All zeros: range [0, 0], qparams scale 1 for every kind. */
  const float z[64] = {0};
  for (int k = 0; k < VMC_OBSERVER_KIND_COUNT; k++) {
    float lo, hi;
    REQUIRE_OK(observe_all((vmc_observer_kind)k, VMC_QSCHEME_U8, z, 64, 16, &lo, &hi));
    CHECK(lo == 0 && hi == 0);
    vmc_observer *obs;
    REQUIRE_OK(vmc_observer_create((vmc_observer_kind)k, NULL, &obs));
    CHECK_OK(vmc_observer_observe(obs, z, 64));
    vmc_qparams p;
    REQUIRE_OK(vmc_observer_qparams(obs, &p));
    CHECK(p.scale == 1.0f && p.zero_point == 0);
    vmc_observer_destroy(obs);
    /* Only non-finite values: an error that says so. */
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    REQUIRE_OK(vmc_observer_create((vmc_observer_kind)k, NULL, &obs));
    CHECK_OK(vmc_observer_observe(obs, bad, 3));
    CHECK(vmc_observer_range(obs, &lo, &hi) == VMC_ERR_INVALID_ARG);
    CHECK(strstr(vmc_last_error(), "3 non-finite") != NULL);
    vmc_observer_destroy(obs);
    /* Names round-trip. */
    vmc_observer_kind back;
    REQUIRE_OK(vmc_observer_kind_from_name(vmc_observer_kind_name((vmc_observer_kind)k), &back));
    CHECK_EQ_INT(back, k);
  }
  /* A single tiny value and a huge one: the range grows across ~250 octaves. */
  const float ext[2] = {1e-38f, 3e38f};
  float lo, hi;
  REQUIRE_OK(observe_all(VMC_OBSERVER_KL, VMC_QSCHEME_S8, ext, 2, 1, &lo, &hi));
  CHECK(hi > 0 && hi <= 3e38f);
  REQUIRE_OK(observe_all(VMC_OBSERVER_MSE, VMC_QSCHEME_U8, ext, 2, 1, &lo, &hi));
  CHECK(hi > 0 && hi <= 3e38f);
  vmc_observer_kind kk;
  CHECK(vmc_observer_kind_from_name("entropy", &kk) == VMC_OK && kk == VMC_OBSERVER_KL);
  CHECK(vmc_observer_kind_from_name("ema", &kk) == VMC_OK && kk == VMC_OBSERVER_MOVING_AVG);
  CHECK(vmc_observer_kind_from_name("bogus", &kk) == VMC_ERR_INVALID_ARG);
  /* Bad options. */
  vmc_observer *obs = (vmc_observer *)&kk;
  const vmc_observer_opts bad[] = {{.momentum = 1.5f}, {.momentum = -0.1f}, {.percentile = 30},
                                   {.percentile = 100.5}, {.bins = 1000}, {.bins = 256},
                                   {.scheme = VMC_QSCHEME_COUNT}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK(vmc_observer_create(VMC_OBSERVER_KL, &bad[i], &obs) == VMC_ERR_INVALID_ARG);
    CHECK(obs == NULL);
  }
  CHECK(vmc_observer_create(VMC_OBSERVER_KIND_COUNT, NULL, &obs) == VMC_ERR_INVALID_ARG);
  /* Allocation failure is reported, not fatal. */
  vmc_fail_alloc_after(0);
  CHECK(vmc_observer_create(VMC_OBSERVER_KL, NULL, &obs) == VMC_ERR_NOMEM);
  vmc_fail_alloc_after(1);
  CHECK(vmc_observer_create(VMC_OBSERVER_KL, NULL, &obs) == VMC_ERR_NOMEM);
  vmc_fail_alloc_after(-1);
  REQUIRE_OK(vmc_observer_create(VMC_OBSERVER_KL, NULL, &obs));
  CHECK_OK(vmc_observer_observe(obs, ext, 2));
  vmc_fail_alloc_after(0);
  CHECK(vmc_observer_range(obs, &lo, &hi) == VMC_ERR_NOMEM);
  vmc_fail_alloc_after(-1);
  vmc_observer_destroy(obs);
  vmc_observer_destroy(NULL);
}
