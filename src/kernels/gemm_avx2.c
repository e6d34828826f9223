/* fp32 GEMM, AVX2+FMA: packed panels, cache blocking, 6x16 register tile.
 *
 * Same design as gemm_avx512.c (read its header): op(B) packed into NR-column
 * panels per (NC, KC) block, alpha*op(A) into MR-row panels per (MC, KC)
 * block, both transpose flags absorbed by the packing (8x8 in-register
 * transposes), zero padding to full tiles, B read in place when it is not
 * transposed and M is small, masked write-back for N remainders.
 *
 * Reduction order: each C element is, per KC slice in order, a chain of FMAs
 * over k from a zero accumulator, then added to C; it depends only on K, so
 * vmc_sgemm_mt (which splits M or N) is bit-identical to vmc_sgemm.
 *
 * vmc_sgemm_rows__avx2 (B given by row pointers, gemm.h) runs the same
 * driver: packing reads the rows through the pointers, and the in-place B
 * path uses micro-kernel instances that load one row pointer per k; results
 * are identical to vmc_sgemm__avx2's on the materialised B. */
#include "kernels/gemm.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef GEMM256_MR
#define GEMM256_MR 6 /* rows of the register tile */
#endif
#define NR 16 /* columns of the register tile: two ymm */
#ifndef GEMM256_KC
#define GEMM256_KC 256
#endif
#ifndef GEMM256_MC
#define GEMM256_MC 96
#endif
#ifndef GEMM256_NC
#define GEMM256_NC 1024
#endif
#ifndef GEMM256_DIRECT_B_MAX_M
#define GEMM256_DIRECT_B_MAX_M 64
#endif
#define DIRECT_B_MAX_M GEMM256_DIRECT_B_MAX_M
#define MR GEMM256_MR
#define KC GEMM256_KC
#define MC GEMM256_MC
#define NC GEMM256_NC
/* Full unrolling of the constant-trip loops over tile rows and vectors,
 * which keeps the accumulators in registers (each compiler's spelling). */
#if defined(__clang__)
#define UNROLL_FULL _Pragma("unroll")
#else
#define UNROLL_FULL _Pragma("GCC unroll 16")
#endif
_Static_assert(MC % MR == 0, "MC must be a multiple of MR");
_Static_assert(NC % NR == 0, "NC must be a multiple of NR");
_Static_assert(MR <= 8, "the A packing transposes 8 rows at a time");

/* Floats past the end of a packed A block that its packing may write. */
#define PACK_SLACK 8

/* Per-thread packing buffers, grown on first use and kept: the hot path does
 * not allocate once a thread has seen its largest problem.  Capacities are in
 * floats; they never exceed MC*KC (A) and KC*NC (B).  A thread-specific key's
 * destructor frees them when a thread (an OpenMP worker) exits; the
 * _Thread_local pointer is the fast path. */
typedef struct pack_bufs {
  float *a, *b;
  size_t cap_a, cap_b;
} pack_bufs;

static _Thread_local pack_bufs *tl_bufs;
static pthread_key_t g_bufs_key;
static pthread_once_t g_bufs_once = PTHREAD_ONCE_INIT;
static int g_bufs_key_ok;

static void bufs_free(void *p) {
  pack_bufs *pb = p;
  free(pb->a);
  free(pb->b);
  free(pb);
}
static void bufs_key_init(void) {
  g_bufs_key_ok = pthread_key_create(&g_bufs_key, bufs_free) == 0;
}
static pack_bufs *thread_bufs(void) {
  if (tl_bufs) return tl_bufs;
  pthread_once(&g_bufs_once, bufs_key_init);
  pack_bufs *pb = g_bufs_key_ok ? calloc(1, sizeof *pb) : NULL;
  if (!pb) return NULL;
  if (pthread_setspecific(g_bufs_key, pb) != 0) {
    free(pb);
    return NULL;
  }
  return tl_bufs = pb;
}

static float *pack_buffer(float **buf, size_t *cap, size_t n) {
  if (*cap >= n) return *buf;
  size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
  float *p = aligned_alloc(64, bytes);
  if (!p) return NULL;
  free(*buf);
  *buf = p;
  *cap = bytes / sizeof(float);
  return p;
}

