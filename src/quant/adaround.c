/* AdaRound: learned rounding of quantized weights (see adaround.h). */
#include "quant/adaround.h"

#include "data/data.h"
#include "graph/op.h"
#include "graph/plan.h"
#include "graph/rebuild.h"
#include "kernels/conv.h"
#include "kernels/gemm.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void vmc_adaround_opts_default(vmc_adaround_opts *o) {
  memset(o, 0, sizeof *o);
  o->iters = 1000;
  o->batch = 1024;
  o->calib_images = 512;
  o->pixels = 32;
  o->image_batch = 32;
  o->lr = 0.01f;
  o->lambda = 0.01f;
  o->beta_start = 20;
  o->beta_end = 2;
  o->warmup = 0.2f;
  o->seed = 1;
}

void vmc_adaround_report_free(vmc_adaround_report *r) {
  if (!r) return;
  vmc_free(r->layers);
  memset(r, 0, sizeof *r);
}

/* ---- the rounding function and its regulariser ----------------------------------- */

/* h(V) and dh/dV from one sigmoid. */
static inline void rsig(float v, float *h, float *dh) {
  const float s = 1.0f / (1.0f + expf(-v));
  const float raw = s * (VMC_ADAROUND_ZETA - VMC_ADAROUND_GAMMA) + VMC_ADAROUND_GAMMA;
  *h = vmc_clampf(raw, 0.0f, 1.0f);
  *dh = raw > 0.0f && raw < 1.0f ? s * (1.0f - s) * (VMC_ADAROUND_ZETA - VMC_ADAROUND_GAMMA) : 0.0f;
}

/* d/dV of 1 - |2h - 1|^beta, given h and dh/dV. */
static inline float reg_grad(float h, float dh, float beta) {
  const float u = 2.0f * h - 1.0f;
  if (u == 0.0f || dh == 0.0f) return 0.0f;
  const float du = powf(fabsf(u), beta - 1.0f) * (u > 0 ? 1.0f : -1.0f);
  return -beta * du * 2.0f * dh;
}

float vmc_adaround_h(float v) {
  float h, dh;
  rsig(v, &h, &dh);
  return h;
}

float vmc_adaround_dh(float v) {
  float h, dh;
  rsig(v, &h, &dh);
  return dh;
}

float vmc_adaround_v_init(float frac) {
  frac = vmc_clampf(frac, 0.0f, 1.0f);
  const float r = (frac - VMC_ADAROUND_GAMMA) / (VMC_ADAROUND_ZETA - VMC_ADAROUND_GAMMA);
  return logf(r / (1.0f - r));
}

float vmc_adaround_reg(float v, float beta) {
  return 1.0f - powf(fabsf(2.0f * vmc_adaround_h(v) - 1.0f), beta);
}

float vmc_adaround_reg_grad(float v, float beta) {
  float h, dh;
  rsig(v, &h, &dh);
  return reg_grad(h, dh, beta);
}

float vmc_adaround_beta(const vmc_adaround_opts *o, int t, int n) {
  const float warm = o->warmup * (float)n;
  if ((float)t < warm) return 0.0f;
  const float rel = ((float)t - warm) / ((float)n - warm);
  const float f = 1.0f - rel > 0.0f ? 1.0f - rel : 0.0f;
  return o->beta_end + (o->beta_start - o->beta_end) * f;
}

/* ---- one layer ------------------------------------------------------------------- */

/* A quantized conv2d/linear of q and its float twin. */
typedef struct layer {
  const vmc_node *qn, *fn;
  const vmc_param *fw, *fb; /* float weight and bias (fb may be NULL) */
  int wid, bid;             /* q's weight and bias parameter ids (bid -1: none) */
  int conv;
  int rows, groups, ocg, kg, ktot; /* output channels; per group; inputs per group, in all */
  vmc_conv_geom g;          /* conv: kg = g.c * kh * kw, g.c channels of one group */
  int P;                    /* output positions per image (linear: 1) */
  int qmax;
} layer;

