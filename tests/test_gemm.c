/* fp32 GEMM: every variant the CPU runs against the scalar reference over edge
 * shapes (M, N, K below/at/above the register tiles and cache blocks), all
 * four transpose combinations, padded leading dimensions, alpha != 1 and
 * beta in {0, 1, 0.5}; beta == 0 with C pre-filled with NaN; C's padding
 * columns untouched; vmc_sgemm_mt bit-identical to vmc_sgemm.
 *
 * Tolerance, per element (i, j):
 *   |C - C_ref| <= 1e-5 * (1 + |alpha| * sum_k |op(A)[i,k]| |op(B)[k,j]|
 *                             + |beta * C_old[i,j]|)
 * i.e. 1e-5 relative to the magnitude of the terms summed, which bounds the
 * reordering and FMA-contraction differences between variants. */
#include "kernels/gemm.h"
#include "test.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sgemm_fn)(int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);

typedef struct variant {
  const char *name;
  sgemm_fn fn;
  unsigned needs; /* VMC_CPU_* bits */
} variant;

static const variant k_variants[] = {
    {"avx2", vmc_sgemm__avx2, VMC_CPU_NEEDS_AVX2},
    /* the file is built with -mavx512bw/vl/dq too, as vmc_isa_name() requires */
    {"avx512", vmc_sgemm__avx512,
     VMC_CPU_NEEDS_AVX512},
    {"dispatch", vmc_sgemm, 0},
    {"mt", vmc_sgemm_mt, 0},
};
#define N_VARIANTS ((int)(sizeof k_variants / sizeof k_variants[0]))

static uint32_t g_seed = 12345u;
static float frand(void) { /* uniform in [-1, 1) */
  g_seed = g_seed * 1664525u + 1013904223u;
  return (float)(g_seed >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

static float *alloc_floats(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

/* One problem: stored operands (with padding), reference result, tolerance. */
typedef struct problem {
  int ta, tb, M, N, K, lda, ldb, ldc;
  float alpha, beta;
  float *A, *B, *C0, *ref, *tol;
} problem;

static size_t a_size(const problem *p) { return (size_t)(p->ta ? p->K : p->M) * p->lda; }
static size_t b_size(const problem *p) { return (size_t)(p->tb ? p->N : p->K) * p->ldb; }
static size_t c_size(const problem *p) { return (size_t)p->M * p->ldc; }

/* Builds operands and the reference of C's first ref_n columns (the others
 * keep C0's values); returns 0 if out of memory. */
static int problem_init_cols(problem *p, int ta, int tb, int M, int N, int K, int pad,
                             float alpha, float beta, int ref_n) {
  *p = (problem){ta, tb, M, N, K, 0, 0, 0, alpha, beta, 0, 0, 0, 0, 0};
  p->lda = (ta ? M : K) + pad;
  p->ldb = (tb ? K : N) + pad;
  p->ldc = N + pad;
  p->A = alloc_floats(a_size(p));
  p->B = alloc_floats(b_size(p));
  p->C0 = alloc_floats(c_size(p));
  p->ref = alloc_floats(c_size(p));
  p->tol = alloc_floats(c_size(p));
  float *absA = alloc_floats(a_size(p)), *absB = alloc_floats(b_size(p));
  int ok = p->A && p->B && p->C0 && p->ref && p->tol && absA && absB;
  if (ok) {
    for (size_t i = 0; i < a_size(p); i++) absA[i] = fabsf(p->A[i] = frand());
    for (size_t i = 0; i < b_size(p); i++) absB[i] = fabsf(p->B[i] = frand());
    for (size_t i = 0; i < c_size(p); i++)
      p->C0[i] = beta == 0.0f ? NAN : frand(); /* beta 0 must not read C */
    memcpy(p->ref, p->C0, c_size(p) * sizeof(float));
    vmc_sgemm__ref(ta, tb, M, ref_n, K, alpha, p->A, p->lda, p->B, p->ldb, beta, p->ref,
                   p->ldc);
    /* |alpha| * sum_k |a||b| by the reference itself, then the bound. */
    memset(p->tol, 0, c_size(p) * sizeof(float));
    vmc_sgemm__ref(ta, tb, M, ref_n, K, fabsf(alpha), absA, p->lda, absB, p->ldb, 0.0f,
                   p->tol, p->ldc);
    for (size_t i = 0; i < c_size(p); i++) {
      float bc = beta == 0.0f ? 0.0f : fabsf(beta * p->C0[i]);
      p->tol[i] = 1e-5f * (1.0f + p->tol[i] + bc);
    }
  }
  free(absA);
  free(absB);
  return ok;
}

/* Builds operands and the whole reference; returns 0 if out of memory. */
static int problem_init(problem *p, int ta, int tb, int M, int N, int K, int pad,
                        float alpha, float beta) {
  return problem_init_cols(p, ta, tb, M, N, K, pad, alpha, beta, N);
}

static void problem_free(problem *p) {
  free(p->A);
  free(p->B);
  free(p->C0);
  free(p->ref);
  free(p->tol);
}

/* Runs fn on a copy of C0 and checks every element of the M x N block within
 * tolerance and every padding column unchanged.  Returns the failure count. */
static int check_variant(const problem *p, const variant *v) {
  float *C = alloc_floats(c_size(p));
  if (!C) {
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return 1;
  }
  memcpy(C, p->C0, c_size(p) * sizeof(float));
  v->fn(p->ta, p->tb, p->M, p->N, p->K, p->alpha, p->A, p->lda, p->B, p->ldb,
        p->beta, C, p->ldc);
  int bad = 0;
  for (int i = 0; i < p->M && bad < 3; i++) {
    for (int j = 0; j < p->ldc && bad < 3; j++) {
      size_t at = (size_t)i * p->ldc + j;
      int ok = j < p->N ? fabsf(C[at] - p->ref[at]) <= p->tol[at]
                        : memcmp(&C[at], &p->C0[at], sizeof(float)) == 0;
      if (!ok) {
        vmc_test_fail(__FILE__, __LINE__,
                      "%s ta=%d tb=%d M=%d N=%d K=%d lda=%d ldb=%d ldc=%d alpha=%g "
                      "beta=%g: C[%d,%d] = %.9g, ref %.9g (tol %.3g)%s",
                      v->name, p->ta, p->tb, p->M, p->N, p->K, p->lda, p->ldb, p->ldc,
                      p->alpha, p->beta, i, j, C[at], p->ref[at], p->tol[at],
                      j < p->N ? "" : " [padding column changed]");
        bad++;
      }
    }
  }
  free(C);
  return bad;
}

static const int k_dims[] = {1, 2, 5, 6, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 129};
#define N_DIMS ((int)(sizeof k_dims / sizeof k_dims[0]))
static const float k_betas[] = {0.0f, 1.0f, 0.5f};

/* Runs the variants the CPU supports (mask of k_variants) on one problem. */
static int run_problem(unsigned which, int ta, int tb, int M, int N, int K, int pad,
                       float alpha, float beta) {
  problem p;
  if (!problem_init(&p, ta, tb, M, N, K, pad, alpha, beta)) {
    problem_free(&p);
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return 1;
  }
  int bad = 0;
  for (int v = 0; v < N_VARIANTS; v++)
    if (which & (1u << v)) bad += check_variant(&p, &k_variants[v]);
  problem_free(&p);
  return bad;
}

/* Every (M, N) pair of k_dims, two K per pair, rotating through the four
 * transpose combinations, the three betas and three paddings. */
static void sweep(unsigned which) {
  int idx = 0;
  for (int im = 0; im < N_DIMS; im++) {
    for (int in = 0; in < N_DIMS; in++) {
      for (int rep = 0; rep < 2; rep++, idx++) {
        int K = k_dims[(im * 3 + in * 5 + rep * 7) % N_DIMS];
        int t = idx % 4, pad = (idx / 4) % 3 * 3; /* 0, 3, 6 */
        float beta = k_betas[(idx / 12 + rep) % 3];
        float alpha = idx % 5 == 0 ? 1.0f : -0.75f;
        if (run_problem(which, t & 1, t >> 1, k_dims[im], k_dims[in], K, pad, alpha,
                        beta) > 0 &&
            vmc_test_failed_now() >= 10)
          return;
      }
    }
  }
  /* Problems crossing the cache blocks (KC, MC, NC of both SIMD files), and
   * M above the in-place-B limit with N above NC. */
  static const int big[][3] = {{13, 2100, 530}, {66, 1030, 100}, {301, 70, 300},
                               {150, 97, 1025}};
  for (int i = 0; i < 4; i++)
    for (int t = 0; t < 4; t++)
      run_problem(which, t & 1, t >> 1, big[i][0], big[i][1], big[i][2], 1 + t,
                  t == 2 ? 1.0f : 1.5f, k_betas[(i + t) % 3]);
}

static unsigned variant_bit(const char *name) {
  for (int v = 0; v < N_VARIANTS; v++)
    if (strcmp(k_variants[v].name, name) == 0) return 1u << v;
  return 0;
}

static int cpu_has(const char *name) {
  for (int v = 0; v < N_VARIANTS; v++)
    if (strcmp(k_variants[v].name, name) == 0)
      return (vmc_cpu_features() & k_variants[v].needs) == k_variants[v].needs;
  return 0;
}

TEST(gemm_ref_matches_double) {
  /* The reference against a double-precision triple loop. */
  static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 9, 33}, {6, 16, 129}};
  for (int s = 0; s < 4; s++) {
    for (int t = 0; t < 4; t++) {
      problem p;
      int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
      REQUIRE(problem_init(&p, t & 1, t >> 1, M, N, K, 2, 0.5f, 0.5f));
      for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
          double sum = 0;
          for (int k = 0; k < K; k++) {
            double a = p.ta ? p.A[(size_t)k * p.lda + i] : p.A[(size_t)i * p.lda + k];
            double b = p.tb ? p.B[(size_t)j * p.ldb + k] : p.B[(size_t)k * p.ldb + j];
            sum += a * b;
          }
          size_t at = (size_t)i * p.ldc + j;
          CHECK_NEAR(p.ref[at], 0.5 * sum + 0.5 * p.C0[at], p.tol[at]);
        }
      }
      problem_free(&p);
    }
  }
}

