/* Quantization-aware training (see qat.h). */
#include "quant/qat.h"

#include "data/data.h"
#include "graph/rebuild.h"
#include "quant/qat_bn.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void vmc_qat_opts_default(vmc_qat_opts *o) {
  memset(o, 0, sizeof *o);
  vmc_ptq_opts_default(&o->ptq);
  vmc_train_config_default(&o->train);
  o->train.epochs = 2;
  o->train.lr = 0.003f;
  o->train.sched = VMC_SCHED_COSINE;
  o->freeze_observers_epoch = 1;
  o->momentum = 0.01f;
}

void vmc_qat_report_free(vmc_qat_report *r) {
  if (!r) return;
  vmc_ptq_report_free(&r->ptq);
  vmc_free(r->epoch);
  vmc_free(r->layers);
  vmc_free(r->fakequant);
  memset(r, 0, sizeof *r);
}

/* ---- weights -------------------------------------------------------------------- */

void vmc_qat_ste_mask(const float *w, int channels, size_t k, const vmc_qparams *params,
                      float *grad) {
  for (int c = 0; c < channels; c++) {
    const vmc_qparams *p = &params[c];
    const float inv = 1.0f / p->scale;
    for (size_t j = (size_t)c * k; j < (size_t)(c + 1) * k; j++) {
      const double r = nearbyint((double)(w[j] * inv)) + p->zero_point; /* NaN fails both */
      if (!(r >= p->qmin && r <= p->qmax)) grad[j] = 0.0f;
    }
  }
}

vmc_status vmc_qat_fake_quantize_weights(const float *w, int channels, size_t k,
                                         vmc_qscheme scheme, vmc_qparams *params, float *wq) {
  const vmc_qscheme_info *si = vmc_qscheme_get(scheme);
  if (!si || !si->symmetric)
    return vmc_error(VMC_ERR_INVALID_ARG, "qat: weight scheme %s is not symmetric (s8 or s4)",
                     si ? si->name : "?");
  for (int c = 0; c < channels; c++) {
    float amax = 0;
    for (size_t j = (size_t)c * k; j < (size_t)(c + 1) * k; j++) {
      if (!isfinite(w[j]))
        return vmc_error(VMC_ERR_INVALID_ARG, "qat: weight %zu is not finite (training "
                         "diverged? lower --lr)", j);
      amax = fabsf(w[j]) > amax ? fabsf(w[j]) : amax;
    }
    VMC_TRY(vmc_qparams_from_range(-amax, amax, scheme, &params[c]));
  }
  return vmc_qfake_quantize(w, channels, k, params, wq);
}

/* A conv2d/linear node of the quantized graph and its float shadow weight. */
typedef struct qweight {
  int node;         /* in q */
  int w, b;         /* parameter ids (b: -1 without a bias) */
  int fq;           /* the fakequant node it reads, or -1 (a float input) */
  vmc_qscheme scheme; /* its weights' (per-layer rules may differ from the opts) */
  int blocks;       /* scales: output channels, or 1 per tensor */
  size_t k;         /* weights per block */
  float *shadow;    /* what the optimizer updates */
  float *bshadow;   /* the float bias (NULL without one, or with float biases) */
  int bp;           /* with bshadow: the parameter it shadows (the bias, or the beta of bn) */
  vmc_qparams *qp;  /* blocks entries: the scales fq(shadow) uses */
  int bn;           /* the batchnorm node after it while one is in the graph, or -1 */
  float *a;         /* with bn: its gamma / sqrt(var + eps) per output channel */
} qweight;

/* A fakequant node and its moving-average observer or learned scale. */
typedef struct qobs {
  int node;         /* in q */
  vmc_qscheme scheme;
  float lo, hi;     /* the moving average of the per-batch min and max */
  int lsq;          /* the scale is learned (LSQ) */
  int started;      /* LSQ: the scale has its initial value */
  float velocity;   /* LSQ: SGD momentum buffer of the scale */
  vmc_qparams next; /* what the next forward uses (set by after_step) */
} qobs;

typedef struct qat_state {
  vmc_graph *q;
  const vmc_qat_opts *o;
  qweight *w;
  int nw;
  qobs *obs;
  int nobs;
  long freeze_step; /* observers update at steps < freeze_step (-1: always) */
  long bn_freeze_step; /* batchnorms use batch statistics at steps < bn_freeze_step */
  long steps_per_epoch, total_steps; /* of the schedule (LSQ's learning rate) */
  vmc_qscheme wscheme;
  vmc_epoch_result *epochs;
  int n_epochs;
} qat_state;

static void set_attr_f(vmc_node *n, const char *key, float v) {
  for (int i = 0; i < n->n_attr; i++)
    if (!strcmp(n->attr[i].key, key)) n->attr[i].f = v;
}
static void set_attr_i(vmc_node *n, const char *key, int32_t v) {
  for (int i = 0; i < n->n_attr; i++)
    if (!strcmp(n->attr[i].key, key)) n->attr[i].i = v;
}

static vmc_qparams fq_params(const vmc_node *n) {
  vmc_qparams p = {vmc_node_attr_f(n, "scale", 1.0f), vmc_node_attr_i(n, "zero_point", 0),
                   vmc_node_attr_i(n, "qmin", 0), vmc_node_attr_i(n, "qmax", 0)};
  return p;
}

static void fq_set(vmc_node *n, const vmc_qparams *p) {
  set_attr_f(n, "scale", p->scale);
  set_attr_i(n, "zero_point", p->zero_point);
  set_attr_i(n, "qmin", p->qmin);
  set_attr_i(n, "qmax", p->qmax);
}

