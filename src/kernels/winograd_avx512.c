/* winograd.h's transforms with AVX-512 (F/BW/VL/DQ), the body
 * (winograd_simd.h) twice:
 *  - 16 tiles per vector: the even and odd columns of 32 from two masked
 *    loads and two two-source permutes;
 *  - 8 tiles per ymm, for rows of at most 8 tiles (Zen 4 runs a zmm
 *    operation in two halves, so half-empty zmm cost twice): AVX2's shuffles
 *    with AVX-512VL's mask registers for the partial loads and stores; also
 *    F(4x4, 3x3) (winograd4_simd.h).
 * Call only where vmc_isa_name() is "avx512". */
#include "kernels/winograd.h"
#include "kernels/ymm.h"

#include <immintrin.h>
#include <stdint.h>

/* Bits 0 .. n - 1 of a vl-lane mask (none for n <= 0, all for n >= vl). */
static inline unsigned lane_bits(int n, int vl) {
  return n >= vl ? (1u << vl) - 1u : n <= 0 ? 0u : (1u << n) - 1u;
}

/* winograd_simd.h's spans() as bits, for vl lanes. */
static inline void span_bits(int at, int first, int n, int vl, unsigned m[2]) {
  for (int k = 0; k < 2; k++)
    m[k] = lane_bits(n - at - k * vl, vl) & ~lane_bits(first - at - k * vl, vl);
}

/* ---- 8 lanes ---- */

static inline __mmask8 lanes8(int n) { return (__mmask8)lane_bits(n, 8); }

static inline void spans8(int at, int first, int n, __mmask8 m[2]) {
  unsigned b[2];
  span_bits(at, first, n, 8, b);
  m[0] = (__mmask8)b[0], m[1] = (__mmask8)b[1];
}

static inline void columns8(const float *s, const float *s8, const __mmask8 m[2], __m256 *even,
                            __m256 *odd) {
  ymm_evens_odds(_mm256_maskz_loadu_ps(m[0], s), _mm256_maskz_loadu_ps(m[1], s8), even, odd);
}

static inline void put8(float *y, const float *res, int n, __m256 v, __m256 lo, __m256 hi) {
  const __mmask8 m = lanes8(n);
  if (res) v = _mm256_add_ps(v, _mm256_maskz_loadu_ps(m, res));
  v = _mm256_min_ps(hi, _mm256_max_ps(lo, v)); /* v < lo ? lo : v > hi ? hi : v */
  _mm256_mask_storeu_ps(y, m, v);
}

#include "kernels/winograd_ymm_ops.h"
#define vmask __mmask8
#define spans spans8
#define columns columns8
#define put put8
#define FN(name) name##__avx512_8
#include "kernels/winograd_simd.h"
typedef __mmask8 qmask;
static inline qmask qmask_of(int first, int n) { return lanes8(n) & ~lanes8(first) & 0xf; }
static inline __m128 qload(const float *p, qmask m) { return _mm_maskz_loadu_ps(m, p); }
typedef __mmask8 ymask;
static inline ymask ymask_of(int first, int n) { return lanes8(n) & ~lanes8(first); }
static inline __m256 yload(const float *p, ymask m) { return _mm256_maskz_loadu_ps(m, p); }
#include "kernels/winograd4_simd.h"
#undef VMUL
#undef VFMA
#undef VFMS
#undef VFNMA
#undef VL
#undef vec
#undef vmask
#undef VZERO
#undef VSET1
#undef VLOAD
#undef VSTORE
#undef VADD
#undef VSUB
#undef VNEG
#undef spans
#undef columns
#undef put
#undef ZIP_LO
#undef ZIP_HI
#undef FN

/* ---- 16 lanes ---- */

static inline __mmask16 lanes(int n) { return (__mmask16)lane_bits(n, 16); }

static inline void spans(int at, int first, int n, __mmask16 m[2]) {
  unsigned b[2];
  span_bits(at, first, n, 16, b);
  m[0] = (__mmask16)b[0], m[1] = (__mmask16)b[1];
}

static inline void columns(const float *s, const float *s16, const __mmask16 m[2], __m512 *even,
                           __m512 *odd) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 lo = _mm512_maskz_loadu_ps(m[0], s), hi = _mm512_maskz_loadu_ps(m[1], s16);
  *even = _mm512_permutex2var_ps(lo, ie, hi);
  *odd = _mm512_permutex2var_ps(lo, io, hi);
}

static inline void put(float *y, const float *res, int n, __m512 v, __m512 lo, __m512 hi) {
  const __mmask16 m = lanes(n);
  if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res));
  v = _mm512_min_ps(hi, _mm512_max_ps(lo, v)); /* v < lo ? lo : v > hi ? hi : v */
  _mm512_mask_storeu_ps(y, m, v);
}

#define VL 16
#define vec __m512
#define vmask __mmask16
#define VZERO() _mm512_setzero_ps()
#define VSET1(s) _mm512_set1_ps(s)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VNEG(v) _mm512_xor_ps(v, _mm512_set1_ps(-0.0f))
#define ZIP_LO(a, b)                                                                              \
  _mm512_permutex2var_ps(                                                                         \
      a, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), b)
#define ZIP_HI(a, b)                                                                              \
  _mm512_permutex2var_ps(                                                                         \
      a, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), b)
#define FN(name) name##__avx512
#define NARROW_INPUT wino_input__avx512_8
#define NARROW_OUTPUT wino_output__avx512_8
#define NARROW_GRAD grad_output__avx512_8
#include "kernels/winograd_simd.h"

const vmc_wino_kernels vmc_wino_kernels__avx512 = {
    "avx512",           wino_input__avx512,    wino_output__avx512, grad_output__avx512,
    wino_input4__avx512_8, wino_output4__avx512_8};
