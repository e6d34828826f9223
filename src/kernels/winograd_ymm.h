/* 256-bit shuffles shared by winograd_avx2.c and the 8-lane transforms of
 * winograd_avx512.c (both built with AVX2). */
#ifndef VMC_KERNELS_WINOGRAD_YMM_H
#define VMC_KERNELS_WINOGRAD_YMM_H

#include <immintrin.h>

/* The even and the odd floats of lo's 8 then hi's 8: one in-lane shuffle
 * and one 64-bit permute each. */
static inline void ymm_evens_odds(__m256 lo, __m256 hi, __m256 *even, __m256 *odd) {
  const __m256 e = _mm256_shuffle_ps(lo, hi, 0x88), o = _mm256_shuffle_ps(lo, hi, 0xdd);
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xd8));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xd8));
}

/* a0 b0 a1 b1 ... a7 b7: its first and its second 8 floats */
#define YMM_ZIP_LO(a, b) \
  _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x20)
#define YMM_ZIP_HI(a, b) \
  _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x31)

#endif
