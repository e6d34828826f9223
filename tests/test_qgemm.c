/* int8 kernels: every GEMM variant the CPU runs against the scalar reference,
 * bit for bit, over edge shapes (M, N, K below/at/above each register tile,
 * K not a multiple of 4, padded ldb/ldc whose padding must stay untouched),
 * every output kind, clamps and zero points 0/128/255; the reference itself
 * against an independent int64 sum; operands at -128/127/0/255 where a
 * saturating s16 step would go wrong; vmc_qgemm_mt = single thread; the
 * rounding rule at ties, saturation and non-finite scales; int4 packing;
 * the depthwise variants against a naive loop.  Variants the CPU lacks are
 * skipped. */
#include "kernels/qgemm.h"
#include "test.h"

#include <float.h>
#include <stdint.h>
#include <stdlib.h>

static uint32_t g_seed = 2024u;
static uint32_t rnd(void) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return g_seed >> 8;
}
static int rnd_in(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }

/* A (s8, M x lda) packed for v, then C = epi(A * B) by v. */
static void run_v(const vmc_qgemm_variant *v, int mt, int M, int N, int K,
                  const int8_t *A, int lda, const uint8_t *B, int ldb, const int32_t *boff,
                  const vmc_qepi *epi, void *C, int ldc) {
  const size_t bytes = vmc_qgemm_packed_a_size(v, M, K);
  void *pa = malloc(bytes ? bytes : 1);
  if (!pa) return;
  vmc_qgemm_pack_a(v, M, K, A, lda, pa);
  if (mt)
    vmc_qgemm_run_mt(v, M, N, K, pa, B, ldb, boff, epi, C, ldc);
  else
    v->run(M, N, K, pa, B, ldb, boff, epi, C, ldc);
  free(pa);
}

/* One problem with its operands, epilogue parameters and padded C. */
typedef struct qproblem {
  int M, N, K, lda, ldb, ldc;
  int8_t *A;
  uint8_t *B;
  int32_t *bias;
  float *scale;
  vmc_qepi epi;
  size_t c_bytes;
} qproblem;

static void qproblem_free(qproblem *p) {
  free(p->A);
  free(p->B);
  free(p->bias);
  free(p->scale);
}

/* Operands: kind 0 random, 1 A = -128 / B = 255, 2 A = 127 / B = 255,
 * 3 A alternating -128/127, B alternating 0/255. */
static int qproblem_init(qproblem *p, int M, int N, int K, int pad, int kind) {
  *p = (qproblem){.M = M, .N = N, .K = K, .lda = K + pad, .ldb = N + pad, .ldc = N + pad};
  p->A = malloc((size_t)M * p->lda + 1);
  p->B = malloc((size_t)(K > 0 ? K : 1) * p->ldb);
  p->bias = malloc((size_t)M * sizeof *p->bias);
  p->scale = malloc((size_t)M * sizeof *p->scale);
  if (!p->A || !p->B || !p->bias || !p->scale) return 0;
  for (size_t i = 0; i < (size_t)M * p->lda; i++)
    p->A[i] = kind == 0 ? (int8_t)rnd_in(-128, 127)
              : kind == 1 ? -128
              : kind == 2 ? 127
                          : (int8_t)(i % 2 ? 127 : -128);
  for (size_t i = 0; i < (size_t)K * p->ldb; i++)
    p->B[i] = kind == 0 ? (uint8_t)rnd_in(0, 255) : kind == 3 ? (i % 3 ? 255 : 0) : 255;
  for (int m = 0; m < M; m++) {
    p->bias[m] = rnd_in(-40000, 40000);
    p->scale[m] = (float)rnd_in(1, 1000) * 1e-5f;
  }
  return 1;
}

/* For a variant with a pair bound (the narrow AVX2 GEMM), A's weights
 * redrawn within it: kind 0 pairs at random (first weight anywhere in s8, the
 * second within what is left), 1 and 2 every weight -64 / 64, 3 pairs
 * (-128, 0) and (127, 1), all at the bound with B = 255. */
static void qproblem_fit(const vmc_qgemm_variant *v, qproblem *p, int kind) {
  if (!v->pair_max) return;
  for (int m = 0; m < p->M; m++)
    for (int k = 0; k < p->lda; k += 2) {
      int8_t *a = p->A + (size_t)m * p->lda + k;
      int x, y;
      if (kind == 0) {
        x = rnd_in(-128, 127);
        const int left = v->pair_max - (x < 0 ? -x : x);
        y = rnd_in(-left, left > 127 ? 127 : left);
      } else if (kind == 3) {
        x = k % 4 ? 127 : -128;
        y = k % 4 ? 1 : 0;
      } else {
        x = y = kind == 1 ? -64 : 64;
      }
      a[0] = (int8_t)x;
      if (k + 1 < p->lda) a[1] = (int8_t)y;
    }
}

