/* Quantization core: schemes, quantization parameters, quantize/dequantize,
 * fake quantization, per-channel weight quantization, SQNR, and calibration
 * observers that turn a stream of activation batches into a range.
 *
 * ---- The rule ----------------------------------------------------------------
 * A vmc_qparams {scale s, zero_point zp, qmin, qmax} maps a float x to
 *   q = clamp( round_half_even( x * inv ) + zp, qmin, qmax ),   inv = 1.0f / s
 * and back to x' = (float)(q - zp) * s.  Every step is fp32 as the int8
 * kernels' epilogue does it (kernels/qgemm.h, vmc_qepi_requant): inv is
 * computed once in fp32, x * inv is one plain fp32 multiply (as PyTorch's
 * quantize_val / fake_quantize do), the product is clamped to
 * [qmin - zp, qmax - zp] before rounding (equal to clamping after it, since
 * the bounds are integers), and rounding is to nearest with ties to even
 * (nearbyint under the default rounding mode).  So vmc_quantize1(x, s, p)
 * and vmc_qepi_requant(t, s, ...) give the same integer for x = (float)t and
 * the same bounds (tested).  +-inf and overflowing products saturate; NaN
 * maps to zp (the code of 0.0): calibration ignores NaN, and so does this.
 *
 * ---- Schemes ------------------------------------------------------------------
 *   VMC_QSCHEME_S8  symmetric, zp = 0, [-127, 127]  ("narrow range": -x is
 *                   representable whenever x is, as TensorRT and ONNX Runtime
 *                   do for weights; -128 is never produced)
 *   VMC_QSCHEME_S4  symmetric, zp = 0, [-7, 7]      (narrow, same reason;
 *                   stored packed two per byte, vmc_s4_pack's layout)
 *   VMC_QSCHEME_S7  symmetric, zp = 0, [-63, 63]    (stored as s8: weights
 *                   that CPUs without VNNI multiply on vpmaddubsw, whose s16
 *                   pair sums they cannot saturate, kernels/qgemm.h)
 *   VMC_QSCHEME_U8  asymmetric, [0, 255], zp in [0, 255]
 *   VMC_QSCHEME_U4  asymmetric, [0, 15], zp in [0, 15]   (stored one per byte)
 * Weights use the symmetric schemes (the int8 GEMM subtracts no weight zero
 * point); activations use U8 (the kernels take u8 activations; post-ReLU
 * data gets zp = 0, i.e. the unsigned case) or S8.  A vmc_qparams built by
 * hand may use any integer range that fits its storage type ([-128, 127]
 * included); bias is quantized to s32 with scale s_w * s_x and zp 0.
 *
 * ---- Parameters from a range [lo, hi] ------------------------------------------
 * lo = min(lo, 0), hi = max(hi, 0) (0 is always inside, as PyTorch does);
 *   symmetric:  s = max(-lo, hi) / qmax,  zp = 0
 *   asymmetric: s = (hi - lo) / (qmax - qmin),
 *               zp = clamp(qmin - round_half_even(lo / s), qmin, qmax)
 * so q = zp dequantizes to exactly 0.0.  Degenerate range (the width is 0,
 * e.g. an all-zero tensor, or s would be below FLT_MIN): s = 1 and zp as
 * above with lo = 0 (i.e. qmin for asymmetric, 0 for symmetric), so every
 * value quantizes to the code of 0.0 and dequantizes to 0.0 exactly.
 * NaN or infinite bounds are an error.
 *
 * ---- Tensors and channels -----------------------------------------------------
 * Functions taking (channels, k, params) read `channels` consecutive blocks of
 * k elements (row-major, output channel first: conv [Cout, Cin/g, kh, kw],
 * linear [out, in]) with params[c] for block c; per tensor is channels = 1,
 * k = n.  Storage types: VMC_S8 (int8_t), VMC_U8 (uint8_t), VMC_S32
 * (int32_t), VMC_S4 (packed: element i = c * k + j in nibble i of the stream,
 * (channels * k + 1) / 2 bytes, as vmc_qgemm_pack_a_s4 reads with lda = k).
 *
 * ---- Observers ----------------------------------------------------------------
 * create(kind, options) -> observe(x, n) many times -> range / qparams.
 * NaN and +-inf are skipped and counted (vmc_observer_stats); every kind also
 * keeps the exact min and max of the finite values.
 *   MINMAX      [min, max] of everything seen.
 *   MOVING_AVG  PyTorch's MovingAverageMinMaxObserver: the first batch (with a
 *               finite value) sets [min, max] to its own; each later batch
 *               moves them: min += c * (batch_min - min), same for max,
 *               c = momentum (default 0.01).
 *   PERCENTILE, MSE, KL  work on a histogram (below):
 *   PERCENTILE  symmetric schemes: T = the p-th percentile of |x|, range
 *               [-T, T]; asymmetric: [the (100-p)-th, the p-th] percentile of x
 *               (post-ReLU data: about [0, p-th]).  Default p = 99.99.  The
 *               percentile is interpolated linearly inside its fine bin
 *               (exact zeros are a point mass at 0) and clamped to the
 *               observed min/max: error below one fine bin width.
 *   MSE         the range minimising the expected squared quantization error
 *               over the histogram, for the observer's scheme: candidates
 *               f * [min, max] (asymmetric) or f * [-amax, amax] (symmetric),
 *               f = k / bins, searched on the grid k = bins, bins - c, ..., c
 *               (c = bins / 128), then at every k within c of the best (the
 *               error is smooth in f; an exhaustive search gave the same
 *               ranges on the tests' distributions, 13x slower).  Each
 *               candidate's real qparams (rounded zero point included) define
 *               the grid, and each search bin's mass is taken as uniform over
 *               the bin (clipped to the observed min/max), so its error --
 *               rounding inside the grid, clipping outside -- is an exact
 *               integral (as PyTorch's HistogramObserver computes its L2
 *               error).  Exact zeros cost nothing.  Ties keep the larger range.
 *   KL          TensorRT's entropy calibration, as in MXNet's
 *               _get_optimal_threshold on the histogram h of |x| (exact zeros
 *               left out: they are representable at any threshold; NVIDIA's
 *               pytorch-quantization likewise overwrites bin 0), with nq
 *               levels: qmax + 1 for symmetric schemes (128 for S8), qmax -
 *               qmin + 1 for asymmetric ones on non-negative data (256 for U8:
 *               the post-ReLU unsigned case), half that for asymmetric ones on
 *               signed data.  For each candidate i = nq .. used (used = last
 *               non-empty bin + 1):
 *                 P[k] = h[k] for k < i; P[i-1] += sum_{k >= i} h[k] (outliers)
 *                 Q: bins k < i of h (outliers NOT added) merged into nq
 *                    groups, group(k) = floor(k * nq / i) (pytorch-quantization's
 *                    linspace/digitize split; sizes differ by at most one),
 *                    each group's mass spread evenly over its bins where
 *                    P != 0, Q[k] = 0 where P[k] == 0
 *                 both smoothed as MXNet's _smooth_distribution (eps = 1e-4
 *                    counts added to zero entries, eps * zeros / nonzeros
 *                    taken from the others; a candidate where that fails is
 *                    skipped), normalised, D_i = KL(P || Q) = sum p log(p/q)
 *               The smallest D_i wins (ties: the smaller i); threshold
 *               T = min(i * w, max|x|) (the clipping edge, as MXNet and
 *               pytorch-quantization; TensorRT's slides say (i + 0.5) * w).  If
 *               used < nq, nothing can be clipped: T = max|x|.  Range: [-T, T]
 *               (symmetric), [max(min, -T), min(max, T)] (asymmetric).  With
 *               `bins` search bins over about [0, max|x|] the smallest
 *               threshold is nq / bins of max|x| (1/16 for S8, 1/8 for U8 at
 *               2048 bins, as TensorRT's): raise `bins` for data whose
 *               outliers sit further out than that.
 *
 * ---- The histogram (PERCENTILE, MSE, KL) ---------------------------------------
 * 16 * bins fine bins of |x| over [0, R), R the smallest power of two >=
 * max|x| (a value at R goes to the last bin), counts kept apart for x > 0 and
 * x < 0 (so both the |x| and the signed histogram are exact) and exact zeros
 * counted apart; `bins` (a power of two in [512, 8192], default 2048) is the
 * search resolution.  When a batch brings a larger |x|, R doubles as often as
 * needed and each new fine bin is the exact sum of the old ones it covers (no
 * interpolation), so the counts depend only on the values seen, not on their
 * order or on how they were split into batches (tested); one pass, constant
 * memory (2 * 16 * bins counts: 512 KiB at 2048).  PERCENTILE interpolates in
 * the fine bins; MSE and KL search `bins` bins made of m = ceil(used / bins)
 * consecutive fine bins (used: up to the last non-empty one), i.e. between
 * 8/9 * bins and bins bins over [0, max|x|] (max|x| > R/2), where TensorRT takes exactly
 * bins over [0, max|x|] from a first pass.  (PyTorch's HistogramObserver
 * instead rescales with interpolation.) */
