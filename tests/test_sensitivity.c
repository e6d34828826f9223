/* Per-layer sensitivity and mixed precision (src/quant/sensitivity.h): one
 * finite row per layer of resnet8; each row is what vmc_ptq_quantize's
 * single-layer rules give (logits bit for bit); a layer made fragile ranks
 * first and keeps 8 bits; the greedy choice meets its budget, moves the
 * cheapest layer first and keeps fp32 layers; the accuracy budget keeps the
 * fragile layer in fp32; bad budgets are rejected; `vmc quantize
 * --sensitivity / --bits-budget` end to end. */
#include "cli_run.h"
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/data.h"
#include "graph/plan.h"
#include "graph/rebuild.h"
#include "quant/sensitivity.h"

#define CALIB 32
#define HELD 120

/* A zoo model with non-trivial BatchNorm statistics (if it has any);
 * fragile (if not NULL): a conv followed by a relu made fragile under
 * per-tensor weight scales (below). */
static vmc_graph *model(const char *name, const char *fragile) {
  vmc_graph *g = NULL;
  if (vmc_zoo_build(name, 1, 28, 28, 10, 5, &g)) return NULL;
  vmc_rng r;
  vmc_rng_seed(&r, 3);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (!strcmp(n->op->name, "batchnorm"))
      for (int k = 0; k < 4; k++) {
        vmc_param *p = &g->params[n->param[k]];
        for (size_t j = 0; j < vmc_shape_count(&p->shape); j++) {
          const float u = vmc_rng_uniform(&r);
          p->data[j] = k == 0 || k == 3 ? 0.5f + u : u - 0.5f;
        }
      }
    if (fragile && !strcmp(n->name, fragile)) {
      /* Output channel 0 dead (its weights -1000 |w|, bias -1, read by a
       * relu) and 1000x larger than the others: one scale per tensor
       * rounds every other channel away. */
      vmc_param *w = &g->params[n->param[0]];
      const size_t k = vmc_shape_count(&w->shape) / (size_t)w->shape.d[0];
      for (size_t j = 0; j < k; j++) w->data[j] = -1000 * fabsf(w->data[j]);
      g->params[n->param[1]].data[0] = -1;
    }
  }
  return g;
}

/* n blob images labelled with g's own predictions, after g's classifier
 * bias is shifted so that every class is predicted (the float model is
 * right on nearly all of them and a drop means something). */
