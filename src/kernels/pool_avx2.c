/* fp32 pooling kernels, AVX2 (pool.h): 8 outputs of a row per step, the
 * even and odd input columns of 16 picked by in-lane shuffles and put in
 * order by a 64-bit permutation, the candidates compared in the scalar
 * rule's order (greater-than, ordered). */
#include "kernels/pool.h"

#include <immintrin.h>

#include "kernels/ymm.h"

void vmc_maxpool2__avx2(const float *x, int h, int w, float *y, int32_t *arg) {
  const int oh = h / 2, ow = w / 2;
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i one = _mm256_set1_epi32(1), down = _mm256_set1_epi32(w);
  for (int oy = 0; oy < oh; oy++) {
    const float *r0 = x + (size_t)2 * oy * w, *r1 = r0 + w;
    float *yr = y + (size_t)oy * ow;
    for (int ox = 0; ox < ow; ox += 8) {
      const int n = ow - ox;
      const __m256i k0 = ymm_lanes(2 * n), k1 = ymm_lanes(2 * n - 8);
      const __m256 a0 = _mm256_maskload_ps(r0 + 2 * ox, k0), a1 = _mm256_maskload_ps(r0 + 2 * ox + 8, k1);
      const __m256 b0 = _mm256_maskload_ps(r1 + 2 * ox, k0), b1 = _mm256_maskload_ps(r1 + 2 * ox + 8, k1);
      __m256 c[4];
      ymm_evens_odds(a0, a1, &c[0], &c[1]);
      ymm_evens_odds(b0, b1, &c[2], &c[3]);
      __m256 best = c[0], gt[4];
      for (int t = 1; t < 4; t++) {
        gt[t] = _mm256_cmp_ps(c[t], best, _CMP_GT_OQ);
        best = _mm256_blendv_ps(best, c[t], gt[t]);
      }
      ymm_store_first(yr + ox, best, n);
      if (arg) {
        const __m256i i0 = _mm256_add_epi32(_mm256_set1_epi32(2 * oy * w + 2 * ox), even);
        const __m256i cand[4] = {i0, _mm256_add_epi32(i0, one), _mm256_add_epi32(i0, down),
                                 _mm256_add_epi32(_mm256_add_epi32(i0, down), one)};
        __m256 bi = _mm256_castsi256_ps(cand[0]);
        for (int t = 1; t < 4; t++) bi = _mm256_blendv_ps(bi, _mm256_castsi256_ps(cand[t]), gt[t]);
        ymm_store_first(arg + (size_t)oy * ow + ox, bi, n);
      }
    }
  }
}
