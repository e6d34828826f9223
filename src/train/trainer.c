/* The training loop: shuffle, augment, forward, loss (+ hook terms),
 * backward, optimizer step, per-epoch evaluation and checkpoint.  Resume
 * restores weights, optimizer state, epoch and both RNG streams, so a resumed
 * run continues exactly as an uninterrupted one. */
#include "train/train.h"

#include "data/data.h"
#include "io/io.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void vmc_train_config_default(vmc_train_config *c) {
  memset(c, 0, sizeof *c);
  c->epochs = 8;
  c->batch = 128;
  c->optimizer = VMC_OPT_SGD;
  c->lr = 0.1f;
  c->momentum = 0.9f;
  c->nesterov = 1;
  c->weight_decay = 5e-4f;
  c->beta1 = 0.9f;
  c->beta2 = 0.999f;
  c->eps = 1e-8f;
  c->sched = VMC_SCHED_ONECYCLE;
  c->step_size = 30;
  c->gamma = 0.1f;
  c->warmup_frac = 0.25f;
  c->augment = 0; /* measured: short Fashion-MNIST schedules do better without */
  c->crop_pad = 2;
  c->flip = 1;
  c->seed = 1;
}

static int argmax(const float *z, int k) {
  int b = 0;
  for (int j = 1; j < k; j++)
    if (z[j] > z[b]) b = j;
  return b;
}

vmc_status vmc_evaluate(vmc_graph *g, const vmc_dataset *d, int batch, int limit,
                        int show_progress, vmc_eval_result *r) {
  return vmc_evaluate_logits(g, d, batch, limit, show_progress, r, NULL);
}

static vmc_status plan_forward(void *self, int n) { return vmc_plan_forward(self, n); }

vmc_status vmc_evaluate_logits(vmc_graph *g, const vmc_dataset *d, int batch, int limit,
                               int show_progress, vmc_eval_result *r, float **logits) {
  memset(r, 0, sizeof *r);
  if (logits) *logits = NULL;
  const int n = limit > 0 && limit < d->n ? limit : d->n;
  if (batch > n) batch = n;
  vmc_plan *p;
  VMC_TRY(vmc_plan_create(g, batch, VMC_MODE_INFER, &p));
  const vmc_shape *os = vmc_plan_value_shape(p, g->output);
  const vmc_infer_fn f = {.self = p, .batch = batch,
                          .classes = (int)(vmc_shape_count(os) / (size_t)os->d[0]),
                          .c = g->in_shape.d[1], .h = g->in_shape.d[2], .w = g->in_shape.d[3],
                          .input = vmc_plan_input(p), .output = vmc_plan_output(p),
                          .forward = plan_forward};
  vmc_status s = vmc_evaluate_with(&f, d, limit, show_progress, r, logits);
  vmc_plan_destroy(p);
  return s;
}

vmc_status vmc_evaluate_with(const vmc_infer_fn *f, const vmc_dataset *d, int limit,
                             int show_progress, vmc_eval_result *r, float **logits) {
  memset(r, 0, sizeof *r);
  if (logits) *logits = NULL;
  int n = d->n;
  if (limit > 0 && limit < n) n = limit;
  if (d->c != f->c || d->h != f->h || d->w != f->w)
    return vmc_error(VMC_ERR_SHAPE, "data set images are %dx%dx%d but the model takes %dx%dx%d",
                     d->c, d->h, d->w, f->c, f->h, f->w);
  const int batch = f->batch, k = f->classes;
  int *idx = vmc_malloc_plain((size_t)batch * sizeof *idx);
  int *y = vmc_malloc_plain((size_t)batch * sizeof *y);
  float *all = logits ? malloc((size_t)n * k * sizeof *all) : NULL;
  if (!idx || !y || (logits && !all)) {
    vmc_free(idx);
    vmc_free(y);
    free(all);
    return vmc_error(VMC_ERR_NOMEM, "evaluation");
  }
  vmc_progress bar;
  vmc_progress_start(&bar, "eval", n, show_progress);
  double loss = 0, t0 = vmc_now();
  long correct = 0;
  vmc_status s = VMC_OK;
  for (int off = 0; off < n && !s; off += batch) {
    int m = n - off < batch ? n - off : batch;
    for (int i = 0; i < m; i++) idx[i] = off + i;
    vmc_dataset_batch(d, idx, m, NULL, NULL, f->input, y);
    s = f->forward(f->self, m);
    if (s) break;
    const float *z = f->output;
    if (all) memcpy(all + (size_t)off * k, z, (size_t)m * k * sizeof *all);
    for (int i = 0; i < m; i++) {
      if (y[i] >= k) continue; /* label the model cannot predict: counts as wrong */
      correct += argmax(z + (size_t)i * k, k) == y[i];
      loss += (double)vmc_softmax_ce(z + (size_t)i * k, &y[i], 1, k, 0, NULL);
    }
    vmc_progress_update(&bar, off + m, NULL);
  }
  vmc_progress_finish(&bar);
  vmc_free(idx);
  vmc_free(y);
  if (s) {
    free(all);
    return s;
  }
  r->n = n;
  r->classes = k;
  if (logits) *logits = all;
  r->accuracy = (float)((double)correct / n);
  r->loss = (float)(loss / n);
  r->seconds = vmc_now() - t0;
  return VMC_OK;
}

