/* fp32 pooling kernels: the reference and the dispatch (pool.h). */
#include "kernels/pool.h"

#include <stdatomic.h>
#include <string.h>

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

static _Atomic(vmc_maxpool2_fn) g_maxpool2;

vmc_maxpool2_fn vmc_maxpool2_best(void) {
  vmc_maxpool2_fn f = atomic_load_explicit(&g_maxpool2, memory_order_acquire);
  if (f) return f;
  const char *isa = vmc_isa_name();
  f = !strcmp(isa, "avx512") ? vmc_maxpool2__avx512
      : !strcmp(isa, "avx2") ? vmc_maxpool2__avx2
                             : vmc_maxpool2__ref;
  atomic_store_explicit(&g_maxpool2, f, memory_order_release);
  return f;
}
