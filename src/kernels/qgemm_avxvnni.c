/* int8 GEMM, AVX-VNNI (256-bit {vex} vpdpbusd; Intel Alder Lake and later,
 * AMD Zen 5): the 4x24 GEMM.
 *
 * The layouts of the AVX-512 VNNI variant at 256 bits: A packed at plan time
 * in 4-row panels of k-quads (mr = 4, ka = 4, 16 bytes per quad); per call, B
 * packed one 24-pixel panel at a time, k-quad-major, 24 32-bit lanes of 4
 * consecutive k per quad (zeros past K and N).  4 x 3 ymm accumulators, 3 B
 * vectors and one broadcast fill the 16 ymm registers; VEX has no embedded
 * broadcast, so each row's 4 weights are a vpbroadcastd.  The epilogue is
 * applied from registers (qgemm.h); the ragged right edge goes through a
 * small buffer.
 *
 * Needs AVX2 and AVX-VNNI (the file is built with -mavx2 -mfma -mavxvnni):
 * vmc_qgemm_best() calls it only where the CPU has AVX-VNNI and
 * vmc_isa_name() is at least "avx2".
 *
 * Testing without such a CPU: built with -DQGEMM_AVXVNNI_EVEX and
 * -mavx512vnni -mavx512vl instead, the kernel uses the EVEX form of the same
 * instruction (identical semantics), so it runs on AVX-512 VNNI machines. */
#include "kernels/qepi_ymm.h"
#include "kernels/qgemm.h"

#include <immintrin.h>
#include <string.h>

#ifdef QGEMM_AVXVNNI_EVEX
#define DPBUSD(acc, u8, s8) _mm256_dpbusd_epi32(acc, u8, s8)
#define NEEDS_VNNI (VMC_CPU_AVX512VNNI | VMC_CPU_AVX512VL)
#else
#define DPBUSD(acc, u8, s8) _mm256_dpbusd_avx_epi32(acc, u8, s8)
#define NEEDS_VNNI VMC_CPU_AVXVNNI
#endif

#define MR 4
#define NV 3
#define NR (8 * NV)

#if defined(__clang__)
#define UNROLL_FULL _Pragma("unroll")
#else
#define UNROLL_FULL _Pragma("GCC unroll 16")
#endif
#define INLINE static inline __attribute__((always_inline))

static void qgemm_run(int M, int N, int K, const void *packed_a, const uint8_t *B,
                      int ldb, const int32_t *boff, const vmc_qepi *epi, void *C, int ldc);

const vmc_qgemm_variant vmc_qgemm_u8s8s32_4x24__avxvnni = {
    .name = "qgemm_u8s8s32_4x24__avxvnni",
    .needs = NEEDS_VNNI | VMC_CPU_NEEDS_AVX2,
    .mr = MR,
    .nr = NR,
    .ka = 4,
    .a_bytes = 1,
    .run = qgemm_run,
};

