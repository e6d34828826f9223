/* Graph rewrites that make a new graph (value ids change): nodes that are
 * the identity at inference removed, e.g. the batchnorms that
 * vmc_graph_fold_bn folded into their convolutions. */
#ifndef VMC_REBUILD_H
#define VMC_REBUILD_H

#include "graph/graph.h"

/* A copy of g without the nodes i where drop[i] is nonzero.  Each dropped
 * node must have exactly one input, and is taken to be the identity: every
 * reader of its output (the graph output included) reads its input instead.
 * Kept nodes stay in order with their names, attributes and parameters;
 * values keep their names (a dropped node's value disappears); parameters
 * that no kept node uses are left out, the others keep their order, names
 * and data; the metadata and the input shape are copied.  value_map (may be
 * NULL; g->n_values entries) gets each value's id in the copy (a dropped
 * node's value: the id of the value that replaces it). */
vmc_status vmc_graph_drop_nodes(const vmc_graph *g, const uint8_t *drop, vmc_graph **out,
                                int *value_map);

/* vmc_graph_fold_bn on a copy of g, then the folded batchnorms dropped: a
 * graph that computes what an inference plan of g computes, without
 * batchnorm nodes where they could be folded.  g is not changed.  *count
 * (may be NULL) gets the number of batchnorms folded. */
vmc_status vmc_graph_fold_bn_copy(const vmc_graph *g, vmc_graph **out, int *count);

#endif
