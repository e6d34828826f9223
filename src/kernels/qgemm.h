/* int8 compute kernels: GEMM with a fused requantizing epilogue, depthwise
 * convolution, int4 weight packing.
 *
 * ---- GEMM ------------------------------------------------------------------
 *   C[m,n] = epi( sum_k A[m,k] * B[k,n] )        0 <= m < M, 0 <= n < N
 * A: s8 weights, M x K row-major (lda), packed once ahead of time (plan time)
 *    by vmc_qgemm_pack_a into a variant-specific layout.
 * B: u8 activations, K x N, row k at B + k * ldb (ldb >= N), or at
 *    B + boff[k] when the variant is given row offsets boff (then ldb is
 *    unused): rows may lie anywhere and overlap, e.g. the K shifted slices of
 *    one padded image that make an implicit im2col matrix.  Read in place:
 *    each call packs it into the layout its variant wants (the VNNI ones: 4
 *    consecutive k of one pixel per 32-bit lane, pixels across lanes, and so
 *    does the narrow AVX2 one; AVX2: 2 k per lane as s16), K padded with
 *    zeros to the variant's k group (4, or 2).
 * That is the NCHW convolution layout: M = output channels, N = pixels,
 * K = C_in*kh*kw (im2col rows), or K = C_in for a 1x1 convolution.
 * C: M x N row-major, ldc >= N elements of the output type.
 *
 * The sum is exact, in s32 (an s8 x u8 product has |p| <= 32640, so K up to
 * 65793 cannot overflow; beyond that it wraps mod 2^32, identically in every
 * variant).  Zero points of A and B are not subtracted: with activations
 * x = x_zp + q, fold -x_zp * sum_k A[m,k] into bias[m].
 *
 * No variant saturates an intermediate: the VNNI variants use vpdpbusd (exact
 * u8 x s8 products, 4 per lane, added into s32 without saturation); the AVX2
 * variant does NOT use vpmaddubsw on raw u8 x s8 pairs (its s16 sum of two
 * products saturates: 255*127*2 > 32767) but widens both operands to s16 and
 * uses vpmaddwd, whose pair sums (<= 65280) are exact in s32.  Its "narrow"
 * twin does use vpmaddubsw, and only for weights it cannot saturate on: each
 * pair of A's row m, k = 2j and 2j + 1, with |A[m][2j]| + |A[m][2j+1]| <=
 * 128 (pair_max), so that a pair's sum is at most 255 * 128 = 32640 (any s4
 * weights, 7-bit ones, or s8 ones of that shape); vmc_qgemm_for_weights
 * picks it.
 *
 * ---- Epilogue (fused into the micro-kernels' write-back) ---------------------
 * With t = acc + bias[m] (s32, wrapping; bias may be NULL = 0) and
 * s = scale[m] (scale[0] if per_tensor):
 *   VMC_QOUT_S32:  y = t                       (scale, zero point, lo/hi unused)
 *   VMC_QOUT_F32:  y = (float)t * s            (zero point, lo/hi unused)
 *   VMC_QOUT_U8/S8:
 *     y = clamp( round_half_even( (float)t * s ) + zero_point, lo', hi' )
 *   with lo' = max(lo, type min), hi' = min(hi, type max) (U8: 0..255,
 *   S8: -128..127); e.g. a fused ReLU on u8 output is lo = zero_point.
 * Every step is fp32 as the SIMD units do it under the default MXCSR:
 * (float)t rounds to nearest even (exact only for |t| < 2^24, but every
 * variant makes the same conversion, so all agree bit for bit), one plain
 * multiply (never fused with anything), then the clamp is applied before the
 * rounding, in float, to [lo' - zp, hi' - zp] with vmaxps/vminps semantics
 * (x > lo ? x : lo, then x < hi ? x : hi), then cvtps2dq (round half to even)
 * and + zp.  Rounding is monotonic and the bounds are integers, so this equals
 * the formula above for every finite value, never overflows the conversion,
 * and maps NaN (possible only with a non-finite scale) to lo'.  zero_point
 * is clamped to [-2^16, 2^16] (which keeps every conversion in range) and
 * should lie in the output type's range.  vmc_qepi_requant below is that rule in scalar C: the
 * reference calls it, and the SIMD write-backs are tested against it.
 *
 * ---- Variants ----------------------------------------------------------------
 * Each variant (vmc_qgemm_variant) names its tile and ISA, the CPU features it
 * needs, and its packed-A layout; the dispatcher (vmc_qgemm_best) picks once:
 * avx512vnni if vmc_isa_name() is "avx512" and the CPU has AVX512-VNNI; else
 * avxvnni if the CPU has AVX-VNNI and the ISA is at least avx2; else avx2 if
 * the ISA is at least avx2; else the scalar reference.  The narrow AVX2 twin
 * is never "best": a caller that knows its weights asks for it
 * (vmc_qgemm_for_weights, as the integer runtime does per layer).  All
 * variants give bit-identical results (integer sums, the same fp32
 * epilogue; the narrow one on weights within its bound), and so does
 * vmc_qgemm_mt at any thread count. */
