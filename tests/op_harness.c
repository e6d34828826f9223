/* One-op harness: see op_harness.h. */
#include "op_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Exact-size, 64-byte aligned, zeroed: ASan flags even a one-float overrun. */
static void *exact_alloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 1)) return NULL;
  memset(p, 0, bytes ? bytes : 1);
  return p;
}

void vmc_oph_free(vmc_oph *h) {
  if (!h) return;
  for (int k = 0; k < VMC_MAX_INPUTS; k++) {
    free(h->x[k]);
    free(h->dx[k]);
  }
  free(h->y);
  free(h->dy);
  free(h->state);
  free(h->scratch);
  vmc_graph_free(h->g);
  free(h);
}

vmc_status vmc_oph_create(const vmc_oph_spec *s, vmc_oph **out) {
  *out = NULL;
  const vmc_op *op = vmc_op_find(s->op);
  if (!op) return vmc_error(VMC_ERR_NOT_FOUND, "op '%s'", s->op);
  if (s->n_in < 1 || s->n_in > VMC_MAX_INPUTS || s->n_param < 0 || s->n_param > VMC_MAX_PARAMS)
    return vmc_error(VMC_ERR_INVALID_ARG, "op harness: %d inputs, %d params", s->n_in, s->n_param);
  vmc_oph *h = calloc(1, sizeof *h);
  if (!h) return vmc_error(VMC_ERR_NOMEM, "op harness");
  h->op = op;
  h->mode = s->mode;
  h->n_in = s->n_in;
  h->n_param = s->n_param;
  h->nthreads = s->nthreads > 0 ? s->nthreads : vmc_get_threads();
  h->batch = s->in[0].d[0];
  h->rng_seed = 0x5eedull;
  vmc_status st = vmc_graph_create(1, 1, 1, &h->g);
  int in_ids[VMC_MAX_INPUTS];
  in_ids[0] = st ? -1 : h->g->input;
  for (int k = 1; k < s->n_in && !st; k++) {
    char name[32];
    snprintf(name, sizeof name, "input%d", k);
    st = vmc_graph_add_value(h->g, name, &in_ids[k]);
  }
  for (int k = 0; k < s->n_param && !st; k++) {
    char name[32];
    snprintf(name, sizeof name, "node.p%d", k);
    st = vmc_graph_add_param(h->g, name, s->pshape[k], !s->pbuffer[k], &h->param[k]);
  }
  if (!st)
    st = vmc_graph_add_node(h->g, s->op, "node", in_ids, s->n_in, s->attr, s->n_attr, h->param,
                            s->n_param, NULL);
  if (!st) st = vmc_graph_alloc_grads(h->g);
  if (st) {
    vmc_oph_free(h);
    return st;
  }
  h->node = h->g->n_nodes - 1;
  const vmc_node *n = &h->g->nodes[h->node];
  for (int k = 0; k < s->n_in; k++) h->xs[k] = s->in[k];
  st = op->infer(h->g, n, h->xs, &h->ys);
  if (st) {
    vmc_oph_free(h);
    return st;
  }
  h->yn = vmc_shape_count(&h->ys);
  bool ok = (h->y = exact_alloc(h->yn * sizeof(float))) && (h->dy = exact_alloc(h->yn * sizeof(float)));
  for (int k = 0; k < s->n_in && ok; k++) {
    h->xn[k] = vmc_shape_count(&h->xs[k]);
    ok = (h->x[k] = exact_alloc(h->xn[k] * sizeof(float))) != NULL;
    if (ok && !(s->no_dx >> k & 1)) ok = (h->dx[k] = exact_alloc(h->xn[k] * sizeof(float))) != NULL;
  }
  h->state_bytes = op->state_bytes ? op->state_bytes(n, h->xs, &h->ys, h->mode) : 0;
  h->scratch_bytes =
      op->scratch_bytes ? op->scratch_bytes(n, h->xs, &h->ys, h->mode, h->nthreads) : 0;
  if (ok && h->state_bytes) ok = (h->state = exact_alloc(h->state_bytes)) != NULL;
  if (ok && h->scratch_bytes)
    ok = (h->scratch = exact_alloc(h->scratch_bytes * (size_t)h->nthreads)) != NULL;
  if (!ok) {
    vmc_oph_free(h);
    return vmc_error(VMC_ERR_NOMEM, "op harness buffers");
  }
  *out = h;
  return VMC_OK;
}

float *vmc_oph_param(vmc_oph *h, int k) { return h->g->params[h->param[k]].data; }
float *vmc_oph_grad(vmc_oph *h, int k) { return h->g->params[h->param[k]].grad; }
size_t vmc_oph_param_count(const vmc_oph *h, int k) {
  return vmc_shape_count(&h->g->params[h->param[k]].shape);
}

static void fill_ctx(vmc_oph *h, vmc_opctx *c, int backward) {
  memset(c, 0, sizeof *c);
  c->g = h->g;
  c->node = &h->g->nodes[h->node];
  c->batch = h->batch;
  c->mode = h->mode;
  for (int k = 0; k < h->n_in; k++) {
    c->x[k] = h->x[k];
    c->xs[k] = h->xs[k];
    if (backward) c->dx[k] = h->dx[k];
  }
  c->y = h->y;
  c->ys = h->ys;
  if (backward) c->dy = h->dy;
  c->state = h->state;
  c->scratch = h->scratch;
  c->scratch_bytes = h->scratch_bytes;
  c->nthreads = h->nthreads;
  c->rng = &h->rng;
}

void vmc_oph_forward(vmc_oph *h, int batch) {
  h->batch = batch > 0 && batch <= h->xs[0].d[0] ? batch : h->xs[0].d[0];
  vmc_rng_seed(&h->rng, h->rng_seed);
  vmc_opctx c;
  fill_ctx(h, &c, 0);
  /* As an inference plan does, from the weights as they are now. */
  if (h->mode != VMC_MODE_TRAIN && h->op->prepare) h->op->prepare(&c);
  h->op->forward(&c);
}

void vmc_oph_backward_accumulate(vmc_oph *h) {
  vmc_opctx c;
  fill_ctx(h, &c, 1);
  h->op->backward(&c);
}

void vmc_oph_backward(vmc_oph *h) {
  for (int k = 0; k < h->n_in; k++)
    if (h->dx[k]) memset(h->dx[k], 0, h->xn[k] * sizeof(float));
  vmc_graph_zero_grads(h->g);
  vmc_oph_backward_accumulate(h);
}

void vmc_oph_fill(vmc_rng *rng, float *p, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * vmc_rng_uniform(rng);
}
