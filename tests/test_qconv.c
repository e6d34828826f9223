/* The direct int8 convolution on pixel-major activations (qgemm.h,
 * vmc_qconv_quads in qelt.h): the reference against a naive convolution of
 * a padded NHWC image, and every SIMD variant against the reference bit for
 * bit, over channel counts (1, 4, 16, 20, 32, 64), output channels that are
 * not multiples of 16, rows shorter and longer than the register tiles,
 * strides 1 and 2, 1x1 and 3x3 kernels, padding 0 and 1, zero points and a
 * fused ReLU clamp; bytes between output pixels must stay untouched. */
#include "kernels/qelt.h"
#include "test.h"

#include <stdlib.h>

static uint32_t g_seed = 77u;
static int rnd_in(int lo, int hi) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return lo + (int)((g_seed >> 8) % (uint32_t)(hi - lo + 1));
}

/* The weights' range: 127, or 64 for a variant that takes narrow weights
 * (vmc_qconv_pair_max), whose pairs then reach its bound of 128. */
static int g_wlim = 127;

typedef struct case_ {
  int c, h, w, k, s, pad, M;
} case_;

/* The problem: x padded by one pixel (zp) all round, c4 bytes per pixel;
 * y with ys_pix = M + 3 bytes per pixel. */
typedef struct prob {
  vmc_conv_geom g;
  int c4, M, kq, zp;
  size_t xbytes, ybytes, row;
  uint8_t *x;
  int8_t *w, *wq, *wp;
  int32_t *koff, *bias;
  float *scale;
  vmc_qconv_params p;
  vmc_qepi epi;
} prob;

static int prob_init(prob *P, const case_ *c, int e) {
  memset(P, 0, sizeof *P);
  vmc_conv_geom g = {.c = c->c, .h = c->h, .w = c->w, .kh = c->k, .kw = c->k, .sh = c->s,
                     .sw = c->s, .ph = c->pad, .pw = c->pad, .dh = 1, .dw = 1};
  g.oh = vmc_conv_out(g.h, g.kh, g.sh, g.ph, 1);
  g.ow = vmc_conv_out(g.w, g.kw, g.sw, g.pw, 1);
  P->g = g;
  P->c4 = c->c == 1 ? 1 : (c->c + 3) / 4 * 4;
  P->M = c->M;
  P->kq = vmc_qconv_kq(&g, P->c4);
  P->zp = e % 3 == 0 ? 0 : e % 3 == 1 ? 128 : 37;
  P->row = (size_t)(g.w + 2) * P->c4;
  P->xbytes = (size_t)(g.h + 2) * P->row + 4; /* a one-channel quad reads 3 past */
  const size_t K = (size_t)g.c * g.kh * g.kw;
  P->x = malloc(P->xbytes);
  P->w = malloc((size_t)c->M * K);
  P->wq = malloc((size_t)c->M * 4 * P->kq);
  P->wp = aligned_alloc(64, vmc_qconv_w_bytes(c->M, P->kq));
  P->koff = malloc((size_t)P->kq * sizeof *P->koff);
  P->bias = malloc((size_t)c->M * sizeof *P->bias);
  P->scale = malloc((size_t)c->M * sizeof *P->scale);
  if (!P->x || !P->w || !P->wq || !P->wp || !P->koff || !P->bias || !P->scale) return 0;
  memset(P->x, P->zp, P->xbytes);
  for (int y = 0; y < g.h; y++)
    for (int x = 0; x < g.w; x++)
      for (int ch = 0; ch < g.c; ch++)
        P->x[(size_t)(y + 1) * P->row + (size_t)(x + 1) * P->c4 + ch] = (uint8_t)rnd_in(0, 255);
  for (size_t i = 0; i < (size_t)c->M * K; i++) {
    const int v = rnd_in(-g_wlim, g_wlim);
    P->w[i] = (int8_t)(i % 7 == 0 ? (v < 0 ? -g_wlim : g_wlim) : v); /* some at the limit */
  }
  for (int m = 0; m < c->M; m++) {
    P->bias[m] = rnd_in(-30000, 30000);
    P->scale[m] = (float)rnd_in(1, 400) * 1e-5f;
  }
  vmc_qconv_quads(&g, P->c4, P->row, c->M, P->w, P->koff, P->wq);
  vmc_qconv_pack_w(c->M, P->kq, P->wq, P->wp);
  P->p = (vmc_qconv_params){.oh = g.oh, .ow = g.ow, .M = c->M, .kq = P->kq,
                            .xs_row = (size_t)g.sh * P->row, .xs_pix = (size_t)g.sw * P->c4,
                            .ys_pix = (size_t)c->M + 3, .koff = P->koff};
  P->p.ys_row = (size_t)g.ow * P->p.ys_pix;
  P->ybytes = (size_t)g.oh * P->p.ys_row;
  P->epi = (vmc_qepi){.bias = e % 4 == 3 ? NULL : P->bias, .scale = P->scale,
                      .per_tensor = e % 5 == 4, .zero_point = e % 2 ? 0 : 10,
                      .lo = e % 3 == 1 ? 10 : 0, .hi = 250, .out = VMC_QOUT_U8};
  return 1;
}

