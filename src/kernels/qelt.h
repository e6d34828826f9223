/* int8 element-wise and pooling kernels of the integer runtime: quantize an
 * fp32 image, dequantize, add with rescale (and requantize), max/average
 * pooling, u8 im2col.
 *
 * Activations are u8 codes with a vmc_qact: x = (q - zp) * scale, codes kept
 * in [lo, hi] (an s8 tensor is stored as u8 with 128 added to its codes, zero
 * point and bounds: the value (q - zp) * scale is unchanged, and the GEMM,
 * which reads u8, takes it as it is).
 *
 * The rounding rule is the one of quant.h and of the GEMM epilogue
 * (vmc_qepi_requant): v relative to the zero point, clamped in fp32 to
 * [lo - zp, hi - zp] (vmaxps/vminps order: NaN gives lo), rounded half to
 * even, plus zp.  The rounding is done by adding and subtracting 1.5 * 2^23,
 * exact for the clamped range (|v| <= 510), so the loops vectorise; every
 * variant of the runtime calls these same scalar loops, so all ISAs agree. */
#ifndef VMC_QELT_H
#define VMC_QELT_H

#include "kernels/conv.h"
#include "kernels/qgemm.h"

/* vmc_qim2col_u8 and vmc_qphase_u8 may read up to this many bytes past the
 * end of x (stride-2 rows are split 32 bytes at a time): keep them allocated. */
#define VMC_QELT_OVERREAD 32

typedef struct vmc_qact {
  float scale;
  int32_t zp, lo, hi; /* stored (u8) units; 0 <= lo <= hi <= 255 */
} vmc_qact;

#define VMC_QROUND_MAGIC 12582912.0f /* 1.5 * 2^23 */

/* The rule on a value v already divided by the scale. */
static inline uint8_t vmc_qround_u8(float v, float lo_rel, float hi_rel, int32_t zp) {
  v = v > lo_rel ? v : lo_rel;
  v = v < hi_rel ? v : hi_rel;
  return (uint8_t)((int32_t)((v + VMC_QROUND_MAGIC) - VMC_QROUND_MAGIC) + zp);
}

/* y = quantize(x) with o's parameters, inv = 1.0f / o->scale (NaN gives zp,
 * as the fakequant op): bit for bit vmc_quantize1 for codes in 0..255. */
void vmc_qquantize_f32(const float *x, size_t n, float inv, const vmc_qact *o, uint8_t *y);
/* y = (x - zp) * scale. */
void vmc_qdequantize_u8(const uint8_t *x, size_t n, const vmc_qact *a, float *y);
/* y = quantize_o((a - za) * sa + (b - zb) * sb), the sum in fp32 as written
 * (what a float add of the two dequantized tensors computes), inv_o =
 * 1.0f / o->scale; b may be NULL (then y = quantize_o((a - za) * sa): a
 * requantization, or a clamp when o has a's parameters and narrower bounds). */
void vmc_qadd_u8(const uint8_t *a, const vmc_qact *qa, const uint8_t *b, const vmc_qact *qb,
                 size_t n, float inv_o, const vmc_qact *o, uint8_t *y);

/* The loops behind vmc_qquantize_f32 and vmc_qadd_u8 (lo, hi relative to
 * zp), for the base ISA, AVX2 and AVX-512 (qelt_loops.h; the widest that
 * vmc_isa_name() allows runs): the same bits; exported for the tests. */
#define VMC_QELT_LOOPS(sfx)                                                                   \
  void vmc_qquantize_f32_##sfx(const float *restrict x, size_t n, float inv, float lo,        \
                               float hi, int32_t zp, uint8_t *restrict y);                    \
  void vmc_qrequant_u8_##sfx(const uint8_t *restrict a, size_t n, float sa, int32_t za,       \
                             float inv_o, float lo, float hi, int32_t zp,                     \
                             uint8_t *restrict y);                                            \
  void vmc_qadd2_u8_##sfx(const uint8_t *restrict a, const uint8_t *restrict b, size_t n,     \
                          float sa, int32_t za, float sb, int32_t zb, float inv_o, float lo,  \
                          float hi, int32_t zp, uint8_t *restrict y);                    \
  void vmc_qfake_f32_##sfx(const float *restrict x, size_t n, float inv, float s, float lo,   \
                           float hi, float *restrict y);                                      \
  void vmc_qfake_grad_##sfx(const float *restrict x, const float *restrict dy, size_t n,      \
                            float inv, float lo, float hi, int set, float *restrict dx);