static vmc_dataset *images(vmc_graph *g, int n) {
  uint8_t *px = malloc((size_t)n * 784), *lab = calloc((size_t)n, 1);
  vmc_dataset *d = NULL, *out = NULL;
  vmc_rng r;
  vmc_rng_seed(&r, 9);
  for (int i = 0; px && lab && i < n; i++) {
    const float cx = 6 + 16 * vmc_rng_uniform(&r), cy = 6 + 16 * vmc_rng_uniform(&r);
    const float rad = 3 + 6 * vmc_rng_uniform(&r);
    for (int y = 0; y < 28; y++)
      for (int x = 0; x < 28; x++) {
        const float d2 = ((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (rad * rad);
        const float v = 230.0f * expf(-d2) + 25.0f * vmc_rng_uniform(&r);
        px[(size_t)i * 784 + y * 28 + x] = (uint8_t)v;
      }
  }
  const vmc_node *last = &g->nodes[g->n_nodes - 1];
  float *z = NULL;
  vmc_eval_result er;
  if (px && lab && last->out == g->output && !strcmp(last->op->name, "linear") &&
      !vmc_dataset_from_memory("blobs", n, 1, 28, 28, 10, px, lab, NULL, NULL, &d) &&
      !vmc_evaluate_logits(g, d, 64, 0, 0, &er, &z)) {
    float *bias = g->params[last->param[1]].data;
    for (int c = 0; c < 10; c++) {
      double m = 0;
      for (int i = 0; i < n; i++) m += z[i * 10 + c];
      bias[c] -= (float)(m / n);
    }
    free(z);
    z = NULL;
    if (!vmc_evaluate_logits(g, d, 64, 0, 0, &er, &z)) {
      for (int i = 0; i < n; i++) {
        int best = 0;
        for (int c = 1; c < 10; c++) best = z[i * 10 + c] > z[i * 10 + best] ? c : best;
        lab[i] = (uint8_t)best;
      }
      vmc_dataset_from_memory("blobs", n, 1, 28, 28, 10, px, lab, d->mean, d->std, &out);
    }
  }
  free(z);
  free(px);
  free(lab);
  vmc_dataset_free(d);
  return out;
}

static void opts(vmc_sens_opts *o) {
  vmc_sens_opts_default(o);
  o->ptq.calib_images = CALIB;
  o->ptq.batch = 16;
  o->eval_images = HELD;
  o->batch = 32;
}

static int layer_index(const vmc_sens_report *r, const char *node) {
  for (int i = 0; i < r->n_layers; i++)
    if (!strcmp(r->layers[i].node, node)) return i;
  return -1;
}

TEST(sens_one_finite_row_per_layer_as_single_layer_ptq) {
  vmc_graph *g = model("resnet8", NULL);
  REQUIRE(g);
  vmc_dataset *d = images(g, CALIB + HELD + 20);
  REQUIRE(d);
  vmc_sens_opts o;
  opts(&o);
  vmc_sens_report r;
  vmc_status s = vmc_sensitivity(g, d, &o, &r);
  CHECK_OK(s);
  int layers = 0;
  for (int i = 0; i < g->n_nodes; i++)
    layers += !strcmp(g->nodes[i].op->name, "conv2d") || !strcmp(g->nodes[i].op->name, "linear");
  CHECK_EQ_INT(r.n_layers, layers);
  CHECK_EQ_INT(r.calib_images, CALIB);
  CHECK_EQ_INT(r.eval_first, CALIB);
  CHECK_EQ_INT(r.eval_images, HELD);
  CHECK(r.fp32_accuracy >= 0.98);
  for (int i = 0; !s && i < r.n_layers; i++) {
    const vmc_sens_layer *l = &r.layers[i];
    CHECK(l->weights > 0 && isfinite(l->act_sqnr_db));
    for (int b = 0; b < 2; b++)
      CHECK(isfinite(l->drop[b]) && isfinite(l->logit_sqnr_db[b]) && isfinite(l->w_sqnr_db[b]) &&
            l->accuracy[b] >= 0 && l->accuracy[b] <= 1);
    /* 4 bits lose more than 8: the weights' SQNR by about 24 dB. */
    CHECK(l->w_sqnr_db[0] > l->w_sqnr_db[1] + 15);
    CHECK(l->logit_sqnr_db[0] > l->logit_sqnr_db[1]);
  }
  /* Rows are vmc_ptq_quantize with the single-layer rules: the same logits
   * (checked on the stem, a block conv whose input the shortcut also reads,
   * and the classifier). */
  vmc_graph *f = NULL;
  vmc_dataset *ho = NULL;
  float *zf = NULL;
  vmc_eval_result er;
  REQUIRE_OK(vmc_graph_fold_bn_copy(g, &f, NULL));
  REQUIRE_OK(vmc_dataset_from_memory("held", HELD, 1, 28, 28, 10, d->images + (size_t)CALIB * 784,
                                     d->labels + CALIB, d->mean, d->std, &ho));
  REQUIRE_OK(vmc_evaluate_logits(f, ho, 32, 0, 0, &er, &zf));
  CHECK_NEAR(er.accuracy, r.fp32_accuracy, 0);
  const int picks[3] = {0, layer_index(&r, "layer2.0.conv1"), r.n_layers - 1};
  REQUIRE(picks[1] > 0);
  vmc_ptq_rule *rules = calloc((size_t)r.n_layers, sizeof *rules);
  REQUIRE(rules);
  for (int t = 0; t < 3 && !s; t++)
    for (int b = 0; b < 2; b++) {
      for (int i = 0; i < r.n_layers; i++)
        rules[i] = (vmc_ptq_rule){r.layers[i].node, i == picks[t] ? 8 >> b : 0, i == picks[t]};
      vmc_ptq_opts po = o.ptq;
      po.integer_sites = 0;
      po.rules = rules;
      po.n_rules = r.n_layers;
      vmc_graph *q = NULL;
      float *zq = NULL;
      CHECK_OK(vmc_ptq_quantize(g, d, &po, &q, NULL));
      if (q) CHECK_OK(vmc_evaluate_logits(q, ho, 32, 0, 0, &er, &zq));
      if (zq) {
        const vmc_sens_layer *l = &r.layers[picks[t]];
        CHECK(vmc_qsqnr_db(zf, zq, HELD * 10) == l->logit_sqnr_db[b]);
        CHECK(er.accuracy == l->accuracy[b]);
      }
      free(zq);
      vmc_graph_free(q);
    }
  free(rules);
  free(zf);
  vmc_graph_free(f);
  vmc_dataset_free(ho);
  vmc_sens_report_free(&r);
  vmc_dataset_free(d);
  vmc_graph_free(g);
}

TEST(sens_fragile_layer_ranks_first_and_keeps_8_bits) {
  const char *fragile = "conv2";
  vmc_graph *g = model("lenet5", fragile);
  REQUIRE(g);
  vmc_dataset *d = images(g, CALIB + HELD);
  REQUIRE(d);
  vmc_sens_opts o;
  opts(&o);
  o.ptq.per_channel = 0;
  vmc_sens_report r;
  REQUIRE_OK(vmc_sensitivity(g, d, &o, &r));
  const int fi = layer_index(&r, fragile);
  REQUIRE(fi >= 0);
  for (int i = 0; i < r.n_layers; i++) {
    if (i == fi) continue;
    for (int b = 0; b < 2; b++)
      if (!(r.layers[i].logit_sqnr_db[b] > r.layers[fi].logit_sqnr_db[b]))
        vmc_test_fail(__FILE__, __LINE__, "%d bits: %s has %.2f dB, the fragile layer %.2f dB",
                      8 >> b, r.layers[i].node, r.layers[i].logit_sqnr_db[b],
                      r.layers[fi].logit_sqnr_db[b]);
  }
  CHECK(r.layers[fi].drop[1] > 5);
  int *bits = malloc((size_t)r.n_layers * sizeof *bits);
  REQUIRE(bits);
  for (int rank = 0; rank < VMC_SENS_RANK_COUNT; rank++) {
    for (int i = 0; i < r.n_layers; i++) bits[i] = 1;
    double mean;
    CHECK_OK(vmc_mixed_choose(&r, 6, (vmc_sens_rank)rank, bits, &mean));
    CHECK(bits[fi] == 8 && mean <= 6);
  }
  /* An accuracy budget: the fragile layer is kept in fp32 (the most damaged
   * at 8 bits), the rest quantized. */
  vmc_mixed_opts mo = {.bits_budget = 32, .max_drop = 3, .rank = VMC_SENS_RANK_NOISE};
  vmc_mixed_result res;
  vmc_graph *q = NULL;
  vmc_ptq_report pr;
  vmc_status s = vmc_mixed_precision(g, d, &o, &r, &mo, &q, &pr, &res);
  CHECK_OK(s);
  if (!s) {
    CHECK(res.bits[fi] == 0 && res.fp32_layers >= 1 && res.drop <= 3 && res.tries >= 2);
    CHECK(r.layers[fi].drop[0] > 3); /* why it had to be */
    CHECK_EQ_INT(pr.n_layers, r.n_layers);
    for (int i = 0; i < r.n_layers; i++) CHECK_EQ_INT(pr.layers[i].weight_bits, res.bits[i]);
    /* Deployable: every value the integer runtime reads is quantized. */
    int fq = 0;
    for (int i = 0; i < q->n_nodes; i++) fq += !strcmp(q->nodes[i].op->name, "fakequant");
    CHECK(fq > r.n_layers - 2);
  }
  vmc_graph_free(q);
  vmc_ptq_report_free(&pr);
  vmc_mixed_result_free(&res);
  /* Both budgets cannot hold: 4 bits leaves no room for an fp32 layer. */
  mo.bits_budget = 4;
  mo.max_drop = 0.5;
  s = vmc_mixed_precision(g, d, &o, &r, &mo, &q, NULL, &res);
  CHECK(s == VMC_ERR_INVALID_ARG && q == NULL);
  CHECK(strstr(vmc_last_error(), "no choice meets both budgets") != NULL);
  vmc_mixed_result_free(&res);
  free(bits);
  vmc_sens_report_free(&r);
  vmc_dataset_free(d);
  vmc_graph_free(g);
}

/* A hand-made table: layer weights and 8/4-bit logit SQNR / drop. */
static void fake_layer(vmc_sens_layer *l, const char *name, long long w, double sq8, double sq4,
                       double d8, double d4) {
  memset(l, 0, sizeof *l);
  snprintf(l->node, sizeof l->node, "%s", name);
  l->weights = w;
  l->logit_sqnr_db[0] = sq8;
  l->logit_sqnr_db[1] = sq4;
  l->drop[0] = d8;
  l->drop[1] = d4;
}

TEST(sens_greedy_choice_meets_budgets_cheapest_first) {
  vmc_sens_layer L[4];
  /* Noise cost per bit saved (10^(-sq4/10) / (4 w)): b
   * 2.5e-8, a 2.5e-7, d 2.5e-6 (a tiny layer as noisy as b), c 2.5e-5. */
  fake_layer(&L[0], "a", 1000, 60, 30, 0, 0.2);
  fake_layer(&L[1], "b", 1000, 70, 40, 0, 0.4);
  fake_layer(&L[2], "c", 100, 50, 20, 0.1, 3.0);
  fake_layer(&L[3], "d", 10, INFINITY, 40, 0, 0.05);
  vmc_sens_report r = {.n_layers = 4, .layers = L};
  int bits[4];
  double mean;
  /* 2110 weights: all-8 is 8.0; moving b gives 6.104, then a 4.209, d
   * 4.190, c 4.0. */
  static const struct {
    double budget;
    int want[4];
  } noise_cases[] = {
      {8, {8, 8, 8, 8}},    {7.99, {8, 4, 8, 8}}, {6.2, {8, 4, 8, 8}}, {6.11, {8, 4, 8, 8}},
      {6.1, {4, 4, 8, 8}},  {6.0, {4, 4, 8, 8}}, {4.3, {4, 4, 8, 8}}, {4.2, {4, 4, 8, 4}}, {4.0, {4, 4, 4, 4}},
      {100, {8, 8, 8, 8}},
  };
  for (size_t t = 0; t < sizeof noise_cases / sizeof noise_cases[0]; t++) {
    for (int i = 0; i < 4; i++) bits[i] = 1;
    CHECK_OK(vmc_mixed_choose(&r, noise_cases[t].budget, VMC_SENS_RANK_NOISE, bits, &mean));
    CHECK(mean <= noise_cases[t].budget);
    CHECK_NEAR(mean, vmc_mixed_mean_bits(&r, bits), 1e-12);
    for (int i = 0; i < 4; i++)
      if (bits[i] != noise_cases[t].want[i])
        vmc_test_fail(__FILE__, __LINE__, "budget %g: layer %s at %d bits, want %d",
                      noise_cases[t].budget, L[i].node, bits[i], noise_cases[t].want[i]);
  }
  /* By drop per bit saved: a 5e-5, b 1e-4, d 1.25e-3, c 7.5e-3. */
  for (int i = 0; i < 4; i++) bits[i] = 1;
  CHECK_OK(vmc_mixed_choose(&r, 6.2, VMC_SENS_RANK_DROP, bits, &mean));
  CHECK(bits[0] == 4 && bits[1] == 8 && bits[2] == 8 && bits[3] == 8 && mean <= 6.2);
  /* An fp32 layer counts 32 bits and stays fp32. */
  int fixed[4] = {1, 1, 0, 1};
  CHECK_OK(vmc_mixed_choose(&r, 6.0, VMC_SENS_RANK_NOISE, fixed, &mean));
  CHECK(fixed[2] == 0 && fixed[0] == 4 && fixed[1] == 4 && mean <= 6.0);
  CHECK_NEAR(mean, (4.0 * 2000 + 32 * 100 + 8 * 10) / 2110, 1e-12);
  /* Bad budgets: below 4, not a number, unreachable with an fp32 layer;
   * bits are left as they were. */
  const double bad[] = {3.99, 0, -1, NAN, INFINITY};
  for (size_t t = 0; t < sizeof bad / sizeof bad[0]; t++) {
    int b2[4] = {1, 1, 1, 1};
    CHECK(vmc_mixed_choose(&r, bad[t], VMC_SENS_RANK_NOISE, b2, NULL) == VMC_ERR_INVALID_ARG);
    CHECK(strstr(vmc_last_error(), "bits budget") != NULL);
    CHECK(b2[0] == 1 && b2[3] == 1);
  }
  int b3[4] = {1, 1, 0, 1};
  CHECK(vmc_mixed_choose(&r, 4.5, VMC_SENS_RANK_NOISE, b3, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "fp32") != NULL && b3[2] == 0 && b3[0] == 1);
  CHECK(vmc_mixed_choose(&r, 6, (vmc_sens_rank)7, b3, NULL) == VMC_ERR_INVALID_ARG);
  vmc_sens_rank k;
  CHECK(vmc_sens_rank_from_name("drop", &k) == VMC_OK && k == VMC_SENS_RANK_DROP);
  CHECK(vmc_sens_rank_from_name("hessian", &k) == VMC_ERR_INVALID_ARG);
}

TEST(sens_rejects_bad_requests) {
  vmc_graph *g = model("lenet5", NULL);
  REQUIRE(g);
  vmc_dataset *d = images(g, CALIB);
  REQUIRE(d);
  vmc_sens_opts o;
  opts(&o);
  vmc_sens_report r;
  /* Nothing left after the calibration images. */
  CHECK(vmc_sensitivity(g, d, &o, &r) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "none is left") != NULL);
  vmc_sens_report_free(&r);
  o.eval_images = 0;
  CHECK(vmc_sensitivity(g, d, &o, &r) == VMC_ERR_INVALID_ARG);
  vmc_sens_report_free(&r);
  /* PTQ's own checks come through (a bad calibration count). */
  opts(&o);
  o.ptq.calib_images = 0;
  CHECK(vmc_sensitivity(g, d, &o, &r) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "calibration") != NULL);
  vmc_sens_report_free(&r);
  vmc_dataset_free(d);
  vmc_graph_free(g);
}

