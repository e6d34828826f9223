/* One op, run directly through its op table (no plan): a one-node graph
 * with the given input shapes, attributes and parameters; buffers for x, y,
 * dy, dx, the op's state and per-thread scratch, each allocated at its exact
 * size so the sanitizers see any overrun.  Used by test_ops_grad.c (finite
 * differences) and test_ops_torch.c (PyTorch fixtures). */
#ifndef VMC_TEST_OP_HARNESS_H
#define VMC_TEST_OP_HARNESS_H

#include "graph/op.h"

typedef struct vmc_oph_spec {
  const char *op;
  vmc_mode mode;
  int n_in;
  vmc_shape in[VMC_MAX_INPUTS]; /* d[0] is the batch */
  int n_attr;
  vmc_attr attr[VMC_MAX_ATTRS];
  int n_param;
  vmc_shape pshape[VMC_MAX_PARAMS];
  int pbuffer[VMC_MAX_PARAMS]; /* 1: not trainable (no gradient), e.g. BN running stats */
  int nthreads;                /* 0: vmc_get_threads() */
  unsigned no_dx;              /* bit k: pass dx[k] = NULL (an input that needs no gradient) */
} vmc_oph_spec;

typedef struct vmc_oph {
  vmc_graph *g;
  const vmc_op *op;
  int node; /* index in g->nodes */
  vmc_mode mode;
  int n_in, batch, nthreads;
  vmc_shape xs[VMC_MAX_INPUTS], ys;
  size_t xn[VMC_MAX_INPUTS], yn; /* element counts */
  float *x[VMC_MAX_INPUTS], *dx[VMC_MAX_INPUTS], *y, *dy;
  void *state;
  size_t state_bytes;
  uint8_t *scratch;
  size_t scratch_bytes; /* per thread */
  vmc_rng rng;
  uint64_t rng_seed; /* forward reseeds rng with this: repeatable dropout masks */
  int n_param;
  int param[VMC_MAX_PARAMS]; /* ids in g->params */
} vmc_oph;

/* Builds the graph, checks the spec with the op's infer, allocates every
 * buffer (zeroed).  Parameters start at zero. */
vmc_status vmc_oph_create(const vmc_oph_spec *s, vmc_oph **out);
void vmc_oph_free(vmc_oph *h);

/* Parameter k of the node: data, gradient (NULL for a buffer), count. */
float *vmc_oph_param(vmc_oph *h, int k);
float *vmc_oph_grad(vmc_oph *h, int k);
size_t vmc_oph_param_count(const vmc_oph *h, int k);

/* Runs forward over the first `batch` images (<= planned; 0: all). */
void vmc_oph_forward(vmc_oph *h, int batch);
/* Zeroes dx and the parameter gradients, then runs backward from h->dy over
 * the images of the last forward. */
void vmc_oph_backward(vmc_oph *h);
/* Backward without zeroing first: adds to dx and the parameter gradients,
 * as a plan does when a value feeds several nodes. */
void vmc_oph_backward_accumulate(vmc_oph *h);

/* Fills n floats with uniform values in [lo, hi) from rng. */
void vmc_oph_fill(vmc_rng *rng, float *p, size_t n, float lo, float hi);

#endif
