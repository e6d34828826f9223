/* int8 kernels, AVX-512 VNNI (vpdpbusd): the 8x32 GEMM and the depthwise
 * convolution.
 *
 * GEMM.  A is packed at plan time in 8-row panels, 4 consecutive k of each
 * row per 32-bit group (mr = 8, ka = 4: 32 bytes per k-quad).  Per call, B is
 * packed one panel of up to 32 pixels at a time into this thread's scratch
 * buffer, k-quad-major: for each k-quad, 32-bit lanes holding
 * B[4q..4q+3][n] (zeros past K and past N), the u8 operand vpdpbusd
 * multiplies with 4 s8 weights broadcast from A.  The panel (32 x K bytes)
 * stays in L1 while every 8-row panel of A streams past it, so each B byte is
 * packed once per call however large M is.  The micro-kernel keeps 8 x 2 zmm
 * accumulators over the whole of K, so the epilogue is applied straight from
 * registers; rows past M are computed on A's zero padding and not stored.
 *
 * Packing is the cost that M (16 to 64 in small conv nets) does not amortise,
 * so it is kept to in-lane byte and word unpacks: a 32-pixel panel holds, per
 * k-quad, zmm 0 = pixels {0-3, 16-19, 4-7, 20-23} and zmm 1 = pixels
 * {8-11, 24-27, 12-15, 28-31}, the order the unpacks leave them in, and the
 * write-back restores pixel order (one vpermd on the packed bytes, or two
 * 128-bit lane shuffles on 32-bit outputs).  A last panel of at most 16
 * pixels is packed in pixel order and runs one zmm per row.  Each output
 * kind has its own micro-kernel instance, so the write-back has no branches
 * but the ragged-edge mask.
 *
 * The u8/s8 write-back converts to fp32, scales and rounds; where no value
 * can overflow the conversion back (epi_set_fast, checked once per call from
 * K, the biases and the scales) it clamps after rounding, in the saturating
 * packs to bytes, rather than in fp32: two fewer fp32 operations per 16
 * outputs, on the execution ports the conversions need (Zen 4 runs vpdpbusd
 * and the conversions on different ones, min/max on the conversions').
 *
 * On AMD Zen 4 (bench/bench_qgemm.c) this tile runs square GEMMs at about
 * 90% of the measured vpdpbusd peak, so a wider one has little to win; the
 * conv shapes (M 16..64, K 16..576) lose their remaining time to packing B
 * and to the epilogue, both per output, not per multiply-add.
 *
 * Needs AVX512F/BW/VL and AVX512-VNNI: vmc_qgemm_best() calls it only where
 * vmc_isa_name() is "avx512" and the CPU has VNNI. */
#include "kernels/qgemm.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define MR 8
#define NR 32

#if defined(__clang__)
#define UNROLL_FULL _Pragma("unroll")
#else
#define UNROLL_FULL _Pragma("GCC unroll 16")
#endif
#define INLINE static inline __attribute__((always_inline))

static void qgemm_run(int M, int N, int K, const void *packed_a, const uint8_t *B,
                      int ldb, const int32_t *boff, const vmc_qepi *epi, void *C, int ldc);

const vmc_qgemm_variant vmc_qgemm_u8s8s32_8x32__avx512vnni = {
    .name = "qgemm_u8s8s32_8x32__avx512vnni",
    .needs = VMC_CPU_NEEDS_AVX512 | VMC_CPU_AVX512VNNI,
    .mr = MR,
    .nr = NR,
    .ka = 4,
    .a_bytes = 1,
    .run = qgemm_run,
};

/* A u8/s8 write-back that rounds first and clamps after (rounding is
 * monotone, so clamping before or after it gives the same integers): a
 * code is round(v) + zp clamped to [lo, hi], here by saturating packs to
 * bytes (zp added in s16 with saturation) and a byte min/max where [lo, hi]
 * is tighter than the type's range, or in s32 (zp32, ilo, ihi). */
typedef struct byte_out {
  int u8, clampb;
  __m512i zp16, blo, bhi, zp32, ilo, ihi;
} byte_out;

/* b for codes of out (U8/S8) with prep p; 0 where the clamp leaves the
 * type's range or |zp| > 255 (then only the fp32 clamp is exact). */
static int byte_out_set(byte_out *b, vmc_qout out, const vmc_qepi_prep *p) {
  if (out != VMC_QOUT_U8 && out != VMC_QOUT_S8) return 0;
  const int tmin = out == VMC_QOUT_S8 ? -128 : 0, tmax = tmin + 255;
  const int lo = (int)p->lo + p->zp, hi = (int)p->hi + p->zp;
  if (lo < tmin || hi > tmax || lo > hi || p->zp < -255 || p->zp > 255) return 0;
  b->u8 = out == VMC_QOUT_U8;
  b->clampb = lo > tmin || hi < tmax;
  b->zp16 = _mm512_set1_epi16((short)p->zp);
  b->blo = _mm512_set1_epi8((char)lo);
  b->bhi = _mm512_set1_epi8((char)hi);
  b->zp32 = _mm512_set1_epi32(p->zp);
  b->ilo = _mm512_set1_epi32(lo);
  b->ihi = _mm512_set1_epi32(hi);
  return 1;
}

/* The epilogue's per-call constants (qgemm.h). */
typedef struct epi_ctx {
  vmc_qout out;
  const int32_t *bias;
  const float *scale;
  int per_tensor;
  __m512 lo, hi;
  __m512i zp;
  int fast;     /* epi_set_fast */
  byte_out bo;  /* where fast */
} epi_ctx;

static void epi_init(epi_ctx *e, const vmc_qepi *q) {
  const vmc_qepi_prep p = vmc_qepi_prepare(q);
  e->out = q->out;
  e->bias = q->bias;
  e->scale = q->scale;
  e->per_tensor = q->per_tensor;
  e->lo = _mm512_set1_ps(p.lo);
  e->hi = _mm512_set1_ps(p.hi);
  e->zp = _mm512_set1_epi32(p.zp);
  e->fast = 0;
}

/* The fast write-back (byte_out): where every |t * s| stays below 2^30 (so
 * its conversion to s32 cannot overflow) and no scale is NaN or infinite. */
