/* winograd.h's transforms with AVX2 (the body: winograd_simd.h), 8 tiles
 * per vector: the even and odd columns of 16 from two masked loads, one
 * in-lane shuffle and one 64-bit permute each.  Partial rows of output are
 * stored in pieces (ymm_store_first: masked stores are slow on AMD cores).
 * F(4x4, 3x3): winograd4_simd.h. */
#include "kernels/winograd.h"
#include "kernels/ymm.h"

#include <immintrin.h>

#include "kernels/winograd_ymm_ops.h"
typedef __m256i vmask;
#define FN(name) name##__avx2

static inline void spans(int at, int first, int n, vmask m[2]) {
  m[0] = ymm_span(first - at, n - at);
  m[1] = ymm_span(first - at - 8, n - at - 8);
}

static inline void columns(const float *s, const float *s8, const vmask m[2], vec *even,
                           vec *odd) {
  ymm_evens_odds(_mm256_maskload_ps(s, m[0]), _mm256_maskload_ps(s8, m[1]), even, odd);
}


static inline void put(float *y, const float *res, int n, vec v, vec lo, vec hi) {
  if (res) v = _mm256_add_ps(v, n >= 8 ? _mm256_loadu_ps(res) : _mm256_maskload_ps(res, ymm_lanes(n)));
  v = _mm256_min_ps(hi, _mm256_max_ps(lo, v)); /* v < lo ? lo : v > hi ? hi : v */
  ymm_store_first(y, v, n);
}

#include "kernels/winograd_simd.h"

typedef __m128i qmask;
static inline qmask qmask_of(int first, int n) {
  const __m128i l = _mm_setr_epi32(0, 1, 2, 3);
  return _mm_andnot_si128(_mm_cmpgt_epi32(_mm_set1_epi32(first), l),
                          _mm_cmpgt_epi32(_mm_set1_epi32(n), l));
}
static inline __m128 qload(const float *p, qmask m) { return _mm_maskload_ps(p, m); }
typedef __m256i ymask;
static inline ymask ymask_of(int first, int n) { return ymm_span(first, n); }
static inline __m256 yload(const float *p, ymask m) { return _mm256_maskload_ps(p, m); }
#include "kernels/winograd4_simd.h"

const vmc_wino_kernels vmc_wino_kernels__avx2 = {
    "avx2",           wino_input__avx2,  wino_output__avx2, grad_output__avx2,
    wino_input4__avx2, wino_output4__avx2};
