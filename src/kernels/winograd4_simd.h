/* winograd.h's F(4x4, 3x3) transforms in 8 lanes of 256 bits, for rows of
 * 4, 7 or 8 tiles (images 13 to 16 and 25 to 32 pixels wide); other widths
 * go to the reference.
 *  - 4 tiles: two tile rows per vector, tile row ti in the low 128 bits and
 *    ti + 1 in the high ones, as the planes hold them.
 *  - 7 or 8: one tile row per vector, tiles 0, 2, 4, 6 in the low half and
 *    1, 3, 5, 7 in the high one.  The planes hold the tiles in that order
 *    (the GEMMs between the transforms do not mind; a missing tile 7 is the
 *    last lane, which the next tile row's store covers), which is the order
 *    in-lane transposes give from a pixel row's 8-float chunks and take
 *    back to whole 8-pixel runs.
 * The including file (winograd_simd.h's definitions, VL 8) also defines
 *   VMUL(a, b)           a * b
 *   VFMA(a, b, c), VFMS, VFNMA
 *                        a * b + c, a * b - c, c - a * b, fused
 *   qmask, qmask_of(first, n), qload(p, m)
 *                        a 4-float load of p masked to the lanes l with
 *                        first <= l < n (the others zero)
 *   ymask, ymask_of(first, n), yload(p, m)
 *                        the same for 8 floats
 * The arithmetic is the reference's (winograd.c: bt6, at4), operation for
 * operation, so the floats are its, except that a product by 2, 4 or 8 and
 * the sum it enters are one fused multiply-add: the product is exact, so
 * the fused result is the reference's rounded sum (short of overflow, where
 * the product alone would be infinite).  That takes the multiplies off the
 * adders' ports. */
#include "kernels/winograd.h"

#include <immintrin.h>

/* Zeros, read for a padded row outside the image: up to float 35 (a row
 * of 8 tiles reads 36 from one float before its first pixel). */
static const float FN(zero_row4)[36];

static inline void FN(bt6v)(const vec d[6], vec o[6]) {
  const vec two = VSET1(2.0f), four = VSET1(4.0f), five = VSET1(5.0f);
  const vec d42 = VSUB(d[4], d[2]), d13 = VSUB(d[1], d[3]);
  o[0] = VADD(VFMS(four, d[0], VMUL(five, d[2])), d[4]);
  o[1] = VFNMA(four, VADD(d[1], d[2]), VADD(d[3], d[4]));
  o[2] = VFMA(four, VSUB(d[1], d[2]), VSUB(d[4], d[3]));
  o[3] = VFNMA(two, d13, d42);
  o[4] = VFMA(two, d13, d42);
  o[5] = VADD(VFMS(four, d[1], VMUL(five, d[3])), d[5]);
}

static inline void FN(at4v)(const vec m[6], vec y[4]) {
  const vec s12 = VADD(m[1], m[2]), d12 = VSUB(m[1], m[2]);
  const vec s34 = VADD(m[3], m[4]), d34 = VSUB(m[3], m[4]);
  y[0] = VADD(VADD(m[0], s12), s34);
  y[1] = VFMA(VSET1(2.0f), d34, d12);
  y[2] = VFMA(VSET1(4.0f), s34, s12);
  y[3] = VADD(VFMA(VSET1(8.0f), d34, d12), m[5]);
}

