/* fp32 pooling kernels, AVX-512F (pool.h): 16 outputs of a row per step,
 * the even and odd input columns of 32 gathered from two loads by a
 * two-source permutation, the four candidates compared in the scalar
 * rule's order (greater-than, ordered: a NaN never replaces the best). */
#include "kernels/pool.h"

#include <immintrin.h>

static inline __mmask16 first(int n) {
  return (__mmask16)(n >= 16 ? 0xffffu : n <= 0 ? 0u : (1u << n) - 1u);
}

void vmc_maxpool2__avx512(const float *x, int h, int w, float *y, int32_t *arg) {
  const int oh = h / 2, ow = w / 2;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i one = _mm512_set1_epi32(1), down = _mm512_set1_epi32(w);
  for (int oy = 0; oy < oh; oy++) {
    const float *r0 = x + (size_t)2 * oy * w, *r1 = r0 + w;
    float *yr = y + (size_t)oy * ow;
    for (int ox = 0; ox < ow; ox += 16) {
      const int n = ow - ox;
      const __mmask16 k = first(n), k0 = first(2 * n), k1 = first(2 * n - 16);
      const __m512 a0 = _mm512_maskz_loadu_ps(k0, r0 + 2 * ox);
      const __m512 a1 = _mm512_maskz_loadu_ps(k1, r0 + 2 * ox + 16);
      const __m512 b0 = _mm512_maskz_loadu_ps(k0, r1 + 2 * ox);
      const __m512 b1 = _mm512_maskz_loadu_ps(k1, r1 + 2 * ox + 16);
      const __m512 c[4] = {_mm512_permutex2var_ps(a0, even, a1), _mm512_permutex2var_ps(a0, odd, a1),
                           _mm512_permutex2var_ps(b0, even, b1), _mm512_permutex2var_ps(b0, odd, b1)};
      __m512 best = c[0];
      __mmask16 gt[4] = {0};
      for (int t = 1; t < 4; t++) {
        gt[t] = _mm512_cmp_ps_mask(c[t], best, _CMP_GT_OQ);
        best = _mm512_mask_blend_ps(gt[t], best, c[t]);
      }
      _mm512_mask_storeu_ps(yr + ox, k, best);
      if (arg) {
        const __m512i i0 = _mm512_add_epi32(_mm512_set1_epi32(2 * oy * w + 2 * ox), even);
        __m512i bi = i0;
        bi = _mm512_mask_blend_epi32(gt[1], bi, _mm512_add_epi32(i0, one));
        bi = _mm512_mask_blend_epi32(gt[2], bi, _mm512_add_epi32(i0, down));
        bi = _mm512_mask_blend_epi32(gt[3], bi, _mm512_add_epi32(_mm512_add_epi32(i0, down), one));
        _mm512_mask_storeu_epi32(arg + (size_t)oy * ow + ox, k, bi);
      }
    }
  }
}