#ifndef VMC_QUANT_H
#define VMC_QUANT_H

#include "core/core.h"

#include <math.h>

/* ---- schemes and parameters ----------------------------------------------------- */

typedef enum vmc_qscheme {
  VMC_QSCHEME_S8 = 0,
  VMC_QSCHEME_S4,
  VMC_QSCHEME_U8,
  VMC_QSCHEME_U4,
  VMC_QSCHEME_S7,
  VMC_QSCHEME_COUNT
} vmc_qscheme;

typedef struct vmc_qscheme_info {
  const char *name; /* "s8", "s4", "u8", "u4", "s7" */
  int32_t qmin, qmax;
  int symmetric;    /* zp = 0 */
  vmc_dtype dtype;  /* storage: VMC_S8, VMC_S4 (packed), VMC_U8 */
} vmc_qscheme_info;

/* The scheme's table entry, or NULL for an unknown scheme. */
const vmc_qscheme_info *vmc_qscheme_get(vmc_qscheme s);
/* Bits of a weight scheme (S8 8, S7 7, S4 4), and the weight scheme of a
 * width (8, 7 or 4; anything else: S8). */
int vmc_qscheme_weight_bits(vmc_qscheme s);
vmc_qscheme vmc_qscheme_of_weight_bits(int bits);

