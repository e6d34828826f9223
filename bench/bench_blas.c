/* fp32 GEMM against OpenBLAS, same threads, same run: GFLOP/s of
 * vmc_sgemm_mt (vmc_sgemm on one thread) and of OpenBLAS's cblas_sgemm, each
 * also as a fraction of the machine's fp32 FMA peak (bench/peak.h, measured
 * at the start), and their ratio, on 1 thread and on all threads:
 *
 *   1. squares 64 .. 2048;
 *   2. the conv GEMMs of resnet8 / resnet20 on 28x28 Fashion-MNIST in vmc's
 *      layout (NCHW, per image: M = out channels, N = output pixels, K =
 *      C_in*kh*kw): forward, weight gradient (A x B^T) and input gradient
 *      (A^T x B);
 *   3. the same convs batch-folded in the NHWC orientation OpenBLAS users
 *      call (M = batch*pixels, N = out channels, K = C_in*kh*kw): forward,
 *      weight gradient (col^T x dY) and input gradient (dY x W^T).
 *
 *   build/bench/bench_blas [--threads N] [--batch B] [--runs R]
 *                          [--only squares|nchw|nhwc] [--no-blas]
 *
 * OpenBLAS is loaded at run time (dlopen("libopenblas.so.0")), so nothing
 * links against it; without it the bench says so and prints vmc alone.  Run
 * it through bench/vs_openblas.sh, which clears the OPENBLAS_* overrides this
 * machine sets.  Each cell is the median of R (default 7) timed batches of
 * about 20 ms, vmc's and OpenBLAS's alternating (see measure()).  The load
 * average is printed at the start and the end: the machine is shared.  The
 * summary gives, per group and thread count, the geomean and the minimum of
 * vmc / OpenBLAS, and the verdict on the targets (squares >= 512:
 * 0.9x; NHWC with N <= 64: 2x, for all of them and for those where OpenBLAS
 * ran under a quarter of the peak, the target's premise). */
#include "kernels/gemm.h"
#include "peak.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* CBLAS (LP64, as Debian's libopenblas0 builds it). */
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };
typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                               const float *, int, float, float *, int);
typedef char *(*ob_str_fn)(void);
typedef void (*ob_set_threads_fn)(int);

static struct {
  cblas_sgemm_fn sgemm;
  ob_set_threads_fn set_threads;
  ob_str_fn corename, config;
} g_ob;

static const char *openblas_load(void) {
  void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (!h) return dlerror();
  g_ob.sgemm = (cblas_sgemm_fn)dlsym(h, "cblas_sgemm");
  g_ob.set_threads = (ob_set_threads_fn)dlsym(h, "openblas_set_num_threads");
  g_ob.corename = (ob_str_fn)dlsym(h, "openblas_get_corename");
  g_ob.config = (ob_str_fn)dlsym(h, "openblas_get_config");
  if (!g_ob.sgemm || !g_ob.set_threads) {
    g_ob.sgemm = NULL;
    return "libopenblas.so.0 lacks cblas_sgemm or openblas_set_num_threads";
  }
  return NULL;
}

static float uniform(unsigned *seed) { /* in [-0.5, 0.5) */
  *seed = *seed * 1103515245u + 12345u;
  return (float)(*seed >> 16) / 65536.0f - 0.5f;
}

static void sleep_s(double s) {
  struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&t, NULL);
}

typedef struct problem {
  int ta, tb, M, N, K;
  const float *A, *B;
  float *C;
} problem;

enum { RUN_VMC, RUN_BLAS };

static void run_once(int who, const problem *p) {
  const int lda = p->ta ? p->M : p->K, ldb = p->tb ? p->K : p->N;
  if (who == RUN_VMC)
    vmc_sgemm_mt(p->ta, p->tb, p->M, p->N, p->K, 1.0f, p->A, lda, p->B, ldb, 0.0f, p->C,
                 p->N);
  else
    g_ob.sgemm(CBLAS_ROW_MAJOR, p->ta ? CBLAS_TRANS : CBLAS_NO_TRANS,
               p->tb ? CBLAS_TRANS : CBLAS_NO_TRANS, p->M, p->N, p->K, 1.0f, p->A, lda,
               p->B, ldb, 0.0f, p->C, p->N);
}

static int g_runs = 7;

static void set_threads(int who, int nt) {
  if (who == RUN_VMC)
    vmc_set_threads(nt);
  else
    g_ob.set_threads(nt);
}

/* Repetitions of p making a batch of about 20 ms: the fastest of three calls
 * after a warm-up one (packing buffers, thread pools; a pool's first call
 * after a pause wakes its threads, which on this VM can take milliseconds). */
