/* int8 GEMM benchmark: GOP/s (2 ops per multiply-add) of each int8 variant
 * the CPU runs, single-thread, and of vmc_qgemm_mt on vmc_get_threads()
 * threads, next to the fp32 vmc_sgemm / vmc_sgemm_mt GFLOP/s on the same
 * shape (same M, N, K, untransposed); "x1" is the best single-thread int8
 * over vmc_sgemm, "xmt" vmc_qgemm_mt over vmc_sgemm_mt.
 *
 *   build/bench/bench_qgemm [--all] [--threads N] [--out u8|s8|s32|f32]
 *
 * Shapes: square, and the convolutions of resnet8/resnet20 on 28x28
 * Fashion-MNIST (M = output channels, N = output pixels per image, or per
 * batch of 8 where marked, K = 9 * C_in, or C_in for the 1x1 shortcuts).
 * int8 times include packing B (every call does it) but not packing A (plan
 * time).  The epilogue requantizes to u8 with per-row scales unless --out.
 *
 * Each cell is the median of 7 timed batches, each batch repeated to take
 * about 20 ms.  The reference is skipped (-) above 64^3 multiply-adds unless
 * --all.  The header also gives one core's peak for the instruction of the
 * best variant (bench/peak.h's register-only loops: vpdpbusd with AVX-512
 * VNNI, else vpmaddwd + vpaddd with AVX2), and "%peak" is the fraction of
 * it the best single-thread int8 variant reaches.
 *
 * "direct" is the int8 convolution the integer runtime runs on pixel-major
 * activations (vmc_qconv: AVX-512 VNNI, or with AVX2 alone the narrow one,
 * timed on the halved weights and its "%peak" of the vpmaddubsw step's) on
 * the layer behind each conv shape (one image, padded NHWC input, the same
 * M, N, K), single-thread, and "xd" its ratio to vmc_sgemm.
 *
 * A variant with a pair bound (avx2/n, the narrow AVX2 GEMM for 7-bit or
 * 4-bit weights) is timed on the same A halved, which fits it; it is left
 * out of "x1" and "%peak", which are about full-range s8 weights; "n%pk" is
 * its fraction of its own step's peak (vpmaddubsw + vpmaddwd + vpaddd). */
#include "kernels/gemm.h"
#include "kernels/qelt.h"
#include "kernels/qgemm.h"
#include "peak.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static unsigned g_seed = 1;
static unsigned rnd(void) {
  g_seed = g_seed * 1103515245u + 12345u;
  return g_seed >> 16;
}

/* One timed problem: int8 operands (A packed per variant) and fp32 twins. */
typedef struct bench_case {
  int M, N, K;
  const int8_t *A, *An; /* An: A halved, for the narrow variant */
  const uint8_t *B;
  const float *Af, *Bf;
  vmc_qepi epi;
  void *C;
  float *Cf;
  /* the direct convolution (what 4): parameters, padded input, weights, output */
  const vmc_qconv_params *dp;
  const uint8_t *dx;
  const int8_t *dw;
  uint8_t *dy;
} bench_case;

/* what: 0 the variant v single-thread, 1 vmc_qgemm_mt (v = best), 2 vmc_sgemm,
 * 3 vmc_sgemm_mt, 4 the direct convolution.  Median G(FL)OP/s. */
