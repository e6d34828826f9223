/* fp32 GEMM, portable scalar reference: the contract every SIMD variant is
 * tested against.  C[M,N] = alpha * op(A) * op(B) + beta * C, row-major.
 *
 * Each output element is a plain float sum over k in increasing order, then
 * scaled: C[i,j] = alpha * sum + beta * C[i,j].  beta == 0 stores without
 * reading C (so NaN/garbage in C is ignored); alpha == 0 or K == 0 does not
 * read A or B (C = beta * C), as in reference BLAS. */
#include "kernels/gemm.h"

#include <stddef.h>

static void scale_c(int M, int N, float beta, float *C, int ldc) {
  for (int i = 0; i < M; i++) {
    float *c = C + (size_t)i * ldc;
    if (beta == 0.0f) {
      for (int j = 0; j < N; j++) c[j] = 0.0f;
    } else if (beta != 1.0f) {
      for (int j = 0; j < N; j++) c[j] *= beta;
    }
  }
}

void vmc_sgemm__ref(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  /* Element strides of op(A) along (i, k) and op(B) along (k, j). */
  const size_t a_si = trans_a ? 1 : (size_t)lda, a_sk = trans_a ? (size_t)lda : 1;
  const size_t b_sk = trans_b ? 1 : (size_t)ldb, b_sj = trans_b ? (size_t)ldb : 1;
  for (int i = 0; i < M; i++) {
    float *c = C + (size_t)i * ldc;
    const float *a = A + (size_t)i * a_si;
    for (int j = 0; j < N; j++) {
      const float *b = B + (size_t)j * b_sj;
      float sum = 0.0f;
      for (int k = 0; k < K; k++) sum += a[(size_t)k * a_sk] * b[(size_t)k * b_sk];
      c[j] = beta == 0.0f ? alpha * sum : alpha * sum + beta * c[j];
    }
  }
}

/* Row-pointer B (gemm.h): the same per-element order as vmc_sgemm__ref, so
 * the two agree bit for bit on a materialised B. */
void vmc_sgemm_rows_off__ref(int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *const *brow,
                             size_t boff, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  for (int i = 0; i < M; i++) {
    float *c = C + (size_t)i * ldc;
    const float *a = A + (size_t)i * lda;
    for (int j = 0; j < N; j++) {
      float sum = 0.0f;
      if (trans_b) {
        const float *b = brow[j] + boff;
        for (int k = 0; k < K; k++) sum += a[k] * b[k];
      } else {
        for (int k = 0; k < K; k++) sum += a[k] * brow[k][boff + (size_t)j];
      }
      c[j] = beta == 0.0f ? alpha * sum : alpha * sum + beta * c[j];
    }
  }
}

void vmc_sgemm_rows__ref(int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *const *brow, float beta, float *C,
                         int ldc) {
  vmc_sgemm_rows_off__ref(trans_b, M, N, K, alpha, A, lda, brow, 0, beta, C, ldc);
}
