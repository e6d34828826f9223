/* fp32 GEMM benchmark: GFLOP/s of each variant the CPU runs, single-thread,
 * and of vmc_sgemm_mt on vmc_get_threads() threads, for square sizes and
 * conv-shaped problems (M output channels, N output pixels, K = 9 * C; the
 * transposed rows are the weight- and input-gradient GEMMs of a conv).
 *
 *   build/bench/bench_gemm [--all] [--threads N]
 *
 * A second table times vmc_sgemm_rows (B given by row pointers into a padded
 * plane, as an im2col-free conv reads it) against vmc_sgemm on the same B
 * materialised, per ISA, for the forward, weight- and input-gradient GEMMs
 * of 3x3 pad-1 convs; "rows/mat" is the best rows over the best sgemm.  For
 * the weight gradients, "dot" is vmc_sgemm_dot (both operands read in place
 * along K), which conv2d uses there.
 *
 * A third table times the inference forms on the NCHW conv GEMMs of one
 * image: vmc_sgemm followed by a separate bias + ReLU pass, the same fused
 * into the GEMM (vmc_sgemm_epi), and with A (the weights) packed once
 * (vmc_sgemm_packed), single thread; and the packed GEMM without its
 * epilogue, so that the last column, measured in one process, is what the
 * fused epilogue costs.
 *
 * Each cell is the median of 7 timed batches, each batch repeated to take
 * about 20 ms.  The reference is skipped (-) above 256^3 multiply-adds unless
 * --all: it takes seconds there. */
#include "kernels/gemm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*sgemm_fn)(int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float uniform(unsigned *seed) { /* in [-0.5, 0.5) */
  *seed = *seed * 1103515245u + 12345u;
  return (float)(*seed >> 16) / 65536.0f - 0.5f;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct shape {
  int ta, tb, M, N, K;
  const char *what;
} shape;

