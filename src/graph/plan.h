/* A plan: a graph bound to a batch size and mode, every buffer in one arena. */
#ifndef VMC_PLAN_H
#define VMC_PLAN_H

#include "graph/op.h"

struct vmc_plan {
  vmc_graph *g;
  int batch;
  vmc_mode mode;
  int nthreads;
  vmc_shape *shape; /* per value */
  float **act;      /* per value */
  float **grad;     /* per value, training only (NULL for the input) */
  void **state;     /* per node */
  vmc_act *fused;   /* per node: activation fused into it */
  uint8_t *skip;    /* per node: a relu folded into its producer */
  int *alias;       /* per value: value whose buffers it shares, or -1 */
  uint8_t *padded;  /* per value: its layout (op.h: 0 plain, VMC_PAD_*), or NULL */
  int *res;         /* per node: value added to its output (op.h), -1; or NULL */
  uint8_t *zero_grad; /* per value: backward zeroes its gradient buffer */
  uint8_t *dx_set;    /* per node, bit k: the node writes dx[k] (=) */
  uint8_t *scratch;
  size_t scratch_bytes; /* per thread */
  vmc_arena arena;
  vmc_rng rng;
  int last_n; /* images in the last forward */
  /* Inference (see plan.c): the plan's own folded copy of the graph, and
   * per-thread batch-1 plans on it when batch > 1 (then act[] holds only
   * the input and the output). */
  vmc_graph *owned;
  struct vmc_plan **sub;
  int n_sub;
  double *prof; /* vmc_plan_profile: 2 x nodes seconds (forward, backward), or NULL */
};

/* Backward from the gradient of the logits (batch x classes, already in
 * p->grad[g->output]).  Accumulates into the graph's parameter grads. */
vmc_status vmc_plan_backward(vmc_plan *p);
/* Gradient buffer of the logits. */
float *vmc_plan_output_grad(vmc_plan *p);
const vmc_shape *vmc_plan_value_shape(const vmc_plan *p, int value);

/* Per-node timing.  vmc_plan_profile(p, 1) zeroes and starts the counters
 * (sub-plans each get their own, so threads never share one): every later
 * forward and backward adds each node's wall time to its node; 0 stops and
 * frees them.  The nodes are those of vmc_plan_graph(p), the plan's own
 * folded copy for inference; a node folded into another gets no time. */
vmc_status vmc_plan_profile(vmc_plan *p, int on);
const vmc_graph *vmc_plan_graph(const vmc_plan *p);
/* Seconds counted for node i, forward (backward: 1) summed over the
 * sub-plans (so thread-seconds where images ran on several threads). */
double vmc_plan_node_seconds(const vmc_plan *p, int i, int backward);
/* Multiply-adds of node i per image (0 for ops that do not count them). */
uint64_t vmc_plan_node_macs(const vmc_plan *p, int i);
/* How node i's forward runs in this plan (vmc_op.kernel), or NULL. */
const char *vmc_plan_node_kernel(const vmc_plan *p, int i);

/* An inference plan that runs g as given, layer by layer over the whole
 * batch: no BatchNorm folding, no private copy of the weights (recreate it
 * after changing them), no shared activation memory, a relu still folded
 * into its producer.  After vmc_plan_forward, vmc_plan_value(p, v) holds
 * value v for the images run, for every v that a node reads (a folded
 * relu's value: the clamped output).  For calibration observers. */
vmc_status vmc_plan_create_observable(vmc_graph *g, int batch, vmc_plan **out);
/* The same with no relu folded: a conv's output value is its output before
 * the relu (bias correction compares those). */
vmc_status vmc_plan_create_observable_unfused(vmc_graph *g, int batch, vmc_plan **out);
/* The activation buffer of value v (batch x its shape), NULL for a bad id.
 * Only a plan from vmc_plan_create_observable keeps every value. */
const float *vmc_plan_value(const vmc_plan *p, int value);

#endif
