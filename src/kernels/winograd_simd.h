/* winograd.h's transforms, one body for every SIMD width: VL tiles of a tile
 * row per vector.  The including file defines
 *   VL                   lanes per vector
 *   vec, vmask           the vector type, a load mask
 *   VZERO() VSET1(s) VLOAD(p) VSTORE(p, v) VADD(a, b) VSUB(a, b)
 *   VNEG(v)              -v (the sign bit flipped, as C's unary minus)
 *   spans(at, first, n, vmask m[2])
 *                        masks of the 2 VL columns from `at` on: column k
 *                        is read when first <= k - at < n
 *   columns(lo, hi, const vmask m[2], vec *even, vec *odd)
 *                        of the VL floats at lo, then the VL at hi (lo + VL:
 *                        one stretch), masked by m[0] and m[1] (the others
 *                        zero): floats 2t and 2t + 1, t < VL
 *   ZIP_LO(a, b) ZIP_HI(a, b)
 *                        a0 b0 a1 b1 ..., its first and its second vector
 *   put(y, res, n, v, lo, hi)
 *                        (v + res), clamped, into the first n floats of y
 *   FN(name)             the variant's name for `name`
 * and may define NARROW_INPUT, NARROW_OUTPUT and NARROW_GRAD: where a row
 * has at most VL / 2 tiles, that transform's arguments are passed on to it
 * (a narrower variant).
 * Rows of exactly VL / 2 tiles (a 7- or 8-pixel-wide image in 8 lanes) go
 * two tile rows per vector in the input and output transforms: tile row ti
 * in the first VL / 2 lanes, ti + 1 in the others, as the planes hold them.
 * The arithmetic is the reference's (winograd.c), operation for operation,
 * so the floats are its.  Whole vectors are loaded and stored in the
 * transformed planes (winograd.h's slack); lanes past a row's tiles land on
 * the next row's, written later, or on the slack. */
#include "kernels/prefetch.h"
#include "kernels/winograd.h"

/* Zeros, read for a padded row outside the image in a pair of tile rows. */
static const float FN(zero_row)[2 * VL + 4];

/* d B of one padded row for VL tiles: (d0, d1, d2, d3) = (e, o, e', o'),
 * the row's columns from lo and hi on (columns()), m the masks from
 * column 0 and from column 2. */
static inline void FN(row_b)(const float *lo, const float *hi, const vmask m[4], vec out[4]) {
  vec e, o, e1, o1;
  columns(lo, hi, m, &e, &o);
  columns(lo + 2, hi + 2, m + 2, &e1, &o1);
  out[0] = VSUB(e, e1);
  out[1] = VADD(o, e1);
  out[2] = VSUB(e1, o);
  out[3] = VSUB(o, o1);
}

/* V's positions 0 to 11 of VL tiles, from the row-transformed padded rows
 * r0, r1 and r2 (B^T's first three rows). */
static inline void FN(store_v012)(float *dst, size_t ps, const vec r0[4], const vec r1[4],
                                  const vec r2[4]) {
  for (int j = 0; j < 4; j++) {
    VSTORE(dst + (0 + j) * ps, VSUB(r0[j], r2[j]));
    VSTORE(dst + (4 + j) * ps, VADD(r1[j], r2[j]));
    VSTORE(dst + (8 + j) * ps, VSUB(r2[j], r1[j]));
  }
}

/* Positions 12 to 15, from rows r1 and r3 (B^T's last row). */
static inline void FN(store_v3)(float *dst, size_t ps, const vec r1[4], const vec r3[4]) {
  for (int j = 0; j < 4; j++) VSTORE(dst + (12 + j) * ps, VSUB(r1[j], r3[j]));
}

/* V's 16 positions of VL tiles from the row-transformed padded rows r. */
static inline void FN(store_v)(float *dst, size_t ps, vec r[4][4]) {
  FN(store_v012)(dst, ps, r[0], r[1], r[2]);
  FN(store_v3)(dst, ps, r[1], r[3]);
}

/* Tile rows ti and ti + 1 (if < ti1) of channel c, tw = VL / 2. */
static inline void FN(input_pair)(const float *xc, size_t row, int h, const vmask m[4], int ti,
                                  int second, float *dst, size_t ps) {
  vec r[4][4];
  for (int i = 0; i < 4; i++) {
    const int ya = 2 * ti + i - 1, yb = ya + 2; /* image rows of the two padded rows */
    const float *a = ya >= 0 && ya < h ? xc + (size_t)ya * row - 1 : FN(zero_row);
    const float *b = second && yb >= 0 && yb < h ? xc + (size_t)yb * row - 1 : FN(zero_row);
    FN(row_b)(a, b, m, r[i]);
  }
  FN(store_v)(dst, ps, r);
}

/* d B of image row y (zero outside the image) for the VL tiles whose first
 * padded column lies at xc in row 0. */