static void epi_set_fast(epi_ctx *e, const vmc_qepi *q, int M, int K) {
  e->fast = 0;
  const vmc_qepi_prep p = vmc_qepi_prepare(q);
  if (!byte_out_set(&e->bo, q->out, &p)) return;
  const double amax = 255.0 * 128.0 * K; /* |sum of K u8 x s8 products| */
  int bad = 0; /* one pass without an early exit: the compiler vectorises it */
  for (int m = 0; m < (q->per_tensor ? 1 : M); m++) {
    const double sm = fabs((double)q->scale[m]);
    const double t = amax + (q->bias ? fabs((double)q->bias[m]) : 0.0);
    bad |= !(sm <= 1e30) | (t >= 2147483647.0) | !(t * sm < 1073741824.0);
  }
  e->fast = !bad;
}

static inline __mmask16 mask16(int n) {
  return (__mmask16)(n >= 16 ? 0xffffu : n <= 0 ? 0u : (1u << n) - 1u);
}
static inline __mmask32 mask32(int n) {
  return (__mmask32)(n >= 32 ? 0xffffffffu : n <= 0 ? 0u : (1u << n) - 1u);
}

/* U8/S8: round(clamp(t * s)) + zp, 16 lanes of s32 (qgemm.h). */
INLINE __m512i requant16(const epi_ctx *e, __m512i t, __m512 s) {
  __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(t), s);
  f = _mm512_min_ps(_mm512_max_ps(f, e->lo), e->hi);
  return _mm512_add_epi32(_mm512_cvtps_epi32(f), e->zp);
}

/* t * s rounded to the nearest integer (ties to even), 16 lanes. */
INLINE __m512i round16(__m512i t, __m512 s) {
  return _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(t), s));
}

/* Words of in-range codes (U8 out: 0..255, else -128..127) to bytes: per
 * 128-bit lane L, w01.L's 8 then w23.L's 8 (no pack saturates). */
INLINE __m512i codes_bytes(__m512i w01, __m512i w23, int u8) {
  return u8 ? _mm512_packus_epi16(w01, w23) : _mm512_packs_epi16(w01, w23);
}

/* t0, t1 of in-range codes to bytes: per 128-bit lane L, four 4-byte
 * groups t0.L, t1.L, t0.L, t1.L. */
INLINE __m512i pack_codes(__m512i t0, __m512i t1, int u8) {
  const __m512i w = _mm512_packs_epi32(t0, t1);
  return codes_bytes(w, w, u8);
}

/* Rounded values t0, t1 (round16's or add16_fast's) to s16 words with the
 * zero point added, saturating (byte_out). */
INLINE __m512i words_fast(const byte_out *o, __m512i t0, __m512i t1) {
  return _mm512_adds_epi16(_mm512_packs_epi32(t0, t1), o->zp16);
}

/* words_fast's w01, w23 to the codes' bytes, in codes_bytes' order: the
 * packs saturate to the type, a byte min/max applies a tighter clamp. */
INLINE __m512i bytes_fast(const byte_out *o, __m512i w01, __m512i w23) {
  if (o->u8) {
    const __m512i b = _mm512_packus_epi16(w01, w23);
    return o->clampb ? _mm512_min_epu8(_mm512_max_epu8(b, o->blo), o->bhi) : b;
  }
  const __m512i b = _mm512_packs_epi16(w01, w23);
  return o->clampb ? _mm512_min_epi8(_mm512_max_epi8(b, o->blo), o->bhi) : b;
}

/* pack_codes of the codes of rounded values t0, t1 (byte_out). */
INLINE __m512i pack_fast(const byte_out *o, __m512i t0, __m512i t1) {
  const __m512i w = words_fast(o, t0, t1);
  return bytes_fast(o, w, w);
}

/* requant16(t) where e->fast: the code in s32. */
INLINE __m512i code_fast(const epi_ctx *e, __m512i t, __m512 s) {
  const __m512i c = _mm512_add_epi32(round16(t, s), e->bo.zp32);
  return _mm512_min_epi32(_mm512_max_epi32(c, e->bo.ilo), e->bo.ihi);
}

/* The 32 bytes of pack_codes/pack_fast in the order t0's lanes, t1's. */
INLINE __m256i codes_in_order(__m512i b) {
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, b));
}

/* Stores 16 lanes in pixel order (acc + bias already added) at y, the first
 * n of them (n >= 16: all, with a plain store). */
INLINE void store16(const epi_ctx *e, const vmc_qout OUT, __m512i t, __m512 s, void *y,
                    int n) {
  const __mmask16 k = mask16(n);
  if (OUT == VMC_QOUT_S32) {
    if (n >= 16)
      _mm512_storeu_si512(y, t);
    else
      _mm512_mask_storeu_epi32(y, k, t);
  } else if (OUT == VMC_QOUT_F32) {
    const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(t), s);
    if (n >= 16)
      _mm512_storeu_ps(y, f);
    else
      _mm512_mask_storeu_ps(y, k, f);
  } else {
    /* In the output type's range after the clamp: vpmovdb's truncation is
     * exact for U8 and S8 alike. */
    const __m128i b = _mm512_cvtepi32_epi8(requant16(e, t, s));
    if (n >= 16)
      _mm_storeu_si128((__m128i *)y, b);
    else
      _mm_mask_storeu_epi8(y, k, b);
  }
}

/* Stores one row of a 32-pixel panel, t0 = pixels {0-3, 16-19, 4-7, 20-23},
 * t1 = {8-11, 24-27, 12-15, 28-31} (acc + bias), in pixel order at y, the
 * first n (<= 32) of them. */