static int batch_reps(int who, const problem *p, int nt) {
  set_threads(who, nt);
  run_once(who, p);
  double once = 1e30;
  for (int i = 0; i < 3; i++) {
    const double t0 = peak_now_s();
    run_once(who, p);
    const double t = peak_now_s() - t0;
    if (t < once) once = t;
  }
  const int reps = once > 0 ? (int)(0.02 / once) : 1000;
  return reps < 1 ? 1 : reps > 1000 ? 1000 : reps;
}

/* Median GFLOP/s of vmc (gv) and OpenBLAS (go, 0 if absent) on p with nt
 * threads.  The timed batches alternate, vmc then OpenBLAS, so both see the
 * same background load. */
static void measure(const problem *p, int nt, double *gv, double *go) {
  const int blas = g_ob.sgemm != NULL;
  const int rv = batch_reps(RUN_VMC, p, nt), ro = blas ? batch_reps(RUN_BLAS, p, nt) : 0;
  double tv[64], to[64];
  for (int b = 0; b < g_runs; b++) {
    for (int who = RUN_VMC; who <= (blas ? RUN_BLAS : RUN_VMC); who++) {
      const int reps = who == RUN_VMC ? rv : ro;
      set_threads(who, nt);
      run_once(who, p); /* untimed: wakes the pool the pause below let sleep */
      const double t0 = peak_now_s();
      for (int r = 0; r < reps; r++) run_once(who, p);
      (who == RUN_VMC ? tv : to)[b] = (peak_now_s() - t0) / reps;
      /* Both libraries' idle workers spin a while after a call (libgomp
       * some milliseconds; OpenBLAS 2^28 TSC cycles, 103 ms at this VM's
       * 2.6 GHz TSC): let them sleep before the other library's batch. */
      if (nt > 1) sleep_s(who == RUN_BLAS ? 0.4 : 0.02);
    }
  }
  const double flop = 2.0 * p->M * p->N * p->K;
  qsort(tv, (size_t)g_runs, sizeof tv[0], peak_cmp_double);
  *gv = flop / tv[g_runs / 2] / 1e9;
  *go = 0;
  if (blas) {
    qsort(to, (size_t)g_runs, sizeof to[0], peak_cmp_double);
    *go = flop / to[g_runs / 2] / 1e9;
  }
}

static void print_loadavg(const char *when) {
  char buf[128] = "?";
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (!fgets(buf, sizeof buf, f)) snprintf(buf, sizeof buf, "?");
    fclose(f);
  }
  buf[strcspn(buf, "\n")] = 0;
  printf("%s: /proc/loadavg %s\n", when, buf);
}

/* Thread counts of the columns, and the fp32 peak of each. */
static int g_nt[2];
static double g_peak[2];
static int g_ncols;

/* Ratios collected for the summary. */
typedef struct tally {
  double log_sum;
  double min;
  int n;
} tally;
static void tally_add(tally *t, double r) {
  if (r <= 0) return;
  t->log_sum += log(r);
  t->min = t->n == 0 || r < t->min ? r : t->min;
  t->n++;
}

static void print_header(const char *first, int first_w) {
  printf("%-*s %2s %6s %5s %5s", first_w, first, "tr", "M", "N", "K");
  for (int c = 0; c < g_ncols; c++) {
    char v[24], o[24];
    snprintf(v, sizeof v, "vmc@%d", g_nt[c]);
    snprintf(o, sizeof o, "OB@%d", g_nt[c]);
    printf(" | %7s %5s %7s %5s %6s", v, "%pk", o, "%pk", "vmc/OB");
  }
  printf("\n");
}

/* OpenBLAS's share of the peak under which a row also counts in the `weak`
 * tallies: the premise for the NHWC target ("where OpenBLAS reaches
 * only ~10-25 % of peak"). */
#define WEAK_PEER_PEAK 0.25

/* Measures and prints one row; adds the ratios to tallies[col] if given, and
 * to weak[col] if given and OpenBLAS ran under WEAK_PEER_PEAK of the peak. */
