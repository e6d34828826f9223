/* Quantization-aware training (src/quant/qat.h): the straight-through mask
 * against its definition, one QAT step against the STE update computed by
 * hand, a few epochs lowering the loss and leaving valid codes, observer
 * freezing, learned scales, bad options, and vmc quantize --qat. */
#include "data/data.h"
#include "graph/plan.h"
#include "graph/rebuild.h"
#include "quant/qat.h"
#include "quant/qat_bn.h"
#include "cli_run.h"
#include "test.h"
#include "zoo_fixture.h"

#include <float.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static vmc_graph *lenet(void) {
  vmc_graph *g = NULL;
  return vmc_zoo_build("lenet5", 1, 28, 28, 10, 3, &g) ? NULL : g;
}

/* Small, quick defaults: SGD without momentum or decay, constant lr. */
static void quick_opts(vmc_qat_opts *o, int epochs, int images) {
  vmc_qat_opts_default(o);
  o->ptq.calib_images = 64;
  o->train.epochs = epochs;
  o->train.batch = 32;
  o->train.limit_train = images;
  o->train.sched = VMC_SCHED_CONSTANT;
  o->train.quiet = 1;
  o->freeze_observers_epoch = -1;
}

TEST(qat_ste_mask_matches_definition) {
  /* Two channels of s4 codes with scales that clip some weights. */
  const vmc_qparams p[2] = {{0.1f, 0, -7, 7}, {0.25f, 0, -7, 7}};
  float w[16], g[16];
  vmc_rng r;
  vmc_rng_seed(&r, 5);
  for (int i = 0; i < 16; i++) w[i] = (vmc_rng_uniform(&r) - 0.5f) * 4.0f, g[i] = 1.0f + i;
  w[0] = 0.74f;  /* round(7.4) = 7: kept */
  w[1] = 0.76f;  /* round(7.6) = 8: clipped */
  w[2] = -0.75f; /* -7.5 rounds to -8 (ties to even): clipped */
  w[3] = NAN;
  vmc_qat_ste_mask(w, 2, 8, p, g);
  for (int i = 0; i < 16; i++) {
    const double v = (double)(w[i] * (1.0f / p[i / 8].scale));
    const double code = nearbyint(v);
    const int inside = isfinite(v) && code >= -7 && code <= 7;
    CHECK_EQ_INT(g[i] != 0.0f, inside);
    if (inside) CHECK(g[i] == 1.0f + i);
  }
  CHECK(g[0] != 0 && g[1] == 0 && g[2] == 0 && g[3] == 0);
  /* Weight fake quantization: max |w| per channel, then the rule. */
  float wq[16], want[16];
  vmc_qparams wp[2];
  for (int i = 0; i < 16; i++) w[i] = (vmc_rng_uniform(&r) - 0.5f) * (i < 8 ? 1.0f : 3.0f);
  REQUIRE_OK(vmc_qat_fake_quantize_weights(w, 2, 8, VMC_QSCHEME_S4, wp, wq));
  for (int c = 0; c < 2; c++) {
    float amax = 0;
    for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(w[c * 8 + j]));
    CHECK(wp[c].scale == amax / 7.0f || fabsf(wp[c].scale - amax / 7.0f) <= 1e-7f * amax);
    CHECK_EQ_INT(wp[c].qmax, 7);
  }
  REQUIRE_OK(vmc_qfake_quantize(w, 2, 8, wp, want));
  for (int i = 0; i < 16; i++) CHECK(wq[i] == want[i]);
  /* With max |w| scales nothing is clipped: the mask keeps every gradient. */
  for (int i = 0; i < 16; i++) g[i] = 1.0f;
  vmc_qat_ste_mask(w, 2, 8, wp, g);
  for (int i = 0; i < 16; i++) CHECK(g[i] == 1.0f);
  w[5] = INFINITY;
  CHECK(vmc_qat_fake_quantize_weights(w, 2, 8, VMC_QSCHEME_S4, wp, wq) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_qat_fake_quantize_weights(w, 2, 8, VMC_QSCHEME_U8, wp, wq) == VMC_ERR_INVALID_ARG);
}

/* One step of QAT (one batch, plain SGD, observers frozen) equals the STE
 * update by hand: g = dL/d fq(w) on the PTQ graph, w' = w - lr g,
 * result fq(w') with max |w'| scales. */
