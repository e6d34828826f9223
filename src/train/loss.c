/* Softmax cross-entropy with optional label smoothing. */
#include "train/train.h"

#include <math.h>

float vmc_softmax_ce(const float *logits, const int *labels, int n, int k, float smoothing,
                     float *dlogits) {
  double total = 0;
  const float inv_n = 1.0f / (float)n, off = smoothing / (float)k, on = 1.0f - smoothing + off;
  for (int i = 0; i < n; i++) {
    const float *z = logits + (size_t)i * k;
    float mx = z[0];
    for (int j = 1; j < k; j++) mx = z[j] > mx ? z[j] : mx;
    double se = 0, sz = 0;
    for (int j = 0; j < k; j++) {
      se += exp((double)(z[j] - mx));
      sz += z[j];
    }
    double lse = mx + log(se);
    /* loss = -sum_j t_j log p_j with t = off everywhere + (on-off) at the label */
    total += (1.0 - smoothing) * (lse - z[labels[i]]) + off * (k * lse - sz);
    if (dlogits) {
      float *d = dlogits + (size_t)i * k;
      for (int j = 0; j < k; j++) {
        float p = (float)(exp((double)(z[j]) - lse));
        d[j] = (p - (j == labels[i] ? on : off)) * inv_n;
      }
    }
  }
  return (float)(total / n);
}