/* The epilogue variant e of the problem (every output kind, clamps, zero
 * points 0/128/255, per-row and per-tensor scale, with and without bias). */
static void qproblem_epi(qproblem *p, int e) {
  static const int32_t zps[] = {0, 128, 255};
  vmc_qepi q = {.bias = e % 5 == 4 ? NULL : p->bias, .scale = p->scale,
                .per_tensor = e % 3 == 2, .zero_point = zps[e % 3], .lo = -1000,
                .hi = 1000, .out = (vmc_qout)(e % 4)};
  if (q.out == VMC_QOUT_S8) q.zero_point -= 128;
  if (e % 7 == 1) q.lo = q.zero_point; /* fused ReLU */
  if (e % 7 == 3) q.lo = 10, q.hi = 100;
  p->epi = q;
  p->c_bytes = (size_t)p->M * p->ldc * vmc_qout_bytes(q.out);
}

/* v (and its _mt entry) against the reference on p, whole C buffers compared
 * (padding columns prefilled and required untouched); then again with B's
 * rows given by offsets (boff) into a pool holding them in reverse order at
 * odd addresses. */
static void check_problem(const vmc_qgemm_variant *v, qproblem *p, const char *what) {
  uint8_t *ref = malloc(p->c_bytes + 1), *got = malloc(p->c_bytes + 1);
  if (!ref || !got) {
    free(ref);
    free(got);
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return;
  }
  const size_t stride = (size_t)p->N + 3;
  uint8_t *pool = malloc((size_t)p->K * stride + 1);
  int32_t *boff = malloc((size_t)(p->K > 0 ? p->K : 1) * sizeof *boff);
  if (!pool || !boff) {
    free(ref), free(got), free(pool), free(boff);
    vmc_test_fail(__FILE__, __LINE__, "out of memory");
    return;
  }
  for (int k = 0; k < p->K; k++) {
    boff[k] = (int32_t)((size_t)(p->K - 1 - k) * stride + 1);
    memcpy(pool + boff[k], p->B + (size_t)k * p->ldb, (size_t)p->N);
  }
  memset(ref, 0xa5, p->c_bytes);
  run_v(&vmc_qgemm_u8s8s32__ref, 0, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb, NULL,
        &p->epi, ref, p->ldc);
  for (int mt = 0; mt < 4; mt++) {
    memset(got, 0xa5, p->c_bytes);
    if (mt < 2)
      run_v(v, mt, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb, NULL, &p->epi, got, p->ldc);
    else
      run_v(v, mt - 2, p->M, p->N, p->K, p->A, p->lda, pool, 0, boff, &p->epi, got, p->ldc);
    if (memcmp(ref, got, p->c_bytes) != 0) {
      size_t i = 0;
      while (ref[i] == got[i]) i++;
      vmc_test_fail(__FILE__, __LINE__,
                    "%s%s%s %s: M=%d N=%d K=%d ldc=%d out=%d zp=%d lo=%d hi=%d: byte %zu "
                    "differs (%d vs ref %d)",
                    v->name, mt % 2 ? " mt" : "", mt >= 2 ? " row offsets" : "", what, p->M, p->N, p->K, p->ldc,
                    (int)p->epi.out, p->epi.zero_point, p->epi.lo, p->epi.hi, i, got[i],
                    ref[i]);
      break;
    }
  }
  free(ref), free(got), free(pool), free(boff);
}

