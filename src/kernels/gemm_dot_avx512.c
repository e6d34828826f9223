/* vmc_sgemm_dot (gemm.h), AVX-512: C[m][n] += sum_k A[m][k] * brow[n][k],
 * both operands contiguous along k, read in place: no packing and no
 * transposes.  A 4x4 tile of C keeps 16 zmm accumulators (16 float lanes
 * each, lane l summing the products k = l mod 16 with FMAs in increasing k);
 * a ragged k tail is a masked load (zeros).  After the last k the 16
 * accumulators are reduced together by a fixed shuffle-and-add network into
 * one zmm of the 16 sums, each added to its C element.  Ragged tiles repeat
 * their last row of A or B (the extra sums are not stored).
 *
 * This is the weight gradient of a convolution (dW += dY x^T over the
 * output pixels), where the packed GEMM would transpose the whole virtual
 * im2col matrix for every image. */
#include "kernels/gemm.h"

#include <immintrin.h>

#define TM 4 /* rows of A per tile */
#define TN 4 /* rows of B per tile */

#if defined(__clang__)
#define UNROLL_FULL _Pragma("unroll")
#else
#define UNROLL_FULL _Pragma("GCC unroll 16")
#endif

/* v[i] reduced to its 16-lane sum, lane i of the result. */
static inline __attribute__((always_inline)) __m512 sum16(const __m512 v[16]) {
  __m512 w[8], x[4], y[2];
  UNROLL_FULL
  for (int i = 0; i < 8; i++) /* per 128-bit block: pairs of v[2i], v[2i+1] */
    w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  UNROLL_FULL
  for (int i = 0; i < 4; i++) /* per block: the block sums of v[4i..4i+3] */
    x[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xee));
  UNROLL_FULL
  for (int i = 0; i < 2; i++) /* blocks 0+2 and 1+3 */
    y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xee));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88),
                       _mm512_shuffle_f32x4(y[0], y[1], 0xdd));
}

static inline __attribute__((always_inline)) void step(const float *const a[TM],
                                                       const float *const b[TN], int k,
                                                       __mmask16 m, __m512 acc[TM * TN]) {
  __m512 av[TM], bv[TN];
  UNROLL_FULL
  for (int i = 0; i < TM; i++) av[i] = _mm512_maskz_loadu_ps(m, a[i] + k);
  UNROLL_FULL
  for (int j = 0; j < TN; j++) bv[j] = _mm512_maskz_loadu_ps(m, b[j] + k);
  UNROLL_FULL
  for (int i = 0; i < TM; i++)
    UNROLL_FULL
    for (int j = 0; j < TN; j++) acc[i * TN + j] = _mm512_fmadd_ps(av[i], bv[j], acc[i * TN + j]);
}

void vmc_sgemm_dot__avx512(int M, int N, int K, const float *A, int lda,
                           const float *const *brow, float *C, int ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const int kf = K - K % 16;
  const __mmask16 tail = (__mmask16)((1u << (K % 16)) - 1u);
  for (int m0 = 0; m0 < M; m0 += TM)
    for (int n0 = 0; n0 < N; n0 += TN) {
      const float *a[TM], *b[TN];
      for (int i = 0; i < TM; i++) a[i] = A + (size_t)(m0 + i < M ? m0 + i : M - 1) * lda;
      for (int j = 0; j < TN; j++) b[j] = brow[n0 + j < N ? n0 + j : N - 1];
      __m512 acc[TM * TN];
      UNROLL_FULL
      for (int i = 0; i < TM * TN; i++) acc[i] = _mm512_setzero_ps();
      for (int k = 0; k < kf; k += 16) step(a, b, k, (__mmask16)0xffff, acc);
      if (tail) step(a, b, kf, tail, acc);
      const __m512 s = sum16(acc);
      const __mmask8 nm = (__mmask8)((1u << (N - n0 < TN ? N - n0 : TN)) - 1u);
      const __m128 r[TM] = {_mm512_extractf32x4_ps(s, 0), _mm512_extractf32x4_ps(s, 1),
                            _mm512_extractf32x4_ps(s, 2), _mm512_extractf32x4_ps(s, 3)};
      for (int i = 0; i < TM && m0 + i < M; i++) {
        float *c = C + (size_t)(m0 + i) * ldc + n0;
        _mm_mask_storeu_ps(c, nm, _mm_add_ps(_mm_maskz_loadu_ps(nm, c), r[i]));
      }
    }
}
