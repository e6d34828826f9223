/* BatchNorm kernels (src/kernels/bn.h) and the op's fused activation.
 *
 * Kernels: every SIMD variant the CPU runs gives the reference's bits (the
 * reduction order is part of the contract) over plane sizes below, at and
 * above the 16 lanes and the 1024-float chunk, strided planes, with and
 * without a clamp, NaN and values exactly at the clamp's kinks; the
 * reference agrees with double precision (1e-5 of the terms' magnitude).
 *
 * Op: a relu/relu6 fused into the BN (ctx->act) gives exactly the bits of
 * the unfused BN followed by the clamp and its gradient mask, in training
 * and inference mode, written and accumulated; statistics of data far from
 * zero (mean 1e4, std 1) stay accurate. */
#include "graph/op.h"
#include "kernels/bn.h"
#include "op_harness.h"
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

/* Runs the op through its table with a fused activation and dx_set. */
static void run(vmc_oph *h, vmc_act act, int backward, int dx_set) {
  vmc_opctx c;
  memset(&c, 0, sizeof c);
  c.g = h->g;
  c.node = &h->g->nodes[h->node];
  c.batch = h->xs[0].d[0];
  c.mode = h->mode;
  c.x[0] = h->x[0];
  c.xs[0] = h->xs[0];
  c.y = h->y;
  c.ys = h->ys;
  c.state = h->state;
  c.scratch = h->scratch;
  c.scratch_bytes = h->scratch_bytes;
  c.nthreads = h->nthreads;
  c.rng = &h->rng;
  c.act = act;
  if (backward) {
    c.dx[0] = h->dx[0];
    c.dy = h->dy;
    c.dx_set[0] = (uint8_t)dx_set;
    h->op->backward(&c);
  } else {
    h->op->forward(&c);
  }
}

static vmc_oph *bn_harness(vmc_mode mode, int N, int C, int H, int W) {
  vmc_oph_spec s = {.op = "batchnorm", .mode = mode, .n_in = 1,
                    .in = {{.ndim = 4, .d = {N, C, H, W}}}, .n_attr = 0, .n_param = 4,
                    .pshape = {{1, {C}}, {1, {C}}, {1, {C}}, {1, {C}}},
                    .pbuffer = {0, 0, 1, 1}, .nthreads = 2};
  vmc_oph *h = NULL;
  return vmc_oph_create(&s, &h) == VMC_OK ? h : NULL;
}