VMC_QELT_LOOPS(base)
VMC_QELT_LOOPS(avx2)   /* built with AVX2: call only where the CPU has it */
VMC_QELT_LOOPS(avx512) /* built with AVX-512 (F/BW/VL/DQ) likewise */

/* Fake quantization on a grid of integer bounds lo..hi relative to the zero
 * point, |lo|, |hi| <= 2^21 (every 8- and 4-bit scheme): y = r * s with r
 * the value x * inv clamped to [lo, hi] and rounded half to even by the
 * magic-number sum (exact there, nearbyint's result under the default
 * rounding mode); NaN gives 0.  The float ops of ops/fakequant.c, whose
 * fast path this is. */
#define VMC_QFAKE_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define VMC_QFAKE_LIMIT 2097152.0f  /* 2^21 */
void vmc_qfake_f32(const float *x, size_t n, float inv, float s, float lo, float hi, float *y);
/* Its straight-through gradient: g = dy where the code of x (x * inv,
 * clamped to [lo - 2, hi + 2], rounded as above) lies in [lo, hi], else 0
 * (NaN and +-inf included); dx = g (set) or dx += g. */
void vmc_qfake_grad_f32(const float *x, const float *dy, size_t n, float inv, float lo, float hi,
                        int set, float *dx);

/* The loops of one build, as vmc_qquantize_f32, vmc_qadd_u8, vmc_qfake_f32
 * ... pick them (and the tests compare them). */
typedef struct vmc_qelt_loops {
  void (*quantize)(const float *restrict x, size_t n, float inv, float lo, float hi, int32_t zp,
                   uint8_t *restrict y);
  void (*requant)(const uint8_t *restrict a, size_t n, float sa, int32_t za, float inv_o,
                  float lo, float hi, int32_t zp, uint8_t *restrict y);
  void (*add2)(const uint8_t *restrict a, const uint8_t *restrict b, size_t n, float sa,
               int32_t za, float sb, int32_t zb, float inv_o, float lo, float hi, int32_t zp,
               uint8_t *restrict y);
  void (*fake)(const float *restrict x, size_t n, float inv, float s, float lo, float hi,
               float *restrict y);
  void (*fake_grad)(const float *restrict x, const float *restrict dy, size_t n, float inv,
                    float lo, float hi, int set, float *restrict dx);
} vmc_qelt_loops;
extern const vmc_qelt_loops vmc_qelt_loops_base, vmc_qelt_loops_avx2, vmc_qelt_loops_avx512;

/* Max pooling of `planes` planes of g (padding is ignored, as the float op's
 * -inf): codes are monotonic in the value, so the output keeps x's params. */
void vmc_qmaxpool_u8(const uint8_t *x, const vmc_conv_geom *g, int planes, uint8_t *y);
/* Average pooling, the window's full size as divisor (padding counts as
 * zero, i.e. as zp, PyTorch's default): t = sum over the window of (q - zp)
 * (s32), y = vmc_qepi_requant(t, scale, prep) with scale = s_x / (kh * kw * s_y).
 * Global average pooling is the window h x w. */
void vmc_qavgpool_u8(const uint8_t *x, const vmc_conv_geom *g, int planes, int32_t x_zp,
                     float scale, const vmc_qepi_prep *prep, uint8_t *y);

/* col[(c*kh + i)*kw + j][oy*ow + ox] = x[c][oy*sh - ph + i*dh][ox*sw - pw + j*dw],
 * pad outside the plane (the input's zero point): vmc_im2col on u8. */
void vmc_qim2col_u8(const uint8_t *x, const vmc_conv_geom *g, uint8_t pad, uint8_t *col);

/* Convolution without short-row copies (the "wide" and "phase" layouts of
 * conv2d's fp32 path).  The input, padded with pad (the zero point) to
 * hp = h + 2ph rows and wp = w + 2pw columns, is split once into its stride
 * phases: phase (r, t) of channel c holds the padded pixels (sh*u + r,
 * sw*v + t), a plane of phh = ceil(hp / sh) rows and phw = ceil(wp / sw)
 * columns, at ((c*sh + r)*sw + t) * phh*phw; phases no tap reads are left
 * out (filled with pad), and vmc_qphase_bytes counts a little slack after
 * the last (vmc_qphase_u8).  Row (c, i, j) of the virtual im2col matrix is
 * then the contiguous slice of oh*phw bytes of phase ((i*dh) % sh, (j*dw) %
 * sw) starting at ((i*dh) / sh) * phw + (j*dw) / sw: vmc_qwide_offsets
 * gives the K row offsets into xp, which the GEMM reads in place (its boff
 * rows, qgemm.h), so the matrix is never copied.  A GEMM over those oh*phw
 * "wide" columns gives each output row phw - ow extra columns, which
 * vmc_qcrop_u8 drops.  Stride 1 is the single phase: the padded image. */
