/* Winograd F(2x2, 3x3) and F(4x4, 3x3) (src/kernels/winograd.h): the transforms with a
 * plain GEMM in between give the direct 3x3 convolution (computed in
 * double) within fp32 rounding, with bias, residual and clamp, over odd and
 * even sizes, rows narrower and wider than a vector, and tile rows split
 * into ranges as threads split them.  Inputs are read from plain and padded
 * planes allocated to their exact size and outputs written into a layout
 * with sentinels around the pixels, which must survive.  The weight gradient
 * through the transforms (grad_output, vmc_wino_weights_grad) gives the
 * direct one (F(2x2, 3x3), which training uses).  Every SIMD variant the CPU
 * runs gives the reference's floats, transform by transform. */
#include "kernels/winograd.h"
#include "core/core.h"
#include "op_harness.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

#define SENTINEL 12345.0f

typedef struct {
  int c, oc, h, w;
  float *x;           /* the image, plain planes, exactly c * h * w floats */
  float *xp;          /* the same in padded planes, exactly c * plane floats */
  size_t row, plane;  /* row = w + 1 */
  float *wt, *bias, *res, *ref;
  float lo, hi;
} problem;

static void problem_free(problem *p) {
  free(p->x), free(p->xp), free(p->wt), free(p->bias), free(p->res), free(p->ref);
}

/* Random input, kernel, bias and residual; ref = the direct convolution in
 * double, then the epilogue in fp32 as the transforms apply it. */
static int problem_make(problem *p, int c, int oc, int h, int w, int with_res, vmc_rng *r) {
  memset(p, 0, sizeof *p);
  p->c = c, p->oc = oc, p->h = h, p->w = w;
  p->row = (size_t)w + 1, p->plane = (size_t)(h + 2) * p->row;
  p->x = malloc((size_t)c * h * w * sizeof(float));
  p->xp = malloc((size_t)c * p->plane * sizeof(float));
  p->wt = malloc((size_t)oc * c * 9 * sizeof(float));
  p->bias = malloc((size_t)oc * sizeof(float));
  p->res = with_res ? malloc((size_t)oc * h * w * sizeof(float)) : NULL;
  p->ref = malloc((size_t)oc * h * w * sizeof(float));
  if (!p->x || !p->xp || !p->wt || !p->bias || (with_res && !p->res) || !p->ref) return 0;
  /* the padding is never read: NaN there would show */
  for (size_t i = 0; i < (size_t)c * p->plane; i++) p->xp[i] = NAN;
  for (int ci = 0; ci < c; ci++)
    for (int i = 0; i < h; i++)
      for (int j = 0; j < w; j++)
        p->xp[(size_t)ci * p->plane + (size_t)(i + 1) * p->row + 1 + j] =
            p->x[((size_t)ci * h + i) * w + j] = vmc_rng_normal(r);
  for (size_t i = 0; i < (size_t)oc * c * 9; i++) p->wt[i] = vmc_rng_normal(r) * 0.3f;
  for (int o = 0; o < oc; o++) p->bias[o] = vmc_rng_normal(r);
  for (size_t i = 0; with_res && i < (size_t)oc * h * w; i++) p->res[i] = vmc_rng_normal(r);
  p->lo = with_res ? -INFINITY : 0.0f; /* ReLU without the residual, none with it */
  p->hi = with_res ? INFINITY : 3.0f;
  for (int o = 0; o < oc; o++)
    for (int i = 0; i < h; i++)
      for (int j = 0; j < w; j++) {
        double s = 0;
        for (int ci = 0; ci < c; ci++)
          for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) { /* pixel (i + a - 1, j + b - 1), 0 outside */
              const int y = i + a - 1, xx = j + b - 1;
              if (y >= 0 && y < h && xx >= 0 && xx < w)
                s += (double)p->wt[(((size_t)o * c + ci) * 3 + a) * 3 + b] *
                     p->x[((size_t)ci * h + y) * w + xx];
            }
        float v = (float)s + p->bias[o];
        if (p->res) v += p->res[((size_t)o * h + i) * w + j];
        p->ref[((size_t)o * h + i) * w + j] = v < p->lo ? p->lo : v > p->hi ? p->hi : v;
      }
  return 1;
}

