/* Inference-time graph rewrites that keep value ids: BatchNorm folded into
 * the convolution that feeds it. */
#ifndef VMC_FOLD_H
#define VMC_FOLD_H

#include "graph/graph.h"

/* For every batchnorm node whose input is the output of a conv2d used by
 * nothing else (and not the graph output), fold the normalisation with the
 * running statistics into that conv, in place:
 *   a = gamma / sqrt(var + eps),  W' = a * W (per output channel),
 *   b' = a * b + (beta - a * mean)        (b = 0 when the conv had no bias;
 *                                          a bias parameter is then added).
 * folded_into[i] (n_nodes entries) is set to the conv node a batchnorm node
 * i was folded into, or -1.  Afterwards the graph is meant for inference
 * with those batchnorm nodes skipped: their output equals their input.
 * Returns the number of folded nodes in *count (may be NULL). */
vmc_status vmc_graph_fold_bn(vmc_graph *g, int *folded_into, int *count);

#endif
