/* fp32 GEMM, AVX2+FMA: packed panels, cache blocking, 6x16 register tile.
 *
 * Same design as gemm_avx512.c (read its header): op(B) packed into NR-column
 * panels per (NC, KC) block (a ragged last panel of at most 8 columns is 8
 * wide), alpha*op(A) into MR-row panels per (MC, KC) block, both transpose
 * flags absorbed by the packing (8x8 in-register transposes), zero padding to
 * full tiles; B read in place when it is not transposed and M is small, A
 * read in place when alpha == 1 and N is small, A pre-packed by
 * vmc_sgemm_pack_a (slice pc at pc * Mp floats, Mp = M rounded up to MR);
 * masked loads and piecewise stores (ymm_store_first) for N remainders; the
 * epilogue in the write-back of the last K slice; whole tiles without an
 * epilogue written by a short straight-line path.  Here only: C's rows
 * fetched at each tile's start when C exceeds the L2, A^T read in place in
 * sub-slices of its rows, fetched in order ahead (the driver says why), and
 * at small K a strip of tiles per micro-kernel call (tile.nt).
 *
 * Reduction order: each C element is, per KC slice in order, a chain of FMAs
 * over k from a zero accumulator, then added to C; it depends only on K, so
 * vmc_sgemm_mt (which splits M or N) is bit-identical to vmc_sgemm, and the
 * packed, in-place and row-pointer paths give the same bits.
 *
 * B given by row pointers (vmc_sgemm_rows, gemm.h) runs the same driver:
 * packing reads the rows through the pointers, and the in-place B path uses
 * micro-kernel instances that load one row pointer per k. */
#include "kernels/gemm.h"
#include "kernels/ymm.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef GEMM256_MR
#define GEMM256_MR 6 /* rows of the register tile */
#endif
#define NR 16 /* columns of the register tile: two ymm */
/* KC and MC were measured on AMD Zen 3 (32 KiB L1, 512 KiB L2): against
 * 256 and 96, squares of 1024 and 2048 went from 74-78 to 83-85 GFLOP/s on
 * one core (OpenBLAS's Haswell kernels: 83-86), conv GEMMs with K > 256 3-12 %
 * faster, the others unchanged (variants built side by side in one process,
 * calls alternated: this machine's speed drifts by tens of percent). */
#ifndef GEMM256_KC
#define GEMM256_KC 512
#endif
#ifndef GEMM256_MC
#define GEMM256_MC 48
#endif
#ifndef GEMM256_NC
#define GEMM256_NC 1024
#endif
#ifndef GEMM256_DIRECT_B_MAX_M
#define GEMM256_DIRECT_B_MAX_M 64
#endif
#ifndef GEMM256_DIRECT_A_MAX_N
#define GEMM256_DIRECT_A_MAX_N 64
#endif
#ifndef GEMM256_PF_TILES
#define GEMM256_PF_TILES 2
#endif
#ifndef GEMM256_PF_K
#define GEMM256_PF_K 32
#endif
/* C's footprint (M rows of ldc floats) above which each tile fetches its C
 * rows ahead (tile.pfc). */
#ifndef GEMM256_PF_C_BYTES
#define GEMM256_PF_C_BYTES (256 << 10)
#endif
/* A^T read in place (see the driver) in sub-slices of about A_SUB_BYTES of
 * A's rows, at least A_SUB_MIN rows, where the scratch accumulators of all
 * tiles take at most A_SUB_ACC_BYTES; for N <= A_SUB_MAX_N, rows of at
 * least A_SUB_MIN_LDA floats (shorter ones are read nearly in order anyway)
 * and more than A_SUB_MIN_BYTES of A to read (K rows of M floats).  Less
 * stays in the caches, where the tiles' strided walk costs less than the
 * sub-slices' bookkeeping.  Zen 3, one thread, alternating in one process,
 * GFLOP/s, before (sub-slices for N <= 32 at any size) and after: 144x16x512
 * (0.3 MiB) 76.9 -> 85.2, 49.8 -> 56.1, 54.1 -> 65.7; 288x32x512 69.9 ->
 * 79.8, 47.5 -> 56.2, 48.7 -> 59.1; 144x16x3136 (1.7 MiB) 73.0 -> 75.0,
 * 48.7 -> 52.8, 48.4 -> 56.1; 288x64x3136 (3.4 MiB) 39.3 -> 44.2, 49.0 ->
 * 53.4, 34.0 -> 36.8; 576x64x3136 31.0 -> 40.2, 42.5 -> 56.0, 27.0 -> 30.8;
 * 144x64x3136 (1.7 MiB) lost 4-7 % with the sub-slices, and between 2 and
 * 4 MiB either way won as often as it lost.  A thread of vmc_sgemm_mt's M
 * split counts its own columns: 288x64x3136 on two threads lost 8-14 % when
 * each took the sub-slices, which fetch whole rows. */
#define A_SUB_MAX_N 64
#define A_SUB_MIN_LDA 64
#define A_SUB_MIN_BYTES (3u << 20)
#define A_SUB_BYTES (32 << 10)
#define A_SUB_MIN 32
#define A_SUB_ACC_BYTES (256 << 10)
/* K slices up to this deep run strips of tiles per micro-kernel call (see
 * tile.nt): at K = 9 a call's fixed costs were half a tile's time.  Zen 3,
 * one core, alternating in one process, against one tile a call: 16x784x9
 * with bias and ReLU +14-20 %, 50176x16x9 (A's rows in place) +11 %,
 * 32x196x16 +5-12 %, 16x49x16 +5 %; against strips only up to K = 16:
 * K = 32 +5-13 %, K = 64 0-8 %.  At K = 144 the strip of a row tile's
 * panels lost 17-23 % (B no longer stays in the L1 from one row tile to
 * the next), a strip of row tiles gained 0-3 %. */