/* The scheme whose range a fakequant node uses. */
static vmc_status fq_scheme(const vmc_node *n, vmc_qscheme *out) {
  const vmc_qparams p = fq_params(n);
  for (int s = 0; s < VMC_QSCHEME_COUNT; s++) {
    const vmc_qscheme_info *si = vmc_qscheme_get((vmc_qscheme)s);
    if (si->qmin == p.qmin && si->qmax == p.qmax) {
      *out = (vmc_qscheme)s;
      return VMC_OK;
    }
  }
  return vmc_error(VMC_ERR_UNSUPPORTED, "qat: fakequant node '%s' has range [%d, %d], no "
                   "known scheme's", n->name, (int)p.qmin, (int)p.qmax);
}

/* fq(shadow * a) into dst (oc * per floats), a of batchnorm w->bn of g, the
 * scales w->qp from max |shadow * a|: the weights of the folded layer. */
static vmc_status fake_folded(const vmc_graph *g, qweight *w, int oc, size_t per, float *dst) {
  vmc_qat_bn_scale(g, w->bn, w->a);
  for (int o = 0; o < oc; o++)
    for (size_t j = (size_t)o * per; j < (size_t)(o + 1) * per; j++) dst[j] = w->shadow[j] * w->a[o];
  return vmc_qat_fake_quantize_weights(dst, w->blocks, w->k, w->scheme, w->qp, dst);
}

/* What the next forward multiplies, into the parameter: fq(shadow), with
 * scales from max |shadow| (or the fixed ones, fixed); with a batchnorm
 * after the layer, fq(shadow * a) / a, scales from max |shadow * a|, and
 * the shadow itself in a channel whose a is 0 or subnormal (it contributes
 * nothing there). */
static vmc_status fake_weights(qat_state *st, qweight *w, int fixed) {
  vmc_param *pw = &st->q->params[w->w];
  if (w->bn < 0)
    return fixed ? vmc_qfake_quantize(w->shadow, w->blocks, w->k, w->qp, pw->data)
                 : vmc_qat_fake_quantize_weights(w->shadow, w->blocks, w->k, w->scheme, w->qp,
                                                 pw->data);
  const int oc = pw->shape.d[0];
  const size_t per = (size_t)w->blocks * w->k / (size_t)oc;
  VMC_TRY(fake_folded(st->q, w, oc, per, pw->data));
  for (int o = 0; o < oc; o++) {
    const int unit = fabsf(w->a[o]) >= FLT_MIN;
    for (size_t j = (size_t)o * per; j < (size_t)(o + 1) * per; j++)
      pw->data[j] = unit ? pw->data[j] / w->a[o] : w->shadow[j];
  }
  return VMC_OK;
}

/* The shadows into the parameters they stand for (what the optimizer
 * updates and a checkpoint saves), or the parameters back into them. */
static void shadows_to_params(vmc_graph *g, const qweight *w) {
  memcpy(g->params[w->w].data, w->shadow, (size_t)w->blocks * w->k * sizeof(float));
  if (w->bshadow)
    memcpy(g->params[w->bp].data, w->bshadow, vmc_shape_count(&g->params[w->bp].shape) * sizeof(float));
}
static void params_to_shadows(const vmc_graph *g, qweight *w) {
  memcpy(w->shadow, g->params[w->w].data, (size_t)w->blocks * w->k * sizeof(float));
  if (w->bshadow)
    memcpy(w->bshadow, g->params[w->bp].data, vmc_shape_count(&g->params[w->bp].shape) * sizeof(float));
}

static int is_layer(const vmc_node *n) {
  return n->n_param >= 1 && (!strcmp(n->op->name, "conv2d") || !strcmp(n->op->name, "linear"));
}

/* Weights of q's conv2d/linear nodes: shadows from the float graph f (the
 * folded one, or with batchnorms in q the model); the fakequant each one
 * reads from the PTQ report; bn_of (NULL: no batchnorm in q) the batchnorm
 * node after each node of q, or -1. */