#ifndef VMC_QGEMM_H
#define VMC_QGEMM_H

#include "core/core.h"

#include <math.h>

typedef enum { VMC_QOUT_U8 = 0, VMC_QOUT_S8, VMC_QOUT_S32, VMC_QOUT_F32 } vmc_qout;

/* The epilogue's parameters (see above). */
typedef struct vmc_qepi {
  const int32_t *bias; /* per row m, or NULL */
  const float *scale;  /* per row m, or scale[0] if per_tensor; unused for S32 */
  int per_tensor;
  int32_t zero_point;  /* U8/S8 only */
  int32_t lo, hi;      /* U8/S8 only: clamp, in output units */
  vmc_qout out;
} vmc_qepi;

/* Bytes of one output element. */
static inline size_t vmc_qout_bytes(vmc_qout o) {
  return o == VMC_QOUT_U8 || o == VMC_QOUT_S8 ? 1 : 4;
}

/* The epilogue's constants for U8/S8, computed once per call: the float
 * clamp bounds lo' - zp, hi' - zp and the (clamped) zero point. */
typedef struct vmc_qepi_prep {
  float lo, hi;
  int32_t zp;
} vmc_qepi_prep;

static inline vmc_qepi_prep vmc_qepi_prepare(const vmc_qepi *e) {
  const int32_t tmin = e->out == VMC_QOUT_S8 ? -128 : 0;
  const int32_t tmax = e->out == VMC_QOUT_S8 ? 127 : 255;
  const int32_t zp = e->zero_point < -65536 ? -65536
                     : e->zero_point > 65536 ? 65536
                                             : e->zero_point;
  const int32_t lo = e->lo > tmin ? e->lo : tmin, hi = e->hi < tmax ? e->hi : tmax;
  vmc_qepi_prep p = {(float)(lo - zp), (float)(hi - zp), zp};
  return p;
}

/* The rounding rule on a value v relative to the zero point. */
static inline int32_t vmc_qepi_round(float v, const vmc_qepi_prep *p) {
  v = v > p->lo ? v : p->lo; /* vmaxps(v, lo): lo when unordered */
  v = v < p->hi ? v : p->hi; /* vminps(v, hi) */
  return (int32_t)nearbyintf(v) + p->zp;
}

/* The requantization rule, scalar: t = acc + bias, s = the row's scale. */
static inline int32_t vmc_qepi_requant(int32_t t, float s, const vmc_qepi_prep *p) {
  return vmc_qepi_round((float)t * s, p);
}

/* t = acc + bias without signed-overflow UB (wraps, as vpaddd does). */
static inline int32_t vmc_qadd_wrap(int32_t a, int32_t b) {
  return (int32_t)((uint32_t)a + (uint32_t)b);
}

/* One output element y[i] of the epilogue, scalar (row m). */
static inline void vmc_qepi_store1(const vmc_qepi *e, const vmc_qepi_prep *p, int m,
                                   int32_t acc, void *y, size_t i) {
  const int32_t t = vmc_qadd_wrap(acc, e->bias ? e->bias[m] : 0);
  const float s = e->out == VMC_QOUT_S32 ? 0.0f : e->scale[e->per_tensor ? 0 : m];
  switch (e->out) {
  case VMC_QOUT_U8: ((uint8_t *)y)[i] = (uint8_t)vmc_qepi_requant(t, s, p); break;
  case VMC_QOUT_S8: ((int8_t *)y)[i] = (int8_t)vmc_qepi_requant(t, s, p); break;
  case VMC_QOUT_S32: ((int32_t *)y)[i] = t; break;
  case VMC_QOUT_F32: ((float *)y)[i] = (float)t * s; break;
  }
}

