/* fp32 GEMM.  Row-major: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C,
 * op(X) = X or X^T.  lda/ldb/ldc are row strides of the matrices as stored.
 * beta == 0 ignores C's old contents (NaN-safe).
 *
 * vmc_sgemm runs on the calling thread (ops parallelise over images around
 * it); vmc_sgemm_mt splits M/N blocks over vmc_get_threads() threads.
 * Both pick the best ISA variant once (see vmc_isa_name()).
 *
 * Every entry has an _epi form taking a fused epilogue (vmc_gemm_epi, NULL =
 * none), and the A operand can be packed once (vmc_sgemm_pack_a, for
 * weights) and passed to the _packed forms. */
#ifndef VMC_GEMM_H
#define VMC_GEMM_H

#include "core/core.h"

#include <math.h>

/* Fused epilogue, applied as each C element is written for the last time
 * (in the micro-kernel's write-back of the last K slice):
 *   C[m][n] = clamp(alpha * sum_k op(A)[m][k] op(B)[k][n] + beta * C[m][n]
 *                   + bias[m] + res[m * ldr + n], lo, hi)
 * evaluated in that order, each addition rounded to float.  bias == NULL or
 * res == NULL drops its term; clamp(x) = x < lo ? lo : x > hi ? hi : x, so
 * NaN passes through.  No clamp: lo = -INFINITY, hi = INFINITY (a zeroed
 * struct clamps to [0, 0]; start from VMC_GEMM_EPI_NONE).  ReLU is lo = 0,
 * ReLU6 lo = 0, hi = 6.  res must not overlap C (C holds partial sums until
 * the last K slice); accumulate into C with beta = 1 instead.  All variants
 * and entries apply it identically, so the bit-identity promises below hold
 * with any epilogue. */
typedef struct vmc_gemm_epi {
  const float *bias; /* M floats, one per row of C, or NULL */
  const float *res;  /* M rows of N floats, ldr apart, or NULL */
  int ldr;
  float lo, hi; /* clamp bounds, lo <= hi, not NaN */
} vmc_gemm_epi;
#define VMC_GEMM_EPI_NONE ((vmc_gemm_epi){NULL, NULL, 0, -INFINITY, INFINITY})

void vmc_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta,
               float *C, int ldc);
void vmc_sgemm_mt(int trans_a, int trans_b, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc);
void vmc_sgemm_epi(int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta,
                   float *C, int ldc, const vmc_gemm_epi *epi);
void vmc_sgemm_epi_mt(int trans_a, int trans_b, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta,
                      float *C, int ldc, const vmc_gemm_epi *epi);

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
void vmc_sgemm_rows_epi(int trans_b, int M, int N, int K, float alpha, const float *A,
                        int lda, const float *const *brow, float beta, float *C, int ldc,
                        const vmc_gemm_epi *epi);
void vmc_sgemm_rows_epi_mt(int trans_b, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *const *brow, float beta,
                           float *C, int ldc, const vmc_gemm_epi *epi);
/* Thread t's share of the _mt form split over a team of nt threads, for a
 * caller that is thread t of a parallel region of its own (a threaded op
 * with work of its own before or after the GEMM): once every thread of the
 * team has run its part, C is the _mt form's, bit for bit.  A thread may
 * have no share (a small GEMM splits into fewer blocks than threads). */
void vmc_sgemm_rows_epi_part(int trans_b, int M, int N, int K, float alpha, const float *A,
                             int lda, const float *const *brow, float beta, float *C, int ldc,
                             const vmc_gemm_epi *epi, int t, int nt);

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

/* Accumulating GEMM whose operands are both contiguous along K (a conv's
 * weight gradient, dW += dY x^T over the output pixels):
 *   C[m][n] += sum_k A[m][k] * brow[n][k]
 * A row-major (lda), brow N pointers each readable for K floats (they may
 * overlap).  Runs on the calling thread.  Where the dispatched variant is
 * AVX-512 and K >= VMC_SGEMM_DOT_MIN_K, both operands are read in place
 * (vmc_sgemm_dot__avx512, which has its own fixed summation order: not
 * vmc_sgemm's bits); otherwise this is exactly
 * vmc_sgemm_rows(1, M, N, K, 1, A, lda, brow, 1, C, ldc).  Either way the
 * result depends only on the arguments and the ISA. */
#define VMC_SGEMM_DOT_MIN_K 128 /* below it, a packed tile is repaid (bench_gemm) */
void vmc_sgemm_dot(int M, int N, int K, const float *A, int lda, const float *const *brow,
                   float *C, int ldc);
/* Whether vmc_sgemm_dot reads its operands in place for this K (else it is
 * the rows GEMM, which packs brow). */
int vmc_sgemm_dot_in_place(int K);
void vmc_sgemm_dot__avx512(int M, int N, int K, const float *A, int lda,
                           const float *const *brow, float *C, int ldc);

/* ---- Pre-packed A (weights) ---------------------------------------------
 * alpha * op(A) packed once, in the layout of one variant (its register tile
 * and K blocking), so that a plan packs conv weights at build time and each
 * run skips the copy.  The _packed entries give bit for bit the result of the
 * unpacked call of the same variant with the same alpha, trans_a and A (the
 * variant the pack was made for runs, whatever vmc_isa_name() says now).
 * A pack is read-only once made: any number of threads may use it at once. */
