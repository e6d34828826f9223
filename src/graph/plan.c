/* Plans: shapes inferred once for a batch size, every activation, gradient,
 * op state and per-thread scratch sliced from one arena. */
#include "graph/plan.h"

#include "graph/fold.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int prof_env(void);
static void prof_print(const vmc_plan *p);

static size_t fbytes(const vmc_shape *s) { return vmc_shape_count(s) * sizeof(float); }

/* Bytes of value v's activation buffer. */
static size_t act_bytes(const vmc_plan *p, int v) {
  if (!p->padded || !p->padded[v]) return fbytes(&p->shape[v]);
  return vmc_padded_of(&p->shape[v]).image * (size_t)p->shape[v].d[0] * sizeof(float);
}

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
  for (int k = 0; p->padded && k < n->n_in; k++) c->xpad[k] = p->padded[n->in[k]];
  c->ypad = p->padded ? p->padded[n->out] : 0;
  c->y = p->act[n->out];
  c->ys = p->shape[n->out];
  if (p->grad) c->dy = p->grad[n->out];
  c->state = p->state[node];
  c->scratch = p->scratch;
  c->scratch_bytes = p->scratch_bytes;
  c->nthreads = p->nthreads;
  c->rng = &p->rng;
  c->act = p->fused[node];
  c->res = p->res && p->res[node] >= 0 ? p->act[p->res[node]] : NULL;
  for (int k = 0; k < n->n_in; k++) c->dx_set[k] = p->dx_set ? (p->dx_set[node] >> k) & 1 : 0;
}

/* Fold each relu/relu6 into its producer when the producer supports it and
 * is its only consumer: the relu's output shares the producer's buffers. */
/* VMC_NO_FUSION=1: plain execution (no folding, every gradient zeroed and
 * accumulated, inference batch by batch), for tests and comparisons. */
static int env_set(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0");
}
static int fusion_enabled(void) { return !env_set("VMC_NO_FUSION"); }

/* folded_into (inference, may be NULL): per node, the conv a batchnorm was
 * folded into (fold.h), or -1.  Such a batchnorm is skipped and its output
 * shares the conv's buffer, so a following relu folds into the conv. */
