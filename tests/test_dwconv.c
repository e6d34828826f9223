/* Depthwise "wide" convolution: every SIMD variant the CPU runs against the
 * reference (fp32, within 1e-5 of the values' scale: FMA vs mul+add). */
#include "test.h"

#include <stdlib.h>

#include "kernels/conv.h"

typedef struct {
  void (*fwd)(const float *, int, const float *, float, const vmc_conv_geom *, float *);
  void (*bwd)(const float *, int, const float *, const float *, const vmc_conv_geom *, float *,
              float *);
  const char *name;
  int runs;
} variant;

static float *randv(size_t n, vmc_rng *r) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; v && i < n; i++) v[i] = vmc_rng_uniform(r) - 0.5f;
  return v;
}

static float rel(const float *a, const float *b, size_t n) {
  float s = 1e-3f, d = 0;
  for (size_t i = 0; i < n; i++) s = fmaxf(s, fabsf(a[i]));
  for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
  return d / s;
}

/* One channel's geometry from a case row: kh, kw, stride, pad, dilation, h, w. */
static vmc_conv_geom geom_of(const int *k) {
  vmc_conv_geom g = {.c = 1, .h = k[5], .w = k[6], .kh = k[0], .kw = k[1], .sh = k[2],
                     .sw = k[2], .ph = k[3], .pw = k[3], .dh = k[4], .dw = k[4]};
  g.oh = vmc_conv_out(g.h, g.kh, g.sh, g.ph, g.dh);
  g.ow = vmc_conv_out(g.w, g.kw, g.sw, g.pw, g.dw);
  return g;
}

TEST(dwconv_wide_variants_match_reference) {
  const char *isa = vmc_isa_name();
  variant vs[] = {
      {vmc_dwconv_wide_forward__avx2, vmc_dwconv_wide_backward__avx2, "avx2", strcmp(isa, "ref") != 0},
      {vmc_dwconv_wide_forward__avx512, vmc_dwconv_wide_backward__avx512, "avx512",
       !strcmp(isa, "avx512")},
  };
  /* kh, kw, dilation, padding, h, w: 3x3 and 5x5, planes narrower than a
   * vector, odd sizes, dilation 2, and a kernel past the SIMD tap limit. */
  const int cases[][6] = {{3, 3, 1, 1, 28, 28}, {3, 3, 1, 1, 7, 7}, {5, 5, 1, 2, 14, 14},
                          {3, 3, 2, 2, 9, 13},  {1, 1, 1, 0, 3, 5}, {3, 5, 1, 1, 2, 3},
                          {9, 9, 1, 4, 11, 11}, {5, 3, 1, 0, 17, 5}};
  vmc_rng r;
  vmc_rng_seed(&r, 5);
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    vmc_conv_geom g = {.c = 1, .h = cases[c][4], .w = cases[c][5], .kh = cases[c][0],
                       .kw = cases[c][1], .sh = 1, .sw = 1, .ph = cases[c][3], .pw = cases[c][3],
                       .dh = cases[c][2], .dw = cases[c][2]};
    g.oh = vmc_conv_out(g.h, g.kh, 1, g.ph, g.dh);
    g.ow = vmc_conv_out(g.w, g.kw, 1, g.pw, g.dw);
    REQUIRE(g.oh > 0 && g.ow > 0);
    const int hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw, n = g.oh * wp, taps = g.kh * g.kw;
    const size_t plane = (size_t)hp * wp + (size_t)(g.kw - 1) * g.dw + 16;
    float *xp = randv(plane, &r), *w = randv((size_t)taps, &r), *dy = randv((size_t)n, &r);
    float *y0 = calloc((size_t)n, 4), *y1 = calloc((size_t)n, 4);
    float *dx0 = randv(plane, &r), *dx1 = malloc(plane * 4), *dw0 = randv((size_t)taps, &r),
          *dw1 = malloc((size_t)taps * 4);
    REQUIRE(xp && w && dy && y0 && y1 && dx0 && dx1 && dw0 && dw1);
    for (int k = 0; k < n; k++)
      if (k % wp >= g.ow) dy[k] = 0; /* the garbage columns of a wide dY */
    const float *dx_init = dx0, *dw_init = dw0;
    float *dxs = malloc(plane * 4), *dws = malloc((size_t)taps * 4);
    REQUIRE(dxs && dws);
    memcpy(dxs, dx_init, plane * 4);
    memcpy(dws, dw_init, (size_t)taps * 4);
    vmc_dwconv_wide_forward__ref(xp, wp, w, 0.25f, &g, y0);
    vmc_dwconv_wide_backward__ref(xp, wp, w, dy, &g, dx0, dw0);
    for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++) {
      if (!vs[v].runs) continue;
      memcpy(dx1, dxs, plane * 4);
      memcpy(dw1, dws, (size_t)taps * 4);
      vs[v].fwd(xp, wp, w, 0.25f, &g, y1);
      vs[v].bwd(xp, wp, w, dy, &g, dx1, dw1);
      float e1 = rel(y0, y1, (size_t)n), e2 = rel(dx0, dx1, plane), e3 = rel(dw0, dw1, (size_t)taps);
      if (e1 > 1e-5f || e2 > 1e-5f || e3 > 1e-5f)
        vmc_test_fail(__FILE__, __LINE__, "%s case %zu: y %g dx %g dw %g", vs[v].name, c, e1, e2, e3);
      /* Without dx only dw is accumulated. */
      memcpy(dw1, dws, (size_t)taps * 4);
      vs[v].bwd(xp, wp, w, dy, &g, NULL, dw1);
      CHECK(rel(dw0, dw1, (size_t)taps) <= 1e-5f);
    }
    free(xp), free(w), free(dy), free(y0), free(y1), free(dx0), free(dx1), free(dw0), free(dw1);
    free(dxs), free(dws);
  }
}

