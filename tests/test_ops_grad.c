/* Every op's backward against central finite differences of its forward,
 * run directly through the op table (tests/op_harness.h).
 *
 * Loss L = sum(y * r) for a fixed random r, summed in double; analytic
 * gradients come from backward with dy = r.  Numeric: for each element v of
 * every input and trainable parameter, (L(v+eps) - L(v-eps)) / (the actual
 * float step), eps = 1e-2.  Inputs are drawn so that no step crosses a kink:
 * relu/relu6 inputs stay 0.1 away from 0 and 6, maxpool inputs are distinct
 * values 0.05 apart.  A tensor passes when
 *     max_i |numeric_i - analytic_i| <= 1e-2 * max(max|analytic|, max|numeric|, 1e-3)
 * (1e-2 relative to the tensor's scale, on its worst element): piecewise-
 * linear ops are exact up to float rounding of L (~1e-4 here), BatchNorm in
 * training adds an O(eps^2) curvature term.
 *
 * Each case runs with 1 and 2 threads, batch >= 2 (batch 3 with 2 threads
 * takes conv2d's parallel image loop).  Further checks over every case:
 * results equal across 1, 2 and 4 threads (within 1e-5), backward
 * accumulates into dx and parameter grads (+=), a NULL dx for the first input
 * leaves everything else unchanged, and a forward/backward over fewer images
 * than planned touches only those images. */
#include "op_harness.h"
#include "test.h"
#include "train/train.h"

#include <stdlib.h>
#include <string.h>

#define FD_EPS 1e-2f
#define FD_TOL 1e-2
#define THREAD_TOL 1e-5

typedef enum { GEN_UNIFORM, GEN_AWAY0, GEN_RELU6, GEN_DISTINCT } gen_kind;

typedef struct gcase {
  const char *name;
  vmc_oph_spec spec;
  gen_kind gen;
} gcase;

#define AI(k, v) {.key = k, .i = (v), .f = (float)(v)}
#define AF(k, v) {.key = k, .i = (int)(v), .f = (v)}
#define S4(n_, c_, h_, w_) {.ndim = 4, .d = {n_, c_, h_, w_}}
#define S2(n_, f_) {.ndim = 2, .d = {n_, f_}}
#define S1(n_) {.ndim = 1, .d = {n_}}

#define CONV(nm, N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, g, bias)                        \
  {nm,                                                                                         \
   {.op = "conv2d", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S4(N, C, H, W)}, .n_attr = 10,   \
    .attr = {AI("out_c", O), AI("kh", kh), AI("kw", kw), AI("sh", sh), AI("sw", sw),           \
             AI("ph", ph), AI("pw", pw), AI("dh", dh), AI("dw", dw), AI("groups", g)},         \
    .n_param = 1 + (bias), .pshape = {S4(O, (C) / (g), kh, kw), S1(O)}},                        \
   GEN_UNIFORM}

#define BN(nm, mode_, shape, C)                                                                \
  {nm,                                                                                         \
   {.op = "batchnorm", .mode = mode_, .n_in = 1, .in = {shape}, .n_attr = 2,                   \
    .attr = {AF("eps", 1e-5f), AF("momentum", 0.1f)}, .n_param = 4,                            \
    .pshape = {S1(C), S1(C), S1(C), S1(C)}, .pbuffer = {0, 0, 1, 1}},                           \
   GEN_UNIFORM}

/* frozen: training with the running statistics (kept unchanged) */
#define BN_FROZEN(nm, shape, C)                                                                \
  {nm,                                                                                         \
   {.op = "batchnorm", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {shape}, .n_attr = 3,          \
    .attr = {AF("eps", 1e-5f), AF("momentum", 0.1f), AI("frozen", 1)}, .n_param = 4,          \
    .pshape = {S1(C), S1(C), S1(C), S1(C)}, .pbuffer = {0, 0, 1, 1}},                           \
   GEN_UNIFORM}

#define POOL(nm, op_, N, C, H, W, kh, kw, sh, sw, ph, pw, gen)                                  \
  {nm,                                                                                         \
   {.op = op_, .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S4(N, C, H, W)}, .n_attr = 6,         \
    .attr = {AI("kh", kh), AI("kw", kw), AI("sh", sh), AI("sw", sw), AI("ph", ph),             \
             AI("pw", pw)}},                                                                   \
   gen}

#define UNARY(nm, op_, mode_, shape, gen) \
  {nm, {.op = op_, .mode = mode_, .n_in = 1, .in = {shape}}, gen}

