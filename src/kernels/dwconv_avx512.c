/* Depthwise "wide" convolution, AVX-512F (see dwconv_simd.h). */
#include <immintrin.h>

#define VL 16
typedef __m512 vec;
#define VZERO() _mm512_setzero_ps()
#define VSET1(s) _mm512_set1_ps(s)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
#define FN(name) name##__avx512
#include "kernels/dwconv_simd.h"
