/* vmc bench: inference latency and throughput at batch 1 and N, on the fp32
 * plan or the integer runtime; --vs compares two models side by side. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "graph/graph.h"
#include "graph/plan.h"
#include "io/io.h"
#include "quant/qrt.h"

static const char *const HELP =
    "Usage: vmc bench MODEL.vmc|ZOO-NAME [--batch N] [--vs OTHER.vmc] [options]\n\n"
    "Runs inference on random inputs: warm-up, then the median (and 10th/90th\n"
    "percentiles) of timed repeats, at batch 1 and at batch N.  Reports latency\n"
    "per batch and throughput in images per second.  A quantized model (one\n"
    "with fakequant nodes) runs on the integer runtime.\n\n"
    "Options:\n"
    "  --batch N     the larger batch (default 64)\n"
    "  --repeats N   timed runs per batch size (default 50)\n"
    "  --warmup N    untimed runs first (default 10)\n"
    "  --simulate    run a quantized model's fp32 simulation instead\n"
    "  --profile     then time every layer (the integer runtime: every step) at\n"
    "                the larger batch, as many runs again: the kernel it ran\n"
    "                (winograd-4x4, gemm-phase, depthwise, ...), time per image,\n"
    "                share, multiply-adds and GFLOP/s (GOP/s on the integer\n"
    "                runtime) of each (on several threads, images run on one\n"
    "                thread each and the times add up over the threads)\n"
    "  --vs OTHER    also bench OTHER (e.g. the float model MODEL came from) and\n"
    "                print both side by side: file size, parameter storage,\n"
    "                batch-1 latency, batch-N throughput (medians), ratios\n\n" CLI_COMMON_HELP;

enum { O_BATCH = OPT_CMD_BASE, O_REPEATS, O_WARMUP, O_SIMULATE, O_VS, O_PROFILE };

typedef struct {
  int batch;
  double median_ms, p10_ms, p90_ms, images_per_sec;
  size_t arena_bytes;
  const char *layout; /* the integer runtime's (vmc_qrt_layout_name), or NULL */
} bench_row;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The fp32 plan or the integer runtime, for one batch size. */
typedef struct engine {
  vmc_plan *p;
  vmc_qrt *q;
} engine;

static vmc_status engine_create(vmc_graph *g, int integer, int batch, engine *e) {
  e->p = NULL;
  e->q = NULL;
  return integer ? vmc_qrt_create(g, batch, NULL, &e->q)
                 : vmc_plan_create(g, batch, VMC_MODE_INFER, &e->p);
}
static float *engine_input(engine *e) { return e->q ? vmc_qrt_input(e->q) : vmc_plan_input(e->p); }
static vmc_status engine_forward(engine *e, int n) {
  return e->q ? vmc_qrt_forward(e->q, n) : vmc_plan_forward(e->p, n);
}
static size_t engine_bytes(const engine *e) {
  return e->q ? vmc_qrt_arena_bytes(e->q) : vmc_plan_arena_bytes(e->p);
}
static void engine_destroy(engine *e) {
  vmc_qrt_destroy(e->q);
  vmc_plan_destroy(e->p);
}

/* The engine for batch with a random input, after `warmup` runs (destroyed
 * again on an error). */
static vmc_status engine_ready(vmc_graph *g, int integer, int batch, int warmup, uint64_t seed,
                               engine *e) {
  VMC_TRY(engine_create(g, integer, batch, e));
  const size_t n = (size_t)batch * g->in_shape.d[1] * g->in_shape.d[2] * g->in_shape.d[3];
  vmc_rng rng;
  vmc_rng_seed(&rng, seed);
  float *x = engine_input(e);
  for (size_t i = 0; i < n; i++) x[i] = vmc_rng_normal(&rng);
  vmc_status s = VMC_OK;
  for (int i = 0; i < warmup && !s; i++) s = engine_forward(e, batch);
  if (s) engine_destroy(e);
  return s;
}