static const gcase k_cases[] = {
    /* name                     N  C  H  W  O  kh kw sh sw ph pw dh dw  g bias */
    CONV("conv_3x3_p1_bias",    3, 3, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
    CONV("conv_3x3_p1_nobias",  2, 2, 5, 5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0),
    /* >= 8 channels each way: Winograd forward and dx (kernels/winograd.h);
     * with >= 128 tiles its dW too */
    CONV("conv_3x3_p1_winograd", 3, 8, 5, 6, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
    CONV("conv_3x3_p1_wino_dw", 3, 8, 3, 255, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0),
    CONV("conv_3x3_s2_p1",      3, 3, 7, 7, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0),
    CONV("conv_3x3_s2_p0_even", 2, 2, 8, 8, 3, 3, 3, 2, 2, 0, 0, 1, 1, 1, 1),
    CONV("conv_3x3_d2_p2",      3, 2, 7, 7, 3, 3, 3, 1, 1, 2, 2, 2, 2, 1, 1),
    CONV("conv_3x3_g2",         3, 4, 5, 5, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1),
    CONV("conv_dw3x3_p1",       3, 4, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 0),
    CONV("conv_dw3x3_s2_bias",  3, 3, 7, 7, 3, 3, 3, 2, 2, 1, 1, 1, 1, 3, 1),
    CONV("conv_dw3x3_d2_p2",    2, 3, 7, 7, 3, 3, 3, 1, 1, 2, 2, 2, 2, 3, 1),
    CONV("conv_dw_mult2",       3, 2, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2, 0),
    CONV("conv_1x1",            3, 5, 4, 4, 3, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0),
    CONV("conv_1x1_bias_g2",    2, 4, 4, 4, 6, 1, 1, 1, 1, 0, 0, 1, 1, 2, 1),
    CONV("conv_1x1_s2",         3, 3, 7, 7, 4, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0),
    CONV("conv_3x5_p1x2_s1x2",  2, 2, 6, 9, 3, 3, 5, 1, 2, 1, 2, 1, 1, 1, 1),
    CONV("conv_5x5_p2",         2, 2, 7, 7, 2, 5, 5, 1, 1, 2, 2, 1, 1, 1, 1),
    /* stride 1, padding other than "same" (WIDE without the shared dY copy) */
    CONV("conv_3x3_p0",         2, 2, 6, 7, 3, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1),
    CONV("conv_3x3_p2",         2, 2, 5, 5, 3, 3, 3, 1, 1, 2, 2, 1, 1, 1, 0),
    /* padding wider than the kernel's reach, or on one axis only (rows
     * share padding columns: a tap wraps into the next row's) */
    CONV("conv_1x1_p1",         2, 3, 4, 5, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
    CONV("conv_1x3_p0x1",       3, 3, 4, 5, 3, 1, 3, 1, 1, 0, 1, 1, 1, 1, 0),
    CONV("conv_3x3_p1x0",       2, 2, 5, 4, 3, 3, 3, 1, 1, 1, 0, 1, 1, 1, 1),
    CONV("conv_3x3_p2x1_d1x2",  2, 2, 6, 7, 3, 3, 3, 1, 1, 2, 1, 1, 2, 1, 0),
    /* strided convs: conv2d's PHASE strategy (strides <= 4), then IM2COL */
    CONV("conv_3x3_s3_p1",      3, 2, 8, 8, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 0),
    CONV("conv_3x3_s2_d2_g2",   2, 4, 9, 9, 4, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1),
    CONV("conv_2x2_s2x3_p1x0",  2, 3, 7, 8, 2, 2, 2, 2, 3, 1, 0, 1, 1, 1, 0),
    CONV("conv_5x5_s4_p2",      2, 2, 13, 10, 2, 5, 5, 4, 4, 2, 2, 1, 1, 1, 1),
    CONV("conv_1x1_s2_p1",      3, 3, 6, 6, 2, 1, 1, 2, 2, 1, 1, 1, 1, 1, 0),
    CONV("conv_3x3_s5_p1",      2, 2, 11, 11, 3, 3, 3, 5, 5, 1, 1, 1, 1, 1, 0),
    BN("bn_4d_train", VMC_MODE_TRAIN, S4(3, 4, 3, 3), 4),
    BN("bn_2d_train", VMC_MODE_TRAIN, S2(8, 5), 5),
    BN("bn_4d_eval", VMC_MODE_INFER, S4(3, 4, 3, 3), 4),
    BN("bn_2d_eval", VMC_MODE_INFER, S2(4, 5), 5),
    BN_FROZEN("bn_4d_frozen", S4(3, 4, 3, 3), 4),
    BN_FROZEN("bn_2d_frozen", S2(4, 5), 5),
    UNARY("relu_4d", "relu", VMC_MODE_TRAIN, S4(3, 3, 4, 4), GEN_AWAY0),
    UNARY("relu_2d", "relu", VMC_MODE_TRAIN, S2(4, 9), GEN_AWAY0),
    UNARY("relu6_4d", "relu6", VMC_MODE_TRAIN, S4(3, 3, 4, 4), GEN_RELU6),
    /*   name                 op          N  C  H  W kh kw sh sw ph pw */
    POOL("maxpool_2x2",       "maxpool",  3, 2, 6, 6, 2, 2, 2, 2, 0, 0, GEN_DISTINCT),
    POOL("maxpool_2x2_odd",   "maxpool",  2, 2, 7, 7, 2, 2, 2, 2, 0, 0, GEN_DISTINCT),
    POOL("maxpool_3x3_s2_p1", "maxpool",  3, 2, 7, 7, 3, 3, 2, 2, 1, 1, GEN_DISTINCT),
    POOL("maxpool_2x3_s1x2",  "maxpool",  2, 2, 6, 7, 2, 3, 1, 2, 0, 1, GEN_DISTINCT),
    POOL("avgpool_2x2",       "avgpool",  3, 2, 6, 6, 2, 2, 2, 2, 0, 0, GEN_UNIFORM),
    POOL("avgpool_3x3_s2_p1", "avgpool",  3, 2, 7, 7, 3, 3, 2, 2, 1, 1, GEN_UNIFORM),
    POOL("avgpool_3x3_s1_p1", "avgpool",  2, 2, 5, 5, 3, 3, 1, 1, 1, 1, GEN_UNIFORM),
    UNARY("gap", "gap", VMC_MODE_TRAIN, S4(3, 4, 3, 5), GEN_UNIFORM),
    {"linear_bias",
     {.op = "linear", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S2(4, 7)}, .n_attr = 1,
      .attr = {AI("out_f", 5)}, .n_param = 2, .pshape = {S2(5, 7), S1(5)}},
     GEN_UNIFORM},
    {"linear_nobias",
     {.op = "linear", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S2(3, 6)}, .n_attr = 1,
      .attr = {AI("out_f", 4)}, .n_param = 1, .pshape = {S2(4, 6)}},
     GEN_UNIFORM},
    {"linear_from4d",
     {.op = "linear", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S4(3, 2, 3, 2)}, .n_attr = 1,
      .attr = {AI("out_f", 4)}, .n_param = 2, .pshape = {S2(4, 12), S1(4)}},
     GEN_UNIFORM},
    {"add_4d",
     {.op = "add", .mode = VMC_MODE_TRAIN, .n_in = 2, .in = {S4(3, 2, 3, 3), S4(3, 2, 3, 3)}},
     GEN_UNIFORM},
    {"concat_three",
     {.op = "concat", .mode = VMC_MODE_TRAIN, .n_in = 3,
      .in = {S4(3, 2, 3, 2), S4(3, 1, 3, 2), S4(3, 3, 3, 2)}},
     GEN_UNIFORM},
    UNARY("flatten", "flatten", VMC_MODE_TRAIN, S4(3, 2, 3, 2), GEN_UNIFORM),
    {"dropout_train",
     {.op = "dropout", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S4(3, 2, 3, 3)}, .n_attr = 1,
      .attr = {AF("p", 0.3f)}},
     GEN_UNIFORM},
    {"dropout_eval",
     {.op = "dropout", .mode = VMC_MODE_INFER, .n_in = 1, .in = {S2(3, 5)}, .n_attr = 1,
      .attr = {AF("p", 0.3f)}},
     GEN_UNIFORM},
    /* fakequant's backward is the straight-through estimator.  On a grid much
     * finer than the step (scale 2^-16) the op is the identity to within
     * 1e-3 of a step, which the differences see; the second case clips to
     * [0, 6] with inputs 0.1 away from both edges (dx = 0 outside).  The mask
     * at a coarse grid's own scale is tested in test_ptq.c. */
    {"fakequant_fine",
     {.op = "fakequant", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S4(3, 2, 3, 3)}, .n_attr = 4,
      .attr = {AF("scale", 1.52587890625e-05f), AI("zero_point", 0), AI("qmin", -131072),
               AI("qmax", 131072)}},
     GEN_UNIFORM},
    {"fakequant_clip",
     {.op = "fakequant", .mode = VMC_MODE_TRAIN, .n_in = 1, .in = {S2(4, 9)}, .n_attr = 4,
      .attr = {AF("scale", 6.103515625e-05f), AI("zero_point", 0), AI("qmin", 0),
               AI("qmax", 98304)}},
     GEN_RELU6},
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

