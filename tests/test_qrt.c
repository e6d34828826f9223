/* The integer runtime (quant/qrt.h): quantized zoo models against their
 * fp32 simulation, every GEMM and depthwise variant against the reference,
 * batch and thread invariance, the element-wise kernels on hand-computed
 * cases, u4/s8 activations, s4 weights, and the errors of bad graphs. */
#include "cli_run.h"
#include "test.h"
#include "zoo_fixture.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/data.h"
#include "graph/plan.h"
#include "kernels/conv.h"
#include "kernels/qelt.h"
#include "quant/ptq.h"
#include "quant/qrt.h"

#define AI(k, v) {.key = k, .i = (v), .f = (float)(v)}
#define AF(k, v) {.key = k, .i = 0, .f = (v)}

/* ---- models ------------------------------------------------------------------------ */

static vmc_graph *quantized(const char *name, vmc_qscheme w, vmc_qscheme act, const vmc_dataset *d) {
  vmc_graph *g = test_zoo_model(name, 5, 13), *q = NULL;
  if (!g) return NULL;
  vmc_ptq_opts o;
  vmc_ptq_opts_default(&o);
  o.weight_scheme = w;
  o.act_scheme = act;
  o.calib_images = 16;
  o.batch = 8;
  vmc_status s = vmc_ptq_quantize(g, d, &o, &q, NULL);
  if (s) vmc_test_fail(__FILE__, __LINE__, "ptq of %s: %s", name, vmc_last_error());
  vmc_graph_free(g);
  return q;
}

/* The same through the integer runtime, batch `batch` (images in chunks). */
static float *int_logits(const vmc_graph *g, const vmc_dataset *d, int n, int batch,
                         const vmc_qrt_opts *opts) {
  vmc_qrt *q = NULL;
  vmc_status s = vmc_qrt_create(g, batch, opts, &q);
  if (s) {
    vmc_test_fail(__FILE__, __LINE__, "vmc_qrt_create: %s", vmc_last_error());
    return NULL;
  }
  int *idx = malloc((size_t)batch * sizeof *idx);
  float *out = malloc((size_t)n * 10 * sizeof *out);
  for (int off = 0; idx && out && off < n; off += batch) {
    const int m = n - off < batch ? n - off : batch;
    for (int i = 0; i < m; i++) idx[i] = off + i;
    vmc_dataset_batch(d, idx, m, NULL, NULL, vmc_qrt_input(q), NULL);
    if (vmc_qrt_forward(q, m)) vmc_test_fail(__FILE__, __LINE__, "forward: %s", vmc_last_error());
    memcpy(out + (size_t)off * 10, vmc_qrt_output(q), (size_t)m * 10 * sizeof *out);
  }
  free(idx);
  vmc_qrt_destroy(q);
  return out;
}

static int argmax10(const float *z) {
  int b = 0;
  for (int j = 1; j < 10; j++)
    if (z[j] > z[b]) b = j;
  return b;
}

/* Integer vs simulation on n images: the share of equal decisions (ties
 * within tol of the top logit count as equal) and the largest logit
 * difference relative to the largest |logit|. */
static void compare(const float *sim, const float *in, int n, int *agree, double *rel) {
  double amax = 0, dmax = 0;
  *agree = 0;
  for (int i = 0; i < n * 10; i++) {
    if (fabs(sim[i]) > amax) amax = fabs(sim[i]);
    if (fabs(sim[i] - in[i]) > dmax) dmax = fabs(sim[i] - in[i]);
  }
  for (int i = 0; i < n; i++) {
    const int a = argmax10(sim + i * 10), b = argmax10(in + i * 10);
    *agree += a == b || fabs(sim[i * 10 + a] - sim[i * 10 + b]) <= dmax;
  }
  *rel = amax > 0 ? dmax / amax : dmax;
}

#define N_IMG 48

static void check_model(const char *name, vmc_qscheme w, vmc_qscheme act, double tol) {
  vmc_dataset *d = test_blobs(N_IMG, 21, 3, 30, 0);
  REQUIRE(d);
  vmc_graph *q = quantized(name, w, act, d);
  REQUIRE(q);
  float *sim = test_plan_logits(q, d, N_IMG), *in = int_logits(q, d, N_IMG, 16, NULL);
  REQUIRE(sim && in);
  int agree;
  double rel;
  compare(sim, in, N_IMG, &agree, &rel);
  if (agree != N_IMG || rel > tol)
    vmc_test_fail(__FILE__, __LINE__, "%s (w %d, act %d): %d/%d decisions agree, logits differ "
                  "by %.3g of their range (tolerance %.3g)", name, (int)w, (int)act, agree, N_IMG,
                  rel, tol);
  free(sim);
  free(in);
  vmc_graph_free(q);
  vmc_dataset_free(d);
}

/* Logits within 2% of their range: a code that lands one step off at a
 * rounding tie moves the logits by about one step of the last layers. */
TEST(qrt_resnet8_matches_simulation) { check_model("resnet8", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02); }
TEST(qrt_resnet20_matches_simulation) { check_model("resnet20", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02); }
TEST(qrt_mobilenetv2_matches_simulation) {
  check_model("mobilenetv2-tiny", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02);
}
TEST(qrt_lenet5_matches_simulation) { check_model("lenet5", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02); }
TEST(qrt_s4_weights_s8_and_u4_activations) {
  check_model("resnet8", VMC_QSCHEME_S4, VMC_QSCHEME_U8, 0.02);
  check_model("mobilenetv2-tiny", VMC_QSCHEME_S8, VMC_QSCHEME_S8, 0.02);
  /* 16 levels: a code one step off moves the logits more. */
  check_model("resnet8", VMC_QSCHEME_S8, VMC_QSCHEME_U4, 0.05);
}

static int same_floats(const float *a, const float *b, size_t n) {
  return !memcmp(a, b, n * sizeof *a);
}

