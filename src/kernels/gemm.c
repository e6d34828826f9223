/* fp32 GEMM dispatch: picks the ISA variant once (vmc_isa_name()), splits the
 * _mt entries over OpenMP threads, and packs A for the _packed entries.
 *
 * Determinism: every variant reduces each C element over K in an order that
 * depends only on K (see gemm_avx512.c), so running the same variant on a
 * sub-block of rows or columns gives bit-identical elements, and the
 * epilogue is per element; a split over K (run_ksplit) keeps each slice's
 * chain and adds the chains in order.  The _mt entries therefore give
 * exactly the single-thread result for any thread count. */
#include "kernels/gemm.h"

#include <omp.h>
#include <string.h>

typedef void (*run_fn)(const vmc_gemm_args *);

static const run_fn k_run[] = {vmc_sgemm_run__ref, vmc_sgemm_run__avx2,
                               vmc_sgemm_run__avx512};
_Static_assert(sizeof k_run / sizeof k_run[0] == VMC_GEMM_AVX512 + 1,
               "one run function per VMC_GEMM_* variant");

static const int k_variant_isa[] = {VMC_ISA_REF, VMC_ISA_AVX2, VMC_ISA_AVX512};

static int dispatched_variant(void) {
  static const int v[] = {VMC_GEMM_REF, VMC_GEMM_AVX2, VMC_GEMM_AVX512};
  return v[vmc_isa_level()];
}

/* Whether the CPU runs a variant (VMC_ISA may have chosen a lower one). */
static int cpu_runs(int variant) {
  return variant >= VMC_GEMM_REF && variant <= VMC_GEMM_AVX512 &&
         vmc_cpu_runs(k_variant_isa[variant]);
}

/* Below this many multiply-adds a thread team costs more than it saves: on
 * 2 Zen 4 cores, 2 threads break even near 110k (48^3) and win 1.3x at 64^3. */
#define MT_MIN_WORK (128.0 * 1024.0)

/* Block granularity of a variant: its register tile's rows, and 16 columns
 * (a whole 8x16 or 6x16 instance), so no thread's block ends in a ragged
 * micro-tile. */
static void tile_of(int variant, int *mr, int *nr) {
  if (variant == VMC_GEMM_AVX512) {
    *mr = 8, *nr = 16;
  } else if (variant == VMC_GEMM_AVX2) {
    *mr = 6, *nr = 16;
  } else {
    *mr = 1, *nr = 1;
  }
}

/* How g splits over nt threads: in whole tiles of the longer of M and N
 * (each thread then reads its share of the larger operand and all of the
 * smaller one), unless that side has fewer tiles than there are threads and
 * the other has more. */
typedef struct {
  int by_n;    /* blocks of columns, else of rows */
  int len;     /* N or M */
  int block;   /* its length per block */
  int nblocks; /* blocks, at most nt */
} mt_split;

static mt_split split_of(int variant, const vmc_gemm_args *g, int nt) {
  int mr, nr;
  tile_of(variant, &mr, &nr);
  const int M = g->M, N = g->N;
  const int n_tiles = (N + nr - 1) / nr, m_tiles = (M + mr - 1) / mr;
  mt_split s;
  s.by_n = N >= M ? n_tiles >= nt || m_tiles < n_tiles : m_tiles < nt && n_tiles > m_tiles;
  s.len = s.by_n ? N : M;
  const int align = s.by_n ? nr : mr;
  const int units = (s.len + align - 1) / align; /* whole tiles */
  const int per = (units + nt - 1) / nt;         /* tiles per block */
  s.block = per * align;
  s.nblocks = (units + per - 1) / per;
  return s;
}

/* Block t of the split, on the calling thread. */
static void run_block(run_fn f, const vmc_gemm_args *g, const mt_split *sp, int t) {
  const int lo = t * sp->block, n = sp->len - lo < sp->block ? sp->len - lo : sp->block;
  vmc_gemm_args s = *g;
  vmc_gemm_epi e = g->epi ? *g->epi : VMC_GEMM_EPI_NONE;
  if (sp->by_n) {
    s.N = n;
    if (g->brow && g->trans_b)
      s.brow = g->brow + lo;
    else if (g->brow)
      s.boff = g->boff + (size_t)lo;
    else
      s.B = g->B + (g->trans_b ? (size_t)lo * g->ldb : (size_t)lo);
    s.C = g->C + lo;
    if (e.res) e.res += lo;
  } else {
    s.M = n;
    if (g->pa)
      s.pa_row = g->pa_row + lo;
    else
      s.A = g->A + (g->trans_a ? (size_t)lo : (size_t)lo * g->lda);
    s.C = g->C + (size_t)lo * g->ldc;
    if (e.bias) e.bias += lo;
    if (e.res) e.res += (size_t)lo * e.ldr;
  }
  s.epi = g->epi ? &e : NULL;
  f(&s);
}

