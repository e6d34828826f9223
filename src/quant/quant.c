/* Quantization schemes and parameters, quantize / dequantize / fake
 * quantization over per-tensor or per-channel blocks, weight quantization,
 * SQNR.  The rule is vmc_quantize1 (quant.h), the kernels' epilogue rule. */
#include "quant/quant.h"

#include "kernels/qgemm.h"

#include <float.h>
#include <stdio.h>

static const vmc_qscheme_info g_schemes[VMC_QSCHEME_COUNT] = {
    [VMC_QSCHEME_S8] = {"s8", -127, 127, 1, VMC_S8},
    [VMC_QSCHEME_S4] = {"s4", -7, 7, 1, VMC_S4},
    [VMC_QSCHEME_U8] = {"u8", 0, 255, 0, VMC_U8},
    [VMC_QSCHEME_U4] = {"u4", 0, 15, 0, VMC_U8},
    [VMC_QSCHEME_S7] = {"s7", -63, 63, 1, VMC_S8},
};
_Static_assert(sizeof g_schemes / sizeof g_schemes[0] == VMC_QSCHEME_COUNT, "schemes");

const vmc_qscheme_info *vmc_qscheme_get(vmc_qscheme s) {
  return (int)s >= 0 && s < VMC_QSCHEME_COUNT ? &g_schemes[s] : NULL;
}

int vmc_qscheme_weight_bits(vmc_qscheme s) {
  return s == VMC_QSCHEME_S4 ? 4 : s == VMC_QSCHEME_S7 ? 7 : 8;
}

vmc_qscheme vmc_qscheme_of_weight_bits(int bits) {
  return bits == 4 ? VMC_QSCHEME_S4 : bits == 7 ? VMC_QSCHEME_S7 : VMC_QSCHEME_S8;
}

/* Integer range of a storage type; 0 if the type cannot hold quantized values. */
static int dtype_range(vmc_dtype dt, int64_t *lo, int64_t *hi) {
  switch (dt) {
  case VMC_S4: *lo = -8, *hi = 7; return 1;
  case VMC_S8: *lo = INT8_MIN, *hi = INT8_MAX; return 1;
  case VMC_U8: *lo = 0, *hi = UINT8_MAX; return 1;
  case VMC_S32: *lo = INT32_MIN, *hi = INT32_MAX; return 1;
  default: return 0;
  }
}

vmc_status vmc_qparams_check(const vmc_qparams *p, vmc_dtype dt, const char *what) {
  int64_t tlo, thi;
  if (!what) what = "tensor";
  if (!p) return vmc_error(VMC_ERR_INVALID_ARG, "%s: no quantization parameters", what);
  if (!dtype_range(dt, &tlo, &thi))
    return vmc_error(VMC_ERR_INVALID_ARG, "%s: %s is not a quantized storage type", what,
                     vmc_dtype_name(dt));
  if (!(p->scale >= FLT_MIN && p->scale <= FLT_MAX))
    return vmc_error(VMC_ERR_INVALID_ARG, "%s: scale %g is not a positive normal float",
                     what, (double)p->scale);
  if (p->qmin > p->qmax || p->qmin < tlo || p->qmax > thi)
    return vmc_error(VMC_ERR_INVALID_ARG, "%s: range [%d, %d] does not fit %s", what,
                     (int)p->qmin, (int)p->qmax, vmc_dtype_name(dt));
  if (p->zero_point < p->qmin || p->zero_point > p->qmax)
    return vmc_error(VMC_ERR_INVALID_ARG, "%s: zero point %d outside [%d, %d]", what,
                     (int)p->zero_point, (int)p->qmin, (int)p->qmax);
  return VMC_OK;
}