TEST(gemm_avx2_vs_ref) {
  if (!cpu_has("avx2")) SKIP("CPU lacks AVX2/FMA");
  sweep(variant_bit("avx2"));
}

TEST(gemm_avx512_vs_ref) {
  if (!cpu_has("avx512")) SKIP("CPU lacks AVX-512F/BW/VL");
  sweep(variant_bit("avx512"));
}

TEST(gemm_dispatch_vs_ref) {
  /* vmc_sgemm and vmc_sgemm_mt on a subset (the sweep runs the variants). */
  unsigned which = variant_bit("dispatch") | variant_bit("mt");
  static const int shapes[][3] = {{7, 33, 65}, {64, 784, 144}, {129, 17, 100},
                                  {300, 40, 30}, {2, 1000, 50}};
  for (int s = 0; s < 5; s++)
    for (int t = 0; t < 4; t++)
      run_problem(which, t & 1, t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], t,
                  0.5f, k_betas[(s + t) % 3]);
}

TEST(gemm_k0_and_alpha0_scale_c) {
  /* K == 0 or alpha == 0: C = beta * C without reading A or B; beta == 0
   * clears NaN. */
  for (int v = -1; v < N_VARIANTS; v++) {
    sgemm_fn fn = v < 0 ? vmc_sgemm__ref : k_variants[v].fn;
    if (v >= 0 && (vmc_cpu_features() & k_variants[v].needs) != k_variants[v].needs)
      continue;
    for (int b = 0; b < 3; b++) {
      float beta = k_betas[b];
      float C[3 * 5];
      for (int i = 0; i < 15; i++) C[i] = beta == 0.0f ? NAN : (float)i;
      const float A[3 * 4] = {0}, B[4 * 5] = {0};
      fn(0, 0, 3, 5, b == 2 ? 4 : 0, b == 2 ? 0.0f : 1.0f, A, 4, B, 5, beta, C, 5);
      for (int i = 0; i < 15; i++) CHECK(C[i] == beta * (float)i);
    }
  }
}

TEST(gemm_mt_bit_identical) {
  /* Shapes large enough to split (by N, and by M when N is small, and the
   * last two over K: a small C, long K), each thread count: the K reduction
   * order must not depend on the split.  alpha 1 on the K splits admits
   * AVX2's sub-slices of A^T. */
  static const int shapes[][3] = {{64, 784, 144},  {16, 1000, 27}, {300, 40, 300},
                                  {300, 10, 100},  {100, 129, 65}, {33, 2100, 17},
                                  {40, 24, 21000}, {144, 16, 12000}};
  const int threads_before = vmc_get_threads();
  for (int s = 0; s < 8; s++) {
    for (int t = 0; t < 4; t++) {
      problem p;
      REQUIRE(problem_init(&p, t & 1, t >> 1, shapes[s][0], shapes[s][1],
                           shapes[s][2], 1, s >= 6 ? 1.0f : 1.25f, k_betas[(s + t) % 3]));
      float *C1 = alloc_floats(c_size(&p)), *Cn = alloc_floats(c_size(&p));
      REQUIRE(C1 && Cn);
      memcpy(C1, p.C0, c_size(&p) * sizeof(float));
      vmc_sgemm(p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.A, p.lda, p.B, p.ldb, p.beta, C1,
                p.ldc);
      for (int nt = 1; nt <= 4; nt++) {
        vmc_set_threads(nt);
        memcpy(Cn, p.C0, c_size(&p) * sizeof(float));
        vmc_sgemm_mt(p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.A, p.lda, p.B, p.ldb,
                     p.beta, Cn, p.ldc);
        size_t diff = 0;
        for (size_t i = 0; i < c_size(&p); i++)
          diff += memcmp(&C1[i], &Cn[i], sizeof(float)) != 0;
        if (diff)
          vmc_test_fail(__FILE__, __LINE__,
                        "threads=%d ta=%d tb=%d M=%d N=%d K=%d: %zu elements differ",
                        nt, p.ta, p.tb, p.M, p.N, p.K, diff);
      }
      free(C1);
      free(Cn);
      problem_free(&p);
    }
  }
  vmc_set_threads(threads_before);
}

/* ---- vmc_sgemm_rows: B given by row pointers ------------------------------
 * The rows (K of them, N floats each, when trans_b == 0; N of K floats when
 * trans_b == 1) are laid out like the taps of a 3x3 conv over a padded plane:
 * row r starts at (r / 9) * plane + (r % 9 / 3) * width + r % 3 of one
 * buffer, so neighbouring rows overlap, and the buffer ends exactly where the
 * last row does.  With `separate`, each row is its own exact malloc instead,
 * so ASan catches a read past any row's end.  The variants are checked
 * against vmc_sgemm_rows__ref within the tolerance above (from the
 * materialised B), and bit for bit against vmc_sgemm's variant of the same
 * ISA on the materialised B (same tiles, blocks and reduction order); the
 * reference bit for bit against vmc_sgemm__ref. */

typedef void (*sgemm_rows_fn)(int, int, int, int, float, const float *, int,
                              const float *const *, float, float *, int);

typedef struct rows_variant {
  const char *name;
  sgemm_rows_fn fn;
  sgemm_fn peer; /* vmc_sgemm variant giving the same bits */
  unsigned needs;
} rows_variant;

static const rows_variant k_rows_variants[] = {
    {"avx2", vmc_sgemm_rows__avx2, vmc_sgemm__avx2, VMC_CPU_NEEDS_AVX2},
    {"avx512", vmc_sgemm_rows__avx512, vmc_sgemm__avx512,
     VMC_CPU_NEEDS_AVX512},
    {"dispatch", vmc_sgemm_rows, vmc_sgemm, 0},
    {"mt", vmc_sgemm_rows_mt, vmc_sgemm, 0},
};
#define N_ROWS_VARIANTS ((int)(sizeof k_rows_variants / sizeof k_rows_variants[0]))

typedef struct rows_problem {
  int tb, M, N, K, lda, ldc, nrows, len, separate;
  float alpha, beta;
  float *A, *C0, *ref, *tol, *Bm; /* Bm: nrows x len, the materialised rows */
  float *buf;                     /* the shared buffer (!separate) */
  float **own;                    /* per-row buffers (separate) */
  const float **rows;
} rows_problem;

static void rows_problem_free(rows_problem *p) {
  free(p->A);
  free(p->C0);
  free(p->ref);
  free(p->tol);
  free(p->Bm);
  free(p->buf);
  if (p->own)
    for (int r = 0; r < p->nrows; r++) free(p->own[r]);
  free(p->own);
  free(p->rows);
}

/* Builds the rows, A (lda), C (ldc = N + cpad), the reference and the
 * tolerance; width/plane place the rows (see above).  Returns 0 if out of
 * memory or if the reference differs from vmc_sgemm__ref on Bm. */
