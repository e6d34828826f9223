/* Training: learning on real data, determinism, exact resume, schedules. */
#include "test.h"

#include <stdlib.h>
#include <unistd.h>

#include "data/data.h"
#include "io/io.h"
#include "train/train.h"

static vmc_dataset *synthetic(int n, uint64_t seed) {
  /* Class k: a bright k-th horizontal band plus noise, 12x12 pixels. */
  uint8_t *img = malloc((size_t)n * 144), *lab = malloc((size_t)n);
  vmc_rng r;
  vmc_rng_seed(&r, seed);
  for (int i = 0; i < n; i++) {
    lab[i] = (uint8_t)(i % 4);
    for (int p = 0; p < 144; p++) {
      int row = p / 12, band = row / 3 == lab[i];
      img[i * 144 + p] = (uint8_t)(vmc_rng_below(&r, 80) + (band ? 150 : 0));
    }
  }
  vmc_dataset *d = NULL;
  vmc_status s = vmc_dataset_from_memory("bands", n, 1, 12, 12, 4, img, lab, NULL, NULL, &d);
  free(img);
  free(lab);
  return s ? NULL : d;
}

static void small_config(vmc_train_config *c) {
  vmc_train_config_default(c);
  c->epochs = 2;
  c->batch = 16;
  c->lr = 0.05f;
  c->augment = 1; /* exercises the data RNG, which resume must restore */
  c->quiet = 1;
}

static int same_weights(const vmc_graph *a, const vmc_graph *b) {
  if (a->n_params != b->n_params) return 0;
  for (int i = 0; i < a->n_params; i++)
    if (memcmp(a->params[i].data, b->params[i].data,
               vmc_shape_count(&a->params[i].shape) * sizeof(float)))
      return 0;
  return 1;
}

TEST(train_synthetic_learns_and_is_deterministic) {
  vmc_dataset *d = synthetic(96, 3);
  REQUIRE(d);
  vmc_train_config c;
  small_config(&c);
  vmc_graph *g1 = NULL, *g2 = NULL;
  vmc_train_result r1, r2;
  REQUIRE_OK(vmc_zoo_build("resnet8", 1, 12, 12, 4, 7, &g1));
  REQUIRE_OK(vmc_zoo_build("resnet8", 1, 12, 12, 4, 7, &g2));
  CHECK_OK(vmc_train(g1, d, d, &c, NULL, NULL, NULL, &r1));
  CHECK_OK(vmc_train(g2, d, d, &c, NULL, NULL, NULL, &r2));
  CHECK(same_weights(g1, g2));
  CHECK(r1.last.test_acc > 0.5f);
  vmc_graph_free(g1);
  vmc_graph_free(g2);
  vmc_dataset_free(d);
}

typedef struct {
  const char *from, *to;
  int at_epoch;
} copy_at;

/* Epoch callback: keep a copy of the checkpoint written after epoch N. */
static void copy_checkpoint(void *user, const vmc_epoch_result *r) {
  const copy_at *c = user;
  if (r->epoch != c->at_epoch) return;
  FILE *in = fopen(c->from, "rb"), *out = fopen(c->to, "wb");
  char buf[4096];
  size_t n;
  while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
  if (in) fclose(in);
  if (out) fclose(out);
}

TEST(train_resume_matches_uninterrupted_run) {
  vmc_dataset *d = synthetic(80, 5);
  REQUIRE(d);
  char ckpt[512], ckpt2[512];
  snprintf(ckpt, sizeof ckpt, "%s/resume.ckpt", vmc_test_tmpdir());
  snprintf(ckpt2, sizeof ckpt2, "%s/resume-epoch2.ckpt", vmc_test_tmpdir());
  vmc_train_config c;
  small_config(&c);
  c.epochs = 3;
  c.checkpoint = ckpt;
  vmc_graph *full = NULL, *resumed = NULL;
  vmc_train_result r;
  /* Uninterrupted 3 epochs (with dropout-free mobilenet: BN, depthwise,
   * residual adds), keeping the checkpoint written after epoch 2. */
  copy_at cp = {ckpt, ckpt2, 2};
  REQUIRE_OK(vmc_zoo_build("mobilenetv2-tiny", 1, 12, 12, 4, 11, &full));
  REQUIRE_OK(vmc_train(full, d, NULL, &c, NULL, copy_checkpoint, &cp, &r));
  CHECK_EQ_INT(r.epochs_run, 3);
  /* Resume from epoch 2 in a fresh graph built from the checkpoint. */
  REQUIRE_OK(vmc_model_load(ckpt2, &resumed));
  CHECK(vmc_graph_meta(resumed, "checkpoint.epoch") && !strcmp(vmc_graph_meta(resumed, "checkpoint.epoch"), "2"));
  vmc_train_config c2 = c;
  c2.resume = ckpt2;
  c2.checkpoint = NULL;
  REQUIRE_OK(vmc_train(resumed, d, NULL, &c2, NULL, NULL, NULL, &r));
  CHECK_EQ_INT(r.epochs_run, 1);
  CHECK(same_weights(full, resumed));
  /* Another optimizer or batch than the checkpoint's: a clear error. */
  vmc_train_config c3 = c2;
  c3.epochs = 4;
  c3.optimizer = VMC_OPT_ADAMW;
  CHECK(vmc_train(resumed, d, NULL, &c3, NULL, NULL, NULL, &r) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "sgd") != NULL);
  c3 = c2;
  c3.epochs = 4;
  c3.batch = 8;
  CHECK(vmc_train(resumed, d, NULL, &c3, NULL, NULL, NULL, &r) == VMC_ERR_INVALID_ARG);
  /* Nothing left to do: a clear error. */
  c2.epochs = 2;
  CHECK(vmc_train(resumed, d, NULL, &c2, NULL, NULL, NULL, &r) == VMC_ERR_INVALID_ARG);
  vmc_graph_free(resumed);
  vmc_graph_free(full);
  vmc_dataset_free(d);
}

