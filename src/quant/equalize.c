/* Cross-layer equalization (see equalize.h). */
#include "quant/equalize.h"

#include "graph/op.h"

#include <float.h>
#include <math.h>
#include <string.h>

typedef struct pair {
  int a, b; /* conv node indices */
} pair;

static int is_conv(const vmc_node *n) {
  return !strcmp(n->op->name, "conv2d") && n->n_in == 1 && n->n_param >= 1;
}

/* The only node reading value v (and v is not the graph output), or -1. */
static int only_reader(const vmc_graph *g, int v) {
  if (v == g->output) return -1;
  int r = -1;
  for (int i = 0; i < g->n_nodes; i++)
    for (int k = 0; k < g->nodes[i].n_in; k++)
      if (g->nodes[i].in[k] == v) {
        if (r >= 0) return -1;
        r = i;
      }
  return r;
}

/* Weight geometry of conv n: out channels, inputs per group, taps, groups. */
typedef struct geom {
  int oc, icg, taps, groups;
  float *w, *b;
} geom;

static geom geom_of(vmc_graph *g, const vmc_node *n) {
  const vmc_param *w = &g->params[n->param[0]];
  geom m = {.oc = w->shape.d[0], .icg = w->shape.d[1], .taps = w->shape.d[2] * w->shape.d[3],
            .groups = vmc_node_attr_i(n, "groups", 1), .w = w->data,
            .b = n->n_param > 1 ? g->params[n->param[1]].data : NULL};
  return m;
}

/* max |w| of output channel o of A. */
static float out_range(const geom *a, int o) {
  float r = 0;
  const float *p = a->w + (size_t)o * a->icg * a->taps;
  for (int k = 0; k < a->icg * a->taps; k++) r = fmaxf(r, fabsf(p[k]));
  return r;
}

/* max |w| over the weights of B that read input channel i, after
 * multiplying them by scale (0: leave them). */
static float in_channel(const geom *b, int i, float scale) {
  const int ocg = b->oc / b->groups, grp = i / b->icg, li = i % b->icg;
  float r = 0;
  for (int o = grp * ocg; o < (grp + 1) * ocg; o++) {
    float *p = b->w + ((size_t)o * b->icg + li) * b->taps;
    for (int t = 0; t < b->taps; t++) {
      if (scale != 0) p[t] *= scale;
      r = fmaxf(r, fabsf(p[t]));
    }
  }
  return r;
}

/* max/min of the nonzero channel ranges of A's output channels. */
static double spread(const geom *a) {
  float lo = FLT_MAX, hi = 0;
  for (int o = 0; o < a->oc; o++) {
    const float r = out_range(a, o);
    if (r > 0) lo = fminf(lo, r), hi = fmaxf(hi, r);
  }
  return hi > 0 ? (double)hi / lo : 1.0;
}

vmc_status vmc_equalize(vmc_graph *g, int iterations, vmc_equalize_report *report) {
  if (report) memset(report, 0, sizeof *report);
  if (iterations < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "equalize: %d iterations (at least 1)", iterations);
  pair *pairs = vmc_malloc_plain(((size_t)g->n_nodes + 1) * sizeof *pairs);
  if (!pairs) return vmc_error(VMC_ERR_NOMEM, "equalize");
  int np = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    if (!is_conv(&g->nodes[i])) continue;
    const int r = only_reader(g, g->nodes[i].out);
    if (r < 0 || strcmp(g->nodes[r].op->name, "relu")) continue;
    const int b = only_reader(g, g->nodes[r].out);
    if (b < 0 || !is_conv(&g->nodes[b])) continue;
    geom ga = geom_of(g, &g->nodes[i]), gb = geom_of(g, &g->nodes[b]);
    if (gb.icg * gb.groups != ga.oc || gb.groups < 1 || gb.oc % gb.groups) continue;
    pairs[np++] = (pair){i, b};
  }
  double before = 0, after = 0;
  for (int p = 0; p < np; p++) {
    geom ga = geom_of(g, &g->nodes[pairs[p].a]);
    before += spread(&ga);
  }
  for (int it = 0; it < iterations; it++)
    for (int p = 0; p < np; p++) {
      geom ga = geom_of(g, &g->nodes[pairs[p].a]), gb = geom_of(g, &g->nodes[pairs[p].b]);
      for (int c = 0; c < ga.oc; c++) {
        const float r1 = out_range(&ga, c), r2 = in_channel(&gb, c, 0);
        if (!(r1 > 0) || !(r2 > 0)) continue;
        const float s = sqrtf(r1 / r2);
        if (!(s > 0) || !isfinite(s) || s == 1.0f) continue;
        float *wa = ga.w + (size_t)c * ga.icg * ga.taps;
        for (int k = 0; k < ga.icg * ga.taps; k++) wa[k] /= s;
        if (ga.b) ga.b[c] /= s;
        in_channel(&gb, c, s);
      }
    }
  for (int p = 0; p < np; p++) {
    geom ga = geom_of(g, &g->nodes[pairs[p].a]);
    after += spread(&ga);
    vmc_param_set_quantized(g, g->nodes[pairs[p].a].param[0], VMC_F32, NULL, 0);
    vmc_param_set_quantized(g, g->nodes[pairs[p].b].param[0], VMC_F32, NULL, 0);
  }
  if (report) {
    report->pairs = np;
    report->spread_before = np ? before / np : 1;
    report->spread_after = np ? after / np : 1;
  }
  vmc_free(pairs);
  return VMC_OK;
}
