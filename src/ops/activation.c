/* relu and relu6 (elementwise, any shape). */
#include "graph/op.h"

static vmc_status act_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                            vmc_shape *out) {
  *out = in[0];
  return VMC_OK;
}

static size_t count(const vmc_opctx *c) { return vmc_shape_count(&c->ys) / (size_t)c->ys.d[0] * (size_t)c->batch; }

static void clamp_forward(vmc_opctx *c, float hi) {
  const size_t n = count(c);
  const float *x = c->x[0];
  float *y = c->y;
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && n > 65536)
  for (size_t i = 0; i < n; i++) {
    float v = x[i] > 0 ? x[i] : 0.0f;
    y[i] = v < hi ? v : hi;
  }
}

/* Gradient passes where 0 < y < hi (PyTorch's convention at the kinks). */
static void clamp_backward(vmc_opctx *c, float hi) {
  const size_t n = count(c);
  const float *y = c->y, *dy = c->dy;
  float *dx = c->dx[0];
  if (!dx) return;
  if (c->dx_set[0]) {
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && n > 65536)
    for (size_t i = 0; i < n; i++) dx[i] = vmc_act_grad(y[i], dy[i], 0.0f, hi);
  } else {
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && n > 65536)
    for (size_t i = 0; i < n; i++) dx[i] += vmc_act_grad(y[i], dy[i], 0.0f, hi);
  }
}

static void relu_forward(vmc_opctx *c) { clamp_forward(c, __builtin_inff()); }
static void relu_backward(vmc_opctx *c) { clamp_backward(c, __builtin_inff()); }
static void relu6_forward(vmc_opctx *c) { clamp_forward(c, 6.0f); }
static void relu6_backward(vmc_opctx *c) { clamp_backward(c, 6.0f); }

const vmc_op vmc_op_relu = {.name = "relu", .min_in = 1, .max_in = 1, .infer = act_infer,
                            .forward = relu_forward, .backward = relu_backward, .sets_dx = 1};
const vmc_op vmc_op_relu6 = {.name = "relu6", .min_in = 1, .max_in = 1, .infer = act_infer,
                             .forward = relu6_forward, .backward = relu6_backward, .sets_dx = 1};
