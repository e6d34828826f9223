/* int8 kernels, AVX2 (no VNNI): the 6x16 GEMM, full-range and narrow, and
 * the depthwise convolution.
 *
 * No saturating step: vpmaddubsw would multiply u8 x s8 pairs and add them
 * into s16 with saturation (255*127 + 255*127 > 32767), so instead both
 * operands are widened to s16 and multiplied with vpmaddwd, whose sums of two
 * products (|sum| <= 65280) are exact s32, then added into s32 accumulators.
 *
 * GEMM.  A is packed at plan time as s16 in 6-row panels, 2 consecutive k of
 * each row per 32-bit group (mr = 6, ka = 2, a_bytes = 2).  Per call, B is
 * packed one 16-pixel panel at a time into this thread's scratch buffer: for
 * each k pair, 16 lanes of (B[2p][n], B[2p+1][n]) zero-extended to s16 (zeros
 * past K and N).  The micro-kernel keeps 6 x 2 ymm accumulators over the
 * whole of K and applies the epilogue from registers (qgemm.h); the ragged
 * right edge goes through a small buffer.
 *
 * The narrow GEMM, for weights whose pairs (k = 2j, 2j + 1) have |a| + |b|
 * <= 128 (qgemm.h: vmc_qgemm_for_weights) and so cannot saturate
 * vpmaddubsw: the same tiles over k-quads, A as s8 (ka = 4, a_bytes = 1) and
 * B's panels as 16 lanes of 4 u8, the VNNI variants' layout.  A quad is a
 * vpmaddubsw (4 products into 2 exact s16 sums), a vpmaddwd by ones (their
 * s32 sum) and a vpaddd: 3 instructions per 32 products where the full-range
 * step takes 2 per 16, and half the bytes of B.
 *
 * Needs AVX2 (the file is built with -mavx2 -mfma): vmc_qgemm_best() calls it
 * only where vmc_isa_name() is at least "avx2". */
#include "kernels/qepi_ymm.h"
#include "kernels/qgemm.h"
#include "kernels/ymm.h"

#include <immintrin.h>
#include <string.h>

#define MR 6
#define NR 16

#if defined(__clang__)
#define UNROLL_FULL _Pragma("unroll")
#else
#define UNROLL_FULL _Pragma("GCC unroll 16")
#endif
#define INLINE static inline __attribute__((always_inline))

static void qgemm_run(int M, int N, int K, const void *packed_a, const uint8_t *B,
                      int ldb, const int32_t *boff, const vmc_qepi *epi, void *C, int ldc);
static void qgemm_run_narrow(int M, int N, int K, const void *packed_a, const uint8_t *B,
                             int ldb, const int32_t *boff, const vmc_qepi *epi, void *C,
                             int ldc);

const vmc_qgemm_variant vmc_qgemm_u8s8s32_6x16__avx2 = {
    .name = "qgemm_u8s8s32_6x16__avx2",
    .needs = VMC_CPU_NEEDS_AVX2,
    .mr = MR,
    .nr = NR,
    .ka = 2,
    .a_bytes = 2,
    .run = qgemm_run,
};

const vmc_qgemm_variant vmc_qgemm_u8s8s32_6x16_narrow__avx2 = {
    .name = "qgemm_u8s8s32_6x16_narrow__avx2",
    .needs = VMC_CPU_NEEDS_AVX2,
    .mr = MR,
    .nr = NR,
    .ka = 4,
    .a_bytes = 1,
    .run = qgemm_run_narrow,
    .pair_max = 128,
};

/* C rows m0..m0+mr-1, columns 0..nr-1 (nr <= NVE * 8) = epi(A-panel x
 * B-panel) over kg k-groups: pairs of s16, or with NARROW quads of u8 x s8.
 * Both layouts hold 4 bytes of a row of A and 64 bytes of B per group. */