/* The strided forward (unpadded input, compact output). */
TEST(dwconv_strided_forward_matches_reference) {
  if (strcmp(vmc_isa_name(), "avx512")) SKIP("needs AVX-512");
  /* kh, kw, stride, pad, dilation, h, w */
  const int cases[][7] = {{3, 3, 2, 1, 1, 28, 28}, {3, 3, 2, 1, 1, 14, 14}, {5, 5, 2, 2, 1, 15, 15},
                          {3, 3, 2, 0, 1, 7, 9},   {3, 3, 2, 1, 2, 40, 70}, {1, 1, 2, 0, 1, 5, 33},
                          {3, 3, 1, 1, 1, 9, 9},   {3, 3, 3, 1, 1, 11, 11}, {3, 5, 2, 2, 1, 3, 2}};
  vmc_rng r;
  vmc_rng_seed(&r, 9);
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const int *k = cases[c];
    const vmc_conv_geom g = geom_of(k);
    REQUIRE(g.oh > 0 && g.ow > 0);
    const size_t n = (size_t)g.oh * g.ow;
    float *x = randv((size_t)g.h * g.w, &r), *w = randv((size_t)g.kh * g.kw, &r);
    float *y0 = malloc(n * 4), *y1 = malloc(n * 4);
    REQUIRE(x && w && y0 && y1);
    vmc_dwconv_forward__ref(x, w, -0.5f, &g, y0);
    vmc_dwconv_forward__avx512(x, w, -0.5f, &g, y1);
    const float e = rel(y0, y1, n);
    if (e > 1e-5f) vmc_test_fail(__FILE__, __LINE__, "case %zu: %g", c, e);
    free(x), free(w), free(y0), free(y1);
  }
}

/* All channels in one call: the floats of the same ISA's per-channel
 * kernels followed by the clamp (exactly, except AVX2 at stride 2, whose
 * per-channel kernel is the reference without FMA), and the reference's to
 * rounding; or 0 with y untouched where it declines. */
enum { V_REF, V_AVX2, V_AVX512 };

static void dw_one_channel(int v, const float *x, const float *w, float bias,
                           const vmc_conv_geom *g, float *y) {
  if (v == V_REF || (v == V_AVX2 && g->sw != 1)) {
    vmc_dwconv_forward__ref(x, w, bias, g, y);
    return;
  }
  if (g->sw != 1) {
    vmc_dwconv_forward__avx512(x, w, bias, g, y);
    return;
  }
  const int hp = g->h + 2 * g->ph, wp = g->w + 2 * g->pw;
  float *xp = calloc((size_t)hp * wp + (size_t)(g->kw - 1) * g->dw + 16, sizeof *xp);
  float *yw = malloc((size_t)g->oh * wp * sizeof *yw);
  if (!xp || !yw) {
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    free(xp), free(yw);
    return;
  }
  for (int i = 0; i < g->h; i++)
    memcpy(xp + (size_t)(i + g->ph) * wp + g->pw, x + (size_t)i * g->w, (size_t)g->w * 4);
  (v == V_AVX2 ? vmc_dwconv_wide_forward__avx2 : vmc_dwconv_wide_forward__avx512)(xp, wp, w, bias,
                                                                                  g, yw);
  for (int i = 0; i < g->oh; i++) memcpy(y + (size_t)i * g->ow, yw + (size_t)i * wp, (size_t)g->ow * 4);
  free(xp), free(yw);
}