/* How many GEMM steps of q's planar runtime run the narrow AVX2 GEMM. */
static int narrow_steps(const vmc_graph *g) {
  const vmc_qrt_opts o = {.layout = VMC_QRT_LAYOUT_PLANAR};
  vmc_qrt *q = NULL;
  if (vmc_qrt_create(g, 1, &o, &q)) return -1;
  int n = 0;
  char buf[200];
  for (int i = 0; i < vmc_qrt_describe(q, -1, NULL, 0); i++) {
    vmc_qrt_describe(q, i, buf, sizeof buf);
    n += strstr(buf, " gemm ") && strstr(buf, "(narrow pairs)");
  }
  vmc_qrt_destroy(q);
  return n;
}

/* Every GEMM variant the CPU runs, every depthwise variant, both layouts
 * (pixel-major on every direct-conv and depthwise variant: the reference
 * pair, the AVX-512 pair, and the AVX2 conv where the weights are narrow),
 * and any batch split over threads: the bits of the planar reference. */
TEST(qrt_variants_layouts_batches_and_threads_bit_identical) {
  /* resnet8 twice: s8 weights, and s4 ones, which fit the narrow AVX2 GEMM
   * (chosen by default, and refused when forced on the s8 weights) */
  static const char *const models[] = {"resnet8", "mobilenetv2-tiny", "resnet8"};
  static const vmc_qscheme wschemes[] = {VMC_QSCHEME_S8, VMC_QSCHEME_S8, VMC_QSCHEME_S4};
  enum { N = 6 };
  vmc_dataset *d = test_blobs(N, 5, 3, 30, 0);
  REQUIRE(d);
  const vmc_qdwconv_fn dws[] = {vmc_qdwconv__ref, vmc_qdwconv__avx2, vmc_qdwconv__avx512};
  const int dw_ok[] = {1, vmc_cpu_runs(VMC_ISA_AVX2),
                       vmc_cpu_runs(VMC_ISA_AVX512) &&
                           (vmc_cpu_features() & VMC_CPU_AVX512VNNI)};
  /* pixel-major on the reference pair, the AVX-512 pair, and the AVX2 conv
   * (narrow weights, no depthwise: the s4 resnet8) */
  const vmc_qconv_fn convs[] = {vmc_qconv__ref, vmc_qconv__avx512, vmc_qconv__avx2};
  const vmc_qdwp_fn dwps[] = {vmc_qdwp__ref, vmc_qdwp__avx512, NULL};
  const int threads = vmc_get_threads();
  for (int m = 0; m < 3; m++) {
    vmc_graph *q = quantized(models[m], wschemes[m], VMC_QSCHEME_U8, d);
    REQUIRE(q);
    const int conv_ok[] = {1, vmc_qconv_best() == vmc_qconv__avx512,
                           vmc_cpu_runs(VMC_ISA_AVX2) && wschemes[m] == VMC_QSCHEME_S4};
    if (vmc_qgemm_best() == &vmc_qgemm_u8s8s32_6x16__avx2 && wschemes[m] == VMC_QSCHEME_S4)
      CHECK_EQ_INT(narrow_steps(q), 10); /* every conv and the fc */
    const vmc_qrt_opts ref = {.gemm = &vmc_qgemm_u8s8s32__ref, .dwconv = vmc_qdwconv__ref,
                              .layout = VMC_QRT_LAYOUT_PLANAR};
    float *want = int_logits(q, d, N, 1, &ref);
    REQUIRE(want);
    /* {gemm variant or -1 (best), depthwise variant or -1, threads, batch,
     *  layout (-1 planar, -2 default, k >= 0 pixel-major on convs[k])} */
    int runs[40][5], nr = 0;
    for (int v = 0; v < vmc_qgemm_variant_count; v++)
      if (vmc_qgemm_variant_ok(vmc_qgemm_variants[v])) {
        int *r = runs[nr++];
        r[0] = v, r[1] = -1, r[2] = 2, r[3] = N, r[4] = -1;
      }
    for (int k = 0; k < 3; k++)
      if (dw_ok[k]) {
        int *r = runs[nr++];
        r[0] = -1, r[1] = k, r[2] = 1, r[3] = 1, r[4] = -1;
      }
    static const int tb[][2] = {{1, N}, {2, 1}, {2, 4}};
    for (int lay = -2; lay < 3; lay++) {
      if (lay >= 0 && !conv_ok[lay]) continue;
      for (int k = 0; k < 3; k++) {
        int *r = runs[nr++];
        r[0] = r[1] = -1, r[2] = tb[k][0], r[3] = tb[k][1], r[4] = lay;
      }
    }
    for (int i = 0; i < nr; i++) {
      const int *r = runs[i];
      const vmc_qrt_opts o = {.gemm = r[0] < 0 ? NULL : vmc_qgemm_variants[r[0]],
                              .dwconv = r[1] < 0 ? NULL : dws[r[1]],
                              .layout = r[4] == -1   ? VMC_QRT_LAYOUT_PLANAR
                                        : r[4] == -2 ? VMC_QRT_LAYOUT_AUTO
                                                     : VMC_QRT_LAYOUT_PIXEL,
                              .conv = r[4] >= 0 ? convs[r[4]] : NULL,
                              .dwp = r[4] >= 0 ? dwps[r[4]] : NULL};
      vmc_set_threads(r[2]);
      float *got = int_logits(q, d, N, r[3], &o);
      if (!got || !same_floats(got, want, N * 10))
        vmc_test_fail(__FILE__, __LINE__, "%s: gemm %d, depthwise %d, %d threads, batch %d, "
                      "layout %d: logits differ from the reference", models[m], r[0], r[1],
                      r[2], r[3], r[4]);
      free(got);
    }
    vmc_set_threads(threads);
    free(want);
    vmc_graph_free(q);
  }
  vmc_dataset_free(d);
}

/* ---- the element-wise kernels by hand ------------------------------------------------- */

