/* The int8 GEMM epilogue in 256-bit registers (qgemm.h's rule), shared by
 * the AVX2 and AVX-VNNI variants (qgemm_avx2.c, qgemm_avxvnni.c; both built
 * with AVX2) and the AVX2 direct convolution (qconv_avx2.c): the per-call
 * constants, and the write-back of 8 lanes with partial rows stored in
 * pieces. */
#ifndef VMC_KERNELS_QEPI_YMM_H
#define VMC_KERNELS_QEPI_YMM_H

#include "kernels/qgemm.h"
#include "kernels/ymm.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

typedef struct epi_ctx {
  vmc_qout out;
  const int32_t *bias;
  const float *scale;
  int per_tensor;
  __m256 lo, hi;
  __m256i zp;
} epi_ctx;

static inline void epi_init(epi_ctx *e, const vmc_qepi *q) {
  const vmc_qepi_prep p = vmc_qepi_prepare(q);
  e->out = q->out;
  e->bias = q->bias;
  e->scale = q->scale;
  e->per_tensor = q->per_tensor;
  e->lo = _mm256_set1_ps(p.lo);
  e->hi = _mm256_set1_ps(p.hi);
  e->zp = _mm256_set1_epi32(p.zp);
}

/* The first n < 8 bytes of v at y, in 4-, 2- and 1-byte pieces (fixed-size
 * copies, written inline: a call per partial row cost more than the row's
 * arithmetic on 7x7 planes). */
static inline __attribute__((always_inline)) void store_bytes_first(void *y, uint64_t v, int n) {
  uint8_t *d = y;
  if (n & 4) {
    const uint32_t w = (uint32_t)v;
    memcpy(d, &w, 4);
    d += 4;
    v >>= 32;
  }
  if (n & 2) {
    const uint16_t h = (uint16_t)v;
    memcpy(d, &h, 2);
    d += 2;
    v >>= 16;
  }
  if (n & 1) *d = (uint8_t)v;
}

/* The U8/S8 codes of 8 lanes t (acc + bias already added) with scales s, as
 * s32 lanes in the output type's range (qgemm.h's rule). */
static inline __attribute__((always_inline)) __m256i code8(const epi_ctx *e, __m256i t,
                                                            __m256 s) {
  __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(t), s);
  f = _mm256_min_ps(_mm256_max_ps(f, e->lo), e->hi);
  return _mm256_add_epi32(_mm256_cvtps_epi32(f), e->zp);
}

/* The first n of 8 such codes at y, as u8 (u8 != 0) or s8 bytes. */
static inline __attribute__((always_inline)) void put8(__m256i i, int u8, void *y, int n) {
  /* In the output type's range after the clamp: the packs are exact. */
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  const __m128i b = u8 ? _mm_packus_epi16(w, w) : _mm_packs_epi16(w, w);
  if (n >= 8)
    _mm_storel_epi64((__m128i *)y, b);
  else
    store_bytes_first(y, (uint64_t)_mm_cvtsi128_si64(b), n);
}

/* Stores 8 lanes (acc + bias already added) at y, the first n of them. */
static inline __attribute__((always_inline)) void
store8(const epi_ctx *e, const vmc_qout OUT, __m256i t, __m256 s, void *y, int n) {
  if (OUT == VMC_QOUT_S32)
    ymm_store_first(y, _mm256_castsi256_ps(t), n); /* all 8 for n >= 8 */
  else if (OUT == VMC_QOUT_F32)
    ymm_store_first(y, _mm256_mul_ps(_mm256_cvtepi32_ps(t), s), n);
  else
    put8(code8(e, t, s), OUT == VMC_QOUT_U8, y, n);
}

#endif
