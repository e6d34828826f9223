/* Graph construction, lookup, shape inference, metadata. */
#include "graph/op.h"

#include <stdio.h>
#include <stdlib.h>
#include <float.h>
#include <math.h>
#include <string.h>

static vmc_status grow(void **arr, int *cap, int need, size_t elem) {
  if (need <= *cap) return VMC_OK;
  int nc = *cap ? *cap * 2 : 16;
  while (nc < need) nc *= 2;
  void *p = vmc_realloc_plain(*arr, (size_t)nc * elem);
  if (!p) return vmc_error(VMC_ERR_NOMEM, "growing graph to %d entries", nc);
  memset((char *)p + (size_t)*cap * elem, 0, (size_t)(nc - *cap) * elem);
  *arr = p;
  *cap = nc;
  return VMC_OK;
}

static vmc_status copy_name(char *dst, const char *src, const char *what) {
  size_t n = strlen(src);
  if (n == 0 || n >= VMC_NAME_MAX)
    return vmc_error(VMC_ERR_INVALID_ARG, "%s name '%.80s' must have 1..%d characters", what,
                     src, VMC_NAME_MAX - 1);
  memcpy(dst, src, n + 1);
  return VMC_OK;
}

vmc_status vmc_graph_create(int in_c, int in_h, int in_w, vmc_graph **out) {
  *out = NULL;
  if (in_c < 1 || in_h < 1 || in_w < 1 || in_c > 4096 || in_h > 16384 || in_w > 16384)
    return vmc_error(VMC_ERR_INVALID_ARG, "input shape %dx%dx%d is out of range", in_c, in_h,
                     in_w);
  vmc_graph *g = vmc_malloc_plain(sizeof *g);
  if (!g) return vmc_error(VMC_ERR_NOMEM, "graph");
  g->in_shape = vmc_shape4(1, in_c, in_h, in_w);
  g->output = -1;
  vmc_status s = vmc_graph_add_value(g, "input", &g->input);
  if (s) {
    vmc_graph_free(g);
    return s;
  }
  *out = g;
  return VMC_OK;
}

void vmc_graph_free(vmc_graph *g) {
  if (!g) return;
  for (int i = 0; i < g->n_params; i++) {
    vmc_free(g->params[i].data);
    vmc_free(g->params[i].grad);
    vmc_free(g->params[i].qscale);
  }
  for (int i = 0; i < g->n_meta; i++) {
    vmc_free(g->meta[i].key);
    vmc_free(g->meta[i].value);
  }
  vmc_free(g->values);
  vmc_free(g->nodes);
  vmc_free(g->params);
  vmc_free(g->meta);
  vmc_free(g);
}

int vmc_graph_find_value(const vmc_graph *g, const char *name) {
  for (int i = g->n_values - 1; i >= 0; i--)
    if (!strcmp(g->values[i].name, name)) return i;
  return -1;
}

int vmc_graph_find_node(const vmc_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].name, name)) return i;
  return -1;
}

int vmc_graph_find_param(const vmc_graph *g, const char *name) {
  for (int i = 0; i < g->n_params; i++)
    if (!strcmp(g->params[i].name, name)) return i;
  return -1;
}

vmc_status vmc_graph_add_value(vmc_graph *g, const char *name, int *id) {
  if (vmc_graph_find_value(g, name) >= 0)
    return vmc_error(VMC_ERR_INVALID_ARG, "value '%s' defined twice", name);
  VMC_TRY(grow((void **)&g->values, &g->cap_values, g->n_values + 1, sizeof *g->values));
  VMC_TRY(copy_name(g->values[g->n_values].name, name, "value"));
  *id = g->n_values++;
  return VMC_OK;
}