#ifndef GEMM256_STRIP_MAX_K
#define GEMM256_STRIP_MAX_K 64
#endif
#define STRIP_MAX_K GEMM256_STRIP_MAX_K
#define DIRECT_B_MAX_M GEMM256_DIRECT_B_MAX_M
#define DIRECT_A_MAX_N GEMM256_DIRECT_A_MAX_N
/* Prefetch distances of A read in place: tiles ahead (row pointers), rows of
 * stored A^T ahead (strided). */
#define PF_TILES GEMM256_PF_TILES
#define PF_K GEMM256_PF_K
#define MR GEMM256_MR
#define KC GEMM256_KC
#define MC GEMM256_MC
#define NC GEMM256_NC
/* Full unrolling of the constant-trip loops over tile rows and vectors,
 * which keeps the accumulators in registers (each compiler's spelling). */
#if defined(__clang__)
#define UNROLL_FULL _Pragma("unroll")
#define UNROLL_4 _Pragma("unroll 4")
#else
#define UNROLL_FULL _Pragma("GCC unroll 16")
#define UNROLL_4 _Pragma("GCC unroll 4")
#endif
_Static_assert(MC % MR == 0, "MC must be a multiple of MR");
_Static_assert(NC % NR == 0, "NC must be a multiple of NR");
_Static_assert(MR <= 8, "the A packing transposes 8 rows at a time");

/* Floats past the end of a packed A block that its packing may write. */
#define PACK_SLACK 8

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
    ymm_transpose8x8(r);
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
 * each, zero rows below mc; may write PACK_SLACK floats past the end. */
static void pack_a(int trans_a, const float *A, size_t lda, int i0, int k0,
                   int mc, int kc, float alpha, float *dst) {
  if (!trans_a) {
    for (int ip = 0; ip < mc; ip += MR) {
      const int mr = mc - ip < MR ? mc - ip : MR;
      /* op(A)(i,k) = A[i*lda + k]: a transpose of MR stored rows. */
      const float *src[8];
      for (int i = 0; i < 8; i++)
        src[i] = A + (size_t)(i0 + ip + (i < mr ? i : 0)) * lda + k0;
      pack_transpose8(src, mr, MR, kc, alpha, dst + (size_t)ip * kc, MR);
    }
    return;
  }
  /* op(A)(i,k) = A[k*lda + i]: the mc floats of stored row k scatter to the
   * panels; k outermost, so A is read row after row.  The masked load leaves
   * zeros past mr; 8-lane stores spill MR..7 into the next k of the same
   * panel, written later, except at the last k, whose spill would land on
   * the next panel's first k, already written: it stores MR lanes. */
  const __m256 va = _mm256_set1_ps(alpha);
  for (int k = 0; k < kc; k++) {
    const float *s = A + (size_t)(k0 + k) * lda + i0;
    for (int ip = 0; ip < mc; ip += MR) {
      const int mr = mc - ip < MR ? mc - ip : MR;
      const __m256 v = _mm256_mul_ps(va, _mm256_maskload_ps(s + ip, ymm_lanes(mr)));
      float *d = dst + (size_t)ip * kc + (size_t)k * MR;
      if (k + 1 < kc)
        _mm256_storeu_ps(d, v);
      else
        ymm_store_first(d, v, MR);
    }
  }
}

/* Width of the packed B panel starting at column jp of an nc-wide block: NR,
 * or 8 for a ragged last panel of at most 8 columns. */
static inline int panel_w(int nc, int jp) { return nc - jp <= 8 ? 8 : NR; }

/* dst <- op(B)[k0:k0+kc, j0:j0+nc] as panels of panel_w columns (the one at
 * column jp starts at dst + jp*kc), k-major, zero columns past nc. */
