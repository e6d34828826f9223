/* Inference plans: BatchNorm folded into convolutions, activation buffers
 * shared by liveness, batches run image by image on per-thread plans.  All
 * of it must give the plain batch execution's results (VMC_NO_FUSION=1). */
#include "test.h"
#include "zoo_fixture.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/fold.h"
#include "graph/plan.h"

/* Logits of n images (seeded N(0,1) pixels) through a plan for batch b. */
static float *logits(vmc_graph *g, int b, int n, int threads, size_t *count, size_t *arena) {
  vmc_set_threads(threads);
  vmc_plan *p = NULL;
  if (vmc_plan_create(g, b, VMC_MODE_INFER, &p)) return NULL;
  const size_t in = vmc_shape_count(&g->in_shape);
  const vmc_shape *os = vmc_plan_value_shape(p, g->output);
  const size_t k = vmc_shape_count(os) / (size_t)os->d[0];
  float *out = malloc((size_t)n * k * sizeof(float));
  vmc_rng r;
  vmc_rng_seed(&r, 3);
  for (int off = 0; out && off < n; off += b) {
    const int m = n - off < b ? n - off : b;
    float *x = vmc_plan_input(p);
    for (size_t i = 0; i < (size_t)m * in; i++) x[i] = vmc_rng_normal(&r);
    if (vmc_plan_forward(p, m)) {
      free(out);
      out = NULL;
      break;
    }
    memcpy(out + (size_t)off * k, vmc_plan_output(p), (size_t)m * k * sizeof(float));
  }
  *count = (size_t)n * k;
  if (arena) *arena = vmc_plan_arena_bytes(p);
  vmc_plan_destroy(p);
  vmc_set_threads(0);
  return out;
}

static float max_rel_diff(const float *a, const float *b, size_t n) {
  float scale = 1e-3f, d = 0;
  for (size_t i = 0; i < n; i++) scale = fmaxf(scale, fabsf(a[i]));
  for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
  return d / scale;
}

TEST(plan_infer_folded_per_image_matches_plain) {
  const char *models[] = {"lenet5", "resnet8", "resnet20", "mobilenetv2-tiny"};
  for (int m = 0; m < 4; m++) {
    vmc_graph *g = test_zoo_model(models[m], 7, 11);
    REQUIRE(g);
    size_t n0, n1, n2, n3, n4;
    setenv("VMC_NO_FUSION", "1", 1);
    float *plain = logits(g, 7, 7, 2, &n0, NULL);
    unsetenv("VMC_NO_FUSION");
    float *one = logits(g, 7, 7, 1, &n1, NULL);   /* per image, one thread */
    float *two = logits(g, 7, 7, 2, &n2, NULL);   /* per image, two plans */
    float *three = logits(g, 4, 7, 3, &n3, NULL); /* ragged last batch */
    float *single = logits(g, 1, 7, 2, &n4, NULL); /* batch-1 plan, threaded ops */
    REQUIRE(plain && one && two && three && single);
    REQUIRE(n0 == n1 && n1 == n2 && n2 == n3 && n3 == n4);
    /* Folding reassociates the BatchNorm arithmetic: close, not equal. */
    float d = max_rel_diff(plain, one, n0);
    if (d > 1e-4f) vmc_test_fail(__FILE__, __LINE__, "%s: folded vs plain %g", models[m], d);
    /* The same plan per image whatever the thread count. */
    CHECK(memcmp(one, two, n0 * sizeof(float)) == 0);
    CHECK(memcmp(one, three, n0 * sizeof(float)) == 0);
    CHECK(memcmp(one, single, n0 * sizeof(float)) == 0);
    /* Plans fold a copy: the model's own weights are untouched. */
    setenv("VMC_NO_FUSION", "1", 1);
    float *again = logits(g, 7, 7, 2, &n1, NULL);
    unsetenv("VMC_NO_FUSION");
    CHECK(again && memcmp(again, plain, n0 * sizeof(float)) == 0);
    free(plain), free(one), free(two), free(three), free(single), free(again);
    vmc_graph_free(g);
  }
}

