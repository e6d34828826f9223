/* AdaRound (src/quant/adaround.h): the rectified sigmoid, the regulariser
 * and their gradients against finite differences, the annealing schedule;
 * on a small two-conv model the learned rounding reconstructs each layer's
 * output at least as well as rounding to nearest (and the model's output
 * better), with valid codes (in range, floor or ceil of w/s, data == code *
 * scale, storage and scales unchanged); resnet8 end to end (BatchNorm folded,
 * names matched, a linear layer); bad requests and `vmc quantize --adaround`. */
#include "cli_run.h"
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/data.h"
#include "graph/graph.h"
#include "graph/plan.h"
#include "graph/rebuild.h"
#include "quant/adaround.h"
#include "quant/qrt.h"
#include "quant/ptq.h"

TEST(adaround_rectified_sigmoid_and_regulariser_gradients) {
  /* h and dh: away from the clamp's kinks (|V| < 2.39). */
  for (float v = -2.3f; v <= 2.3f; v += 0.1f) {
    const float e = 1e-3f;
    const double fd = ((double)vmc_adaround_h(v + e) - vmc_adaround_h(v - e)) / (2.0 * e);
    CHECK_NEAR(vmc_adaround_dh(v), fd, 1e-3);
  }
  /* Saturated: h is exactly 0 or 1 and flat. */
  CHECK(vmc_adaround_h(-3.0f) == 0.0f && vmc_adaround_h(3.0f) == 1.0f);
  CHECK(vmc_adaround_dh(-3.0f) == 0.0f && vmc_adaround_dh(3.0f) == 0.0f);
  CHECK_NEAR(vmc_adaround_h(0.0f), 0.5, 1e-7);
  /* V starts where h is the fractional part. */
  for (float fr = 0.0f; fr < 1.0f; fr += 0.0625f) CHECK_NEAR(vmc_adaround_h(vmc_adaround_v_init(fr)), fr, 1e-6);
  /* The regulariser: 1 at h = 1/2, 0 at h in {0, 1}; its gradient. */
  CHECK_NEAR(vmc_adaround_reg(0.0f, 20.0f), 1.0, 1e-6);
  CHECK(vmc_adaround_reg(5.0f, 2.0f) == 0.0f && vmc_adaround_reg(-5.0f, 2.0f) == 0.0f);
  const float betas[] = {2.0f, 3.5f, 8.0f, 20.0f};
  for (int b = 0; b < 4; b++)
    for (float v = -2.3f; v <= 2.3f; v += 0.1f) {
      if (fabsf(v) < 0.05f) continue; /* |2h - 1| has a kink at h = 1/2 */
      const float e = 1e-3f;
      const double fd = ((double)vmc_adaround_reg(v + e, betas[b]) -
                         vmc_adaround_reg(v - e, betas[b])) / (2.0 * e);
      const double g = vmc_adaround_reg_grad(v, betas[b]);
      if (!(fabs(g - fd) <= 2e-3 * (1 + fabs(fd))))
        vmc_test_fail(__FILE__, __LINE__, "beta %g, V %g: gradient %g, finite difference %g",
                      (double)betas[b], (double)v, g, fd);
    }
  /* The schedule: off in the warm-up, beta_start after it, beta_end at the end. */
  vmc_adaround_opts o;
  vmc_adaround_opts_default(&o);
  CHECK(vmc_adaround_beta(&o, 0, 1000) == 0.0f && vmc_adaround_beta(&o, 199, 1000) == 0.0f);
  CHECK_NEAR(vmc_adaround_beta(&o, 200, 1000), 20.0, 1e-5);
  CHECK_NEAR(vmc_adaround_beta(&o, 600, 1000), 11.0, 1e-4);
  CHECK_NEAR(vmc_adaround_beta(&o, 999, 1000), 2.0, 0.03);
}

/* ---- a small model ------------------------------------------------------------------ */

/* 1x12x12 -> conv 3x3 (8, pad 1, bias) -> relu -> conv 3x3 (6, stride 2,
 * pad 1, bias): the logits are the second conv's output (6x6x6). */
