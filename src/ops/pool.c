/* maxpool, avgpool (attrs kh, kw, sh, sw (default = kernel), ph, pw; avgpool
 * divides by the full window, padding included, as PyTorch's default) and
 * gap (global average pool, output (N,C,1,1)). */
#include "graph/op.h"
#include "kernels/conv.h"
#include "kernels/pool.h"

#include <float.h>
#include <string.h>

vmc_conv_geom vmc_pool_window(const vmc_node *n, const vmc_shape *in) {
  vmc_conv_geom g = {0};
  g.kh = vmc_node_attr_i(n, "kh", 2);
  g.kw = vmc_node_attr_i(n, "kw", g.kh);
  g.sh = vmc_node_attr_i(n, "sh", g.kh);
  g.sw = vmc_node_attr_i(n, "sw", g.kw);
  g.ph = vmc_node_attr_i(n, "ph", 0);
  g.pw = vmc_node_attr_i(n, "pw", g.ph);
  g.dh = g.dw = 1;
  if (!in) return g;
  g.c = in->d[1];
  g.h = in->d[2];
  g.w = in->d[3];
  g.oh = vmc_conv_out(g.h, g.kh, g.sh, g.ph, 1);
  g.ow = vmc_conv_out(g.w, g.kw, g.sw, g.pw, 1);
  return g;
}


static vmc_status pool_infer(const vmc_graph *gr, const vmc_node *n, const vmc_shape *in,
                             vmc_shape *out) {
  if (in[0].ndim != 4) return vmc_error(VMC_ERR_SHAPE, "node '%s': pooling needs NCHW input", n->name);
  vmc_conv_geom g = vmc_pool_window(n, &in[0]);
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.ph < 0 || g.pw < 0 || g.ph > g.kh / 2 ||
      g.pw > g.kw / 2)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': bad pooling kernel/stride/padding", n->name);
  if (g.oh < 1 || g.ow < 1)
    return vmc_error(VMC_ERR_SHAPE, "node '%s': pooling window larger than the %dx%d input",
                     n->name, g.h, g.w);
  *out = vmc_shape4(in[0].d[0], g.c, g.oh, g.ow);
  return VMC_OK;
}

/* maxpool keeps the argmax (index within the input plane) for backward. */
static size_t maxpool_state(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                            vmc_mode mode) {
  return mode == VMC_MODE_TRAIN ? vmc_shape_count(out) * sizeof(int32_t) : 0;
}

static void maxpool_forward(vmc_opctx *c) {
  vmc_conv_geom g = vmc_pool_window(c->node, &c->xs[0]);
  const int planes = c->batch * g.c, OP = g.oh * g.ow;
  int32_t *arg = c->mode == VMC_MODE_TRAIN ? c->state : NULL;
  /* 2x2, stride 2, unpadded: the SIMD kernel (the same rule, pool.h). */
  const vmc_maxpool2_fn k2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && !g.ph && !g.pw
                                 ? vmc_maxpool2_best()
                                 : NULL;
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1)
  for (int p = 0; p < planes; p++) {
    const float *x = c->x[0] + (size_t)p * g.h * g.w;
    float *y = c->y + (size_t)p * OP;
    if (k2) {
      k2(x, g.h, g.w, y, arg ? arg + (size_t)p * OP : NULL);
      continue;
    }
    for (int oy = 0; oy < g.oh; oy++)
      for (int ox = 0; ox < g.ow; ox++) {
        float best = -FLT_MAX;
        int bi = -1;
        for (int i = 0; i < g.kh; i++) {
          int iy = oy * g.sh - g.ph + i;
          if (iy < 0 || iy >= g.h) continue;
          for (int j = 0; j < g.kw; j++) {
            int ix = ox * g.sw - g.pw + j;
            if (ix < 0 || ix >= g.w) continue;
            float v = x[iy * g.w + ix];
            if (bi < 0 || v > best) {
              best = v;
              bi = iy * g.w + ix;
            }
          }
        }
        y[oy * g.ow + ox] = best;
        if (arg) arg[(size_t)p * OP + oy * g.ow + ox] = bi;
      }
  }
}

static void maxpool_backward(vmc_opctx *c) {
  if (!c->dx[0]) return;
  vmc_conv_geom g = vmc_pool_window(c->node, &c->xs[0]);
  const int planes = c->batch * g.c, OP = g.oh * g.ow;
  const int32_t *arg = c->state;
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1)
  for (int p = 0; p < planes; p++) {
    float *dx = c->dx[0] + (size_t)p * g.h * g.w;
    const float *dy = c->dy + (size_t)p * OP;
    const int32_t *a = arg + (size_t)p * OP;
    for (int o = 0; o < OP; o++) dx[a[o]] += dy[o];
  }
}