TEST(qat_one_step_is_the_ste_update) {
  vmc_graph *g = lenet();
  vmc_dataset *d = test_blobs(32, 2, 2, 20, 1);
  REQUIRE(g && d);
  vmc_qat_opts o;
  quick_opts(&o, 1, 32);
  o.train.momentum = 0;
  o.train.nesterov = 0;
  o.train.weight_decay = 0;
  o.train.lr = 0.05f;
  o.freeze_observers_epoch = 0;
  vmc_graph *q = NULL, *p = NULL;
  vmc_qat_report rep;
  REQUIRE_OK(vmc_qat(g, d, NULL, &o, &q, &rep));
  CHECK_EQ_INT(rep.epochs, 1);
  /* By hand on the PTQ graph: its weights are fq(w) of the float ones. */
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o.ptq, &p, NULL));
  vmc_plan *pl = NULL;
  REQUIRE_OK(vmc_plan_create(p, 32, VMC_MODE_TRAIN, &pl));
  int idx[32], y[32];
  for (int i = 0; i < 32; i++) idx[i] = i;
  vmc_dataset_batch(d, idx, 32, NULL, NULL, vmc_plan_input(pl), y);
  REQUIRE_OK(vmc_plan_forward(pl, 32));
  vmc_softmax_ce(vmc_plan_output(pl), y, 32, 10, 0, vmc_plan_output_grad(pl));
  vmc_graph_zero_grads(p);
  REQUIRE_OK(vmc_plan_backward(pl));
  int checked = 0;
  for (int i = 0; i < p->n_nodes; i++) {
    const vmc_node *n = &p->nodes[i];
    if (strcmp(n->op->name, "conv2d") && strcmp(n->op->name, "linear")) continue;
    const vmc_param *pw = &p->params[n->param[0]];
    const vmc_param *fw = &g->params[vmc_graph_find_param(g, pw->name)];
    const vmc_param *qw = &q->params[vmc_graph_find_param(q, pw->name)];
    const int ch = pw->shape.d[0];
    const size_t total = vmc_shape_count(&pw->shape), k = total / (size_t)ch;
    float *w1 = malloc(total * sizeof *w1), *want = malloc(total * sizeof *want);
    vmc_qparams *qp = malloc((size_t)ch * sizeof *qp);
    REQUIRE(w1 && want && qp);
    for (size_t j = 0; j < total; j++) w1[j] = fw->data[j] - o.train.lr * pw->grad[j];
    REQUIRE_OK(vmc_qat_fake_quantize_weights(w1, ch, k, VMC_QSCHEME_S8, qp, want));
    CHECK(qw->store == VMC_S8 && qw->n_qscale == ch);
    size_t moved = 0, off = 0;
    for (size_t j = 0; j < total; j++) {
      const float s = qp[j / k].scale;
      off += fabsf(qw->data[j] - want[j]) > 0.5f * s; /* summation order may flip a tie */
      moved += qw->data[j] != pw->data[j];
      CHECK(fabsf(qw->data[j] - want[j]) <= 1.01f * s);
    }
    CHECK(off * 100 <= total); /* at most 1% one step apart */
    CHECK(moved > 0);          /* the step changed codes */
    for (int c = 0; c < ch; c++) CHECK_NEAR(qw->qscale[c], qp[c].scale, 1e-6 * qp[c].scale + 1e-12);
    free(w1);
    free(want);
    free(qp);
    checked++;
  }
  CHECK_EQ_INT(checked, 5);
  /* Frozen observers: the activation qparams are the calibrated ones. */
  for (int i = 0; i < p->n_nodes; i++) {
    if (strcmp(p->nodes[i].op->name, "fakequant")) continue;
    const vmc_node *a = &p->nodes[i], *b = test_node_of(q, a->name);
    REQUIRE(b);
    CHECK(vmc_node_attr_f(a, "scale", 0) == vmc_node_attr_f(b, "scale", 1));
    CHECK_EQ_INT(vmc_node_attr_i(a, "zero_point", -1), vmc_node_attr_i(b, "zero_point", -2));
  }
  vmc_plan_destroy(pl);
  vmc_qat_report_free(&rep);
  vmc_graph_free(p);
  vmc_graph_free(q);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* Every weight an s8/s4 code times its scale, every bias on its s32 grid. */
