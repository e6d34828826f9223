/* batchnorm over channel dim 1 of (N,C,H,W) or (N,C).
 * attrs eps (1e-5), momentum (0.1; PyTorch's convention: running =
 * (1-m)*running + m*batch, the running variance unbiased).
 * params [gamma, beta, running_mean, running_var] each (C).
 * Training uses batch statistics; inference the running ones.  Attribute
 * frozen (0): 1 makes training use the running statistics too and leave
 * them unchanged (PyTorch's BatchNorm in eval mode inside a training step,
 * as quantization-aware training freezes it); gamma and beta still learn. */
#include "graph/op.h"
#include "kernels/bn.h"

#include <math.h>
#include <string.h>

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
  const int32_t frozen = vmc_node_attr_i(n, "frozen", 0);
  if (frozen != 0 && frozen != 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': frozen is %d, expected 0 or 1", n->name,
                     (int)frozen);
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

/* Per-thread scratch: for each channel the thread owns, a reduction
 * accumulator, the kernel constants and a shift. */
static size_t per_chan(void) {
  return sizeof(vmc_bn_acc) + sizeof(vmc_bn_chan) + sizeof(float);
}

static size_t bn_scratch(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                         vmc_mode mode, int nthreads) {
  const int nt = nthreads > 1 ? nthreads : 1;
  return vmc_align_up((size_t)vmc_ceil_div(in[0].d[1], nt) * per_chan(), 64);
}

typedef struct {
  int c0, n; /* channels [c0, c0 + n) */
  vmc_bn_acc *acc;
  vmc_bn_chan *ch;
  float *shift;
} chan_block;

/* Thread t of nt owns a fixed block of channels; each channel's planes are
 * reduced in image order (kernels/bn.h), so the bits depend neither on the
 * thread count nor on the split.  The kernels take the block's planes of one
 * image at a time: one contiguous stretch of memory per call. */
static chan_block block_of(const vmc_opctx *ctx, int C, int t, int nt) {
  chan_block b;
  b.c0 = (int)((long)C * t / nt);
  b.n = (int)((long)C * (t + 1) / nt) - b.c0;
  uint8_t *base = ctx->scratch + (size_t)t * ctx->scratch_bytes;
  b.acc = (vmc_bn_acc *)base;
  b.ch = (vmc_bn_chan *)(base + (size_t)b.n * sizeof(vmc_bn_acc));
  b.shift = (float *)(base + (size_t)b.n * (sizeof(vmc_bn_acc) + sizeof(vmc_bn_chan)));
  return b;
}

static int threads_for(const vmc_opctx *ctx, int C) {
  return ctx->nthreads > 1 ? (ctx->nthreads < C ? ctx->nthreads : C) : 1;
}

/* Batch statistics (and running statistics updated), or the running ones. */
static int batch_stats(const vmc_opctx *ctx) {
  return ctx->mode == VMC_MODE_TRAIN && !vmc_node_attr_i(ctx->node, "frozen", 0);
}

static void act_of(vmc_act act, vmc_bn_chan *ch) {
  ch->clamp = act != VMC_ACT_NONE;
  ch->lo = vmc_act_lo(act);
  ch->hi = vmc_act_hi(act);
}

