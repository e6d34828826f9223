/* winograd.h's transforms with AVX-512 (F/BW/VL/DQ; the body:
 * winograd_simd.h), 16 tiles per vector: the even and odd columns of 32
 * from two masked loads and two two-source permutes.  Input rows of at most
 * 8 tiles take the AVX2 variant's 8 lanes.  Call only where vmc_isa_name()
 * is "avx512". */
#include "kernels/winograd.h"

#include <immintrin.h>
#include <stdint.h>

#define VL 16
typedef __m512 vec;
typedef __mmask16 vmask;
#define VZERO() _mm512_setzero_ps()
#define VSET1(s) _mm512_set1_ps(s)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VNEG(v) _mm512_xor_ps(v, _mm512_set1_ps(-0.0f))
#define FN(name) name##__avx512

static inline __mmask16 lanes(int n) {
  return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

static inline void spans(int at, int first, int n, vmask m[2]) {
  m[0] = lanes(n - at) & ~lanes(first - at);
  m[1] = lanes(n - at - 16) & ~lanes(first - at - 16);
}

static inline void columns(const float *s, const vmask m[2], vec *even, vec *odd) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 lo = _mm512_maskz_loadu_ps(m[0], s), hi = _mm512_maskz_loadu_ps(m[1], s + 16);
  *even = _mm512_permutex2var_ps(lo, ie, hi);
  *odd = _mm512_permutex2var_ps(lo, io, hi);
}

#define ZIP_LO(a, b)                                                                              \
  _mm512_permutex2var_ps(                                                                         \
      a, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), b)
#define ZIP_HI(a, b)                                                                              \
  _mm512_permutex2var_ps(                                                                         \
      a, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), b)

static inline void put(float *y, const float *res, int n, vec v, vec lo, vec hi) {
  const __mmask16 m = lanes(n);
  if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res));
  v = _mm512_min_ps(hi, _mm512_max_ps(lo, v)); /* v < lo ? lo : v > hi ? hi : v */
  _mm512_mask_storeu_ps(y, m, v);
}

/* Half a vector or less: 8 lanes cost half (Zen 4 runs 2 x 256 bits). */
#define NARROW_INPUT vmc_wino_kernels__avx2.input
#include "kernels/winograd_simd.h"

const vmc_wino_kernels vmc_wino_kernels__avx512 = {"avx512", wino_input__avx512,
                                                   wino_output__avx512, grad_output__avx512};
