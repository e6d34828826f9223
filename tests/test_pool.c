/* The 2x2 stride-2 max pooling kernels (src/kernels/pool.h): every variant
 * the CPU runs against a naive loop of the op's rule (the first candidate,
 * then a later one only when greater), values and argmax indices bit for
 * bit, over planes with odd sizes (a last row and column left out), rows
 * shorter and longer than a vector, many ties, signed zeros and NaNs; and
 * nothing written past the outputs. */
#include "kernels/pool.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void naive(const float *x, int h, int w, float *y, int32_t *arg) {
  for (int oy = 0; oy < h / 2; oy++)
    for (int ox = 0; ox < w / 2; ox++) {
      float best = 0;
      int bi = -1;
      for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
          const int at = (2 * oy + i) * w + 2 * ox + j;
          if (bi < 0 || x[at] > best) best = x[at], bi = at;
        }
      y[oy * (w / 2) + ox] = best;
      arg[oy * (w / 2) + ox] = bi;
    }
}

static void check(vmc_maxpool2_fn f, const char *name) {
  static const int hw[][2] = {{2, 2}, {3, 3}, {2, 31}, {4, 5},  {6, 7},   {7, 33},
                              {28, 28}, {10, 10}, {14, 66}, {5, 100}, {1, 8}, {9, 2}};
  vmc_rng r;
  vmc_rng_seed(&r, 7);
  for (size_t t = 0; t < sizeof hw / sizeof *hw; t++) {
    const int h = hw[t][0], w = hw[t][1], n = (h / 2) * (w / 2), pad = 20;
    float *x = malloc((size_t)h * w * sizeof *x), *y = malloc((size_t)(n + pad) * sizeof *y);
    float *yw = malloc((size_t)(n + 1) * sizeof *yw);
    int32_t *a = malloc((size_t)(n + pad) * sizeof *a), *aw = malloc((size_t)(n + 1) * sizeof *aw);
    REQUIRE(x && y && yw && a && aw);
    for (int i = 0; i < h * w; i++) {
      const unsigned u = (unsigned)(vmc_rng_u64(&r) >> 33);
      x[i] = (float)((int)(u % 7) - 3); /* many ties */
      if (u % 53 == 0) x[i] = -0.0f;
      if (u % 61 == 0) x[i] = NAN;
    }
    naive(x, h, w, yw, aw);
    for (int with_arg = 0; with_arg < 2; with_arg++) {
      memset(y, 0x7b, (size_t)(n + pad) * sizeof *y);
      memset(a, 0x7b, (size_t)(n + pad) * sizeof *a);
      f(x, h, w, y, with_arg ? a : NULL);
      if (memcmp(y, yw, (size_t)n * sizeof *y) || (with_arg && memcmp(a, aw, (size_t)n * sizeof *a)))
        vmc_test_fail(__FILE__, __LINE__, "%s %dx%d%s: differs from the naive pooling", name, h, w,
                      with_arg ? " with arg" : "");
      for (int i = n; i < n + pad; i++) {
        uint32_t yb, ab;
        memcpy(&yb, y + i, 4), memcpy(&ab, a + i, 4);
        if (yb != 0x7b7b7b7bu || ab != 0x7b7b7b7bu) {
          vmc_test_fail(__FILE__, __LINE__, "%s %dx%d: wrote past its %d outputs", name, h, w, n);
          break;
        }
      }
    }
    free(x), free(y), free(yw), free(a), free(aw);
  }
}

TEST(maxpool2_ref) { check(vmc_maxpool2__ref, "ref"); }

TEST(maxpool2_avx2) {
  if (!strcmp(vmc_isa_name(), "ref")) SKIP("the CPU lacks AVX2");
  check(vmc_maxpool2__avx2, "avx2");
}

TEST(maxpool2_avx512) {
  if (strcmp(vmc_isa_name(), "avx512")) SKIP("the CPU lacks AVX-512");
  check(vmc_maxpool2__avx512, "avx512");
}