/* Median GFLOP/s of fn on the shape (operands filled by the caller). */
static double measure(sgemm_fn fn, const shape *s, const float *A, const float *B,
                      float *C) {
  const int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N, ldc = s->N;
  double t0 = now_s();
  fn(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc); /* warm */
  double once = now_s() - t0;
  int reps = once > 0 ? (int)(0.02 / once) : 1000;
  reps = reps < 1 ? 1 : reps > 1000 ? 1000 : reps;
  enum { BATCHES = 7 };
  double t[BATCHES];
  for (int b = 0; b < BATCHES; b++) {
    t0 = now_s();
    for (int r = 0; r < reps; r++)
      fn(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
    t[b] = (now_s() - t0) / reps;
  }
  qsort(t, BATCHES, sizeof t[0], cmp_double);
  return 2.0 * s->M * s->N * s->K / t[BATCHES / 2] / 1e9;
}

static void print_cell(double g) {
  if (g > 0)
    printf(" %8.1f", g);
  else
    printf(" %8s", "-");
}

/* One row-pointer problem and its materialised twin (see rows_table). */
typedef struct rows_case {
  int tb, M, N, K, lda;
  const float *A, *Bm;       /* Bm: (tb ? N : K) rows of (tb ? K : N) floats */
  const float *const *rows;
  float *C;
} rows_case;

/* Median GFLOP/s of rows_fn (or, if NULL, plain_fn on the materialised B). */
static double measure_rows(void (*rows_fn)(int, int, int, int, float, const float *, int,
                                           const float *const *, float, float *, int),
                           sgemm_fn plain_fn, const rows_case *c) {
  const int ldb = c->tb ? c->K : c->N;
  enum { BATCHES = 7 };
  double t[BATCHES], once = 0;
  int reps = 1;
  for (int b = -1; b < BATCHES; b++) { /* b == -1: warm-up, sizes reps */
    double t0 = now_s();
    for (int r = 0; r < reps; r++) {
      if (rows_fn)
        rows_fn(c->tb, c->M, c->N, c->K, 1.0f, c->A, c->lda, c->rows, 0.0f, c->C, c->N);
      else
        plain_fn(0, c->tb, c->M, c->N, c->K, 1.0f, c->A, c->lda, c->Bm, ldb, 0.0f, c->C,
                 c->N);
    }
    if (b < 0) {
      once = now_s() - t0;
      reps = once > 0 ? (int)(0.02 / once) : 1000;
      reps = reps < 1 ? 1 : reps > 1000 ? 1000 : reps;
    } else {
      t[b] = (now_s() - t0) / reps;
    }
  }
  qsort(t, BATCHES, sizeof t[0], cmp_double);
  return 2.0 * c->M * c->N * c->K / t[BATCHES / 2] / 1e9;
}

/* vmc_sgemm_dot in measure_rows' form (it accumulates: alpha and beta are
 * not its to take, which timing does not mind). */
static void dot_as_rows(int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *const *brow, float beta, float *C, int ldc) {
  (void)tb, (void)alpha, (void)beta;
  vmc_sgemm_dot(M, N, K, A, lda, brow, C, ldc);
}

/* vmc_sgemm_rows vs vmc_sgemm on the materialised B for conv GEMMs: a
 * C_in x (H+2) x (W+1) padded plane X as conv2d lays it out (rows share
 * their padding column), whose tap (c, di, dj) is the row
 * X + c*plane + di*(W+1) + dj, read for H*(W+1) floats (the "wide" output
 * grid, one junk column per row). */
static int rows_table(int has_avx2, int has_avx512) {
  static const struct {
    int tb, co, ci, H, W;
    const char *what;
  } cases[] = {
      {0, 16, 16, 28, 28, "fwd 16->16 28x28"}, {0, 32, 16, 28, 28, "fwd 16->32 28x28"},
      {0, 32, 32, 14, 14, "fwd 32->32 14x14"}, {0, 64, 64, 7, 7, "fwd 64->64 7x7"},
      {1, 16, 16, 28, 28, "dW 16->16 28x28"},  {1, 32, 32, 14, 14, "dW 32->32 14x14"},
      {1, 64, 64, 7, 7, "dW 64->64 7x7"},      {0, 16, 16, 28, 28, "dX 16->16 28x28"},
  };
  printf("\nsgemm_rows vs sgemm on the materialised B, GFLOP/s (mat = sgemm, rows = "
         "sgemm_rows)\n");
  printf("%-18s %2s %5s %5s %5s %8s %8s %8s %8s %8s %8s %8s %8s\n", "problem", "tr", "M", "N",
         "K", "mat2", "rows2", "mat512", "rows512", "mat_mt", "rows_mt", "rows/mat", "dot");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const int tb = cases[i].tb, Wp = cases[i].W + 1, plane = (cases[i].H + 2) * Wp;
    const int grid = cases[i].H * Wp, taps = cases[i].ci * 9;
    /* fwd: C[co, grid] = W[co, taps] rows; dW: C[co, taps] = dY[co, grid] rows^T
     * with dY stored plane-strided; dX: as fwd (rotated kernel, in = out). */
    rows_case c = {tb, cases[i].co, tb ? taps : grid, tb ? grid : taps,
                   tb ? plane : taps, NULL, NULL, NULL, NULL};
    const int nrows = taps, len = grid;
    const size_t nx = (size_t)cases[i].ci * plane + 2; /* last tap reads 2 past */
    float *X = malloc(nx * sizeof *X), *A = malloc((size_t)c.M * c.lda * sizeof *A);
    float *Bm = malloc((size_t)nrows * len * sizeof *Bm);
    const float **rows = malloc((size_t)nrows * sizeof *rows);
    c.C = malloc((size_t)c.M * c.N * sizeof *c.C);
    if (!X || !A || !Bm || !rows || !c.C) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    unsigned seed = 7;
    for (size_t j = 0; j < nx; j++) X[j] = uniform(&seed);
    for (size_t j = 0; j < (size_t)c.M * c.lda; j++) A[j] = uniform(&seed);
    for (int r = 0; r < nrows; r++) {
      rows[r] = X + (size_t)(r / 9) * plane + (size_t)(r % 9 / 3) * Wp + r % 3;
      memcpy(Bm + (size_t)r * len, rows[r], (size_t)len * sizeof *Bm);
    }
    c.A = A, c.Bm = Bm, c.rows = rows;
    double m2 = has_avx2 ? measure_rows(NULL, vmc_sgemm__avx2, &c) : 0;
    double r2 = has_avx2 ? measure_rows(vmc_sgemm_rows__avx2, NULL, &c) : 0;
    double m5 = has_avx512 ? measure_rows(NULL, vmc_sgemm__avx512, &c) : 0;
    double r5 = has_avx512 ? measure_rows(vmc_sgemm_rows__avx512, NULL, &c) : 0;
    double mmt = measure_rows(NULL, vmc_sgemm_mt, &c);
    double rmt = measure_rows(vmc_sgemm_rows_mt, NULL, &c);
    double mst = measure_rows(NULL, vmc_sgemm, &c);
    double rst = measure_rows(vmc_sgemm_rows, NULL, &c);
    printf("%-18s %c%c %5d %5d %5d", cases[i].what, 'n', tb ? 't' : 'n', c.M, c.N, c.K);
    print_cell(m2);
    print_cell(r2);
    print_cell(m5);
    print_cell(r5);
    print_cell(mmt);
    print_cell(rmt);
    printf(" %7.2fx", fmax(fmax(r2, r5), rst) / fmax(fmax(m2, m5), mst));
    if (tb)
      print_cell(measure_rows(dot_as_rows, NULL, &c));
    else
      printf(" %8s", "-");
    printf("\n");
    fflush(stdout);
    free(X);
    free(A);
    free(Bm);
    free(rows);
    free(c.C);
  }
  return 0;
}