INLINE void store32(const epi_ctx *e, const vmc_qout OUT, __m512i t0, __m512i t1,
                    __m512 s, void *y, int n) {
  if (OUT == VMC_QOUT_U8 || OUT == VMC_QOUT_S8) {
    /* Per 128-bit lane L the packs leave (4-byte groups) t0.L, t1.L, twice:
     * lane 0 = pixels 0-3, 8-11; 1 = 16-19, 24-27; 2 = 4-7, 12-15;
     * 3 = 20-23, 28-31.  Values are in range, so no pack saturates. */
    const __m512i b = e->fast ? pack_fast(&e->bo, round16(t0, s), round16(t1, s))
                              : pack_codes(requant16(e, t0, s), requant16(e, t1, s),
                                           OUT == VMC_QOUT_U8);
    const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 4, 12, 5, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i r = _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, b));
    if (n >= 32)
      _mm256_storeu_si256((__m256i *)y, r);
    else
      _mm256_mask_storeu_epi8(y, mask32(n), r);
    return;
  }
  if (OUT == VMC_QOUT_F32) {
    t0 = _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(t0), s));
    t1 = _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(t1), s));
  }
  /* 128-bit lanes: pixels 0-15 = t0.0, t0.2, t1.0, t1.2; 16-31 = t0.1, t0.3,
   * t1.1, t1.3. */
  const __m512i lo = _mm512_shuffle_i32x4(t0, t1, 0x88);
  const __m512i hi = _mm512_shuffle_i32x4(t0, t1, 0xdd);
  int32_t *d = y;
  if (n >= 32) {
    _mm512_storeu_si512(d, lo);
    _mm512_storeu_si512(d + 16, hi);
  } else {
    _mm512_mask_storeu_epi32(d, mask16(n), lo);
    _mm512_mask_storeu_epi32(d + 16, mask16(n - 16), hi);
  }
}

/* C rows m0..m0+mr-1, columns 0..nr-1 = epi(A-panel x B-panel) over kq
 * k-quads.  MRE rows, NVE zmm per row (2: a 32-pixel panel, 1: a 16-pixel
 * one) and the output kind are compile-time constants in each instance. */
INLINE void ukernel(const int MRE, const int NVE, const vmc_qout OUT, int kq,
                    const uint8_t *restrict a, const uint8_t *restrict b,
                    const epi_ctx *e, int m0, uint8_t *restrict c, size_t ldc_bytes,
                    int mr, int nr) {
  /* The accumulators start at the bias (rows past mr: zero, unread). */
  __m512i acc[MR][2];
  UNROLL_FULL
  for (int r = 0; r < MRE; r++) {
    const __m512i vb = _mm512_set1_epi32(e->bias && r < mr ? e->bias[m0 + r] : 0);
    UNROLL_FULL
    for (int v = 0; v < NVE; v++) acc[r][v] = vb;
  }
  for (int q = 0; q < kq; q++) {
    __m512i bv[2];
    UNROLL_FULL
    for (int v = 0; v < NVE; v++) bv[v] = _mm512_load_si512(b + 64 * v);
    UNROLL_FULL
    for (int r = 0; r < MRE; r++) {
      int32_t w;
      memcpy(&w, a + 4 * r, sizeof w);
      const __m512i av = _mm512_set1_epi32(w);
      UNROLL_FULL
      for (int v = 0; v < NVE; v++) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], bv[v], av);
    }
    a += MR * 4;
    b += NVE * 64;
  }
  UNROLL_FULL
  for (int r = 0; r < MRE; r++) {
    if (r >= mr) continue; /* no early exit: clang unrolls fully */
    const int m = m0 + r;
    const __m512 vs = _mm512_set1_ps(OUT == VMC_QOUT_S32 ? 0.0f
                                     : e->scale[e->per_tensor ? 0 : m]);
    uint8_t *cr = c + (size_t)r * ldc_bytes;
    if (NVE == 2)
      store32(e, OUT, acc[r][0], acc[r][1], vs, cr, nr);
    else
      store16(e, OUT, acc[r][0], vs, cr, nr);
  }
}

typedef void (*ukernel_fn)(int, const uint8_t *, const uint8_t *, const epi_ctx *, int,
                           uint8_t *, size_t, int, int);

/* The instances: qgemm_ukernel_<rows>x<pixels>_<out>__avx512vnni. */
#define UKERNEL(rows, px, out) qgemm_ukernel_##rows##x##px##_##out##__avx512vnni
#define UKERNEL_INSTANCE(rows, px, out, OUT)                                      \
  static void UKERNEL(rows, px, out)(int kq, const uint8_t *a, const uint8_t *b,  \
                                     const epi_ctx *e, int m0, uint8_t *c,        \
                                     size_t ldc_bytes, int mr, int nr) {          \
    ukernel(rows, (px) / 16, OUT, kq, a, b, e, m0, c, ldc_bytes, mr, nr);         \
  }
#define UKERNEL_OUTS(rows, px)                                                    \
  UKERNEL_INSTANCE(rows, px, u8, VMC_QOUT_U8)                                     \
  UKERNEL_INSTANCE(rows, px, s8, VMC_QOUT_S8)                                     \
  UKERNEL_INSTANCE(rows, px, s32, VMC_QOUT_S32)                                   \
  UKERNEL_INSTANCE(rows, px, f32, VMC_QOUT_F32)                                   \
  static const ukernel_fn ukernels_##rows##x##px[4] = {                           \
      UKERNEL(rows, px, u8), UKERNEL(rows, px, s8), UKERNEL(rows, px, s32),        \
      UKERNEL(rows, px, f32)};
UKERNEL_OUTS(8, 32)
UKERNEL_OUTS(8, 16)
UKERNEL_OUTS(4, 32)
UKERNEL_OUTS(4, 16)
_Static_assert(VMC_QOUT_U8 == 0 && VMC_QOUT_S8 == 1 && VMC_QOUT_S32 == 2 &&
                   VMC_QOUT_F32 == 3,
               "ukernels_* tables are indexed by vmc_qout");

/* Smallest instance covering an mr x nr tile. */
static ukernel_fn pick_ukernel(int mr, int nr, vmc_qout out) {
  if (mr <= 4) return nr > 16 ? ukernels_4x32[out] : ukernels_4x16[out];
  return nr > 16 ? ukernels_8x32[out] : ukernels_8x16[out];
}

/* One k-quad of a 32-pixel panel from rows x[0..3] (32 pixels each) into
 * dst (128 bytes, the lane order above). */