static int rows_problem_init(rows_problem *p, int tb, int M, int N, int K, int lda,
                             int cpad, float alpha, float beta, int separate, int width,
                             int plane) {
  *p = (rows_problem){0};
  p->tb = tb, p->M = M, p->N = N, p->K = K, p->lda = lda, p->ldc = N + cpad;
  p->alpha = alpha, p->beta = beta, p->separate = separate;
  p->nrows = tb ? N : K;
  p->len = tb ? K : N;
  const size_t na = (size_t)M * lda, nc = (size_t)M * p->ldc;
  const size_t nb = (size_t)p->nrows * p->len;
  p->A = alloc_floats(na);
  p->C0 = alloc_floats(nc);
  p->ref = alloc_floats(nc);
  p->tol = alloc_floats(nc);
  p->Bm = alloc_floats(nb);
  p->rows = malloc((size_t)(p->nrows ? p->nrows : 1) * sizeof *p->rows);
  float *absA = alloc_floats(na), *absB = alloc_floats(nb);
  int ok = p->A && p->C0 && p->ref && p->tol && p->Bm && p->rows && absA && absB;
  if (ok && separate) {
    p->own = calloc((size_t)(p->nrows ? p->nrows : 1), sizeof *p->own);
    ok = p->own != NULL;
    for (int r = 0; ok && r < p->nrows; r++) {
      ok = (p->own[r] = alloc_floats((size_t)p->len)) != NULL;
      for (int i = 0; ok && i < p->len; i++) p->own[r][i] = frand();
      p->rows[r] = p->own[r];
    }
  } else if (ok) {
    size_t last = 0;
    for (int r = 0; r < p->nrows; r++) {
      size_t at = (size_t)(r / 9) * plane + (size_t)(r % 9 / 3) * width + r % 3;
      last = at > last ? at : last;
    }
    const size_t size = p->nrows ? last + (size_t)p->len : 0;
    ok = (p->buf = alloc_floats(size)) != NULL;
    for (size_t i = 0; ok && i < size; i++) p->buf[i] = frand();
    for (int r = 0; ok && r < p->nrows; r++)
      p->rows[r] = p->buf + (size_t)(r / 9) * plane + (size_t)(r % 9 / 3) * width + r % 3;
  }
  if (ok) {
    for (int r = 0; r < p->nrows; r++)
      for (int i = 0; i < p->len; i++) {
        float v = p->rows[r][i];
        p->Bm[(size_t)r * p->len + i] = v;
        absB[(size_t)r * p->len + i] = fabsf(v);
      }
    for (size_t i = 0; i < na; i++) absA[i] = fabsf(p->A[i] = frand());
    for (size_t i = 0; i < nc; i++) p->C0[i] = beta == 0.0f ? NAN : frand();
    memcpy(p->ref, p->C0, nc * sizeof(float));
    vmc_sgemm_rows__ref(tb, M, N, K, alpha, p->A, lda, p->rows, beta, p->ref, p->ldc);
    vmc_sgemm__ref(0, tb, M, N, K, fabsf(alpha), absA, lda, absB, p->len, 0.0f, p->tol,
                   p->ldc);
    for (size_t i = 0; i < nc; i++) {
      float bc = beta == 0.0f ? 0.0f : fabsf(beta * p->C0[i]);
      p->tol[i] = 1e-5f * (1.0f + p->tol[i] + bc);
    }
    /* The reference is vmc_sgemm__ref's arithmetic on the materialised B. */
    float *C = alloc_floats(nc);
    ok = C != NULL;
    if (ok) {
      memcpy(C, p->C0, nc * sizeof(float));
      vmc_sgemm__ref(0, tb, M, N, K, alpha, p->A, lda, p->Bm, p->len, beta, C, p->ldc);
      if (memcmp(C, p->ref, nc * sizeof(float)) != 0) {
        vmc_test_fail(__FILE__, __LINE__,
                      "rows ref != sgemm ref: tb=%d M=%d N=%d K=%d separate=%d", tb, M,
                      N, K, separate);
        ok = 0;
      }
    }
    free(C);
  }
  free(absA);
  free(absB);
  return ok;
}

/* Runs v on a copy of C0: every element within tolerance of the reference,
 * equal to v->peer's on the materialised B, padding columns untouched. */
static int check_rows_variant(const rows_problem *p, const rows_variant *v) {
  const size_t nc = (size_t)p->M * p->ldc;
  float *C = alloc_floats(nc), *P = alloc_floats(nc);
  if (!C || !P) {
    free(C);
    free(P);
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return 1;
  }
  memcpy(C, p->C0, nc * sizeof(float));
  memcpy(P, p->C0, nc * sizeof(float));
  v->fn(p->tb, p->M, p->N, p->K, p->alpha, p->A, p->lda, (const float *const *)p->rows,
        p->beta, C, p->ldc);
  v->peer(0, p->tb, p->M, p->N, p->K, p->alpha, p->A, p->lda, p->Bm, p->len, p->beta,
          P, p->ldc);
  int bad = 0;
  for (int i = 0; i < p->M && bad < 3; i++) {
    for (int j = 0; j < p->ldc && bad < 3; j++) {
      size_t at = (size_t)i * p->ldc + j;
      const char *why = NULL;
      if (j >= p->N && memcmp(&C[at], &p->C0[at], sizeof(float)) != 0)
        why = " [padding column changed]";
      else if (j < p->N && !(fabsf(C[at] - p->ref[at]) <= p->tol[at]))
        why = "";
      else if (j < p->N && memcmp(&C[at], &P[at], sizeof(float)) != 0)
        why = " [differs from sgemm on the materialised B]";
      if (why) {
        vmc_test_fail(__FILE__, __LINE__,
                      "rows %s tb=%d M=%d N=%d K=%d lda=%d ldc=%d alpha=%g beta=%g "
                      "separate=%d: C[%d,%d] = %.9g, ref %.9g (tol %.3g), sgemm %.9g%s",
                      v->name, p->tb, p->M, p->N, p->K, p->lda, p->ldc, p->alpha,
                      p->beta, p->separate, i, j, C[at], p->ref[at], p->tol[at], P[at],
                      why);
        bad++;
      }
    }
  }
  free(C);
  free(P);
  return bad;
}

static int rows_cpu_has(const rows_variant *v) {
  return (vmc_cpu_features() & v->needs) == v->needs;
}

static int run_rows_problem(unsigned which, int tb, int M, int N, int K, int apad,
                            int cpad, float alpha, float beta, int separate, int width,
                            int plane) {
  rows_problem p;
  if (!rows_problem_init(&p, tb, M, N, K, K + apad, cpad, alpha, beta, separate, width,
                         plane)) {
    rows_problem_free(&p);
    vmc_test_fail(__FILE__, __LINE__, "out of memory or reference mismatch");
    return 1;
  }
  int bad = 0;
  for (int v = 0; v < N_ROWS_VARIANTS; v++)
    if ((which & (1u << v)) && rows_cpu_has(&k_rows_variants[v]))
      bad += check_rows_variant(&p, &k_rows_variants[v]);
  rows_problem_free(&p);
  return bad;
}

static unsigned rows_variant_bit(const char *name) {
  for (int v = 0; v < N_ROWS_VARIANTS; v++)
    if (strcmp(k_rows_variants[v].name, name) == 0) return 1u << v;
  return 0;
}

/* Every (M, N) pair of k_dims, two K per pair, alternating trans_b, shared
 * and separate rows, betas, paddings and row spacings; then problems
 * crossing the cache blocks and the in-place-B limit. */
static void rows_sweep(unsigned which) {
  int idx = 0;
  for (int im = 0; im < N_DIMS; im++) {
    for (int in = 0; in < N_DIMS; in++) {
      for (int rep = 0; rep < 2; rep++, idx++) {
        int K = k_dims[(im * 3 + in * 5 + rep * 7) % N_DIMS];
        int tb = idx % 2, separate = idx / 2 % 2, pad = (idx / 4) % 3 * 3;
        int width = 3 + idx % 5; /* rows overlap: shifts 0,1,2,w,w+1,.. */
        float beta = k_betas[(idx / 12 + rep) % 3];
        float alpha = idx % 5 == 0 ? 1.0f : -0.75f;
        if (run_rows_problem(which, tb, k_dims[im], k_dims[in], K, pad, pad, alpha, beta,
                             separate, width, 3 * width + 1) > 0 &&
            vmc_test_failed_now() >= 10)
          return;
      }
    }
  }
  static const int big[][3] = {{13, 2100, 530}, {66, 1030, 100}, {301, 70, 300},
                               {150, 97, 1025}, {64, 100, 400}, {65, 100, 400}};
  for (int i = 0; i < 6; i++)
    for (int t = 0; t < 4; t++)
      run_rows_problem(which, t & 1, big[i][0], big[i][1], big[i][2], 1 + t, t,
                       t == 2 ? 1.0f : 1.5f, k_betas[(i + t) % 3], t >> 1, 9, 31);
}

