/* Plane copies (src/kernels/planes.h): every SIMD variant the CPU runs
 * writes exactly the reference's floats (pure data movement), over rows
 * narrower than, equal to and wider than a vector, paddings 0..3, strides
 * 1..4 with every phase set a kernel can select, written and added; no
 * float outside the destination's extent changes.  The reference's phase
 * merge is the adjoint of its split (<split x, d> == <x, merge d>). */
#include "kernels/planes.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

/* SIMD variant v (0, 1, ...; NULL past the last) if the CPU runs it, else
 * the next one that it runs. */
static const vmc_planes_kernels *simd(int *v) {
  const struct {
    const vmc_planes_kernels *k;
    int isa;
  } all[] = {{&vmc_planes_kernels__avx2, VMC_ISA_AVX2},
             {&vmc_planes_kernels__avx512, VMC_ISA_AVX512}};
  for (; *v < (int)(sizeof all / sizeof all[0]); ++*v)
    if (vmc_cpu_runs(all[*v].isa)) return all[(*v)++].k;
  return NULL;
}

static float *randv(size_t n, vmc_rng *r) {
  float *v = malloc((n ? n : 1) * sizeof *v);
  for (size_t i = 0; v && i < n; i++) v[i] = vmc_rng_normal(r);
  return v;
}

static void pad_crop_case(const vmc_planes_kernels *k) {
  vmc_rng r;
  vmc_rng_seed(&r, 21);
  /* (2, 600: rows of more than MAX_BLOCKS vectors take the reference) */
  static const int hw[][2] = {{1, 1}, {3, 5},  {7, 7},  {14, 14}, {28, 28},
                              {5, 16}, {4, 17}, {2, 40}, {2, 600}};
  for (size_t t = 0; t < sizeof hw / sizeof hw[0]; t++)
    for (int pad = 0; pad <= 3; pad++) {
      const int ch = 3, h = hw[t][0], w = hw[t][1], top = pad, left = (pad * 2) % 4;
      const int hp = h + 2 * top + 1, wp = w + left + pad + 1;
      const size_t slack = 7, n = (size_t)ch * hp * wp + slack, m = (size_t)ch * h * w;
      float *x = randv(m, &r), *a = randv(n + 8, &r), *b = malloc((n + 8) * 4);
      REQUIRE(x && a && b);
      memcpy(b, a, (n + 8) * 4);
      vmc_planes_kernels__ref.pad(x, ch, h, w, top, left, hp, wp, slack, a);
      k->pad(x, ch, h, w, top, left, hp, wp, slack, b);
      if (memcmp(a, b, (n + 8) * 4))
        vmc_test_fail(__FILE__, __LINE__, "%s pad %dx%d pad %d", k->isa, h, w, pad);
      /* crop back, written and added, from a plane with garbage around */
      float *src = randv(n, &r), *c0 = randv(m + 8, &r), *c1 = malloc((m + 8) * 4);
      REQUIRE(src && c0 && c1);
      for (int add = 0; add < 2; add++) {
        memcpy(c1, c0, (m + 8) * 4);
        float *c2 = malloc((m + 8) * 4);
        REQUIRE(c2);
        memcpy(c2, c0, (m + 8) * 4);
        vmc_planes_kernels__ref.crop(src, ch, (size_t)hp * wp, wp, top, left, h, w, c2, add);
        k->crop(src, ch, (size_t)hp * wp, wp, top, left, h, w, c1, add);
        if (memcmp(c1, c2, (m + 8) * 4))
          vmc_test_fail(__FILE__, __LINE__, "%s crop %dx%d pad %d add %d", k->isa, h, w, pad,
                        add);
        free(c2);
      }
      free(x), free(a), free(b), free(src), free(c0), free(c1);
    }
}

/* Phase geometry as conv2d builds it for a kh x kw kernel (dilation d). */
static vmc_phase_geom geom(int h, int w, int p, int s_h, int s_w, int kh, int kw, int d) {
  vmc_phase_geom g = {.h = h, .w = w, .top = p, .left = p, .sh = s_h, .sw = s_w,
                      .phh = (h + 2 * p + s_h - 1) / s_h, .phw = (w + 2 * p + s_w - 1) / s_w};
  memset(g.slot, -1, sizeof g.slot);
  for (int i = 0; i < kh; i++)
    for (int j = 0; j < kw; j++) {
      signed char *sl = &g.slot[(i * d) % s_h][(j * d) % s_w];
      if (*sl < 0) *sl = (signed char)g.nslots++;
    }
  return g;
}

TEST(planes_pad_crop_match_reference) {
  int v = 0, any = 0;
  for (const vmc_planes_kernels *k; (k = simd(&v)); any = 1) pad_crop_case(k);
  if (!any) SKIP("no SIMD variant for this CPU");
}