/* One inference form of a conv GEMM (see epi_table). */
typedef struct epi_case {
  int form; /* 0: sgemm + bias/ReLU pass, 1: sgemm_epi, 2: sgemm_packed, 3: the same bare */
  int M, N, K;
  const float *A, *B, *bias;
  const vmc_sgemm_packed_a *pa;
  float *C;
} epi_case;

static void epi_run(const epi_case *c) {
  vmc_gemm_epi e = VMC_GEMM_EPI_NONE;
  e.bias = c->bias, e.lo = 0.0f;
  if (c->form == 0) {
    vmc_sgemm(0, 0, c->M, c->N, c->K, 1.0f, c->A, c->K, c->B, c->N, 0.0f, c->C, c->N);
    for (int i = 0; i < c->M; i++) {
      float *row = c->C + (size_t)i * c->N;
      const float b = c->bias[i];
      for (int j = 0; j < c->N; j++) {
        const float v = row[j] + b;
        row[j] = v < 0.0f ? 0.0f : v;
      }
    }
  } else if (c->form == 1) {
    vmc_sgemm_epi(0, 0, c->M, c->N, c->K, 1.0f, c->A, c->K, c->B, c->N, 0.0f, c->C, c->N,
                  &e);
  } else {
    vmc_sgemm_packed(c->pa, 0, c->N, c->B, c->N, 0.0f, c->C, c->N, c->form == 2 ? &e : NULL);
  }
}

static double measure_epi(const epi_case *c) {
  enum { BATCHES = 7 };
  double t[BATCHES];
  int reps = 1;
  for (int b = -1; b < BATCHES; b++) { /* b == -1: warm-up, sizes reps */
    double t0 = now_s();
    for (int r = 0; r < reps; r++) epi_run(c);
    const double dt = now_s() - t0;
    if (b < 0) {
      reps = dt > 0 ? (int)(0.02 / dt) : 1000;
      reps = reps < 1 ? 1 : reps > 1000 ? 1000 : reps;
    } else {
      t[b] = dt / reps;
    }
  }
  qsort(t, BATCHES, sizeof t[0], cmp_double);
  return 2.0 * c->M * c->N * c->K / t[BATCHES / 2] / 1e9;
}

/* Inference forms of the forward conv GEMMs (M = C_out, N = pixels, K =
 * C_in * 9; bias + ReLU), single thread. */
static int epi_table(void) {
  static const int shapes[][3] = {{16, 784, 144}, {32, 196, 288}, {64, 49, 576},
                                  {16, 784, 9},   {64, 49, 288},  {32, 196, 16}};
  printf("\ninference forms, GFLOP/s (sgemm+pass: GEMM then a bias+ReLU loop; epi: "
         "fused; packed: fused, weights packed once; bare: packed without the epilogue, "
         "so packed/bare is what the fused epilogue costs)\n");
  printf("%-18s %5s %5s %5s %10s %10s %10s %10s %9s %11s\n", "conv fwd", "M", "N", "K",
         "sgemm+pass", "epi", "packed", "bare", "best/pass", "packed/bare");
  for (int s = 0; s < 6; s++) {
    const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    float *A = malloc((size_t)M * K * sizeof *A), *B = malloc((size_t)K * N * sizeof *B);
    float *bias = malloc((size_t)M * sizeof *bias), *C = malloc((size_t)M * N * sizeof *C);
    if (!A || !B || !bias || !C) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    unsigned seed = 3;
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = uniform(&seed);
    for (size_t i = 0; i < (size_t)K * N; i++) B[i] = uniform(&seed);
    for (int i = 0; i < M; i++) bias[i] = uniform(&seed);
    vmc_sgemm_packed_a pa;
    if (vmc_sgemm_pack_a(0, M, K, 1.0f, A, K, NULL, 0, &pa) != VMC_OK) {
      fprintf(stderr, "pack: %s\n", vmc_last_error());
      return 1;
    }
    epi_case c = {0, M, N, K, A, B, bias, &pa, C};
    const double g0 = measure_epi(&c);
    c.form = 1;
    const double g1 = measure_epi(&c);
    c.form = 2;
    const double g2 = measure_epi(&c);
    c.form = 3;
    const double g3 = measure_epi(&c);
    char what[32];
    snprintf(what, sizeof what, "%dx%d k%d", M, N, K);
    printf("%-18s %5d %5d %5d %10.1f %10.1f %10.1f %10.1f %8.2fx %10.2fx\n", what, M, N, K, g0,
           g1, g2, g3, fmax(g1, g2) / g0, g2 / g3);
    fflush(stdout);
    vmc_sgemm_packed_a_free(&pa);
    free(A);
    free(B);
    free(bias);
    free(C);
  }
  return 0;
}