vmc_status vmc_graph_add_param(vmc_graph *g, const char *name, vmc_shape shape, int trainable,
                               int *id) {
  if (vmc_graph_find_param(g, name) >= 0)
    return vmc_error(VMC_ERR_INVALID_ARG, "parameter '%s' defined twice", name);
  if (shape.ndim < 1 || shape.ndim > VMC_MAX_DIMS)
    return vmc_error(VMC_ERR_SHAPE, "parameter '%s' has %d dimensions", name, shape.ndim);
  size_t count = 1;
  for (int i = 0; i < shape.ndim; i++) {
    if (shape.d[i] < 1 || !vmc_mul_size(count, (size_t)shape.d[i], &count) || count > (1u << 30))
      return vmc_error(VMC_ERR_SHAPE, "parameter '%s' has a bad dimension %d", name, shape.d[i]);
  }
  VMC_TRY(grow((void **)&g->params, &g->cap_params, g->n_params + 1, sizeof *g->params));
  vmc_param *p = &g->params[g->n_params];
  memset(p, 0, sizeof *p);
  VMC_TRY(copy_name(p->name, name, "parameter"));
  p->shape = shape;
  p->trainable = trainable;
  p->data = vmc_alloc(count * sizeof(float));
  if (!p->data) return vmc_error(VMC_ERR_NOMEM, "parameter '%s'", name);
  *id = g->n_params++;
  return VMC_OK;
}

vmc_status vmc_graph_add_node(vmc_graph *g, const char *op_name, const char *name, const int *in,
                              int n_in, const vmc_attr *attrs, int n_attr, const int *params,
                              int n_param, int *out_value) {
  const vmc_op *op = vmc_op_find(op_name);
  if (!op) return vmc_error(VMC_ERR_NOT_FOUND, "node '%s': unknown op '%s'", name, op_name);
  if (n_in < op->min_in || n_in > op->max_in || n_in > VMC_MAX_INPUTS)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s' (%s): %d inputs, expected %d..%d", name,
                     op_name, n_in, op->min_in, op->max_in);
  if (n_param < op->n_param_min || n_param > op->n_param_max || n_param > VMC_MAX_PARAMS)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s' (%s): %d parameters, expected %d..%d",
                     name, op_name, n_param, op->n_param_min, op->n_param_max);
  if (n_attr < 0 || n_attr > VMC_MAX_ATTRS)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': %d attributes", name, n_attr);
  for (int i = 0; i < n_in; i++)
    if (in[i] < 0 || in[i] >= g->n_values)
      return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': input %d is not a defined value", name,
                       i);
  for (int i = 0; i < n_param; i++)
    if (params[i] < 0 || params[i] >= g->n_params)
      return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': parameter %d is not defined", name, i);
  VMC_TRY(grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes + 1, sizeof *g->nodes));
  vmc_node *n = &g->nodes[g->n_nodes];
  memset(n, 0, sizeof *n);
  VMC_TRY(copy_name(n->name, name, "node"));
  n->op = op;
  n->n_in = n_in;
  memcpy(n->in, in, (size_t)n_in * sizeof *in);
  n->n_attr = n_attr;
  if (n_attr) memcpy(n->attr, attrs, (size_t)n_attr * sizeof *attrs);
  n->n_param = n_param;
  if (n_param) memcpy(n->param, params, (size_t)n_param * sizeof *params);
  int v;
  VMC_TRY(vmc_graph_add_value(g, name, &v));
  n->out = v;
  g->n_nodes++;
  g->output = v;
  if (out_value) *out_value = v;
  return VMC_OK;
}

