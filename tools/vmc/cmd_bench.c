/* vmc bench: fp32 inference latency and throughput at batch 1 and N. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "graph/graph.h"

static const char *const HELP =
    "Usage: vmc bench MODEL.vmc|ZOO-NAME [--batch N] [options]\n\n"
    "Runs inference on random inputs: warm-up, then the median (and 10th/90th\n"
    "percentiles) of timed repeats, at batch 1 and at batch N.  Reports latency\n"
    "per batch and throughput in images per second.\n\n"
    "Options:\n"
    "  --batch N     the larger batch (default 64)\n"
    "  --repeats N   timed runs per batch size (default 50)\n"
    "  --warmup N    untimed runs first (default 10)\n\n" CLI_COMMON_HELP;

enum { O_BATCH = OPT_CMD_BASE, O_REPEATS, O_WARMUP };

typedef struct {
  int batch;
  double median_ms, p10_ms, p90_ms, images_per_sec;
  size_t arena_bytes;
} bench_row;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static vmc_status bench_batch(vmc_graph *g, int batch, int warmup, int repeats, uint64_t seed,
                              bench_row *r) {
  vmc_plan *p;
  VMC_TRY(vmc_plan_create(g, batch, VMC_MODE_INFER, &p));
  size_t n = (size_t)batch * g->in_shape.d[1] * g->in_shape.d[2] * g->in_shape.d[3];
  vmc_rng rng;
  vmc_rng_seed(&rng, seed);
  float *x = vmc_plan_input(p);
  for (size_t i = 0; i < n; i++) x[i] = vmc_rng_normal(&rng);
  double *t = vmc_malloc_plain((size_t)repeats * sizeof *t);
  if (!t) {
    vmc_plan_destroy(p);
    return vmc_error(VMC_ERR_NOMEM, "bench");
  }
  for (int i = 0; i < warmup; i++) vmc_plan_forward(p, batch);
  for (int i = 0; i < repeats; i++) {
    double t0 = vmc_now();
    vmc_plan_forward(p, batch);
    t[i] = (vmc_now() - t0) * 1e3;
  }
  qsort(t, (size_t)repeats, sizeof *t, cmp_double);
  r->batch = batch;
  r->median_ms = repeats % 2 ? t[repeats / 2] : 0.5 * (t[repeats / 2 - 1] + t[repeats / 2]);
  r->p10_ms = t[repeats / 10];
  r->p90_ms = t[(repeats * 9) / 10 < repeats ? (repeats * 9) / 10 : repeats - 1];
  r->images_per_sec = batch / (r->median_ms / 1e3);
  r->arena_bytes = vmc_plan_arena_bytes(p);
  vmc_free(t);
  vmc_plan_destroy(p);
  return VMC_OK;
}

int cmd_bench(int argc, char **argv) {
  static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                       {"batch", required_argument, 0, O_BATCH},
                                       {"repeats", required_argument, 0, O_REPEATS},
                                       {"warmup", required_argument, 0, O_WARMUP},
                                       {0, 0, 0, 0}};
  cli_common cc;
  cli_common_init(&cc);
  long batch = 64, repeats = 50, warmup = 10;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int r = cli_common_opt(&cc, opt, optarg);
    if (r < 0) return 2;
    if (r) continue;
    switch (opt) {
    case 'h': fputs(HELP, stdout); return 0;
    case O_BATCH: if (cli_int("--batch", optarg, 1, 4096, &batch)) return 2; break;
    case O_REPEATS: if (cli_int("--repeats", optarg, 1, 100000, &repeats)) return 2; break;
    case O_WARMUP: if (cli_int("--warmup", optarg, 0, 100000, &warmup)) return 2; break;
    default: return cli_usage_error("bench", "unknown option");
    }
  }
  if (optind != argc - 1) return cli_usage_error("bench", "expected one MODEL.vmc argument");
  const char *path = argv[optind];
  cli_common_apply(&cc);
  vmc_graph *g = NULL;
  vmc_status s = cli_load_model(path, cc.seed, &g, NULL);
  if (s) return cli_fail("bench", s, NULL);
  bench_row rows[2];
  int nrows = batch == 1 ? 1 : 2;
  for (int i = 0; i < nrows && !s; i++)
    s = bench_batch(g, i == 0 ? 1 : (int)batch, (int)warmup, (int)repeats, cc.seed, &rows[i]);
  if (s) {
    vmc_graph_free(g);
    return cli_fail("bench", s, NULL);
  }
  if (cc.json) {
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "model", path);
    cJSON_AddStringToObject(o, "precision", "fp32");
    cJSON_AddNumberToObject(o, "threads", vmc_get_threads());
    cJSON_AddStringToObject(o, "isa", vmc_isa_name());
    for (int i = 0; i < nrows; i++) {
      cJSON *r = cJSON_CreateObject();
      cJSON_AddNumberToObject(r, "batch", rows[i].batch);
      cJSON_AddNumberToObject(r, "median_ms", rows[i].median_ms);
      cJSON_AddNumberToObject(r, "p10_ms", rows[i].p10_ms);
      cJSON_AddNumberToObject(r, "p90_ms", rows[i].p90_ms);
      cJSON_AddNumberToObject(r, "images_per_sec", rows[i].images_per_sec);
      cJSON_AddNumberToObject(r, "arena_bytes", (double)rows[i].arena_bytes);
      cJSON_AddItemToArray(arr, r);
    }
    cJSON_AddItemToObject(o, "results", arr);
    cli_print_json(o);
  } else {
    printf("%s: fp32, %d threads, %s kernels, %ld warm-up + %ld timed runs\n\n", path,
           vmc_get_threads(), vmc_isa_name(), warmup, repeats);
    printf("%6s %12s %12s %12s %14s %12s\n", "batch", "median ms", "p10 ms", "p90 ms", "images/s",
           "arena KiB");
    for (int i = 0; i < nrows; i++)
      printf("%6d %12.4f %12.4f %12.4f %14.0f %12.1f\n", rows[i].batch, rows[i].median_ms,
             rows[i].p10_ms, rows[i].p90_ms, rows[i].images_per_sec, rows[i].arena_bytes / 1024.0);
  }
  vmc_graph_free(g);
  return 0;
}