TEST(gemm_rows_ref_vs_sgemm_ref) {
  /* rows_problem_init checks the reference against vmc_sgemm__ref on the
   * materialised B, bit for bit; no other variant runs. */
  static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 9, 33}, {6, 16, 129}};
  for (int s = 0; s < 4; s++)
    for (int t = 0; t < 4; t++)
      run_rows_problem(0, t & 1, shapes[s][0], shapes[s][1], shapes[s][2], 2, 2, 0.5f,
                       k_betas[t % 3], t >> 1, 4, 13);
}

TEST(gemm_rows_avx2_vs_ref) {
  if (!rows_cpu_has(&k_rows_variants[0])) SKIP("CPU lacks AVX2/FMA");
  rows_sweep(rows_variant_bit("avx2"));
}

TEST(gemm_rows_avx512_vs_ref) {
  if (!rows_cpu_has(&k_rows_variants[1])) SKIP("CPU lacks AVX-512F/BW/VL");
  rows_sweep(rows_variant_bit("avx512"));
}

/* The conv shapes of gemm.h, rows as in the padded plane of an HxW image
 * (width W + 2, plane (H + 2) * (W + 2), N or K = H * (W + 2)). */
static const int k_conv_rows[][4] = {/* C_out, C_in, H, W */
                                     {16, 16, 28, 28},
                                     {32, 32, 14, 14},
                                     {64, 64, 7, 7},
                                     {16, 3, 5, 4}};

TEST(gemm_rows_dispatch_conv_shapes) {
  unsigned which = ~0u; /* every variant the CPU has */
  for (int s = 0; s < 4; s++) {
    const int co = k_conv_rows[s][0], ci = k_conv_rows[s][1];
    const int H = k_conv_rows[s][2], Wp = k_conv_rows[s][3] + 2, plane = (H + 2) * Wp;
    const int grid = H * Wp, taps = ci * 9;
    for (int sep = 0; sep < 2; sep++) {
      /* forward: C[co, grid] = W[co, taps] * rows; input gradient likewise */
      run_rows_problem(which, 0, co, grid, taps, 0, 0, 1.0f, 0.0f, sep, Wp, plane);
      run_rows_problem(which, 0, ci, grid, co * 9, 0, 1, 1.0f, 1.0f, sep, Wp, plane);
      /* weight gradient: dW[co, taps] += dY[co, grid] (lda = plane) * rows^T */
      run_rows_problem(which, 1, co, taps, grid, plane - grid, 0, 1.0f, 1.0f, sep, Wp,
                       plane);
      run_rows_problem(which, 1, co, taps, grid, plane - grid, 3, -0.5f, 0.0f, sep, Wp,
                       plane);
    }
  }
}

TEST(gemm_rows_k0_and_alpha0_scale_c) {
  /* K == 0 or alpha == 0: C = beta * C without reading A or the rows (which
   * hold NaN); beta == 0 clears NaN. */
  float nanrow[8];
  for (int i = 0; i < 8; i++) nanrow[i] = NAN;
  const float *rows[8];
  for (int i = 0; i < 8; i++) rows[i] = nanrow;
  const float A[3 * 4] = {0};
  for (int v = -1; v < N_ROWS_VARIANTS; v++) {
    sgemm_rows_fn fn = v < 0 ? vmc_sgemm_rows__ref : k_rows_variants[v].fn;
    if (v >= 0 && !rows_cpu_has(&k_rows_variants[v])) continue;
    for (int tb = 0; tb < 2; tb++) {
      for (int b = 0; b < 3; b++) {
        float beta = k_betas[b];
        float C[3 * 5];
        for (int i = 0; i < 15; i++) C[i] = beta == 0.0f ? NAN : (float)i;
        fn(tb, 3, 5, b == 2 ? 4 : 0, b == 2 ? 0.0f : 1.0f, A, 4, rows, beta, C, 5);
        for (int i = 0; i < 15; i++) CHECK(C[i] == beta * (float)i);
      }
    }
  }
}

TEST(gemm_rows_mt_bit_identical) {
  /* vmc_sgemm_rows_mt at 1..4 threads equals vmc_sgemm_rows bit for bit,
   * splitting by N (row offsets, or row pointers when trans_b), by M, and
   * over K (the last two). */
  static const int shapes[][4] = {/* tb, M, N, K */
                                  {0, 16, 840, 144}, {1, 16, 144, 840}, {0, 64, 63, 576},
                                  {1, 64, 576, 63},  {0, 300, 10, 100}, {1, 300, 10, 100},
                                  {0, 33, 2100, 17}, {1, 100, 129, 65}, {0, 16, 24, 40000},
                                  {1, 24, 16, 40000}};
  const int threads_before = vmc_get_threads();
  for (int s = 0; s < 10; s++) {
    rows_problem p;
    REQUIRE(rows_problem_init(&p, shapes[s][0], shapes[s][1], shapes[s][2],
                              shapes[s][3], shapes[s][3] + 5, 1, 1.25f,
                              k_betas[s % 3], s % 2, 30, 900));
    const size_t nc = (size_t)p.M * p.ldc;
    float *C1 = alloc_floats(nc), *Cn = alloc_floats(nc);
    REQUIRE(C1 && Cn);
    memcpy(C1, p.C0, nc * sizeof(float));
    vmc_sgemm_rows(p.tb, p.M, p.N, p.K, p.alpha, p.A, p.lda, (const float *const *)p.rows,
                   p.beta, C1, p.ldc);
    for (int nt = 1; nt <= 4; nt++) {
      vmc_set_threads(nt);
      memcpy(Cn, p.C0, nc * sizeof(float));
      vmc_sgemm_rows_mt(p.tb, p.M, p.N, p.K, p.alpha, p.A, p.lda,
                        (const float *const *)p.rows, p.beta, Cn, p.ldc);
      size_t diff = 0;
      for (size_t i = 0; i < nc; i++) diff += memcmp(&C1[i], &Cn[i], sizeof(float)) != 0;
      if (diff)
        vmc_test_fail(__FILE__, __LINE__,
                      "threads=%d tb=%d M=%d N=%d K=%d: %zu elements differ", nt, p.tb,
                      p.M, p.N, p.K, diff);
    }
    free(C1);
    free(Cn);
    rows_problem_free(&p);
  }
  vmc_set_threads(threads_before);
}

/* ---- Fused epilogue and pre-packed A --------------------------------------
 * Every variant (through its vmc_sgemm_run__*), and the dispatched and _mt
 * entries, against the reference with an epilogue: bias, residual, clamp,
 * all three.  Tolerance as above plus |bias| + |res| (the clamp is
 * 1-Lipschitz).  alpha == 1 exercises the in-place A paths.  Then the
 * bit-identity promises: _mt == single thread, rows == materialised, packed
 * == unpacked of the same variant, each with an epilogue. */

typedef void (*run_fn)(const vmc_gemm_args *);

/* beta 0.3, not 0.5: beta * C must round, so that a kernel computing it
 * apart from the sum (not one FMA) gives other bits. */
static const float k_epi_betas[] = {0.0f, 1.0f, 0.3f};

static void run_dispatch(const vmc_gemm_args *g) {
  vmc_sgemm_epi(g->trans_a, g->trans_b, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B,
                g->ldb, g->beta, g->C, g->ldc, g->epi);
}
static void run_dispatch_mt(const vmc_gemm_args *g) {
  vmc_sgemm_epi_mt(g->trans_a, g->trans_b, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B,
                   g->ldb, g->beta, g->C, g->ldc, g->epi);
}

typedef struct run_variant {
  const char *name;
  run_fn fn;
  unsigned needs;
  int variant; /* VMC_GEMM_*, or -1 for the dispatching entries */
} run_variant;