INLINE void ukernel(const int MRE, const int NVE, const vmc_qout OUT, int kq, const uint8_t *restrict a,
                    const uint8_t *restrict b, const epi_ctx *e, int m0,
                    uint8_t *restrict c, size_t ldc_bytes, int mr, int nr) {
  __m256i acc[MR][NV];
  /* The accumulators start at the bias (rows past mr: zero, unread). */
  UNROLL_FULL
  for (int r = 0; r < MRE; r++) {
    const __m256i vb = _mm256_set1_epi32(e->bias && r < mr ? e->bias[m0 + r] : 0);
    UNROLL_FULL
    for (int v = 0; v < NVE; v++) acc[r][v] = vb;
  }
  for (int q = 0; q < kq; q++) {
    __m256i bv[NV];
    UNROLL_FULL
    for (int v = 0; v < NVE; v++) bv[v] = _mm256_load_si256((const __m256i *)(b + 32 * v));
    UNROLL_FULL
    for (int r = 0; r < MRE; r++) {
      int32_t w;
      memcpy(&w, a + 4 * r, sizeof w);
      const __m256i av = _mm256_set1_epi32(w);
      UNROLL_FULL
      for (int v = 0; v < NVE; v++) acc[r][v] = DPBUSD(acc[r][v], bv[v], av);
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

/* The instances: qgemm_ukernel_4x<pixels>_<out>__avxvnni, one per output
 * kind so the write-back has no branches. */
#define UKERNEL(px, out) qgemm_ukernel_4x##px##_##out##__avxvnni
#define UKERNEL_INSTANCE(px, out, OUT)                                            \
  static void UKERNEL(px, out)(int kq, const uint8_t *a, const uint8_t *b,        \
                               const epi_ctx *e, int m0, uint8_t *c,              \
                               size_t ldc_bytes, int mr, int nr) {                \
    ukernel(MR, (px) / 8, OUT, kq, a, b, e, m0, c, ldc_bytes, mr, nr);            \
  }
#define UKERNEL_OUTS(px)                                                          \
  UKERNEL_INSTANCE(px, u8, VMC_QOUT_U8)                                           \
  UKERNEL_INSTANCE(px, s8, VMC_QOUT_S8)                                           \
  UKERNEL_INSTANCE(px, s32, VMC_QOUT_S32)                                         \
  UKERNEL_INSTANCE(px, f32, VMC_QOUT_F32)                                         \
  static const ukernel_fn ukernels_4x##px[4] = {UKERNEL(px, u8), UKERNEL(px, s8), \
                                                UKERNEL(px, s32), UKERNEL(px, f32)};
UKERNEL_OUTS(24)
UKERNEL_OUTS(16)
UKERNEL_OUTS(8)
_Static_assert(VMC_QOUT_U8 == 0 && VMC_QOUT_S8 == 1 && VMC_QOUT_S32 == 2 &&
                   VMC_QOUT_F32 == 3,
               "ukernels_* tables are indexed by vmc_qout");

static ukernel_fn pick_ukernel(int nr, vmc_qout out) {
  return nr > 16 ? ukernels_4x24[out] : nr > 8 ? ukernels_4x16[out] : ukernels_4x8[out];
}

/* dst <- B[0:K, 0:nr] (nr <= 24) as one panel: for each k-quad, 24 lanes of
 * 4 u8.  Rows are read for their first nr bytes only. */
static void pack_b(const uint8_t *B, size_t ldb, const int32_t *boff, int j, int K, int nr,
                   uint8_t *dst) {
  const int kq = (K + 3) / 4;
  for (int q = 0; q < kq; q++) {
    __m128i lo[4], hi[4]; /* pixels 0-15, 16-23 of rows 4q..4q+3 */
    for (int i = 0; i < 4; i++) {
      const int k = 4 * q + i;
      if (k >= K) {
        lo[i] = hi[i] = _mm_setzero_si128();
        continue;
      }
      const uint8_t *s = vmc_qgemm_brow(B, ldb, boff, k) + j;
      if (nr >= NR) {
        lo[i] = _mm_loadu_si128((const __m128i *)s);
        hi[i] = _mm_loadl_epi64((const __m128i *)(s + 16));
      } else {
        uint8_t t[32] = {0};
        memcpy(t, s, (size_t)nr);
        lo[i] = _mm_loadu_si128((const __m128i *)t);
        hi[i] = _mm_loadl_epi64((const __m128i *)(t + 16));
      }
    }
    uint8_t *d = dst + (size_t)q * NR * 4;
    const __m128i p01l = _mm_unpacklo_epi8(lo[0], lo[1]), p01h = _mm_unpackhi_epi8(lo[0], lo[1]);
    const __m128i p23l = _mm_unpacklo_epi8(lo[2], lo[3]), p23h = _mm_unpackhi_epi8(lo[2], lo[3]);
    const __m128i h01 = _mm_unpacklo_epi8(hi[0], hi[1]), h23 = _mm_unpacklo_epi8(hi[2], hi[3]);
    _mm_store_si128((__m128i *)d, _mm_unpacklo_epi16(p01l, p23l));
    _mm_store_si128((__m128i *)(d + 16), _mm_unpackhi_epi16(p01l, p23l));
    _mm_store_si128((__m128i *)(d + 32), _mm_unpacklo_epi16(p01h, p23h));
    _mm_store_si128((__m128i *)(d + 48), _mm_unpackhi_epi16(p01h, p23h));
    _mm_store_si128((__m128i *)(d + 64), _mm_unpacklo_epi16(h01, h23));
    _mm_store_si128((__m128i *)(d + 80), _mm_unpackhi_epi16(h01, h23));
  }
}

static void qgemm_run(int M, int N, int K, const void *packed_a, const uint8_t *B,
                      int ldb, const int32_t *boff, const vmc_qepi *epi, void *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K < 0) K = 0;
  const int kq = (K + 3) / 4;
  uint8_t *pb = vmc_qscratch((size_t)(kq > 0 ? kq : 1) * NR * 4);
  if (!pb) {
    vmc_qgemm_packed_scalar(&vmc_qgemm_u8s8s32_4x24__avxvnni, M, N, K, packed_a, B,
                            ldb, boff, epi, C, ldc);
    return;
  }
  epi_ctx e;
  epi_init(&e, epi);
  const size_t osz = vmc_qout_bytes(epi->out), ldc_bytes = (size_t)ldc * osz;
  const size_t a_panel = (size_t)kq * MR * 4;
  const uint8_t *A = packed_a;
  for (int j = 0; j < N; j += NR) {
    const int nr = N - j < NR ? N - j : NR;
    pack_b(B, (size_t)ldb, boff, j, K, nr, pb);
    const ukernel_fn f = pick_ukernel(nr, epi->out);
    for (int i = 0; i < M; i += MR) {
      const int mr = M - i < MR ? M - i : MR;
      f(kq, A + (size_t)(i / MR) * a_panel, pb, &e, i,
        (uint8_t *)C + (size_t)i * ldc_bytes + (size_t)j * osz, ldc_bytes, mr, nr);
    }
  }
}
