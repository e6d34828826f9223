/* Cross-layer equalization (Nagel et al., "Data-Free Quantization Through
 * Weight Equalization and Bias Correction", ICCV 2019), a pass on a graph
 * whose BatchNorms are folded (vmc_graph_fold_bn_copy).
 *
 * A pair is a conv2d A whose output is read only by a relu, whose output is
 * read only by a conv2d B (any groups for either; relu6 is not a pair: it
 * does not commute with scaling).  relu(x / s) = relu(x) / s for s > 0, so
 * dividing A's output channel i (its weights and bias) by s_i and
 * multiplying B's weights that read channel i by s_i leaves the model's
 * function unchanged.  With r1 = max |A's weights of channel i| and r2 =
 * max |B's weights reading channel i|, s_i = sqrt(r1 / r2) gives both the
 * range sqrt(r1 r2): per-tensor weight quantization no longer spends its
 * grid on one wide channel.  A conv that is B of one pair and A of the next
 * (a chain) moves twice: `iterations` sweeps over the pairs (the result
 * converges in a few).  Channels with a zero range keep s = 1. */
#ifndef VMC_EQUALIZE_H
#define VMC_EQUALIZE_H

#include "graph/graph.h"

typedef struct vmc_equalize_report {
  int pairs;                /* conv-relu-conv pairs equalized */
  double spread_before;     /* mean over the pairs' weights of max/min channel range */
  double spread_after;
} vmc_equalize_report;

/* Equalizes g in place (weights and biases of the pairs' convs; stored
 * quantization marks on them are dropped).  iterations >= 1.  A graph with
 * batchnorm nodes between the convs simply has no pairs there.  report may
 * be NULL. */
vmc_status vmc_equalize(vmc_graph *g, int iterations, vmc_equalize_report *report);

#endif