INLINE void quads32(const __m256i x[4], uint8_t *dst) {
  const __m256i p01l = _mm256_unpacklo_epi8(x[0], x[1]), p01h = _mm256_unpackhi_epi8(x[0], x[1]);
  const __m256i p23l = _mm256_unpacklo_epi8(x[2], x[3]), p23h = _mm256_unpackhi_epi8(x[2], x[3]);
  /* pixels 0-3 | 16-19, 4-7 | 20-23, 8-11 | 24-27, 12-15 | 28-31 */
  _mm256_store_si256((__m256i *)dst, _mm256_unpacklo_epi16(p01l, p23l));
  _mm256_store_si256((__m256i *)(dst + 32), _mm256_unpackhi_epi16(p01l, p23l));
  _mm256_store_si256((__m256i *)(dst + 64), _mm256_unpacklo_epi16(p01h, p23h));
  _mm256_store_si256((__m256i *)(dst + 96), _mm256_unpackhi_epi16(p01h, p23h));
}

/* dst <- B[0:K, j:j+nr] (16 < nr <= 32) as a 32-pixel panel. */
static void pack_b32(const uint8_t *B, size_t ldb, const int32_t *boff, int j, int K,
                     int nr, uint8_t *dst) {
  const int kfull = K / 4, kq = (K + 3) / 4;
  const __mmask32 m = mask32(nr);
  int q = 0;
  if (nr == 32) {
    for (; q < kfull; q++, dst += 128) {
      __m256i x[4];
      UNROLL_FULL
      for (int i = 0; i < 4; i++)
        x[i] = _mm256_loadu_si256((const __m256i *)(vmc_qgemm_brow(B, ldb, boff, 4 * q + i) + j));
      quads32(x, dst);
    }
  } else {
    for (; q < kfull; q++, dst += 128) {
      __m256i x[4];
      UNROLL_FULL
      for (int i = 0; i < 4; i++)
        x[i] = _mm256_maskz_loadu_epi8(m, vmc_qgemm_brow(B, ldb, boff, 4 * q + i) + j);
      quads32(x, dst);
    }
  }
  if (q < kq) { /* the last 1..3 rows, zeros after them */
    __m256i x[4];
    for (int i = 0; i < 4; i++)
      x[i] = 4 * q + i < K ? _mm256_maskz_loadu_epi8(m, vmc_qgemm_brow(B, ldb, boff, 4 * q + i) + j)
                           : _mm256_setzero_si256();
    quads32(x, dst);
  }
}

/* dst <- B[0:K, j:j+nr] (nr <= 16) as a 16-pixel panel in pixel order. */
static void pack_b16(const uint8_t *B, size_t ldb, const int32_t *boff, int j, int K,
                     int nr, uint8_t *dst) {
  const int kq = (K + 3) / 4;
  const __mmask16 m = mask16(nr);
  for (int q = 0; q < kq; q++, dst += 64) {
    __m128i x[4];
    for (int i = 0; i < 4; i++)
      x[i] = 4 * q + i < K ? _mm_maskz_loadu_epi8(m, vmc_qgemm_brow(B, ldb, boff, 4 * q + i) + j)
                           : _mm_setzero_si128();
    const __m128i p01l = _mm_unpacklo_epi8(x[0], x[1]), p01h = _mm_unpackhi_epi8(x[0], x[1]);
    const __m128i p23l = _mm_unpacklo_epi8(x[2], x[3]), p23h = _mm_unpackhi_epi8(x[2], x[3]);
    _mm_store_si128((__m128i *)dst, _mm_unpacklo_epi16(p01l, p23l));
    _mm_store_si128((__m128i *)(dst + 16), _mm_unpackhi_epi16(p01l, p23l));
    _mm_store_si128((__m128i *)(dst + 32), _mm_unpacklo_epi16(p01h, p23h));
    _mm_store_si128((__m128i *)(dst + 48), _mm_unpackhi_epi16(p01h, p23h));
  }
}

static void qgemm_run(int M, int N, int K, const void *packed_a, const uint8_t *B,
                      int ldb, const int32_t *boff, const vmc_qepi *epi, void *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K < 0) K = 0;
  const int kq = (K + 3) / 4;
  uint8_t *pb = vmc_qscratch((size_t)(kq > 0 ? kq : 1) * NR * 4);
  if (!pb) {
    vmc_qgemm_packed_scalar(&vmc_qgemm_u8s8s32_8x32__avx512vnni, M, N, K, packed_a, B,
                            ldb, boff, epi, C, ldc);
    return;
  }
  epi_ctx e;
  epi_init(&e, epi);
  epi_set_fast(&e, epi, M, K);
  const size_t osz = vmc_qout_bytes(epi->out), ldc_bytes = (size_t)ldc * osz;
  const size_t a_panel = (size_t)kq * MR * 4;
  const uint8_t *A = packed_a;
  for (int j = 0; j < N; j += NR) {
    const int nr = N - j < NR ? N - j : NR;
    if (nr > 16)
      pack_b32(B, (size_t)ldb, boff, j, K, nr, pb);
    else
      pack_b16(B, (size_t)ldb, boff, j, K, nr, pb);
    const ukernel_fn full = pick_ukernel(MR, nr, epi->out);
    for (int i = 0; i < M; i += MR) {
      const int mr = M - i < MR ? M - i : MR;
      uint8_t *c = (uint8_t *)C + (size_t)i * ldc_bytes + (size_t)j * osz;
      (mr == MR ? full : pick_ukernel(mr, nr, epi->out))(
          kq, A + (size_t)(i / MR) * a_panel, pb, &e, i, c, ldc_bytes, mr, nr);
    }
  }
}

/* ---- depthwise ----------------------------------------------------------------
 * The plane is copied once into this thread's scratch with its padding (x_zp)
 * and 64 bytes of slack after it, so every tap of 16 outputs is one
 * unmasked load: 16 bytes for stride 1, 32 for stride 2 (every other byte
 * kept).  Products are exact in s32 (vpmaddwd of the zero-extended u8 with
 * the weight in the low 16 bits); lanes past the row's end read slack or the
 * next row and are not stored. */