static vmc_status bench_batch(vmc_graph *g, int integer, int batch, int warmup, int repeats,
                              uint64_t seed, bench_row *r) {
  double *t = vmc_malloc_plain((size_t)repeats * sizeof *t);
  if (!t) return vmc_error(VMC_ERR_NOMEM, "bench");
  engine e;
  vmc_status s = engine_ready(g, integer, batch, warmup, seed, &e);
  if (s) {
    vmc_free(t);
    return s;
  }
  for (int i = 0; i < repeats && !s; i++) {
    double t0 = vmc_now();
    s = engine_forward(&e, batch);
    t[i] = (vmc_now() - t0) * 1e3;
  }
  if (s) {
    vmc_free(t);
    engine_destroy(&e);
    return s;
  }
  qsort(t, (size_t)repeats, sizeof *t, cmp_double);
  r->batch = batch;
  r->median_ms = repeats % 2 ? t[repeats / 2] : 0.5 * (t[repeats / 2 - 1] + t[repeats / 2]);
  r->p10_ms = t[repeats / 10];
  r->p90_ms = t[(repeats * 9) / 10 < repeats ? (repeats * 9) / 10 : repeats - 1];
  r->images_per_sec = batch / (r->median_ms / 1e3);
  r->arena_bytes = engine_bytes(&e);
  r->layout = e.q ? vmc_qrt_layout_name(e.q) : NULL;
  vmc_free(t);
  engine_destroy(&e);
  return VMC_OK;
}

/* --profile: the engine for batch, warmed up, then `repeats` runs with its
 * nodes (the integer runtime: its steps) timed; a table on stdout, or a
 * "profile" object added to json. */
static vmc_status bench_profile(vmc_graph *g, int integer, int batch, int warmup, int repeats,
                                uint64_t seed, cJSON *json) {
  engine e;
  VMC_TRY(engine_ready(g, integer, batch, warmup, seed, &e));
  vmc_status s = e.q ? vmc_qrt_profile(e.q, 1) : vmc_plan_profile(e.p, 1);
  for (int i = 0; i < repeats && !s; i++) s = engine_forward(&e, batch);
  if (s) {
    engine_destroy(&e);
    return s;
  }
  /* The timed units: the plan's nodes, or the runtime's steps. */
  const vmc_graph *pg = e.p ? vmc_plan_graph(e.p) : NULL;
  const char *node, *op;
  double sec, macs;
  const int units = pg ? pg->n_nodes : vmc_qrt_step_info(e.q, -1, &node, &op, &sec, &macs);
  const double images = (double)batch * repeats;
  /* The integer runtime's rate counts integer operations, not flops. */
  const char *rate = e.q ? "GOP/s" : "GFLOP/s", *rate_key = e.q ? "gops" : "gflops";
  double total = 0, total_macs = 0;
  for (int pass = 0; pass < 2; pass++) {
    cJSON *arr = json && pass ? cJSON_CreateArray() : NULL;
    if (pass && !json) {
      const int nt = vmc_get_threads();
      printf("\nper %s, batch %d, %d runs, %d thread%s%s:\n", pg ? "layer" : "step of the integer runtime",
             batch, repeats, nt, nt > 1 ? "s" : "",
             batch > 1 && nt > 1 ? " (time summed over the threads)" : "");
      printf("%-28s %-10s %-13s %12s %7s %12s %9s\n", "node", "op", "kernel", "us/image", "%",
             "MMAC/image", rate);
    }
    for (int i = 0; i < units; i++) {
      const char *kernel;
      if (pg) {
        node = pg->nodes[i].name;
        op = pg->nodes[i].op->name;
        sec = vmc_plan_node_seconds(e.p, i, 0);
        macs = (double)vmc_plan_node_macs(e.p, i);
        kernel = vmc_plan_node_kernel(e.p, i);
      } else {
        vmc_qrt_step_info(e.q, i, &node, &op, &sec, &macs);
        kernel = vmc_qrt_step_kernel(e.q, i);
      }
      if (sec <= 0) continue; /* folded into another node */
      if (!pass) {
        total += sec;
        total_macs += macs;
        continue;
      }
      const double us = sec / images * 1e6, gflops = macs > 0 ? 2.0 * macs / (us * 1e-6) / 1e9 : 0;
      if (json) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "node", node);
        cJSON_AddStringToObject(r, "op", op);
        if (kernel) cJSON_AddStringToObject(r, "kernel", kernel);
        cJSON_AddNumberToObject(r, "us_per_image", us);
        cJSON_AddNumberToObject(r, "share", sec / total);
        cJSON_AddNumberToObject(r, "macs", macs);
        cJSON_AddNumberToObject(r, rate_key, gflops);
        cJSON_AddItemToArray(arr, r);
        continue;
      }
      printf("%-28s %-10s %-13s %12.2f %7.1f ", node, op, kernel ? kernel : "-", us,
             100 * sec / total);
      if (macs > 0)
        printf("%12.3f %9.1f\n", macs / 1e6, gflops);
      else
        printf("%12s %9s\n", "-", "-");
    }
    if (!pass) continue;
    const double us = total / images * 1e6;
    if (json) {
      cJSON *o = cJSON_CreateObject();
      cJSON_AddNumberToObject(o, "batch", batch);
      cJSON_AddNumberToObject(o, "runs", repeats);
      cJSON_AddNumberToObject(o, "us_per_image", us);
      cJSON_AddItemToObject(o, "layers", arr);
      cJSON_AddItemToObject(json, "profile", o);
    } else {
      printf("%-28s %-10s %-13s %12.2f %7.1f %12.3f %9.1f\n", "all", "", "", us, 100.0,
             total_macs / 1e6, 2.0 * total_macs / (us * 1e-6) / 1e9);
    }
  }
  engine_destroy(&e);
  return VMC_OK;
}

