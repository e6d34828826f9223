/* Quantization core (src/quant): the rounding rule at ties and edges, the
 * rule against the int8 kernels' epilogue (vmc_qepi_requant), round trips,
 * parameters from ranges (0 exactly representable, degenerate ranges),
 * parameter checks, per-channel s8/s4 weights against hand-computed codes,
 * s4 packing, fake quantization, SQNR.  Observers: test_quant_observer.c. */
#include "kernels/qgemm.h"
#include "quant/quant.h"
#include "test.h"

#include <float.h>
#include <stdlib.h>

static const vmc_qparams S8_UNIT = {1.0f, 0, -127, 127};

static int32_t q1(float x, const vmc_qparams *p) {
  return vmc_quantize1(x, 1.0f / p->scale, p);
}

TEST(quant_rounding_ties_to_even) {
  const float x[] = {0.5f, 1.5f, 2.5f, 3.5f, -0.5f, -1.5f, -2.5f, 0.49999997f, 2.5000002f};
  const int want[] = {0, 2, 2, 4, 0, -2, -2, 0, 3};
  for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) CHECK_EQ_INT(q1(x[i], &S8_UNIT), want[i]);
  /* Ties after the multiply: scale 0.5 (inv 2 exactly). */
  const vmc_qparams half = {0.5f, 0, -127, 127};
  CHECK_EQ_INT(q1(0.25f, &half), 0);
  CHECK_EQ_INT(q1(0.75f, &half), 2);
  CHECK_EQ_INT(q1(-1.25f, &half), -2);
  /* With a zero point the tie is broken before zp is added. */
  const vmc_qparams u8 = {1.0f, 11, 0, 255};
  CHECK_EQ_INT(q1(0.5f, &u8), 11);
  CHECK_EQ_INT(q1(1.5f, &u8), 13);
  CHECK_EQ_INT(q1(-0.5f, &u8), 11);
  CHECK_EQ_INT(q1(-2.5f, &u8), 9);
}

TEST(quant_saturation_and_nonfinite) {
  CHECK_EQ_INT(q1(127.49f, &S8_UNIT), 127);
  CHECK_EQ_INT(q1(127.5f, &S8_UNIT), 127);
  CHECK_EQ_INT(q1(200.0f, &S8_UNIT), 127);
  CHECK_EQ_INT(q1(-127.5f, &S8_UNIT), -127);
  CHECK_EQ_INT(q1(-1e30f, &S8_UNIT), -127);
  CHECK_EQ_INT(q1(FLT_MAX, &S8_UNIT), 127);
  CHECK_EQ_INT(q1(INFINITY, &S8_UNIT), 127);
  CHECK_EQ_INT(q1(-INFINITY, &S8_UNIT), -127);
  CHECK_EQ_INT(q1(NAN, &S8_UNIT), 0);
  /* The product overflows fp32: still saturates. */
  const vmc_qparams tiny = {FLT_MIN, 128, 0, 255};
  CHECK_EQ_INT(q1(1e30f, &tiny), 255);
  CHECK_EQ_INT(q1(-1e30f, &tiny), 0);
  CHECK_EQ_INT(q1(NAN, &tiny), 128);
  CHECK_EQ_INT(q1(0.0f, &tiny), 128);
  /* s32 bounds: no overflow in the conversion. */
  const vmc_qparams s32 = {1.0f, 0, INT32_MIN, INT32_MAX};
  CHECK_EQ_INT(q1(1e20f, &s32), INT32_MAX);
  CHECK_EQ_INT(q1(-1e20f, &s32), INT32_MIN);
  CHECK_EQ_INT(q1(-2147483648.0f, &s32), INT32_MIN);
  CHECK_EQ_INT(q1(123456.5f, &s32), 123456);
  /* Through the tensor functions too. */
  const float x[] = {-300, -127.6f, -0.5f, 0.5f, 1.5f, 127.6f, 300, NAN, INFINITY};
  int8_t q[9];
  REQUIRE_OK(vmc_quantize(x, 1, 9, &S8_UNIT, VMC_S8, q));
  const int want[] = {-127, -127, 0, 0, 2, 127, 127, 0, 127};
  for (int i = 0; i < 9; i++) CHECK_EQ_INT(q[i], want[i]);
}