static int bench_row(const char *what, int first_w, int ta, int tb, int M, int N, int K,
                     tally *tallies, tally *weak) {
  const size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
  float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B), *C = malloc(nc * sizeof *C);
  if (!A || !B || !C) {
    fprintf(stderr, "out of memory\n");
    free(A), free(B), free(C);
    return 1;
  }
  unsigned seed = 1;
  for (size_t i = 0; i < na; i++) A[i] = uniform(&seed);
  for (size_t i = 0; i < nb; i++) B[i] = uniform(&seed);
  memset(C, 0, nc * sizeof *C);
  const problem p = {ta, tb, M, N, K, A, B, C};
  printf("%-*s %c%c %6d %5d %5d", first_w, what, ta ? 't' : 'n', tb ? 't' : 'n', M, N, K);
  fflush(stdout);
  for (int c = 0; c < g_ncols; c++) {
    double v, o;
    measure(&p, g_nt[c], &v, &o);
    printf(" | %7.1f %4.0f%%", v, 100 * v / g_peak[c]);
    if (o > 0) {
      printf(" %7.1f %4.0f%% %5.2fx", o, 100 * o / g_peak[c], v / o);
      if (tallies) tally_add(&tallies[c], v / o);
      if (weak && o < WEAK_PEER_PEAK * g_peak[c]) tally_add(&weak[c], v / o);
    } else {
      printf(" %7s %5s %6s", "-", "-", "-");
    }
    fflush(stdout);
  }
  printf("\n");
  free(A), free(B), free(C);
  return 0;
}

static void print_tally(const char *what, const tally *t, double target) {
  for (int c = 0; c < g_ncols; c++) {
    if (t[c].n == 0) continue;
    const double gm = exp(t[c].log_sum / t[c].n);
    printf("  %-36s %d thr: geomean %.2fx, min %.2fx over %2d", what, g_nt[c], gm, t[c].min,
           t[c].n);
    if (target > 0)
      printf("  (target >= %.2fx: %s)", target, t[c].min >= target ? "met" : "MISSED");
    printf("\n");
  }
}

/* The distinct convolutions of resnet8 / resnet20 on 1x28x28 (zoo.c): output
 * size, and how many times each occurs in either net. */
typedef struct conv_layer {
  const char *name;
  int cin, cout, k, ho, wo, n8, n20;
} conv_layer;
static const conv_layer k_convs[] = {
    {"conv1 1->16 3x3", 1, 16, 3, 28, 28, 1, 1},
    {"s1 16->16 3x3", 16, 16, 3, 28, 28, 2, 6},
    {"s2.0 16->32 3x3/2", 16, 32, 3, 14, 14, 1, 1},
    {"s2.0 ds 16->32 1x1/2", 16, 32, 1, 14, 14, 1, 1},
    {"s2 32->32 3x3", 32, 32, 3, 14, 14, 1, 5},
    {"s3.0 32->64 3x3/2", 32, 64, 3, 7, 7, 1, 1},
    {"s3.0 ds 32->64 1x1/2", 32, 64, 1, 7, 7, 1, 1},
    {"s3 64->64 3x3", 64, 64, 3, 7, 7, 1, 5},
};
#define N_CONVS ((int)(sizeof k_convs / sizeof k_convs[0]))