static void plan_fusions(vmc_plan *p, const int *folded_into, int fold_relu) {
  const vmc_graph *g = p->g;
  for (int v = 0; v < g->n_values; v++) p->alias[v] = -1;
  int fuse = fusion_enabled() && fold_relu;
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
  for (int i = 0; folded_into && i < g->n_nodes; i++) {
    if (folded_into[i] < 0) continue;
    p->skip[i] = 1;
    p->alias[g->nodes[i].out] = g->nodes[i].in[0];
    producer[g->nodes[i].out] = folded_into[i];
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

/* Node n's input shapes in p. */
static void input_shapes(const vmc_plan *p, const vmc_node *n, vmc_shape *in) {
  for (int k = 0; k < n->n_in; k++) in[k] = p->shape[n->in[k]];
}

/* Root of a value's alias chain: the value that owns the buffer. */
static int alias_root(const vmc_plan *p, int v) {
  while (p->alias[v] >= 0) v = p->alias[v];
  return v;
}

/* Batch-1 inference: the values whose producer and every consumer take the
 * padded layout (op.h) get it (1 here, plan_borders tells which kind); each
 * alias shares its owner's flag.  VMC_NO_PADDED=1: none (the same bits; for
 * tests and comparisons).  Returns 0 when out of memory. */
static int plan_padded(vmc_plan *p) {
  const vmc_graph *g = p->g;
  const int nv = g->n_values;
  p->padded = vmc_malloc_plain((size_t)nv);
  uint8_t *veto = vmc_malloc_plain((size_t)nv);
  if (!p->padded || !veto) {
    vmc_free(veto);
    return 0;
  }
  memset(p->padded, 0, (size_t)nv);
  memset(veto, 0, (size_t)nv);
  veto[g->input] = veto[alias_root(p, g->output)] = 1;
  for (int i = 0; i < g->n_nodes; i++) {
    if (p->skip[i]) continue;
    const vmc_node *n = &g->nodes[i];
    const vmc_op *op = n->op;
    vmc_shape in[VMC_MAX_INPUTS];
    input_shapes(p, n, in);
    const int r = alias_root(p, n->out);
    if (p->shape[r].ndim == 4 && op->padded_out && op->padded_out(n, in)) p->padded[r] = 1;
    else veto[r] = 1;
    for (int k = 0; k < n->n_in; k++)
      if (!op->padded_in || !op->padded_in(n, in, k)) veto[alias_root(p, n->in[k])] = 1;
  }
  for (int v = 0; v < nv; v++) p->padded[v] = p->padded[alias_root(p, v)] && !veto[alias_root(p, v)];
  vmc_free(veto);
  return 1;
}

/* After plan_residuals: each padded value's kind (op.h), VMC_PAD_ZEROS where
 * a node that still runs reads its borders, else VMC_PAD_PIXELS.  A folded
 * add's operand is read by its producer's epilogue instead, where any
 * garbage lands only in the output's own borders. */
static void plan_borders(vmc_plan *p) {
  const vmc_graph *g = p->g;
  for (int v = 0; v < g->n_values; v++)
    if (p->padded[v]) p->padded[v] = VMC_PAD_PIXELS;
  for (int i = 0; i < g->n_nodes; i++) {
    if (p->skip[i]) continue;
    const vmc_node *n = &g->nodes[i];
    vmc_shape in[VMC_MAX_INPUTS];
    input_shapes(p, n, in);
    for (int k = 0; k < n->n_in; k++) {
      const int r = alias_root(p, n->in[k]);
      if (p->padded[r] && n->op->padded_in(n, in, k) == VMC_PAD_ZEROS) p->padded[r] = VMC_PAD_ZEROS;
    }
  }
  for (int v = 0; v < g->n_values; v++) p->padded[v] = p->padded[alias_root(p, v)];
}

/* Inference: an add whose operand k is read by it alone, and produced by
 * a node that can add a residual in its output's layout (op.h
 * fuses_residual) with no activation of its own, is folded into that node:
 * the other operand becomes the node's res (it must exist by then), the
 * add's activation the node's, and the add's output shares the node's
 * buffer.  Both operands and the output must have one layout, and a node
 * takes one add at most.
 * VMC_NO_FOLD_ADD=1: no such folding (the same bits; for tests and
 * comparisons).  Returns 0 when out of memory. */
static int plan_residuals(vmc_plan *p) {
  const vmc_graph *g = p->g;
  int *readers = vmc_malloc_plain((size_t)g->n_values * sizeof *readers);
  int *producer = vmc_malloc_plain((size_t)g->n_values * sizeof *producer);
  p->res = vmc_malloc_plain((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof *p->res);
  if (!readers || !producer || !p->res) {
    vmc_free(readers), vmc_free(producer);
    return 0;
  }
  for (int v = 0; v < g->n_values; v++) producer[v] = -1;
  for (int i = 0; i < g->n_nodes; i++) {
    p->res[i] = -1;
    if (p->skip[i]) continue;
    producer[alias_root(p, g->nodes[i].out)] = i;
    for (int k = 0; k < g->nodes[i].n_in; k++) readers[alias_root(p, g->nodes[i].in[k])]++;
  }
  const uint8_t *pad = p->padded;
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (p->skip[i] || strcmp(n->op->name, "add") || n->n_in != 2) continue;
    const int out = alias_root(p, n->out);
    if (out == alias_root(p, g->output)) continue;
    for (int k = 0; k < 2; k++) {
      const int r = alias_root(p, n->in[k]), s = alias_root(p, n->in[1 - k]), pr = producer[r];
      if (pr < 0 || readers[r] != 1 || r == s || p->fused[pr] != VMC_ACT_NONE || p->res[pr] >= 0)
        continue;
      if (s != g->input && (producer[s] < 0 || producer[s] >= pr)) continue;
      const int lay = pad ? pad[r] : 0;
      if ((pad ? pad[s] : 0) != lay || (pad ? pad[out] : 0) != lay) continue;
      const vmc_node *pn = &g->nodes[pr];
      vmc_shape in[VMC_MAX_INPUTS];
      for (int j = 0; j < pn->n_in; j++) in[j] = p->shape[pn->in[j]];
      if (!pn->op->fuses_residual || !pn->op->fuses_residual(pn, in, lay)) continue;
      p->res[pr] = n->in[1 - k];
      p->fused[pr] = p->fused[i];
      p->skip[i] = 1;
      p->alias[n->out] = n->in[k];
      readers[r] = readers[out]; /* the add's readers now read r */
      break;
    }
  }
  vmc_free(readers);
  vmc_free(producer);
  return 1;
}

/* Inference: activation buffers share memory where their lives do not
 * overlap.  A buffer lives from the node that writes it to the last node
 * that reads it (the input from before the first node, the output to the
 * end); an op's output never overlaps its inputs, which are alive while it
 * runs.  Greedy first fit in node order.  off[v] is set for buffer owners;
 * returns the bytes needed, or 0 when out of memory (caller falls back to
 * one buffer each). */
static size_t plan_offsets(const vmc_plan *p, size_t *off) {
  const vmc_graph *g = p->g;
  const int nv = g->n_values;
  int *start = vmc_malloc_plain((size_t)nv * sizeof *start);
  int *end = vmc_malloc_plain((size_t)nv * sizeof *end);
  int *placed = vmc_malloc_plain((size_t)nv * sizeof *placed);
  size_t total = 0;
  if (!start || !end || !placed) goto done;
  for (int v = 0; v < nv; v++) start[v] = g->n_nodes + 1, end[v] = -2;
  start[g->input] = -1;
  end[alias_root(p, g->output)] = g->n_nodes;
  for (int i = 0; i < g->n_nodes; i++) {
    if (p->skip[i]) continue;
    const vmc_node *n = &g->nodes[i];
    const int r = alias_root(p, n->out);
    if (i < start[r]) start[r] = i;
    for (int k = 0; k <= n->n_in; k++) { /* the inputs, and a folded add's other operand */
      const int in = k < n->n_in ? n->in[k] : p->res ? p->res[i] : -1;
      if (in < 0) continue;
      const int q = alias_root(p, in);
      if (i > end[q]) end[q] = i;
    }
  }
  int n_placed = 0;
  for (int v = 0; v < nv; v++) { /* values are numbered in node order */
    if (p->alias[v] >= 0) continue;
    if (end[v] < start[v]) end[v] = start[v]; /* written, never read */
    const size_t size = vmc_align_up(act_bytes(p, v), VMC_ALIGN);
    /* Lowest offset (0 or the end of a live neighbour) clear of every
     * buffer alive at the same time. */
    size_t best = (size_t)-1;
    for (int c = -1; c < n_placed; c++) {
      const size_t o = c < 0 ? 0 : off[placed[c]] + vmc_align_up(act_bytes(p, placed[c]), VMC_ALIGN);
      if (o >= best) continue;
      int clear = 1;
      for (int j = 0; j < n_placed && clear; j++) {
        const int u = placed[j];
        const size_t us = vmc_align_up(act_bytes(p, u), VMC_ALIGN);
        const int live = start[u] <= end[v] && start[v] <= end[u];
        clear = !live || o + size <= off[u] || off[u] + us <= o;
      }
      if (clear) best = o;
    }
    off[v] = best;
    placed[n_placed++] = v;
    if (best + size > total) total = best + size;
  }
done:
  vmc_free(start);
  vmc_free(end);
  vmc_free(placed);
  return total;
}

/* One plan on g (already folded for inference).  nthreads: the team its
 * ops use.  keep_all: every activation gets a buffer of its own (no shared
 * memory), so each value stays readable after forward. */
static vmc_status plan_build(vmc_graph *g, int batch, vmc_mode mode, int nthreads,
                             const int *folded_into, int keep_all, vmc_plan **out) {
  *out = NULL;
  vmc_plan *p = vmc_malloc_plain(sizeof *p);
  if (!p) return vmc_error(VMC_ERR_NOMEM, "plan");
  p->g = g;
  p->batch = batch;
  p->mode = mode;
  p->nthreads = nthreads;
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
  size_t *off = mode == VMC_MODE_INFER && fusion_enabled() && !keep_all ? vmc_malloc_plain((size_t)g->n_values * sizeof *off) : NULL;
  if (mode == VMC_MODE_TRAIN) p->grad = vmc_malloc_plain((size_t)g->n_values * sizeof *p->grad);
  if (!p->shape || !p->act || !p->state || !p->fused || !p->skip || !p->alias || !p->zero_grad || !p->dx_set ||
      (mode == VMC_MODE_TRAIN && !p->grad)) {
    vmc_free(off);
    vmc_plan_destroy(p);
    return vmc_error(VMC_ERR_NOMEM, "plan tables");
  }
  s = vmc_graph_infer_shapes(g, batch, p->shape);
  if (!s && mode == VMC_MODE_TRAIN) s = vmc_graph_alloc_grads(g);
  if (s) {
    vmc_free(off);
    vmc_plan_destroy(p);
    return s;
  }
  plan_fusions(p, folded_into, keep_all != 2);
  if (off && ((batch == 1 && !env_set("VMC_NO_PADDED") && !plan_padded(p)) ||
              (folded_into && !env_set("VMC_NO_FOLD_ADD") && !plan_residuals(p)))) {
    vmc_free(off);
    vmc_plan_destroy(p);
    return vmc_error(VMC_ERR_NOMEM, "plan tables");
  }
  if (p->padded) plan_borders(p);
  /* Sizes. */
  size_t acts = off ? plan_offsets(p, off) : 0, state_total = 0, grads = 0;
  const int shared = acts > 0;
  for (int v = 0; v < g->n_values; v++) {
    if (p->alias[v] >= 0) continue;
    if (!shared) acts += vmc_align_up(act_bytes(p, v), VMC_ALIGN);
    if (p->grad && v != g->input) grads += vmc_align_up(fbytes(&p->shape[v]), VMC_ALIGN);
  }
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    vmc_shape in[VMC_MAX_INPUTS];
    input_shapes(p, n, in);
    if (n->op->state_bytes)
      state_total += vmc_align_up(n->op->state_bytes(n, in, &p->shape[n->out], mode), VMC_ALIGN);
    if (n->op->scratch_bytes) {
      size_t sb = n->op->scratch_bytes(n, in, &p->shape[n->out], mode, p->nthreads);
      if (sb > p->scratch_bytes) p->scratch_bytes = sb;
    }
  }
  p->scratch_bytes = vmc_align_up(p->scratch_bytes, VMC_ALIGN);
  s = vmc_arena_init(&p->arena, acts + grads + state_total + p->scratch_bytes * (size_t)p->nthreads);
  if (s) {
    vmc_free(off);
    vmc_plan_destroy(p);
    return s;
  }
  /* An alias always follows the value it shares (node order). */
  uint8_t *act_base = shared ? vmc_arena_take(&p->arena, acts) : NULL;
  for (int v = 0; v < g->n_values; v++)
    p->act[v] = p->alias[v] >= 0 ? p->act[p->alias[v]]
                : shared         ? (float *)(act_base + off[v])
                                 : vmc_arena_take(&p->arena, act_bytes(p, v));
  vmc_free(off);
  if (p->grad) {
    for (int v = 0; v < g->n_values; v++)
      if (v != g->input)
        p->grad[v] = p->alias[v] >= 0 ? p->grad[p->alias[v]]
                                      : vmc_arena_take(&p->arena, fbytes(&p->shape[v]));
  }
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    vmc_shape in[VMC_MAX_INPUTS];
    input_shapes(p, n, in);
    size_t sb = n->op->state_bytes ? n->op->state_bytes(n, in, &p->shape[n->out], mode) : 0;
    p->state[i] = sb ? vmc_arena_take(&p->arena, sb) : NULL;
  }
  p->scratch = vmc_arena_take(&p->arena, p->scratch_bytes * (size_t)p->nthreads);
  for (int i = 0; mode == VMC_MODE_INFER && i < g->n_nodes; i++) {
    if (p->skip[i] || !g->nodes[i].op->prepare) continue;
    vmc_opctx c;
    fill_ctx(p, i, batch, &c);
    g->nodes[i].op->prepare(&c);
  }
  *out = p;
  return VMC_OK;
}

