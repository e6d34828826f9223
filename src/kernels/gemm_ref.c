/* fp32 GEMM, portable scalar reference: the contract every SIMD variant is
 * tested against.  C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, then
 * the epilogue (gemm.h).
 *
 * Each output element is a plain float sum over k in increasing order, then
 * scaled: C[i,j] = alpha * sum + beta * C[i,j], then + bias[i], + res[i,j],
 * clamped.  beta == 0 stores without reading C (so NaN/garbage in C is
 * ignored); alpha == 0 or K == 0 does not read A or B (C = beta * C), as in
 * reference BLAS.
 *
 * The reference's packed A is op(A) itself, row-major M x K, unscaled: alpha
 * stays in the pack and is applied after the sum as above, so a packed call
 * gives the unpacked call's bits.  Row-pointer B and packed A read their
 * elements in the same order as the plain call. */
#include "kernels/gemm.h"

#include <stddef.h>

static inline float epi_apply(float v, const vmc_gemm_epi *e, int i, int j) {
  if (e->bias) v = v + e->bias[i];
  if (e->res) v = v + e->res[(size_t)i * e->ldr + j];
  return v < e->lo ? e->lo : v > e->hi ? e->hi : v;
}

void vmc_sgemm_run__ref(const vmc_gemm_args *g) {
  const int M = g->M, N = g->N;
  if (M <= 0 || N <= 0) return;
  const vmc_sgemm_packed_a *pa = g->pa;
  const int K = pa ? pa->K : g->K;
  const float alpha = pa ? pa->alpha : g->alpha, beta = g->beta;
  const vmc_gemm_epi *e = g->epi;
  const int compute = K > 0 && alpha != 0.0f;
  /* Element strides of op(A) along (i, k) and op(B) along (k, j). */
  const float *A = !compute ? NULL : pa ? pa->data + (size_t)g->pa_row * K : g->A;
  const size_t a_si = pa ? (size_t)K : g->trans_a ? 1 : (size_t)g->lda;
  const size_t a_sk = pa ? 1 : g->trans_a ? (size_t)g->lda : 1;
  const size_t b_sk = g->trans_b ? 1 : (size_t)g->ldb;
  const size_t b_sj = g->trans_b ? (size_t)g->ldb : 1;
  for (int i = 0; i < M; i++) {
    float *c = g->C + (size_t)i * g->ldc;
    const float *a = compute ? A + (size_t)i * a_si : NULL;
    for (int j = 0; j < N; j++) {
      float v;
      if (compute) {
        float sum = 0.0f;
        if (g->brow && g->trans_b) {
          const float *b = g->brow[j] + g->boff;
          for (int k = 0; k < K; k++) sum += a[(size_t)k * a_sk] * b[k];
        } else if (g->brow) {
          for (int k = 0; k < K; k++)
            sum += a[(size_t)k * a_sk] * g->brow[k][g->boff + (size_t)j];
        } else {
          const float *b = g->B + (size_t)j * b_sj;
          for (int k = 0; k < K; k++) sum += a[(size_t)k * a_sk] * b[(size_t)k * b_sk];
        }
        v = beta == 0.0f ? alpha * sum : alpha * sum + beta * c[j];
      } else {
        v = beta == 0.0f ? 0.0f : beta == 1.0f ? c[j] : c[j] * beta;
      }
      c[j] = e ? epi_apply(v, e, i, j) : v;
    }
  }
}

void vmc_sgemm__ref(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc) {
  const vmc_gemm_args g = {.trans_a = trans_a, .trans_b = trans_b, .M = M, .N = N, .K = K,
                           .alpha = alpha, .A = A, .lda = lda, .B = B, .ldb = ldb,
                           .beta = beta, .C = C, .ldc = ldc};
  vmc_sgemm_run__ref(&g);
}

void vmc_sgemm_rows__ref(int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *const *brow, float beta, float *C,
                         int ldc) {
  const vmc_gemm_args g = {.trans_b = trans_b, .M = M, .N = N, .K = K, .alpha = alpha,
                           .A = A, .lda = lda, .brow = brow, .beta = beta, .C = C,
                           .ldc = ldc};
  vmc_sgemm_run__ref(&g);
}

size_t vmc_sgemm_pack_a_floats__ref(int M, int K) {
  return M > 0 && K > 0 ? (size_t)M * (size_t)K : 0;
}

void vmc_sgemm_pack_a__ref(int trans_a, int M, int K, float alpha, const float *A, int lda,
                           float *dst) {
  (void)alpha; /* applied after the sum, as vmc_sgemm__ref does */
  for (int i = 0; i < M; i++)
    for (int k = 0; k < K; k++)
      dst[(size_t)i * K + k] =
          trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
}
