/* Post-training quantization: the fakequant op (forward bit for bit the
 * quant.h rule, PyTorch's fake_quantize_per_tensor_affine on hand-computed
 * cases, the straight-through mask), the graph rebuild that drops folded
 * batchnorms, the observable plan, the PTQ pass on zoo models, and
 * `vmc quantize` end to end. */
#include "op_harness.h"
#include "cli_run.h"
#include "test.h"
#include "zoo_fixture.h"

#include <float.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/data.h"
#include "graph/fold.h"
#include "graph/plan.h"
#include "graph/rebuild.h"
#include "quant/ptq.h"

#define AI(k, v) {.key = k, .i = (v), .f = (float)(v)}
#define AF(k, v) {.key = k, .i = 0, .f = (v)}

/* A fakequant harness on n values with the given parameters. */
static vmc_status fq_harness(const vmc_qparams *p, int batch, int per, int nthreads, vmc_oph **h) {
  vmc_oph_spec s = {.op = "fakequant", .mode = VMC_MODE_TRAIN, .n_in = 1,
                    .in = {{.ndim = 2, .d = {batch, per}}}, .n_attr = 4,
                    .attr = {AF("scale", p->scale), AI("zero_point", p->zero_point),
                             AI("qmin", p->qmin), AI("qmax", p->qmax)},
                    .nthreads = nthreads};
  return vmc_oph_create(&s, h);
}

static int same_bits(float a, float b) { return !memcmp(&a, &b, sizeof a); }

/* Parameters covering the fast path (8- and 4-bit, asymmetric and
 * symmetric, the edge of the fast range) and the wide-range path. */
static const vmc_qparams k_params[] = {
    {0.05f, 0, 0, 255},        {0.0173f, 137, 0, 255},   {0.031f, 0, -127, 127},
    {0.2f, 0, -7, 7},          {1e-3f, 7, 0, 15},        {0.5f, 3, 0, 10},
    {0.0625f, -128, -128, 127}, {1e-5f, 0, -2097152, 2097152}, /* the fast path's limit */
    {3e-7f, 5, -(1 << 30), 1 << 30},                            /* wider: the double path */
    {2.5e-3f, 0, INT32_MIN, INT32_MAX},                         /* s32 bias codes */
};
#define N_PARAMS ((int)(sizeof k_params / sizeof k_params[0]))

/* Values around and beyond the grid of p: random, exact grid points, ties,
 * the edges and special values. */
static void fill_values(vmc_rng *r, const vmc_qparams *p, float *x, size_t n) {
  const double lo = (double)p->qmin - p->zero_point, hi = (double)p->qmax - p->zero_point;
  static const float special[] = {0.0f, -0.0f, FLT_MAX, -FLT_MAX, FLT_TRUE_MIN, -FLT_TRUE_MIN,
                                  FLT_MIN, 1e-30f, -1e-30f};
  for (size_t i = 0; i < n; i++) {
    const int kind = (int)(i % 8);
    double k;
    if (hi - lo > 4096) k = lo + (hi - lo) * vmc_rng_uniform(r) * 1.02 - (hi - lo) * 0.01;
    else k = floor(lo - 3 + (hi - lo + 7) * vmc_rng_uniform(r));
    if (kind == 0) x[i] = (float)(k * p->scale);                 /* on the grid */
    else if (kind == 1) x[i] = (float)((k + 0.5) * p->scale);    /* ties */
    else if (kind == 2) x[i] = (float)(lo * p->scale) + (vmc_rng_uniform(r) - 0.5f) * 2 * p->scale;
    else if (kind == 3) x[i] = (float)(hi * p->scale) + (vmc_rng_uniform(r) - 0.5f) * 2 * p->scale;
    else if (kind == 4) x[i] = special[vmc_rng_below(r, sizeof special / sizeof special[0])];
    else x[i] = (float)((k + vmc_rng_uniform(r)) * p->scale);
  }
  x[0] = NAN;
  x[1] = INFINITY;
  x[2] = -INFINITY;
}

TEST(ptq_fakequant_forward_matches_qfake_quantize_bit_for_bit) {
  vmc_rng r;
  vmc_rng_seed(&r, 42);
  for (int t = 0; t < N_PARAMS; t++)
    for (int nt = 1; nt <= 2; nt++) {
      /* 2 x 40000 values: more than the ops' parallel threshold. */
      vmc_oph *h;
      REQUIRE_OK(fq_harness(&k_params[t], 2, 40000, nt, &h));
      fill_values(&r, &k_params[t], h->x[0], h->xn[0]);
      vmc_oph_forward(h, 0);
      float *ref = malloc(h->xn[0] * sizeof *ref);
      REQUIRE(ref);
      CHECK_OK(vmc_qfake_quantize(h->x[0], 1, h->xn[0], &k_params[t], ref));
      size_t bad = 0, first = 0;
      for (size_t i = 0; i < h->xn[0]; i++)
        if (!same_bits(h->y[i], ref[i]) && !bad++) first = i;
      if (bad)
        vmc_test_fail(__FILE__, __LINE__, "params %d, %d threads: %zu values differ, first x = %.9g: "
                      "%.9g vs %.9g", t, nt, bad, (double)h->x[0][first], (double)h->y[first],
                      (double)ref[first]);
      /* Fewer images than planned: only those are written. */
      for (size_t i = 0; i < h->yn; i++) h->y[i] = 12345.0f;
      vmc_oph_forward(h, 1);
      CHECK(same_bits(h->y[5], ref[5]) && h->y[40000 + 5] == 12345.0f);
      free(ref);
      vmc_oph_free(h);
    }
}