INLINE void ukernel(const int NARROW, const int MRE, const int NVE, const vmc_qout OUT, int kg,
                    const uint8_t *restrict a, const uint8_t *restrict b, const epi_ctx *e,
                    int m0, uint8_t *restrict c, size_t ldc_bytes, int mr, int nr) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
  /* The accumulators start at the bias (rows past mr: zero, unread). */
  UNROLL_FULL
  for (int r = 0; r < MRE; r++) {
    const __m256i vb = _mm256_set1_epi32(e->bias && r < mr ? e->bias[m0 + r] : 0);
    UNROLL_FULL
    for (int v = 0; v < NVE; v++) acc[r][v] = vb;
  }
  for (int q = 0; q < kg; q++) {
    __m256i bv[2];
    UNROLL_FULL
    for (int v = 0; v < NVE; v++) bv[v] = _mm256_load_si256((const __m256i *)(b + 32 * v));
    UNROLL_FULL
    for (int r = 0; r < MRE; r++) {
      int32_t w;
      memcpy(&w, a + 4 * r, sizeof w);
      const __m256i av = _mm256_set1_epi32(w);
      UNROLL_FULL
      for (int v = 0; v < NVE; v++) {
        const __m256i p = NARROW ? _mm256_madd_epi16(_mm256_maddubs_epi16(bv[v], av), ones)
                                 : _mm256_madd_epi16(bv[v], av);
        acc[r][v] = _mm256_add_epi32(acc[r][v], p);
      }
    }
    a += MR * 4;
    b += NR * 4;
  }
  const size_t osz = vmc_qout_bytes(OUT);
  UNROLL_FULL
  for (int r = 0; r < MRE; r++) {
    if (r >= mr) continue; /* no early exit: clang unrolls fully */
    const int m = m0 + r;
    const __m256 vs = _mm256_set1_ps(OUT == VMC_QOUT_S32 ? 0.0f
                                     : e->scale[e->per_tensor ? 0 : m]);
    uint8_t *cr = c + (size_t)r * ldc_bytes;
    UNROLL_FULL
    for (int v = 0; v < NVE; v++)
      store8(e, OUT, acc[r][v], vs, cr + (size_t)(8 * v) * osz, nr - 8 * v);
  }
}

typedef void (*ukernel_fn)(int, const uint8_t *, const uint8_t *, const epi_ctx *, int,
                           uint8_t *, size_t, int, int);

/* The instances: qgemm_ukernel_<rows>x<pixels>_<out>[n]__avx2 (n: narrow),
 * one per output kind so the write-back has no branches. */
#define UKERNEL(rows, px, out, n) qgemm_ukernel_##rows##x##px##_##out##n##__avx2
#define UKERNEL_INSTANCE(rows, px, out, OUT, n, NARROW)                           \
  static void UKERNEL(rows, px, out, n)(int kg, const uint8_t *a, const uint8_t *b, \
                                        const epi_ctx *e, int m0, uint8_t *c,     \
                                        size_t ldc_bytes, int mr, int nr) {       \
    ukernel(NARROW, rows, (px) / 8, OUT, kg, a, b, e, m0, c, ldc_bytes, mr, nr);  \
  }
#define UKERNEL_OUTS(rows, px, n, NARROW)                                         \
  UKERNEL_INSTANCE(rows, px, u8, VMC_QOUT_U8, n, NARROW)                          \
  UKERNEL_INSTANCE(rows, px, s8, VMC_QOUT_S8, n, NARROW)                          \
  UKERNEL_INSTANCE(rows, px, s32, VMC_QOUT_S32, n, NARROW)                        \
  UKERNEL_INSTANCE(rows, px, f32, VMC_QOUT_F32, n, NARROW)                        \
  static const ukernel_fn ukernels_##rows##x##px##n[4] = {                        \
      UKERNEL(rows, px, u8, n), UKERNEL(rows, px, s8, n), UKERNEL(rows, px, s32, n), \
      UKERNEL(rows, px, f32, n)};
#define UKERNEL_TILES(n, NARROW)                                                  \
  UKERNEL_OUTS(6, 16, n, NARROW)                                                  \
  UKERNEL_OUTS(6, 8, n, NARROW)                                                   \
  UKERNEL_OUTS(4, 16, n, NARROW)                                                  \
  UKERNEL_OUTS(4, 8, n, NARROW)                                                   \
  UKERNEL_OUTS(2, 16, n, NARROW)                                                  \
  UKERNEL_OUTS(2, 8, n, NARROW)