/* Winograd (kernels/winograd.h) in the 3x3 convolutions of an inference
 * plan: the direct convolutions' logits within fp32 rounding.  It is used
 * (its transformed weights take more of the arena) and, like every plan,
 * gives each image the same floats whatever the batch and thread count. */
TEST(plan_infer_winograd_matches_direct) {
  const char *models[] = {"resnet8", "resnet20"};
  for (int m = 0; m < 2; m++) {
    vmc_graph *g = test_zoo_model(models[m], 7, 11);
    REQUIRE(g);
    size_t n0, n1, n2, a0, a1;
    setenv("VMC_WINOGRAD", "0", 1);
    float *direct = logits(g, 1, 5, 1, &n0, &a0);
    unsetenv("VMC_WINOGRAD");
    float *wino = logits(g, 1, 5, 1, &n1, &a1);
    float *batch = logits(g, 4, 5, 2, &n2, NULL);
    REQUIRE(direct && wino && batch && n0 == n1 && n1 == n2);
    const float d = max_rel_diff(direct, wino, n0);
    if (!(d <= 1e-4f)) vmc_test_fail(__FILE__, __LINE__, "%s: Winograd vs direct %g", models[m], d);
    CHECK(a1 > a0);
    CHECK(memcmp(wino, batch, n1 * sizeof(float)) == 0);
    free(direct), free(wino), free(batch);
    vmc_graph_free(g);
  }
}

/* One image on a team of threads (conv2d splits each convolution's
 * planes, GEMM and write-back, or Winograd's transforms and positions,
 * between them): the logits on two and three threads are one thread's, bit
 * for bit, with the padded layout and without (wide results cropped), and
 * with Winograd off (every 3x3 convolution on the split GEMM). */
TEST(plan_infer_one_image_on_a_team_same_bits) {
  const char *models[] = {"lenet5", "resnet8", "mobilenetv2-tiny"};
  const char *knobs[] = {NULL, "VMC_NO_PADDED", "VMC_WINOGRAD"};
  for (int m = 0; m < 3; m++) {
    vmc_graph *g = test_zoo_model(models[m], 7, 11);
    REQUIRE(g);
    for (int k = 0; k < 3; k++) {
      if (knobs[k]) setenv(knobs[k], k == 2 ? "0" : "1", 1);
      size_t n1, nt;
      float *one = logits(g, 1, 2, 1, &n1, NULL);
      for (int t = 2; t <= 3; t++) {
        float *team = logits(g, 1, 2, t, &nt, NULL);
        REQUIRE(one && team && n1 == nt);
        if (memcmp(one, team, n1 * sizeof(float)))
          vmc_test_fail(__FILE__, __LINE__, "%s (%s): %d threads differ from one", models[m],
                        knobs[k] ? knobs[k] : "defaults", t);
        free(team);
      }
      free(one);
      if (knobs[k]) unsetenv(knobs[k]);
    }
    vmc_graph_free(g);
  }
}

TEST(plan_infer_shares_activation_buffers) {
  vmc_graph *g = test_zoo_model("resnet20", 7, 11);
  REQUIRE(g);
  size_t n, shared, plain;
  /* Direct convolutions in both: Winograd's weights would dominate the
   * arenas, and only the plain plan could not use it. */
  setenv("VMC_WINOGRAD", "0", 1);
  float *a = logits(g, 1, 1, 1, &n, &shared);
  setenv("VMC_NO_FUSION", "1", 1);
  float *b = logits(g, 1, 1, 1, &n, &plain);
  unsetenv("VMC_NO_FUSION");
  unsetenv("VMC_WINOGRAD");
  REQUIRE(a && b);
  /* resnet20 keeps ~60 activations, a few alive at once (both arenas also
   * hold the pre-packed weights). */
  if (!(shared * 2 < plain))
    vmc_test_fail(__FILE__, __LINE__, "arena %zu bytes shared vs %zu plain", shared, plain);
  free(a), free(b);
  vmc_graph_free(g);
}

/* Of a batch-1 inference plan: the nodes that run and write the padded
 * layout (op.h), and the adds folded into their operand's producer. */