static void pack_b(int trans_b, const bsrc *B, int k0, int j0, int kc, int nc,
                   float *dst) {
  for (int jp = 0; jp < nc; jp += NR) {
    const int nr = nc - jp < NR ? nc - jp : NR, w = panel_w(nc, jp);
    float *d = dst + (size_t)jp * kc;
    if (!trans_b) {
      /* op(B)(k,j) = B[k*ldb + j]: the columns are contiguous for each k. */
      const __m256i m0 = ymm_lanes(nr), m1 = ymm_lanes(nr - 8);
      for (int k = 0; k < kc; k++) {
        const float *s = bsrc_row(B, k0 + k) + j0 + jp;
        _mm256_storeu_ps(d + (size_t)k * w, _mm256_maskload_ps(s, m0));
        if (w > 8) _mm256_storeu_ps(d + (size_t)k * w + 8, _mm256_maskload_ps(s + 8, m1));
      }
    } else {
      /* op(B)(k,j) = B[j*ldb + k]: a transpose of w stored rows (8 lanes a
       * row: no spill). */
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
/* STORE_KEEP: all MRE x NV accumulators to a chain's scratch tile (t.c,
 * NR floats a row), whatever mr and nr; no epilogue. */
enum { STORE_SET, STORE_ADD, STORE_BETA, STORE_KEEP };

/* The epilogue as one tile sees it: bias at the tile's first row, res at its
 * first element; clamp unless the bounds are infinite. */
typedef struct tile_epi {
  const float *bias, *res;
  size_t ldr;
  float lo, hi;
  int clamp;
} tile_epi;

/* One micro-kernel call; operands as in gemm_avx512.c: op(A) row r at depth
 * k is a[k*as + r] or ar[r][k]; op(B) row k is b + k*bs or brow[k] + bs. */
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
   * from a row to the same row of a tile PF_TILES tiles down, a line per row
   * every 16 k; strided: from row k to row k + PF_K. */
  size_t pf;
  /* C's rows are fetched at the call's start (C larger than the L2, where
   * its lines would otherwise arrive from memory only at the write-back). */
  int pfc;
  /* A^T read in place: pfn lines of the rows after this tile's slice, in
   * order (the slice's tiles take consecutive spans, evenly), into the L2
   * at the tile's start; NULL for none (then pf). */
  const float *pfs;
  int pfn;
  /* Accumulators to continue (MR rows of NR floats, as STORE_KEEP left
   * them), or NULL to start from zero. */
  const float *acc0;
  /* Tiles this call computes (not CHAIN): the first as above, each next one
   * a_step floats further in A (each row pointer, when A is read by rows),
   * b_step in B (the row offset bs, when B is read by rows), c_step in C,
   * bias_step in the bias and r_step in res.  Small K pays a per-call cost
   * per tile otherwise (see the driver's strips). */
  int nt;
  size_t a_step, b_step, c_step, r_step;
  int bias_step;
} tile;

/* Prefetch of p + off floats, computed as an integer (the address may lie
 * past the matrix: a prefetch never faults). */
static inline __attribute__((always_inline)) void prefetch(const float *p, size_t off) {
  _mm_prefetch((const char *)((uintptr_t)p + off * sizeof(float)), _MM_HINT_T0);
}

static inline __attribute__((always_inline)) __m256
epi_vec(__m256 x, const tile_epi *e, int r, int v, __m256i m, int full) {
  if (e->bias) x = _mm256_add_ps(x, _mm256_set1_ps(e->bias[r]));
  if (e->res) {
    const float *p = e->res + (size_t)r * e->ldr + 8 * v;
    x = _mm256_add_ps(x, full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m));
  }
  /* max(lo, x), min(hi, .): a NaN x is the second operand, so it passes. */
  if (e->clamp)
    x = _mm256_min_ps(_mm256_set1_ps(e->hi), _mm256_max_ps(_mm256_set1_ps(e->lo), x));
  return x;
}

/* One accumulator's write-back: C (op)= x, the epilogue, the store (all 8
 * lanes when full, else the n lanes that m masks: masked loads, and
 * ymm_store_first, not a masked store). */
static inline __attribute__((always_inline)) void
store_vec(__m256 x, float *cv, int mode, __m256 vb, const tile_epi *e, int r, int v,
          __m256i m, int n, int full) {
  if (mode == STORE_ADD)
    x = _mm256_add_ps(full ? _mm256_loadu_ps(cv) : _mm256_maskload_ps(cv, m), x);
  else if (mode == STORE_BETA)
    x = _mm256_fmadd_ps(vb, full ? _mm256_loadu_ps(cv) : _mm256_maskload_ps(cv, m), x);
  if (e) x = epi_vec(x, e, r, v, m, full);
  if (full)
    _mm256_storeu_ps(cv, x);
  else
    ymm_store_first(cv, x, n);
}

/* X(0) ... X(MR - 1): the loops over the tile's rows are written out (each
 * step kept for rows below MRE), so every accumulator index is a constant;
 * clang (14) leaves them partly rolled, with the accumulators in memory,
 * even under a full-unroll pragma. */
#define REP4(X) X(0) X(1) X(2) X(3)
#if MR == 4
#define REP_MR(X) REP4(X)
#elif MR == 6
#define REP_MR(X) REP4(X) X(4) X(5)
#elif MR == 8
#define REP_MR(X) REP4(X) X(4) X(5) X(6) X(7)
#else
#error "GEMM256_MR must be 4, 6 or 8"
#endif

/* One tile: C[0:mr, 0:nr] (op)= A-tile * B-tile over kc, computing MRE rows
 * and NV ymm columns; MRE, NV, AROWS, BROWS and CHAIN are compile-time
 * constants in each instance.  The operands' positions come as arguments
 * (ta or ap for A, tb and tbs for B, tc, e), the rest from t. */
static inline __attribute__((always_inline)) void
ukernel_tile(const int MRE, const int NV, const int AROWS, const int BROWS, const int CHAIN,
             const tile *t, const float *const *ap, const float *ta, const float *tb,
             size_t tbs, float *tc, const tile_epi *e) {
  __m256 acc[MR][2];
  const float *restrict acc0 = CHAIN ? t->acc0 : NULL;
#define ZERO_ROW(r)                                                                 \
  if ((r) < MRE) {                                                                  \
    acc[r][0] = acc0 ? _mm256_loadu_ps(acc0 + (r) * NR) : _mm256_setzero_ps();      \
    acc[r][1] = acc0 && NV > 1 ? _mm256_loadu_ps(acc0 + (r) * NR + 8) : _mm256_setzero_ps(); \
  }
  REP_MR(ZERO_ROW)
#undef ZERO_ROW
  const float *restrict a = ta;
  const float *restrict b = tb;
  const float *const *restrict brow = t->brow;
  const size_t as = t->as, bs = tbs;
  const int kc = t->kc;
  const size_t pf = t->pf;
  const float *const pfs = CHAIN ? t->pfs : NULL;
  if (t->pfc) {
#define PF_C_ROW(r)                                                                 \
  if ((r) < MRE) {                                                                  \
    prefetch(tc, (size_t)(r) * t->ldc);                                             \
    prefetch(tc, (size_t)(r) * t->ldc + NV * 8 - 1);                                \
  }
    REP_MR(PF_C_ROW)
#undef PF_C_ROW
  }
  /* The tile's share of the next rows of A^T (tile.pfs). */
  if (!AROWS && pfs)
    for (int l = 0; l < t->pfn; l++)
      _mm_prefetch((const char *)(pfs + (size_t)l * 16), _MM_HINT_T1);
  for (int k0 = 0; k0 < kc; k0 += 16) {
    /* A read in place streams from memory: fetch ahead (see tile.pf). */
    if (AROWS && pf) {
      UNROLL_FULL
      for (int r = 0; r < MRE; r++) prefetch(ap[r], pf + (size_t)k0);
    }
    const int k1 = kc - k0 < 16 ? kc : k0 + 16;
    /* Unrolled: Zen 3, one core, against the rolled loop, two runs
     * alternating in one process: 16x48x16 +8 %, +3 %; 32x16x32 +11 %,
     * +25 %; 64x56x288 (rows) +10 %, +11 %; squares of 512 and 1024 +2 to
     * +8 %.  By 8 instead: 0 to -9 % at K <= 16, up to +17 % at K = 288. */
    UNROLL_4
    for (int k = k0; k < k1; k++) {
      if (!AROWS && pf) prefetch(a, pf);
      const float *bk = BROWS ? brow[k] + bs : b;
      const __m256 b0 = _mm256_loadu_ps(bk);
      const __m256 b1 = NV > 1 ? _mm256_loadu_ps(bk + 8) : b0;
#define FMA_ROW(r)                                                                  \
  if ((r) < MRE) {                                                                  \
    const __m256 ar = _mm256_broadcast_ss(AROWS ? ap[r] + k : a + (r));             \
    acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);                                 \
    if (NV > 1) acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);                     \
  }
      REP_MR(FMA_ROW)
#undef FMA_ROW
      if (!AROWS) a += as;
      if (!BROWS) b += bs;
    }
  }
  float *restrict c = tc;
  const size_t ldc = t->ldc;
  const int mr = t->mr, nr = t->nr, mode = t->mode;
  if (CHAIN && mode == STORE_KEEP) {
#define KEEP_ROW(r)                                                                 \
  if ((r) < MRE) {                                                                  \
    _mm256_storeu_ps(c + (r) * NR, acc[r][0]);                                      \
    if (NV > 1) _mm256_storeu_ps(c + (r) * NR + 8, acc[r][1]);                      \
  }
    REP_MR(KEEP_ROW)
#undef KEEP_ROW
    return;
  }
  /* The common whole tile, written or added: straight-line stores, with
   * the epilogue's terms chosen once per tile (the general write-back below
   * is branchy and several KiB of code per instance, which costs more than
   * the FMAs at small K). */
  if (nr == NV * 8 && mr >= MRE && mode != STORE_BETA) {
    const int add = mode == STORE_ADD;
    if (!e) {
#define PLAIN_ROW(r)                                                                \
  if ((r) < MRE) {                                                                  \
    float *cr = c + (size_t)(r) * ldc;                                              \
    _mm256_storeu_ps(cr, add ? _mm256_add_ps(_mm256_loadu_ps(cr), acc[r][0]) : acc[r][0]); \
    if (NV > 1)                                                                     \
      _mm256_storeu_ps(cr + 8, add ? _mm256_add_ps(_mm256_loadu_ps(cr + 8), acc[r][1])    \
                                   : acc[r][1]);                                    \
  }
      REP_MR(PLAIN_ROW)
#undef PLAIN_ROW
      return;
    }
    /* As epi_vec, in its order: C's old value, bias, res, clamp (infinite
     * bounds clamp nothing, NaN included, so they are applied anyway). */
    const float *restrict bias = e->bias, *restrict res = e->res;
    const size_t ldr = e->ldr;
    const __m256 lo = _mm256_set1_ps(e->lo), hi = _mm256_set1_ps(e->hi);
#define EPI_VEC(r, v, ADD, BIAS, RES)                                               \
  {                                                                                 \
    float *cv = c + (size_t)(r) * ldc + 8 * (v);                                    \
    __m256 x = (ADD) ? _mm256_add_ps(_mm256_loadu_ps(cv), acc[r][v]) : acc[r][v];   \
    if (BIAS) x = _mm256_add_ps(x, _mm256_broadcast_ss(bias + (r)));                \
    if (RES) x = _mm256_add_ps(x, _mm256_loadu_ps(res + (size_t)(r) * ldr + 8 * (v))); \
    _mm256_storeu_ps(cv, _mm256_min_ps(hi, _mm256_max_ps(lo, x)));                  \
  }
#define EPI_ROW(r, ADD, BIAS, RES)                                                  \
  if ((r) < MRE) {                                                                  \
    EPI_VEC(r, 0, ADD, BIAS, RES)                                                   \
    if (NV > 1) EPI_VEC(r, 1, ADD, BIAS, RES)                                       \
  }
    /* The commonest, a first write with a bias, with or without a residual,
     * have the terms as constants: tested per vector, the tests cost a
     * third of a tile's time at K = 9. */
#define EPI_ROW_B(r) EPI_ROW(r, 0, 1, 0)
#define EPI_ROW_BR(r) EPI_ROW(r, 0, 1, 1)
#define EPI_ROW_ANY(r) EPI_ROW(r, add, bias, res)
    if (!add && bias && !res) {
      REP_MR(EPI_ROW_B)
    } else if (!add && bias) {
      REP_MR(EPI_ROW_BR)
    } else {
      REP_MR(EPI_ROW_ANY)
    }
#undef EPI_ROW_ANY
#undef EPI_ROW_BR
#undef EPI_ROW_B
#undef EPI_ROW
#undef EPI_VEC
    return;
  }
  const __m256 vb = _mm256_set1_ps(t->beta);
  /* Full width: plain loads and stores; else masked. */
  const int full = nr == NV * 8;
  const __m256i m0 = full ? _mm256_set1_epi32(-1) : ymm_lanes(nr);
  const __m256i m1 = full ? _mm256_set1_epi32(-1) : ymm_lanes(nr - 8);