static inline void FN(padded_row)(const float *xc, size_t row, int h, int y, const vmask m[4],
                                  vec out[4]) {
  if (y >= 0 && y < h) {
    const float *s = xc + (size_t)y * row;
    FN(row_b)(s, s + VL, m, out);
  } else {
    out[0] = out[1] = out[2] = out[3] = VZERO();
  }
}

static void FN(wino_input)(const float *x, int ch, size_t plane, size_t row, int h, int w,
                           const vmc_wino_buf *v, int ti0, int ti1, float *tmp) {
  const int tw = (w + 1) / 2;
#ifdef NARROW_INPUT
  if (tw <= VL / 2) {
    NARROW_INPUT(x, ch, plane, row, h, w, v, ti0, ti1, tmp);
    return;
  }
#endif
  (void)tmp;
  const size_t ps = v->pos_stride;
  if (tw == VL / 2) {
    vmask m[4], pm[4];
    spans(0, 1, w + 1, m);
    spans(2, 1, w + 1, m + 2);
    pm[0] = pm[1] = m[0]; /* each row's first VL columns */
    pm[2] = pm[3] = m[2];
    for (int c = 0; c < ch; c++)
      for (int ti = ti0; ti < ti1; ti += 2)
        FN(input_pair)(x + (size_t)c * plane, row, h, pm, ti, ti + 1 < ti1,
                       v->base + (size_t)c * v->ch_stride + (size_t)(ti - ti0) * tw, ps);
    return;
  }
  /* Down a column of tile blocks: tile row ti + 1 reads the two padded
   * rows tile row ti read last, so each row is loaded and transformed once.
   * The last block first: its lanes past the row land on the next row's
   * first tiles, which the first block writes later. */
  const int y0 = 2 * ti0 - 1 < 0 ? 0 : 2 * ti0 - 1, y1 = 2 * ti1 + 1 < h ? 2 * ti1 + 1 : h;
  for (int c = 0; c < ch; c++) {
    if (c + 1 < ch && y0 < y1) /* the next channel's rows */
      vmc_prefetch_span(x + (size_t)(c + 1) * plane + (size_t)y0 * row, (size_t)(y1 - y0) * row);
    for (int t0 = (tw - 1) / VL * VL; t0 >= 0; t0 -= VL) {
      /* padded columns 2 * t0 + k, read for k in [first, n): the pixels */
      const int first = 1 - 2 * t0, n = w + 1 - 2 * t0;
      vmask m[4];
      spans(0, first, n, m);
      spans(2, first, n, m + 2);
      const float *xc = x + (size_t)c * plane + 2 * t0 - 1;
      float *dst = v->base + (size_t)c * v->ch_stride + t0;
      vec r0[4], r1[4], r2[4], r3[4];
      FN(padded_row)(xc, row, h, 2 * ti0 - 1, m, r0);
      FN(padded_row)(xc, row, h, 2 * ti0, m, r1);
      for (int ti = ti0; ti < ti1; ti++, dst += tw) {
        FN(padded_row)(xc, row, h, 2 * ti + 1, m, r2);
        FN(store_v012)(dst, ps, r0, r1, r2);
        FN(padded_row)(xc, row, h, 2 * ti + 2, m, r3);
        FN(store_v3)(dst, ps, r1, r3);
        for (int j = 0; j < 4; j++) {
          r0[j] = r2[j];
          r1[j] = r3[j];
        }
      }
    }
  }
}

/* A^T M A of VL tiles at src, plus the bias: output rows 0 and 1, even and
 * odd columns (y[0] = row 0 even, y[1] row 0 odd, y[2], y[3] row 1). */
static inline void FN(output_tiles)(const float *src, size_t ps, vec bias, vec y[4]) {
  vec p[4], q[4];
  for (int a = 0; a < 4; a++) {
    const vec m0 = VLOAD(src + (4 * a + 0) * ps), m1 = VLOAD(src + (4 * a + 1) * ps);
    const vec m2 = VLOAD(src + (4 * a + 2) * ps), m3 = VLOAD(src + (4 * a + 3) * ps);
    p[a] = VADD(VADD(m0, m1), m2);
    q[a] = VSUB(VSUB(m1, m2), m3);
  }
  y[0] = VADD(VADD(VADD(p[0], p[1]), p[2]), bias);
  y[1] = VADD(VADD(VADD(q[0], q[1]), q[2]), bias);
  y[2] = VADD(VSUB(VSUB(p[1], p[2]), p[3]), bias);
  y[3] = VADD(VSUB(VSUB(q[1], q[2]), q[3]), bias);
}

