/* Post-training quantization (see ptq.h). */
#include "quant/ptq.h"

#include "data/data.h"
#include "graph/op.h"
#include "graph/plan.h"
#include "graph/rebuild.h"
#include "quant/biascorr.h"
#include "quant/equalize.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void vmc_ptq_opts_default(vmc_ptq_opts *o) {
  memset(o, 0, sizeof *o);
  o->weight_scheme = VMC_QSCHEME_S8;
  o->per_channel = 1;
  o->act_scheme = VMC_QSCHEME_U8;
  o->integer_sites = 1;
  o->observer = VMC_OBSERVER_MINMAX;
  o->input_observer = VMC_OBSERVER_MINMAX;
  o->calib_images = 512;
  o->batch = 32;
  o->bias_s32 = 1;
}

void vmc_ptq_report_free(vmc_ptq_report *r) {
  if (!r) return;
  vmc_free(r->layers);
  memset(r, 0, sizeof *r);
}

/* Puts "ptq: what: " in front of the last error message. */
static vmc_status wrap(vmc_status s, const char *what) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s", vmc_last_error());
  return vmc_error(s, "ptq: %s: %s", what, msg);
}

static int is_target(const vmc_node *n) {
  return n->n_in == 1 && n->n_param >= 1 &&
         (!strcmp(n->op->name, "conv2d") || !strcmp(n->op->name, "linear"));
}

static int op_is(const vmc_node *n, const char *a, const char *b, const char *c) {
  const char *o = n->op->name;
  return !strcmp(o, a) || (b && !strcmp(o, b)) || (c && !strcmp(o, c));
}

/* The rule for node n, or NULL. */
static const vmc_ptq_rule *rule_for(const vmc_ptq_opts *o, const char *node) {
  for (int i = 0; i < o->n_rules; i++)
    if (o->rules[i].node && !strcmp(o->rules[i].node, node)) return &o->rules[i];
  return NULL;
}

static int layer_weight_bits(const vmc_ptq_opts *o, const vmc_node *n) {
  const vmc_ptq_rule *r = rule_for(o, n->name);
  return r ? r->weight_bits : vmc_qscheme_weight_bits(o->weight_scheme);
}

static vmc_status check_opts(const vmc_graph *g, const vmc_dataset *d, const vmc_ptq_opts *o) {
  const vmc_qscheme_info *ws = vmc_qscheme_get(o->weight_scheme);
  const vmc_qscheme_info *as = vmc_qscheme_get(o->act_scheme);
  if (!ws || !ws->symmetric)
    return vmc_error(VMC_ERR_INVALID_ARG, "ptq: weight scheme %s: weights take a symmetric "
                     "scheme (s8 or s4)", ws ? ws->name : "?");
  if (!as || o->act_scheme == VMC_QSCHEME_S4)
    return vmc_error(VMC_ERR_UNSUPPORTED, "ptq: activation scheme %s: activations take "
                     "u8, s8 or u4", as ? as->name : "?");
  if (o->n_rules < 0 || (o->n_rules > 0 && !o->rules))
    return vmc_error(VMC_ERR_INVALID_ARG, "ptq: %d layer rules", o->n_rules);
  for (int i = 0; i < o->n_rules; i++) {
    const vmc_ptq_rule *r = &o->rules[i];
    const int found = r->node ? vmc_graph_find_node(g, r->node) : -1;
    if (found < 0 || !is_target(&g->nodes[found]))
      return vmc_error(VMC_ERR_INVALID_ARG, "ptq: layer rule %d: '%s' is not a conv2d or "
                       "linear node of the model", i, r->node ? r->node : "(null)");
    if (r->weight_bits != 0 && r->weight_bits != 4 && r->weight_bits != 7 && r->weight_bits != 8)
      return vmc_error(VMC_ERR_INVALID_ARG, "ptq: layer '%s': %d-bit weights (4, 7, 8 or 0 "
                       "for fp32)", r->node, r->weight_bits);
    if (!r->quant_input && o->integer_sites)
      return vmc_error(VMC_ERR_INVALID_ARG, "ptq: layer '%s' reads a float input, which the "
                       "integer runtime cannot run (turn integer sites off to simulate it)",
                       r->node);
  }
  if ((int)o->observer < 0 || o->observer >= VMC_OBSERVER_KIND_COUNT ||
      (int)o->input_observer < 0 || o->input_observer >= VMC_OBSERVER_KIND_COUNT)
    return vmc_error(VMC_ERR_INVALID_ARG, "ptq: unknown observer kind %d",
                     (int)((int)o->observer < 0 || o->observer >= VMC_OBSERVER_KIND_COUNT
                               ? o->observer : o->input_observer));
  if (o->equalize < 0 || o->equalize > 1000)
    return vmc_error(VMC_ERR_INVALID_ARG, "ptq: %d equalization sweeps (0..1000)", o->equalize);
  if (o->calib_images < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "ptq: %d calibration images (at least 1)",
                     o->calib_images);
  if (o->batch < 1 || o->batch > 65536)
    return vmc_error(VMC_ERR_INVALID_ARG, "ptq: calibration batch %d is out of range (1..65536)",
                     o->batch);
  if (!d || d->n < 1) return vmc_error(VMC_ERR_INVALID_ARG, "ptq: no calibration images");
  if (d->c != g->in_shape.d[1] || d->h != g->in_shape.d[2] || d->w != g->in_shape.d[3])
    return vmc_error(VMC_ERR_SHAPE, "ptq: calibration images are %dx%dx%d but the model takes "
                     "%dx%dx%d", d->c, d->h, d->w, g->in_shape.d[1], g->in_shape.d[2],
                     g->in_shape.d[3]);
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].op->name, "fakequant"))
      return vmc_error(VMC_ERR_INVALID_ARG, "ptq: the model is already quantized (node '%s' "
                       "is a fakequant)", g->nodes[i].name);
  return VMC_OK;
}