static void check_contract(const vmc_graph *q, vmc_dtype wt, int act_qmax) {
  for (int i = 0; i < q->n_nodes; i++) {
    const vmc_node *n = &q->nodes[i];
    if (strcmp(n->op->name, "conv2d") && strcmp(n->op->name, "linear")) continue;
    const vmc_param *w = &q->params[n->param[0]];
    CHECK(w->store == wt);
    const int lim = wt == VMC_S4 ? 7 : 127;
    for (size_t j = 0; j < vmc_shape_count(&w->shape); j++) {
      const int code = vmc_param_code(w, j);
      CHECK(code >= -lim && code <= lim);
    }
    /* The fakequant it reads (through a flatten for the classifier). */
    int v = n->in[0];
    const vmc_node *src = NULL;
    for (int hop = 0; hop < 4; hop++) {
      for (int k = 0; k < q->n_nodes; k++)
        if (q->nodes[k].out == v) src = &q->nodes[k];
      if (!src || !strcmp(src->op->name, "fakequant")) break;
      v = src->in[0];
    }
    REQUIRE(src && !strcmp(src->op->name, "fakequant"));
    if (src->in[0] != q->input) CHECK_EQ_INT(vmc_node_attr_i(src, "qmax", 0), act_qmax);
    else CHECK_EQ_INT(vmc_node_attr_i(src, "qmax", 0), 255); /* the image stays u8 */
    if (n->n_param < 2) continue;
    const float sx = vmc_node_attr_f(src, "scale", 0);
    const float *b = q->params[n->param[1]].data;
    for (int c = 0; c < q->params[n->param[1]].shape.d[0]; c++) {
      const float sb = w->qscale[w->n_qscale > 1 ? c : 0] * sx;
      const double code = (double)b[c] / sb;
      CHECK(fabs(code - nearbyint(code)) < 1e-3 * fmax(1.0, fabs(code)));
    }
  }
}

TEST(qat_epochs_lower_the_loss_and_keep_codes) {
  vmc_graph *g = lenet();
  vmc_dataset *d = test_blobs(128, 3, 2, 20, 1), *t = test_blobs(64, 4, 2, 20, 1);
  REQUIRE(g && d && t);
  /* The float model: a few epochs so QAT starts from a trained one. */
  vmc_train_config tc;
  vmc_train_config_default(&tc);
  tc.epochs = 2;
  tc.batch = 32;
  tc.quiet = 1;
  vmc_train_result tr;
  REQUIRE_OK(vmc_train(g, d, NULL, &tc, NULL, NULL, NULL, &tr));
  static const struct {
    vmc_qscheme w, a;
    int lsq;
  } cases[] = {{VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0}, {VMC_QSCHEME_S4, VMC_QSCHEME_U4, 1},
               {VMC_QSCHEME_S4, VMC_QSCHEME_U4, 0}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    vmc_qat_opts o;
    quick_opts(&o, 2, 128);
    o.ptq.weight_scheme = cases[c].w;
    o.ptq.act_scheme = cases[c].a;
    o.learn_act_scales = cases[c].lsq;
    o.train.lr = 0.01f;
    o.freeze_observers_epoch = 1;
    vmc_graph *q = NULL;
    vmc_qat_report rep;
    REQUIRE_OK(vmc_qat(g, d, t, &o, &q, &rep));
    REQUIRE(rep.epochs == 2);
    CHECK(rep.epoch[1].train_loss < rep.epoch[0].train_loss);
    for (int e = 0; e < 2; e++) CHECK(rep.epoch[e].test_acc >= 0);
    check_contract(q, cases[c].w == VMC_QSCHEME_S4 ? VMC_S4 : VMC_S8,
                   cases[c].a == VMC_QSCHEME_U4 ? 15 : 255);
    const char *meta = vmc_graph_meta(q, "quant"), *hist = vmc_graph_meta(q, "history");
    REQUIRE(meta && hist);
    CHECK(strstr(meta, "\"method\":\"qat\"") != NULL);
    CHECK(strstr(hist, cases[c].a == VMC_QSCHEME_U4 ? "qat w4a4" : "qat w8a8") != NULL);
    /* The final qparams: in the graph and the report, not in the metadata. */
    CHECK(!strstr(meta, "\"node\"") && strlen(meta) < 1024);
    CHECK_EQ_INT(rep.n_fakequant, test_count_op(q, "fakequant"));
    for (int i = 0; i < rep.n_fakequant; i++) {
      const vmc_qat_fakequant *f = &rep.fakequant[i];
      const vmc_node *n = test_node_of(q, f->node);
      REQUIRE(n);
      CHECK(vmc_node_attr_f(n, "scale", 0) == f->qp.scale);
      CHECK_EQ_INT(vmc_node_attr_i(n, "zero_point", -1), f->qp.zero_point);
      CHECK_EQ_INT(vmc_node_attr_i(n, "qmax", -1), f->qp.qmax);
      CHECK(f->lo <= f->hi);
    }
    CHECK(rep.n_layers > 0);
    for (int i = 0; i < rep.n_layers; i++) {
      const vmc_qat_layer *l = &rep.layers[i];
      const vmc_node *n = test_node_of(q, l->node);
      REQUIRE(n);
      const vmc_param *w = &q->params[n->param[0]];
      CHECK_EQ_INT(l->weight_bits, w->store == VMC_S4 ? 4 : 8);
      CHECK_EQ_INT(l->channels, w->n_qscale);
      CHECK(l->w_scale_min == w->qscale[0] || w->n_qscale > 1);
      CHECK(l->w_scale_min <= l->w_scale_max);
    }
    /* The last epoch evaluated the result itself. */
    vmc_eval_result ev;
    REQUIRE_OK(vmc_evaluate(q, t, 64, 0, 0, &ev));
    CHECK(ev.accuracy == rep.epoch[1].test_acc);
    vmc_qat_report_free(&rep);
    vmc_graph_free(q);
  }
  vmc_graph_free(g);
  vmc_dataset_free(d);
  vmc_dataset_free(t);
}