static void check_variant(const vmc_qgemm_variant *v) {
  if (!vmc_qgemm_variant_ok(v)) SKIP("the CPU lacks this variant's ISA");
  static const int Ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 25, 33};
  static const int Ns[] = {1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 47, 48, 49, 65};
  static const int Ks[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 36, 63, 64, 145};
  const int nm = (int)(sizeof Ms / sizeof *Ms), nn = (int)(sizeof Ns / sizeof *Ns);
  const int nk = (int)(sizeof Ks / sizeof *Ks);
  int e = 0;
  for (int i = 0; i < nm; i++)
    for (int j = 0; j < nn; j++) {
      const int K = Ks[(i * 7 + j * 3) % nk], pad = (i + j) % 3 == 0 ? 0 : (i + j) % 3 == 1 ? 3 : 17;
      qproblem p;
      if (!qproblem_init(&p, Ms[i], Ns[j], K, pad, 0)) {
        qproblem_free(&p);
        REQUIRE(0);
      }
      qproblem_fit(v, &p, 0);
      for (int r = 0; r < 2; r++) {
        qproblem_epi(&p, e++);
        check_problem(v, &p, "edge");
      }
      qproblem_free(&p);
      if (vmc_test_failed_now()) return;
    }
  /* Larger K and the extreme operands (a saturating s16 step would show). */
  for (int kind = 1; kind <= 3; kind++)
    for (int out = 0; out < 4; out++) {
      qproblem p;
      if (!qproblem_init(&p, 19, 37, 1030, 5, kind)) {
        qproblem_free(&p);
        REQUIRE(0);
      }
      qproblem_fit(v, &p, kind);
      qproblem_epi(&p, out);
      p.epi.out = (vmc_qout)out;
      p.epi.scale = p.scale;
      for (int m = 0; m < p.M; m++) p.scale[m] = 1.0f / 65536.0f;
      check_problem(v, &p, "extreme");
      qproblem_free(&p);
    }
}

TEST(qgemm_ref_is_exact) {
  /* The reference's S32 output against an independent int64 sum. */
  for (int kind = 0; kind <= 3; kind++) {
    qproblem p;
    if (!qproblem_init(&p, 7, 13, kind ? 1030 : 77, 2, kind)) {
      qproblem_free(&p);
      REQUIRE(0);
    }
    qproblem_epi(&p, 2);
    p.epi.out = VMC_QOUT_S32;
    p.epi.bias = p.bias;
    int32_t *C = malloc((size_t)p.M * p.ldc * sizeof *C);
    REQUIRE(C);
    run_v(&vmc_qgemm_u8s8s32__ref, 0, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, NULL, &p.epi, C,
          p.ldc);
    for (int m = 0; m < p.M; m++)
      for (int n = 0; n < p.N; n++) {
        int64_t s = p.bias[m];
        for (int k = 0; k < p.K; k++)
          s += (int64_t)p.A[(size_t)m * p.lda + k] * p.B[(size_t)k * p.ldb + n];
        if (C[(size_t)m * p.ldc + n] != s) {
          vmc_test_fail(__FILE__, __LINE__, "kind %d (%d,%d): %d vs %lld", kind, m, n,
                        C[(size_t)m * p.ldc + n], (long long)s);
          m = p.M;
          break;
        }
      }
    if (kind == 1) CHECK_EQ_INT(C[0], p.bias[0] - 128 * 255 * 1030);
    free(C);
    qproblem_free(&p);
  }
}

TEST(qgemm_avx2_vs_ref) { check_variant(&vmc_qgemm_u8s8s32_6x16__avx2); }
TEST(qgemm_avx2_narrow_vs_ref) { check_variant(&vmc_qgemm_u8s8s32_6x16_narrow__avx2); }

/* The narrow GEMM's bound: the pairs of a row (an odd K's last weight alone),
 * the choice it drives, and that the bound is tight: a pair of 128 with B =
 * 255 gives the reference, 129 does not (vpmaddubsw saturates). */