/* ---- checkpoints ---- */

static void rng_to_hex(const vmc_rng *r, char *buf, size_t n) {
  snprintf(buf, n, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, r->s[0], r->s[1],
           r->s[2], r->s[3]);
}

static vmc_status rng_from_hex(const char *s, vmc_rng *r) {
  if (!s || strlen(s) != 64) return vmc_error(VMC_ERR_FORMAT, "checkpoint RNG state is missing");
  for (int i = 0; i < 4; i++) {
    char part[17];
    memcpy(part, s + 16 * i, 16);
    part[16] = 0;
    char *end;
    r->s[i] = strtoull(part, &end, 16);
    if (*end || !((part[0] >= '0' && part[0] <= '9') || (part[0] >= 'a' && part[0] <= 'f'))) return vmc_error(VMC_ERR_FORMAT, "checkpoint RNG state is malformed");
  }
  r->has_spare = 0;
  return VMC_OK;
}

static vmc_status save_checkpoint(vmc_graph *g, const vmc_optimizer *o, const vmc_train_config *c,
                                  int epochs_done, const vmc_rng *data_rng, const vmc_rng *plan_rng) {
  int n = 0;
  vmc_blob *b = vmc_malloc_plain((size_t)(2 * g->n_params + 1) * sizeof *b);
  if (!b) return vmc_error(VMC_ERR_NOMEM, "checkpoint");
  for (int i = 0; i < g->n_params; i++) {
    if (strlen(g->params[i].name) + 2 >= VMC_NAME_MAX) {
      vmc_free(b);
      return vmc_error(VMC_ERR_INVALID_ARG, "parameter name '%s' is too long for a checkpoint",
                       g->params[i].name);
    }
    if (o->m[i]) {
      snprintf(b[n].name, VMC_NAME_MAX, "m:%s", g->params[i].name);
      b[n].shape = g->params[i].shape;
      b[n++].data = o->m[i];
    }
    if (o->v[i]) {
      snprintf(b[n].name, VMC_NAME_MAX, "v:%s", g->params[i].name);
      b[n].shape = g->params[i].shape;
      b[n++].data = o->v[i];
    }
  }
  char buf[80];
  vmc_status s = VMC_OK;
  snprintf(buf, sizeof buf, "%d", epochs_done);
  s = vmc_graph_set_meta(g, "checkpoint.epoch", buf);
  snprintf(buf, sizeof buf, "%ld", o->step);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.step", buf);
  rng_to_hex(data_rng, buf, sizeof buf);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.rng.data", buf);
  rng_to_hex(plan_rng, buf, sizeof buf);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.rng.dropout", buf);
  snprintf(buf, sizeof buf, "%d", c->epochs);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.epochs_total", buf);
  snprintf(buf, sizeof buf, "%d", c->batch);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.batch", buf);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.optimizer", c->optimizer == VMC_OPT_ADAMW ? "adamw" : "sgd");
  snprintf(buf, sizeof buf, "%.9g", c->lr);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.lr", buf);
  snprintf(buf, sizeof buf, "%.9g", c->weight_decay);
  if (!s) s = vmc_graph_set_meta(g, "checkpoint.weight_decay", buf);
  if (!s) s = vmc_model_write(g, b, n, c->checkpoint);
  vmc_free(b);
  return s;
}