static inline int vmc_qphase_h(const vmc_conv_geom *g) { return (g->h + 2 * g->ph + g->sh - 1) / g->sh; }
static inline int vmc_qphase_w(const vmc_conv_geom *g) { return (g->w + 2 * g->pw + g->sw - 1) / g->sw; }
static inline size_t vmc_qphase_bytes(const vmc_conv_geom *g) {
  return (size_t)g->c * g->sh * g->sw * vmc_qphase_h(g) * vmc_qphase_w(g) +
         (size_t)((g->kw - 1) * g->dw / g->sw) + 1;
}
void vmc_qphase_u8(const uint8_t *x, const vmc_conv_geom *g, uint8_t pad, uint8_t *xp);
/* off[(c*kh + i)*kw + j] = the offset in xp of row (c, i, j), K = c*kh*kw of
 * them. */
void vmc_qwide_offsets(const vmc_conv_geom *g, int32_t *off);
/* y[r][oy][ox] = yw[r][oy * wp + ox] for `rows` planes of oh x ow. */
void vmc_qcrop_u8(const uint8_t *yw, int rows, int oh, int wp, int ow, uint8_t *y);

/* ---- pixel-major (NHWC) layout for the direct convolution (qgemm.h) ---------
 * A tensor of c channels stored pixel by pixel, c4 bytes per pixel: c rounded
 * up to a multiple of 4 (channels past c are never read with a non-zero
 * weight), or 1 for a one-channel image, whose quads are then 4 neighbouring
 * pixels of a row (kw rounded up to 4 with zero weights: a quad may read up
 * to 3 bytes past the last tap).  Quads of a conv of geometry g (dilation 1):
 * c4 >= 4: (i, j, 4 channels) in that order, kq = kh * kw * c4 / 4;
 * c4 == 1: (i, 4 columns), kq = kh * ceil(kw / 4). */
static inline int vmc_qconv_kq(const vmc_conv_geom *g, int c4) {
  return c4 == 1 ? g->kh * ((g->kw + 3) / 4) : g->kh * g->kw * (c4 / 4);
}
/* koff[q] = the byte offset of quad q from the byte of tap (0, 0), channel 0
 * (row_bytes between input rows), and wq = the M x (c x kh x kw) OIHW codes
 * w as M rows of 4 kq codes in quad order (zeros where a quad runs past the
 * taps or the channels). */
void vmc_qconv_quads(const vmc_conv_geom *g, int c4, size_t row_bytes, int M, const int8_t *w,
                     int32_t *koff, int8_t *wq);

/* A pixel-major tensor in a buffer: h x w pixels of c4 bytes, surrounded by
 * pad pixels of border (the zero point: the value 0, which convolutions read
 * as their padding); row_bytes = (w + 2 pad) c4, the first interior pixel at
 * (pad * (w + 2 pad) + pad) c4. */
typedef struct vmc_qnhwc {
  int c, h, w, c4, pad;
} vmc_qnhwc;
static inline size_t vmc_qnhwc_row(const vmc_qnhwc *t) {
  return (size_t)(t->w + 2 * t->pad) * (size_t)t->c4;
}
static inline size_t vmc_qnhwc_origin(const vmc_qnhwc *t) {
  return (size_t)t->pad * vmc_qnhwc_row(t) + (size_t)t->pad * t->c4;
}
static inline size_t vmc_qnhwc_bytes(const vmc_qnhwc *t) {
  return (size_t)(t->h + 2 * t->pad) * vmc_qnhwc_row(t);
}
/* y = quantize(x) (x: c x h x w floats, NCHW) into t's layout, as
 * vmc_qquantize_f32 does it; border and channels past c get o->zp. */
void vmc_qquantize_nhwc(const float *x, const vmc_qnhwc *t, float inv, const vmc_qact *o,
                        uint8_t *y);
/* Writes zp into t's border (the interior is left alone). */
void vmc_qnhwc_border(const vmc_qnhwc *t, uint8_t zp, uint8_t *y);
/* Global average pooling of t's c channels into y[0..c-1], the rule of
 * vmc_qavgpool_u8. */
void vmc_qgap_nhwc(const uint8_t *x, const vmc_qnhwc *t, int32_t x_zp, float scale,
                   const vmc_qepi_prep *prep, uint8_t *y);

#endif