/* Lane mask for the first n (clamped to 0..8) lanes of a ymm. */
static const int32_t mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                       0,  0,  0,  0,  0,  0,  0,  0};
static inline __m256i lane_mask(int n) {
  n = n < 0 ? 0 : n > 8 ? 8 : n;
  return _mm256_loadu_si256((const __m256i *)(mask_table + 8 - n));
}

/* In-register transpose of 8 rows of 8 floats. */
static inline __attribute__((always_inline)) void transpose8x8(__m256 r[8]) {
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

/* dst[k*dst_stride + r] = scale * src[r][k] for r < rows (<= 8), zero for
 * rows <= r < lanes (<= 8), k < kc: a transpose of rows given by pointers
 * (src[r] read only for r < rows, and only its first kc floats), 8x8 at a
 * time.  Used for op(A) = A and op(B) = B^T, whose panels are transposes of
 * the stored rows.  Masked stores (vmaskmovps) are slow on AMD, so each k
 * stores 8 lanes: past `lanes` it spills into the row k+1 stores next, and
 * after the last k into up to 8 floats the caller must own (PACK_SLACK). */
static void pack_transpose8(const float *const src[8], int rows, int lanes, int kc,
                            float scale, float *dst, size_t dst_stride) {
  const __m256 vs = _mm256_set1_ps(scale);
  int k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 r[8];
    UNROLL_FULL
    for (int i = 0; i < 8; i++)
      r[i] = i < rows ? _mm256_loadu_ps(src[i] + k) : _mm256_setzero_ps();
    transpose8x8(r);
    UNROLL_FULL
    for (int t = 0; t < 8; t++)
      _mm256_storeu_ps(dst + (size_t)(k + t) * dst_stride, _mm256_mul_ps(vs, r[t]));
  }
  for (; k < kc; k++)
    for (int i = 0; i < lanes; i++)
      dst[(size_t)k * dst_stride + i] = i < rows ? scale * src[i][k] : 0.0f;
}

/* Where op(B) is read from: a strided matrix (B, ldb), or row pointers (brow
 * non-NULL, each advanced by boff floats).  Stored row r is a row of op(B)
 * (row k) when B is not transposed, a column (column n) when it is. */
typedef struct bsrc {
  const float *B;
  size_t ldb;
  const float *const *brow;
  size_t boff;
} bsrc;

static inline const float *bsrc_row(const bsrc *s, int r) {
  return s->brow ? s->brow[r] + s->boff : s->B + (size_t)r * s->ldb;
}

/* dst <- alpha * op(A)[i0:i0+mc, k0:k0+kc] as MR-row panels, MR*kc floats
 * each, zero rows below mc. */
static void pack_a(int trans_a, const float *A, size_t lda, int i0, int k0,
                   int mc, int kc, float alpha, float *dst) {
  const __m256 va = _mm256_set1_ps(alpha);
  for (int ip = 0; ip < mc; ip += MR) {
    const int mr = mc - ip < MR ? mc - ip : MR;
    float *d = dst + (size_t)ip * kc;
    if (!trans_a) {
      /* op(A)(i,k) = A[i*lda + k]: a transpose of MR stored rows. */
      const float *src[8];
      for (int i = 0; i < 8; i++)
        src[i] = A + (size_t)(i0 + ip + (i < mr ? i : 0)) * lda + k0;
      pack_transpose8(src, mr, MR, kc, alpha, d, MR);
    } else {
      /* op(A)(i,k) = A[k*lda + i]: MR rows are contiguous for each k; the
       * masked load leaves zeros past mr; 8-lane stores spill as in
       * pack_transpose8. */
      const __m256i m = lane_mask(mr);
      for (int k = 0; k < kc; k++) {
        const float *s = A + (size_t)(k0 + k) * lda + i0 + ip;
        _mm256_storeu_ps(d + (size_t)k * MR, _mm256_mul_ps(va, _mm256_maskload_ps(s, m)));
      }
    }
  }
}