/* Inference of a batch runs image by image, each thread through the whole
 * network on its own images with its own batch-1 plan: the activations of
 * one image stay in the core's cache, where a batch-wide layer would stream
 * them through memory.  The outer plan holds only the batch's input and
 * output. */
static vmc_status plan_per_image(vmc_plan *p, const int *folded_into) {
  const vmc_graph *g = p->g;
  const int nt = p->nthreads < p->batch ? p->nthreads : p->batch;
  p->sub = vmc_malloc_plain((size_t)nt * sizeof *p->sub);
  p->alias = vmc_malloc_plain((size_t)g->n_values * sizeof *p->alias);
  if (!p->sub || !p->alias) return vmc_error(VMC_ERR_NOMEM, "plan tables");
  for (int v = 0; v < g->n_values; v++) p->alias[v] = -1;
  for (int t = 0; t < nt; t++) {
    /* The first also runs single images with the whole team. */
    VMC_TRY(plan_build(p->g, 1, VMC_MODE_INFER, t ? 1 : p->nthreads, folded_into, 0, &p->sub[t]));
    p->n_sub = t + 1;
  }
  const size_t in = fbytes(&p->shape[g->input]), outb = fbytes(&p->shape[g->output]);
  VMC_TRY(vmc_arena_init(&p->arena, vmc_align_up(in, VMC_ALIGN) + vmc_align_up(outb, VMC_ALIGN)));
  p->act[g->input] = vmc_arena_take(&p->arena, in);
  p->act[g->output] = vmc_arena_take(&p->arena, outb);
  return VMC_OK;
}

