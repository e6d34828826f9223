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

/* GEMM whose B operand is given by row pointers, for im2col-free convolution
 * (each row of the virtual im2col matrix is a slice of a zero-padded image):
 *   C[M,N] = alpha * A[M,K] * op(B) + beta * C, A row-major (lda), not
 *   transposed, and
 *   trans_b == 0: op(B)[k][n] = brow[k][n]  (K pointers, rows readable for N floats)
 *   trans_b == 1: op(B)[k][n] = brow[n][k]  (N pointers, rows readable for K floats)
 * Rows need no alignment and may overlap; no row is read past its stated
 * length.  beta == 0 ignores C's old contents (NaN-safe), as vmc_sgemm.
 * Each SIMD variant reduces over K exactly as vmc_sgemm's variant of the same
 * ISA does on the materialised B (same tiles, blocks and FMA order), so the
 * two agree bit for bit; vmc_sgemm_rows_mt equals vmc_sgemm_rows bit for bit
 * at any thread count. */
void vmc_sgemm_rows(int trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *const *brow, float beta, float *C, int ldc);
void vmc_sgemm_rows_mt(int trans_b, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *const *brow, float beta, float *C, int ldc);

/* The variants, same contract; exposed for tests and benchmarks. */
void vmc_sgemm_rows__ref(int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *const *brow, float beta, float *C,
                         int ldc);
void vmc_sgemm_rows__avx2(int trans_b, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *const *brow, float beta, float *C,
                          int ldc);
void vmc_sgemm_rows__avx512(int trans_b, int M, int N, int K, float alpha,
                            const float *A, int lda, const float *const *brow,
                            float beta, float *C, int ldc);

/* Internal, for vmc_sgemm_rows_mt's column split: as the variants, with every
 * row pointer advanced by boff floats (brow[r] + boff is row r). */
void vmc_sgemm_rows_off__ref(int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *const *brow,
                             size_t boff, float beta, float *C, int ldc);
void vmc_sgemm_rows_off__avx2(int trans_b, int M, int N, int K, float alpha,
                              const float *A, int lda, const float *const *brow,
                              size_t boff, float beta, float *C, int ldc);
void vmc_sgemm_rows_off__avx512(int trans_b, int M, int N, int K, float alpha,
                                const float *A, int lda, const float *const *brow,
                                size_t boff, float beta, float *C, int ldc);

#endif
