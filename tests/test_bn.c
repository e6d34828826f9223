/* BatchNorm kernels (src/kernels/bn.h) and the op's fused activation.
 *
 * Kernels: every SIMD variant the CPU runs gives the reference's bits (the
 * reduction order is part of the contract) over plane sizes below, at and
 * above the 16 lanes and the 1024-float chunk, strided planes, with and
 * without a clamp, NaN and values exactly at the clamp's kinks; the
 * reference agrees with double precision (1e-5 of the terms' magnitude).
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

/* Inputs of one kernel case: n planes of hw at stride hw + gap. */
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

static vmc_bn_chan chan_of(int act, int use_x) {
  vmc_bn_chan c = {.mu = 3.1f, .a = 0.5f, .b = -1.5f, .clamp = act != 0, .lo = act ? 0.0f : -INFINITY,
                   .hi = act == 2 ? 6.0f : INFINITY, .k = 0.7f, .c1 = 0.01f, .c2 = -0.03f,
                   .use_x = use_x};
  return c;
}

TEST(bn_kernels_variants_match_reference_bits) {
  static const int hws[] = {1, 7, 15, 16, 17, 49, 196, 784, 1023, 1024, 1025, 2100};
  vmc_rng r;
  vmc_rng_seed(&r, 11);
  int ran = 0;
  for (size_t h = 0; h < sizeof hws / sizeof hws[0]; h++)
    for (int n = 1; n <= 3; n += 2) {
      kcase k;
      REQUIRE(kcase_init(&k, n, hws[h], (int)(h % 3) * 5, &r));
      float *y0 = malloc(k.len * 4), *y1 = malloc(k.len * 4);
      float *dx0 = malloc(k.len * 4), *dx1 = malloc(k.len * 4);
      REQUIRE(y0 && y1 && dx0 && dx1);
      for (int act = 0; act < 3; act++)
        for (int ux = 0; ux < 2; ux++) {
          const vmc_bn_chan c = chan_of(act, ux);
          const vmc_bn_kernels *ref = &vmc_bn_kernels__ref;
          double a1, a2, b1, b2;
          ref->stats(k.dy, &k.p, 0.3f, &a1, &a2); /* NaN-free data */
          memcpy(y0, k.dx0, k.len * 4);
          ref->apply(k.x, &k.p, &c, y0);
          double s1, s2, t1, t2;
          ref->bwd_sums(k.x, k.dy, &k.p, &c, &s1, &s2);
          for (int acc = 0; acc < 2; acc++) {
            memcpy(dx0, k.dx0, k.len * 4);
            ref->bwd_dx(k.x, k.dy, &k.p, &c, dx0, acc);
            for (int v = 0; v < 2; v++) {
              const vmc_bn_kernels *kv = variants(v);
              if (!kv) continue;
              ran++;
              kv->stats(k.dy, &k.p, 0.3f, &b1, &b2);
              memcpy(y1, k.dx0, k.len * 4);
              kv->apply(k.x, &k.p, &c, y1);
              kv->bwd_sums(k.x, k.dy, &k.p, &c, &t1, &t2);
              memcpy(dx1, k.dx0, k.len * 4);
              kv->bwd_dx(k.x, k.dy, &k.p, &c, dx1, acc);
              /* NaN == NaN bit for bit: compare the bytes */
              int ok = !memcmp(&a1, &b1, 8) && !memcmp(&a2, &b2, 8) && bits_equal(y0, y1, k.len) &&
                       !memcmp(&s1, &t1, 8) && !memcmp(&s2, &t2, 8) && bits_equal(dx0, dx1, k.len);
              if (!ok)
                vmc_test_fail(__FILE__, __LINE__,
                              "%s: hw %d n %d act %d use_x %d acc %d: stats %d%d y %d sums %d%d dx %d",
                              kv->isa, hws[h], n, act, ux, acc, !memcmp(&a1, &b1, 8),
                              !memcmp(&a2, &b2, 8), bits_equal(y0, y1, k.len),
                              !memcmp(&s1, &t1, 8), !memcmp(&s2, &t2, 8),
                              bits_equal(dx0, dx1, k.len));
            }
          }
        }
      free(y0), free(y1), free(dx0), free(dx1);
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
    REQUIRE(kcase_init(&kc, 3, hws[h], 3, &r));
    if (hws[h] > 3) kc.x[3] = 1.0f; /* no NaN here */
    for (int act = 0; act < 3; act++) {
      const vmc_bn_chan c = chan_of(act, 1);
      double s1, s2, e1 = 0, e2 = 0, m1 = 0, m2 = 0;
      k->stats(kc.x, &kc.p, 2.5f, &s1, &s2);
      double sdy, sdyx, f1 = 0, f2 = 0, g1 = 0, g2 = 0;
      k->bwd_sums(kc.x, kc.dy, &kc.p, &c, &sdy, &sdyx);
      float *y = malloc(kc.len * 4), *dx = malloc(kc.len * 4);
      REQUIRE(y && dx);
      k->apply(kc.x, &kc.p, &c, y);
      k->bwd_dx(kc.x, kc.dy, &kc.p, &c, dx, 0);
      for (int b = 0; b < 3; b++)
        for (int i = 0; i < hws[h]; i++) {
          const size_t at = (size_t)b * kc.p.stride + i;
          const double x = kc.x[at], d0 = x - 2.5;
          e1 += d0, e2 += d0 * d0, m1 += fabs(d0), m2 += d0 * d0;
          double v = 0.5 * x - 1.5, yv = v;
          int pass = 1;
          if (act) {
            yv = v < 0 ? 0 : v;
            if (act == 2 && yv > 6) yv = 6;
            pass = v > 0 && (act != 2 || v < 6);
          }
          const double d = pass ? kc.dy[at] : 0;
          f1 += d, f2 += d * (x - c.mu), g1 += fabs(d), g2 += fabs(d * (x - c.mu));
          CHECK_NEAR(y[at], yv, 1e-5 * (1 + fabs(v)));
          const double want = c.k * d - c.c1 - (x - c.mu) * c.c2;
          CHECK_NEAR(dx[at], want, 1e-5 * (1 + fabs(c.k * d) + fabs((x - c.mu) * c.c2)));
        }
      CHECK_NEAR(s1, e1, 1e-5 * (1 + m1));
      CHECK_NEAR(s2, e2, 1e-5 * (1 + m2));
      CHECK_NEAR(sdy, f1, 1e-5 * (1 + g1));
      CHECK_NEAR(sdyx, f2, 1e-5 * (1 + g2));
      free(y), free(dx);
    }
    kcase_free(&kc);
  }
}