/* ---- calibration -------------------------------------------------------------- */

/* A value that conv2d/linear nodes read: its observer and what it chose. */
typedef struct site {
  int value;            /* in the folded float graph */
  vmc_observer *obs;
  vmc_qparams qp;
  float lo, hi;
  vmc_observer_stats st;
  double sx2, se2;      /* sum x^2 and sum (x - fq(x))^2 over the calibration values */
  uint64_t n, clipped;
  int qvalue;           /* the fakequant node's value in the quantized graph */
} site;

/* Fills site_of and sites (value and qvalue = -1 only) as ptq.h describes;
 * grid_of[v]: the site whose grid value v is on (a site's value, or one that
 * flatten/dropout/maxpool kept on that grid), or -1. */
static vmc_status find_sites(const vmc_graph *f, const vmc_ptq_opts *o, int *site_of,
                             site *sites, int *n_sites, int *grid_of) {
  int *readers = vmc_malloc_plain((size_t)f->n_values * sizeof *readers);
  int *producer = vmc_malloc_plain((size_t)f->n_values * sizeof *producer);
  int *site_id = vmc_malloc_plain((size_t)f->n_values * sizeof *site_id);
  uint8_t *on_grid = vmc_malloc_plain((size_t)f->n_values);
  if (!readers || !producer || !site_id || !on_grid) {
    vmc_free(readers);
    vmc_free(producer);
    vmc_free(site_id);
    vmc_free(on_grid);
    return vmc_error(VMC_ERR_NOMEM, "ptq: sites");
  }
  for (int v = 0; v < f->n_values; v++)
    readers[v] = 0, producer[v] = -1, site_id[v] = -1, on_grid[v] = 0, grid_of[v] = -1;
  for (int i = 0; i < f->n_nodes; i++) {
    producer[f->nodes[i].out] = i;
    for (int k = 0; k < f->nodes[i].n_in; k++) readers[f->nodes[i].in[k]]++;
  }
  *n_sites = 0;
  for (int i = 0; i < f->n_nodes; i++) {
    const vmc_node *n = &f->nodes[i];
    int all_grid = 1; /* every input is read quantized */
    for (int k = 0; k < VMC_MAX_INPUTS; k++) site_of[i * VMC_MAX_INPUTS + k] = -1;
    for (int k = 0; k < n->n_in; k++) {
      const int v = n->in[k], pr = producer[v];
      int want;
      if (is_target(n)) {
        const vmc_ptq_rule *r = rule_for(o, n->name);
        want = !r || r->quant_input;
      } else if (!o->integer_sites) {
        want = 0;
      } else if (op_is(n, "relu", "relu6", NULL) && pr >= 0 && readers[v] == 1 &&
                 op_is(&f->nodes[pr], "conv2d", "linear", "add")) {
        want = 0; /* fused into its producer; the site is the relu's output */
      } else {
        want = 1;
      }
      if (want && !on_grid[v]) {
        if (site_id[v] < 0) {
          site_id[v] = *n_sites;
          sites[(*n_sites)++] = (site){.value = v, .qvalue = -1};
        }
        site_of[i * VMC_MAX_INPUTS + k] = site_id[v];
        grid_of[v] = site_id[v];
      }
      all_grid &= want && (on_grid[v] || site_id[v] >= 0);
    }
    on_grid[n->out] = o->integer_sites && n->n_in == 1 && all_grid &&
                      op_is(n, "flatten", "dropout", "maxpool");
    if (on_grid[n->out]) grid_of[n->out] = grid_of[n->in[0]];
  }
  vmc_free(readers);
  vmc_free(producer);
  vmc_free(site_id);
  vmc_free(on_grid);
  return VMC_OK;
}


