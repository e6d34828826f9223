/* Plans: shapes inferred once for a batch size, every activation, gradient,
 * op state and per-thread scratch sliced from one arena. */
#include "graph/plan.h"

#include <stdlib.h>
#include <string.h>

static size_t fbytes(const vmc_shape *s) { return vmc_shape_count(s) * sizeof(float); }

static void fill_ctx(vmc_plan *p, int node, int batch, vmc_opctx *c) {
  const vmc_graph *g = p->g;
  const vmc_node *n = &g->nodes[node];
  memset(c, 0, sizeof *c);
  c->g = g;
  c->node = n;
  c->batch = batch;
  c->mode = p->mode;
  for (int k = 0; k < n->n_in; k++) {
    c->x[k] = p->act[n->in[k]];
    c->xs[k] = p->shape[n->in[k]];
    if (p->grad) c->dx[k] = p->grad[n->in[k]];
  }
  c->y = p->act[n->out];
  c->ys = p->shape[n->out];
  if (p->grad) c->dy = p->grad[n->out];
  c->state = p->state[node];
  c->scratch = p->scratch;
  c->scratch_bytes = p->scratch_bytes;
  c->nthreads = p->nthreads;
  c->rng = &p->rng;
  c->act = p->fused[node];
  for (int k = 0; k < n->n_in; k++) c->dx_set[k] = p->dx_set ? (p->dx_set[node] >> k) & 1 : 0;
}

/* Fold each relu/relu6 into its producer when the producer supports it and
 * is its only consumer: the relu's output shares the producer's buffers. */
static void plan_fusions(vmc_plan *p) {
  const vmc_graph *g = p->g;
  for (int v = 0; v < g->n_values; v++) p->alias[v] = -1;
  /* VMC_NO_FUSION=1: plain execution (no folding, every gradient zeroed and
   * accumulated), for tests and comparisons. */
  const char *off = getenv("VMC_NO_FUSION");
  int fuse = !(off && *off && strcmp(off, "0"));
  int *uses = vmc_malloc_plain((size_t)g->n_values * sizeof *uses);
  int *producer = vmc_malloc_plain((size_t)g->n_values * sizeof *producer);
  if (!uses || !producer) { /* no fusion, zero everything: still correct */
    for (int v = 0; p->grad && v < g->n_values; v++) p->zero_grad[v] = v != g->input && v != g->output;
    goto done;
  }
  for (int v = 0; v < g->n_values; v++) producer[v] = -1;
  for (int i = 0; i < g->n_nodes; i++) {
    for (int k = 0; k < g->nodes[i].n_in; k++) uses[g->nodes[i].in[k]]++;
    producer[g->nodes[i].out] = i;
  }
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    vmc_act a = !strcmp(n->op->name, "relu") ? VMC_ACT_RELU
                : !strcmp(n->op->name, "relu6") ? VMC_ACT_RELU6 : VMC_ACT_NONE;
    if (a == VMC_ACT_NONE || !fuse) continue;
    int v = n->in[0], pr = producer[v];
    if (pr < 0 || !g->nodes[pr].op->can_fuse_act || p->fused[pr] != VMC_ACT_NONE || uses[v] != 1 ||
        v == g->output || n->out == g->output)
      continue;
    p->fused[pr] = a;
    p->skip[i] = 1;
    p->alias[n->out] = v;
  }
  /* Gradients: a buffer whose only reader-back is one node with sets_dx is
   * written by it; every other buffer is zeroed before backward and
   * accumulated into.  A folded relu's consumers write its producer's buffer. */
  if (p->grad) {
    int *consumer = producer; /* reuse: last consumer of each value */
    for (int v = 0; v < g->n_values; v++) consumer[v] = -1;
    for (int i = 0; i < g->n_nodes; i++)
      for (int k = 0; k < g->nodes[i].n_in; k++) consumer[g->nodes[i].in[k]] = i;
    for (int v = 0; v < g->n_values; v++) {
      p->zero_grad[v] = v != g->input && v != g->output && p->alias[v] < 0;
      if (!p->zero_grad[v] || !fuse) continue;
      int e = v;
      if (uses[e] == 1 && p->skip[consumer[e]]) e = g->nodes[consumer[e]].out;
      if (e == g->output || uses[e] != 1) continue;
      int ci = consumer[e];
      const vmc_node *cn = &g->nodes[ci];
      if (!cn->op->sets_dx || p->skip[ci]) continue;
      for (int k = 0; k < cn->n_in; k++)
        if (cn->in[k] == e) p->dx_set[ci] |= (uint8_t)(1u << k);
      p->zero_grad[v] = 0;
    }
  }
