/* Ops, the loss and one whole resnet8 training step against PyTorch 1.13,
 * through the fixtures tests/fixtures/make_fixtures.py wrote (format and
 * tensor names documented there and in tests/fixture.h).
 *
 * Op cases are data-driven: each "OP:CASE/..." group in ops.vmcfix gives the
 * mode, attributes, inputs and parameters; the op runs through its table
 * (tests/op_harness.h) with 1 and 2 threads, and y, dx, parameter grads and
 * any parameter the forward updates (BatchNorm running statistics) must
 * match PyTorch within OP_TOL (max |a-b| / (1+|b|), vmc_test_max_rel): float32
 * on both sides, different summation orders.
 *
 * The resnet8 step (resnet8_step.vmcfix) loads PyTorch's initial weights by
 * name into vmc_zoo_build("resnet8") -- every parameter must be found, and
 * every fixture tensor must be a parameter -- then checks the inference
 * logits, the training logits, the loss, and every weight and running
 * statistic after backward + one SGD step (nesterov, weight decay). */
#include "fixture.h"
#include "op_harness.h"
#include "test.h"
#include "train/train.h"

#include <stdlib.h>
#include <string.h>

#ifndef OP_TOL
#define OP_TOL 1e-4
#endif
#ifndef NET_TOL
#define NET_TOL 1e-4
#endif

static vmc_fix *load(const char *name) {
  char path[512];
  vmc_fix *f = NULL;
  if (vmc_fix_load(vmc_test_fixture(name, path, sizeof path), &f)) {
    vmc_test_fail(__FILE__, __LINE__, "%s", vmc_last_error());
    return NULL;
  }
  return f;
}

/* Compares n floats with fixture tensor t (shape count must match). */
static void cmp(const char *cs, const char *field, const float *a, size_t n,
                const vmc_fix_tensor *t, double tol) {
  if (!t) {
    vmc_test_fail(__FILE__, __LINE__, "%s: fixture has no '%s'", cs, field);
    return;
  }
  if (t->count != n) {
    vmc_test_fail(__FILE__, __LINE__, "%s %s: %zu values, fixture has %zu", cs, field, n,
                  t->count);
    return;
  }
  double e = vmc_test_max_rel(a, t->data, n);
  if (!(e <= tol)) {
    size_t wi = 0;
    double w = -1;
    for (size_t i = 0; i < n; i++) {
      double d = fabs((double)a[i] - t->data[i]) / (1 + fabs((double)t->data[i]));
      if (!(d <= w)) {
        w = d;
        wi = i;
      }
    }
    vmc_test_fail(__FILE__, __LINE__, "%s %s: max rel error %.3g at %zu: vmc %.7g, torch %.7g",
                  cs, field, e, wi, (double)a[wi], (double)t->data[wi]);
  }
}

/* ---- op cases ------------------------------------------------------------- */