/* Observers frozen after epoch 1 of 2 end where a 1-epoch run ends. */
TEST(qat_freezing_stops_observers) {
  vmc_graph *g = lenet();
  vmc_dataset *d = test_blobs(64, 6, 2, 20, 1);
  REQUIRE(g && d);
  vmc_graph *q[3] = {NULL, NULL, NULL};
  const int epochs[3] = {2, 1, 2}, freeze[3] = {1, -1, -1};
  for (int r = 0; r < 3; r++) {
    vmc_qat_opts o;
    quick_opts(&o, epochs[r], 64);
    o.freeze_observers_epoch = freeze[r];
    o.momentum = 0.2f;
    REQUIRE_OK(vmc_qat(g, d, NULL, &o, &q[r], NULL));
  }
  int n_fq = 0, moved = 0;
  for (int i = 0; i < q[0]->n_nodes; i++) {
    const vmc_node *a = &q[0]->nodes[i];
    if (strcmp(a->op->name, "fakequant")) continue;
    const vmc_node *b = test_node_of(q[1], a->name), *c = test_node_of(q[2], a->name);
    REQUIRE(b && c);
    CHECK(vmc_node_attr_f(a, "scale", 0) == vmc_node_attr_f(b, "scale", 1));
    CHECK_EQ_INT(vmc_node_attr_i(a, "zero_point", -1), vmc_node_attr_i(b, "zero_point", -2));
    moved += vmc_node_attr_f(a, "scale", 0) != vmc_node_attr_f(c, "scale", 0);
    n_fq++;
  }
  CHECK(n_fq >= 4);
  CHECK(moved > 0); /* unfrozen, the second epoch moves them */
  for (int r = 0; r < 3; r++) vmc_graph_free(q[r]);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* Per-layer rules of the PTQ pass (mixed precision) hold through QAT: a
 * 4-bit layer among 8-bit ones, an fp32 layer that trains in float. */
TEST(qat_keeps_per_layer_rules) {
  vmc_graph *g = lenet();
  vmc_dataset *d = test_blobs(64, 8, 2, 20, 1);
  REQUIRE(g && d);
  const vmc_ptq_rule rules[2] = {{"conv2", 4, 1}, {"fc1", 0, 1}};
  vmc_qat_opts o;
  quick_opts(&o, 1, 64);
  o.ptq.rules = rules;
  o.ptq.n_rules = 2;
  vmc_graph *q = NULL;
  REQUIRE_OK(vmc_qat(g, d, NULL, &o, &q, NULL));
  static const struct {
    const char *param;
    vmc_dtype store;
  } want[] = {{"conv1.weight", VMC_S8}, {"conv2.weight", VMC_S4}, {"fc1.weight", VMC_F32},
              {"fc2.weight", VMC_S8}, {"fc3.weight", VMC_S8}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const int id = vmc_graph_find_param(q, want[i].param);
    REQUIRE(id >= 0);
    CHECK_EQ_INT((int)q->params[id].store, (int)want[i].store);
  }
  /* The fp32 layer trained: its weights moved off the float start. */
  const int a = vmc_graph_find_param(q, "fc1.weight"), b = vmc_graph_find_param(g, "fc1.weight");
  size_t moved = 0;
  for (size_t j = 0; j < vmc_shape_count(&q->params[a].shape); j++)
    moved += q->params[a].data[j] != g->params[b].data[j];
  CHECK(moved > 0);
  vmc_graph_free(q);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* ---- BatchNorm learning before a freeze epoch (qat_bn.h) ------------------------- */

/* The training graph: the PTQ graph's nodes, each folded batchnorm back
 * after its conv (frozen 0), read where the conv was; folding it gives the
 * PTQ graph's nodes again. */
TEST(qat_bn_graph_unfolds_the_ptq_graph) {
  vmc_graph *g = test_zoo_model("resnet8", 3, 4), *q = NULL, *u = NULL, *f = NULL;
  vmc_dataset *d = test_blobs(64, 9, 2, 20, 1);
  REQUIRE(g && d);
  vmc_ptq_opts po;
  vmc_ptq_opts_default(&po);
  po.calib_images = 64;
  vmc_ptq_report pr;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &po, &q, &pr));
  int *bn_of = malloc((size_t)(q->n_nodes + g->n_nodes) * sizeof *bn_of);
  REQUIRE(bn_of);
  REQUIRE_OK(vmc_qat_bn_graph(g, q, &u, bn_of));
  CHECK(pr.bn_folded > 0);
  CHECK_EQ_INT(test_count_op(u, "batchnorm"), test_count_op(g, "batchnorm"));
  CHECK_EQ_INT(test_count_op(u, "fakequant"), test_count_op(q, "fakequant"));
  CHECK_EQ_INT(u->n_nodes, q->n_nodes + pr.bn_folded);
  int after = 0;
  for (int i = 0; i < u->n_nodes; i++) {
    const vmc_node *n = &u->nodes[i];
    if (!strcmp(n->op->name, "batchnorm")) CHECK_EQ_INT(vmc_node_attr_i(n, "frozen", -1), 0);
    if (bn_of[i] < 0) continue;
    after++;
    const vmc_node *bn = &u->nodes[bn_of[i]];
    CHECK(!strcmp(n->op->name, "conv2d") && !strcmp(bn->op->name, "batchnorm"));
    CHECK(bn_of[i] == i + 1 && bn->in[0] == n->out);
    /* The parameters are the model's (the weights before any fold). */
    const vmc_param *w = &u->params[n->param[0]];
    const vmc_param *gw = &g->params[vmc_graph_find_param(g, w->name)];
    CHECK(!memcmp(w->data, gw->data, vmc_shape_count(&w->shape) * sizeof(float)));
  }
  CHECK_EQ_INT(after, pr.bn_folded);
  REQUIRE_OK(vmc_graph_fold_bn_copy(u, &f, NULL));
  REQUIRE(f->n_nodes == q->n_nodes);
  for (int i = 0; i < q->n_nodes; i++) {
    const vmc_node *a = &q->nodes[i], *b = &f->nodes[i];
    CHECK(!strcmp(a->name, b->name) && a->op == b->op && a->n_in == b->n_in);
    for (int k = 0; k < a->n_in && k < b->n_in; k++)
      CHECK(!strcmp(q->values[a->in[k]].name, f->values[b->in[k]].name));
  }
  vmc_qat_bn_freeze(u, 1);
  for (int i = 0; i < u->n_nodes; i++)
    if (!strcmp(u->nodes[i].op->name, "batchnorm")) CHECK_EQ_INT(vmc_node_attr_i(&u->nodes[i], "frozen", -1), 1);
  free(bn_of);
  vmc_ptq_report_free(&pr);
  vmc_graph_free(f);
  vmc_graph_free(u);
  vmc_graph_free(q);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* Weights of a that differ from b's (same names). */
static int weights_moved(const vmc_graph *a, const vmc_graph *b) {
  int moved = 0;
  for (int i = 0; i < a->n_params; i++) {
    const int j = vmc_graph_find_param(b, a->params[i].name);
    for (size_t k = 0; j >= 0 && k < vmc_shape_count(&a->params[i].shape); k++)
      moved += a->params[i].data[k] != b->params[j].data[k];
  }
  return moved;
}

/* Same weights, biases and fakequant parameters (by name). */
static int same_graphs(const vmc_graph *a, const vmc_graph *b) {
  if (a->n_nodes != b->n_nodes || a->n_params != b->n_params) return 0;
  for (int i = 0; i < a->n_params; i++) {
    const int j = vmc_graph_find_param(b, a->params[i].name);
    if (j < 0 || !vmc_shape_eq(&a->params[i].shape, &b->params[j].shape) ||
        memcmp(a->params[i].data, b->params[j].data, vmc_shape_count(&a->params[i].shape) * sizeof(float)))
      return 0;
  }
  for (int i = 0; i < a->n_nodes; i++) {
    const vmc_node *n = &a->nodes[i], *m = test_node_of(b, n->name);
    if (!m || m->n_attr != n->n_attr || memcmp(m->attr, n->attr, (size_t)n->n_attr * sizeof *n->attr))
      return 0;
  }
  return 1;
}

/* QAT with batchnorms learning during epochs 1..F, at a learning rate too
 * small to move a weight (observers frozen): only the running statistics
 * change, and only before the freeze.  With their momentum 0 nothing
 * changes, and the result is bit for bit the one of BatchNorm folded from
 * the start: fq(w * a) is the folded weight's fake quantization. */
static vmc_graph *qat_bn_run(const vmc_graph *g, const vmc_dataset *d, int epochs, int freeze_bn) {
  vmc_qat_opts o;
  quick_opts(&o, epochs, 64);
  o.ptq.calib_images = 64;
  o.train.lr = 1e-30f;
  o.freeze_observers_epoch = 0;
  o.freeze_bn_epoch = freeze_bn;
  vmc_graph *q = NULL;
  if (vmc_qat(g, d, NULL, &o, &q, NULL)) {
    vmc_test_fail(__FILE__, __LINE__, "qat: %s", vmc_last_error());
    return NULL;
  }
  CHECK_EQ_INT(test_count_op(q, "batchnorm"), 0);
  check_contract(q, VMC_S8, 255);
  return q;
}

TEST(qat_bn_statistics_learn_until_the_freeze) {
  vmc_graph *g = test_zoo_model("resnet8", 5, 6);
  vmc_dataset *d = test_blobs(64, 10, 2, 20, 1);
  REQUIRE(g && d);
  vmc_graph *folded = qat_bn_run(g, d, 1, 0), *e1 = qat_bn_run(g, d, 1, 1),
            *e2f1 = qat_bn_run(g, d, 2, 1), *e2f2 = qat_bn_run(g, d, 2, 2);
  REQUIRE(folded && e1 && e2f1 && e2f2);
  CHECK(!same_graphs(folded, e1)); /* epoch 1 moved the running statistics */
  CHECK(same_graphs(e1, e2f1));    /* frozen after epoch 1: epoch 2 moved nothing */
  CHECK(!same_graphs(e2f1, e2f2)); /* not frozen: epoch 2 moved them */
  const char *meta = vmc_graph_meta(e2f1, "quant"), *hist = vmc_graph_meta(e2f1, "history");
  REQUIRE(meta && hist);
  CHECK(strstr(meta, "\"freeze_bn_epoch\":1") != NULL);
  CHECK(strstr(hist, "batch statistics in epochs 1..1, then frozen") != NULL);
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].op->name, "batchnorm"))
      for (int k = 0; k < g->nodes[i].n_attr; k++)
        if (!strcmp(g->nodes[i].attr[k].key, "momentum")) g->nodes[i].attr[k].f = 0.0f;
  vmc_graph *still = qat_bn_run(g, d, 1, 1), *still_folded = qat_bn_run(g, d, 1, 0);
  REQUIRE(still && still_folded);
  CHECK(same_graphs(still, still_folded));
  vmc_graph_free(still);
  vmc_graph_free(still_folded);
  vmc_graph_free(folded);
  vmc_graph_free(e1);
  vmc_graph_free(e2f1);
  vmc_graph_free(e2f2);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* Real fine-tuning with batch statistics in epoch 1 lowers the loss and
 * ends in the PTQ contract, which the integer runtime runs. */