/* PyTorch's rule by hand: q = zp + nearbyint(x * (1/s)), y = (clamp(q) - zp) * s,
 * mask = qmin <= q <= qmax (FakeQuantize's cachemask kernel).  s = 0.5,
 * zp = 3, [0, 10]: the grid is [-1.5, 3.5]. */
TEST(ptq_fakequant_pytorch_cases) {
  static const struct {
    float x, y, mask;
  } c[] = {
      {0.25f, 0.0f, 1},  /* v = 0.5: tie to even 0 */
      {0.75f, 1.0f, 1},  /* v = 1.5: tie to 2 */
      {3.25f, 3.0f, 1},  /* v = 6.5: tie to 6 */
      {-1.5f, -1.5f, 1}, /* the lower edge */
      {-1.7f, -1.5f, 1}, /* v = -3.4 rounds onto qmin: not clipped */
      {-1.75f, -1.5f, 0},/* v = -3.5 rounds to -4: q = -1, clipped */
      {-9.0f, -1.5f, 0},
      {3.5f, 3.5f, 1},   /* the upper edge */
      {3.7f, 3.5f, 1},   /* v = 7.4 rounds onto qmax */
      {3.75f, 3.5f, 0},  /* v = 7.5 rounds to 8 (even): q = 11, clipped */
      {100.0f, 3.5f, 0},
      {INFINITY, 3.5f, 0},
      {-INFINITY, -1.5f, 0},
      {NAN, 0.0f, 0},
  };
  const int n = (int)(sizeof c / sizeof c[0]);
  const vmc_qparams p = {0.5f, 3, 0, 10};
  vmc_oph *h;
  REQUIRE_OK(fq_harness(&p, 1, n, 1, &h));
  for (int i = 0; i < n; i++) h->x[0][i] = c[i].x, h->dy[i] = 1.0f + (float)i;
  vmc_oph_forward(h, 0);
  vmc_oph_backward(h);
  for (int i = 0; i < n; i++) {
    if (!same_bits(h->y[i], c[i].y))
      vmc_test_fail(__FILE__, __LINE__, "x = %g: y = %g, want %g", (double)c[i].x, (double)h->y[i],
                    (double)c[i].y);
    if (h->dx[0][i] != c[i].mask * h->dy[i])
      vmc_test_fail(__FILE__, __LINE__, "x = %g: dx = %g, want %g", (double)c[i].x,
                    (double)h->dx[0][i], (double)(c[i].mask * h->dy[i]));
  }
  vmc_oph_free(h);
}

/* The STE mask on every parameter set: dx = dy exactly where the unclamped
 * code lies in [qmin, qmax], 0 elsewhere; written (dx_set) or added. */
TEST(ptq_fakequant_backward_ste_mask) {
  vmc_rng r;
  vmc_rng_seed(&r, 7);
  for (int t = 0; t < N_PARAMS; t++)
    for (int nt = 1; nt <= 2; nt++) {
      const vmc_qparams *p = &k_params[t];
      vmc_oph *h;
      REQUIRE_OK(fq_harness(p, 2, 40000, nt, &h));
      fill_values(&r, p, h->x[0], h->xn[0]);
      vmc_oph_fill(&r, h->dy, h->yn, -1.0f, 1.0f);
      vmc_oph_forward(h, 0);
      const float inv = 1.0f / p->scale;
      size_t inside = 0, outside = 0, bad = 0;
      float *want = malloc(h->xn[0] * sizeof *want);
      REQUIRE(want);
      for (size_t i = 0; i < h->xn[0]; i++) {
        const float v = h->x[0][i] * inv;
        const double q = nearbyint((double)v) + p->zero_point;
        const int in = v == v && q >= p->qmin && q <= p->qmax;
        want[i] = in ? h->dy[i] : 0.0f;
        inside += in;
        outside += !in;
      }
      CHECK(inside > 1000 && outside > 1000);
      /* Accumulate: dx starts at 0.25. */
      for (size_t i = 0; i < h->xn[0]; i++) h->dx[0][i] = 0.25f;
      vmc_oph_backward_accumulate(h);
      for (size_t i = 0; i < h->xn[0]; i++) bad += h->dx[0][i] != want[i] + 0.25f;
      /* Write (the plan's dx_set): dx starts as garbage. */
      vmc_opctx c = {.g = h->g, .node = &h->g->nodes[h->node], .batch = 2, .mode = VMC_MODE_TRAIN,
                     .x = {h->x[0]}, .xs = {h->xs[0]}, .y = h->y, .ys = h->ys, .dy = h->dy,
                     .dx = {h->dx[0]}, .nthreads = nt, .dx_set = {1}};
      for (size_t i = 0; i < h->xn[0]; i++) h->dx[0][i] = NAN;
      h->op->backward(&c);
      for (size_t i = 0; i < h->xn[0]; i++) bad += !same_bits(h->dx[0][i], want[i]);
      if (bad) vmc_test_fail(__FILE__, __LINE__, "params %d, %d threads: %zu wrong gradients", t, nt, bad);
      /* No dx: nothing happens. */
      c.dx[0] = NULL;
      h->op->backward(&c);
      free(want);
      vmc_oph_free(h);
    }
}

TEST(ptq_fakequant_rejects_bad_attributes) {
  static const vmc_qparams bad[] = {
      {0.0f, 0, 0, 255}, {-1.0f, 0, 0, 255}, {NAN, 0, 0, 255}, {INFINITY, 0, 0, 255},
      {1e-40f, 0, 0, 255}, {0.1f, 300, 0, 255}, {0.1f, -1, 0, 255}, {0.1f, 0, 5, 4}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    vmc_oph *h = NULL;
    vmc_status s = fq_harness(&bad[i], 1, 4, 1, &h);
    CHECK(s == VMC_ERR_INVALID_ARG);
    if (s == VMC_OK) vmc_oph_free(h);
    else CHECK(strstr(vmc_last_error(), "fakequant") != NULL);
  }
  /* A missing attribute. */
  vmc_oph_spec s = {.op = "fakequant", .mode = VMC_MODE_INFER, .n_in = 1,
                    .in = {{.ndim = 2, .d = {1, 4}}}, .n_attr = 2,
                    .attr = {AF("scale", 0.1f), AI("qmin", 0)}};
  vmc_oph *h = NULL;
  CHECK(vmc_oph_create(&s, &h) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "qmax") != NULL);
  if (h) vmc_oph_free(h);
}

