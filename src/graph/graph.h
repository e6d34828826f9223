/* The model graph: named activation values, nodes in topological order,
 * named parameters, string metadata. */
#ifndef VMC_GRAPH_H
#define VMC_GRAPH_H

#include "core/core.h"

#define VMC_NAME_MAX 64
#define VMC_MAX_INPUTS 8
#define VMC_MAX_PARAMS 4
#define VMC_MAX_ATTRS 12
#define VMC_ATTR_KEY_MAX 16

struct vmc_op;

typedef struct vmc_attr {
  char key[VMC_ATTR_KEY_MAX];
  int32_t i;
  float f;
} vmc_attr;

typedef struct vmc_param {
  char name[VMC_NAME_MAX];
  vmc_shape shape;
  float *data;   /* vmc_alloc'd, owned by the graph */
  float *grad;   /* NULL until vmc_graph_alloc_grads */
  int trainable; /* 0: a buffer (BatchNorm running statistics) */
  /* How files store it.  VMC_F32 (the default), or VMC_S8 / VMC_S4 for a
   * quantized weight: data[i] == code[i] * qscale[c] exactly, with c the
   * index along d[0] (n_qscale == d[0], per channel) or 0 (n_qscale == 1,
   * per tensor) and the codes symmetric (zero point 0) in -127..127 / -7..7.
   * The .vmc writer stores the codes and scales (4x / ~8x smaller), the
   * reader restores data bit for bit.  Set with vmc_param_set_quantized. */
  vmc_dtype store;
  int n_qscale;
  float *qscale; /* vmc_malloc_plain'd, owned by the graph, or NULL */
} vmc_param;

typedef struct vmc_value {
  char name[VMC_NAME_MAX];
} vmc_value;

typedef struct vmc_node {
  const struct vmc_op *op;
  char name[VMC_NAME_MAX];
  int n_in;
  int in[VMC_MAX_INPUTS]; /* value ids */
  int out;                /* value id */
  int n_attr;
  vmc_attr attr[VMC_MAX_ATTRS];
  int n_param;
  int param[VMC_MAX_PARAMS]; /* param ids, role fixed by the op */
} vmc_node;

typedef struct vmc_meta {
  char *key, *value;
} vmc_meta;

struct vmc_graph {
  vmc_value *values;
  int n_values, cap_values;
  vmc_node *nodes; /* topological order */
  int n_nodes, cap_nodes;
  vmc_param *params;
  int n_params, cap_params;
  vmc_meta *meta;
  int n_meta, cap_meta;
  int input;           /* value id of the image input */
  int output;          /* value id of the logits */
  vmc_shape in_shape;  /* [1, C, H, W] */
};

vmc_status vmc_graph_create(int in_c, int in_h, int in_w, vmc_graph **out);
/* Value id by name, or -1. */
int vmc_graph_find_value(const vmc_graph *g, const char *name);
int vmc_graph_find_param(const vmc_graph *g, const char *name);
/* Node index by name (names are unique: each names its output value), or -1. */
int vmc_graph_find_node(const vmc_graph *g, const char *name);
vmc_status vmc_graph_add_value(vmc_graph *g, const char *name, int *id);
/* Adds a parameter of the given shape (zeroed) and returns its id. */
vmc_status vmc_graph_add_param(vmc_graph *g, const char *name, vmc_shape shape,
                               int trainable, int *id);
/* Appends a node; inputs must exist (so order is topological).  Creates the
 * output value named after the node.  attrs/params are copied. */
vmc_status vmc_graph_add_node(vmc_graph *g, const char *op_name, const char *name,
                              const int *in, int n_in, const vmc_attr *attrs,
                              int n_attr, const int *params, int n_param, int *out_value);
/* Check every node: inputs precede it, op exists, attrs and param shapes are
 * valid; compute every value's shape for batch n into shapes (n_values). */
vmc_status vmc_graph_infer_shapes(const vmc_graph *g, int batch, vmc_shape *shapes);
vmc_status vmc_graph_alloc_grads(vmc_graph *g);
/* Marks parameter id as stored quantized (see vmc_param.store): t is VMC_S8
 * or VMC_S4 with n_scale scales (the param's d[0], or 1), or VMC_F32 (then
 * scale/n_scale are ignored and the scales dropped).  Checks that every
 * element is an in-range code times its scale; VMC_ERR_INVALID_ARG
 * otherwise, and the param is unchanged. */
vmc_status vmc_param_set_quantized(vmc_graph *g, int id, vmc_dtype t, const float *scale,
                                   int n_scale);
/* Adds a copy of p (data and storage, not the gradient) to g as *id. */
vmc_status vmc_graph_copy_param(vmc_graph *g, const vmc_param *p, int *id);
/* The code of element i of a quantized parameter (data / scale, exact). */
int vmc_param_code(const vmc_param *p, size_t i);
void vmc_graph_zero_grads(vmc_graph *g);
/* Deep copy (weights included, grads not). */
vmc_status vmc_graph_clone(const vmc_graph *g, vmc_graph **out);

/* Attributes. */
vmc_attr vmc_attr_int(const char *key, int32_t v);
vmc_attr vmc_attr_float(const char *key, float v);
int vmc_node_attr_i(const vmc_node *n, const char *key, int def);
float vmc_node_attr_f(const vmc_node *n, const char *key, float def);
bool vmc_node_has_attr(const vmc_node *n, const char *key);

/* Per-layer statistics, for `vmc info`. */
typedef struct vmc_node_stats {
  uint64_t macs;   /* multiply-accumulates per image */
  uint64_t params; /* scalars in the node's parameters */
} vmc_node_stats;
vmc_status vmc_graph_stats(const vmc_graph *g, vmc_node_stats *per_node,
                           uint64_t *total_macs, uint64_t *total_params);

#endif