/* Runs the case "op:cs" with nt threads. */
static void run_op_case(const vmc_fix *f, const char *cs, int nt) {
  char label[160];
  snprintf(label, sizeof label, "%s (%d thread%s)", cs, nt, nt > 1 ? "s" : "");
  const char *colon = strchr(cs, ':');
  char op[32];
  snprintf(op, sizeof op, "%.*s", (int)(colon - cs), cs);
  vmc_oph_spec s = {.op = op, .nthreads = nt};
  const vmc_fix_tensor *t = vmc_fix_getf(f, "%s/mode", cs);
  s.mode = t && t->data[0] == 1.0f ? VMC_MODE_TRAIN : VMC_MODE_INFER;
  /* attributes: every "cs/attr.KEY" */
  char pre[128];
  int pl = snprintf(pre, sizeof pre, "%s/attr.", cs);
  for (int i = 0; i < f->n; i++) {
    if (strncmp(f->t[i].name, pre, (size_t)pl)) continue;
    if (s.n_attr == VMC_MAX_ATTRS || strlen(f->t[i].name + pl) >= VMC_ATTR_KEY_MAX) {
      vmc_test_fail(__FILE__, __LINE__, "%s: bad attribute %s", label, f->t[i].name);
      return;
    }
    s.attr[s.n_attr++] = vmc_attr_float(f->t[i].name + pl, f->t[i].data[0]);
  }
  const vmc_fix_tensor *xt[VMC_MAX_INPUTS], *pt[VMC_MAX_PARAMS];
  while (s.n_in < VMC_MAX_INPUTS && (xt[s.n_in] = vmc_fix_getf(f, "%s/x%d", cs, s.n_in))) {
    if (!vmc_fix_shape(xt[s.n_in], &s.in[s.n_in])) {
      vmc_test_fail(__FILE__, __LINE__, "%s: input %d has a bad shape", label, s.n_in);
      return;
    }
    s.n_in++;
  }
  while (s.n_param < VMC_MAX_PARAMS && (pt[s.n_param] = vmc_fix_getf(f, "%s/p%d", cs, s.n_param))) {
    if (!vmc_fix_shape(pt[s.n_param], &s.pshape[s.n_param])) {
      vmc_test_fail(__FILE__, __LINE__, "%s: param %d has a bad shape", label, s.n_param);
      return;
    }
    s.pbuffer[s.n_param] = vmc_fix_getf(f, "%s/dp%d", cs, s.n_param) == NULL;
    s.n_param++;
  }
  vmc_oph *h;
  vmc_set_threads(nt);
  if (vmc_oph_create(&s, &h)) {
    vmc_test_fail(__FILE__, __LINE__, "%s: %s", label, vmc_last_error());
    return;
  }
  for (int k = 0; k < s.n_in; k++) memcpy(h->x[k], xt[k]->data, h->xn[k] * sizeof(float));
  for (int k = 0; k < s.n_param; k++)
    memcpy(vmc_oph_param(h, k), pt[k]->data, vmc_oph_param_count(h, k) * sizeof(float));
  vmc_oph_forward(h, 0);
  cmp(label, "y", h->y, h->yn, vmc_fix_getf(f, "%s/y", cs), OP_TOL);
  for (int k = 0; k < s.n_param; k++) {
    const vmc_fix_tensor *after = vmc_fix_getf(f, "%s/p%d_after", cs, k);
    char field[32];
    snprintf(field, sizeof field, "p%d after forward", k);
    cmp(label, field, vmc_oph_param(h, k), vmc_oph_param_count(h, k), after ? after : pt[k],
        OP_TOL);
  }
  const vmc_fix_tensor *dy = vmc_fix_getf(f, "%s/dy", cs);
  if (!dy || dy->count != h->yn) {
    vmc_test_fail(__FILE__, __LINE__, "%s: fixture dy missing or of the wrong size", label);
    vmc_oph_free(h);
    return;
  }
  memcpy(h->dy, dy->data, h->yn * sizeof(float));
  vmc_oph_backward(h);
  for (int k = 0; k < s.n_in; k++) {
    char field[32];
    snprintf(field, sizeof field, "dx%d", k);
    cmp(label, field, h->dx[k], h->xn[k], vmc_fix_getf(f, "%s/dx%d", cs, k), OP_TOL);
  }
  for (int k = 0; k < s.n_param; k++) {
    if (s.pbuffer[k]) continue;
    char field[32];
    snprintf(field, sizeof field, "dp%d", k);
    cmp(label, field, vmc_oph_grad(h, k), vmc_oph_param_count(h, k),
        vmc_fix_getf(f, "%s/dp%d", cs, k), OP_TOL);
  }
  vmc_oph_free(h);
}

/* Every case of op `op` in ops.vmcfix; returns how many. */
static int run_op_cases(const char *op) {
  vmc_fix *f = load("ops.vmcfix");
  if (!f) return 0;
  int prev = vmc_get_threads(), n = 0;
  size_t ol = strlen(op);
  for (int i = 0; i < f->n; i++) {
    const char *nm = f->t[i].name;
    const char *slash = strrchr(nm, '/');
    if (strncmp(nm, op, ol) || nm[ol] != ':' || !slash || strcmp(slash, "/mode")) continue;
    char cs[128];
    snprintf(cs, sizeof cs, "%.*s", (int)(slash - nm), nm);
    for (int nt = 1; nt <= 2; nt++) run_op_case(f, cs, nt);
    n++;
  }
  vmc_set_threads(prev);
  vmc_fix_free(f);
  if (n == 0) vmc_test_fail(__FILE__, __LINE__, "ops.vmcfix has no case for op '%s'", op);
  return n;
}

