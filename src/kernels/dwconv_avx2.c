/* Depthwise convolution, AVX2+FMA: the wide kernels (dwconv_simd.h) and the
 * all-channel kernels (dwconv_planes_simd.h). */
#include <immintrin.h>
#include <stdint.h>

#include "kernels/ymm.h"

static inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

#define VL 8
typedef __m256 vec;
#define VZERO() _mm256_setzero_ps()
#define VSET1(s) _mm256_set1_ps(s)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSUM(v) sum8(v)
#define FN(name) name##__avx2
#include "kernels/dwconv_simd.h"

/* ---- all channels in one call (dwconv_planes_simd.h) -------------------------
 * AVX2 has no mask registers: lane masks are kept as bytes and expanded to
 * vectors at use, loads are vmaskmovps (no fault on masked-off lanes), and
 * the stride-2 window is gathered by in-lane permutes and blends. */
typedef uint8_t lmask;

static inline __m256i expand8(unsigned bits) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), bit), bit);
}

/* keep is always a run of low lanes (lanes_below). */
static inline void store8(float *y, unsigned keep, __m256 v) {
  ymm_store_first(y, v, __builtin_popcount(keep));
}

#define VADD(a, b) _mm256_add_ps(a, b)
#define VMIN(a, b) _mm256_min_ps(a, b)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VMLOAD(m, p) _mm256_maskload_ps(p, expand8(m))
#define VMSTORE(p, m, v) store8(p, m, v)
typedef __m256i vint;
#define VI_SET1(i) _mm256_set1_epi32(i)
#define VI_ADD(a, b) _mm256_add_epi32(a, b)
#define VI_SUB(a, b) _mm256_sub_epi32(a, b)
#define VI_MULLO(a, b) _mm256_mullo_epi32(a, b)
#define VI_IOTA() _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#define VI_LT(a, b) ((uint8_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(b, a))))
#define VI_DIV(n, w) \
  _mm256_cvttps_epi32(_mm256_div_ps(_mm256_cvtepi32_ps(n), _mm256_set1_ps((float)(w))))
#define VINTERLEAVE(a, b, lo, hi)                                        \
  do {                                                                   \
    const __m256 l_ = _mm256_unpacklo_ps(a, b), h_ = _mm256_unpackhi_ps(a, b); \
    (lo) = _mm256_permute2f128_ps(l_, h_, 0x20);                         \
    (hi) = _mm256_permute2f128_ps(l_, h_, 0x31);                         \
  } while (0)
#define PLANES(name) name##__avx2
/* The stride-2 forward by pairs: vshufps keeps each 128-bit lane's evens
 * (odds) of lo then hi, [x0 x2 x8 x10 | x4 x6 x12 x14]; swapping the middle
 * 64-bit pairs restores the order (as ymm_evens_odds). */
#define S2_PAIRS
#define VEVENS_SCR(lo, hi) _mm256_shuffle_ps(lo, hi, 0x88)
#define VODDS_SCR(lo, hi) _mm256_shuffle_ps(lo, hi, 0xdd)
#define VUNSCRAMBLE(v) _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xd8))
typedef __m256i vmask;
#define VMASK(m) expand8(m)
#define VMLOADV(mv, p) _mm256_maskload_ps(p, mv)

/* Tap column j's inputs, elements e = 2l + j*dw of the window: from window
 * vector e / 8 by one in-lane permute each, blended. */
typedef struct {
  __m256i idx[8];            /* e % 8 */
  __m256i from_b[8], from_c[8]; /* lanes whose e / 8 is 1, 2 */
  int uses_c[8];
} s2_lanes;

static void s2_lanes_prepare(s2_lanes *s, const vmc_conv_geom *g) {
  for (int j = 0; j < g->kw && j < 8; j++) {
    int idx[8], fb[8], fc[8], any_c = 0;
    for (int l = 0; l < 8; l++) {
      const int e = 2 * l + j * g->dw;
      idx[l] = e % 8;
      fb[l] = e / 8 == 1 ? -1 : 0;
      fc[l] = e / 8 == 2 ? -1 : 0;
      any_c |= fc[l];
    }
    s->idx[j] = _mm256_loadu_si256((const __m256i *)idx);
    s->from_b[j] = _mm256_loadu_si256((const __m256i *)fb);
    s->from_c[j] = _mm256_loadu_si256((const __m256i *)fc);
    s->uses_c[j] = any_c != 0;
  }
}

static inline __attribute__((always_inline)) __m256 s2_gather(const s2_lanes *s, int j,
                                                              int need_c, __m256 va, __m256 vb,
                                                              __m256 vc) {
  __m256 v = _mm256_permutevar8x32_ps(va, s->idx[j]);
  v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(vb, s->idx[j]),
                       _mm256_castsi256_ps(s->from_b[j]));
  if (need_c && s->uses_c[j])
    v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(vc, s->idx[j]),
                         _mm256_castsi256_ps(s->from_c[j]));
  return v;
}

#include "kernels/dwconv_planes_simd.h"