/* A whole decimal number in [lo, hi] from checkpoint metadata. */
static vmc_status meta_long(const vmc_graph *g, const char *key, long lo, long hi, const char *path,
                            long *out) {
  const char *v = vmc_graph_meta(g, key);
  char *end;
  long x = v ? strtol(v, &end, 10) : 0;
  if (!v || !*v || *end || x < lo || x > hi)
    return vmc_error(VMC_ERR_FORMAT, "checkpoint %s: '%s' is missing or out of range", path, key);
  *out = x;
  return VMC_OK;
}

static vmc_status load_checkpoint(vmc_graph *g, vmc_optimizer *o, const vmc_train_config *c,
                                  const char *path, int *epochs_done, vmc_rng *data_rng,
                                  vmc_rng *plan_rng) {
  vmc_graph *cg = NULL;
  vmc_blob *b = NULL;
  int nb = 0;
  VMC_TRY(vmc_model_read(path, &cg, &b, &nb));
  vmc_status s = VMC_OK;
  long ep = 0, st = 0, batch = 0;
  if (!vmc_graph_meta(cg, "checkpoint.epoch"))
    s = vmc_error(VMC_ERR_FORMAT, "%s is a model, not a training checkpoint", path);
  if (!s) s = meta_long(cg, "checkpoint.epoch", 0, 100000, path, &ep);
  if (!s) s = meta_long(cg, "checkpoint.step", 0, 1L << 40, path, &st);
  if (!s) s = meta_long(cg, "checkpoint.batch", 1, 65536, path, &batch);
  const char *opt = vmc_graph_meta(cg, "checkpoint.optimizer");
  const char *want = c->optimizer == VMC_OPT_ADAMW ? "adamw" : "sgd";
  if (!s && (!opt || strcmp(opt, want)))
    s = vmc_error(VMC_ERR_INVALID_ARG, "checkpoint %s was trained with %s, not %s", path,
                  opt ? opt : "?", want);
  if (!s && batch != c->batch)
    s = vmc_error(VMC_ERR_INVALID_ARG, "checkpoint %s was trained with batch %ld, not %d", path,
                  batch, c->batch);
  if (!s && cg->n_params != g->n_params)
    s = vmc_error(VMC_ERR_SHAPE, "checkpoint %s holds a different model", path);
  for (int i = 0; i < g->n_params && !s; i++) {
    int j = vmc_graph_find_param(cg, g->params[i].name);
    if (j < 0 || !vmc_shape_eq(&cg->params[j].shape, &g->params[i].shape)) {
      s = vmc_error(VMC_ERR_SHAPE, "checkpoint %s: parameter '%s' missing or of another shape", path,
                    g->params[i].name);
      break;
    }
    memcpy(g->params[i].data, cg->params[j].data,
           vmc_shape_count(&g->params[i].shape) * sizeof(float));
  }
  int restored = 0, want_blobs = 0;
  for (int i = 0; i < g->n_params; i++)
    want_blobs += (o->m[i] != NULL) + (o->v[i] != NULL);
  for (int k = 0; k < nb && !s; k++) {
    if (strlen(b[k].name) < 3 || b[k].name[1] != ':') continue;
    int i = vmc_graph_find_param(g, b[k].name + 2);
    float *dst = i < 0 ? NULL : b[k].name[0] == 'm' ? o->m[i] : b[k].name[0] == 'v' ? o->v[i] : NULL;
    if (!dst || !vmc_shape_eq(&b[k].shape, &g->params[i].shape)) {
      s = vmc_error(VMC_ERR_FORMAT, "checkpoint %s: optimizer state '%s' does not fit the model",
                    path, b[k].name);
      break;
    }
    memcpy(dst, b[k].data, vmc_shape_count(&b[k].shape) * sizeof(float));
    restored++;
  }
  if (!s && restored != want_blobs)
    s = vmc_error(VMC_ERR_FORMAT, "checkpoint %s holds %d of the %d optimizer state tensors", path,
                  restored, want_blobs);
  if (!s) {
    *epochs_done = (int)ep;
    o->step = st;
    s = rng_from_hex(vmc_graph_meta(cg, "checkpoint.rng.data"), data_rng);
  }
  if (!s) s = rng_from_hex(vmc_graph_meta(cg, "checkpoint.rng.dropout"), plan_rng);
  /* What a checkpoint hook stored (vmc_train_hooks.checkpoint) comes back
   * with the rest. */
  for (int i = 0; i < cg->n_meta && !s; i++)
    if (!strncmp(cg->meta[i].key, "checkpoint.", 11))
      s = vmc_graph_set_meta(g, cg->meta[i].key, cg->meta[i].value);
  vmc_blobs_free(b, nb);
  vmc_graph_free(cg);
  return s;
}