/* Output tiles of m x m pixels (F(2x2, 3x3) or F(4x4, 3x3)), npos
 * positions. */
typedef struct {
  int m, npos;
} tiling;
static const tiling k_f2 = {2, VMC_WINO_POS}, k_f4 = {4, VMC_WINO4_POS};
static int tiles_of(const tiling *t, int n) { return (n + t->m - 1) / t->m; }

/* The planes of one tile-row range, as conv2d lays them out. */
typedef struct {
  size_t ld, ps_v, ps_m;
  float *v, *m;
} planes;

static int planes_make(planes *q, const problem *p, const tiling *t) {
  const size_t nt = (size_t)tiles_of(t, p->h) * tiles_of(t, p->w);
  q->ld = (nt + VMC_WINO_ROW_SLACK + 15) / 16 * 16;
  q->ps_v = (size_t)p->c * q->ld + 16, q->ps_m = (size_t)p->oc * q->ld + 16;
  q->v = calloc(t->npos * q->ps_v, sizeof(float));
  q->m = calloc(t->npos * q->ps_m, sizeof(float));
  return q->v && q->m;
}

/* M[ab] = U[ab] . V[ab] over the n tiles of a range, in double. */
static void gemms(const problem *p, const planes *q, int n, const tiling *tl) {
  float *u = malloc((size_t)p->oc * p->c * sizeof(float));
  if (!u) return;
  for (int ab = 0; ab < tl->npos; ab++) {
    (tl->m == 4 ? vmc_wino4_weights : vmc_wino_weights)(p->wt, p->oc, p->c, ab, u, p->c);
    for (int o = 0; o < p->oc; o++)
      for (int t = 0; t < n; t++) {
        double s = 0;
        for (int ci = 0; ci < p->c; ci++)
          s += (double)u[(size_t)o * p->c + ci] * q->v[ab * q->ps_v + (size_t)ci * q->ld + t];
        q->m[ab * q->ps_m + (size_t)o * q->ld + t] = (float)s;
      }
  }
  free(u);
}

/* y in a layout wider than the image (row w + 3, one row more), sentinels
 * around the pixels. */
static float *y_make(const problem *p, size_t *row, size_t *plane) {
  *row = (size_t)p->w + 3, *plane = (size_t)(p->h + 1) * *row;
  float *y = malloc((size_t)p->oc * *plane * sizeof(float));
  for (size_t i = 0; y && i < (size_t)p->oc * *plane; i++) y[i] = SENTINEL;
  return y;
}

/* One variant (and, when given, the reference to match bit for bit) over
 * the problem in tiles t, its tile rows split at `split`. */