static vmc_status layer_setup(const vmc_graph *f, const vmc_graph *q, int qi, layer *L) {
  memset(L, 0, sizeof *L);
  L->qn = &q->nodes[qi];
  const vmc_node *qn = L->qn;
  const int fi = vmc_graph_find_node(f, qn->name);
  if (fi >= 0) L->fn = &f->nodes[fi];
  if (!L->fn)
    return vmc_error(VMC_ERR_NOT_FOUND, "adaround: node '%s' of the quantized model is not in "
                     "the float model", qn->name);
  const vmc_node *fn = L->fn;
  const vmc_param *qw = &q->params[qn->param[0]];
  const int fwid = fn->n_param ? vmc_graph_find_param(f, qw->name) : -1;
  if (strcmp(fn->op->name, qn->op->name) || fwid < 0 || fn->param[0] != fwid ||
      !vmc_shape_eq(&f->params[fwid].shape, &qw->shape) || fn->n_param != qn->n_param)
    return vmc_error(VMC_ERR_SHAPE, "adaround: node '%s' (weight '%s') differs between the float "
                     "and the quantized model", qn->name, qw->name);
  L->fw = &f->params[fwid];
  L->fb = fn->n_param > 1 ? &f->params[fn->param[1]] : NULL;
  L->wid = qn->param[0];
  L->bid = qn->n_param > 1 ? qn->param[1] : -1;
  L->qmax = qw->store == VMC_S4 ? 7 : 127;
  L->rows = qw->shape.d[0];
  L->conv = !strcmp(qn->op->name, "conv2d");
  if (!L->conv) {
    L->groups = 1;
    L->kg = L->ktot = qw->shape.d[1];
    L->P = 1;
  } else {
    L->groups = vmc_node_attr_i(qn, "groups", 1);
    L->g = vmc_conv2d_window(qn, NULL); /* sizes: layer_set_input */
    vmc_conv_geom *g = &L->g;
    g->c = qw->shape.d[1];
    L->kg = g->c * g->kh * g->kw;
    L->ktot = L->kg * L->groups;
  }
  L->ocg = L->rows / L->groups;
  return VMC_OK;
}

/* The input shape of the layer is known once a plan exists. */
static void layer_set_input(layer *L, const vmc_shape *in) {
  if (!L->conv) return;
  L->g.h = in->d[2];
  L->g.w = in->d[3];
  L->g.oh = vmc_conv_out(L->g.h, L->g.kh, L->g.sh, L->g.ph, L->g.dh);
  L->g.ow = vmc_conv_out(L->g.w, L->g.kw, L->g.sw, L->g.pw, L->g.dw);
  L->P = L->g.oh * L->g.ow;
}

/* Column p (output position) of vmc_im2col's matrix of image x, over all
 * channels of all groups (group gi's inputs are entries gi * kg ..). */
static void im2col_column(const float *x, const layer *L, int p, float *col) {
  if (!L->conv) {
    memcpy(col, x, (size_t)L->ktot * sizeof *col);
    return;
  }
  const vmc_conv_geom *g = &L->g;
  const int oy = p / g->ow, ox = p % g->ow, C = g->c * L->groups;
  for (int c = 0, k = 0; c < C; c++)
    for (int i = 0; i < g->kh; i++) {
      const int iy = oy * g->sh - g->ph + i * g->dh;
      for (int j = 0; j < g->kw; j++, k++) {
        const int ix = ox * g->sw - g->pw + j * g->dw;
        col[k] = iy >= 0 && iy < g->h && ix >= 0 && ix < g->w
                     ? x[((size_t)c * g->h + iy) * g->w + ix] : 0.0f;
      }
  }
}

/* Y (n x rows, row stride rows) = X (n x ktot) W^T (+ bias), group by group. */
static void layer_apply(const layer *L, int n, const float *X, const float *W, const float *bias,
                        float *Y) {
  if (L->groups == 1) {
    vmc_sgemm_mt(0, 1, n, L->rows, L->kg, 1.0f, X, L->ktot, W, L->kg, 0.0f, Y, L->rows);
  } else {
#pragma omp parallel for schedule(static)
    for (int gi = 0; gi < L->groups; gi++)
      vmc_sgemm(0, 1, n, L->ocg, L->kg, 1.0f, X + (size_t)gi * L->kg, L->ktot,
                W + (size_t)gi * L->ocg * L->kg, L->kg, 0.0f, Y + (size_t)gi * L->ocg, L->rows);
  }
  if (bias)
    for (int i = 0; i < n; i++)
      for (int r = 0; r < L->rows; r++) Y[(size_t)i * L->rows + r] += bias[r];
}