/* Second pass: the SQNR of each value against its fake quantization and the
 * fraction beyond half a step outside the grid. */
static void site_error(site *s, const float *x, size_t n) {
  const float inv = 1.0f / s->qp.scale;
  const double lo = (double)s->qp.qmin - s->qp.zero_point - 0.5;
  const double hi = (double)s->qp.qmax - s->qp.zero_point + 0.5;
  double sx2 = 0, se2 = 0;
  uint64_t cnt = 0, clip = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(x[i])) continue;
    const float v = x[i] * inv;
    const float y = vmc_qdequantize1(vmc_quantize1(x[i], inv, &s->qp), &s->qp);
    const double e = (double)x[i] - y;
    sx2 += (double)x[i] * x[i];
    se2 += e * e;
    cnt++;
    clip += v < lo || v > hi;
  }
  s->sx2 += sx2;
  s->se2 += se2;
  s->n += cnt;
  s->clipped += clip;
}

/* Runs the first n_img images of d through f (an observable plan) and, per
 * batch, either feeds every site's observer (pass 0) or measures its error
 * (pass 1). */
static vmc_status run_calibration(vmc_graph *f, const vmc_dataset *d, int n_img, int batch,
                                  site *sites, int n_sites, int pass) {
  if (batch > n_img) batch = n_img;
  vmc_plan *p;
  VMC_TRY(vmc_plan_create_observable(f, batch, &p));
  int *idx = vmc_malloc_plain((size_t)batch * sizeof *idx);
  vmc_status *st = vmc_malloc_plain((size_t)n_sites * sizeof *st);
  vmc_status s = !idx || !st ? vmc_error(VMC_ERR_NOMEM, "ptq: calibration") : VMC_OK;
  for (int off = 0; off < n_img && !s; off += batch) {
    const int m = n_img - off < batch ? n_img - off : batch;
    for (int i = 0; i < m; i++) idx[i] = off + i;
    vmc_dataset_batch(d, idx, m, NULL, NULL, vmc_plan_input(p), NULL);
    s = vmc_plan_forward(p, m);
    if (s) break;
    /* Each observer is independent: one per thread at a time. */
#pragma omp parallel for schedule(dynamic, 1) num_threads(p->nthreads) if (p->nthreads > 1)
    for (int j = 0; j < n_sites; j++) {
      const vmc_shape *sh = vmc_plan_value_shape(p, sites[j].value);
      const size_t count = vmc_shape_count(sh) / (size_t)sh->d[0] * (size_t)m;
      const float *x = vmc_plan_value(p, sites[j].value);
      st[j] = VMC_OK;
      if (pass == 0)
        st[j] = vmc_observer_observe(sites[j].obs, x, count);
      else
        site_error(&sites[j], x, count);
    }
    for (int j = 0; j < n_sites && !s; j++)
      if (st[j])
        s = vmc_error(st[j], "ptq: the observer of value '%s' failed",
                      f->values[sites[j].value].name);
  }
  vmc_free(idx);
  vmc_free(st);
  vmc_plan_destroy(p);
  return s;
}

/* ---- the quantized graph -------------------------------------------------------- */

/* "<value>.quant", or "quant.<n>" when that is too long or taken in f or q. */
static void fq_name(const vmc_graph *f, const vmc_graph *q, const char *value, char *out) {
  int len = snprintf(out, VMC_NAME_MAX, "%s.quant", value);
  for (int k = 1; len >= VMC_NAME_MAX || vmc_graph_find_value(f, out) >= 0 ||
                  vmc_graph_find_value(q, out) >= 0;
       k++)
    len = snprintf(out, VMC_NAME_MAX, "quant.%d", k);
}