static uint32_t g_seed = 77u;
static uint32_t rnd(void) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return g_seed >> 8;
}
static float rnd_unit(void) { return (float)(rnd() & 0xffffff) / 16777216.0f; }

/* The quantizer and the kernels' epilogue are one rule: vmc_quantize1 of
 * x = (float)t with inv = s equals vmc_qepi_requant(t, s) for the same bounds. */
TEST(quant_rule_matches_kernel_epilogue) {
  for (int it = 0; it < 20000; it++) {
    vmc_qepi e = {0};
    e.out = (it & 1) ? VMC_QOUT_U8 : VMC_QOUT_S8;
    e.zero_point = e.out == VMC_QOUT_U8 ? (int32_t)(rnd() % 256) : (int32_t)(rnd() % 41) - 20;
    e.lo = e.out == VMC_QOUT_U8 ? (it % 3 ? 0 : e.zero_point) : -128;
    e.hi = e.out == VMC_QOUT_U8 ? 255 : 127;
    const vmc_qepi_prep prep = vmc_qepi_prepare(&e);
    int32_t t = (int32_t)(rnd() % (1u << 21)) - (1 << 20);
    float s = 1e-4f + rnd_unit() * 0.05f;
    if (it % 5 == 0) s = 0.5f, t |= 1; /* exact ties */
    if (it % 7 == 0) s = 0.25f;        /* ties at .5 for t = 2 mod 4 */
    const vmc_qparams p = {1.0f, prep.zp, (int32_t)prep.lo + prep.zp, (int32_t)prep.hi + prep.zp};
    const int32_t a = vmc_qepi_requant(t, s, &prep), b = vmc_quantize1((float)t, s, &p);
    if (a != b) {
      CHECK_EQ_INT(a, b);
      break;
    }
  }
}

TEST(quant_round_trip) {
  vmc_qparams p;
  REQUIRE_OK(vmc_qparams_from_range(-1.7f, 5.3f, VMC_QSCHEME_U8, &p));
  float x[1000], y[1000];
  uint8_t q[1000];
  for (int i = 0; i < 1000; i++) x[i] = -1.7f + 7.0f * (float)i / 999.0f;
  REQUIRE_OK(vmc_quantize(x, 1, 1000, &p, VMC_U8, q));
  REQUIRE_OK(vmc_qdequantize(q, VMC_U8, 1, 1000, &p, y));
  double worst = 0;
  for (int i = 0; i < 1000; i++) worst = fmax(worst, fabs((double)x[i] - y[i]));
  CHECK(worst <= p.scale * 0.5 * (1 + 1e-5) + 1e-6);
  /* Every code survives dequantize -> quantize, for each storage type. */
  const vmc_qparams ps[] = {{0.037f, 0, -127, 127}, {0.11f, 37, 0, 255},
                            {0.3f, 0, -8, 7},       {1e-3f, 0, -100000, 100000}};
  const vmc_dtype dts[] = {VMC_S8, VMC_U8, VMC_S4, VMC_S32};
  for (int t = 0; t < 4; t++) {
    for (int32_t c = ps[t].qmin; c <= ps[t].qmax; c += t == 3 ? 997 : 1) {
      const float v = vmc_qdequantize1(c, &ps[t]);
      CHECK_EQ_INT(q1(v, &ps[t]), c);
      int32_t buf[1]; /* room for any storage type */
      float v2;
      REQUIRE_OK(vmc_quantize(&v, 1, 1, &ps[t], dts[t], buf));
      REQUIRE_OK(vmc_qdequantize(buf, dts[t], 1, 1, &ps[t], &v2));
      CHECK(v2 == v);
    }
  }
}