TEST(qgemm_narrow_bound) {
  const int8_t A[2][5] = {{100, -28, 3, 4, -90}, {-128, 0, 7, -7, 127}};
  CHECK_EQ_INT(vmc_qgemm_pair_max(1, 5, A[0], 5, 0), 128);
  CHECK_EQ_INT(vmc_qgemm_pair_max(2, 5, A, 5, 0), 128);
  CHECK_EQ_INT(vmc_qgemm_pair_max(2, 4, A, 5, 0), 128);
  CHECK_EQ_INT(vmc_qgemm_pair_max(1, 2, A[1] + 1, 5, 0), 7);
  CHECK_EQ_INT(vmc_qgemm_pair_max(1, 4, A[1] + 1, 5, 0), 134);
  const int8_t B2[4] = {127, 2, -3, 1};
  CHECK_EQ_INT(vmc_qgemm_pair_max(1, 4, B2, 4, 0), 129);
  CHECK_EQ_INT(vmc_qgemm_pair_max(1, 1, B2, 4, 0), 127);
  uint8_t a4[2];
  const int8_t s4[4] = {-8, 7, 5, -1};
  vmc_s4_pack(s4, 4, a4);
  CHECK_EQ_INT(vmc_qgemm_pair_max(1, 4, a4, 4, 1), 15);
  CHECK_EQ_INT(vmc_qgemm_pair_max(2, 1, a4, 3, 1), 8); /* odd lda: rows start mid-byte */

  const vmc_qgemm_variant *w = &vmc_qgemm_u8s8s32_6x16__avx2,
                          *n = &vmc_qgemm_u8s8s32_6x16_narrow__avx2;
  CHECK(vmc_qgemm_for_weights(w, 128, 1) == n);
  CHECK(vmc_qgemm_for_weights(w, 129, 1) == w);
  CHECK(vmc_qgemm_for_weights(w, 15, 0) == w);
  CHECK(vmc_qgemm_for_weights(n, 128, 0) == n);
  CHECK(vmc_qgemm_for_weights(n, 129, 0) == w);
  CHECK(vmc_qgemm_for_weights(n, 129, 1) == w);
  for (int vi = 0; vi < vmc_qgemm_variant_count; vi++) {
    const vmc_qgemm_variant *v = vmc_qgemm_variants[vi];
    if (v != w && v != n) CHECK(vmc_qgemm_for_weights(v, 255, 1) == v);
  }

  if (!vmc_qgemm_variant_ok(n)) SKIP("the CPU lacks AVX2");
  for (int pair = 128; pair <= 129; pair++) {
    qproblem p;
    if (!qproblem_init(&p, 6, 16, 64, 0, 2)) {
      qproblem_free(&p);
      REQUIRE(0);
    }
    for (int i = 0; i < p.M * p.lda; i++) p.A[i] = (int8_t)(i % 2 ? pair - 127 : 127);
    qproblem_epi(&p, 2);
    p.epi.out = VMC_QOUT_S32;
    int32_t *ref = malloc(p.c_bytes), *got = malloc(p.c_bytes);
    REQUIRE(ref && got);
    run_v(&vmc_qgemm_u8s8s32__ref, 0, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, NULL, &p.epi, ref,
          p.ldc);
    run_v(n, 0, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, NULL, &p.epi, got, p.ldc);
    CHECK_EQ_INT(memcmp(ref, got, p.c_bytes) == 0, pair == 128);
    free(ref);
    free(got);
    qproblem_free(&p);
  }
}
TEST(qgemm_avxvnni_vs_ref) { check_variant(&vmc_qgemm_u8s8s32_4x24__avxvnni); }
TEST(qgemm_avx512vnni_vs_ref) { check_variant(&vmc_qgemm_u8s8s32_8x32__avx512vnni); }

TEST(qgemm_dispatch) {
  const vmc_qgemm_variant *b = vmc_qgemm_best();
  CHECK(vmc_qgemm_variant_ok(b));
  const unsigned f = vmc_cpu_features();
  if (!strcmp(vmc_isa_name(), "avx512") && (f & VMC_CPU_AVX512VNNI))
    CHECK(b == &vmc_qgemm_u8s8s32_8x32__avx512vnni);
  if (!strcmp(vmc_isa_name(), "ref")) CHECK(b == &vmc_qgemm_u8s8s32__ref);
  /* The entry points with A packed by vmc_qgemm_pack_a(NULL, ...). */
  qproblem p;
  if (!qproblem_init(&p, 40, 300, 150, 1, 0)) {
    qproblem_free(&p);
    REQUIRE(0);
  }
  qproblem_epi(&p, 0);
  uint8_t *ref = malloc(p.c_bytes), *got = malloc(p.c_bytes);
  void *pa = malloc(vmc_qgemm_packed_a_size(NULL, p.M, p.K));
  REQUIRE(ref && got && pa);
  memset(ref, 0, p.c_bytes);
  memset(got, 0, p.c_bytes);
  run_v(&vmc_qgemm_u8s8s32__ref, 0, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, NULL, &p.epi, ref,
        p.ldc);
  vmc_qgemm_pack_a(NULL, p.M, p.K, p.A, p.lda, pa);
  vmc_qgemm(p.M, p.N, p.K, pa, p.B, p.ldb, &p.epi, got, p.ldc);
  CHECK(memcmp(ref, got, p.c_bytes) == 0);
  memset(got, 0, p.c_bytes);
  vmc_qgemm_mt(p.M, p.N, p.K, pa, p.B, p.ldb, &p.epi, got, p.ldc);
  CHECK(memcmp(ref, got, p.c_bytes) == 0);
  free(ref);
  free(got);
  free(pa);
  qproblem_free(&p);
}