/* vmc_dwconv_planes cases: kh, kw, stride, pad, dilation, h, w, taken by
 * avx512, by avx2: "same" stride-1 planes (one pixel, narrower than a
 * vector, odd, dilated, 1x1), stride 2, and the geometries left to the
 * per-channel kernels. */
static const int k_planes[][9] = {
    {3, 3, 1, 1, 1, 28, 28, 1, 1}, {3, 3, 1, 1, 1, 14, 14, 1, 1}, {3, 3, 1, 1, 1, 7, 7, 1, 1},
    {5, 5, 1, 2, 1, 9, 13, 1, 1},  {3, 3, 1, 2, 2, 10, 6, 1, 1},  {1, 1, 1, 0, 1, 5, 33, 1, 1},
    {3, 3, 1, 1, 1, 1, 1, 1, 1},   {3, 3, 2, 1, 1, 28, 28, 1, 1}, {3, 3, 2, 1, 1, 14, 14, 1, 1},
    {5, 5, 2, 2, 1, 15, 15, 1, 1}, {3, 3, 2, 0, 1, 7, 9, 1, 1},   {3, 3, 2, 1, 2, 40, 70, 1, 1},
    {1, 1, 2, 0, 1, 5, 33, 1, 1},  {3, 5, 2, 2, 1, 3, 2, 1, 1},   {3, 5, 2, 4, 2, 12, 40, 1, 1},
    {3, 3, 1, 1, 1, 112, 112, 0, 0}, /* more blocks x taps than the mask table */
    {3, 3, 1, 0, 1, 9, 9, 0, 0},     /* output smaller than the input */
    {9, 9, 2, 4, 1, 20, 20, 0, 0},   /* kw > 8 at stride 2 */
    {3, 7, 2, 3, 3, 12, 40, 0, 0},   /* a stride-2 row window past 48 floats */
    {3, 5, 2, 2, 3, 12, 40, 1, 0},   /* 43: past AVX2's 24 */
    {3, 3, 2, 5, 5, 20, 40, 1, 0},   /* 41 */
    {3, 3, 2, 1, 1, 600, 600, 0, 0}, /* ow > 256 */
    {3, 3, 3, 1, 1, 11, 11, 0, 0}};

typedef int (*planes_fn)(const float *, int, const float *, const vmc_dwconv_epi *,
                         const vmc_conv_geom *, float *);