void vmc_qdwconv__avx512(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                         const vmc_qepi *epi, void *y) {
  const int oh = vmc_qdw_out_h(p), ow = vmc_qdw_out_w(p);
  if (oh <= 0 || ow <= 0) return;
  if ((p->sh != 1 && p->sh != 2) || (p->sw != 1 && p->sw != 2) || p->kh * p->kw > 64) {
    vmc_qdwconv__ref(p, x, wk, epi, y);
    return;
  }
  /* Rows the outputs read: oh of them (stride sh), each kh high. */
  const int hp = (oh - 1) * p->sh + p->kh, wp = (ow - 1) * p->sw + p->kw;
  const int wpad = wp + 64; /* a load may run 32 past the last tap */
  uint8_t *P = vmc_qscratch((size_t)hp * (size_t)wpad + 64);
  if (!P) {
    vmc_qdwconv__ref(p, x, wk, epi, y);
    return;
  }
  for (int r = 0; r < hp; r++) {
    uint8_t *d = P + (size_t)r * wpad;
    const int iy = r - p->ph;
    memset(d, p->x_zp, (size_t)wpad);
    if (iy < 0 || iy >= p->h) continue;
    const int x0 = p->pw, n = p->w < wp - x0 ? p->w : wp - x0;
    if (n > 0) memcpy(d + x0, x + (size_t)iy * (size_t)p->w, (size_t)n);
  }
  memset(P + (size_t)hp * wpad, p->x_zp, 64);

  epi_ctx e;
  epi_init(&e, epi);
  const int taps = p->kh * p->kw;
  __m512i wv[64];
  for (int t = 0; t < taps; t++) wv[t] = _mm512_set1_epi32((uint16_t)(int16_t)wk[t]);
  const __m512i vb = _mm512_set1_epi32(epi->bias ? epi->bias[0] : 0);
  const __m512 vs = _mm512_set1_ps(epi->out == VMC_QOUT_S32 ? 0.0f : epi->scale[0]);
  const size_t osz = vmc_qout_bytes(epi->out);
  const __m512i lo16 = _mm512_set1_epi32(0xffff);
  for (int oy = 0; oy < oh; oy++) {
    const uint8_t *row = P + (size_t)oy * p->sh * wpad;
    uint8_t *yr = (uint8_t *)y + (size_t)oy * ow * osz;
    for (int ox = 0; ox < ow; ox += 16) {
      __m512i acc = vb;
      const uint8_t *base = row + (size_t)ox * p->sw;
      for (int i = 0; i < p->kh; i++) {
        const uint8_t *s = base + (size_t)i * wpad;
        for (int j = 0; j < p->kw; j++) {
          __m512i xv;
          if (p->sw == 1)
            xv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(s + j)));
          else
            xv = _mm512_and_si512(
                _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(s + j))), lo16);
          acc = _mm512_add_epi32(acc, _mm512_madd_epi16(xv, wv[i * p->kw + j]));
        }
      }
      store16(&e, e.out, acc, vs, yr + (size_t)ox * osz, ow - ox);
    }
  }
}

/* ---- direct convolution --------------------------------------------------------
 * Output channels in lanes: a tile is MB blocks of 16 channels x P pixels of
 * one output row, MB * P zmm accumulators kept over all kq quads.  Per quad
 * the MB weight vectors are loaded once and each pixel's 4 input bytes are
 * broadcast once for MB vpdpbusd (u8 activations x s8 weights).  At most 14
 * accumulators (MB = 2 with P <= 7, or MB = 1 with P <= 14): beyond that
 * gcc spills them, and these already run the 3x3 convolutions of resnet8 and
 * resnet20 at about 75-95 % of the vpdpbusd peak on Zen 4 (bench_qgemm).  A
 * row longer than P is covered by tiles at 0, P, 2P, ... and a last one
 * ending at the row's end (tiles that overlap compute the same bytes twice).  The epilogue goes from registers
 * to 16 output bytes per pixel and block (masked past M). */

/* The fused add's constants (qgemm.h, vmc_qconv_add1). */
typedef struct add_ctx {
  __m512 sc, sr, inv, lo, hi;
  __m512i zc, zr, zo;
  int fast;    /* add16_fast and pack_fast(&bo) give add16's codes */
  byte_out bo;
} add_ctx;

static void add_init(add_ctx *c, const vmc_qconv_add *a) {
  c->sc = _mm512_set1_ps(a->sc);
  c->sr = _mm512_set1_ps(a->sr);
  c->inv = _mm512_set1_ps(a->inv_o);
  c->lo = _mm512_set1_ps(a->o.lo);
  c->hi = _mm512_set1_ps(a->o.hi);
  c->zc = _mm512_set1_epi32(a->zc);
  c->zr = _mm512_set1_epi32(a->zr);
  c->zo = _mm512_set1_epi32(a->o.zp);
  /* The sum of two codes' values, scaled, stays below 2^30: no overflow
   * when rounding it without the fp32 clamp first. */
  const double v = ((255.0 + fabs((double)a->zc)) * fabs((double)a->sc) +
                    (255.0 + fabs((double)a->zr)) * fabs((double)a->sr)) *
                   fabs((double)a->inv_o);
  c->fast = v < 1073741824.0 && byte_out_set(&c->bo, VMC_QOUT_U8, &a->o);
}

/* vmc_qconv_add1 on 16 lanes: codes c (s32) and residual bytes r (s32). */
INLINE __m512i add16(const add_ctx *a, __m512i c, __m512i r) {
  const __m512 vc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c, a->zc)), a->sc);
  const __m512 vr = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(r, a->zr)), a->sr);
  __m512 v = _mm512_mul_ps(_mm512_add_ps(vc, vr), a->inv);
  v = _mm512_min_ps(_mm512_max_ps(v, a->lo), a->hi);
  return _mm512_add_epi32(_mm512_cvtps_epi32(v), a->zo);
}

/* add16 without its clamp and zero point (pack_fast(&a->bo) applies them)
 * where a->fast. */
INLINE __m512i add16_fast(const add_ctx *a, __m512i c, __m512i r) {
  const __m512 vc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c, a->zc)), a->sc);
  const __m512 vr = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(r, a->zr)), a->sr);
  return _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_add_ps(vc, vr), a->inv));
}

/* 16 bytes at y, the first ones of mask k unless full. */
INLINE void store_u8x16(uint8_t *y, __mmask16 k, int full, __m128i b) {
  if (full)
    _mm_storeu_si128((__m128i *)y, b);
  else
    _mm_mask_storeu_epi8(y, k, b);
}

/* The pixel loops below are written out 14 times (REP14), each step kept
 * when its index is below P: clang (14) leaves such loops partly rolled and
 * the accumulators in memory even under a full-unroll pragma; written out,
 * every index is a constant and they stay in registers with gcc and clang. */
#define REP14(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)