vmc_status vmc_plan_create(vmc_graph *g, int batch, vmc_mode mode, vmc_plan **out) {
  *out = NULL;
  if (batch < 1 || batch > (1 << 20))
    return vmc_error(VMC_ERR_INVALID_ARG, "batch size %d is out of range (1..1048576)", batch);
  const int nthreads = vmc_get_threads();
  if (mode == VMC_MODE_TRAIN) {
    VMC_TRY(plan_build(g, batch, mode, nthreads, NULL, 0, out));
    const vmc_status s = prof_env() ? vmc_plan_profile(*out, 1) : VMC_OK;
    if (s) {
      vmc_plan_destroy(*out);
      *out = NULL;
    }
    return s;
  }
  if (!fusion_enabled()) return plan_build(g, batch, mode, nthreads, NULL, 0, out);
  /* Inference: a private copy of the weights with BatchNorm folded into the
   * convolutions (the plan keeps the weights it was made with). */
  vmc_graph *own;
  VMC_TRY(vmc_graph_clone(g, &own));
  int *folded = vmc_malloc_plain((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof *folded);
  vmc_status s = folded ? vmc_graph_fold_bn(own, folded, NULL) : vmc_error(VMC_ERR_NOMEM, "plan");
  vmc_plan *p = NULL;
  if (!s && batch == 1) s = plan_build(own, 1, mode, nthreads, folded, 0, &p);
  if (!s && batch > 1) {
    p = vmc_malloc_plain(sizeof *p);
    if (!p) s = vmc_error(VMC_ERR_NOMEM, "plan");
  }
  if (!s && batch > 1) {
    p->g = own;
    p->batch = batch;
    p->mode = mode;
    p->nthreads = nthreads;
    p->shape = vmc_malloc_plain((size_t)g->n_values * sizeof *p->shape);
    p->act = vmc_malloc_plain((size_t)g->n_values * sizeof *p->act);
    s = !p->shape || !p->act ? vmc_error(VMC_ERR_NOMEM, "plan tables")
                             : vmc_graph_infer_shapes(own, batch, p->shape);
    if (!s) s = plan_per_image(p, folded);
  }
  vmc_free(folded);
  if (s) {
    if (p) p->owned = own;
    else vmc_graph_free(own);
    vmc_plan_destroy(p);
    return s;
  }
  p->owned = own;
  *out = p;
  return VMC_OK;
}

vmc_status vmc_plan_create_observable(vmc_graph *g, int batch, vmc_plan **out) {
  *out = NULL;
  if (batch < 1 || batch > (1 << 20))
    return vmc_error(VMC_ERR_INVALID_ARG, "batch size %d is out of range (1..1048576)", batch);
  return plan_build(g, batch, VMC_MODE_INFER, vmc_get_threads(), NULL, 1, out);
}

vmc_status vmc_plan_create_observable_unfused(vmc_graph *g, int batch, vmc_plan **out) {
  *out = NULL;
  if (batch < 1 || batch > (1 << 20))
    return vmc_error(VMC_ERR_INVALID_ARG, "batch size %d is out of range (1..1048576)", batch);
  return plan_build(g, batch, VMC_MODE_INFER, vmc_get_threads(), NULL, 2, out);
}

const float *vmc_plan_value(const vmc_plan *p, int value) {
  if (value < 0 || value >= p->g->n_values) return NULL;
  return p->act[value];
}

void vmc_plan_destroy(vmc_plan *p) {
  if (!p) return;
  if (p->grad && p->prof && prof_env()) prof_print(p);
  vmc_free(p->prof);
  for (int t = 0; t < p->n_sub; t++) vmc_plan_destroy(p->sub[t]);
  vmc_free(p->sub);
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
  vmc_free(p->padded);
  vmc_free(p->res);
  if (p->owned) vmc_graph_free(p->owned);
  vmc_free(p);
}

float *vmc_plan_input(vmc_plan *p) { return p->act[p->g->input]; }
const float *vmc_plan_output(const vmc_plan *p) { return p->act[p->g->output]; }
float *vmc_plan_output_grad(vmc_plan *p) { return p->grad ? p->grad[p->g->output] : NULL; }
int vmc_plan_batch(const vmc_plan *p) { return p->batch; }
size_t vmc_plan_arena_bytes(const vmc_plan *p) {
  size_t n = p->arena.size;
  for (int t = 0; t < p->n_sub; t++) n += vmc_plan_arena_bytes(p->sub[t]);
  return n;
}
const vmc_shape *vmc_plan_value_shape(const vmc_plan *p, int value) { return &p->shape[value]; }

/* VMC_PROFILE=1: a training plan times its nodes (vmc_plan_profile) and
 * prints the forward and backward seconds of each to stderr when it is
 * destroyed: where a training step's time goes, op by op. */
static int prof_env(void) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("VMC_PROFILE");
    on = e && *e && strcmp(e, "0");
  }
  return on;
}