static void run_case(const vmc_wino_kernels *k, const problem *p, int split, const tiling *t) {
  const int th = tiles_of(t, p->h), tw = tiles_of(t, p->w), f4 = t->m == 4;
  const vmc_wino_kernels *ref = &vmc_wino_kernels__ref;
  size_t row, plane;
  float *y = y_make(p, &row, &plane), *yr = y_make(p, &row, &plane);
  float *resl = NULL;
  float *tmp = malloc(vmc_wino_tmp_floats(p->w) * sizeof(float));
  REQUIRE(y && yr && tmp);
  if (p->res) { /* the residual in y's layout */
    resl = malloc((size_t)p->oc * plane * sizeof(float));
    REQUIRE(resl);
    for (size_t i = 0; i < (size_t)p->oc * plane; i++) resl[i] = SENTINEL;
    for (int o = 0; o < p->oc; o++)
      for (int i = 0; i < p->h; i++)
        memcpy(resl + (size_t)o * plane + (size_t)i * row, p->res + ((size_t)o * p->h + i) * p->w,
               (size_t)p->w * sizeof(float));
  }
  const int cut[3] = {0, split, th};
  for (int part = 0; part < 2; part++) {
    const int ti0 = cut[part], ti1 = cut[part + 1], n = (ti1 - ti0) * tw;
    if (ti1 <= ti0) continue;
    planes q, qr;
    REQUIRE(planes_make(&q, p, t) && planes_make(&qr, p, t));
    /* the padded layout, read at its first pixel */
    const float *x0 = p->xp + p->row + 1;
    (f4 ? k->input4 : k->input)(x0, p->c, p->plane, p->row, p->h, p->w,
                                &(vmc_wino_buf){q.v, q.ps_v, q.ld}, ti0, ti1, tmp);
    (f4 ? ref->input4 : ref->input)(x0, p->c, p->plane, p->row, p->h, p->w,
                                    &(vmc_wino_buf){qr.v, qr.ps_v, qr.ld}, ti0, ti1, tmp);
    int same = 1;
    for (int ab = 0; ab < t->npos; ab++)
      for (int ci = 0; ci < p->c; ci++) {
        const size_t at = ab * q.ps_v + (size_t)ci * q.ld;
        same = same && !memcmp(q.v + at, qr.v + at, (size_t)n * sizeof(float));
      }
    if (!same)
      vmc_test_fail(__FILE__, __LINE__, "%s F%d input %dx%d c %d rows [%d, %d): not the reference's",
                    k->isa, t->m, p->h, p->w, p->c, ti0, ti1);
    gemms(p, &qr, n, t);
    vmc_wino_out o = {y, plane, row, p->bias, resl, p->lo, p->hi}, orf = o;
    orf.y = yr;
    const vmc_wino_buf mb = {qr.m, qr.ps_m, qr.ld};
    (f4 ? k->output4 : k->output)(&mb, ti0, ti1, p->oc, p->h, p->w, &o, tmp);
    (f4 ? ref->output4 : ref->output)(&mb, ti0, ti1, p->oc, p->h, p->w, &orf, tmp);
    /* the rows of the range's tiles and no others (the next range's are
     * still the sentinel) */
    int untouched = 1;
    for (int oi = 0; oi < p->oc; oi++)
      for (size_t r = (size_t)t->m * ti1; r < (size_t)p->h; r++)
        untouched = untouched && y[(size_t)oi * plane + r * row] == SENTINEL;
    if (!untouched)
      vmc_test_fail(__FILE__, __LINE__, "%s F%d output %dx%d rows [%d, %d): wrote past them",
                    k->isa, t->m, p->h, p->w, ti0, ti1);
    free(q.v), free(q.m), free(qr.v), free(qr.m);
  }
  if (memcmp(y, yr, (size_t)p->oc * plane * sizeof(float)))
    vmc_test_fail(__FILE__, __LINE__, "%s F%d output %dx%d oc %d: not the reference's", k->isa,
                  t->m, p->h, p->w, p->oc);
  double worst = 0;
  int kept = 1;
  for (int o = 0; o < p->oc; o++)
    for (size_t i = 0; i < plane; i++) {
      const size_t r = i / row, j = i % row;
      const float got = y[(size_t)o * plane + i];
      if (r >= (size_t)p->h || j >= (size_t)p->w) {
        kept = kept && got == SENTINEL;
        continue;
      }
      const double want = p->ref[((size_t)o * p->h + r) * p->w + j];
      const double d = fabs(got - want) / (1.0 + fabs(want));
      if (!(d <= worst)) worst = d; /* NaN too */
    }
  CHECK(kept);
  /* F(4x4, 3x3)'s transforms scale by up to 8 and 1/24: more rounding */
  if (!(worst <= (f4 ? 1e-4 : 2e-5)))
    vmc_test_fail(__FILE__, __LINE__, "%s F%d %dx%d c %d oc %d: off the direct conv by %g", k->isa,
                  t->m, p->h, p->w, p->c, p->oc, worst);
  free(y), free(yr), free(resl), free(tmp);
}

/* The weight gradient: dM = A dY A^T from the variant (the reference's
 * floats), V from the input, dU = sum over tiles dM V^T in double, then
 * vmc_wino_weights_grad, against sum over pixels dY * x in double.  dY
 * lies in a layout with a row longer than the image (row w + 2). */
