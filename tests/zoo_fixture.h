/* Models and images the quantization and plan tests share. */
#ifndef VMC_TEST_ZOO_FIXTURE_H
#define VMC_TEST_ZOO_FIXTURE_H

#include "data/data.h"
#include "graph/graph.h"

/* A zoo model for 1x28x28 images and 10 classes (weights from build_seed)
 * whose BatchNorm statistics and affine terms are random (bn_seed): gamma
 * and the variance in [0.5, 1.5), beta and the mean in [-0.5, 0.5), so that
 * folding has something to fold.  NULL on failure. */
vmc_graph *test_zoo_model(const char *name, uint64_t build_seed, uint64_t bn_seed);

/* n 28x28 images of one smooth blob each (centre in [6, 22), radius in
 * [rad_min, rad_min + 6)) plus uniform noise up to `noise` grey levels.
 * Labels: random (shape_labels 0) or from the blob's quadrant and size
 * (shape_labels 1: a task a small model can learn).  NULL on failure. */
vmc_dataset *test_blobs(int n, uint64_t seed, float rad_min, float noise, int shape_labels);

/* The node called name, or NULL. */
const vmc_node *test_node_of(const vmc_graph *g, const char *name);

/* How many nodes of g run op. */
int test_count_op(const vmc_graph *g, const char *op);

/* Logits (n x 10, malloc'd) of images [0, n) of d through an inference plan
 * of g at batch n; NULL on failure. */
float *test_plan_logits(vmc_graph *g, const vmc_dataset *d, int n);

#endif
