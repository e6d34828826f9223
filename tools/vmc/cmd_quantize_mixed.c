/* vmc quantize --sensitivity / --bits-budget: the per-layer sensitivity
 * table and mixed precision (quant/sensitivity.h); options parsed by
 * cmd_quantize. */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "data/data.h"
#include "graph/graph.h"
#include "quant/sensitivity.h"

/* A number for the table: "inf" where the SQNR is infinite (no error). */
static void num(FILE *f, double v, int json) {
  if (isfinite(v)) fprintf(f, "%.6g", v);
  else fputs(json ? "null" : "inf", f);
}

static void write_rows(FILE *f, const vmc_sens_report *r, int json) {
  if (json)
    fprintf(f, "{\"calib_images\": %d, \"eval_first\": %d, \"eval_images\": %d, "
            "\"fp32_accuracy\": %.6f, \"layers\": [\n", r->calib_images, r->eval_first,
            r->eval_images, r->fp32_accuracy);
  else
    fputs("node,op,weights,act_sqnr_db,w8_sqnr_db,drop8_points,logit8_sqnr_db,w4_sqnr_db,"
          "drop4_points,logit4_sqnr_db\n", f);
  for (int i = 0; i < r->n_layers; i++) {
    const vmc_sens_layer *l = &r->layers[i];
    if (json) fprintf(f, "  {\"node\": \"%s\", \"op\": \"%s\", \"weights\": %lld, \"act_sqnr_db\": ",
                      l->node, l->op, l->weights);
    else fprintf(f, "%s,%s,%lld,", l->node, l->op, l->weights);
    num(f, l->act_sqnr_db, json);
    for (int b = 0; b < 2; b++) {
      const int bits = 8 >> b;
      if (json) fprintf(f, ", \"w%d_sqnr_db\": ", bits);
      else fputc(',', f);
      num(f, l->w_sqnr_db[b], json);
      if (json) fprintf(f, ", \"drop%d_points\": ", bits);
      else fputc(',', f);
      num(f, l->drop[b], json);
      if (json) fprintf(f, ", \"logit%d_sqnr_db\": ", bits);
      else fputc(',', f);
      num(f, l->logit_sqnr_db[b], json);
    }
    fputs(json ? (i + 1 < r->n_layers ? "},\n" : "}\n") : "\n", f);
  }
  if (json) fputs("]}\n", f);
}

typedef struct table_ctx {
  const vmc_sens_report *r;
  int json;
} table_ctx;

static void emit_table(FILE *f, const void *ctx) {
  const table_ctx *t = ctx;
  write_rows(f, t->r, t->json);
}

/* The table as JSON (path ends in .json) or CSV, through a temporary file
 * renamed into place. */
static vmc_status write_table(const char *path, const vmc_sens_report *r) {
  const size_t n = strlen(path);
  const table_ctx t = {r, n >= 5 && !strcmp(path + n - 5, ".json")};
  return cli_write_file(path, emit_table, &t);
}

static void sqnr_cell(char *buf, size_t n, double v) {
  snprintf(buf, n, isfinite(v) ? "%.1f" : "exact", v);
}

static void print_table(const vmc_sens_report *r, const char *data) {
  printf("sensitivity: each conv/linear alone quantized (input u8, weights s8 / s4), "
         "%d held-out images of %s/train (%d..%d, after %d calibration images), fp32 accuracy "
         "%.2f%%, %.1f s\n\n", r->eval_images, data, r->eval_first,
         r->eval_first + r->eval_images - 1, r->calib_images, 100 * r->fp32_accuracy, r->seconds);
  printf("%-24s %-7s %8s %8s | %8s %7s %8s | %8s %7s %8s\n", "layer", "op", "weights",
         "act SQNR", "w8 SQNR", "drop8", "logit8", "w4 SQNR", "drop4", "logit4");
  for (int i = 0; i < r->n_layers; i++) {
    const vmc_sens_layer *l = &r->layers[i];
    char a[16], w8[16], z8[16], w4[16], z4[16];
    sqnr_cell(a, sizeof a, l->act_sqnr_db);
    sqnr_cell(w8, sizeof w8, l->w_sqnr_db[0]);
    sqnr_cell(z8, sizeof z8, l->logit_sqnr_db[0]);
    sqnr_cell(w4, sizeof w4, l->w_sqnr_db[1]);
    sqnr_cell(z4, sizeof z4, l->logit_sqnr_db[1]);
    printf("%-24s %-7s %8lld %8s | %8s %7.2f %8s | %8s %7.2f %8s\n", l->node, l->op, l->weights, a,
           w8, l->drop[0], z8, w4, l->drop[1], z4);
  }
  printf("(SQNR in dB; drops in points on the held-out images)\n");
}