static vmc_status setup_weights(qat_state *st, const vmc_graph *f, const vmc_ptq_report *pr,
                                const int *bn_of) {
  vmc_graph *q = st->q;
  int n = 0;
  for (int i = 0; i < q->n_nodes; i++) n += is_layer(&q->nodes[i]);
  st->w = vmc_malloc_plain((size_t)(n ? n : 1) * sizeof *st->w);
  if (!st->w) return vmc_error(VMC_ERR_NOMEM, "qat: weights");
  for (int i = 0; i < q->n_nodes; i++) {
    const vmc_node *nd = &q->nodes[i];
    if (!is_layer(nd)) continue;
    const vmc_ptq_layer *l = NULL;
    for (int k = 0; k < pr->n_layers; k++)
      if (!strcmp(pr->layers[k].node, nd->name)) l = &pr->layers[k];
    if (!l) return vmc_error(VMC_ERR_INTERNAL, "qat: node '%s' is not in the PTQ report", nd->name);
    if (!l->weight_bits) continue; /* a per-layer rule keeps it fp32: it trains as it is */
    qweight *w = &st->w[st->nw++];
    const vmc_param *pw = &q->params[nd->param[0]];
    const size_t total = vmc_shape_count(&pw->shape);
    w->node = i;
    w->w = nd->param[0];
    w->b = nd->n_param > 1 ? nd->param[1] : -1;
    w->scheme = vmc_qscheme_of_weight_bits(l->weight_bits);
    w->fq = l->quant[0] ? vmc_graph_find_node(q, l->quant) : -1;
    if (l->quant[0] && (w->fq < 0 || strcmp(q->nodes[w->fq].op->name, "fakequant")))
      return vmc_error(VMC_ERR_INTERNAL, "qat: node '%s' reads '%s', not a fakequant", nd->name,
                       l->quant);
    w->bn = bn_of ? bn_of[i] : -1;
    w->blocks = st->o->ptq.per_channel ? pw->shape.d[0] : 1;
    w->k = total / (size_t)w->blocks;
    w->shadow = vmc_malloc_plain(total * sizeof *w->shadow);
    w->qp = vmc_malloc_plain((size_t)w->blocks * sizeof *w->qp);
    if (w->bn >= 0) w->a = vmc_malloc_plain((size_t)pw->shape.d[0] * sizeof *w->a);
    if (!w->shadow || !w->qp || (w->bn >= 0 && !w->a)) return vmc_error(VMC_ERR_NOMEM, "qat: weights of '%s'", nd->name);
    const int fi = vmc_graph_find_param(f, pw->name);
    if (fi < 0 || !vmc_shape_eq(&f->params[fi].shape, &pw->shape))
      return vmc_error(VMC_ERR_INTERNAL, "qat: weight '%s' of node '%s' has no float original",
                       pw->name, nd->name);
    memcpy(w->shadow, f->params[fi].data, total * sizeof *w->shadow);
    /* Stored as float while it trains (the PTQ scales no longer hold). */
    VMC_TRY(vmc_param_set_quantized(q, w->w, VMC_F32, NULL, 0));
    VMC_TRY(fake_weights(st, w, 0));
    if (w->b >= 0) { /* the float bias: the shadow of the s32 one */
      const int fb = vmc_graph_find_param(f, q->params[w->b].name);
      const size_t nb = vmc_shape_count(&q->params[w->b].shape);
      if (fb < 0) return vmc_error(VMC_ERR_INTERNAL, "qat: bias '%s' has no float original",
                                   q->params[w->b].name);
      memcpy(q->params[w->b].data, f->params[fb].data, nb * sizeof(float));
    }
    /* The shadow of the s32 bias: the layer's float bias, or with a
     * batchnorm after the layer its beta (the folded bias follows it). */
    w->bp = w->bn >= 0 ? q->nodes[w->bn].param[1] : w->b;
    if (st->o->ptq.bias_s32 && w->fq >= 0 && w->bp >= 0) {
      const size_t nb = vmc_shape_count(&q->params[w->bp].shape);
      w->bshadow = vmc_malloc_plain(nb * sizeof *w->bshadow);
      if (!w->bshadow) return vmc_error(VMC_ERR_NOMEM, "qat: bias of '%s'", nd->name);
      memcpy(w->bshadow, q->params[w->bp].data, nb * sizeof(float));
    }
  }
  if (!st->nw) return vmc_error(VMC_ERR_INVALID_ARG, "qat: no conv2d or linear weight to quantize");
  return VMC_OK;
}

/* One observer per fakequant node, started at its calibrated range.  With
 * 4-bit activations the nodes that a conv2d/linear reads move to u4 (the
 * GEMM operands), except the one on the graph input (u8 pixels: the 8-bit
 * grid is free); the others (residual add operands) stay 8-bit. */
static vmc_status setup_observers(qat_state *st, vmc_qscheme act) {
  vmc_graph *q = st->q;
  st->obs = vmc_malloc_plain((size_t)(q->n_nodes ? q->n_nodes : 1) * sizeof *st->obs);
  if (!st->obs) return vmc_error(VMC_ERR_NOMEM, "qat: observers");
  for (int i = 0; i < q->n_nodes; i++) {
    vmc_node *n = &q->nodes[i];
    if (strcmp(n->op->name, "fakequant")) continue;
    qobs *ob = &st->obs[st->nobs++];
    ob->node = i;
    const vmc_qparams p = fq_params(n);
    ob->lo = (float)(p.qmin - p.zero_point) * p.scale;
    ob->hi = (float)(p.qmax - p.zero_point) * p.scale;
    VMC_TRY(fq_scheme(n, &ob->scheme));
    int gemm_operand = 0;
    for (int j = 0; j < st->nw; j++) gemm_operand |= st->w[j].fq == i;
    gemm_operand &= n->in[0] != q->input;
    if (act == VMC_QSCHEME_U4 && gemm_operand) {
      vmc_qparams p4;
      ob->scheme = VMC_QSCHEME_U4;
      VMC_TRY(vmc_qparams_from_range(ob->lo, ob->hi, VMC_QSCHEME_U4, &p4));
      fq_set(n, &p4);
    }
    ob->lsq = st->o->learn_act_scales && gemm_operand;
    ob->next = fq_params(n);
  }
  return VMC_OK;
}

/* The bias as the integer runtime adds it: s32 codes of scale s_w[c] * s_x
 * (the scales of this step), as the PTQ pass rounds it; a product below
 * FLT_MIN stays float.  With a batchnorm after the layer, the beta that
 * makes the folded bias a * b + (beta - mean * a) (fold.h) that grid value,
 * a the scales of the last fake_weights, b the layer's bias (0 without). */
static void quantize_bias(qat_state *st, const qweight *w) {
  if (!w->bshadow) return;
  vmc_param *pb = &st->q->params[w->bp];
  const float sx = fq_params(&st->q->nodes[w->fq]).scale;
  const float *mean = w->bn >= 0 ? st->q->params[st->q->nodes[w->bn].param[2]].data : NULL;
  const float *b = w->bn >= 0 && w->b >= 0 ? st->q->params[w->b].data : NULL;
  for (int c = 0; c < pb->shape.d[0]; c++) {
    const float sw = w->qp[w->blocks > 1 ? c : 0].scale;
    if (!mean) {
      pb->data[c] = vmc_qbias_s32(w->bshadow[c], sw, sx);
      continue;
    }
    const float ab = b ? w->a[c] * b[c] : 0.0f, ma = mean[c] * w->a[c];
    pb->data[c] = vmc_qbias_s32(ab + (w->bshadow[c] - ma), sw, sx) - ab + ma;
  }
}