TEST(qrt_add_requant_by_hand) {
  /* a: s 0.5 zp 10; b: s 0.25 zp 0; out: s 1 zp 5, codes 0..255. */
  const vmc_qact qa = {0.5f, 10, 0, 255}, qb = {0.25f, 0, 0, 255}, qo = {1.0f, 5, 0, 255};
  static const struct {
    uint8_t a, b, y, relu;
  } c[] = {
      {13, 2, 7, 7},   /* 1.5 + 0.5 = 2 */
      {11, 0, 5, 5},   /* 0.5: tie to even 0 */
      {13, 0, 7, 7},   /* 1.5: tie to even 2 */
      {15, 2, 8, 8},   /* 2.5 + 0.5 = 3 */
      {0, 0, 0, 5},    /* -5: code 0; relu: the zero point */
      {255, 255, 191, 191}, /* 122.5 + 63.75 = 186.25 */
      {10, 6, 7, 7},   /* 1.5: tie to 2 */
      {9, 3, 5, 5},    /* -0.5 + 0.75 = 0.25 */
  };
  const int n = (int)(sizeof c / sizeof c[0]);
  uint8_t a[8], b[8], y[8];
  for (int i = 0; i < n; i++) a[i] = c[i].a, b[i] = c[i].b;
  vmc_qadd_u8(a, &qa, b, &qb, (size_t)n, 1.0f, &qo, y);
  for (int i = 0; i < n; i++) CHECK_EQ_INT(y[i], c[i].y);
  const vmc_qact relu = {1.0f, 5, 5, 255};
  vmc_qadd_u8(a, &qa, b, &qb, (size_t)n, 1.0f, &relu, y);
  for (int i = 0; i < n; i++) CHECK_EQ_INT(y[i], c[i].relu);
  /* Requantization (b NULL): a's values onto s 0.25, zp 100, relu6 clamp at 6 / 0.25 = 24. */
  const vmc_qact r6 = {0.25f, 100, 100, 124};
  vmc_qadd_u8(a, &qa, NULL, NULL, (size_t)n, 4.0f, &r6, y);
  static const uint8_t want_r6[] = {106, 102, 106, 110, 100, 124, 100, 100};
  for (int i = 0; i < n; i++) CHECK_EQ_INT(y[i], want_r6[i]);
  /* Quantize and dequantize: ties to even, NaN to the zero point, clamps. */
  const float x[] = {0.5f, 1.5f, -0.5f, 2.5f, NAN, 1e9f, -1e9f, 3.0f};
  vmc_qquantize_f32(x, 8, 1.0f, &qo, y);
  static const uint8_t want_q[] = {5, 7, 5, 7, 5, 255, 0, 8};
  for (int i = 0; i < 8; i++) CHECK_EQ_INT(y[i], want_q[i]);
  float back[8];
  vmc_qdequantize_u8(y, 8, &qa, back);
  CHECK(back[0] == -2.5f && back[5] == 122.5f && back[6] == -5.0f);
}

/* The AVX2 and AVX-512 builds of the element-wise loops give the base
 * build's bits (random codes and parameters, ties, NaN and infinities
 * included, odd lengths). */
TEST(qrt_elementwise_simd_matches_base) {
  if (!vmc_cpu_runs(VMC_ISA_AVX2)) SKIP("the CPU lacks AVX2 and FMA");
  const int avx512 = vmc_cpu_runs(VMC_ISA_AVX512);
  const vmc_qelt_loops *simd[2] = {&vmc_qelt_loops_avx2, &vmc_qelt_loops_avx512};
  enum { N = 1000 };
  vmc_rng r;
  vmc_rng_seed(&r, 8);
  uint8_t a[N], b[N], y0[N], y1[N];
  float x[N], dy[N], f0[N], f1[N];
  size_t bad = 0;
  for (int t = 0; t < 40; t++) {
    const size_t n = 1 + vmc_rng_below(&r, N);
    for (size_t i = 0; i < n; i++) {
      a[i] = (uint8_t)vmc_rng_below(&r, 256), b[i] = (uint8_t)vmc_rng_below(&r, 256);
      x[i] = (vmc_rng_uniform(&r) - 0.5f) * 40.0f;
      if (i % 7 == 0) x[i] = (float)(int)x[i] + 0.5f; /* ties */
      if (i % 97 == 5) x[i] = i % 3 ? NAN : i % 2 ? INFINITY : -INFINITY;
      dy[i] = vmc_rng_uniform(&r) - 0.5f;
    }
    const float sa = 0.01f + vmc_rng_uniform(&r), sb = t % 5 == 0 ? sa : 0.01f + vmc_rng_uniform(&r);
    const float inv = 1.0f / (0.01f + vmc_rng_uniform(&r));
    const int32_t za = (int32_t)vmc_rng_below(&r, 256), zb = (int32_t)vmc_rng_below(&r, 256);
    const int32_t zp = (int32_t)vmc_rng_below(&r, 256);
    const float lo = (float)(-zp + (t % 3 == 0 ? zp : 0)), hi = (float)(255 - zp);
    for (int v = 0; v < (avx512 ? 2 : 1); v++) {
      vmc_qadd2_u8_base(a, b, n, sa, za, sb, zb, inv, lo, hi, zp, y0);
      simd[v]->add2(a, b, n, sa, za, sb, zb, inv, lo, hi, zp, y1);
      bad += memcmp(y0, y1, n) != 0;
      vmc_qrequant_u8_base(a, n, sa, za, inv, lo, hi, zp, y0);
      simd[v]->requant(a, n, sa, za, inv, lo, hi, zp, y1);
      bad += memcmp(y0, y1, n) != 0;
      vmc_qquantize_f32_base(x, n, inv, lo, hi, zp, y0);
      simd[v]->quantize(x, n, inv, lo, hi, zp, y1);
      bad += memcmp(y0, y1, n) != 0;
      vmc_qfake_f32_base(x, n, inv, sa, lo, hi, f0);
      simd[v]->fake(x, n, inv, sa, lo, hi, f1);
      bad += memcmp(f0, f1, n * sizeof *f0) != 0;
      for (int set = 0; set < 2; set++) {
        for (size_t i = 0; i < n; i++) f0[i] = f1[i] = (float)i;
        vmc_qfake_grad_base(x, dy, n, inv, lo, hi, set, f0);
        simd[v]->fake_grad(x, dy, n, inv, lo, hi, set, f1);
        bad += memcmp(f0, f1, n * sizeof *f0) != 0;
      }
    }
  }
  CHECK_EQ_INT(bad, 0);
}