vmc_status vmc_qparams_from_range(float lo, float hi, vmc_qscheme scheme,
                                  vmc_qparams *out) {
  const vmc_qscheme_info *si = vmc_qscheme_get(scheme);
  if (!si) return vmc_error(VMC_ERR_INVALID_ARG, "unknown quantization scheme %d", (int)scheme);
  if (!isfinite(lo) || !isfinite(hi))
    return vmc_error(VMC_ERR_INVALID_ARG, "quantization range [%g, %g] is not finite",
                     (double)lo, (double)hi);
  if (lo > hi)
    return vmc_error(VMC_ERR_INVALID_ARG, "quantization range [%g, %g]: lo > hi",
                     (double)lo, (double)hi);
  lo = lo < 0 ? lo : 0.0f;
  hi = hi > 0 ? hi : 0.0f;
  vmc_qparams p = {1.0f, si->symmetric ? 0 : si->qmin, si->qmin, si->qmax};
  /* Doubles: hi - lo may overflow a float. */
  const double width = si->symmetric ? (-lo > hi ? -(double)lo : (double)hi)
                                     : (double)hi - (double)lo;
  const double levels = si->symmetric ? (double)si->qmax : (double)(si->qmax - si->qmin);
  const float s = (float)(width / levels);
  if (s >= FLT_MIN) { /* else degenerate: scale 1, zp = the code of 0 */
    p.scale = s;
    if (!si->symmetric) {
      const float r = nearbyintf(lo / s);
      const float zp = (float)si->qmin - r;
      p.zero_point = zp < (float)si->qmin   ? si->qmin
                     : zp > (float)si->qmax ? si->qmax
                                            : (int32_t)zp;
    }
  }
  *out = p;
  return VMC_OK;
}

/* ---- tensors -------------------------------------------------------------------- */

static vmc_status check_blocks(int channels, const vmc_qparams *params, vmc_dtype dt,
                               size_t k, const void *a, const void *b) {
  if (channels < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "quantize: %d channels (need >= 1)", channels);
  size_t n;
  if (!vmc_mul_size((size_t)channels, k, &n))
    return vmc_error(VMC_ERR_INVALID_ARG, "quantize: %d x %zu elements overflow", channels, k);
  if (n && (!a || !b)) return vmc_error(VMC_ERR_INVALID_ARG, "quantize: NULL buffer");
  if (!params) return vmc_error(VMC_ERR_INVALID_ARG, "quantize: no parameters");
  for (int c = 0; c < channels; c++) {
    if (vmc_qparams_check(&params[c], dt, "quantize") == VMC_OK) continue;
    char what[48];
    snprintf(what, sizeof what, "quantize: channel %d", c);
    return vmc_qparams_check(&params[c], dt, what);
  }
  return VMC_OK;
}

/* Quantized values to the packed s4 stream through a small buffer, in
 * even-sized chunks so every chunk starts on a byte. */
static void quantize_s4(const float *x, int channels, size_t k, const vmc_qparams *params,
                        uint8_t *q) {
  int8_t tmp[256];
  size_t fill = 0, start = 0, i = 0;
  for (int c = 0; c < channels; c++) {
    const float inv = 1.0f / params[c].scale;
    for (size_t j = 0; j < k; j++, i++) {
      tmp[fill++] = (int8_t)vmc_quantize1(x[i], inv, &params[c]);
      if (fill == sizeof tmp) {
        vmc_s4_pack(tmp, fill, q + start / 2);
        start += fill;
        fill = 0;
      }
    }
  }
  if (fill) vmc_s4_pack(tmp, fill, q + start / 2);
}

vmc_status vmc_quantize(const float *x, int channels, size_t k, const vmc_qparams *params,
                        vmc_dtype dt, void *q) {
  VMC_TRY(check_blocks(channels, params, dt, k, x, q));
  if (dt == VMC_S4) {
    quantize_s4(x, channels, k, params, q);
    return VMC_OK;
  }
  for (int c = 0; c < channels; c++) {
    const vmc_qparams *p = &params[c];
    const float inv = 1.0f / p->scale;
    const size_t o = (size_t)c * k;
    switch (dt) {
    case VMC_S8:
      for (size_t j = 0; j < k; j++) ((int8_t *)q)[o + j] = (int8_t)vmc_quantize1(x[o + j], inv, p);
      break;
    case VMC_U8:
      for (size_t j = 0; j < k; j++) ((uint8_t *)q)[o + j] = (uint8_t)vmc_quantize1(x[o + j], inv, p);
      break;
    default: /* VMC_S32 (check_blocks allows nothing else) */
      for (size_t j = 0; j < k; j++) ((int32_t *)q)[o + j] = vmc_quantize1(x[o + j], inv, p);
      break;
    }
  }
  return VMC_OK;
}

static int32_t load_q(const void *q, vmc_dtype dt, size_t i) {
  switch (dt) {
  case VMC_S4: return vmc_s4_get(q, i);
  case VMC_S8: return ((const int8_t *)q)[i];
  case VMC_U8: return ((const uint8_t *)q)[i];
  default: return ((const int32_t *)q)[i];
  }
}