/* ---- the hooks ------------------------------------------------------------------ */

/* Values a fakequant node read in the last forward: *n of them. */
static const float *fq_input(const vmc_plan *p, const vmc_node *nd, size_t *n) {
  const vmc_shape *sh = vmc_plan_value_shape(p, nd->in[0]);
  *n = vmc_shape_count(sh) / (size_t)sh->d[0] * (size_t)p->last_n;
  return vmc_plan_value(p, nd->in[0]);
}

/* LSQ's initial scale from the first batch: 2 mean|x| / sqrt(qmax - zp). */
static void lsq_start(qobs *ob, const float *x, size_t cnt) {
  double sum = 0;
  size_t k = 0;
  for (size_t i = 0; i < cnt; i++)
    if (isfinite(x[i])) sum += fabsf(x[i]), k++;
  const double s = k ? 2 * sum / (double)k / sqrt((double)(ob->next.qmax - ob->next.zero_point)) : 0;
  if (s >= 1e-8 && s <= FLT_MAX) ob->next.scale = (float)s;
  ob->started = 1;
}

/* Observers see this batch's inputs of the fakequant nodes; LSQ scales
 * start from the first batch.  What they choose applies from the next
 * forward (qat_after_step). */
static vmc_status qat_after_forward(void *user, vmc_plan *p, long step) {
  qat_state *st = user;
  const int frozen = st->freeze_step >= 0 && step >= st->freeze_step;
  const float m = st->o->momentum;
  vmc_status s = VMC_OK;
  for (int j = 0; j < st->nobs && !s; j++) {
    qobs *ob = &st->obs[j];
    vmc_node *n = &st->q->nodes[ob->node];
    size_t cnt;
    const float *x = fq_input(p, n, &cnt);
    if (ob->lsq) {
      if (!ob->started) lsq_start(ob, x, cnt);
      continue;
    }
    if (frozen) continue;
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < cnt; i++) {
      if (!isfinite(x[i])) continue;
      lo = x[i] < lo ? x[i] : lo;
      hi = x[i] > hi ? x[i] : hi;
    }
    if (lo > hi) continue; /* nothing finite: keep the range */
    ob->lo += m * (lo - ob->lo);
    ob->hi += m * (hi - ob->hi);
    s = vmc_qparams_from_range(ob->lo, ob->hi, ob->scheme, &ob->next);
    if (s) s = vmc_error(s, "qat: the range of fakequant '%s': %s", n->name, vmc_last_error());
  }
  return s;
}

/* LSQ (Esser et al. 2020): d fq(x) / ds is round(v) - v inside the grid
 * (v = x / s) and the edge code (qmin - zp or qmax - zp) outside it (the
 * op's STE mask: the rounded code decides), times the gradient scale
 * 1 / sqrt(N * (qmax - zp)), N the values per image; one SGD step with
 * momentum at the weights' learning rate. */
static void lsq_step(qobs *ob, const vmc_plan *p, const vmc_node *n, const vmc_train_config *c,
                     float lr) {
  size_t cnt;
  const float *x = fq_input(p, n, &cnt);
  const float *dy = p->grad[n->out];
  const vmc_qparams q = fq_params(n);
  const float inv = 1.0f / q.scale;
  const double lo = (double)q.qmin - q.zero_point, hi = (double)q.qmax - q.zero_point;
  double ds = 0;
  for (size_t i = 0; i < cnt; i++) {
    const float v = x[i] * inv;
    if (v != v) continue;
    const double r = nearbyint((double)v);
    ds += (double)dy[i] * (r < lo ? lo : r > hi ? hi : r - v);
  }
  const double per_image = (double)cnt / p->last_n;
  ds /= sqrt(per_image * (hi > 1 ? hi : 1));
  ob->velocity = c->momentum * ob->velocity + (float)ds;
  const float s = ob->next.scale - lr * ob->velocity;
  ob->next.scale = s > 1e-3f * ob->next.scale ? s : 1e-3f * ob->next.scale;
}

/* The gradient of fq(w) becomes the shadow's (STE), and the optimizer
 * updates the shadow. */
static vmc_status qat_before_optim(void *user, vmc_plan *p, long step) {
  qat_state *st = user;
  const float lr = vmc_sched_lr(&st->o->train, step, st->steps_per_epoch, st->total_steps);
  for (int j = 0; j < st->nobs; j++)
    if (st->obs[j].lsq) lsq_step(&st->obs[j], p, &st->q->nodes[st->obs[j].node], &st->o->train, lr);
  for (int j = 0; j < st->nw; j++) {
    qweight *w = &st->w[j];
    vmc_param *pw = &st->q->params[w->w];
    if (st->o->fixed_weight_scales) vmc_qat_ste_mask(w->shadow, w->blocks, w->k, w->qp, pw->grad);
    shadows_to_params(st->q, w); /* the bias: plain STE (its grid is about 1e-4 of it) */
  }
  return VMC_OK;
}

/* The updated shadow is kept; the next forward reads fq(shadow) and the
 * activation qparams chosen in this step. */
static vmc_status qat_after_step(void *user, vmc_plan *p, long step) {
  qat_state *st = user;
  for (int j = 0; j < st->nobs; j++) fq_set(&st->q->nodes[st->obs[j].node], &st->obs[j].next);
  for (int j = 0; j < st->nw; j++) {
    qweight *w = &st->w[j];
    params_to_shadows(st->q, w);
    vmc_status s = fake_weights(st, w, st->o->fixed_weight_scales);
    if (s)
      return vmc_error(s, "qat: weight '%s' at step %ld: %s", st->q->params[w->w].name, step,
                       vmc_last_error());
    quantize_bias(st, w);
  }
  return VMC_OK;
}