INLINE void conv_tile(const int MB, const int P, const vmc_qconv_params *p,
                      const uint8_t *restrict xb, const int8_t *restrict w,
                      const epi_ctx *e, const add_ctx *a, int m0, uint8_t *restrict yb,
                      const uint8_t *res) {
  const size_t wblk = (size_t)p->kq * 64, xs = p->xs_pix;
  __m512i acc0[14], acc1[14]; /* channel blocks 0 and 1 (MB = 2) */
  const __mmask16 k0 = mask16(p->M - m0), k1 = mask16(p->M - m0 - 16);
  {
    const __m512i b0 = e->bias ? _mm512_maskz_loadu_epi32(k0, e->bias + m0) : _mm512_setzero_si512();
    const __m512i b1 = MB > 1 && e->bias ? _mm512_maskz_loadu_epi32(k1, e->bias + m0 + 16)
                                         : _mm512_setzero_si512();
#define INIT(i)                                                                               \
  if ((i) < P) {                                                                              \
    acc0[i] = b0;                                                                             \
    if (MB > 1) acc1[i] = b1;                                                                 \
  }
    REP14(INIT)
#undef INIT
  }
  for (int q = 0; q < p->kq; q++) {
    const uint8_t *xq = xb + p->koff[q];
    const __m512i w0 = _mm512_load_si512(w + (size_t)q * 64);
    const __m512i w1 = MB > 1 ? _mm512_load_si512(w + wblk + (size_t)q * 64) : w0;
#define STEP(i)                                                                               \
  if ((i) < P) {                                                                              \
    int32_t v;                                                                                \
    memcpy(&v, xq + (size_t)(i) * xs, sizeof v);                                              \
    const __m512i xv = _mm512_set1_epi32(v);                                                  \
    acc0[i] = _mm512_dpbusd_epi32(acc0[i], xv, w0);                                           \
    if (MB > 1) acc1[i] = _mm512_dpbusd_epi32(acc1[i], xv, w1);                               \
  }
    REP14(STEP)
#undef STEP
  }
  const __m512 s0 = e->per_tensor ? _mm512_set1_ps(e->scale[0])
                                  : _mm512_maskz_loadu_ps(k0, e->scale + m0);
  const __m512 s1 = e->per_tensor || MB < 2 ? s0 : _mm512_maskz_loadu_ps(k1, e->scale + m0 + 16);
  /* One pixel's blocks: requantized (and added to the residual), packed to
   * bytes and stored with one store per pixel. */
  const __mmask32 kk = (__mmask32)k0 | (MB > 1 ? (__mmask32)k1 << 16 : 0);
  const int full = p->M - m0 >= 16 * MB, fast = !a && e->fast, afast = a && e->fast && a->fast;
#define OUT(i)                                                                                \
  if ((i) < P) {                                                                              \
    const size_t at = (size_t)(i) * p->ys_pix;                                                \
    if (MB == 1 && (fast || afast)) {                                                         \
      /* One block: pixels i and i + 1 share the packs. */                                    \
      if ((i) % 2 == 0) {                                                                     \
        const int two = (i) + 1 < P;                                                          \
        __m256i b;                                                                            \
        if (fast) {                                                                           \
          const __m512i t0 = round16(acc0[i], s0);                                            \
          b = codes_in_order(pack_fast(&e->bo, t0, two ? round16(acc0[(i) + 1], s0) : t0));   \
        } else {                                                                              \
          const __m512i t0 = add16_fast(                                                      \
              a, code_fast(e, acc0[i], s0),                                                   \
              _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k0, res + at)));                      \
          const __m512i t1 =                                                                  \
              two ? add16_fast(a, code_fast(e, acc0[(i) + 1], s0),                            \
                               _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k0, res + at + p->ys_pix))) \
                  : t0;                                                                       \
          b = codes_in_order(pack_fast(&a->bo, t0, t1));                                      \
        }                                                                                     \
        store_u8x16(yb + at, k0, full, _mm256_castsi256_si128(b));                            \
        if (two) store_u8x16(yb + at + p->ys_pix, k0, full, _mm256_extracti128_si256(b, 1));  \
      }                                                                                       \
    } else {                                                                                  \
      __m256i b;                                                                              \
      if (fast) {                                                                             \
        b = codes_in_order(pack_fast(&e->bo, round16(acc0[i], s0), round16(acc1[i], s1)));    \
      } else if (afast) {                                                                     \
        const __m256i r = _mm256_maskz_loadu_epi8(kk, res + at);                              \
        const __m512i t0 = add16_fast(a, code_fast(e, acc0[i], s0),                           \
                                      _mm512_cvtepu8_epi32(_mm256_castsi256_si128(r)));       \
        const __m512i t1 =                                                                    \
            MB > 1 ? add16_fast(a, code_fast(e, acc1[i], s1),                                 \
                                _mm512_cvtepu8_epi32(_mm256_extracti128_si256(r, 1)))         \
                   : t0;                                                                      \
        b = codes_in_order(pack_fast(&a->bo, t0, t1));                                        \
      } else {                                                                                \
        __m512i t0 = requant16(e, acc0[i], s0);                                               \
        __m512i t1 = MB > 1 ? requant16(e, acc1[i], s1) : t0;                                 \
        if (a) {                                                                              \
          const __m256i r = _mm256_maskz_loadu_epi8(kk, res + at);                            \
          t0 = add16(a, t0, _mm512_cvtepu8_epi32(_mm256_castsi256_si128(r)));                 \
          if (MB > 1) t1 = add16(a, t1, _mm512_cvtepu8_epi32(_mm256_extracti128_si256(r, 1)));\
        }                                                                                     \
        b = codes_in_order(pack_codes(t0, t1, e->out == VMC_QOUT_U8));                        \
      }                                                                                       \
      if (MB == 1)                                                                            \
        store_u8x16(yb + at, k0, full, _mm256_castsi256_si128(b));                            \
      else if (full)                                                                          \
        _mm256_storeu_si256((__m256i *)(yb + at), b);                                         \
      else                                                                                    \
        _mm256_mask_storeu_epi8(yb + at, kk, b);                                              \
    }                                                                                         \
  }
  REP14(OUT)
#undef OUT
}