static void prob_free(prob *P) {
  free(P->x), free(P->w), free(P->wq), free(P->wp), free(P->koff), free(P->bias), free(P->scale);
}

/* The input byte of (channel, padded row, padded column). */
static int xat(const prob *P, int ch, int py, int px) {
  return P->x[(size_t)py * P->row + (size_t)px * P->c4 + ch];
}

static const uint8_t *origin(const prob *P) { /* tap (0, 0) of output (0, 0) */
  return P->x + (size_t)(1 - P->g.ph) * P->row + (size_t)(1 - P->g.pw) * P->c4;
}

TEST(qconv_ref_vs_naive) {
  static const case_ cases[] = {{1, 28, 28, 3, 1, 1, 16}, {4, 9, 7, 3, 2, 1, 5},
                                {16, 6, 30, 3, 1, 1, 16}, {20, 5, 5, 1, 2, 0, 17}};
  for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
    prob P;
    if (!prob_init(&P, &cases[t], (int)t)) {
      prob_free(&P);
      REQUIRE(0);
    }
    const vmc_conv_geom *g = &P.g;
    uint8_t *y = malloc(P.ybytes), *want = malloc(P.ybytes);
    REQUIRE(y && want);
    memset(y, 0xa5, P.ybytes);
    memset(want, 0xa5, P.ybytes);
    vmc_qconv__ref(&P.p, origin(&P), P.wp, &P.epi, NULL, y);
    const vmc_qepi_prep prep = vmc_qepi_prepare(&P.epi);
    const size_t K = (size_t)g->c * g->kh * g->kw;
    for (int oy = 0; oy < g->oh; oy++)
      for (int ox = 0; ox < g->ow; ox++)
        for (int m = 0; m < P.M; m++) {
          int64_t acc = 0;
          for (int ch = 0; ch < g->c; ch++)
            for (int i = 0; i < g->kh; i++)
              for (int j = 0; j < g->kw; j++)
                acc += (int64_t)P.w[(size_t)m * K + ((size_t)ch * g->kh + i) * g->kw + j] *
                       xat(&P, ch, oy * g->sh + i + 1 - g->ph, ox * g->sw + j + 1 - g->pw);
          vmc_qepi_store1(&P.epi, &prep, m, (int32_t)acc,
                          want + (size_t)oy * P.p.ys_row + (size_t)ox * P.p.ys_pix, (size_t)m);
        }
    if (memcmp(y, want, P.ybytes))
      vmc_test_fail(__FILE__, __LINE__, "case %zu: reference != naive convolution", t);
    free(y), free(want);
    prob_free(&P);
  }
}

static void check_variant(vmc_qconv_fn f, const char *name) {
  g_wlim = vmc_qconv_pair_max(f) ? vmc_qconv_pair_max(f) / 2 : 127;
  static const case_ cases[] = {
      {1, 28, 28, 3, 1, 1, 16},  {16, 28, 28, 3, 1, 1, 16}, {16, 28, 28, 3, 2, 1, 32},
      {32, 14, 14, 3, 1, 1, 32}, {32, 14, 14, 3, 2, 1, 64}, {64, 7, 7, 3, 1, 1, 64},
      {16, 28, 28, 1, 2, 0, 32}, {32, 14, 14, 1, 2, 0, 64}, {4, 3, 40, 3, 1, 1, 48},
      {20, 5, 31, 3, 1, 1, 17},  {8, 4, 15, 1, 1, 0, 33},   {1, 6, 29, 3, 2, 1, 8},
      {64, 2, 2, 3, 1, 1, 80},   {12, 1, 1, 1, 1, 0, 3},    {16, 5, 57, 3, 1, 1, 31}};
  for (size_t t = 0; t < sizeof cases / sizeof *cases; t++)
    for (int e = 0; e < 3; e++) {
      prob P;
      if (!prob_init(&P, &cases[t], (int)t + e)) {
        prob_free(&P);
        REQUIRE(0);
      }
      uint8_t *ref = malloc(P.ybytes), *got = malloc(P.ybytes);
      REQUIRE(ref && got);
      memset(ref, 0x5a, P.ybytes);
      memset(got, 0x5a, P.ybytes);
      /* e == 2: an add fused, the residual laid out as y */
      uint8_t *res = malloc(P.ybytes);
      REQUIRE(res);
      for (size_t i = 0; i < P.ybytes; i++) res[i] = (uint8_t)rnd_in(0, 255);
      const vmc_qepi oe = {.zero_point = 7 * e, .lo = e == 2 ? 14 : 0, .hi = 240,
                           .out = VMC_QOUT_U8};
      const vmc_qconv_add add = {.res = res, .sc = 0.031f, .sr = 0.017f, .inv_o = 1.0f / 0.029f,
                                 .zc = P.epi.zero_point, .zr = 9, .o = vmc_qepi_prepare(&oe)};
      const vmc_qconv_add *pa = e == 2 ? &add : NULL;
      vmc_qconv__ref(&P.p, origin(&P), P.wp, &P.epi, pa, ref);
      f(&P.p, origin(&P), P.wp, &P.epi, pa, got);
      if (memcmp(ref, got, P.ybytes)) {
        size_t i = 0;
        while (ref[i] == got[i]) i++;
        vmc_test_fail(__FILE__, __LINE__, "%s case %zu epilogue %d: byte %zu: %d vs ref %d",
                      name, t, e, i, got[i], ref[i]);
      }
      free(ref), free(got), free(res);
      prob_free(&P);
    }
  g_wlim = 127;
}

