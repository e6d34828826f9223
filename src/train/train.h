/* Training: loss, optimizers, LR schedules, the loop with hooks, evaluation. */
#ifndef VMC_TRAIN_H
#define VMC_TRAIN_H

#include "graph/plan.h"

struct vmc_dataset;

/* Mean softmax cross-entropy over n rows of k logits, with label smoothing
 * eps (targets (1-eps) on the label + eps/k everywhere, as PyTorch).
 * dlogits (may be NULL) receives d(mean loss)/d(logits). */
float vmc_softmax_ce(const float *logits, const int *labels, int n, int k, float smoothing,
                     float *dlogits);

/* Optimizer state: one buffer per trainable parameter (SGD momentum, or
 * AdamW first/second moments), updates identical to PyTorch's SGD and AdamW. */
typedef struct vmc_optimizer {
  vmc_graph *g;
  vmc_optimizer_kind kind;
  float momentum, weight_decay, beta1, beta2, eps;
  int nesterov;
  long step;
  float **m, **v; /* per param (NULL where not trainable) */
} vmc_optimizer;

vmc_status vmc_optim_create(vmc_graph *g, const vmc_train_config *c, vmc_optimizer **out);
void vmc_optim_step(vmc_optimizer *o, float lr);
void vmc_optim_free(vmc_optimizer *o);

/* Learning rate at a global step (0-based) of total steps. */
float vmc_sched_lr(const vmc_train_config *c, long step, long steps_per_epoch, long total_steps);

/* An inference engine for vmc_evaluate_with: input holds batch x c x h x w
 * normalised floats, output batch x classes logits after forward(self, n)
 * of the first n images (a float plan, or the integer runtime). */
typedef struct vmc_infer_fn {
  void *self;
  int batch, classes;
  int c, h, w;
  float *input;
  const float *output;
  vmc_status (*forward)(void *self, int n);
} vmc_infer_fn;

/* vmc_evaluate_logits on an engine (d's images must be c x h x w). */
vmc_status vmc_evaluate_with(const vmc_infer_fn *f, const struct vmc_dataset *d, int limit,
                             int show_progress, vmc_eval_result *r, float **logits);

#endif
