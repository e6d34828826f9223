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

/* Hooks for compression techniques.  All may be NULL. */
typedef struct vmc_train_hooks {
  void *user;
  /* Before forward of each step. */
  vmc_status (*before_step)(void *user, vmc_plan *p, long step);
  /* After forward: may add to the loss and to dlogits (batch x classes,
   * already holding the CE gradient).  Returns the extra loss. */
  float (*extra_loss)(void *user, vmc_plan *p, const float *x, const int *labels, int n,
                      float *dlogits);
  /* After the optimizer step (e.g. re-apply pruning masks). */
  vmc_status (*after_step)(void *user, vmc_plan *p, long step);
} vmc_train_hooks;

typedef struct vmc_epoch_result {
  int epoch;
  float lr, train_loss, train_acc, test_loss, test_acc;
  double seconds, images_per_sec;
} vmc_epoch_result;

typedef struct vmc_train_result {
  int epochs_run;
  vmc_epoch_result last;
  double total_seconds;
  float best_test_acc;
} vmc_train_result;

/* Per-epoch callback (logging, JSON lines).  May be NULL. */
typedef void (*vmc_epoch_cb)(void *user, const vmc_epoch_result *r);

vmc_status vmc_train(vmc_graph *g, const struct vmc_dataset *train, const struct vmc_dataset *test,
                     const vmc_train_config *c, const vmc_train_hooks *hooks, vmc_epoch_cb cb,
                     void *cb_user, vmc_train_result *result);

typedef struct vmc_eval_result {
  int n;
  float loss, accuracy;
  double seconds;
} vmc_eval_result;
/* Accuracy and loss on the first `limit` images (0: all). */
vmc_status vmc_evaluate(vmc_graph *g, const struct vmc_dataset *d, int batch, int limit,
                        int show_progress, vmc_eval_result *r);

#endif