/* G (rows x kg) = alpha * E^T (rows x n) X (n x ktot), group by group. */
static void layer_grad(const layer *L, int n, float alpha, const float *E, const float *X,
                       float *G) {
  if (L->groups == 1) {
    vmc_sgemm_mt(1, 0, L->rows, L->kg, n, alpha, E, L->rows, X, L->ktot, 0.0f, G, L->kg);
  } else {
#pragma omp parallel for schedule(static)
    for (int gi = 0; gi < L->groups; gi++)
      vmc_sgemm(1, 0, L->ocg, L->kg, n, alpha, E + (size_t)gi * L->ocg, L->rows,
                X + (size_t)gi * L->kg, L->ktot, 0.0f, G + (size_t)gi * L->ocg * L->kg, L->kg);
  }
}

/* The layer's data: x_q columns (cols x ktot) and the float outputs t
 * (cols x rows).  fp: an observable plan of the folded float model; qp: one
 * of q as it stands. */
typedef struct layer_data {
  float *xq, *t;
  int cols;
} layer_data;

static vmc_status collect(const layer *L, vmc_plan *fp, vmc_plan *qp, const vmc_dataset *d,
                          int n_img, int pixels, vmc_rng *rng, layer_data *D) {
  const int per = L->P < pixels ? L->P : pixels, batch = vmc_plan_batch(fp);
  const size_t cols = (size_t)n_img * per;
  const int fv = L->fn->in[0], qv = L->qn->in[0];
  const size_t in_f = vmc_shape_count(vmc_plan_value_shape(fp, fv)) / (size_t)batch;
  memset(D, 0, sizeof *D);
  D->xq = vmc_alloc(cols * L->ktot * sizeof(float));
  D->t = vmc_alloc(cols * L->rows * sizeof(float));
  float *xf = vmc_alloc((size_t)batch * per * L->ktot * sizeof(float));
  int *pos = vmc_malloc_plain((size_t)L->P * sizeof *pos);
  int *idx = vmc_malloc_plain((size_t)batch * sizeof *idx);
  vmc_status s = !D->xq || !D->t || !xf || !pos || !idx
                     ? vmc_error(VMC_ERR_NOMEM, "adaround: %zu columns of %d inputs for node '%s'",
                                 cols, L->ktot, L->qn->name)
                     : VMC_OK;
  for (int off = 0; off < n_img && !s; off += batch) {
    const int m = n_img - off < batch ? n_img - off : batch;
    for (int i = 0; i < m; i++) idx[i] = off + i;
    vmc_dataset_batch(d, idx, m, NULL, NULL, vmc_plan_input(fp), NULL);
    memcpy(vmc_plan_input(qp), vmc_plan_input(fp),
           (size_t)m * vmc_shape_count(&fp->g->in_shape) * sizeof(float));
    s = vmc_plan_forward(fp, m);
    if (!s) s = vmc_plan_forward(qp, m);
    if (s) break;
    const float *xfv = vmc_plan_value(fp, fv), *xqv = vmc_plan_value(qp, qv);
    for (int i = 0; i < m; i++) {
      /* per distinct positions, drawn serially (a partial Fisher-Yates) */
      for (int p = 0; p < L->P; p++) pos[p] = p;
      for (int p = 0; p < per && per < L->P; p++) {
        const int r = p + (int)vmc_rng_below(rng, (uint32_t)(L->P - p)), tmp = pos[p];
        pos[p] = pos[r];
        pos[r] = tmp;
      }
      const size_t c0 = (size_t)(off + i) * per;
      for (int p = 0; p < per; p++) {
        im2col_column(xfv + (size_t)i * in_f, L, pos[p], xf + ((size_t)i * per + p) * L->ktot);
        im2col_column(xqv + (size_t)i * in_f, L, pos[p], D->xq + (c0 + p) * L->ktot);
      }
    }
    layer_apply(L, m * per, xf, L->fw->data, L->fb ? L->fb->data : NULL,
                D->t + (size_t)off * per * L->rows);
  }
  D->cols = (int)cols;
  vmc_free(xf);
  vmc_free(pos);
  vmc_free(idx);
  return s;
}