int main(int argc, char **argv) {
  int all = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--all")) {
      all = 1;
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      vmc_set_threads(atoi(argv[++i]));
    } else {
      fprintf(stderr, "usage: %s [--all] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  const int has_avx2 = vmc_cpu_runs(VMC_ISA_AVX2), has_avx512 = vmc_cpu_runs(VMC_ISA_AVX512);
  static const shape shapes[] = {
      {0, 0, 64, 64, 64, "square"},      {0, 0, 128, 128, 128, "square"},
      {0, 0, 256, 256, 256, "square"},   {0, 0, 384, 384, 384, "square"},
      {0, 0, 512, 512, 512, "square"},   {1, 1, 512, 512, 512, "square"},
      {0, 0, 768, 768, 768, "square"},   {0, 0, 1024, 1024, 1024, "square"},
      {0, 0, 16, 1024, 27, "conv 3->16 32x32"},
      {0, 0, 16, 784, 144, "conv 16->16 28x28"},
      {0, 0, 32, 784, 144, "conv 16->32 28x28"},
      {0, 0, 32, 196, 288, "conv 32->32 14x14"},
      {0, 0, 64, 64, 576, "conv 64->64 8x8"},
      {0, 0, 64, 49, 576, "conv 64->64 7x7"},
      {0, 1, 32, 288, 196, "conv dW 32x32 14x14"},
      {1, 0, 288, 196, 32, "conv dX 32x32 14x14"},
  };
  const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
  printf("sgemm GFLOP/s (isa %s, cpu: %s; mt on %d threads; median of 7)\n",
         vmc_isa_name(), vmc_cpu_features_str(), vmc_get_threads());
  printf("%-22s %2s %5s %5s %5s %8s %8s %8s %8s %8s %8s\n", "problem", "tr", "M", "N",
         "K", "ref", "avx2", "avx512", "sgemm", "sgemm_mt", "best/ref");
  for (int i = 0; i < n_shapes; i++) {
    const shape *s = &shapes[i];
    size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
    float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B);
    float *C = malloc(nc * sizeof *C);
    if (!A || !B || !C) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    unsigned seed = 1;
    for (size_t j = 0; j < na; j++) A[j] = uniform(&seed);
    for (size_t j = 0; j < nb; j++) B[j] = uniform(&seed);
    const int ref_ok = all || (double)s->M * s->N * s->K <= 256.0 * 256 * 256;
    double g_ref = ref_ok ? measure(vmc_sgemm__ref, s, A, B, C) : 0;
    double g_avx2 = has_avx2 ? measure(vmc_sgemm__avx2, s, A, B, C) : 0;
    double g_avx512 = has_avx512 ? measure(vmc_sgemm__avx512, s, A, B, C) : 0;
    double g_st = measure(vmc_sgemm, s, A, B, C);
    double g_mt = measure(vmc_sgemm_mt, s, A, B, C);
    printf("%-22s %c%c %5d %5d %5d", s->what, s->ta ? 't' : 'n', s->tb ? 't' : 'n', s->M,
           s->N, s->K);
    print_cell(g_ref);
    print_cell(g_avx2);
    print_cell(g_avx512);
    print_cell(g_st);
    print_cell(g_mt);
    double best = fmax(fmax(g_avx2, g_avx512), g_st);
    if (g_ref > 0)
      printf(" %7.1fx\n", best / g_ref);
    else
      printf(" %8s\n", "-");
    fflush(stdout);
    free(A);
    free(B);
    free(C);
  }
  if (rows_table(has_avx2, has_avx512)) return 1;
  return epi_table();
}
