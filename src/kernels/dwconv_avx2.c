/* Depthwise "wide" convolution, AVX2+FMA (see dwconv_simd.h). */
#include <immintrin.h>

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

/* ---- all channels in one call (vmc_dwconv_planes), 8 lanes ---------------------
 * The avx512 variant's scheme (dwconv_avx512.c) with AVX2's tools: lane masks
 * as bytes expanded to vectors at use, vmaskmovps loads (no fault on
 * masked-off lanes), and the stride-2 window gathered with one in-lane
 * permute per source vector and blends. */
#include <stddef.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))
#define PL_MAX_MASKS 4096
#define S2_MAX_KW 8
#define S2_MAX_BLOCKS 32

INLINE const float *at_offset(const float *p, ptrdiff_t off) {
  return (const float *)((uintptr_t)p + (uintptr_t)(off * (ptrdiff_t)sizeof(float)));
}

/* Lane l of the result is all ones where bit l of bits is set. */
INLINE __m256i expand8(unsigned bits) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), bit), bit);
}

INLINE __m256 finish8(__m256 v, int clamp, __m256 lo, __m256 hi) {
  return clamp ? _mm256_min_ps(_mm256_max_ps(v, lo), hi) : v; /* vmc_clampf */
}

INLINE void store8(float *y, unsigned keep, __m256 v) {
  if (keep == 0xff)
    _mm256_storeu_ps(y, v);
  else
    _mm256_maskstore_ps(y, expand8(keep), v);
}

/* Stride 1, output the input's size: one flat run of P pixels per plane,
 * msk[b * taps + t] the lanes of block b (8 pixels) whose tap t lies in the
 * plane, off[t] the tap's offset. */
INLINE void s1_channels8(const int NC, const float *x, size_t P, const float *w,
                         const float *bias, int taps, int nb, const uint8_t *msk,
                         const ptrdiff_t *off, int clamp, __m256 lo, __m256 hi, float *y) {
  for (int b = 0; b < nb; b++) {
    const size_t n0 = 8 * (size_t)b;
    __m256 acc[4];
    for (int k = 0; k < NC; k++) acc[k] = _mm256_set1_ps(bias ? bias[k] : 0.0f);
    const uint8_t *m = msk + (size_t)b * taps;
    for (int t = 0; t < taps; t++) {
      const float *at = at_offset(x + n0, off[t]);
      const __m256i mv = expand8(m[t]);
      for (int k = 0; k < NC; k++)
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(w[(size_t)k * taps + t]),
                                 _mm256_maskload_ps(at + k * P, mv), acc[k]);
    }
    const unsigned keep = n0 + 8 <= P ? 0xffu : (1u << (P - n0)) - 1;
    for (int k = 0; k < NC; k++) store8(y + k * P + n0, keep, finish8(acc[k], clamp, lo, hi));
  }
}

static int planes8_s1(const float *x, int ch, const float *w, const float *bias,
                      const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  const int h = g->h, wd = g->w, taps = g->kh * g->kw;
  const size_t P = (size_t)h * wd, nb = (P + 7) / 8;
  if (g->oh != h || g->ow != wd || taps > DW_MAX_TAPS || nb * (size_t)taps > PL_MAX_MASKS)
    return 0;
  ptrdiff_t off[DW_MAX_TAPS];
  uint8_t msk[PL_MAX_MASKS];
  /* oy = n / w by a float division: exact for these planes (P < 2^15). */
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 fw = _mm256_set1_ps((float)wd);
  const __m256i minus1 = _mm256_set1_epi32(-1), vh = _mm256_set1_epi32(h),
                vw = _mm256_set1_epi32(wd), vP = _mm256_set1_epi32((int)P);
  for (size_t b = 0; b < nb; b++) {
    const __m256i n = _mm256_add_epi32(_mm256_set1_epi32((int)(8 * b)), iota);
    const __m256i oy = _mm256_cvttps_epi32(_mm256_div_ps(_mm256_cvtepi32_ps(n), fw));
    const __m256i ox = _mm256_sub_epi32(n, _mm256_mullo_epi32(oy, vw));
    const __m256i in = _mm256_cmpgt_epi32(vP, n);
    for (int i = 0; i < g->kh; i++) {
      const int di = i * g->dh - g->ph;
      const __m256i iy = _mm256_add_epi32(oy, _mm256_set1_epi32(di));
      const __m256i rows = _mm256_and_si256(
          in, _mm256_and_si256(_mm256_cmpgt_epi32(iy, minus1), _mm256_cmpgt_epi32(vh, iy)));
      for (int j = 0; j < g->kw; j++) {
        const int dj = j * g->dw - g->pw;
        const __m256i ix = _mm256_add_epi32(ox, _mm256_set1_epi32(dj));
        const __m256i ok = _mm256_and_si256(
            rows, _mm256_and_si256(_mm256_cmpgt_epi32(ix, minus1), _mm256_cmpgt_epi32(vw, ix)));
        msk[b * taps + i * g->kw + j] = (uint8_t)_mm256_movemask_ps(_mm256_castsi256_ps(ok));
        off[i * g->kw + j] = (ptrdiff_t)di * wd + dj;
      }
    }
  }
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  int c = 0;
  for (; c + 4 <= ch; c += 4)
    s1_channels8(4, x + c * P, P, w + (size_t)c * taps, bias ? bias + c : NULL, taps, (int)nb, msk,
                 off, clamp, vlo, vhi, y + c * P);
  for (; c < ch; c++)
    s1_channels8(1, x + c * P, P, w + (size_t)c * taps, bias ? bias + c : NULL, taps, (int)nb, msk,
                 off, clamp, vlo, vhi, y + c * P);
  return 1;
}

