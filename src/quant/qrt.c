/* The integer runtime: lowering a quantized graph to tensors and steps
 * (qrt.h), the arenas, the batch loop. */
#include "quant/qrt_impl.h"

#include "graph/op.h"
#include "quant/quant.h"

#include <stdio.h>
#include <string.h>

int vmc_graph_is_quantized(const vmc_graph *g) {
  for (int i = 0; g && i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].op->name, "fakequant")) return 1;
  return 0;
}

/* ---- the lowering's state ------------------------------------------------------ */

typedef struct lower {
  const vmc_graph *g;
  vmc_qrt *q;
  vmc_shape *shape; /* per value, batch 1 */
  int *tens;        /* per value: its tensor, or -1 (fp32) */
  int *uses;        /* per value: readers */
  int *reader;      /* per value: its last reader (node) */
  uint8_t *done;    /* per node: lowered with another one */
  int out_f32;      /* a step writes the graph output as fp32 */
} lower;

static const char *op_of(const vmc_node *n) { return n->op->name; }
static int is_op(const vmc_node *n, const char *name) { return !strcmp(n->op->name, name); }

static vmc_status unsupported(const vmc_node *n, const char *why) {
  return vmc_error(VMC_ERR_UNSUPPORTED, "integer runtime: node '%s' (%s): %s", n->name, op_of(n),
                   why);
}

static vmc_status not_quantized(const lower *L, const vmc_node *n, int v) {
  return vmc_error(VMC_ERR_UNSUPPORTED,
                   "integer runtime: node '%s' (%s) reads '%s', which is not quantized (no "
                   "fakequant node on it)",
                   n->name, op_of(n), v == L->g->input ? "the graph input" : L->g->values[v].name);
}

static vmc_status new_tensor(lower *L, const vmc_shape *s, const vmc_qact *qa, int *id) {
  vmc_qrt *q = L->q;
  if (q->n_t == q->cap_t) {
    const int cap = q->cap_t ? 2 * q->cap_t : 32;
    qrt_tensor *t = vmc_realloc_plain(q->t, (size_t)cap * sizeof *t);
    if (!t) return vmc_error(VMC_ERR_NOMEM, "integer runtime tensors");
    q->t = t;
    q->cap_t = cap;
  }
  qrt_tensor *t = &q->t[q->n_t];
  memset(t, 0, sizeof *t);
  t->bytes = vmc_shape_count(s);
  if (q->conv) { /* pixel-major: images padded, vectors as they are */
    const int img = s->ndim == 4 && (size_t)s->d[2] * s->d[3] > 1;
    t->g = (vmc_qnhwc){.c = s->d[1], .h = img ? s->d[2] : 1, .w = img ? s->d[3] : 1,
                       .c4 = img && s->d[1] > 1 ? (s->d[1] + 3) / 4 * 4 : img ? 1 : (int)t->bytes,
                       .pad = img};
    t->bytes = vmc_qnhwc_bytes(&t->g);
  }
  t->q = *qa;
  t->first = t->last = q->n_s; /* the step about to be added */
  *id = q->n_t++;
  return VMC_OK;
}

static vmc_status new_step(lower *L, const vmc_node *n, qrt_kind kind, qrt_step **out) {
  vmc_qrt *q = L->q;
  if (q->n_s == q->cap_s) {
    const int cap = q->cap_s ? 2 * q->cap_s : 32;
    qrt_step *s = vmc_realloc_plain(q->s, (size_t)cap * sizeof *s);
    if (!s) return vmc_error(VMC_ERR_NOMEM, "integer runtime steps");
    q->s = s;
    q->cap_s = cap;
  }
  qrt_step *s = &q->s[q->n_s++];
  memset(s, 0, sizeof *s);
  s->kind = kind;
  s->op = op_of(n);
  snprintf(s->node, sizeof s->node, "%s", n->name);
  s->in = s->in2 = s->out = s->res = -1;
  *out = s;
  return VMC_OK;
}

/* A step reads tensor id: extend its life. */
static int reads(lower *L, int id) {
  L->q->t[id].last = L->q->n_s - 1;
  return id;
}

/* The stored (u8) parameters of a fakequant node; s8-range codes get +128. */
static vmc_status fq_params(const vmc_node *n, vmc_qact *qa, vmc_qparams *qp) {
  qp->scale = vmc_node_attr_f(n, "scale", 0.0f);
  qp->zero_point = vmc_node_attr_i(n, "zero_point", 0);
  qp->qmin = vmc_node_attr_i(n, "qmin", 0);
  qp->qmax = vmc_node_attr_i(n, "qmax", -1);
  const int32_t off = qp->qmin >= 0 && qp->qmax <= 255 ? 0
                      : qp->qmin >= -128 && qp->qmax <= 127 ? 128 : -1;
  if (off < 0 || qp->qmin > qp->qmax)
    return unsupported(n, "codes outside u8 and s8 (qmin/qmax)");
  if (!(qp->scale >= 1.17549435e-38f) || qp->zero_point < qp->qmin || qp->zero_point > qp->qmax)
    return unsupported(n, "bad scale or zero point");
  qa->scale = qp->scale;
  qa->zp = qp->zero_point + off;
  qa->lo = qp->qmin + off;
  qa->hi = qp->qmax + off;
  return VMC_OK;
}

/* The activation act fused as a clamp of qa (qp: the same, unshifted). */
static void fuse_act(vmc_act act, const vmc_qparams *qp, vmc_qact *qa) {
  if (act == VMC_ACT_NONE) return;
  if (qa->lo < qa->zp) qa->lo = qa->zp;
  if (act == VMC_ACT_RELU6) {
    const int32_t six = vmc_quantize1(6.0f, 1.0f / qp->scale, qp) + (qa->zp - qp->zero_point);
    if (qa->hi > six) qa->hi = six;
  }
}

