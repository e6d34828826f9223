/* int8 element-wise and pooling kernels (qelt.h).  Plain C loops that the
 * compiler vectorises for the base ISA: one code path on every CPU. */
#include "kernels/qelt.h"

#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#ifdef __SSE2__
/* The even bytes of 32 bytes at p. */
static inline __m128i even_bytes(const uint8_t *p) {
  const __m128i even = _mm_set1_epi16(0x00ff);
  const __m128i a = _mm_loadu_si128((const __m128i *)p), b = _mm_loadu_si128((const __m128i *)(p + 16));
  return _mm_packus_epi16(_mm_and_si128(a, even), _mm_and_si128(b, even));
}
#endif

/* memcpy for the short rows of activation planes (7..32 bytes here), where
 * a library call costs more than the copy: two overlapping fixed-size moves,
 * which the compiler inlines. */
static inline void copy_row(uint8_t *d, const uint8_t *s, size_t n) {
  if (n > 32) memcpy(d, s, n);
  else if (n >= 16) memcpy(d, s, 16), memcpy(d + n - 16, s + n - 16, 16);
  else if (n >= 8) memcpy(d, s, 8), memcpy(d + n - 8, s + n - 8, 8);
  else if (n >= 4) memcpy(d, s, 4), memcpy(d + n - 4, s + n - 4, 4);
  else
    for (size_t i = 0; i < n; i++) d[i] = s[i];
}

/* dst[k] = src[k * stride] for k < n: a copy, for stride 2 the even bytes of
 * 32-byte blocks (SSE2, part of x86-64; may read VMC_QELT_OVERREAD bytes
 * past src[(n-1) * stride], writes nothing past dst[n-1]), else a loop. */
static void gather_u8(uint8_t *dst, const uint8_t *src, int n, int stride) {
  if (stride == 1) {
    copy_row(dst, src, (size_t)n);
    return;
  }
  int k = 0;
#ifdef __SSE2__
  if (stride == 2) {
    for (; k + 16 <= n; k += 16) _mm_storeu_si128((__m128i *)(dst + k), even_bytes(src + 2 * k));
    if (k < n) {
      uint8_t last[16];
      _mm_storeu_si128((__m128i *)last, even_bytes(src + 2 * k));
      for (int i = 0; k + i < n; i++) dst[k + i] = last[i];
    }
    return;
  }
#endif
  for (; k < n; k++) dst[k] = src[(size_t)k * stride];
}

/* The element-wise loops (qelt_loops.h), for the base ISA here and with
 * AVX2 in qelt_avx2.c: bit-identical, the wider one picked when the ISA
 * path allows it. */
#define QELT_SFX base
#include "kernels/qelt_loops.h"


/* The widest build vmc_isa_name() allows. */
static const vmc_qelt_loops *loops(void) {
  static const vmc_qelt_loops *const l[] = {&vmc_qelt_loops_base, &vmc_qelt_loops_avx2,
                                            &vmc_qelt_loops_avx512};
  return l[vmc_isa_level()];
}

void vmc_qfake_f32(const float *x, size_t n, float inv, float s, float lo, float hi, float *y) {
  loops()->fake(x, n, inv, s, lo, hi, y);
}

void vmc_qfake_grad_f32(const float *x, const float *dy, size_t n, float inv, float lo, float hi,
                        int set, float *dx) {
  loops()->fake_grad(x, dy, n, inv, lo, hi, set, dx);
}

void vmc_qquantize_f32(const float *x, size_t n, float inv, const vmc_qact *o, uint8_t *y) {
  const float lo = (float)(o->lo - o->zp), hi = (float)(o->hi - o->zp);
  loops()->quantize(x, n, inv, lo, hi, o->zp, y);
}

void vmc_qdequantize_u8(const uint8_t *x, size_t n, const vmc_qact *a, float *y) {
  const int32_t zp = a->zp;
  const float s = a->scale;
  for (size_t i = 0; i < n; i++) y[i] = (float)((int32_t)x[i] - zp) * s;
}

