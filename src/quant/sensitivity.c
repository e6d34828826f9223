/* Per-layer quantization sensitivity and mixed precision (see sensitivity.h). */
#include "quant/sensitivity.h"

#include "data/data.h"
#include "graph/op.h"
#include "graph/rebuild.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const k_rank_names[VMC_SENS_RANK_COUNT] = {"noise", "drop"};

const char *vmc_sens_rank_name(vmc_sens_rank r) {
  return (int)r >= 0 && r < VMC_SENS_RANK_COUNT ? k_rank_names[r] : "?";
}

vmc_status vmc_sens_rank_from_name(const char *name, vmc_sens_rank *out) {
  for (int i = 0; i < VMC_SENS_RANK_COUNT; i++)
    if (name && !strcmp(name, k_rank_names[i])) {
      *out = (vmc_sens_rank)i;
      return VMC_OK;
    }
  return vmc_error(VMC_ERR_INVALID_ARG, "sensitivity rank '%s': expected noise or drop",
                   name ? name : "(null)");
}

void vmc_sens_opts_default(vmc_sens_opts *o) {
  memset(o, 0, sizeof *o);
  vmc_ptq_opts_default(&o->ptq);
  o->eval_images = 2000;
  o->batch = 256;
}

void vmc_sens_report_free(vmc_sens_report *r) {
  if (!r) return;
  vmc_free(r->layers);
  memset(r, 0, sizeof *r);
}

void vmc_mixed_result_free(vmc_mixed_result *m) {
  if (!m) return;
  vmc_free(m->bits);
  memset(m, 0, sizeof *m);
}

/* ---- the held-out slice ------------------------------------------------------- */

/* Images [first, first + n) of d as a data set of their own (copied, d's
 * normalisation); n is cut to what d holds, and none left is an error. */
static vmc_status held_out(const vmc_dataset *d, int first, int n, vmc_dataset **out) {
  *out = NULL;
  if (n > d->n - first) n = d->n - first;
  if (n < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "sensitivity: the training split of %s has %d images "
                     "and calibration uses the first %d: none is left to evaluate on (use fewer "
                     "calibration images)", d->name, d->n, first);
  const size_t chw = (size_t)d->c * d->h * d->w;
  return vmc_dataset_from_memory(d->name, n, d->c, d->h, d->w, d->n_classes,
                                 d->images + (size_t)first * chw, d->labels + first, d->mean,
                                 d->std, out);
}

/* ---- single-layer models from three calibrations ------------------------------ */

typedef struct single {
  const vmc_graph *f;  /* every layer's input fake-quantized, weights in fp32 */
  vmc_graph *w;        /* a clone of f whose layer inputs are rewired */
  int n_layers;
  int *node;           /* per layer: its node in f */
  int *float_in;       /* per layer: the float value its fakequant reads */
  int *readers;        /* per value of w (scratch) */
  uint8_t *drop;       /* per node of w (scratch) */
} single;

static void single_free(single *c) {
  vmc_graph_free(c->w);
  vmc_free(c->node);
  vmc_free(c->float_in);
  vmc_free(c->readers);
  vmc_free(c->drop);
}

static vmc_status single_init(single *c, const vmc_graph *f, const vmc_ptq_report *rep) {
  memset(c, 0, sizeof *c);
  c->f = f;
  c->n_layers = rep->n_layers;
  c->node = vmc_malloc_plain((size_t)rep->n_layers * sizeof *c->node);
  c->float_in = vmc_malloc_plain((size_t)rep->n_layers * sizeof *c->float_in);
  c->readers = vmc_malloc_plain((size_t)f->n_values * sizeof *c->readers);
  c->drop = vmc_malloc_plain((size_t)f->n_nodes);
  if (!c->node || !c->float_in || !c->readers || !c->drop)
    return vmc_error(VMC_ERR_NOMEM, "sensitivity");
  for (int i = 0; i < rep->n_layers; i++) {
    const vmc_ptq_layer *l = &rep->layers[i];
    c->node[i] = vmc_graph_find_node(f, l->node);
    c->float_in[i] = vmc_graph_find_value(f, l->input);
    if (c->node[i] < 0 || c->float_in[i] < 0)
      return vmc_error(VMC_ERR_INTERNAL, "sensitivity: layer '%s' (input '%s') is not in the "
                       "quantized graph", l->node, l->input);
  }
  return vmc_graph_clone(f, &c->w);
}

