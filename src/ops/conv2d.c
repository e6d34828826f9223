/* conv2d: attrs out_c, kh, kw, sh, sw, ph, pw, dh, dw, groups;
 * params [weight (out_c, C/groups, kh, kw)] or [weight, bias (out_c)].
 * im2col + GEMM per image and group; 1x1 stride-1 convs skip im2col;
 * depthwise (one input and one output channel per group) runs direct. */
#include "graph/op.h"
#include "kernels/conv.h"
#include "kernels/gemm.h"

#include <omp.h>
#include <string.h>

typedef struct {
  int groups, oc, ocg;
  vmc_conv_geom g; /* per group */
  int K, P;        /* rows of col (cg*kh*kw), output pixels */
  int direct;      /* 1x1, stride 1, no pad: col is the input itself */
  int depthwise;
  /* Stride-1 convs get dx as a convolution of dy with the rotated kernel
   * (im2col of dy + one GEMM with K = out_c/groups*kh*kw) instead of a GEMM
   * with K = out_c/groups and a col2im scatter: the better GEMM shape. */
  int dx_by_conv;
  vmc_conv_geom gt; /* geometry of that convolution: dy (ocg channels) -> dx */
  int Kt;           /* rows of im2col(dy) */
} conv_cfg;

static conv_cfg cfg_of(const vmc_node *n, const vmc_shape *in) {
  conv_cfg c;
  c.groups = vmc_node_attr_i(n, "groups", 1);
  c.oc = vmc_node_attr_i(n, "out_c", 0);
  c.ocg = c.groups > 0 ? c.oc / c.groups : 0;
  vmc_conv_geom *g = &c.g;
  g->c = c.groups > 0 ? in->d[1] / c.groups : 0;
  g->h = in->d[2];
  g->w = in->d[3];
  g->kh = vmc_node_attr_i(n, "kh", 1);
  g->kw = vmc_node_attr_i(n, "kw", g->kh);
  g->sh = vmc_node_attr_i(n, "sh", 1);
  g->sw = vmc_node_attr_i(n, "sw", g->sh);
  g->ph = vmc_node_attr_i(n, "ph", 0);
  g->pw = vmc_node_attr_i(n, "pw", g->ph);
  g->dh = vmc_node_attr_i(n, "dh", 1);
  g->dw = vmc_node_attr_i(n, "dw", g->dh);
  g->oh = vmc_conv_out(g->h, g->kh, g->sh, g->ph, g->dh);
  g->ow = vmc_conv_out(g->w, g->kw, g->sw, g->pw, g->dw);
  /* Attributes from a file may be absurd: products in 64 bits, and an
   * out-of-range result leaves K or P 0 for conv_infer to reject. */
  int64_t K = (int64_t)g->c * g->kh * g->kw, P = (int64_t)g->oh * g->ow;
  c.K = (g->kh < 1 || g->kw < 1 || K < 1 || K > (1 << 28)) ? 0 : (int)K;
  c.P = (P < 1 || P > (1 << 28)) ? 0 : (int)P;
  c.direct = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
  c.depthwise = g->c == 1 && c.ocg == 1;
  vmc_conv_geom *t = &c.gt;
  *t = *g;
  t->c = c.ocg;
  t->h = g->oh;
  t->w = g->ow;
  t->ph = g->dh * (g->kh - 1) - g->ph;
  t->pw = g->dw * (g->kw - 1) - g->pw;
  t->oh = vmc_conv_out(t->h, t->kh, 1, t->ph, t->dh);
  t->ow = vmc_conv_out(t->w, t->kw, 1, t->pw, t->dw);
  c.dx_by_conv = !c.direct && !c.depthwise && g->sh == 1 && g->sw == 1 && t->ph >= 0 &&
                 t->pw >= 0 && t->oh == g->h && t->ow == g->w;
  c.Kt = c.ocg * g->kh * g->kw;
  return c;
}

static vmc_status conv_infer(const vmc_graph *gr, const vmc_node *n, const vmc_shape *in,
                             vmc_shape *out) {
  if (in[0].ndim != 4) return vmc_error(VMC_ERR_SHAPE, "node '%s': conv2d needs NCHW input", n->name);
  conv_cfg c = cfg_of(n, &in[0]);
  const vmc_conv_geom *g = &c.g;
  if (c.groups < 1 || c.oc < 1 || in[0].d[1] % c.groups || c.oc % c.groups)
    return vmc_error(VMC_ERR_SHAPE, "node '%s': %d input and %d output channels do not split into %d groups",
                     n->name, in[0].d[1], c.oc, c.groups);
  if (g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 || g->ph < 0 || g->pw < 0 || g->dh < 1 ||
      g->dw < 1 || g->kh > 64 || g->kw > 64 || g->ph > 64 || g->pw > 64)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': bad kernel/stride/padding/dilation", n->name);
  if (g->oh < 1 || g->ow < 1 || c.K < 1 || c.P < 1)
    return vmc_error(VMC_ERR_SHAPE, "node '%s': a %dx%d kernel does not fit a %dx%d input", n->name,
                     g->kh, g->kw, g->h, g->w);
  vmc_shape ws = vmc_shape4(c.oc, g->c, g->kh, g->kw);
  VMC_TRY(vmc_op_check_param(gr, n, 0, &ws));
  if (n->n_param > 1) {
    vmc_shape bs = {1, {c.oc}};
    VMC_TRY(vmc_op_check_param(gr, n, 1, &bs));
  }
  *out = vmc_shape4(in[0].d[0], c.oc, g->oh, g->ow);
  return VMC_OK;
}