#define STORE_ROW(r)                                                                \
  if ((r) < MRE && (r) < mr) {                                                      \
    store_vec(acc[r][0], c + (size_t)(r) * ldc, mode, vb, e, r, 0, m0, nr, full);   \
    if (NV > 1)                                                                     \
      store_vec(acc[r][1], c + (size_t)(r) * ldc + 8, mode, vb, e, r, 1, m1, nr - 8, full); \
  }
  REP_MR(STORE_ROW)
#undef STORE_ROW
}

/* The instance's call: t->nt tiles (one if CHAIN), each next one where the
 * steps put it (tile.nt). */
static inline __attribute__((always_inline)) void
ukernel(const int MRE, const int NV, const int AROWS, const int BROWS, const int CHAIN,
        const tile *t) {
  const float *ap[MR];
  if (AROWS) {
    UNROLL_FULL
    for (int r = 0; r < MRE; r++) ap[r] = t->ar[r];
  }
  const int nt = CHAIN ? 1 : t->nt;
  tile_epi es = {0}; /* t->e, advanced from tile to tile */
  if (t->e) es = *t->e;
  const float *ta = t->a, *tb = t->b;
  size_t tbs = t->bs;
  float *tc = t->c;
  for (int n = 0;;) {
    ukernel_tile(MRE, NV, AROWS, BROWS, CHAIN, t, ap, ta, tb, tbs, tc, t->e ? &es : NULL);
    if (++n == nt) return;
    if (AROWS) {
      UNROLL_FULL
      for (int r = 0; r < MRE; r++) ap[r] += t->a_step;
    } else {
      ta += t->a_step;
    }
    if (BROWS)
      tbs += t->b_step;
    else
      tb += t->b_step;
    tc += t->c_step;
    if (es.bias) es.bias += t->bias_step;
    if (es.res) es.res += t->r_step;
  }
}