UKERNEL_TILES(, 0)
UKERNEL_TILES(n, 1)
_Static_assert(VMC_QOUT_U8 == 0 && VMC_QOUT_S8 == 1 && VMC_QOUT_S32 == 2 &&
                   VMC_QOUT_F32 == 3,
               "ukernels_* tables are indexed by vmc_qout");

/* Smallest instance covering an mr x nr tile. */
static ukernel_fn pick_ukernel(int narrow, int mr, int nr, vmc_qout out) {
  const int wide = nr > 8;
  if (narrow) {
    if (mr <= 2) return wide ? ukernels_2x16n[out] : ukernels_2x8n[out];
    if (mr <= 4) return wide ? ukernels_4x16n[out] : ukernels_4x8n[out];
    return wide ? ukernels_6x16n[out] : ukernels_6x8n[out];
  }
  if (mr <= 2) return wide ? ukernels_2x16[out] : ukernels_2x8[out];
  if (mr <= 4) return wide ? ukernels_4x16[out] : ukernels_4x8[out];
  return wide ? ukernels_6x16[out] : ukernels_6x8[out];
}

/* Row k of B's panel at column j, its first nr <= 16 bytes (zeros past nr;
 * zeros for k >= K). */
static inline __m128i b_row16(const uint8_t *B, size_t ldb, const int32_t *boff, int j, int k,
                              int K, int nr) {
  if (k >= K) return _mm_setzero_si128();
  const uint8_t *s = vmc_qgemm_brow(B, ldb, boff, k) + j;
  if (nr >= 16) return _mm_loadu_si128((const __m128i *)s);
  uint8_t t[16] = {0};
  memcpy(t, s, (size_t)nr);
  return _mm_loadu_si128((const __m128i *)t);
}

/* Rows k .. k + n - 1 of B's panel at column j, 16 bytes each: straight
 * loads (whole panels, k + n <= K), or b_row16 (the last group, or nr < 16). */
INLINE void b_rows(const int n, int whole, const uint8_t *B, size_t ldb, const int32_t *boff,
                   int j, int k, int K, int nr, __m128i *x) {
  UNROLL_FULL
  for (int i = 0; i < n; i++)
    x[i] = whole ? _mm_loadu_si128((const __m128i *)(vmc_qgemm_brow(B, ldb, boff, k + i) + j))
                 : b_row16(B, ldb, boff, j, k + i, K, nr);
}

/* dst <- B[0:K, 0:nr] (nr <= 16) as one panel: for each k pair, 16 lanes of
 * two s16. */
static void pack_b(const uint8_t *B, size_t ldb, const int32_t *boff, int j, int K, int nr,
                   uint8_t *dst) {
  const int kp = (K + 1) / 2, whole = nr == NR ? K / 2 : 0;
  for (int q = 0; q < kp; q++) {
    __m128i x[2];
    b_rows(2, q < whole, B, ldb, boff, j, 2 * q, K, nr, x);
    uint8_t *d = dst + (size_t)q * NR * 4;
    _mm256_store_si256((__m256i *)d, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x[0], x[1])));
    _mm256_store_si256((__m256i *)(d + 32),
                       _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x[0], x[1])));
  }
}

/* The same for the narrow GEMM: for each k-quad, 16 lanes of 4 u8. */
static void pack_b_quads(const uint8_t *B, size_t ldb, const int32_t *boff, int j, int K,
                         int nr, uint8_t *dst) {
  const int kq = (K + 3) / 4, whole = nr == NR ? K / 4 : 0;
  for (int q = 0; q < kq; q++) {
    __m128i x[4];
    b_rows(4, q < whole, B, ldb, boff, j, 4 * q, K, nr, x);
    const __m128i p01l = _mm_unpacklo_epi8(x[0], x[1]), p01h = _mm_unpackhi_epi8(x[0], x[1]);
    const __m128i p23l = _mm_unpacklo_epi8(x[2], x[3]), p23h = _mm_unpackhi_epi8(x[2], x[3]);
    uint8_t *d = dst + (size_t)q * NR * 4;
    _mm_store_si128((__m128i *)d, _mm_unpacklo_epi16(p01l, p23l));
    _mm_store_si128((__m128i *)(d + 16), _mm_unpackhi_epi16(p01l, p23l));
    _mm_store_si128((__m128i *)(d + 32), _mm_unpacklo_epi16(p01h, p23h));
    _mm_store_si128((__m128i *)(d + 48), _mm_unpackhi_epi16(p01h, p23h));
  }
}