/* Mean over the columns of ||t - (W x_q + b)||^2; Y: scratch of chunk x rows. */
static double recon_error(const layer *L, const layer_data *D, const float *W, const float *b,
                          int chunk, float *Y) {
  double e = 0;
  for (int c0 = 0; c0 < D->cols; c0 += chunk) {
    const int n = D->cols - c0 < chunk ? D->cols - c0 : chunk;
    layer_apply(L, n, D->xq + (size_t)c0 * L->ktot, W, b, Y);
    const float *t = D->t + (size_t)c0 * L->rows;
    const size_t m = (size_t)n * L->rows;
#pragma omp parallel for reduction(+ : e) schedule(static) if (m > 65536)
    for (size_t i = 0; i < m; i++) {
      const double r = (double)t[i] - Y[i];
      e += r * r;
    }
  }
  return D->cols ? e / D->cols : 0;
}

/* Scratch of one layer's optimisation. */
typedef struct opt_buf {
  float *V, *m, *v, *fl, *sc, *ws, *dw, *G; /* per weight: V, Adam's moments, floor(w/s),
                                               s, w~, dw~/dV, dE/dw~ */
  float *Xb, *Tb, *Y;                      /* per batch */
} opt_buf;

/* w~ and dw~/dV of weight i from V[i] (and h, dh for the regulariser). */
static inline void soft_weight(opt_buf *b, size_t i, float qmax, float *h, float *dh) {
  rsig(b->V[i], h, dh);
  const float u = b->fl[i] + *h;
  b->ws[i] = b->sc[i] * vmc_clampf(u, -qmax, qmax);
  b->dw[i] = u >= -qmax && u <= qmax ? b->sc[i] * *dh : 0.0f;
}

static void opt_buf_free(opt_buf *b) {
  float **p[] = {&b->V, &b->m, &b->v, &b->fl, &b->sc, &b->ws, &b->dw, &b->G, &b->Xb, &b->Tb, &b->Y};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
    vmc_free(*p[i]);
    *p[i] = NULL;
  }
}

/* Learns V for layer L on D; on return codes (rows x kg) hold the hard
 * rounding.  scale: q's scales (n_scale: rows or 1). */
