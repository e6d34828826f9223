/* fp32 GEMM, AVX-512F: packed panels, cache blocking, 8x32 register tile.
 *
 * Layout (GotoBLAS/BLIS): for each NC-column block of op(B) and KC-deep slice
 * of K, op(B) is packed into NR-column panels (k-major, NR floats per k; a
 * ragged last panel of at most 16 columns is 16 wide); for each MC-row block
 * of op(A), alpha*op(A) is packed into MR-row panels (MR floats per k).  Both
 * transpose flags are absorbed by the packing (8x8 in-register transposes
 * where the panel is a transpose of stored rows), and panels are zero-padded
 * to full tiles, so the micro-kernel always reads whole tiles.
 *
 * Operands read in place instead of packed, where a packed panel would be
 * reused too few times to repay its copy:
 *  - B, when it is not transposed and M is small (conv-shaped problems):
 *    full NR-column panels straight from B (the ragged last one is packed);
 *  - A, when alpha == 1 and N is small (the batch-folded convs of NHWC
 *    layouts, M in the tens of thousands, N = 16..64): the micro-kernel reads
 *    op(A) from A's rows (one row pointer per tile row, clamped to the last
 *    real row in a ragged tile) or, when A is transposed, MR consecutive
 *    floats of stored row k (ragged tiles are packed).  alpha == 1 makes the
 *    packed values A's own, so the sums are the packed path's bit for bit.
 *  - A pre-packed by vmc_sgemm_pack_a: the panels of every (KC slice, row)
 *    block laid out as pack_a writes them (slice pc at pc * Mp floats, Mp =
 *    M rounded up to MR; row block i at i * kc within it).
 * The micro-kernel keeps MR x NR accumulators in zmm registers and writes
 * back whole rows with plain loads/stores and ragged ones with masked ones,
 * so M and N remainders need no copy; smaller instances (4 rows, 16 columns)
 * cover the ragged edges.  A packed B panel so narrow that most lanes would
 * idle (N = 9 or 49: 9 of 16, 17 of 32 columns) goes to a kernel with the
 * rows in the lanes instead (tkernel).  The epilogue (bias, residual, clamp;
 * gemm.h) is applied in the write-back of the last K slice.
 *
 * A read in place streams from memory at M in the tens of thousands, so the
 * micro-kernel prefetches it: A's rows PF_TILES tiles ahead, stored A^T PF_K
 * rows ahead (50176x16x144: 40 -> 65 GFLOP/s on one Zen 4 core).
 *
 * Tile and blocks were picked by measurement on AMD Zen 4 (bench/bench_gemm.c,
 * bench/bench_blas.c; 12x32 and 14x32 tiles were no faster there, and 8 rows
 * divide the channel counts of conv layers).  Override with -DGEMM512_MR=12
 * etc. to experiment.  Tried there and not kept, no gain beyond the noise of
 * a shared machine: KC 256/512 and MC 144/192 (squares within +-5 % of
 * OpenBLAS either way); a 16x16 tile for A^T read in place with N <= 16
 * (whole cache lines of each stored row); row-panel-outer tile order for
 * short K; non-temporal stores of a large C; reading A in place for N > 64
 * (slower: a packed panel is then reused enough).
 *
 * Needs AVX-512F/BW/VL/DQ (the flags this file is built with; packing uses
 * 256-bit masked stores): call it only where vmc_isa_name() is "avx512".
 *
 * Reduction order: every C element is, for each KC slice in order, a chain of
 * FMAs over k from a zero accumulator, then added to C.  That order depends
 * only on K (never on M, N, the tile position, which operand is packed or the
 * thread count), which vmc_sgemm_mt relies on to be bit-identical to
 * vmc_sgemm, and the packed and row-pointer entries to match the plain one.
 *
 * B given by row pointers (vmc_sgemm_rows, gemm.h) runs the same driver:
 * packing reads the rows through the pointers (8 row pointers per 8x8
 * transpose when trans_b), and the in-place B path reads brow[k] + n with a
 * micro-kernel instance that loads one row pointer per k. */