/* vmc_qgemm_run_mt on 1..3 threads, split by N and by M, = single thread. */
TEST(qgemm_mt_equals_single) {
  const int before = vmc_get_threads();
  static const int shapes[][3] = {{64, 784, 144}, {16, 196, 288}, {200, 20, 64},
                                  {33, 70, 300}, {1000, 9, 40}};
  for (int vi = 0; vi < vmc_qgemm_variant_count; vi++) {
    const vmc_qgemm_variant *v = vmc_qgemm_variants[vi];
    if (!vmc_qgemm_variant_ok(v) || v == &vmc_qgemm_u8s8s32__ref) continue;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
      qproblem p;
      if (!qproblem_init(&p, shapes[s][0], shapes[s][1], shapes[s][2], 3, 0)) {
        qproblem_free(&p);
        REQUIRE(0);
      }
      qproblem_fit(v, &p, 0);
      qproblem_epi(&p, (int)s);
      uint8_t *one = malloc(p.c_bytes), *many = malloc(p.c_bytes);
      REQUIRE(one && many);
      memset(one, 0x5a, p.c_bytes);
      run_v(v, 0, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, NULL, &p.epi, one, p.ldc);
      for (int nt = 1; nt <= 3; nt++) {
        vmc_set_threads(nt);
        memset(many, 0x5a, p.c_bytes);
        run_v(v, 1, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, NULL, &p.epi, many, p.ldc);
        if (memcmp(one, many, p.c_bytes) != 0)
          vmc_test_fail(__FILE__, __LINE__, "%s %dx%dx%d on %d threads differs", v->name,
                        p.M, p.N, p.K, nt);
      }
      free(one);
      free(many);
      qproblem_free(&p);
    }
  }
  vmc_set_threads(before);
}

/* 1 x N x 1 GEMMs with A = 1 and B = n, so acc + bias = n + bias: y for
 * chosen t and scale, by every variant and the depthwise kernels. */
static void requant_case(vmc_qout out, float scale, int32_t zp, int32_t lo, int32_t hi,
                         const int32_t *ts, const int32_t *want, int n) {
  uint8_t B[64];
  int8_t A[1] = {1};
  int32_t bias = ts[0];
  for (int i = 0; i < n; i++) B[i] = (uint8_t)(ts[i] - ts[0]); /* ts ascending */
  const vmc_qepi epi = {&bias, &scale, 1, zp, lo, hi, out};
  for (int vi = 0; vi < vmc_qgemm_variant_count; vi++) {
    const vmc_qgemm_variant *v = vmc_qgemm_variants[vi];
    if (!vmc_qgemm_variant_ok(v)) continue;
    uint8_t C[64 * 4];
    run_v(v, 0, 1, n, 1, A, 1, B, n, NULL, &epi, C, n);
    for (int i = 0; i < n; i++) {
      const int32_t y = out == VMC_QOUT_U8 ? C[i] : (int8_t)C[i];
      if (y != want[i])
        vmc_test_fail(__FILE__, __LINE__, "%s: t=%d scale=%g zp=%d -> %d, want %d",
                      v->name, ts[i], (double)scale, zp, y, want[i]);
    }
  }
  /* Pixel-major direct and depthwise convolutions: a row of n pixels of
   * 4 channels (byte t - t0, then zeros), a 1x1 kernel of weight 1 on
   * channel 0 (direct) or on each channel (depthwise, channel 0 read). */
  uint8_t x4[64 * 4] = {0};
  for (int i = 0; i < n; i++) x4[4 * i] = B[i];
  int8_t w4[4] = {1, 0, 0, 0}, wdw[4] = {1, 1, 1, 1};
  _Alignas(64) int8_t wpk[64];
  _Alignas(64) int8_t wdp[256];
  vmc_qconv_pack_w(1, 1, w4, wpk);
  vmc_qdwp_pack_w(4, 1, wdw, wdp);
  const int32_t koff = 0, bias4[4] = {bias, bias, bias, bias};
  const float scale4[4] = {scale, scale, scale, scale};
  const vmc_qepi epi4 = {bias4, scale4, 0, zp, lo, hi, out};
  const vmc_qconv_params cp = {1, n, 1, 1, 4 * (size_t)n, 4, (size_t)n, 1, &koff};
  const vmc_qdwp_params wp = {1, n, 4, 1, 1, 1, 1, 4 * (size_t)n, 4, 4 * (size_t)n, 4};
  const vmc_qconv_fn convs[] = {vmc_qconv__ref, vmc_qconv_best()};
  const vmc_qdwp_fn dwps[] = {vmc_qdwp__ref, vmc_qdwp_best()};
  for (int d = 0; d < 2; d++) {
    uint8_t yc[64], yd[64 * 4];
    if (convs[d]) convs[d](&cp, x4, wpk, &epi, NULL, yc);
    if (dwps[d]) dwps[d](&wp, x4, wdp, &epi4, yd);
    for (int i = 0; i < n; i++) {
      const int32_t gc = out == VMC_QOUT_U8 ? yc[i] : (int8_t)yc[i];
      const int32_t gd = out == VMC_QOUT_U8 ? yd[4 * i] : (int8_t)yd[4 * i];
      if (convs[d] && gc != want[i])
        vmc_test_fail(__FILE__, __LINE__, "qconv %d: t=%d -> %d, want %d", d, ts[i], gc, want[i]);
      if (dwps[d] && gd != want[i])
        vmc_test_fail(__FILE__, __LINE__, "qdwp %d: t=%d -> %d, want %d", d, ts[i], gd, want[i]);
    }
  }
  /* Depthwise: a 1 x n plane, 1x1 kernel of weight 1. */
  static const vmc_qdwconv_fn dws[] = {vmc_qdwconv__ref, vmc_qdwconv__avx2,
                                       vmc_qdwconv__avx512};
  const int ok[] = {1, vmc_cpu_runs(VMC_ISA_AVX2),
                    vmc_qgemm_variant_ok(&vmc_qgemm_u8s8s32_8x32__avx512vnni)};
  const vmc_qdw_params dp = {1, n, 1, 1, 1, 1, 0, 0, 0};
  for (int d = 0; d < 3; d++) {
    if (!ok[d]) continue;
    uint8_t y[64];
    dws[d](&dp, B, (const int8_t *)A, &epi, y);
    for (int i = 0; i < n; i++) {
      const int32_t got = out == VMC_QOUT_U8 ? y[i] : (int8_t)y[i];
      if (got != want[i])
        vmc_test_fail(__FILE__, __LINE__, "dwconv %d: t=%d -> %d, want %d", d, ts[i], got,
                      want[i]);
    }
  }
}