void vmc_qadd_u8(const uint8_t *a, const vmc_qact *qa, const uint8_t *b, const vmc_qact *qb,
                 size_t n, float inv_o, const vmc_qact *o, uint8_t *y) {
  const float lo = (float)(o->lo - o->zp), hi = (float)(o->hi - o->zp);
  if (!b)
    loops()->requant(a, n, qa->scale, qa->zp, inv_o, lo, hi, o->zp, y);
  else
    loops()->add2(a, b, n, qa->scale, qa->zp, qb->scale, qb->zp, inv_o, lo, hi, o->zp, y);
}

void vmc_qmaxpool_u8(const uint8_t *x, const vmc_conv_geom *g, int planes, uint8_t *y) {
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow;
  for (int p = 0; p < planes; p++) {
    const uint8_t *xp = x + (size_t)p * in;
    uint8_t *yp = y + (size_t)p * out;
    for (int oy = 0; oy < g->oh; oy++)
      for (int ox = 0; ox < g->ow; ox++) {
        int best = 0;
        for (int i = 0; i < g->kh; i++) {
          const int iy = oy * g->sh - g->ph + i;
          if (iy < 0 || iy >= g->h) continue;
          for (int j = 0; j < g->kw; j++) {
            const int ix = ox * g->sw - g->pw + j;
            if (ix >= 0 && ix < g->w && xp[iy * g->w + ix] > best) best = xp[iy * g->w + ix];
          }
        }
        yp[oy * g->ow + ox] = (uint8_t)best;
      }
  }
}

void vmc_qavgpool_u8(const uint8_t *x, const vmc_conv_geom *g, int planes, int32_t x_zp,
                     float scale, const vmc_qepi_prep *prep, uint8_t *y) {
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow;
  const int32_t win = g->kh * g->kw;
  if (g->kh == g->h && g->kw == g->w && !g->ph && !g->pw) { /* global: one sum per plane */
    for (int p = 0; p < planes; p++) {
      const uint8_t *xp = x + (size_t)p * in;
      int32_t t = 0;
      for (size_t i = 0; i < in; i++) t += xp[i];
      y[p] = (uint8_t)vmc_qepi_requant(t - win * x_zp, scale, prep);
    }
    return;
  }
  for (int p = 0; p < planes; p++) {
    const uint8_t *xp = x + (size_t)p * in;
    uint8_t *yp = y + (size_t)p * out;
    for (int oy = 0; oy < g->oh; oy++)
      for (int ox = 0; ox < g->ow; ox++) {
        int32_t t = 0; /* sum of codes; padding adds zp (value 0) */
        for (int i = 0; i < g->kh; i++) {
          const int iy = oy * g->sh - g->ph + i;
          if (iy < 0 || iy >= g->h) {
            t += g->kw * x_zp;
            continue;
          }
          for (int j = 0; j < g->kw; j++) {
            const int ix = ox * g->sw - g->pw + j;
            t += ix >= 0 && ix < g->w ? xp[iy * g->w + ix] : x_zp;
          }
        }
        yp[oy * g->ow + ox] = (uint8_t)vmc_qepi_requant(t - win * x_zp, scale, prep);
      }
  }
}

void vmc_qim2col_u8(const uint8_t *x, const vmc_conv_geom *g, uint8_t pad, uint8_t *col) {
  const int oh = g->oh, ow = g->ow;
  for (int c = 0; c < g->c; c++)
    for (int i = 0; i < g->kh; i++)
      for (int j = 0; j < g->kw; j++) {
        const uint8_t *xc = x + (size_t)c * g->h * g->w;
        uint8_t *row = col + ((size_t)(c * g->kh + i) * g->kw + j) * (size_t)oh * ow;
        /* Output columns whose input column is inside: ox in [x0, x1). */
        const int off = j * g->dw - g->pw;
        int x0 = off < 0 ? (-off + g->sw - 1) / g->sw : 0;
        int x1 = g->w - off <= 0 ? 0 : (g->w - off + g->sw - 1) / g->sw;
        if (x1 > ow) x1 = ow;
        if (x0 > x1) x0 = x1;
        for (int oy = 0; oy < oh; oy++) {
          uint8_t *r = row + (size_t)oy * ow;
          const int iy = oy * g->sh - g->ph + i * g->dh;
          if (iy < 0 || iy >= g->h) {
            memset(r, pad, (size_t)ow);
            continue;
          }
          memset(r, pad, (size_t)x0);
          const uint8_t *xr = xc + (size_t)iy * g->w; /* input column off + ox * sw */
          if (x1 > x0) gather_u8(r + x0, xr + (off + x0 * g->sw), x1 - x0, g->sw);
          memset(r + x1, pad, (size_t)(ow - x1));
        }
      }
}