static void drop_checkpoint_meta(vmc_graph *g) {
  for (int i = 0; i < g->n_meta;) {
    if (!strncmp(g->meta[i].key, "checkpoint.", 11)) {
      vmc_free(g->meta[i].key);
      vmc_free(g->meta[i].value);
      g->meta[i] = g->meta[--g->n_meta];
    } else {
      i++;
    }
  }
}

/* ---- the loop ---- */

typedef struct {
  vmc_plan *p;
  vmc_optimizer *o;
  int *order, *y;
  float *dlogits;
} train_state;

static void free_state(train_state *t) {
  vmc_plan_destroy(t->p);
  vmc_optim_free(t->o);
  vmc_free(t->order);
  vmc_free(t->y);
}

static vmc_status check_config(const vmc_train_config *c, const vmc_graph *g, const vmc_dataset *tr) {
  if (c->epochs < 1 || c->epochs > 100000)
    return vmc_error(VMC_ERR_INVALID_ARG, "--epochs %d must be in 1..100000", c->epochs);
  if (c->batch < 1 || c->batch > 65536)
    return vmc_error(VMC_ERR_INVALID_ARG, "--batch %d must be in 1..65536", c->batch);
  if (!(c->label_smoothing >= 0 && c->label_smoothing < 1))
    return vmc_error(VMC_ERR_INVALID_ARG, "--label-smoothing must be in [0,1)");
  if (c->crop_pad < 0 || c->crop_pad > 64)
    return vmc_error(VMC_ERR_INVALID_ARG, "crop padding %d must be in 0..64", c->crop_pad);
  if (tr->c != g->in_shape.d[1] || tr->h != g->in_shape.d[2] || tr->w != g->in_shape.d[3])
    return vmc_error(VMC_ERR_SHAPE, "data set images are %dx%dx%d but the model takes %dx%dx%d",
                     tr->c, tr->h, tr->w, g->in_shape.d[1], g->in_shape.d[2], g->in_shape.d[3]);
  return VMC_OK;
}