/* ---- vmc quantize --sensitivity / --bits-budget ------------------------------------ */

static int lines_of(const char *path) {
  FILE *f = fopen(path, "r");
  int n = 0, c;
  if (!f) return -1;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

static char g_out[1 << 16];

TEST(sens_cli) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize --help"), 0);
  CHECK(strstr(g_out, "--sensitivity") && strstr(g_out, "--bits-budget") && strstr(g_out, "--max-drop"));
  vmc_dataset *probe = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &probe) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  vmc_dataset_free(probe);
  const char *dir = vmc_test_tmpdir();
  char in[512], out[512], csv[512], json[512];
  snprintf(in, sizeof in, "%s/sens_l5.vmc", dir);
  snprintf(out, sizeof out, "%s/sens_l5m.vmc", dir);
  snprintf(csv, sizeof csv, "%s/sens_l5.csv", dir);
  snprintf(json, sizeof json, "%s/sens_l5.json", dir);
  vmc_graph *g = model("lenet5", NULL);
  REQUIRE(g);
  REQUIRE_OK(vmc_graph_set_meta(g, "dataset", "fashion-mnist"));
  REQUIRE_OK(vmc_model_save(g, in));
  vmc_graph_free(g);
  static const struct {
    const char *args;
    const char *msg;
  } bad[] = {
      {"quantize %s --bits-budget 3.5 -o %s", "below 4"},
      {"quantize %s --bits-budget nan -o %s", "--bits-budget"},
      {"quantize %s --max-drop 1 -o %s", "--max-drop"},
      {"quantize %s --rank hessian --bits-budget 6 -o %s", "hessian"},
      {"quantize %s --bits-budget 6 --scheme w4a8 -o %s", "--scheme"},
      {"quantize %s --bits-budget 6 --qat -o %s", "--qat"},
      {"quantize %s --sensitivity -o %s", "needs --bits-budget"},
      {"quantize %s --bits-budget 6 --held-out 0 -o %s", "--held-out"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char args[1024];
    snprintf(args, sizeof args, bad[i].args, in, out);
    const int rc = run(g_out, sizeof g_out, "%s", args);
    if (rc != 2 || !strstr(g_out, bad[i].msg))
      vmc_test_fail(__FILE__, __LINE__, "'%s' exited %d (want 2): %s", args, rc, g_out);
    CHECK(access(out, F_OK) != 0);
  }
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s --bits-budget 6", in), 2);
  CHECK(strstr(g_out, "-o") != NULL);
  /* Nothing left to evaluate on: an error, no table, no model. */
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s --sensitivity=%s --calib-images 60000 "
                   "--bits-budget 6 -o %s", in, csv, out), 1);
  CHECK(strstr(g_out, "none is left") && access(csv, F_OK) != 0 && access(out, F_OK) != 0);
  /* The table: one CSV row per layer. */
  int rc = run(g_out, sizeof g_out, "quantize %s --sensitivity=%s --calib-images 32 --held-out 100 "
               "--threads 2", in, csv);
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "logit4") && strstr(g_out, "fc3") && strstr(g_out, "held-out"));
  CHECK_EQ_INT(lines_of(csv), 1 + 5);
  rc = run(g_out, sizeof g_out, "quantize %s --sensitivity=%s --calib-images 32 --held-out 100 "
           "--quiet", in, json);
  CHECK_EQ_INT(rc, 0);
  FILE *f = fopen(json, "r");
  REQUIRE(f);
  const size_t k = fread(g_out, 1, sizeof g_out - 1, f);
  g_out[k] = 0;
  fclose(f);
  CHECK(strstr(g_out, "\"node\": \"conv2\"") && strstr(g_out, "\"drop4_points\""));
  /* Mixed precision to a budget, the model written. */
  rc = run(g_out, sizeof g_out, "quantize %s --calib-images 32 --held-out 100 --bits-budget 5 "
           "-o %s --json", in, out);
  CHECK_EQ_INT(rc, 0);
  const char *mb = strstr(g_out, "\"mean_bits\":");
  REQUIRE(mb);
  const double mean = atof(mb + strlen("\"mean_bits\":"));
  CHECK(mean <= 5 && mean >= 4);
  CHECK(access(out, F_OK) == 0);
  /* The chosen model's per-layer PTQ report: bits, ranges, SQNRs. */
  CHECK(strstr(g_out, "\"quantized_layers\":") && strstr(g_out, "\"weight_bits\":\t4") &&
        strstr(g_out, "\"act_sqnr_db\""));
  rc = run(g_out, sizeof g_out, "info %s", out);
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "mixed precision") != NULL);
}
