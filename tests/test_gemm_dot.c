/* vmc_sgemm_dot (gemm.h): C[m][n] += sum_k A[m][k] * brow[n][k].
 *
 * The AVX-512 kernel (where the CPU has it) and the dispatching entry
 * against a double-precision sum over edge shapes: M and N below, at and
 * above the 4x4 tile, K around the 16-float vector and the dispatch
 * threshold; rows of B that overlap (as a conv's virtual im2col rows do) or
 * stand alone, each allocated to exactly K floats; A with a padded lda; C
 * with padding columns that must stay untouched.  Tolerance per element:
 * 1e-5 * (1 + sum_k |A[m][k] B[n][k]| + |C_old|).  Below the threshold the
 * entry is vmc_sgemm_rows, bit for bit. */
#include "kernels/gemm.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>

typedef void (*dot_fn)(int, int, int, const float *, int, const float *const *, float *, int);

static uint32_t g_seed = 777u;
static float frand(void) { /* uniform in [-1, 1) */
  g_seed = g_seed * 1664525u + 1013904223u;
  return (float)(g_seed >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

static int has_avx512(void) { return vmc_cpu_runs(VMC_ISA_AVX512); }

typedef struct dot_case {
  int M, N, K, lda, ldc, overlap;
  float *A, *C0, *ref, *tol;
  float *shared;   /* overlapping rows: one buffer */
  float **own;     /* separate rows: one allocation of K floats each */
  const float **rows;
} dot_case;

static void case_free(dot_case *c) {
  if (c->own)
    for (int n = 0; n < c->N; n++) free(c->own[n]);
  free(c->own);
  free(c->shared);
  free(c->rows);
  free(c->A);
  free(c->C0);
  free(c->ref);
  free(c->tol);
}

static int case_init(dot_case *c, int M, int N, int K, int overlap) {
  *c = (dot_case){.M = M, .N = N, .K = K, .lda = K + 3, .ldc = N + 2, .overlap = overlap};
  const size_t cn = (size_t)M * c->ldc;
  c->A = malloc(sizeof(float) * ((size_t)M * c->lda + 1));
  c->C0 = malloc(sizeof(float) * cn);
  c->ref = malloc(sizeof(float) * cn);
  c->tol = malloc(sizeof(float) * cn);
  c->rows = malloc(sizeof(float *) * (size_t)N);
  if (!c->A || !c->C0 || !c->ref || !c->tol || !c->rows) return 0;
  if (overlap) { /* row n starts (n / 3) * (K + 5) + n % 3 floats in: neighbours share data */
    const size_t len = (size_t)((N - 1) / 3) * (K + 5) + 2 + (size_t)K;
    if (!(c->shared = malloc(sizeof(float) * len))) return 0;
    for (size_t i = 0; i < len; i++) c->shared[i] = frand();
    for (int n = 0; n < N; n++) c->rows[n] = c->shared + (size_t)(n / 3) * (K + 5) + n % 3;
  } else {
    if (!(c->own = calloc((size_t)N, sizeof *c->own))) return 0;
    for (int n = 0; n < N; n++) {
      if (!(c->own[n] = malloc(sizeof(float) * (size_t)(K ? K : 1)))) return 0;
      for (int k = 0; k < K; k++) c->own[n][k] = frand();
      c->rows[n] = c->own[n];
    }
  }
  for (size_t i = 0; i < (size_t)M * c->lda; i++) c->A[i] = frand();
  for (int m = 0; m < M; m++)
    for (int n = 0; n < c->ldc; n++) {
      const size_t at = (size_t)m * c->ldc + n;
      c->C0[at] = frand();
      double s = c->C0[at], mag = fabs(c->C0[at]);
      for (int k = 0; n < N && k < K; k++) {
        const double t = (double)c->A[(size_t)m * c->lda + k] * c->rows[n][k];
        s += t;
        mag += fabs(t);
      }
      c->ref[at] = (float)s;
      c->tol[at] = (float)(1e-5 * (1.0 + mag));
    }
  return 1;
}

/* Failures found in fn's result (reported, at most 3). */
static int check(const dot_case *c, dot_fn fn, const char *name) {
  const size_t cn = (size_t)c->M * c->ldc;
  float *C = malloc(sizeof(float) * cn);
  if (!C) {
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return 1;
  }
  memcpy(C, c->C0, sizeof(float) * cn);
  fn(c->M, c->N, c->K, c->A, c->lda, c->rows, C, c->ldc);
  int bad = 0;
  for (int m = 0; m < c->M && bad < 3; m++)
    for (int n = 0; n < c->ldc && bad < 3; n++) {
      const size_t at = (size_t)m * c->ldc + n;
      const int ok = n < c->N ? fabsf(C[at] - c->ref[at]) <= c->tol[at]
                              : memcmp(&C[at], &c->C0[at], sizeof(float)) == 0;
      if (!ok) {
        vmc_test_fail(__FILE__, __LINE__,
                      "%s M=%d N=%d K=%d overlap=%d: C[%d,%d] = %.9g, ref %.9g (tol %.3g)%s", name,
                      c->M, c->N, c->K, c->overlap, m, n, C[at], c->ref[at], c->tol[at],
                      n < c->N ? "" : " [padding column changed]");
        bad++;
      }
    }
  free(C);
  return bad;
}

static const int k_m[] = {1, 3, 4, 5, 8, 17};
static const int k_n[] = {1, 2, 4, 5, 9, 37};
static const int k_k[] = {0, 1, 15, 16, 17, 127, 128, 129, 840};

/* One problem through the dispatching entry and, where the CPU has it, the
 * AVX-512 kernel; failures found, or -1 if out of memory (reported). */
static int run_case(int M, int N, int K, int overlap) {
  dot_case c;
  int bad = -1;
  if (case_init(&c, M, N, K, overlap)) {
    bad = check(&c, vmc_sgemm_dot, "dispatch");
    if (has_avx512()) bad += check(&c, vmc_sgemm_dot__avx512, "avx512");
  } else {
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
  }
  case_free(&c);
  return bad;
}

TEST(gemm_dot_vs_double) {
  for (size_t im = 0; im < sizeof k_m / sizeof *k_m; im++)
    for (size_t in = 0; in < sizeof k_n / sizeof *k_n; in++)
      for (size_t ik = 0; ik < sizeof k_k / sizeof *k_k; ik++) {
        const int bad = run_case(k_m[im], k_n[in], k_k[ik], (int)((im + in + ik) % 2));
        if (bad < 0 || (bad && vmc_test_failed_now() >= 10)) return;
      }
}

/* The conv weight-gradient shapes of resnet8 (ocg x C*9 over a wide grid). */
TEST(gemm_dot_conv_shapes) {
  static const int shapes[][3] = {{16, 9, 812}, {16, 144, 812}, {32, 288, 210}, {64, 576, 56}};
  for (int s = 0; s < 4; s++)
    if (run_case(shapes[s][0], shapes[s][1], shapes[s][2], 1) < 0) return;
}

/* Below VMC_SGEMM_DOT_MIN_K (and on a CPU without AVX-512 at any K) the
 * entry is the rows GEMM, bit for bit; above it on AVX-512, the kernel. */
TEST(gemm_dot_dispatch_contract) {
  const int ks[] = {VMC_SGEMM_DOT_MIN_K - 1, VMC_SGEMM_DOT_MIN_K};
  for (int t = 0; t < 2; t++) {
    dot_case c;
    if (!case_init(&c, 6, 7, ks[t], 1)) {
      case_free(&c);
      vmc_test_fail(__FILE__, __LINE__, "out of memory");
      return;
    }
    const size_t cn = (size_t)c.M * c.ldc;
    float *a = malloc(sizeof(float) * cn), *b = malloc(sizeof(float) * cn);
    if (a && b) {
      memcpy(a, c.C0, sizeof(float) * cn);
      memcpy(b, c.C0, sizeof(float) * cn);
      vmc_sgemm_dot(c.M, c.N, c.K, c.A, c.lda, c.rows, a, c.ldc);
      if (t == 1 && !strcmp(vmc_isa_name(), "avx512")) /* the ISA path implies the CPU */
        vmc_sgemm_dot__avx512(c.M, c.N, c.K, c.A, c.lda, c.rows, b, c.ldc);
      else
        vmc_sgemm_rows(1, c.M, c.N, c.K, 1.0f, c.A, c.lda, c.rows, 1.0f, b, c.ldc);
      CHECK(memcmp(a, b, sizeof(float) * cn) == 0);
    } else {
      vmc_test_fail(__FILE__, __LINE__, "out of memory");
    }
    free(a);
    free(b);
    case_free(&c);
  }
}