#include "kernels/gemm.h"
#include "kernels/ymm.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef GEMM512_MR
#define GEMM512_MR 8 /* rows of the register tile */
#endif
#define NR 32 /* columns of the register tile: two zmm */
#ifndef GEMM512_KC
#define GEMM512_KC 384
#endif
#ifndef GEMM512_MC
#define GEMM512_MC 96
#endif
#ifndef GEMM512_NC
#define GEMM512_NC 1024
#endif
#ifndef GEMM512_DIRECT_B_MAX_M
#define GEMM512_DIRECT_B_MAX_M 64
#endif
#ifndef GEMM512_DIRECT_A_MAX_N
#define GEMM512_DIRECT_A_MAX_N 64
#endif
#ifndef GEMM512_PF_TILES
#define GEMM512_PF_TILES 2
#endif
#ifndef GEMM512_PF_K
#define GEMM512_PF_K 32
#endif
#ifndef GEMM512_DIRECT_A_TRANS /* 0: pack A^T even where it could be read in place */
#define GEMM512_DIRECT_A_TRANS 1
#endif
#define DIRECT_B_MAX_M GEMM512_DIRECT_B_MAX_M
#define DIRECT_A_MAX_N GEMM512_DIRECT_A_MAX_N
/* Prefetch distances of A read in place: tiles ahead (row pointers), rows of
 * stored A^T ahead (strided). */
#define PF_TILES GEMM512_PF_TILES
#define PF_K GEMM512_PF_K
#define MR GEMM512_MR
#define KC GEMM512_KC
#define MC GEMM512_MC
#define NC GEMM512_NC
/* Full unrolling of the constant-trip loops over tile rows and vectors,
 * which keeps the accumulators in registers (each compiler's spelling). */
#if defined(__clang__)
#define UNROLL_FULL _Pragma("unroll")
#else
#define UNROLL_FULL _Pragma("GCC unroll 32")
#endif
_Static_assert(MC % MR == 0, "MC must be a multiple of MR");
_Static_assert(NC % NR == 0, "NC must be a multiple of NR");
_Static_assert(MR <= 14, "MR x 2 accumulators + 2 B vectors must fit 32 zmm");

/* Lane masks of the two zmm of an NR-wide row holding nr (<= 32) columns. */
static inline __mmask16 mask_lo(int nr) {
  return (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1u);
}
static inline __mmask16 mask_hi(int nr) {
  return (__mmask16)(nr >= 32 ? 0xffffu : nr <= 16 ? 0u : (1u << (nr - 16)) - 1u);
}

/* dst[k*dst_stride + r] = scale * src[r][k] for r < rows (<= 8), zero for
 * rows <= r < lanes (<= 8), k < kc: a transpose of rows given by pointers
 * (src[r] read only for r < rows, and only its first kc floats), 8x8 at a
 * time.  Used for op(A) = A and op(B) = B^T, whose panels are transposes of
 * the stored rows. */
static void pack_transpose8(const float *const src[8], int rows, int lanes, int kc,
                            float scale, float *dst, size_t dst_stride) {
  const __mmask8 m = (__mmask8)((1u << lanes) - 1u);
  const __m256 vs = _mm256_set1_ps(scale);
  int k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 r[8];
    UNROLL_FULL
    for (int i = 0; i < 8; i++)
      r[i] = i < rows ? _mm256_loadu_ps(src[i] + k) : _mm256_setzero_ps();
    ymm_transpose8x8(r);
    UNROLL_FULL
    for (int t = 0; t < 8; t++)
      _mm256_mask_storeu_ps(dst + (size_t)(k + t) * dst_stride, m,
                            _mm256_mul_ps(vs, r[t]));
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
  if (!trans_a) {
    for (int ip = 0; ip < mc; ip += MR) {
      const int mr = mc - ip < MR ? mc - ip : MR;
      float *d = dst + (size_t)ip * kc;
      /* op(A)(i,k) = A[i*lda + k]: a transpose of MR stored rows. */
      for (int r0 = 0; r0 < MR; r0 += 8) {
        const int rows = mr - r0 < 0 ? 0 : mr - r0 > 8 ? 8 : mr - r0;
        const int lanes = MR - r0 > 8 ? 8 : MR - r0;
        const float *src[8];
        for (int i = 0; i < 8; i++)
          src[i] = A + (size_t)(i0 + ip + r0 + (i < rows ? i : 0)) * lda + k0;
        pack_transpose8(src, rows, lanes, kc, alpha, d + r0, MR);
      }
    }
    return;
  }
  /* op(A)(i,k) = A[k*lda + i]: the mc floats of stored row k scatter to the
   * panels; k outermost, so A is read row after row (prefetch-friendly). */
  const __m512 va = _mm512_set1_ps(alpha);
  const __mmask16 full = (__mmask16)((1u << MR) - 1u);
  for (int k = 0; k < kc; k++) {
    const float *s = A + (size_t)(k0 + k) * lda + i0;
    for (int ip = 0; ip < mc; ip += MR) {
      const int mr = mc - ip < MR ? mc - ip : MR;
      const __mmask16 m = (__mmask16)((1u << mr) - 1u);
      const __m512 v = _mm512_maskz_mul_ps(m, va, _mm512_maskz_loadu_ps(m, s + ip));
      /* MR <= 16: one masked store of MR lanes (zeros past mr). */
      _mm512_mask_storeu_ps(dst + (size_t)ip * kc + (size_t)k * MR, full, v);
    }
  }
}

