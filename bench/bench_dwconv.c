/* Depthwise convolution benchmark: GFLOP/s, single thread, of the
 * all-channel kernels (vmc_dwconv_planes and its backward, each variant the
 * CPU runs) on the depthwise layers of mobilenetv2-tiny (28x28 Fashion-MNIST
 * input) and a 5x5 one, next to the per-channel path conv2d takes where the
 * all-channel kernels decline (per channel: a padded copy, the wide kernel
 * and a crop at stride 1; vmc_dwconv_forward at stride 2), each also as a
 * fraction of the machine's fp32 FMA peak (bench/peak.h).
 *
 *   build/bench/bench_dwconv [--runs R]
 *
 * Forward: 2 * C * oh * ow * kh * kw flops; backward (dw and dx): twice
 * that.  Each cell is the median of R (default 7) timed batches of about
 * 20 ms, on one image's planes (cached, as in a per-image plan). */
#include "kernels/conv.h"
#include "peak.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  int c, h, w, k, s;
  const char *what;
} shape;

static const shape k_shapes[] = {
    {16, 28, 28, 3, 1, "features.1 16ch 28x28"},   {96, 28, 28, 3, 2, "features.2 96ch 28x28/2"},
    {144, 14, 14, 3, 1, "features.3 144ch 14x14"}, {144, 14, 14, 3, 2, "features.4 144ch 14x14/2"},
    {192, 7, 7, 3, 1, "features.5 192ch 7x7"},     {384, 7, 7, 3, 1, "features.7 384ch 7x7"},
    {72, 28, 28, 5, 2, "5x5 72ch 28x28/2"},
};

typedef struct {
  const vmc_conv_geom *g;
  int c;
  const float *x, *w, *dy;
  float *y, *dx, *dw, *pad, *wide;
  int (*fwd)(const float *, int, const float *, const vmc_dwconv_epi *, const vmc_conv_geom *,
             float *);
  int (*bwd)(const float *, const float *, int, const float *, const vmc_conv_geom *, float *,
             float *);
} job;

/* The per-channel path (conv2d's fallback), forward. */
static void per_channel(const job *j) {
  const vmc_conv_geom *g = j->g;
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow;
  for (int c = 0; c < j->c; c++) {
    if (g->sw != 1) {
      vmc_dwconv_forward(j->x + c * in, j->w + (size_t)c * g->kh * g->kw, 0.0f, g, j->y + c * out);
      continue;
    }
    const int wp = g->w + g->pw, hp = g->h + 2 * g->ph;
    memset(j->pad, 0, ((size_t)hp * wp + 64) * sizeof(float));
    for (int r = 0; r < g->h; r++)
      memcpy(j->pad + (size_t)(r + g->ph) * wp + g->pw, j->x + c * in + (size_t)r * g->w,
             (size_t)g->w * sizeof(float));
    vmc_dwconv_wide_forward(j->pad, wp, j->w + (size_t)c * g->kh * g->kw, 0.0f, g, j->wide);
    for (int r = 0; r < g->oh; r++)
      memcpy(j->y + c * out + (size_t)r * g->ow, j->wide + (size_t)r * wp,
             (size_t)g->ow * sizeof(float));
  }
}

static int run(const job *j, int which) {
  const vmc_dwconv_epi epi = {NULL, 1, 0.0f, 6.0f};
  switch (which) {
  case 0: return j->fwd(j->x, j->c, j->w, &epi, j->g, j->y);
  case 1: return j->bwd(j->x, j->dy, j->c, j->w, j->g, j->dx, j->dw);
  default: per_channel(j); return 1;
  }
}

/* Median GFLOP/s of `which` (0 forward, 1 backward, 2 per-channel forward),
 * or 0 where the kernel declines the geometry. */
static double measure(const job *j, int which, double flops, int runs) {
  if (!run(j, which)) return 0; /* warm */
  double t0 = peak_now_s();
  long reps = 0;
  while (peak_now_s() - t0 < 0.005) run(j, which), reps++;
  reps = (long)(reps * 0.02 / (peak_now_s() - t0)) + 1;
  double r[64];
  for (int i = 0; i < runs; i++) {
    t0 = peak_now_s();
    for (long k = 0; k < reps; k++) run(j, which);
    r[i] = flops * reps / (peak_now_s() - t0) / 1e9;
  }
  qsort(r, (size_t)runs, sizeof r[0], peak_cmp_double);
  return r[runs / 2];
}