static vmc_graph *small_model(uint64_t seed) {
  vmc_graph *g = NULL;
  if (vmc_graph_create(1, 12, 12, &g)) return NULL;
  vmc_rng r;
  vmc_rng_seed(&r, seed);
  int p[4], v = g->input, ok = 1;
  const int oc[2] = {8, 6}, ic[2] = {1, 8};
  for (int l = 0; l < 2 && ok; l++) {
    char wn[32], bn[32], nn[32];
    snprintf(wn, sizeof wn, "c%d.weight", l + 1);
    snprintf(bn, sizeof bn, "c%d.bias", l + 1);
    snprintf(nn, sizeof nn, "c%d", l + 1);
    ok = !vmc_graph_add_param(g, wn, vmc_shape4(oc[l], ic[l], 3, 3), 1, &p[2 * l]) &&
         !vmc_graph_add_param(g, bn, (vmc_shape){1, {oc[l]}}, 1, &p[2 * l + 1]);
    for (int k = 0; ok && k < 2; k++) {
      vmc_param *pp = &g->params[p[2 * l + k]];
      for (size_t i = 0; i < vmc_shape_count(&pp->shape); i++)
        pp->data[i] = (k ? 0.1f : 0.4f) * vmc_rng_normal(&r);
    }
    const vmc_attr a[4] = {vmc_attr_int("out_c", oc[l]), vmc_attr_int("kh", 3),
                           vmc_attr_int("ph", 1), vmc_attr_int("sh", l + 1)};
    ok = ok && !vmc_graph_add_node(g, "conv2d", nn, &v, 1, a, 4, &p[2 * l], 2, &v);
    if (ok && l == 0) ok = !vmc_graph_add_node(g, "relu", "r1", &v, 1, NULL, 0, NULL, 0, &v);
  }
  if (!ok) {
    vmc_graph_free(g);
    return NULL;
  }
  return g;
}