/* Width of the packed B panel starting at column jp of an nc-wide block: NR,
 * or 16 for a ragged last panel of at most 16 columns. */
static inline int panel_w(int nc, int jp) { return nc - jp <= 16 ? 16 : NR; }

/* dst <- op(B)[k0:k0+kc, j0:j0+nc] as panels of panel_w columns (the one at
 * column jp starts at dst + jp*kc), k-major, zero columns past nc. */
static void pack_b(int trans_b, const bsrc *B, int k0, int j0, int kc, int nc,
                   float *dst) {
  for (int jp = 0; jp < nc; jp += NR) {
    const int nr = nc - jp < NR ? nc - jp : NR, w = panel_w(nc, jp);
    float *d = dst + (size_t)jp * kc;
    if (!trans_b) {
      /* op(B)(k,j) = B[k*ldb + j]: the columns are contiguous for each k. */
      const __mmask16 m0 = mask_lo(nr), m1 = mask_hi(nr);
      for (int k = 0; k < kc; k++) {
        const float *s = bsrc_row(B, k0 + k) + j0 + jp;
        _mm512_storeu_ps(d + (size_t)k * w, _mm512_maskz_loadu_ps(m0, s));
        if (w > 16) _mm512_storeu_ps(d + (size_t)k * w + 16, _mm512_maskz_loadu_ps(m1, s + 16));
      }
    } else {
      /* op(B)(k,j) = B[j*ldb + k]: a transpose of w stored rows. */
      for (int c0 = 0; c0 < w; c0 += 8) {
        const int rows = nr - c0 < 0 ? 0 : nr - c0 > 8 ? 8 : nr - c0;
        const float *src[8];
        for (int i = 0; i < 8; i++)
          src[i] = i < rows ? bsrc_row(B, j0 + jp + c0 + i) + k0 : NULL;
        pack_transpose8(src, rows, 8, kc, 1.0f, d + c0, (size_t)w);
      }
    }
  }
}

/* How the tile meets C: overwrite (first K slice, beta == 0), add (later
 * slices or beta == 1), or scale-and-add (first slice, other beta). */
enum { STORE_SET, STORE_ADD, STORE_BETA };

/* The epilogue as one tile sees it: bias at the tile's first row, res at its
 * first element; clamp unless the bounds are infinite. */
typedef struct tile_epi {
  const float *bias, *res;
  size_t ldr;
  float lo, hi;
  int clamp;
} tile_epi;

/* One micro-kernel call.  op(A) row r at depth k is a[k*as + r] (a packed
 * panel, as = MR; or transposed A in place, as = lda), or ar[r][k] (A's rows
 * in place).  op(B) row k is b + k*bs (a packed panel, bs = its width; or B
 * in place, bs = ldb), or brow[k] + bs (row pointers in place). */
typedef struct tile {
  int kc;
  const float *a;
  size_t as;
  const float *const *ar;
  const float *b;
  size_t bs;
  const float *const *brow;
  float *c;
  size_t ldc;
  int mr, nr, mode;
  float beta;
  const tile_epi *e; /* at this write-back, or NULL */
  /* A read in place: prefetch distance in floats, 0 for none.  Row pointers:
   * from a row to the same row of the next tile (MR rows down), fetched a
   * line per row every 16 k; strided: from row k to row k + PF_K. */
  size_t pf;
  /* tkernel: its tile spans mr rows (up to TPANELS(nr) panels of 8), panel
   * p's A at a + p * ps */
  size_t ps;
} tile;

/* Prefetch of p + off floats, computed as an integer (the address may lie
 * past the matrix: a prefetch never faults). */
static inline __attribute__((always_inline)) void prefetch(const float *p, size_t off) {
  _mm_prefetch((const char *)((uintptr_t)p + off * sizeof(float)), _MM_HINT_T0);
}

static inline __attribute__((always_inline)) __m512
epi_vec(__m512 x, const tile_epi *e, int r, int v, __mmask16 m, int full) {
  if (e->bias) x = _mm512_add_ps(x, _mm512_set1_ps(e->bias[r]));
  if (e->res) {
    const float *p = e->res + (size_t)r * e->ldr + 16 * v;
    x = _mm512_add_ps(x, full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p));
  }
  /* max(lo, x), min(hi, .): a NaN x is the second operand, so it passes. */
  if (e->clamp)
    x = _mm512_min_ps(_mm512_set1_ps(e->hi), _mm512_max_ps(_mm512_set1_ps(e->lo), x));
  return x;
}