/* Where the output v of a producer goes: through at most one relu/relu6
 * and any flatten/dropout to one fakequant node (*fq, its node index), or
 * to the graph output (*fq = -1).  Marks the nodes passed as done. */
static vmc_status find_sink(lower *L, const vmc_node *prod, int v, vmc_act *act, int *fq) {
  const vmc_graph *g = L->g;
  *act = VMC_ACT_NONE;
  for (;;) {
    if (v == g->output) {
      if (*act != VMC_ACT_NONE) return unsupported(prod, "a relu on the float graph output");
      *fq = -1;
      return VMC_OK;
    }
    if (L->uses[v] != 1)
      return unsupported(prod, L->uses[v] ? "its output is read by several nodes, not through "
                                            "one fakequant"
                                          : "its output is not read");
    const int r = L->reader[v];
    const vmc_node *n = &g->nodes[r];
    if (is_op(n, "fakequant")) {
      *fq = r;
      L->done[r] = 1;
      return VMC_OK;
    }
    if ((is_op(n, "relu") || is_op(n, "relu6")) && *act == VMC_ACT_NONE)
      *act = is_op(n, "relu") ? VMC_ACT_RELU : VMC_ACT_RELU6;
    else if (!is_op(n, "flatten") && !is_op(n, "dropout"))
      return vmc_error(VMC_ERR_UNSUPPORTED,
                       "integer runtime: node '%s' (%s) reads the float output of '%s' (%s): "
                       "no fakequant node on it",
                       n->name, op_of(n), prod->name, op_of(prod));
    L->done[r] = 1;
    v = n->out;
  }
}

/* The output of producer node prod: a new tensor with the parameters of
 * its sink (and the mapping of every value on the way), or fp32 (*id = -1). */
static vmc_status producer_output(lower *L, const vmc_node *prod, int *id, vmc_qparams *qp_out) {
  vmc_act act;
  int fq = -1;
  VMC_TRY(find_sink(L, prod, prod->out, &act, &fq));
  if (fq < 0) {
    if (L->out_f32) return unsupported(prod, "a second float output");
    L->out_f32 = 1;
    *id = -1;
    return VMC_OK;
  }
  const vmc_node *f = &L->g->nodes[fq];
  vmc_qact qa;
  VMC_TRY(fq_params(f, &qa, qp_out));
  fuse_act(act, qp_out, &qa);
  VMC_TRY(new_tensor(L, &L->shape[prod->out], &qa, id));
  for (int v = prod->out;; v = L->g->nodes[L->reader[v]].out) {
    L->tens[v] = *id;
    if (v == f->out) break;
  }
  return VMC_OK;
}

/* ---- conv2d, linear ----------------------------------------------------------------- */

/* The weight codes (M_total x K row-major) and per-row scales of node n. */
static vmc_status weight_codes(const lower *L, const vmc_node *n, int rows, int K,
                               int8_t *codes, float *scale) {
  const vmc_param *w = &L->g->params[n->param[0]];
  if ((w->store != VMC_S8 && w->store != VMC_S4) || !w->qscale)
    return unsupported(n, "its weight is not stored quantized (s8/s4); run vmc quantize");
  if (w->n_qscale != 1 && w->n_qscale != rows)
    return unsupported(n, "its weight has neither one scale nor one per output channel");
  for (size_t i = 0; i < (size_t)rows * K; i++) codes[i] = (int8_t)vmc_param_code(w, i);
  for (int m = 0; m < rows; m++) scale[m] = w->qscale[w->n_qscale == 1 ? 0 : m];
  return VMC_OK;
}

/* bias[m] = round(b[m] / (s_w s_x)) - zp_x * sum_k w[m][k]; scale[m] = the
 * epilogue's s_w s_x / s_y (or s_w s_x for fp32). */
static vmc_status gemm_epilogue(lower *L, const vmc_node *n, qrt_step *s, int rows, int K,
                                const int8_t *codes, const float *sw, const vmc_qact *x,
                                const vmc_qact *y) {
  s->bias = vmc_alloc((size_t)rows * sizeof *s->bias);
  s->scale = vmc_alloc((size_t)rows * sizeof *s->scale);
  if (!s->bias || !s->scale) return vmc_error(VMC_ERR_NOMEM, "node '%s': epilogue", n->name);
  const float *b = n->n_param > 1 ? L->g->params[n->param[1]].data : NULL;
  for (int m = 0; m < rows; m++) {
    const double sxw = (double)sw[m] * x->scale;
    int64_t t = 0;
    for (int k = 0; k < K; k++) t -= (int64_t)x->zp * codes[(size_t)m * K + k];
    if (b) {
      const double c = nearbyint((double)b[m] / sxw);
      if (!(fabs(c) < 2147483647.0))
        return unsupported(n, "a bias too large for s32 at the weight and input scales");
      t += (int64_t)c;
    }
    if (t < INT32_MIN || t > INT32_MAX) return unsupported(n, "the folded bias overflows s32");
    s->bias[m] = (int32_t)t;
    s->scale[m] = (float)(y ? sxw / y->scale : sxw);
  }
  s->epi.bias = s->bias;
  s->epi.scale = s->scale;
  s->epi.per_tensor = 0;
  if (y) {
    s->epi.out = VMC_QOUT_U8;
    s->epi.zero_point = y->zp;
    s->epi.lo = y->lo;
    s->epi.hi = y->hi;
  } else {
    s->epi.out = VMC_QOUT_F32;
  }
  return VMC_OK;
}

/* Packs the codes of each group (M x K) for the GEMM variant that suits
 * them (the narrow AVX2 one where their pairs allow it). */