static void FN(wino_output)(const vmc_wino_buf *mb, int ti0, int ti1, int oc, int h, int w,
                            const vmc_wino_out *o, float *tmp) {
  const int tw = (w + 1) / 2;
#ifdef NARROW_OUTPUT
  if (tw <= VL / 2) {
    NARROW_OUTPUT(mb, ti0, ti1, oc, h, w, o, tmp);
    return;
  }
#endif
  (void)tmp;
  const size_t ps = mb->pos_stride;
  const vec lo = VSET1(o->lo), hi = VSET1(o->hi);
  if (tw == VL / 2) { /* pixel rows 2ti, 2ti + 1 from the first lanes, 2ti + 2, 2ti + 3 the others */
    for (int k = 0; k < oc; k++) {
      const vec bias = VSET1(o->bias ? o->bias[k] : 0.0f);
      for (int ti = ti0; ti < ti1; ti += 2) {
        vec y[4];
        FN(output_tiles)(mb->base + (size_t)k * mb->ch_stride + (size_t)(ti - ti0) * tw, ps, bias,
                         y);
        for (int r = 0; r < 4 && 2 * ti + r < h && (r < 2 || ti + 1 < ti1); r++) {
          const size_t at = (size_t)k * o->plane + (size_t)(2 * ti + r) * o->row;
          const vec a = y[r & 1 ? 2 : 0], b = y[r & 1 ? 3 : 1];
          put(o->y + at, o->res ? o->res + at : NULL, w, r < 2 ? ZIP_LO(a, b) : ZIP_HI(a, b), lo,
              hi);
        }
      }
    }
    return;
  }
  const int y0 = 2 * ti0, y1 = 2 * ti1 < h ? 2 * ti1 : h;
  for (int k = 0; k < oc; k++) {
    const vec bias = VSET1(o->bias ? o->bias[k] : 0.0f);
    if (k + 1 < oc && y0 < y1) /* the next channel's rows, about to be written */
      vmc_prefetch_span(o->y + (size_t)(k + 1) * o->plane + (size_t)y0 * o->row,
                        (size_t)(y1 - y0) * o->row);
    for (int ti = ti0; ti < ti1; ti++) {
      const float *src0 = mb->base + (size_t)k * mb->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += VL) {
        vec y[4];
        FN(output_tiles)(src0 + t0, ps, bias, y);
        const int n = w - 2 * t0; /* output columns 2 * t0 + j, j < n */
        for (int r = 0; r < 2 && 2 * ti + r < h; r++) {
          const size_t at = (size_t)k * o->plane + (size_t)(2 * ti + r) * o->row + 2 * (size_t)t0;
          const float *res = o->res ? o->res + at : NULL;
          const vec a = y[r ? 2 : 0], b = y[r ? 3 : 1];
          put(o->y + at, res, n, ZIP_LO(a, b), lo, hi);
          if (n > VL) put(o->y + at + VL, res ? res + VL : NULL, n - VL, ZIP_HI(a, b), lo, hi);
        }
      }
    }
  }
}

/* The even and odd columns of the tile row's two dY rows are the tiles'
 * (p, q) and (r, s); columns past w load as zero. */
static void FN(grad_output)(const float *dy, size_t plane, size_t row, int oc, int h, int w,
                            const vmc_wino_buf *m, int ti0, int ti1) {
  const int tw = (w + 1) / 2;
#ifdef NARROW_GRAD
  if (tw <= VL / 2) {
    NARROW_GRAD(dy, plane, row, oc, h, w, m, ti0, ti1);
    return;
  }
#endif
  const size_t ps = m->pos_stride;
  const int y0 = 2 * ti0, y1 = 2 * ti1 < h ? 2 * ti1 : h;
  for (int k = 0; k < oc; k++) {
    if (k + 1 < oc && y0 < y1) /* the next channel's rows */
      vmc_prefetch_span(dy + (size_t)(k + 1) * plane + (size_t)y0 * row, (size_t)(y1 - y0) * row);
    for (int ti = ti0; ti < ti1; ti++) {
      const float *d0 = dy + (size_t)k * plane + (size_t)(2 * ti) * row;
      float *dst0 = m->base + (size_t)k * m->ch_stride + (size_t)(ti - ti0) * tw;
      for (int t0 = 0; t0 < tw; t0 += VL) {
        const int n = w - 2 * t0;
        vec p, q, r = VZERO(), s = VZERO();
        vmask ms[2];
        spans(0, 0, n, ms);
        columns(d0 + 2 * t0, d0 + 2 * t0 + VL, ms, &p, &q);
        if (2 * ti + 1 < h) columns(d0 + row + 2 * t0, d0 + row + 2 * t0 + VL, ms, &r, &s);
        const vec u[4] = {p, VADD(p, r), VSUB(p, r), VNEG(r)};
        const vec v[4] = {q, VADD(q, s), VSUB(q, s), VNEG(s)};
        float *dst = dst0 + t0;
        for (int a = 0; a < 4; a++) {
          VSTORE(dst + (4 * a + 0) * ps, u[a]);
          VSTORE(dst + (4 * a + 1) * ps, VADD(u[a], v[a]));
          VSTORE(dst + (4 * a + 2) * ps, VSUB(u[a], v[a]));
          VSTORE(dst + (4 * a + 3) * ps, VNEG(v[a]));
        }
      }
    }
  }
}