/* Batch statistics before the freeze, the running ones from it on. */
static vmc_status qat_before_step(void *user, vmc_plan *p, long step) {
  qat_state *st = user;
  vmc_qat_bn_freeze(st->q, step >= st->bn_freeze_step);
  return VMC_OK;
}

/* ---- checkpoints ---------------------------------------------------------------- */

/* What must match between the run that saved a checkpoint and the one that
 * resumes it, beyond the trainer's checks (the parameters, batch,
 * optimizer). */
static void ckpt_header(const qat_state *st, char *buf, size_t n) {
  const vmc_qat_opts *o = st->o;
  snprintf(buf, n, "qat 1 w%d a%s %s fixed %d lsq %d bn %d fq %d layers %d",
           vmc_qscheme_weight_bits(o->ptq.weight_scheme), vmc_qscheme_get(o->ptq.act_scheme)->name,
           o->ptq.per_channel ? "per-channel" : "per-tensor", o->fixed_weight_scales,
           o->learn_act_scales, o->freeze_bn_epoch, st->nobs, st->nw);
}

/* "checkpoint.qat": the header line, then per fakequant its moving-average
 * range, LSQ state and next parameters (floats as %a: exact). */
static vmc_status ckpt_save(qat_state *st, vmc_graph *g) {
  char *buf = NULL, head[160];
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return vmc_error(VMC_ERR_NOMEM, "qat: checkpoint");
  ckpt_header(st, head, sizeof head);
  fprintf(f, "%s\n", head);
  for (int j = 0; j < st->nobs; j++) {
    const qobs *ob = &st->obs[j];
    fprintf(f, "%a %a %d %a %a %d %d %d\n", (double)ob->lo, (double)ob->hi, ob->started,
            (double)ob->velocity, (double)ob->next.scale, (int)ob->next.zero_point,
            (int)ob->next.qmin, (int)ob->next.qmax);
  }
  const int bad = ferror(f);
  fclose(f);
  vmc_status s = bad || !buf ? vmc_error(VMC_ERR_NOMEM, "qat: checkpoint")
                             : vmc_graph_set_meta(g, "checkpoint.qat", buf);
  free(buf);
  return s;
}

static int next_float(const char **p, float *v) {
  char *end;
  *v = strtof(*p, &end);
  const int ok = end != *p && isfinite(*v);
  *p = end;
  return ok;
}
static int next_int(const char **p, int *v) {
  char *end;
  const long x = strtol(*p, &end, 10);
  const int ok = end != *p && x >= INT32_MIN && x <= INT32_MAX;
  *v = (int)x;
  *p = end;
  return ok;
}

static vmc_status ckpt_load(qat_state *st, const vmc_graph *g) {
  const char *v = vmc_graph_meta(g, "checkpoint.qat");
  const char *resume = st->o->train.resume;
  if (!v)
    return vmc_error(VMC_ERR_FORMAT, "checkpoint %s was not written by quantization-aware "
                     "training", resume);
  char head[160];
  ckpt_header(st, head, sizeof head);
  const size_t hl = strlen(head);
  if (strncmp(v, head, hl) || v[hl] != '\n')
    return vmc_error(VMC_ERR_INVALID_ARG, "checkpoint %s was written by another QAT run (%.*s), "
                     "not this one (%s)", resume, (int)strcspn(v, "\n"), v, head);
  const char *p = v + hl + 1;
  for (int j = 0; j < st->nobs; j++) {
    qobs *ob = &st->obs[j];
    float lo, hi, vel, scale;
    int started, zp, qmin, qmax;
    if (!next_float(&p, &lo) || !next_float(&p, &hi) || !next_int(&p, &started) ||
        !next_float(&p, &vel) || !next_float(&p, &scale) || !next_int(&p, &zp) ||
        !next_int(&p, &qmin) || !next_int(&p, &qmax) || !(scale > 0) || qmin > qmax)
      return vmc_error(VMC_ERR_FORMAT, "checkpoint %s: the state of fakequant %d is malformed",
                       resume, j);
    ob->lo = lo, ob->hi = hi, ob->started = started != 0, ob->velocity = vel;
    ob->next = (vmc_qparams){scale, zp, qmin, qmax};
    fq_set(&st->q->nodes[ob->node], &ob->next);
  }
  while (*p == '\n' || *p == ' ') p++;
  if (*p)
    return vmc_error(VMC_ERR_FORMAT, "checkpoint %s: trailing QAT state", resume);
  return VMC_OK;
}

/* Saving: the parameters hold the shadows (the float weights and biases
 * the optimizer updates), the observers go to metadata; saved: the forward's
 * fq(shadow) and s32 biases back.  Loaded: shadows from the parameters,
 * observers from the metadata, then the forward's weights. */
static vmc_status qat_checkpoint(void *user, vmc_graph *g, int phase) {
  qat_state *st = user;
  for (int j = 0; j < st->nw; j++) {
    if (phase == VMC_CKPT_SAVE) shadows_to_params(g, &st->w[j]);
    else if (phase == VMC_CKPT_LOADED) params_to_shadows(g, &st->w[j]);
  }
  if (phase == VMC_CKPT_SAVE) return ckpt_save(st, g);
  if (phase == VMC_CKPT_LOADED) VMC_TRY(ckpt_load(st, g));
  for (int j = 0; j < st->nw; j++) {
    VMC_TRY(fake_weights(st, &st->w[j], st->o->fixed_weight_scales));
    quantize_bias(st, &st->w[j]);
  }
  return VMC_OK;
}