TEST(dwconv_planes_match_per_channel) {
  const char *isa = vmc_isa_name();
  const struct {
    planes_fn fn;
    const char *name;
    int runs, col, v;
  } vs[] = {{vmc_dwconv_planes__ref, "ref", 1, -1, V_REF},
            {vmc_dwconv_planes__avx2, "avx2", strcmp(isa, "ref") != 0, 8, V_AVX2},
            {vmc_dwconv_planes__avx512, "avx512", !strcmp(isa, "avx512"), 7, V_AVX512}};
  vmc_rng r;
  vmc_rng_seed(&r, 21);
  for (size_t c = 0; c < sizeof k_planes / sizeof k_planes[0]; c++) {
    const int *k = k_planes[c];
    const vmc_conv_geom g = geom_of(k);
    REQUIRE(g.oh > 0 && g.ow > 0);
    const int ch = k[7] || k[8] ? 6 : 1, taps = g.kh * g.kw; /* 6: four at a time, then two */
    const size_t in = (size_t)g.h * g.w, out = (size_t)g.oh * g.ow;
    float *x = randv(in * ch, &r), *w = randv((size_t)taps * ch, &r), *b = randv((size_t)ch, &r);
    float *y0 = malloc(out * ch * 4), *y1 = malloc(out * ch * 4), *yr = malloc(out * ch * 4);
    REQUIRE(x && w && b && y0 && y1 && yr);
    for (int form = 0; form < 2; form++) { /* bias; no bias, clamp */
      const vmc_dwconv_epi epi = {form ? NULL : b, form, 0.0f, 0.25f};
      REQUIRE(vmc_dwconv_planes__ref(x, ch, w, &epi, &g, yr) == 1);
      for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++) {
        if (!vs[v].runs) continue;
        const int want = vs[v].col < 0 ? 1 : k[vs[v].col];
        for (size_t i = 0; i < out * ch; i++) y1[i] = 7.0f;
        const int taken = vs[v].fn(x, ch, w, &epi, &g, y1);
        if (taken != want) {
          vmc_test_fail(__FILE__, __LINE__, "%s case %zu: taken %d, want %d", vs[v].name, c,
                        taken, want);
          continue;
        }
        if (!taken) {
          for (size_t i = 0; i < out * ch; i++)
            if (y1[i] != 7.0f) {
              vmc_test_fail(__FILE__, __LINE__, "%s case %zu: declined but wrote y", vs[v].name, c);
              break;
            }
          continue;
        }
        for (int ci = 0; ci < ch; ci++)
          dw_one_channel(vs[v].v, x + ci * in, w + (size_t)ci * taps, form ? 0.0f : b[ci], &g,
                         y0 + ci * out);
        for (size_t i = 0; form && i < out * ch; i++) {
          const float t = y0[i] > epi.lo ? y0[i] : epi.lo;
          y0[i] = t < epi.hi ? t : epi.hi;
        }
        const float to_ref = rel(yr, y1, out * ch);
        if (!(to_ref <= 1e-5f))
          vmc_test_fail(__FILE__, __LINE__, "%s case %zu clamp %d: off the reference by %g",
                        vs[v].name, c, form, to_ref);
        if (vs[v].v == V_AVX2 && g.sw == 2) continue; /* FMA against mul + add: to rounding */
        if (memcmp(y0, y1, out * ch * 4))
          vmc_test_fail(__FILE__, __LINE__, "%s case %zu clamp %d: not the per-channel floats (%g)",
                        vs[v].name, c, form, rel(y0, y1, out * ch));
      }
    }
    free(x), free(w), free(b), free(y0), free(y1), free(yr);
  }
}

/* Its backward: vmc_dwconv_backward's dw and dx, accumulated, to rounding,
 * for each variant the CPU runs. */
typedef int (*planes_bwd_fn)(const float *, const float *, int, const float *,
                             const vmc_conv_geom *, float *, float *);

TEST(dwconv_planes_backward_matches_reference) {
  const char *isa = vmc_isa_name();
  const struct {
    planes_bwd_fn fn;
    const char *name;
    int runs, col;
  } vs[] = {{vmc_dwconv_planes_backward__ref, "ref", 1, -1},
            {vmc_dwconv_planes_backward__avx512, "avx512", !strcmp(isa, "avx512"), 7},
            {vmc_dwconv_planes_backward__avx2, "avx2", strcmp(isa, "ref") != 0, 8}};
  vmc_rng r;
  vmc_rng_seed(&r, 22);
  for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++) {
    if (!vs[v].runs) continue;
    for (size_t c = 0; c < sizeof k_planes / sizeof k_planes[0]; c++) {
      const int *k = k_planes[c], want = vs[v].col < 0 ? 1 : k[vs[v].col];
      const vmc_conv_geom g = geom_of(k);
      const int ch = want ? 6 : 1, taps = g.kh * g.kw;
      const size_t in = (size_t)g.h * g.w * ch, out = (size_t)g.oh * g.ow * ch;
      float *x = randv(in, &r), *w = randv((size_t)taps * ch, &r), *dy = randv(out, &r);
      float *dx0 = randv(in, &r), *dw0 = randv((size_t)taps * ch, &r);
      float *dx1 = malloc(in * 4), *dw1 = malloc((size_t)taps * ch * 4);
      REQUIRE(x && w && dy && dx0 && dw0 && dx1 && dw1);
      memcpy(dx1, dx0, in * 4);
      memcpy(dw1, dw0, (size_t)taps * ch * 4);
      const int taken = vs[v].fn(x, dy, ch, w, &g, dx1, dw1);
      if (taken != want)
        vmc_test_fail(__FILE__, __LINE__, "%s case %zu: taken %d, want %d", vs[v].name, c, taken,
                      want);
      if (!taken) {
        CHECK(!memcmp(dx0, dx1, in * 4) && !memcmp(dw0, dw1, (size_t)taps * ch * 4));
      } else {
        for (int ci = 0; ci < ch; ci++)
          vmc_dwconv_backward(x + ci * in / ch, w + ci * taps, dy + ci * out / ch, &g,
                              dx0 + ci * in / ch, dw0 + ci * taps);
        const float e1 = rel(dx0, dx1, in), e2 = rel(dw0, dw1, (size_t)taps * ch);
        if (e1 > 1e-5f || e2 > 1e-5f)
          vmc_test_fail(__FILE__, __LINE__, "%s case %zu: dx %g dw %g", vs[v].name, c, e1, e2);
        /* without dx, dw alone */
        memcpy(dw1, dw0, (size_t)taps * ch * 4);
        for (int ci = 0; ci < ch; ci++)
          vmc_dwconv_backward(x + ci * in / ch, w + ci * taps, dy + ci * out / ch, &g, NULL,
                              dw0 + ci * taps);
        CHECK(vs[v].fn(x, dy, ch, w, &g, NULL, dw1) == 1);
        CHECK(rel(dw0, dw1, (size_t)taps * ch) <= 1e-5f);
      }
      free(x), free(w), free(dy), free(dx0), free(dw0), free(dx1), free(dw1);
    }
  }
}