/* The instances, named by tile and operand access:
 * sgemm_ukernel_<rows>x<cols>_<a><b>__avx2, a and b being s (strided: packed
 * or in place) or r (row pointers). */
#define UKERNEL(rows, cols, a, b) UKERNEL_(rows, cols, a, b)
#define UKERNEL_(rows, cols, a, b) sgemm_ukernel_##rows##x##cols##_##a##b##__avx2
#define UKERNEL_INSTANCE(rows, cols, a, b, AROWS, BROWS, CHAIN)                  \
  static void UKERNEL(rows, cols, a, b)(const tile *t) {                       \
    ukernel(rows, (cols) / 8, AROWS, BROWS, CHAIN, t);                         \
  }
/* a: c is s with the A^T sub-slices' extras (acc0, STORE_KEEP, pfs), which
 * the other instances leave out. */
#define UKERNEL_INSTANCES(rows, cols)                                            \
  UKERNEL_INSTANCE(rows, cols, s, s, 0, 0, 0)                                  \
  UKERNEL_INSTANCE(rows, cols, s, r, 0, 1, 0)                                  \
  UKERNEL_INSTANCE(rows, cols, r, s, 1, 0, 0)                                  \
  UKERNEL_INSTANCE(rows, cols, r, r, 1, 1, 0)                                  \
  UKERNEL_INSTANCE(rows, cols, c, s, 0, 0, 1)                                  \
  UKERNEL_INSTANCE(rows, cols, c, r, 0, 1, 1)
UKERNEL_INSTANCES(MR, 16)
UKERNEL_INSTANCES(MR, 8)
#if MR > 4
UKERNEL_INSTANCES(4, 16)
UKERNEL_INSTANCES(4, 8)
#endif
#if MR > 2
UKERNEL_INSTANCES(2, 16)
UKERNEL_INSTANCES(2, 8)
#endif

typedef void (*ukernel_fn)(const tile *);

/* Smallest instance covering an mr x nr tile, for A and B read by rows or
 * strided, or A strided in chained sub-slices. */
#define PICK2(rows, wide, a, brows)                                                 \
  ((brows) ? ((wide) ? UKERNEL(rows, 16, a, r) : UKERNEL(rows, 8, a, r))            \
           : ((wide) ? UKERNEL(rows, 16, a, s) : UKERNEL(rows, 8, a, s)))
#define PICK(rows, wide, arows, brows, chain)                                       \
  ((chain) ? PICK2(rows, wide, c, brows)                                            \
           : (arows) ? PICK2(rows, wide, r, brows) : PICK2(rows, wide, s, brows))
static ukernel_fn pick_ukernel(int mr, int nr, int arows, int brows, int chain) {
  const int wide = nr > 8;
#if MR > 2
  if (mr <= 2) return PICK(2, wide, arows, brows, chain);
#endif
#if MR > 4
  if (mr <= 4) return PICK(4, wide, arows, brows, chain);
#endif
  return PICK(MR, wide, arows, brows, chain);
}
/* Rows an instance computes for mr rows (reading A in place must not go past
 * them). */