/* ---- setup ---------------------------------------------------------------- */

static void fill_gen(vmc_rng *rng, float *p, size_t n, gen_kind gen) {
  switch (gen) {
  case GEN_UNIFORM: vmc_oph_fill(rng, p, n, -1.0f, 1.0f); break;
  case GEN_AWAY0:
    for (size_t i = 0; i < n; i++) {
      float m = 0.1f + 0.9f * vmc_rng_uniform(rng);
      p[i] = vmc_rng_uniform(rng) < 0.5f ? -m : m;
    }
    break;
  case GEN_RELU6:
    for (size_t i = 0; i < n; i++) {
      float v = -2.0f + 10.0f * vmc_rng_uniform(rng);
      if (fabsf(v) < 0.1f) v = v < 0 ? -0.1f : 0.1f;
      if (fabsf(v - 6.0f) < 0.1f) v = v < 6.0f ? 5.9f : 6.1f;
      p[i] = v;
    }
    break;
  case GEN_DISTINCT: {
    /* A shuffled grid 0.05 apart: no ties, no step reorders a window. */
    int *perm = malloc(n * sizeof *perm);
    if (!perm) return;
    for (size_t i = 0; i < n; i++) perm[i] = (int)i;
    vmc_rng_shuffle(rng, perm, (int)n);
    for (size_t i = 0; i < n; i++) p[i] = 0.05f * ((float)perm[i] - 0.5f * (float)n);
    free(perm);
    break;
  }
  }
}