/* C[0:mr, 0:nr] (op)= A-tile * B-tile over kc, computing MRE rows and NV zmm
 * columns (the smallest instance covering mr, nr).  MRE, NV, AROWS and BROWS
 * are compile-time constants in each instance below. */
/* One accumulator's write-back: C (op)= x, the epilogue, the store (all 16
 * lanes when full, else masked by m). */
static inline __attribute__((always_inline)) void
store_vec(__m512 x, float *cv, int mode, __m512 vb, const tile_epi *e, int r, int v,
          __mmask16 m, int full) {
  if (mode == STORE_ADD)
    x = _mm512_add_ps(full ? _mm512_loadu_ps(cv) : _mm512_maskz_loadu_ps(m, cv), x);
  else if (mode == STORE_BETA)
    x = _mm512_fmadd_ps(vb, full ? _mm512_loadu_ps(cv) : _mm512_maskz_loadu_ps(m, cv), x);
  if (e) x = epi_vec(x, e, r, v, m, full);
  if (full)
    _mm512_storeu_ps(cv, x);
  else
    _mm512_mask_storeu_ps(cv, m, x);
}

/* X(0) ... X(MR - 1). */
#define REP8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#if MR == 8
#define REP_MR(X) REP8(X)
#elif MR == 12
#define REP_MR(X) REP8(X) X(8) X(9) X(10) X(11)
#else
#error "GEMM512_MR must be 8 or 12"
#endif

static inline __attribute__((always_inline)) void
ukernel(const int MRE, const int NV, const int AROWS, const int BROWS, const tile *t) {
  __m512 acc[MR][2];
#define ZERO_ROW(r)                                                                 \
  if ((r) < MRE) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  REP_MR(ZERO_ROW)
#undef ZERO_ROW
  const float *restrict a = t->a;
  const float *restrict b = t->b;
  const float *const *restrict brow = t->brow;
  const size_t as = t->as, bs = t->bs;
  const float *ap[MR];
  if (AROWS) {
    UNROLL_FULL
    for (int r = 0; r < MRE; r++) ap[r] = t->ar[r];
  }
  const int kc = t->kc;
  const size_t pf = t->pf;
  for (int k0 = 0; k0 < kc; k0 += 16) {
    /* A read in place streams from memory: fetch ahead (see tile.pf). */
    if (AROWS && pf) {
      UNROLL_FULL
      for (int r = 0; r < MRE; r++) prefetch(ap[r], pf + (size_t)k0);
    }
    const int k1 = kc - k0 < 16 ? kc : k0 + 16;
    for (int k = k0; k < k1; k++) {
      if (!AROWS && pf) prefetch(a, pf);
      const float *bk = BROWS ? brow[k] + bs : b;
      const __m512 b0 = _mm512_loadu_ps(bk);
      const __m512 b1 = NV > 1 ? _mm512_loadu_ps(bk + 16) : b0;
      /* Written out (rows below MRE): clang leaves this loop partly rolled,
       * with the accumulators in memory, even under the pragma. */
#define FMA_ROW(r)                                                                  \
  if ((r) < MRE) {                                                                  \
    const __m512 ar = _mm512_set1_ps(AROWS ? ap[r][k] : a[r]);                      \
    acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);                                 \
    if (NV > 1) acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);                     \
  }
      REP_MR(FMA_ROW)
#undef FMA_ROW
      if (!AROWS) a += as;
      if (!BROWS) b += bs;
    }
  }
  float *restrict c = t->c;
  const size_t ldc = t->ldc;
  const int mr = t->mr, nr = t->nr, mode = t->mode;
  const tile_epi *e = t->e;
  const __m512 vb = _mm512_set1_ps(t->beta);
  /* Full width: plain loads and stores; else masked.  Written out like the
   * multiply-adds, so every accumulator index is a constant. */
  const int full = nr == NV * 16;
  const __mmask16 m0 = full ? 0xffff : mask_lo(nr), m1 = full ? 0xffff : mask_hi(nr);
#define STORE_ROW(r)                                                                \
  if ((r) < MRE && (r) < mr) {                                                      \
    store_vec(acc[r][0], c + (size_t)(r) * ldc, mode, vb, e, r, 0, m0, full);       \
    if (NV > 1) store_vec(acc[r][1], c + (size_t)(r) * ldc + 16, mode, vb, e, r, 1, m1, full); \
  }
  REP_MR(STORE_ROW)
#undef STORE_ROW
}