typedef struct vmc_qparams {
  float scale;        /* > 0, finite, >= FLT_MIN */
  int32_t zero_point; /* in [qmin, qmax] */
  int32_t qmin, qmax; /* qmin <= qmax */
} vmc_qparams;

/* VMC_OK if p is usable for storage type dt (qmin/qmax within the type:
 * S4 -8..7, S8, U8, S32; scale and zero point as above); what names the
 * tensor in the message. */
vmc_status vmc_qparams_check(const vmc_qparams *p, vmc_dtype dt, const char *what);

/* Parameters for [lo, hi] under scheme (see the header comment). */
vmc_status vmc_qparams_from_range(float lo, float hi, vmc_qscheme scheme,
                                  vmc_qparams *out);

/* The rule for one value (inv = 1.0f / p->scale). */
static inline int32_t vmc_quantize1(float x, float inv, const vmc_qparams *p) {
  const float v = x * inv; /* one fp32 multiply, as the kernels' epilogue */
  if (v != v) return p->zero_point;
  const double lo = (double)p->qmin - p->zero_point, hi = (double)p->qmax - p->zero_point;
  double d = v > lo ? v : lo;
  d = d < hi ? d : hi;
  return (int32_t)((int64_t)nearbyint(d) + p->zero_point); /* ties to even */
}
static inline float vmc_qdequantize1(int32_t q, const vmc_qparams *p) {
  return (float)((int64_t)q - p->zero_point) * p->scale;
}

/* ---- tensors ------------------------------------------------------------------- */

/* q = quantize(x) for `channels` blocks of k values, params[c] for block c,
 * stored as dt (VMC_S8, VMC_U8, VMC_S32, or VMC_S4 packed). */
vmc_status vmc_quantize(const float *x, int channels, size_t k, const vmc_qparams *params,
                        vmc_dtype dt, void *q);
/* x = dequantize(q), the same layout. */
vmc_status vmc_qdequantize(const void *q, vmc_dtype dt, int channels, size_t k,
                           const vmc_qparams *params, float *x);