/* ---- K split ------------------------------------------------------------
 * A small C over a long K (the weight gradients of batch-folded convs: 288 x
 * 32 x 12544) split by rows or columns has each thread read part of every
 * row of its streamed operand, which memory serves worse than whole rows.
 * Such a GEMM is split over K instead, in whole K slices of the variant
 * (each element's sum is a chain per slice, the chains added to C in
 * order): thread 0 runs the first slices on C as one call would, the others
 * store each of their slices' sums alone (c_slice) in the caller's scratch,
 * and the team then adds those to C in slice order, rows split: the same
 * operations in the same order, so the same bits.  Zen 3,
 * two threads, against the row split, alternating, three rounds, GFLOP/s:
 * 288x32x12544 (A^T 13.8 MiB) 56.2 -> 66.9, 63.7 -> 68.7, 71.7 -> 69.7;
 * 144x16x50176 38.1 -> 53.0, 51.2 -> 54.4, 50.4 -> 82.0; 144x32x12544
 * 88.2 -> 94.7, 83.9 -> 87.8, 76.6 -> 125.9; 9x16x50176 59.1 -> 75.0, 70.4
 * -> 72.5, 66.0 -> 71.6.  With C up to 256 KiB and 1 MiB to read, 576x64x3136
 * and 32x64x3136 lost in two rounds of three, 16x32x12544 too. */
#define KSPLIT_MAX_C_BYTES (64 << 10) /* C (M x N) at most this */
#define KSPLIT_MIN_BYTES (3u << 20)   /* A and B: at least this to read */
#define KSPLIT_MAX_SCRATCH (4u << 20) /* the slices' sums: at most this */

/* The variant's K slice when g should split over K on nt threads, else 0. */
static int ksplit_of(int variant, const vmc_gemm_args *g, int nt) {
  const int kc = variant == VMC_GEMM_AVX2     ? vmc_sgemm_slice_k__avx2()
                 : variant == VMC_GEMM_AVX512 ? vmc_sgemm_slice_k__avx512()
                                              : 0;
  if (!kc || g->pa || g->epi || g->c_slice || g->alpha == 0.0f) return 0;
  const size_t mn = (size_t)g->M * (size_t)g->N, nk = ((size_t)g->K + kc - 1) / kc;
  return nk >= 2 * (size_t)nt && mn * sizeof(float) <= KSPLIT_MAX_C_BYTES &&
                 (size_t)g->K * (size_t)(g->M + g->N) * sizeof(float) >= KSPLIT_MIN_BYTES &&
                 nk * mn * sizeof(float) <= KSPLIT_MAX_SCRATCH
             ? kc
             : 0;
}

/* g restricted to K slices [s0, s1) of kc (the last one ragged). */
static vmc_gemm_args k_range(const vmc_gemm_args *g, int kc, int s0, int s1) {
  vmc_gemm_args s = *g;
  const int lo = s0 * kc, hi = (size_t)s1 * kc < (size_t)g->K ? s1 * kc : g->K;
  s.K = hi - lo;
  s.A = g->A + (g->trans_a ? (size_t)lo * g->lda : (size_t)lo);
  if (g->brow && g->trans_b)
    s.boff = g->boff + (size_t)lo;
  else if (g->brow)
    s.brow = g->brow + lo;
  else
    s.B = g->B + (g->trans_b ? (size_t)lo : (size_t)lo * g->ldb);
  return s;
}