TEST(bn_fused_activation_matches_unfused_bits) {
  const int N = 3, C = 5, H = 7, W = 9;
  const size_t n = (size_t)N * C * H * W;
  for (int m = 0; m < 2; m++)
    for (int act = VMC_ACT_RELU; act <= VMC_ACT_RELU6; act++)
      for (int set = 0; set < 2; set++) {
        vmc_oph *h = bn_harness(m ? VMC_MODE_INFER : VMC_MODE_TRAIN, N, C, H, W);
        REQUIRE(h);
        vmc_rng r;
        vmc_rng_seed(&r, 13);
        vmc_oph_fill(&r, h->x[0], n, -4.0f, 8.0f);
        vmc_oph_fill(&r, h->dy, n, -1.0f, 1.0f);
        vmc_oph_fill(&r, vmc_oph_param(h, 0), C, 0.5f, 4.0f);
        vmc_oph_fill(&r, vmc_oph_param(h, 1), C, -1.0f, 3.0f);
        vmc_oph_fill(&r, vmc_oph_param(h, 2), C, 0.0f, 2.0f);
        vmc_oph_fill(&r, vmc_oph_param(h, 3), C, 2.0f, 9.0f);
        float *rs = malloc(4 * C * sizeof(float)), *dy = malloc(n * 4), *y = malloc(n * 4),
              *dx = malloc(n * 4), *dg = malloc(2 * C * sizeof(float)), *init = malloc(n * 4);
        REQUIRE(rs && dy && y && dx && dg && init);
        for (int k = 0; k < 4; k++) memcpy(rs + k * C, vmc_oph_param(h, k), C * sizeof(float));
        vmc_oph_fill(&r, init, n, -1.0f, 1.0f);
        memcpy(dy, h->dy, n * 4);
        const float hi = vmc_act_hi((vmc_act)act);
        /* unfused: BN, then the clamp; the mask applied to dy */
        run(h, VMC_ACT_NONE, 0, 0);
        for (size_t i = 0; i < n; i++) y[i] = vmc_clampf(h->y[i], 0.0f, hi);
        for (size_t i = 0; i < n; i++) h->dy[i] = vmc_act_grad(y[i], dy[i], 0.0f, hi);
        memcpy(h->dx[0], init, n * 4);
        vmc_graph_zero_grads(h->g);
        run(h, VMC_ACT_NONE, 1, set);
        memcpy(dx, h->dx[0], n * 4);
        memcpy(dg, vmc_oph_grad(h, 0), C * sizeof(float));
        memcpy(dg + C, vmc_oph_grad(h, 1), C * sizeof(float));
        /* fused, from the same parameters and running statistics */
        for (int k = 0; k < 4; k++) memcpy(vmc_oph_param(h, k), rs + k * C, C * sizeof(float));
        run(h, (vmc_act)act, 0, 0);
        CHECK(bits_equal(h->y, y, n));
        int some_masked = 0;
        for (size_t i = 0; i < n; i++) some_masked |= y[i] == 0.0f && dy[i] != 0.0f;
        CHECK(some_masked);
        memcpy(h->dy, dy, n * 4);
        memcpy(h->dx[0], init, n * 4);
        vmc_graph_zero_grads(h->g);
        run(h, (vmc_act)act, 1, set);
        CHECK(bits_equal(h->dx[0], dx, n));
        CHECK(bits_equal(vmc_oph_grad(h, 0), dg, (size_t)C));
        CHECK(bits_equal(vmc_oph_grad(h, 1), dg + C, (size_t)C));
        free(rs), free(dy), free(y), free(dx), free(dg), free(init);
        vmc_oph_free(h);
      }
}

/* Data far from zero: the shifted sums keep the variance accurate. */
TEST(bn_statistics_of_offset_data) {
  const int N = 4, C = 2, H = 9, W = 11, HW = H * W;
  vmc_oph *h = bn_harness(VMC_MODE_TRAIN, N, C, H, W);
  REQUIRE(h);
  vmc_rng r;
  vmc_rng_seed(&r, 14);
  const size_t n = (size_t)N * C * HW;
  for (size_t i = 0; i < n; i++) h->x[0][i] = 1e4f + (float)((i / HW) % C + 1) * vmc_rng_normal(&r);
  for (int c = 0; c < C; c++) vmc_oph_param(h, 0)[c] = 1.0f, vmc_oph_param(h, 3)[c] = 1.0f;
  run(h, VMC_ACT_NONE, 0, 0);
  for (int c = 0; c < C; c++) {
    double s = 0, s2 = 0, xs = 0, xs2 = 0;
    for (int b = 0; b < N; b++)
      for (int i = 0; i < HW; i++) {
        const size_t at = ((size_t)b * C + c) * HW + i;
        s += h->y[at], s2 += (double)h->y[at] * h->y[at], xs += h->x[0][at];
      }
    const double cnt = (double)N * HW, xm = xs / cnt;
    for (int b = 0; b < N; b++)
      for (int i = 0; i < HW; i++) {
        const double d = h->x[0][((size_t)b * C + c) * HW + i] - xm;
        xs2 += d * d;
      }
    CHECK_NEAR(s / cnt, 0.0, 1e-3);
    CHECK_NEAR(s2 / cnt, 1.0, 1e-3);
    /* running statistics: momentum 0.1 from mean 0, variance 1 (unbiased) */
    CHECK_NEAR(vmc_oph_param(h, 2)[c], 0.1 * xm, 1e-3 * xm);
    CHECK_NEAR(vmc_oph_param(h, 3)[c], 0.9 + 0.1 * xs2 / (cnt - 1), 1e-3);
  }
  vmc_oph_free(h);
}
