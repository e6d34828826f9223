/* vmc info: layers, shapes, parameters, MACs and bytes of a model. */
#include "cli.h"

#include <string.h>

#include "graph/graph.h"
#include "graph/op.h"
#include "io/io.h"

/* How a file stores parameter p: "f32", "s8 per-channel", "s4 per-tensor",
 * and ", coded" when its codes are entropy-coded. */
static const char *storage_name(const vmc_param *p, bool coded, char *buf, size_t n) {
  if (p->store == VMC_F32) return "f32";
  snprintf(buf, n, "%s %s%s", vmc_dtype_name(p->store),
           p->n_qscale > 1 ? "per-channel" : "per-tensor", coded ? ", coded" : "");
  return buf;
}

/* Tensors, elements and file bytes (codes and scales) of one storage type. */
typedef struct storage_total {
  vmc_dtype store;
  uint64_t tensors, elements, bytes;
} storage_total;

/* A fakequant node's parameters (its attributes). */
typedef struct fq_attrs {
  float scale;
  int zp, qmin, qmax;
} fq_attrs;

static bool is_fakequant(const vmc_node *n) { return !strcmp(n->op->name, "fakequant"); }

static fq_attrs fq_of(const vmc_node *n) {
  fq_attrs a = {vmc_node_attr_f(n, "scale", 0), vmc_node_attr_i(n, "zero_point", 0),
                vmc_node_attr_i(n, "qmin", 0), vmc_node_attr_i(n, "qmax", 0)};
  return a;
}

/* The quantized values: each fakequant node, the value it reads, its scale,
 * zero point, code range and the real range that covers. */
static void print_fakequants(const vmc_graph *g) {
  int any = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (!is_fakequant(n)) continue;
    if (!any++)
      printf("\n%-32s %-28s %12s %5s %9s  %s\n", "quantized value (fakequant)", "reads", "scale",
             "zp", "codes", "range");
    const fq_attrs a = fq_of(n);
    char codes[32];
    snprintf(codes, sizeof codes, "%d..%d", a.qmin, a.qmax);
    printf("%-32s %-28s %12.6g %5d %9s  [%.4g, %.4g]\n", n->name, g->values[n->in[0]].name,
           (double)a.scale, a.zp, codes, (double)(a.qmin - a.zp) * a.scale,
           (double)(a.qmax - a.zp) * a.scale);
  }
}

static cJSON *fakequants_json(const vmc_graph *g) {
  cJSON *arr = cJSON_CreateArray();
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (!is_fakequant(n)) continue;
    const fq_attrs a = fq_of(n);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "node", n->name);
    cJSON_AddStringToObject(j, "input", g->values[n->in[0]].name);
    cJSON_AddNumberToObject(j, "scale", a.scale);
    cJSON_AddNumberToObject(j, "zero_point", a.zp);
    cJSON_AddNumberToObject(j, "qmin", a.qmin);
    cJSON_AddNumberToObject(j, "qmax", a.qmax);
    cJSON_AddItemToArray(arr, j);
  }
  return arr;
}

static const char *const HELP =
    "Usage: vmc info MODEL.vmc|ZOO-NAME [--json]\n\n"
    "Lists every layer (op, output shape, parameters, MACs per image), the totals,\n"
    "the weight bytes, each parameter's storage in a .vmc file (f32, or s8 / s4\n"
    "codes with per-channel or per-tensor scales, the codes entropy-coded where\n"
    "that makes them smaller) with the bytes by storage type, the quantized values\n"
    "(each fakequant node's scale, zero point and range), and the model's metadata\n"
    "(architecture, data set, normalisation, accuracy, history).  A zoo name (e.g.\n"
    "resnet8) describes the\n"
    "untrained architecture for 1x28x28 inputs.\n\n" CLI_COMMON_HELP;