static vmc_status pack_groups(lower *L, const vmc_node *n, qrt_step *s, const int8_t *codes) {
  int pair = 0;
  for (int gi = 0; gi < s->groups; gi++) {
    const int p = vmc_qgemm_pair_max(s->M, s->K, codes + (size_t)gi * s->M * s->K, s->K, 0);
    if (p > pair) pair = p;
  }
  const vmc_qgemm_variant *v = vmc_qgemm_for_weights(L->q->gemm, pair, !L->q->gemm_given);
  s->gemm = v;
  const int s4 = L->g->params[n->param[0]].store == VMC_S4;
  s->packed_bytes = vmc_align_up(vmc_qgemm_packed_a_size(v, s->M, s->K), VMC_ALIGN);
  s->packed = vmc_alloc(s->packed_bytes * (size_t)s->groups);
  uint8_t *a4 = s4 ? vmc_malloc_plain(((size_t)s->M * s->K + 1) / 2) : NULL;
  if (!s->packed || (s4 && !a4)) {
    vmc_free(a4);
    return vmc_error(VMC_ERR_NOMEM, "node '%s': packed weights", n->name);
  }
  for (int gi = 0; gi < s->groups; gi++) {
    const int8_t *c = codes + (size_t)gi * s->M * s->K;
    uint8_t *dst = s->packed + (size_t)gi * s->packed_bytes;
    if (s4) {
      vmc_s4_pack(c, (size_t)s->M * s->K, a4);
      vmc_qgemm_pack_a_s4(v, s->M, s->K, a4, s->K, dst);
    } else {
      vmc_qgemm_pack_a(v, s->M, s->K, c, s->K, dst);
    }
  }
  vmc_free(a4);
  L->q->weight_bytes += s->packed_bytes * (size_t)s->groups;
  return VMC_OK;
}

/* The byte of pixel-major tensor x that tap (0, 0) of output pixel (0, 0)
 * of a conv of geometry gm reads (inside x's border: padding <= border). */
static size_t tap_origin(const vmc_qnhwc *x, const vmc_conv_geom *gm) {
  return vmc_qnhwc_origin(x) - (size_t)gm->ph * vmc_qnhwc_row(x) - (size_t)gm->pw * x->c4;
}

/* Depthwise conv2d n (rows channels, K = taps codes each) on pixel-major
 * tensors x -> y (qgemm.h, vmc_qdwp). */
static vmc_status lower_dw_pixel(lower *L, const vmc_node *n, const vmc_conv_geom *gm, int rows,
                                 const int8_t *codes, const float *sw, int x, int y) {
  const vmc_qnhwc xg = L->q->t[x].g, yg = L->q->t[y].g;
  const int taps = gm->kh * gm->kw;
  if (xg.c4 != rows) return unsupported(n, "depthwise input channels not a multiple of 4");
  qrt_step *s;
  VMC_TRY(new_step(L, n, QRT_DWCONV, &s));
  s->in = reads(L, x);
  s->out = y;
  s->geom = *gm;
  s->groups = rows;
  s->M = 1;
  s->K = taps;
  /* Per channel: the epilogue of a one-row GEMM over its taps. */
  VMC_TRY(gemm_epilogue(L, n, s, rows, taps, codes, sw, &L->q->t[x].q, &L->q->t[y].q));
  s->packed_bytes = vmc_qdwp_w_bytes(rows, taps);
  s->packed = vmc_alloc(s->packed_bytes);
  if (!s->packed) return vmc_error(VMC_ERR_NOMEM, "node '%s': packed weights", n->name);
  vmc_qdwp_pack_w(rows, taps, codes, (int8_t *)s->packed);
  const size_t row = vmc_qnhwc_row(&xg);
  s->dwp = (vmc_qdwp_params){.oh = gm->oh, .ow = gm->ow, .C = rows, .kh = gm->kh, .kw = gm->kw,
                             .sh = gm->sh, .sw = gm->sw, .xs_row = row, .xs_pix = (size_t)xg.c4,
                             .ys_row = vmc_qnhwc_row(&yg), .ys_pix = (size_t)yg.c4};
  s->xo = tap_origin(&xg, gm);
  s->macs = (double)rows * taps * gm->oh * gm->ow;
  L->q->weight_bytes += s->packed_bytes;
  return VMC_OK;
}

/* conv2d n on pixel-major tensors x -> y: the direct kernel (qgemm.h). */
static vmc_status lower_direct(lower *L, const vmc_node *n, const vmc_conv_geom *gm, int groups,
                               int rows, int K, const int8_t *codes, const float *sw, int x,
                               int y) {
  const vmc_qnhwc xg = L->q->t[x].g;
  if (groups != 1 && (groups != rows || K != gm->kh * gm->kw || !L->q->dwp))
    return unsupported(n, "grouped: no pixel-major kernel");
  if (gm->dh != 1 || gm->dw != 1) return unsupported(n, "dilated: no pixel-major kernel");
  if (gm->ph > xg.pad || gm->pw > xg.pad)
    return unsupported(n, "padding wider than the pixel-major border");
  if (y < 0) return unsupported(n, "a float output from a pixel-major conv");
  const vmc_qnhwc yg = L->q->t[y].g;
  if (yg.c4 != rows) return unsupported(n, "output channels not a multiple of 4");
  if (groups != 1) return lower_dw_pixel(L, n, gm, rows, codes, sw, x, y);
  if ((double)gm->kh * (double)vmc_qnhwc_row(&xg) > (double)INT32_MAX)
    return unsupported(n, "rows too long for the pixel-major tap offsets");
  qrt_step *s;
  VMC_TRY(new_step(L, n, QRT_CONV, &s));
  s->in = reads(L, x);
  s->out = y;
  s->geom = *gm;
  s->groups = 1;
  s->M = rows;
  s->K = K;
  VMC_TRY(gemm_epilogue(L, n, s, rows, K, codes, sw, &L->q->t[x].q, &L->q->t[y].q));
  const int kq = vmc_qconv_kq(gm, xg.c4);
  const size_t row = vmc_qnhwc_row(&xg);
  int32_t *koff = vmc_alloc((size_t)kq * sizeof *koff);
  s->cp.koff = koff;
  s->packed_bytes = vmc_qconv_w_bytes(rows, kq);
  s->packed = vmc_alloc(s->packed_bytes);
  int8_t *wq = vmc_malloc_plain((size_t)rows * 4 * kq);
  if (!koff || !s->packed || !wq) {
    vmc_free(wq);
    return vmc_error(VMC_ERR_NOMEM, "node '%s': packed weights", n->name);
  }
  vmc_qconv_quads(gm, xg.c4, row, rows, codes, koff, wq);
  const int bound = vmc_qconv_pair_max(L->q->conv);
  if (bound && vmc_qgemm_pair_max(rows, 4 * kq, wq, 4 * kq, 0) > bound) {
    vmc_free(wq);
    return unsupported(n, "weights wider than the pixel-major kernel takes (7-bit ones run "
                       "on it: --scheme w7a8)");
  }
  vmc_qconv_pack_w(rows, kq, wq, (int8_t *)s->packed);
  vmc_free(wq);
  s->cp = (vmc_qconv_params){.oh = gm->oh, .ow = gm->ow, .M = rows, .kq = kq,
                             .xs_row = (size_t)gm->sh * row, .xs_pix = (size_t)gm->sw * xg.c4,
                             .ys_row = vmc_qnhwc_row(&yg), .ys_pix = (size_t)yg.c4, .koff = koff};
  s->xo = tap_origin(&xg, gm);
  s->macs = (double)rows * K * gm->oh * gm->ow;
  L->q->weight_bytes += s->packed_bytes;
  return VMC_OK;
}