/* Copies parameter `name` (data and storage) from src into g. */
static vmc_status take_param(vmc_graph *g, const vmc_graph *src, const char *name) {
  const int to = vmc_graph_find_param(g, name), from = vmc_graph_find_param(src, name);
  if (to < 0 || from < 0)
    return vmc_error(VMC_ERR_INTERNAL, "sensitivity: parameter '%s' is missing", name);
  const vmc_param *s = &src->params[from];
  vmc_param *d = &g->params[to];
  memcpy(d->data, s->data, vmc_shape_count(&s->shape) * sizeof *d->data);
  return vmc_param_set_quantized(g, to, s->store, s->qscale, s->n_qscale);
}

/* The model with only layer `layer` quantized, its parameters from q (or,
 * for layer -1, the fp32 model) in *out. */
static vmc_status single_build(single *c, int layer, const vmc_graph *q, vmc_graph **out) {
  *out = NULL;
  vmc_graph *w = c->w;
  for (int i = 0; i < c->n_layers; i++)
    w->nodes[c->node[i]].in[0] = i == layer ? c->f->nodes[c->node[i]].in[0] : c->float_in[i];
  for (int v = 0; v < w->n_values; v++) c->readers[v] = v == w->output;
  for (int j = 0; j < w->n_nodes; j++)
    for (int k = 0; k < w->nodes[j].n_in; k++) c->readers[w->nodes[j].in[k]]++;
  for (int j = 0; j < w->n_nodes; j++)
    c->drop[j] = !strcmp(w->nodes[j].op->name, "fakequant") && !c->readers[w->nodes[j].out];
  vmc_graph *g;
  VMC_TRY(vmc_graph_drop_nodes(w, c->drop, &g, NULL));
  vmc_status s = VMC_OK;
  const vmc_node *n = layer >= 0 ? &c->f->nodes[c->node[layer]] : NULL;
  for (int k = 0; n && k < n->n_param && !s; k++) s = take_param(g, q, c->f->params[n->param[k]].name);
  if (s) {
    vmc_graph_free(g);
    return s;
  }
  *out = g;
  return VMC_OK;
}

/* Accuracy and logits of g on d. */
static vmc_status run(vmc_graph *g, const vmc_dataset *d, int batch, double *acc, float **logits) {
  vmc_eval_result er;
  VMC_TRY(vmc_evaluate_logits(g, d, batch, 0, 0, &er, logits));
  *acc = er.accuracy;
  return VMC_OK;
}