/* Runs g split over K on up to nt threads (ksplit_of gave kc). */
static void run_ksplit(run_fn f, const vmc_gemm_args *g, int kc, int nt) {
  const int M = g->M, N = g->N, nk = (g->K + kc - 1) / kc;
  const size_t mn = (size_t)M * N;
  /* the slices after thread 0's, at most nk - nk / nt of them */
  float *sums =
      vmc_thread_scratch(VMC_SCRATCH_GEMM_KSPLIT, (size_t)(nk - nk / nt) * mn * sizeof(float));
  if (!sums) { /* out of memory: one thread needs no scratch */
    f(g);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    const int first = nk / team; /* thread 0's slices: the rest are stored */
    const int s0 = t == 0 ? 0 : first + (nk - first) * (t - 1) / (team - 1);
    const int s1 = t == 0 ? first : first + (nk - first) * t / (team - 1);
    if (s1 > s0) {
      vmc_gemm_args s = k_range(g, kc, s0, s1);
      if (t > 0) {
        s.C = sums + (size_t)(s0 - first) * mn;
        s.ldc = N;
        s.c_slice = mn;
      }
      f(&s);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int i = 0; i < M; i++) {
      float *c = g->C + (size_t)i * g->ldc;
      for (int k = 0; k < nk - first; k++) {
        const float *x = sums + (size_t)k * mn + (size_t)i * N;
        for (int j = 0; j < N; j++) c[j] += x[j];
      }
    }
  }
}

/* Runs g on one variant, split over the threads (split_of, or over K where
 * ksplit_of says so) when it is worth a team. */
static void run_mt(int variant, const vmc_gemm_args *g) {
  const run_fn f = k_run[variant];
  const int M = g->M, N = g->N, K = g->pa ? g->pa->K : g->K;
  if (M <= 0 || N <= 0) return;
  const int nt = vmc_get_threads();
  if (nt <= 1 || omp_in_parallel() || (double)M * N * (K > 0 ? K : 1) < MT_MIN_WORK) {
    f(g);
    return;
  }
  const int kc = ksplit_of(variant, g, nt);
  if (kc) {
    run_ksplit(f, g, kc, nt);
    return;
  }
  const mt_split sp = split_of(variant, g, nt);
  if (sp.nblocks <= 1) {
    f(g);
    return;
  }
#pragma omp parallel for num_threads(sp.nblocks) schedule(static, 1)
  for (int t = 0; t < sp.nblocks; t++) run_block(f, g, &sp, t);
}

/* Thread t's block of g split over a team of nt (nothing if it has none). */
static void run_part(int variant, const vmc_gemm_args *g, int t, int nt) {
  if (g->M <= 0 || g->N <= 0 || t < 0 || t >= nt) return;
  const mt_split sp = split_of(variant, g, nt);
  if (t < sp.nblocks) run_block(k_run[variant], g, &sp, t);
}

static vmc_gemm_args plain_args(int trans_a, int trans_b, int M, int N, int K, float alpha,
                                const float *A, int lda, const float *B, int ldb,
                                float beta, float *C, int ldc, const vmc_gemm_epi *epi) {
  return (vmc_gemm_args){.trans_a = trans_a, .trans_b = trans_b, .M = M, .N = N, .K = K,
                         .alpha = alpha, .A = A, .lda = lda, .B = B, .ldb = ldb,
                         .beta = beta, .C = C, .ldc = ldc, .epi = epi};
}

static vmc_gemm_args rows_args(int trans_b, int M, int N, int K, float alpha,
                               const float *A, int lda, const float *const *brow,
                               float beta, float *C, int ldc, const vmc_gemm_epi *epi) {
  return (vmc_gemm_args){.trans_b = trans_b, .M = M, .N = N, .K = K, .alpha = alpha,
                         .A = A, .lda = lda, .brow = brow, .beta = beta, .C = C,
                         .ldc = ldc, .epi = epi};
}