/* The instances, named by tile and operand access:
 * sgemm_ukernel_<rows>x<cols>_<a><b>__avx512, a and b being s (strided:
 * packed or in place) or r (row pointers). */
#define UKERNEL(rows, cols, a, b) UKERNEL_(rows, cols, a, b)
#define UKERNEL_(rows, cols, a, b) sgemm_ukernel_##rows##x##cols##_##a##b##__avx512
#define UKERNEL_INSTANCE(rows, cols, a, b, AROWS, BROWS)                         \
  static void UKERNEL(rows, cols, a, b)(const tile *t) {                       \
    ukernel(rows, (cols) / 16, AROWS, BROWS, t);                               \
  }
#define UKERNEL_INSTANCES(rows, cols)                                            \
  UKERNEL_INSTANCE(rows, cols, s, s, 0, 0)                                     \
  UKERNEL_INSTANCE(rows, cols, s, r, 0, 1)                                     \
  UKERNEL_INSTANCE(rows, cols, r, s, 1, 0)                                     \
  UKERNEL_INSTANCE(rows, cols, r, r, 1, 1)
UKERNEL_INSTANCES(MR, 32)
UKERNEL_INSTANCES(MR, 16)
#if MR > 8
UKERNEL_INSTANCES(8, 32)
UKERNEL_INSTANCES(8, 16)
#endif
#if MR > 4
UKERNEL_INSTANCES(4, 32)
UKERNEL_INSTANCES(4, 16)
#endif

typedef void (*ukernel_fn)(const tile *);

/* Smallest instance covering an mr x nr tile, for A and B read by rows or
 * strided. */
#define PICK(rows, wide, arows, brows)                                          \
  ((arows) ? ((brows) ? ((wide) ? UKERNEL(rows, 32, r, r) : UKERNEL(rows, 16, r, r))       \
                      : ((wide) ? UKERNEL(rows, 32, r, s) : UKERNEL(rows, 16, r, s)))      \
           : ((brows) ? ((wide) ? UKERNEL(rows, 32, s, r) : UKERNEL(rows, 16, s, r))       \
                      : ((wide) ? UKERNEL(rows, 32, s, s) : UKERNEL(rows, 16, s, s))))
static ukernel_fn pick_ukernel(int mr, int nr, int arows, int brows) {
  const int wide = nr > 16;
#if MR > 4
  if (mr <= 4) return PICK(4, wide, arows, brows);
#endif
#if MR > 8
  if (mr <= 8) return PICK(8, wide, arows, brows);
#endif
  return PICK(MR, wide, arows, brows);
}
/* Rows an instance computes for mr rows (reading A in place must not go past
 * them). */
static int instance_rows(int mr) {
#if MR > 4
  if (mr <= 4) return 4;
#endif
#if MR > 8
  if (mr <= 8) return 8;
#endif
  return MR;
}

#if MR == 8
/* Few columns: the tile the other way round.  A tile of nr <= 24 columns
 * whose width would leave most of a zmm idle (9 of 16 lanes, 17 of 32) is
 * computed with the rows in the lanes instead: one ymm accumulator per
 * column holds the tile's 8 rows, A's 8 floats of each k are one load (a
 * packed panel, or stored A^T in place) and B's are broadcast from the
 * packed panel (whose zero padding covers the NJ >= nr columns computed).
 * Zen 4 runs ymm FMAs at the zmm rate.  Each product and sum is the same FMA
 * as in ukernel (fma(a, b, acc) is fma(b, a, acc)), and the write-back,
 * after an 8x8 transpose in registers, the same operations on 8 columns of
 * a row, so the bits are the other kernels'. */
#define TMAX 24
#define TPMAX 4
static inline int narrow_panel(int nr) { return nr <= 12 || (nr >= 17 && nr <= TMAX); }

