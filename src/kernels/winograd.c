/* Winograd F(2x2, 3x3): the weight transform, the reference transforms and
 * the dispatch.  The reference is plain loops over the tiles of a row;
 * additions and subtractions only, in the order the SIMD variants follow,
 * so all give the same floats. */
#include "kernels/winograd.h"

#include "core/core.h"

#include <stdlib.h>
#include <string.h>

/* One tile row of one channel: the four padded rows' even and odd columns
 * (e[r][t] = padded column 2t, the pixel 2t - 1; o[r][t] = column 2t + 1,
 * the pixel 2t; t <= tw; zero outside the image), then the tiles.  s[r]:
 * the image row of padded row r, or NULL (padding). */
static void input_row(const float *const s[4], int w, int tw, float *restrict e,
                      float *restrict o, float *restrict dst, size_t ps) {
  const int n = tw + 1;
  for (int r = 0; r < 4; r++) {
    float *restrict er = e + r * n, *restrict orr = o + r * n;
    for (int t = 0; t < n; t++) {
      er[t] = s[r] && t >= 1 && 2 * t <= w ? s[r][2 * t - 1] : 0.0f;
      orr[t] = s[r] && 2 * t < w ? s[r][2 * t] : 0.0f;
    }
  }
  const float *restrict e0 = e, *restrict e1 = e + n, *restrict e2 = e + 2 * n,
                        *restrict e3 = e + 3 * n;
  const float *restrict o0 = o, *restrict o1 = o + n, *restrict o2 = o + 2 * n,
                        *restrict o3 = o + 3 * n;
  for (int t = 0; t < tw; t++) {
    /* d B along each row: columns (d0, d1, d2, d3) = (e[t], o[t], e[t+1], o[t+1]) */
    const float a0 = e0[t] - e0[t + 1], a1 = o0[t] + e0[t + 1], a2 = e0[t + 1] - o0[t],
                a3 = o0[t] - o0[t + 1];
    const float b0 = e1[t] - e1[t + 1], b1 = o1[t] + e1[t + 1], b2 = e1[t + 1] - o1[t],
                b3 = o1[t] - o1[t + 1];
    const float c0 = e2[t] - e2[t + 1], c1 = o2[t] + e2[t + 1], c2 = e2[t + 1] - o2[t],
                c3 = o2[t] - o2[t + 1];
    const float d0 = e3[t] - e3[t + 1], d1 = o3[t] + e3[t + 1], d2 = e3[t + 1] - o3[t],
                d3 = o3[t] - o3[t + 1];
    /* B^T along the columns: rows (a, b, c, d) of the row-transformed tile */
    dst[0 * ps + t] = a0 - c0;
    dst[1 * ps + t] = a1 - c1;
    dst[2 * ps + t] = a2 - c2;
    dst[3 * ps + t] = a3 - c3;
    dst[4 * ps + t] = b0 + c0;
    dst[5 * ps + t] = b1 + c1;
    dst[6 * ps + t] = b2 + c2;
    dst[7 * ps + t] = b3 + c3;
    dst[8 * ps + t] = c0 - b0;
    dst[9 * ps + t] = c1 - b1;
    dst[10 * ps + t] = c2 - b2;
    dst[11 * ps + t] = c3 - b3;
    dst[12 * ps + t] = b0 - d0;
    dst[13 * ps + t] = b1 - d1;
    dst[14 * ps + t] = b2 - d2;
    dst[15 * ps + t] = b3 - d3;
  }
}

static void wino_input(const float *x, int ch, size_t plane, size_t row, int h, int w,
                       const vmc_wino_buf *v, int ti0, int ti1, float *tmp) {
  const int tw = (w + 1) / 2;
  float *e = tmp, *o = tmp + 4 * (size_t)(tw + 1);
  for (int c = 0; c < ch; c++)
    for (int ti = ti0; ti < ti1; ti++) {
      const float *s[4];
      for (int r = 0; r < 4; r++) { /* padded row 2ti + r: image row 2ti + r - 1 */
        const int i = 2 * ti + r - 1;
        s[r] = i >= 0 && i < h ? x + (size_t)c * plane + (size_t)i * row : NULL;
      }
      input_row(s, w, tw, e, o, v->base + (size_t)c * v->ch_stride + (size_t)(ti - ti0) * tw,
                v->pos_stride);
    }
}