/* Inputs by the case's generator; parameters uniform in [-1, 1), but
 * BatchNorm's gamma in [0.5, 1.5), beta in [-0.5, 0.5), running mean in
 * [-0.3, 0.3) and running variance in [0.5, 1.5). */
static void setup(vmc_oph *h, const gcase *gc, uint64_t seed) {
  vmc_rng rng;
  vmc_rng_seed(&rng, seed);
  for (int k = 0; k < h->n_in; k++) fill_gen(&rng, h->x[k], h->xn[k], gc->gen);
  int bn = !strcmp(gc->spec.op, "batchnorm");
  static const float bn_lo[4] = {0.5f, -0.5f, -0.3f, 0.5f}, bn_hi[4] = {1.5f, 0.5f, 0.3f, 1.5f};
  for (int k = 0; k < h->n_param; k++)
    vmc_oph_fill(&rng, vmc_oph_param(h, k), vmc_oph_param_count(h, k), bn ? bn_lo[k] : -1.0f,
                 bn ? bn_hi[k] : 1.0f);
}

/* Harness for a case with nthreads threads (also set for the GEMMs). */
static vmc_status make(const gcase *gc, int nthreads, unsigned no_dx, vmc_oph **h) {
  vmc_oph_spec s = gc->spec;
  s.nthreads = nthreads;
  s.no_dx = no_dx;
  vmc_set_threads(nthreads);
  vmc_status st = vmc_oph_create(&s, h);
  if (!st) setup(*h, gc, 0xC0FFEEull + (uint64_t)(gc - k_cases));
  return st;
}

static double loss_of(const vmc_oph *h, const float *r) {
  double l = 0;
  for (size_t i = 0; i < h->yn; i++) l += (double)h->y[i] * r[i];
  return l;
}

static float *dup(const float *p, size_t n) {
  float *q = malloc((n ? n : 1) * sizeof *q);
  if (q && n) memcpy(q, p, n * sizeof *q);
  return q;
}

/* ---- finite differences ------------------------------------------------- */

static void compare_grad(const char *file, int line, const char *cs, int nt, const char *what,
                         const float *ana, const double *num, size_t n) {
  double scale = 1e-3, worst = 0;
  size_t wi = 0;
  for (size_t i = 0; i < n; i++) {
    if (fabs(ana[i]) > scale) scale = fabs(ana[i]);
    if (fabs(num[i]) > scale) scale = fabs(num[i]);
  }
  for (size_t i = 0; i < n; i++) {
    double e = fabs(ana[i] - num[i]);
    if (!(e <= worst)) {
      worst = e;
      wi = i;
    }
  }
  if (!(worst <= FD_TOL * scale))
    vmc_test_fail(file, line,
                  "%s (%d threads) %s: element %zu analytic %.6g numeric %.6g "
                  "(error %.3g, scale %.3g)",
                  cs, nt, what, wi, (double)ana[wi], num[wi], worst, scale);
}

/* Numeric d(sum y*r)/d(buf[i]) for every i. */
static void numeric_grad(vmc_oph *h, const float *r, float *buf, size_t n, double *num) {
  for (size_t i = 0; i < n; i++) {
    float v = buf[i];
    buf[i] = v + FD_EPS;
    double hi = buf[i];
    vmc_oph_forward(h, 0);
    double lp = loss_of(h, r);
    buf[i] = v - FD_EPS;
    double lo = buf[i];
    vmc_oph_forward(h, 0);
    double lm = loss_of(h, r);
    buf[i] = v;
    num[i] = (lp - lm) / (hi - lo);
  }
}

