/* Data-movement ops: add (two inputs of one shape), concat (along dim 1 of
 * NCHW inputs), flatten ((N,C,H,W) -> (N, C*H*W)). */
#include "graph/op.h"

#include <math.h>
#include <string.h>

static size_t per_image(const vmc_shape *s) { return vmc_shape_count(s) / (size_t)s->d[0]; }

static vmc_status add_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                            vmc_shape *out) {
  if (!vmc_shape_eq(&in[0], &in[1])) {
    char a[64], b[64];
    return vmc_error(VMC_ERR_SHAPE, "node '%s': add of %s and %s", n->name,
                     vmc_shape_str(&in[0], a, sizeof a), vmc_shape_str(&in[1], b, sizeof b));
  }
  *out = in[0];
  return VMC_OK;
}

static void add_forward(vmc_opctx *c) {
  const size_t n = per_image(&c->ys) * (size_t)c->batch;
  const float *a = c->x[0], *b = c->x[1];
  const float lo = vmc_act_lo(c->act), hi = vmc_act_hi(c->act);
  if (c->act == VMC_ACT_NONE) {
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && n > 65536)
    for (size_t i = 0; i < n; i++) c->y[i] = a[i] + b[i];
    return;
  }
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && n > 65536)
  for (size_t i = 0; i < n; i++) c->y[i] = vmc_clampf(a[i] + b[i], lo, hi);
}

/* The gradient of both inputs is dy (masked by a fused activation): per
 * span of L1-sized blocks, the masked dy once, then a copy (dx_set) or an
 * add into each input's gradient.  Every loop is branch-free and
 * vectorises; two inputs that share a buffer (add(x, x)) receive it twice. */
#define ADD_SPAN 1024

static void add_grad_span(const vmc_opctx *c, size_t lo_i, size_t hi_i) {
  const float lo = vmc_act_lo(c->act), hi = vmc_act_hi(c->act);
  float buf[ADD_SPAN];
  for (size_t i0 = lo_i; i0 < hi_i; i0 += ADD_SPAN) {
    const size_t m = hi_i - i0 < ADD_SPAN ? hi_i - i0 : ADD_SPAN;
    const float *d = c->dy + i0;
    if (c->act != VMC_ACT_NONE) {
      const float *y = c->y + i0;
      for (size_t k = 0; k < m; k++) buf[k] = vmc_act_grad(y[k], d[k], lo, hi);
      d = buf;
    }
    for (int j = 0; j < 2; j++) {
      float *dx = c->dx[j] ? c->dx[j] + i0 : NULL;
      if (!dx) continue;
      if (c->dx_set[j])
        memcpy(dx, d, m * sizeof(float));
      else
        for (size_t k = 0; k < m; k++) dx[k] += d[k];
    }
  }
}

static void add_backward(vmc_opctx *c) {
  const size_t n = per_image(&c->ys) * (size_t)c->batch;
  if (!c->dx[0] && !c->dx[1]) return;
  const int nt = c->nthreads > 1 && n > 65536 ? c->nthreads : 1;
  if (nt == 1) {
    add_grad_span(c, 0, n);
    return;
  }
  /* Fixed spans per thread, cut at multiples of 16 floats. */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; t++) {
    size_t a = (n * (size_t)t / (size_t)nt) & ~(size_t)15, b = n * (size_t)(t + 1) / (size_t)nt;
    if (t + 1 < nt) b &= ~(size_t)15;
    add_grad_span(c, a, b);
  }
}

static vmc_status concat_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                               vmc_shape *out) {
  int C = 0;
  for (int k = 0; k < n->n_in; k++) {
    if (in[k].ndim != 4 || in[k].d[0] != in[0].d[0] || in[k].d[2] != in[0].d[2] ||
        in[k].d[3] != in[0].d[3])
      return vmc_error(VMC_ERR_SHAPE, "node '%s': concat inputs differ in N, H or W", n->name);
    C += in[k].d[1];
  }
  *out = vmc_shape4(in[0].d[0], C, in[0].d[2], in[0].d[3]);
  return VMC_OK;
}

static void concat_forward(vmc_opctx *c) {
  const size_t out_img = per_image(&c->ys);
  for (int b = 0; b < c->batch; b++) {
    size_t off = 0;
    for (int k = 0; k < c->node->n_in; k++) {
      size_t m = per_image(&c->xs[k]);
      memcpy(c->y + b * out_img + off, c->x[k] + b * m, m * sizeof(float));
      off += m;
    }
  }
}

static void concat_backward(vmc_opctx *c) {
  const size_t out_img = per_image(&c->ys);
  for (int b = 0; b < c->batch; b++) {
    size_t off = 0;
    for (int k = 0; k < c->node->n_in; k++) {
      size_t m = per_image(&c->xs[k]);
      if (c->dx[k])
        for (size_t i = 0; i < m; i++) c->dx[k][b * m + i] += c->dy[b * out_img + off + i];
      off += m;
    }
  }
}

static vmc_status flatten_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                                vmc_shape *out) {
  size_t f = per_image(&in[0]);
  if (f > (1u << 30)) return vmc_error(VMC_ERR_SHAPE, "node '%s': too large to flatten", n->name);
  *out = vmc_shape2(in[0].d[0], (int)f);
  return VMC_OK;
}

static void flatten_forward(vmc_opctx *c) {
  memcpy(c->y, c->x[0], per_image(&c->ys) * (size_t)c->batch * sizeof(float));
}

static void flatten_backward(vmc_opctx *c) {
  if (!c->dx[0]) return;
  const size_t n = per_image(&c->ys) * (size_t)c->batch;
  if (c->dx_set[0]) {
    memcpy(c->dx[0], c->dy, n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; i++) c->dx[0][i] += c->dy[i];
}

const vmc_op vmc_op_add = {.name = "add", .min_in = 2, .max_in = 2, .infer = add_infer,
                           .forward = add_forward, .backward = add_backward, .can_fuse_act = 1,
                           .sets_dx = 1};
const vmc_op vmc_op_concat = {.name = "concat", .min_in = 1, .max_in = VMC_MAX_INPUTS,
                              .infer = concat_infer, .forward = concat_forward,
                              .backward = concat_backward};
const vmc_op vmc_op_flatten = {.name = "flatten", .min_in = 1, .max_in = 1,
                               .infer = flatten_infer, .forward = flatten_forward,
                               .backward = flatten_backward, .sets_dx = 1};