/* f's nodes in order, a fakequant node before the first node reading each
 * site's value; the same parameters (ids) and metadata.
 * node_map[i]: the index in *out of f's node i. */
static vmc_status build_quantized(const vmc_graph *f, const int *site_of, site *sites,
                                  vmc_graph **out, int *node_map) {
  *out = NULL;
  vmc_graph *q;
  VMC_TRY(vmc_graph_create(f->in_shape.d[1], f->in_shape.d[2], f->in_shape.d[3], &q));
  int *map = vmc_malloc_plain((size_t)f->n_values * sizeof *map);
  vmc_status s = map ? VMC_OK : vmc_error(VMC_ERR_NOMEM, "ptq");
  for (int i = 0; i < f->n_params && !s; i++) {
    int id;
    s = vmc_graph_copy_param(q, &f->params[i], &id);
  }
  if (!s) map[f->input] = q->input;
  for (int i = 0; i < f->n_nodes && !s; i++) {
    const vmc_node *n = &f->nodes[i];
    int in[VMC_MAX_INPUTS];
    for (int k = 0; k < n->n_in && !s; k++) {
      in[k] = map[n->in[k]];
      if (site_of[i * VMC_MAX_INPUTS + k] < 0) continue;
      site *st = &sites[site_of[i * VMC_MAX_INPUTS + k]];
      if (st->qvalue < 0) {
        char name[VMC_NAME_MAX];
        fq_name(f, q, f->values[st->value].name, name);
        const vmc_attr a[4] = {vmc_attr_float("scale", st->qp.scale),
                               vmc_attr_int("zero_point", st->qp.zero_point),
                               vmc_attr_int("qmin", st->qp.qmin), vmc_attr_int("qmax", st->qp.qmax)};
        s = vmc_graph_add_node(q, "fakequant", name, &in[k], 1, a, 4, NULL, 0, &st->qvalue);
      }
      in[k] = st->qvalue;
    }
    if (s) break;
    node_map[i] = q->n_nodes;
    s = vmc_graph_add_node(q, n->op->name, n->name, in, n->n_in, n->attr, n->n_attr, n->param,
                           n->n_param, &map[n->out]);
  }
  if (!s) q->output = map[f->output];
  for (int i = 0; i < f->n_meta && !s; i++) s = vmc_graph_set_meta(q, f->meta[i].key, f->meta[i].value);
  vmc_free(map);
  if (s) {
    vmc_graph_free(q);
    return s;
  }
  *out = q;
  return VMC_OK;
}

/* Fake-quantizes node n's weight (and bias) in q; fills the layer's weight
 * fields; wscale (channels entries) gets the scale of each channel. */
static vmc_status quantize_weights(vmc_graph *q, const vmc_node *n, const vmc_ptq_opts *o,
                                   vmc_qscheme scheme, const vmc_qparams *act,
                                   vmc_ptq_layer *l, float *wscale) {
  vmc_param *w = &q->params[n->param[0]];
  const int ch = w->shape.d[0];
  const size_t total = vmc_shape_count(&w->shape), k = total / (size_t)ch;
  const int blocks = o->per_channel ? ch : 1;
  const size_t bk = o->per_channel ? k : total;
  vmc_qparams *wp = vmc_malloc_plain((size_t)ch * sizeof *wp);
  int8_t *codes = vmc_malloc_plain(total);
  vmc_status s = !wp || !codes ? vmc_error(VMC_ERR_NOMEM, "ptq: weights of '%s'", n->name) : VMC_OK;
  if (!s) s = vmc_quantize_weights(w->data, ch, k, scheme, o->per_channel, wp, codes);
  if (s) {
    char what[VMC_NAME_MAX + 32];
    snprintf(what, sizeof what, "weights of node '%s'", n->name);
    s = wrap(s, what);
  }
  if (!s) {
    for (int c = blocks; c < ch; c++) wp[c] = wp[0]; /* per tensor: one scale for all */
    l->channels = blocks;
    l->w_sqnr_db = vmc_qfake_sqnr_db(w->data, blocks, bk, wp);
    l->w_scale_min = FLT_MAX;
    l->w_scale_max = 0;
    for (int c = 0; c < ch; c++) {
      wscale[c] = wp[c].scale;
      if (wp[c].scale < l->w_scale_min) l->w_scale_min = wp[c].scale;
      if (wp[c].scale > l->w_scale_max) l->w_scale_max = wp[c].scale;
    }
    s = vmc_qfake_quantize(w->data, blocks, bk, wp, w->data);
    /* Files store the codes and scales. */
    if (!s) s = vmc_param_set_quantized(q, n->param[0], vmc_qscheme_get(scheme)->dtype, wscale,
                                        blocks);
  }
  if (!s && o->bias_s32 && act && n->n_param > 1) {
    /* s32 codes with scale s_w[c] * s_x: what the integer runtime adds to its
     * accumulators.  A product below FLT_MIN (not representable as a scale)
     * leaves that bias in float. */
    float *b = q->params[n->param[1]].data;
    for (int c = 0; c < ch; c++) b[c] = vmc_qbias_s32(b[c], wp[c].scale, act->scale);
  }
  vmc_free(wp);
  vmc_free(codes);
  return s;
}