static void check_dw(const vmc_wino_kernels *k, const problem *p, vmc_rng *r) {
  const int th = vmc_wino_tiles_h(p->h);
  const size_t nt = vmc_wino_tiles(p->h, p->w), row = (size_t)p->w + 2, plane = p->h * row;
  float *dy = malloc((size_t)p->oc * plane * sizeof(float));
  float *tmp = malloc(vmc_wino_tmp_floats(p->w) * sizeof(float));
  float *du = calloc((size_t)VMC_WINO_POS * p->oc * p->c, sizeof(float));
  float *dw = calloc((size_t)p->oc * p->c * 9, sizeof(float));
  planes q, qr;
  REQUIRE(dy && tmp && du && dw && planes_make(&q, p, &k_f2) && planes_make(&qr, p, &k_f2));
  for (size_t i = 0; i < (size_t)p->oc * plane; i++) dy[i] = vmc_rng_normal(r);
  k->grad_output(dy, plane, row, p->oc, p->h, p->w, &(vmc_wino_buf){q.m, q.ps_m, q.ld}, 0, th);
  vmc_wino_kernels__ref.grad_output(dy, plane, row, p->oc, p->h, p->w,
                                    &(vmc_wino_buf){qr.m, qr.ps_m, qr.ld}, 0, th);
  int same = 1;
  for (int ab = 0; ab < VMC_WINO_POS; ab++)
    for (int o = 0; o < p->oc; o++) {
      const size_t at = ab * q.ps_m + (size_t)o * q.ld;
      same = same && !memcmp(q.m + at, qr.m + at, nt * sizeof(float));
    }
  if (!same)
    vmc_test_fail(__FILE__, __LINE__, "%s grad_output %dx%d: not the reference's", k->isa, p->h,
                  p->w);
  /* the plain layout this time, from the variant */
  k->input(p->x, p->c, (size_t)p->h * p->w, (size_t)p->w, p->h, p->w,
           &(vmc_wino_buf){qr.v, qr.ps_v, qr.ld}, 0, th, tmp);
  for (int ab = 0; ab < VMC_WINO_POS; ab++)
    for (int o = 0; o < p->oc; o++)
      for (int ci = 0; ci < p->c; ci++) {
        double sum = 0;
        for (size_t t = 0; t < nt; t++)
          sum += (double)qr.m[ab * qr.ps_m + (size_t)o * qr.ld + t] *
                 qr.v[ab * qr.ps_v + (size_t)ci * qr.ld + t];
        du[((size_t)ab * p->oc + o) * p->c + ci] = (float)sum;
      }
  vmc_wino_weights_grad(du, (size_t)p->oc * p->c, p->oc, p->c, dw);
  double worst = 0, scale = 1e-3;
  for (int o = 0; o < p->oc; o++)
    for (int ci = 0; ci < p->c; ci++)
      for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
          double want = 0;
          for (int i = 0; i < p->h; i++)
            for (int j = 0; j < p->w; j++) {
              const int y = i + a - 1, xx = j + b - 1;
              if (y >= 0 && y < p->h && xx >= 0 && xx < p->w)
                want += (double)dy[(size_t)o * plane + (size_t)i * row + j] *
                        p->x[((size_t)ci * p->h + y) * p->w + xx];
            }
          const double got = dw[(((size_t)o * p->c + ci) * 3 + a) * 3 + b];
          if (fabs(want) > scale) scale = fabs(want);
          if (!(fabs(got - want) <= worst)) worst = fabs(got - want);
        }
  if (!(worst <= 2e-5 * scale))
    vmc_test_fail(__FILE__, __LINE__, "%s dW %dx%d c %d oc %d: off by %g of %g", k->isa, p->h,
                  p->w, p->c, p->oc, worst, scale);
  free(dy), free(tmp), free(du), free(dw), free(q.v), free(q.m), free(qr.v), free(qr.m);
}