TEST(ops_torch_conv2d) { CHECK(run_op_cases("conv2d") >= 10); }
TEST(ops_torch_batchnorm) { CHECK(run_op_cases("batchnorm") == 4); }
TEST(ops_torch_relu) { run_op_cases("relu"); }
TEST(ops_torch_relu6) { run_op_cases("relu6"); }
TEST(ops_torch_maxpool) { run_op_cases("maxpool"); }
TEST(ops_torch_avgpool) { run_op_cases("avgpool"); }
TEST(ops_torch_gap) { run_op_cases("gap"); }
TEST(ops_torch_linear) { run_op_cases("linear"); }
TEST(ops_torch_add) { run_op_cases("add"); }
TEST(ops_torch_concat) { run_op_cases("concat"); }
TEST(ops_torch_flatten) { run_op_cases("flatten"); }

/* Every registered op but dropout (random) and fakequant (PyTorch's rule is
 * checked on hand-computed cases in test_ptq.c) has PyTorch cases, and every
 * case names a registered op (or the loss). */
TEST(ops_torch_every_op_covered) {
  vmc_fix *f = load("ops.vmcfix");
  if (!f) return;
  int n;
  const vmc_op *const *ops = vmc_op_all(&n);
  for (int i = 0; i < n; i++) {
    if (!strcmp(ops[i]->name, "dropout") || !strcmp(ops[i]->name, "fakequant")) continue;
    int found = 0;
    size_t l = strlen(ops[i]->name);
    for (int k = 0; k < f->n && !found; k++)
      found = !strncmp(f->t[k].name, ops[i]->name, l) && f->t[k].name[l] == ':';
    if (!found) vmc_test_fail(__FILE__, __LINE__, "no PyTorch fixture for op '%s'", ops[i]->name);
  }
  for (int k = 0; k < f->n; k++) {
    const char *colon = strchr(f->t[k].name, ':');
    char op[32];
    if (!colon || colon - f->t[k].name >= (long)sizeof op) {
      vmc_test_fail(__FILE__, __LINE__, "fixture tensor '%s' is not OP:CASE/FIELD", f->t[k].name);
      continue;
    }
    snprintf(op, sizeof op, "%.*s", (int)(colon - f->t[k].name), f->t[k].name);
    if (strcmp(op, "softmax_ce") && !vmc_op_find(op))
      vmc_test_fail(__FILE__, __LINE__, "fixture names unknown op '%s'", op);
  }
  vmc_fix_free(f);
}

/* ---- softmax cross-entropy -------------------------------------------- */

TEST(ops_torch_softmax_ce) {
  vmc_fix *f = load("ops.vmcfix");
  if (!f) return;
  int cases = 0;
  for (int i = 0; i < f->n; i++) {
    const char *nm = f->t[i].name;
    size_t l = strlen(nm);
    if (strncmp(nm, "softmax_ce:", 11) || l < 7 || strcmp(nm + l - 7, "/logits")) continue;
    char cs[128];
    snprintf(cs, sizeof cs, "%.*s", (int)(l - 7), nm);
    const vmc_fix_tensor *lg = &f->t[i], *lb = vmc_fix_getf(f, "%s/labels", cs),
                         *sm = vmc_fix_getf(f, "%s/smoothing", cs),
                         *loss = vmc_fix_getf(f, "%s/loss", cs),
                         *dl = vmc_fix_getf(f, "%s/dlogits", cs);
    if (lg->ndim != 2 || !lb || !sm || !loss || !dl || lb->count != (size_t)lg->dims[0]) {
      vmc_test_fail(__FILE__, __LINE__, "%s: incomplete fixture", cs);
      continue;
    }
    const int n = (int)lg->dims[0], k = (int)lg->dims[1];
    int *labels = malloc((size_t)n * sizeof *labels);
    float *d = malloc(lg->count * sizeof *d);
    if (labels && d) {
      for (int j = 0; j < n; j++) labels[j] = (int)lb->data[j];
      float got = vmc_softmax_ce(lg->data, labels, n, k, sm->data[0], d);
      CHECK_NEAR(got, loss->data[0], 1e-5 * (1 + fabs(loss->data[0])));
      CHECK_NEAR(vmc_softmax_ce(lg->data, labels, n, k, sm->data[0], NULL), got, 1e-6);
      cmp(cs, "dlogits", d, lg->count, dl, 1e-5);
    }
    free(labels);
    free(d);
    cases++;
  }
  CHECK(cases >= 3);
  vmc_fix_free(f);
}

/* ---- the fixture reader ------------------------------------------------- */

