/* 256-bit helpers shared by the kernels built with AVX2 (the AVX2 variants
 * and the 8-lane code of the AVX-512 ones): lane masks, partial stores,
 * shuffles. */
#ifndef VMC_KERNELS_YMM_H
#define VMC_KERNELS_YMM_H

#include <immintrin.h>

/* Lanes l < n (any n), as _mm256_maskload_ps takes them. */
static inline __m256i ymm_lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Lanes first <= l < end. */
static inline __m256i ymm_span(int first, int end) {
  return _mm256_andnot_si256(ymm_lanes(first), ymm_lanes(end));
}

/* p[0 .. n) = v's first n lanes (all 8 for n >= 8, none for n <= 0), in
 * 16-, 8- and 4-byte stores: a masked store (vmaskmovps) takes about 12
 * cycles on AMD's Zen 2 and 3, where a masked load is as cheap as a load.
 * Integer stores, so that p may point to floats or 32-bit integers. */
static inline void ymm_store_first(void *p, __m256 v, int n) {
  const __m256i vi = _mm256_castps_si256(v);
  if (n >= 8) {
    _mm256_storeu_si256((__m256i *)p, vi);
    return;
  }
  if (n <= 0) return;
  char *c = p;
  __m128i x = _mm256_castsi256_si128(vi);
  if (n & 4) {
    _mm_storeu_si128((__m128i *)c, x);
    x = _mm256_extracti128_si256(vi, 1);
    c += 16;
  }
  if (n & 2) {
    _mm_storel_epi64((__m128i *)c, x);
    x = _mm_unpackhi_epi64(x, x);
    c += 8;
  }
  if (n & 1) _mm_storeu_si32(c, x);
}

/* The even and the odd floats of lo's 8 then hi's 8: one in-lane shuffle
 * and one 64-bit permute each. */
static inline void ymm_evens_odds(__m256 lo, __m256 hi, __m256 *even, __m256 *odd) {
  const __m256 e = _mm256_shuffle_ps(lo, hi, 0x88), o = _mm256_shuffle_ps(lo, hi, 0xdd);
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xd8));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xd8));
}

/* In-register transpose of 8 rows of 8 floats. */
static inline __attribute__((always_inline)) void ymm_transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* a0 b0 a1 b1 ... a7 b7: its first and its second 8 floats */
#define YMM_ZIP_LO(a, b) \
  _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x20)
#define YMM_ZIP_HI(a, b) \
  _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x31)

#endif
