/* dropout: attr p.  Training zeroes each element with probability p and
 * scales the rest by 1/(1-p) (mask drawn serially: deterministic);
 * inference is the identity. */
#include "graph/op.h"

#include <string.h>

static vmc_status dropout_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                                vmc_shape *out) {
  float p = vmc_node_attr_f(n, "p", 0.5f);
  if (!(p >= 0 && p < 1))
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': dropout p=%g must be in [0,1)", n->name, p);
  *out = in[0];
  return VMC_OK;
}

static size_t dropout_state(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                            vmc_mode mode) {
  return mode == VMC_MODE_TRAIN ? vmc_shape_count(out) : 0;
}

static void dropout_forward(vmc_opctx *c) {
  const size_t n = vmc_shape_count(&c->ys) / (size_t)c->ys.d[0] * (size_t)c->batch;
  if (c->mode != VMC_MODE_TRAIN) {
    memcpy(c->y, c->x[0], n * sizeof(float));
    return;
  }
  const float p = vmc_node_attr_f(c->node, "p", 0.5f), scale = 1.0f / (1.0f - p);
  uint8_t *keep = c->state;
  for (size_t i = 0; i < n; i++) {
    keep[i] = vmc_rng_uniform(c->rng) >= p;
    c->y[i] = keep[i] ? c->x[0][i] * scale : 0.0f;
  }
}

static void dropout_backward(vmc_opctx *c) {
  if (!c->dx[0]) return;
  const size_t n = vmc_shape_count(&c->ys) / (size_t)c->ys.d[0] * (size_t)c->batch;
  if (c->mode != VMC_MODE_TRAIN) {
    for (size_t i = 0; i < n; i++) c->dx[0][i] += c->dy[i];
    return;
  }
  const float scale = 1.0f / (1.0f - vmc_node_attr_f(c->node, "p", 0.5f));
  const uint8_t *keep = c->state;
  for (size_t i = 0; i < n; i++) c->dx[0][i] += keep[i] ? c->dy[i] * scale : 0.0f;
}

const vmc_op vmc_op_dropout = {.name = "dropout", .min_in = 1, .max_in = 1,
                               .infer = dropout_infer, .state_bytes = dropout_state,
                               .forward = dropout_forward, .backward = dropout_backward};