static vmc_status lower_conv_linear(lower *L, const vmc_node *n) {
  const int xv = n->in[0], x = L->tens[xv];
  if (x < 0) return not_quantized(L, n, xv);
  const vmc_shape *is = &L->shape[xv], *os = &L->shape[n->out];
  const int linear = is_op(n, "linear");
  vmc_conv_geom gm = {0};
  int groups = 1, rows, K;
  if (linear) {
    rows = os->d[1];
    K = (int)(vmc_shape_count(is));
  } else {
    groups = vmc_node_attr_i(n, "groups", 1);
    rows = os->d[1];
    gm = vmc_conv2d_window(n, is);
    gm.oh = os->d[2];
    gm.ow = os->d[3];
    K = gm.c * gm.kh * gm.kw;
  }
  const int dw = !linear && groups == is->d[1] && rows == groups && gm.dh == 1 && gm.dw == 1;
  int8_t *codes = vmc_malloc_plain((size_t)rows * K);
  float *sw = vmc_malloc_plain((size_t)rows * sizeof *sw);
  if (!codes || !sw) {
    vmc_free(codes);
    vmc_free(sw);
    return vmc_error(VMC_ERR_NOMEM, "node '%s': weights", n->name);
  }
  vmc_status st = weight_codes(L, n, rows, K, codes, sw);
  int y = -1;
  vmc_qparams qp;
  if (!st) st = producer_output(L, n, &y, &qp);
  if (!st && L->q->conv && !linear) {
    st = lower_direct(L, n, &gm, groups, rows, K, codes, sw, x, y);
    vmc_free(codes);
    vmc_free(sw);
    return st;
  }
  if (!st && L->q->conv && L->q->t[x].g.pad)
    st = unsupported(n, "a linear layer on an image, not a vector, in the pixel-major layout");
  qrt_step *s = NULL;
  if (!st) st = new_step(L, n, dw ? QRT_DWCONV : QRT_GEMM, &s);
  if (!st) {
    s->in = reads(L, x);
    s->out = y;
    s->geom = gm;
    s->groups = groups;
    s->M = rows / groups;
    s->K = K;
    s->N = linear ? 1 : gm.oh * gm.ow;
    s->direct = linear || (gm.kh == 1 && gm.kw == 1 && gm.sh == 1 && gm.sw == 1 && gm.ph == 0 &&
                           gm.pw == 0);
    st = gemm_epilogue(L, n, s, rows, K, codes, sw, &L->q->t[x].q, y >= 0 ? &L->q->t[y].q : NULL);
  }
  if (!st && dw) {
    s->taps = vmc_alloc((size_t)rows * K);
    if (!s->taps) st = vmc_error(VMC_ERR_NOMEM, "node '%s': taps", n->name);
    else memcpy(s->taps, codes, (size_t)rows * K);
    L->q->weight_bytes += (size_t)rows * K;
  }
  if (!st && !dw) st = pack_groups(L, n, s, codes);
  if (!st && !dw && !s->direct) {
    /* Scratch: the im2col matrix, or the padded planes and the wide
     * output. */
    s->wide = groups == 1 && y >= 0 && (gm.kh > 1 || gm.kw > 1); /* 1x1: a subsample */
    const size_t nw = (size_t)gm.oh * vmc_qphase_w(&gm);
    const size_t col = s->wide ? vmc_align_up(vmc_qphase_bytes(&gm), VMC_ALIGN) + (size_t)s->M * nw
                               : (size_t)K * s->N;
    if (s->wide && vmc_qphase_bytes(&gm) > INT32_MAX)
      st = vmc_error(VMC_ERR_UNSUPPORTED, "node '%s': input too large", n->name);
    if (!st && s->wide) {
      s->boff = vmc_alloc((size_t)K * sizeof *s->boff);
      if (!s->boff) st = vmc_error(VMC_ERR_NOMEM, "node '%s': row offsets", n->name);
      else vmc_qwide_offsets(&gm, s->boff);
    }
    if (col > L->q->col_off) L->q->col_off = col; /* the largest, for now */
  }
  vmc_free(codes);
  vmc_free(sw);
  return st;
}

/* ---- the other ops ------------------------------------------------------------------ */