vmc_status vmc_graph_infer_shapes(const vmc_graph *g, int batch, vmc_shape *shapes) {
  if (batch < 1) return vmc_error(VMC_ERR_INVALID_ARG, "batch size %d must be >= 1", batch);
  if (g->n_nodes == 0) return vmc_error(VMC_ERR_FORMAT, "graph has no nodes");
  if (g->output < 0 || g->output >= g->n_values)
    return vmc_error(VMC_ERR_FORMAT, "graph has no output");
  char *defined = vmc_malloc_plain((size_t)g->n_values);
  if (!defined) return vmc_error(VMC_ERR_NOMEM, "shape inference");
  vmc_status s = VMC_OK;
  defined[g->input] = 1;
  shapes[g->input] = g->in_shape;
  shapes[g->input].d[0] = batch;
  for (int i = 0; i < g->n_nodes && !s; i++) {
    const vmc_node *n = &g->nodes[i];
    vmc_shape in[VMC_MAX_INPUTS];
    for (int k = 0; k < n->n_in; k++) {
      if (!defined[n->in[k]]) {
        s = vmc_error(VMC_ERR_FORMAT, "node '%s' uses value '%s' before it is computed",
                      n->name, g->values[n->in[k]].name);
        break;
      }
      in[k] = shapes[n->in[k]];
    }
    if (s) break;
    if (defined[n->out]) {
      s = vmc_error(VMC_ERR_FORMAT, "value '%s' is computed twice", g->values[n->out].name);
      break;
    }
    s = n->op->infer(g, n, in, &shapes[n->out]);
    if (!s) {
      size_t cnt = 1;
      for (int k = 0; k < shapes[n->out].ndim; k++)
        if (shapes[n->out].d[k] < 1 || !vmc_mul_size(cnt, (size_t)shapes[n->out].d[k], &cnt))
          s = vmc_error(VMC_ERR_SHAPE, "node '%s' produces an empty or huge tensor", n->name);
    }
    defined[n->out] = 1;
  }
  if (!s && !defined[g->output]) s = vmc_error(VMC_ERR_FORMAT, "graph output is never computed");
  vmc_free(defined);
  return s;
}

vmc_status vmc_graph_alloc_grads(vmc_graph *g) {
  for (int i = 0; i < g->n_params; i++) {
    vmc_param *p = &g->params[i];
    if (!p->trainable || p->grad) continue;
    p->grad = vmc_alloc(vmc_shape_count(&p->shape) * sizeof(float));
    if (!p->grad) return vmc_error(VMC_ERR_NOMEM, "gradient of '%s'", p->name);
  }
  return VMC_OK;
}

vmc_status vmc_graph_copy_param(vmc_graph *g, const vmc_param *p, int *id) {
  VMC_TRY(vmc_graph_add_param(g, p->name, p->shape, p->trainable, id));
  vmc_param *c = &g->params[*id];
  memcpy(c->data, p->data, vmc_shape_count(&p->shape) * sizeof(float));
  if (p->store == VMC_F32) return VMC_OK;
  /* p already holds codes times its scales: copy the scales, no re-check. */
  c->qscale = vmc_malloc_plain((size_t)p->n_qscale * sizeof *c->qscale);
  if (!c->qscale) return vmc_error(VMC_ERR_NOMEM, "parameter '%s'", p->name);
  memcpy(c->qscale, p->qscale, (size_t)p->n_qscale * sizeof *c->qscale);
  c->n_qscale = p->n_qscale;
  c->store = p->store;
  return VMC_OK;
}

static size_t qblock(const vmc_param *p) {
  return p->n_qscale > 1 ? vmc_shape_count(&p->shape) / (size_t)p->shape.d[0]
                         : vmc_shape_count(&p->shape);
}

int vmc_param_code(const vmc_param *p, size_t i) {
  const float s = p->qscale[i / qblock(p)];
  return (int)nearbyintf(p->data[i] / s);
}