TEST(qat_bn_fine_tuning) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 8), *q = NULL;
  vmc_dataset *d = test_blobs(128, 11, 2, 20, 1), *t = test_blobs(64, 12, 2, 20, 1);
  REQUIRE(g && d && t);
  vmc_qat_opts o;
  quick_opts(&o, 2, 128);
  o.train.lr = 0.02f;
  o.freeze_observers_epoch = 1;
  o.freeze_bn_epoch = 1;
  vmc_qat_report rep;
  REQUIRE_OK(vmc_qat(g, d, t, &o, &q, &rep));
  REQUIRE(rep.epochs == 2);
  CHECK(rep.epoch[1].train_loss < rep.epoch[0].train_loss);
  CHECK_EQ_INT(test_count_op(q, "batchnorm"), 0);
  check_contract(q, VMC_S8, 255);
  /* The last epoch evaluated the graph before the fold, with each beta set
   * so that the folded bias lies on its s32 grid: the folded graph's
   * accuracy, up to the rounding of the fold. */
  vmc_eval_result ev;
  REQUIRE_OK(vmc_evaluate(q, t, 64, 0, 0, &ev));
  CHECK(fabsf(ev.accuracy - rep.epoch[1].test_acc) <= 1.0f / 64);
  vmc_qat_report_free(&rep);
  vmc_graph_free(q);
  vmc_graph_free(g);
  vmc_dataset_free(d);
  vmc_dataset_free(t);
}