/* Node n's output: tensor x requantized onto qa (an add step with one input). */
static vmc_status requant_step(lower *L, const vmc_node *n, int x, const vmc_qact *qa) {
  qrt_step *s;
  VMC_TRY(new_tensor(L, &L->shape[n->out], qa, &L->tens[n->out]));
  VMC_TRY(new_step(L, n, QRT_ADD, &s));
  s->in = reads(L, x);
  s->out = L->tens[n->out];
  s->n = L->q->t[x].bytes;
  s->inv = 1.0f / qa->scale;
  return VMC_OK;
}

static vmc_status lower_fakequant(lower *L, const vmc_node *n) {
  const int xv = n->in[0];
  vmc_qact qa;
  vmc_qparams qp;
  VMC_TRY(fq_params(n, &qa, &qp));
  qrt_step *s;
  if (xv == L->g->input) {
    VMC_TRY(new_tensor(L, &L->shape[n->out], &qa, &L->tens[n->out]));
    VMC_TRY(new_step(L, n, QRT_QUANTIZE, &s));
    s->out = L->tens[n->out];
    s->n = L->q->in_count;
    s->inv = 1.0f / qa.scale;
    return VMC_OK;
  }
  const int x = L->tens[xv];
  if (x < 0) /* a float value whose producer did not claim this node */
    return not_quantized(L, n, xv);
  const vmc_qact *xa = &L->q->t[x].q;
  if (xa->scale == qa.scale && xa->zp == qa.zp && xa->lo >= qa.lo && xa->hi <= qa.hi) {
    L->tens[n->out] = x; /* already on this grid */
    return VMC_OK;
  }
  return requant_step(L, n, x, &qa);
}

/* relu/relu6 on a quantized value: the same grid, clamped. */
static vmc_status lower_clamp(lower *L, const vmc_node *n) {
  const int x = L->tens[n->in[0]];
  if (x < 0) return not_quantized(L, n, n->in[0]);
  vmc_qact qa = L->q->t[x].q;
  const vmc_qparams qp = {qa.scale, qa.zp, qa.lo, qa.hi};
  fuse_act(is_op(n, "relu") ? VMC_ACT_RELU : VMC_ACT_RELU6, &qp, &qa);
  return requant_step(L, n, x, &qa);
}

static vmc_status lower_add(lower *L, const vmc_node *n) {
  const int a = L->tens[n->in[0]], b = L->tens[n->in[1]];
  if (a < 0) return not_quantized(L, n, n->in[0]);
  if (b < 0) return not_quantized(L, n, n->in[1]);
  int y;
  vmc_qparams qp;
  VMC_TRY(producer_output(L, n, &y, &qp));
  if (y < 0) return unsupported(n, "a float graph output");
  qrt_step *s;
  VMC_TRY(new_step(L, n, QRT_ADD, &s));
  s->in = reads(L, a);
  s->in2 = reads(L, b);
  s->out = y;
  s->n = L->q->t[a].bytes;
  s->inv = 1.0f / L->q->t[y].q.scale;
  return VMC_OK;
}

static vmc_conv_geom pool_geom(const vmc_node *n, const vmc_shape *in, const vmc_shape *out) {
  vmc_conv_geom g = {0};
  if (is_op(n, "gap")) {
    g.c = in->d[1];
    g.h = in->d[2];
    g.w = in->d[3];
    g.kh = g.sh = g.h;
    g.kw = g.sw = g.w;
    g.dh = g.dw = 1;
  } else {
    g = vmc_pool_window(n, in);
  }
  g.oh = out->d[2];
  g.ow = out->d[3];
  return g;
}

static vmc_status lower_pool(lower *L, const vmc_node *n) {
  const int x = L->tens[n->in[0]];
  if (x < 0) return not_quantized(L, n, n->in[0]);
  const vmc_conv_geom gm = pool_geom(n, &L->shape[n->in[0]], &L->shape[n->out]);
  if (L->q->conv && (is_op(n, "maxpool") || gm.kh != gm.h || gm.kw != gm.w || gm.ph || gm.pw))
    return unsupported(n, "only global average pooling in the pixel-major layout");
  qrt_step *s;
  if (is_op(n, "maxpool")) {
    VMC_TRY(new_tensor(L, &L->shape[n->out], &L->q->t[x].q, &L->tens[n->out]));
    VMC_TRY(new_step(L, n, QRT_MAXPOOL, &s));
    s->out = L->tens[n->out];
  } else {
    int y;
    vmc_qparams qp;
    VMC_TRY(producer_output(L, n, &y, &qp));
    if (y < 0) return unsupported(n, "a float graph output");
    VMC_TRY(new_step(L, n, QRT_AVGPOOL, &s));
    s->out = y;
    const vmc_qact *ya = &L->q->t[y].q;
    s->pool_scale = (float)((double)L->q->t[x].q.scale / ((double)gm.kh * gm.kw * ya->scale));
    const vmc_qepi e = {.zero_point = ya->zp, .lo = ya->lo, .hi = ya->hi, .out = VMC_QOUT_U8};
    s->prep = vmc_qepi_prepare(&e);
  }
  s->in = reads(L, x);
  s->geom = gm;
  return VMC_OK;
}

static vmc_status lower_node(lower *L, int i) {
  const vmc_node *n = &L->g->nodes[i];
  if (is_op(n, "fakequant")) return lower_fakequant(L, n);
  if (is_op(n, "conv2d") || is_op(n, "linear")) return lower_conv_linear(L, n);
  if (is_op(n, "add")) return lower_add(L, n);
  if (is_op(n, "maxpool") || is_op(n, "avgpool") || is_op(n, "gap")) return lower_pool(L, n);
  if (is_op(n, "relu") || is_op(n, "relu6")) return lower_clamp(L, n);
  if (is_op(n, "flatten") || is_op(n, "dropout")) {
    if (L->tens[n->in[0]] < 0) return not_quantized(L, n, n->in[0]);
    L->tens[n->out] = L->tens[n->in[0]];
    return VMC_OK;
  }
  if (is_op(n, "batchnorm"))
    return unsupported(n, "not lowered (a quantized graph has its batchnorms folded)");
  return unsupported(n, "no integer kernel for this op");
}

