/* The graph of quantization-aware training before the BatchNorm fold (see
 * qat_bn.h). */
#include "quant/qat_bn.h"

#include "graph/op.h"

#include <math.h>
#include <string.h>

/* The batchnorm node of g that alone reads conv node ci and that the PTQ
 * graph q folded (q has no node of its name), or -1. */
static int folded_bn(const vmc_graph *g, const vmc_graph *q, int ci) {
  const int v = g->nodes[ci].out;
  int bn = -1, readers = v == g->output;
  for (int i = ci + 1; i < g->n_nodes; i++)
    for (int k = 0; k < g->nodes[i].n_in; k++)
      if (g->nodes[i].in[k] == v) readers++, bn = i;
  if (readers != 1 || strcmp(g->nodes[bn].op->name, "batchnorm") ||
      vmc_graph_find_node(q, g->nodes[bn].name) >= 0)
    return -1;
  return bn;
}

/* Node n of g appended to u, reading in (n_in values of u); its parameters
 * copied once (pmap: g's parameter id -> u's, or -1); a batchnorm gets the
 * attribute frozen 0. */
static vmc_status add_from(vmc_graph *u, const vmc_graph *g, const vmc_node *n, const int *in,
                           int n_in, int *pmap, int *out_value) {
  int params[VMC_MAX_PARAMS];
  for (int k = 0; k < n->n_param; k++) {
    int *id = &pmap[n->param[k]];
    if (*id < 0) VMC_TRY(vmc_graph_copy_param(u, &g->params[n->param[k]], id));
    params[k] = *id;
  }
  vmc_attr attr[VMC_MAX_ATTRS];
  int na = n->n_attr;
  memcpy(attr, n->attr, (size_t)na * sizeof *attr);
  if (!strcmp(n->op->name, "batchnorm") && !vmc_node_has_attr(n, "frozen")) {
    if (na == VMC_MAX_ATTRS)
      return vmc_error(VMC_ERR_UNSUPPORTED, "qat: batchnorm '%s' has no room for the attribute "
                       "frozen", n->name);
    attr[na++] = vmc_attr_int("frozen", 0);
  }
  return vmc_graph_add_node(u, n->op->name, n->name, in, n_in, attr, na, params, n->n_param,
                            out_value);
}

static vmc_status build(const vmc_graph *g, const vmc_graph *q, vmc_graph *u, int *vmap,
                        int *pmap, int *bn_of) {
  vmap[q->input] = u->input;
  for (int i = 0; i < q->n_nodes; i++) {
    const vmc_node *n = &q->nodes[i];
    int in[VMC_MAX_INPUTS];
    for (int k = 0; k < n->n_in; k++) in[k] = vmap[n->in[k]];
    const int at = u->n_nodes;
    if (bn_of) bn_of[at] = -1;
    if (!strcmp(n->op->name, "fakequant")) {
      VMC_TRY(vmc_graph_add_node(u, "fakequant", n->name, in, n->n_in, n->attr, n->n_attr, NULL,
                                 0, &vmap[n->out]));
      continue;
    }
    const int gi = vmc_graph_find_node(g, n->name);
    if (gi < 0 || g->nodes[gi].op != n->op || g->nodes[gi].n_in != n->n_in)
      return vmc_error(VMC_ERR_INTERNAL, "qat: node '%s' of the quantized graph is not the "
                       "model's", n->name);
    VMC_TRY(add_from(u, g, &g->nodes[gi], in, n->n_in, pmap, &vmap[n->out]));
    const int bn = strcmp(n->op->name, "conv2d") ? -1 : folded_bn(g, q, gi);
    if (bn < 0) continue;
    if (bn_of) bn_of[at] = u->n_nodes, bn_of[u->n_nodes] = -1;
    const int conv_out = vmap[n->out];
    VMC_TRY(add_from(u, g, &g->nodes[bn], &conv_out, 1, pmap, &vmap[n->out]));
  }
  u->output = vmap[q->output];
  for (int i = 0; i < q->n_meta; i++) VMC_TRY(vmc_graph_set_meta(u, q->meta[i].key, q->meta[i].value));
  return VMC_OK;
}

vmc_status vmc_qat_bn_graph(const vmc_graph *g, const vmc_graph *q, vmc_graph **out, int *bn_of) {
  *out = NULL;
  vmc_graph *u;
  VMC_TRY(vmc_graph_create(q->in_shape.d[1], q->in_shape.d[2], q->in_shape.d[3], &u));
  int *vmap = vmc_malloc_plain((size_t)q->n_values * sizeof *vmap);
  int *pmap = vmc_malloc_plain((size_t)(g->n_params ? g->n_params : 1) * sizeof *pmap);
  vmc_status s = vmap && pmap ? VMC_OK : vmc_error(VMC_ERR_NOMEM, "qat: the batchnorm graph");
  for (int p = 0; p < g->n_params && !s; p++) pmap[p] = -1;
  if (!s) s = build(g, q, u, vmap, pmap, bn_of);
  vmc_free(vmap);
  vmc_free(pmap);
  if (s) {
    vmc_graph_free(u);
    return s;
  }
  *out = u;
  return VMC_OK;
}

void vmc_qat_bn_scale(const vmc_graph *g, int bn, float *a) {
  const vmc_node *n = &g->nodes[bn];
  const vmc_param *gamma = &g->params[n->param[0]], *var = &g->params[n->param[3]];
  const float eps = vmc_node_attr_f(n, "eps", 1e-5f);
  const size_t c = vmc_shape_count(&gamma->shape);
  for (size_t k = 0; k < c; k++) a[k] = gamma->data[k] * (1.0f / sqrtf(var->data[k] + eps));
}

void vmc_qat_bn_freeze(vmc_graph *g, int frozen) {
  for (int i = 0; i < g->n_nodes; i++) {
    vmc_node *n = &g->nodes[i];
    if (strcmp(n->op->name, "batchnorm")) continue;
    for (int k = 0; k < n->n_attr; k++)
      if (!strcmp(n->attr[k].key, "frozen")) n->attr[k].i = frozen, n->attr[k].f = (float)frozen;
  }
}