/* dst <- op(B)[k0:k0+kc, j0:j0+nc] as NR-column panels, NR*kc floats each,
 * zero columns past nc. */
static void pack_b(int trans_b, const bsrc *B, int k0, int j0, int kc, int nc,
                   float *dst) {
  for (int jp = 0; jp < nc; jp += NR) {
    const int nr = nc - jp < NR ? nc - jp : NR;
    float *d = dst + (size_t)jp * kc;
    if (!trans_b) {
      /* op(B)(k,j) = B[k*ldb + j]: NR columns are contiguous for each k. */
      const __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
      for (int k = 0; k < kc; k++) {
        const float *s = bsrc_row(B, k0 + k) + j0 + jp;
        _mm256_store_ps(d + (size_t)k * NR, _mm256_maskload_ps(s, m0));
        _mm256_store_ps(d + (size_t)k * NR + 8, _mm256_maskload_ps(s + 8, m1));
      }
    } else {
      /* op(B)(k,j) = B[j*ldb + k]: a transpose of NR stored rows. */
      for (int c0 = 0; c0 < NR; c0 += 8) {
        const int rows = nr - c0 < 0 ? 0 : nr - c0 > 8 ? 8 : nr - c0;
        const float *src[8];
        for (int i = 0; i < 8; i++)
          src[i] = i < rows ? bsrc_row(B, j0 + jp + c0 + i) + k0 : NULL;
        pack_transpose8(src, rows, 8, kc, 1.0f, d + c0, NR);
      }
    }
  }
}

/* How the tile meets C: overwrite (first K slice, beta == 0), add (later
 * slices or beta == 1), or scale-and-add (first slice, other beta). */
enum { STORE_SET, STORE_ADD, STORE_BETA };

/* C[0:mr, 0:nr] (op)= A-panel * B-panel over kc, computing MRE rows and NV
 * ymm columns; MRE, NV and ROWS are compile-time constants in each instance.
 * B rows are bs floats apart (NR when packed, ldb when read in place), or
 * with ROWS at brow[k] + bs (row pointers read in place). */
static inline __attribute__((always_inline)) void
ukernel(const int MRE, const int NV, const int ROWS, int kc, const float *restrict a,
        const float *restrict b, size_t bs, const float *const *restrict brow,
        float *restrict c, size_t ldc, int mr, int nr, int mode, float beta) {
  __m256 acc[MR][2];
  UNROLL_FULL
  for (int r = 0; r < MRE; r++) {
    acc[r][0] = _mm256_setzero_ps();
    acc[r][1] = _mm256_setzero_ps();
  }
  for (int k = 0; k < kc; k++) {
    if (ROWS) b = brow[k] + bs;
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = NV > 1 ? _mm256_loadu_ps(b + 8) : b0;
    UNROLL_FULL
    for (int r = 0; r < MRE; r++) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
      acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
      if (NV > 1) acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
    }
    a += MR;
    if (!ROWS) b += bs;
  }
  const __m256 vb = _mm256_set1_ps(beta);
  if (nr == NV * 8) { /* full width: plain loads and stores */
    UNROLL_FULL
    for (int r = 0; r < MRE; r++) {
      if (r >= mr) break;
      float *cr = c + (size_t)r * ldc;
      UNROLL_FULL
      for (int v = 0; v < NV; v++) {
        __m256 x = acc[r][v];
        if (mode == STORE_ADD)
          x = _mm256_add_ps(_mm256_loadu_ps(cr + 8 * v), x);
        else if (mode == STORE_BETA)
          x = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8 * v), x);
        _mm256_storeu_ps(cr + 8 * v, x);
      }
    }
    return;
  }
  const __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
  UNROLL_FULL
  for (int r = 0; r < MRE; r++) {
    if (r >= mr) break;
    float *cr = c + (size_t)r * ldc;
    UNROLL_FULL
    for (int v = 0; v < NV; v++) {
      const __m256i m = v ? m1 : m0;
      __m256 x = acc[r][v];
      if (mode == STORE_ADD)
        x = _mm256_add_ps(_mm256_maskload_ps(cr + 8 * v, m), x);
      else if (mode == STORE_BETA)
        x = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8 * v, m), x);
      _mm256_maskstore_ps(cr + 8 * v, m, x);
    }
  }
}

