/* BatchNorm kernels (src/kernels/bn.h) and the op's fused activation.
 *
 * Kernels: every SIMD variant the CPU runs gives the reference's bits (the
 * reduction order is part of the contract) over plane sizes below, at and
 * above the 16 lanes and the 1024-float chunk, one or several strided
 * planes with their own constants, reductions accumulated over two calls,
 * with and without a clamp, NaN and values exactly at the clamp's kinks;
 * the reference agrees with double precision (1e-5 of the terms'
 * magnitude).
 * (The op with a fused activation: tests/test_ops_fused.c.) */
#include "kernels/bn.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

static int bits_equal(const float *a, const float *b, size_t n) {
  return memcmp(a, b, n * sizeof(float)) == 0;
}

static const vmc_bn_kernels *variants(int i) {
  const char *isa = vmc_isa_name();
  switch (i) {
  case 0: return strcmp(isa, "ref") ? &vmc_bn_kernels__avx2 : NULL;
  case 1: return strcmp(isa, "avx512") ? NULL : &vmc_bn_kernels__avx512;
  default: return NULL;
  }
}

/* Inputs of one kernel case: n planes (channels) of hw at stride hw + gap. */
typedef struct {
  vmc_bn_planes p;
  size_t len;
  float *x, *dy, *dx0;
} kcase;

static int kcase_init(kcase *k, int n, int hw, int gap, vmc_rng *r) {
  k->p = (vmc_bn_planes){n, hw, (size_t)hw + gap};
  k->len = (size_t)(n - 1) * k->p.stride + hw;
  k->x = malloc(k->len * sizeof(float));
  k->dy = malloc(k->len * sizeof(float));
  k->dx0 = malloc(k->len * sizeof(float));
  if (!k->x || !k->dy || !k->dx0) return 0;
  for (size_t i = 0; i < k->len; i++) {
    k->x[i] = 3.0f + 2.0f * vmc_rng_normal(r);
    k->dy[i] = vmc_rng_normal(r);
    k->dx0[i] = vmc_rng_normal(r);
  }
  /* values whose pre-activation v = 0.5*x - 1.5 sits on the kinks 0 and 6,
   * and a NaN, in the first plane */
  if (hw > 3) k->x[1] = 3.0f, k->x[2] = 15.0f, k->x[3] = __builtin_nanf("");
  return 1;
}

static void kcase_free(kcase *k) { free(k->x), free(k->dy), free(k->dx0); }

/* Plane k's constants: plane 0 puts the kinks above at v = 0 and 6. */
static vmc_bn_chan chan_of(int act, int use_x, int k) {
  vmc_bn_chan c = {.mu = 3.1f + 0.1f * k, .a = 0.5f + 0.25f * k, .b = -1.5f - 0.5f * k,
                   .clamp = act != 0, .lo = act ? 0.0f : -INFINITY,
                   .hi = act == 2 ? 6.0f : INFINITY, .k = 0.7f - 0.1f * k, .c1 = 0.01f * (k + 1),
                   .c2 = -0.03f + 0.01f * k, .use_x = use_x};
  return c;
}

#define MAXP 3

static void chans(int act, int use_x, vmc_bn_chan *c, float *shift) {
  for (int k = 0; k < MAXP; k++) c[k] = chan_of(act, use_x, k), shift[k] = 0.3f - 0.2f * k;
}

/* All four kernels of one variant: stats (on NaN-free dy) and the sums
 * accumulate over two calls, as over two images. */
typedef struct {
  vmc_bn_acc st[MAXP], sums[MAXP];
  float *y, *dx;
} kout;

static void run_kernels(const vmc_bn_kernels *kv, const kcase *k, const vmc_bn_chan *c,
                        const float *shift, int acc, kout *o) {
  memset(o->st, 0, sizeof o->st);
  memset(o->sums, 0, sizeof o->sums);
  for (int rep = 0; rep < 2; rep++) {
    kv->stats(k->dy, &k->p, shift, o->st);
    kv->bwd_sums(k->x, k->dy, &k->p, c, o->sums);
  }
  memcpy(o->y, k->dx0, k->len * 4);
  kv->apply(k->x, &k->p, c, o->y);
  memcpy(o->dx, k->dx0, k->len * 4);
  kv->bwd_dx(k->x, k->dy, &k->p, c, o->dx, acc);
}