vmc_status vmc_sensitivity(const vmc_graph *g, const vmc_dataset *train, const vmc_sens_opts *o,
                           vmc_sens_report *r) {
  memset(r, 0, sizeof *r);
  if (!o || o->eval_images < 1 || o->batch < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "sensitivity: %d held-out images, batch %d (both at "
                     "least 1)", o ? o->eval_images : 0, o ? o->batch : 0);
  const double t0 = vmc_now();
  vmc_dataset *ho = NULL;
  vmc_graph *q[3] = {NULL, NULL, NULL}; /* fp32, 8-bit and 4-bit weights */
  vmc_ptq_report rep[3] = {{0}};
  vmc_ptq_rule *rules = NULL;
  float *ref = NULL;
  single c = {0};
  /* The held-out slice first: no minutes of calibration before finding it empty. */
  r->calib_images = o->ptq.calib_images < train->n ? o->ptq.calib_images : train->n;
  r->eval_first = r->calib_images;
  vmc_status s = o->ptq.calib_images >= 1 ? held_out(train, r->eval_first, o->eval_images, &ho)
                                          : VMC_OK; /* PTQ rejects the count */
  vmc_ptq_opts po = o->ptq;
  po.integer_sites = 0;
  po.rules = NULL;
  po.n_rules = 0;
  po.weight_scheme = VMC_QSCHEME_S8;
  if (!s) s = vmc_ptq_quantize(g, train, &po, &q[1], &rep[1]);
  if (!s) {
    po.weight_scheme = VMC_QSCHEME_S4;
    s = vmc_ptq_quantize(g, train, &po, &q[2], &rep[2]);
  }
  const int nl = rep[1].n_layers;
  if (!s) {
    rules = vmc_malloc_plain((size_t)nl * sizeof *rules);
    r->layers = vmc_malloc_plain((size_t)nl * sizeof *r->layers);
    if (!rules || !r->layers) s = vmc_error(VMC_ERR_NOMEM, "sensitivity");
  }
  if (!s) {
    for (int i = 0; i < nl; i++) rules[i] = (vmc_ptq_rule){rep[1].layers[i].node, 0, 1};
    po.rules = rules;
    po.n_rules = nl;
    s = vmc_ptq_quantize(g, train, &po, &q[0], &rep[0]);
  }
  if (s) goto done;
  r->n_layers = nl;
  r->eval_images = ho->n;
  if ((s = single_init(&c, q[0], &rep[1]))) goto done;
  vmc_progress bar;
  vmc_progress_start(&bar, "sensitivity", 2L * nl + 1, o->show_progress);
  vmc_graph *m = NULL;
  const int k = vmc_dataset_classes(ho);
  if (!(s = single_build(&c, -1, NULL, &m))) s = run(m, ho, o->batch, &r->fp32_accuracy, &ref);
  vmc_graph_free(m);
  vmc_progress_update(&bar, 1, "fp32");
  for (int i = 0; i < nl && !s; i++) {
    vmc_sens_layer *l = &r->layers[i];
    const vmc_ptq_layer *pl = &rep[1].layers[i];
    const vmc_param *wt = &q[0]->params[q[0]->nodes[c.node[i]].param[0]];
    snprintf(l->node, sizeof l->node, "%s", pl->node);
    snprintf(l->op, sizeof l->op, "%s", pl->op);
    l->weights = (long long)vmc_shape_count(&wt->shape);
    l->act_sqnr_db = pl->act_sqnr_db;
    for (int b = 0; b < 2 && !s; b++) {
      float *z = NULL;
      l->w_sqnr_db[b] = rep[1 + b].layers[i].w_sqnr_db;
      if (!(s = single_build(&c, i, q[1 + b], &m))) s = run(m, ho, o->batch, &l->accuracy[b], &z);
      vmc_graph_free(m);
      if (!s) {
        l->drop[b] = 100.0 * (r->fp32_accuracy - l->accuracy[b]);
        l->logit_sqnr_db[b] = vmc_qsqnr_db(ref, z, (size_t)ho->n * (size_t)k);
      }
      free(z);
      vmc_progress_update(&bar, 2L + 2L * i + b, l->node);
    }
  }
  vmc_progress_finish(&bar);
  r->seconds = vmc_now() - t0;
done:
  for (int b = 0; b < 3; b++) {
    vmc_graph_free(q[b]);
    vmc_ptq_report_free(&rep[b]);
  }
  single_free(&c);
  vmc_free(rules);
  vmc_dataset_free(ho);
  free(ref);
  return s;
}

/* ---- the greedy choice -------------------------------------------------------- */

/* The noise-to-signal ratio of a logit SQNR. */
static double noise(double sqnr_db) {
  if (isnan(sqnr_db)) return INFINITY;
  return isinf(sqnr_db) ? (sqnr_db > 0 ? 0.0 : INFINITY) : pow(10.0, -sqnr_db / 10.0);
}

/* Damage of layer l at 8 (b = 0) or 4 bits (b = 1) under rank: primary and
 * tie-breaking key. */
static void damage(const vmc_sens_layer *l, int b, vmc_sens_rank rank, double *key, double *tie) {
  *key = rank == VMC_SENS_RANK_DROP ? l->drop[b] : noise(l->logit_sqnr_db[b]);
  *tie = rank == VMC_SENS_RANK_DROP ? noise(l->logit_sqnr_db[b]) : 0.0;
}