static void qat_on_epoch(void *user, const vmc_epoch_result *r) {
  qat_state *st = user;
  if (st->epochs) st->epochs[st->n_epochs++] = *r;
  if (st->o->on_epoch) st->o->on_epoch(st->o->cb_user, r);
}

/* ---- the end: the PTQ graph's contract -------------------------------------------- */

/* The batchnorms folded (vmc_graph_fold_bn_copy) into st->q: each layer
 * after one gets the weights fq(shadow * a) with its final scales and, with
 * s32 biases, the folded bias as the shadow of its s32 one; the layers and
 * observers move to the folded graph's nodes. */
static vmc_status fold_bn(qat_state *st) {
  vmc_graph *u = st->q, *q;
  for (int j = 0; j < st->nw; j++) /* the betas themselves, not their grid-fitted forms */
    if (st->w[j].bshadow)
      memcpy(u->params[st->w[j].bp].data, st->w[j].bshadow,
             vmc_shape_count(&u->params[st->w[j].bp].shape) * sizeof(float));
  VMC_TRY(vmc_graph_fold_bn_copy(u, &q, NULL));
  vmc_status s = VMC_OK;
  for (int j = 0; j < st->nw && !s; j++) {
    qweight *w = &st->w[j];
    const int node = vmc_graph_find_node(q, u->nodes[w->node].name);
    const int fq = w->fq >= 0 ? vmc_graph_find_node(q, u->nodes[w->fq].name) : -1;
    if (node < 0 || (w->fq >= 0 && fq < 0) || (w->bn >= 0 && q->nodes[node].n_param < 2)) {
      s = vmc_error(VMC_ERR_INTERNAL, "qat: node '%s' is not in the folded graph, or its "
                    "batchnorm was not folded into it", u->nodes[w->node].name);
      break;
    }
    const vmc_node *n = &q->nodes[node];
    w->node = node;
    w->fq = fq;
    w->w = n->param[0];
    w->b = n->n_param > 1 ? n->param[1] : -1;
    w->bp = w->b;
    if (w->bn < 0) continue;
    vmc_param *pw = &q->params[w->w];
    const int oc = pw->shape.d[0];
    s = fake_folded(u, w, oc, vmc_shape_count(&pw->shape) / (size_t)oc, pw->data);
    w->bn = -1;
    if (s || !w->bshadow) continue;
    memcpy(w->bshadow, q->params[w->b].data, (size_t)oc * sizeof *w->bshadow); /* folded */
  }
  for (int j = 0; j < st->nobs && !s; j++) {
    const char *name = u->nodes[st->obs[j].node].name;
    st->obs[j].node = vmc_graph_find_node(q, name);
    if (st->obs[j].node < 0)
      s = vmc_error(VMC_ERR_INTERNAL, "qat: fakequant '%s' is not in the folded graph", name);
  }
  if (s) {
    vmc_graph_free(q);
    return s;
  }
  st->q = q;
  vmc_graph_free(u);
  for (int j = 0; j < st->nw; j++) quantize_bias(st, &st->w[j]);
  return VMC_OK;
}

/* The weights' storage: codes times the final scales (the biases are on
 * their grid since the last step). */
static vmc_status finish_weights(qat_state *st) {
  vmc_graph *q = st->q;
  float *scales = NULL;
  vmc_status s = VMC_OK;
  for (int j = 0; j < st->nw && !s; j++) {
    qweight *w = &st->w[j];
    vmc_free(scales);
    scales = vmc_malloc_plain((size_t)w->blocks * sizeof *scales);
    if (!scales) return vmc_error(VMC_ERR_NOMEM, "qat: scales");
    for (int c = 0; c < w->blocks; c++) scales[c] = w->qp[c].scale;
    s = vmc_param_set_quantized(q, w->w, vmc_qscheme_get(w->scheme)->dtype, scales, w->blocks);
  }
  vmc_free(scales);
  return s;
}

static const char *sched_name(vmc_sched_kind k) {
  return k == VMC_SCHED_COSINE ? "cosine" : k == VMC_SCHED_STEP ? "step"
         : k == VMC_SCHED_ONECYCLE ? "onecycle" : "constant";
}

/* The final layers and fakequant nodes into the report (r->layers,
 * r->fakequant): what the "quant" metadata no longer repeats. */
static vmc_status fill_report(const qat_state *st, vmc_qat_report *r) {
  r->layers = vmc_malloc_plain((size_t)(st->nw ? st->nw : 1) * sizeof *r->layers);
  r->fakequant = vmc_malloc_plain((size_t)(st->nobs ? st->nobs : 1) * sizeof *r->fakequant);
  if (!r->layers || !r->fakequant) return vmc_error(VMC_ERR_NOMEM, "qat: report");
  for (int j = 0; j < st->nw; j++) {
    const qweight *w = &st->w[j];
    vmc_qat_layer *l = &r->layers[r->n_layers++];
    const vmc_node *fq = w->fq >= 0 ? &st->q->nodes[w->fq] : NULL;
    snprintf(l->node, sizeof l->node, "%s", st->q->nodes[w->node].name);
    snprintf(l->quant, sizeof l->quant, "%s", fq ? fq->name : "");
    snprintf(l->input, sizeof l->input, "%s", fq ? st->q->values[fq->in[0]].name : "");
    l->weight_bits = vmc_qscheme_weight_bits(w->scheme);
    l->channels = w->blocks;
    l->w_scale_min = FLT_MAX;
    for (int k = 0; k < w->blocks; k++) { /* the scales themselves are on the parameter */
      l->w_scale_min = w->qp[k].scale < l->w_scale_min ? w->qp[k].scale : l->w_scale_min;
      l->w_scale_max = w->qp[k].scale > l->w_scale_max ? w->qp[k].scale : l->w_scale_max;
    }
  }
  for (int k = 0; k < st->nobs; k++) {
    const vmc_node *n = &st->q->nodes[st->obs[k].node];
    vmc_qat_fakequant *f = &r->fakequant[r->n_fakequant++];
    snprintf(f->node, sizeof f->node, "%s", n->name);
    snprintf(f->input, sizeof f->input, "%s", st->q->values[n->in[0]].name);
    f->lsq = st->obs[k].lsq;
    f->qp = fq_params(n);
    f->lo = st->obs[k].lo;
    f->hi = st->obs[k].hi;
  }
  return VMC_OK;
}