static const run_variant k_run_variants[] = {
    {"ref", vmc_sgemm_run__ref, 0, VMC_GEMM_REF},
    {"avx2", vmc_sgemm_run__avx2, VMC_CPU_NEEDS_AVX2, VMC_GEMM_AVX2},
    {"avx512", vmc_sgemm_run__avx512,
     VMC_CPU_NEEDS_AVX512,
     VMC_GEMM_AVX512},
    {"dispatch", run_dispatch, 0, -1},
    {"mt", run_dispatch_mt, 0, -1},
};
#define N_RUN_VARIANTS ((int)(sizeof k_run_variants / sizeof k_run_variants[0]))

static int run_cpu_has(const run_variant *v) {
  return (vmc_cpu_features() & v->needs) == v->needs;
}

/* Epilogue kinds: 0 bias, 1 residual, 2 ReLU, 3 bias + residual + clamp. */
#define N_EPI_KINDS 4

typedef struct epi_problem {
  problem p;
  float *bias, *res; /* M, and M x ldr (ldr = N + 2) */
  vmc_gemm_epi epi;
} epi_problem;

static void epi_problem_free(epi_problem *e) {
  problem_free(&e->p);
  free(e->bias);
  free(e->res);
}

/* problem_init, then an epilogue of the given kind, the reference recomputed
 * with it and the tolerance widened.  Returns 0 if out of memory. */
static int epi_problem_init(epi_problem *e, int ta, int tb, int M, int N, int K, int pad,
                            float alpha, float beta, int kind) {
  *e = (epi_problem){0};
  if (!problem_init(&e->p, ta, tb, M, N, K, pad, alpha, beta)) return 0;
  problem *p = &e->p;
  const int ldr = N + 2;
  e->bias = alloc_floats((size_t)M);
  e->res = alloc_floats((size_t)M * ldr);
  if (!e->bias || !e->res) return 0;
  for (int i = 0; i < M; i++) e->bias[i] = frand();
  for (size_t i = 0; i < (size_t)M * ldr; i++) e->res[i] = frand();
  e->epi = VMC_GEMM_EPI_NONE;
  if (kind == 0 || kind == 3) e->epi.bias = e->bias;
  if (kind == 1 || kind == 3) e->epi.res = e->res, e->epi.ldr = ldr;
  if (kind == 2) e->epi.lo = 0.0f;
  if (kind == 3) e->epi.lo = -0.25f, e->epi.hi = 0.3f;
  memcpy(p->ref, p->C0, c_size(p) * sizeof(float));
  const vmc_gemm_args g = {.trans_a = ta, .trans_b = tb, .M = M, .N = N, .K = K,
                           .alpha = alpha, .A = p->A, .lda = p->lda, .B = p->B,
                           .ldb = p->ldb, .beta = beta, .C = p->ref, .ldc = p->ldc,
                           .epi = &e->epi};
  vmc_sgemm_run__ref(&g);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      float extra = 0.0f;
      if (e->epi.bias) extra += fabsf(e->bias[i]);
      if (e->epi.res) extra += fabsf(e->res[(size_t)i * ldr + j]);
      p->tol[(size_t)i * p->ldc + j] += 1e-5f * extra;
    }
  return 1;
}

static vmc_gemm_args epi_args(const epi_problem *e, float *C) {
  const problem *p = &e->p;
  return (vmc_gemm_args){.trans_a = p->ta, .trans_b = p->tb, .M = p->M, .N = p->N,
                         .K = p->K, .alpha = p->alpha, .A = p->A, .lda = p->lda,
                         .B = p->B, .ldb = p->ldb, .beta = p->beta, .C = C,
                         .ldc = p->ldc, .epi = &e->epi};
}

/* Runs v on a copy of C0: within tolerance of the reference, padding
 * columns untouched.  Returns the failure count. */
static int check_epi_variant(const epi_problem *e, const run_variant *v, int kind) {
  const problem *p = &e->p;
  float *C = alloc_floats(c_size(p));
  if (!C) {
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return 1;
  }
  memcpy(C, p->C0, c_size(p) * sizeof(float));
  const vmc_gemm_args g = epi_args(e, C);
  v->fn(&g);
  int bad = 0;
  for (int i = 0; i < p->M && bad < 3; i++) {
    for (int j = 0; j < p->ldc && bad < 3; j++) {
      size_t at = (size_t)i * p->ldc + j;
      int ok = j < p->N ? fabsf(C[at] - p->ref[at]) <= p->tol[at]
                        : memcmp(&C[at], &p->C0[at], sizeof(float)) == 0;
      if (!ok) {
        vmc_test_fail(__FILE__, __LINE__,
                      "epi %s kind=%d ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g: "
                      "C[%d,%d] = %.9g, ref %.9g (tol %.3g)%s",
                      v->name, kind, p->ta, p->tb, p->M, p->N, p->K, p->alpha, p->beta, i,
                      j, C[at], p->ref[at], p->tol[at],
                      j < p->N ? "" : " [padding column changed]");
        bad++;
      }
    }
  }
  free(C);
  return bad;
}

static int run_epi_problem(int ta, int tb, int M, int N, int K, int pad, float alpha,
                           float beta, int kind) {
  epi_problem e;
  if (!epi_problem_init(&e, ta, tb, M, N, K, pad, alpha, beta, kind)) {
    epi_problem_free(&e);
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return 1;
  }
  int bad = 0;
  for (int v = 1; v < N_RUN_VARIANTS; v++)
    if (run_cpu_has(&k_run_variants[v])) bad += check_epi_variant(&e, &k_run_variants[v], kind);
  epi_problem_free(&e);
  return bad;
}

TEST(gemm_epi_vs_ref) {
  /* Every (M, N) pair of a subset of k_dims (tile edges of both SIMD files),
   * K rotating through them, every transpose pair, beta, epilogue kind, and
   * alpha 1 (in-place A) or not. */
  static const int dims[] = {1, 5, 6, 7, 8, 9, 16, 17, 31, 32, 33, 63, 64, 65, 100};
  const int nd = (int)(sizeof dims / sizeof dims[0]);
  int idx = 0;
  for (int im = 0; im < nd; im++) {
    for (int in = 0; in < nd; in++, idx++) {
      const int K = dims[(im * 3 + in * 5) % nd], t = idx % 4;
      const float alpha = idx % 3 == 2 ? -0.75f : 1.0f;
      if (run_epi_problem(t & 1, t >> 1, dims[im], dims[in], K, idx % 3, alpha,
                          k_epi_betas[idx / 4 % 3], idx % N_EPI_KINDS) > 0 &&
          vmc_test_failed_now() >= 10)
        return;
    }
  }
  /* Across the cache blocks: several K slices (the epilogue only in the
   * last), N past NC, M past MC and the in-place-B limit. */
  static const int big[][3] = {{13, 2100, 530}, {150, 97, 1025}, {70, 40, 800},
                               {300, 16, 300}};
  for (int i = 0; i < 4; i++)
    for (int t = 0; t < 4; t++)
      run_epi_problem(t & 1, t >> 1, big[i][0], big[i][1], big[i][2], t, t == 1 ? -1.5f : 1.0f,
                      k_epi_betas[(i + t) % 3], (i + t) % N_EPI_KINDS);
}

TEST(gemm_epi_k0_alpha0_nan) {
  /* K == 0 or alpha == 0: C = clamp(beta * C + bias + res) without reading A
   * or B; NaN in the sum passes the clamp; infinities are clamped. */
  for (int v = 0; v < N_RUN_VARIANTS; v++) {
    const run_variant *rv = &k_run_variants[v];
    if (!run_cpu_has(rv)) continue;
    const float bias[2] = {0.5f, -2.0f}, res[2 * 3] = {1, 2, 3, -1, -2, -3};
    vmc_gemm_epi e = VMC_GEMM_EPI_NONE;
    e.bias = bias, e.res = res, e.ldr = 3, e.lo = -1.0f, e.hi = 2.0f;
    for (int b = 0; b < 3; b++) {
      float C[2 * 3], want[2 * 3];
      for (int i = 0; i < 6; i++) {
        C[i] = b == 0 ? NAN : (float)i - 2.0f;
        float x = b == 0 ? 0.0f : k_epi_betas[b] * C[i];
        x = x + bias[i / 3];
        x = x + res[i];
        want[i] = x < -1.0f ? -1.0f : x > 2.0f ? 2.0f : x;
      }
      const float A[2 * 4] = {0}, B[4 * 3] = {0};
      const vmc_gemm_args g = {.M = 2, .N = 3, .K = b == 2 ? 4 : 0,
                               .alpha = b == 2 ? 0.0f : 1.0f, .A = A, .lda = 4, .B = B,
                               .ldb = 3, .beta = k_epi_betas[b], .C = C, .ldc = 3, .epi = &e};
      rv->fn(&g);
      for (int i = 0; i < 6; i++) CHECK(C[i] == want[i]);
    }
    /* NaN and infinities through a full GEMM: A row 0 has a NaN, row 1 an
     * infinity (times positive B), row 2 a minus infinity. */
    float A[3 * 5], B[5 * 20], C[3 * 20];
    for (int i = 0; i < 15; i++) A[i] = 0.25f;
    for (int i = 0; i < 100; i++) B[i] = 0.5f;
    A[2] = NAN, A[5 + 3] = INFINITY, A[10 + 1] = -INFINITY;
    vmc_gemm_epi relu6 = VMC_GEMM_EPI_NONE;
    relu6.lo = 0.0f, relu6.hi = 6.0f;
    const vmc_gemm_args g = {.M = 3, .N = 20, .K = 5, .alpha = 1.0f, .A = A, .lda = 5,
                             .B = B, .ldb = 20, .beta = 0.0f, .C = C, .ldc = 20,
                             .epi = &relu6};
    rv->fn(&g);
    for (int j = 0; j < 20; j++) {
      CHECK(isnan(C[j]));
      CHECK(C[20 + j] == 6.0f);
      CHECK(C[40 + j] == 0.0f);
    }
  }
}