TEST(quant_params_from_range) {
  vmc_qparams p;
  /* Asymmetric u8 [-1, 3]: s = 4/255, zp = -round(-1 / s) = 64 (63.75). */
  REQUIRE_OK(vmc_qparams_from_range(-1.0f, 3.0f, VMC_QSCHEME_U8, &p));
  CHECK_NEAR(p.scale, 4.0 / 255, 1e-8);
  CHECK_EQ_INT(p.zero_point, 64);
  CHECK_EQ_INT(p.qmin, 0);
  CHECK_EQ_INT(p.qmax, 255);
  CHECK(vmc_qdequantize1(q1(0.0f, &p), &p) == 0.0f);
  /* The range is widened to hold 0. */
  REQUIRE_OK(vmc_qparams_from_range(0.5f, 2.0f, VMC_QSCHEME_U8, &p));
  CHECK_NEAR(p.scale, 2.0 / 255, 1e-8);
  CHECK_EQ_INT(p.zero_point, 0);
  REQUIRE_OK(vmc_qparams_from_range(-2.0f, -0.5f, VMC_QSCHEME_U8, &p));
  CHECK_EQ_INT(p.zero_point, 255);
  CHECK_EQ_INT(q1(-2.0f, &p), 0);
  /* Symmetric: the larger side, zp 0. */
  REQUIRE_OK(vmc_qparams_from_range(-1.0f, 3.0f, VMC_QSCHEME_S8, &p));
  CHECK_NEAR(p.scale, 3.0 / 127, 1e-8);
  CHECK_EQ_INT(p.zero_point, 0);
  CHECK_EQ_INT(p.qmin, -127);
  REQUIRE_OK(vmc_qparams_from_range(-0.7f, 0.2f, VMC_QSCHEME_S4, &p));
  CHECK_NEAR(p.scale, 0.1, 1e-7);
  CHECK_EQ_INT(p.qmin, -7);
  CHECK_EQ_INT(p.qmax, 7);
  REQUIRE_OK(vmc_qparams_from_range(0.0f, 3.0f, VMC_QSCHEME_U4, &p));
  CHECK_NEAR(p.scale, 0.2, 1e-7);
  CHECK_EQ_INT(p.zero_point, 0);
  /* Degenerate: scale 1, zp the code of 0. */
  for (int s = 0; s < VMC_QSCHEME_COUNT; s++) {
    const vmc_qscheme_info *si = vmc_qscheme_get((vmc_qscheme)s);
    REQUIRE_OK(vmc_qparams_from_range(0.0f, 0.0f, (vmc_qscheme)s, &p));
    CHECK(p.scale == 1.0f);
    CHECK_EQ_INT(p.zero_point, si->symmetric ? 0 : si->qmin);
    CHECK_EQ_INT(q1(0.0f, &p), p.zero_point);
    REQUIRE_OK(vmc_qparams_from_range(-1e-40f, 1e-40f, (vmc_qscheme)s, &p));
    CHECK(p.scale == 1.0f);
    CHECK_OK(vmc_qparams_check(&p, si->dtype, "degenerate"));
  }
  /* Huge ranges: hi - lo overflows a float but not the result. */
  REQUIRE_OK(vmc_qparams_from_range(-FLT_MAX, FLT_MAX, VMC_QSCHEME_U8, &p));
  CHECK(isfinite(p.scale));
  CHECK(p.zero_point == 127 || p.zero_point == 128);
  /* 0 is exactly representable for random ranges. */
  for (int it = 0; it < 2000; it++) {
    const float lo = -rnd_unit() * 10.0f * (float)(it % 10), hi = rnd_unit() * 7.0f;
    for (int s = 0; s < VMC_QSCHEME_COUNT; s++) {
      REQUIRE_OK(vmc_qparams_from_range(lo, hi, (vmc_qscheme)s, &p));
      CHECK_OK(vmc_qparams_check(&p, vmc_qscheme_get((vmc_qscheme)s)->dtype, "random"));
      CHECK(vmc_qdequantize1(q1(0.0f, &p), &p) == 0.0f);
    }
  }
  /* Errors. */
  CHECK(vmc_qparams_from_range(NAN, 1.0f, VMC_QSCHEME_U8, &p) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_qparams_from_range(0.0f, INFINITY, VMC_QSCHEME_U8, &p) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_qparams_from_range(2.0f, 1.0f, VMC_QSCHEME_S8, &p) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_qparams_from_range(0.0f, 1.0f, VMC_QSCHEME_COUNT, &p) == VMC_ERR_INVALID_ARG);
  CHECK(strlen(vmc_last_error()) > 0);
}