static double measure(const bench_case *c, const vmc_qgemm_variant *v, int what) {
  void *pa = NULL;
  if (what < 2) {
    pa = malloc(vmc_qgemm_packed_a_size(v, c->M, c->K) + 1);
    if (!pa) return 0;
    vmc_qgemm_pack_a(v, c->M, c->K, v->pair_max ? c->An : c->A, c->K, pa);
  }
  enum { BATCHES = 7 };
  double t[BATCHES];
  int reps = 1;
  for (int b = -1; b < BATCHES; b++) { /* b == -1: warm-up, sizes reps */
    const double t0 = now_s();
    for (int r = 0; r < reps; r++) {
      switch (what) {
      case 0: v->run(c->M, c->N, c->K, pa, c->B, c->N, NULL, &c->epi, c->C, c->N); break;
      case 1: vmc_qgemm_run_mt(v, c->M, c->N, c->K, pa, c->B, c->N, NULL, &c->epi, c->C, c->N); break;
      case 2:
        vmc_sgemm(0, 0, c->M, c->N, c->K, 1.0f, c->Af, c->K, c->Bf, c->N, 0.0f, c->Cf, c->N);
        break;
      case 3:
        vmc_sgemm_mt(0, 0, c->M, c->N, c->K, 1.0f, c->Af, c->K, c->Bf, c->N, 0.0f, c->Cf,
                     c->N);
        break;
      default: vmc_qconv_best()(c->dp, c->dx, c->dw, &c->epi, NULL, c->dy);
      }
    }
    const double dt = now_s() - t0;
    if (b < 0) {
      reps = dt > 0 ? (int)(0.02 / dt) : 1000;
      reps = reps < 1 ? 1 : reps > 100000 ? 100000 : reps;
    } else {
      t[b] = dt / reps;
    }
  }
  free(pa);
  qsort(t, BATCHES, sizeof t[0], cmp_double);
  return 2.0 * c->M * c->N * c->K / t[BATCHES / 2] / 1e9;
}

static void print_cell(double g) {
  if (g > 0)
    printf(" %7.1f", g);
  else
    printf(" %7s", "-");
}