vmc_status vmc_param_set_quantized(vmc_graph *g, int id, vmc_dtype t, const float *scale,
                                   int n_scale) {
  if (id < 0 || id >= g->n_params) return vmc_error(VMC_ERR_INVALID_ARG, "no parameter %d", id);
  vmc_param *p = &g->params[id];
  if (t == VMC_F32) {
    vmc_free(p->qscale);
    p->qscale = NULL;
    p->n_qscale = 0;
    p->store = VMC_F32;
    return VMC_OK;
  }
  if (t != VMC_S8 && t != VMC_S4)
    return vmc_error(VMC_ERR_INVALID_ARG, "parameter '%s': stored as %s (s8 or s4 expected)",
                     p->name, vmc_dtype_name(t));
  if (!scale || (n_scale != 1 && n_scale != p->shape.d[0]))
    return vmc_error(VMC_ERR_INVALID_ARG, "parameter '%s': %d scales for %d channels",
                     p->name, n_scale, p->shape.d[0]);
  const int qmax = t == VMC_S8 ? 127 : 7;
  for (int c = 0; c < n_scale; c++)
    if (!(scale[c] >= FLT_MIN && scale[c] <= FLT_MAX))
      return vmc_error(VMC_ERR_INVALID_ARG, "parameter '%s': scale %d is %g", p->name, c,
                       (double)scale[c]);
  float *q = vmc_malloc_plain((size_t)n_scale * sizeof *q);
  if (!q) return vmc_error(VMC_ERR_NOMEM, "parameter '%s'", p->name);
  memcpy(q, scale, (size_t)n_scale * sizeof *q);
  const vmc_param probe = {.shape = p->shape, .data = p->data, .n_qscale = n_scale, .qscale = q};
  const size_t n = vmc_shape_count(&p->shape), blk = qblock(&probe);
  for (size_t i = 0; i < n; i++) {
    const float s = q[i / blk];
    const int code = vmc_param_code(&probe, i);
    if (code < -qmax || code > qmax || (float)code * s != p->data[i]) {
      vmc_free(q);
      return vmc_error(VMC_ERR_INVALID_ARG, "parameter '%s': element %zu (%g) is not a %s code "
                       "times its scale %g", p->name, i, (double)p->data[i],
                       vmc_dtype_name(t), (double)s);
    }
  }
  vmc_free(p->qscale);
  p->qscale = q;
  p->n_qscale = n_scale;
  p->store = t;
  return VMC_OK;
}

void vmc_graph_zero_grads(vmc_graph *g) {
  for (int i = 0; i < g->n_params; i++)
    if (g->params[i].grad)
      memset(g->params[i].grad, 0, vmc_shape_count(&g->params[i].shape) * sizeof(float));
}

int vmc_graph_num_params(const vmc_graph *g) {
  size_t n = 0;
  for (int i = 0; i < g->n_params; i++)
    if (g->params[i].trainable) n += vmc_shape_count(&g->params[i].shape);
  return (int)n;
}

vmc_status vmc_graph_clone(const vmc_graph *g, vmc_graph **out) {
  vmc_graph *c;
  VMC_TRY(vmc_graph_create(g->in_shape.d[1], g->in_shape.d[2], g->in_shape.d[3], &c));
  vmc_status s = VMC_OK;
  for (int i = 0; i < g->n_params && !s; i++) {
    int id;
    s = vmc_graph_copy_param(c, &g->params[i], &id);
  }
  /* Every value but the input is a node output: re-adding the nodes in
   * order re-creates the same value ids. */
  for (int i = 0; i < g->n_nodes && !s; i++) {
    const vmc_node *n = &g->nodes[i];
    s = vmc_graph_add_node(c, n->op->name, n->name, n->in, n->n_in, n->attr, n->n_attr, n->param,
                           n->n_param, NULL);
  }
  if (!s) c->output = g->output;
  for (int i = 0; i < g->n_meta && !s; i++) s = vmc_graph_set_meta(c, g->meta[i].key, g->meta[i].value);
  if (s) {
    vmc_graph_free(c);
    return s;
  }
  *out = c;
  return VMC_OK;
}

/* ---- attributes ---- */
vmc_attr vmc_attr_int(const char *key, int32_t v) {
  vmc_attr a = {.i = v, .f = (float)v};
  snprintf(a.key, sizeof a.key, "%s", key);
  return a;
}
vmc_attr vmc_attr_float(const char *key, float v) {
  vmc_attr a = {.i = (int32_t)v, .f = v};
  snprintf(a.key, sizeof a.key, "%s", key);
  return a;
}
static const vmc_attr *find_attr(const vmc_node *n, const char *key) {
  for (int i = 0; i < n->n_attr; i++)
    if (!strcmp(n->attr[i].key, key)) return &n->attr[i];
  return NULL;
}
int vmc_node_attr_i(const vmc_node *n, const char *key, int def) {
  const vmc_attr *a = find_attr(n, key);
  return a ? a->i : def;
}
float vmc_node_attr_f(const vmc_node *n, const char *key, float def) {
  const vmc_attr *a = find_attr(n, key);
  return a ? a->f : def;
}
bool vmc_node_has_attr(const vmc_node *n, const char *key) { return find_attr(n, key) != NULL; }