TEST(quant_params_check) {
  const vmc_qparams ok = {0.5f, 3, 0, 255};
  CHECK_OK(vmc_qparams_check(&ok, VMC_U8, "x"));
  CHECK(vmc_qparams_check(&ok, VMC_S8, "x") == VMC_ERR_INVALID_ARG); /* 255 > 127 */
  CHECK(vmc_qparams_check(&ok, VMC_F32, "x") == VMC_ERR_INVALID_ARG);
  const vmc_qparams bad[] = {{0.0f, 0, 0, 255},       {-1.0f, 0, 0, 255}, {NAN, 0, 0, 255},
                             {INFINITY, 0, 0, 255},   {1e-39f, 0, 0, 255}, {1.0f, 300, 0, 255},
                             {1.0f, -1, 0, 255},      {1.0f, 0, 5, 4}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK(vmc_qparams_check(&bad[i], VMC_U8, "bad") == VMC_ERR_INVALID_ARG);
  const vmc_qparams s4 = {1.0f, 0, -8, 7}, s4bad = {1.0f, 0, -9, 7};
  CHECK_OK(vmc_qparams_check(&s4, VMC_S4, "s4"));
  CHECK(vmc_qparams_check(&s4bad, VMC_S4, "s4") == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "s4") != NULL);
  /* The tensor functions check every channel and name the bad one. */
  const vmc_qparams two[2] = {{1.0f, 0, -127, 127}, {0.0f, 0, -127, 127}};
  float x[4] = {0}, y[4];
  int8_t q[4];
  CHECK(vmc_quantize(x, 2, 2, two, VMC_S8, q) == VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "channel 1") != NULL);
  CHECK(vmc_qdequantize(q, VMC_S8, 2, 2, two, y) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_qfake_quantize(x, 2, 2, two, y) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_quantize(x, 0, 2, two, VMC_S8, q) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_quantize(NULL, 1, 2, two, VMC_S8, q) == VMC_ERR_INVALID_ARG);
  CHECK(vmc_quantize(x, 1, 4, two, VMC_F32, q) == VMC_ERR_INVALID_ARG);
  CHECK_OK(vmc_quantize(NULL, 1, 0, two, VMC_S8, NULL)); /* nothing to do */
}

TEST(quant_weights_per_channel_s8) {
  /* Channel maxima 1.27 and 6.35: scales 0.01 and 0.05 (no ties below). */
  const float w[8] = {0.5f, -1.27f, 0.2f, 0.0f, 2.0f, -0.1f, 0.33f, -6.35f};
  vmc_qparams p[2];
  int8_t q[8];
  REQUIRE_OK(vmc_quantize_weights(w, 2, 4, VMC_QSCHEME_S8, 1, p, q));
  CHECK_NEAR(p[0].scale, 0.01, 1e-8);
  CHECK_NEAR(p[1].scale, 0.05, 1e-8);
  CHECK_EQ_INT(p[0].zero_point, 0);
  const int want[8] = {50, -127, 20, 0, 40, -2, 7, -127};
  for (int i = 0; i < 8; i++) CHECK_EQ_INT(q[i], want[i]);
  /* Per tensor: one scale 0.05 for both. */
  REQUIRE_OK(vmc_quantize_weights(w, 2, 4, VMC_QSCHEME_S8, 0, p, q));
  CHECK_NEAR(p[0].scale, 0.05, 1e-8);
  const int want_t[8] = {10, -25, 4, 0, 40, -2, 7, -127};
  for (int i = 0; i < 8; i++) CHECK_EQ_INT(q[i], want_t[i]);
  /* An all-zero channel: scale 1, codes 0. */
  const float wz[6] = {0, 0, 0, 1, -2, 3};
  REQUIRE_OK(vmc_quantize_weights(wz, 2, 3, VMC_QSCHEME_S8, 1, p, q));
  CHECK(p[0].scale == 1.0f);
  CHECK(q[0] == 0 && q[1] == 0 && q[2] == 0);
  CHECK_EQ_INT(q[5], 127);
  /* Errors: asymmetric scheme, non-finite weight. */
  CHECK(vmc_quantize_weights(w, 2, 4, VMC_QSCHEME_U8, 1, p, q) == VMC_ERR_INVALID_ARG);
  const float wn[2] = {1.0f, NAN};
  CHECK(vmc_quantize_weights(wn, 1, 2, VMC_QSCHEME_S8, 1, p, q) == VMC_ERR_INVALID_ARG);
}