static inline __attribute__((always_inline)) void tkernel(const int NJ, const int P,
                                                          const tile *t) {
  __m256 acc[TPMAX][TMAX];
  UNROLL_FULL
  for (int p = 0; p < P; p++) {
    UNROLL_FULL
    for (int j = 0; j < NJ; j++) acc[p][j] = _mm256_setzero_ps();
  }
  const float *restrict a = t->a;
  const float *restrict b = t->b;
  const size_t as = t->as, bs = t->bs, pf = t->pf, ps = t->ps;
  for (int k = 0; k < t->kc; k++) {
    __m256 av[TPMAX];
    UNROLL_FULL
    for (int p = 0; p < P; p++) {
      if (pf) prefetch(a + p * ps, pf);
      av[p] = _mm256_loadu_ps(a + p * ps);
    }
    UNROLL_FULL
    for (int j = 0; j < NJ; j++) {
      const __m256 bj = _mm256_set1_ps(b[j]);
      UNROLL_FULL
      for (int p = 0; p < P; p++) acc[p][j] = _mm256_fmadd_ps(av[p], bj, acc[p][j]);
    }
    a += as;
    b += bs;
  }
  /* The write-back, panel by panel and 8 columns at a time: the
   * accumulators transposed in registers into the tile's rows, then the
   * ukernel's operations. */
  const tile_epi *e = t->e;
  const int nr = t->nr < NJ ? t->nr : NJ, mode = t->mode;
  const __m256 vb = _mm256_set1_ps(t->beta);
  UNROLL_FULL
  for (int p = 0; p < P; p++) {
    const int mr = t->mr - 8 * p < 8 ? t->mr - 8 * p : 8;
    UNROLL_FULL
    for (int j0 = 0; j0 < NJ; j0 += 8) {
      if (j0 >= nr || mr <= 0) break;
      __m256 r[8];
      UNROLL_FULL
      for (int j = 0; j < 8; j++) r[j] = j0 + j < NJ ? acc[p][j0 + j] : _mm256_setzero_ps();
      ymm_transpose8x8(r);
      const int n = nr - j0;
      const __mmask8 m = (__mmask8)(n >= 8 ? 0xffu : (1u << n) - 1u);
      UNROLL_FULL
      for (int i = 0; i < 8; i++) {
        if (i >= mr) break;
        const int row = 8 * p + i;
        float *cv = t->c + (size_t)row * t->ldc + j0;
        __m256 x = r[i];
        if (mode == STORE_ADD)
          x = _mm256_add_ps(_mm256_maskz_loadu_ps(m, cv), x);
        else if (mode == STORE_BETA)
          x = _mm256_fmadd_ps(vb, _mm256_maskz_loadu_ps(m, cv), x);
        if (e) {
          if (e->bias) x = _mm256_add_ps(x, _mm256_set1_ps(e->bias[row]));
          if (e->res)
            x = _mm256_add_ps(x, _mm256_maskz_loadu_ps(m, e->res + (size_t)row * e->ldr + j0));
          if (e->clamp)
            x = _mm256_min_ps(_mm256_set1_ps(e->hi), _mm256_max_ps(_mm256_set1_ps(e->lo), x));
        }
        _mm256_mask_storeu_ps(cv, m, x);
      }
    }
  }
}
/* Panels one call takes for nr columns: enough independent accumulators
 * for the FMA latency, all in registers. */
static inline int tpanels(int nr) { return nr <= 4 ? 4 : nr <= 8 ? 3 : nr <= 12 ? 2 : 1; }
#define TKERNEL(nj, p) sgemm_tkernel_8x##nj##_##p##__avx512
#define TKERNEL_INSTANCE(nj, p)                                                  \
  static void TKERNEL(nj, p)(const tile *t) { tkernel(nj, p, t); }
TKERNEL_INSTANCE(4, 1)
TKERNEL_INSTANCE(4, 2)
TKERNEL_INSTANCE(4, 3)
TKERNEL_INSTANCE(4, 4)
TKERNEL_INSTANCE(8, 1)
TKERNEL_INSTANCE(8, 2)
TKERNEL_INSTANCE(8, 3)
TKERNEL_INSTANCE(12, 1)
TKERNEL_INSTANCE(12, 2)
TKERNEL_INSTANCE(16, 1)
TKERNEL_INSTANCE(20, 1)
TKERNEL_INSTANCE(24, 1)
/* The instance for nr columns over p panels (p <= tpanels(nr)). */
static ukernel_fn pick_tkernel(int nr, int p) {
  static const ukernel_fn k4[4] = {TKERNEL(4, 1), TKERNEL(4, 2), TKERNEL(4, 3), TKERNEL(4, 4)};
  static const ukernel_fn k8[3] = {TKERNEL(8, 1), TKERNEL(8, 2), TKERNEL(8, 3)};
  static const ukernel_fn k12[2] = {TKERNEL(12, 1), TKERNEL(12, 2)};
  return nr <= 4 ? k4[p - 1] : nr <= 8 ? k8[p - 1] : nr <= 12 ? k12[p - 1]
         : nr <= 16 ? TKERNEL(16, 1) : nr <= 20 ? TKERNEL(20, 1) : TKERNEL(24, 1);
}
#else
static inline int narrow_panel(int nr) { return 0 * nr; }
static inline int tpanels(int nr) { return 1 + 0 * nr; }
static ukernel_fn pick_tkernel(int nr, int p) { return pick_ukernel(MR, nr + 0 * p, 0, 0); }
#endif