static void check_variant(const vmc_wino_kernels *k) {
  vmc_rng r;
  vmc_rng_seed(&r, 33);
  /* (7, 7), (5, 8), (9, 7): rows of 4 tiles of F(2x2, 3x3), two tile rows
   * per 8 lanes, an odd count of them and ranges starting at odd ones;
   * (14, 14), (13, 16), (6, 15), (9, 13) the same for F(4x4, 3x3), and
   * (28, 28), (10, 25), (7, 32) its rows of 7 and 8 tiles */
  static const int hw[][2] = {{1, 1},  {2, 2},  {3, 5},   {7, 7},   {8, 9},  {14, 14},
                              {15, 4}, {28, 28}, {5, 33}, {6, 40},  {4, 65}, {5, 8},
                              {9, 7},  {13, 16}, {6, 15}, {9, 13}, {10, 25}, {7, 32}};
  for (size_t t = 0; t < sizeof hw / sizeof hw[0]; t++)
    for (int with_res = 0; with_res < 2; with_res++) {
      problem p;
      const int c = 3 + (int)t % 5, oc = 2 + (int)(t * 3) % 7;
      if (!problem_make(&p, c, oc, hw[t][0], hw[t][1], with_res, &r)) {
        problem_free(&p);
        REQUIRE(0);
      }
      for (int f = 0; f < 2; f++) {
        const tiling *tl = f ? &k_f4 : &k_f2;
        const int th = tiles_of(tl, p.h);
        run_case(k, &p, th, tl);     /* one range */
        run_case(k, &p, th / 2, tl); /* two, as two threads take them */
      }
      if (!with_res) check_dw(k, &p, &r);
      problem_free(&p);
    }
}

TEST(winograd_ref_matches_direct_conv) { check_variant(&vmc_wino_kernels__ref); }

TEST(winograd_avx2_matches_reference) {
  if (!strcmp(vmc_isa_name(), "ref")) SKIP("the CPU lacks AVX2");
  check_variant(&vmc_wino_kernels__avx2);
}

TEST(winograd_avx512_matches_reference) {
  if (strcmp(vmc_isa_name(), "avx512")) SKIP("the CPU lacks AVX-512");
  check_variant(&vmc_wino_kernels__avx512);
}