/* ---- checkpoints ---------------------------------------------------------------- */

/* Two epochs in one run, or one epoch, a checkpoint, and a resumed run to
 * two: the same bits (moving averages, LSQ scales, BatchNorm statistics and
 * the shadows all carried over). */
static void check_resume(vmc_graph *g, const vmc_dataset *d, vmc_qat_opts o, const char *tag) {
  char ck[512];
  snprintf(ck, sizeof ck, "%s/qat_%s.ckpt.vmc", vmc_test_tmpdir(), tag);
  vmc_graph *whole = NULL, *first = NULL, *resumed = NULL;
  o.train.epochs = 2;
  REQUIRE_OK(vmc_qat(g, d, NULL, &o, &whole, NULL));
  o.train.epochs = 1;
  o.train.checkpoint = ck;
  REQUIRE_OK(vmc_qat(g, d, NULL, &o, &first, NULL));
  o.train.epochs = 2;
  o.train.checkpoint = NULL;
  o.train.resume = ck;
  REQUIRE_OK(vmc_qat(g, d, NULL, &o, &resumed, NULL));
  if (!same_graphs(whole, resumed)) vmc_test_fail(__FILE__, __LINE__, "%s: resumed != whole", tag);
  CHECK(weights_moved(whole, first) > 0); /* epoch 2 changed weights */
  CHECK(vmc_graph_meta(resumed, "checkpoint.qat") == NULL);
  /* Another QAT configuration cannot resume it. */
  o.ptq.weight_scheme = o.ptq.weight_scheme == VMC_QSCHEME_S4 ? VMC_QSCHEME_S8 : VMC_QSCHEME_S4;
  vmc_graph *q = NULL;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "another QAT run") != NULL && q == NULL);
  vmc_graph_free(whole);
  vmc_graph_free(first);
  vmc_graph_free(resumed);
}

