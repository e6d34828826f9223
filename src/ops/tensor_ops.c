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

/* Where the rows of one operand of a 4-d add lie: image, channel and row
 * strides from its first pixel. */
typedef struct {
  size_t first, image, chan, row;
} add_view;

static add_view view_of(const vmc_padded *q, int ch, int padded) {
  if (padded) return (add_view){vmc_padded_origin(q), q->image, q->plane, (size_t)q->wp};
  const size_t hw = (size_t)q->h * q->w;
  return (add_view){0, ch * hw, hw, (size_t)q->w};
}

static void add_row(const float *restrict a, const float *restrict b, float *restrict y, int w,
                    float lo, float hi) {
  for (int j = 0; j < w; j++) y[j] = vmc_clampf(a[j] + b[j], lo, hi);
}

/* Some operands in the padded layout (op.h), not all: row by row. */
static void add_rows(const vmc_opctx *c, float lo, float hi) {
  const vmc_padded q = vmc_padded_of(&c->ys);
  const int ch = c->ys.d[1];
  const add_view va = view_of(&q, ch, c->xpad[0]), vb = view_of(&q, ch, c->xpad[1]),
                 vy = view_of(&q, ch, c->ypad);
  for (int i = 0; i < c->batch; i++) {
    for (int k = 0; k < ch; k++) {
      const float *a = c->x[0] + va.first + i * va.image + k * va.chan;
      const float *b = c->x[1] + vb.first + i * vb.image + k * vb.chan;
      float *y = c->y + vy.first + i * vy.image + k * vy.chan;
      for (int r = 0; r < q.h; r++, a += va.row, b += vb.row, y += vy.row)
        add_row(a, b, y, q.w, lo, hi);
    }
    if (c->ypad == VMC_PAD_ZEROS) vmc_padded_zero_borders(&q, ch, c->y + i * q.image);
  }
}

static void add_forward(vmc_opctx *c) {
  const float *a = c->x[0], *b = c->x[1];
  const float lo = vmc_act_lo(c->act), hi = vmc_act_hi(c->act);
  const int pads = !!c->xpad[0] + !!c->xpad[1] + !!c->ypad;
  if (pads && pads < 3) {
    add_rows(c, lo, hi);
    return;
  }
  /* All padded: zero borders add (and clamp) to zero borders. */
  const size_t n = (pads ? vmc_padded_of(&c->ys).image : per_image(&c->ys)) * (size_t)c->batch;
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

/* Any operand of a 4-d add may be padded (op.h); where all are, the borders
 * are added too. */
static int add_padded_in(const vmc_node *n, const vmc_shape *in, int k) {
  return in[k].ndim == 4 ? VMC_PAD_ZEROS : 0;
}
static int add_padded_out(const vmc_node *n, const vmc_shape *in) { return in[0].ndim == 4; }

const vmc_op vmc_op_add = {.name = "add", .min_in = 2, .max_in = 2, .infer = add_infer,
                           .forward = add_forward, .backward = add_backward, .can_fuse_act = 1,
                           .sets_dx = 1, .padded_in = add_padded_in, .padded_out = add_padded_out};
const vmc_op vmc_op_concat = {.name = "concat", .min_in = 1, .max_in = VMC_MAX_INPUTS,
                              .infer = concat_infer, .forward = concat_forward,
                              .backward = concat_backward};
const vmc_op vmc_op_flatten = {.name = "flatten", .min_in = 1, .max_in = 1,
                               .infer = flatten_infer, .forward = flatten_forward,
                               .backward = flatten_backward, .sets_dx = 1};