static void bn_forward_block(vmc_opctx *ctx, const chan_block *cb, int C, int HW) {
  const vmc_node *n = ctx->node;
  const int N = ctx->batch;
  const float eps = vmc_node_attr_f(n, "eps", 1e-5f), mom = vmc_node_attr_f(n, "momentum", 0.1f);
  const float *gamma = ctx->g->params[n->param[0]].data, *beta = ctx->g->params[n->param[1]].data;
  float *rm = ctx->g->params[n->param[2]].data, *rv = ctx->g->params[n->param[3]].data;
  float *mean = ctx->state, *invstd = mean + C, *sa = invstd + C, *sb = sa + C;
  const vmc_bn_kernels *k = vmc_bn_kernels_best();
  const vmc_bn_planes pl = {cb->n, HW, (size_t)HW};
  const size_t at = (size_t)cb->c0 * HW, img = (size_t)C * HW;
  if (batch_stats(ctx)) {
    /* sums shifted by each channel's first plane's mean: no cancellation */
    for (int j = 0; j < cb->n; j++) {
      const float *x0 = ctx->x[0] + at + (size_t)j * HW;
      double s0 = 0;
      for (int i = 0; i < HW; i++) s0 += x0[i];
      cb->shift[j] = (float)(s0 / HW);
    }
    memset(cb->acc, 0, (size_t)cb->n * sizeof *cb->acc);
    for (int b = 0; b < N; b++) k->stats(ctx->x[0] + b * img + at, &pl, cb->shift, cb->acc);
    for (int j = 0; j < cb->n; j++) {
      const int c = cb->c0 + j;
      const double cnt = (double)N * HW, d = vmc_bn_total(&cb->acc[j], 0) / cnt;
      const double m = cb->shift[j] + d;
      double var = vmc_bn_total(&cb->acc[j], 1) / cnt - d * d;
      if (var < 0) var = 0;
      mean[c] = (float)m;
      invstd[c] = (float)(1.0 / sqrt(var + eps));
      rm[c] = (1 - mom) * rm[c] + mom * (float)m;
      const double unb = cnt > 1 ? var * cnt / (cnt - 1) : var;
      rv[c] = (1 - mom) * rv[c] + mom * (float)unb;
    }
  } else {
    for (int c = cb->c0; c < cb->c0 + cb->n; c++) {
      mean[c] = rm[c];
      invstd[c] = 1.0f / sqrtf(rv[c] + eps);
    }
  }
  for (int j = 0; j < cb->n; j++) {
    const int c = cb->c0 + j;
    vmc_bn_chan *ch = &cb->ch[j];
    memset(ch, 0, sizeof *ch);
    act_of(ctx->act, ch);
    ch->mu = mean[c];
    ch->a = gamma[c] * invstd[c];
    ch->b = beta[c] - mean[c] * ch->a;
    sa[c] = ch->a;
    sb[c] = ch->b;
  }
}

/* The element-wise pass (forward: y; backward: dx) over images [b0, b1)
 * with every block's channel constants (each block's in its thread's
 * scratch slice): split by images, two threads stream disjoint memory
 * (split by channels, they scale poorly), and each element is computed as
 * in any split. */
static void elementwise_images(vmc_opctx *ctx, int C, int HW, int nt, int b0, int b1,
                               int backward) {
  const vmc_bn_kernels *k = vmc_bn_kernels_best();
  const size_t img = (size_t)C * HW;
  for (int b = b0; b < b1; b++)
    for (int t = 0; t < nt; t++) {
      const chan_block cb = block_of(ctx, C, t, nt);
      const vmc_bn_planes pl = {cb.n, HW, (size_t)HW};
      const size_t at = b * img + (size_t)cb.c0 * HW;
      if (backward)
        k->bwd_dx(ctx->x[0] + at, ctx->dy + at, &pl, cb.ch, ctx->dx[0] + at, !ctx->dx_set[0]);
      else
        k->apply(ctx->x[0] + at, &pl, cb.ch, ctx->y + at);
    }
}

static inline int image_lo(int batch, int t, int nt) { return (int)((long)batch * t / nt); }

static void bn_forward(vmc_opctx *ctx) {
  int C, HW;
  dims(&ctx->xs[0], &C, &HW);
  const int nt = threads_for(ctx, C);
  if (nt == 1) {
    chan_block cb = block_of(ctx, C, 0, 1);
    bn_forward_block(ctx, &cb, C, HW);
    elementwise_images(ctx, C, HW, 1, 0, ctx->batch, 0);
    return;
  }
  /* statistics and constants by channel blocks, then y by images */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; t++) {
    chan_block cb = block_of(ctx, C, t, nt);
    bn_forward_block(ctx, &cb, C, HW);
  }
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; t++)
    elementwise_images(ctx, C, HW, nt, image_lo(ctx->batch, t, nt),
                       image_lo(ctx->batch, t + 1, nt), 0);
}