/* One output row: the epilogue, the image's w pixels (res may be y). */
static void output_pixels(const float *restrict yt, int w, const float *res, float lo, float hi,
                          float *y) {
  if (res)
    for (int j = 0; j < w; j++) {
      const float v = yt[j] + res[j];
      y[j] = v < lo ? lo : v > hi ? hi : v;
    }
  else
    for (int j = 0; j < w; j++) {
      const float v = yt[j];
      y[j] = v < lo ? lo : v > hi ? hi : v;
    }
}

static void output_row(const float *restrict src, size_t ps, int tw, float bias,
                       float *restrict y0, float *restrict y1) {
  for (int t = 0; t < tw; t++) {
    float m[16];
    for (int k = 0; k < 16; k++) m[k] = src[(size_t)k * ps + t];
    /* M A along each row, then A^T along the columns */
    const float p0 = m[0] + m[1] + m[2], q0 = m[1] - m[2] - m[3];
    const float p1 = m[4] + m[5] + m[6], q1 = m[5] - m[6] - m[7];
    const float p2 = m[8] + m[9] + m[10], q2 = m[9] - m[10] - m[11];
    const float p3 = m[12] + m[13] + m[14], q3 = m[13] - m[14] - m[15];
    y0[2 * t] = p0 + p1 + p2 + bias;
    y0[2 * t + 1] = q0 + q1 + q2 + bias;
    y1[2 * t] = p1 - p2 - p3 + bias;
    y1[2 * t + 1] = q1 - q2 - q3 + bias;
  }
}

static void wino_output(const vmc_wino_buf *m, int ti0, int ti1, int oc, int h, int w,
                        const vmc_wino_out *o, float *tmp) {
  const int tw = (w + 1) / 2;
  float *y0 = tmp, *y1 = tmp + 2 * (size_t)tw + 16;
  for (int k = 0; k < oc; k++) {
    const float bias = o->bias ? o->bias[k] : 0.0f;
    for (int ti = ti0; ti < ti1; ti++) {
      output_row(m->base + (size_t)k * m->ch_stride + (size_t)(ti - ti0) * tw, m->pos_stride, tw,
                 bias, y0, y1);
      for (int r = 0; r < 2 && 2 * ti + r < h; r++) {
        const size_t at = (size_t)k * o->plane + (size_t)(2 * ti + r) * o->row;
        output_pixels(r ? y1 : y0, w, o->res ? o->res + at : NULL, o->lo, o->hi, o->y + at);
      }
    }
  }
}

/* dM = A dY A^T of one tile: dY = [p q; r s]. */
static void grad_output(const float *dy, size_t plane, size_t row, int oc, int h, int w,
                        const vmc_wino_buf *m, int ti0, int ti1) {
  const int tw = (w + 1) / 2;
  const size_t ps = m->pos_stride;
  for (int k = 0; k < oc; k++)
    for (int ti = ti0; ti < ti1; ti++) {
      const float *d0 = dy + (size_t)k * plane + (size_t)(2 * ti) * row, *d1 = d0 + row;
      const int second = 2 * ti + 1 < h;
      float *dst = m->base + (size_t)k * m->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t = 0; t < tw; t++) {
        const int right = 2 * t + 1 < w;
        const float p = d0[2 * t], q = right ? d0[2 * t + 1] : 0.0f;
        const float r = second ? d1[2 * t] : 0.0f, s = second && right ? d1[2 * t + 1] : 0.0f;
        /* A dY: rows (p, q), (p + r, q + s), (p - r, q - s), (-r, -s); then
         * each row (u, v) times A^T: (u, u + v, u - v, -v) */
        const float u[4] = {p, p + r, p - r, -r}, v[4] = {q, q + s, q - s, -s};
        for (int a = 0; a < 4; a++) {
          dst[(size_t)(4 * a + 0) * ps + t] = u[a];
          dst[(size_t)(4 * a + 1) * ps + t] = u[a] + v[a];
          dst[(size_t)(4 * a + 2) * ps + t] = u[a] - v[a];
          dst[(size_t)(4 * a + 3) * ps + t] = -v[a];
        }
      }
    }
}