INLINE void run(const int NARROW, int M, int N, int K, const void *packed_a, const uint8_t *B,
                int ldb, const int32_t *boff, const vmc_qepi *epi, void *C, int ldc) {
  const vmc_qgemm_variant *v =
      NARROW ? &vmc_qgemm_u8s8s32_6x16_narrow__avx2 : &vmc_qgemm_u8s8s32_6x16__avx2;
  if (M <= 0 || N <= 0) return;
  if (K < 0) K = 0;
  const int kg = (K + v->ka - 1) / v->ka;
  uint8_t *pb = vmc_qscratch((size_t)(kg > 0 ? kg : 1) * NR * 4);
  if (!pb) {
    vmc_qgemm_packed_scalar(v, M, N, K, packed_a, B, ldb, boff, epi, C, ldc);
    return;
  }
  epi_ctx e;
  epi_init(&e, epi);
  const size_t osz = vmc_qout_bytes(epi->out), ldc_bytes = (size_t)ldc * osz;
  const size_t a_panel = (size_t)kg * MR * 4;
  const uint8_t *A = packed_a;
  for (int j = 0; j < N; j += NR) {
    const int nr = N - j < NR ? N - j : NR;
    (NARROW ? pack_b_quads : pack_b)(B, (size_t)ldb, boff, j, K, nr, pb);
    const ukernel_fn full = pick_ukernel(NARROW, MR, nr, epi->out);
    for (int i = 0; i < M; i += MR) {
      const int mr = M - i < MR ? M - i : MR;
      uint8_t *c = (uint8_t *)C + (size_t)i * ldc_bytes + (size_t)j * osz;
      (mr == MR ? full : pick_ukernel(NARROW, mr, nr, epi->out))(
          kg, A + (size_t)(i / MR) * a_panel, pb, &e, i, c, ldc_bytes, mr, nr);
    }
  }
}

static void qgemm_run(int M, int N, int K, const void *packed_a, const uint8_t *B,
                      int ldb, const int32_t *boff, const vmc_qepi *epi, void *C, int ldc) {
  run(0, M, N, K, packed_a, B, ldb, boff, epi, C, ldc);
}

static void qgemm_run_narrow(int M, int N, int K, const void *packed_a, const uint8_t *B,
                             int ldb, const int32_t *boff, const vmc_qepi *epi, void *C,
                             int ldc) {
  run(1, M, N, K, packed_a, B, ldb, boff, epi, C, ldc);
}

/* ---- depthwise ----------------------------------------------------------------
 * As vmc_qdwconv__avx512 with 8 outputs per vector: the plane is copied once
 * into scratch with its x_zp padding and slack, each tap of 8 outputs is one
 * load (8 bytes for stride 1, 16 for stride 2 with every other byte kept),
 * products exact in s32 via vpmaddwd. */
/* The output rows of one channel from the padded plane P (rows wpad bytes
 * apart): KH x KW taps at column stride SW, compile-time constants in the
 * 3x3 instances (the tap loops unrolled), the call's values otherwise. */