static void grad_check(const gcase *gc, int nt) {
  vmc_oph *h;
  vmc_status st = make(gc, nt, 0, &h);
  if (st) {
    vmc_test_fail(__FILE__, __LINE__, "%s: %s", gc->name, vmc_last_error());
    return;
  }
  vmc_rng rng;
  vmc_rng_seed(&rng, 77);
  float *r = malloc(h->yn * sizeof *r);
  size_t maxn = 1;
  for (int k = 0; k < h->n_in; k++) maxn = h->xn[k] > maxn ? h->xn[k] : maxn;
  for (int k = 0; k < h->n_param; k++)
    maxn = vmc_oph_param_count(h, k) > maxn ? vmc_oph_param_count(h, k) : maxn;
  double *num = malloc(maxn * sizeof *num);
  float *ana[VMC_MAX_INPUTS + VMC_MAX_PARAMS] = {0};
  if (!r || !num) goto done;
  vmc_oph_fill(&rng, r, h->yn, -1.0f, 1.0f);
  vmc_oph_forward(h, 0);
  memcpy(h->dy, r, h->yn * sizeof *r);
  vmc_oph_backward(h);
  for (int k = 0; k < h->n_in; k++) ana[k] = dup(h->dx[k], h->xn[k]);
  for (int k = 0; k < h->n_param; k++)
    if (vmc_oph_grad(h, k))
      ana[VMC_MAX_INPUTS + k] = dup(vmc_oph_grad(h, k), vmc_oph_param_count(h, k));
  for (int k = 0; k < h->n_in; k++) {
    if (!ana[k]) continue;
    char what[32];
    snprintf(what, sizeof what, "dx%d", k);
    numeric_grad(h, r, h->x[k], h->xn[k], num);
    compare_grad(__FILE__, __LINE__, gc->name, nt, what, ana[k], num, h->xn[k]);
  }
  for (int k = 0; k < h->n_param; k++) {
    const float *a = ana[VMC_MAX_INPUTS + k];
    if (!a) continue;
    char what[32];
    snprintf(what, sizeof what, "dparam%d", k);
    numeric_grad(h, r, vmc_oph_param(h, k), vmc_oph_param_count(h, k), num);
    compare_grad(__FILE__, __LINE__, gc->name, nt, what, a, num, vmc_oph_param_count(h, k));
  }
done:
  for (int k = 0; k < VMC_MAX_INPUTS + VMC_MAX_PARAMS; k++) free(ana[k]);
  free(num);
  free(r);
  vmc_oph_free(h);
}

static void check_op(const char *prefix) {
  int prev = vmc_get_threads(), found = 0;
  for (int i = 0; i < N_CASES; i++) {
    if (strncmp(k_cases[i].name, prefix, strlen(prefix))) continue;
    found++;
    for (int nt = 1; nt <= 2; nt++) grad_check(&k_cases[i], nt);
  }
  vmc_set_threads(prev);
  CHECK(found > 0);
}

TEST(ops_grad_conv2d) { check_op("conv_"); }
TEST(ops_grad_batchnorm) { check_op("bn_"); }
TEST(ops_grad_relu) { check_op("relu_"); }
TEST(ops_grad_relu6) { check_op("relu6_"); }
TEST(ops_grad_maxpool) { check_op("maxpool_"); }
TEST(ops_grad_avgpool) { check_op("avgpool_"); }
TEST(ops_grad_gap) { check_op("gap"); }
TEST(ops_grad_linear) { check_op("linear_"); }
TEST(ops_grad_add) { check_op("add_"); }
TEST(ops_grad_concat) { check_op("concat_"); }
TEST(ops_grad_flatten) { check_op("flatten"); }
TEST(ops_grad_dropout) { check_op("dropout_"); }
TEST(ops_grad_fakequant) { check_op("fakequant_"); }

/* Every registered op with a backward has at least one case above. */
TEST(ops_grad_every_op_covered) {
  int n;
  const vmc_op *const *ops = vmc_op_all(&n);
  for (int i = 0; i < n; i++) {
    if (!ops[i]->backward) continue;
    int found = 0;
    for (int c = 0; c < N_CASES; c++) found |= !strcmp(k_cases[c].spec.op, ops[i]->name);
    if (!found) vmc_test_fail(__FILE__, __LINE__, "op '%s' has no gradient case", ops[i]->name);
  }
}

/* ---- softmax cross-entropy -------------------------------------------- */

