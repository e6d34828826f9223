/* fp32 GEMM dispatch: picks the ISA variant once (vmc_isa_name()) and splits
 * vmc_sgemm_mt over OpenMP threads.
 *
 * Determinism: every variant reduces each C element over K in an order that
 * depends only on K (see gemm_avx512.c), so running the same variant on a
 * sub-block of rows or columns gives bit-identical elements.  vmc_sgemm_mt
 * therefore gives exactly vmc_sgemm's result for any thread count. */
#include "kernels/gemm.h"

#include <omp.h>
#include <stdatomic.h>
#include <string.h>

typedef void (*sgemm_fn)(int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);

/* Chosen once; a race between first callers stores the same pointer twice. */
static _Atomic(sgemm_fn) g_sgemm;

static sgemm_fn sgemm_variant(void) {
  sgemm_fn f = atomic_load_explicit(&g_sgemm, memory_order_acquire);
  if (f) return f;
  const char *isa = vmc_isa_name();
  if (strcmp(isa, "avx512") == 0)
    f = vmc_sgemm__avx512;
  else if (strcmp(isa, "avx2") == 0)
    f = vmc_sgemm__avx2;
  else
    f = vmc_sgemm__ref;
  atomic_store_explicit(&g_sgemm, f, memory_order_release);
  return f;
}

void vmc_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta,
               float *C, int ldc) {
  sgemm_variant()(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Below this many multiply-adds a thread team costs more than it saves: on
 * 2 Zen 4 cores, 2 threads break even near 110k (48^3) and win 1.3x at 64^3. */
#define MT_MIN_WORK (128.0 * 1024.0)

/* Block granularity of a variant: its register tile's rows, and 16 columns
 * (a whole 8x16 or 6x16 instance), so no thread's block ends in a ragged
 * micro-tile. */
static void tile_of(sgemm_fn f, int *mr, int *nr) {
  if (f == vmc_sgemm__avx512) {
    *mr = 8, *nr = 16;
  } else if (f == vmc_sgemm__avx2) {
    *mr = 6, *nr = 16;
  } else {
    *mr = 1, *nr = 1;
  }
}

void vmc_sgemm_mt(int trans_a, int trans_b, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc) {
  const sgemm_fn f = sgemm_variant();
  if (M <= 0 || N <= 0) return;
  const int nt = vmc_get_threads();
  if (nt <= 1 || omp_in_parallel() || (double)M * N * (K > 0 ? K : 1) < MT_MIN_WORK) {
    f(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  int mr, nr;
  tile_of(f, &mr, &nr);
  /* Split N (the usual long side of conv GEMMs) unless it has fewer tiles
   * than there are threads and M is longer. */
  const int by_n = (N + nr - 1) / nr >= nt || N >= M;
  const int len = by_n ? N : M, align = by_n ? nr : mr;
  const int units = (len + align - 1) / align;        /* whole tiles */
  const int per = (units + nt - 1) / nt;              /* tiles per block */
  const int block = per * align, nblocks = (units + per - 1) / per;
  if (nblocks <= 1) {
    f(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#pragma omp parallel for num_threads(nblocks) schedule(static, 1)
  for (int t = 0; t < nblocks; t++) {
    const int lo = t * block, n = len - lo < block ? len - lo : block;
    if (by_n) {
      const float *Bt = B + (trans_b ? (size_t)lo * ldb : (size_t)lo);
      f(trans_a, trans_b, M, n, K, alpha, A, lda, Bt, ldb, beta, C + lo, ldc);
    } else {
      const float *At = A + (trans_a ? (size_t)lo : (size_t)lo * lda);
      f(trans_a, trans_b, n, N, K, alpha, At, lda, B, ldb, beta,
        C + (size_t)lo * ldc, ldc);
    }
  }
}

/* Row-pointer B (gemm.h): the same ISA choice, tiles and split. */
typedef void (*sgemm_rows_off_fn)(int, int, int, int, float, const float *, int,
                                  const float *const *, size_t, float, float *, int);

static sgemm_rows_off_fn sgemm_rows_variant(int *mr, int *nr) {
  const sgemm_fn f = sgemm_variant();
  tile_of(f, mr, nr);
  if (f == vmc_sgemm__avx512) return vmc_sgemm_rows_off__avx512;
  if (f == vmc_sgemm__avx2) return vmc_sgemm_rows_off__avx2;
  return vmc_sgemm_rows_off__ref;
}

void vmc_sgemm_rows(int trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *const *brow, float beta, float *C, int ldc) {
  int mr, nr;
  sgemm_rows_variant(&mr, &nr)(trans_b, M, N, K, alpha, A, lda, brow, 0, beta, C, ldc);
}

void vmc_sgemm_rows_mt(int trans_b, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *const *brow, float beta, float *C,
                       int ldc) {
  int mr, nr;
  const sgemm_rows_off_fn f = sgemm_rows_variant(&mr, &nr);
  if (M <= 0 || N <= 0) return;
  const int nt = vmc_get_threads();
  if (nt <= 1 || omp_in_parallel() || (double)M * N * (K > 0 ? K : 1) < MT_MIN_WORK) {
    f(trans_b, M, N, K, alpha, A, lda, brow, 0, beta, C, ldc);
    return;
  }
  /* As vmc_sgemm_mt.  A column block reads the rows at an offset (trans_b
   * == 0) or from its own row pointers (trans_b == 1). */
  const int by_n = (N + nr - 1) / nr >= nt || N >= M;
  const int len = by_n ? N : M, align = by_n ? nr : mr;
  const int units = (len + align - 1) / align;
  const int per = (units + nt - 1) / nt;
  const int block = per * align, nblocks = (units + per - 1) / per;
  if (nblocks <= 1) {
    f(trans_b, M, N, K, alpha, A, lda, brow, 0, beta, C, ldc);
    return;
  }
#pragma omp parallel for num_threads(nblocks) schedule(static, 1)
  for (int t = 0; t < nblocks; t++) {
    const int lo = t * block, n = len - lo < block ? len - lo : block;
    if (by_n) {
      if (trans_b)
        f(trans_b, M, n, K, alpha, A, lda, brow + lo, 0, beta, C + lo, ldc);
      else
        f(trans_b, M, n, K, alpha, A, lda, brow, (size_t)lo, beta, C + lo, ldc);
    } else {
      f(trans_b, n, N, K, alpha, A + (size_t)lo * lda, lda, brow, 0, beta,
        C + (size_t)lo * ldc, ldc);
    }
  }
}