static void layout_counts(vmc_graph *g, int *padded, int *folded) {
  vmc_set_threads(1);
  vmc_plan *p = NULL;
  *padded = *folded = -1;
  if (!vmc_plan_create(g, 1, VMC_MODE_INFER, &p)) {
    *padded = *folded = 0;
    for (int i = 0; i < p->g->n_nodes; i++) {
      *padded += !p->skip[i] && p->padded && p->padded[p->g->nodes[i].out];
      *folded += p->res && p->res[i] >= 0;
    }
  }
  vmc_plan_destroy(p);
  vmc_set_threads(0);
}

/* Logits of models under each combination of VMC_NO_PADDED and
 * VMC_NO_FOLD_ADD (bit k of the combination: knob k set). */
static float *logits_with(vmc_graph *g, int combo, int b, int n, size_t *count) {
  if (combo & 1) setenv("VMC_NO_PADDED", "1", 1);
  if (combo & 2) setenv("VMC_NO_FOLD_ADD", "1", 1);
  float *out = logits(g, b, n, 2, count, NULL);
  unsetenv("VMC_NO_PADDED");
  unsetenv("VMC_NO_FOLD_ADD");
  return out;
}

/* Convolutions and adds that hand each other padded planes skip the pad
 * and crop copies, and an add folded into a convolution's write-back skips
 * a pass; neither changes a bit of arithmetic: the logits equal those of
 * the same plans without them, per image and threaded. */
TEST(plan_infer_padded_layout_and_folded_adds_change_no_bit) {
  const char *models[] = {"resnet8", "resnet20", "mobilenetv2-tiny"};
  /* Padded: every conv (the 1x1 downsamples' phase rows widened by one)
   * and every add, and every add folds into a conv: resnet8 9 convs and 3
   * adds, resnet20 21 and 9.  MobileNetV2's 1x1 and depthwise convs take
   * none; its 4 residual adds fold into their plain 1x1 projections. */
  const int want_padded[] = {9, 21, 0}, want_folded[] = {3, 9, 4};
  for (int m = 0; m < 3; m++) {
    vmc_graph *g = test_zoo_model(models[m], 7, 11);
    REQUIRE(g);
    int np, nf;
    layout_counts(g, &np, &nf);
    if (np != want_padded[m] || nf != want_folded[m])
      vmc_test_fail(__FILE__, __LINE__, "%s: %d padded outputs, %d folded adds", models[m], np, nf);
    setenv("VMC_NO_PADDED", "1", 1);
    setenv("VMC_NO_FOLD_ADD", "1", 1);
    layout_counts(g, &np, &nf);
    CHECK(np == 0 && nf == 0);
    unsetenv("VMC_NO_PADDED");
    unsetenv("VMC_NO_FOLD_ADD");
    size_t n0 = 0, n1 = 0;
    float *plain = logits_with(g, 3, 5, 5, &n0), *plain1 = logits_with(g, 3, 1, 3, &n1);
    REQUIRE(plain && plain1);
    for (int combo = 0; combo < 3; combo++) {
      size_t n2 = 0, n3 = 0;
      float *per_image = logits_with(g, combo, 5, 5, &n2);
      float *single = logits_with(g, combo, 1, 3, &n3); /* threaded GEMMs */
      REQUIRE(per_image && single && n0 == n2 && n1 == n3);
      CHECK(memcmp(plain, per_image, n0 * sizeof(float)) == 0);
      CHECK(memcmp(plain1, single, n1 * sizeof(float)) == 0);
      free(per_image), free(single);
    }
    free(plain), free(plain1);
    vmc_graph_free(g);
  }
}

/* Logits of one image (seeded as logits() seeds it) through a batch-1
 * plan on one thread whose padded buffers hold NaN before the forward;
 * counts[l]: the values of layout l (0 plain, VMC_PAD_*). */