/* The graph output: fp32 from its producer, or dequantized. */
static vmc_status lower_output(lower *L) {
  if (L->out_f32) return VMC_OK;
  const vmc_graph *g = L->g;
  const int x = L->tens[g->output];
  if (x < 0)
    return vmc_error(VMC_ERR_UNSUPPORTED, "integer runtime: the graph output '%s' is not "
                     "computed by a lowered node", g->values[g->output].name);
  qrt_step *s;
  int prod = 0;
  for (int i = 0; i < g->n_nodes; i++)
    if (g->nodes[i].out == g->output) prod = i;
  if (L->q->t[x].g.pad)
    return unsupported(&g->nodes[prod], "an image as the graph output in the pixel-major layout");
  VMC_TRY(new_step(L, &g->nodes[prod], QRT_DEQUANTIZE, &s));
  s->in = reads(L, x);
  s->n = L->q->t[x].bytes;
  return VMC_OK;
}

/* ---- fusion ------------------------------------------------------------------------- */

/* A residual add right after the pixel-major conv that computes one of its
 * inputs, read by nothing else: the conv does the add in its write-back
 * (vmc_qconv_add: the same bits as the add step) and its own output is never
 * stored.  The add step goes. */
static vmc_status fuse_adds(vmc_qrt *q) {
  if (!q->conv || q->n_s < 2) return VMC_OK;
  int *readers = vmc_malloc_plain((size_t)q->n_t * sizeof *readers);
  if (!readers) return vmc_error(VMC_ERR_NOMEM, "integer runtime");
  for (int i = 0; i < q->n_s; i++) {
    if (q->s[i].in >= 0) readers[q->s[i].in]++;
    if (q->s[i].in2 >= 0) readers[q->s[i].in2]++;
  }
  for (int i = 1; i < q->n_s; i++) {
    qrt_step *a = &q->s[i], *c = &q->s[i - 1];
    if (a->kind != QRT_ADD || a->in2 < 0 || a->in == a->in2 || c->kind != QRT_CONV || c->res >= 0)
      continue;
    const int mine = c->out == a->in ? a->in : c->out == a->in2 ? a->in2 : -1;
    if (mine < 0 || readers[mine] != 1) continue;
    const int other = mine == a->in ? a->in2 : a->in;
    qrt_tensor *tc = &q->t[mine];
    const qrt_tensor *tr = &q->t[other], *to = &q->t[a->out];
    const vmc_qepi o = {.zero_point = to->q.zp, .lo = to->q.lo, .hi = to->q.hi,
                        .out = VMC_QOUT_U8};
    c->res = other;
    c->add = (vmc_qconv_add){.sc = tc->q.scale, .sr = tr->q.scale, .inv_o = a->inv,
                             .zc = tc->q.zp, .zr = tr->q.zp, .o = vmc_qepi_prepare(&o)};
    c->out = a->out;
    tc->bytes = 0; /* never stored */
    memmove(a, a + 1, (size_t)(q->n_s - i - 1) * sizeof *a);
    q->n_s--;
    for (int t = 0; t < q->n_t; t++) {
      if (q->t[t].first >= i) q->t[t].first--;
      if (q->t[t].last >= i) q->t[t].last--;
    }
  }
  vmc_free(readers);
  return VMC_OK;
}

/* ---- memory ------------------------------------------------------------------------- */

/* Tensors whose lives (first write to last read, in steps) do not overlap
 * share bytes: greedy first fit in creation order.  Returns the bytes. */
static size_t place_tensors(vmc_qrt *q) {
  size_t total = 0;
  for (int v = 0; v < q->n_t; v++) {
    qrt_tensor *t = &q->t[v];
    const size_t size = vmc_align_up(t->bytes, VMC_ALIGN);
    size_t best = (size_t)-1;
    for (int c = -1; c < v; c++) {
      const size_t o = c < 0 ? 0 : q->t[c].off + vmc_align_up(q->t[c].bytes, VMC_ALIGN);
      if (o >= best) continue;
      int clear = 1;
      for (int j = 0; j < v && clear; j++) {
        const qrt_tensor *u = &q->t[j];
        const int live = u->first <= t->last && t->first <= u->last;
        clear = !live || o + size <= u->off || u->off + vmc_align_up(u->bytes, VMC_ALIGN) <= o;
      }
      if (clear) best = o;
    }
    t->off = best;
    if (best + size > total) total = best + size;
  }
  return total;
}

