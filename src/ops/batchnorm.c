/* batchnorm over channel dim 1 of (N,C,H,W) or (N,C).
 * attrs eps (1e-5), momentum (0.1; PyTorch's convention: running =
 * (1-m)*running + m*batch, the running variance unbiased).
 * params [gamma, beta, running_mean, running_var] each (C).
 * Training uses batch statistics; inference the running ones. */
#include "graph/op.h"

#include <math.h>

#define LANES 8 /* partial sums per reduction */

static void dims(const vmc_shape *s, int *C, int *HW) {
  *C = s->d[1];
  *HW = s->ndim == 4 ? s->d[2] * s->d[3] : 1;
}

static vmc_status bn_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                           vmc_shape *out) {
  if (in[0].ndim != 4 && in[0].ndim != 2)
    return vmc_error(VMC_ERR_SHAPE, "node '%s': batchnorm needs (N,C,H,W) or (N,C)", n->name);
  float eps = vmc_node_attr_f(n, "eps", 1e-5f), m = vmc_node_attr_f(n, "momentum", 0.1f);
  if (!(eps > 0 && eps < 1) || !(m >= 0 && m <= 1))
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': bad eps or momentum", n->name);
  vmc_shape ps = {1, {in[0].d[1]}};
  for (int i = 0; i < 4; i++) VMC_TRY(vmc_op_check_param(g, n, i, &ps));
  *out = in[0];
  return VMC_OK;
}

/* state: batch mean and 1/sqrt(var+eps) per channel. */
static size_t bn_state(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                       vmc_mode mode) {
  return 2 * (size_t)in[0].d[1] * sizeof(float);
}

static void bn_forward(vmc_opctx *ctx) {
  const vmc_node *n = ctx->node;
  int C, HW;
  dims(&ctx->xs[0], &C, &HW);
  const int N = ctx->batch;
  float eps = vmc_node_attr_f(n, "eps", 1e-5f), mom = vmc_node_attr_f(n, "momentum", 0.1f);
  const float *gamma = ctx->g->params[n->param[0]].data, *beta = ctx->g->params[n->param[1]].data;
  float *rm = ctx->g->params[n->param[2]].data, *rv = ctx->g->params[n->param[3]].data;
  float *mean = ctx->state, *invstd = mean + C;
  const int train = ctx->mode == VMC_MODE_TRAIN;
  const float hi = vmc_act_hi(ctx->act);
#pragma omp parallel for schedule(static) num_threads(ctx->nthreads) if (ctx->nthreads > 1)
  for (int c = 0; c < C; c++) {
    float mu, is;
    if (train) {
      double s = 0, s2 = 0;
      for (int b = 0; b < N; b++) {
        const float *x = ctx->x[0] + ((size_t)b * C + c) * HW;
        float ps = 0, ps2 = 0;
#pragma omp simd reduction(+ : ps)
        for (int i = 0; i < HW; i++) ps += x[i];
        s += ps;
        float pm = ps / (float)HW;
#pragma omp simd reduction(+ : ps2)
        for (int i = 0; i < HW; i++) ps2 += (x[i] - pm) * (x[i] - pm);
        /* combine per-image sums of squares around the image mean */
        s2 += ps2 + (double)HW * pm * pm;
      }
      double cnt = (double)N * HW, m = s / cnt, var = s2 / cnt - m * m;
      if (var < 0) var = 0;
      mu = (float)m;
      is = (float)(1.0 / sqrt(var + eps));
      rm[c] = (1 - mom) * rm[c] + mom * (float)m;
      double unb = cnt > 1 ? var * cnt / (cnt - 1) : var;
      rv[c] = (1 - mom) * rv[c] + mom * (float)unb;
    } else {
      mu = rm[c];
      is = 1.0f / sqrtf(rv[c] + eps);
    }
    mean[c] = mu;
    invstd[c] = is;
    float a = gamma[c] * is, bb = beta[c] - mu * a;
    for (int b = 0; b < N; b++) {
      const float *x = ctx->x[0] + ((size_t)b * C + c) * HW;
      float *y = ctx->y + ((size_t)b * C + c) * HW;
      if (ctx->act == VMC_ACT_NONE)
        for (int i = 0; i < HW; i++) y[i] = a * x[i] + bb;
      else
        for (int i = 0; i < HW; i++) y[i] = vmc_clampf(a * x[i] + bb, 0.0f, hi);
    }
  }
}

