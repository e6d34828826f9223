/* SGD (momentum, Nesterov, weight decay) and AdamW, matching PyTorch's
 * torch.optim.SGD and torch.optim.AdamW update rules. */
#include "train/train.h"

#include <math.h>

void vmc_optim_free(vmc_optimizer *o) {
  if (!o) return;
  for (int i = 0; o->m && i < o->g->n_params; i++) vmc_free(o->m[i]);
  for (int i = 0; o->v && i < o->g->n_params; i++) vmc_free(o->v[i]);
  vmc_free(o->m);
  vmc_free(o->v);
  vmc_free(o);
}

vmc_status vmc_optim_create(vmc_graph *g, const vmc_train_config *c, vmc_optimizer **out) {
  *out = NULL;
  if (!(c->lr > 0 && c->lr < 100) || !(c->momentum >= 0 && c->momentum < 1) ||
      !(c->weight_decay >= 0 && c->weight_decay < 1))
    return vmc_error(VMC_ERR_INVALID_ARG, "lr must be in (0,100), momentum and weight decay in [0,1)");
  if (c->optimizer == VMC_OPT_ADAMW &&
      (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1) || !(c->eps > 0)))
    return vmc_error(VMC_ERR_INVALID_ARG, "AdamW betas must be in [0,1) and eps > 0");
  vmc_optimizer *o = vmc_malloc_plain(sizeof *o);
  if (!o) return vmc_error(VMC_ERR_NOMEM, "optimizer");
  o->g = g;
  o->kind = c->optimizer;
  o->momentum = c->momentum;
  o->weight_decay = c->weight_decay;
  o->nesterov = c->nesterov;
  o->beta1 = c->beta1;
  o->beta2 = c->beta2;
  o->eps = c->eps;
  vmc_status s = vmc_graph_alloc_grads(g);
  o->m = vmc_malloc_plain((size_t)g->n_params * sizeof *o->m);
  o->v = vmc_malloc_plain((size_t)g->n_params * sizeof *o->v);
  if (!s && (!o->m || !o->v)) s = vmc_error(VMC_ERR_NOMEM, "optimizer");
  for (int i = 0; i < g->n_params && !s; i++) {
    if (!g->params[i].trainable) continue;
    size_t n = vmc_shape_count(&g->params[i].shape) * sizeof(float);
    o->m[i] = vmc_alloc(n);
    if (o->kind == VMC_OPT_ADAMW) o->v[i] = vmc_alloc(n);
    if (!o->m[i] || (o->kind == VMC_OPT_ADAMW && !o->v[i]))
      s = vmc_error(VMC_ERR_NOMEM, "optimizer state of '%s'", g->params[i].name);
  }
  if (s) {
    vmc_optim_free(o);
    return s;
  }
  *out = o;
  return VMC_OK;
}

void vmc_optim_step(vmc_optimizer *o, float lr) {
  vmc_graph *g = o->g;
  o->step++;
  const float wd = o->weight_decay, mom = o->momentum;
  const float bc1 = 1.0f - powf(o->beta1, (float)o->step), bc2 = 1.0f - powf(o->beta2, (float)o->step);
  for (int i = 0; i < g->n_params; i++) {
    vmc_param *p = &g->params[i];
    if (!p->trainable || !p->grad) continue;
    const size_t n = vmc_shape_count(&p->shape);
    float *w = p->data, *gr = p->grad, *m = o->m[i], *v = o->v[i];
    if (o->kind == VMC_OPT_SGD) {
      for (size_t k = 0; k < n; k++) {
        float d = gr[k] + wd * w[k];
        if (mom > 0) {
          /* PyTorch's first step sets buf = d; m starts at 0, so mom*0 + d. */
          m[k] = o->step == 1 ? d : mom * m[k] + d;
          d = o->nesterov ? d + mom * m[k] : m[k];
        }
        w[k] -= lr * d;
      }
    } else {
      const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
      for (size_t k = 0; k < n; k++) {
        w[k] -= lr * wd * w[k];
        m[k] = b1 * m[k] + (1 - b1) * gr[k];
        v[k] = b2 * v[k] + (1 - b2) * gr[k] * gr[k];
        w[k] -= lr * (m[k] / bc1) / (sqrtf(v[k] / bc2) + eps);
      }
    }
  }
}