/* Two 4x4 transposes, one per 128-bit half. */
static inline void FN(transpose4)(vec r[4]) {
  const vec t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const vec t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  r[0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  r[1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  r[2] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  r[3] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
}

/* Columns j = 0..5 of the 4 tiles of a padded row in two tile rows: a and
 * b point one float before the rows' first pixels (a[k] is pixel k - 1),
 * m[t] masks floats 4t .. 4t + 3 to the pixels.  Lane l of d[j] is padded
 * column 4l + j of row a (low half) or b (high half). */
static inline void FN(columns4)(const float *a, const float *b, const qmask m[5], vec d[6]) {
  vec x[4];
  for (int t = 0; t < 4; t++) x[t] = _mm256_set_m128(qload(b + 4 * t, m[t]), qload(a + 4 * t, m[t]));
  FN(transpose4)(x);
  const vec x4 = _mm256_set_m128(qload(b + 16, m[4]), qload(a + 16, m[4]));
  for (int j = 0; j < 4; j++) d[j] = x[j];
  /* columns 4 and 5: columns 0 and 1 of the next tile, the last tile's
   * from floats 16 and 17 */
  d[4] = _mm256_castsi256_ps(
      _mm256_alignr_epi8(_mm256_castps_si256(x4), _mm256_castps_si256(x[0]), 4));
  d[5] = _mm256_castsi256_ps(_mm256_alignr_epi8(
      _mm256_castps_si256(_mm256_permute_ps(x4, 0x39)), _mm256_castps_si256(x[1]), 4));
}

/* Columns j = 0..5 of the 8 tiles of a padded row, p one float before
 * the row's first pixel, m[k] masking floats 8k .. 8k + 7 to the pixels,
 * m32 floats 32 .. 35.  Lane L of d[j] is tile 2 (L % 4) + L / 4's. */
static inline void FN(columns8x4)(const float *p, const ymask m[4], qmask m32, vec d[6]) {
  vec x[4]; /* floats 8k .. 8k + 7: tiles 2k and 2k + 1 */
  for (int k = 0; k < 4; k++) x[k] = yload(p + 8 * k, m[k]);
  FN(transpose4)(x);
  for (int j = 0; j < 4; j++) d[j] = x[j];
  /* columns 4 and 5 of tile t are columns 0 and 1 of tile t + 1: the high
   * half of columns 0 and 1 for the tiles in the low half; the low half
   * moved up a lane, floats 32 and 33 last, for those in the high half */
  const __m128 q = qload(p + 32, m32);
  const vec n0 = _mm256_insertf128_ps(_mm256_setzero_ps(), q, 1);
  const vec n1 = _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_permute_ps(q, 0x39), 1);
  for (int j = 0; j < 2; j++) {
    const vec sw = _mm256_permute2f128_ps(x[j], x[j], 0x01);
    const vec up = _mm256_castsi256_ps(
        _mm256_alignr_epi8(_mm256_castps_si256(j ? n1 : n0), _mm256_castps_si256(sw), 4));
    d[4 + j] = _mm256_blend_ps(sw, up, 0xf0);
  }
}

/* V = B^T d B from the rows' columns d[6][6] (padded row i's in d[i]). */
static inline void FN(input_tiles4)(vec d[6][6], float *dst, size_t ps) {
  vec r[6][6];
  for (int i = 0; i < 6; i++) FN(bt6v)(d[i], r[i]);
  for (int k = 0; k < 6; k++) {
    const vec col[6] = {r[0][k], r[1][k], r[2][k], r[3][k], r[4][k], r[5][k]};
    vec o[6];
    FN(bt6v)(col, o);
    for (int a = 0; a < 6; a++) VSTORE(dst + (size_t)(6 * a + k) * ps, o[a]);
  }
}

static void FN(wino_input4)(const float *x, int ch, size_t plane, size_t row, int h, int w,
                            const vmc_wino_buf *v, int ti0, int ti1, float *tmp) {
  const int tw = (w + 3) / 4;
  const size_t ps = v->pos_stride;
  if (tw == 7 || tw == 8) {
    ymask m[4];
    for (int k = 0; k < 4; k++) m[k] = ymask_of(1 - 8 * k, w + 1 - 8 * k);
    const qmask m32 = qmask_of(1 - 32, w + 1 - 32);
    for (int c = 0; c < ch; c++)
      for (int ti = ti0; ti < ti1; ti++) {
        vec d[6][6];
        for (int i = 0; i < 6; i++) {
          const int y = 4 * ti + i - 1;
          const float *p = y >= 0 && y < h ? x + (size_t)c * plane + (size_t)y * row - 1
                                           : FN(zero_row4);
          FN(columns8x4)(p, m, m32, d[i]);
        }
        FN(input_tiles4)(d, v->base + (size_t)c * v->ch_stride + (size_t)(ti - ti0) * tw, ps);
      }
    return;
  }
  if (tw != 4) {
    vmc_wino_kernels__ref.input4(x, ch, plane, row, h, w, v, ti0, ti1, tmp);
    return;
  }
  qmask m[5];
  for (int t = 0; t < 5; t++) m[t] = qmask_of(1 - 4 * t, w + 1 - 4 * t);
  for (int c = 0; c < ch; c++) {
    const float *xc = x + (size_t)c * plane;
    for (int ti = ti0; ti < ti1; ti += 2) {
      vec d[6][6];
      for (int i = 0; i < 6; i++) {
        const int ya = 4 * ti + i - 1, yb = ya + 4; /* the image rows of padded row i */
        const float *a = ya >= 0 && ya < h ? xc + (size_t)ya * row - 1 : FN(zero_row4);
        const float *b =
            ti + 1 < ti1 && yb >= 0 && yb < h ? xc + (size_t)yb * row - 1 : FN(zero_row4);
        FN(columns4)(a, b, m, d[i]);
      }
      FN(input_tiles4)(d, v->base + (size_t)c * v->ch_stride + (size_t)(ti - ti0) * 4, ps);
    }
  }
}

/* Y = A^T M A + bias of the tiles at src: y[i][j] pixel (i, j) of each. */
static inline void FN(output_tiles4)(const float *src, size_t ps, vec bias, vec y[4][4]) {
  vec t[6][4];
  for (int a = 0; a < 6; a++) {
    vec mm[6];
    for (int b = 0; b < 6; b++) mm[b] = VLOAD(src + (size_t)(6 * a + b) * ps);
    FN(at4v)(mm, t[a]);
  }
  for (int j = 0; j < 4; j++) {
    const vec col[6] = {t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]};
    vec yy[4];
    FN(at4v)(col, yy);
    for (int i = 0; i < 4; i++) y[i][j] = VADD(yy[i], bias);
  }
}

