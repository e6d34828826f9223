/* winograd_simd.h's vector operations for 8 lanes of 256 bits, included
 * before the body by winograd_avx2.c and for the 8-lane transforms of
 * winograd_avx512.c (which undefines them after).  No include guard. */
#define VL 8
#define vec __m256
#define VZERO() _mm256_setzero_ps()
#define VSET1(s) _mm256_set1_ps(s)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VSUB(a, b) _mm256_sub_ps(a, b)
#define VNEG(v) _mm256_xor_ps(v, _mm256_set1_ps(-0.0f))
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VFMS(a, b, c) _mm256_fmsub_ps(a, b, c)
#define VFNMA(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define ZIP_LO YMM_ZIP_LO
#define ZIP_HI YMM_ZIP_HI