/* Cost of moving layer l to 4 bits: its 4-bit damage per bit saved. */
static void move_cost(const vmc_sens_layer *l, vmc_sens_rank rank, double *key, double *tie) {
  const double saved = 4.0 * (double)(l->weights > 0 ? l->weights : 1);
  damage(l, 1, rank, key, tie);
  *key /= saved;
  *tie /= saved;
}

static long long total_bits(const vmc_sens_report *r, const int *bits, long long *weights) {
  long long t = 0, w = 0;
  for (int i = 0; i < r->n_layers; i++) {
    t += (long long)(bits[i] ? bits[i] : 32) * r->layers[i].weights;
    w += r->layers[i].weights;
  }
  if (weights) *weights = w;
  return t;
}

double vmc_mixed_mean_bits(const vmc_sens_report *r, const int *bits) {
  long long w;
  const long long t = total_bits(r, bits, &w);
  return w > 0 ? (double)t / (double)w : 0.0;
}

vmc_status vmc_mixed_choose(const vmc_sens_report *r, double bits_budget, vmc_sens_rank rank,
                            int *bits, double *mean_bits) {
  if (!(bits_budget >= 4.0) || !isfinite(bits_budget))
    return vmc_error(VMC_ERR_INVALID_ARG, "bits budget %g: below 4 bits per weight (every layer "
                     "at 4 bits is the smallest choice)", bits_budget);
  if ((int)rank < 0 || rank >= VMC_SENS_RANK_COUNT)
    return vmc_error(VMC_ERR_INVALID_ARG, "mixed precision: unknown rank %d", (int)rank);
  const int n = r->n_layers;
  int *b = vmc_malloc_plain((size_t)(n > 0 ? n : 1) * sizeof *b);
  int *order = vmc_malloc_plain((size_t)(n > 0 ? n : 1) * sizeof *order);
  double *key = vmc_malloc_plain((size_t)(n > 0 ? n : 1) * 2 * sizeof *key);
  if (!b || !order || !key) {
    vmc_free(b);
    vmc_free(order);
    vmc_free(key);
    return vmc_error(VMC_ERR_NOMEM, "mixed precision");
  }
  long long weights;
  for (int i = 0; i < n; i++) b[i] = bits[i] ? 4 : 0;
  const long long least = total_bits(r, b, &weights);
  vmc_status s = VMC_OK;
  if ((double)least > bits_budget * (double)weights) {
    s = vmc_error(VMC_ERR_INVALID_ARG, "bits budget %g: even with every quantized layer at 4 bits "
                  "the weights take %.3f bits each (layers kept in fp32 count 32)", bits_budget,
                  (double)least / (double)weights);
  } else {
    /* Cheapest move first (insertion sort: stable, so ties keep node order). */
    for (int i = 0; i < n; i++) {
      b[i] = bits[i] ? 8 : 0;
      move_cost(&r->layers[i], rank, &key[2 * i], &key[2 * i + 1]);
      int j = i;
      for (; j > 0; j--) {
        const double *a = &key[2 * order[j - 1]], *c = &key[2 * i];
        if (a[0] < c[0] || (a[0] == c[0] && a[1] <= c[1])) break;
        order[j] = order[j - 1];
      }
      order[j] = i;
    }
    long long t = total_bits(r, b, NULL);
    for (int j = 0; j < n && (double)t > bits_budget * (double)weights; j++) {
      const int i = order[j];
      if (b[i] != 8) continue;
      b[i] = 4;
      t -= 4 * r->layers[i].weights;
    }
    memcpy(bits, b, (size_t)n * sizeof *bits);
    if (mean_bits) *mean_bits = weights > 0 ? (double)t / (double)weights : 0.0;
  }
  vmc_free(b);
  vmc_free(order);
  vmc_free(key);
  return s;
}

/* ---- mixed precision ----------------------------------------------------------- */

