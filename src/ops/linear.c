/* linear: y = x W^T + b.  x is (N,F) or (N,C,H,W) read as (N, C*H*W).
 * attrs out_f; params [weight (out_f, F)] or [weight, bias (out_f)]. */
#include "graph/op.h"
#include "kernels/gemm.h"

static int in_features(const vmc_shape *s) {
  size_t f = vmc_shape_count(s) / (size_t)s->d[0];
  return f > (1u << 30) ? -1 : (int)f;
}

static vmc_status linear_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                               vmc_shape *out) {
  int of = vmc_node_attr_i(n, "out_f", 0), F = in_features(&in[0]);
  if (of < 1 || F < 1) return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': bad out_f %d", n->name, of);
  vmc_shape ws = vmc_shape2(of, F);
  VMC_TRY(vmc_op_check_param(g, n, 0, &ws));
  if (n->n_param > 1) {
    vmc_shape bs = {1, {of}};
    VMC_TRY(vmc_op_check_param(g, n, 1, &bs));
  }
  *out = vmc_shape2(in[0].d[0], of);
  return VMC_OK;
}

/* A few images (a per-image inference plan runs one) and a long K: y = b,
 * then += the dot products of each image with W's rows, both read in place
 * (vmc_sgemm_dot), where the GEMM would pack all of W for every call.
 * Chunks of DOT_ROWS outputs, over the threads. */
#define DOT_MAX_N 4
#define DOT_ROWS 32
static void linear_dot(vmc_opctx *c, int N, int F, int O, const float *W, const float *b) {
  const int chunks = (O + DOT_ROWS - 1) / DOT_ROWS;
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && chunks > 1)
  for (int ch = 0; ch < chunks; ch++) {
    const int o0 = ch * DOT_ROWS, no = O - o0 < DOT_ROWS ? O - o0 : DOT_ROWS;
    const float *rows[DOT_ROWS];
    for (int o = 0; o < no; o++) rows[o] = W + (size_t)(o0 + o) * F;
    for (int i = 0; i < N; i++)
      for (int o = 0; o < no; o++) c->y[(size_t)i * O + o0 + o] = b ? b[o0 + o] : 0.0f;
    vmc_sgemm_dot(N, no, F, c->x[0], F, rows, c->y + o0, O);
  }
}

static void linear_forward(vmc_opctx *c) {
  const vmc_node *n = c->node;
  const int N = c->batch, F = in_features(&c->xs[0]), O = c->ys.d[1];
  const float *W = c->g->params[n->param[0]].data;
  if (N <= DOT_MAX_N && vmc_sgemm_dot_in_place(F)) {
    linear_dot(c, N, F, O, W, n->n_param > 1 ? c->g->params[n->param[1]].data : NULL);
    return;
  }
  vmc_sgemm_mt(0, 1, N, O, F, 1.0f, c->x[0], F, W, F, 0.0f, c->y, O);
  if (n->n_param > 1) {
    const float *b = c->g->params[n->param[1]].data;
    for (int i = 0; i < N; i++)
      for (int o = 0; o < O; o++) c->y[(size_t)i * O + o] += b[o];
  }
}

static void linear_backward(vmc_opctx *c) {
  const vmc_node *n = c->node;
  const int N = c->batch, F = in_features(&c->xs[0]), O = c->ys.d[1];
  vmc_param *w = &c->g->params[n->param[0]];
  /* A frozen (non-trainable) parameter has no gradient buffer. */
  if (w->grad) vmc_sgemm_mt(1, 0, O, F, N, 1.0f, c->dy, O, c->x[0], F, 1.0f, w->grad, F);
  float *db = n->n_param > 1 ? c->g->params[n->param[1]].grad : NULL;
  if (db) {
    for (int i = 0; i < N; i++)
      for (int o = 0; o < O; o++) db[o] += c->dy[(size_t)i * O + o];
  }
  if (c->dx[0])
    vmc_sgemm_mt(0, 0, N, F, O, 1.0f, c->dy, O, w->data, F, c->dx_set[0] ? 0.0f : 1.0f, c->dx[0], F);
}

static uint64_t linear_macs(const vmc_node *n, const vmc_shape *in, const vmc_shape *out) {
  return (uint64_t)in_features(&in[0]) * (uint64_t)out->d[1];
}

static const char *linear_kernel(const vmc_node *n, const vmc_shape *in, vmc_mode mode) {
  return in[0].d[0] <= DOT_MAX_N && vmc_sgemm_dot_in_place(in_features(&in[0])) ? "dot" : "gemm";
}

const vmc_op vmc_op_linear = {.name = "linear", .min_in = 1, .max_in = 1, .n_param_min = 1,
                              .n_param_max = 2, .infer = linear_infer, .forward = linear_forward,
                              .backward = linear_backward, .macs = linear_macs, .sets_dx = 1,
                              .kernel = linear_kernel};
