/* winograd.h's transforms with AVX2: 8 tiles of a tile row per vector, the
 * scheme of winograd_avx512.c (its notes hold here) with in-lane shuffles:
 * the even and odd columns of 16 from two masked loads, one shuffle and one
 * 64-bit permute each.  Partial rows of output are stored through a small
 * buffer (masked stores are slow on some cores).  The floats are the
 * reference's. */
#include "kernels/winograd.h"

#include <immintrin.h>
#include <string.h>

static inline __m256i lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* Lanes k with first <= k - at < n: of the 16 columns from `at` on, the
 * ones read (two masks). */
static inline void spans(int at, int first, int n, __m256i m[2]) {
  m[0] = _mm256_andnot_si256(lanes(first - at), lanes(n - at));
  m[1] = _mm256_andnot_si256(lanes(first - at - 8), lanes(n - at - 8));
}

/* Columns 2t and 2t + 1 (t < 8) of a row, masked by m (the others zero). */
static inline void columns(const float *s, const __m256i m[2], __m256 *even, __m256 *odd) {
  const __m256 lo = _mm256_maskload_ps(s, m[0]), hi = _mm256_maskload_ps(s + 8, m[1]);
  const __m256 e = _mm256_shuffle_ps(lo, hi, 0x88), o = _mm256_shuffle_ps(lo, hi, 0xdd);
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xd8));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xd8));
}

static inline void row_b(const float *s, const __m256i m[4], __m256 out[4]) {
  __m256 e, o, e1, o1;
  columns(s, m, &e, &o);
  columns(s + 2, m + 2, &e1, &o1);
  out[0] = _mm256_sub_ps(e, e1);
  out[1] = _mm256_add_ps(o, e1);
  out[2] = _mm256_sub_ps(e1, o);
  out[3] = _mm256_sub_ps(o, o1);
}

static void wino_input(const float *x, int ch, size_t plane, size_t row, int h, int w,
                       const vmc_wino_buf *v, int ti0, int ti1, float *tmp) {
  (void)tmp;
  const int tw = (w + 1) / 2;
  const size_t ps = v->pos_stride;
  for (int c = 0; c < ch; c++)
    for (int ti = ti0; ti < ti1; ti++) {
      float *dst0 = v->base + (size_t)c * v->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += 8) {
        const int first = 1 - 2 * t0, n = w + 1 - 2 * t0;
        __m256i m[4];
        spans(0, first, n, m);
        spans(2, first, n, m + 2);
        __m256 r[4][4];
        for (int i = 0; i < 4; i++) {
          const int y = 2 * ti + i - 1;
          if (y >= 0 && y < h)
            row_b(x + (size_t)c * plane + (size_t)y * row + 2 * t0 - 1, m, r[i]);
          else
            r[i][0] = r[i][1] = r[i][2] = r[i][3] = _mm256_setzero_ps();
        }
        float *dst = dst0 + t0; /* whole vectors, as winograd_avx512.c */
        for (int j = 0; j < 4; j++) {
          _mm256_storeu_ps(dst + (0 + j) * ps, _mm256_sub_ps(r[0][j], r[2][j]));
          _mm256_storeu_ps(dst + (4 + j) * ps, _mm256_add_ps(r[1][j], r[2][j]));
          _mm256_storeu_ps(dst + (8 + j) * ps, _mm256_sub_ps(r[2][j], r[1][j]));
          _mm256_storeu_ps(dst + (12 + j) * ps, _mm256_sub_ps(r[1][j], r[3][j]));
        }
      }
    }
}

/* The epilogue and the store of 8 output columns (n of them kept). */
static inline void put(float *y, const float *res, int n, __m256 v, __m256 lo, __m256 hi) {
  if (n <= 0) return;
  if (res) v = _mm256_add_ps(v, n >= 8 ? _mm256_loadu_ps(res) : _mm256_maskload_ps(res, lanes(n)));
  v = _mm256_min_ps(hi, _mm256_max_ps(lo, v)); /* v < lo ? lo : v > hi ? hi : v */
  if (n >= 8) {
    _mm256_storeu_ps(y, v);
  } else {
    float part[8];
    _mm256_storeu_ps(part, v);
    memcpy(y, part, (size_t)n * sizeof(float));
  }
}