static int instance_rows(int mr) {
#if MR > 2
  if (mr <= 2) return 2;
#endif
#if MR > 4
  if (mr <= 4) return 4;
#endif
  return MR;
}

/* The last columns of a block when they are too few for a tile (at most
 * TAIL_COLS, B read in place, A packed): a tile of 1 to 3 columns leaves
 * most of the FMA latency idle and is packed alone, so a GEMM over 49
 * Winograd tiles cost as much as one over 56 (Zen 3, one core, variants
 * side by side: 16x49x16 +14-19 %, 64x49x256 +35 %, 32x17x288 +37 %,
 * 1 to 3 columns +4-17 %; at 4 columns no gain, -7 % at K = 576).  Here
 * the rows are in the lanes instead: for up to 3 row panels at once, the 8 floats of panel p
 * at depth k (its MR rows, then 2 of the next k's, never stored; PACK_SLACK
 * floats follow every packed block) times B[k][j] broadcast.  Each C
 * element is still a chain of FMAs over k from zero, then written or added
 * as the micro-kernel does: the same bits. */
#define TAIL_COLS 3
#define TAIL_PANELS 3
static inline __attribute__((always_inline)) void
tail_group(const int NJ, const float *a, int np, int mr_last, int kc, const bsrc *B, int k0,
           int j0, float *c, size_t ldc, int add) {
  __m256 acc[TAIL_PANELS][TAIL_COLS];
  UNROLL_FULL
  for (int p = 0; p < TAIL_PANELS; p++)
    UNROLL_FULL
    for (int j = 0; j < NJ; j++) acc[p][j] = _mm256_setzero_ps();
  for (int k = 0; k < kc; k++) {
    const float *bk = bsrc_row(B, k0 + k) + j0;
    __m256 av[TAIL_PANELS];
    UNROLL_FULL
    for (int p = 0; p < TAIL_PANELS; p++)
      av[p] = p < np ? _mm256_loadu_ps(a + (size_t)p * MR * kc + (size_t)k * MR) : av[0];
    UNROLL_FULL
    for (int j = 0; j < NJ; j++) {
      const __m256 bj = _mm256_broadcast_ss(bk + j);
      /* every panel, the missing ones on panel 0's values (not stored):
       * a conditional update made each k reload the sums from the stack */
      UNROLL_FULL
      for (int p = 0; p < TAIL_PANELS; p++) acc[p][j] = _mm256_fmadd_ps(av[p], bj, acc[p][j]);
    }
  }
  for (int p = 0; p < np; p++) {
    const int rows = p == np - 1 ? mr_last : MR;
    for (int j = 0; j < NJ; j++) {
      float v[8];
      _mm256_storeu_ps(v, acc[p][j]);
      float *cj = c + (size_t)p * MR * ldc + j;
      for (int r = 0; r < rows; r++) cj[(size_t)r * ldc] = add ? cj[(size_t)r * ldc] + v[r] : v[r];
    }
  }
}

/* C[0:mc, j0 - jc ...] of the block: nj <= TAIL_COLS columns from A's
 * packed panels ablk (mc rows, kc deep) and B's rows k0 ... in place. */
static void tail_columns(const float *ablk, int mc, int kc, const bsrc *B, int k0, int j0,
                         int nj, float *c, size_t ldc, int add) {
  for (int ir = 0; ir < mc; ir += TAIL_PANELS * MR) {
    const int rows = mc - ir < TAIL_PANELS * MR ? mc - ir : TAIL_PANELS * MR;
    const int np = (rows + MR - 1) / MR, mr_last = rows - (np - 1) * MR;
    const float *a = ablk + (size_t)ir * kc;
    float *ci = c + (size_t)ir * ldc;
    switch (nj) {
    case 1: tail_group(1, a, np, mr_last, kc, B, k0, j0, ci, ldc, add); break;
    case 2: tail_group(2, a, np, mr_last, kc, B, k0, j0, ci, ldc, add); break;
    default: tail_group(3, a, np, mr_last, kc, B, k0, j0, ci, ldc, add); break;
    }
  }
}

/* M rounded up to whole tiles: the row stride of a pre-packed slice. */
static size_t packed_rows(int M) { return (size_t)(M + MR - 1) / MR * MR; }

size_t vmc_sgemm_pack_a_floats__avx2(int M, int K) {
  return M > 0 && K > 0 ? packed_rows(M) * (size_t)K + PACK_SLACK : 0;
}

void vmc_sgemm_pack_a__avx2(int trans_a, int M, int K, float alpha, const float *A, int lda,
                            float *dst) {
  if (M <= 0 || K <= 0) return;
  const size_t mp = packed_rows(M);
  /* Slices in order: a slice's spill lands on the next, packed after it. */
  for (int pc = 0; pc < K; pc += KC) {
    const int kc = K - pc < KC ? K - pc : KC;
    pack_a(trans_a, A, (size_t)lda, 0, pc, M, kc, alpha, dst + (size_t)pc * mp);
  }
}

/* A^T read in place with few columns from long rows: the sub-slices below. */
static int a_sub_path(const vmc_gemm_args *g) {
  return !g->pa && g->trans_a && g->alpha == 1.0f && g->N <= DIRECT_A_MAX_N &&
         g->N <= A_SUB_MAX_N && g->lda >= A_SUB_MIN_LDA &&
         (size_t)g->K * (size_t)g->M * sizeof(float) > A_SUB_MIN_BYTES;
}

/* The driver; SUB (a constant in each instance) admits the sub-slices, whose
 * per-tile bookkeeping the other instance folds away. */