/* n images of h x w: smooth random blobs plus noise. */
static vmc_dataset *blobs(int n, int h, int w, uint64_t seed) {
  uint8_t *px = malloc((size_t)n * h * w), *lab = malloc((size_t)n);
  vmc_dataset *d = NULL;
  vmc_rng r;
  vmc_rng_seed(&r, seed);
  for (int i = 0; px && lab && i < n; i++) {
    const float cx = w * vmc_rng_uniform(&r), cy = h * vmc_rng_uniform(&r);
    const float rad = 2 + 0.3f * w * vmc_rng_uniform(&r);
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        const float d2 = ((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (rad * rad);
        const float v = 230.0f * expf(-d2) + 25.0f * vmc_rng_uniform(&r);
        px[((size_t)i * h + y) * w + x] = (uint8_t)v;
      }
    lab[i] = (uint8_t)(i % 10);
  }
  if (px && lab) vmc_dataset_from_memory("blobs", n, 1, h, w, 10, px, lab, NULL, NULL, &d);
  free(px);
  free(lab);
  return d;
}

/* Mean squared difference of the outputs of a and b on the first n images. */
static double output_mse(vmc_graph *a, vmc_graph *b, const vmc_dataset *d, int n) {
  vmc_plan *pa = NULL, *pb = NULL;
  double e = -1;
  if (!vmc_plan_create(a, n, VMC_MODE_INFER, &pa) && !vmc_plan_create(b, n, VMC_MODE_INFER, &pb)) {
    int *idx = malloc((size_t)n * sizeof *idx);
    for (int i = 0; idx && i < n; i++) idx[i] = i;
    if (idx) {
      vmc_dataset_batch(d, idx, n, NULL, NULL, vmc_plan_input(pa), NULL);
      vmc_dataset_batch(d, idx, n, NULL, NULL, vmc_plan_input(pb), NULL);
      if (!vmc_plan_forward(pa, n) && !vmc_plan_forward(pb, n)) {
        const size_t m = vmc_shape_count(vmc_plan_value_shape(pa, a->output));
        const float *ya = vmc_plan_output(pa), *yb = vmc_plan_output(pb);
        e = 0;
        for (size_t i = 0; i < m; i++) e += ((double)ya[i] - yb[i]) * ((double)ya[i] - yb[i]);
        e /= (double)m;
      }
    }
    free(idx);
  }
  vmc_plan_destroy(pa);
  vmc_plan_destroy(pb);
  return e;
}

/* Every weight of every layer of q (rounded by AdaRound from f's weights,
 * BatchNorm-free) is floor(w/s) or floor(w/s) + 1, clamped, with q's scales,
 * and q's storage says so. */
static void check_codes(const vmc_graph *f, const vmc_graph *q, const vmc_graph *q0) {
  int layers = 0;
  for (int i = 0; i < q->n_params; i++) {
    const vmc_param *p = &q->params[i], *p0 = &q0->params[i];
    if (p->store == VMC_F32) continue;
    layers++;
    const vmc_param *fw = &f->params[vmc_graph_find_param(f, p->name)];
    CHECK(p->store == p0->store && p->n_qscale == p0->n_qscale);
    for (int c = 0; c < p->n_qscale; c++) CHECK(p->qscale[c] == p0->qscale[c]);
    const int qmax = p->store == VMC_S4 ? 7 : 127;
    const size_t n = vmc_shape_count(&p->shape), blk = p->n_qscale > 1 ? n / (size_t)p->shape.d[0] : n;
    size_t bad = 0;
    for (size_t j = 0; j < n; j++) {
      const float s = p->qscale[j / blk];
      const int code = vmc_param_code(p, j);
      const float fl = floorf(fw->data[j] / s);
      const int lo = (int)fl < -qmax ? -qmax : (int)fl, hi = (int)fl + 1 > qmax ? qmax : (int)fl + 1;
      bad += code < -qmax || code > qmax || (float)code * s != p->data[j] || code < lo || code > hi;
    }
    if (bad) vmc_test_fail(__FILE__, __LINE__, "'%s': %zu bad codes", p->name, bad);
  }
  CHECK(layers > 0);
}

TEST(adaround_small_conv_beats_nearest_with_valid_codes) {
  vmc_graph *f = small_model(3);
  vmc_dataset *d = blobs(64, 12, 12, 5);
  REQUIRE(f && d);
  for (int per_channel = 1; per_channel >= 0; per_channel--) {
    vmc_ptq_opts po;
    vmc_ptq_opts_default(&po);
    po.weight_scheme = VMC_QSCHEME_S4;
    po.per_channel = per_channel;
    po.calib_images = 64;
    vmc_graph *q0 = NULL, *q = NULL;
    REQUIRE_OK(vmc_ptq_quantize(f, d, &po, &q0, NULL));
    REQUIRE_OK(vmc_graph_clone(q0, &q));
    vmc_adaround_opts o;
    vmc_adaround_opts_default(&o);
    o.iters = 300;
    o.batch = 256;
    o.calib_images = 64;
    o.pixels = 40;
    vmc_adaround_report r;
    REQUIRE_OK(vmc_adaround(f, q, d, &o, &r));
    CHECK_EQ_INT(r.n_layers, 2);
    CHECK_EQ_INT(r.calib_images, 64);
    for (int i = 0; i < r.n_layers; i++) {
      const vmc_adaround_layer *l = &r.layers[i];
      CHECK(!l->kept_nearest);
      CHECK(l->err_learned <= l->err_nearest);
      CHECK(l->err_float < l->err_nearest);
      CHECK(l->changed > 0 && l->changed < 0.5);
      CHECK(l->err_nearest > 0);
    }
    /* c1: 144 positions of which 40 per image; c2 (stride 2): 36, all. */
    CHECK(!strcmp(r.layers[0].node, "c1") && r.layers[0].columns == 64 * 40);
    CHECK(r.layers[0].rows == 8 && r.layers[0].k == 9 && r.layers[0].groups == 1);
    CHECK(!strcmp(r.layers[1].node, "c2") && r.layers[1].columns == 64 * 36 && r.layers[1].k == 72);
    /* c2, 72 inputs per output: a clear gain. */
    CHECK(r.layers[1].err_learned < 0.8 * r.layers[1].err_nearest);
    /* The model's output (c2's, before any activation) is closer to the float one. */
    const double e0 = output_mse(f, q0, d, 64), e1 = output_mse(f, q, d, 64);
    CHECK(e0 > 0 && e1 >= 0 && e1 < e0);
    check_codes(f, q, q0);
    const char *h = vmc_graph_meta(q, "history");
    CHECK(h && strstr(h, "adaround"));
    vmc_adaround_report_free(&r);
    vmc_graph_free(q0);
    vmc_graph_free(q);
  }
  vmc_graph_free(f);
  vmc_dataset_free(d);
}

/* g (a zoo model for 28x28 images) quantized with weight scheme w on n blob
 * images, then rounded by AdaRound (iters steps) into *q with its report:
 * every layer's error finite and no worse than nearest (or nearest kept),
 * every code floor or ceil of the folded float weight (check_codes).
 * Returns 0 (and *q NULL) where a step fails. */
static int round_zoo_model(vmc_graph *g, vmc_qscheme w, int n, uint64_t seed, int iters,
                           vmc_graph **q, vmc_adaround_report *rep) {
  *q = NULL;
  memset(rep, 0, sizeof *rep);
  vmc_dataset *d = blobs(n, 28, 28, seed);
  vmc_ptq_opts po;
  vmc_ptq_opts_default(&po);
  po.weight_scheme = w;
  po.calib_images = n;
  vmc_adaround_opts o;
  vmc_adaround_opts_default(&o);
  o.iters = iters;
  o.batch = 128;
  o.pixels = 8;
  vmc_graph *q0 = NULL, *f = NULL;
  int ok = d && !vmc_ptq_quantize(g, d, &po, &q0, NULL) && !vmc_graph_clone(q0, q) &&
           !vmc_adaround(g, *q, d, &o, rep) && !vmc_graph_fold_bn_copy(g, &f, NULL);
  if (!ok) vmc_test_fail(__FILE__, __LINE__, "quantize and round: %s", vmc_last_error());
  for (int i = 0; ok && i < rep->n_layers; i++) {
    const vmc_adaround_layer *l = &rep->layers[i];
    CHECK(l->columns > 0 && isfinite(l->err_nearest) && isfinite(l->err_learned));
    CHECK(l->kept_nearest || l->err_learned <= l->err_nearest);
  }
  if (ok) check_codes(f, *q, q0);
  if (!ok) {
    vmc_graph_free(*q);
    *q = NULL;
    vmc_adaround_report_free(rep);
  }
  vmc_graph_free(f);
  vmc_graph_free(q0);
  vmc_dataset_free(d);
  return ok;
}

/* resnet8 from the zoo with BatchNorm statistics to fold: every conv and
 * the linear layer are matched by name and rounded; 8-bit weights. */
TEST(adaround_resnet8_end_to_end) {
  vmc_graph *g = NULL;
  REQUIRE_OK(vmc_zoo_build("resnet8", 1, 28, 28, 10, 7, &g));
  vmc_rng r;
  vmc_rng_seed(&r, 11);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (strcmp(n->op->name, "batchnorm")) continue;
    for (int k = 0; k < 4; k++) {
      vmc_param *p = &g->params[n->param[k]];
      for (size_t j = 0; j < vmc_shape_count(&p->shape); j++)
        p->data[j] = (k == 0 || k == 3 ? 0.5f : -0.5f) + vmc_rng_uniform(&r);
    }
  }
  vmc_graph *q = NULL;
  vmc_adaround_report rep;
  REQUIRE(round_zoo_model(g, VMC_QSCHEME_S8, 16, 9, 40, &q, &rep));
  int convs = 0, linears = 0;
  for (int i = 0; i < q->n_nodes; i++) {
    convs += !strcmp(q->nodes[i].op->name, "conv2d");
    linears += !strcmp(q->nodes[i].op->name, "linear");
  }
  CHECK_EQ_INT(rep.n_layers, convs + linears);
  CHECK(linears == 1 && !strcmp(rep.layers[rep.n_layers - 1].op, "linear"));
  CHECK_EQ_INT(rep.layers[rep.n_layers - 1].columns, 16);
  vmc_adaround_report_free(&rep);
  vmc_graph_free(g);
  vmc_graph_free(q);
}