int main(int argc, char **argv) {
  int all = 0;
  vmc_qout out = VMC_QOUT_U8;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--all")) {
      all = 1;
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      vmc_set_threads(atoi(argv[++i]));
    } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
      const char *o = argv[++i];
      out = !strcmp(o, "s8") ? VMC_QOUT_S8 : !strcmp(o, "s32") ? VMC_QOUT_S32
            : !strcmp(o, "f32") ? VMC_QOUT_F32 : VMC_QOUT_U8;
    } else {
      fprintf(stderr, "usage: %s [--all] [--threads N] [--out u8|s8|s32|f32]\n", argv[0]);
      return 2;
    }
  }
  static const struct {
    int M, N, K;
    const char *what;
    int cin, h, k, stride; /* the conv layer (cin 0: none) */
  } shapes[] = {
      {256, 256, 256, "square", 0, 0, 0, 0},
      {512, 512, 512, "square", 0, 0, 0, 0},
      {768, 768, 768, "square", 0, 0, 0, 0},
      {1024, 1024, 1024, "square", 0, 0, 0, 0},
      {16, 784, 144, "conv 16->16 28x28", 16, 28, 3, 1},
      {32, 196, 144, "conv 16->32 s2 14x14", 16, 28, 3, 2},
      {32, 196, 288, "conv 32->32 14x14", 32, 14, 3, 1},
      {64, 49, 288, "conv 32->64 s2 7x7", 32, 14, 3, 2},
      {64, 49, 576, "conv 64->64 7x7", 64, 7, 3, 1},
      {32, 196, 16, "1x1 16->32 14x14", 16, 28, 1, 2},
      {64, 49, 32, "1x1 32->64 7x7", 32, 14, 1, 2},
      {16, 784 * 8, 144, "conv 16->16 28x28 b8", 0, 0, 0, 0},
      {32, 196 * 8, 288, "conv 32->32 14x14 b8", 0, 0, 0, 0},
      {64, 49 * 8, 576, "conv 64->64 7x7 b8", 0, 0, 0, 0},
  };
  const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
  const vmc_qgemm_variant *best = vmc_qgemm_best();
  const int has_vnni512 = vmc_qgemm_variant_ok(&vmc_qgemm_u8s8s32_8x32__avx512vnni);
  const int peak_loop = has_vnni512 ? PEAK_VNNI : peak_has_avx2() ? PEAK_MADDWD : -1;
  const double peak = peak_loop >= 0 ? peak_measure(peak_loop, 1, 9, 0.1) : 0;
  const double peak_n = peak_has_avx2() ? peak_measure(PEAK_MADDUBS, 1, 9, 0.1) : 0;
  printf("int8 GEMM GOP/s vs fp32 GFLOP/s (isa %s, cpu: %s; best %s; mt on %d threads; "
         "median of 7)\n",
         vmc_isa_name(), vmc_cpu_features_str(), best->name, vmc_get_threads());
  if (peak > 0)
    printf("%s peak, one core: %.1f GOP/s\n",
           peak_loop == PEAK_VNNI ? "vpdpbusd zmm" : "vpmaddwd+vpaddd ymm", peak);
  if (peak_n > 0) printf("vpmaddubsw+vpmaddwd+vpaddd ymm peak (narrow), one core: %.1f GOP/s\n", peak_n);
  printf("%-22s %5s %5s %5s", "problem", "M", "N", "K");
  for (int v = 0; v < vmc_qgemm_variant_count; v++) {
    const char *n = vmc_qgemm_variants[v]->name;
    const char *isa = strstr(n, "__");
    char label[16];
    snprintf(label, sizeof label, "%.5s%s", isa ? isa + 2 : n,
             vmc_qgemm_variants[v]->pair_max ? "/n" : "");
    printf(" %7.7s", label);
  }
  printf(" %7s %7s %7s %6s %6s %6s %6s %7s %6s %6s\n", "q_mt", "sgemm", "sg_mt", "x1", "xmt",
         "%peak", "n%pk", "direct", "xd", "%peak");
  for (int i = 0; i < n_shapes; i++) {
    const int M = shapes[i].M, N = shapes[i].N, K = shapes[i].K;
    int8_t *A = malloc((size_t)M * K), *An = malloc((size_t)M * K);
    uint8_t *B = malloc((size_t)K * N);
    float *Af = malloc((size_t)M * K * sizeof *Af), *Bf = malloc((size_t)K * N * sizeof *Bf);
    float *Cf = malloc((size_t)M * N * sizeof *Cf), *scale = malloc((size_t)M * sizeof *scale);
    int32_t *bias = malloc((size_t)M * sizeof *bias);
    void *C = malloc((size_t)M * N * 4);
    if (!A || !An || !B || !Af || !Bf || !Cf || !scale || !bias || !C) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    for (size_t j = 0; j < (size_t)M * K; j++) {
      A[j] = (int8_t)(rnd() & 0xff);
      An[j] = (int8_t)(A[j] / 2);
      Af[j] = (float)A[j] / 128.0f;
    }
    for (size_t j = 0; j < (size_t)K * N; j++) {
      B[j] = (uint8_t)(rnd() & 0xff);
      Bf[j] = (float)B[j] / 256.0f;
    }
    for (int m = 0; m < M; m++) {
      bias[m] = (int32_t)(rnd() % 20001) - 10000;
      scale[m] = 1.0f / (float)(1000 + rnd() % 5000);
    }
    /* The conv layer, pixel-major: input padded by one pixel, output plain. */
    vmc_conv_geom cg = {.c = shapes[i].cin, .h = shapes[i].h, .w = shapes[i].h, .kh = shapes[i].k,
                       .kw = shapes[i].k, .sh = shapes[i].stride, .sw = shapes[i].stride,
                       .ph = shapes[i].k / 2, .pw = shapes[i].k / 2, .dh = 1, .dw = 1};
    cg.oh = cg.ow = cg.c ? vmc_conv_out(cg.h, cg.kh, cg.sh, cg.ph, 1) : 0;
    const int direct = cg.c && vmc_qconv_best() && (out == VMC_QOUT_U8 || out == VMC_QOUT_S8);
    const size_t row = (size_t)(cg.w + 2) * cg.c;
    const int kq = direct ? vmc_qconv_kq(&cg, cg.c) : 0;
    uint8_t *dx = direct ? calloc((size_t)(cg.h + 2) * row + 64, 1) : NULL;
    int8_t *wq = direct ? malloc((size_t)M * 4 * kq) : NULL;
    int8_t *dw = direct ? aligned_alloc(64, vmc_qconv_w_bytes(M, kq)) : NULL;
    int32_t *koff = direct ? malloc((size_t)kq * sizeof *koff) : NULL;
    uint8_t *dy = direct ? malloc((size_t)M * N) : NULL;
    vmc_qconv_params dp = {0};
    if (direct) {
      if (!dx || !wq || !dw || !koff || !dy) {
        fprintf(stderr, "out of memory\n");
        return 1;
      }
      for (size_t j = 0; j < (size_t)(cg.h + 2) * row; j++) dx[j] = (uint8_t)(rnd() & 0xff);
      /* A read as OIHW codes; halved for a direct conv that takes narrow weights */
      vmc_qconv_quads(&cg, cg.c, row, M, vmc_qconv_pair_max(vmc_qconv_best()) ? An : A, koff, wq);
      vmc_qconv_pack_w(M, kq, wq, dw);
      dp = (vmc_qconv_params){.oh = cg.oh, .ow = cg.ow, .M = M, .kq = kq, .xs_row = cg.sh * row,
                              .xs_pix = (size_t)cg.sw * cg.c, .ys_row = (size_t)cg.ow * M,
                              .ys_pix = (size_t)M, .koff = koff};
    }
    const bench_case c = {M, N, K, A, An, B, Af, Bf, {bias, scale, 0, 3, 3, 255, out}, C, Cf,
                          &dp, dx ? dx + (size_t)(1 - cg.ph) * row + (size_t)(1 - cg.pw) * cg.c : NULL,
                          dw, dy};
    printf("%-22s %5d %5d %5d", shapes[i].what, M, N, K);
    double best1 = 0, narrow = 0;
    for (int v = 0; v < vmc_qgemm_variant_count; v++) {
      const vmc_qgemm_variant *vv = vmc_qgemm_variants[v];
      const int skip = !vmc_qgemm_variant_ok(vv) ||
                       (vv == &vmc_qgemm_u8s8s32__ref && !all &&
                        (double)M * N * K > 64.0 * 64 * 64);
      const double g = skip ? 0 : measure(&c, vv, 0);
      if (g > best1 && !vv->pair_max) best1 = g;
      if (vv->pair_max) narrow = g;
      print_cell(g);
      fflush(stdout);
    }
    const double gmt = measure(&c, best, 1), gs = measure(&c, best, 2);
    const double gsmt = measure(&c, best, 3);
    print_cell(gmt);
    print_cell(gs);
    print_cell(gsmt);
    printf(" %5.2fx %5.2fx", best1 / gs, gmt / gsmt);
    if (peak > 0)
      printf(" %5.0f%%", 100.0 * best1 / peak);
    else
      printf(" %6s", "-");
    if (peak_n > 0 && narrow > 0)
      printf(" %5.0f%%", 100.0 * narrow / peak_n);
    else
      printf(" %6s", "-");
    const double gd = direct ? measure(&c, best, 4) : 0;
    print_cell(gd);
    const double pd = vmc_qconv_pair_max(vmc_qconv_best()) ? peak_n : peak;
    if (gd > 0)
      printf(" %5.2fx %5.0f%%\n", gd / gs, pd > 0 ? 100.0 * gd / pd : 0.0);
    else
      printf(" %6s %6s\n", "-", "-");
    fflush(stdout);
    free(dx);
    free(wq);
    free(dw);
    free(koff);
    free(dy);
    free(A);
    free(An);
    free(B);
    free(Af);
    free(Bf);
    free(Cf);
    free(scale);
    free(bias);
    free(C);
  }
  return 0;
}