static float *logits_poisoned(vmc_graph *g, size_t *count, int counts[3]) {
  vmc_set_threads(1);
  vmc_plan *p = NULL;
  float *out = NULL;
  if (vmc_plan_create(g, 1, VMC_MODE_INFER, &p)) goto done;
  counts[0] = counts[1] = counts[2] = 0;
  for (int v = 0; v < p->g->n_values; v++) {
    const int lay = p->padded ? p->padded[v] : 0;
    counts[lay]++;
    if (!lay) continue;
    const size_t n = vmc_padded_of(&p->shape[v]).image * (size_t)p->shape[v].d[0];
    for (size_t i = 0; i < n; i++) p->act[v][i] = NAN;
  }
  vmc_rng r;
  vmc_rng_seed(&r, 3);
  float *x = vmc_plan_input(p);
  for (size_t i = 0; i < vmc_shape_count(&g->in_shape); i++) x[i] = vmc_rng_normal(&r);
  if (vmc_plan_forward(p, 1)) goto done;
  const vmc_shape *os = vmc_plan_value_shape(p, g->output);
  *count = vmc_shape_count(os);
  out = malloc(*count * sizeof(float));
  if (out) memcpy(out, vmc_plan_output(p), *count * sizeof(float));
done:
  vmc_plan_destroy(p);
  vmc_set_threads(0);
  return out;
}

/* Producers zero a padded value's borders only where a consumer reads
 * them: resnet8's Winograd and strided convolutions read pixels alone, so
 * the borders of their inputs keep whatever lay there (NaN here); with
 * Winograd off, the 3x3 convolutions' GEMMs read the borders, which are
 * then zeroed.  The logits are the plain layout's either way. */
TEST(plan_infer_padded_borders_zeroed_where_read) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11);
  REQUIRE(g);
  for (int wino = 1; wino >= 0; wino--) {
    if (!wino) setenv("VMC_WINOGRAD", "0", 1);
    size_t n0 = 0, n1 = 0;
    int counts[3] = {0, 0, 0};
    setenv("VMC_NO_PADDED", "1", 1);
    float *plain = logits(g, 1, 1, 1, &n0, NULL);
    unsetenv("VMC_NO_PADDED");
    float *padded = logits_poisoned(g, &n1, counts);
    REQUIRE(plain && padded && n0 == n1);
    if (memcmp(plain, padded, n0 * sizeof(float)))
      vmc_test_fail(__FILE__, __LINE__, "Winograd %d: NaN borders changed the logits", wino);
    /* With Winograd, each padded value: a conv's output read by Winograd
     * or strided convs; without, the 3x3 convs read their inputs' borders. */
    if (wino ? !(counts[VMC_PAD_PIXELS] > 0 && counts[VMC_PAD_ZEROS] == 0)
             : !(counts[VMC_PAD_ZEROS] > 0))
      vmc_test_fail(__FILE__, __LINE__, "Winograd %d: %d values with pixels only, %d zeroed", wino,
                    counts[VMC_PAD_PIXELS], counts[VMC_PAD_ZEROS]);
    if (!wino) unsetenv("VMC_WINOGRAD");
    free(plain), free(padded);
  }
  vmc_graph_free(g);
}

/* A conv with seeded weights and bias in a hand-built graph. */
static int hand_conv(vmc_graph *g, int in, const char *name, int cin, int oc, int k, int s, int p,
                     vmc_rng *r) {
  char pn[64];
  int prm[2], out = -1;
  snprintf(pn, sizeof pn, "%s.weight", name);
  if (vmc_graph_add_param(g, pn, vmc_shape4(oc, cin, k, k), 1, &prm[0])) return -1;
  snprintf(pn, sizeof pn, "%s.bias", name);
  if (vmc_graph_add_param(g, pn, (vmc_shape){1, {oc}}, 1, &prm[1])) return -1;
  for (int j = 0; j < 2; j++)
    for (size_t i = 0; i < vmc_shape_count(&g->params[prm[j]].shape); i++)
      g->params[prm[j]].data[i] = 0.3f * vmc_rng_normal(r);
  const vmc_attr a[] = {vmc_attr_int("out_c", oc), vmc_attr_int("kh", k), vmc_attr_int("sh", s),
                        vmc_attr_int("ph", p)};
  return vmc_graph_add_node(g, "conv2d", name, &in, 1, a, 4, prm, 2, &out) ? -1 : out;
}