static size_t conv_scratch(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                           vmc_mode mode, int nthreads) {
  conv_cfg c = cfg_of(n, &in[0]);
  size_t col = (c.direct || c.depthwise) ? 0 : (size_t)c.K * c.P;
  size_t f = col;                                  /* forward: col */
  if (mode == VMC_MODE_TRAIN) {                    /* + dcol, + private dW, db */
    size_t dcol = c.dx_by_conv ? (size_t)c.Kt * c.g.h * c.g.w : col;
    f = col + dcol + (size_t)c.oc * c.K + (size_t)c.oc;
  }
  return f * sizeof(float);
}

/* Training keeps the rotated, channel-swapped kernel for dx_by_conv:
 * wt[g][c][o][i][j] = w[g][o][c][kh-1-i][kw-1-j]. */
static size_t conv_state(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                         vmc_mode mode) {
  conv_cfg c = cfg_of(n, &in[0]);
  return mode == VMC_MODE_TRAIN && c.dx_by_conv ? (size_t)c.oc * c.K * sizeof(float) : 0;
}

static void rotate_kernel(const conv_cfg *c, const float *w, float *wt) {
  const int kk = c->g.kh * c->g.kw;
  for (int gi = 0; gi < c->groups; gi++)
    for (int o = 0; o < c->ocg; o++)
      for (int ci = 0; ci < c->g.c; ci++)
        for (int k = 0; k < kk; k++)
          wt[(((size_t)gi * c->g.c + ci) * c->ocg + o) * kk + (kk - 1 - k)] =
              w[(((size_t)gi * c->ocg + o) * c->g.c + ci) * kk + k];
}

/* Images run in parallel, each on one thread with its own scratch; a batch
 * smaller than the thread count runs images in turn with threaded GEMMs. */
#define IMAGE_LOOP_PARALLEL(ctx) ((ctx)->batch >= (ctx)->nthreads && (ctx)->nthreads > 1)

static void conv_forward(vmc_opctx *ctx) {
  const vmc_node *n = ctx->node;
  conv_cfg c = cfg_of(n, &ctx->xs[0]);
  const float *W = ctx->g->params[n->param[0]].data;
  const float *B = n->n_param > 1 ? ctx->g->params[n->param[1]].data : NULL;
  const int C = ctx->xs[0].d[1], HW = c.g.h * c.g.w, par = IMAGE_LOOP_PARALLEL(ctx);
#pragma omp parallel for schedule(static) num_threads(ctx->nthreads) if (par)
  for (int b = 0; b < ctx->batch; b++) {
    float *col = (float *)(ctx->scratch + (size_t)omp_get_thread_num() * ctx->scratch_bytes);
    const float *x = ctx->x[0] + (size_t)b * C * HW;
    float *y = ctx->y + (size_t)b * c.oc * c.P;
    for (int gi = 0; gi < c.groups; gi++) {
      const float *xg = x + (size_t)gi * c.g.c * HW;
      float *yg = y + (size_t)gi * c.ocg * c.P;
      const float *Wg = W + (size_t)gi * c.ocg * c.K;
      if (c.depthwise) {
        vmc_dwconv_forward(xg, Wg, B ? B[gi] : 0.0f, &c.g, yg);
        continue;
      }
      const float *src = xg;
      if (!c.direct) {
        vmc_im2col(xg, &c.g, col);
        src = col;
      }
      if (par)
        vmc_sgemm(0, 0, c.ocg, c.P, c.K, 1.0f, Wg, c.K, src, c.P, 0.0f, yg, c.P);
      else
        vmc_sgemm_mt(0, 0, c.ocg, c.P, c.K, 1.0f, Wg, c.K, src, c.P, 0.0f, yg, c.P);
      if (B)
        for (int o = 0; o < c.ocg; o++) {
          float bv = B[gi * c.ocg + o], *yr = yg + (size_t)o * c.P;
          for (int p = 0; p < c.P; p++) yr[p] += bv;
        }
    }
  }
}

