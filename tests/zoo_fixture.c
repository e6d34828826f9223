/* Models and images the quantization and plan tests share (zoo_fixture.h). */
#include "zoo_fixture.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "graph/plan.h"
#include "vmc.h"

vmc_graph *test_zoo_model(const char *name, uint64_t build_seed, uint64_t bn_seed) {
  vmc_graph *g = NULL;
  if (vmc_zoo_build(name, 1, 28, 28, 10, build_seed, &g)) return NULL;
  vmc_rng r;
  vmc_rng_seed(&r, bn_seed);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (strcmp(n->op->name, "batchnorm")) continue;
    for (int k = 0; k < 4; k++) { /* gamma, beta, mean, var */
      vmc_param *p = &g->params[n->param[k]];
      for (size_t j = 0; j < vmc_shape_count(&p->shape); j++) {
        const float u = vmc_rng_uniform(&r);
        p->data[j] = k == 0 || k == 3 ? 0.5f + u : u - 0.5f;
      }
    }
  }
  return g;
}

vmc_dataset *test_blobs(int n, uint64_t seed, float rad_min, float noise, int shape_labels) {
  uint8_t *px = malloc((size_t)n * 784), *lab = malloc((size_t)n);
  vmc_dataset *d = NULL;
  vmc_rng r;
  vmc_rng_seed(&r, seed);
  for (int i = 0; px && lab && i < n; i++) {
    const float cx = 6 + 16 * vmc_rng_uniform(&r), cy = 6 + 16 * vmc_rng_uniform(&r);
    const float rad = rad_min + 6 * vmc_rng_uniform(&r);
    for (int y = 0; y < 28; y++)
      for (int x = 0; x < 28; x++) {
        const float d2 = ((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (rad * rad);
        const float v = 255.0f * expf(-d2) + noise * vmc_rng_uniform(&r);
        px[(size_t)i * 784 + y * 28 + x] = (uint8_t)(v > 255 ? 255 : v);
      }
    lab[i] = shape_labels ? (uint8_t)((cx > 14) + 2 * (cy > 14) + 4 * (rad > 5))
                          : (uint8_t)vmc_rng_below(&r, 10);
  }
  if (px && lab) vmc_dataset_from_memory("blobs", n, 1, 28, 28, 10, px, lab, NULL, NULL, &d);
  free(px);
  free(lab);
  return d;
}

const vmc_node *test_node_of(const vmc_graph *g, const char *name) {
  const int i = vmc_graph_find_node(g, name);
  return i >= 0 ? &g->nodes[i] : NULL;
}

int test_count_op(const vmc_graph *g, const char *op) {
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++) n += !strcmp(g->nodes[i].op->name, op);
  return n;
}

float *test_plan_logits(vmc_graph *g, const vmc_dataset *d, int n) {
  vmc_plan *p = NULL;
  if (vmc_plan_create(g, n, VMC_MODE_INFER, &p)) return NULL;
  int *idx = malloc((size_t)n * sizeof *idx);
  float *out = malloc((size_t)n * 10 * sizeof *out);
  for (int i = 0; idx && i < n; i++) idx[i] = i;
  if (idx && out) {
    vmc_dataset_batch(d, idx, n, NULL, NULL, vmc_plan_input(p), NULL);
    if (vmc_plan_forward(p, n) == VMC_OK) memcpy(out, vmc_plan_output(p), (size_t)n * 10 * sizeof *out);
  }
  free(idx);
  vmc_plan_destroy(p);
  return out;
}