/* ---- metadata ------------------------------------------------------------------- */

typedef struct sbuf {
  char *p;
  size_t n, cap;
  int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    const int w = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
    va_end(ap);
    if (w < 0) {
      b->oom = 1;
      return;
    }
    if (b->p && b->n + (size_t)w < b->cap) {
      b->n += (size_t)w;
      return;
    }
    size_t nc = b->cap ? b->cap * 2 : 4096;
    while (nc < b->n + (size_t)w + 1) nc *= 2;
    char *q = vmc_realloc_plain(b->p, nc);
    if (!q) {
      b->oom = 1;
      return;
    }
    b->p = q;
    b->cap = nc;
  }
}

/* A double as JSON (null for NaN and infinities). */
static void sb_num(sbuf *b, double v) {
  if (isfinite(v)) sb_printf(b, "%.9g", v);
  else sb_printf(b, "null");
}

static vmc_status write_meta(vmc_graph *q, const vmc_ptq_opts *o, const vmc_ptq_report *r,
                             const char *data_name) {
  const char *wn = vmc_qscheme_get(o->weight_scheme)->name, *an = vmc_qscheme_get(o->act_scheme)->name;
  const char *obs = vmc_observer_kind_name(o->observer);
  const char *iobs = vmc_observer_kind_name(o->input_observer);
  sbuf b = {0};
  sb_printf(&b, "{\"method\":\"ptq\",\"scheme\":\"w%da8\",\"weights\":{\"scheme\":\"%s\","
            "\"granularity\":\"%s\"},\"activations\":{\"scheme\":\"%s\",\"observer\":\"%s\","
            "\"input_observer\":\"%s\"",
            vmc_qscheme_weight_bits(o->weight_scheme), wn, o->per_channel ? "per-channel" : "per-tensor", an,
            obs, iobs);
  if (o->observer == VMC_OBSERVER_MOVING_AVG || o->input_observer == VMC_OBSERVER_MOVING_AVG) {
    sb_printf(&b, ",\"momentum\":");
    sb_num(&b, o->obs.momentum > 0 ? o->obs.momentum : 0.01);
  }
  if (o->observer == VMC_OBSERVER_PERCENTILE || o->input_observer == VMC_OBSERVER_PERCENTILE) {
    sb_printf(&b, ",\"percentile\":");
    sb_num(&b, o->obs.percentile > 0 ? o->obs.percentile : 99.99);
  }
  if (o->observer >= VMC_OBSERVER_PERCENTILE || o->input_observer >= VMC_OBSERVER_PERCENTILE) sb_printf(&b, ",\"bins\":%d", o->obs.bins > 0 ? o->obs.bins : 2048);
  /* A summary: what each layer got is in the graph (the fakequant nodes'
   * attributes, the weights' storage and scales), the rest in the report. */
  int bits[4] = {0, 0, 0, 0}; /* layers with s8, s7, s4, f32 weights */
  for (int i = 0; i < r->n_layers; i++) {
    const int wb = r->layers[i].weight_bits;
    bits[wb == 8 ? 0 : wb == 7 ? 1 : wb == 4 ? 2 : 3]++;
  }
  sb_printf(&b, "},\"bias\":\"%s\",\"calibration\":{\"data\":\"%s\",\"split\":\"train\","
            "\"images\":%d,\"batch\":%d},\"batchnorm_folded\":%d,\"equalized_pairs\":%d,"
            "\"bias_corrected\":%d,\"quantized_values\":%d,"
            "\"weight_layers\":{\"s8\":%d,\"s7\":%d,\"s4\":%d,\"f32\":%d}}",
            o->bias_s32 ? "s32" : "f32", data_name, r->calib_images, o->batch, r->bn_folded,
            r->equalized_pairs, r->bias_corrected, r->n_sites, bits[0], bits[1], bits[2], bits[3]);
  vmc_status s = b.oom ? vmc_error(VMC_ERR_NOMEM, "ptq: metadata") : vmc_graph_set_meta(q, "quant", b.p);
  vmc_free(b.p);
  if (s) return s;
  char line[384];
  snprintf(line, sizeof line, "ptq w%da8: weights %s %s, activations %s (%s observer, input %s, "
           "%d calibration images of %s/train), bias %s, %d batchnorms folded%s%s",
           vmc_qscheme_weight_bits(o->weight_scheme), wn, o->per_channel ? "per-channel" : "per-tensor", an,
           obs, iobs, r->calib_images, data_name, o->bias_s32 ? "s32" : "f32", r->bn_folded,
           r->equalized_pairs ? ", cross-layer equalization" : "",
           r->bias_corrected ? ", bias correction" : "");
  return vmc_graph_add_history(q, line);
}