TEST(qat_checkpoint_resume_is_exact) {
  vmc_graph *l5 = lenet(), *r8 = test_zoo_model("resnet8", 9, 10);
  vmc_dataset *d = test_blobs(64, 13, 2, 20, 1);
  REQUIRE(l5 && r8 && d);
  vmc_qat_opts o;
  quick_opts(&o, 2, 64);
  o.train.lr = 0.05f;
  o.freeze_observers_epoch = 1;
  o.ptq.weight_scheme = VMC_QSCHEME_S4;
  o.ptq.act_scheme = VMC_QSCHEME_U4;
  o.learn_act_scales = 1;
  check_resume(l5, d, o, "lenet_w4a4_lsq");
  quick_opts(&o, 2, 64);
  o.train.lr = 0.01f;
  o.freeze_observers_epoch = -1;
  o.freeze_bn_epoch = 1;
  check_resume(r8, d, o, "resnet8_bn");
  /* A plain training checkpoint holds no QAT state. */
  char ck[512];
  snprintf(ck, sizeof ck, "%s/qat_plain.ckpt.vmc", vmc_test_tmpdir());
  vmc_train_config tc;
  vmc_train_config_default(&tc);
  tc.epochs = 1;
  tc.batch = 32;
  tc.limit_train = 64;
  tc.quiet = 1;
  tc.checkpoint = ck;
  vmc_graph *l5b = lenet(), *q = NULL;
  REQUIRE(l5b);
  vmc_train_result tr;
  REQUIRE_OK(vmc_train(l5b, d, NULL, &tc, NULL, NULL, NULL, &tr));
  quick_opts(&o, 2, 64);
  o.train.resume = ck;
  CHECK(vmc_qat(l5, d, NULL, &o, &q, NULL) != VMC_OK && q == NULL);
  vmc_graph_free(l5b);
  vmc_graph_free(l5);
  vmc_graph_free(r8);
  vmc_dataset_free(d);
}

TEST(qat_rejects_bad_options) {
  vmc_graph *g = lenet();
  vmc_dataset *d = test_blobs(16, 7, 2, 20, 1);
  REQUIRE(g && d);
  vmc_qat_opts o;
  vmc_graph *q = (vmc_graph *)1;
  quick_opts(&o, 1, 16);
  o.ptq.act_scheme = VMC_QSCHEME_S4;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) == VMC_ERR_UNSUPPORTED);
  CHECK(strstr(vmc_last_error(), "s4") != NULL);
  CHECK(q == NULL);
  quick_opts(&o, 1, 16);
  o.momentum = 0;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "momentum") != NULL);
  quick_opts(&o, 2, 16);
  o.freeze_observers_epoch = 3;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "--freeze-observers-epoch") != NULL);
  quick_opts(&o, 2, 16);
  o.freeze_bn_epoch = 3;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "--freeze-bn-epoch") != NULL);
  o.freeze_bn_epoch = 1;
  o.fixed_weight_scales = 1;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "--fixed-weight-scales") != NULL);
  quick_opts(&o, 1, 16);
  o.ptq.weight_scheme = VMC_QSCHEME_U8;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) != VMC_OK);
  CHECK(strstr(vmc_last_error(), "symmetric") != NULL);
  quick_opts(&o, 1, 16);
  o.train.lr = 1e9f;
  CHECK(vmc_qat(g, d, NULL, &o, &q, NULL) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "lr") != NULL);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