TEST(adaround_rejects_bad_requests) {
  vmc_graph *f = small_model(3);
  vmc_dataset *d = blobs(8, 12, 12, 5), *d28 = blobs(2, 28, 28, 5);
  REQUIRE(f && d && d28);
  vmc_ptq_opts po;
  vmc_ptq_opts_default(&po);
  po.weight_scheme = VMC_QSCHEME_S4;
  vmc_graph *q = NULL;
  REQUIRE_OK(vmc_ptq_quantize(f, d, &po, &q, NULL));
  static const struct {
    int field; /* 0 iters, 1 batch, 2 calib images, 3 pixels, 4 lr, 5 lambda, 6 warm-up, 7 beta */
    float value;
    const char *msg;
  } bad[] = {{0, 0, "iterations"}, {0, -5, "iterations"}, {1, 0, "batch"},
             {2, 0, "calibration images"}, {3, 0, "pixels"}, {4, 0, "learning rate"},
             {4, NAN, "learning rate"}, {5, -1, "lambda"}, {6, 1, "warm-up"}, {7, 0.5f, "beta"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    vmc_adaround_opts o;
    vmc_adaround_opts_default(&o);
    switch (bad[i].field) {
    case 0: o.iters = (int)bad[i].value; break;
    case 1: o.batch = (int)bad[i].value; break;
    case 2: o.calib_images = (int)bad[i].value; break;
    case 3: o.pixels = (int)bad[i].value; break;
    case 4: o.lr = bad[i].value; break;
    case 5: o.lambda = bad[i].value; break;
    case 6: o.warmup = bad[i].value; break;
    default: o.beta_end = bad[i].value; break;
    }
    vmc_adaround_report r;
    CHECK(vmc_adaround(f, q, d, &o, &r) == VMC_ERR_INVALID_ARG);
    if (!strstr(vmc_last_error(), bad[i].msg))
      vmc_test_fail(__FILE__, __LINE__, "case %zu: '%s' does not mention '%s'", i, vmc_last_error(),
                    bad[i].msg);
    CHECK(r.n_layers == 0 && r.layers == NULL);
  }
  vmc_adaround_opts o;
  vmc_adaround_opts_default(&o);
  o.iters = 5;
  /* A float model is not quantized. */
  vmc_graph *f2 = NULL;
  REQUIRE_OK(vmc_graph_clone(f, &f2));
  CHECK(vmc_adaround(f, f2, d, &o, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "no quantized") != NULL);
  /* Images of another shape. */
  CHECK(vmc_adaround(f, q, d28, &o, NULL) == VMC_ERR_SHAPE);
  CHECK(strstr(vmc_last_error(), "28x28") != NULL);
  /* A float model whose layer is named differently. */
  snprintf(f2->nodes[2].name, sizeof f2->nodes[2].name, "other");
  CHECK(vmc_adaround(f2, q, d, &o, NULL) == VMC_ERR_NOT_FOUND);
  CHECK(strstr(vmc_last_error(), "'c2'") != NULL);
  vmc_graph_free(f2);
  /* A float model of another width. */
  vmc_graph *f3 = NULL;
  REQUIRE_OK(vmc_graph_create(1, 12, 12, &f3));
  int pw, v = f3->input;
  REQUIRE_OK(vmc_graph_add_param(f3, "c1.weight", vmc_shape4(4, 1, 3, 3), 1, &pw));
  const vmc_attr a[2] = {vmc_attr_int("out_c", 4), vmc_attr_int("kh", 3)};
  REQUIRE_OK(vmc_graph_add_node(f3, "conv2d", "c1", &v, 1, a, 2, &pw, 1, &v));
  CHECK(vmc_adaround(f3, q, d, &o, NULL) == VMC_ERR_SHAPE);
  CHECK(strstr(vmc_last_error(), "c1") != NULL);
  vmc_graph_free(f3);
  vmc_graph_free(q);
  vmc_graph_free(f);
  vmc_dataset_free(d);
  vmc_dataset_free(d28);
}

/* ---- vmc quantize --adaround ------------------------------------------------------ */

static char g_out[1 << 16];

TEST(adaround_cli) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize --help"), 0);
  CHECK(strstr(g_out, "--adaround") && strstr(g_out, "--adaround-iters"));
  vmc_dataset *probe = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TRAIN, &probe) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  vmc_dataset_free(probe);
  const char *dir = vmc_test_tmpdir();
  char in[512], out[512];
  snprintf(in, sizeof in, "%s/ar_r8.vmc", dir);
  snprintf(out, sizeof out, "%s/ar_r8q.vmc", dir);
  vmc_graph *g = NULL;
  REQUIRE_OK(vmc_zoo_build("resnet8", 1, 28, 28, 10, 3, &g));
  REQUIRE_OK(vmc_graph_set_meta(g, "dataset", "fashion-mnist"));
  REQUIRE_OK(vmc_model_save(g, in));
  vmc_graph_free(g);
  /* Usage errors write nothing. */
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s -o %s --adaround-iters 5", in, out), 2);
  CHECK(strstr(g_out, "--adaround-iters is for --adaround") != NULL);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s -o %s --adaround --adaround-iters 0", in, out), 2);
  CHECK(strstr(g_out, "--adaround-iters") != NULL);
  CHECK(access(out, F_OK) != 0);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s -o %s --scheme w4a8 --calib-images 8 "
                   "--adaround --adaround-iters 5 --json", in, out), 0);
  CHECK(strstr(g_out, "\"adaround\"") && strstr(g_out, "\"err_nearest\"") &&
        strstr(g_out, "\"err_learned\"") && strstr(g_out, "\"layer3.0.conv2\""));
  vmc_graph *q = NULL;
  REQUIRE_OK(vmc_model_load(out, &q));
  const char *h = vmc_graph_meta(q, "history");
  CHECK(h && strstr(h, "adaround: learned rounding of 10 layers"));
  int s4 = 0;
  for (int i = 0; i < q->n_params; i++) s4 += q->params[i].store == VMC_S4;
  CHECK_EQ_INT(s4, 10);
  vmc_graph_free(q);
}