TEST(train_rejects_bad_config) {
  vmc_dataset *d = synthetic(16, 1);
  REQUIRE(d);
  vmc_graph *g = NULL;
  REQUIRE_OK(vmc_zoo_build("lenet5", 1, 12, 12, 4, 1, &g));
  vmc_train_config c;
  vmc_train_result r;
  small_config(&c);
  c.epochs = 0;
  CHECK(vmc_train(g, d, NULL, &c, NULL, NULL, NULL, &r) == VMC_ERR_INVALID_ARG);
  small_config(&c);
  c.lr = -1;
  CHECK(vmc_train(g, d, NULL, &c, NULL, NULL, NULL, &r) == VMC_ERR_INVALID_ARG);
  vmc_graph_free(g);
  /* Model input that does not match the data. */
  REQUIRE_OK(vmc_zoo_build("lenet5", 1, 28, 28, 4, 1, &g));
  small_config(&c);
  CHECK(vmc_train(g, d, NULL, &c, NULL, NULL, NULL, &r) == VMC_ERR_SHAPE);
  CHECK(strstr(vmc_last_error(), "28") != NULL);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

TEST(train_schedules) {
  vmc_train_config c;
  vmc_train_config_default(&c);
  c.lr = 1.0f;
  c.sched = VMC_SCHED_COSINE;
  CHECK_NEAR(vmc_sched_lr(&c, 0, 10, 100), 1.0, 1e-6);
  CHECK_NEAR(vmc_sched_lr(&c, 50, 10, 100), 0.5, 1e-6);
  c.sched = VMC_SCHED_STEP;
  c.step_size = 2;
  c.gamma = 0.1f;
  CHECK_NEAR(vmc_sched_lr(&c, 19, 10, 100), 1.0, 1e-6);
  CHECK_NEAR(vmc_sched_lr(&c, 20, 10, 100), 0.1, 1e-6);
  c.sched = VMC_SCHED_ONECYCLE;
  c.warmup_frac = 0.25f;
  CHECK_NEAR(vmc_sched_lr(&c, 0, 10, 100), 1.0 / 25, 1e-6);
  CHECK_NEAR(vmc_sched_lr(&c, 25, 10, 100), 1.0, 1e-6);
  CHECK(vmc_sched_lr(&c, 99, 10, 100) < 0.01);
}

/* A short run on a slice of the real Fashion-MNIST must learn. */
TEST(train_fashion_mnist_slice_learns) {
  vmc_dataset *tr = NULL, *te = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TRAIN, &tr) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  REQUIRE_OK(vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &te));
  vmc_graph *g = NULL;
  REQUIRE_OK(vmc_zoo_build("lenet5", 1, 28, 28, 10, 1, &g));
  vmc_train_config c;
  vmc_train_config_default(&c);
  c.epochs = 2;
  c.batch = 64;
  c.lr = 0.05f;
  c.limit_train = 3000;
  c.limit_test = 1000;
  c.quiet = 1;
  vmc_train_result r;
  REQUIRE_OK(vmc_train(g, tr, te, &c, NULL, NULL, NULL, &r));
  /* chance is 10% */
  CHECK(r.last.test_acc > 0.6f);
  vmc_graph_free(g);
  vmc_dataset_free(tr);
  vmc_dataset_free(te);
}

/* One forward + backward of a zoo model on a fixed batch; returns logits and
 * the concatenated parameter gradients (caller frees). */