int cmd_info(int argc, char **argv) {
  static const struct option opts[] = {CLI_COMMON_OPTIONS, {0, 0, 0, 0}};
  cli_common cc;
  cli_common_init(&cc);
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int r = cli_common_opt(&cc, opt, optarg);
    if (r < 0) return 2;
    if (r) continue;
    if (opt == 'h') {
      fputs(HELP, stdout);
      return 0;
    }
    return cli_usage_error("info", "unknown option");
  }
  if (optind != argc - 1) return cli_usage_error("info", "expected one MODEL.vmc argument");
  const char *path = argv[optind];
  vmc_graph *g = NULL;
  long long file_bytes;
  vmc_status s = cli_load_model(path, cc.seed, &g, &file_bytes);
  if (s) return cli_fail("info", s, NULL);
  vmc_node_stats *ns = vmc_malloc_plain((size_t)g->n_nodes * sizeof *ns);
  vmc_shape *sh = vmc_malloc_plain((size_t)g->n_values * sizeof *sh);
  uint64_t *pbytes = vmc_malloc_plain((size_t)(g->n_params + 1) * sizeof *pbytes);
  bool *coded = vmc_malloc_plain((size_t)(g->n_params + 1) * sizeof *coded);
  uint64_t macs = 0, params = 0;
  if (!ns || !sh || !pbytes || !coded) s = vmc_error(VMC_ERR_NOMEM, "info");
  if (!s) s = vmc_graph_stats(g, ns, &macs, &params);
  if (!s) s = vmc_graph_infer_shapes(g, 1, sh);
  if (!s) s = vmc_model_param_bytes(g, pbytes, coded); /* what a file holds: coded or raw */
  if (s) {
    vmc_free(pbytes);
    vmc_free(coded);
    vmc_free(ns);
    vmc_free(sh);
    vmc_graph_free(g);
    return cli_fail("info", s, NULL);
  }
  uint64_t weight_bytes = 0, stored_bytes = 0;
  storage_total tot[3] = {{VMC_F32, 0, 0, 0}, {VMC_S8, 0, 0, 0}, {VMC_S4, 0, 0, 0}};
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    weight_bytes += vmc_shape_count(&p->shape) * 4;
    stored_bytes += pbytes[i];
    for (int k = 0; k < 3; k++)
      if (tot[k].store == p->store) {
        tot[k].tensors++;
        tot[k].elements += vmc_shape_count(&p->shape);
        tot[k].bytes += pbytes[i];
      }
  }
  char buf[64], sbuf[32];
  if (cc.json) {
    cJSON *o = cJSON_CreateObject(), *layers = cJSON_CreateArray(), *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", path);
    cJSON_AddStringToObject(o, "input", vmc_shape_str(&g->in_shape, buf, sizeof buf));
    for (int i = 0; i < g->n_nodes; i++) {
      cJSON *l = cJSON_CreateObject();
      cJSON_AddStringToObject(l, "name", g->nodes[i].name);
      cJSON_AddStringToObject(l, "op", g->nodes[i].op->name);
      cJSON_AddStringToObject(l, "output", vmc_shape_str(&sh[g->nodes[i].out], buf, sizeof buf));
      cJSON_AddNumberToObject(l, "params", (double)ns[i].params);
      cJSON_AddNumberToObject(l, "macs", (double)ns[i].macs);
      cJSON_AddItemToArray(layers, l);
    }
    cJSON_AddItemToObject(o, "layers", layers);
    cJSON_AddNumberToObject(o, "params", (double)params);
    cJSON_AddNumberToObject(o, "trainable_params", vmc_graph_num_params(g));
    cJSON_AddNumberToObject(o, "macs", (double)macs);
    cJSON_AddNumberToObject(o, "weight_bytes", (double)weight_bytes);
    cJSON *params_j = cJSON_CreateArray(), *storage = cJSON_CreateObject();
    for (int i = 0; i < g->n_params; i++) {
      const vmc_param *p = &g->params[i];
      cJSON *j = cJSON_CreateObject();
      cJSON_AddStringToObject(j, "name", p->name);
      cJSON_AddStringToObject(j, "shape", vmc_shape_str(&p->shape, buf, sizeof buf));
      cJSON_AddStringToObject(j, "storage", vmc_dtype_name(p->store));
      if (p->store != VMC_F32) {
        cJSON_AddStringToObject(j, "granularity", p->n_qscale > 1 ? "per-channel" : "per-tensor");
        cJSON_AddNumberToObject(j, "scales", p->n_qscale);
        float lo = p->qscale[0], hi = p->qscale[0];
        for (int c = 1; c < p->n_qscale; c++) {
          lo = p->qscale[c] < lo ? p->qscale[c] : lo;
          hi = p->qscale[c] > hi ? p->qscale[c] : hi;
        }
        cJSON_AddNumberToObject(j, "scale_min", lo);
        cJSON_AddNumberToObject(j, "scale_max", hi);
        cJSON_AddBoolToObject(j, "coded", coded[i]);
        cJSON_AddNumberToObject(j, "raw_bytes", (double)vmc_param_file_bytes(p));
      }
      cJSON_AddNumberToObject(j, "bytes", (double)pbytes[i]);
      cJSON_AddItemToArray(params_j, j);
    }
    cJSON_AddItemToObject(o, "parameters", params_j);
    for (int k = 0; k < 3; k++) {
      cJSON *t = cJSON_CreateObject();
      cJSON_AddNumberToObject(t, "tensors", (double)tot[k].tensors);
      cJSON_AddNumberToObject(t, "elements", (double)tot[k].elements);
      cJSON_AddNumberToObject(t, "bytes", (double)tot[k].bytes);
      cJSON_AddItemToObject(storage, vmc_dtype_name(tot[k].store), t);
    }
    cJSON_AddItemToObject(o, "storage", storage);
    cJSON_AddItemToObject(o, "quantized_values", fakequants_json(g));
    cJSON_AddNumberToObject(o, "stored_bytes", (double)stored_bytes);
    if (file_bytes >= 0) cJSON_AddNumberToObject(o, "file_bytes", (double)file_bytes);
    for (int i = 0; i < g->n_meta; i++) cJSON_AddStringToObject(meta, g->meta[i].key, g->meta[i].value);
    cJSON_AddItemToObject(o, "metadata", meta);
    cli_print_json(o);
  } else {
    printf("%s: input %s\n\n", path, vmc_shape_str(&g->in_shape, buf, sizeof buf));
    printf("%-28s %-10s %-16s %10s %12s\n", "layer", "op", "output", "params", "MACs");
    for (int i = 0; i < g->n_nodes; i++)
      printf("%-28s %-10s %-16s %10llu %12llu\n", g->nodes[i].name, g->nodes[i].op->name,
             vmc_shape_str(&sh[g->nodes[i].out], buf, sizeof buf),
             (unsigned long long)ns[i].params, (unsigned long long)ns[i].macs);
    printf("\n%d layers, %llu parameters (%d trainable), %.2f M MACs per image, %.1f KiB of weights",
           g->n_nodes, (unsigned long long)params, vmc_graph_num_params(g), macs / 1e6,
           weight_bytes / 1024.0);
    if (file_bytes >= 0) printf(", file %.1f KiB", file_bytes / 1024.0);
    printf("\n\n%-40s %-16s %-23s %10s\n", "parameter", "shape", "storage", "bytes");
    for (int i = 0; i < g->n_params; i++) {
      const vmc_param *p = &g->params[i];
      printf("%-40s %-16s %-23s %10llu\n", p->name, vmc_shape_str(&p->shape, buf, sizeof buf),
             storage_name(p, coded[i], sbuf, sizeof sbuf), (unsigned long long)pbytes[i]);
    }
    printf("\nstored parameters: %.1f KiB (", stored_bytes / 1024.0);
    for (int k = 0, first = 1; k < 3; k++)
      if (tot[k].tensors) {
        printf("%s%s %.1f KiB in %llu tensors", first ? "" : ", ", vmc_dtype_name(tot[k].store),
               tot[k].bytes / 1024.0, (unsigned long long)tot[k].tensors);
        first = 0;
      }
    printf(")");
    if (file_bytes >= 0) printf("; file %lld bytes", file_bytes);
    printf("\n");
    print_fakequants(g);
    if (g->n_meta) printf("\n");
    for (int i = 0; i < g->n_meta; i++) {
      if (!strcmp(g->meta[i].key, "history")) {
        printf("history:\n");
        const char *p = g->meta[i].value;
        while (*p) {
          const char *e = strchr(p, '\n');
          int n = e ? (int)(e - p) : (int)strlen(p);
          printf("  - %.*s\n", n, p);
          p += n + (e ? 1 : 0);
        }
      } else {
        printf("%s: %s\n", g->meta[i].key, g->meta[i].value);
      }
    }
  }
  vmc_free(pbytes);
  vmc_free(coded);
  vmc_free(ns);
  vmc_free(sh);
  vmc_graph_free(g);
  return 0;
}