vmc_status vmc_train(vmc_graph *g, const vmc_dataset *train, const vmc_dataset *test,
                     const vmc_train_config *c, const vmc_train_hooks *hooks, vmc_epoch_cb cb,
                     void *cb_user, vmc_train_result *result) {
  memset(result, 0, sizeof *result);
  VMC_TRY(check_config(c, g, train));
  static const vmc_train_hooks no_hooks;
  if (!hooks) hooks = &no_hooks;
  const int n_train = c->limit_train > 0 && c->limit_train < train->n ? c->limit_train : train->n;
  const int batch = c->batch < n_train ? c->batch : n_train;
  train_state t = {0};
  vmc_status s = vmc_plan_create(g, batch, VMC_MODE_TRAIN, &t.p);
  if (!s) s = vmc_optim_create(g, c, &t.o);
  const vmc_shape *os = s ? NULL : vmc_plan_value_shape(t.p, g->output);
  const int k = os ? (int)(vmc_shape_count(os) / (size_t)os->d[0]) : 0;
  if (!s && k < train->n_classes)
    s = vmc_error(VMC_ERR_SHAPE, "the model predicts %d classes but the data set has %d", k,
                  train->n_classes);
  if (!s) {
    t.order = vmc_malloc_plain((size_t)n_train * sizeof *t.order);
    t.y = vmc_malloc_plain((size_t)batch * sizeof *t.y);
    if (!t.order || !t.y) s = vmc_error(VMC_ERR_NOMEM, "training buffers");
  }
  vmc_rng rng;
  vmc_rng_seed(&rng, c->seed);
  if (t.p) vmc_rng_seed(&t.p->rng, c->seed ^ 0xd20b0u);
  int start_epoch = 0;
  if (!s && c->resume) s = load_checkpoint(g, t.o, c, c->resume, &start_epoch, &rng, &t.p->rng);
  if (!s && c->resume && hooks->checkpoint) s = hooks->checkpoint(hooks->user, g, VMC_CKPT_LOADED);
  if (!s && start_epoch >= c->epochs)
    s = vmc_error(VMC_ERR_INVALID_ARG, "checkpoint %s already has %d epochs; ask for more with --epochs",
                  c->resume, start_epoch);
  if (s) {
    free_state(&t);
    return s;
  }
  const long steps_per_epoch = (n_train + batch - 1) / batch;
  const long total_steps = steps_per_epoch * c->epochs;
  const vmc_augment aug = {c->augment ? c->crop_pad : 0, c->augment ? c->flip : 0};
  const int show = !c->quiet && isatty(2);
  double t_start = vmc_now();
  result->best_test_acc = 0;
  for (int epoch = start_epoch; epoch < c->epochs && !s; epoch++) {
    for (int i = 0; i < n_train; i++) t.order[i] = i;
    vmc_rng_shuffle(&rng, t.order, n_train);
    vmc_progress bar;
    char label[32];
    snprintf(label, sizeof label, "epoch %d/%d", epoch + 1, c->epochs);
    vmc_progress_start(&bar, label, n_train, show);
    double loss_sum = 0, t0 = vmc_now();
    long correct = 0, seen = 0;
    float lr = c->lr;
    for (int off = 0; off < n_train && !s; off += batch) {
      const int m = n_train - off < batch ? n_train - off : batch;
      const long step = (long)epoch * steps_per_epoch + off / batch;
      lr = vmc_sched_lr(c, step, steps_per_epoch, total_steps);
      vmc_dataset_batch(train, t.order + off, m, &aug, &rng, vmc_plan_input(t.p), t.y);
      if (hooks->before_step) s = hooks->before_step(hooks->user, t.p, step);
      if (s) break;
      vmc_plan_forward(t.p, m);
      if (hooks->after_forward) s = hooks->after_forward(hooks->user, t.p, step);
      if (s) break;
      const float *z = vmc_plan_output(t.p);
      float *dz = vmc_plan_output_grad(t.p);
      float loss = vmc_softmax_ce(z, t.y, m, k, c->label_smoothing, dz);
      if (hooks->extra_loss) loss += hooks->extra_loss(hooks->user, t.p, vmc_plan_input(t.p), t.y, m, dz);
      for (int i = 0; i < m; i++) correct += argmax(z + (size_t)i * k, k) == t.y[i];
      loss_sum += (double)loss * m;
      seen += m;
      vmc_graph_zero_grads(g);
      s = vmc_plan_backward(t.p);
      if (s) break;
      if (hooks->before_optim) s = hooks->before_optim(hooks->user, t.p, step);
      if (s) break;
      vmc_optim_step(t.o, lr);
      if (hooks->after_step) s = hooks->after_step(hooks->user, t.p, step);
      char extra[96];
      snprintf(extra, sizeof extra, "loss %.4f acc %.2f%% lr %.4f", loss_sum / seen,
               100.0 * correct / seen, lr);
      vmc_progress_update(&bar, off + m, extra);
    }
    vmc_progress_finish(&bar);
    if (s) break;
    double secs = vmc_now() - t0;
    vmc_epoch_result er = {.epoch = epoch + 1, .lr = lr, .train_loss = (float)(loss_sum / seen),
                           .train_acc = (float)correct / (float)seen, .seconds = secs,
                           .images_per_sec = seen / secs, .test_acc = -1, .test_loss = -1};
    if (test) {
      vmc_eval_result ev;
      s = vmc_evaluate(g, test, 256, c->limit_test, 0, &ev);
      if (s) break;
      er.test_acc = ev.accuracy;
      er.test_loss = ev.loss;
      if (ev.accuracy > result->best_test_acc) result->best_test_acc = ev.accuracy;
    }
    if (c->checkpoint) {
      if (hooks->checkpoint) s = hooks->checkpoint(hooks->user, g, VMC_CKPT_SAVE);
      if (!s) s = save_checkpoint(g, t.o, c, epoch + 1, &rng, &t.p->rng);
      if (hooks->checkpoint) {
        const vmc_status back = hooks->checkpoint(hooks->user, g, VMC_CKPT_SAVED);
        if (!s) s = back;
      }
    }
    result->epochs_run++;
    result->last = er;
    if (cb) cb(cb_user, &er);
  }
  result->total_seconds = vmc_now() - t_start;
  drop_checkpoint_meta(g);
  free_state(&t);
  return s;
}
