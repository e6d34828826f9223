/* vmc eval: accuracy and loss of a model on a data set split. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "quant/qrt.h"
#include "train/train.h"

static const char *const HELP =
    "Usage: vmc eval MODEL.vmc|ZOO-NAME [--data NAME|PATH] [options]\n\n"
    "Top-1 accuracy and mean cross-entropy of the model on a data set split.\n"
    "Without --data, the data set recorded in the model is used.  A zoo name\n"
    "evaluates that architecture with weights initialised from --seed.\n\n"
    "Options:\n"
    "  --split test|train   (default test)\n"
    "  --limit N            only the first N images\n"
    "  --batch N            images per forward pass (default 256)\n"
    "  --simulate           a quantized model (one with fakequant nodes) runs on\n"
    "                       the integer runtime by default; this runs its fp32\n"
    "                       simulation instead\n"
    "  --logits FILE        also write every image's logits as CSV:\n"
    "                       index,label,predicted,logit_0,...  (written whole or\n"
    "                       not at all)\n\n" CLI_COMMON_HELP;

enum { O_SPLIT = OPT_CMD_BASE, O_LIMIT, O_BATCH, O_LOGITS, O_SIMULATE };

/* CSV of the logits, through a temporary file renamed into place. */
static vmc_status write_logits(const char *path, const vmc_dataset *d, const float *z, int n,
                               int k) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
    return vmc_error(VMC_ERR_INVALID_ARG, "%s: path too long", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return vmc_error(VMC_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
  fprintf(f, "index,label,predicted");
  for (int j = 0; j < k; j++) fprintf(f, ",logit_%d", j);
  fputc('\n', f);
  for (int i = 0; i < n; i++) {
    const float *r = z + (size_t)i * k;
    int best = 0;
    for (int j = 1; j < k; j++)
      if (r[j] > r[best]) best = j;
    fprintf(f, "%d,%d,%d", i, d->labels[i], best);
    for (int j = 0; j < k; j++) fprintf(f, ",%.9g", r[j]);
    fputc('\n', f);
  }
  int bad = ferror(f);
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path) != 0) {
    int e = errno;
    remove(tmp);
    return vmc_error(VMC_ERR_IO, "%s: write failed: %s", path, strerror(e));
  }
  return VMC_OK;
}

/* vmc_evaluate_logits on the integer runtime. */
static vmc_status eval_integer(const vmc_graph *g, const vmc_dataset *d, int batch, int limit,
                               int progress, vmc_eval_result *r, float **logits) {
  const int n = limit > 0 && limit < d->n ? limit : d->n;
  vmc_qrt *q;
  VMC_TRY(vmc_qrt_create(g, batch < n ? batch : n, NULL, &q));
  vmc_infer_fn f;
  vmc_qrt_infer_fn(q, &f);
  vmc_status s = vmc_evaluate_with(&f, d, limit, progress, r, logits);
  vmc_qrt_destroy(q);
  return s;
}

int cmd_eval(int argc, char **argv) {
  static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                       {"split", required_argument, 0, O_SPLIT},
                                       {"limit", required_argument, 0, O_LIMIT},
                                       {"batch", required_argument, 0, O_BATCH},
                                       {"logits", required_argument, 0, O_LOGITS},
                                       {"simulate", no_argument, 0, O_SIMULATE},
                                       {0, 0, 0, 0}};
  cli_common cc;
  cli_common_init(&cc);
  vmc_split split = VMC_SPLIT_TEST;
  long limit = 0, batch = 256, opt;
  const char *logits_path = NULL;
  int simulate = 0;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int r = cli_common_opt(&cc, (int)opt, optarg);
    if (r < 0) return 2;
    if (r) continue;
    switch (opt) {
    case 'h': fputs(HELP, stdout); return 0;
    case O_SPLIT:
      if (!strcmp(optarg, "test")) split = VMC_SPLIT_TEST;
      else if (!strcmp(optarg, "train")) split = VMC_SPLIT_TRAIN;
      else return cli_usage_error("eval", "--split '%s': expected test or train", optarg);
      break;
    case O_LIMIT: if (cli_int("--limit", optarg, 1, 1L << 30, &limit)) return 2; break;
    case O_BATCH: if (cli_int("--batch", optarg, 1, 65536, &batch)) return 2; break;
    case O_LOGITS: logits_path = optarg; break;
    case O_SIMULATE: simulate = 1; break;
    default: return cli_usage_error("eval", "unknown option");
    }
  }
  if (optind != argc - 1)
    return cli_usage_error("eval", "expected one MODEL.vmc (or zoo name) argument");
  const char *path = argv[optind];
  cli_common_apply(&cc);
  vmc_graph *g = NULL;
  vmc_dataset *d = NULL;
  vmc_status s = cli_load_model(path, cc.seed, &g, NULL);
  if (s) return cli_fail("eval", s, NULL);
  s = cli_open_data(&cc, g, split, &d);
  vmc_eval_result r;
  float *z = NULL;
  const int integer = !simulate && vmc_graph_is_quantized(g);
  if (!s && integer) s = eval_integer(g, d, (int)batch, (int)limit, cc.progress, &r, logits_path ? &z : NULL);
  else if (!s) s = vmc_evaluate_logits(g, d, (int)batch, (int)limit, cc.progress, &r, logits_path ? &z : NULL);
  if (!s && logits_path) s = write_logits(logits_path, d, z, r.n, r.classes);
  free(z);
  if (s) {
    vmc_graph_free(g);
    vmc_dataset_free(d);
    return cli_fail("eval", s, NULL);
  }
  if (cc.json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", path);
    cJSON_AddStringToObject(o, "dataset", d->name);
    cJSON_AddStringToObject(o, "split", split == VMC_SPLIT_TEST ? "test" : "train");
    cJSON_AddStringToObject(o, "runtime", integer ? "integer" : "fp32");
    cJSON_AddNumberToObject(o, "images", r.n);
    cJSON_AddNumberToObject(o, "accuracy", r.accuracy);
    cJSON_AddNumberToObject(o, "loss", r.loss);
    cJSON_AddNumberToObject(o, "seconds", r.seconds);
    cJSON_AddNumberToObject(o, "images_per_sec", r.n / r.seconds);
    cli_print_json(o);
  } else {
    printf("%s on %s/%s: accuracy %.2f%%  loss %.4f  (%d images, %.2f s, %.0f img/s, %s)\n",
           path, d->name, split == VMC_SPLIT_TEST ? "test" : "train", 100 * r.accuracy, r.loss,
           r.n, r.seconds, r.n / r.seconds,
           integer ? "integer runtime" : vmc_graph_is_quantized(g) ? "fp32 simulation" : "fp32");
  }
  vmc_graph_free(g);
  vmc_dataset_free(d);
  return 0;
}
