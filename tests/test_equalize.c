/* Cross-layer equalization: the fp32 function is unchanged, each pair's
 * channel ranges are balanced, relu6 pairs are left alone, and PTQ uses it. */
#include "test.h"
#include "zoo_fixture.h"

#include <math.h>
#include <stdlib.h>

#include "graph/rebuild.h"
#include "quant/equalize.h"
#include "quant/ptq.h"

static double max_rel_diff(const float *a, const float *b, size_t n) {
  double m = 0, scale = 0;
  for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(a[i]));
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
  return scale > 0 ? m / scale : m;
}

TEST(equalize_keeps_the_function_and_balances_ranges) {
  vmc_graph *g = test_zoo_model("resnet8", 7, 11), *f = NULL;
  vmc_dataset *d = test_blobs(8, 3, 3, 20, 0);
  REQUIRE(g && d);
  REQUIRE_OK(vmc_graph_fold_bn_copy(g, &f, NULL));
  /* Make one channel of the first block's conv1 much wider than the rest. */
  const int c1 = vmc_graph_find_param(f, "layer1.0.conv1.weight");
  REQUIRE(c1 >= 0);
  const size_t per = vmc_shape_count(&f->params[c1].shape) / (size_t)f->params[c1].shape.d[0];
  for (size_t k = 0; k < per; k++) f->params[c1].data[3 * per + k] *= 40;
  float *before = test_plan_logits(f, d, 8);
  REQUIRE(before);
  vmc_equalize_report r;
  REQUIRE_OK(vmc_equalize(f, 3, &r));
  CHECK_EQ_INT(r.pairs, 3); /* conv1 -> relu -> conv2 in each block */
  CHECK(r.spread_after < r.spread_before);
  float *after = test_plan_logits(f, d, 8);
  REQUIRE(after);
  CHECK(max_rel_diff(before, after, 80) < 1e-4);
  /* Each channel of conv1 and the conv2 weights reading it share one range. */
  const vmc_param *w1 = &f->params[c1];
  const vmc_param *w2 = &f->params[vmc_graph_find_param(f, "layer1.0.conv2.weight")];
  const int oc1 = w1->shape.d[0], oc2 = w2->shape.d[0], taps = w2->shape.d[2] * w2->shape.d[3];
  for (int c = 0; c < oc1; c++) {
    float r1 = 0, r2 = 0;
    for (size_t k = 0; k < per; k++) r1 = fmaxf(r1, fabsf(w1->data[c * per + k]));
    for (int o = 0; o < oc2; o++)
      for (int t = 0; t < taps; t++) r2 = fmaxf(r2, fabsf(w2->data[((size_t)o * oc1 + c) * taps + t]));
    CHECK(fabsf(r1 - r2) <= 1e-5f * r1);
  }
  free(before);
  free(after);
  CHECK(vmc_equalize(f, 0, NULL) == VMC_ERR_INVALID_ARG);
  vmc_graph_free(f);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

TEST(equalize_skips_relu6_and_runs_in_ptq) {
  vmc_graph *m = test_zoo_model("mobilenetv2-tiny", 7, 11), *f = NULL;
  REQUIRE(m);
  REQUIRE_OK(vmc_graph_fold_bn_copy(m, &f, NULL));
  vmc_equalize_report r;
  REQUIRE_OK(vmc_equalize(f, 2, &r));
  CHECK_EQ_INT(r.pairs, 0); /* relu6 does not commute with scaling */
  vmc_graph_free(f);
  vmc_graph_free(m);
  vmc_graph *g = test_zoo_model("resnet8", 7, 11), *q = NULL;
  vmc_dataset *d = test_blobs(8, 4, 3, 20, 0);
  REQUIRE(g && d);
  vmc_ptq_opts o;
  vmc_ptq_opts_default(&o);
  o.calib_images = 8;
  o.equalize = 4;
  vmc_ptq_report rep;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, &rep));
  CHECK_EQ_INT(rep.equalized_pairs, 3);
  const char *meta = vmc_graph_meta(q, "quant");
  CHECK(meta && strstr(meta, "\"equalized_pairs\":3"));
  vmc_ptq_report_free(&rep);
  vmc_graph_free(q);
  o.equalize = -1;
  CHECK(vmc_ptq_quantize(g, d, &o, &q, &rep) == VMC_ERR_INVALID_ARG);
  vmc_ptq_report_free(&rep);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}