TEST(qrt_pools_by_hand) {
  /* One 3x3 plane, zero point 10. */
  const uint8_t x[9] = {10, 11, 12, 14, 20, 10, 9, 9, 30};
  vmc_conv_geom g = {.c = 1, .h = 3, .w = 3, .kh = 2, .kw = 2, .sh = 1, .sw = 1, .dh = 1, .dw = 1,
                     .oh = 2, .ow = 2};
  uint8_t y[9];
  vmc_qmaxpool_u8(x, &g, 1, y);
  CHECK(y[0] == 20 && y[1] == 20 && y[2] == 20 && y[3] == 30);
  /* Average 2x2, output scale = input scale, zp 3: windows sum (q - 10) =
   * 0+1+4+10 = 15 -> 3.75 -> 4; 1+2+10+0 = 13 -> 3.25 -> 3; 4+10-1-1 = 12 -> 3;
   * 10+0-1+20 = 29 -> 7.25 -> 7. */
  const vmc_qepi e = {.zero_point = 3, .lo = 0, .hi = 255, .out = VMC_QOUT_U8};
  const vmc_qepi_prep prep = vmc_qepi_prepare(&e);
  vmc_qavgpool_u8(x, &g, 1, 10, 0.25f, &prep, y);
  CHECK(y[0] == 7 && y[1] == 6 && y[2] == 6 && y[3] == 10);
  /* Padding 1, 2x2 stride 2 (PyTorch's divisor 4 counts the padding as 0):
   * windows {10}, {11, 12}, {14, 9}, {20, 10, 9, 30}. */
  g.ph = g.pw = 1;
  g.sh = g.sw = 2;
  vmc_qavgpool_u8(x, &g, 1, 10, 0.25f, &prep, y);
  /* (0)/4 = 0; (1+2)/4 = 0.75 -> 1; (4-1)/4 = 0.75 -> 1; (10+0-1+20)/4 = 7.25 -> 7 */
  CHECK(y[0] == 3 && y[1] == 4 && y[2] == 4 && y[3] == 10);
  vmc_qmaxpool_u8(x, &g, 1, y);
  CHECK(y[0] == 10 && y[1] == 12 && y[2] == 14 && y[3] == 30);
  /* Global: (0+1+2+4+10+0-1-1+20) = 35 over 9, scale 1/9 of 1: 3.89 -> 4, + zp 3. */
  const vmc_conv_geom gg = {.c = 1, .h = 3, .w = 3, .kh = 3, .kw = 3, .sh = 3, .sw = 3, .dh = 1,
                            .dw = 1, .oh = 1, .ow = 1};
  vmc_qavgpool_u8(x, &gg, 1, 10, 1.0f / 9.0f, &prep, y);
  CHECK_EQ_INT(y[0], 7);
}

/* The u8 im2col against the fp32 one, and the phase/wide columns against
 * the u8 im2col, over strides, dilations, paddings and odd shapes. */
TEST(qrt_im2col_and_phase_layouts) {
  static const int geo[][9] = {/* c, h, w, k, s, p, d, kw, sw */
                               {3, 7, 9, 3, 1, 1, 1, 3, 1}, {2, 8, 8, 3, 2, 1, 1, 3, 2},
                               {2, 9, 7, 3, 2, 0, 1, 3, 2}, {1, 10, 11, 5, 3, 2, 1, 5, 3},
                               {2, 9, 9, 3, 1, 2, 2, 3, 1}, {3, 6, 10, 1, 2, 0, 1, 1, 2},
                               {2, 11, 8, 2, 2, 1, 3, 3, 1}, {1, 5, 40, 3, 1, 1, 1, 3, 2}};
  vmc_rng r;
  vmc_rng_seed(&r, 3);
  for (size_t t = 0; t < sizeof geo / sizeof geo[0]; t++) {
    const int *q = geo[t];
    vmc_conv_geom g = {.c = q[0], .h = q[1], .w = q[2], .kh = q[3], .kw = q[7], .sh = q[4],
                       .sw = q[8], .ph = q[5], .pw = q[5], .dh = q[6], .dw = q[6]};
    g.oh = vmc_conv_out(g.h, g.kh, g.sh, g.ph, g.dh);
    g.ow = vmc_conv_out(g.w, g.kw, g.sw, g.pw, g.dw);
    REQUIRE(g.oh > 0 && g.ow > 0);
    const size_t nx = (size_t)g.c * g.h * g.w, K = (size_t)g.c * g.kh * g.kw;
    const size_t P = (size_t)g.oh * g.ow, nw = (size_t)g.oh * vmc_qphase_w(&g);
    uint8_t *x = malloc(nx + VMC_QELT_OVERREAD), *col = malloc(K * P);
    uint8_t *xp = malloc(vmc_qphase_bytes(&g));
    int32_t *off = malloc(K * sizeof *off);
    float *xf = malloc(nx * sizeof *xf), *colf = malloc(K * P * sizeof *colf);
    REQUIRE(x && col && xp && off && xf && colf);
    for (size_t i = 0; i < nx; i++) x[i] = (uint8_t)(1 + vmc_rng_below(&r, 255)), xf[i] = x[i];
    vmc_qim2col_u8(x, &g, 0, col);
    vmc_im2col(xf, &g, colf);
    size_t bad = 0;
    for (size_t i = 0; i < K * P; i++) bad += col[i] != (uint8_t)colf[i];
    vmc_qim2col_u8(x, &g, 77, col); /* the zero point as padding */
    vmc_qphase_u8(x, &g, 77, xp);
    vmc_qwide_offsets(&g, off);
    for (size_t k = 0; k < K; k++)
      for (int oy = 0; oy < g.oh; oy++)
        for (int ox = 0; ox < g.ow; ox++) {
          const uint8_t a = col[k * P + (size_t)oy * g.ow + ox];
          bad += a != xp[(size_t)off[k] + (size_t)oy * vmc_qphase_w(&g) + ox];
          bad += colf[k * P + (size_t)oy * g.ow + ox] == 0.0f ? a != 77 : 0;
        }
    if (bad) vmc_test_fail(__FILE__, __LINE__, "geometry %zu: %zu bytes differ", t, bad);
    /* The crop keeps the first ow of each wide row. */
    uint8_t *crop = malloc(K * P), *wide = malloc(K * nw);
    REQUIRE(crop && wide);
    for (size_t k = 0; k < K; k++) memcpy(wide + k * nw, xp + off[k], nw);
    vmc_qcrop_u8(wide, (int)K, g.oh, vmc_qphase_w(&g), g.ow, crop);
    CHECK(!memcmp(crop, col, K * P));
    free(x), free(col), free(xp), free(off), free(wide), free(xf), free(colf), free(crop);
  }
}

