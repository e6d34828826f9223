/* fp32 pooling kernels: the reference and the dispatch (pool.h). */
#include "kernels/pool.h"

void vmc_maxpool2__ref(const float *x, int h, int w, float *y, int32_t *arg) {
  const int oh = h / 2, ow = w / 2;
  for (int oy = 0; oy < oh; oy++)
    for (int ox = 0; ox < ow; ox++) {
      const int i0 = 2 * oy * w + 2 * ox;
      const int at[4] = {i0, i0 + 1, i0 + w, i0 + w + 1};
      float best = x[i0];
      int bi = i0;
      for (int t = 1; t < 4; t++)
        if (x[at[t]] > best) best = x[at[t]], bi = at[t];
      y[oy * ow + ox] = best;
      if (arg) arg[oy * ow + ox] = bi;
    }
}

vmc_maxpool2_fn vmc_maxpool2_best(void) {
  static const vmc_maxpool2_fn f[] = {vmc_maxpool2__ref, vmc_maxpool2__avx2, vmc_maxpool2__avx512};
  return f[vmc_isa_level()];
}