/* One model: loaded, its parameters' storage, its two rows. */
typedef struct bench_model {
  const char *path;
  vmc_graph *g;
  long long file_bytes;
  int integer;
  double param_bytes;            /* as the file stores them (codes, scales) */
  double n_f32, n_s8, n_s4;      /* scalars per storage type */
  bench_row rows[2];
} bench_model;

/* The scalars per storage type, and the bytes the file gives the parameters
 * (codes, scales and values, coded where the writer codes them). */
static vmc_status param_storage(bench_model *m) {
  m->n_f32 = m->n_s8 = m->n_s4 = 0;
  for (int i = 0; i < m->g->n_params; i++) {
    const vmc_param *p = &m->g->params[i];
    const double n = (double)vmc_shape_count(&p->shape);
    if (p->store == VMC_S8) m->n_s8 += n;
    else if (p->store == VMC_S4) m->n_s4 += n;
    else m->n_f32 += n;
  }
  uint64_t *bytes = vmc_malloc_plain((size_t)(m->g->n_params ? m->g->n_params : 1) * sizeof *bytes);
  if (!bytes) return vmc_error(VMC_ERR_NOMEM, "bench");
  const vmc_status s = vmc_model_param_bytes(m->g, bytes, NULL);
  m->param_bytes = 0;
  for (int i = 0; i < m->g->n_params && !s; i++) m->param_bytes += (double)bytes[i];
  vmc_free(bytes);
  return s;
}

static const char *storage_str(const bench_model *m, char *buf, size_t n) {
  int k = 0;
  buf[0] = 0;
  if (m->n_s8) k += snprintf(buf + k, n - (size_t)k, "s8 %.0f ", m->n_s8);
  if (m->n_s4 && (size_t)k < n) k += snprintf(buf + k, n - (size_t)k, "s4 %.0f ", m->n_s4);
  if (m->n_f32 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, "f32 %.0f", m->n_f32);
  return buf;
}

static vmc_status bench_model_run(bench_model *m, int nrows, int batch, int warmup,
                                  int repeats, uint64_t seed) {
  VMC_TRY(param_storage(m));
  for (int i = 0; i < nrows; i++)
    VMC_TRY(bench_batch(m->g, m->integer, i == 0 ? 1 : batch, warmup, repeats, seed, &m->rows[i]));
  return VMC_OK;
}