/* "quant", a summary (method qat, the schemes, observers, training; what
 * each layer and fakequant ended with is in the graph and the report), and
 * a "history" line. */
static vmc_status write_meta(qat_state *st, const vmc_ptq_report *pr, const char *data_name,
                             const char *scheme) {
  const vmc_qat_opts *o = st->o;
  const vmc_train_config *c = &o->train;
  const vmc_qscheme_info *ws = vmc_qscheme_get(st->wscheme), *as = vmc_qscheme_get(o->ptq.act_scheme);
  char bn[96] = "folded from epoch 0";
  if (o->freeze_bn_epoch > 0)
    snprintf(bn, sizeof bn, "batch statistics in epochs 1..%d, then frozen; folded at the end",
             o->freeze_bn_epoch);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return vmc_error(VMC_ERR_NOMEM, "qat: metadata");
  fprintf(f, "{\"method\":\"qat\",\"scheme\":\"%s\",\"weights\":{\"scheme\":\"%s\","
          "\"granularity\":\"%s\",\"scales\":\"%s\"},\"activations\":{\"scheme\":\"%s\","
          "\"input_scheme\":\"%s\",\"gemm_inputs\":\"%s\",\"observer\":\"moving-avg\",\"momentum\":%.9g,"
          "\"frozen_after_epoch\":%d,\"start\":\"%s\"},\"bias\":\"%s\",\"batchnorm_folded\":%d,"
          "\"batchnorm\":\"%s\",\"freeze_bn_epoch\":%d,\"calibration\":{\"data\":\"%s\","
          "\"split\":\"train\",\"images\":%d},\"training\":{\"data\":\"%s\",\"epochs\":%d,"
          "\"batch\":%d,\"optimizer\":\"%s\",\"lr\":%.9g,\"schedule\":\"%s\","
          "\"weight_decay\":%.9g,\"seed\":%llu},\"quantized_layers\":%d,\"quantized_values\":%d}",
          scheme, ws->name, o->ptq.per_channel ? "per-channel" : "per-tensor",
          o->fixed_weight_scales ? "fixed (ptq)" : "max|w| per step", as->name,
          o->ptq.act_scheme == VMC_QSCHEME_U4 ? "u8" : as->name,
          o->learn_act_scales ? "lsq" : "moving-avg", (double)o->momentum,
          o->freeze_observers_epoch, vmc_observer_kind_name(o->ptq.observer),
          o->ptq.bias_s32 ? "s32" : "f32", pr->bn_folded, bn, o->freeze_bn_epoch, data_name,
          pr->calib_images, data_name,
          c->epochs, c->batch, c->optimizer == VMC_OPT_ADAMW ? "adamw" : "sgd", (double)c->lr,
          sched_name(c->sched), (double)c->weight_decay, (unsigned long long)c->seed, st->nw,
          st->nobs);
  const int bad = ferror(f);
  fclose(f);
  vmc_status s = bad || !buf ? vmc_error(VMC_ERR_NOMEM, "qat: metadata")
                             : vmc_graph_set_meta(st->q, "quant", buf);
  free(buf);
  if (s) return s;
  char line[384];
  const vmc_epoch_result *last = st->n_epochs ? &st->epochs[st->n_epochs - 1] : NULL;
  char acc[48] = "";
  if (last && last->test_acc >= 0) snprintf(acc, sizeof acc, ", test accuracy %.2f%%", 100.0 * last->test_acc);
  snprintf(line, sizeof line, "qat %s: %d epochs on %s/train (%s lr %g %s, batch %d), weights %s "
           "%s (%s), activations %s (%smoving-avg %g frozen after epoch %d), batchnorm %s%s",
           scheme, c->epochs, data_name,
           c->optimizer == VMC_OPT_ADAMW ? "adamw" : "sgd", (double)c->lr, sched_name(c->sched),
           c->batch, ws->name, o->ptq.per_channel ? "per-channel" : "per-tensor",
           o->fixed_weight_scales ? "fixed scales" : "scales from max|w| each step", as->name,
           o->learn_act_scales ? "conv/linear inputs LSQ, others " : "", (double)o->momentum,
           o->freeze_observers_epoch, bn, acc);
  return vmc_graph_add_history(st->q, line);
}

/* ---- the pass ------------------------------------------------------------------- */