/* ---- vmc quantize --qat ---------------------------------------------------------- */

/* Two files with the same bytes. */
static int same_file(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  int same = fa && fb, c;
  while (same && (c = fgetc(fa)) != EOF) same = c == fgetc(fb);
  if (same) same = fgetc(fb) == EOF;
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}

static char g_out[1 << 16];

TEST(qat_cli) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize --help"), 0);
  CHECK(strstr(g_out, "--qat") && strstr(g_out, "--freeze-observers-epoch"));
  vmc_dataset *probe = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &probe) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  vmc_dataset_free(probe);
  char in[512], out[512];
  snprintf(in, sizeof in, "%s/qat_l5.vmc", vmc_test_tmpdir());
  snprintf(out, sizeof out, "%s/qat_l5q.vmc", vmc_test_tmpdir());
  vmc_graph *g = lenet();
  REQUIRE(g);
  REQUIRE_OK(vmc_graph_set_meta(g, "dataset", "fashion-mnist"));
  REQUIRE_OK(vmc_model_save(g, in));
  vmc_graph_free(g);
  static const struct {
    const char *args, *msg;
  } bad[] = {
      {"--scheme w4a4", "need --qat"},
      {"--scheme w8a4", "need --qat"},
      {"--epochs 2", "for --qat"},
      {"--qat --epochs 2 --freeze-bn-epoch 3", "--freeze-bn-epoch"},
      {"--qat --freeze-bn-epoch 1 --fixed-weight-scales", "--fixed-weight-scales"},
      {"--qat --scheme w4a4 --act s8", "drop --act"},
      {"--qat --epochs 0", "--epochs"},
      {"--qat --act-ranges kl", "ema or lsq"},
      {"--qat --epochs 2 --freeze-observers-epoch 3", "--freeze-observers-epoch"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const int rc = run(g_out, sizeof g_out, "quantize %s %s --limit-train 64 -o %s", in,
                       bad[i].args, out);
    if (rc == 0 || !strstr(g_out, bad[i].msg))
      vmc_test_fail(__FILE__, __LINE__, "'%s' exited %d: %s", bad[i].args, rc, g_out);
    struct stat st;
    CHECK(stat(out, &st) != 0);
  }
  int rc = run(g_out, sizeof g_out, "quantize %s --qat --scheme w4a4 --epochs 2 --limit-train 256 "
               "--calib-images 64 --eval-limit 200 --json --threads 2 -o %s", in, out);
  REQUIRE(rc == 0);
  CHECK(strstr(g_out, "\"qat_accuracy\"") && strstr(g_out, "\"epochs\""));
  CHECK(strstr(g_out, "\"test_accuracy\"") != NULL);
  CHECK(strstr(g_out, "\"fakequant\":") && strstr(g_out, "\"range\":\t\"lsq\"") &&
        strstr(g_out, "\"weight_bits\":\t4"));
  rc = run(g_out, sizeof g_out, "info %s", out);
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "qat w4a4") && strstr(g_out, "\"method\":\"qat\""));
  /* Text progress: one line per epoch. */
  rc = run(g_out, sizeof g_out, "quantize %s --qat --epochs 1 --limit-train 128 --calib-images 32 "
           "--eval-limit 100 --threads 2 -o %s", in, out);
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "qat epoch   1") != NULL);
  /* A checkpoint after epoch 1, resumed to epoch 2: the file of one run. */
  char ck[512], whole[512];
  snprintf(ck, sizeof ck, "%s/qat_l5.ckpt.vmc", vmc_test_tmpdir());
  snprintf(whole, sizeof whole, "%s/qat_l5q2.vmc", vmc_test_tmpdir());
  static const char *common = "--qat --limit-train 128 --calib-images 32 --threads 2";
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s %s --epochs 2 -o %s", in, common, whole), 0);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s %s --epochs 1 --checkpoint %s -o %s", in,
                   common, ck, out), 0);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "quantize %s %s --epochs 2 --resume %s -o %s", in,
                   common, ck, out), 0);
  CHECK(same_file(whole, out));
  rc = run(g_out, sizeof g_out, "quantize %s %s --epochs 2 --scheme w4a8 --resume %s -o %s", in,
           common, ck, out);
  CHECK(rc != 0 && strstr(g_out, "another QAT run"));
  rc = run(g_out, sizeof g_out, "quantize %s --resume %s -o %s", in, ck, out);
  CHECK(rc != 0 && strstr(g_out, "for --qat"));
  remove(in);
  remove(out);
  remove(ck);
  remove(whole);
}