/* ---- hand-built graphs ---------------------------------------------------------------- */

static int add_fq(vmc_graph *g, int in, const char *name, float s, int zp, int qmin, int qmax) {
  const vmc_attr a[] = {vmc_attr_float("scale", s), vmc_attr_int("zero_point", zp),
                        vmc_attr_int("qmin", qmin), vmc_attr_int("qmax", qmax)};
  int out = -1;
  if (vmc_graph_add_node(g, "fakequant", name, &in, 1, a, 4, NULL, 0, &out))
    vmc_test_fail(__FILE__, __LINE__, "%s: %s", name, vmc_last_error());
  return out;
}

static int add_op(vmc_graph *g, const char *op, const char *name, const int *in, int n_in,
                  const vmc_attr *a, int na) {
  int out = -1;
  if (vmc_graph_add_node(g, op, name, in, n_in, a, na, NULL, 0, &out))
    vmc_test_fail(__FILE__, __LINE__, "%s: %s", name, vmc_last_error());
  return out;
}

/* A weight of `rows` x per codes (random, |code| <= qmax) times per-row
 * scales, stored as dt (VMC_F32: not marked quantized), and a bias on the
 * s32 grid of the input scale sx (as vmc quantize writes). */
static void add_weights(vmc_graph *g, const char *name, vmc_shape ws, int qmax, vmc_dtype dt,
                        float sx, vmc_rng *r, int *params) {
  char nm[80];
  snprintf(nm, sizeof nm, "%s.weight", name);
  if (vmc_graph_add_param(g, nm, ws, 1, &params[0])) return;
  snprintf(nm, sizeof nm, "%s.bias", name);
  const vmc_shape bs = {1, {ws.d[0]}};
  if (vmc_graph_add_param(g, nm, bs, 1, &params[1])) return;
  const int rows = ws.d[0];
  const size_t per = vmc_shape_count(&ws) / (size_t)rows;
  float sc[64];
  for (int m = 0; m < rows; m++) {
    sc[m] = (0.6f + 0.2f * (float)(m % 3)) / (float)qmax / sqrtf((float)per);
    for (size_t k = 0; k < per; k++)
      g->params[params[0]].data[m * per + k] =
          (float)((int)vmc_rng_below(r, (uint32_t)(2 * qmax + 1)) - qmax) * sc[m];
    const double grid = (double)sc[m] * sx;
    g->params[params[1]].data[m] = (float)(grid * nearbyint(0.1 * (vmc_rng_uniform(r) - 0.5) / grid));
  }
  if (dt != VMC_F32 && vmc_param_set_quantized(g, params[0], dt, sc, rows))
    vmc_test_fail(__FILE__, __LINE__, "%s: %s", name, vmc_last_error());
}

static int add_conv(vmc_graph *g, int in, const char *name, int cin, int oc, int k, int s, int p,
                    int d, int groups, vmc_dtype dt, float sx, vmc_rng *r) {
  int params[2];
  add_weights(g, name, vmc_shape4(oc, cin / groups, k, k), dt == VMC_S4 ? 7 : 127, dt, sx, r,
              params);
  const vmc_attr a[] = {vmc_attr_int("out_c", oc), vmc_attr_int("kh", k), vmc_attr_int("sh", s),
                        vmc_attr_int("ph", p), vmc_attr_int("dh", d), vmc_attr_int("groups", groups)};
  int out = -1;
  if (vmc_graph_add_node(g, "conv2d", name, &in, 1, a, 6, params, 2, &out))
    vmc_test_fail(__FILE__, __LINE__, "%s: %s", name, vmc_last_error());
  return out;
}

static int add_linear(vmc_graph *g, int in, const char *name, int fin, int fout, float sx,
                      vmc_rng *r) {
  int params[2];
  add_weights(g, name, vmc_shape2(fout, fin), 127, VMC_S8, sx, r, params);
  const vmc_attr a[] = {vmc_attr_int("out_f", fout)};
  int out = -1;
  if (vmc_graph_add_node(g, "linear", name, &in, 1, a, 1, params, 2, &out))
    vmc_test_fail(__FILE__, __LINE__, "%s: %s", name, vmc_last_error());
  return out;
}

/* Grouped, dilated and strided convs (grouped GEMMs, a dilated depthwise
 * one, stride-3 phases), s4 and s8 weights, a relu6 fused as the clamp, s8
 * and u8 activations, maxpool, a padded avgpool, gap, flatten. */
static vmc_graph *odd_graph(void) {
  vmc_graph *g = NULL;
  if (vmc_graph_create(4, 13, 11, &g)) return NULL;
  vmc_rng r;
  vmc_rng_seed(&r, 9);
  int v = add_fq(g, g->input, "in.q", 0.03f, 120, 0, 255);
  v = add_conv(g, v, "c1", 4, 6, 3, 1, 1, 1, 2, VMC_S8, 0.03f, &r);
  v = add_op(g, "relu6", "c1.relu", &v, 1, NULL, 0);
  v = add_fq(g, v, "c1.q", 0.03f, 0, 0, 255);
  v = add_conv(g, v, "c2", 6, 6, 3, 1, 2, 2, 6, VMC_S4, 0.03f, &r);
  v = add_fq(g, v, "c2.q", 0.02f, 0, -128, 127);
  v = add_conv(g, v, "c3", 6, 8, 3, 3, 2, 1, 1, VMC_S8, 0.02f, &r);
  v = add_fq(g, v, "c3.q", 0.02f, 130, 0, 255);
  const vmc_attr mp[] = {vmc_attr_int("kh", 2)};
  v = add_op(g, "maxpool", "mp", &v, 1, mp, 1);
  const vmc_attr ap[] = {vmc_attr_int("kh", 2), vmc_attr_int("sh", 1), vmc_attr_int("ph", 1)};
  v = add_op(g, "avgpool", "ap", &v, 1, ap, 3);
  v = add_fq(g, v, "ap.q", 0.0123f, 128, 0, 255); /* not s_x / 2: no systematic ties */
  v = add_op(g, "gap", "gap", &v, 1, NULL, 0);
  v = add_op(g, "flatten", "flat", &v, 1, NULL, 0);
  v = add_fq(g, v, "flat.q", 0.005f, 128, 0, 255);
  add_linear(g, v, "fc", 8, 3, 0.005f, &r);
  return g;
}