/* ---- models ------------------------------------------------------------------------ */

static double sqnr(const float *a, const float *b, size_t n) {
  double s = 0, e = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * a[i], e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
  return e > 0 ? 10 * log10(s / e) : INFINITY;
}

/* A checksum of every parameter and the node list, to see g untouched. */
static uint32_t graph_sum(const vmc_graph *g) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < g->n_params; i++) {
    const uint8_t *b = (const uint8_t *)g->params[i].data;
    for (size_t j = 0; j < vmc_shape_count(&g->params[i].shape) * sizeof(float); j++) h = (h ^ b[j]) * 16777619u;
  }
  return h ^ (uint32_t)g->n_nodes * 31u ^ (uint32_t)g->n_params;
}

TEST(ptq_fold_bn_copy_drops_batchnorms_and_keeps_outputs) {
  const char *models[] = {"lenet5", "resnet8", "resnet20", "mobilenetv2-tiny"};
  vmc_dataset *d = test_blobs(6, 1, 3, 20, 0);
  REQUIRE(d);
  for (int m = 0; m < 4; m++) {
    vmc_graph *g = test_zoo_model(models[m], 7, 11), *f = NULL;
    REQUIRE(g);
    const uint32_t before = graph_sum(g);
    int nf = -1;
    REQUIRE_OK(vmc_graph_fold_bn_copy(g, &f, &nf));
    CHECK(graph_sum(g) == before);
    CHECK_EQ_INT(test_count_op(f, "batchnorm"), test_count_op(g, "batchnorm") - nf);
    if (strcmp(models[m], "lenet5")) CHECK(nf > 0 && test_count_op(f, "batchnorm") == 0);
    CHECK_EQ_INT(f->n_nodes, g->n_nodes - nf);
    /* Names kept; no batchnorm parameter survives. */
    for (int i = 0; i < f->n_nodes; i++) CHECK(vmc_graph_find_value(g, f->nodes[i].name) >= 0);
    for (int i = 0; i < f->n_params; i++) {
      CHECK(vmc_graph_find_param(g, f->params[i].name) >= 0 || strstr(f->params[i].name, ".bias"));
      CHECK(!strstr(f->params[i].name, "running_"));
    }
    CHECK(!strcmp(vmc_graph_meta(f, "architecture"), models[m]));
    float *a = test_plan_logits(g, d, 6), *b = test_plan_logits(f, d, 6);
    REQUIRE(a && b);
    double worst = 0, scale = 1e-3;
    for (int i = 0; i < 60; i++) scale = fmax(scale, fabs(a[i]));
    for (int i = 0; i < 60; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
    if (!(worst <= 1e-4 * scale))
      vmc_test_fail(__FILE__, __LINE__, "%s: folded logits differ by %g (scale %g)", models[m], worst, scale);
    free(a);
    free(b);
    vmc_graph_free(f);
    vmc_graph_free(g);
  }
  vmc_dataset_free(d);
}

TEST(ptq_drop_nodes_checks_its_input) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11), *f = NULL;
  REQUIRE(g);
  uint8_t *drop = calloc((size_t)g->n_nodes, 1);
  REQUIRE(drop);
  int add = -1;
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].op->name, "add")) add = i;
  REQUIRE(add >= 0);
  drop[add] = 1;
  CHECK(vmc_graph_drop_nodes(g, drop, &f, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(f == NULL && strstr(vmc_last_error(), g->nodes[add].name));
  /* Dropping a relu: its readers read its input; the map says so. */
  memset(drop, 0, (size_t)g->n_nodes);
  int relu = -1;
  for (int i = 0; i < g->n_nodes && relu < 0; i++)
    if (!strcmp(g->nodes[i].op->name, "relu")) relu = i;
  drop[relu] = 1;
  int *map = malloc((size_t)g->n_values * sizeof *map);
  REQUIRE(map);
  REQUIRE_OK(vmc_graph_drop_nodes(g, drop, &f, map));
  CHECK_EQ_INT(f->n_nodes, g->n_nodes - 1);
  CHECK_EQ_INT(map[g->nodes[relu].out], map[g->nodes[relu].in[0]]);
  CHECK_EQ_INT(f->n_params, g->n_params);
  CHECK(vmc_graph_find_value(f, g->nodes[relu].name) < 0);
  free(map);
  free(drop);
  vmc_graph_free(f);
  vmc_graph_free(g);
}

/* The observable plan keeps every value a node reads, and they equal the
 * plain (VMC_NO_FUSION) execution's. */
TEST(ptq_observable_plan_keeps_every_value) {
  const char *models[] = {"resnet8", "mobilenetv2-tiny"};
  vmc_dataset *d = test_blobs(5, 2, 3, 20, 0);
  REQUIRE(d);
  int idx[5] = {0, 1, 2, 3, 4};
  for (int m = 0; m < 2; m++) {
    vmc_graph *g = test_zoo_model(models[m], 7, 11);
    REQUIRE(g);
    vmc_plan *o = NULL, *plain = NULL;
    REQUIRE_OK(vmc_plan_create_observable(g, 5, &o));
    setenv("VMC_NO_FUSION", "1", 1);
    vmc_status s = vmc_plan_create(g, 5, VMC_MODE_INFER, &plain);
    unsetenv("VMC_NO_FUSION");
    REQUIRE_OK(s);
    vmc_dataset_batch(d, idx, 5, NULL, NULL, vmc_plan_input(o), NULL);
    memcpy(vmc_plan_input(plain), vmc_plan_input(o), 5 * 784 * sizeof(float));
    REQUIRE_OK(vmc_plan_forward(o, 5));
    REQUIRE_OK(vmc_plan_forward(plain, 5));
    CHECK(vmc_plan_value(o, -1) == NULL && vmc_plan_value(o, g->n_values) == NULL);
    for (int i = 0; i < g->n_nodes; i++) {
      const vmc_node *n = &g->nodes[i];
      if (o->skip[i]) continue;
      for (int k = 0; k < n->n_in; k++) {
        const int v = n->in[k];
        const size_t cnt = vmc_shape_count(vmc_plan_value_shape(o, v));
        const double e = vmc_test_max_rel(vmc_plan_value(o, v), vmc_plan_value(plain, v), cnt);
        if (!(e <= 1e-5))
          vmc_test_fail(__FILE__, __LINE__, "%s: value '%s' differs by %g", models[m],
                        g->values[v].name, e);
      }
    }
    vmc_plan_destroy(o);
    vmc_plan_destroy(plain);
    vmc_graph_free(g);
  }
  vmc_dataset_free(d);
}

/* ---- the pass ---------------------------------------------------------------------- */

static const vmc_node *producer(const vmc_graph *g, int v) {
  for (int i = 0; i < g->n_nodes; i++)
    if (g->nodes[i].out == v) return &g->nodes[i];
  return NULL;
}

/* Node j is a relu reading a conv2d/linear/add (fused into it). */
static int n_is_fused(const vmc_graph *g, int j) {
  if (strcmp(g->nodes[j].op->name, "relu") && strcmp(g->nodes[j].op->name, "relu6")) return 0;
  const vmc_node *p = producer(g, g->nodes[j].in[0]);
  return p && (!strcmp(p->op->name, "conv2d") || !strcmp(p->op->name, "linear") ||
               !strcmp(p->op->name, "add"));
}

static vmc_ptq_opts opts(vmc_qscheme w, int per_channel, vmc_observer_kind k, int images) {
  vmc_ptq_opts o;
  vmc_ptq_opts_default(&o);
  o.weight_scheme = w;
  o.per_channel = per_channel;
  o.observer = k;
  o.calib_images = images;
  o.batch = 8;
  return o;
}

TEST(ptq_resnet8_structure_weights_and_ranges) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11), *q = NULL;
  vmc_dataset *d = test_blobs(40, 3, 3, 20, 0);
  REQUIRE(g && d);
  const uint32_t before = graph_sum(g);
  vmc_ptq_opts o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 36);
  vmc_ptq_report rep;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, &rep));
  CHECK(graph_sum(g) == before);
  /* 10 conv/linear layers; 9 batchnorms folded.  Quantized values: the
   * input, the stem's output, per block the first relu, the second conv
   * (read by the add), the add (+relu), and in stages 2 and 3 the
   * downsample conv (13), and the global pool's output (read through
   * flatten by fc). */
  CHECK_EQ_INT(rep.n_layers, 10);
  CHECK_EQ_INT(rep.bn_folded, 9);
  CHECK_EQ_INT(rep.calib_images, 36);
  CHECK_EQ_INT(rep.n_sites, 14);
  CHECK_EQ_INT(test_count_op(q, "batchnorm"), 0);
  CHECK_EQ_INT(test_count_op(q, "fakequant"), 14);
  CHECK_EQ_INT(q->n_nodes, g->n_nodes - 9 + 14);
  /* Every input of every node but relu and fakequant comes from a
   * fakequant, or from a flatten reading one; each value a conv/add/pool
   * computes is read by one fakequant, or by one relu read by one fakequant. */
  for (int i = 0; i < q->n_nodes; i++) {
    const vmc_node *n = &q->nodes[i];
    const char *op = n->op->name;
    if (strcmp(op, "relu") && strcmp(op, "fakequant"))
      for (int k = 0; k < n->n_in; k++) {
        const vmc_node *p = producer(q, n->in[k]);
        if (p && !strcmp(p->op->name, "flatten")) p = producer(q, p->in[0]);
        CHECK(p && !strcmp(p->op->name, "fakequant"));
      }
    if (strcmp(op, "fakequant") && strcmp(op, "flatten") && n->out != q->output) {
      int readers = 0, ok = 0;
      for (int j = i + 1; j < q->n_nodes; j++)
        for (int k = 0; k < q->nodes[j].n_in; k++)
          if (q->nodes[j].in[k] == n->out) {
            readers++;
            ok = !strcmp(q->nodes[j].op->name, "fakequant") || n_is_fused(q, j);
          }
      CHECK_EQ_INT(readers, 1);
      CHECK(ok);
    }
  }
  const int shared = vmc_graph_find_value(q, "layer1.0.relu2.quant");
  CHECK(shared >= 0);
  int readers = 0;
  for (int i = 0; i < q->n_nodes; i++) readers += q->nodes[i].in[0] == shared;
  CHECK_EQ_INT(readers, 2);
  /* The input's range: min/max of the normalised calibration images. */
  float lo = INFINITY, hi = -INFINITY;
  {
    float *x = malloc(36 * 784 * sizeof *x);
    int idx[36];
    for (int i = 0; i < 36; i++) idx[i] = i;
    REQUIRE(x);
    vmc_dataset_batch(d, idx, 36, NULL, NULL, x, NULL);
    for (int i = 0; i < 36 * 784; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
    free(x);
  }
  vmc_qparams want;
  REQUIRE_OK(vmc_qparams_from_range(lo, hi, VMC_QSCHEME_U8, &want));
  const vmc_node *fq = test_node_of(q, "input.quant");
  REQUIRE(fq && !strcmp(fq->op->name, "fakequant"));
  CHECK(vmc_node_attr_f(fq, "scale", 0) == want.scale);
  CHECK_EQ_INT(vmc_node_attr_i(fq, "zero_point", -1), want.zero_point);
  CHECK_EQ_INT(vmc_node_attr_i(fq, "qmin", -1), 0);
  CHECK_EQ_INT(vmc_node_attr_i(fq, "qmax", -1), 255);
  CHECK(!strcmp(rep.layers[0].node, "conv1") && !strcmp(rep.layers[0].input, "input"));
  CHECK(rep.layers[0].lo == lo && rep.layers[0].hi == hi);
  CHECK(rep.layers[0].act.scale == want.scale);
  /* Post-ReLU values: zero point 0, nothing clipped by min/max. */
  for (int i = 1; i < rep.n_layers; i++) {
    CHECK_EQ_INT(rep.layers[i].act.zero_point, 0);
    CHECK(rep.layers[i].clipped == 0);
    CHECK(rep.layers[i].act_sqnr_db > 20 && rep.layers[i].w_sqnr_db > 30);
    CHECK_EQ_INT(rep.layers[i].channels, q->params[test_node_of(q, rep.layers[i].node)->param[0]].shape.d[0]);
  }
  /* Weights: exactly the fake quantization of the folded weights. */
  vmc_graph *f = NULL;
  REQUIRE_OK(vmc_graph_fold_bn_copy(g, &f, NULL));
  for (int i = 0; i < rep.n_layers; i++) {
    const vmc_node *n = test_node_of(f, rep.layers[i].node);
    REQUIRE(n);
    const vmc_param *w = &f->params[n->param[0]];
    const int ch = w->shape.d[0];
    const size_t total = vmc_shape_count(&w->shape), k = total / (size_t)ch;
    vmc_qparams *wp = malloc((size_t)ch * sizeof *wp);
    int8_t *codes = malloc(total);
    float *ref = malloc(total * sizeof *ref);
    REQUIRE(wp && codes && ref);
    REQUIRE_OK(vmc_quantize_weights(w->data, ch, k, VMC_QSCHEME_S8, 1, wp, codes));
    REQUIRE_OK(vmc_qfake_quantize(w->data, ch, k, wp, ref));
    const int qp = vmc_graph_find_param(q, w->name);
    REQUIRE(qp >= 0);
    CHECK(!memcmp(ref, q->params[qp].data, total * sizeof *ref));
    /* Bias: s32 codes of scale s_w * s_x. */
    if (n->n_param > 1) {
      const float *b = q->params[vmc_graph_find_param(q, f->params[n->param[1]].name)].data;
      for (int c = 0; c < ch; c++) {
        const double code = b[c] / ((double)wp[c].scale * rep.layers[i].act.scale);
        CHECK(fabs(code - nearbyint(code)) < 1e-3 * fmax(1, fabs(code)));
      }
    }
    free(wp);
    free(codes);
    free(ref);
  }
  /* The simulated model tracks the float one. */
  float *a = test_plan_logits(f, d, 16), *b = test_plan_logits(q, d, 16);
  REQUIRE(a && b);
  CHECK(sqnr(a, b, 160) > 20);
  /* Metadata: a summary; per layer only the report (the last layer fc)
   * and the graph (each fakequant's attributes, above) tell. */
  const char *meta = vmc_graph_meta(q, "quant");
  REQUIRE(meta);
  CHECK(!strncmp(meta, "{\"method\":\"ptq\",\"scheme\":\"w8a8\"", 31));
  CHECK(strstr(meta, "\"observer\":\"minmax\",\"input_observer\":\"minmax\"") != NULL);
  CHECK(strstr(meta, "\"granularity\":\"per-channel\"") && strstr(meta, "\"images\":36"));
  CHECK(strstr(meta, "\"batchnorm_folded\":9") && strstr(meta, "\"quantized_values\":14"));
  CHECK(strstr(meta, "\"weight_layers\":{\"s8\":10,\"s7\":0,\"s4\":0,\"f32\":0}") != NULL);
  CHECK(!strstr(meta, "\"node\"") && strlen(meta) < 512);
  CHECK(!strcmp(rep.layers[rep.n_layers - 1].node, "fc"));
  const char *hist = vmc_graph_meta(q, "history");
  CHECK(hist && strstr(hist, "ptq w8a8") && strstr(hist, "9 batchnorms folded"));
  /* Saved and loaded: the same model, the same logits. */
  char path[512];
  snprintf(path, sizeof path, "%s/ptq_r8.vmc", vmc_test_tmpdir());
  REQUIRE_OK(vmc_model_save(q, path));
  vmc_graph *l = NULL;
  REQUIRE_OK(vmc_model_load(path, &l));
  float *c = test_plan_logits(l, d, 16);
  CHECK(c && !memcmp(b, c, 160 * sizeof *c));
  /* Quantizing it again is refused. */
  vmc_graph *q2 = NULL;
  vmc_ptq_report rep2;
  CHECK(vmc_ptq_quantize(l, d, &o, &q2, &rep2) == VMC_ERR_INVALID_ARG);
  CHECK(q2 == NULL && strstr(vmc_last_error(), "already quantized"));
  vmc_ptq_report_free(&rep2);
  free(a);
  free(b);
  free(c);
  vmc_graph_free(l);
  vmc_graph_free(f);
  vmc_ptq_report_free(&rep);
  vmc_graph_free(q);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* Every observer, both weight schemes and granularities, on the zoo's
 * residual, depthwise and plain models. */
TEST(ptq_layer_rules_and_layer_sites) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11), *q = NULL;
  vmc_dataset *d = test_blobs(8, 7, 3, 20, 0);
  REQUIRE(g && d);
  /* Mixed precision: one layer 4-bit, one 7-bit, one kept fp32, the rest
   * 8-bit. */
  const vmc_ptq_rule rules[3] = {{.node = "layer2.0.conv1", .weight_bits = 4, .quant_input = 1},
                                 {.node = "layer3.0.conv2", .weight_bits = 7, .quant_input = 1},
                                 {.node = "fc", .weight_bits = 0, .quant_input = 1}};
  vmc_ptq_opts o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 8);
  o.rules = rules;
  o.n_rules = 3;
  vmc_ptq_report rep;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, &rep));
  for (int i = 0; i < rep.n_layers; i++) {
    const vmc_ptq_layer *l = &rep.layers[i];
    const vmc_param *w = &q->params[test_node_of(q, l->node)->param[0]];
    const int want = !strcmp(l->node, "fc")               ? 0
                     : !strcmp(l->node, "layer2.0.conv1") ? 4
                     : !strcmp(l->node, "layer3.0.conv2") ? 7
                                                          : 8;
    CHECK_EQ_INT(l->weight_bits, want);
    CHECK_EQ_INT((int)w->store, want == 0 ? VMC_F32 : want == 4 ? VMC_S4 : VMC_S8);
    CHECK_EQ_INT(w->n_qscale, want ? w->shape.d[0] : 0);
    /* The codes span the scheme's range: max |code| is its qmax. */
    int most = 0;
    for (size_t k = 0; want && k < vmc_shape_count(&w->shape); k++) {
      const int c = vmc_param_code(w, k);
      most = c > most ? c : -c > most ? -c : most;
    }
    if (want) CHECK_EQ_INT(most, want == 4 ? 7 : want == 7 ? 63 : 127);
  }
  const vmc_ptq_layer *fc = &rep.layers[rep.n_layers - 1];
  CHECK(!strcmp(fc->node, "fc") && !strcmp(fc->input, "flatten") &&
        !strcmp(fc->quant, "avgpool.quant"));
  CHECK_EQ_INT(fc->weight_bits, 0);
  const char *meta = vmc_graph_meta(q, "quant");
  CHECK(meta && strstr(meta, "\"weight_layers\":{\"s8\":7,\"s7\":1,\"s4\":1,\"f32\":1}"));
  vmc_ptq_report_free(&rep);
  vmc_graph_free(q);
  /* Without integer sites: only the layers' inputs, 8 distinct values; a
   * layer may read its input in float. */
  const vmc_ptq_rule flt = {.node = "layer1.0.conv1", .weight_bits = 8, .quant_input = 0};
  o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 8);
  o.integer_sites = 0;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, &rep));
  CHECK_EQ_INT(test_count_op(q, "fakequant"), 8);
  CHECK_EQ_INT(rep.n_sites, 8);
  vmc_ptq_report_free(&rep);
  vmc_graph_free(q);
  o.rules = &flt;
  o.n_rules = 1;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, &rep));
  /* The stem's output was a site only for layer1.0.conv1, which reads it
   * in float now. */
  CHECK_EQ_INT(test_count_op(q, "fakequant"), 7);
  const vmc_node *c1 = test_node_of(q, "layer1.0.conv1");
  REQUIRE(c1);
  CHECK(strcmp(producer(q, c1->in[0])->op->name, "fakequant"));
  CHECK(rep.layers[1].quant[0] == 0);
  vmc_ptq_report_free(&rep);
  vmc_graph_free(q);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