void vmc_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta,
               float *C, int ldc) {
  const vmc_gemm_args g =
      plain_args(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
  k_run[dispatched_variant()](&g);
}

void vmc_sgemm_mt(int trans_a, int trans_b, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc) {
  const vmc_gemm_args g =
      plain_args(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
  run_mt(dispatched_variant(), &g);
}

void vmc_sgemm_epi(int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta,
                   float *C, int ldc, const vmc_gemm_epi *epi) {
  const vmc_gemm_args g =
      plain_args(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, epi);
  k_run[dispatched_variant()](&g);
}

void vmc_sgemm_epi_mt(int trans_a, int trans_b, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta,
                      float *C, int ldc, const vmc_gemm_epi *epi) {
  const vmc_gemm_args g =
      plain_args(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, epi);
  run_mt(dispatched_variant(), &g);
}

void vmc_sgemm_rows(int trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *const *brow, float beta, float *C, int ldc) {
  const vmc_gemm_args g = rows_args(trans_b, M, N, K, alpha, A, lda, brow, beta, C, ldc, NULL);
  k_run[dispatched_variant()](&g);
}

void vmc_sgemm_rows_mt(int trans_b, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *const *brow, float beta, float *C,
                       int ldc) {
  const vmc_gemm_args g = rows_args(trans_b, M, N, K, alpha, A, lda, brow, beta, C, ldc, NULL);
  run_mt(dispatched_variant(), &g);
}

void vmc_sgemm_rows_epi(int trans_b, int M, int N, int K, float alpha, const float *A,
                        int lda, const float *const *brow, float beta, float *C, int ldc,
                        const vmc_gemm_epi *epi) {
  const vmc_gemm_args g = rows_args(trans_b, M, N, K, alpha, A, lda, brow, beta, C, ldc, epi);
  k_run[dispatched_variant()](&g);
}

void vmc_sgemm_rows_epi_mt(int trans_b, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *const *brow, float beta,
                           float *C, int ldc, const vmc_gemm_epi *epi) {
  const vmc_gemm_args g = rows_args(trans_b, M, N, K, alpha, A, lda, brow, beta, C, ldc, epi);
  run_mt(dispatched_variant(), &g);
}

void vmc_sgemm_rows_epi_part(int trans_b, int M, int N, int K, float alpha, const float *A,
                             int lda, const float *const *brow, float beta, float *C, int ldc,
                             const vmc_gemm_epi *epi, int t, int nt) {
  const vmc_gemm_args g = rows_args(trans_b, M, N, K, alpha, A, lda, brow, beta, C, ldc, epi);
  run_part(dispatched_variant(), &g, t, nt);
}

int vmc_sgemm_dot_in_place(int K) {
  return dispatched_variant() == VMC_GEMM_AVX512 && K >= VMC_SGEMM_DOT_MIN_K;
}

void vmc_sgemm_dot(int M, int N, int K, const float *A, int lda, const float *const *brow,
                   float *C, int ldc) {
  if (vmc_sgemm_dot_in_place(K))
    vmc_sgemm_dot__avx512(M, N, K, A, lda, brow, C, ldc);
  else
    vmc_sgemm_rows(1, M, N, K, 1.0f, A, lda, brow, 1.0f, C, ldc);
}

/* ---- Pre-packed A ------------------------------------------------------- */

static size_t pack_floats(int variant, int M, int K) {
  switch (variant) {
  case VMC_GEMM_AVX2: return vmc_sgemm_pack_a_floats__avx2(M, K);
  case VMC_GEMM_AVX512: return vmc_sgemm_pack_a_floats__avx512(M, K);
  default: return vmc_sgemm_pack_a_floats__ref(M, K);
  }
}

size_t vmc_sgemm_pack_a_bytes_variant(int variant, int M, int K) {
  return pack_floats(variant, M, K) * sizeof(float);
}

size_t vmc_sgemm_pack_a_bytes(int M, int K) {
  return vmc_sgemm_pack_a_bytes_variant(dispatched_variant(), M, K);
}

vmc_status vmc_sgemm_pack_a_variant(int variant, int trans_a, int M, int K, float alpha,
                                    const float *A, int lda, void *buf, size_t buf_bytes,
                                    vmc_sgemm_packed_a *out) {
  if (!out) return vmc_error(VMC_ERR_INVALID_ARG, "vmc_sgemm_pack_a: out is NULL");
  *out = (vmc_sgemm_packed_a){0};
  if (variant < VMC_GEMM_REF || variant > VMC_GEMM_AVX512)
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_sgemm_pack_a: unknown variant %d", variant);
  if (!cpu_runs(variant))
    return vmc_error(VMC_ERR_UNSUPPORTED, "vmc_sgemm_pack_a: this CPU lacks variant %d",
                     variant);
  if (M < 0 || K < 0)
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_sgemm_pack_a: M = %d, K = %d", M, K);
  const int need_a = M > 0 && K > 0;
  if (need_a && (!A || lda < (trans_a ? M : K)))
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_sgemm_pack_a: A is NULL or lda %d < %d", lda,
                     trans_a ? M : K);
  const size_t bytes = vmc_sgemm_pack_a_bytes_variant(variant, M, K);
  void *mem = buf;
  if (!buf) {
    mem = vmc_alloc(bytes);
    if (!mem)
      return vmc_error(VMC_ERR_NOMEM, "vmc_sgemm_pack_a: %zu bytes for a %d x %d pack",
                       bytes, M, K);
  } else if (buf_bytes < bytes || ((uintptr_t)buf & (VMC_ALIGN - 1))) {
    return vmc_error(VMC_ERR_INVALID_ARG,
                     "vmc_sgemm_pack_a: buffer of %zu bytes at %p; needs %zu, 64-byte aligned",
                     buf_bytes, buf, bytes);
  }
  float *dst = mem;
  if (need_a) {
    if (variant == VMC_GEMM_AVX512)
      vmc_sgemm_pack_a__avx512(trans_a, M, K, alpha, A, lda, dst);
    else if (variant == VMC_GEMM_AVX2)
      vmc_sgemm_pack_a__avx2(trans_a, M, K, alpha, A, lda, dst);
    else
      vmc_sgemm_pack_a__ref(trans_a, M, K, alpha, A, lda, dst);
  }
  *out = (vmc_sgemm_packed_a){.M = M, .K = K, .alpha = alpha, .variant = variant,
                              .bytes = bytes, .data = dst, .owned = buf ? NULL : mem};
  return VMC_OK;
}

vmc_status vmc_sgemm_pack_a(int trans_a, int M, int K, float alpha, const float *A,
                            int lda, void *buf, size_t buf_bytes, vmc_sgemm_packed_a *out) {
  return vmc_sgemm_pack_a_variant(dispatched_variant(), trans_a, M, K, alpha, A, lda, buf,
                                  buf_bytes, out);
}

void vmc_sgemm_packed_a_free(vmc_sgemm_packed_a *p) {
  if (!p) return;
  vmc_free(p->owned);
  *p = (vmc_sgemm_packed_a){0};
}

static vmc_gemm_args packed_args(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                                 const float *B, int ldb, const float *const *brow,
                                 float beta, float *C, int ldc, const vmc_gemm_epi *epi) {
  return (vmc_gemm_args){.trans_b = trans_b, .M = pa->M, .N = N, .K = pa->K,
                         .alpha = pa->alpha, .pa = pa, .B = B, .ldb = ldb, .brow = brow,
                         .beta = beta, .C = C, .ldc = ldc, .epi = epi};
}

void vmc_sgemm_packed(const vmc_sgemm_packed_a *pa, int trans_b, int N, const float *B,
                      int ldb, float beta, float *C, int ldc, const vmc_gemm_epi *epi) {
  const vmc_gemm_args g = packed_args(pa, trans_b, N, B, ldb, NULL, beta, C, ldc, epi);
  k_run[pa->variant](&g);
}

void vmc_sgemm_packed_mt(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                         const float *B, int ldb, float beta, float *C, int ldc,
                         const vmc_gemm_epi *epi) {
  const vmc_gemm_args g = packed_args(pa, trans_b, N, B, ldb, NULL, beta, C, ldc, epi);
  run_mt(pa->variant, &g);
}

void vmc_sgemm_rows_packed(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                           const float *const *brow, float beta, float *C, int ldc,
                           const vmc_gemm_epi *epi) {
  const vmc_gemm_args g = packed_args(pa, trans_b, N, NULL, 0, brow, beta, C, ldc, epi);
  k_run[pa->variant](&g);
}

void vmc_sgemm_rows_packed_mt(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                              const float *const *brow, float beta, float *C, int ldc,
                              const vmc_gemm_epi *epi) {
  const vmc_gemm_args g = packed_args(pa, trans_b, N, NULL, 0, brow, beta, C, ldc, epi);
  run_mt(pa->variant, &g);
}

void vmc_sgemm_rows_packed_part(const vmc_sgemm_packed_a *pa, int trans_b, int N,
                                const float *const *brow, float beta, float *C, int ldc,
                                const vmc_gemm_epi *epi, int t, int nt) {
  const vmc_gemm_args g = packed_args(pa, trans_b, N, NULL, 0, brow, beta, C, ldc, epi);
  run_part(pa->variant, &g, t, nt);
}