TEST(ops_grad_softmax_ce) {
  enum { N = 5, K = 7 };
  static const float smoothing[3] = {0.0f, 0.1f, 0.3f};
  vmc_rng rng;
  vmc_rng_seed(&rng, 99);
  float logits[N * K], d[N * K];
  int labels[N];
  for (int t = 0; t < 3; t++) {
    vmc_oph_fill(&rng, logits, N * K, -3.0f, 3.0f);
    for (int i = 0; i < N; i++) labels[i] = (int)vmc_rng_below(&rng, K);
    float loss = vmc_softmax_ce(logits, labels, N, K, smoothing[t], d);
    CHECK(isfinite(loss) && loss > 0);
    CHECK_NEAR(vmc_softmax_ce(logits, labels, N, K, smoothing[t], NULL), loss, 1e-6);
    double num[N * K];
    for (int i = 0; i < N * K; i++) {
      float v = logits[i];
      logits[i] = v + FD_EPS;
      double hi = logits[i], lp = vmc_softmax_ce(logits, labels, N, K, smoothing[t], NULL);
      logits[i] = v - FD_EPS;
      double lo = logits[i], lm = vmc_softmax_ce(logits, labels, N, K, smoothing[t], NULL);
      logits[i] = v;
      num[i] = (lp - lm) / (hi - lo);
    }
    char cs[32];
    snprintf(cs, sizeof cs, "softmax_ce smoothing %.1f", (double)smoothing[t]);
    compare_grad(__FILE__, __LINE__, cs, 1, "dlogits", d, num, N * K);
    /* Each row of d(mean loss)/d(logits) sums to zero. */
    for (int i = 0; i < N; i++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += d[i * K + k];
      CHECK_NEAR(s, 0.0, 1e-6);
    }
  }
}

/* ---- properties over every case ---------------------------------------- */

typedef struct result {
  size_t yn;
  float *y, *dx[VMC_MAX_INPUTS], *dp[VMC_MAX_PARAMS];
} result;

static void result_free(result *r) {
  free(r->y);
  for (int k = 0; k < VMC_MAX_INPUTS; k++) free(r->dx[k]);
  for (int k = 0; k < VMC_MAX_PARAMS; k++) free(r->dp[k]);
  memset(r, 0, sizeof *r);
}

/* Forward + backward of a case (dy from a fixed seed); copies of y, dx, dp.
 * zero_last_dy: the last image's dy is 0 (matches a run over one image fewer). */
static vmc_status run_case(const gcase *gc, int nt, unsigned no_dx, int zero_last_dy, result *res) {
  memset(res, 0, sizeof *res);
  vmc_oph *h;
  VMC_TRY(make(gc, nt, no_dx, &h));
  vmc_rng rng;
  vmc_rng_seed(&rng, 1234);
  vmc_oph_forward(h, 0);
  vmc_oph_fill(&rng, h->dy, h->yn, -1.0f, 1.0f);
  if (zero_last_dy) {
    size_t per = h->yn / (size_t)h->ys.d[0];
    memset(h->dy + h->yn - per, 0, per * sizeof(float));
  }
  vmc_oph_backward(h);
  res->yn = h->yn;
  res->y = dup(h->y, h->yn);
  for (int k = 0; k < h->n_in; k++)
    if (h->dx[k]) res->dx[k] = dup(h->dx[k], h->xn[k]);
  for (int k = 0; k < h->n_param; k++)
    if (vmc_oph_grad(h, k)) res->dp[k] = dup(vmc_oph_grad(h, k), vmc_oph_param_count(h, k));
  vmc_oph_free(h);
  return VMC_OK;
}

static size_t count_of(const vmc_shape *s) { return vmc_shape_count(s); }

/* A batchnorm training on batch statistics: its images are coupled. */
static int batch_statistics(const gcase *gc) {
  if (strcmp(gc->spec.op, "batchnorm") || gc->spec.mode != VMC_MODE_TRAIN) return 0;
  for (int a = 0; a < gc->spec.n_attr; a++)
    if (!strcmp(gc->spec.attr[a].key, "frozen") && gc->spec.attr[a].i) return 0;
  return 1;
}

/* Absurd window attributes (as a corrupted file may hold) are rejected by
 * shape inference, without overflowing anything on the way. */
TEST(ops_conv2d_absurd_windows_rejected) {
  static const int32_t sizes[] = {65, 1 << 20, 1 << 30, INT32_MAX, 0, -1, INT32_MIN};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    vmc_graph *g;
    REQUIRE_OK(vmc_graph_create(4, 8, 8, &g));
    int w, v = g->input;
    REQUIRE_OK(vmc_graph_add_param(g, "w", vmc_shape4(2, 4, 3, 3), 1, &w));
    const vmc_attr a[] = {vmc_attr_int("out_c", 2), vmc_attr_int("kh", sizes[i]),
                          vmc_attr_int("kw", sizes[i]), vmc_attr_int("dh", sizes[i])};
    if (!vmc_graph_add_node(g, "conv2d", "conv", &v, 1, a, 4, &w, 1, &v)) {
      vmc_shape shapes[4];
      CHECK(g->n_values <= 4 && vmc_graph_infer_shapes(g, 1, shapes) != VMC_OK);
    }
    vmc_graph_free(g);
  }
}

