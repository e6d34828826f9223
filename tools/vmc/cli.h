/* The vmc command-line tool: shared option handling and output helpers. */
#ifndef VMC_CLI_H
#define VMC_CLI_H

#include "vmc.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>

typedef struct cli_common {
  const char *data; /* --data NAME|PATH */
  unsigned long long seed;
  int threads;
  int quiet, json;
  int progress; /* progress bars: stderr is a terminal and not --quiet/--json */
} cli_common;

/* Long-option ids of the shared options (>= 1000 so short options stay free). */
enum { OPT_DATA = 1000, OPT_SEED, OPT_THREADS, OPT_QUIET, OPT_JSON, OPT_HELP, OPT_CMD_BASE = 1100 };

#define CLI_COMMON_OPTIONS                                                     \
  {"data", required_argument, 0, OPT_DATA},                                    \
      {"seed", required_argument, 0, OPT_SEED},                                \
      {"threads", required_argument, 0, OPT_THREADS},                          \
      {"quiet", no_argument, 0, OPT_QUIET}, {"json", no_argument, 0, OPT_JSON}, \
      {"help", no_argument, 0, 'h'}

#define CLI_COMMON_HELP                                                        \
  "Common options:\n"                                                          \
  "  --data NAME|PATH  fashion-mnist (Debian's copy or $VMC_DATA), mnist, cifar10,\n" \
  "                    or a folder of IDX files, CIFAR-10 batches or class subfolders\n" \
  "  --seed N          random seed (default 1)\n"                              \
  "  --threads N       worker threads (default: one per core)\n"               \
  "  --quiet           no progress bars or per-epoch lines\n"                  \
  "  --json            print one JSON object on stdout instead of text\n"      \
  "  -h, --help        this help\n"

void cli_common_init(cli_common *c);
/* Handles a shared option; returns 1 if it was one, 0 if not, -1 on a bad value. */
int cli_common_opt(cli_common *c, int opt, const char *arg);
/* Finishes setup (threads, progress) after parsing. */
void cli_common_apply(cli_common *c);

/* Strict number parsing: the whole string, in [lo, hi].  Print an error
 * naming the option and return -1 on failure. */
int cli_int(const char *opt, const char *arg, long lo, long hi, long *out);
int cli_float(const char *opt, const char *arg, double lo, double hi, double *out);

/* Error reporting: "vmc CMD: message: last error", returns exit status 1. */
int cli_fail(const char *cmd, vmc_status s, const char *what);
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Per-epoch reporting, a vmc_epoch_cb (user: a cli_epoch_log): with --json
 * one object per epoch appended to epochs (images_per_sec included), else one
 * line "<prefix>epoch N  loss ...  train ...  test ...  img/s  s" unless --quiet. */
typedef struct cli_epoch_log {
  const cli_common *cc;
  cJSON *epochs;
  const char *prefix;
} cli_epoch_log;
void cli_on_epoch(void *user, const vmc_epoch_result *r);

/* Prints a cJSON object on stdout and frees it. */
void cli_print_json(cJSON *o);

/* Writes path through "<path>.tmp" renamed into place: emit(f, ctx) writes
 * the contents.  VMC_ERR_IO naming path on failure (no file left then). */
vmc_status cli_write_file(const char *path, void (*emit)(FILE *f, const void *ctx),
                          const void *ctx);
/* Report o: written to the file report (if not NULL, as cli_write_file),
 * printed on stdout with --json; then freed. */
vmc_status cli_report_json(const cli_common *c, const char *report, cJSON *o);

/* Opens the data set named by the model's metadata or --data, and applies
 * the model's normalisation if it records one. */
vmc_status cli_open_data(const cli_common *c, const vmc_graph *g, vmc_split split,
                         vmc_dataset **out);

/* A model from a .vmc file, or a zoo name (untrained, 1x28x28, 10 classes).
 * file_bytes (may be NULL) gets the file's size, or -1 for a zoo model. */
vmc_status cli_load_model(const char *path, unsigned long long seed, vmc_graph **g,
                          long long *file_bytes);

/* Removes metadata entry key of g (if any). */
void cli_meta_remove(vmc_graph *g, const char *key);

/* Subcommands. */
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
/* Where vmc quantize puts its results (parsed by cmd_quantize). */
typedef struct cli_quant_out {
  const char *model;  /* -o: the quantized model (NULL: none, --sensitivity alone) */
  const char *report; /* --report: the JSON report (what --json prints) also goes here, or NULL */
  int eval;           /* --eval: evaluate the fp32 and the quantized model on the test split */
  long eval_limit;    /* --eval-limit: the first N test images (0: all) */
} cli_quant_out;

/* The per-layer part of a PTQ report as a JSON array (cmd_quantize.c):
 * the calibration (ranges, clipping, SQNRs) and the weights of each
 * conv/linear -- what the "quant" metadata does not repeat. */
struct vmc_ptq_report;
cJSON *cli_ptq_layers_json(const struct vmc_ptq_report *r);

/* vmc quantize --qat (cmd_quantize_qat.c): opts parsed by cmd_quantize. */
struct vmc_qat_opts;
int quantize_qat(const cli_common *cc, const char *in_path, const cli_quant_out *out,
                 struct vmc_qat_opts *qo, const char *scheme);

/* vmc quantize --sensitivity / --bits-budget (cmd_quantize_mixed.c): opts
 * parsed by cmd_quantize. */
struct vmc_ptq_opts;
typedef struct cli_mixed {
  int sensitivity;     /* print the per-layer table */
  const char *table;   /* also write it here (.json: JSON, else CSV), or NULL */
  double bits_budget;  /* mixed precision to this many bits per weight; 0: none */
  double max_drop;     /* accuracy budget in points on the held-out images; < 0: none */
  int rank;            /* vmc_sens_rank */
  int held_out;        /* held-out training images */
} cli_mixed;
int quantize_mixed(const cli_common *cc, const char *in_path, const cli_quant_out *out,
                   const struct vmc_ptq_opts *po, const cli_mixed *m);

#endif