vmc_status vmc_qdequantize(const void *q, vmc_dtype dt, int channels, size_t k,
                           const vmc_qparams *params, float *x) {
  VMC_TRY(check_blocks(channels, params, dt, k, q, x));
  for (int c = 0; c < channels; c++) {
    const size_t o = (size_t)c * k;
    for (size_t j = 0; j < k; j++) x[o + j] = vmc_qdequantize1(load_q(q, dt, o + j), &params[c]);
  }
  return VMC_OK;
}

vmc_status vmc_qfake_quantize(const float *x, int channels, size_t k,
                              const vmc_qparams *params, float *y) {
  VMC_TRY(check_blocks(channels, params, VMC_S32, k, x, y));
  for (int c = 0; c < channels; c++) {
    const vmc_qparams *p = &params[c];
    const float inv = 1.0f / p->scale;
    const size_t o = (size_t)c * k;
    for (size_t j = 0; j < k; j++) y[o + j] = vmc_qdequantize1(vmc_quantize1(x[o + j], inv, p), p);
  }
  return VMC_OK;
}

vmc_status vmc_quantize_weights(const float *w, int channels, size_t k, vmc_qscheme scheme,
                                int per_channel, vmc_qparams *params, void *q) {
  const vmc_qscheme_info *si = vmc_qscheme_get(scheme);
  if (!si || !si->symmetric)
    return vmc_error(VMC_ERR_INVALID_ARG,
                     "weights: scheme %s is not symmetric (s8 or s4: the int8 kernels "
                     "subtract no weight zero point)", si ? si->name : "?");
  if (channels < 1 || !params)
    return vmc_error(VMC_ERR_INVALID_ARG, "weights: %d channels", channels);
  size_t n;
  if (!vmc_mul_size((size_t)channels, k, &n))
    return vmc_error(VMC_ERR_INVALID_ARG, "weights: %d x %zu elements overflow", channels, k);
  if (n && (!w || !q)) return vmc_error(VMC_ERR_INVALID_ARG, "weights: NULL buffer");
  const int groups = per_channel ? channels : 1;
  const size_t gk = per_channel ? k : n;
  for (int g = 0; g < groups; g++) {
    float amax = 0;
    for (size_t j = 0; j < gk; j++) {
      const float v = w[(size_t)g * gk + j];
      if (!isfinite(v))
        return vmc_error(VMC_ERR_INVALID_ARG, "weights: element %zu is %g",
                         (size_t)g * gk + j, (double)v);
      amax = fabsf(v) > amax ? fabsf(v) : amax;
    }
    VMC_TRY(vmc_qparams_from_range(-amax, amax, scheme, &params[g]));
  }
  return per_channel ? vmc_quantize(w, channels, k, params, si->dtype, q)
                     : vmc_quantize(w, 1, n, params, si->dtype, q);
}

/* ---- SQNR ----------------------------------------------------------------------- */

static double sqnr_from(double sig, double noise) {
  if (noise == 0) return INFINITY;
  if (sig == 0) return -INFINITY;
  return 10.0 * log10(sig / noise);
}

double vmc_qsqnr_db(const float *x, const float *y, size_t n) {
  double sig = 0, noise = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(x[i]) || !isfinite(y[i])) continue;
    const double d = (double)x[i] - y[i];
    sig += (double)x[i] * x[i];
    noise += d * d;
  }
  return sqnr_from(sig, noise);
}

double vmc_qfake_sqnr_db(const float *x, int channels, size_t k, const vmc_qparams *params) {
  if (check_blocks(channels, params, VMC_S32, k, x, x) != VMC_OK) return NAN;
  double sig = 0, noise = 0;
  for (int c = 0; c < channels; c++) {
    const vmc_qparams *p = &params[c];
    const float inv = 1.0f / p->scale;
    for (size_t j = 0; j < k; j++) {
      const float v = x[(size_t)c * k + j];
      if (!isfinite(v)) continue;
      const double d = (double)v - vmc_qdequantize1(vmc_quantize1(v, inv, p), p);
      sig += (double)v * v;
      noise += d * d;
    }
  }
  return sqnr_from(sig, noise);
}

float vmc_qbias_s32(float b, float w_scale, float x_scale) {
  const vmc_qparams q = {.scale = w_scale * x_scale, .zero_point = 0, .qmin = INT32_MIN,
                         .qmax = INT32_MAX};
  float y = b;
  if (q.scale >= FLT_MIN && q.scale <= FLT_MAX) vmc_qfake_quantize(&b, 1, 1, &q, &y);
  return y;
}