/* ---- int4 weights ------------------------------------------------------------
 * Two s4 values per byte, element i in byte i/2, low nibble first (even i),
 * two's complement, range -8..7.  vmc_s4_pack writes (n + 1) / 2 bytes (an odd
 * n leaves the last high nibble 0), saturates values outside -8..7 and
 * returns how many it saturated. */
size_t vmc_s4_pack(const int8_t *src, size_t n, uint8_t *dst);
void vmc_s4_unpack(const uint8_t *src, size_t n, int8_t *dst);
static inline int8_t vmc_s4_get(const uint8_t *p, size_t i) {
  const int v = (p[i >> 1] >> ((i & 1) * 4)) & 15;
  return (int8_t)(v >= 8 ? v - 16 : v);
}

/* ---- GEMM variants -----------------------------------------------------------
 * Packed A: K is padded to kpad = a multiple of ka and M to a multiple of mr;
 * element (m, k) is an a_bytes-wide integer (s8, or s16 for the AVX2 variant)
 * at index
 *   ((m / mr) * (kpad / ka) + k / ka) * (mr * ka) + (m % mr) * ka + k % ka
 * i.e. mr-row panels, each a sequence of k-groups holding ka consecutive k of
 * each of its mr rows (the 32 bits a kernel broadcasts); padding is zero.
 * The reference (mr = ka = a_bytes = 1) is plain row-major A. */
typedef void (*vmc_qgemm_fn)(int M, int N, int K, const void *packed_a,
                             const uint8_t *B, int ldb, const int32_t *boff,
                             const vmc_qepi *epi, void *C, int ldc);

/* Row k of B (see the GEMM contract above): boff NULL for plain rows. */
static inline const uint8_t *vmc_qgemm_brow(const uint8_t *B, size_t ldb,
                                            const int32_t *boff, int k) {
  return boff ? B + boff[k] : B + (size_t)k * ldb;
}

typedef struct vmc_qgemm_variant {
  const char *name;   /* dtype, op, register tile, ISA */
  unsigned needs;     /* VMC_CPU_* bits the CPU must have */
  int mr, nr;         /* register tile: rows of A, columns (pixels) of B */
  int ka, a_bytes;    /* packed A: k per group, bytes per element */
  vmc_qgemm_fn run;   /* C = epi(A * B), A packed for this variant; boff may
                         be NULL (rows ldb apart) */
  int pair_max;       /* 0, or exact only where every pair of a row's
                         weights (k = 2j, 2j + 1) has |a| + |b| <= pair_max */
} vmc_qgemm_variant;

extern const vmc_qgemm_variant vmc_qgemm_u8s8s32__ref;
extern const vmc_qgemm_variant vmc_qgemm_u8s8s32_6x16__avx2;
extern const vmc_qgemm_variant vmc_qgemm_u8s8s32_6x16_narrow__avx2;
extern const vmc_qgemm_variant vmc_qgemm_u8s8s32_4x24__avxvnni;
extern const vmc_qgemm_variant vmc_qgemm_u8s8s32_8x32__avx512vnni;

/* Every variant, best last, for tests and benchmarks (the CPU may lack some:
 * check vmc_qgemm_variant_ok). */
extern const vmc_qgemm_variant *const vmc_qgemm_variants[];
extern const int vmc_qgemm_variant_count;
int vmc_qgemm_variant_ok(const vmc_qgemm_variant *v); /* the CPU runs it */

/* The variant vmc_qgemm, vmc_qgemm_mt and vmc_qgemm_pack_a use (chosen once). */
const vmc_qgemm_variant *vmc_qgemm_best(void);

/* The largest |A[m][2j]| + |A[m][2j+1]| over A's M x K s8 codes (row stride
 * lda; s4 != 0: int4-packed as for vmc_qgemm_pack_a_s4), an odd K's last
 * weight paired with 0. */
int vmc_qgemm_pair_max(int M, int K, const void *A, int lda, int s4);
/* The variant for weights whose pairs reach pair (vmc_qgemm_pair_max), given
 * v: v where its pair_max allows them, else its full-range twin; and with
 * upgrade != 0, the AVX2 variant's narrow twin where they fit it. */
const vmc_qgemm_variant *vmc_qgemm_for_weights(const vmc_qgemm_variant *v, int pair,
                                               int upgrade);