int quantize_mixed(const cli_common *cc, const char *in_path, const cli_quant_out *out,
                   const struct vmc_ptq_opts *po, const cli_mixed *m) {
  const char *out_path = out->model;
  const int do_eval = out->eval;
  const long eval_limit = out->eval_limit;
  vmc_graph *g = NULL, *q = NULL;
  vmc_dataset *train = NULL, *test = NULL;
  vmc_sens_report sr = {0};
  vmc_mixed_result mr = {0};
  vmc_ptq_report pr = {0};
  vmc_eval_result ef = {0}, eq = {0};
  vmc_sens_opts so;
  vmc_sens_opts_default(&so);
  so.ptq = *po;
  so.eval_images = m->held_out;
  so.show_progress = cc->progress;
  const vmc_mixed_opts mo = {.bits_budget = m->bits_budget, .max_drop = m->max_drop,
                             .rank = (vmc_sens_rank)m->rank};
  long long bytes = -1;
  /* A bad budget fails before the minutes of analysis. */
  vmc_status s = m->bits_budget > 0 && !(m->bits_budget >= 4)
                     ? vmc_error(VMC_ERR_INVALID_ARG, "--bits-budget %g: below 4 bits per weight "
                                 "(every layer at 4 bits is the smallest choice)", m->bits_budget)
                     : VMC_OK;
  if (!s) s = vmc_model_load(in_path, &g);
  if (!s) s = cli_open_data(cc, g, VMC_SPLIT_TRAIN, &train);
  if (!s) s = vmc_sensitivity(g, train, &so, &sr);
  if (!s && m->table) s = write_table(m->table, &sr);
  if (!s && m->bits_budget > 0) s = vmc_mixed_precision(g, train, &so, &sr, &mo, &q, &pr, &mr);
  if (!s && q && do_eval) s = cli_open_data(cc, g, VMC_SPLIT_TEST, &test);
  if (!s && q && do_eval) s = vmc_evaluate(g, test, 256, (int)eval_limit, cc->progress, &ef);
  if (!s && q && do_eval) s = vmc_evaluate(q, test, 256, (int)eval_limit, cc->progress, &eq);
  if (!s && q) {
    const char *acc = vmc_graph_meta(q, "accuracy");
    if (acc) s = vmc_graph_set_meta(q, "accuracy.fp32", acc);
    cli_meta_remove(q, "accuracy");
    if (!s && do_eval && !eval_limit) {
      char buf[32];
      snprintf(buf, sizeof buf, "%.4f", eq.accuracy);
      s = vmc_graph_set_meta(q, "accuracy", buf);
    }
    char line[160];
    snprintf(line, sizeof line, "mixed precision: %.3f bits per weight (budget %g, %s rank%s), "
             "%d layers in fp32", mr.mean_bits, m->bits_budget, vmc_sens_rank_name(mo.rank),
             m->max_drop >= 0 ? ", accuracy budget" : "", mr.fp32_layers);
    if (!s) s = vmc_graph_add_history(q, line);
    if (!s) s = vmc_model_save(q, out_path);
    struct stat st;
    if (!s && stat(out_path, &st) == 0) bytes = (long long)st.st_size;
  }
  if (s) goto done;
  if (cc->json || out->report) {
    cJSON *o = cJSON_CreateObject(), *layers = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "model", in_path);
    cJSON_AddNumberToObject(o, "calib_images", sr.calib_images);
    cJSON_AddNumberToObject(o, "eval_first", sr.eval_first);
    cJSON_AddNumberToObject(o, "eval_images", sr.eval_images);
    cJSON_AddNumberToObject(o, "fp32_heldout_accuracy", sr.fp32_accuracy);
    cJSON_AddNumberToObject(o, "seconds", sr.seconds);
    for (int i = 0; i < sr.n_layers; i++) {
      const vmc_sens_layer *l = &sr.layers[i];
      cJSON *j = cJSON_CreateObject();
      cJSON_AddStringToObject(j, "node", l->node);
      cJSON_AddNumberToObject(j, "weights", (double)l->weights);
      for (int b = 0; b < 2; b++) {
        char k[24];
        snprintf(k, sizeof k, "drop%d_points", 8 >> b);
        cJSON_AddNumberToObject(j, k, l->drop[b]);
        snprintf(k, sizeof k, "logit%d_sqnr_db", 8 >> b);
        if (isfinite(l->logit_sqnr_db[b])) cJSON_AddNumberToObject(j, k, l->logit_sqnr_db[b]);
        else cJSON_AddNullToObject(j, k);
      }
      if (q) cJSON_AddNumberToObject(j, "bits", mr.bits[i]);
      cJSON_AddItemToArray(layers, j);
    }
    cJSON_AddItemToObject(o, "layers", layers);
    if (q) {
      cJSON_AddStringToObject(o, "output", out_path);
      cJSON_AddNumberToObject(o, "bits_budget", m->bits_budget);
      cJSON_AddNumberToObject(o, "mean_bits", mr.mean_bits);
      cJSON_AddNumberToObject(o, "fp32_layers", mr.fp32_layers);
      cJSON_AddNumberToObject(o, "heldout_accuracy", mr.accuracy);
      cJSON_AddNumberToObject(o, "heldout_drop_points", mr.drop);
      cJSON_AddNumberToObject(o, "ptq_runs", mr.tries);
      cJSON_AddNumberToObject(o, "file_bytes", (double)bytes);
      if (do_eval) {
        cJSON_AddNumberToObject(o, "test_images", eq.n);
        cJSON_AddNumberToObject(o, "fp32_accuracy", ef.accuracy);
        cJSON_AddNumberToObject(o, "quant_accuracy", eq.accuracy);
      }
      cJSON_AddItemToObject(o, "quantized_layers", cli_ptq_layers_json(&pr));
    }
    s = cli_report_json(cc, out->report, o);
  }
  if (!cc->json) {
    if (!cc->quiet || !q) print_table(&sr, train->name);
    if (m->table && !cc->quiet) printf("table written to %s\n", m->table);
    if (q) {
      long long w = 0;
      for (int i = 0; i < sr.n_layers; i++) w += sr.layers[i].weights;
      printf("\nmixed precision (budget %g bits per weight, %s rank", m->bits_budget,
             vmc_sens_rank_name(mo.rank));
      if (m->max_drop >= 0) printf(", accuracy budget %g points", m->max_drop);
      printf("): %.3f bits per weight, %.1f KiB of weights, %d layers in fp32\n", mr.mean_bits,
             mr.mean_bits * (double)w / 8 / 1024, mr.fp32_layers);
      for (int i = 0; i < sr.n_layers; i++)
        printf("  %-24s %8lld  %s\n", sr.layers[i].node, sr.layers[i].weights,
               mr.bits[i] == 8 ? "s8" : mr.bits[i] == 4 ? "s4" : "fp32");
      printf("held-out accuracy %.2f%% (fp32 %.2f%%, drop %.2f points), %d PTQ run%s; %s: %lld "
             "bytes\n", 100 * mr.accuracy, 100 * sr.fp32_accuracy, mr.drop, mr.tries,
             mr.tries > 1 ? "s" : "", out_path, bytes);
      if (do_eval)
        printf("test accuracy on %s (%d images): fp32 %.2f%%, mixed %.2f%% (drop %.2f points)\n",
               test->name, eq.n, 100 * ef.accuracy, 100 * eq.accuracy,
               100.0 * ((double)ef.accuracy - eq.accuracy));
    }
  }
done:
  vmc_sens_report_free(&sr);
  vmc_mixed_result_free(&mr);
  vmc_ptq_report_free(&pr);
  vmc_graph_free(g);
  vmc_graph_free(q);
  vmc_dataset_free(train);
  vmc_dataset_free(test);
  /* A failure, or the report could not be written. */
  return s ? cli_fail("quantize", s, NULL) : 0;
}