static void conv_backward(vmc_opctx *ctx) {
  const vmc_node *n = ctx->node;
  conv_cfg c = cfg_of(n, &ctx->xs[0]);
  vmc_param *pw = &ctx->g->params[n->param[0]];
  vmc_param *pb = n->n_param > 1 ? &ctx->g->params[n->param[1]] : NULL;
  const float *W = pw->data;
  const int C = ctx->xs[0].d[1], HW = c.g.h * c.g.w, par = IMAGE_LOOP_PARALLEL(ctx);
  const size_t col_n = (c.direct || c.depthwise) ? 0 : (size_t)c.K * c.P;
  const size_t dcol_n = c.dx_by_conv ? (size_t)c.Kt * HW : col_n;
  const size_t wn = (size_t)c.oc * c.K;
  const int nt = par ? ctx->nthreads : 1;
  for (int t = 0; t < nt; t++) {
    float *base = (float *)(ctx->scratch + (size_t)t * ctx->scratch_bytes);
    memset(base + col_n + dcol_n, 0, (wn + (size_t)c.oc) * sizeof(float));
  }
  float *Wt = c.dx_by_conv ? ctx->state : NULL;
  if (Wt && ctx->dx[0]) rotate_kernel(&c, W, Wt);
#pragma omp parallel for schedule(static) num_threads(ctx->nthreads) if (par)
  for (int b = 0; b < ctx->batch; b++) {
    float *base = (float *)(ctx->scratch + (size_t)omp_get_thread_num() * ctx->scratch_bytes);
    float *col = base, *dcol = base + col_n, *dW = base + col_n + dcol_n, *dB = dW + wn;
    const float *x = ctx->x[0] + (size_t)b * C * HW;
    float *dx = ctx->dx[0] ? ctx->dx[0] + (size_t)b * C * HW : NULL;
    const float *dy = ctx->dy + (size_t)b * c.oc * c.P;
    /* dx_set: GEMM paths overwrite (beta 0); scatter paths start from 0. */
    const float dx_beta = ctx->dx_set[0] ? 0.0f : 1.0f;
    if (dx && ctx->dx_set[0] && (c.depthwise || !(c.direct || c.dx_by_conv)))
      memset(dx, 0, (size_t)C * HW * sizeof(float));
    for (int gi = 0; gi < c.groups; gi++) {
      const float *xg = x + (size_t)gi * c.g.c * HW;
      float *dxg = dx ? dx + (size_t)gi * c.g.c * HW : NULL;
      const float *dyg = dy + (size_t)gi * c.ocg * c.P;
      const float *Wg = W + (size_t)gi * c.ocg * c.K;
      float *dWg = dW + (size_t)gi * c.ocg * c.K;
      for (int o = 0; pb && o < c.ocg; o++) {
        const float *r = dyg + (size_t)o * c.P;
        float s = 0;
        for (int p = 0; p < c.P; p++) s += r[p];
        dB[gi * c.ocg + o] += s;
      }
      if (c.depthwise) {
        vmc_dwconv_backward(xg, Wg, dyg, &c.g, dxg, dWg);
        continue;
      }
      const float *src = xg;
      if (!c.direct) {
        vmc_im2col(xg, &c.g, col);
        src = col;
      }
      void (*gemm)(int, int, int, int, int, float, const float *, int, const float *, int, float,
                   float *, int) = par ? vmc_sgemm : vmc_sgemm_mt;
      /* dW += dY · col^T */
      gemm(0, 1, c.ocg, c.K, c.P, 1.0f, dyg, c.P, src, c.P, 1.0f, dWg, c.K);
      if (!dxg) continue;
      if (c.direct) { /* dx += W^T · dY */
        gemm(1, 0, c.K, c.P, c.ocg, 1.0f, Wg, c.K, dyg, c.P, dx_beta, dxg, c.P);
      } else if (c.dx_by_conv) { /* dx += rot(W)^T · im2col(dY) */
        vmc_im2col(dyg, &c.gt, dcol);
        gemm(0, 0, c.g.c, HW, c.Kt, 1.0f, Wt + (size_t)gi * c.g.c * c.Kt, c.Kt, dcol, HW, dx_beta,
             dxg, HW);
      } else {
        gemm(1, 0, c.K, c.P, c.ocg, 1.0f, Wg, c.K, dyg, c.P, 0.0f, dcol, c.P);
        vmc_col2im_add(dcol, &c.g, dxg);
      }
    }
  }
  /* Reduce the private gradients in thread order: deterministic. */
  for (int t = 0; t < nt; t++) {
    const float *dW = (const float *)(ctx->scratch + (size_t)t * ctx->scratch_bytes) + col_n + dcol_n;
    for (size_t i = 0; i < wn; i++) pw->grad[i] += dW[i];
    if (pb)
      for (int o = 0; o < c.oc; o++) pb->grad[o] += dW[wn + (size_t)o];
  }
}

static uint64_t conv_macs(const vmc_node *n, const vmc_shape *in, const vmc_shape *out) {
  conv_cfg c = cfg_of(n, &in[0]);
  return (uint64_t)c.oc * c.P * c.K;
}

const vmc_op vmc_op_conv2d = {
    .name = "conv2d", .min_in = 1, .max_in = 1, .n_param_min = 1, .n_param_max = 2,
    .sets_dx = 1, .infer = conv_infer, .state_bytes = conv_state, .scratch_bytes = conv_scratch, .forward = conv_forward,
    .backward = conv_backward, .macs = conv_macs};