/* A malformed fixture gives VMC_ERR_FORMAT, never a crash or an overread
 * (under ASan): every truncation, a flipped bit in every byte of a small
 * file, a bad magic, a wrong checksum. */
TEST(ops_torch_fixture_reader_rejects_malformed) {
  /* A tiny valid file: two tensors, then its CRC. */
  uint8_t buf[256];
  size_t n = 0;
  memcpy(buf, "VMCFIX01", 8);
  n = 8;
  const uint32_t count = 2;
  memcpy(buf + n, &count, 4);
  n += 4;
  static const char *names[2] = {"a", "bb/c"};
  for (int t = 0; t < 2; t++) {
    uint16_t nl = (uint16_t)strlen(names[t]);
    memcpy(buf + n, &nl, 2);
    n += 2;
    memcpy(buf + n, names[t], nl);
    n += nl;
    buf[n++] = (uint8_t)(t ? 2 : 0);
    if (t) {
      uint32_t dims[2] = {2, 3};
      memcpy(buf + n, dims, 8);
      n += 8;
    }
    for (int v = 0; v < (t ? 6 : 1); v++) {
      float x = (float)v + 0.5f;
      memcpy(buf + n, &x, 4);
      n += 4;
    }
  }
  uint32_t crc = vmc_crc32(0, buf, n);
  memcpy(buf + n, &crc, 4);
  n += 4;
  vmc_fix *f;
  REQUIRE_OK(vmc_fix_parse(buf, n, &f));
  CHECK_EQ_INT(f->n, 2);
  const vmc_fix_tensor *t = vmc_fix_get(f, "bb/c");
  REQUIRE(t && t->ndim == 2 && t->dims[0] == 2 && t->dims[1] == 3 && t->count == 6);
  CHECK(t->data[5] == 5.5f);
  CHECK(vmc_fix_get(f, "a") && vmc_fix_get(f, "a")->count == 1);
  CHECK(vmc_fix_get(f, "zz") == NULL);
  vmc_fix_free(f);
  for (size_t len = 0; len < n; len++) {
    uint8_t *cut = malloc(len ? len : 1); /* exact size: ASan sees overreads */
    memcpy(cut, buf, len);
    f = NULL;
    CHECK(vmc_fix_parse(cut, len, &f) == VMC_ERR_FORMAT && f == NULL);
    free(cut);
  }
  for (size_t i = 0; i < n; i++)
    for (int bit = 0; bit < 8; bit += 3) {
      buf[i] ^= (uint8_t)(1u << bit);
      f = NULL;
      CHECK(vmc_fix_parse(buf, n, &f) == VMC_ERR_FORMAT && f == NULL);
      buf[i] ^= (uint8_t)(1u << bit);
    }
  char path[512];
  CHECK(vmc_fix_load(vmc_test_fixture("no-such-file.vmcfix", path, sizeof path), &f) ==
        VMC_ERR_IO);
}

/* ---- resnet8: one training step ---------------------------------------- */

/* Copies every "PREFIX<param>" tensor into the graph; every parameter must
 * be found with its shape, and every PREFIX tensor must be a parameter. */
static int load_weights(vmc_graph *g, const vmc_fix *f, const char *prefix) {
  int ok = 1, n_pref = 0;
  size_t pl = strlen(prefix);
  for (int i = 0; i < f->n; i++) {
    if (strncmp(f->t[i].name, prefix, pl)) continue;
    n_pref++;
    if (vmc_graph_find_param(g, f->t[i].name + pl) < 0) {
      vmc_test_fail(__FILE__, __LINE__, "fixture tensor '%s' is not a vmc parameter",
                    f->t[i].name);
      ok = 0;
    }
  }
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    const vmc_fix_tensor *t = vmc_fix_getf(f, "%s%s", prefix, p->name);
    vmc_shape s;
    if (!t || !vmc_fix_shape(t, &s) || !vmc_shape_eq(&s, &p->shape)) {
      vmc_test_fail(__FILE__, __LINE__, "parameter '%s' is %s in the fixture", p->name,
                    t ? "of another shape" : "missing");
      ok = 0;
      continue;
    }
    memcpy(p->data, t->data, t->count * sizeof(float));
  }
  if (n_pref != g->n_params) {
    vmc_test_fail(__FILE__, __LINE__, "fixture has %d '%s' tensors, the graph %d parameters",
                  n_pref, prefix, g->n_params);
    ok = 0;
  }
  return ok;
}