enum { VMC_GEMM_REF, VMC_GEMM_AVX2, VMC_GEMM_AVX512 };

typedef struct vmc_sgemm_packed_a {
  int M, K;       /* op(A) is M x K */
  float alpha;    /* folded into the panels (the reference applies it last) */
  int variant;    /* VMC_GEMM_*: the layout */
  size_t bytes;   /* size of data */
  float *data;    /* 64-byte aligned panels */
  void *owned;    /* allocation freed by vmc_sgemm_packed_a_free, or NULL */
} vmc_sgemm_packed_a;

/* Bytes a pack of an M x K op(A) takes in the dispatched variant's layout
 * (for a caller-owned buffer, e.g. a plan's arena). */
size_t vmc_sgemm_pack_a_bytes(int M, int K);
/* Packs alpha * op(A) (op(A) = trans_a ? A^T : A, M x K, lda as vmc_sgemm)
 * for the dispatched variant into buf (64-byte aligned, at least
 * vmc_sgemm_pack_a_bytes(M, K) bytes), or, if buf is NULL, into memory it
 * allocates (free with vmc_sgemm_packed_a_free).  M, K >= 0. */
vmc_status vmc_sgemm_pack_a(int trans_a, int M, int K, float alpha, const float *A,
                            int lda, void *buf, size_t buf_bytes, vmc_sgemm_packed_a *out);
/* The same for a given variant (VMC_GEMM_*; tests and benchmarks).  Fails
 * with VMC_ERR_UNSUPPORTED if the CPU lacks it. */
size_t vmc_sgemm_pack_a_bytes_variant(int variant, int M, int K);
vmc_status vmc_sgemm_pack_a_variant(int variant, int trans_a, int M, int K, float alpha,
                                    const float *A, int lda, void *buf, size_t buf_bytes,
                                    vmc_sgemm_packed_a *out);
/* Frees what vmc_sgemm_pack_a allocated (nothing if buf was the caller's);
 * NULL-safe. */
void vmc_sgemm_packed_a_free(vmc_sgemm_packed_a *p);

/* C[M,N] = op(A) * op(B) + beta * C with op(A) = the pack (M = pa->M, K =
 * pa->K; its alpha included), then the epilogue (NULL = none). */
void vmc_sgemm_packed(const vmc_sgemm_packed_a *pa, int trans_b, int N, const float *B,
                      int ldb, float beta, float *C, int ldc, const vmc_gemm_epi *epi);
void vmc_sgemm_packed_mt(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                         const float *B, int ldb, float beta, float *C, int ldc,
                         const vmc_gemm_epi *epi);
/* The same with B given by row pointers, as vmc_sgemm_rows. */
void vmc_sgemm_rows_packed(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                           const float *const *brow, float beta, float *C, int ldc,
                           const vmc_gemm_epi *epi);
void vmc_sgemm_rows_packed_mt(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                              const float *const *brow, float beta, float *C, int ldc,
                              const vmc_gemm_epi *epi);
void vmc_sgemm_rows_packed_part(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                                const float *const *brow, float beta, float *C, int ldc,
                                const vmc_gemm_epi *epi, int t, int nt); /* as _epi_part */

/* ---- Internal: one call of a variant, every option --------------------
 * The entries above fill this and run one variant on it (the _mt ones on a
 * sub-block per thread).  op(A) is pa's rows pa_row .. pa_row + M - 1 when pa
 * is set (trans_a, alpha, A, lda unused; pa_row a multiple of the variant's
 * tile rows), else (trans_a, alpha, A, lda).  op(B) is read through brow (each
 * row pointer advanced by boff floats; trans_a must be 0) when brow is set,
 * else from (B, ldb).  c_slice > 0 (AVX2 and AVX-512 only, which sum each
 * element per K slice of vmc_sgemm_slice_k floats, see gemm.c) stores each
 * slice's sums alone, set, at C + slice * c_slice: beta and epi unused. */
typedef struct vmc_gemm_args {
  int trans_a, trans_b, M, N, K;
  float alpha;
  const float *A;
  int lda;
  const vmc_sgemm_packed_a *pa;
  int pa_row;
  const float *B;
  int ldb;
  const float *const *brow;
  size_t boff;
  float beta;
  float *C;
  int ldc;
  const vmc_gemm_epi *epi;
  size_t c_slice;
} vmc_gemm_args;

void vmc_sgemm_run__ref(const vmc_gemm_args *g);
void vmc_sgemm_run__avx2(const vmc_gemm_args *g);
void vmc_sgemm_run__avx512(const vmc_gemm_args *g);
int vmc_sgemm_slice_k__avx2(void);
int vmc_sgemm_slice_k__avx512(void);

/* Each variant's packed layout: floats it takes, and the packing. */
size_t vmc_sgemm_pack_a_floats__ref(int M, int K);
size_t vmc_sgemm_pack_a_floats__avx2(int M, int K);
size_t vmc_sgemm_pack_a_floats__avx512(int M, int K);
void vmc_sgemm_pack_a__ref(int trans_a, int M, int K, float alpha, const float *A, int lda,
                           float *dst);
void vmc_sgemm_pack_a__avx2(int trans_a, int M, int K, float alpha, const float *A, int lda,
                            float *dst);
void vmc_sgemm_pack_a__avx512(int trans_a, int M, int K, float alpha, const float *A,
                              int lda, float *dst);

#endif