/* Bytes of A packed for v (NULL: the best variant); M, K >= 0. */
size_t vmc_qgemm_packed_a_size(const vmc_qgemm_variant *v, int M, int K);
/* Packs M x K s8 A (row stride lda) for v (NULL: best) into packed, which
 * holds vmc_qgemm_packed_a_size(v, M, K) bytes (any alignment). */
void vmc_qgemm_pack_a(const vmc_qgemm_variant *v, int M, int K, const int8_t *A,
                      int lda, void *packed);
/* As vmc_qgemm_pack_a from int4-packed A (vmc_s4_pack): element (m, k) is s4
 * element m * lda + k of A4 (lda in elements, so odd lda is fine).  int4
 * weights then run on the same kernels. */
void vmc_qgemm_pack_a_s4(const vmc_qgemm_variant *v, int M, int K, const uint8_t *A4,
                         int lda, void *packed);

/* C = epi(A * B) on the calling thread with the best variant; packed_a from
 * vmc_qgemm_pack_a(NULL, ...).  M, N <= 0 do nothing; K == 0 gives epi(0). */
void vmc_qgemm(int M, int N, int K, const void *packed_a, const uint8_t *B, int ldb,
               const vmc_qepi *epi, void *C, int ldc);
/* The same, split over vmc_get_threads() OpenMP threads (N blocks of whole
 * register tiles, or M blocks when N is short); runs on the calling thread
 * inside a parallel region or for small problems.  Same bits as vmc_qgemm. */
void vmc_qgemm_mt(int M, int N, int K, const void *packed_a, const uint8_t *B,
                  int ldb, const vmc_qepi *epi, void *C, int ldc);
/* vmc_qgemm_mt with a given variant (A packed for it) and B's rows at
 * B + boff[k] (boff NULL: B + k * ldb). */
void vmc_qgemm_run_mt(const vmc_qgemm_variant *v, int M, int N, int K,
                      const void *packed_a, const uint8_t *B, int ldb,
                      const int32_t *boff, const vmc_qepi *epi, void *C, int ldc);

/* Internal: the scalar GEMM over any variant's packed-A layout (the
 * reference's run is this with its own layout; SIMD variants fall back to it
 * when they cannot get a packing buffer). */
void vmc_qgemm_packed_scalar(const vmc_qgemm_variant *layout, int M, int N, int K,
                             const void *packed_a, const uint8_t *B, int ldb,
                             const int32_t *boff, const vmc_qepi *epi, void *C, int ldc);
/* Internal: this thread's scratch buffer of at least bytes bytes (64-byte
 * aligned, kept and grown, freed at thread exit), or NULL.  One per thread:
 * a kernel must not hold it across a call to another kernel. */
void *vmc_qscratch(size_t bytes);

/* ---- Depthwise convolution -------------------------------------------------
 * One channel: y[oy][ox] = epi( sum_{i<kh, j<kw} wk[i*kw + j] *
 *                               x[oy*sh + i - ph][ox*sw + j - pw] )
 * with x read as x_zp outside the h x w plane (padding holds the input's zero
 * point, so the caller folds -x_zp * sum(wk) into the bias as for the GEMM).
 * y is oh x ow contiguous, oh = (h + 2ph - kh) / sh + 1, ow likewise (0 if
 * the padded plane is smaller than the kernel).  The epilogue is the GEMM's
 * with this channel's bias and scale: bias[0], scale[0] (row m = 0).
 * SIMD variants handle strides 1 and 2 and kernels of up to 64 taps (others
 * run the reference); all are bit-identical to the reference. */
typedef struct vmc_qdw_params {
  int h, w;   /* input plane */
  int kh, kw; /* kernel */
  int sh, sw; /* stride, >= 1 */
  int ph, pw; /* padding, >= 0 */
  uint8_t x_zp;
} vmc_qdw_params;

static inline int vmc_qdw_out_h(const vmc_qdw_params *p) {
  const int span = p->h + 2 * p->ph - p->kh;
  return span < 0 ? 0 : span / p->sh + 1;
}
static inline int vmc_qdw_out_w(const vmc_qdw_params *p) {
  const int span = p->w + 2 * p->pw - p->kw;
  return span < 0 ? 0 : span / p->sw + 1;
}

typedef void (*vmc_qdwconv_fn)(const vmc_qdw_params *p, const uint8_t *x,
                               const int8_t *wk, const vmc_qepi *epi, void *y);