TEST(qgemm_rounding_rule) {
  /* Ties to even: t * 0.5 for t = -7..7 (n = 15 lanes covers the SIMD body
   * and, for n < a vector, the ragged store). */
  int32_t ts[40], want[40];
  for (int i = 0; i < 15; i++) {
    ts[i] = i - 7;
    want[i] = (int32_t)nearbyintf((float)ts[i] * 0.5f);
  }
  /* -3.5 -> -4, -2.5 -> -2, -1.5 -> -2, -0.5 -> 0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2,
   * 3.5 -> 4 */
  CHECK_EQ_INT(want[0], -4);
  CHECK_EQ_INT(want[2], -2);
  CHECK_EQ_INT(want[4], -2);
  CHECK_EQ_INT(want[6], 0);
  CHECK_EQ_INT(want[8], 0);
  CHECK_EQ_INT(want[10], 2);
  CHECK_EQ_INT(want[12], 2);
  CHECK_EQ_INT(want[14], 4);
  requant_case(VMC_QOUT_S8, 0.5f, 0, -128, 127, ts, want, 15);
  int32_t want_u8[40];
  for (int i = 0; i < 15; i++) want_u8[i] = want[i] + 128;
  requant_case(VMC_QOUT_U8, 0.5f, 128, 0, 255, ts, want_u8, 15);
  /* Saturation and clamps on 33 lanes: t = 200 * (i - 16), scale 1. */
  for (int i = 0; i < 33; i++) ts[i] = -300000 + 7 * i;
  for (int i = 0; i < 33; i++) want[i] = 0;
  requant_case(VMC_QOUT_U8, 1.0f, 255, 0, 255, ts, want, 33); /* far below: 0 */
  for (int i = 0; i < 33; i++) ts[i] = 100 + 7 * i, want[i] = ts[i] - 5 > 120 ? 120 : ts[i] - 5;
  requant_case(VMC_QOUT_S8, 1.0f, -5, -100, 120, ts, want, 33);
  for (int i = 0; i < 33; i++) ts[i] = 2000000000 + i, want[i] = 127;
  requant_case(VMC_QOUT_S8, 4.0f, 0, -128, 1000, ts, want, 33); /* beyond int32 */
  /* Far beyond s16 but below 2^30 (the kernels' write-back without the fp32
   * clamp, where it saturates in s16), with the largest zero points. */
  for (int i = 0; i < 33; i++) ts[i] = 300000 + 7 * i, want[i] = 255;
  requant_case(VMC_QOUT_U8, 1.0f, 255, 0, 255, ts, want, 33);
  for (int i = 0; i < 33; i++) want[i] = 127;
  requant_case(VMC_QOUT_S8, 3000.0f, -128, -128, 127, ts, want, 33); /* ~2^30 */
  for (int i = 0; i < 33; i++) ts[i] = -300000 + 7 * i, want[i] = -128;
  requant_case(VMC_QOUT_S8, 1.0f, 127, -128, 127, ts, want, 33);
  /* Non-finite scales: +inf -> hi, -inf -> lo, NaN (0 * inf or NaN) -> lo. */
  for (int i = 0; i < 20; i++) ts[i] = 1 + i, want[i] = 200;
  requant_case(VMC_QOUT_U8, INFINITY, 3, 7, 200, ts, want, 20);
  for (int i = 0; i < 20; i++) want[i] = 7;
  requant_case(VMC_QOUT_U8, -INFINITY, 3, 7, 200, ts, want, 20);
  requant_case(VMC_QOUT_U8, NAN, 3, 7, 200, ts, want, 20);
  /* The same with the clamp's low end at the type's minimum (the kernels
   * may clamp there by saturation). */
  for (int i = 0; i < 20; i++) want[i] = 200;
  requant_case(VMC_QOUT_U8, INFINITY, 3, 0, 200, ts, want, 20);
  for (int i = 0; i < 20; i++) want[i] = 0;
  requant_case(VMC_QOUT_U8, -INFINITY, 3, 0, 200, ts, want, 20);
  requant_case(VMC_QOUT_U8, NAN, 3, 0, 200, ts, want, 20);
  for (int i = 0; i < 20; i++) want[i] = -128;
  requant_case(VMC_QOUT_S8, NAN, 0, -128, 100, ts, want, 20);
}

