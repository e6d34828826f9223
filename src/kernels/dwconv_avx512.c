/* Depthwise convolution, AVX-512F: the wide kernels (dwconv_simd.h), the
 * per-channel strided forward, and the all-channel kernels
 * (dwconv_planes_simd.h). */
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

/* Strided depthwise forward (vmc_dwconv_forward's contract, conv.h) for
 * stride-2 rows: each block of 16 output columns keeps its accumulator in
 * a register across all taps.  A tap's 16 inputs x[2*ox + off] are one
 * masked 32-float load from the first in-bounds column and a two-source
 * permute picking the even elements; lanes whose input is padding are
 * zeroed by the permute's mask, so nothing outside the row's valid span is
 * read. */
void vmc_dwconv_forward__avx512(const float *x, const float *w, float bias,
                                const vmc_conv_geom *g, float *y) {
  if (g->sw != 2) {
    vmc_dwconv_forward__ref(x, w, bias, g, y);
    return;
  }
  const int ow = g->ow;
  for (int oy = 0; oy < g->oh; oy++) {
    float *yr = y + (size_t)oy * ow;
    for (int b0 = 0; b0 < ow; b0 += 16) {
      const int nb = ow - b0 < 16 ? ow - b0 : 16;
      __m512 acc = _mm512_set1_ps(bias);
      for (int i = 0; i < g->kh; i++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        const float *xr = x + (size_t)iy * g->w;
        for (int j = 0; j < g->kw; j++) {
          const int off = j * g->dw - g->pw;
          /* Columns ox in [lo, hi) of this block read x[2*ox + off] in bounds. */
          int lo = off < 0 ? (-off + 1) / 2 : 0, hi = (g->w - off - 1) / 2 + 1;
          if (g->w - off <= 0) hi = 0;
          if (lo < b0) lo = b0;
          if (hi > b0 + nb) hi = b0 + nb;
          if (lo >= hi) continue;
          /* Element e of the load is column 2*lo + off + e; lane l (ox =
           * b0 + l) wants e = 2*(b0 + l - lo). */
          const int shift = lo - b0, span = 2 * (hi - lo) - 1; /* floats needed */
          const float *base = xr + 2 * lo + off;
          const __m512 a = _mm512_maskz_loadu_ps((__mmask16)(span >= 16 ? 0xffff : (1u << span) - 1), base);
          const __m512 b = span > 16 ? _mm512_maskz_loadu_ps((__mmask16)((1u << (span - 16)) - 1), base + 16)
                                     : _mm512_setzero_ps();
          const __m512i idx = _mm512_sub_epi32(
              _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
              _mm512_set1_epi32(2 * shift));
          const __mmask16 lanes = (__mmask16)(((1u << (hi - b0)) - 1) & ~((1u << shift) - 1));
          const __m512 v = _mm512_maskz_permutex2var_ps(lanes, a, idx, b);
          acc = _mm512_fmadd_ps(_mm512_set1_ps(w[i * g->kw + j]), v, acc);
        }
      }
      _mm512_mask_storeu_ps(yr + b0, (__mmask16)((1u << nb) - 1), acc);
    }
  }
}

/* ---- all channels in one call (dwconv_planes_simd.h) ------------------------- */
typedef __mmask16 lmask;
#define VADD(a, b) _mm512_add_ps(a, b)
#define VMIN(a, b) _mm512_min_ps(a, b)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VMLOAD(m, p) _mm512_maskz_loadu_ps(m, p)
#define VMSTORE(p, m, v) _mm512_mask_storeu_ps(p, m, v)
typedef __m512i vint;
#define VI_SET1(i) _mm512_set1_epi32(i)
#define VI_ADD(a, b) _mm512_add_epi32(a, b)
#define VI_SUB(a, b) _mm512_sub_epi32(a, b)
#define VI_MULLO(a, b) _mm512_mullo_epi32(a, b)
#define VI_IOTA() _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define VI_LT(a, b) _mm512_cmplt_epi32_mask(a, b)
#define VI_DIV(n, w) \
  _mm512_cvttps_epi32(_mm512_div_ps(_mm512_cvtepi32_ps(n), _mm512_set1_ps((float)(w))))
#define VINTERLEAVE(a, b, lo, hi)                                                              \
  do {                                                                                         \
    (lo) = _mm512_permutex2var_ps(                                                             \
        a, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), b);       \
    (hi) = _mm512_permutex2var_ps(                                                             \
        a, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), b); \
  } while (0)
#define PLANES(name) name##__avx512

/* Tap column j's inputs, elements 2l + j*dw of the window: one two-source
 * permute of its first two vectors, and for the lanes reaching element 32
 * or beyond one of its last two.  The floats vmc_dwconv_forward__avx512
 * gathers (zeros on the padding), so the forward's sums are its bit for
 * bit. */
typedef struct {
  __m512i idx[8], idx2[8]; /* 2l + j*dw, and 16 less */
  __mmask16 hi[8];         /* lanes whose element is >= 32 */
} s2_lanes;

static void s2_lanes_prepare(s2_lanes *s, const vmc_conv_geom *g) {
  const __m512i two_l = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int j = 0; j < g->kw && j < 8; j++) {
    s->idx[j] = _mm512_add_epi32(two_l, _mm512_set1_epi32(j * g->dw));
    s->idx2[j] = _mm512_sub_epi32(s->idx[j], _mm512_set1_epi32(16));
    s->hi[j] = _mm512_cmpge_epi32_mask(s->idx[j], _mm512_set1_epi32(32));
  }
}

static inline __attribute__((always_inline)) __m512 s2_gather(const s2_lanes *s, int j,
                                                              int need_c, __m512 va, __m512 vb,
                                                              __m512 vc) {
  __m512 v = _mm512_permutex2var_ps(va, s->idx[j], vb);
  if (need_c && s->hi[j])
    v = _mm512_mask_mov_ps(v, s->hi[j], _mm512_permutex2var_ps(vb, s->idx2[j], vc));
  return v;
}

#include "kernels/dwconv_planes_simd.h"
