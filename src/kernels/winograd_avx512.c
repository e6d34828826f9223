/* winograd.h's transforms with AVX-512 (F/BW/VL/DQ): 16 tiles of a tile row
 * per vector (rows of at most 8 tiles take the AVX2 variant's 8 lanes).  The even and odd columns of a padded row come from two
 * masked loads and two two-source permutes; columns past w load as zero,
 * exactly the ones winograd_loops.h zeroes.  The arithmetic is that file's,
 * operation for operation, so the floats are the reference's.  Call only
 * where vmc_isa_name() is "avx512". */
#include "kernels/winograd.h"

#include <immintrin.h>
#include <stdint.h>

static inline __mmask16 lanes(int n) {
  return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* Lanes k with first <= k - at < n: of the 32 columns from `at` on, the
 * ones read (two masks). */
static inline void spans(int at, int first, int n, __mmask16 m[2]) {
  m[0] = lanes(n - at) & ~lanes(first - at);
  m[1] = lanes(n - at - 16) & ~lanes(first - at - 16);
}

/* Columns 2t and 2t + 1 (t < 16) of a row, masked by m (the others zero):
 * (even, odd). */
static inline void columns(const float *s, const __mmask16 m[2], __m512 *even, __m512 *odd) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 lo = _mm512_maskz_loadu_ps(m[0], s), hi = _mm512_maskz_loadu_ps(m[1], s + 16);
  *even = _mm512_permutex2var_ps(lo, ie, hi);
  *odd = _mm512_permutex2var_ps(lo, io, hi);
}

/* d B of one padded row for 16 tiles: (d0, d1, d2, d3) = (e, o, e', o'),
 * m the masks of spans() from column 0 and from column 2. */
static inline void row_b(const float *s, const __mmask16 m[4], __m512 out[4]) {
  __m512 e, o, e1, o1;
  columns(s, m, &e, &o);
  columns(s + 2, m + 2, &e1, &o1);
  out[0] = _mm512_sub_ps(e, e1);
  out[1] = _mm512_add_ps(o, e1);
  out[2] = _mm512_sub_ps(e1, o);
  out[3] = _mm512_sub_ps(o, o1);
}

static void wino_input(const float *x, int ch, size_t plane, size_t row, int h, int w,
                       const vmc_wino_buf *v, int ti0, int ti1, float *tmp) {
  const int tw = (w + 1) / 2;
  if (tw <= 8) { /* half a vector or less: 8 lanes cost half (Zen 4: 2 x 256 bits) */
    vmc_wino_kernels__avx2.input(x, ch, plane, row, h, w, v, ti0, ti1, tmp);
    return;
  }
  const size_t ps = v->pos_stride;
  for (int c = 0; c < ch; c++)
    for (int ti = ti0; ti < ti1; ti++) {
      float *dst0 = v->base + (size_t)c * v->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += 16) {
        /* padded columns 2 * t0 + k, read for k in [first, n): the pixels */
        const int first = 1 - 2 * t0, n = w + 1 - 2 * t0;
        __mmask16 m[4];
        spans(0, first, n, m);
        spans(2, first, n, m + 2);
        __m512 r[4][4];
        for (int i = 0; i < 4; i++) {
          const int y = 2 * ti + i - 1; /* the image row of padded row 2ti + i */
          if (y >= 0 && y < h)
            row_b(x + (size_t)c * plane + (size_t)y * row + 2 * t0 - 1, m, r[i]);
          else
            r[i][0] = r[i][1] = r[i][2] = r[i][3] = _mm512_setzero_ps();
        }
        /* whole vectors: lanes past the row's tiles land on the next
         * row's (written later) or the slack */
        float *dst = dst0 + t0;
        for (int j = 0; j < 4; j++) {
          _mm512_storeu_ps(dst + (0 + j) * ps, _mm512_sub_ps(r[0][j], r[2][j]));
          _mm512_storeu_ps(dst + (4 + j) * ps, _mm512_add_ps(r[1][j], r[2][j]));
          _mm512_storeu_ps(dst + (8 + j) * ps, _mm512_sub_ps(r[2][j], r[1][j]));
          _mm512_storeu_ps(dst + (12 + j) * ps, _mm512_sub_ps(r[1][j], r[3][j]));
        }
      }
    }
}

/* The epilogue and the store of 16 output columns (n of them kept). */
static inline void put(float *y, const float *res, int n, __m512 v, __m512 lo, __m512 hi) {
  const __mmask16 m = lanes(n);
  if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res));
  v = _mm512_min_ps(hi, _mm512_max_ps(lo, v)); /* v < lo ? lo : v > hi ? hi : v */
  _mm512_mask_storeu_ps(y, m, v);
}