static void bn_backward_block(vmc_opctx *ctx, const chan_block *cb, int C, int HW) {
  const vmc_node *n = ctx->node;
  const int N = ctx->batch;
  const float *gamma = ctx->g->params[n->param[0]].data;
  float *dgamma = ctx->g->params[n->param[0]].grad, *dbeta = ctx->g->params[n->param[1]].grad;
  const float *mean = ctx->state, *invstd = mean + C, *sa = invstd + C, *sb = sa + C;
  const int train = batch_stats(ctx);
  const vmc_bn_kernels *k = vmc_bn_kernels_best();
  const vmc_bn_planes pl = {cb->n, HW, (size_t)HW};
  const size_t at = (size_t)cb->c0 * HW, img = (size_t)C * HW;
  for (int j = 0; j < cb->n; j++) {
    const int c = cb->c0 + j;
    vmc_bn_chan *ch = &cb->ch[j];
    memset(ch, 0, sizeof *ch);
    act_of(ctx->act, ch);
    ch->mu = mean[c];
    ch->a = sa[c];
    ch->b = sb[c];
  }
  /* d = dy masked by a fused activation: sum d, sum d*(x - mu) */
  memset(cb->acc, 0, (size_t)cb->n * sizeof *cb->acc);
  for (int b = 0; b < N; b++)
    k->bwd_sums(ctx->x[0] + b * img + at, ctx->dy + b * img + at, &pl, cb->ch, cb->acc);
  for (int j = 0; j < cb->n; j++) {
    const int c = cb->c0 + j;
    vmc_bn_chan *ch = &cb->ch[j];
    const float is = invstd[c];
    const double sdy = vmc_bn_total(&cb->acc[j], 0);
    const double sdyx = vmc_bn_total(&cb->acc[j], 1) * is; /* sum dy * xhat */
    if (dgamma) dgamma[c] += (float)sdyx;
    if (dbeta) dbeta[c] += (float)sdy;
    /* train: dx = gamma*is/M * (M*dy - sum(dy) - xhat*sum(dy*xhat));
     * inference statistics are constants: dx = gamma*is*dy. */
    ch->k = gamma[c] * is;
    ch->use_x = train;
    if (train) {
      const double cnt = (double)N * HW;
      ch->c1 = (float)((double)ch->k * (sdy / cnt));
      ch->c2 = (float)((double)ch->k * is * (sdyx / cnt));
    }
  }
}

static void bn_backward(vmc_opctx *ctx) {
  int C, HW;
  dims(&ctx->xs[0], &C, &HW);
  const int nt = threads_for(ctx, C);
  if (nt == 1) {
    chan_block cb = block_of(ctx, C, 0, 1);
    bn_backward_block(ctx, &cb, C, HW);
    if (ctx->dx[0]) elementwise_images(ctx, C, HW, 1, 0, ctx->batch, 1);
    return;
  }
  /* sums and constants by channel blocks, then dx by images */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; t++) {
    chan_block cb = block_of(ctx, C, t, nt);
    bn_backward_block(ctx, &cb, C, HW);
  }
  if (!ctx->dx[0]) return;
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; t++)
    elementwise_images(ctx, C, HW, nt, image_lo(ctx->batch, t, nt),
                       image_lo(ctx->batch, t + 1, nt), 1);
}

const vmc_op vmc_op_batchnorm = {
    .name = "batchnorm", .min_in = 1, .max_in = 1, .n_param_min = 4, .n_param_max = 4,
    .infer = bn_infer, .state_bytes = bn_state, .scratch_bytes = bn_scratch,
    .forward = bn_forward, .backward = bn_backward,
    .can_fuse_act = 1, .sets_dx = 1};