static void bn_backward(vmc_opctx *ctx) {
  const vmc_node *n = ctx->node;
  int C, HW;
  dims(&ctx->xs[0], &C, &HW);
  const int N = ctx->batch;
  const float *gamma = ctx->g->params[n->param[0]].data;
  float *dgamma = ctx->g->params[n->param[0]].grad, *dbeta = ctx->g->params[n->param[1]].grad;
  const float *mean = ctx->state, *invstd = mean + C;
  const int train = ctx->mode == VMC_MODE_TRAIN;
  const float lo = vmc_act_lo(ctx->act), hi = vmc_act_hi(ctx->act);
  const int fused = ctx->act != VMC_ACT_NONE;
  /* A fused activation: the gradient passes where lo < y < hi. */
#define DY(i) (fused ? vmc_act_grad(yv[i], dy[i], lo, hi) : dy[i])
#pragma omp parallel for schedule(static) num_threads(ctx->nthreads) if (ctx->nthreads > 1)
  for (int c = 0; c < C; c++) {
    float mu = mean[c], is = invstd[c];
    double sdy = 0, sdyx = 0;
    for (int b = 0; b < N; b++) {
      const float *x = ctx->x[0] + ((size_t)b * C + c) * HW;
      const float *dy = ctx->dy + ((size_t)b * C + c) * HW;
      const float *yv = ctx->y + ((size_t)b * C + c) * HW;
      /* Fixed lanes, summed in a fixed order: the same bits whatever the
       * compiler vectorises (fused and unfused plans must agree). */
      float la[LANES] = {0}, lb[LANES] = {0};
      int i = 0;
      for (; i + LANES <= HW; i += LANES)
        for (int l = 0; l < LANES; l++) {
          float d = DY(i + l);
          la[l] += d;
          lb[l] += d * (x[i + l] - mu);
        }
      for (; i < HW; i++) {
        float d = DY(i);
        la[0] += d;
        lb[0] += d * (x[i] - mu);
      }
      for (int l = 0; l < LANES; l++) {
        sdy += la[l];
        sdyx += lb[l];
      }
    }
    sdyx *= is; /* sum dy * xhat */
    if (dgamma) dgamma[c] += (float)sdyx;
    if (dbeta) dbeta[c] += (float)sdy;
    if (!ctx->dx[0]) continue;
    float k = gamma[c] * is;
    if (train) {
      /* dx = gamma*is/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)) */
      float cnt = (float)N * HW, m1 = (float)(sdy / cnt), m2 = (float)(sdyx / cnt);
      for (int b = 0; b < N; b++) {
        const float *x = ctx->x[0] + ((size_t)b * C + c) * HW;
        const float *dy = ctx->dy + ((size_t)b * C + c) * HW;
        const float *yv = ctx->y + ((size_t)b * C + c) * HW;
        float *dx = ctx->dx[0] + ((size_t)b * C + c) * HW;
        if (ctx->dx_set[0])
          for (int i = 0; i < HW; i++) dx[i] = k * (DY(i) - m1 - (x[i] - mu) * is * m2);
        else
          for (int i = 0; i < HW; i++) dx[i] += k * (DY(i) - m1 - (x[i] - mu) * is * m2);
      }
    } else {
      for (int b = 0; b < N; b++) {
        const float *dy = ctx->dy + ((size_t)b * C + c) * HW;
        const float *yv = ctx->y + ((size_t)b * C + c) * HW;
        float *dx = ctx->dx[0] + ((size_t)b * C + c) * HW;
        if (ctx->dx_set[0])
          for (int i = 0; i < HW; i++) dx[i] = k * DY(i);
        else
          for (int i = 0; i < HW; i++) dx[i] += k * DY(i);
      }
    }
  }
#undef DY
}

const vmc_op vmc_op_batchnorm = {
    .name = "batchnorm", .min_in = 1, .max_in = 1, .n_param_min = 4, .n_param_max = 4,
    .infer = bn_infer, .state_bytes = bn_state, .forward = bn_forward, .backward = bn_backward,
    .can_fuse_act = 1, .sets_dx = 1};