TEST(qconv_avx512_vs_ref) {
  if (vmc_qconv_best() != vmc_qconv__avx512) SKIP("the CPU lacks AVX-512 VNNI");
  check_variant(vmc_qconv__avx512, "avx512");
}

TEST(qconv_avx2_vs_ref) {
  if (!vmc_cpu_runs(VMC_ISA_AVX2)) SKIP("the CPU lacks AVX2");
  CHECK_EQ_INT(vmc_qconv_pair_max(vmc_qconv__avx2), 128);
  CHECK_EQ_INT(vmc_qconv_pair_max(vmc_qconv__ref), 0);
  check_variant(vmc_qconv__avx2, "avx2");
}

/* The pixel-major depthwise convolution (vmc_qdwp): the reference against a
 * naive loop on a padded NHWC image, the AVX-512 variant against the
 * reference, over channel counts with a ragged last block of 16, 3x3 and 5x5
 * kernels (an odd tap count: a half-empty pair), strides 1 and 2. */
TEST(qdwp_vs_naive_and_simd) {
  static const int cases[][5] = {/* C, h, k, stride, pad */
                                 {16, 9, 3, 1, 1}, {20, 8, 3, 2, 1}, {36, 7, 5, 1, 2},
                                 {4, 5, 3, 2, 1},  {96, 6, 3, 1, 1}, {8, 4, 1, 1, 0},
                                 {144, 5, 3, 2, 1}, {200, 4, 5, 1, 2}, {64, 3, 3, 1, 1},
                                 {128, 4, 7, 1, 3}};
  for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
    const int C = cases[t][0], h = cases[t][1], k = cases[t][2], st = cases[t][3],
              pd = cases[t][4];
    const int oh = vmc_conv_out(h, k, st, pd, 1), taps = k * k, hp = h + 2 * pd;
    const size_t row = (size_t)hp * C, xbytes = (size_t)hp * row;
    uint8_t *x = malloc(xbytes), *want = malloc((size_t)oh * oh * C), *ref = malloc((size_t)oh * oh * C);
    uint8_t *got = malloc((size_t)oh * oh * C);
    int8_t *wk = malloc((size_t)C * taps);
    int8_t *wp = aligned_alloc(64, (vmc_qdwp_w_bytes(C, taps) + 63) / 64 * 64);
    int32_t *bias = malloc((size_t)C * sizeof *bias);
    float *scale = malloc((size_t)C * sizeof *scale);
    REQUIRE(x && want && ref && got && wk && wp && bias && scale);
    for (size_t i = 0; i < xbytes; i++) x[i] = (uint8_t)rnd_in(0, 255);
    for (int i = 0; i < C * taps; i++) wk[i] = (int8_t)rnd_in(-127, 127);
    for (int c = 0; c < C; c++) bias[c] = rnd_in(-5000, 5000), scale[c] = (float)rnd_in(1, 300) * 1e-4f;
    vmc_qdwp_pack_w(C, taps, wk, wp);
    const vmc_qepi epi = {.bias = bias, .scale = scale, .zero_point = 3, .lo = t % 2 ? 0 : 3, .hi = 250,
                          .out = VMC_QOUT_U8};
    const vmc_qdwp_params p = {.oh = oh, .ow = oh, .C = C, .kh = k, .kw = k, .sh = st, .sw = st,
                               .xs_row = row, .xs_pix = (size_t)C, .ys_row = (size_t)oh * C,
                               .ys_pix = (size_t)C};
    const vmc_qepi_prep prep = vmc_qepi_prepare(&epi);
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < oh; ox++)
        for (int c = 0; c < C; c++) {
          int64_t acc = 0;
          for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
              acc += (int64_t)wk[c * taps + i * k + j] *
                     x[(size_t)(oy * st + i) * row + (size_t)(ox * st + j) * C + c];
          vmc_qepi_store1(&epi, &prep, c, (int32_t)acc, want, ((size_t)oy * oh + ox) * C + c);
        }
    vmc_qdwp__ref(&p, x, wp, &epi, ref);
    if (memcmp(ref, want, (size_t)oh * oh * C))
      vmc_test_fail(__FILE__, __LINE__, "case %zu: reference != naive", t);
    if (vmc_qdwp_best() == vmc_qdwp__avx512) {
      vmc_qdwp__avx512(&p, x, wp, &epi, got);
      if (memcmp(ref, got, (size_t)oh * oh * C))
        vmc_test_fail(__FILE__, __LINE__, "case %zu: avx512 != reference", t);
    }
    free(x), free(want), free(ref), free(got), free(wk), free(wp), free(bias), free(scale);
  }
}
