/* Graph rebuilds (see rebuild.h). */
#include "graph/rebuild.h"

#include "graph/fold.h"
#include "graph/op.h"

#include <string.h>

vmc_status vmc_graph_drop_nodes(const vmc_graph *g, const uint8_t *drop, vmc_graph **out,
                                int *value_map) {
  *out = NULL;
  int *map = vmc_malloc_plain((size_t)g->n_values * sizeof *map);
  int *pmap = vmc_malloc_plain((size_t)(g->n_params ? g->n_params : 1) * sizeof *pmap);
  vmc_graph *c = NULL;
  vmc_status s = !map || !pmap ? vmc_error(VMC_ERR_NOMEM, "graph rebuild") : VMC_OK;
  if (!s) s = vmc_graph_create(g->in_shape.d[1], g->in_shape.d[2], g->in_shape.d[3], &c);
  if (s) goto done;
  for (int v = 0; v < g->n_values; v++) map[v] = -1;
  for (int i = 0; i < g->n_params; i++) pmap[i] = -1;
  /* Parameters some kept node uses, in their order (pmap[i] = 0 marks one). */
  for (int i = 0; i < g->n_nodes; i++)
    for (int k = 0; !drop[i] && k < g->nodes[i].n_param; k++) pmap[g->nodes[i].param[k]] = 0;
  for (int i = 0; i < g->n_params && !s; i++) {
    if (pmap[i] < 0) continue;
    const vmc_param *p = &g->params[i];
    s = vmc_graph_copy_param(c, p, &pmap[i]);
  }
  map[g->input] = c->input;
  for (int i = 0; i < g->n_nodes && !s; i++) {
    const vmc_node *n = &g->nodes[i];
    int in[VMC_MAX_INPUTS], par[VMC_MAX_PARAMS];
    for (int k = 0; k < n->n_in && !s; k++) {
      in[k] = map[n->in[k]];
      if (in[k] < 0)
        s = vmc_error(VMC_ERR_FORMAT, "node '%s' reads value '%s' before it is computed",
                      n->name, g->values[n->in[k]].name);
    }
    if (s) break;
    if (drop[i]) {
      if (n->n_in != 1)
        s = vmc_error(VMC_ERR_INVALID_ARG, "node '%s' (%s) has %d inputs: only a one-input "
                      "node can be dropped", n->name, n->op->name, n->n_in);
      else
        map[n->out] = in[0];
      continue;
    }
    for (int k = 0; k < n->n_param; k++) par[k] = pmap[n->param[k]];
    s = vmc_graph_add_node(c, n->op->name, n->name, in, n->n_in, n->attr, n->n_attr, par,
                           n->n_param, &map[n->out]);
  }
  if (!s && (g->output < 0 || map[g->output] < 0))
    s = vmc_error(VMC_ERR_FORMAT, "graph output is never computed");
  if (!s) c->output = map[g->output];
  for (int i = 0; i < g->n_meta && !s; i++) s = vmc_graph_set_meta(c, g->meta[i].key, g->meta[i].value);
  if (!s && value_map) memcpy(value_map, map, (size_t)g->n_values * sizeof *map);
done:
  vmc_free(map);
  vmc_free(pmap);
  if (s) {
    vmc_graph_free(c);
    return s;
  }
  *out = c;
  return VMC_OK;
}

vmc_status vmc_graph_fold_bn_copy(const vmc_graph *g, vmc_graph **out, int *count) {
  *out = NULL;
  if (count) *count = 0;
  vmc_graph *c;
  VMC_TRY(vmc_graph_clone(g, &c));
  const size_t nn = (size_t)(g->n_nodes ? g->n_nodes : 1);
  int *folded = vmc_malloc_plain(nn * sizeof *folded);
  uint8_t *drop = vmc_malloc_plain(nn);
  int nf = 0;
  vmc_status s = !folded || !drop ? vmc_error(VMC_ERR_NOMEM, "batchnorm folding")
                                  : vmc_graph_fold_bn(c, folded, &nf);
  for (int i = 0; !s && i < c->n_nodes; i++) drop[i] = folded[i] >= 0;
  if (!s) s = vmc_graph_drop_nodes(c, drop, out, NULL);
  if (!s && count) *count = nf;
  vmc_free(folded);
  vmc_free(drop);
  vmc_graph_free(c);
  return s;
}