TEST(qrt_hand_graph_groups_dilation_strides) {
  vmc_graph *g = odd_graph();
  REQUIRE(g && !vmc_test_failed_now());
  enum { N = 8 };
  vmc_plan *p = NULL;
  vmc_qrt *q = NULL;
  REQUIRE_OK(vmc_plan_create(g, N, VMC_MODE_INFER, &p));
  REQUIRE_OK(vmc_qrt_create(g, N, NULL, &q));
  vmc_rng r;
  vmc_rng_seed(&r, 4);
  const size_t in = 4 * 13 * 11;
  for (size_t i = 0; i < N * in; i++) vmc_qrt_input(q)[i] = vmc_plan_input(p)[i] = vmc_rng_normal(&r);
  REQUIRE_OK(vmc_plan_forward(p, N));
  REQUIRE_OK(vmc_qrt_forward(q, N));
  CHECK_EQ_INT(vmc_qrt_classes(q), 3);
  double amax = 0, dmax = 0;
  for (int i = 0; i < N * 3; i++) {
    amax = fmax(amax, fabs(vmc_plan_output(p)[i]));
    dmax = fmax(dmax, fabs(vmc_plan_output(p)[i] - vmc_qrt_output(q)[i]));
  }
  if (!(dmax <= 0.02 * amax))
    vmc_test_fail(__FILE__, __LINE__, "logits differ by %g (largest %g)", dmax, amax);
  /* The steps it chose. */
  char buf[160], all[2048] = "";
  for (int i = 0; i < vmc_qrt_describe(q, -1, NULL, 0); i++) {
    vmc_qrt_describe(q, i, buf, sizeof buf);
    strncat(all, buf, sizeof all - strlen(all) - 2);
    strcat(all, "\n");
  }
  CHECK(strstr(all, "c1 gemm 3x18x143 grouped im2col") != NULL);
  CHECK(strstr(all, "c2 gemm 1x9x143 grouped im2col") != NULL); /* dilated depthwise */
  CHECK(strstr(all, "c3 gemm 8x54x25 wide") != NULL);
  CHECK(strstr(all, "fc linear") == NULL && strstr(all, "fc gemm 3x8x1 direct -> f32") != NULL);
  if (vmc_test_failed_now()) printf("%s", all);
  /* Their names in profiles. */
  const char *want[][2] = {{"c1", "gemm-im2col"}, {"c3", "gemm-phase"}, {"fc", "gemm"}};
  int seen = 0;
  for (int i = 0; i < vmc_qrt_step_info(q, -1, NULL, NULL, NULL, NULL); i++) {
    const char *node, *op, *k = vmc_qrt_step_kernel(q, i);
    double sec, macs;
    vmc_qrt_step_info(q, i, &node, &op, &sec, &macs);
    if (!strcmp(op, "fakequant")) CHECK(k == NULL);
    for (int w = 0; w < 3; w++)
      if (!strcmp(node, want[w][0])) {
        CHECK_EQ_STR(k ? k : "(none)", want[w][1]);
        seen++;
      }
  }
  CHECK_EQ_INT(seen, 3);
  CHECK(vmc_qrt_step_kernel(q, -1) == NULL);
  vmc_qrt_destroy(q);
  vmc_plan_destroy(p);
  vmc_graph_free(g);
}

/* Each bad graph is refused with a message naming the node and what is wrong. */
TEST(qrt_bad_graphs) {
  vmc_qrt *q = NULL;
  /* A float model: its first conv reads the image without a fakequant. */
  vmc_graph *g = test_zoo_model("resnet8", 5, 13);
  REQUIRE(g);
  CHECK_EQ_INT(vmc_qrt_create(g, 1, NULL, &q), VMC_ERR_UNSUPPORTED);
  CHECK(strstr(vmc_last_error(), "'conv1' (conv2d)") && strstr(vmc_last_error(), "not quantized"));
  CHECK(!vmc_graph_is_quantized(g) && q == NULL);
  vmc_graph_free(g);
  static const char *const want[] = {"reads the float output of 'c1'", "'cat' (concat): no integer",
                                     "'c1' (conv2d): its weight is not stored quantized",
                                     "'in.q' (fakequant): codes outside",
                                     "'c1' (conv2d): its output is read by several nodes"};
  for (int t = 0; t < 5; t++) {
    vmc_rng r;
    vmc_rng_seed(&r, 1);
    REQUIRE_OK(vmc_graph_create(2, 6, 6, &g));
    int v = add_fq(g, g->input, "in.q", 0.05f, 0, t == 3 ? -1000 : -128, 127);
    int c = add_conv(g, v, "c1", 2, 2, 3, 1, 1, 1, 1, t == 2 ? VMC_F32 : VMC_S8, 0.05f, &r);
    if (t == 0) c = add_conv(g, c, "c2", 2, 2, 1, 1, 0, 1, 1, VMC_S8, 0.05f, &r); /* no fakequant */
    else c = add_fq(g, c, "c1.q", 0.05f, 0, -128, 127);
    if (t == 1) {
      const int two[2] = {c, v};
      const vmc_attr a[] = {vmc_attr_int("axis", 1)};
      c = add_op(g, "concat", "cat", two, 2, a, 0);
      c = add_fq(g, c, "cat.q", 0.05f, 0, -128, 127);
    }
    if (t == 4) { /* an add of a float value */
      const int two[2] = {c, g->nodes[1].out};
      c = add_op(g, "add", "c2", two, 2, NULL, 0);
      c = add_fq(g, c, "c2.q", 0.05f, 0, -128, 127);
    }
    add_op(g, "gap", "gap", &c, 1, NULL, 0);
    REQUIRE(!vmc_test_failed_now());
    const vmc_status s = vmc_qrt_create(g, 2, NULL, &q);
    if (s != VMC_ERR_UNSUPPORTED || !strstr(vmc_last_error(), want[t]))
      vmc_test_fail(__FILE__, __LINE__, "case %d: %s: '%s'", t, vmc_status_str(s), vmc_last_error());
    vmc_qrt_destroy(q);
    q = NULL;
    vmc_graph_free(g);
  }
  /* Bad batch sizes. */
  g = odd_graph();
  REQUIRE(g);
  CHECK_EQ_INT(vmc_qrt_create(g, 0, NULL, &q), VMC_ERR_INVALID_ARG);
  REQUIRE_OK(vmc_qrt_create(g, 2, NULL, &q));
  CHECK_EQ_INT(vmc_qrt_forward(q, 3), VMC_ERR_INVALID_ARG);
  CHECK_EQ_INT(vmc_qrt_forward(q, 0), VMC_ERR_INVALID_ARG);
  vmc_qrt_destroy(q);
  vmc_graph_free(g);
}