static void wino_output(const vmc_wino_buf *mb, int ti0, int ti1, int oc, int h, int w,
                        const vmc_wino_out *o, float *tmp) {
  (void)tmp;
  const int tw = (w + 1) / 2;
  const size_t ps = mb->pos_stride;
  const __m256 lo = _mm256_set1_ps(o->lo), hi = _mm256_set1_ps(o->hi);
  for (int k = 0; k < oc; k++) {
    const __m256 bias = _mm256_set1_ps(o->bias ? o->bias[k] : 0.0f);
    for (int ti = ti0; ti < ti1; ti++) {
      const float *src0 = mb->base + (size_t)k * mb->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += 8) {
        const float *src = src0 + t0;
        __m256 p[4], q[4];
        for (int a = 0; a < 4; a++) {
          const __m256 m0 = _mm256_loadu_ps(src + (4 * a + 0) * ps);
          const __m256 m1 = _mm256_loadu_ps(src + (4 * a + 1) * ps);
          const __m256 m2 = _mm256_loadu_ps(src + (4 * a + 2) * ps);
          const __m256 m3 = _mm256_loadu_ps(src + (4 * a + 3) * ps);
          p[a] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
          q[a] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
        }
        const __m256 y00 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(p[0], p[1]), p[2]), bias);
        const __m256 y01 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(q[0], q[1]), q[2]), bias);
        const __m256 y10 = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(p[1], p[2]), p[3]), bias);
        const __m256 y11 = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(q[1], q[2]), q[3]), bias);
        const int n = w - 2 * t0;
        for (int r = 0; r < 2 && 2 * ti + r < h; r++) {
          const size_t at = (size_t)k * o->plane + (size_t)(2 * ti + r) * o->row + 2 * (size_t)t0;
          const __m256 a = r ? y10 : y00, b = r ? y11 : y01;
          const __m256 ul = _mm256_unpacklo_ps(a, b), uh = _mm256_unpackhi_ps(a, b);
          const float *res = o->res ? o->res + at : NULL;
          put(o->y + at, res, n, _mm256_permute2f128_ps(ul, uh, 0x20), lo, hi);
          put(o->y + at + 8, res ? res + 8 : NULL, n - 8, _mm256_permute2f128_ps(ul, uh, 0x31), lo, hi);
        }
      }
    }
  }
}

static void grad_output(const float *dy, size_t plane, size_t row, int oc, int h, int w,
                        const vmc_wino_buf *m, int ti0, int ti1) {
  const int tw = (w + 1) / 2;
  const size_t ps = m->pos_stride;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int k = 0; k < oc; k++)
    for (int ti = ti0; ti < ti1; ti++) {
      const float *d0 = dy + (size_t)k * plane + (size_t)(2 * ti) * row;
      float *dst0 = m->base + (size_t)k * m->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += 8) {
        const int n = w - 2 * t0;
        __m256 p, q, r = _mm256_setzero_ps(), s = _mm256_setzero_ps();
        __m256i ms[2];
        spans(0, 0, n, ms);
        columns(d0 + 2 * t0, ms, &p, &q);
        if (2 * ti + 1 < h) columns(d0 + row + 2 * t0, ms, &r, &s);
        const __m256 u[4] = {p, _mm256_add_ps(p, r), _mm256_sub_ps(p, r), _mm256_xor_ps(r, sign)};
        const __m256 v[4] = {q, _mm256_add_ps(q, s), _mm256_sub_ps(q, s), _mm256_xor_ps(s, sign)};
        float *dst = dst0 + t0;
        for (int a = 0; a < 4; a++) {
          _mm256_storeu_ps(dst + (4 * a + 0) * ps, u[a]);
          _mm256_storeu_ps(dst + (4 * a + 1) * ps, _mm256_add_ps(u[a], v[a]));
          _mm256_storeu_ps(dst + (4 * a + 2) * ps, _mm256_sub_ps(u[a], v[a]));
          _mm256_storeu_ps(dst + (4 * a + 3) * ps, _mm256_xor_ps(v[a], sign));
        }
      }
    }
}

const vmc_wino_kernels vmc_wino_kernels__avx2 = {"avx2", wino_input, wino_output, grad_output};