/* n elements of X and Y differing in bits. */
static size_t bits_differ(const float *X, const float *Y, size_t n) {
  size_t d = 0;
  for (size_t i = 0; i < n; i++) d += memcmp(&X[i], &Y[i], sizeof(float)) != 0;
  return d;
}

TEST(gemm_c_slice_each_slice_alone) {
  /* vmc_gemm_args.c_slice (vmc_sgemm_mt's K split): each K slice's sums,
   * stored alone, equal bit for bit the same variant's call on that slice's
   * K range with beta 0, for both transposes, A packed and in place (alpha
   * 1, N <= 64), and a ragged last slice; beta and the epilogue unused. */
  static const struct {
    const char *name;
    run_fn fn;
    int (*slice_k)(void);
  } variants[] = {{"avx2", vmc_sgemm_run__avx2, vmc_sgemm_slice_k__avx2},
                  {"avx512", vmc_sgemm_run__avx512, vmc_sgemm_slice_k__avx512}};
  int ran = 0;
  for (int v = 0; v < 2; v++) {
    if (!cpu_has(variants[v].name)) continue;
    ran++;
    const int kc = variants[v].slice_k(), K = 2 * kc + 37;
    for (int t = 0; t < 8; t++) {
      const int ta = t & 1, tb = (t >> 1) & 1, M = 13, N = t & 4 ? 21 : 70;
      problem p;
      REQUIRE(problem_init(&p, ta, tb, M, N, K, 3, t & 4 ? 1.0f : 0.75f, 0.5f));
      const int ns = (K + kc - 1) / kc;
      const size_t mn = (size_t)M * N;
      float *S = alloc_floats(ns * mn), *T = alloc_floats(mn);
      REQUIRE(S && T);
      for (size_t i = 0; i < ns * mn; i++) S[i] = NAN; /* set, never read */
      const vmc_gemm_epi epi = {.bias = p.C0, .lo = 0.0f, .hi = INFINITY};
      const vmc_gemm_args g = {.trans_a = ta, .trans_b = tb, .M = M, .N = N, .K = K,
                               .alpha = p.alpha, .A = p.A, .lda = p.lda, .B = p.B,
                               .ldb = p.ldb, .beta = 0.5f, .C = S, .ldc = N, .epi = &epi,
                               .c_slice = mn};
      variants[v].fn(&g);
      for (int j = 0; j < ns; j++) {
        const int k0 = j * kc, k = K - k0 < kc ? K - k0 : kc;
        const vmc_gemm_args h = {
            .trans_a = ta, .trans_b = tb, .M = M, .N = N, .K = k, .alpha = p.alpha,
            .A = p.A + (ta ? (size_t)k0 * p.lda : (size_t)k0), .lda = p.lda,
            .B = p.B + (tb ? (size_t)k0 : (size_t)k0 * p.ldb), .ldb = p.ldb, .beta = 0.0f,
            .C = T, .ldc = N};
        variants[v].fn(&h);
        const size_t diff = bits_differ(S + (size_t)j * mn, T, mn);
        if (diff)
          vmc_test_fail(__FILE__, __LINE__, "%s ta=%d tb=%d N=%d slice %d: %zu differ",
                        variants[v].name, ta, tb, N, j, diff);
      }
      free(S);
      free(T);
      problem_free(&p);
    }
  }
  if (!ran) SKIP("CPU lacks AVX2/FMA");
}

TEST(gemm_epi_mt_bit_identical) {
  /* vmc_sgemm_epi_mt at 1..4 threads equals vmc_sgemm_epi bit for bit (the
   * split moves bias and residual with the block).  8 x 56 and 16 x 49 on 4
   * threads: columns that one thread computes with a 16-wide tile fall in a
   * narrow (24 / 17-column) panel on one thread, which AVX-512 computes with
   * the rows in the lanes: both kernels must give the same bits. */
  static const int shapes[][3] = {{64, 784, 144}, {300, 40, 300}, {300, 10, 100},
                                  {33, 2100, 17}, {2000, 16, 144}, {8, 56, 300},
                                  {16, 49, 100}};
  const int threads_before = vmc_get_threads();
  for (int s = 0; s < 7; s++) {
    for (int t = 0; t < 4; t++) {
      epi_problem e;
      REQUIRE(epi_problem_init(&e, t & 1, t >> 1, shapes[s][0], shapes[s][1],
                               shapes[s][2], 1, t == 3 ? 1.25f : 1.0f, k_epi_betas[(s + t) % 3],
                               (s + t) % N_EPI_KINDS));
      const problem *p = &e.p;
      float *C1 = alloc_floats(c_size(p)), *Cn = alloc_floats(c_size(p));
      REQUIRE(C1 && Cn);
      memcpy(C1, p->C0, c_size(p) * sizeof(float));
      vmc_gemm_args g = epi_args(&e, C1);
      run_dispatch(&g);
      for (int nt = 1; nt <= 4; nt++) {
        vmc_set_threads(nt);
        memcpy(Cn, p->C0, c_size(p) * sizeof(float));
        g.C = Cn;
        run_dispatch_mt(&g);
        const size_t diff = bits_differ(C1, Cn, c_size(p));
        if (diff)
          vmc_test_fail(__FILE__, __LINE__,
                        "threads=%d ta=%d tb=%d M=%d N=%d K=%d: %zu elements differ", nt,
                        p->ta, p->tb, p->M, p->N, p->K, diff);
      }
      free(C1);
      free(Cn);
      epi_problem_free(&e);
    }
  }
  vmc_set_threads(threads_before);
}