static void FN(wino_output4)(const vmc_wino_buf *mb, int ti0, int ti1, int oc, int h, int w,
                             const vmc_wino_out *o, float *tmp) {
  const int tw = (w + 3) / 4;
  const size_t ps = mb->pos_stride;
  const vec lo = VSET1(o->lo), hi = VSET1(o->hi);
  if (tw == 7 || tw == 8) { /* transposed, the tiles' pixels are 8-pixel runs in order */
    for (int k = 0; k < oc; k++) {
      const vec bias = VSET1(o->bias ? o->bias[k] : 0.0f);
      for (int ti = ti0; ti < ti1; ti++) {
        vec y[4][4];
        FN(output_tiles4)(mb->base + (size_t)k * mb->ch_stride + (size_t)(ti - ti0) * tw, ps, bias,
                          y);
        for (int i = 0; i < 4 && 4 * ti + i < h; i++) {
          FN(transpose4)(y[i]);
          const size_t at = (size_t)k * o->plane + (size_t)(4 * ti + i) * o->row;
          for (int l = 0; l < 4 && 8 * l < w; l++)
            put(o->y + at + 8 * l, o->res ? o->res + at + 8 * l : NULL, w - 8 * l, y[i][l], lo, hi);
        }
      }
    }
    return;
  }
  if (tw != 4) {
    vmc_wino_kernels__ref.output4(mb, ti0, ti1, oc, h, w, o, tmp);
    return;
  }
  for (int k = 0; k < oc; k++) {
    const vec bias = VSET1(o->bias ? o->bias[k] : 0.0f);
    for (int ti = ti0; ti < ti1; ti += 2) {
      vec y[4][4]; /* y[i][j]: pixel (i, j) of each tile */
      FN(output_tiles4)(mb->base + (size_t)k * mb->ch_stride + (size_t)(ti - ti0) * 4, ps, bias, y);
      for (int i = 0; i < 4; i++) {
        FN(transpose4)(y[i]); /* y[i][l]: tile l's 4 pixels, in both halves */
        for (int half = 0; half < 2; half++) {
          const int r = 4 * (ti + half) + i;
          if (r >= h || (half && ti + 1 >= ti1)) continue;
          const vec p0 = half ? _mm256_permute2f128_ps(y[i][0], y[i][1], 0x31)
                              : _mm256_permute2f128_ps(y[i][0], y[i][1], 0x20);
          const vec p1 = half ? _mm256_permute2f128_ps(y[i][2], y[i][3], 0x31)
                              : _mm256_permute2f128_ps(y[i][2], y[i][3], 0x20);
          const size_t at = (size_t)k * o->plane + (size_t)r * o->row;
          const float *res = o->res ? o->res + at : NULL;
          put(o->y + at, res, 8, p0, lo, hi);
          put(o->y + at + 8, res ? res + 8 : NULL, w - 8, p1, lo, hi);
        }
      }
    }
  }
}
