/* fp32 GEMM.  Row-major: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C,
 * op(X) = X or X^T.  lda/ldb/ldc are row strides of the matrices as stored.
 * beta == 0 ignores C's old contents (NaN-safe).
 *
 * vmc_sgemm runs on the calling thread (ops parallelise over images around
 * it); vmc_sgemm_mt splits M/N blocks over vmc_get_threads() threads.
 * Both pick the best ISA variant once (see vmc_isa_name()). */
#ifndef VMC_GEMM_H
#define VMC_GEMM_H

#include "core/core.h"

void vmc_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta,
               float *C, int ldc);
void vmc_sgemm_mt(int trans_a, int trans_b, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc);

/* The variants, same contract; exposed for tests and benchmarks. */
void vmc_sgemm__ref(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc);
void vmc_sgemm__avx2(int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta,
                     float *C, int ldc);
void vmc_sgemm__avx512(int trans_a, int trans_b, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta,
                       float *C, int ldc);

#endif