static const char *runtime_name(const bench_model *m) {
  return m->integer ? "integer" : vmc_graph_is_quantized(m->g) ? "fp32 simulation" : "fp32";
}

/* The runtime and, for the integer one, its layout: "integer, pixel-major". */
static const char *runtime_label(const bench_model *m, char *buf, size_t n) {
  const char *l = m->rows[0].layout;
  snprintf(buf, n, "%s%s%s", runtime_name(m), l ? ", " : "", l ? l : "");
  return buf;
}

static void print_vs(const bench_model *a, const bench_model *b, int nrows, int json) {
  char sa[96], sb[96];
  if (json) {
    cJSON *o = cJSON_CreateObject();
    const bench_model *ms[2] = {a, b};
    const char *keys[2] = {"model", "vs"};
    for (int k = 0; k < 2; k++) {
      cJSON *r = cJSON_CreateObject();
      cJSON_AddStringToObject(r, "path", ms[k]->path);
      cJSON_AddStringToObject(r, "runtime", runtime_name(ms[k]));
      if (ms[k]->rows[0].layout) cJSON_AddStringToObject(r, "layout", ms[k]->rows[0].layout);
      cJSON_AddNumberToObject(r, "file_bytes", (double)ms[k]->file_bytes);
      cJSON_AddNumberToObject(r, "param_bytes", ms[k]->param_bytes);
      cJSON_AddStringToObject(r, "params", storage_str(ms[k], sa, sizeof sa));
      cJSON_AddNumberToObject(r, "batch1_median_ms", ms[k]->rows[0].median_ms);
      if (nrows > 1) cJSON_AddNumberToObject(r, "batch_images_per_sec", ms[k]->rows[1].images_per_sec);
      cJSON_AddItemToObject(o, keys[k], r);
    }
    cJSON_AddNumberToObject(o, "threads", vmc_get_threads());
    cJSON_AddStringToObject(o, "isa", vmc_isa_name());
    cJSON_AddNumberToObject(o, "batch", nrows > 1 ? a->rows[1].batch : 1);
    cJSON_AddNumberToObject(o, "size_ratio", (double)b->file_bytes / (double)a->file_bytes);
    cJSON_AddNumberToObject(o, "latency_speedup", b->rows[0].median_ms / a->rows[0].median_ms);
    if (nrows > 1)
      cJSON_AddNumberToObject(o, "throughput_speedup",
                              a->rows[1].images_per_sec / b->rows[1].images_per_sec);
    cli_print_json(o);
    return;
  }
  printf("%d threads, %s kernels, medians\n\n", vmc_get_threads(), vmc_isa_name());
  printf("%-22s %24s %24s %9s\n", "", a->path, b->path, "ratio");
  char la[48], lb[48];
  printf("%-22s %24s %24s\n", "runtime", runtime_label(a, la, sizeof la),
         runtime_label(b, lb, sizeof lb));
  printf("%-22s %24.1f %24.1f %8.2fx\n", "file KiB", a->file_bytes / 1024.0,
         b->file_bytes / 1024.0, (double)b->file_bytes / (double)a->file_bytes);
  printf("%-22s %24.1f %24.1f %8.2fx\n", "parameters KiB", a->param_bytes / 1024.0,
         b->param_bytes / 1024.0, b->param_bytes / a->param_bytes);
  printf("%-22s %24s %24s\n", "parameter storage", storage_str(a, sa, sizeof sa),
         storage_str(b, sb, sizeof sb));
  printf("%-22s %24.4f %24.4f %8.2fx\n", "batch 1 latency ms", a->rows[0].median_ms,
         b->rows[0].median_ms, b->rows[0].median_ms / a->rows[0].median_ms);
  if (nrows > 1) {
    char label[40];
    snprintf(label, sizeof label, "batch %d images/s", a->rows[1].batch);
    printf("%-22s %24.0f %24.0f %8.2fx\n", label, a->rows[1].images_per_sec,
           b->rows[1].images_per_sec, a->rows[1].images_per_sec / b->rows[1].images_per_sec);
  }
}

