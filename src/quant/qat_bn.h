/* Quantization-aware training with BatchNorm still learning (qat.c,
 * vmc_qat_opts.freeze_bn_epoch > 0), as PyTorch's ConvBn QAT modules do:
 * the graph keeps its batchnorm nodes, each conv whose batchnorm the PTQ
 * graph folded sees the weights fq(w * a) / a, a = gamma / sqrt(var + eps)
 * per output channel (the running variance, fold.h's a), so that the
 * batchnorm re-normalises the quantized conv's output with batch statistics
 * until the freeze, and with its running statistics afterwards (attribute
 * frozen, ops/batchnorm.c) — then conv + batchnorm compute exactly the
 * folded conv with the weights fq(w * a) the integer runtime uses. */
#ifndef VMC_QAT_BN_H
#define VMC_QAT_BN_H

#include "graph/graph.h"

/* The graph QAT trains before the fold: q's nodes in order (the PTQ graph
 * of g: batchnorms folded, fakequant nodes inserted) with g's parameters
 * and, right after each conv of q whose batchnorm of g the PTQ pass folded,
 * that batchnorm (attribute frozen 0 added), which the conv's readers in q
 * now read.  q's metadata is copied.  bn_of (may be NULL; set for the nodes
 * of *out, which has at most q->n_nodes + g->n_nodes nodes) gets for each
 * conv node of *out the index of its batchnorm in *out, or -1. */
vmc_status vmc_qat_bn_graph(const vmc_graph *g, const vmc_graph *q, vmc_graph **out, int *bn_of);

/* a[c] = gamma[c] / sqrt(running_var[c] + eps) of batchnorm node bn of g,
 * rounded as fold.h's fold rounds it (a[c] = gamma[c] * (1 / sqrtf(var + eps))). */
void vmc_qat_bn_scale(const vmc_graph *g, int bn, float *a);

/* Sets the attribute frozen of every batchnorm node of g that has it. */
void vmc_qat_bn_freeze(vmc_graph *g, int frozen);

#endif