/* mobilenetv2-tiny: the depthwise convolutions (one group per channel, 9
 * inputs per output) are rounded like the others -- each layer's error no
 * worse than nearest (or nearest kept), every code floor or ceil -- and the
 * integer runtime runs the result. */
TEST(adaround_depthwise_layers) {
  vmc_graph *g = NULL;
  REQUIRE_OK(vmc_zoo_build("mobilenetv2-tiny", 1, 28, 28, 10, 5, &g));
  vmc_graph *q = NULL;
  vmc_adaround_report rep;
  REQUIRE(round_zoo_model(g, VMC_QSCHEME_S4, 8, 4, 30, &q, &rep));
  int depthwise = 0;
  for (int i = 0; i < rep.n_layers; i++) {
    const vmc_adaround_layer *l = &rep.layers[i];
    if (l->groups > 1) {
      depthwise++;
      CHECK(l->groups == l->rows && l->k == 9);
    }
  }
  CHECK_EQ_INT(depthwise, 7); /* one per inverted-residual block */
  vmc_qrt *rt = NULL;
  CHECK_OK(vmc_qrt_create(q, 2, NULL, &rt));
  vmc_qrt_destroy(rt);
  vmc_adaround_report_free(&rep);
  vmc_graph_free(g);
  vmc_graph_free(q);
}