TEST(bn_kernels_variants_match_reference_bits) {
  static const int hws[] = {1, 7, 15, 16, 17, 49, 196, 784, 1023, 1024, 1025, 2100};
  vmc_rng r;
  vmc_rng_seed(&r, 11);
  int ran = 0;
  for (size_t h = 0; h < sizeof hws / sizeof hws[0]; h++)
    for (int n = 1; n <= MAXP; n += 2) {
      kcase k;
      REQUIRE(kcase_init(&k, n, hws[h], (int)(h % 3) * 5, &r));
      kout o0, o1;
      o0.y = malloc(k.len * 4), o0.dx = malloc(k.len * 4);
      o1.y = malloc(k.len * 4), o1.dx = malloc(k.len * 4);
      REQUIRE(o0.y && o0.dx && o1.y && o1.dx);
      for (int act = 0; act < 3; act++)
        for (int ux = 0; ux < 2; ux++)
          for (int acc = 0; acc < 2; acc++) {
            vmc_bn_chan c[MAXP];
            float shift[MAXP];
            chans(act, ux, c, shift);
            run_kernels(&vmc_bn_kernels__ref, &k, c, shift, acc, &o0);
            for (int v = 0; v < 2; v++) {
              const vmc_bn_kernels *kv = variants(v);
              if (!kv) continue;
              ran++;
              run_kernels(kv, &k, c, shift, acc, &o1);
              /* NaN == NaN bit for bit: compare the bytes */
              const int st = !memcmp(o0.st, o1.st, sizeof o0.st),
                        sums = !memcmp(o0.sums, o1.sums, sizeof o0.sums),
                        y = bits_equal(o0.y, o1.y, k.len), dx = bits_equal(o0.dx, o1.dx, k.len);
              if (!(st && sums && y && dx))
                vmc_test_fail(__FILE__, __LINE__,
                              "%s: hw %d n %d act %d use_x %d acc %d: stats %d sums %d y %d dx %d",
                              kv->isa, hws[h], n, act, ux, acc, st, sums, y, dx);
            }
          }
      free(o0.y), free(o0.dx), free(o1.y), free(o1.dx);
      kcase_free(&k);
    }
  if (strcmp(vmc_isa_name(), "ref")) CHECK(ran > 0);
}

/* The reference against double precision, on NaN-free data. */
TEST(bn_kernels_reference_matches_double) {
  static const int hws[] = {1, 17, 49, 1025, 2100};
  vmc_rng r;
  vmc_rng_seed(&r, 12);
  const vmc_bn_kernels *k = &vmc_bn_kernels__ref;
  for (size_t h = 0; h < sizeof hws / sizeof hws[0]; h++) {
    kcase kc;
    REQUIRE(kcase_init(&kc, MAXP, hws[h], 3, &r));
    if (hws[h] > 3) kc.x[3] = 1.0f; /* no NaN here */
    for (int act = 0; act < 3; act++) {
      vmc_bn_chan c[MAXP];
      float shift[MAXP];
      chans(act, 1, c, shift);
      vmc_bn_acc st[MAXP], sums[MAXP];
      memset(st, 0, sizeof st);
      memset(sums, 0, sizeof sums);
      k->stats(kc.x, &kc.p, shift, st);
      k->bwd_sums(kc.x, kc.dy, &kc.p, c, sums);
      float *y = malloc(kc.len * 4), *dx = malloc(kc.len * 4);
      REQUIRE(y && dx);
      k->apply(kc.x, &kc.p, c, y);
      k->bwd_dx(kc.x, kc.dy, &kc.p, c, dx, 0);
      for (int p = 0; p < MAXP; p++) {
        double e1 = 0, e2 = 0, m1 = 0, f1 = 0, f2 = 0, g1 = 0, g2 = 0;
        const vmc_bn_chan *cp = &c[p];
        for (int i = 0; i < hws[h]; i++) {
          const size_t at = (size_t)p * kc.p.stride + i;
          const double x = kc.x[at], d0 = x - shift[p];
          e1 += d0, e2 += d0 * d0, m1 += fabs(d0);
          const double v = (double)cp->a * x + cp->b;
          double yv = v;
          int pass = 1;
          if (act) {
            yv = v < 0 ? 0 : v;
            if (act == 2 && yv > 6) yv = 6;
            pass = v > 0 && (act != 2 || v < 6);
          }
          const double d = pass ? kc.dy[at] : 0;
          f1 += d, f2 += d * (x - cp->mu), g1 += fabs(d), g2 += fabs(d * (x - cp->mu));
          CHECK_NEAR(y[at], yv, 1e-5 * (1 + fabs(v)));
          const double want = cp->k * d - cp->c1 - (x - cp->mu) * cp->c2;
          CHECK_NEAR(dx[at], want, 1e-5 * (1 + fabs(cp->k * d) + fabs((x - cp->mu) * cp->c2)));
        }
        CHECK_NEAR(vmc_bn_total(&st[p], 0), e1, 1e-5 * (1 + m1));
        CHECK_NEAR(vmc_bn_total(&st[p], 1), e2, 1e-5 * (1 + e2));
        CHECK_NEAR(vmc_bn_total(&sums[p], 0), f1, 1e-5 * (1 + g1));
        CHECK_NEAR(vmc_bn_total(&sums[p], 1), f2, 1e-5 * (1 + g2));
      }
      free(y), free(dx);
    }
    kcase_free(&kc);
  }
}
