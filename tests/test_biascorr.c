/* Empirical bias correction (quant/biascorr.h): after it, measuring again on
 * the same calibration images finds almost no shift left; the corrected
 * biases stay on the integer runtime's s32 grid; the integer runtime runs
 * the result; the CLI refuses it with AdaRound. */
#include "graph/rebuild.h"
#include "quant/biascorr.h"
#include "quant/ptq.h"
#include "quant/qrt.h"
#include "cli_run.h"
#include "test.h"
#include "zoo_fixture.h"

#include <math.h>

TEST(biascorr_removes_the_mean_shift) {
  vmc_dataset *d = test_blobs(64, 4, 3, 30, 0);
  vmc_graph *g = test_zoo_model("resnet8", 5, 13), *f = NULL, *q = NULL;
  REQUIRE(d && g);
  int folded = 0;
  REQUIRE_OK(vmc_graph_fold_bn_copy(g, &f, &folded));
  vmc_ptq_opts o;
  vmc_ptq_opts_default(&o);
  o.weight_scheme = VMC_QSCHEME_S4; /* coarse: a visible shift */
  o.per_channel = 0;
  o.calib_images = 64;
  o.batch = 16;
  o.bias_correct = 1;
  vmc_ptq_report rep;
  REQUIRE_OK(vmc_ptq_quantize(g, d, &o, &q, &rep));
  CHECK_EQ_INT(rep.bias_corrected, 10); /* 9 convs and the fc */
  CHECK(rep.bias_shift > 0);
  CHECK(strstr(vmc_graph_meta(q, "quant"), "\"bias_corrected\":10") != NULL);
  CHECK(strstr(vmc_graph_meta(q, "history"), "bias correction") != NULL);
  /* Measured again: what is left is the s32 rounding of the new biases. */
  vmc_biascorr_report again;
  REQUIRE_OK(vmc_bias_correct(f, q, d, 64, 16, 1, &again));
  CHECK_EQ_INT(again.layers, 10);
  if (!(again.mean_abs_shift < 0.01 * rep.bias_shift))
    vmc_test_fail(__FILE__, __LINE__, "shift left %.3g after correcting %.3g",
                  again.mean_abs_shift, rep.bias_shift);
  /* Every bias an s32 code of s_w * s_x (here s_x from the fakequant that
   * reads the graph input, for conv1). */
  const vmc_node *c1 = test_node_of(q, "conv1"), *fq = test_node_of(q, "input.quant");
  REQUIRE(c1 && fq);
  const vmc_param *w = &q->params[c1->param[0]], *b = &q->params[c1->param[1]];
  const float sx = vmc_node_attr_f(fq, "scale", 0);
  for (int c = 0; c < b->shape.d[0]; c++) {
    const double k = b->data[c] / ((double)w->qscale[0] * sx);
    CHECK(fabs(k - nearbyint(k)) < 1e-3 * (1 + fabs(k)));
  }
  /* The integer runtime runs it. */
  vmc_qrt *rt = NULL;
  CHECK_OK(vmc_qrt_create(q, 4, NULL, &rt));
  vmc_qrt_destroy(rt);
  vmc_ptq_report_free(&rep);
  vmc_graph_free(q);
  vmc_graph_free(f);
  vmc_graph_free(g);
  vmc_dataset_free(d);
}

TEST(biascorr_cli_refuses_adaround) {
  if (!have_binary()) SKIP("the vmc binary is not built");
  char out[4096];
  CHECK_EQ_INT(run(out, sizeof out, "quantize lenet5 -o /nonexistent/q.vmc --bias-correction "
                   "--adaround"), 2);
  CHECK(strstr(out, "--bias-correction") != NULL);
}