TEST(ptq_observers_schemes_and_models) {
  const char *models[] = {"lenet5", "resnet8", "mobilenetv2-tiny"};
  vmc_dataset *d = test_blobs(24, 4, 3, 20, 0);
  REQUIRE(d);
  for (int m = 0; m < 3; m++) {
    vmc_graph *g = test_zoo_model(models[m], 7, 11), *f = NULL;
    REQUIRE(g);
    REQUIRE_OK(vmc_graph_fold_bn_copy(g, &f, NULL));
    float *ref = test_plan_logits(f, d, 12);
    REQUIRE(ref);
    double w8 = 0, w4 = 0;
    for (int k = 0; k < VMC_OBSERVER_KIND_COUNT; k++)
      for (int w = 0; w < 2; w++)
        for (int pc = 0; pc <= 1; pc++) {
          if (k != VMC_OBSERVER_MINMAX && (w || !pc)) continue; /* schemes with min/max only */
          vmc_ptq_opts o = opts(w ? VMC_QSCHEME_S4 : VMC_QSCHEME_S8, pc, (vmc_observer_kind)k, 24);
          vmc_graph *q = NULL;
          vmc_ptq_report rep;
          vmc_status s = vmc_ptq_quantize(g, d, &o, &q, &rep);
          if (s) {
            vmc_test_fail(__FILE__, __LINE__, "%s, observer %d, s%d, pc %d: %s", models[m], k,
                          w ? 4 : 8, pc, vmc_last_error());
            vmc_ptq_report_free(&rep);
            continue;
          }
          for (int i = 0; i < rep.n_layers; i++) {
            const vmc_ptq_layer *l = &rep.layers[i];
            /* The image input keeps min/max whatever the observer. */
            CHECK(l->observer == (i ? (vmc_observer_kind)k : VMC_OBSERVER_MINMAX));
            CHECK(l->act.scale > 0 && isfinite(l->act.scale));
            CHECK(l->lo >= l->seen_min && l->hi <= l->seen_max);
            CHECK(l->channels == (pc ? q->params[test_node_of(q, l->node)->param[0]].shape.d[0] : 1));
            CHECK(l->w_scale_min <= l->w_scale_max && (pc || l->w_scale_min == l->w_scale_max));
          }
          float *z = test_plan_logits(q, d, 12);
          REQUIRE(z);
          const double db = sqnr(ref, z, 120);
          if (k == VMC_OBSERVER_MINMAX && pc) {
            if (w) w4 = db;
            else w8 = db;
          }
          if (!(db > (w ? 3 : 12)))
            vmc_test_fail(__FILE__, __LINE__, "%s, observer %d, s%d, pc %d: logits SQNR %.1f dB",
                          models[m], k, w ? 4 : 8, pc, db);
          free(z);
          vmc_ptq_report_free(&rep);
          vmc_graph_free(q);
        }
    CHECK(w8 > w4);
    free(ref);
    vmc_graph_free(f);
    vmc_graph_free(g);
  }
  vmc_dataset_free(d);
}