TEST(gemm_rows_epi_bit_identical) {
  /* vmc_sgemm_rows_epi(_mt) equals vmc_sgemm_epi on the materialised B (each
   * variant through vmc_sgemm_run__*, rows vs matrix), with every epilogue
   * kind. */
  static const int shapes[][4] = {/* tb, M, N, K */
                                  {0, 16, 840, 144}, {1, 16, 144, 840}, {0, 64, 63, 576},
                                  {1, 64, 576, 63},  {0, 300, 10, 100}, {1, 9, 17, 33}};
  const int threads_before = vmc_get_threads();
  for (int s = 0; s < 6; s++) {
    rows_problem rp;
    REQUIRE(rows_problem_init(&rp, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3],
                              shapes[s][3] + 3, 1, s == 2 ? 0.5f : 1.0f, k_epi_betas[s % 3],
                              s % 2, 30, 900));
    const size_t nc = (size_t)rp.M * rp.ldc;
    float *bias = alloc_floats((size_t)rp.M), *res = alloc_floats((size_t)rp.M * rp.N);
    float *C1 = alloc_floats(nc), *C2 = alloc_floats(nc);
    REQUIRE(bias && res && C1 && C2);
    for (int i = 0; i < rp.M; i++) bias[i] = frand();
    for (size_t i = 0; i < (size_t)rp.M * rp.N; i++) res[i] = frand();
    vmc_gemm_epi e = VMC_GEMM_EPI_NONE;
    e.bias = s % 4 != 1 ? bias : NULL;
    e.res = s % 4 != 2 ? res : NULL;
    e.ldr = rp.N, e.lo = -0.5f, e.hi = s % 2 ? 0.5f : INFINITY;
    for (int v = 0; v < N_RUN_VARIANTS; v++) {
      const run_variant *rv = &k_run_variants[v];
      if (!run_cpu_has(rv)) continue;
      vmc_gemm_args g = {.trans_b = rp.tb, .M = rp.M, .N = rp.N, .K = rp.K,
                         .alpha = rp.alpha, .A = rp.A, .lda = rp.lda, .beta = rp.beta,
                         .ldc = rp.ldc, .epi = &e};
      memcpy(C1, rp.C0, nc * sizeof(float));
      memcpy(C2, rp.C0, nc * sizeof(float));
      g.B = rp.Bm, g.ldb = rp.len, g.C = C1;
      rv->fn(&g); /* the matrix */
      const float *const *rows = (const float *const *)rp.rows;
      if (rv->variant >= 0) {
        g.B = NULL, g.brow = rows, g.C = C2;
        rv->fn(&g);
      } else if (rv->fn == run_dispatch) {
        vmc_sgemm_rows_epi(rp.tb, rp.M, rp.N, rp.K, rp.alpha, rp.A, rp.lda, rows, rp.beta,
                           C2, rp.ldc, &e);
      } else {
        for (int nt = 1; nt <= 3; nt++) {
          vmc_set_threads(nt);
          memcpy(C2, rp.C0, nc * sizeof(float));
          vmc_sgemm_rows_epi_mt(rp.tb, rp.M, rp.N, rp.K, rp.alpha, rp.A, rp.lda, rows,
                                rp.beta, C2, rp.ldc, &e);
          if (bits_differ(C1, C2, nc)) break;
          /* the same split as a team's parts, run in turn (t = nt: none) */
          memcpy(C2, rp.C0, nc * sizeof(float));
          for (int t = nt; t >= 0; t--)
            vmc_sgemm_rows_epi_part(rp.tb, rp.M, rp.N, rp.K, rp.alpha, rp.A, rp.lda, rows,
                                    rp.beta, C2, rp.ldc, &e, t, nt);
          if (bits_differ(C1, C2, nc)) break;
        }
      }
      const size_t diff = bits_differ(C1, C2, nc);
      if (diff)
        vmc_test_fail(__FILE__, __LINE__, "rows epi %s tb=%d M=%d N=%d K=%d: %zu differ",
                      rv->name, rp.tb, rp.M, rp.N, rp.K, diff);
    }
    free(bias);
    free(res);
    free(C1);
    free(C2);
    rows_problem_free(&rp);
  }
  vmc_set_threads(threads_before);
}

/* The packed entries (plain and row-pointer, single and _mt) against the
 * unpacked call of the pack's variant, bit for bit, on one problem. */
static void check_packed(int which, const run_variant *rv, const epi_problem *e,
                         const rows_problem *rp) {
  const problem *p = &e->p;
  vmc_sgemm_packed_a pk;
  vmc_status st = vmc_sgemm_pack_a_variant(which, p->ta, p->M, p->K, p->alpha, p->A,
                                           p->lda, NULL, 0, &pk);
  if (st != VMC_OK) {
    vmc_test_fail(__FILE__, __LINE__, "pack_a: %s", vmc_last_error());
    return;
  }
  CHECK_EQ_INT(pk.bytes, vmc_sgemm_pack_a_bytes_variant(which, p->M, p->K));
  float *want = alloc_floats(c_size(p)), *got = alloc_floats(c_size(p));
  if (!want || !got) {
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
  } else {
    memcpy(want, p->C0, c_size(p) * sizeof(float));
    const vmc_gemm_args g = epi_args(e, want);
    rv->fn(&g);
    for (int form = 0; form < 2; form++) {
      memcpy(got, p->C0, c_size(p) * sizeof(float));
      if (form == 0)
        vmc_sgemm_packed(&pk, p->tb, p->N, p->B, p->ldb, p->beta, got, p->ldc, &e->epi);
      else
        vmc_sgemm_packed_mt(&pk, p->tb, p->N, p->B, p->ldb, p->beta, got, p->ldc, &e->epi);
      const size_t diff = bits_differ(want, got, c_size(p));
      if (diff)
        vmc_test_fail(__FILE__, __LINE__,
                      "packed%s %s ta=%d tb=%d M=%d N=%d K=%d alpha=%g: %zu differ",
                      form ? "_mt" : "", rv->name, p->ta, p->tb, p->M, p->N, p->K,
                      p->alpha, diff);
    }
  }
  free(want);
  free(got);
  vmc_sgemm_packed_a_free(&pk);
  if (!rp) return;
  /* Row pointers: the pack of the rows problem's A (not transposed). */
  st = vmc_sgemm_pack_a_variant(which, 0, rp->M, rp->K, rp->alpha, rp->A, rp->lda, NULL, 0,
                                &pk);
  if (st != VMC_OK) {
    vmc_test_fail(__FILE__, __LINE__, "pack_a: %s", vmc_last_error());
    return;
  }
  const size_t nc = (size_t)rp->M * rp->ldc;
  want = alloc_floats(nc), got = alloc_floats(nc);
  if (want && got) {
    vmc_gemm_epi ep = VMC_GEMM_EPI_NONE;
    ep.lo = -0.5f;
    ep.bias = rp->A; /* any M floats */
    memcpy(want, rp->C0, nc * sizeof(float));
    const vmc_gemm_args g = {.trans_b = rp->tb, .M = rp->M, .N = rp->N, .K = rp->K,
                             .alpha = rp->alpha, .A = rp->A, .lda = rp->lda,
                             .brow = (const float *const *)rp->rows, .beta = rp->beta,
                             .C = want, .ldc = rp->ldc, .epi = &ep};
    rv->fn(&g);
    static const char *forms[] = {"", "_mt", "_part"};
    for (int form = 0; form < 3; form++) {
      memcpy(got, rp->C0, nc * sizeof(float));
      const float *const *rows = (const float *const *)rp->rows;
      if (form == 0)
        vmc_sgemm_rows_packed(&pk, rp->tb, rp->N, rows, rp->beta, got, rp->ldc, &ep);
      else if (form == 1)
        vmc_sgemm_rows_packed_mt(&pk, rp->tb, rp->N, rows, rp->beta, got, rp->ldc, &ep);
      else /* a team of three's parts, in turn */
        for (int t = 0; t < 3; t++)
          vmc_sgemm_rows_packed_part(&pk, rp->tb, rp->N, rows, rp->beta, got, rp->ldc, &ep, t,
                                     3);
      const size_t diff = bits_differ(want, got, nc);
      if (diff)
        vmc_test_fail(__FILE__, __LINE__, "rows_packed%s %s tb=%d M=%d N=%d K=%d: %zu differ",
                      forms[form], rv->name, rp->tb, rp->M, rp->N, rp->K, diff);
    }
  }
  free(want);
  free(got);
  vmc_sgemm_packed_a_free(&pk);
}

TEST(gemm_packed_bit_identical) {
  /* M, N, K below, at and above the tiles and blocks (KC 256 / 384, MC 96,
   * NC 1024), both transposes of A and B, alpha 1 (whose unpacked call may
   * read A in place) and not, every epilogue kind, on 1 and 3 threads. */
  static const int shapes[][3] = {{1, 1, 1},     {5, 17, 7},    {8, 16, 9},
                                  {9, 33, 385},  {17, 70, 800}, {100, 9, 257},
                                  {129, 1030, 40}, {300, 16, 144}, {64, 49, 576}};
  const int threads_before = vmc_get_threads();
  for (int v = 0; v < 3; v++) {
    const run_variant *rv = &k_run_variants[v];
    if (!run_cpu_has(rv)) continue;
    for (int s = 0; s < 9; s++) {
      for (int t = 0; t < 4; t++) {
        vmc_set_threads(t % 2 ? 3 : 1);
        const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        const float alpha = (s + t) % 2 ? 1.0f : -0.75f;
        epi_problem e;
        rows_problem rp;
        REQUIRE(epi_problem_init(&e, t & 1, t >> 1, M, N, K, t, alpha, k_epi_betas[(s + t) % 3],
                                 (s + t) % N_EPI_KINDS));
        const int with_rows = t < 2;
        if (with_rows)
          REQUIRE(rows_problem_init(&rp, t, M, N, K, K + 1, 2, alpha, k_epi_betas[s % 3], 0, 7,
                                    23));
        check_packed(rv->variant, rv, &e, with_rows ? &rp : NULL);
        epi_problem_free(&e);
        if (with_rows) rows_problem_free(&rp);
      }
    }
  }
  vmc_set_threads(threads_before);
}

