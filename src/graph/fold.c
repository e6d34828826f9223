/* BatchNorm folding (see fold.h). */
#include "graph/fold.h"

#include "graph/op.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Adds "<conv>.bias" (or the first free "<conv>.bias_N") to conv node ci. */
static vmc_status add_bias(vmc_graph *g, int ci, int oc) {
  char name[VMC_NAME_MAX];
  snprintf(name, sizeof name, "%s.bias", g->nodes[ci].name);
  for (int k = 1; vmc_graph_find_param(g, name) >= 0; k++)
    snprintf(name, sizeof name, "%s.bias_%d", g->nodes[ci].name, k);
  vmc_shape s = {1, {oc}};
  int id;
  VMC_TRY(vmc_graph_add_param(g, name, s, 1, &id)); /* zeroed */
  vmc_node *n = &g->nodes[ci];
  n->param[n->n_param++] = id;
  return VMC_OK;
}

/* Nonzero when more than one node reads parameter id (its scaling would
 * change the others). */
static int param_shared(const vmc_graph *g, int id) {
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++)
    for (int k = 0; k < g->nodes[i].n_param; k++) n += g->nodes[i].param[k] == id;
  return n > 1;
}

vmc_status vmc_graph_fold_bn(vmc_graph *g, int *folded_into, int *count) {
  if (count) *count = 0;
  for (int i = 0; i < g->n_nodes; i++) folded_into[i] = -1;
  int *uses = vmc_malloc_plain((size_t)g->n_values * sizeof *uses);
  int *producer = vmc_malloc_plain((size_t)g->n_values * sizeof *producer);
  vmc_status s = VMC_OK;
  if (!uses || !producer) {
    s = vmc_error(VMC_ERR_NOMEM, "batchnorm folding");
    goto done;
  }
  for (int v = 0; v < g->n_values; v++) uses[v] = 0, producer[v] = -1;
  for (int i = 0; i < g->n_nodes; i++) {
    for (int k = 0; k < g->nodes[i].n_in; k++) uses[g->nodes[i].in[k]]++;
    producer[g->nodes[i].out] = i;
  }
  for (int i = 0; i < g->n_nodes && !s; i++) {
    const vmc_node *bn = &g->nodes[i];
    if (strcmp(bn->op->name, "batchnorm") || bn->n_param != 4) continue;
    const int v = bn->in[0], ci = producer[v];
    if (ci < 0 || strcmp(g->nodes[ci].op->name, "conv2d") || uses[v] != 1 || v == g->output ||
        param_shared(g, g->nodes[ci].param[0]))
      continue;
    const int oc = g->params[g->nodes[ci].param[0]].shape.d[0];
    int fits = 1; /* wrong sizes are rejected by shape inference, later */
    for (int k = 0; k < 4; k++) fits &= (int)vmc_shape_count(&g->params[bn->param[k]].shape) == oc;
    if (!fits) continue;
    /* Adding a bias may move g->params: take pointers after it. */
    if (g->nodes[ci].n_param < 2 && (s = add_bias(g, ci, oc))) break;
    const vmc_node *conv = &g->nodes[ci];
    const vmc_param *w = &g->params[conv->param[0]];
    float *wd = w->data, *bd = g->params[conv->param[1]].data;
    const float *gamma = g->params[bn->param[0]].data, *beta = g->params[bn->param[1]].data;
    const float *mean = g->params[bn->param[2]].data, *var = g->params[bn->param[3]].data;
    const size_t per = vmc_shape_count(&w->shape) / (size_t)oc;
    const float eps = vmc_node_attr_f(bn, "eps", 1e-5f);
    for (int o = 0; o < oc; o++) {
      /* The same a and shift as batchnorm's inference forward. */
      const float a = gamma[o] * (1.0f / sqrtf(var[o] + eps));
      const float shift = beta[o] - mean[o] * a;
      for (size_t j = 0; j < per; j++) wd[(size_t)o * per + j] *= a;
      bd[o] = a * bd[o] + shift;
    }
    /* Scaled weights are no longer codes times their scales. */
    vmc_param_set_quantized(g, conv->param[0], VMC_F32, NULL, 0);
    folded_into[i] = ci;
    if (count) ++*count;
  }
done:
  vmc_free(uses);
  vmc_free(producer);
  return s;
}