int cmd_bench(int argc, char **argv) {
  static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                       {"batch", required_argument, 0, O_BATCH},
                                       {"repeats", required_argument, 0, O_REPEATS},
                                       {"warmup", required_argument, 0, O_WARMUP},
                                       {"simulate", no_argument, 0, O_SIMULATE},
                                       {"vs", required_argument, 0, O_VS},
                                       {"profile", no_argument, 0, O_PROFILE},
                                       {0, 0, 0, 0}};
  cli_common cc;
  cli_common_init(&cc);
  long batch = 64, repeats = 50, warmup = 10;
  int opt, simulate = 0, profile = 0;
  const char *vs = NULL;
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
    case O_SIMULATE: simulate = 1; break;
    case O_VS: vs = optarg; break;
    case O_PROFILE: profile = 1; break;
    default: return cli_usage_error("bench", "unknown option");
    }
  }
  if (optind != argc - 1) return cli_usage_error("bench", "expected one MODEL.vmc argument");
  if (profile && vs) return cli_usage_error("bench", "--profile times one model; drop --vs");
  cli_common_apply(&cc);
  bench_model m[2];
  memset(m, 0, sizeof m);
  m[0].path = argv[optind];
  m[1].path = vs;
  const int nm = vs ? 2 : 1, nrows = batch == 1 ? 1 : 2;
  vmc_status s = VMC_OK;
  for (int k = 0; k < nm && !s; k++) {
    s = cli_load_model(m[k].path, cc.seed, &m[k].g, &m[k].file_bytes);
    if (!s) m[k].integer = !simulate && vmc_graph_is_quantized(m[k].g);
    if (!s) s = bench_model_run(&m[k], nrows, (int)batch, (int)warmup, (int)repeats, cc.seed);
  }
  if (s) {
    vmc_graph_free(m[0].g);
    vmc_graph_free(m[1].g);
    return cli_fail("bench", s, NULL);
  }
  const bench_row *rows = m[0].rows;
  const int prof_batch = rows[nrows - 1].batch;
  const char *path = m[0].path;
  if (vs) {
    print_vs(&m[0], &m[1], nrows, cc.json);
  } else if (cc.json) {
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "model", path);
    cJSON_AddStringToObject(o, "precision", m[0].integer ? "int8" : "fp32");
    cJSON_AddStringToObject(o, "runtime", runtime_name(&m[0]));
    if (rows[0].layout) cJSON_AddStringToObject(o, "layout", rows[0].layout);
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
    if (profile)
      s = bench_profile(m[0].g, m[0].integer, prof_batch, (int)warmup, (int)repeats, cc.seed, o);
    if (s) cJSON_Delete(o);
    else cli_print_json(o);
  } else {
    char label[48];
    printf("%s: %s, %d threads, %s kernels, %ld warm-up + %ld timed runs\n\n", path,
           runtime_label(&m[0], label, sizeof label), vmc_get_threads(), vmc_isa_name(), warmup,
           repeats);
    printf("%6s %12s %12s %12s %14s %12s\n", "batch", "median ms", "p10 ms", "p90 ms", "images/s",
           "arena KiB");
    for (int i = 0; i < nrows; i++)
      printf("%6d %12.4f %12.4f %12.4f %14.0f %12.1f\n", rows[i].batch, rows[i].median_ms,
             rows[i].p10_ms, rows[i].p90_ms, rows[i].images_per_sec, rows[i].arena_bytes / 1024.0);
    if (profile)
      s = bench_profile(m[0].g, m[0].integer, prof_batch, (int)warmup, (int)repeats, cc.seed, NULL);
  }
  vmc_graph_free(m[0].g);
  vmc_graph_free(m[1].g);
  return s ? cli_fail("bench", s, NULL) : 0;
}