/* F(4x4, 3x3).  B^T and A^T applied to 6 values, in the order every
 * variant follows (winograd4_simd.h): products rounded, then the sums left
 * to right as bracketed. */
static void bt6(const float d[6], float o[6]) {
  o[0] = (4.0f * d[0] - 5.0f * d[2]) + d[4];
  o[1] = (d[3] + d[4]) - 4.0f * (d[1] + d[2]);
  o[2] = (d[4] - d[3]) + 4.0f * (d[1] - d[2]);
  o[3] = (d[4] - d[2]) - 2.0f * (d[1] - d[3]);
  o[4] = (d[4] - d[2]) + 2.0f * (d[1] - d[3]);
  o[5] = (4.0f * d[1] - 5.0f * d[3]) + d[5];
}

static void at4(const float m[6], float y[4]) {
  const float s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
  y[0] = (m[0] + s12) + s34;
  y[1] = d12 + 2.0f * d34;
  y[2] = s12 + 4.0f * s34;
  y[3] = (d12 + 8.0f * d34) + m[5];
}

/* Where tile tj of a row of tw lies in the planes (winograd.h). */
static int slot4(int tj, int tw) { return tw == 7 || tw == 8 ? tj % 2 * 4 + tj / 2 : tj; }

/* d B along each of the tile's 6 padded rows, then B^T along its columns. */
static void wino_input4(const float *x, int ch, size_t plane, size_t row, int h, int w,
                        const vmc_wino_buf *v, int ti0, int ti1, float *tmp) {
  (void)tmp;
  const int tw = (w + 3) / 4;
  for (int c = 0; c < ch; c++)
    for (int ti = ti0; ti < ti1; ti++)
      for (int tj = 0; tj < tw; tj++) {
        float d[6][6], r[6][6], col[6], o[6];
        for (int i = 0; i < 6; i++) {
          const int y = 4 * ti + i - 1;
          for (int j = 0; j < 6; j++) {
            const int xj = 4 * tj + j - 1;
            d[i][j] = y >= 0 && y < h && xj >= 0 && xj < w
                          ? x[(size_t)c * plane + (size_t)y * row + (size_t)xj]
                          : 0.0f;
          }
          bt6(d[i], r[i]);
        }
        float *dst = v->base + (size_t)c * v->ch_stride + (size_t)(ti - ti0) * tw + slot4(tj, tw);
        for (int k = 0; k < 6; k++) {
          for (int i = 0; i < 6; i++) col[i] = r[i][k];
          bt6(col, o);
          for (int a = 0; a < 6; a++) dst[(size_t)(6 * a + k) * v->pos_stride] = o[a];
        }
      }
}

/* M A along each of the 6 rows, then A^T along the 4 columns, the bias;
 * the tile row's 4 pixel rows through the epilogue. */