/* Against the reference when k is not NULL. */
static void phases_case(const vmc_planes_kernels *k) {
  vmc_rng r;
  vmc_rng_seed(&r, 22);
  /* h, w, pad, sh, sw, kh, kw, dilation */
  static const int cs[][8] = {{28, 28, 1, 2, 2, 3, 3, 1}, {14, 14, 0, 2, 2, 1, 1, 1},
                              {3, 1100, 1, 2, 2, 3, 3, 1}, /* more than MAX_BLOCKS vectors */
                              {7, 7, 1, 2, 2, 3, 3, 1},   {9, 40, 2, 2, 2, 3, 3, 2},
                              {8, 33, 1, 2, 2, 2, 2, 1},  {6, 9, 2, 1, 2, 3, 5, 1},
                              {8, 8, 1, 3, 3, 3, 3, 1},   {13, 10, 2, 4, 4, 5, 5, 1},
                              {7, 8, 1, 2, 3, 2, 2, 1},   {5, 31, 3, 2, 2, 1, 2, 1},
                              {1, 1, 0, 2, 2, 1, 1, 1},   {3, 3, 1, 2, 2, 1, 3, 1}};
  for (size_t t = 0; t < 2 * sizeof cs / sizeof cs[0]; t++) {
    const size_t ci = t / 2;
    vmc_phase_geom g = geom(cs[ci][0], cs[ci][1], cs[ci][2], cs[ci][3], cs[ci][4], cs[ci][5], cs[ci][6],
                            cs[ci][7]);
    if (t % 2) g.phw++; /* a widened phase row (conv2d's phase_widen): one zero column more */
    const int ch = 2;
    const size_t slack = 5, nq = (size_t)ch * g.nslots * g.phh * g.phw + slack,
                 m = (size_t)ch * g.h * g.w;
    float *x = randv(m, &r), *q0 = randv(nq + 8, &r), *q1 = malloc((nq + 8) * 4);
    float *dq = randv(nq, &r), *d0 = randv(m + 8, &r), *d1 = malloc((m + 8) * 4),
          *d2 = malloc((m + 8) * 4);
    REQUIRE(x && q0 && q1 && dq && d0 && d1 && d2);
    for (size_t i = 0; i < m; i += 3) d0[i] = -0.0f; /* x + 0 would flip these */
    memcpy(q1, q0, (nq + 8) * 4);
    vmc_planes_kernels__ref.phase_split(x, ch, &g, slack, q0);
    /* adjoint: <split x, dq> == <x, merge dq> (slack excluded) */
    memset(d2, 0, m * 4);
    vmc_planes_kernels__ref.phase_merge(dq, ch, &g, d2, 0);
    double l = 0, rr = 0, sc = 0;
    for (size_t i = 0; i + slack < nq; i++) l += (double)q0[i] * dq[i], sc += fabs(q0[i] * dq[i]);
    for (size_t i = 0; i < m; i++) rr += (double)x[i] * d2[i];
    CHECK_NEAR(l, rr, 1e-5 * (1 + sc));
    /* The same image read from wider rows and planes (every kernel): the
     * same phase planes; what lies between its rows is never read. */
    {
      vmc_phase_geom gs = g;
      gs.xrow = g.w + 3;
      gs.xplane = (size_t)(g.h + 2) * gs.xrow;
      float *xs = randv((size_t)ch * gs.xplane + 8, &r), *q2 = malloc((nq + 8) * 4);
      REQUIRE(xs && q2);
      for (int c = 0; c < ch; c++)
        for (int y = 0; y < g.h; y++)
          memcpy(xs + c * gs.xplane + (size_t)(y + 1) * gs.xrow + 1,
                 x + ((size_t)c * g.h + y) * g.w, (size_t)g.w * 4);
      for (int v = 0; v < (k ? 2 : 1); v++) {
        memcpy(q2, q1, (nq + 8) * 4);
        (v ? k : &vmc_planes_kernels__ref)->phase_split(xs + gs.xrow + 1, ch, &gs, slack, q2);
        if (memcmp(q0, q2, (nq + 8) * 4))
          vmc_test_fail(__FILE__, __LINE__, "strided split case %zu, %s", t, v ? k->isa : "ref");
      }
      free(xs), free(q2);
    }
    if (k) {
      k->phase_split(x, ch, &g, slack, q1);
      if (memcmp(q0, q1, (nq + 8) * 4))
        vmc_test_fail(__FILE__, __LINE__, "%s split case %zu", k->isa, t);
      for (int add = 0; add < 2; add++) {
        memcpy(d1, d0, (m + 8) * 4);
        memcpy(d2, d0, (m + 8) * 4);
        vmc_planes_kernels__ref.phase_merge(dq, ch, &g, d2, add);
        k->phase_merge(dq, ch, &g, d1, add);
        if (memcmp(d1, d2, (m + 8) * 4))
          vmc_test_fail(__FILE__, __LINE__, "%s merge case %zu add %d", k->isa, t, add);
      }
    }
    free(x), free(q0), free(q1), free(dq), free(d0), free(d1), free(d2);
  }
}

TEST(planes_phases_match_reference_and_adjoint) {
  int v = 0, any = 0;
  for (const vmc_planes_kernels *k; (k = simd(&v)); any = 1) phases_case(k);
  if (!any) phases_case(NULL);
}