vmc_status vmc_plan_profile(vmc_plan *p, int on) {
  vmc_free(p->prof);
  p->prof = NULL;
  for (int t = 0; t < p->n_sub; t++) VMC_TRY(vmc_plan_profile(p->sub[t], on));
  if (!on) return VMC_OK;
  p->prof = vmc_malloc_plain(2 * (size_t)(p->g->n_nodes ? p->g->n_nodes : 1) * sizeof *p->prof);
  if (!p->prof) return vmc_error(VMC_ERR_NOMEM, "profile counters");
  memset(p->prof, 0, 2 * (size_t)p->g->n_nodes * sizeof *p->prof);
  return VMC_OK;
}

const vmc_graph *vmc_plan_graph(const vmc_plan *p) { return p->g; }

double vmc_plan_node_seconds(const vmc_plan *p, int i, int backward) {
  if (i < 0 || i >= p->g->n_nodes) return 0;
  double s = p->prof ? p->prof[(backward ? p->g->n_nodes : 0) + i] : 0;
  for (int t = 0; t < p->n_sub; t++) s += vmc_plan_node_seconds(p->sub[t], i, backward);
  return s;
}

/* Node i of p, and its input shapes (an outer plan keeps no inner shapes:
 * its first sub-plan's). */
static const vmc_node *node_inputs(const vmc_plan *p, int i, vmc_shape *in, const vmc_plan **q) {
  *q = p->n_sub ? p->sub[0] : p;
  const vmc_node *n = &(*q)->g->nodes[i];
  input_shapes(*q, n, in);
  return n;
}