/* ---- the pass ------------------------------------------------------------------- */

vmc_status vmc_ptq_quantize(const vmc_graph *g, const vmc_dataset *calib, const vmc_ptq_opts *opts,
                            vmc_graph **out, vmc_ptq_report *report) {
  *out = NULL;
  if (report) memset(report, 0, sizeof *report);
  vmc_ptq_opts o;
  if (opts) o = *opts;
  else vmc_ptq_opts_default(&o);
  VMC_TRY(check_opts(g, calib, &o));
  const double t0 = vmc_now();
  vmc_ptq_report rep = {0};
  vmc_graph *f = NULL, *q = NULL;
  site *sites = NULL;
  int *site_of = NULL, *node_map = NULL, *grid_of = NULL, n_sites = 0;
  uint8_t *done_param = NULL; /* per parameter of q: quantized */
  vmc_status s = vmc_graph_fold_bn_copy(g, &f, &rep.bn_folded);
  if (!s && o.equalize > 0) {
    vmc_equalize_report er;
    s = vmc_equalize(f, o.equalize, &er);
    rep.equalized_pairs = er.pairs;
  }
  if (s) goto done;
  /* Sites (see ptq.h), one observer each; site_of[i * VMC_MAX_INPUTS + k]:
   * the site node i reads as input k, or -1. */
  site_of = vmc_malloc_plain((size_t)f->n_nodes * VMC_MAX_INPUTS * sizeof *site_of);
  sites = vmc_malloc_plain(((size_t)f->n_values + 1) * sizeof *sites);
  node_map = vmc_malloc_plain((size_t)f->n_nodes * sizeof *node_map);
  grid_of = vmc_malloc_plain((size_t)f->n_values * sizeof *grid_of);
  if (!site_of || !sites || !node_map || !grid_of) {
    s = vmc_error(VMC_ERR_NOMEM, "ptq");
    goto done;
  }
  if ((s = find_sites(f, &o, site_of, sites, &n_sites, grid_of))) goto done;
  for (int i = 0; i < f->n_nodes; i++) rep.n_layers += is_target(&f->nodes[i]);
  vmc_observer_opts oo = o.obs;
  oo.scheme = o.act_scheme;
  for (int j = 0; j < n_sites && !s; j++) {
    s = vmc_observer_create(sites[j].value == f->input ? o.input_observer : o.observer, &oo,
                            &sites[j].obs);
    if (s) {
      s = wrap(s, "observer");
      n_sites = j; /* the ones to destroy */
    }
  }
  rep.n_sites = n_sites;
  if (s) goto done;
  if (!rep.n_layers) {
    s = vmc_error(VMC_ERR_INVALID_ARG, "ptq: the model has no conv2d or linear node to quantize");
    goto done;
  }
  rep.calib_images = o.calib_images < calib->n ? o.calib_images : calib->n;
  s = run_calibration(f, calib, rep.calib_images, o.batch, sites, n_sites, 0);
  for (int j = 0; j < n_sites && !s; j++) {
    site *st = &sites[j];
    s = vmc_observer_range(st->obs, &st->lo, &st->hi);
    if (!s) s = vmc_observer_qparams(st->obs, &st->qp);
    if (s) {
      char what[VMC_NAME_MAX + 32];
      snprintf(what, sizeof what, "calibrating value '%s'", f->values[st->value].name);
      s = wrap(s, what);
    }
    vmc_observer_stats_get(st->obs, &st->st);
  }
  if (!s) s = run_calibration(f, calib, rep.calib_images, o.batch, sites, n_sites, 1);
  if (!s) s = build_quantized(f, site_of, sites, &q, node_map);
  if (s) goto done;
  /* Weights, and the report in node order. */
  rep.layers = vmc_malloc_plain((size_t)rep.n_layers * sizeof *rep.layers);
  done_param = vmc_malloc_plain((size_t)q->n_params);
  if (rep.layers) memset(rep.layers, 0, (size_t)rep.n_layers * sizeof *rep.layers);
  if (done_param) memset(done_param, 0, (size_t)q->n_params);
  if (!rep.layers || !done_param) {
    s = vmc_error(VMC_ERR_NOMEM, "ptq");
    goto done;
  }
  for (int i = 0, li = 0; i < f->n_nodes && !s; i++) {
    if (!is_target(&f->nodes[i])) continue;
    const int sid = site_of[i * VMC_MAX_INPUTS] >= 0 ? site_of[i * VMC_MAX_INPUTS]
                    : grid_of[f->nodes[i].in[0]];
    const site *st = sid >= 0 ? &sites[sid] : NULL;
    const vmc_node *n = &q->nodes[node_map[i]];
    vmc_ptq_layer *l = &rep.layers[li++];
    snprintf(l->node, sizeof l->node, "%s", n->name);
    snprintf(l->op, sizeof l->op, "%s", n->op->name);
    snprintf(l->input, sizeof l->input, "%s", f->values[f->nodes[i].in[0]].name);
    l->weight_bits = layer_weight_bits(&o, n);
    if (st) {
      snprintf(l->quant, sizeof l->quant, "%s", q->values[st->qvalue].name);
      l->act = st->qp;
      l->observer = st->value == f->input ? o.input_observer : o.observer;
      l->lo = st->lo;
      l->hi = st->hi;
      l->seen_min = st->st.min;
      l->seen_max = st->st.max;
      l->act_sqnr_db = st->se2 > 0 ? 10 * log10(st->sx2 / st->se2) : INFINITY;
      l->clipped = st->n ? (double)st->clipped / (double)st->n : 0;
    }
    if (done_param[n->param[0]]) /* a weight shared with an earlier node: already done */
      s = vmc_error(VMC_ERR_UNSUPPORTED, "ptq: node '%s' shares its weight '%s' with another "
                    "node", n->name, q->params[n->param[0]].name);
    const int ch = q->params[n->param[0]].shape.d[0];
    float *wscale = vmc_malloc_plain((size_t)ch * sizeof *wscale);
    if (!s && !wscale) s = vmc_error(VMC_ERR_NOMEM, "ptq");
    if (!s && l->weight_bits)
      s = quantize_weights(q, n, &o, vmc_qscheme_of_weight_bits(l->weight_bits),
                           st ? &st->qp : NULL, l, wscale);
    vmc_free(wscale);
    done_param[n->param[0]] = 1;
    if (n->n_param > 1) done_param[n->param[1]] = 1;
  }
  if (!s && o.bias_correct) {
    vmc_biascorr_report br;
    s = vmc_bias_correct(f, q, calib, rep.calib_images, o.batch, o.bias_s32, &br);
    rep.bias_corrected = br.layers;
    rep.bias_shift = br.mean_abs_shift;
  }
  rep.seconds = vmc_now() - t0;
  if (!s) s = write_meta(q, &o, &rep, calib->name[0] ? calib->name : calib->source);
done:
  for (int j = 0; j < n_sites; j++) vmc_observer_destroy(sites[j].obs);
  vmc_free(done_param);
  vmc_free(sites);
  vmc_free(site_of);
  vmc_free(grid_of);
  vmc_free(node_map);
  vmc_graph_free(f);
  if (s) {
    vmc_graph_free(q);
    if (report) *report = rep;
    else vmc_ptq_report_free(&rep);
    return s;
  }
  *out = q;
  if (report) *report = rep;
  else vmc_ptq_report_free(&rep);
  return VMC_OK;
}
