/* Shared option handling and output helpers of the CLI. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/data.h"
#include "graph/graph.h"

#include <sys/stat.h>

void cli_common_init(cli_common *c) {
  memset(c, 0, sizeof *c);
  c->seed = 1;
}

int cli_int(const char *opt, const char *arg, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(arg, &end, 10);
  if (errno || end == arg || *end || v < lo || v > hi) {
    fprintf(stderr, "vmc: %s '%s' must be an integer in %ld..%ld\n", opt, arg, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

int cli_float(const char *opt, const char *arg, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(arg, &end);
  if (errno || end == arg || *end || !isfinite(v) || v < lo || v > hi) {
    fprintf(stderr, "vmc: %s '%s' must be a number in [%g, %g]\n", opt, arg, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

int cli_common_opt(cli_common *c, int opt, const char *arg) {
  long v;
  switch (opt) {
  case OPT_DATA: c->data = arg; return 1;
  case OPT_SEED: {
    char *end;
    errno = 0;
    unsigned long long s = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-') {
      fprintf(stderr, "vmc: --seed '%s' must be a non-negative integer\n", arg);
      return -1;
    }
    c->seed = s;
    return 1;
  }
  case OPT_THREADS:
    if (cli_int("--threads", arg, 1, 1024, &v)) return -1;
    c->threads = (int)v;
    return 1;
  case OPT_QUIET: c->quiet = 1; return 1;
  case OPT_JSON: c->json = 1; return 1;
  default: return 0;
  }
}

void cli_common_apply(cli_common *c) {
  vmc_set_threads(c->threads);
  c->progress = !c->quiet && !c->json && isatty(2);
}

int cli_fail(const char *cmd, vmc_status s, const char *what) {
  const char *msg = vmc_last_error();
  fprintf(stderr, "vmc %s: %s%s%s\n", cmd, what ? what : "", what ? ": " : "",
          msg && *msg ? msg : vmc_status_str(s));
  return 1;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "vmc %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see vmc %s --help)\n", cmd);
  va_end(ap);
  return 2;
}

void cli_print_json(cJSON *o) {
  char *s = cJSON_Print(o);
  if (s) {
    puts(s);
    free(s);
  }
  cJSON_Delete(o);
}

vmc_status cli_write_file(const char *path, void (*emit)(FILE *f, const void *ctx),
                          const void *ctx) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
    return vmc_error(VMC_ERR_INVALID_ARG, "%s: path too long", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return vmc_error(VMC_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
  emit(f, ctx);
  const int bad = ferror(f) != 0;
  if (fclose(f) != 0 || bad || rename(tmp, path) != 0) {
    const int e = errno;
    remove(tmp);
    return vmc_error(VMC_ERR_IO, "%s: cannot write: %s", path, strerror(e));
  }
  return VMC_OK;
}

static void emit_line(FILE *f, const void *ctx) { fprintf(f, "%s\n", (const char *)ctx); }

vmc_status cli_report_json(const cli_common *c, const char *report, cJSON *o) {
  vmc_status s = VMC_OK;
  if (report) {
    char *txt = cJSON_Print(o);
    s = txt ? cli_write_file(report, emit_line, txt)
            : vmc_error(VMC_ERR_NOMEM, "%s: no memory for the report", report);
    free(txt);
  }
  if (c->json) cli_print_json(o);
  else cJSON_Delete(o);
  return s;
}

vmc_status cli_load_model(const char *path, unsigned long long seed, vmc_graph **g,
                          long long *file_bytes) {
  struct stat st;
  if (file_bytes) *file_bytes = -1;
  if (stat(path, &st) == 0) {
    if (file_bytes) *file_bytes = (long long)st.st_size;
    return vmc_model_load(path, g);
  }
  vmc_status s = vmc_zoo_build(path, 1, 28, 28, 10, seed, g);
  if (s == VMC_ERR_NOT_FOUND)
    s = vmc_error(VMC_ERR_NOT_FOUND, "%s: no such file, and not a zoo model", path);
  return s;
}

vmc_status cli_open_data(const cli_common *c, const vmc_graph *g, vmc_split split,
                         vmc_dataset **out) {
  const char *spec = c->data ? c->data : g ? vmc_graph_meta(g, "dataset") : NULL;
  if (!spec) spec = "fashion-mnist";
  VMC_TRY(vmc_dataset_open(spec, split, out));
  const char *m = g ? vmc_graph_meta(g, "normalize.mean") : NULL;
  const char *s = g ? vmc_graph_meta(g, "normalize.std") : NULL;
  if (m && s) {
    float mean[3] = {0}, std[3] = {1, 1, 1};
    int nm = sscanf(m, "%f,%f,%f", &mean[0], &mean[1], &mean[2]);
    int ns = sscanf(s, "%f,%f,%f", &std[0], &std[1], &std[2]);
    if (nm == (*out)->c && ns == (*out)->c)
      for (int i = 0; i < nm; i++) {
        if (!(std[i] > 0)) continue;
        (*out)->mean[i] = mean[i];
        (*out)->std[i] = std[i];
      }
  }
  return VMC_OK;
}

void cli_meta_remove(vmc_graph *g, const char *key) {
  for (int i = 0; i < g->n_meta; i++) {
    if (strcmp(g->meta[i].key, key)) continue;
    vmc_free(g->meta[i].key);
    vmc_free(g->meta[i].value);
    memmove(&g->meta[i], &g->meta[i + 1], (size_t)(g->n_meta - i - 1) * sizeof *g->meta);
    g->n_meta--;
    return;
  }
}

void cli_on_epoch(void *user, const vmc_epoch_result *r) {
  cli_epoch_log *l = user;
  if (l->cc->json) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "epoch", r->epoch);
    cJSON_AddNumberToObject(e, "lr", r->lr);
    cJSON_AddNumberToObject(e, "train_loss", r->train_loss);
    cJSON_AddNumberToObject(e, "train_accuracy", r->train_acc);
    if (r->test_acc >= 0) {
      cJSON_AddNumberToObject(e, "test_loss", r->test_loss);
      cJSON_AddNumberToObject(e, "test_accuracy", r->test_acc);
    }
    cJSON_AddNumberToObject(e, "seconds", r->seconds);
    cJSON_AddNumberToObject(e, "images_per_sec", r->images_per_sec);
    cJSON_AddItemToArray(l->epochs, e);
  } else if (!l->cc->quiet) {
    printf("%sepoch %3d  loss %.4f  train %6.2f%%", l->prefix ? l->prefix : "", r->epoch,
           r->train_loss, 100 * r->train_acc);
    if (r->test_acc >= 0) printf("  test %6.2f%% (loss %.4f)", 100 * r->test_acc, r->test_loss);
    printf("  %7.0f img/s  %6.1f s\n", r->images_per_sec, r->seconds);
    fflush(stdout);
  }
}