TEST(ptq_rejects_bad_requests) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11), *q = NULL;
  vmc_dataset *d = test_blobs(4, 5, 3, 20, 0);
  REQUIRE(g && d);
  vmc_ptq_report rep;
  vmc_ptq_opts o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 4);
  o.weight_scheme = VMC_QSCHEME_U8;
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "weight scheme u8"));
  o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 4);
  o.act_scheme = VMC_QSCHEME_S4;
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_UNSUPPORTED);
  CHECK(strstr(vmc_last_error(), "activation scheme s4"));
  /* Layer rules: unknown node, bad bits, a float input the runtime cannot run. */
  vmc_ptq_rule r = {.node = "nope", .weight_bits = 8, .quant_input = 1};
  o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 4);
  o.rules = &r;
  o.n_rules = 1;
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "'nope' is not a conv2d or linear"));
  r.node = "layer1.0.bn1";
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  r.node = "conv1";
  r.weight_bits = 2;
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "2-bit weights"));
  r.weight_bits = 8;
  r.quant_input = 0;
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "integer runtime"));
  CHECK(q == NULL);
  o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 0);
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  o = opts(VMC_QSCHEME_S8, 1, (vmc_observer_kind)99, 4);
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 4);
  o.obs.percentile = 20; /* ignored by min/max; bad for percentile */
  o.observer = VMC_OBSERVER_PERCENTILE;
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "ptq"));
  vmc_graph *small = NULL;
  REQUIRE_OK(vmc_zoo_build("resnet8", 1, 20, 20, 10, 1, &small));
  o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 4);
  CHECK(vmc_ptq_quantize(small, d, &o, &q, &rep) == VMC_ERR_SHAPE);
  CHECK(q == NULL);
  /* More images asked for than there are: all of them. */
  o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_MINMAX, 1000);
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, &rep));
  CHECK_EQ_INT(rep.calib_images, 4);
  /* NULL options: the defaults. */
  vmc_graph *q3 = NULL;
  vmc_ptq_report_free(&rep);
  REQUIRE_OK(vmc_ptq_quantize(g, d, NULL, &q3, NULL));
  CHECK(strstr(vmc_graph_meta(q3, "quant"), "\"images\":4"));
  vmc_graph_free(q3);
  vmc_ptq_report_free(&rep);
  vmc_graph_free(q);
  vmc_graph_free(small);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* Every allocation failure on the way gives VMC_ERR_NOMEM, no output and no
 * leak (the sanitizer build checks the leaks). */
