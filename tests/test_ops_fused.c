/* Ops with a fused activation (ctx->act) and gradient writes (ctx->dx_set),
 * as plans run them, through the op table directly.
 *
 * batchnorm: a relu/relu6 fused into it gives exactly the bits of the
 * unfused BN followed by the clamp and its gradient mask, in training and
 * inference mode, written and accumulated; statistics of data far from zero
 * (mean 1e4, std 1) stay accurate.
 * add: the gradient (masked by a fused activation) written or added into
 * each input's buffer, bit for bit against a scalar loop, on a tensor large
 * enough for the threaded path, with one input without gradient and with
 * both inputs sharing one buffer (add(x, x)). */
#include "graph/op.h"
#include "op_harness.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

static int bits_equal(const float *a, const float *b, size_t n) {
  return memcmp(a, b, n * sizeof(float)) == 0;
}

/* Runs the op through its table with a fused activation and dx_set (bit k:
 * input k). */
static void run(vmc_oph *h, vmc_act act, int backward, int dx_set) {
  vmc_opctx c;
  memset(&c, 0, sizeof c);
  c.g = h->g;
  c.node = &h->g->nodes[h->node];
  c.batch = h->xs[0].d[0];
  c.mode = h->mode;
  for (int k = 0; k < h->n_in; k++) {
    c.x[k] = h->x[k];
    c.xs[k] = h->xs[k];
  }
  c.y = h->y;
  c.ys = h->ys;
  c.state = h->state;
  c.scratch = h->scratch;
  c.scratch_bytes = h->scratch_bytes;
  c.nthreads = h->nthreads;
  c.rng = &h->rng;
  c.act = act;
  if (backward) {
    for (int k = 0; k < h->n_in; k++) {
      c.dx[k] = h->dx[k];
      c.dx_set[k] = (uint8_t)((dx_set >> k) & 1);
    }
    c.dy = h->dy;
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

TEST(add_backward_fused_and_set) {
  /* 3*7*61*53 = 67893 floats: the threaded path, not a multiple of 16 */
  const int N = 3, C = 7, H = 61, W = 53;
  const size_t n = (size_t)N * C * H * W;
  vmc_oph_spec s = {.op = "add", .mode = VMC_MODE_TRAIN, .n_in = 2,
                    .in = {{.ndim = 4, .d = {N, C, H, W}}, {.ndim = 4, .d = {N, C, H, W}}},
                    .nthreads = 2};
  vmc_oph *h = NULL;
  REQUIRE_OK(vmc_oph_create(&s, &h));
  vmc_rng r;
  vmc_rng_seed(&r, 15);
  vmc_oph_fill(&r, h->x[0], n, -4.0f, 5.0f);
  vmc_oph_fill(&r, h->x[1], n, -4.0f, 5.0f);
  float *init = malloc(2 * n * 4), *dy = malloc(n * 4), *want = malloc(2 * n * 4);
  REQUIRE(init && dy && want);
  vmc_oph_fill(&r, init, 2 * n, -1.0f, 1.0f);
  vmc_oph_fill(&r, dy, n, -1.0f, 1.0f);
  for (int act = VMC_ACT_NONE; act <= VMC_ACT_RELU6; act++)
    for (int set = 0; set < 4; set++)
      for (int mode = 0; mode < 3; mode++) { /* both, input 1 without gradient, shared buffer */
        run(h, (vmc_act)act, 0, 0);
        const float lo = vmc_act_lo((vmc_act)act), hi = vmc_act_hi((vmc_act)act);
        float *dx1 = h->dx[1];
        memcpy(h->dx[0], init, n * 4);
        memcpy(dx1, init + n, n * 4);
        memcpy(h->dy, dy, n * 4);
        memcpy(want, init, 2 * n * 4);
        for (size_t i = 0; i < n; i++) {
          float d = act == VMC_ACT_NONE ? dy[i] : vmc_act_grad(h->y[i], dy[i], lo, hi);
          want[i] = set & 1 ? d : want[i] + d;
          if (mode == 0) want[n + i] = set & 2 ? d : want[n + i] + d;
          if (mode == 2) want[i] += d; /* input 1's share lands in input 0's buffer */
        }
        if (mode == 1) h->dx[1] = NULL;
        if (mode == 2) h->dx[1] = h->dx[0];
        run(h, (vmc_act)act, 1, mode == 2 ? set & 1 : set);
        h->dx[1] = dx1;
        if (!bits_equal(h->dx[0], want, n) || (mode == 0 && !bits_equal(dx1, want + n, n)) ||
            (mode != 0 && !bits_equal(dx1, init + n, n)))
          vmc_test_fail(__FILE__, __LINE__, "act %d set %d mode %d", act, set, mode);
      }
  free(init), free(dy), free(want);
  vmc_oph_free(h);
}