/* The weight transform against G g G^T written out for one kernel. */
TEST(winograd_weight_transform) {
  const float g[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  /* G g (4 x 3), then (G g) G^T (4 x 4), by hand from G's rows */
  float gg[4][3], u[4][4];
  for (int j = 0; j < 3; j++) {
    gg[0][j] = g[j];
    gg[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
    gg[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
    gg[3][j] = g[6 + j];
  }
  for (int i = 0; i < 4; i++) {
    u[i][0] = gg[i][0];
    u[i][1] = 0.5f * (gg[i][0] + gg[i][1] + gg[i][2]);
    u[i][2] = 0.5f * (gg[i][0] - gg[i][1] + gg[i][2]);
    u[i][3] = gg[i][2];
  }
  for (int ab = 0; ab < VMC_WINO_POS; ab++) {
    float got;
    vmc_wino_weights(g, 1, 1, ab, &got, 1);
    CHECK_NEAR(got, u[ab / 4][ab % 4], 1e-6);
  }
}

/* The conv2d op with Winograd against the direct path (VMC_WINOGRAD=0) on
 * an image large enough to be transformed in several bands of tile rows
 * (src/ops/conv2d.c), odd-sized, unequal channel counts: inference on one
 * to three threads (one image: the threads split its channels and
 * positions), training
 * forward, dx, dW (banded Winograd dW) and dB on two threads. */
typedef struct {
  int n, c, o, h, w;
} conv_dims;
static const conv_dims k_wc = {3, 24, 40, 37, 45};
/* 15 wide: F(4x4, 3x3) in inference, 10 tile rows in bands of 7 (odd
 * bands and odd thread ranges: tile rows left without a pair) */
static const conv_dims k_wc4 = {2, 56, 64, 37, 15};
/* 29 wide: F(4x4, 3x3)'s rows of 8 tiles */
static const conv_dims k_wc8 = {2, 24, 40, 21, 29};

static vmc_oph *conv_run(vmc_mode mode, int threads, int winograd, const conv_dims *cd) {
  const vmc_oph_spec s = {
      .op = "conv2d", .mode = mode, .n_in = 1, .in = {{.ndim = 4, .d = {cd->n, cd->c, cd->h, cd->w}}},
      .n_attr = 10,
      .attr = {{.key = "out_c", .i = cd->o}, {.key = "kh", .i = 3}, {.key = "kw", .i = 3},
               {.key = "sh", .i = 1}, {.key = "sw", .i = 1}, {.key = "ph", .i = 1},
               {.key = "pw", .i = 1}, {.key = "dh", .i = 1}, {.key = "dw", .i = 1},
               {.key = "groups", .i = 1}},
      .n_param = 2, .pshape = {{.ndim = 4, .d = {cd->o, cd->c, 3, 3}}, {.ndim = 1, .d = {cd->o}}},
      .nthreads = threads};
  if (!winograd) setenv("VMC_WINOGRAD", "0", 1);
  vmc_oph *h = NULL;
  if (vmc_oph_create(&s, &h) == VMC_OK) {
    vmc_rng r;
    vmc_rng_seed(&r, 5);
    vmc_oph_fill(&r, h->x[0], h->xn[0], -1.0f, 1.0f);
    for (int k = 0; k < 2; k++)
      vmc_oph_fill(&r, vmc_oph_param(h, k), vmc_oph_param_count(h, k), -0.2f, 0.2f);
    vmc_oph_forward(h, mode == VMC_MODE_TRAIN ? 0 : 1);
    if (mode == VMC_MODE_TRAIN) {
      vmc_oph_fill(&r, h->dy, h->yn, -1.0f, 1.0f);
      vmc_oph_backward(h);
    }
  }
  unsetenv("VMC_WINOGRAD");
  return h;
}

/* Inference, image 0, on one to three threads, within tol of the direct;
 * several threads (the image's work split between them, unevenly with
 * three) give one thread's floats. */
static void infer_matches(const conv_dims *cd, double tol) {
  vmc_oph *one = NULL;
  for (int t = 1; t <= 3; t++) {
    vmc_oph *d = conv_run(VMC_MODE_INFER, t, 0, cd), *w = conv_run(VMC_MODE_INFER, t, 1, cd);
    REQUIRE(d && w);
    const size_t per = d->yn / cd->n;
    const double e = vmc_test_max_rel(w->y, d->y, per);
    if (!(e <= tol))
      vmc_test_fail(__FILE__, __LINE__, "inference %dx%d, %d threads: off by %g", cd->h, cd->w, t,
                    e);
    if (one && memcmp(one->y, w->y, per * sizeof(float)))
      vmc_test_fail(__FILE__, __LINE__, "inference %dx%d: %d threads differ from one", cd->h,
                    cd->w, t);
    vmc_oph_free(d);
    if (one) vmc_oph_free(w);
    else one = w;
  }
  vmc_oph_free(one);
}

TEST(winograd_conv_op_in_bands_matches_direct) {
  infer_matches(&k_wc, 1e-5);
  vmc_oph *d = conv_run(VMC_MODE_TRAIN, 2, 0, &k_wc), *w = conv_run(VMC_MODE_TRAIN, 2, 1, &k_wc);
  REQUIRE(d && w);
  const double ey = vmc_test_max_rel(w->y, d->y, d->yn);
  const double ex = vmc_test_max_rel(w->dx[0], d->dx[0], d->xn[0]);
  const size_t nw = vmc_oph_param_count(d, 0), nb = vmc_oph_param_count(d, 1);
  const double ew = vmc_test_max_rel(vmc_oph_grad(w, 0), vmc_oph_grad(d, 0), nw);
  const double eb = vmc_test_max_rel(vmc_oph_grad(w, 1), vmc_oph_grad(d, 1), nb);
  /* (dW: sums of 3 x 37 x 45 products, in another order) */
  if (!(ey <= 1e-5 && ex <= 1e-5 && ew <= 1e-4 && eb <= 1e-6))
    vmc_test_fail(__FILE__, __LINE__, "training: y %g, dx %g, dW %g, dB %g", ey, ex, ew, eb);
  vmc_oph_free(d), vmc_oph_free(w);
}

/* F(4x4, 3x3) rounds more (winograd.h): sums of 56 x 9 products here. */
TEST(winograd_f4_conv_op_matches_direct) {
  infer_matches(&k_wc4, 1e-4);
  infer_matches(&k_wc8, 1e-4);
}