/* Training updates the running statistics, unless the batchnorm is frozen. */
TEST(ops_grad_batchnorm_frozen_keeps_running_stats) {
  for (int i = 0; i < N_CASES; i++) {
    const gcase *gc = &k_cases[i];
    if (strcmp(gc->spec.op, "batchnorm") || gc->spec.mode != VMC_MODE_TRAIN) continue;
    vmc_oph *h;
    REQUIRE_OK(make(gc, 1, 0, &h));
    const size_t c = vmc_oph_param_count(h, 2);
    float *before = dup(vmc_oph_param(h, 2), 2 * c);
    memcpy(before + c, vmc_oph_param(h, 3), c * sizeof *before);
    vmc_oph_forward(h, h->xs[0].d[0]);
    const int same = !memcmp(before, vmc_oph_param(h, 2), c * sizeof *before) &&
                     !memcmp(before + c, vmc_oph_param(h, 3), c * sizeof *before);
    if (same != !batch_statistics(gc))
      vmc_test_fail(__FILE__, __LINE__, "%s: running statistics %s", gc->name,
                    same ? "not updated" : "changed while frozen");
    free(before);
    vmc_oph_free(h);
  }
}

static void compare_results(const gcase *gc, const char *what, const result *a, const result *b,
                            double tol) {
  const vmc_oph_spec *s = &gc->spec;
  double e = a->yn == b->yn ? vmc_test_max_rel(a->y, b->y, a->yn) : INFINITY;
  if (!(e <= tol)) vmc_test_fail(__FILE__, __LINE__, "%s %s: y differs by %.3g", gc->name, what, e);
  for (int k = 0; k < s->n_in; k++) {
    if (!a->dx[k] || !b->dx[k]) continue;
    e = vmc_test_max_rel(a->dx[k], b->dx[k], count_of(&s->in[k]));
    if (!(e <= tol))
      vmc_test_fail(__FILE__, __LINE__, "%s %s: dx%d differs by %.3g", gc->name, what, k, e);
  }
  for (int k = 0; k < s->n_param; k++) {
    if (!a->dp[k] || !b->dp[k]) continue;
    e = vmc_test_max_rel(a->dp[k], b->dp[k], count_of(&s->pshape[k]));
    if (!(e <= tol))
      vmc_test_fail(__FILE__, __LINE__, "%s %s: dparam%d differs by %.3g", gc->name, what, k, e);
  }
}

/* 1, 2 and 4 threads (4 > batch 3: images in turn, threaded GEMMs). */
TEST(ops_grad_thread_count_independent) {
  int prev = vmc_get_threads();
  for (int i = 0; i < N_CASES; i++) {
    result r1 = {0}, rn = {0};
    if (run_case(&k_cases[i], 1, 0, 0, &r1)) {
      vmc_test_fail(__FILE__, __LINE__, "%s: %s", k_cases[i].name, vmc_last_error());
      continue;
    }
    for (int nt = 2; nt <= 4; nt += 2) {
      char what[32];
      snprintf(what, sizeof what, "%d vs 1 threads", nt);
      if (!run_case(&k_cases[i], nt, 0, 0, &rn)) compare_results(&k_cases[i], what, &rn, &r1, THREAD_TOL);
      result_free(&rn);
    }
    result_free(&r1);
  }
  vmc_set_threads(prev);
}

/* A NULL dx for input 0 (an image needing no gradient) changes nothing else. */
TEST(ops_grad_null_dx_input) {
  int prev = vmc_get_threads();
  for (int i = 0; i < N_CASES; i++) {
    for (int nt = 1; nt <= 2; nt++) {
      result full = {0}, part = {0};
      if (run_case(&k_cases[i], nt, 0, 0, &full) || run_case(&k_cases[i], nt, 1u, 0, &part)) {
        vmc_test_fail(__FILE__, __LINE__, "%s: %s", k_cases[i].name, vmc_last_error());
      } else {
        CHECK(part.dx[0] == NULL);
        compare_results(&k_cases[i], "with dx0 NULL", &part, &full, 1e-6);
      }
      result_free(&full);
      result_free(&part);
    }
  }
  vmc_set_threads(prev);
}