static inline __attribute__((always_inline)) void run(const vmc_gemm_args *g, const int SUB) {
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
  const int direct_b = !trans_b && M <= DIRECT_B_MAX_M;
  const int direct_a = !pre && alpha == 1.0f && N <= DIRECT_A_MAX_N;
  const int kc_max = K < KC ? K : KC;
  const int mc_max = direct_a ? MR : M < MC ? (M + MR - 1) / MR * MR : MC;
  const int nc_max = direct_b ? NR : N < NC ? (N + NR - 1) / NR * NR : NC;
  /* A^T read in place (a tile's MR floats of each stored row) walks a K
   * slice a line per row, which memory serves slowly when A streams from it.
   * The tiles then fetch, in order, the rows after their slice into the L2
   * (tile.pfs), and where a slice of such rows would not stay there the
   * slice is taken in sub-slices of about A_SUB_BYTES of rows, every tile
   * over one sub-slice before the next; each tile's accumulators carry from
   * one sub-slice to the next through a scratch tile (STORE_KEEP, acc0), so
   * each sum is still one chain per KC slice: the same bits. */
  const int a_seq = SUB && lda <= 2 * (size_t)M; /* SUB: a_sub_path's choice */
  int ksub = kc_max;
  const size_t n_acc = (size_t)((M + MR - 1) / MR) * (size_t)((N + NR - 1) / NR) * MR * NR;
  if (SUB && n_acc * sizeof(float) <= A_SUB_ACC_BYTES) {
    const size_t rows = A_SUB_BYTES / (sizeof(float) * lda) / 16 * 16;
    ksub = rows < A_SUB_MIN ? A_SUB_MIN : rows > (size_t)kc_max ? kc_max : (int)rows;
  }
  /* The thread's packing buffers (core.h), at most MC*KC (A), KC*NC (B)
   * and A_SUB_ACC_BYTES (the accumulators carried between sub-slices). */
  const size_t na = (size_t)mc_max * kc_max + PACK_SLACK;
  float *pa = pre ? NULL : vmc_thread_scratch(VMC_SCRATCH_GEMM_A, na * sizeof(float));
  float *pb = vmc_thread_scratch(VMC_SCRATCH_GEMM_B, (size_t)nc_max * kc_max * sizeof(float));
  float *acc = ksub < kc_max ? vmc_thread_scratch(VMC_SCRATCH_GEMM_ACC, n_acc * sizeof(float))
                             : NULL;
  if ((!pre && !pa) || !pb || (ksub < kc_max && !acc)) {
    vmc_sgemm_run__ref(g); /* out of memory: the reference needs no buffers */
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
      /* Field by field: an initializer zeroes the whole struct (a rep stos,
       * 5 % of this driver's time at Winograd's small K). */
      tile t;
      /* A slice stored alone (vmc_gemm_args.c_slice) is set, without epilogue. */
      float *const Cs = g->c_slice ? C + (size_t)(pc / KC) * g->c_slice : C;
      t.kc = kc, t.ldc = ldc, t.beta = beta, t.e = last && epi && !g->c_slice ? &te : NULL;
      t.a = t.b = NULL, t.ar = NULL, t.brow = NULL, t.as = t.bs = 0;
      t.pfc = (size_t)M * ldc * sizeof(float) > GEMM256_PF_C_BYTES;
      t.pfs = NULL, t.pfn = 0, t.acc0 = NULL;
      t.nt = 1, t.a_step = t.b_step = t.c_step = t.r_step = 0, t.bias_step = 0;
      t.mode = g->c_slice                  ? STORE_SET
               : pc > 0 || beta == 1.0f ? STORE_ADD
               : beta == 0.0f           ? STORE_SET
                                        : STORE_BETA;
      const int slice_mode = t.mode, slice_pfc = t.pfc;
      const int strip = !SUB && kc <= STRIP_MAX_K; /* strips of tiles per call (tile.nt) */
      const tile_epi *const slice_e = t.e;
      /* A ragged last panel of at most TAIL_COLS columns, read in place: by
       * tail_columns where A is packed and nothing but C's old value joins
       * the sums. */
      const int col_tail = direct_b && nc - nc_full <= TAIL_COLS && (pre || !direct_a) && !t.e &&
                           t.mode != STORE_BETA;
      if (!direct_b)
        pack_b(trans_b, &src, pc, jc, kc, nc, pb);
      else if (nc_full < nc && !col_tail)
        pack_b(trans_b, &src, pc, jc + nc_full, kc, nc - nc_full, pb);
      for (int s1 = 0; s1 < kc; s1 += ksub) { /* once unless SUB: ksub >= kc */
        const int s0 = SUB ? s1 : 0;
        const int sk = !SUB ? kc : kc - s0 < ksub ? kc - s0 : ksub, fin = !SUB || s0 + sk >= kc;
        const int k_next = pc + s0 + sk; /* the rows tile.pfs fetches start here */
        const int n_next = K - k_next < ksub ? K - k_next : ksub;
        const size_t span = /* lines from row k_next's start to row k_next + n_next - 1's */
            a_seq && n_next > 0 ? ((size_t)(n_next - 1) * lda + (size_t)M + 15) / 16 : 0;
        size_t q = 0; /* tiles of this sub-slice so far */
        /* Each tile fetches an even share of the next sub-slice's lines.
         * Against a line per k of each tile's own rows (so the first tiles
         * fetched it all), Zen 3, one thread, alternating in one process,
         * three rounds: 288x32x12544 +13, +15, +20 %; 144x16x50176 +9, +23,
         * +16 %; 144x32x12544 +5, +9, +7 %; 576x64x3136 +9, +7, +14 %;
         * 288x64x3136 -2, +17, +4 %.  A walk through each sub-slice's
         * lines in address order before its tiles, which had gained 20-30 %
         * over the old fetches where more than 6 MiB of whole rows stream
         * from memory, then only cost time (no walk: 288x32x12544 +3 to
         * +7 %, 144x32x12544 +4 to +6 %, the others within +-1 %). */
        const size_t n_tiles = (size_t)((M + MR - 1) / MR) * (size_t)((nc + NR - 1) / NR);
        const size_t share = (span + n_tiles - 1) / n_tiles;
        t.kc = sk;
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
            if (col_tail && jr == nc_full) {
              tail_columns(ablk, mc, kc, &src, pc, jc + jr, nc - jr, Cs + (size_t)ic * ldc + jc + jr,
                           ldc, t.mode == STORE_ADD);
              break;
            }
            t.nr = nc - jr < NR ? nc - jr : NR;
            const int in_place = direct_b && jr < nc_full;
            /* Small K: each call runs a strip of tiles, all of a row tile's
             * in-place panels (B read in place), else all of the block's
             * whole row tiles from here (the same tiles, in another order:
             * the same floats). */
            const int np = strip && in_place && jr == 0 && nc_full >= 2 * NR ? nc_full / NR : 1;
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
            if (brows)
              t.brow += s0;
            else
              t.b += (size_t)s0 * t.bs;
            for (int ir = 0; ir < mc; ir += MR) {
              const int mr = mc - ir < MR ? mc - ir : MR, i = ic + ir;
              t.mr = mr;
              t.c = Cs + (size_t)i * ldc + jc + jr;
              int arows = 0;
              const float *ap[MR];
              t.pf = 0;
              if (ablk) {
                t.a = ablk + (size_t)ir * kc + (size_t)s0 * MR;
                t.as = MR;
              } else if (!trans_a) { /* A's rows in place, clamped to the last */
                for (int r = 0; r < MR; r++)
                  ap[r] = g->A + (size_t)(i + (r < mr ? r : mr - 1)) * lda + pc + s0;
                t.ar = ap;
                t.pf = PF_TILES * MR * lda;
                arows = 1;
              } else if (instance_rows(mr) == mr) { /* A^T: MR floats of row k */
                t.a = g->A + (size_t)(pc + s0) * lda + i;
                t.as = lda;
                t.pf = a_seq ? 0 : PF_K * lda;
              } else { /* a ragged A^T tile would read past row k: pack it */
                pack_a(1, g->A, lda, i, pc + s0, mr, sk, 1.0f, pa);
                t.a = pa;
                t.as = MR;
              }
              if (SUB) { /* the other instance keeps the slice's fields as set */
                t.pfs = q * share < span ? g->A + (size_t)k_next * lda + q * share * 16 : NULL;
                t.pfn = t.pfs ? (int)(span - q * share < share ? span - q * share : share) : 0;
                t.acc0 = s0 > 0 ? acc + q * MR * NR : NULL;
                if (fin) {
                  t.mode = slice_mode, t.e = slice_e, t.pfc = slice_pfc;
                } else {
                  t.c = acc + q * MR * NR;
                  t.mode = STORE_KEEP, t.e = NULL, t.pfc = 0;
                }
                q++;
              }
              if (t.e) {
                te.bias = epi->bias ? epi->bias + i : NULL;
                te.res = epi->res ? epi->res + (size_t)i * te.ldr + jc + jr : NULL;
              }
              if (np > 1) {
                t.nt = np;
                t.a_step = 0, t.b_step = NR, t.c_step = NR, t.r_step = NR, t.bias_step = 0;
              } else if (strip && mr == MR && mc - ir >= 2 * MR) {
                t.nt = (mc - ir) / MR;
                t.a_step = ablk ? (size_t)MR * kc : arows ? (size_t)MR * lda : MR;
                t.b_step = 0, t.c_step = (size_t)MR * ldc, t.r_step = (size_t)MR * te.ldr;
                t.bias_step = MR;
              }
              pick_ukernel(mr, t.nr, arows, brows, SUB)(&t);
              if (np == 1) ir += (t.nt - 1) * MR; /* the column strip's tiles */
              t.nt = 1;
            }
            jr += (np - 1) * NR;
          }
        }
      }
    }
  }
}