/* The quantized layer most damaged at 8 bits, or -1. */
static int most_damaged(const vmc_sens_report *r, const int *bits, vmc_sens_rank rank) {
  int best = -1;
  double bk = 0, bt = 0;
  for (int i = 0; i < r->n_layers; i++) {
    if (!bits[i]) continue;
    double k, t;
    damage(&r->layers[i], 0, rank, &k, &t);
    if (best < 0 || k > bk || (k == bk && t > bt)) best = i, bk = k, bt = t;
  }
  return best;
}

vmc_status vmc_mixed_precision(const vmc_graph *g, const vmc_dataset *train,
                               const vmc_sens_opts *o, const vmc_sens_report *sens,
                               const vmc_mixed_opts *mo, vmc_graph **out,
                               vmc_ptq_report *ptq_report, vmc_mixed_result *res) {
  *out = NULL;
  memset(res, 0, sizeof *res);
  if (ptq_report) memset(ptq_report, 0, sizeof *ptq_report);
  if (!sens || sens->n_layers < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "mixed precision: no sensitivity table");
  const int n = sens->n_layers;
  res->n_layers = n;
  res->bits = vmc_malloc_plain((size_t)n * sizeof *res->bits);
  vmc_ptq_rule *rules = vmc_malloc_plain((size_t)n * sizeof *rules);
  vmc_dataset *ho = NULL;
  vmc_graph *q = NULL;
  vmc_ptq_report rep = {0};
  vmc_status s = !res->bits || !rules ? vmc_error(VMC_ERR_NOMEM, "mixed precision") : VMC_OK;
  if (!s) s = held_out(train, sens->eval_first, sens->eval_images, &ho);
  for (int i = 0; i < n && !s; i++) res->bits[i] = 8;
  while (!s) {
    for (int i = 0; i < n; i++) res->bits[i] = res->bits[i] ? 8 : 0;
    s = vmc_mixed_choose(sens, mo->bits_budget, mo->rank, res->bits, &res->mean_bits);
    if (s && res->fp32_layers) {
      char msg[512];
      snprintf(msg, sizeof msg, "%s", vmc_last_error());
      s = vmc_error(VMC_ERR_INVALID_ARG, "no choice meets both budgets: with %d layer%s kept in "
                    "fp32 the held-out drop was %.2f points (> %g), and keeping the next one in "
                    "fp32 too breaks the %s", res->fp32_layers, res->fp32_layers > 1 ? "s" : "",
                    res->drop, mo->max_drop, msg);
    }
    if (s) break;
    for (int i = 0; i < n; i++) rules[i] = (vmc_ptq_rule){sens->layers[i].node, res->bits[i], 1};
    vmc_ptq_opts po = o->ptq;
    po.integer_sites = 1;
    po.rules = rules;
    po.n_rules = n;
    vmc_graph_free(q);
    vmc_ptq_report_free(&rep);
    q = NULL;
    s = vmc_ptq_quantize(g, train, &po, &q, &rep);
    res->tries++;
    if (!s) s = run(q, ho, o->batch, &res->accuracy, NULL);
    if (s) break;
    res->drop = 100.0 * (sens->fp32_accuracy - res->accuracy);
    if (mo->max_drop < 0 || res->drop <= mo->max_drop) break;
    const int worst = most_damaged(sens, res->bits, mo->rank);
    if (worst < 0 || res->fp32_layers + 1 >= n) {
      s = vmc_error(VMC_ERR_INVALID_ARG, "no choice meets the accuracy budget of %g points: with "
                    "%d of %d layers in fp32 the held-out drop is still %.2f points",
                    mo->max_drop, res->fp32_layers, n, res->drop);
      break;
    }
    res->bits[worst] = 0;
    res->fp32_layers++;
  }
  vmc_free(rules);
  vmc_dataset_free(ho);
  if (s) {
    vmc_graph_free(q);
    vmc_ptq_report_free(&rep);
    return s;
  }
  *out = q;
  if (ptq_report) *ptq_report = rep;
  else vmc_ptq_report_free(&rep);
  return VMC_OK;
}
