/* batchnorm over channel dim 1 of (N,C,H,W) or (N,C).
 * attrs eps (1e-5), momentum (0.1; PyTorch's convention: running =
 * (1-m)*running + m*batch, the running variance unbiased).
 * params [gamma, beta, running_mean, running_var] each (C).
 * Training uses batch statistics; inference the running ones. */
#include "graph/op.h"
#include "kernels/bn.h"

#include <math.h>

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

/* state per channel: the mean and 1/sqrt(var+eps) used, and the forward's
 * a, b (v = a*x + b), from which backward recomputes a fused activation's
 * mask without reading y. */
static size_t bn_state(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                       vmc_mode mode) {
  return 4 * (size_t)in[0].d[1] * sizeof(float);
}

static void act_of(vmc_act act, vmc_bn_chan *ch) {
  ch->clamp = act != VMC_ACT_NONE;
  ch->lo = vmc_act_lo(act);
  ch->hi = vmc_act_hi(act);
}

/* Channels run in parallel, each in one kernel call (kernels/bn.h: a fixed
 * reduction order), so the bits do not depend on the thread count. */
static void bn_forward(vmc_opctx *ctx) {
  const vmc_node *n = ctx->node;
  int C, HW;
  dims(&ctx->xs[0], &C, &HW);
  const int N = ctx->batch;
  float eps = vmc_node_attr_f(n, "eps", 1e-5f), mom = vmc_node_attr_f(n, "momentum", 0.1f);
  const float *gamma = ctx->g->params[n->param[0]].data, *beta = ctx->g->params[n->param[1]].data;
  float *rm = ctx->g->params[n->param[2]].data, *rv = ctx->g->params[n->param[3]].data;
  float *mean = ctx->state, *invstd = mean + C, *sa = invstd + C, *sb = sa + C;
  const int train = ctx->mode == VMC_MODE_TRAIN;
  const vmc_bn_kernels *k = vmc_bn_kernels_best();
  const vmc_bn_planes pl = {N, HW, (size_t)C * HW};
#pragma omp parallel for schedule(static) num_threads(ctx->nthreads) if (ctx->nthreads > 1)
  for (int c = 0; c < C; c++) {
    const float *xc = ctx->x[0] + (size_t)c * HW;
    float mu, is;
    if (train) {
      /* sums shifted by the first plane's mean: no cancellation */
      double s0 = 0;
      for (int i = 0; i < HW; i++) s0 += xc[i];
      const float shift = (float)(s0 / HW);
      double s1, s2;
      k->stats(xc, &pl, shift, &s1, &s2);
      double cnt = (double)N * HW, d = s1 / cnt, m = shift + d, var = s2 / cnt - d * d;
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
    vmc_bn_chan ch = {0};
    act_of(ctx->act, &ch);
    ch.mu = mu;
    ch.a = gamma[c] * is;
    ch.b = beta[c] - mu * ch.a;
    mean[c] = mu;
    invstd[c] = is;
    sa[c] = ch.a;
    sb[c] = ch.b;
    k->apply(xc, &pl, &ch, ctx->y + (size_t)c * HW);
  }
}

static void bn_backward(vmc_opctx *ctx) {
  const vmc_node *n = ctx->node;
  int C, HW;
  dims(&ctx->xs[0], &C, &HW);
  const int N = ctx->batch;
  const float *gamma = ctx->g->params[n->param[0]].data;
  float *dgamma = ctx->g->params[n->param[0]].grad, *dbeta = ctx->g->params[n->param[1]].grad;
  const float *mean = ctx->state, *invstd = mean + C, *sa = invstd + C, *sb = sa + C;
  const int train = ctx->mode == VMC_MODE_TRAIN;
  const vmc_bn_kernels *k = vmc_bn_kernels_best();
  const vmc_bn_planes pl = {N, HW, (size_t)C * HW};
#pragma omp parallel for schedule(static) num_threads(ctx->nthreads) if (ctx->nthreads > 1)
  for (int c = 0; c < C; c++) {
    vmc_bn_chan ch = {0};
    act_of(ctx->act, &ch);
    ch.mu = mean[c];
    ch.a = sa[c];
    ch.b = sb[c];
    const float is = invstd[c];
    /* d = dy masked by a fused activation: sum d, sum d*(x - mu) */
    const size_t off = (size_t)c * HW;
    double sdy, sdyx;
    k->bwd_sums(ctx->x[0] + off, ctx->dy + off, &pl, &ch, &sdy, &sdyx);
    sdyx *= is; /* sum dy * xhat */
    if (dgamma) dgamma[c] += (float)sdyx;
    if (dbeta) dbeta[c] += (float)sdy;
    if (!ctx->dx[0]) continue;
    /* train: dx = gamma*is/M * (M*dy - sum(dy) - xhat*sum(dy*xhat));
     * inference statistics are constants: dx = gamma*is*dy. */
    ch.k = gamma[c] * is;
    ch.use_x = train;
    if (train) {
      double cnt = (double)N * HW;
      ch.c1 = (float)((double)ch.k * (sdy / cnt));
      ch.c2 = (float)((double)ch.k * is * (sdyx / cnt));
    }
    k->bwd_dx(ctx->x[0] + off, ctx->dy + off, &pl, &ch, ctx->dx[0] + off, !ctx->dx_set[0]);
  }
}

const vmc_op vmc_op_batchnorm = {
    .name = "batchnorm", .min_in = 1, .max_in = 1, .n_param_min = 4, .n_param_max = 4,
    .infer = bn_infer, .state_bytes = bn_state, .forward = bn_forward, .backward = bn_backward,
    .can_fuse_act = 1, .sets_dx = 1};