/* Best variant: avx512 where vmc_qgemm_best() is the avx512vnni GEMM, else
 * avx2 where the ISA is at least avx2, else the reference. */
void vmc_qdwconv(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                 const vmc_qepi *epi, void *y);
void vmc_qdwconv__ref(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                      const vmc_qepi *epi, void *y);
void vmc_qdwconv__avx2(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                       const vmc_qepi *epi, void *y);
/* Built with the AVX-512 VNNI file's flags: needs AVX512F/BW/VL and VNNI. */
void vmc_qdwconv__avx512(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                         const vmc_qepi *epi, void *y);

/* ---- Direct convolution on pixel-major activations ---------------------------
 * For activations stored pixel by pixel with their channels together (NHWC,
 * padded, as the integer runtime keeps them for nets of plain convolutions):
 * no im2col and no packing of B.  The K sum is split into kq "quads" of 4
 * consecutive input bytes each: quad q of output pixel (oy, ox) reads the 4
 * bytes at
 *   x + oy * xs_row + ox * xs_pix + koff[q]
 * (e.g. 4 channels of one tap, or 4 neighbouring pixels of a one-channel
 * image) and multiplies them with the 4 weights of that quad of each output
 * channel m, which vmc_qconv_pack_w lays out 16 channels per 64 bytes.  Then
 *   y[oy * ys_row + ox * ys_pix + m] = epi_m( sum_q sum_{i<4} W[m][4q + i] * x4_q[i] )
 * for 0 <= m < M, u8 or s8 out (epi->out; the GEMM's epilogue and rounding
 * rule, qgemm.h, with bias[m] and scale[m]); bytes of y between pixels and
 * past M are not written.  With a fused add (vmc_qconv_add), that code c is
 * not stored but added to the residual byte r at the same place of res:
 *   y = round_o((c - zc) * sc + (r - zr) * sr) = vmc_qconv_add1,
 * the rule of vmc_qadd_u8 (qelt.h); u8 out only (epi->out U8).  Every byte a quad reads must be readable (the
 * caller pads the input).  The sums are exact, so every variant gives the
 * bits of the reference, and of the GEMM on the same products. */
typedef struct vmc_qconv_params {
  int oh, ow;            /* output pixels */
  int M, kq;             /* output channels, quads */
  size_t xs_row, xs_pix; /* input bytes between output rows / pixels (stride included) */
  size_t ys_row, ys_pix; /* output bytes between rows / pixels */
  const int32_t *koff;   /* kq byte offsets */
} vmc_qconv_params;

/* A residual add fused into the convolution's write-back (see above). */
typedef struct vmc_qconv_add {
  const uint8_t *res;   /* laid out as y (ys_row, ys_pix) */
  float sc, sr, inv_o;  /* scales of c and r, 1 / the output's scale */
  int32_t zc, zr;       /* zero points of c and r */
  vmc_qepi_prep o;      /* the output's clamp (relative) and zero point */
} vmc_qconv_add;

static inline uint8_t vmc_qconv_add1(const vmc_qconv_add *a, int32_t c, uint8_t r) {
  const float vc = (float)(c - a->zc) * a->sc, vr = (float)((int32_t)r - a->zr) * a->sr;
  return (uint8_t)vmc_qepi_round((vc + vr) * a->inv_o, &a->o);
}

/* Bytes of packed weights for M channels of kq quads: 64 per block of 16
 * channels per quad. */
static inline size_t vmc_qconv_w_bytes(int M, int kq) {
  return (size_t)(M + 15) / 16 * (size_t)kq * 64;
}
/* dst[(b * kq + q) * 64 + 4 * j + i] = w[(16 b + j) * 4 kq + 4 q + i] (w: M rows
 * of 4 kq codes, quad-major), 0 past M. */
void vmc_qconv_pack_w(int M, int kq, const int8_t *w, int8_t *dst);

typedef void (*vmc_qconv_fn)(const vmc_qconv_params *p, const uint8_t *x,
                             const int8_t *w_packed, const vmc_qepi *epi,
                             const vmc_qconv_add *add, uint8_t *y);
/* The avx512 variant where vmc_qgemm_best() is the avx512vnni GEMM; else the
 * avx2 one where it is the avx2 GEMM (it takes only narrow weights: see
 * vmc_qconv_pair_max); else NULL (the integer runtime then keeps its GEMM
 * layout). */