static void run_plain(const vmc_gemm_args *g) { run(g, 0); }
static void run_sub(const vmc_gemm_args *g) { run(g, 1); }

/* The driver of every entry point (gemm.h's vmc_gemm_args). */
void vmc_sgemm_run__avx2(const vmc_gemm_args *g) {
  if (a_sub_path(g))
    run_sub(g);
  else
    run_plain(g);
}

int vmc_sgemm_slice_k__avx2(void) { return KC; }

void vmc_sgemm__avx2(int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta,
                     float *C, int ldc) {
  const vmc_gemm_args g = {.trans_a = trans_a, .trans_b = trans_b, .M = M, .N = N, .K = K,
                           .alpha = alpha, .A = A, .lda = lda, .B = B, .ldb = ldb,
                           .beta = beta, .C = C, .ldc = ldc};
  vmc_sgemm_run__avx2(&g);
}

void vmc_sgemm_rows__avx2(int trans_b, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *const *brow, float beta, float *C,
                          int ldc) {
  const vmc_gemm_args g = {.trans_b = trans_b, .M = M, .N = N, .K = K, .alpha = alpha,
                           .A = A, .lda = lda, .brow = brow, .beta = beta, .C = C,
                           .ldc = ldc};
  vmc_sgemm_run__avx2(&g);
}