done:
  vmc_free(uses);
  vmc_free(producer);
}

vmc_status vmc_plan_create(vmc_graph *g, int batch, vmc_mode mode, vmc_plan **out) {
  *out = NULL;
  if (batch < 1 || batch > (1 << 20))
    return vmc_error(VMC_ERR_INVALID_ARG, "batch size %d is out of range (1..1048576)", batch);
  vmc_plan *p = vmc_malloc_plain(sizeof *p);
  if (!p) return vmc_error(VMC_ERR_NOMEM, "plan");
  p->g = g;
  p->batch = batch;
  p->mode = mode;
  p->nthreads = vmc_get_threads();
  vmc_rng_seed(&p->rng, 0x5eed);
  vmc_status s = VMC_OK;
  p->shape = vmc_malloc_plain((size_t)g->n_values * sizeof *p->shape);
  p->act = vmc_malloc_plain((size_t)g->n_values * sizeof *p->act);
  p->state = vmc_malloc_plain((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof *p->state);
  p->fused = vmc_malloc_plain((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof *p->fused);
  p->skip = vmc_malloc_plain((size_t)(g->n_nodes ? g->n_nodes : 1));
  p->alias = vmc_malloc_plain((size_t)g->n_values * sizeof *p->alias);
  p->zero_grad = vmc_malloc_plain((size_t)g->n_values);
  p->dx_set = vmc_malloc_plain((size_t)(g->n_nodes ? g->n_nodes : 1));
  if (mode == VMC_MODE_TRAIN) p->grad = vmc_malloc_plain((size_t)g->n_values * sizeof *p->grad);
  if (!p->shape || !p->act || !p->state || !p->fused || !p->skip || !p->alias || !p->zero_grad || !p->dx_set ||
      (mode == VMC_MODE_TRAIN && !p->grad)) {
    vmc_plan_destroy(p);
    return vmc_error(VMC_ERR_NOMEM, "plan tables");
  }
  s = vmc_graph_infer_shapes(g, batch, p->shape);
  if (!s && mode == VMC_MODE_TRAIN) s = vmc_graph_alloc_grads(g);
  if (s) {
    vmc_plan_destroy(p);
    return s;
  }
  plan_fusions(p);
  /* Sizes. */
  size_t total = 0, state_total = 0, grads = 0;
  for (int v = 0; v < g->n_values; v++) {
    if (p->alias[v] >= 0) continue;
    total += vmc_align_up(fbytes(&p->shape[v]), VMC_ALIGN);
    if (p->grad && v != g->input) grads += vmc_align_up(fbytes(&p->shape[v]), VMC_ALIGN);
  }
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    vmc_shape in[VMC_MAX_INPUTS];
    for (int k = 0; k < n->n_in; k++) in[k] = p->shape[n->in[k]];
    if (n->op->state_bytes)
      state_total += vmc_align_up(n->op->state_bytes(n, in, &p->shape[n->out], mode), VMC_ALIGN);
    if (n->op->scratch_bytes) {
      size_t sb = n->op->scratch_bytes(n, in, &p->shape[n->out], mode, p->nthreads);
      if (sb > p->scratch_bytes) p->scratch_bytes = sb;
    }
  }
  p->scratch_bytes = vmc_align_up(p->scratch_bytes, VMC_ALIGN);
  total += grads + state_total + p->scratch_bytes * (size_t)p->nthreads;
  s = vmc_arena_init(&p->arena, total);
  if (s) {
    vmc_plan_destroy(p);
    return s;
  }
  /* An alias always follows the value it shares (node order). */
  for (int v = 0; v < g->n_values; v++)
    p->act[v] = p->alias[v] >= 0 ? p->act[p->alias[v]]
                                 : vmc_arena_take(&p->arena, fbytes(&p->shape[v]));
  if (p->grad) {
    for (int v = 0; v < g->n_values; v++)
      if (v != g->input)
        p->grad[v] = p->alias[v] >= 0 ? p->grad[p->alias[v]]
                                      : vmc_arena_take(&p->arena, fbytes(&p->shape[v]));
  }
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    vmc_shape in[VMC_MAX_INPUTS];
    for (int k = 0; k < n->n_in; k++) in[k] = p->shape[n->in[k]];
    size_t sb = n->op->state_bytes ? n->op->state_bytes(n, in, &p->shape[n->out], mode) : 0;
    p->state[i] = sb ? vmc_arena_take(&p->arena, sb) : NULL;
  }
  p->scratch = vmc_arena_take(&p->arena, p->scratch_bytes * (size_t)p->nthreads);
  *out = p;
  return VMC_OK;
}