TEST(qgemm_int4) {
  int8_t v[33], back[33];
  uint8_t packed[17];
  for (int i = 0; i < 33; i++) v[i] = (int8_t)(i % 16 - 8);
  CHECK_EQ_INT(vmc_s4_pack(v, 33, packed), 0);
  CHECK_EQ_INT(packed[0], 0x98); /* -8 low, -7 high */
  CHECK_EQ_INT(packed[16] >> 4, 0); /* odd n: high nibble of the last byte 0 */
  vmc_s4_unpack(packed, 33, back);
  CHECK(memcmp(v, back, sizeof v) == 0);
  const int8_t wide[4] = {-9, 8, 127, -128};
  uint8_t pw[2];
  CHECK_EQ_INT(vmc_s4_pack(wide, 4, pw), 4);
  int8_t wb[4];
  vmc_s4_unpack(pw, 4, wb);
  CHECK(wb[0] == -8 && wb[1] == 7 && wb[2] == 7 && wb[3] == -8);

  /* pack_a_s4 (odd lda: rows start mid-byte) = pack_a of the unpacked
   * values, for every variant, and so are the GEMM results. */
  const int M = 11, K = 37, lda = 39;
  int8_t *A = malloc((size_t)M * lda);
  uint8_t *A4 = malloc(((size_t)M * lda + 1) / 2);
  REQUIRE(A && A4);
  for (int i = 0; i < M * lda; i++) A[i] = (int8_t)rnd_in(-8, 7);
  vmc_s4_pack(A, (size_t)M * lda, A4);
  for (int vi = 0; vi < vmc_qgemm_variant_count; vi++) {
    const vmc_qgemm_variant *vv = vmc_qgemm_variants[vi];
    const size_t bytes = vmc_qgemm_packed_a_size(vv, M, K);
    uint8_t *p8 = malloc(bytes), *p4 = malloc(bytes);
    REQUIRE(p8 && p4);
    vmc_qgemm_pack_a(vv, M, K, A, lda, p8);
    vmc_qgemm_pack_a_s4(vv, M, K, A4, lda, p4);
    if (memcmp(p8, p4, bytes) != 0)
      vmc_test_fail(__FILE__, __LINE__, "%s: int4 packing differs", vv->name);
    free(p8);
    free(p4);
  }
  free(A);
  free(A4);
}

/* ---- depthwise ------------------------------------------------------------ */