static void avgpool_forward(vmc_opctx *c) {
  vmc_conv_geom g = vmc_pool_window(c->node, &c->xs[0]);
  const int planes = c->batch * g.c, OP = g.oh * g.ow;
  const float inv = 1.0f / (float)(g.kh * g.kw);
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1)
  for (int p = 0; p < planes; p++) {
    const float *x = c->x[0] + (size_t)p * g.h * g.w;
    float *y = c->y + (size_t)p * OP;
    for (int oy = 0; oy < g.oh; oy++)
      for (int ox = 0; ox < g.ow; ox++) {
        float s = 0;
        for (int i = 0; i < g.kh; i++) {
          int iy = oy * g.sh - g.ph + i;
          if (iy < 0 || iy >= g.h) continue;
          for (int j = 0; j < g.kw; j++) {
            int ix = ox * g.sw - g.pw + j;
            if (ix >= 0 && ix < g.w) s += x[iy * g.w + ix];
          }
        }
        y[oy * g.ow + ox] = s * inv;
      }
  }
}

static void avgpool_backward(vmc_opctx *c) {
  if (!c->dx[0]) return;
  vmc_conv_geom g = vmc_pool_window(c->node, &c->xs[0]);
  const int planes = c->batch * g.c, OP = g.oh * g.ow;
  const float inv = 1.0f / (float)(g.kh * g.kw);
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1)
  for (int p = 0; p < planes; p++) {
    float *dx = c->dx[0] + (size_t)p * g.h * g.w;
    const float *dy = c->dy + (size_t)p * OP;
    for (int oy = 0; oy < g.oh; oy++)
      for (int ox = 0; ox < g.ow; ox++) {
        float v = dy[oy * g.ow + ox] * inv;
        for (int i = 0; i < g.kh; i++) {
          int iy = oy * g.sh - g.ph + i;
          if (iy < 0 || iy >= g.h) continue;
          for (int j = 0; j < g.kw; j++) {
            int ix = ox * g.sw - g.pw + j;
            if (ix >= 0 && ix < g.w) dx[iy * g.w + ix] += v;
          }
        }
      }
  }
}

static vmc_status gap_infer(const vmc_graph *gr, const vmc_node *n, const vmc_shape *in,
                            vmc_shape *out) {
  if (in[0].ndim != 4) return vmc_error(VMC_ERR_SHAPE, "node '%s': gap needs NCHW input", n->name);
  *out = vmc_shape4(in[0].d[0], in[0].d[1], 1, 1);
  return VMC_OK;
}

static void gap_forward(vmc_opctx *c) {
  const int C = c->xs[0].d[1], planes = c->batch * C, HW = c->xs[0].d[2] * c->xs[0].d[3];
  const float inv = 1.0f / (float)HW;
  if (c->xpad[0]) { /* the padded layout (op.h): the same sums, row by row */
    const vmc_padded q = vmc_padded_of(&c->xs[0]);
    for (int p = 0; p < planes; p++)
      c->y[p] = vmc_sum_plane(c->x[0] + (size_t)(p / C) * q.image + (size_t)(p % C) * q.plane +
                                  vmc_padded_origin(&q),
                              q.h, q.w, q.wp) *
                inv;
    return;
  }
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && planes > 256)
  for (int p = 0; p < planes; p++)
    c->y[p] = vmc_sum_plane(c->x[0] + (size_t)p * HW, c->xs[0].d[2], c->xs[0].d[3],
                            (size_t)c->xs[0].d[3]) *
              inv;
}

/* Global pooling reads a padded input's pixels (op.h) in the plain sums'
 * order. */
static int gap_padded_in(const vmc_node *n, const vmc_shape *in, int k) {
  return in[0].ndim == 4 ? VMC_PAD_PIXELS : 0;
}

static void gap_backward(vmc_opctx *c) {
  if (!c->dx[0]) return;
  const int planes = c->batch * c->xs[0].d[1], HW = c->xs[0].d[2] * c->xs[0].d[3];
  const float inv = 1.0f / (float)HW;
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && planes > 256)
  for (int p = 0; p < planes; p++) {
    float *dx = c->dx[0] + (size_t)p * HW, v = c->dy[p] * inv;
    if (c->dx_set[0])
      for (int i = 0; i < HW; i++) dx[i] = v;
    else
      for (int i = 0; i < HW; i++) dx[i] += v;
  }
}

const vmc_op vmc_op_maxpool = {.name = "maxpool", .min_in = 1, .max_in = 1, .infer = pool_infer,
                               .state_bytes = maxpool_state, .forward = maxpool_forward,
                               .backward = maxpool_backward};
const vmc_op vmc_op_avgpool = {.name = "avgpool", .min_in = 1, .max_in = 1, .infer = pool_infer,
                               .forward = avgpool_forward, .backward = avgpool_backward};
const vmc_op vmc_op_gap = {.name = "gap", .min_in = 1, .max_in = 1, .infer = gap_infer,
                           .forward = gap_forward, .backward = gap_backward, .sets_dx = 1,
                           .padded_in = gap_padded_in};