typedef void (*conv_tile_fn)(const vmc_qconv_params *, const uint8_t *, const int8_t *,
                             const epi_ctx *, const add_ctx *, int, uint8_t *,
                             const uint8_t *);
#define CONV_TILE(mb, px)                                                                 \
  static void conv_tile_##mb##x##px(const vmc_qconv_params *p, const uint8_t *xb,         \
                                    const int8_t *w, const epi_ctx *e, const add_ctx *a,  \
                                    int m0, uint8_t *yb, const uint8_t *res) {            \
    conv_tile(mb, px, p, xb, w, e, a, m0, yb, res);                                       \
  }
#define CONV_TILES_7(mb, a, b, c, d, e, f, g)                                             \
  CONV_TILE(mb, a) CONV_TILE(mb, b) CONV_TILE(mb, c) CONV_TILE(mb, d) CONV_TILE(mb, e)    \
  CONV_TILE(mb, f) CONV_TILE(mb, g)
CONV_TILES_7(1, 1, 2, 3, 4, 5, 6, 7)
CONV_TILES_7(1, 8, 9, 10, 11, 12, 13, 14)
CONV_TILES_7(2, 1, 2, 3, 4, 5, 6, 7)
#define CONV_TILE_ROW(mb, a, b, c, d, e, f, g)                                            \
  conv_tile_##mb##x##a, conv_tile_##mb##x##b, conv_tile_##mb##x##c, conv_tile_##mb##x##d,  \
      conv_tile_##mb##x##e, conv_tile_##mb##x##f, conv_tile_##mb##x##g
static const conv_tile_fn conv_tiles1[15] = {
    NULL, CONV_TILE_ROW(1, 1, 2, 3, 4, 5, 6, 7), CONV_TILE_ROW(1, 8, 9, 10, 11, 12, 13, 14)};
static const conv_tile_fn conv_tiles2[8] = {NULL, CONV_TILE_ROW(2, 1, 2, 3, 4, 5, 6, 7)};

void vmc_qconv__avx512(const vmc_qconv_params *p, const uint8_t *x, const int8_t *w_packed,
                       const vmc_qepi *epi, const vmc_qconv_add *add, uint8_t *y) {
  if (p->oh <= 0 || p->ow <= 0 || p->M <= 0) return;
  epi_ctx e;
  epi_init(&e, epi);
  epi_set_fast(&e, epi, p->M, 4 * p->kq);
  add_ctx a;
  if (add) add_init(&a, add);
  const int blocks = (p->M + 15) / 16;
  const size_t wblk = (size_t)p->kq * 64;
  for (int oy = 0; oy < p->oh; oy++)
    for (int b = 0; b < blocks;) {
      const int mb = blocks - b >= 2 ? 2 : 1, pmax = mb == 2 ? 7 : 14;
      const int P = p->ow < pmax ? p->ow : pmax;
      const conv_tile_fn f = mb == 2 ? conv_tiles2[P] : conv_tiles1[P];
      for (int ox = 0; ox < p->ow; ox += P) {
        const int o = ox + P <= p->ow ? ox : p->ow - P;
        const size_t at = (size_t)oy * p->ys_row + (size_t)o * p->ys_pix + 16 * (size_t)b;
        f(p, x + (size_t)oy * p->xs_row + (size_t)o * p->xs_pix, w_packed + (size_t)b * wblk, &e,
          add ? &a : NULL, 16 * b, y + at, add ? add->res + at : NULL);
      }
      b += mb;
    }
}

/* ---- depthwise, pixel-major ----------------------------------------------------
 * 64 channels per step, vpdpbusd over 4 taps at a time: each tap's 64 bytes
 * (one load, masked past C) are interleaved with the next three taps' by a
 * byte and a word unpack (per 128-bit lane: channels 16L + 4q .. 4q + 3 of
 * all four taps in vector q), so vector q's dwords meet the packed weights'
 * (vmc_qdwp_pack_w).  The accumulators stay in that order; the write-back's
 * packs (dwords to words, words to bytes, per lane) put the 64 channels back
 * in order, so no permutation is needed either way.  u8 x s8 products in
 * s32: exact, so the bits of the reference. */
/* The write-back of 4 accumulators in the vmc_qdwp order (per 128-bit lane
 * L: channels 16L + 4q .. 4q + 3 in acc[q]) to 64 bytes in channel order. */
INLINE __m512i dwp_bytes(const epi_ctx *e, const __m512i acc[4], const __m512 sq[4]) {
  __m512i r[4];
  if (e->fast) {
    for (int q = 0; q < 4; q++) r[q] = round16(acc[q], sq[q]);
    return bytes_fast(&e->bo, words_fast(&e->bo, r[0], r[1]), words_fast(&e->bo, r[2], r[3]));
  }
  for (int q = 0; q < 4; q++) r[q] = requant16(e, acc[q], sq[q]);
  return codes_bytes(_mm512_packs_epi32(r[0], r[1]), _mm512_packs_epi32(r[2], r[3]),
                     e->out == VMC_QOUT_U8);
}

/* The block's biases and scales (channels c0 ..) in the accumulators' order. */
static void dwp_consts(const epi_ctx *e, int C, int c0, __m512i bq[4], __m512 sq[4]) {
  _Alignas(64) int32_t b[4][16];
  _Alignas(64) float s[4][16];
  for (int q = 0; q < 4; q++)
    for (int l = 0; l < 16; l++) {
      const int c = c0 + 16 * (l / 4) + 4 * q + l % 4;
      b[q][l] = c < C && e->bias ? e->bias[c] : 0;
      s[q][l] = c < C ? e->scale[e->per_tensor ? 0 : c] : 0.0f;
    }
  for (int q = 0; q < 4; q++) bq[q] = _mm512_load_si512(b[q]), sq[q] = _mm512_load_ps(s[q]);
}

/* Four taps' 64-byte rows t[] interleaved for vpdpbusd (vmc_qdwp order). */
INLINE void dwp_quads(const __m512i t[4], __m512i v[4]) {
  const __m512i lo01 = _mm512_unpacklo_epi8(t[0], t[1]), hi01 = _mm512_unpackhi_epi8(t[0], t[1]);
  const __m512i lo23 = _mm512_unpacklo_epi8(t[2], t[3]), hi23 = _mm512_unpackhi_epi8(t[2], t[3]);
  v[0] = _mm512_unpacklo_epi16(lo01, lo23);
  v[1] = _mm512_unpackhi_epi16(lo01, lo23);
  v[2] = _mm512_unpacklo_epi16(hi01, hi23);
  v[3] = _mm512_unpackhi_epi16(hi01, hi23);
}