uint64_t vmc_plan_node_macs(const vmc_plan *p, int i) {
  if (i < 0 || i >= p->g->n_nodes) return 0;
  vmc_shape in[VMC_MAX_INPUTS];
  const vmc_plan *q;
  const vmc_node *n = node_inputs(p, i, in, &q);
  return n->op->macs ? n->op->macs(n, in, &q->shape[n->out]) : 0;
}

const char *vmc_plan_node_kernel(const vmc_plan *p, int i) {
  if (i < 0 || i >= p->g->n_nodes) return NULL;
  vmc_shape in[VMC_MAX_INPUTS];
  const vmc_plan *q;
  const vmc_node *n = node_inputs(p, i, in, &q);
  return n->op->kernel ? n->op->kernel(n, in, p->mode) : NULL;
}

static void prof_print(const vmc_plan *p) {
  double tot = 0;
  for (int i = 0; i < p->g->n_nodes; i++) tot += p->prof[i] + p->prof[p->g->n_nodes + i];
  if (tot <= 0) return;
  fprintf(stderr, "%-28s %-10s %-13s %9s %9s %6s\n", "node", "op", "kernel", "fwd s", "bwd s",
          "%");
  for (int i = 0; i < p->g->n_nodes; i++) {
    const double f = p->prof[i], b = p->prof[p->g->n_nodes + i];
    if (f + b <= 0) continue;
    const char *k = vmc_plan_node_kernel(p, i);
    fprintf(stderr, "%-28s %-10s %-13s %9.3f %9.3f %6.1f\n", p->g->nodes[i].name,
            p->g->nodes[i].op->name, k ? k : "-", f, b, 100 * (f + b) / tot);
  }
  fprintf(stderr, "total %.3f s\n", tot);
}