vmc_qconv_fn vmc_qconv_best(void);
/* The bound a variant puts on its weights: 0 (any s8 weights), or the
 * largest |a| + |b| it takes over the pairs of a quad's weights (bytes 0-1
 * and 2-3, as vmc_qgemm_pair_max measures the quad-major rows). */
int vmc_qconv_pair_max(vmc_qconv_fn f);
/* add: NULL, or a residual add fused into the write-back. */
void vmc_qconv__ref(const vmc_qconv_params *p, const uint8_t *x, const int8_t *w_packed,
                    const vmc_qepi *epi, const vmc_qconv_add *add, uint8_t *y);
/* Built with the AVX-512 VNNI file's flags. */
void vmc_qconv__avx512(const vmc_qconv_params *p, const uint8_t *x, const int8_t *w_packed,
                       const vmc_qepi *epi, const vmc_qconv_add *add, uint8_t *y);
/* Built with AVX2 (vpmaddubsw): narrow weights only, pair bound 128. */
void vmc_qconv__avx2(const vmc_qconv_params *p, const uint8_t *x, const int8_t *w_packed,
                     const vmc_qepi *epi, const vmc_qconv_add *add, uint8_t *y);

/* ---- Depthwise convolution on pixel-major activations --------------------------
 * One kernel of kh x kw taps per channel, channels together in each pixel:
 *   y[oy * ys_row + ox * ys_pix + c] =
 *     epi_c( sum_{i<kh, j<kw} w[c][i*kw + j] * x[(oy*sh + i) * xs_row + (ox*sw + j) * xs_pix + c] )
 * for 0 <= c < C, x pointing at tap (0, 0) of output (0, 0) of channel 0 (the
 * caller pads the input, as for vmc_qconv), u8/s8 out with bias[c] and
 * scale[c] (the GEMM's epilogue).  Weights packed by vmc_qdwp_pack_w (below). */
typedef struct vmc_qdwp_params {
  int oh, ow, C, kh, kw, sh, sw;
  size_t xs_row, xs_pix; /* input bytes between rows / pixels */
  size_t ys_row, ys_pix; /* output bytes between rows / pixels */
} vmc_qdwp_params;

/* Packed weights: blocks of 64 channels; per block, groups of 4 taps; per
 * group 4 vectors of 64 bytes, vector q holding in its dword 4L + d (L, d <
 * 4) the s8 codes of taps 4g .. 4g + 3 of channel 64b + 16L + 4q + d (0 past
 * C and past the taps): the order in which byte and word unpacks of 4 taps'
 * 64 channels leave the activations for vpdpbusd.  vmc_qdwp_w_at is the
 * byte of channel c, tap t. */
static inline size_t vmc_qdwp_w_bytes(int C, int taps) {
  return (size_t)((C + 63) / 64) * (size_t)((taps + 3) / 4) * 256;
}
static inline size_t vmc_qdwp_w_at(int taps, int c, int t) {
  const int b = c / 64, r = c % 64, L = r / 16, q = (r % 16) / 4, d = r % 4;
  return ((((size_t)b * (size_t)((taps + 3) / 4) + (size_t)(t / 4)) * 4 + (size_t)q) * 16 +
          (size_t)(4 * L + d)) * 4 + (size_t)(t % 4);
}
/* wk: C x taps s8 codes; dst: vmc_qdwp_w_bytes(C, taps) bytes. */
void vmc_qdwp_pack_w(int C, int taps, const int8_t *wk, int8_t *dst);

typedef void (*vmc_qdwp_fn)(const vmc_qdwp_params *p, const uint8_t *x, const int8_t *w,
                            const vmc_qepi *epi, uint8_t *y);
void vmc_qdwp__ref(const vmc_qdwp_params *p, const uint8_t *x, const int8_t *w,
                   const vmc_qepi *epi, uint8_t *y);
/* Built with the AVX-512 VNNI file's flags (vpdpbusd). */
void vmc_qdwp__avx512(const vmc_qdwp_params *p, const uint8_t *x, const int8_t *w,
                      const vmc_qepi *epi, uint8_t *y);
/* The avx512 variant where vmc_qconv_best() is the avx512 one, else NULL
 * (nets with depthwise convolutions then stay planar). */
vmc_qdwp_fn vmc_qdwp_best(void);

#endif
