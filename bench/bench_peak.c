/* The machine's limit: register-only loops (bench/peak.h) for fp32 FMA on
 * zmm and ymm, int8 vpdpbusd on zmm, int8 vpmaddwd on ymm (the AVX2 int8
 * GEMM's step) and vpmaddubsw on ymm (its step for 7-bit weights), on one
 * thread and on every thread.
 * Every kernel figure elsewhere is a fraction of these.
 *
 *   build/bench/bench_peak [--runs N] [--seconds S] [--threads N]
 *
 * Each cell is the median of N runs (default 9) of about S seconds (0.1)
 * each.  GFLOP/s counts 2 flops per FMA lane; GOP/s counts 2 ops per u8 x s8
 * multiply-add, 64 multiply-adds (128 ops) per vpdpbusd zmm, 16 (32 ops) per
 * vpmaddwd ymm, 32 (64 ops) per vpmaddubsw ymm. */
#include "peak.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  int runs = 9, nt_all = 0;
  double seconds = 0.1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
      seconds = atof(argv[++i]);
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      nt_all = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: %s [--runs N] [--seconds S] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  vmc_set_threads(nt_all);
  nt_all = vmc_get_threads();
  unsigned fam, mod, step;
  peak_cpu_fms(&fam, &mod, &step);
  printf("cpu: %s (family 0x%x model 0x%x stepping %u), %d cores online\n",
         peak_cpu_model(), fam, mod, step, omp_get_num_procs());
  printf("features: %s\n", vmc_cpu_features_str());
  printf("register-only loops, median of %d runs of ~%.2f s\n\n", runs, seconds);
  static const struct {
    int which;
    const char *what, *unit;
  } loops[] = {
      {PEAK_ZMM, "fp32 FMA zmm (avx512f, 16 acc)", "GFLOP/s"},
      {PEAK_YMM, "fp32 FMA ymm (avx2+fma, 12 acc)", "GFLOP/s"},
      {PEAK_VNNI, "int8 vpdpbusd zmm (avx512vnni, 16 acc)", "GOP/s"},
      {PEAK_MADDWD, "int8 vpmaddwd+vpaddd ymm (avx2, 12 acc)", "GOP/s"},
      {PEAK_MADDUBS, "int8 vpmaddubsw+.. ymm (7-bit w, 12 acc)", "GOP/s"},
  };
  char hdr[32];
  snprintf(hdr, sizeof hdr, "%d threads", nt_all);
  printf("%-40s %-8s %12s %12s %10s\n", "loop", "unit", "1 thread", hdr, "scaling");
  for (size_t i = 0; i < sizeof loops / sizeof loops[0]; i++) {
    const double g1 = peak_measure(loops[i].which, 1, runs, seconds);
    if (g1 <= 0) {
      printf("%-40s %-8s %12s %12s %10s   (CPU lacks it)\n", loops[i].what, loops[i].unit,
             "-", "-", "-");
      continue;
    }
    const double gn = peak_measure(loops[i].which, nt_all, runs, seconds);
    printf("%-40s %-8s %12.1f %12.1f %9.2fx\n", loops[i].what, loops[i].unit, g1, gn,
           gn / g1);
    fflush(stdout);
  }
  return 0;
}