TEST(quant_weights_per_channel_s4_packed) {
  /* Scales 1.27/7 and 6.35/7: codes {3,-7,1,0} and {2,0,0,-7}. */
  const float w[8] = {0.5f, -1.27f, 0.2f, 0.0f, 2.0f, -0.1f, 0.33f, -6.35f};
  vmc_qparams p[2];
  uint8_t q[4];
  REQUIRE_OK(vmc_quantize_weights(w, 2, 4, VMC_QSCHEME_S4, 1, p, q));
  CHECK_NEAR(p[0].scale, 1.27 / 7, 1e-7);
  CHECK_NEAR(p[1].scale, 6.35 / 7, 1e-6);
  /* Low nibble first, two's complement: -7 = 0x9. */
  CHECK_EQ_INT(q[0], 0x93);
  CHECK_EQ_INT(q[1], 0x01);
  CHECK_EQ_INT(q[2], 0x02);
  CHECK_EQ_INT(q[3], 0x90);
  int8_t u[8];
  vmc_s4_unpack(q, 8, u);
  const int want[8] = {3, -7, 1, 0, 2, 0, 0, -7};
  for (int i = 0; i < 8; i++) CHECK_EQ_INT(u[i], want[i]);
  /* Odd count across channels (3 x 3): 5 bytes, last high nibble 0, the
   * same bytes as vmc_s4_pack of the s8 codes. */
  float w3[9];
  for (int i = 0; i < 9; i++) w3[i] = (float)((i * 5) % 9) - 4.0f;
  uint8_t q3[5] = {0xff, 0xff, 0xff, 0xff, 0xff}, ref[5];
  vmc_qparams p3[3];
  REQUIRE_OK(vmc_quantize_weights(w3, 3, 3, VMC_QSCHEME_S4, 1, p3, q3));
  int8_t codes[9];
  REQUIRE_OK(vmc_quantize(w3, 3, 3, p3, VMC_S8, codes));
  CHECK_EQ_INT(vmc_s4_pack(codes, 9, ref), 0);
  CHECK(memcmp(q3, ref, 5) == 0);
  CHECK_EQ_INT(q3[4] >> 4, 0);
  float back[9];
  REQUIRE_OK(vmc_qdequantize(q3, VMC_S4, 3, 3, p3, back));
  for (int i = 0; i < 9; i++) CHECK(back[i] == vmc_qdequantize1(codes[i], &p3[i / 3]));
}

TEST(quant_s4_round_trip_long) {
  /* Longer than the packing chunk, odd length, codes -8..7 with [-8, 7]. */
  enum { N = 1001 };
  const vmc_qparams p = {0.25f, 0, -8, 7};
  float x[N], y[N];
  uint8_t q[(N + 1) / 2];
  for (int i = 0; i < N; i++) x[i] = (float)((i * 7) % 16 - 8) * 0.25f;
  REQUIRE_OK(vmc_quantize(x, 1, N, &p, VMC_S4, q));
  REQUIRE_OK(vmc_qdequantize(q, VMC_S4, 1, N, &p, y));
  for (int i = 0; i < N; i++)
    if (x[i] != y[i]) {
      CHECK(x[i] == y[i]);
      break;
    }
  for (int i = 0; i < N; i++) CHECK_EQ_INT(vmc_s4_get(q, (size_t)i), (i * 7) % 16 - 8);
}