TEST(gemm_a_transposed_in_place_bit_identical) {
  /* op(A) = A^T with alpha 1 and N <= 64 reads A in place; where it reads
   * more than 3 MiB of A (K rows of M floats) it walks K in sub-slices of
   * A's rows, carrying each tile's sums from one to the next.  Its C columns
   * must equal, bit for bit, those of the same call on 65 columns of B
   * (which packs A), and the reference within the tolerance: below and above
   * the 3 MiB, rows of 9 to 580 floats (sub-slices from 112 rows down to the
   * 32-row floor, and none: short rows), lda equal to M, up to 2M (whole
   * rows fetched ahead) and well above, ragged M and N, N up to 64, B in
   * place (M <= 64) and packed, both transposes of B (one each for the big
   * ones), 1 to 3 threads, every variant the CPU runs.  The last streams
   * 6 MiB of whole rows (lda == M), with ragged sub-slices at the end of
   * each K slice and of K. */
  static const int shapes[][4] = {
      {144, 16, 1000, 0},  {150, 32, 700, 3},   {576, 24, 300, 4},  {9, 16, 1500, 0},
      {31, 8, 530, 5},     {301, 13, 1100, 1},  {64, 40, 900, 0},   {40, 17, 2000, 200},
      {72, 16, 11000, 60}, {40, 32, 19700, 60}, {31, 40, 25400, 40}, {33, 56, 23850, 33},
      {576, 8, 1400, 4},   {145, 20, 10901, 0}};
  enum { N_SHAPES = (int)(sizeof shapes / sizeof shapes[0]), N_SMALL = 8 };
  const int threads_before = vmc_get_threads();
  for (int s = 0; s < N_SHAPES; s++) {
    for (int tb = s < N_SMALL ? 0 : s % 2; tb < (s < N_SMALL ? 2 : s % 2 + 1); tb++) {
      const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], N2 = 65;
      const float beta = k_betas[(s + tb) % 3];
      problem p; /* the wide problem; the reference of the narrow one */
      REQUIRE(problem_init_cols(&p, 1, tb, M, N2, K, shapes[s][3], 1.0f, beta, N));
      float *wide = alloc_floats(c_size(&p)), *narrow = alloc_floats(c_size(&p));
      REQUIRE(wide && narrow);
      for (int v = 0; v < N_VARIANTS; v++) {
        const variant *var = &k_variants[v];
        if ((vmc_cpu_features() & var->needs) != var->needs) continue;
        /* the last on one thread: vmc_sgemm_mt's M split leaves lda > M */
        vmc_set_threads(s == N_SHAPES - 1 ? 1 : 1 + (s + tb + v) % 3);
        memcpy(wide, p.C0, c_size(&p) * sizeof(float));
        memcpy(narrow, p.C0, c_size(&p) * sizeof(float));
        var->fn(1, tb, M, N2, K, 1.0f, p.A, p.lda, p.B, p.ldb, beta, wide, p.ldc);
        var->fn(1, tb, M, N, K, 1.0f, p.A, p.lda, p.B, p.ldb, beta, narrow, p.ldc);
        size_t diff = 0, far = 0;
        for (int i = 0; i < M; i++) {
          const size_t row = (size_t)i * p.ldc;
          diff += bits_differ(wide + row, narrow + row, (size_t)N);
          for (int j = 0; j < N; j++)
            far += !(fabsf(narrow[row + j] - p.ref[row + j]) <= p.tol[row + j]);
          for (int j = N; j < p.ldc; j++) /* columns past N untouched */
            far += memcmp(&narrow[row + j], &p.C0[row + j], sizeof(float)) != 0;
        }
        if (diff || far)
          vmc_test_fail(__FILE__, __LINE__,
                        "%s tb=%d M=%d N=%d K=%d lda=%d: %zu differ from N=%d, %zu wrong",
                        var->name, tb, M, N, K, p.lda, diff, N2, far);
      }
      free(wide);
      free(narrow);
      problem_free(&p);
    }
  }
  vmc_set_threads(threads_before);
}

/* The kernels' per-thread scratch (core.h): 64-byte aligned, one buffer per
 * slot, kept while big enough (its contents with it), grown otherwise;
 * every thread its own. */
TEST(thread_scratch_slots_and_threads) {
  char *a = vmc_thread_scratch(VMC_SCRATCH_GEMM_A, 100);
  char *b = vmc_thread_scratch(VMC_SCRATCH_GEMM_B, 100);
  REQUIRE(a && b && a != b);
  CHECK((uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0);
  memset(a, 7, 100);
  CHECK(vmc_thread_scratch(VMC_SCRATCH_GEMM_A, 50) == a && a[99] == 7);
  char *big = vmc_thread_scratch(VMC_SCRATCH_GEMM_A, 1u << 20);
  REQUIRE(big);
  CHECK((uintptr_t)big % 64 == 0);
  memset(big, 1, 1u << 20); /* all of it ours (ASan checks) */
  CHECK(vmc_thread_scratch(VMC_SCRATCH_GEMM_B, 100) == b);
  void *per[2] = {NULL, NULL};
#pragma omp parallel num_threads(2)
  {
    const int t = omp_get_thread_num();
    if (t < 2) {
      per[t] = vmc_thread_scratch(VMC_SCRATCH_QGEMM, 4096);
      if (per[t]) memset(per[t], t, 4096);
    }
  }
  if (per[0] && per[1]) CHECK(per[0] != per[1]);
}

TEST(gemm_pack_a_buffers_and_errors) {
  /* A caller's buffer (the arena case) gives the same pack as an allocated
   * one; a small or misaligned buffer, a bad variant or shape is refused; an
   * allocation failure is VMC_ERR_NOMEM; M or K == 0 packs nothing and the
   * GEMM is C = beta * C + epilogue. */
  float A[20 * 30];
  for (int i = 0; i < 600; i++) A[i] = frand();
  vmc_sgemm_packed_a p1, p2;
  REQUIRE_OK(vmc_sgemm_pack_a(1, 20, 30, 0.5f, A, 20, NULL, 0, &p1));
  const size_t bytes = vmc_sgemm_pack_a_bytes(20, 30);
  CHECK_EQ_INT(p1.bytes, bytes);
  CHECK(p1.owned != NULL && p1.M == 20 && p1.K == 30 && p1.alpha == 0.5f);
  void *buf = vmc_alloc(bytes + 64);
  REQUIRE(buf);
  REQUIRE_OK(vmc_sgemm_pack_a(1, 20, 30, 0.5f, A, 20, buf, bytes, &p2));
  CHECK(p2.owned == NULL && p2.data == buf);
  CHECK(memcmp(p1.data, p2.data, bytes) == 0);
  vmc_sgemm_packed_a_free(&p2); /* the caller's buffer: not freed */
  CHECK(vmc_sgemm_pack_a(1, 20, 30, 0.5f, A, 20, buf, bytes - 4, &p2) ==
        VMC_ERR_INVALID_ARG);
  CHECK(vmc_sgemm_pack_a(1, 20, 30, 0.5f, A, 20, (char *)buf + 4, bytes, &p2) ==
        VMC_ERR_INVALID_ARG);
  CHECK(vmc_sgemm_pack_a(0, 20, 30, 0.5f, A, 29, NULL, 0, &p2) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_sgemm_pack_a(0, -1, 30, 0.5f, A, 30, NULL, 0, &p2) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_sgemm_pack_a_variant(7, 0, 2, 2, 1.0f, A, 2, NULL, 0, &p2) ==
        VMC_ERR_INVALID_ARG);
  vmc_free(buf);
  vmc_sgemm_packed_a_free(&p1);
  vmc_sgemm_packed_a_free(NULL);
  vmc_fail_alloc_after(0);
  CHECK(vmc_sgemm_pack_a(0, 20, 30, 1.0f, A, 30, NULL, 0, &p1) == VMC_ERR_NOMEM);
  vmc_fail_alloc_after(-1);
  REQUIRE_OK(vmc_sgemm_pack_a(0, 3, 0, 1.0f, NULL, 0, NULL, 0, &p1));
  const float bias[3] = {1, 2, 3};
  vmc_gemm_epi e = VMC_GEMM_EPI_NONE;
  e.bias = bias;
  float C[3 * 2] = {1, 1, 1, 1, 1, 1};
  vmc_sgemm_packed(&p1, 0, 2, NULL, 2, 0.5f, C, 2, &e);
  for (int i = 0; i < 6; i++) CHECK(C[i] == 0.5f + bias[i / 2]);
  vmc_sgemm_packed_a_free(&p1);
}
