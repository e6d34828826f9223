/* Learning-rate schedules, evaluated per step. */
#include "train/train.h"

#include <math.h>

float vmc_sched_lr(const vmc_train_config *c, long step, long steps_per_epoch, long total_steps) {
  const double pi = 3.14159265358979323846;
  double t = total_steps > 0 ? (double)step / (double)total_steps : 0;
  switch (c->sched) {
  case VMC_SCHED_STEP: {
    long epoch = steps_per_epoch > 0 ? step / steps_per_epoch : 0;
    int k = c->step_size > 0 ? (int)(epoch / c->step_size) : 0;
    return c->lr * powf(c->gamma, (float)k);
  }
  case VMC_SCHED_COSINE:
    return (float)(0.5 * c->lr * (1 + cos(pi * t)));
  case VMC_SCHED_ONECYCLE: {
    /* PyTorch OneCycleLR (cos annealing): lr/25 -> lr over warmup, then
     * down to lr/(25*1e4). */
    double w = c->warmup_frac > 0 && c->warmup_frac < 1 ? c->warmup_frac : 0.3;
    double lo = c->lr / 25.0, end = lo / 1e4;
    if (t < w) return (float)(lo + (c->lr - lo) * 0.5 * (1 - cos(pi * t / w)));
    double u = (t - w) / (1 - w);
    return (float)(end + (c->lr - end) * 0.5 * (1 + cos(pi * u)));
  }
  default:
    return c->lr;
  }
}