TEST(ptq_allocation_failures) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11);
  vmc_dataset *d = test_blobs(3, 6, 3, 20, 0);
  REQUIRE(g && d);
  vmc_ptq_opts o = opts(VMC_QSCHEME_S8, 1, VMC_OBSERVER_KL, 3);
  int ok = 0, k;
  for (k = 0; k < 20000 && !ok; k++) {
    vmc_graph *q = NULL;
    vmc_ptq_report rep;
    vmc_fail_alloc_after(k);
    vmc_status s = vmc_ptq_quantize(g, d, &o, &q, &rep);
    vmc_fail_alloc_after(-1);
    if (s == VMC_OK) ok = 1;
    else if (s != VMC_ERR_NOMEM) {
      vmc_test_fail(__FILE__, __LINE__, "failing allocation %d: %s (%s)", k, vmc_status_str(s),
                    vmc_last_error());
      break;
    }
    CHECK((s == VMC_OK) == (q != NULL));
    vmc_ptq_report_free(&rep);
    vmc_graph_free(q);
  }
  CHECK(ok && k > 10);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* ---- vmc quantize ------------------------------------------------------------------ */

static char g_out[1 << 17];

TEST(ptq_cli_quantize) {
  if (access(vmc_bin(), X_OK)) SKIP("vmc binary not built (set VMC_BIN)");
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize --help"), 0);
  CHECK(strstr(g_out, "Usage: vmc quantize") && strstr(g_out, "--observer"));
  CHECK_EQ_INT(run(g_out, sizeof g_out, "--help"), 0);
  CHECK(strstr(g_out, "quantize") != NULL);
  vmc_dataset *probe = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &probe) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  vmc_dataset_free(probe);
  const char *dir = vmc_test_tmpdir();
  char in[512], out[512], again[512];
  snprintf(in, sizeof in, "%s/cli_l5.vmc", dir);
  snprintf(out, sizeof out, "%s/cli_l5q.vmc", dir);
  snprintf(again, sizeof again, "%s/cli_l5qq.vmc", dir);
  vmc_graph *g = test_zoo_model("lenet5", 7, 11);
  REQUIRE(g);
  REQUIRE_OK(vmc_graph_set_meta(g, "dataset", "fashion-mnist"));
  REQUIRE_OK(vmc_graph_set_meta(g, "accuracy", "0.1000"));
  REQUIRE_OK(vmc_model_save(g, in));
  vmc_graph_free(g);
  static const struct {
    const char *args;
    int rc;
    const char *msg;
  } bad[] = {
      {"quantize %s", 2, "-o"},
      {"quantize -o %s", 2, "IN.vmc"},
      {"quantize %s --scheme w2a8 -o %s", 2, "w2a8"},
      {"quantize %s --scheme w4a4 -o %s", 2, "quantization-aware"},
      {"quantize %s --observer median -o %s", 2, "median"},
      {"quantize %s --input-observer max -o %s", 2, "max"},
      {"quantize %s --per-channel --per-tensor -o %s", 2, "exclude"},
      {"quantize %s --calib-images 0 -o %s", 2, "--calib-images"},
      {"quantize %s --percentile 99 -o %s", 2, "--observer percentile"},
      {"quantize %s --observer kl --bins 1000 -o %s", 2, "power of two"},
      {"quantize %s --act u4 -o %s", 2, "u4"},
      {"quantize %s.missing -o %s", 1, ".missing"},
      {"quantize %s --calib /nonexistent/folder -o %s", 1, "/nonexistent/folder"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char args[1024];
    if (i == 1) snprintf(args, sizeof args, bad[i].args, out);
    else snprintf(args, sizeof args, bad[i].args, in, out);
    const int rc = run(g_out, sizeof g_out, "%s", args);
    if (rc != bad[i].rc || !strstr(g_out, bad[i].msg))
      vmc_test_fail(__FILE__, __LINE__, "'%s' exited %d (want %d): %s", args, rc, bad[i].rc, g_out);
    CHECK(!exists(out));
  }
  int rc = run(g_out, sizeof g_out, "quantize %s --calib fashion-mnist --calib-images 64 "
               "--observer kl -o %s --eval --eval-limit 300 --json --threads 2", in, out);
  REQUIRE(rc == 0);
  CHECK(strstr(g_out, "\"observer\":\t\"kl\"") || strstr(g_out, "\"observer\": \"kl\""));
  CHECK(strstr(g_out, "\"input_observer\":\t\"minmax\"") != NULL);
  CHECK(strstr(g_out, "\"calib_images\":\t64") || strstr(g_out, "\"calib_images\": 64"));
  /* The per-layer report (no longer in the file's metadata). */
  CHECK(strstr(g_out, "\"quant_node\":\t\"input.quant\"") && strstr(g_out, "\"act_scale\"") &&
        strstr(g_out, "\"weight_sqnr_db\"") && strstr(g_out, "\"weight_bits\":\t8"));
  const char *qa = strstr(g_out, "\"quant_accuracy\":");
  REQUIRE(qa);
  const double acc = atof(qa + strlen("\"quant_accuracy\":"));
  CHECK(exists(out));
  /* vmc eval on the output: the same accuracy. */
  rc = run(g_out, sizeof g_out, "eval %s --limit 300 --json", out);
  CHECK_EQ_INT(rc, 0);
  const char *ea = strstr(g_out, "\"accuracy\":");
  REQUIRE(ea);
  CHECK_NEAR(atof(ea + strlen("\"accuracy\":")), acc, 1e-6);
  /* info shows the fakequant nodes with their scales, the history line, the
   * summary and the fp32 accuracy. */
  rc = run(g_out, sizeof g_out, "info %s", out);
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "fakequant") && strstr(g_out, "ptq w8a8") && strstr(g_out, "accuracy.fp32: 0.1000"));
  CHECK(strstr(g_out, "quantized value (fakequant)") && strstr(g_out, "\ninput.quant "));
  CHECK(strstr(g_out, "quant: {\"method\":\"ptq\"") != NULL);
  CHECK(!strstr(g_out, "\naccuracy: ")); /* --eval-limit: no full-set accuracy recorded */
  /* Text report, and the JSON one in a file. */
  char report[512];
  snprintf(report, sizeof report, "%s/cli_l5q4.json", dir);
  rc = run(g_out, sizeof g_out, "quantize %s --calib-images 32 --scheme w4a8 --per-tensor -o %s "
           "--report %s", in, again, report);
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "w4a8") && strstr(g_out, "per-tensor") && strstr(g_out, "act SQNR"));
  FILE *rf = fopen(report, "r");
  REQUIRE(rf);
  const size_t got = fread(g_out, 1, sizeof g_out - 1, rf);
  g_out[got] = 0;
  fclose(rf);
  CHECK(strstr(g_out, "\"scheme\":\t\"w4a8\"") && strstr(g_out, "\"weight_bits\":\t4") &&
        strstr(g_out, "\"act_sqnr_db\"") && strstr(g_out, "\"range_hi\""));
  /* 7-bit weights: s7 codes, stored as s8; an unknown scheme is refused with the known ones. */
  rc = run(g_out, sizeof g_out, "quantize %s --calib-images 32 --scheme w7a8 -o %s --json", in,
           again);
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "\"scheme\":\t\"w7a8\"") && strstr(g_out, "\"weights\":\t\"s7\"") &&
        strstr(g_out, "\"weight_bits\":\t7"));
  rc = run(g_out, sizeof g_out, "quantize %s --calib-images 32 --scheme w9a8 -o %s", in, again);
  CHECK(rc == 2 && strstr(g_out, "w9a8") && strstr(g_out, "w7a8"));
  rc = run(g_out, sizeof g_out, "quantize %s --calib-images 32 -o %s --report /nonexistent/r.json",
           in, again);
  CHECK(rc == 1 && strstr(g_out, "/nonexistent/r.json"));
  /* An already quantized model. */
  rc = run(g_out, sizeof g_out, "quantize %s -o %s.x", out, again);
  CHECK_EQ_INT(rc, 1);
  CHECK(strstr(g_out, "already quantized") != NULL);
}