static void wino_output(const vmc_wino_buf *mb, int ti0, int ti1, int oc, int h, int w,
                        const vmc_wino_out *o, float *tmp) {
  (void)tmp;
  const int tw = (w + 1) / 2;
  const size_t ps = mb->pos_stride;
  const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 lo = _mm512_set1_ps(o->lo), hi = _mm512_set1_ps(o->hi);
  for (int k = 0; k < oc; k++) {
    const __m512 bias = _mm512_set1_ps(o->bias ? o->bias[k] : 0.0f);
    for (int ti = ti0; ti < ti1; ti++) {
      const float *src0 = mb->base + (size_t)k * mb->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += 16) {
        const float *src = src0 + t0; /* whole vectors: see the input */
        __m512 p[4], q[4];
        for (int a = 0; a < 4; a++) {
          const __m512 m0 = _mm512_loadu_ps(src + (4 * a + 0) * ps);
          const __m512 m1 = _mm512_loadu_ps(src + (4 * a + 1) * ps);
          const __m512 m2 = _mm512_loadu_ps(src + (4 * a + 2) * ps);
          const __m512 m3 = _mm512_loadu_ps(src + (4 * a + 3) * ps);
          p[a] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
          q[a] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        const __m512 y00 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(p[0], p[1]), p[2]), bias);
        const __m512 y01 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(q[0], q[1]), q[2]), bias);
        const __m512 y10 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(p[1], p[2]), p[3]), bias);
        const __m512 y11 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(q[1], q[2]), q[3]), bias);
        const int n = w - 2 * t0; /* output columns 2 * t0 + j, j < n */
        for (int r = 0; r < 2 && 2 * ti + r < h; r++) {
          const size_t at = (size_t)k * o->plane + (size_t)(2 * ti + r) * o->row + 2 * (size_t)t0;
          const __m512 a = r ? y10 : y00, b = r ? y11 : y01;
          const float *res = o->res ? o->res + at : NULL;
          put(o->y + at, res, n, _mm512_permutex2var_ps(a, il, b), lo, hi);
          if (n > 16)
            put(o->y + at + 16, res ? res + 16 : NULL, n - 16, _mm512_permutex2var_ps(a, ih, b), lo,
                hi);
        }
      }
    }
  }
}

/* grad_output: the even and odd columns of the tile row's two dY rows are
 * the tiles' (p, q) and (r, s); columns past w load as zero. */
static void grad_output(const float *dy, size_t plane, size_t row, int oc, int h, int w,
                        const vmc_wino_buf *m, int ti0, int ti1) {
  const int tw = (w + 1) / 2;
  const size_t ps = m->pos_stride;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int k = 0; k < oc; k++)
    for (int ti = ti0; ti < ti1; ti++) {
      const float *d0 = dy + (size_t)k * plane + (size_t)(2 * ti) * row;
      float *dst0 = m->base + (size_t)k * m->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += 16) {
        const int n = w - 2 * t0;
        __m512 p, q, r = _mm512_setzero_ps(), s = _mm512_setzero_ps();
        __mmask16 ms[2];
        spans(0, 0, n, ms);
        columns(d0 + 2 * t0, ms, &p, &q);
        if (2 * ti + 1 < h) columns(d0 + row + 2 * t0, ms, &r, &s);
        const __m512 u[4] = {p, _mm512_add_ps(p, r), _mm512_sub_ps(p, r), _mm512_xor_ps(r, sign)};
        const __m512 v[4] = {q, _mm512_add_ps(q, s), _mm512_sub_ps(q, s), _mm512_xor_ps(s, sign)};
        float *dst = dst0 + t0; /* whole vectors, as the input */
        for (int a = 0; a < 4; a++) {
          _mm512_storeu_ps(dst + (4 * a + 0) * ps, u[a]);
          _mm512_storeu_ps(dst + (4 * a + 1) * ps, _mm512_add_ps(u[a], v[a]));
          _mm512_storeu_ps(dst + (4 * a + 2) * ps, _mm512_sub_ps(u[a], v[a]));
          _mm512_storeu_ps(dst + (4 * a + 3) * ps, _mm512_xor_ps(v[a], sign));
        }
      }
    }
}

const vmc_wino_kernels vmc_wino_kernels__avx512 = {"avx512", wino_input, wino_output, grad_output};