/* Nonzero if some tap reads phase r of a dimension (kernel k, dilation d,
 * stride st). */
static int phase_read(int r, int k, int d, int st) {
  for (int i = 0; i < k; i++)
    if ((i * d) % st == r) return 1;
  return 0;
}

void vmc_qphase_u8(const uint8_t *x, const vmc_conv_geom *g, uint8_t pad, uint8_t *xp) {
  const int phh = vmc_qphase_h(g), phw = vmc_qphase_w(g), sh = g->sh, sw = g->sw;
  const size_t plane = (size_t)phh * phw;
  /* Padding everywhere first (one pass), then the inside of each row. */
  memset(xp, pad, vmc_qphase_bytes(g));
  for (int t = 0; t < sw; t++) {
    if (!phase_read(t, g->kw, g->dw, sw)) continue;
    /* Phase columns v whose padded column sw*v + t is inside: [v0, v1). */
    const int off = t - g->pw;
    int v0 = off < 0 ? (-off + sw - 1) / sw : 0, v1 = (g->w - off + sw - 1) / sw;
    if (v1 > phw) v1 = phw;
    if (v0 >= v1) continue;
    for (int r = 0; r < sh; r++) {
      if (!phase_read(r, g->kh, g->dh, sh)) continue;
      /* Phase rows u whose padded row sh*u + r is inside: [u0, u1). */
      const int offy = r - g->ph;
      const int u0 = offy < 0 ? (-offy + sh - 1) / sh : 0;
      int u1 = (g->h - offy + sh - 1) / sh;
      if (u1 > phh) u1 = phh;
      for (int c = 0; c < g->c; c++) {
        uint8_t *p = xp + ((size_t)(c * sh + r) * sw + t) * plane;
        const uint8_t *xc = x + (size_t)c * g->h * g->w + (off + v0 * sw);
        for (int u = u0; u < u1; u++)
          gather_u8(p + (size_t)u * phw + v0, xc + (size_t)(u * sh + offy) * g->w, v1 - v0, sw);
      }
    }
  }
}

void vmc_qwide_offsets(const vmc_conv_geom *g, int32_t *off) {
  const int phw = vmc_qphase_w(g), sh = g->sh, sw = g->sw;
  const size_t plane = (size_t)vmc_qphase_h(g) * phw;
  for (int c = 0; c < g->c; c++)
    for (int i = 0; i < g->kh; i++)
      for (int j = 0; j < g->kw; j++) {
        const int a = i * g->dh, b = j * g->dw;
        *off++ = (int32_t)(((size_t)(c * sh + a % sh) * sw + b % sw) * plane +
                           (size_t)(a / sh) * phw + (size_t)(b / sw));
      }
}

void vmc_qcrop_u8(const uint8_t *yw, int rows, int oh, int wp, int ow, uint8_t *y) {
  for (int r = 0; r < rows * oh; r++) copy_row(y + (size_t)r * ow, yw + (size_t)r * wp, (size_t)ow);
}