/* Stride 2: per block of 8 outputs and image row a window of 24 floats from
 * column ws = 2*b0 - pw (zeros outside the row); tap column j's inputs are
 * elements e = 2l + j*dw, taken from window vector e / 8 by one permute each
 * and blended. */
typedef struct {
  __m256i idx[S2_MAX_KW];            /* e % 8 */
  __m256i from_b[S2_MAX_KW], from_c[S2_MAX_KW]; /* lanes whose e is in 8..15, 16..23 */
  int uses_c[S2_MAX_KW];
  ptrdiff_t ws[S2_MAX_BLOCKS];
  __m256i ma[S2_MAX_BLOCKS], mb[S2_MAX_BLOCKS], mc[S2_MAX_BLOCKS];
  int nbk;
} s2_geom8;

static int s2_prepare8(const vmc_conv_geom *g, s2_geom8 *s) {
  if (g->sw != 2 || g->kw > S2_MAX_KW || g->ow > 8 * S2_MAX_BLOCKS || 14 + (g->kw - 1) * g->dw > 23)
    return 0;
  for (int j = 0; j < g->kw; j++) {
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
  s->nbk = (g->ow + 7) / 8;
  for (int bo = 0; bo < s->nbk; bo++) {
    const int ws = 16 * bo - g->pw;
    int m[24];
    for (int e = 0; e < 24; e++) m[e] = ws + e >= 0 && ws + e < g->w ? -1 : 0;
    s->ws[bo] = ws;
    s->ma[bo] = _mm256_loadu_si256((const __m256i *)m);
    s->mb[bo] = _mm256_loadu_si256((const __m256i *)(m + 8));
    s->mc[bo] = _mm256_loadu_si256((const __m256i *)(m + 16));
  }
  return 1;
}

INLINE __m256 s2_gather8(const s2_geom8 *s, int j, __m256 va, __m256 vb, __m256 vc) {
  __m256 v = _mm256_permutevar8x32_ps(va, s->idx[j]);
  v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(vb, s->idx[j]), _mm256_castsi256_ps(s->from_b[j]));
  if (s->uses_c[j])
    v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(vc, s->idx[j]),
                         _mm256_castsi256_ps(s->from_c[j]));
  return v;
}

INLINE void s2_channels8(const int NC, const float *x, const vmc_conv_geom *g, const float *w,
                         const float *bias, const s2_geom8 *s, int clamp, __m256 lo, __m256 hi,
                         float *y) {
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const int taps = g->kh * g->kw;
  for (int oy = 0; oy < g->oh; oy++)
    for (int bo = 0; bo < s->nbk; bo++) {
      const int b0 = 8 * bo, nb = g->ow - b0 < 8 ? g->ow - b0 : 8;
      __m256 acc[4];
      for (int k = 0; k < NC; k++) acc[k] = _mm256_set1_ps(bias ? bias[k] : 0.0f);
      for (int i = 0; i < g->kh; i++) {
        const int iy = oy * g->sh - g->ph + i * g->dh;
        if (iy < 0 || iy >= g->h) continue;
        const float *win = at_offset(x + (size_t)iy * g->w, s->ws[bo]);
        __m256 va[4], vb[4], vc[4];
        for (int k = 0; k < NC; k++) {
          const float *wk = win + k * in_plane;
          va[k] = _mm256_maskload_ps(wk, s->ma[bo]);
          vb[k] = _mm256_maskload_ps(wk + 8, s->mb[bo]);
          vc[k] = _mm256_maskload_ps(wk + 16, s->mc[bo]);
        }
        for (int j = 0; j < g->kw; j++)
          for (int k = 0; k < NC; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(w[(size_t)k * taps + i * g->kw + j]),
                                     s2_gather8(s, j, va[k], vb[k], vc[k]), acc[k]);
      }
      float *yr = y + (size_t)oy * g->ow + b0;
      for (int k = 0; k < NC; k++)
        store8(yr + k * out_plane, (1u << nb) - 1, finish8(acc[k], clamp, lo, hi));
    }
}

static int planes8_s2(const float *x, int ch, const float *w, const float *bias,
                      const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  s2_geom8 s;
  if (!s2_prepare8(g, &s)) return 0;
  const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->oh * g->ow;
  const size_t taps = (size_t)g->kh * g->kw;
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  int c = 0;
  for (; c + 4 <= ch; c += 4)
    s2_channels8(4, x + c * in_plane, g, w + c * taps, bias ? bias + c : NULL, &s, clamp, vlo,
                 vhi, y + c * out_plane);
  for (; c < ch; c++)
    s2_channels8(1, x + c * in_plane, g, w + c * taps, bias ? bias + c : NULL, &s, clamp, vlo,
                 vhi, y + c * out_plane);
  return 1;
}

int vmc_dwconv_planes__avx2(const float *x, int ch, const float *w, const float *bias,
                            const vmc_conv_geom *g, int clamp, float lo, float hi, float *y) {
  if (ch < 1 || g->oh < 1 || g->ow < 1) return 0;
  if (g->sh == 1 && g->sw == 1) return planes8_s1(x, ch, w, bias, g, clamp, lo, hi, y);
  return planes8_s2(x, ch, w, bias, g, clamp, lo, hi, y);
}