static vmc_status learn(const layer *L, const layer_data *D, const vmc_adaround_opts *o,
                        const float *scale, int n_scale, const float *bq, vmc_rng *rng,
                        vmc_progress *prog, long prog_base, float *out_w) {
  const size_t nw = (size_t)L->rows * L->kg;
  const int B = o->batch < D->cols ? o->batch : D->cols;
  opt_buf b = {0};
  float **pw[] = {&b.V, &b.m, &b.v, &b.fl, &b.sc, &b.ws, &b.dw, &b.G};
  vmc_status s = VMC_OK;
  for (size_t i = 0; i < sizeof pw / sizeof pw[0] && !s; i++)
    if (!(*pw[i] = vmc_alloc(nw * sizeof(float)))) s = VMC_ERR_NOMEM;
  if (!s && (!(b.Xb = vmc_alloc((size_t)B * L->ktot * sizeof(float))) ||
             !(b.Tb = vmc_alloc((size_t)B * L->rows * sizeof(float))) ||
             !(b.Y = vmc_alloc((size_t)B * L->rows * sizeof(float)))))
    s = VMC_ERR_NOMEM;
  if (s) {
    opt_buf_free(&b);
    return vmc_error(s, "adaround: buffers for node '%s'", L->qn->name);
  }
  const float *w = L->fw->data, qmax = (float)L->qmax;
  for (size_t i = 0; i < nw; i++) {
    const float sc = scale[n_scale > 1 ? (int)(i / (size_t)L->kg) : 0];
    const float x = w[i] / sc, fl = floorf(x);
    b.sc[i] = sc;
    b.fl[i] = fl;
    b.V[i] = vmc_adaround_v_init(x - fl);
    float h, dh;
    soft_weight(&b, i, qmax, &h, &dh);
  }
  const double b1 = 0.9, b2 = 0.999;
  double b1t = 1, b2t = 1;
  for (int t = 0; t < o->iters; t++) {
    const float beta = vmc_adaround_beta(o, t, o->iters);
    /* a batch of columns, the residual, the gradient of the mean error */
    for (int j = 0; j < B; j++) {
      const size_t c = vmc_rng_below(rng, (uint32_t)D->cols);
      memcpy(b.Xb + (size_t)j * L->ktot, D->xq + c * L->ktot, (size_t)L->ktot * sizeof(float));
      memcpy(b.Tb + (size_t)j * L->rows, D->t + c * L->rows, (size_t)L->rows * sizeof(float));
    }
    layer_apply(L, B, b.Xb, b.ws, bq, b.Y);
    for (size_t i = 0; i < (size_t)B * L->rows; i++) b.Y[i] -= b.Tb[i];
    layer_grad(L, B, 2.0f / (float)B, b.Y, b.Xb, b.G);
    /* Adam on V, then w~ and dw~/dV for the next step (one parallel region:
     * each costs a barrier) */
    b1t *= b1;
    b2t *= b2;
    const float lr = o->lr, lam = o->lambda;
    const float c1 = (float)(1.0 / (1.0 - b1t)), c2 = (float)(1.0 / (1.0 - b2t));
#pragma omp parallel for schedule(static) if (nw >= 4096)
    for (size_t i = 0; i < nw; i++) {
      float h, dh;
      rsig(b.V[i], &h, &dh);
      float gv = b.G[i] * b.dw[i];
      if (beta > 0 && lam > 0) gv += lam * reg_grad(h, dh, beta);
      b.m[i] = (float)b1 * b.m[i] + (float)(1 - b1) * gv;
      b.v[i] = (float)b2 * b.v[i] + (float)(1 - b2) * gv * gv;
      b.V[i] -= lr * (b.m[i] * c1) / (sqrtf(b.v[i] * c2) + 1e-8f);
      soft_weight(&b, i, qmax, &h, &dh);
    }
    if (prog && (t % 16 == 15 || t == o->iters - 1))
      vmc_progress_update(prog, prog_base + t + 1, L->qn->name);
  }
  for (size_t i = 0; i < nw; i++)
    out_w[i] = b.sc[i] * vmc_clampf(b.fl[i] + (b.V[i] >= 0 ? 1.0f : 0.0f), -qmax, qmax);
  opt_buf_free(&b);
  return VMC_OK;
}

/* ---- the pass -------------------------------------------------------------------- */