INLINE void dw_rows(const int KH, const int KW, const int SW, const uint8_t *P, int wpad,
                    int sh, int oh, int ow, const __m256i *wv, __m256i vb, __m256 vs,
                    const epi_ctx *e, void *y) {
  const size_t osz = vmc_qout_bytes(e->out);
  const __m256i lo16 = _mm256_set1_epi32(0xffff);
  for (int oy = 0; oy < oh; oy++) {
    const uint8_t *row = P + (size_t)oy * sh * wpad;
    uint8_t *yr = (uint8_t *)y + (size_t)oy * ow * osz;
    for (int ox = 0; ox < ow; ox += 8) {
      __m256i acc = vb;
      const uint8_t *base = row + (size_t)ox * SW;
      for (int i = 0; i < KH; i++) {
        const uint8_t *s = base + (size_t)i * wpad;
        for (int j = 0; j < KW; j++) {
          __m256i xv;
          if (SW == 1)
            xv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(s + j)));
          else
            xv = _mm256_and_si256(
                _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(s + j))), lo16);
          acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv[i * KW + j]));
        }
      }
      store8(e, e->out, acc, vs, yr + (size_t)ox * osz, ow - ox);
    }
  }
}

/* n bytes from s to d: 16 at a time, then 8-, 4-, 2- and 1-byte pieces
 * (fixed-size copies, inline; rows are a few dozen bytes). */
INLINE void copy_bytes(uint8_t *d, const uint8_t *s, int n) {
  int k = 0;
  for (; k + 16 <= n; k += 16)
    _mm_storeu_si128((__m128i *)(d + k), _mm_loadu_si128((const __m128i *)(s + k)));
  if (n - k >= 8) {
    memcpy(d + k, s + k, 8);
    k += 8;
  }
  if (n - k >= 4) {
    memcpy(d + k, s + k, 4);
    k += 4;
  }
  if (n - k >= 2) {
    memcpy(d + k, s + k, 2);
    k += 2;
  }
  if (n - k >= 1) d[k] = s[k];
}

void vmc_qdwconv__avx2(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                       const vmc_qepi *epi, void *y) {
  const int oh = vmc_qdw_out_h(p), ow = vmc_qdw_out_w(p);
  if (oh <= 0 || ow <= 0) return;
  if ((p->sh != 1 && p->sh != 2) || (p->sw != 1 && p->sw != 2) || p->kh * p->kw > 64) {
    vmc_qdwconv__ref(p, x, wk, epi, y);
    return;
  }
  const int hp = (oh - 1) * p->sh + p->kh, wp = (ow - 1) * p->sw + p->kw;
  const int wpad = wp + 32; /* a load may run 16 past the last tap */
  /* 32 bytes more: the last row's fill runs to a whole vector */
  uint8_t *P = vmc_qscratch((size_t)hp * (size_t)wpad + 32);
  if (!P) {
    vmc_qdwconv__ref(p, x, wk, epi, y);
    return;
  }
  const __m256i zpv = _mm256_set1_epi8((char)p->x_zp);
  for (int r = 0; r < hp; r++) { /* rows in order: a fill's overrun is the next row's */
    uint8_t *d = P + (size_t)r * wpad;
    const int iy = r - p->ph;
    for (int k = 0; k < wpad; k += 32) _mm256_storeu_si256((__m256i *)(d + k), zpv);
    if (iy < 0 || iy >= p->h) continue;
    const int x0 = p->pw, n = p->w < wp - x0 ? p->w : wp - x0;
    if (n > 0) copy_bytes(d + x0, x + (size_t)iy * (size_t)p->w, n);
  }

  epi_ctx e;
  epi_init(&e, epi);
  const int taps = p->kh * p->kw;
  __m256i wv[64];
  for (int t = 0; t < taps; t++) wv[t] = _mm256_set1_epi32((uint16_t)(int16_t)wk[t]);
  const __m256i vb = _mm256_set1_epi32(epi->bias ? epi->bias[0] : 0);
  const __m256 vs = _mm256_set1_ps(epi->out == VMC_QOUT_S32 ? 0.0f : epi->scale[0]);
  if (p->kh == 3 && p->kw == 3 && p->sw == 1)
    dw_rows(3, 3, 1, P, wpad, p->sh, oh, ow, wv, vb, vs, &e, y);
  else if (p->kh == 3 && p->kw == 3)
    dw_rows(3, 3, 2, P, wpad, p->sh, oh, ow, wv, vb, vs, &e, y);
  else
    dw_rows(p->kh, p->kw, p->sw, P, wpad, p->sh, oh, ow, wv, vb, vs, &e, y);
}