/* y = dequantize(quantize(x)) in float (y may be x): bit for bit what
 * vmc_quantize then vmc_qdequantize give. */
vmc_status vmc_qfake_quantize(const float *x, int channels, size_t k,
                              const vmc_qparams *params, float *y);

/* A bias as the integer runtime adds it to its accumulators: b rounded to
 * an s32 code of scale w_scale * x_scale (zero point 0), in fp32.  A product
 * outside [FLT_MIN, FLT_MAX] (not representable as a scale) leaves b as is. */
float vmc_qbias_s32(float b, float w_scale, float x_scale);

/* Weights (channels x k, output channel first) to a symmetric scheme
 * (VMC_QSCHEME_S8 or S4): params from max |w| of each channel (per_channel)
 * or of the whole tensor (params[0] only), then q as vmc_quantize stores the
 * scheme's dtype: int8_t[channels * k], or for S4 (channels * k + 1) / 2
 * bytes packed by vmc_s4_pack.  An all-zero channel gets scale 1.  Non-finite
 * weights are an error. */
vmc_status vmc_quantize_weights(const float *w, int channels, size_t k, vmc_qscheme scheme,
                                int per_channel, vmc_qparams *params, void *q);

/* Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x - y)^2) in dB
 * over the pairs where both are finite: +inf when they are equal, -inf when
 * x is all zero and y is not. */
double vmc_qsqnr_db(const float *x, const float *y, size_t n);
/* SQNR of x against its fake quantization (the layout of vmc_quantize),
 * computed without a buffer; NaN if the params are invalid. */
double vmc_qfake_sqnr_db(const float *x, int channels, size_t k, const vmc_qparams *params);

/* ---- observers ----------------------------------------------------------------- */

typedef enum vmc_observer_kind {
  VMC_OBSERVER_MINMAX = 0,
  VMC_OBSERVER_MOVING_AVG,
  VMC_OBSERVER_PERCENTILE,
  VMC_OBSERVER_MSE,
  VMC_OBSERVER_KL,
  VMC_OBSERVER_KIND_COUNT
} vmc_observer_kind;

/* "minmax", "moving-avg", "percentile", "mse", "kl". */
const char *vmc_observer_kind_name(vmc_observer_kind k);
/* The kind called name (also "ema", "entropy"), or VMC_ERR_INVALID_ARG. */
vmc_status vmc_observer_kind_from_name(const char *name, vmc_observer_kind *out);

/* Zero fields take the defaults. */
typedef struct vmc_observer_opts {
  vmc_qscheme scheme; /* target of qparams, MSE and KL (default 0: S8; use U8 for
                         activations the kernels read) */
  float momentum;     /* MOVING_AVG, in (0, 1]; default 0.01 */
  double percentile;  /* PERCENTILE, in (50, 100]; default 99.99 */
  int bins;           /* histogram kinds: power of two in [512, 8192]; default 2048 */
} vmc_observer_opts;

typedef struct vmc_observer vmc_observer;

typedef struct vmc_observer_stats {
  uint64_t count;     /* finite values observed */
  uint64_t nonfinite; /* NaN and +-inf skipped */
  uint64_t batches;   /* observe calls with n > 0 */
  float min, max;     /* of the finite values (0, 0 if none) */
} vmc_observer_stats;

/* opts may be NULL (all defaults). */
vmc_status vmc_observer_create(vmc_observer_kind kind, const vmc_observer_opts *opts,
                               vmc_observer **out);
void vmc_observer_destroy(vmc_observer *obs);
/* One batch of n values (x may be NULL when n == 0). */
vmc_status vmc_observer_observe(vmc_observer *obs, const float *x, size_t n);
void vmc_observer_stats_get(const vmc_observer *obs, vmc_observer_stats *st);
/* The calibrated range (before 0 is forced inside it); an error if no finite
 * value has been observed. */
vmc_status vmc_observer_range(const vmc_observer *obs, float *lo, float *hi);
/* vmc_qparams_from_range of that range under the observer's scheme. */
vmc_status vmc_observer_qparams(const vmc_observer *obs, vmc_qparams *out);

#endif