vmc_status vmc_op_check_param(const vmc_graph *g, const vmc_node *n, int idx,
                              const vmc_shape *want) {
  const vmc_param *p = &g->params[n->param[idx]];
  if (!vmc_shape_eq(&p->shape, want)) {
    char a[64], b[64];
    return vmc_error(VMC_ERR_SHAPE, "node '%s': parameter '%s' has shape %s, expected %s",
                     n->name, p->name, vmc_shape_str(&p->shape, a, sizeof a),
                     vmc_shape_str(want, b, sizeof b));
  }
  return VMC_OK;
}

/* ---- metadata ---- */
const char *vmc_graph_meta(const vmc_graph *g, const char *key) {
  for (int i = 0; i < g->n_meta; i++)
    if (!strcmp(g->meta[i].key, key)) return g->meta[i].value;
  return NULL;
}

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = vmc_malloc_plain(n);
  if (d) memcpy(d, s, n);
  return d;
}

vmc_status vmc_graph_set_meta(vmc_graph *g, const char *key, const char *value) {
  char *v = dup_str(value);
  if (!v) return vmc_error(VMC_ERR_NOMEM, "metadata '%s'", key);
  for (int i = 0; i < g->n_meta; i++)
    if (!strcmp(g->meta[i].key, key)) {
      vmc_free(g->meta[i].value);
      g->meta[i].value = v;
      return VMC_OK;
    }
  vmc_status s = grow((void **)&g->meta, &g->cap_meta, g->n_meta + 1, sizeof *g->meta);
  char *k = s ? NULL : dup_str(key);
  if (!k) {
    vmc_free(v);
    return s ? s : vmc_error(VMC_ERR_NOMEM, "metadata '%s'", key);
  }
  g->meta[g->n_meta++] = (vmc_meta){k, v};
  return VMC_OK;
}

vmc_status vmc_graph_add_history(vmc_graph *g, const char *entry) {
  const char *old = vmc_graph_meta(g, "history");
  size_t n = (old ? strlen(old) + 1 : 0) + strlen(entry) + 1;
  char *buf = vmc_malloc_plain(n);
  if (!buf) return vmc_error(VMC_ERR_NOMEM, "history");
  snprintf(buf, n, "%s%s%s", old ? old : "", old ? "\n" : "", entry);
  vmc_status s = vmc_graph_set_meta(g, "history", buf);
  vmc_free(buf);
  return s;
}

vmc_status vmc_graph_stats(const vmc_graph *g, vmc_node_stats *per_node, uint64_t *total_macs,
                           uint64_t *total_params) {
  vmc_shape *sh = vmc_malloc_plain((size_t)g->n_values * sizeof *sh);
  if (!sh) return vmc_error(VMC_ERR_NOMEM, "stats");
  vmc_status s = vmc_graph_infer_shapes(g, 1, sh);
  uint64_t tm = 0, tp = 0;
  for (int i = 0; i < g->n_nodes && !s; i++) {
    const vmc_node *n = &g->nodes[i];
    vmc_shape in[VMC_MAX_INPUTS];
    for (int k = 0; k < n->n_in; k++) in[k] = sh[n->in[k]];
    uint64_t m = n->op->macs ? n->op->macs(n, in, &sh[n->out]) : 0, p = 0;
    for (int k = 0; k < n->n_param; k++) p += vmc_shape_count(&g->params[n->param[k]].shape);
    if (per_node) per_node[i] = (vmc_node_stats){m, p};
    tm += m;
    tp += p;
  }
  vmc_free(sh);
  if (total_macs) *total_macs = tm;
  if (total_params) *total_params = tp;
  return s;
}
