/* int8 kernels, portable scalar reference: the contract every SIMD variant
 * is tested against bit for bit.
 *
 * GEMM: packed A is plain row-major A (mr = ka = 1); each C element is the
 * integer sum over k (wrapping mod 2^32, as the SIMD adds do) followed by
 * vmc_qepi_store1, the one scalar statement of the epilogue (qgemm.h).
 * Depthwise: the direct definition, with x_zp read outside the plane. */
#include "kernels/qgemm.h"

static void qgemm_ref_run(int M, int N, int K, const void *packed_a, const uint8_t *B,
                          int ldb, const int32_t *boff, const vmc_qepi *epi, void *C,
                          int ldc) {
  vmc_qgemm_packed_scalar(&vmc_qgemm_u8s8s32__ref, M, N, K, packed_a, B, ldb, boff, epi, C,
                          ldc);
}

const vmc_qgemm_variant vmc_qgemm_u8s8s32__ref = {
    .name = "qgemm_u8s8s32__ref",
    .needs = 0,
    .mr = 1,
    .nr = 1,
    .ka = 1,
    .a_bytes = 1,
    .run = qgemm_ref_run,
};

void vmc_qdwconv__ref(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                      const vmc_qepi *epi, void *y) {
  const int oh = vmc_qdw_out_h(p), ow = vmc_qdw_out_w(p);
  const vmc_qepi_prep prep = vmc_qepi_prepare(epi);
  for (int oy = 0; oy < oh; oy++)
    for (int ox = 0; ox < ow; ox++) {
      uint32_t acc = 0;
      for (int i = 0; i < p->kh; i++)
        for (int j = 0; j < p->kw; j++) {
          const int iy = oy * p->sh + i - p->ph, ix = ox * p->sw + j - p->pw;
          const int xv = iy >= 0 && iy < p->h && ix >= 0 && ix < p->w
                             ? x[(size_t)iy * (size_t)p->w + (size_t)ix]
                             : p->x_zp;
          acc += (uint32_t)(xv * wk[i * p->kw + j]);
        }
      vmc_qepi_store1(epi, &prep, 0, (int32_t)acc, y, (size_t)oy * (size_t)ow + (size_t)ox);
    }
}

void vmc_qconv__ref(const vmc_qconv_params *p, const uint8_t *x, const int8_t *w_packed,
                    const vmc_qepi *epi, const vmc_qconv_add *add, uint8_t *y) {
  const vmc_qepi_prep prep = vmc_qepi_prepare(epi);
  for (int oy = 0; oy < p->oh; oy++)
    for (int ox = 0; ox < p->ow; ox++) {
      const uint8_t *xb = x + (size_t)oy * p->xs_row + (size_t)ox * p->xs_pix;
      const size_t at = (size_t)oy * p->ys_row + (size_t)ox * p->ys_pix;
      uint8_t *yb = y + at;
      for (int m = 0; m < p->M; m++) {
        const int8_t *w = w_packed + (size_t)(m / 16) * p->kq * 64 + (size_t)(m % 16) * 4;
        uint32_t acc = 0;
        for (int q = 0; q < p->kq; q++)
          for (int i = 0; i < 4; i++)
            acc += (uint32_t)(w[(size_t)q * 64 + i] * (int)xb[p->koff[q] + i]);
        vmc_qepi_store1(epi, &prep, m, (int32_t)acc, yb, (size_t)m);
        if (add) yb[m] = vmc_qconv_add1(add, yb[m], add->res[at + (size_t)m]); /* u8 out */
      }
    }
}

void vmc_qdwp__ref(const vmc_qdwp_params *p, const uint8_t *x, const int8_t *w,
                   const vmc_qepi *epi, uint8_t *y) {
  const vmc_qepi_prep prep = vmc_qepi_prepare(epi);
  const int taps = p->kh * p->kw;
  for (int oy = 0; oy < p->oh; oy++)
    for (int ox = 0; ox < p->ow; ox++) {
      uint8_t *yb = y + (size_t)oy * p->ys_row + (size_t)ox * p->ys_pix;
      for (int c = 0; c < p->C; c++) {
        uint32_t acc = 0;
        for (int t = 0; t < taps; t++) {
          const int i = t / p->kw, j = t % p->kw;
          acc += (uint32_t)(w[vmc_qdwp_w_at(taps, c, t)] *
                            (int)x[(size_t)(oy * p->sh + i) * p->xs_row +
                                   (size_t)(ox * p->sw + j) * p->xs_pix + (size_t)c]);
        }
        vmc_qepi_store1(epi, &prep, c, (int32_t)acc, yb, (size_t)c);
      }
    }
}