/* Allocation failures anywhere in the lowering: an error, no leak, no crash. */
TEST(qrt_allocation_failures) {
  vmc_graph *g = odd_graph();
  REQUIRE(g);
  int failed = 0;
  for (long k = 0; k < 400; k++) {
    vmc_qrt *q = NULL;
    vmc_fail_alloc_after(k);
    const vmc_status s = vmc_qrt_create(g, 3, NULL, &q);
    vmc_fail_alloc_after(-1);
    if (s == VMC_OK) {
      vmc_qrt_destroy(q);
      break;
    }
    CHECK_EQ_INT(s, VMC_ERR_NOMEM);
    CHECK(q == NULL);
    failed++;
  }
  CHECK(failed > 10);
  vmc_graph_free(g);
}

/* ---- the CLI ------------------------------------------------------------------------- */

static double json_num(const char *out, const char *key) {
  const char *p = strstr(out, key);
  return p ? atof(p + strlen(key)) : NAN;
}

static char g_out[1 << 15];

TEST(qrt_cli_eval_and_bench) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  vmc_dataset *probe = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &probe) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  vmc_dataset_free(probe);
  vmc_dataset *d = test_blobs(16, 2, 3, 30, 0);
  REQUIRE(d);
  vmc_graph *q = quantized("resnet8", VMC_QSCHEME_S8, VMC_QSCHEME_U8, d);
  vmc_graph *f = test_zoo_model("resnet8", 5, 13);
  REQUIRE(q && f);
  char qp[512], fp[512], lg[512];
  snprintf(qp, sizeof qp, "%s/qrt_r8q.vmc", vmc_test_tmpdir());
  snprintf(fp, sizeof fp, "%s/qrt_r8.vmc", vmc_test_tmpdir());
  snprintf(lg, sizeof lg, "%s/qrt_logits.csv", vmc_test_tmpdir());
  REQUIRE_OK(vmc_model_save(q, qp));
  REQUIRE_OK(vmc_model_save(f, fp));
  vmc_graph_free(q);
  vmc_graph_free(f);
  vmc_dataset_free(d);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "eval %s --data fashion-mnist --limit 300 --json", qp), 0);
  CHECK(strstr(g_out, "\"runtime\":\t\"integer\"") != NULL);
  const double acc_int = json_num(g_out, "\"accuracy\":");
  CHECK_EQ_INT(run(g_out, sizeof g_out, "eval %s --data fashion-mnist --limit 300 --json --simulate", qp), 0);
  CHECK(strstr(g_out, "\"runtime\":\t\"fp32\"") != NULL);
  CHECK_NEAR(acc_int, json_num(g_out, "\"accuracy\":"), 0.02);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "eval %s --data fashion-mnist --limit 20 --batch 7 --logits %s", qp, lg), 0);
  CHECK(strstr(g_out, "integer runtime") != NULL);
  FILE *csv = fopen(lg, "r");
  int lines = 0;
  for (int ch; csv && (ch = fgetc(csv)) != EOF;) lines += ch == '\n';
  if (csv) fclose(csv);
  CHECK_EQ_INT(lines, 21);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --vs %s --repeats 3 --warmup 1 --batch 4", qp, fp), 0);
  CHECK(strstr(g_out, "integer") && strstr(g_out, "fp32") && strstr(g_out, "ratio") &&
        strstr(g_out, "batch 4 images/s") && strstr(g_out, "s8 "));
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --simulate --repeats 2 --warmup 0 --batch 2 --json", qp), 0);
  CHECK(strstr(g_out, "fp32 simulation") != NULL);
  /* Per-step timing of the integer runtime, per-layer of its simulation. */
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --repeats 2 --warmup 0 --batch 2 --profile", qp), 0);
  CHECK(strstr(g_out, "per step of the integer runtime, batch 2") && strstr(g_out, "conv2d") &&
        strstr(g_out, "all ") && strstr(g_out, " GOP/s") && !strstr(g_out, "GFLOP/s"));
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --repeats 1 --warmup 0 --batch 1 --profile --json", qp), 0);
  CHECK(strstr(g_out, "\"profile\"") && strstr(g_out, "\"macs\"") && strstr(g_out, "\"gops\"") &&
        !strstr(g_out, "\"gflops\""));
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --simulate --repeats 1 --warmup 0 --batch 2 --profile", qp), 0);
  CHECK(strstr(g_out, "per layer") && strstr(g_out, "fakequant"));
  char cmd[700];
  snprintf(cmd, sizeof cmd, "VMC_ISA=ref %s bench %s --repeats 1 --warmup 0 --batch 1 2>&1", vmc_bin(), qp);
  FILE *p = popen(cmd, "r");
  REQUIRE(p);
  const size_t k = fread(g_out, 1, sizeof g_out - 1, p);
  g_out[k] = 0;
  CHECK(pclose(p) == 0 && strstr(g_out, "integer, ") && strstr(g_out, "ref kernels"));
  /* A model the runtime cannot lower: the error names the node. */
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --repeats 1 --warmup 0 --batch 1 --simulate --vs %s", fp, qp), 0);
}

/* The default layout: pixel-major for resnet8 and mobilenetv2-tiny where
 * the CPU has the direct kernels, planar for lenet5 (5x5 convs padded by 2,
 * max pooling), whose pixel-major request is refused with the node named.
 * With AVX2 alone the direct kernel takes narrow weights: resnet8 with s7
 * weights goes pixel-major, with s8 ones planar (refused when asked for, the
 * reason given), and mobilenetv2-tiny planar (no depthwise kernel). */