TEST(ops_torch_resnet8_train_step) {
  vmc_fix *f = load("resnet8_step.vmcfix");
  if (!f) return;
  vmc_graph *g = NULL;
  vmc_plan *p = NULL;
  vmc_optimizer *opt = NULL;
  int *labels = NULL;
  const vmc_fix_tensor *x = vmc_fix_get(f, "input"), *lb = vmc_fix_get(f, "labels"),
                       *loss = vmc_fix_get(f, "loss");
  if (!x || !lb || !loss || x->count != 8 * 28 * 28 || lb->count != 8) {
    vmc_test_fail(__FILE__, __LINE__, "resnet8_step.vmcfix lacks input/labels/loss");
    goto done;
  }
  vmc_status s = vmc_zoo_build("resnet8", 1, 28, 28, 10, 1, &g);
  if (s) {
    vmc_test_fail(__FILE__, __LINE__, "zoo: %s", vmc_last_error());
    goto done;
  }
  if (!load_weights(g, f, "init/")) goto done;

  /* Inference with the initial weights: BatchNorm uses running statistics. */
  if ((s = vmc_plan_create(g, 8, VMC_MODE_INFER, &p))) goto fail;
  memcpy(vmc_plan_input(p), x->data, x->count * sizeof(float));
  if ((s = vmc_plan_forward(p, 8))) goto fail;
  cmp("resnet8 inference", "logits", vmc_plan_output(p), 80, vmc_fix_get(f, "logits_eval"),
      NET_TOL);
  vmc_plan_destroy(p);
  p = NULL;

  /* Training step. */
  if ((s = vmc_plan_create(g, 8, VMC_MODE_TRAIN, &p))) goto fail;
  memcpy(vmc_plan_input(p), x->data, x->count * sizeof(float));
  if ((s = vmc_plan_forward(p, 8))) goto fail;
  cmp("resnet8 training", "logits", vmc_plan_output(p), 80, vmc_fix_get(f, "logits"), NET_TOL);
  labels = malloc(8 * sizeof *labels);
  if (!labels) goto done;
  for (int i = 0; i < 8; i++) labels[i] = (int)lb->data[i];
  vmc_graph_zero_grads(g);
  float l = vmc_softmax_ce(vmc_plan_output(p), labels, 8, 10, 0.0f, vmc_plan_output_grad(p));
  CHECK_NEAR(l, loss->data[0], NET_TOL * (1 + fabs(loss->data[0])));
  if ((s = vmc_plan_backward(p))) goto fail;
  vmc_train_config cfg;
  vmc_train_config_default(&cfg);
  cfg.optimizer = VMC_OPT_SGD;
  cfg.lr = 0.1f;
  cfg.momentum = 0.9f;
  cfg.nesterov = 1;
  cfg.weight_decay = 5e-4f;
  const vmc_fix_tensor *hp_lr = vmc_fix_get(f, "hp.lr"), *hp_m = vmc_fix_get(f, "hp.momentum"),
                       *hp_wd = vmc_fix_get(f, "hp.weight_decay");
  CHECK(hp_lr && hp_lr->data[0] == cfg.lr && hp_m && hp_m->data[0] == cfg.momentum && hp_wd &&
        hp_wd->data[0] == cfg.weight_decay);
  if ((s = vmc_optim_create(g, &cfg, &opt))) goto fail;
  vmc_optim_step(opt, cfg.lr);

  /* Every weight and running statistic after the step. */
  int n_after = 0;
  for (int i = 0; i < f->n; i++) n_after += !strncmp(f->t[i].name, "after/", 6);
  CHECK_EQ_INT(n_after, g->n_params);
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *pr = &g->params[i];
    const vmc_fix_tensor *t = vmc_fix_getf(f, "after/%s", pr->name);
    char label[96];
    snprintf(label, sizeof label, "resnet8 after step: %s", pr->name);
    cmp(label, pr->trainable ? "weight" : "running stat", pr->data, vmc_shape_count(&pr->shape),
        t, NET_TOL);
  }
  goto done;
fail:
  vmc_test_fail(__FILE__, __LINE__, "%s: %s", vmc_status_str(s), vmc_last_error());
done:
  free(labels);
  if (opt) vmc_optim_free(opt);
  vmc_plan_destroy(p);
  vmc_graph_free(g);
  vmc_fix_free(f);
}