/* The instances, named by tile: sgemm_ukernel_<rows>x<cols>__avx2, and
 * sgemm_rows_ukernel_<rows>x<cols>__avx2 reading B rows at brow[k] + off. */
#define UKERNEL(rows, cols) UKERNEL_(rows, cols)
#define UKERNEL_(rows, cols) sgemm_ukernel_##rows##x##cols##__avx2
#define RUKERNEL(rows, cols) RUKERNEL_(rows, cols)
#define RUKERNEL_(rows, cols) sgemm_rows_ukernel_##rows##x##cols##__avx2
#define UKERNEL_INSTANCE(rows, cols)                                             \
  static void UKERNEL(rows, cols)(int kc, const float *a, const float *b,      \
                                  size_t bs, float *c, size_t ldc, int mr,     \
                                  int nr, int mode, float beta) {              \
    ukernel(rows, (cols) / 8, 0, kc, a, b, bs, NULL, c, ldc, mr, nr, mode,     \
            beta);                                                             \
  }                                                                            \
  static void RUKERNEL(rows, cols)(int kc, const float *a,                     \
                                   const float *const *brow, size_t off,       \
                                   float *c, size_t ldc, int mr, int nr,       \
                                   int mode, float beta) {                     \
    ukernel(rows, (cols) / 8, 1, kc, a, NULL, off, brow, c, ldc, mr, nr, mode, \
            beta);                                                             \
  }
UKERNEL_INSTANCE(MR, 16)
UKERNEL_INSTANCE(MR, 8)
#if MR > 4
UKERNEL_INSTANCE(4, 16)
UKERNEL_INSTANCE(4, 8)
#endif
#if MR > 2
UKERNEL_INSTANCE(2, 16)
UKERNEL_INSTANCE(2, 8)
#endif

typedef void (*ukernel_fn)(int, const float *, const float *, size_t, float *, size_t,
                           int, int, int, float);

typedef void (*rows_ukernel_fn)(int, const float *, const float *const *, size_t,
                                float *, size_t, int, int, int, float);

/* Smallest instance covering an mr x nr tile. */
static ukernel_fn pick_ukernel(int mr, int nr) {
  const int wide = nr > 8;
#if MR > 2
  if (mr <= 2) return wide ? UKERNEL(2, 16) : UKERNEL(2, 8);
#endif
#if MR > 4
  if (mr <= 4) return wide ? UKERNEL(4, 16) : UKERNEL(4, 8);
#endif
  return wide ? UKERNEL(MR, 16) : UKERNEL(MR, 8);
}
static rows_ukernel_fn pick_rows_ukernel(int mr, int nr) {
  const int wide = nr > 8;
#if MR > 2
  if (mr <= 2) return wide ? RUKERNEL(2, 16) : RUKERNEL(2, 8);
#endif
#if MR > 4
  if (mr <= 4) return wide ? RUKERNEL(4, 16) : RUKERNEL(4, 8);
#endif
  return wide ? RUKERNEL(MR, 16) : RUKERNEL(MR, 8);
}