TEST(quant_fake_quantize_is_quant_dequant) {
  enum { C = 3, K = 257 };
  float x[C * K], y[C * K], z[C * K];
  int8_t q[C * K];
  vmc_qparams p[C];
  for (int i = 0; i < C * K; i++) x[i] = (rnd_unit() - 0.5f) * (float)(1 + i / K);
  x[5] = NAN;
  x[6] = INFINITY;
  for (int c = 0; c < C; c++) REQUIRE_OK(vmc_qparams_from_range(-0.4f * (c + 1), 0.5f * (c + 1), VMC_QSCHEME_S8, &p[c]));
  REQUIRE_OK(vmc_qfake_quantize(x, C, K, p, y));
  REQUIRE_OK(vmc_quantize(x, C, K, p, VMC_S8, q));
  REQUIRE_OK(vmc_qdequantize(q, VMC_S8, C, K, p, z));
  CHECK(memcmp(y, z, sizeof y) == 0);
  CHECK(y[5] == 0.0f);
  CHECK(y[6] == 127 * p[0].scale);
  memcpy(z, x, sizeof x);
  REQUIRE_OK(vmc_qfake_quantize(z, C, K, p, z)); /* in place */
  CHECK(memcmp(y, z, sizeof y) == 0);
}

TEST(quant_sqnr) {
  enum { N = 100000 };
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
  REQUIRE(x && y);
  vmc_rng r;
  vmc_rng_seed(&r, 5);
  float amax = 0;
  for (int i = 0; i < N; i++) {
    x[i] = vmc_rng_normal(&r);
    amax = fmaxf(amax, fabsf(x[i]));
  }
  vmc_qparams p8, p4;
  REQUIRE_OK(vmc_qparams_from_range(-amax, amax, VMC_QSCHEME_S8, &p8));
  REQUIRE_OK(vmc_qparams_from_range(-amax, amax, VMC_QSCHEME_S4, &p4));
  REQUIRE_OK(vmc_qfake_quantize(x, 1, N, &p8, y));
  const double s8 = vmc_qsqnr_db(x, y, N), s8b = vmc_qfake_sqnr_db(x, 1, N, &p8);
  const double s4 = vmc_qfake_sqnr_db(x, 1, N, &p4);
  CHECK(s8 > 35 && s8 < 45);
  CHECK_NEAR(s8, s8b, 1e-9);
  CHECK(s4 < s8 - 15 && s4 > 5);
  /* Edges: equal -> +inf; zero signal -> -inf; non-finite pairs skipped. */
  CHECK(isinf(vmc_qsqnr_db(x, x, N)) && vmc_qsqnr_db(x, x, N) > 0);
  const float zero[2] = {0, 0}, one[2] = {1, 0}, nanx[2] = {NAN, 1}, nany[2] = {5, 1};
  CHECK(isinf(vmc_qsqnr_db(zero, one, 2)) && vmc_qsqnr_db(zero, one, 2) < 0);
  CHECK(isinf(vmc_qsqnr_db(nanx, nany, 2)));
  const vmc_qparams bad = {0, 0, 0, 1};
  CHECK(isnan(vmc_qfake_sqnr_db(x, 1, N, &bad)));
  free(x);
  free(y);
}

TEST(quant_bias_s32_rounds_to_its_grid) {
  CHECK(vmc_qbias_s32(1.0f, 0.5f, 0.25f) == 1.0f);      /* code 8 of 0.125 */
  CHECK(vmc_qbias_s32(0.3f, 0.5f, 0.25f) == 0.25f);     /* 2.4 -> 2 */
  CHECK(vmc_qbias_s32(0.3125f, 0.5f, 0.25f) == 0.25f);  /* 2.5 -> 2, ties to even */
  CHECK(vmc_qbias_s32(-0.4375f, 0.5f, 0.25f) == -0.5f); /* -3.5 -> -4 */
  CHECK(vmc_qbias_s32(0.3f, 1e-30f, 1e-30f) == 0.3f);   /* scale below FLT_MIN: unchanged */
}