static void wino_output4(const vmc_wino_buf *m, int ti0, int ti1, int oc, int h, int w,
                         const vmc_wino_out *o, float *tmp) {
  const int tw = (w + 3) / 4;
  const size_t n = 4 * (size_t)tw; /* floats of a pixel row in tmp */
  for (int k = 0; k < oc; k++) {
    const float bias = o->bias ? o->bias[k] : 0.0f;
    for (int ti = ti0; ti < ti1; ti++) {
      for (int tj = 0; tj < tw; tj++) {
        const float *src =
            m->base + (size_t)k * m->ch_stride + (size_t)(ti - ti0) * tw + slot4(tj, tw);
        float mm[6], t[6][4], col[6], y[4];
        for (int a = 0; a < 6; a++) {
          for (int b = 0; b < 6; b++) mm[b] = src[(size_t)(6 * a + b) * m->pos_stride];
          at4(mm, t[a]);
        }
        for (int j = 0; j < 4; j++) {
          for (int a = 0; a < 6; a++) col[a] = t[a][j];
          at4(col, y);
          for (int i = 0; i < 4; i++) tmp[(size_t)i * n + 4 * (size_t)tj + (size_t)j] = y[i] + bias;
        }
      }
      for (int i = 0; i < 4 && 4 * ti + i < h; i++) {
        const size_t at = (size_t)k * o->plane + (size_t)(4 * ti + i) * o->row;
        output_pixels(tmp + (size_t)i * n, w, o->res ? o->res + at : NULL, o->lo, o->hi, o->y + at);
      }
    }
  }
}

const vmc_wino_kernels vmc_wino_kernels__ref = {"ref",       wino_input,  wino_output,
                                                grad_output, wino_input4, wino_output4};

void vmc_wino_weights(const float *w, int oc, int c, int ab, float *u, int ldu) {
  const int a = ab / 4, b = ab % 4;
  /* row a of G (3 weights), then G^T's column b: the same rows */
  static const float G[4][3] = {{1.0f, 0.0f, 0.0f}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f},
                                {0.0f, 0.0f, 1.0f}};
  for (int o = 0; o < oc; o++)
    for (int ci = 0; ci < c; ci++) {
      const float *g = w + ((size_t)o * c + ci) * 9;
      float s = 0.0f;
      for (int i = 0; i < 3; i++) {
        float r = 0.0f;
        for (int j = 0; j < 3; j++) r += g[i * 3 + j] * G[b][j];
        s += G[a][i] * r;
      }
      u[(size_t)o * ldu + ci] = s;
    }
}

void vmc_wino4_weights(const float *w, int oc, int c, int ab, float *u, int ldu) {
  const int a = ab / 6, b = ab % 6;
  static const double G[6][3] = {{1.0 / 4, 0.0, 0.0},
                                 {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                 {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                 {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                 {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                 {0.0, 0.0, 1.0}};
  for (int o = 0; o < oc; o++)
    for (int ci = 0; ci < c; ci++) {
      const float *g = w + ((size_t)o * c + ci) * 9;
      double s = 0.0;
      for (int i = 0; i < 3; i++) {
        double r = 0.0;
        for (int j = 0; j < 3; j++) r += (double)g[i * 3 + j] * G[b][j];
        s += G[a][i] * r;
      }
      u[(size_t)o * ldu + ci] = (float)s;
    }
}

void vmc_wino_weights_grad(const float *du, size_t pos_stride, int oc, int c, float *dw) {
  /* G^T's rows: what each of the 4 positions gives the 3 taps */
  static const float Gt[3][4] = {{1.0f, 0.5f, 0.5f, 0.0f}, {0.0f, 0.5f, -0.5f, 0.0f},
                                 {0.0f, 0.5f, 0.5f, 1.0f}};
  for (int o = 0; o < oc; o++)
    for (int ci = 0; ci < c; ci++) {
      const float *u = du + (size_t)o * c + ci;
      float *g = dw + ((size_t)o * c + ci) * 9;
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
          float s = 0.0f;
          for (int a = 0; a < 4; a++) {
            float r = 0.0f;
            for (int b = 0; b < 4; b++) r += u[(size_t)(4 * a + b) * pos_stride] * Gt[j][b];
            s += Gt[i][a] * r;
          }
          g[i * 3 + j] += s;
        }
    }
}

const vmc_wino_kernels *vmc_wino_kernels_best(void) {
  static const vmc_wino_kernels *const k[] = {&vmc_wino_kernels__ref, &vmc_wino_kernels__avx2,
                                              &vmc_wino_kernels__avx512};
  return k[vmc_isa_level()];
}

int vmc_wino_enabled(void) {
  const char *e = getenv("VMC_WINOGRAD");
  return !(e && !strcmp(e, "0"));
}