/* At most 16 channels: four pixels of a row per step, one in each 128-bit
 * lane (the weights, biases and scales of channels 0-15 repeated in every
 * lane); where fewer than 4 pixels are left, the spare lanes compute the
 * row's last pixel again and are not stored. */
static void dwp_narrow(const vmc_qdwp_params *p, const uint8_t *x, const int8_t *w,
                       const epi_ctx *e, const size_t *off, int taps, int groups, uint8_t *y) {
  const __mmask16 kc = (__mmask16)((1u << p->C) - 1u);
  __m512i bq[4], wr[16][4];
  __m512 sq[4];
  dwp_consts(e, p->C, 0, bq, sq);
  for (int q = 0; q < 4; q++) {
    bq[q] = _mm512_broadcast_i32x4(_mm512_castsi512_si128(bq[q]));
    sq[q] = _mm512_castsi512_ps(_mm512_broadcast_i32x4(_mm512_castsi512_si128(_mm512_castps_si512(sq[q]))));
  }
  for (int g = 0; g < groups; g++)
    for (int q = 0; q < 4; q++)
      wr[g][q] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(w + (size_t)g * 256 + 64 * q)));
  for (int oy = 0; oy < p->oh; oy++)
    for (int ox = 0; ox < p->ow; ox += 4) {
      size_t px[4];
      for (int k = 0; k < 4; k++)
        px[k] = (size_t)(ox + k < p->ow ? ox + k : p->ow - 1) * p->sw * p->xs_pix;
      const uint8_t *xr = x + (size_t)oy * p->sh * p->xs_row;
      __m512i acc[4] = {bq[0], bq[1], bq[2], bq[3]};
      for (int g = 0; g < groups; g++) {
        __m512i t[4], v[4];
        for (int k = 0; k < 4; k++) {
          if (4 * g + k >= taps) {
            t[k] = _mm512_setzero_si512();
            continue;
          }
          const uint8_t *s = xr + off[4 * g + k];
          __m512i r = _mm512_castsi128_si512(_mm_maskz_loadu_epi8(kc, s + px[0]));
          r = _mm512_inserti32x4(r, _mm_maskz_loadu_epi8(kc, s + px[1]), 1);
          r = _mm512_inserti32x4(r, _mm_maskz_loadu_epi8(kc, s + px[2]), 2);
          t[k] = _mm512_inserti32x4(r, _mm_maskz_loadu_epi8(kc, s + px[3]), 3);
        }
        dwp_quads(t, v);
        for (int q = 0; q < 4; q++) acc[q] = _mm512_dpbusd_epi32(acc[q], v[q], wr[g][q]);
      }
      const __m512i b = dwp_bytes(e, acc, sq);
      uint8_t *yr = y + (size_t)oy * p->ys_row + (size_t)ox * p->ys_pix;
      _mm_mask_storeu_epi8(yr, kc, _mm512_castsi512_si128(b));
      if (ox + 1 < p->ow) _mm_mask_storeu_epi8(yr + p->ys_pix, kc, _mm512_extracti32x4_epi32(b, 1));
      if (ox + 2 < p->ow) _mm_mask_storeu_epi8(yr + 2 * p->ys_pix, kc, _mm512_extracti32x4_epi32(b, 2));
      if (ox + 3 < p->ow) _mm_mask_storeu_epi8(yr + 3 * p->ys_pix, kc, _mm512_extracti32x4_epi32(b, 3));
    }
}

void vmc_qdwp__avx512(const vmc_qdwp_params *p, const uint8_t *x, const int8_t *w,
                      const vmc_qepi *epi, uint8_t *y) {
  if (p->oh <= 0 || p->ow <= 0 || p->C <= 0) return;
  const int taps = p->kh * p->kw, groups = (taps + 3) / 4;
  if (taps > 64) {
    vmc_qdwp__ref(p, x, w, epi, y);
    return;
  }
  epi_ctx e;
  epi_init(&e, epi);
  epi_set_fast(&e, epi, p->C, taps);
  size_t off[64]; /* byte offset of each tap from the pixel's tap (0, 0) */
  for (int t = 0; t < taps; t++)
    off[t] = (size_t)(t / p->kw) * p->xs_row + (size_t)(t % p->kw) * p->xs_pix;
  if (p->C <= 16) {
    dwp_narrow(p, x, w, &e, off, taps, groups, y);
    return;
  }
  for (int c0 = 0; c0 < p->C; c0 += 64) {
    const int nc = p->C - c0 < 64 ? p->C - c0 : 64;
    const __mmask64 km = nc == 64 ? ~(__mmask64)0 : ((__mmask64)1 << nc) - 1;
    __m512i bq[4];
    __m512 sq[4];
    dwp_consts(&e, p->C, c0, bq, sq);
    const int8_t *wb = w + (size_t)(c0 / 64) * groups * 256;
    for (int oy = 0; oy < p->oh; oy++)
      for (int ox = 0; ox < p->ow; ox++) {
        const uint8_t *xb = x + (size_t)oy * p->sh * p->xs_row + (size_t)ox * p->sw * p->xs_pix + c0;
        __m512i acc[4] = {bq[0], bq[1], bq[2], bq[3]};
        for (int g = 0; g < groups; g++) {
          __m512i t[4], v[4];
          for (int k = 0; k < 4; k++)
            t[k] = 4 * g + k < taps ? _mm512_maskz_loadu_epi8(km, xb + off[4 * g + k])
                                    : _mm512_setzero_si512();
          dwp_quads(t, v);
          const int8_t *wg = wb + (size_t)g * 256;
          for (int q = 0; q < 4; q++)
            acc[q] = _mm512_dpbusd_epi32(acc[q], v[q], _mm512_loadu_si512(wg + 64 * q));
        }
        const __m512i b = dwp_bytes(&e, acc, sq);
        _mm512_mask_storeu_epi8(y + (size_t)oy * p->ys_row + (size_t)ox * p->ys_pix + c0, km, b);
      }
  }
}