static void step_grads(const char *model, float **logits, float **grads, size_t *ng) {
  vmc_graph *g = NULL;
  vmc_plan *p = NULL;
  *logits = *grads = NULL;
  if (vmc_zoo_build(model, 1, 12, 12, 4, 3, &g) || vmc_plan_create(g, 6, VMC_MODE_TRAIN, &p)) {
    vmc_graph_free(g);
    return;
  }
  vmc_rng r;
  vmc_rng_seed(&r, 9);
  for (int i = 0; i < 6 * 144; i++) vmc_plan_input(p)[i] = vmc_rng_normal(&r);
  vmc_plan_forward(p, 6);
  int labels[6] = {0, 1, 2, 3, 0, 1};
  *logits = malloc(24 * sizeof(float));
  memcpy(*logits, vmc_plan_output(p), 24 * sizeof(float));
  vmc_softmax_ce(vmc_plan_output(p), labels, 6, 4, 0, vmc_plan_output_grad(p));
  vmc_graph_zero_grads(g);
  vmc_plan_backward(p);
  size_t n = 0;
  for (int i = 0; i < g->n_params; i++)
    if (g->params[i].grad) n += vmc_shape_count(&g->params[i].shape);
  *grads = malloc(n * sizeof(float));
  *ng = 0;
  for (int i = 0; i < g->n_params; i++)
    if (g->params[i].grad) {
      size_t k = vmc_shape_count(&g->params[i].shape);
      memcpy(*grads + *ng, g->params[i].grad, k * sizeof(float));
      *ng += k;
    }
  vmc_plan_destroy(p);
  vmc_graph_free(g);
}

/* Plans fold relu/relu6 into the batchnorm or add before them; the result
 * must be bit-identical to running the activations as separate ops. */
TEST(train_fused_activations_match_unfused) {
  const char *models[] = {"resnet8", "mobilenetv2-tiny", "lenet5"};
  for (int m = 0; m < 3; m++) {
    float *l1, *g1, *l2, *g2;
    size_t n1 = 0, n2 = 0;
    step_grads(models[m], &l1, &g1, &n1);
    setenv("VMC_NO_FUSION", "1", 1);
    step_grads(models[m], &l2, &g2, &n2);
    unsetenv("VMC_NO_FUSION");
    REQUIRE(l1 && l2 && g1 && g2 && n1 == n2 && n1 > 0);
    CHECK(memcmp(l1, l2, 24 * sizeof(float)) == 0);
    CHECK(memcmp(g1, g2, n1 * sizeof(float)) == 0);
    free(l1), free(l2), free(g1), free(g2);
  }
}

/* Optimizer updates against hand-computed PyTorch semantics. */
static vmc_graph *one_param_graph(float w, float grad) {
  vmc_graph *g = NULL;
  int id;
  if (vmc_graph_create(1, 4, 4, &g) || vmc_graph_add_param(g, "w", (vmc_shape){1, {1}}, 1, &id) ||
      vmc_graph_alloc_grads(g)) {
    vmc_graph_free(g);
    return NULL;
  }
  g->params[id].data[0] = w;
  g->params[id].grad[0] = grad;
  return g;
}

TEST(train_optimizer_adamw_and_momentum) {
  vmc_train_config c;
  vmc_train_config_default(&c);
  c.optimizer = VMC_OPT_ADAMW;
  c.lr = 0.1f;
  c.weight_decay = 0.01f;
  vmc_graph *g = one_param_graph(1.0f, 0.5f);
  REQUIRE(g);
  vmc_optimizer *o = NULL;
  REQUIRE_OK(vmc_optim_create(g, &c, &o));
  vmc_optim_step(o, c.lr);
  /* decoupled decay: 1 - 0.1*0.01 = 0.999; then m^/(sqrt(v^)+eps) = 1 */
  CHECK_NEAR(g->params[0].data[0], 0.999 - 0.1, 1e-6);
  vmc_optim_free(o);
  vmc_graph_free(g);

  vmc_train_config_default(&c);
  c.lr = 0.1f;
  c.momentum = 0.9f;
  c.nesterov = 0;
  c.weight_decay = 0;
  g = one_param_graph(1.0f, 0.5f);
  REQUIRE(g);
  REQUIRE_OK(vmc_optim_create(g, &c, &o));
  vmc_optim_step(o, c.lr); /* buf 0.5 -> w 0.95 */
  vmc_optim_step(o, c.lr); /* buf 0.95 -> w 0.855 */
  CHECK_NEAR(g->params[0].data[0], 0.855, 1e-6);
  vmc_optim_free(o);
  vmc_graph_free(g);
}

/* A frozen (non-trainable) parameter has no gradient: training skips it. */
TEST(train_frozen_parameters_stay_put) {
  vmc_dataset *d = synthetic(32, 2);
  REQUIRE(d);
  vmc_graph *g = NULL;
  REQUIRE_OK(vmc_zoo_build("lenet5", 1, 12, 12, 4, 1, &g));
  const char *frozen[] = {"conv1.weight", "conv1.bias", "fc3.weight", "fc3.bias"};
  float before[4];
  for (int k = 0; k < 4; k++) {
    int i = vmc_graph_find_param(g, frozen[k]);
    REQUIRE(i >= 0);
    g->params[i].trainable = 0;
    before[k] = g->params[i].data[0];
  }
  vmc_train_config c;
  small_config(&c);
  vmc_train_result r;
  CHECK_OK(vmc_train(g, d, NULL, &c, NULL, NULL, NULL, &r));
  for (int k = 0; k < 4; k++) CHECK(g->params[vmc_graph_find_param(g, frozen[k])].data[0] == before[k]);
  CHECK(g->params[vmc_graph_find_param(g, "conv2.weight")].data[0] != 0);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}
