/* The element-wise loops of qelt.c, compiled three times: for the base ISA
 * (qelt.c), with AVX2 (qelt_avx2.c) and with AVX-512 (qelt_avx512.c), named
 * with QELT_SFX.  The same fp32
 * operations in the same order (no contraction: the files are ISO C11,
 * where GCC does not fuse, and no expression holds a multiply-add for
 * clang to fuse), so all give the same bits. */
#include "kernels/qelt.h"

#define QELT_CAT2(a, b) a##b
#define QELT_CAT(a, b) QELT_CAT2(a, b)
#define QELT_FN(name) QELT_CAT(name, QELT_SFX)

/* The loops read every parameter into a local first, and y (u8) is
 * restrict: otherwise y might alias the parameters and the compiler would
 * not vectorise. */
void QELT_FN(vmc_qquantize_f32_)(const float *restrict x, size_t n, float inv, float lo,
                                 float hi, int32_t zp, uint8_t *restrict y) {
  for (size_t i = 0; i < n; i++) {
    const float v = x[i] * inv;
    y[i] = vmc_qround_u8(v == v ? v : 0.0f, lo, hi, zp);
  }
}

void QELT_FN(vmc_qrequant_u8_)(const uint8_t *restrict a, size_t n, float sa, int32_t za,
                               float inv_o, float lo, float hi, int32_t zp,
                               uint8_t *restrict y) {
  for (size_t i = 0; i < n; i++)
    y[i] = vmc_qround_u8((float)((int32_t)a[i] - za) * sa * inv_o, lo, hi, zp);
}

void QELT_FN(vmc_qadd2_u8_)(const uint8_t *restrict a, const uint8_t *restrict b, size_t n,
                            float sa, int32_t za, float sb, int32_t zb, float inv_o, float lo,
                            float hi, int32_t zp, uint8_t *restrict y) {
  for (size_t i = 0; i < n; i++) {
    const float va = (float)((int32_t)a[i] - za) * sa;
    const float vb = (float)((int32_t)b[i] - zb) * sb;
    y[i] = vmc_qround_u8((va + vb) * inv_o, lo, hi, zp);
  }
}

/* Fake quantization in fp32 (qelt.h, vmc_qfake_f32). */
void QELT_FN(vmc_qfake_f32_)(const float *restrict x, size_t n, float inv, float s, float lo,
                             float hi, float *restrict y) {
  for (size_t i = 0; i < n; i++) {
    const float v = x[i] * inv;
    float c = v > lo ? v : lo; /* NaN: lo */
    c = c < hi ? c : hi;
    const float r = (c + VMC_QFAKE_MAGIC) - VMC_QFAKE_MAGIC;
    y[i] = v == v ? r * s : 0.0f;
  }
}

/* Its straight-through gradient (qelt.h, vmc_qfake_grad_f32). */
void QELT_FN(vmc_qfake_grad_)(const float *restrict x, const float *restrict dy, size_t n,
                              float inv, float lo, float hi, int set, float *restrict dx) {
  const float clo = lo - 2.0f, chi = hi + 2.0f;
  for (size_t i = 0; i < n; i++) {
    float c = x[i] * inv;
    c = c > clo ? c : clo; /* NaN: below lo */
    c = c < chi ? c : chi;
    const float r = (c + VMC_QFAKE_MAGIC) - VMC_QFAKE_MAGIC;
    const float g = ((r >= lo) & (r <= hi)) ? dy[i] : 0.0f;
    dx[i] = set ? g : dx[i] + g;
  }
}

/* This build's loops, for the dispatch in qelt.c. */
const vmc_qelt_loops QELT_FN(vmc_qelt_loops_) = {
    QELT_FN(vmc_qquantize_f32_), QELT_FN(vmc_qrequant_u8_), QELT_FN(vmc_qadd2_u8_),
    QELT_FN(vmc_qfake_f32_), QELT_FN(vmc_qfake_grad_)};
