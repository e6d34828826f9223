/* vmc quantize --qat: quantization-aware training (quant/qat.h). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "data/data.h"
#include "graph/graph.h"
#include "quant/qat.h"

/* The final layers and fakequant nodes of a QAT report. */
static void add_final_qparams(cJSON *o, const vmc_qat_report *r) {
  cJSON *layers = cJSON_CreateArray(), *fqs = cJSON_CreateArray();
  for (int i = 0; i < r->n_layers; i++) {
    const vmc_qat_layer *l = &r->layers[i];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "node", l->node);
    cJSON_AddStringToObject(j, "input", l->input);
    cJSON_AddStringToObject(j, "quant_node", l->quant);
    cJSON_AddNumberToObject(j, "weight_bits", l->weight_bits);
    cJSON_AddNumberToObject(j, "weight_blocks", l->channels);
    cJSON_AddNumberToObject(j, "weight_scale_min", l->w_scale_min);
    cJSON_AddNumberToObject(j, "weight_scale_max", l->w_scale_max);
    cJSON_AddItemToArray(layers, j);
  }
  for (int i = 0; i < r->n_fakequant; i++) {
    const vmc_qat_fakequant *f = &r->fakequant[i];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "node", f->node);
    cJSON_AddStringToObject(j, "input", f->input);
    cJSON_AddStringToObject(j, "range", f->lsq ? "lsq" : "moving-avg");
    cJSON_AddNumberToObject(j, "scale", f->qp.scale);
    cJSON_AddNumberToObject(j, "zero_point", f->qp.zero_point);
    cJSON_AddNumberToObject(j, "qmin", f->qp.qmin);
    cJSON_AddNumberToObject(j, "qmax", f->qp.qmax);
    cJSON_AddNumberToObject(j, "range_lo", f->lo);
    cJSON_AddNumberToObject(j, "range_hi", f->hi);
    cJSON_AddItemToArray(fqs, j);
  }
  cJSON_AddItemToObject(o, "layers", layers);
  cJSON_AddItemToObject(o, "fakequant", fqs);
}

int quantize_qat(const cli_common *cc, const char *in_path, const cli_quant_out *out,
                 struct vmc_qat_opts *qo, const char *scheme) {
  const char *out_path = out->model;
  const int do_eval = out->eval;
  const long eval_limit = out->eval_limit;
  vmc_graph *g = NULL, *q = NULL;
  vmc_dataset *train = NULL, *test = NULL;
  vmc_qat_report rep = {0};
  vmc_eval_result ef = {0};
  cli_epoch_log log = {cc, cJSON_CreateArray(), "qat "};
  const int quiet = cc->quiet || cc->json;
  qo->train.seed = cc->seed;
  qo->train.quiet = !cc->progress;
  qo->train.limit_test = (int)eval_limit;
  qo->on_epoch = cli_on_epoch;
  qo->cb_user = &log;
  vmc_status s = vmc_model_load(in_path, &g);
  if (!s) s = cli_open_data(cc, g, VMC_SPLIT_TRAIN, &train);
  if (!s) s = cli_open_data(cc, g, VMC_SPLIT_TEST, &test);
  if (!s && do_eval) s = vmc_evaluate(g, test, 256, (int)eval_limit, cc->progress, &ef);
  if (!s && !quiet)
    printf("%s -> %s: QAT %s, %d epochs on %s/train (lr %g cosine, batch %d), starting from "
           "%s post-training quantization\n", in_path, out_path, scheme, qo->train.epochs,
           train->name, (double)qo->train.lr, qo->train.batch,
           vmc_observer_kind_name(qo->ptq.observer));
  if (!s) s = vmc_qat(g, train, test, qo, &q, &rep);
  /* The float model's accuracy is not the quantized one's. */
  const char *acc = q ? vmc_graph_meta(q, "accuracy") : NULL;
  if (!s && acc) s = vmc_graph_set_meta(q, "accuracy.fp32", acc);
  if (!s && q) cli_meta_remove(q, "accuracy");
  const vmc_epoch_result *last = rep.epochs ? &rep.epoch[rep.epochs - 1] : NULL;
  if (!s && !eval_limit && last && last->test_acc >= 0) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.4f", last->test_acc);
    s = vmc_graph_set_meta(q, "accuracy", buf);
  }
  if (!s) s = vmc_model_save(q, out_path);
  int rc = 0;
  if (s) {
    rc = cli_fail("quantize", s, NULL);
    cJSON_Delete(log.epochs);
  } else if (cc->json || out->report) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", in_path);
    cJSON_AddStringToObject(o, "output", out_path);
    cJSON_AddStringToObject(o, "method", "qat");
    cJSON_AddStringToObject(o, "scheme", scheme);
    cJSON_AddStringToObject(o, "granularity", qo->ptq.per_channel ? "per-channel" : "per-tensor");
    cJSON_AddStringToObject(o, "weight_scales", qo->fixed_weight_scales ? "fixed" : "max|w| per step");
    cJSON_AddNumberToObject(o, "epochs_run", rep.epochs);
    cJSON_AddNumberToObject(o, "lr", qo->train.lr);
    cJSON_AddNumberToObject(o, "batch", qo->train.batch);
    cJSON_AddNumberToObject(o, "freeze_observers_epoch", qo->freeze_observers_epoch);
    cJSON_AddNumberToObject(o, "freeze_bn_epoch", qo->freeze_bn_epoch);
    cJSON_AddNumberToObject(o, "batchnorm_folded", rep.ptq.bn_folded);
    cJSON_AddNumberToObject(o, "seconds", rep.seconds);
    if (do_eval) cJSON_AddNumberToObject(o, "fp32_accuracy", ef.accuracy);
    if (last && last->test_acc >= 0) {
      cJSON_AddNumberToObject(o, "test_images", eval_limit ? (double)eval_limit : test->n);
      cJSON_AddNumberToObject(o, "qat_accuracy", last->test_acc);
      if (do_eval) cJSON_AddNumberToObject(o, "drop_points", 100.0 * ((double)ef.accuracy - last->test_acc));
    }
    cJSON_AddItemToObject(o, "epochs", log.epochs);
    cJSON_AddNumberToObject(o, "calib_images", rep.ptq.calib_images);
    add_final_qparams(o, &rep);
    s = cli_report_json(cc, out->report, o);
    if (s) rc = cli_fail("quantize", s, NULL);
  } else {
    cJSON_Delete(log.epochs);
  }
  if (!s && !cc->json) {
    if (last && last->test_acc >= 0 && (do_eval || !cc->quiet)) {
      printf("test accuracy on %s: %s QAT %.2f%%", test->name, scheme, 100 * last->test_acc);
      if (do_eval)
        printf(", fp32 %.2f%% (drop %.2f points)", 100 * ef.accuracy,
               100.0 * ((double)ef.accuracy - last->test_acc));
      printf(", %.1f s\n", rep.seconds);
    }
  }
  vmc_qat_report_free(&rep);
  vmc_graph_free(g);
  vmc_graph_free(q);
  vmc_dataset_free(train);
  vmc_dataset_free(test);
  return rc;
}