void vmc_plan_destroy(vmc_plan *p) {
  if (!p) return;
  vmc_arena_release(&p->arena);
  vmc_free(p->shape);
  vmc_free(p->act);
  vmc_free(p->grad);
  vmc_free(p->state);
  vmc_free(p->fused);
  vmc_free(p->skip);
  vmc_free(p->zero_grad);
  vmc_free(p->dx_set);
  vmc_free(p->alias);
  vmc_free(p);
}

float *vmc_plan_input(vmc_plan *p) { return p->act[p->g->input]; }
const float *vmc_plan_output(const vmc_plan *p) { return p->act[p->g->output]; }
float *vmc_plan_output_grad(vmc_plan *p) { return p->grad ? p->grad[p->g->output] : NULL; }
int vmc_plan_batch(const vmc_plan *p) { return p->batch; }
size_t vmc_plan_arena_bytes(const vmc_plan *p) { return p->arena.size; }
const vmc_shape *vmc_plan_value_shape(const vmc_plan *p, int value) { return &p->shape[value]; }

vmc_status vmc_plan_forward(vmc_plan *p, int n) {
  if (n < 1 || n > p->batch)
    return vmc_error(VMC_ERR_INVALID_ARG, "forward of %d images on a plan for %d", n, p->batch);
  p->last_n = n;
  for (int i = 0; i < p->g->n_nodes; i++) {
    if (p->skip[i]) continue;
    vmc_opctx c;
    fill_ctx(p, i, n, &c);
    p->g->nodes[i].op->forward(&c);
  }
  return VMC_OK;
}

vmc_status vmc_plan_backward(vmc_plan *p) {
  if (!p->grad) return vmc_error(VMC_ERR_INVALID_ARG, "backward on an inference plan");
  if (p->last_n < 1) return vmc_error(VMC_ERR_INVALID_ARG, "backward before forward");
  const vmc_graph *g = p->g;
  for (int v = 0; v < g->n_values; v++)
    if (p->zero_grad[v]) memset(p->grad[v], 0, fbytes(&p->shape[v]));
  for (int i = g->n_nodes - 1; i >= 0; i--) {
    const vmc_node *n = &g->nodes[i];
    if (p->skip[i]) continue;
    if (!n->op->backward)
      return vmc_error(VMC_ERR_UNSUPPORTED, "op '%s' (node '%s') has no backward", n->op->name,
                       n->name);
    vmc_opctx c;
    fill_ctx(p, i, p->last_n, &c);
    n->op->backward(&c);
  }
  return VMC_OK;
}