static int hand_op(vmc_graph *g, const char *op, const char *name, int a, int b) {
  const int in[2] = {a, b};
  const vmc_attr mp[] = {vmc_attr_int("kh", 2)};
  const int pool = !strcmp(op, "maxpool");
  int out = -1;
  return vmc_graph_add_node(g, op, name, in, b >= 0 ? 2 : 1, pool ? mp : NULL, pool, NULL, 0,
                            &out) ? -1 : out;
}

/* What the zoo does not have: two adds in a row with no activation between
 * them (only the first may fold into the conv), an add mixing the padded
 * layout with the plain image, and a conv reading a padded input into a
 * plain output (a maxpool reads it). */
TEST(plan_infer_hand_graph_adds_and_layouts) {
  vmc_graph *g = NULL;
  REQUIRE(!vmc_graph_create(3, 9, 9, &g));
  vmc_rng r;
  vmc_rng_seed(&r, 5);
  const int x = g->input;
  const int s = hand_conv(g, x, "s", 3, 3, 3, 1, 1, &r);
  const int a = hand_conv(g, s, "a", 3, 3, 3, 1, 1, &r);
  const int y1 = hand_op(g, "add", "y1", a, s);
  const int y2 = hand_op(g, "add", "y2", y1, s);
  const int m = hand_op(g, "add", "m", y2, x);
  const int c = hand_conv(g, m, "c", 3, 4, 3, 1, 1, &r);
  const int mp = hand_op(g, "maxpool", "mp", c, -1);
  const int gp = hand_op(g, "gap", "gap", mp, -1);
  const int fl = hand_op(g, "flatten", "flat", gp, -1);
  REQUIRE(y1 >= 0 && y2 >= 0 && m >= 0 && fl >= 0);
  int prm[2], out = -1;
  REQUIRE(!vmc_graph_add_param(g, "fc.weight", vmc_shape2(2, 4), 1, &prm[0]));
  REQUIRE(!vmc_graph_add_param(g, "fc.bias", (vmc_shape){1, {2}}, 1, &prm[1]));
  for (int i = 0; i < 8; i++) g->params[prm[0]].data[i] = vmc_rng_normal(&r);
  const vmc_attr fa[] = {vmc_attr_int("out_f", 2)};
  REQUIRE(!vmc_graph_add_node(g, "linear", "fc", &fl, 1, fa, 1, prm, 2, &out));
  /* padded: s, a (+ y1 folded into it), y2, m; c is plain (the maxpool) */
  int np, nf;
  layout_counts(g, &np, &nf);
  if (np != 4 || nf != 1) vmc_test_fail(__FILE__, __LINE__, "%d padded outputs, %d folded adds", np, nf);
  size_t n0 = 0, n1 = 0;
  float *plain = logits_with(g, 3, 3, 3, &n0), *plain1 = logits_with(g, 3, 1, 2, &n1);
  REQUIRE(plain && plain1);
  for (int combo = 0; combo < 3; combo++) {
    size_t n2 = 0, n3 = 0;
    float *per_image = logits_with(g, combo, 3, 3, &n2), *single = logits_with(g, combo, 1, 2, &n3);
    REQUIRE(per_image && single && n0 == n2 && n1 == n3);
    if (memcmp(plain, per_image, n0 * sizeof(float)) || memcmp(plain1, single, n1 * sizeof(float)))
      vmc_test_fail(__FILE__, __LINE__, "combination %d changed the logits", combo);
    free(per_image), free(single);
  }
  free(plain), free(plain1);
  vmc_graph_free(g);
}

TEST(plan_fold_bn_only_where_exact) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11);
  REQUIRE(g);
  int *into = malloc((size_t)g->n_nodes * sizeof *into), count = 0;
  REQUIRE(into);
  CHECK_OK(vmc_graph_fold_bn(g, into, &count));
  int bns = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (strcmp(n->op->name, "batchnorm")) continue;
    bns++;
    REQUIRE(into[i] >= 0);
    const vmc_node *c = &g->nodes[into[i]];
    CHECK(!strcmp(c->op->name, "conv2d") && c->out == n->in[0] && c->n_param == 2);
  }
  CHECK(count == bns && bns == 9);
  free(into);
  vmc_graph_free(g);
}