/* The driver of both entry points: op(B) from src (see bsrc). */
static void sgemm_run(int trans_a, int trans_b, int M, int N, int K, float alpha,
                      const float *A, int lda, const bsrc *src, float beta, float *C,
                      int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) K = 0; /* C = beta * C: the reference's job */
  pack_bufs *bufs = K > 0 ? thread_bufs() : NULL;
  /* With few row panels a packed B panel is reused too few times to repay
   * its copy: read untransposed B in place (full NR panels; the ragged last
   * panel is still packed, zero-padded). */
  const int direct_b = !trans_b && M <= DIRECT_B_MAX_M;
  const int kc_max = K < KC ? K : KC;
  const int mc_max = M < MC ? (M + MR - 1) / MR * MR : MC;
  const int nc_max = direct_b ? NR : N < NC ? (N + NR - 1) / NR * NR : NC;
  const size_t na = (size_t)mc_max * kc_max + PACK_SLACK;
  float *pa = bufs ? pack_buffer(&bufs->a, &bufs->cap_a, na) : NULL;
  float *pb = bufs ? pack_buffer(&bufs->b, &bufs->cap_b, (size_t)nc_max * kc_max) : NULL;
  if (!pa || !pb) { /* K == 0, or out of memory: the reference needs no buffers */
    if (src->brow)
      vmc_sgemm_rows_off__ref(trans_b, M, N, K, alpha, A, lda, src->brow, src->boff,
                              beta, C, ldc);
    else
      vmc_sgemm__ref(trans_a, trans_b, M, N, K, alpha, A, lda, src->B, (int)src->ldb,
                     beta, C, ldc);
    return;
  }
  for (int jc = 0; jc < N; jc += NC) {
    const int nc = N - jc < NC ? N - jc : NC;
    const int nc_full = nc / NR * NR; /* columns read in place if direct_b */
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = K - pc < KC ? K - pc : KC;
      const int mode = pc > 0 || beta == 1.0f ? STORE_ADD
                       : beta == 0.0f         ? STORE_SET
                                              : STORE_BETA;
      if (!direct_b)
        pack_b(trans_b, src, pc, jc, kc, nc, pb);
      else if (nc_full < nc)
        pack_b(trans_b, src, pc, jc + nc_full, kc, nc - nc_full, pb);
      for (int ic = 0; ic < M; ic += MC) {
        const int mc = M - ic < MC ? M - ic : MC;
        pack_a(trans_a, A, (size_t)lda, ic, pc, mc, kc, alpha, pa);
        for (int jr = 0; jr < nc; jr += NR) {
          const int nr = nc - jr < NR ? nc - jr : NR;
          const int in_place = direct_b && jr < nc_full;
          if (in_place && src->brow) {
            /* Row pointers of this K slice; column offset folded in. */
            const float *const *rows = src->brow + pc;
            const size_t off = src->boff + (size_t)(jc + jr);
            for (int ir = 0; ir < mc; ir += MR) {
              const int mr = mc - ir < MR ? mc - ir : MR;
              float *c = C + (size_t)(ic + ir) * ldc + jc + jr;
              pick_rows_ukernel(mr, nr)(kc, pa + (size_t)ir * kc, rows, off, c,
                                        (size_t)ldc, mr, nr, mode, beta);
            }
            continue;
          }
          const float *b = pb + (size_t)jr * kc;
          size_t bs = NR;
          if (direct_b) {
            b = in_place ? src->B + (size_t)pc * src->ldb + jc + jr : pb;
            bs = in_place ? src->ldb : NR;
          }
          for (int ir = 0; ir < mc; ir += MR) {
            const int mr = mc - ir < MR ? mc - ir : MR;
            float *c = C + (size_t)(ic + ir) * ldc + jc + jr;
            pick_ukernel(mr, nr)(kc, pa + (size_t)ir * kc, b, bs, c, (size_t)ldc, mr, nr,
                                 mode, beta);
          }
        }
      }
    }
  }
}

void vmc_sgemm__avx2(int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta,
                     float *C, int ldc) {
  const bsrc src = {B, (size_t)ldb, NULL, 0};
  sgemm_run(trans_a, trans_b, M, N, K, alpha, A, lda, &src, beta, C, ldc);
}

void vmc_sgemm_rows_off__avx2(int trans_b, int M, int N, int K, float alpha,
                              const float *A, int lda, const float *const *brow,
                              size_t boff, float beta, float *C, int ldc) {
  const bsrc src = {NULL, 0, brow, boff};
  sgemm_run(0, trans_b, M, N, K, alpha, A, lda, &src, beta, C, ldc);
}

void vmc_sgemm_rows__avx2(int trans_b, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *const *brow, float beta, float *C,
                          int ldc) {
  vmc_sgemm_rows_off__avx2(trans_b, M, N, K, alpha, A, lda, brow, 0, beta, C, ldc);
}