/* The definition, written independently of the library's reference. */
static void naive_dw(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                     int32_t bias, int32_t *acc) {
  const int oh = vmc_qdw_out_h(p), ow = vmc_qdw_out_w(p);
  for (int oy = 0; oy < oh; oy++)
    for (int ox = 0; ox < ow; ox++) {
      int64_t s = bias;
      for (int i = 0; i < p->kh; i++)
        for (int j = 0; j < p->kw; j++) {
          const int iy = oy * p->sh - p->ph + i, ix = ox * p->sw - p->pw + j;
          const int in = iy >= 0 && iy < p->h && ix >= 0 && ix < p->w;
          s += (int64_t)wk[i * p->kw + j] * (in ? x[iy * p->w + ix] : p->x_zp);
        }
      acc[oy * ow + ox] = (int32_t)s;
    }
}

TEST(qdwconv_vs_naive) {
  static const int hw[][2] = {{1, 1}, {2, 3}, {5, 5}, {7, 7}, {14, 14}, {28, 28},
                              {9, 33}, {3, 40}};
  static const int ks[][2] = {{1, 1}, {3, 3}, {5, 5}, {3, 1}, {1, 3}};
  static const uint8_t zps[] = {0, 128, 255};
  static const vmc_qdwconv_fn fns[] = {vmc_qdwconv__ref, vmc_qdwconv__avx2,
                                       vmc_qdwconv__avx512, vmc_qdwconv};
  static const char *names[] = {"ref", "avx2", "avx512", "dispatch"};
  const int ok[] = {1, vmc_cpu_runs(VMC_ISA_AVX2),
                    vmc_qgemm_variant_ok(&vmc_qgemm_u8s8s32_8x32__avx512vnni), 1};
  if (!ok[2]) vmc_test_skip("no AVX-512 VNNI: avx512 depthwise not run");
  uint8_t x[28 * 40];
  int8_t wk[25];
  int32_t acc[40 * 40];
  uint8_t ref[40 * 40 * 4 + 16], got[40 * 40 * 4 + 16];
  int e = 0;
  for (size_t a = 0; a < sizeof hw / sizeof *hw; a++)
    for (size_t b = 0; b < sizeof ks / sizeof *ks; b++)
      for (int s = 1; s <= 2; s++)
        for (int pad = 0; pad <= 2; pad++) {
          const vmc_qdw_params p = {hw[a][0], hw[a][1], ks[b][0], ks[b][1], s, s,
                                    pad < ks[b][0] ? pad : 0, pad < ks[b][1] ? pad : 0,
                                    zps[e % 3]};
          for (int i = 0; i < p.h * p.w; i++) x[i] = (uint8_t)(e & 8 ? 255 : rnd_in(0, 255));
          for (int i = 0; i < p.kh * p.kw; i++)
            wk[i] = (int8_t)(e & 16 ? -128 : rnd_in(-128, 127));
          int32_t bias = rnd_in(-30000, 30000);
          float scale = (float)rnd_in(1, 300) * 1e-4f;
          vmc_qepi epi = {&bias, &scale, 1, 0, -1000, 1000, (vmc_qout)(e % 4)};
          epi.zero_point = epi.out == VMC_QOUT_S8 ? -3 : e % 2 ? 128 : 7;
          if (e % 5 == 1) epi.lo = epi.zero_point;
          e++;
          const int n = vmc_qdw_out_h(&p) * vmc_qdw_out_w(&p);
          const size_t bytes = (size_t)n * vmc_qout_bytes(epi.out);
          /* The reference's S32 against the naive sum, then every variant
           * against the reference (with a guard past the end). */
          naive_dw(&p, x, wk, bias, acc);
          vmc_qepi e32 = epi;
          e32.out = VMC_QOUT_S32;
          vmc_qdwconv__ref(&p, x, wk, &e32, got);
          if (memcmp(acc, got, (size_t)n * 4) != 0)
            vmc_test_fail(__FILE__, __LINE__, "ref vs naive: %dx%d k%dx%d s%d p%d",
                          p.h, p.w, p.kh, p.kw, s, pad);
          memset(ref, 0x33, bytes + 16);
          vmc_qdwconv__ref(&p, x, wk, &epi, ref);
          for (int d = 1; d < 4; d++) {
            if (!ok[d]) continue;
            memset(got, 0x33, bytes + 16);
            fns[d](&p, x, wk, &epi, got);
            if (memcmp(ref, got, bytes + 16) != 0) {
              vmc_test_fail(__FILE__, __LINE__, "%s: %dx%d k%dx%d s%d p%d out %d",
                            names[d], p.h, p.w, p.kh, p.kw, s, pad, (int)epi.out);
              return;
            }
          }
        }
}