TEST(qrt_layout_choice) {
  vmc_dataset *d = test_blobs(8, 5, 3, 30, 0);
  REQUIRE(d);
  vmc_graph *r8 = quantized("resnet8", VMC_QSCHEME_S8, VMC_QSCHEME_U8, d);
  vmc_graph *mb = quantized("mobilenetv2-tiny", VMC_QSCHEME_S8, VMC_QSCHEME_U8, d);
  vmc_graph *le = quantized("lenet5", VMC_QSCHEME_S8, VMC_QSCHEME_U8, d);
  vmc_graph *r87 = quantized("resnet8", VMC_QSCHEME_S7, VMC_QSCHEME_U8, d);
  REQUIRE(r8 && mb && le && r87);
  const int pixel = vmc_qconv_best() == vmc_qconv__avx512;
  vmc_qrt *q = NULL;
  char buf[256];
  REQUIRE_OK(vmc_qrt_create(r8, 2, NULL, &q));
  int direct = 0, gemm = 0, fused = 0, adds = 0;
  for (int i = 0; i < vmc_qrt_describe(q, -1, NULL, 0); i++) {
    vmc_qrt_describe(q, i, buf, sizeof buf);
    direct += strstr(buf, "pixel-major") != NULL;
    gemm += strstr(buf, " gemm ") != NULL;
    fused += strstr(buf, "add fused") != NULL;
    char op[64], node[64], kind[64];
    adds += sscanf(buf, "%63s %63s %63s", op, node, kind) == 3 && !strcmp(kind, "add");
  }
  CHECK_EQ_INT(direct, pixel ? 9 : 0); /* resnet8's 9 convs; the fc stays a GEMM */
  CHECK_EQ_INT(gemm, pixel ? 1 : 10);
  CHECK_EQ_INT(fused, pixel ? 3 : 0); /* each block's add, in its last conv */
  CHECK_EQ_INT(adds, pixel ? 0 : 3);
  vmc_qrt_destroy(q);
  REQUIRE_OK(vmc_qrt_create(mb, 2, NULL, &q));
  CHECK(!strcmp(vmc_qrt_layout_name(q), pixel ? "pixel-major" : "planar"));
  vmc_qrt_destroy(q);
  const vmc_qrt_opts px = {.layout = VMC_QRT_LAYOUT_PIXEL, .conv = vmc_qconv__ref,
                           .dwp = vmc_qdwp__ref};
  CHECK(vmc_qrt_create(le, 2, &px, &q) == VMC_ERR_UNSUPPORTED && !q);
  CHECK(strstr(vmc_last_error(), "pixel-major") != NULL);
  REQUIRE_OK(vmc_qrt_create(le, 2, NULL, &q));
  CHECK(!strcmp(vmc_qrt_layout_name(q), "planar"));
  vmc_qrt_destroy(q);
  REQUIRE_OK(vmc_qrt_create(r87, 2, NULL, &q));
  CHECK(!strcmp(vmc_qrt_layout_name(q), vmc_qconv_best() ? "pixel-major" : "planar"));
  vmc_qrt_destroy(q);
  if (vmc_cpu_runs(VMC_ISA_AVX2)) {
    const vmc_qrt_opts p2 = {.layout = VMC_QRT_LAYOUT_PIXEL, .conv = vmc_qconv__avx2};
    CHECK(vmc_qrt_create(r8, 2, &p2, &q) == VMC_ERR_UNSUPPORTED && !q);
    CHECK(strstr(vmc_last_error(), "w7a8") != NULL);
    REQUIRE_OK(vmc_qrt_create(r87, 2, &p2, &q));
    vmc_qrt_destroy(q);
  }
  vmc_graph_free(r87);
  vmc_graph_free(r8);
  vmc_graph_free(mb);
  vmc_graph_free(le);
  vmc_dataset_free(d);
}

/* Three-channel images (channels padded to 4 in the pixel-major layout,
 * the pad channels holding the zero point) and 32x32 inputs: resnet8 built
 * for CIFAR-10's shape gives the planar reference's bits pixel-major, on
 * every direct-conv variant. */
TEST(qrt_pixel_major_three_channels) {
  enum { N = 8, C = 3, H = 32 };
  uint8_t *img = malloc((size_t)N * C * H * H), lab[N];
  REQUIRE(img);
  vmc_rng r;
  vmc_rng_seed(&r, 21);
  for (size_t i = 0; i < (size_t)N * C * H * H; i++) img[i] = (uint8_t)vmc_rng_below(&r, 256);
  for (int i = 0; i < N; i++) lab[i] = (uint8_t)(i % 10);
  vmc_dataset *d = NULL;
  REQUIRE_OK(vmc_dataset_from_memory("rgb", N, C, H, H, 10, img, lab, NULL, NULL, &d));
  free(img);
  vmc_graph *g = NULL, *q = NULL;
  REQUIRE_OK(vmc_zoo_build("resnet8", C, H, H, 10, 3, &g));
  vmc_ptq_opts o;
  vmc_ptq_opts_default(&o);
  o.calib_images = N;
  o.batch = 4;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, NULL));
  const vmc_qrt_opts ref = {.gemm = &vmc_qgemm_u8s8s32__ref, .dwconv = vmc_qdwconv__ref,
                            .layout = VMC_QRT_LAYOUT_PLANAR};
  float *want = int_logits(q, d, N, 3, &ref);
  REQUIRE(want);
  const vmc_qconv_fn convs[] = {vmc_qconv__ref, vmc_qconv__avx512};
  for (int k = 0; k < 2; k++) {
    if (k == 1 && vmc_qconv_best() != vmc_qconv__avx512) continue;
    const vmc_qrt_opts px = {.layout = VMC_QRT_LAYOUT_PIXEL, .conv = convs[k]};
    float *got = int_logits(q, d, N, 3, &px);
    if (!got || !same_floats(got, want, N * 10))
      vmc_test_fail(__FILE__, __LINE__, "pixel-major (conv variant %d) differs from planar", k);
    free(got);
  }
  free(want);
  vmc_graph_free(q);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}