static vmc_status check_opts(const vmc_qat_opts *o, const vmc_dataset *train) {
  const vmc_qscheme a = o->ptq.act_scheme;
  if (a != VMC_QSCHEME_U8 && a != VMC_QSCHEME_S8 && a != VMC_QSCHEME_U4) {
    const vmc_qscheme_info *si = vmc_qscheme_get(a);
    return vmc_error(VMC_ERR_UNSUPPORTED, "qat: activation scheme %s: expected u8, s8 or u4",
                     si ? si->name : "?");
  }
  if (!(o->momentum > 0 && o->momentum <= 1))
    return vmc_error(VMC_ERR_INVALID_ARG, "qat: observer momentum %g must be in (0, 1]",
                     (double)o->momentum);
  if (o->freeze_observers_epoch < -1 || o->freeze_observers_epoch > o->train.epochs)
    return vmc_error(VMC_ERR_INVALID_ARG, "qat: --freeze-observers-epoch %d must be in 0..%d "
                     "(the epochs), or -1 for never", o->freeze_observers_epoch, o->train.epochs);
  if (o->freeze_bn_epoch < 0 || o->freeze_bn_epoch > o->train.epochs)
    return vmc_error(VMC_ERR_INVALID_ARG, "qat: --freeze-bn-epoch %d must be in 0..%d (the "
                     "epochs)", o->freeze_bn_epoch, o->train.epochs);
  if (o->freeze_bn_epoch > 0 && o->fixed_weight_scales)
    return vmc_error(VMC_ERR_INVALID_ARG, "qat: --fixed-weight-scales needs BatchNorm folded from "
                     "the start (--freeze-bn-epoch 0): while it learns, the folded weights move");
  if (o->freeze_bn_epoch > 0 && o->ptq.equalize > 0)
    return vmc_error(VMC_ERR_INVALID_ARG, "qat: cross-layer equalization rescales the folded "
                     "weights; it needs --freeze-bn-epoch 0");
  if (!train || train->n < 1) return vmc_error(VMC_ERR_INVALID_ARG, "qat: no training images");
  return VMC_OK;
}

static void free_state(qat_state *st) {
  for (int j = 0; j < st->nw; j++) {
    vmc_free(st->w[j].shadow);
    vmc_free(st->w[j].qp);
    vmc_free(st->w[j].bshadow);
    vmc_free(st->w[j].a);
  }
  vmc_free(st->w);
  vmc_free(st->obs);
}

vmc_status vmc_qat(const vmc_graph *g, const vmc_dataset *train, const vmc_dataset *test,
                   const vmc_qat_opts *opts, vmc_graph **out, vmc_qat_report *report) {
  *out = NULL;
  if (report) memset(report, 0, sizeof *report);
  vmc_qat_opts o;
  if (opts) o = *opts;
  else vmc_qat_opts_default(&o);
  VMC_TRY(check_opts(&o, train));
  const double t0 = vmc_now();
  vmc_ptq_opts po = o.ptq;
  if (po.act_scheme == VMC_QSCHEME_U4) po.act_scheme = VMC_QSCHEME_U8; /* calibrate on u8 */
  vmc_ptq_report pr = {0};
  vmc_graph *q = NULL, *f = NULL;
  qat_state st = {.o = &o, .wscheme = o.ptq.weight_scheme};
  int *bn_of = NULL; /* batchnorms in the graph: the one after each node */
  vmc_status s = vmc_ptq_quantize(g, train, &po, &q, &pr);
  if (!s && o.freeze_bn_epoch > 0) {
    bn_of = vmc_malloc_plain((size_t)(q->n_nodes + g->n_nodes) * sizeof *bn_of);
    vmc_graph *u = NULL;
    s = bn_of ? vmc_qat_bn_graph(g, q, &u, bn_of) : vmc_error(VMC_ERR_NOMEM, "qat");
    vmc_graph_free(q);
    q = u;
  } else if (!s) {
    s = vmc_graph_fold_bn_copy(g, &f, NULL);
  }
  st.q = q;
  if (!s) s = setup_weights(&st, f ? f : g, &pr, bn_of);
  vmc_free(bn_of);
  if (!s) s = setup_observers(&st, o.ptq.act_scheme);
  for (int j = 0; j < st.nw && !s; j++) quantize_bias(&st, &st.w[j]);
  st.epochs = vmc_malloc_plain((size_t)o.train.epochs * sizeof *st.epochs);
  if (!s && !st.epochs) s = vmc_error(VMC_ERR_NOMEM, "qat");
  if (!s) {
    const int n_train = o.train.limit_train > 0 && o.train.limit_train < train->n
                            ? o.train.limit_train : train->n;
    const int batch = o.train.batch < n_train ? o.train.batch : n_train;
    st.steps_per_epoch = (n_train + batch - 1) / batch;
    st.total_steps = st.steps_per_epoch * o.train.epochs;
    st.freeze_step = o.freeze_observers_epoch < 0 ? -1 : o.freeze_observers_epoch * st.steps_per_epoch;
    st.bn_freeze_step = o.freeze_bn_epoch * st.steps_per_epoch;
    const vmc_train_hooks hooks = {.user = &st, .after_forward = qat_after_forward,
                                   .before_optim = qat_before_optim, .after_step = qat_after_step,
                                   .before_step = o.freeze_bn_epoch > 0 ? qat_before_step : NULL,
                                   .checkpoint = qat_checkpoint};
    vmc_train_result tr;
    s = vmc_train(st.q, train, test, &o.train, &hooks, qat_on_epoch, &st, &tr);
  }
  if (!s && o.freeze_bn_epoch > 0) s = fold_bn(&st);
  char scheme[8];
  snprintf(scheme, sizeof scheme, "w%da%d", vmc_qscheme_weight_bits(o.ptq.weight_scheme),
           o.ptq.act_scheme == VMC_QSCHEME_U4 ? 4 : 8);
  if (!s) s = finish_weights(&st);
  if (!s) s = write_meta(&st, &pr, train->name[0] ? train->name : train->source, scheme);
  if (!s && report) s = fill_report(&st, report);
  free_state(&st);
  vmc_graph_free(f);
  if (report) {
    report->ptq = pr;
    report->epochs = st.n_epochs;
    report->epoch = st.epochs;
    report->seconds = vmc_now() - t0;
  } else {
    vmc_ptq_report_free(&pr);
    vmc_free(st.epochs);
  }
  if (s) {
    vmc_graph_free(st.q);
    return s;
  }
  *out = st.q;
  return VMC_OK;
}