/* Every node of a plan for n images, its ops on nthreads threads. */
static void run_nodes(vmc_plan *p, int n, int nthreads) {
  for (int i = 0; i < p->g->n_nodes; i++) {
    if (p->skip[i]) continue;
    vmc_opctx c;
    fill_ctx(p, i, n, &c);
    c.nthreads = nthreads;
    const double t0 = p->prof ? vmc_now() : 0;
    p->g->nodes[i].op->forward(&c);
    if (p->prof) p->prof[i] += vmc_now() - t0;
  }
}

/* Images [lo, hi) of the outer plan p through sub-plan s. */
static void run_images(vmc_plan *p, vmc_plan *s, int lo, int hi, int nthreads) {
  const vmc_graph *g = p->g;
  const size_t in = vmc_shape_count(&s->shape[g->input]);
  const size_t outn = vmc_shape_count(&s->shape[g->output]);
  for (int b = lo; b < hi; b++) {
    memcpy(s->act[g->input], p->act[g->input] + (size_t)b * in, in * sizeof(float));
    run_nodes(s, 1, nthreads);
    memcpy(p->act[g->output] + (size_t)b * outn, s->act[g->output], outn * sizeof(float));
  }
}

vmc_status vmc_plan_forward(vmc_plan *p, int n) {
  if (n < 1 || n > p->batch)
    return vmc_error(VMC_ERR_INVALID_ARG, "forward of %d images on a plan for %d", n, p->batch);
  p->last_n = n;
  if (!p->n_sub) {
    run_nodes(p, n, p->nthreads);
    return VMC_OK;
  }
  const int nt = p->n_sub < n ? p->n_sub : n;
  if (nt <= 1) {
    run_images(p, p->sub[0], 0, n, p->nthreads);
    return VMC_OK;
  }
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; t++)
    run_images(p, p->sub[t], (int)((int64_t)n * t / nt), (int)((int64_t)n * (t + 1) / nt), 1);
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
    const double t0 = p->prof ? vmc_now() : 0;
    n->op->backward(&c);
    if (p->prof) p->prof[g->n_nodes + i] += vmc_now() - t0;
  }
  return VMC_OK;
}