static vmc_status build(lower *L, int batch) {
  const vmc_graph *g = L->g;
  vmc_qrt *q = L->q;
  VMC_TRY(vmc_graph_infer_shapes(g, 1, L->shape));
  for (int v = 0; v < g->n_values; v++) L->tens[v] = -1;
  for (int i = 0; i < g->n_nodes; i++)
    for (int k = 0; k < g->nodes[i].n_in; k++) {
      L->uses[g->nodes[i].in[k]]++;
      L->reader[g->nodes[i].in[k]] = i;
    }
  q->in_count = vmc_shape_count(&L->shape[g->input]);
  q->in_c = g->in_shape.d[1];
  q->in_h = g->in_shape.d[2];
  q->in_w = g->in_shape.d[3];
  q->classes = (int)vmc_shape_count(&L->shape[g->output]);
  for (int i = 0; i < g->n_nodes; i++)
    if (!L->done[i]) VMC_TRY(lower_node(L, i));
  VMC_TRY(lower_output(L));
  VMC_TRY(fuse_adds(q));
  if (!q->n_t || q->s[0].kind != QRT_QUANTIZE)
    return vmc_error(VMC_ERR_UNSUPPORTED, "integer runtime: the graph input is not read "
                     "through a fakequant node");
  /* One arena per context: tensors, then the im2col buffer. */
  const size_t col = q->col_off;
  q->tensor_bytes = place_tensors(q);
  q->col_off = vmc_align_up(q->tensor_bytes, VMC_ALIGN);
  /* The scratch after the tensors, and VMC_ALIGN bytes after it, cover
   * what the kernels may read past a tensor (VMC_QELT_OVERREAD). */
  _Static_assert(VMC_QELT_OVERREAD <= VMC_ALIGN, "arena slack");
  q->ctx_bytes = q->col_off + vmc_align_up(col, VMC_ALIGN) + VMC_ALIGN;
  q->batch = batch;
  q->nthreads = vmc_get_threads();
  q->n_ctx = q->nthreads < batch ? q->nthreads : batch;
  q->ctx = vmc_malloc_plain((size_t)q->n_ctx * sizeof *q->ctx);
  q->input = vmc_alloc((size_t)batch * q->in_count * sizeof(float));
  q->output = vmc_alloc((size_t)batch * q->classes * sizeof(float));
  if (!q->ctx || !q->input || !q->output) return vmc_error(VMC_ERR_NOMEM, "integer runtime");
  for (int c = 0; c < q->n_ctx; c++)
    if (!(q->ctx[c] = vmc_alloc(q->ctx_bytes)))
      return vmc_error(VMC_ERR_NOMEM, "integer runtime arena");
  return VMC_OK;
}

/* The runtime for one layout: conv non-NULL for pixel-major tensors. */
static vmc_status create(const vmc_graph *g, int batch, const vmc_qrt_opts *opts,
                         vmc_qconv_fn conv, vmc_qrt **out) {
  vmc_qrt *q = vmc_malloc_plain(sizeof *q);
  lower L = {.g = g, .q = q};
  const size_t nv = (size_t)(g->n_values ? g->n_values : 1), nn = (size_t)(g->n_nodes ? g->n_nodes : 1);
  L.shape = vmc_malloc_plain(nv * sizeof *L.shape);
  L.tens = vmc_malloc_plain(nv * sizeof *L.tens);
  L.uses = vmc_malloc_plain(nv * sizeof *L.uses);
  L.reader = vmc_malloc_plain(nv * sizeof *L.reader);
  L.done = vmc_malloc_plain(nn);
  vmc_status s = VMC_OK;
  if (!q || !L.shape || !L.tens || !L.uses || !L.reader || !L.done) {
    s = vmc_error(VMC_ERR_NOMEM, "integer runtime");
  } else {
    q->gemm = opts && opts->gemm ? opts->gemm : vmc_qgemm_best();
    q->gemm_given = opts && opts->gemm;
    q->dwconv = opts && opts->dwconv ? opts->dwconv : vmc_qdwconv;
    q->conv = conv;
    q->dwp = conv ? (opts && opts->dwp ? opts->dwp : vmc_qdwp_best()) : NULL;
    if (!vmc_qgemm_variant_ok(q->gemm))
      s = vmc_error(VMC_ERR_UNSUPPORTED, "integer runtime: this CPU cannot run %s", q->gemm->name);
    else
      s = build(&L, batch);
  }
  vmc_free(L.shape);
  vmc_free(L.tens);
  vmc_free(L.uses);
  vmc_free(L.reader);
  vmc_free(L.done);
  if (s) {
    vmc_qrt_destroy(q);
    return s;
  }
  *out = q;
  return VMC_OK;
}

vmc_status vmc_qrt_create(const vmc_graph *g, int batch, const vmc_qrt_opts *opts,
                          vmc_qrt **out) {
  *out = NULL;
  if (batch < 1 || batch > (1 << 20))
    return vmc_error(VMC_ERR_INVALID_ARG, "batch size %d is out of range (1..1048576)", batch);
  const vmc_qrt_layout layout = opts ? opts->layout : VMC_QRT_LAYOUT_AUTO;
  if (layout == VMC_QRT_LAYOUT_PLANAR) return create(g, batch, opts, NULL, out);
  vmc_qconv_fn conv = opts && opts->conv ? opts->conv : vmc_qconv_best();
  if (!conv) {
    if (layout == VMC_QRT_LAYOUT_AUTO) return create(g, batch, opts, NULL, out);
    return vmc_error(VMC_ERR_UNSUPPORTED, "integer runtime: no pixel-major convolution "
                     "kernel for this CPU (it needs AVX-512 VNNI, or AVX2 for 7-bit weights)");
  }
  const vmc_status s = create(g, batch, opts, conv, out);
  if (s == VMC_ERR_UNSUPPORTED && layout == VMC_QRT_LAYOUT_AUTO)
    return create(g, batch, opts, NULL, out);
  return s;
}

void vmc_qrt_destroy(vmc_qrt *q) {
  if (!q) return;
  for (int i = 0; i < q->n_s; i++) {
    vmc_free(q->s[i].packed);
    vmc_free(q->s[i].bias);
    vmc_free(q->s[i].scale);
    vmc_free(q->s[i].taps);
    vmc_free(q->s[i].boff);
    vmc_free((void *)q->s[i].cp.koff);
  }
  for (int c = 0; q->ctx && c < q->n_ctx; c++) vmc_free(q->ctx[c]);
  vmc_free(q->ctx);
  vmc_free(q->prof);
  vmc_free(q->t);
  vmc_free(q->s);
  vmc_free(q->input);
  vmc_free(q->output);
  vmc_free(q);
}

