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