int main(int argc, char **argv) {
  int nt_all = 0, batch = 64, no_blas = 0;
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      nt_all = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
      batch = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      g_runs = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
      only = argv[++i];
    } else if (!strcmp(argv[i], "--no-blas")) {
      no_blas = 1;
    } else {
      fprintf(stderr,
              "usage: %s [--threads N] [--batch B] [--runs R] [--only squares|nchw|nhwc] "
              "[--no-blas]\n",
              argv[0]);
      return 2;
    }
  }
  g_runs = g_runs < 1 ? 1 : g_runs > 64 ? 64 : g_runs;
  batch = batch < 1 ? 1 : batch;
  vmc_set_threads(nt_all);
  nt_all = vmc_get_threads();
  g_nt[0] = 1;
  g_ncols = 1;
  if (nt_all > 1) g_nt[g_ncols++] = nt_all;

  unsigned fam, mod, step;
  peak_cpu_fms(&fam, &mod, &step);
  printf("cpu: %s (family 0x%x model 0x%x stepping %u), %d cores; vmc isa %s\n",
         peak_cpu_model(), fam, mod, step, omp_get_num_procs(), vmc_isa_name());
  const char *why = no_blas ? "--no-blas" : openblas_load();
  if (why) {
    printf("OpenBLAS: NOT FOUND (%s); install Debian's libopenblas-dev "
           "(apt-get install -y libopenblas-dev). vmc columns only.\n",
           why);
  } else {
    printf("OpenBLAS: core %s; config: %s\n", g_ob.corename ? g_ob.corename() : "?",
           g_ob.config ? g_ob.config() : "?");
    static const char *const vars[] = {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                       "OPENBLAS_NUM_THREADS"};
    for (int i = 0; i < 3; i++)
      if (getenv(vars[i]))
        printf("note: %s=%s is set (bench/vs_openblas.sh clears the first two)\n", vars[i],
               getenv(vars[i]));
  }
  print_loadavg("start");
  for (int c = 0; c < g_ncols; c++) g_peak[c] = peak_fp32(g_nt[c], 5, 0.05);
  printf("fp32 FMA peak (register-only loop, bench_peak): %.1f GFLOP/s on 1 thread",
         g_peak[0]);
  if (g_ncols > 1) printf(", %.1f on %d threads", g_peak[1], g_nt[1]);
  printf("\nGFLOP/s, median of %d; %%pk = fraction of that peak; vmc = vmc_sgemm_mt "
         "(= vmc_sgemm on 1 thread)\n",
         g_runs);

  tally t_sq[2] = {{0}}, t_nchw[2] = {{0}}, t_nhwc_small[2] = {{0}}, t_nhwc_other[2] = {{0}};
  tally t_nhwc_weak[2] = {{0}};
  if (!only || !strcmp(only, "squares")) {
    printf("\n## squares (nn)\n");
    print_header("problem", 22);
    static const int sq[] = {64, 128, 256, 512, 1024, 2048};
    for (int i = 0; i < 6; i++) {
      char what[32];
      snprintf(what, sizeof what, "square %d", sq[i]);
      if (bench_row(what, 22, 0, 0, sq[i], sq[i], sq[i], sq[i] >= 512 ? t_sq : NULL, NULL))
        return 1;
    }
  }
  if (!only || !strcmp(only, "nchw")) {
    printf("\n## convs, vmc layout (NCHW, one image): fwd W x col, dW dY x col^T, dX W^T x dY"
           "\n   (uses in resnet8 / resnet20 in brackets)\n");
    print_header("conv GEMM", 30);
    for (int i = 0; i < N_CONVS; i++) {
      const conv_layer *l = &k_convs[i];
      const int P = l->ho * l->wo, Kc = l->cin * l->k * l->k;
      char what[64];
      snprintf(what, sizeof what, "fwd %s [%d/%d]", l->name, l->n8, l->n20);
      if (bench_row(what, 30, 0, 0, l->cout, P, Kc, t_nchw, NULL)) return 1;
      snprintf(what, sizeof what, "dW  %s", l->name);
      if (bench_row(what, 30, 0, 1, l->cout, Kc, P, t_nchw, NULL)) return 1;
      if (i == 0) continue; /* no input gradient for the image */
      snprintf(what, sizeof what, "dX  %s", l->name);
      if (bench_row(what, 30, 1, 0, Kc, P, l->cout, t_nchw, NULL)) return 1;
    }
  }
  if (!only || !strcmp(only, "nhwc")) {
    printf("\n## convs, batch-folded NHWC (batch %d): fwd col x W, dW col^T x dY, dX dY x W^T"
           "\n",
           batch);
    print_header("conv GEMM", 30);
    for (int i = 0; i < N_CONVS; i++) {
      const conv_layer *l = &k_convs[i];
      const int BP = batch * l->ho * l->wo, Kc = l->cin * l->k * l->k;
      char what[64];
      snprintf(what, sizeof what, "fwd %s", l->name);
      if (bench_row(what, 30, 0, 0, BP, l->cout, Kc, t_nhwc_small, t_nhwc_weak)) return 1;
      snprintf(what, sizeof what, "dW  %s", l->name);
      if (bench_row(what, 30, 1, 0, Kc, l->cout, BP, t_nhwc_small, t_nhwc_weak)) return 1;
      if (i == 0) continue;
      snprintf(what, sizeof what, "dX  %s", l->name);
      if (Kc <= 64 ? bench_row(what, 30, 0, 1, BP, Kc, l->cout, t_nhwc_small, t_nhwc_weak)
                   : bench_row(what, 30, 0, 1, BP, Kc, l->cout, t_nhwc_other, NULL))
        return 1;
    }
  }
  print_loadavg("\nend");
  if (g_ob.sgemm) {
    printf("\nvmc / OpenBLAS:\n");
    print_tally("squares >= 512", t_sq, 0.9);
    print_tally("NCHW conv GEMMs (all)", t_nchw, 0.0);
    print_tally("NHWC conv GEMMs with N <= 64", t_nhwc_small, 2.0);
    print_tally("  of which OpenBLAS < 25% of peak", t_nhwc_weak, 2.0);
    print_tally("NHWC conv GEMMs with N > 64 (dX)", t_nhwc_other, 0.0);
  }
  return 0;
}