float *vmc_qrt_input(vmc_qrt *q) { return q->input; }
const float *vmc_qrt_output(const vmc_qrt *q) { return q->output; }
int vmc_qrt_batch(const vmc_qrt *q) { return q->batch; }
const char *vmc_qrt_layout_name(const vmc_qrt *q) { return q->conv ? "pixel-major" : "planar"; }
int vmc_qrt_classes(const vmc_qrt *q) { return q->classes; }

size_t vmc_qrt_arena_bytes(const vmc_qrt *q) {
  return q->ctx_bytes * (size_t)q->n_ctx + q->weight_bytes +
         (size_t)q->batch * (q->in_count + (size_t)q->classes) * sizeof(float);
}

static vmc_status qrt_forward_fn(void *self, int n) { return vmc_qrt_forward(self, n); }

void vmc_qrt_infer_fn(vmc_qrt *q, vmc_infer_fn *f) {
  memset(f, 0, sizeof *f);
  f->self = q;
  f->batch = q->batch;
  f->classes = q->classes;
  f->c = q->in_c;
  f->h = q->in_h;
  f->w = q->in_w;
  f->input = q->input;
  f->output = q->output;
  f->forward = qrt_forward_fn;
}

int vmc_qrt_describe(const vmc_qrt *q, int i, char *buf, size_t n) {
  if (i < 0 || i >= q->n_s || !buf || !n) return q->n_s;
  static const char *const kinds[] = {"quantize", "gemm",    "conv",      "dwconv",
                                      "add",      "maxpool", "avgpool", "dequantize"};
  const qrt_step *s = &q->s[i];
  int k = snprintf(buf, n, "%s %s %s", s->op, s->node, kinds[s->kind]);
  if (k > 0 && (size_t)k < n && s->kind == QRT_GEMM)
    snprintf(buf + k, n - (size_t)k, " %dx%dx%d%s%s", s->M, s->K, s->N,
             s->groups > 1 ? " grouped" : "",
             s->direct ? " direct" : s->wide ? " wide" : " im2col");
  if (k > 0 && (size_t)k < n && s->kind == QRT_CONV)
    snprintf(buf + k, n - (size_t)k, " %dx%dx%d direct, pixel-major%s", s->M, s->K,
             s->cp.oh * s->cp.ow, s->res >= 0 ? ", add fused" : "");
  if (k > 0 && (size_t)k < n && s->kind == QRT_ADD && s->in2 < 0)
    snprintf(buf + k, n - (size_t)k, " (requantize)");
  if (k > 0 && (size_t)k < n && s->out < 0 && s->kind != QRT_DEQUANTIZE)
    snprintf(buf + strlen(buf), n - strlen(buf), " -> f32");
  if (k > 0 && (size_t)k < n && s->kind == QRT_GEMM && s->gemm && s->gemm->pair_max)
    snprintf(buf + strlen(buf), n - strlen(buf), " (narrow pairs)");
  return q->n_s;
}

/* ---- per-step timing ------------------------------------------------------------------ */

vmc_status vmc_qrt_profile(vmc_qrt *q, int on) {
  vmc_free(q->prof);
  q->prof = NULL;
  if (!on || !q->n_s) return VMC_OK;
  const size_t n = (size_t)q->n_ctx * q->n_s;
  q->prof = vmc_malloc_plain(n * sizeof *q->prof);
  if (!q->prof) return vmc_error(VMC_ERR_NOMEM, "profile counters");
  memset(q->prof, 0, n * sizeof *q->prof);
  return VMC_OK;
}

int vmc_qrt_step_info(const vmc_qrt *q, int i, const char **node, const char **op,
                      double *seconds, double *macs) {
  if (i < 0 || i >= q->n_s) return q->n_s;
  const qrt_step *s = &q->s[i];
  *node = s->node;
  *op = s->op ? s->op : "";
  *seconds = 0;
  for (int c = 0; q->prof && c < q->n_ctx; c++) *seconds += q->prof[(size_t)c * q->n_s + i];
  *macs = s->macs > 0 ? s->macs /* the pixel-major convolutions */
          : s->kind == QRT_GEMM || s->kind == QRT_DWCONV ? (double)s->groups * s->M * s->K * s->N
                                                         : 0;
  return q->n_s;
}

const char *vmc_qrt_step_kernel(const vmc_qrt *q, int i) {
  if (i < 0 || i >= q->n_s) return NULL;
  const qrt_step *s = &q->s[i];
  switch (s->kind) {
  case QRT_GEMM:
    if (s->op && !strcmp(s->op, "linear")) return "gemm";
    if (s->wide) return s->geom.sh > 1 || s->geom.sw > 1 ? "gemm-phase" : "gemm-wide";
    return s->direct ? "gemm-1x1" : "gemm-im2col";
  case QRT_CONV: return "direct";
  case QRT_DWCONV: return "depthwise";
  default: return NULL;
  }
}

/* ---- the batch ------------------------------------------------------------------------ */

vmc_status vmc_qrt_forward(vmc_qrt *q, int n) {
  if (n < 1 || n > q->batch)
    return vmc_error(VMC_ERR_INVALID_ARG, "forward of %d images on an integer runtime for %d", n,
                     q->batch);
  const int nt = q->n_ctx < n ? q->n_ctx : n;
  if (nt <= 1) {
    for (int b = 0; b < n; b++)
      vmc_qrt_run_image(q, q->ctx[0], q->input + (size_t)b * q->in_count,
                        q->output + (size_t)b * q->classes, 1, q->prof);
    return VMC_OK;
  }
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; t++) {
    const int lo = (int)((int64_t)n * t / nt), hi = (int)((int64_t)n * (t + 1) / nt);
    for (int b = lo; b < hi; b++)
      vmc_qrt_run_image(q, q->ctx[t], q->input + (size_t)b * q->in_count,
                        q->output + (size_t)b * q->classes, 0,
                        q->prof ? q->prof + (size_t)t * q->n_s : NULL);
  }
  return VMC_OK;
}
