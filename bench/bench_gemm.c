/* fp32 GEMM benchmark: GFLOP/s of each variant the CPU runs, single-thread,
 * and of vmc_sgemm_mt on vmc_get_threads() threads, for square sizes and
 * conv-shaped problems (M output channels, N output pixels, K = 9 * C; the
 * transposed rows are the weight- and input-gradient GEMMs of a conv).
 *
 *   build/bench/bench_gemm [--all] [--threads N]
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
  const unsigned f = vmc_cpu_features();
  const int has_avx2 = (f & (VMC_CPU_AVX2 | VMC_CPU_FMA)) == (VMC_CPU_AVX2 | VMC_CPU_FMA);
  const unsigned avx512 = VMC_CPU_AVX512F | VMC_CPU_AVX512BW | VMC_CPU_AVX512VL;
  const int has_avx512 = has_avx2 && (f & avx512) == avx512;
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
  return 0;
}