/* backward adds into dx and the parameter grads: a second call doubles them. */
TEST(ops_grad_backward_accumulates) {
  int prev = vmc_get_threads();
  for (int i = 0; i < N_CASES; i++) {
    const gcase *gc = &k_cases[i];
    vmc_oph *h;
    if (make(gc, 2, 0, &h)) {
      vmc_test_fail(__FILE__, __LINE__, "%s: %s", gc->name, vmc_last_error());
      continue;
    }
    vmc_rng rng;
    vmc_rng_seed(&rng, 5);
    vmc_oph_forward(h, 0);
    vmc_oph_fill(&rng, h->dy, h->yn, -1.0f, 1.0f);
    vmc_oph_backward(h);
    result once = {0};
    for (int k = 0; k < h->n_in; k++) {
      once.dx[k] = dup(h->dx[k], h->xn[k]);
      for (size_t j = 0; j < h->xn[k]; j++) once.dx[k][j] *= 2;
    }
    for (int k = 0; k < h->n_param; k++)
      if (vmc_oph_grad(h, k)) {
        once.dp[k] = dup(vmc_oph_grad(h, k), vmc_oph_param_count(h, k));
        for (size_t j = 0; j < vmc_oph_param_count(h, k); j++) once.dp[k][j] *= 2;
      }
    vmc_oph_backward_accumulate(h);
    for (int k = 0; k < h->n_in; k++) {
      double e = vmc_test_max_rel(h->dx[k], once.dx[k], h->xn[k]);
      if (!(e <= 1e-6))
        vmc_test_fail(__FILE__, __LINE__, "%s: dx%d not accumulated (+=): off by %.3g", gc->name,
                      k, e);
    }
    for (int k = 0; k < h->n_param; k++) {
      if (!once.dp[k]) continue;
      double e = vmc_test_max_rel(vmc_oph_grad(h, k), once.dp[k], vmc_oph_param_count(h, k));
      if (!(e <= 1e-6))
        vmc_test_fail(__FILE__, __LINE__, "%s: dparam%d not accumulated (+=): off by %.3g",
                      gc->name, k, e);
    }
    result_free(&once);
    vmc_oph_free(h);
  }
  vmc_set_threads(prev);
}

/* forward/backward over batch-1 images of a plan for batch: the last image's
 * y and dx are left alone; for per-image ops (all but BatchNorm in training)
 * the rest equals the full run with the last image's dy zeroed. */
TEST(ops_grad_partial_batch) {
  int prev = vmc_get_threads();
  for (int i = 0; i < N_CASES; i++) {
    const gcase *gc = &k_cases[i];
    for (int nt = 1; nt <= 2; nt++) {
      result full = {0};
      vmc_oph *h;
      if (run_case(gc, nt, 0, 1, &full) || make(gc, nt, 0, &h)) {
        vmc_test_fail(__FILE__, __LINE__, "%s: %s", gc->name, vmc_last_error());
        result_free(&full);
        continue;
      }
      const int N = h->xs[0].d[0];
      const size_t ypi = h->yn / (size_t)N;
      for (size_t j = 0; j < h->yn; j++) h->y[j] = NAN;
      vmc_oph_forward(h, N - 1);
      vmc_rng rng;
      vmc_rng_seed(&rng, 1234);
      vmc_oph_fill(&rng, h->dy, h->yn, -1.0f, 1.0f);
      memset(h->dy + h->yn - ypi, 0, ypi * sizeof(float));
      vmc_oph_backward(h);
      int tail_ok = 1;
      for (size_t j = h->yn - ypi; j < h->yn; j++) tail_ok &= isnan(h->y[j]);
      for (int k = 0; k < h->n_in; k++) {
        size_t xpi = h->xn[k] / (size_t)N;
        for (size_t j = h->xn[k] - xpi; j < h->xn[k]; j++) tail_ok &= h->dx[k][j] == 0.0f;
      }
      if (!tail_ok)
        vmc_test_fail(__FILE__, __LINE__, "%s (%d threads): wrote past the %d images run",
                      gc->name, nt, N - 1);
      int per_image = !batch_statistics(gc);
      if (per_image) {
        double e = vmc_test_max_rel(h->y, full.y, h->yn - ypi);
        if (!(e <= THREAD_TOL))
          vmc_test_fail(__FILE__, __LINE__, "%s: partial-batch y differs by %.3g", gc->name, e);
        for (int k = 0; k < h->n_in; k++) {
          e = vmc_test_max_rel(h->dx[k], full.dx[k], h->xn[k] - h->xn[k] / (size_t)N);
          if (!(e <= THREAD_TOL))
            vmc_test_fail(__FILE__, __LINE__, "%s: partial-batch dx%d differs by %.3g", gc->name,
                          k, e);
        }
        for (int k = 0; k < h->n_param; k++) {
          if (!full.dp[k]) continue;
          e = vmc_test_max_rel(vmc_oph_grad(h, k), full.dp[k], vmc_oph_param_count(h, k));
          if (!(e <= THREAD_TOL))
            vmc_test_fail(__FILE__, __LINE__, "%s: partial-batch dparam%d differs by %.3g",
                          gc->name, k, e);
        }
      }
      result_free(&full);
      vmc_oph_free(h);
    }
  }
  vmc_set_threads(prev);
}