static float *filled(size_t n, unsigned seed) {
  float *p = malloc(n * sizeof *p);
  for (size_t i = 0; p && i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (float)(seed >> 16) / 65536.0f - 0.5f;
  }
  return p;
}

static void cell(double g, double peak) {
  if (g > 0)
    printf(" %7.1f %3.0f%% |", g, 100 * g / peak);
  else
    printf(" %7s %4s |", "-", "");
}

int main(int argc, char **argv) {
  int runs = 7;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: %s [--runs R]\n", argv[0]);
      return 2;
    }
  }
  if (runs < 1 || runs > 64) {
    fprintf(stderr, "--runs: 1 to 64\n");
    return 2;
  }
  const double peak = peak_fp32(1, 5, 0.05);
  printf("cpu isa %s; fp32 FMA peak (bench_peak) %.1f GFLOP/s on 1 thread\n", vmc_isa_name(), peak);
  printf("GFLOP/s and %% of that peak, 1 thread, median of %d; - : the kernel declines\n\n", runs);
  const struct {
    const char *name;
    int ok;
    int (*fwd)(const float *, int, const float *, const vmc_dwconv_epi *, const vmc_conv_geom *,
               float *);
    int (*bwd)(const float *, const float *, int, const float *, const vmc_conv_geom *, float *,
               float *);
  } vs[] = {{"ref", 1, vmc_dwconv_planes__ref, vmc_dwconv_planes_backward__ref},
            {"avx2", peak_has_avx2(), vmc_dwconv_planes__avx2, vmc_dwconv_planes_backward__avx2},
            {"avx512", peak_has_avx512(), vmc_dwconv_planes__avx512,
             vmc_dwconv_planes_backward__avx512}};
  printf("| layer | per-channel fwd (%s) |", vmc_isa_name());
  for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++)
    if (vs[v].ok) printf(" %s fwd | %s bwd |", vs[v].name, vs[v].name);
  printf("\n|---|---:|");
  for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++)
    if (vs[v].ok) printf("---:|---:|");
  printf("\n");
  for (size_t s = 0; s < sizeof k_shapes / sizeof k_shapes[0]; s++) {
    const shape *sh = &k_shapes[s];
    vmc_conv_geom g = {.c = 1, .h = sh->h, .w = sh->w, .kh = sh->k, .kw = sh->k, .sh = sh->s,
                       .sw = sh->s, .ph = sh->k / 2, .pw = sh->k / 2, .dh = 1, .dw = 1};
    g.oh = vmc_conv_out(g.h, g.kh, g.sh, g.ph, 1);
    g.ow = vmc_conv_out(g.w, g.kw, g.sw, g.pw, 1);
    const size_t in = (size_t)sh->c * g.h * g.w, out = (size_t)sh->c * g.oh * g.ow;
    const size_t taps = (size_t)g.kh * g.kw;
    job j = {.g = &g, .c = sh->c, .x = filled(in, 1), .w = filled(taps * sh->c, 2),
             .dy = filled(out, 3), .y = malloc(out * sizeof(float)), .dx = filled(in, 4),
             .dw = filled(taps * sh->c, 5),
             .pad = malloc(((size_t)(g.h + 2 * g.ph) * (g.w + g.pw) + 64) * sizeof(float)),
             .wide = malloc((size_t)g.oh * (g.w + g.pw) * sizeof(float))};
    if (!j.x || !j.w || !j.dy || !j.y || !j.dx || !j.dw || !j.pad || !j.wide) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    const double f = 2.0 * (double)out * (double)taps;
    printf("| %s |", sh->what);
    cell(measure(&j, 2, f, runs), peak);
    for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++) {
      if (!vs[v].ok) continue;
      j.fwd = vs[v].fwd;
      j.bwd = vs[v].bwd;
      cell(measure(&j, 0, f, runs), peak);
      cell(measure(&j, 1, 2 * f, runs), peak);
    }
    printf("\n");
    free((void *)j.x), free((void *)j.w), free((void *)j.dy), free(j.y), free(j.dx), free(j.dw);
    free(j.pad), free(j.wide);
  }
  return 0;
}