/* Stride 1 "same" with a kernel wider than tall and the reverse (padding
 * 1 x 2 and 2 x 1): every variant, forward and backward, against the
 * reference. */
TEST(dwconv_planes_rectangular_kernels) {
  const char *isa = vmc_isa_name();
  const struct {
    planes_fn fwd;
    planes_bwd_fn bwd;
    int runs;
  } vs[] = {{vmc_dwconv_planes__avx2, vmc_dwconv_planes_backward__avx2, strcmp(isa, "ref") != 0},
            {vmc_dwconv_planes__avx512, vmc_dwconv_planes_backward__avx512,
             !strcmp(isa, "avx512")}};
  const int dims[2][4] = {{3, 5, 1, 2}, {5, 3, 2, 1}}; /* kh, kw, ph, pw */
  vmc_rng r;
  vmc_rng_seed(&r, 23);
  for (int d = 0; d < 2; d++) {
    vmc_conv_geom g = {.c = 1, .h = 11, .w = 13, .kh = dims[d][0], .kw = dims[d][1], .sh = 1,
                       .sw = 1, .ph = dims[d][2], .pw = dims[d][3], .dh = 1, .dw = 1};
    g.oh = vmc_conv_out(g.h, g.kh, 1, g.ph, 1);
    g.ow = vmc_conv_out(g.w, g.kw, 1, g.pw, 1);
    REQUIRE(g.oh == g.h && g.ow == g.w);
    const int ch = 5, taps = g.kh * g.kw;
    const size_t n = (size_t)g.h * g.w * ch;
    float *x = randv(n, &r), *w = randv((size_t)taps * ch, &r), *dy = randv(n, &r);
    float *y0 = malloc(n * 4), *y1 = malloc(n * 4), *dx0 = calloc(n, 4), *dx1 = calloc(n, 4);
    float *dw0 = calloc((size_t)taps * ch, 4), *dw1 = calloc((size_t)taps * ch, 4);
    REQUIRE(x && w && dy && y0 && y1 && dx0 && dx1 && dw0 && dw1);
    const vmc_dwconv_epi epi = {NULL, 0, 0.0f, 0.0f};
    REQUIRE(vmc_dwconv_planes__ref(x, ch, w, &epi, &g, y0) == 1);
    REQUIRE(vmc_dwconv_planes_backward__ref(x, dy, ch, w, &g, dx0, dw0) == 1);
    for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++) {
      if (!vs[v].runs) continue;
      memset(dx1, 0, n * 4);
      memset(dw1, 0, (size_t)taps * ch * 4);
      CHECK(vs[v].fwd(x, ch, w, &epi, &g, y1) == 1);
      CHECK(vs[v].bwd(x, dy, ch, w, &g, dx1, dw1) == 1);
      const float e1 = rel(y0, y1, n), e2 = rel(dx0, dx1, n), e3 = rel(dw0, dw1, (size_t)taps * ch);
      if (!(e1 <= 1e-5f && e2 <= 1e-5f && e3 <= 1e-5f))
        vmc_test_fail(__FILE__, __LINE__, "variant %zu, %dx%d: y %g dx %g dw %g", v, g.kh, g.kw,
                      e1, e2, e3);
    }
    free(x), free(w), free(dy), free(y0), free(y1), free(dx0), free(dx1), free(dw0), free(dw1);
  }
}