void vmc_qconv_quads(const vmc_conv_geom *g, int c4, size_t row_bytes, int M, const int8_t *w,
                     int32_t *koff, int8_t *wq) {
  const int kq = vmc_qconv_kq(g, c4), K = g->c * g->kh * g->kw;
  int q = 0;
  for (int i = 0; i < g->kh; i++) {
    if (c4 == 1) {
      for (int j = 0; j < g->kw; j += 4, q++) {
        koff[q] = (int32_t)((size_t)i * row_bytes + (size_t)j);
        for (int m = 0; m < M; m++)
          for (int t = 0; t < 4; t++)
            wq[(size_t)m * 4 * kq + 4 * (size_t)q + t] =
                j + t < g->kw ? w[(size_t)m * K + (size_t)i * g->kw + j + t] : 0;
      }
      continue;
    }
    for (int j = 0; j < g->kw; j++)
      for (int c = 0; c < c4; c += 4, q++) {
        koff[q] = (int32_t)((size_t)i * row_bytes + (size_t)j * c4 + (size_t)c);
        for (int m = 0; m < M; m++)
          for (int t = 0; t < 4; t++)
            wq[(size_t)m * 4 * kq + 4 * (size_t)q + t] =
                c + t < g->c ? w[(size_t)m * K + ((size_t)(c + t) * g->kh + i) * g->kw + j] : 0;
      }
  }
}

/* ---- pixel-major tensors ---------------------------------------------------------- */

void vmc_qquantize_nhwc(const float *x, const vmc_qnhwc *t, float inv, const vmc_qact *o,
                        uint8_t *y) {
  memset(y, o->zp, vmc_qnhwc_bytes(t));
  uint8_t tmp[256];
  const size_t row = vmc_qnhwc_row(t);
  uint8_t *y0 = y + vmc_qnhwc_origin(t);
  for (int c = 0; c < t->c; c++)
    for (int r = 0; r < t->h; r++) {
      const float *xr = x + ((size_t)c * t->h + r) * t->w;
      uint8_t *yr = y0 + (size_t)r * row + c;
      if (t->c4 == 1) {
        vmc_qquantize_f32(xr, (size_t)t->w, inv, o, yr);
        continue;
      }
      for (int x0 = 0; x0 < t->w; x0 += (int)sizeof tmp) {
        const int n = t->w - x0 < (int)sizeof tmp ? t->w - x0 : (int)sizeof tmp;
        vmc_qquantize_f32(xr + x0, (size_t)n, inv, o, tmp);
        for (int i = 0; i < n; i++) yr[(size_t)(x0 + i) * t->c4] = tmp[i];
      }
    }
}

void vmc_qnhwc_border(const vmc_qnhwc *t, uint8_t zp, uint8_t *y) {
  if (!t->pad) return;
  const size_t row = vmc_qnhwc_row(t), side = (size_t)t->pad * t->c4;
  memset(y, zp, (size_t)t->pad * row);
  memset(y + (size_t)(t->pad + t->h) * row, zp, (size_t)t->pad * row);
  for (int r = 0; r < t->h; r++) {
    uint8_t *yr = y + (size_t)(t->pad + r) * row;
    memset(yr, zp, side);
    memset(yr + row - side, zp, side);
  }
}

void vmc_qgap_nhwc(const uint8_t *x, const vmc_qnhwc *t, int32_t x_zp, float scale,
                   const vmc_qepi_prep *prep, uint8_t *y) {
  int32_t sum[1024];
  const size_t row = vmc_qnhwc_row(t);
  const int32_t win = t->h * t->w;
  for (int c0 = 0; c0 < t->c; c0 += 1024) {
    const int n = t->c - c0 < 1024 ? t->c - c0 : 1024;
    memset(sum, 0, (size_t)n * sizeof *sum);
    for (int r = 0; r < t->h; r++)
      for (int px = 0; px < t->w; px++) {
        const uint8_t *p = x + (size_t)r * row + (size_t)px * t->c4 + c0;
        for (int c = 0; c < n; c++) sum[c] += p[c];
      }
    for (int c = 0; c < n; c++)
      y[c0 + c] = (uint8_t)vmc_qepi_requant(sum[c] - win * x_zp, scale, prep);
  }
}