/* M rounded up to whole tiles: the row stride of a pre-packed slice. */
static size_t packed_rows(int M) { return (size_t)(M + MR - 1) / MR * MR; }

size_t vmc_sgemm_pack_a_floats__avx512(int M, int K) {
  return M > 0 && K > 0 ? packed_rows(M) * (size_t)K : 0;
}

void vmc_sgemm_pack_a__avx512(int trans_a, int M, int K, float alpha, const float *A,
                              int lda, float *dst) {
  if (M <= 0 || K <= 0) return;
  const size_t mp = packed_rows(M);
  for (int pc = 0; pc < K; pc += KC) {
    const int kc = K - pc < KC ? K - pc : KC;
    pack_a(trans_a, A, (size_t)lda, 0, pc, M, kc, alpha, dst + (size_t)pc * mp);
  }
}

/* The driver of every entry point (gemm.h's vmc_gemm_args). */
void vmc_sgemm_run__avx512(const vmc_gemm_args *g) {
  const int M = g->M, N = g->N;
  if (M <= 0 || N <= 0) return;
  const vmc_sgemm_packed_a *pre = g->pa;
  const int K = pre ? pre->K : g->K;
  const float alpha = pre ? pre->alpha : g->alpha, beta = g->beta;
  const int trans_a = pre ? 0 : g->trans_a, trans_b = g->trans_b;
  const bsrc src = {g->B, (size_t)g->ldb, g->brow, g->boff};
  const size_t lda = (size_t)g->lda, ldc = (size_t)g->ldc;
  float *C = g->C;
  if (K <= 0 || alpha == 0.0f) { /* C = beta * C (+ epilogue): the reference's job */
    vmc_sgemm_run__ref(g);
    return;
  }
  /* With few row panels a packed B panel is reused too few times to repay
   * its copy: read untransposed B in place (full NR panels; the ragged last
   * panel is still packed, zero-padded).  Likewise A with few column panels
   * (see the header). */
  const int direct_b = !trans_b && M <= DIRECT_B_MAX_M;
  /* (A's rows in place do not feed the narrow-panel kernel: pack them.) */
  const int direct_a = !pre && alpha == 1.0f && N <= DIRECT_A_MAX_N &&
                       (trans_a ? GEMM512_DIRECT_A_TRANS : !narrow_panel((N - 1) % NR + 1));
  const int kc_max = K < KC ? K : KC;
  const int mc_max = direct_a ? MR : M < MC ? (M + MR - 1) / MR * MR : MC;
  const int nc_max = direct_b ? NR : N < NC ? (N + NR - 1) / NR * NR : NC;
  /* The thread's packing buffers (core.h), at most MC*KC (A) and KC*NC (B). */
  float *pa = pre ? NULL
                  : vmc_thread_scratch(VMC_SCRATCH_GEMM_A, (size_t)mc_max * kc_max * sizeof(float));
  float *pb = vmc_thread_scratch(VMC_SCRATCH_GEMM_B, (size_t)nc_max * kc_max * sizeof(float));
  if ((!pre && !pa) || !pb) { /* out of memory: the reference needs no buffers */
    vmc_sgemm_run__ref(g);
    return;
  }
  const size_t pre_mp = pre ? packed_rows(pre->M) : 0;
  const vmc_gemm_epi *epi = g->epi;
  tile_epi te = {0};
  if (epi) {
    te.ldr = (size_t)epi->ldr;
    te.lo = epi->lo, te.hi = epi->hi;
    te.clamp = !(epi->lo == -INFINITY && epi->hi == INFINITY);
  }
  for (int jc = 0; jc < N; jc += NC) {
    const int nc = N - jc < NC ? N - jc : NC;
    const int nc_full = nc / NR * NR; /* columns read in place if direct_b */
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = K - pc < KC ? K - pc : KC;
      const int last = pc + kc >= K;
      /* A slice stored alone (vmc_gemm_args.c_slice) is set, without epilogue. */
      float *const Cs = g->c_slice ? C + (size_t)(pc / KC) * g->c_slice : C;
      tile t = {.kc = kc, .ldc = ldc, .beta = beta,
                .e = last && epi && !g->c_slice ? &te : NULL};
      t.mode = g->c_slice                  ? STORE_SET
               : pc > 0 || beta == 1.0f ? STORE_ADD
               : beta == 0.0f           ? STORE_SET
                                        : STORE_BETA;
      if (!direct_b)
        pack_b(trans_b, &src, pc, jc, kc, nc, pb);
      else if (nc_full < nc)
        pack_b(trans_b, &src, pc, jc + nc_full, kc, nc - nc_full, pb);
      for (int ic = 0; ic < M; ic += MC) {
        const int mc = M - ic < MC ? M - ic : MC;
        const float *ablk = NULL; /* the block's packed panels */
        if (pre)
          ablk = pre->data + (size_t)pc * pre_mp + (size_t)(g->pa_row + ic) * kc;
        else if (!direct_a) {
          pack_a(trans_a, g->A, lda, ic, pc, mc, kc, alpha, pa);
          ablk = pa;
        }
        for (int jr = 0; jr < nc; jr += NR) {
          t.nr = nc - jr < NR ? nc - jr : NR;
          const int in_place = direct_b && jr < nc_full;
          int brows = 0;
          if (in_place && src.brow) { /* row pointers of this K slice */
            t.brow = src.brow + pc;
            t.bs = src.boff + (size_t)(jc + jr);
            brows = 1;
          } else if (in_place) {
            t.b = src.B + (size_t)pc * src.ldb + jc + jr;
            t.bs = src.ldb;
          } else if (direct_b) { /* the ragged last panel, packed alone */
            t.b = pb;
            t.bs = (size_t)panel_w(nc - nc_full, 0);
          } else {
            t.b = pb + (size_t)jr * kc;
            t.bs = (size_t)panel_w(nc, jr);
          }
          for (int ir = 0, step = MR; ir < mc; ir += step) {
            const int mr = mc - ir < MR ? mc - ir : MR, i = ic + ir;
            t.mr = mr;
            t.c = Cs + (size_t)i * ldc + jc + jr;
            int arows = 0, a_full = 1; /* a_full: MR readable floats per k */
            int panels = 1; /* row panels from ir on laid out as this one, t.ps apart */
            const float *ap[MR];
            t.pf = 0;
            if (ablk) {
              t.a = ablk + (size_t)ir * kc;
              t.as = MR;
              t.ps = (size_t)MR * kc;
              panels = (mc - ir + MR - 1) / MR; /* zero-padded */
            } else if (!trans_a) { /* A's rows in place, clamped to the last */
              for (int r = 0; r < MR; r++)
                ap[r] = g->A + (size_t)(i + (r < mr ? r : mr - 1)) * lda + pc;
              t.ar = ap;
              t.pf = PF_TILES * MR * lda;
              arows = 1;
              a_full = 0;
            } else if (instance_rows(mr) == mr) { /* A^T: MR floats of row k */
              t.a = g->A + (size_t)pc * lda + i;
              t.as = lda;
              t.pf = PF_K * lda;
              t.ps = MR;
              a_full = mr == MR;
              panels = (mc - ir) / MR; /* whole ones */
            } else { /* a ragged A^T tile would read past row k: pack it */
              pack_a(1, g->A, lda, i, pc, mr, kc, 1.0f, pa);
              t.a = pa;
              t.as = MR;
            }
            if (t.e) {
              te.bias = epi->bias ? epi->bias + i : NULL;
              te.res = epi->res ? epi->res + (size_t)i * te.ldr + jc + jr : NULL;
            }
            /* A narrow packed B panel, and MR readable floats of A per k:
             * as many such row panels as tkernel takes at once. */
            step = MR;
            if (narrow_panel(t.nr) && a_full && !brows) {
              const int np = tpanels(t.nr) < panels ? tpanels(t.nr) : panels;
              t.mr = mc - ir < np * MR ? mc - ir : np * MR;
              step = np * MR;
              pick_tkernel(t.nr, np)(&t);
            } else {
              pick_ukernel(mr, t.nr, arows, brows)(&t);
            }
          }
        }
      }
    }
  }
}

int vmc_sgemm_slice_k__avx512(void) { return KC; }

void vmc_sgemm__avx512(int trans_a, int trans_b, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta,
                       float *C, int ldc) {
  const vmc_gemm_args g = {.trans_a = trans_a, .trans_b = trans_b, .M = M, .N = N, .K = K,
                           .alpha = alpha, .A = A, .lda = lda, .B = B, .ldb = ldb,
                           .beta = beta, .C = C, .ldc = ldc};
  vmc_sgemm_run__avx512(&g);
}

void vmc_sgemm_rows__avx512(int trans_b, int M, int N, int K, float alpha,
                            const float *A, int lda, const float *const *brow,
                            float beta, float *C, int ldc) {
  const vmc_gemm_args g = {.trans_b = trans_b, .M = M, .N = N, .K = K, .alpha = alpha,
                           .A = A, .lda = lda, .brow = brow, .beta = beta, .C = C,
                           .ldc = ldc};
  vmc_sgemm_run__avx512(&g);
}