static vmc_status check_opts(const vmc_adaround_opts *o) {
  if (o->iters < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: %d iterations (at least 1)", o->iters);
  if (o->batch < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: batch of %d columns (at least 1)", o->batch);
  if (o->calib_images < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: %d calibration images (at least 1)",
                     o->calib_images);
  if (o->pixels < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: %d pixels per image (at least 1)", o->pixels);
  if (o->image_batch < 1 || o->image_batch > 65536)
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: image batch %d is out of range (1..65536)",
                     o->image_batch);
  if (!(o->lr > 0 && isfinite(o->lr)))
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: learning rate %g (positive)", (double)o->lr);
  if (!(o->lambda >= 0 && isfinite(o->lambda)))
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: lambda %g (0 or more)", (double)o->lambda);
  if (!(o->beta_start >= 1 && o->beta_end >= 1 && isfinite(o->beta_start) &&
        isfinite(o->beta_end)))
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: beta %g -> %g (each at least 1)",
                     (double)o->beta_start, (double)o->beta_end);
  if (!(o->warmup >= 0 && o->warmup < 1))
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: warm-up %g (in [0, 1))", (double)o->warmup);
  return VMC_OK;
}

static int is_quantized_layer(const vmc_graph *q, const vmc_node *n) {
  if (n->n_in != 1 || n->n_param < 1) return 0;
  if (strcmp(n->op->name, "conv2d") && strcmp(n->op->name, "linear")) return 0;
  const vmc_dtype t = q->params[n->param[0]].store;
  return t == VMC_S8 || t == VMC_S4;
}

/* One layer: data, learning, the weights of q (qi: the node's index). */
static vmc_status do_layer(const vmc_graph *f, vmc_plan *fp, vmc_graph *q, int qi,
                           const vmc_dataset *d, int n_img, const vmc_adaround_opts *o, int li,
                           vmc_progress *prog, vmc_adaround_layer *rl) {
  const double t0 = vmc_now();
  layer L;
  VMC_TRY(layer_setup(f, q, qi, &L));
  vmc_plan *qp = NULL;
  VMC_TRY(vmc_plan_create_observable(q, vmc_plan_batch(fp), &qp));
  layer_set_input(&L, vmc_plan_value_shape(qp, L.qn->in[0]));
  snprintf(rl->node, sizeof rl->node, "%s", L.qn->name);
  snprintf(rl->op, sizeof rl->op, "%s", L.qn->op->name);
  rl->rows = L.rows;
  rl->k = L.kg;
  rl->groups = L.groups;
  vmc_rng rng;
  vmc_rng_seed(&rng, o->seed * 0x9E3779B97F4A7C15ull + (uint64_t)li);
  layer_data D;
  vmc_status s = collect(&L, fp, qp, d, n_img, o->pixels, &rng, &D);
  vmc_plan_destroy(qp);
  vmc_param *qw = &q->params[L.wid];
  const float *bq = L.bid >= 0 ? q->params[L.bid].data : NULL;
  const size_t nw = (size_t)L.rows * L.kg;
  const int chunk = 1024;
  float *w = vmc_alloc(nw * sizeof *w), *Y = vmc_alloc((size_t)chunk * L.rows * sizeof *Y);
  if (!s && (!w || !Y)) s = vmc_error(VMC_ERR_NOMEM, "adaround: node '%s'", L.qn->name);
  if (!s) {
    rl->columns = D.cols;
    rl->err_nearest = recon_error(&L, &D, qw->data, bq, chunk, Y);
    rl->err_float = recon_error(&L, &D, L.fw->data, L.fb ? L.fb->data : NULL, chunk, Y);
    s = learn(&L, &D, o, qw->qscale, qw->n_qscale, bq, &rng, prog, (long)li * o->iters, w);
  }
  if (!s) {
    rl->err_learned = recon_error(&L, &D, w, bq, chunk, Y);
    size_t changed = 0;
    for (size_t i = 0; i < nw; i++) changed += w[i] != qw->data[i];
    rl->changed = nw ? (double)changed / (double)nw : 0;
    rl->kept_nearest = !(rl->err_learned <= rl->err_nearest);
    if (!rl->kept_nearest) {
      float *old = vmc_alloc(nw * sizeof *old);
      if (!old) s = vmc_error(VMC_ERR_NOMEM, "adaround: node '%s'", L.qn->name);
      if (!s) {
        memcpy(old, qw->data, nw * sizeof *old);
        memcpy(qw->data, w, nw * sizeof *w);
        /* the same storage and scales: checks every code */
        s = vmc_param_set_quantized(q, L.wid, qw->store, qw->qscale, qw->n_qscale);
        if (s) memcpy(qw->data, old, nw * sizeof *old);
      }
      vmc_free(old);
    }
  }
  vmc_free(w);
  vmc_free(Y);
  vmc_free(D.xq);
  vmc_free(D.t);
  rl->seconds = vmc_now() - t0;
  return s;
}

static vmc_status check_graphs(const vmc_graph *f, const vmc_graph *q, const vmc_dataset *d,
                               int *n_layers) {
  *n_layers = 0;
  for (int i = 0; i < q->n_nodes; i++) *n_layers += is_quantized_layer(q, &q->nodes[i]);
  if (!*n_layers)
    return vmc_error(VMC_ERR_INVALID_ARG, "adaround: the model has no quantized conv2d or linear "
                     "weight (quantize it first, e.g. with vmc_ptq_quantize)");
  if (!d || d->n < 1) return vmc_error(VMC_ERR_INVALID_ARG, "adaround: no calibration images");
  if (d->c != q->in_shape.d[1] || d->h != q->in_shape.d[2] || d->w != q->in_shape.d[3])
    return vmc_error(VMC_ERR_SHAPE, "adaround: calibration images are %dx%dx%d but the model "
                     "takes %dx%dx%d", d->c, d->h, d->w, q->in_shape.d[1], q->in_shape.d[2],
                     q->in_shape.d[3]);
  if (!vmc_shape_eq(&f->in_shape, &q->in_shape))
    return vmc_error(VMC_ERR_SHAPE, "adaround: the float and the quantized model take different "
                     "inputs");
  return VMC_OK;
}

vmc_status vmc_adaround(const vmc_graph *float_graph, vmc_graph *q, const vmc_dataset *calib,
                        const vmc_adaround_opts *opts, vmc_adaround_report *report) {
  if (report) memset(report, 0, sizeof *report);
  vmc_adaround_opts o;
  if (opts) o = *opts;
  else vmc_adaround_opts_default(&o);
  VMC_TRY(check_opts(&o));
  int n_layers;
  VMC_TRY(check_graphs(float_graph, q, calib, &n_layers));
  const double t0 = vmc_now();
  vmc_adaround_report rep = {0};
  rep.calib_images = o.calib_images < calib->n ? o.calib_images : calib->n;
  const int batch = o.image_batch < rep.calib_images ? o.image_batch : rep.calib_images;
  vmc_graph *f = NULL;
  vmc_plan *fp = NULL;
  vmc_progress prog;
  vmc_status s = vmc_graph_fold_bn_copy(float_graph, &f, NULL);
  /* Every layer matched before any is changed. */
  for (int i = 0; i < q->n_nodes && !s; i++) {
    layer L;
    if (is_quantized_layer(q, &q->nodes[i])) s = layer_setup(f, q, i, &L);
  }
  if (!s) s = vmc_plan_create_observable(f, batch, &fp);
  rep.layers = vmc_malloc_plain((size_t)n_layers * sizeof *rep.layers);
  if (!s && !rep.layers) s = vmc_error(VMC_ERR_NOMEM, "adaround: report");
  vmc_progress_start(&prog, "adaround", (long)n_layers * o.iters, o.progress);
  for (int i = 0; i < q->n_nodes && !s; i++) {
    if (!is_quantized_layer(q, &q->nodes[i])) continue;
    s = do_layer(f, fp, q, i, calib, rep.calib_images, &o, rep.n_layers, o.progress ? &prog : NULL,
                 &rep.layers[rep.n_layers]);
    rep.n_layers++;
  }
  vmc_progress_finish(&prog);
  vmc_plan_destroy(fp);
  vmc_graph_free(f);
  rep.seconds = vmc_now() - t0;
  if (!s) {
    double en = 0, el = 0;
    int kept = 0;
    for (int i = 0; i < rep.n_layers; i++) {
      const vmc_adaround_layer *l = &rep.layers[i];
      en += l->err_nearest;
      el += l->kept_nearest ? l->err_nearest : l->err_learned;
      kept += l->kept_nearest;
    }
    char line[256];
    snprintf(line, sizeof line, "adaround: learned rounding of %d layers (%d steps of %d columns, "
             "lambda %g, %d calibration images x %d pixels), output error %.4g -> %.4g summed over "
             "the layers, %d kept nearest", rep.n_layers, o.iters, o.batch, (double)o.lambda,
             rep.calib_images, o.pixels, en, el, kept);
    s = vmc_graph_add_history(q, line);
  }
  if (report) *report = rep;
  else vmc_adaround_report_free(&rep);
  return s;
}
