/* The integer runtime (quant/qrt.h): quantized zoo models against their
 * fp32 simulation, every GEMM and depthwise variant against the reference,
 * batch and thread invariance, the element-wise kernels on hand-computed
 * cases, u4/s8 activations, s4 weights, and the errors of bad graphs. */
#include "test.h"

#include <stdint.h>
#include <stdlib.h>

#include "data/data.h"
#include "graph/plan.h"
#include "kernels/qelt.h"
#include "quant/ptq.h"
#include "quant/qrt.h"

#define AI(k, v) {.key = k, .i = (v), .f = (float)(v)}
#define AF(k, v) {.key = k, .i = 0, .f = (v)}

/* ---- models ------------------------------------------------------------------------ */

/* A zoo model with non-trivial BatchNorm statistics. */
static vmc_graph *zoo_model(const char *name) {
  vmc_graph *g = NULL;
  if (vmc_zoo_build(name, 1, 28, 28, 10, 5, &g)) return NULL;
  vmc_rng r;
  vmc_rng_seed(&r, 13);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (strcmp(n->op->name, "batchnorm")) continue;
    for (int k = 0; k < 4; k++) {
      vmc_param *p = &g->params[n->param[k]];
      for (size_t j = 0; j < vmc_shape_count(&p->shape); j++) {
        const float u = vmc_rng_uniform(&r);
        p->data[j] = k == 0 || k == 3 ? 0.5f + u : u - 0.5f;
      }
    }
  }
  return g;
}

/* n 28x28 images: smooth blobs plus noise. */
static vmc_dataset *blobs(int n, uint64_t seed) {
  uint8_t *px = malloc((size_t)n * 784), *lab = malloc((size_t)n);
  vmc_dataset *d = NULL;
  vmc_rng r;
  vmc_rng_seed(&r, seed);
  for (int i = 0; px && lab && i < n; i++) {
    const float cx = 6 + 16 * vmc_rng_uniform(&r), cy = 6 + 16 * vmc_rng_uniform(&r);
    const float rad = 3 + 6 * vmc_rng_uniform(&r);
    for (int y = 0; y < 28; y++)
      for (int x = 0; x < 28; x++) {
        const float d2 = ((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (rad * rad);
        const float v = 255.0f * expf(-d2) + 30.0f * vmc_rng_uniform(&r);
        px[(size_t)i * 784 + y * 28 + x] = (uint8_t)(v > 255 ? 255 : v);
      }
    lab[i] = (uint8_t)vmc_rng_below(&r, 10);
  }
  if (px && lab) vmc_dataset_from_memory("blobs", n, 1, 28, 28, 10, px, lab, NULL, NULL, &d);
  free(px);
  free(lab);
  return d;
}

static vmc_graph *quantized(const char *name, vmc_qscheme w, vmc_qscheme act, const vmc_dataset *d) {
  vmc_graph *g = zoo_model(name), *q = NULL;
  if (!g) return NULL;
  vmc_ptq_opts o;
  vmc_ptq_opts_default(&o);
  o.weight_scheme = w;
  o.act_scheme = act;
  o.calib_images = 16;
  o.batch = 8;
  vmc_status s = vmc_ptq_quantize(g, d, &o, &q, NULL);
  if (s) vmc_test_fail(__FILE__, __LINE__, "ptq of %s: %s", name, vmc_last_error());
  vmc_graph_free(g);
  return q;
}

/* Logits of images [0, n) of d: the fp32 simulation (a float plan). */
static float *sim_logits(vmc_graph *g, const vmc_dataset *d, int n) {
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

/* The same through the integer runtime, batch `batch` (images in chunks). */
static float *int_logits(const vmc_graph *g, const vmc_dataset *d, int n, int batch,
                         const vmc_qrt_opts *opts) {
  vmc_qrt *q = NULL;
  vmc_status s = vmc_qrt_create(g, batch, opts, &q);
  if (s) {
    vmc_test_fail(__FILE__, __LINE__, "vmc_qrt_create: %s", vmc_last_error());
    return NULL;
  }
  int *idx = malloc((size_t)batch * sizeof *idx);
  float *out = malloc((size_t)n * 10 * sizeof *out);
  for (int off = 0; idx && out && off < n; off += batch) {
    const int m = n - off < batch ? n - off : batch;
    for (int i = 0; i < m; i++) idx[i] = off + i;
    vmc_dataset_batch(d, idx, m, NULL, NULL, vmc_qrt_input(q), NULL);
    if (vmc_qrt_forward(q, m)) vmc_test_fail(__FILE__, __LINE__, "forward: %s", vmc_last_error());
    memcpy(out + (size_t)off * 10, vmc_qrt_output(q), (size_t)m * 10 * sizeof *out);
  }
  free(idx);
  vmc_qrt_destroy(q);
  return out;
}

static int argmax10(const float *z) {
  int b = 0;
  for (int j = 1; j < 10; j++)
    if (z[j] > z[b]) b = j;
  return b;
}

/* Integer vs simulation on n images: the share of equal decisions (ties
 * within tol of the top logit count as equal) and the largest logit
 * difference relative to the largest |logit|. */
static void compare(const float *sim, const float *in, int n, int *agree, double *rel) {
  double amax = 0, dmax = 0;
  *agree = 0;
  for (int i = 0; i < n * 10; i++) {
    if (fabs(sim[i]) > amax) amax = fabs(sim[i]);
    if (fabs(sim[i] - in[i]) > dmax) dmax = fabs(sim[i] - in[i]);
  }
  for (int i = 0; i < n; i++) {
    const int a = argmax10(sim + i * 10), b = argmax10(in + i * 10);
    *agree += a == b || fabs(sim[i * 10 + a] - sim[i * 10 + b]) <= dmax;
  }
  *rel = amax > 0 ? dmax / amax : dmax;
}

#define N_IMG 48

static void check_model(const char *name, vmc_qscheme w, vmc_qscheme act, double tol) {
  vmc_dataset *d = blobs(N_IMG, 21);
  REQUIRE(d);
  vmc_graph *q = quantized(name, w, act, d);
  REQUIRE(q);
  float *sim = sim_logits(q, d, N_IMG), *in = int_logits(q, d, N_IMG, 16, NULL);
  REQUIRE(sim && in);
  int agree;
  double rel;
  compare(sim, in, N_IMG, &agree, &rel);
  if (getenv("QRT_VERBOSE")) printf("%s w%d a%d: %d/%d agree, rel %.4g\n", name, (int)w, (int)act, agree, N_IMG, rel);
  if (agree != N_IMG || rel > tol)
    vmc_test_fail(__FILE__, __LINE__, "%s (w %d, act %d): %d/%d decisions agree, logits differ "
                  "by %.3g of their range (tolerance %.3g)", name, (int)w, (int)act, agree, N_IMG,
                  rel, tol);
  free(sim);
  free(in);
  vmc_graph_free(q);
  vmc_dataset_free(d);
}

/* Logits within 2% of their range: a code that lands one step off at a
 * rounding tie moves the logits by about one step of the last layers. */
TEST(qrt_resnet8_matches_simulation) { check_model("resnet8", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02); }
TEST(qrt_resnet20_matches_simulation) { check_model("resnet20", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02); }
TEST(qrt_mobilenetv2_matches_simulation) {
  check_model("mobilenetv2-tiny", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02);
}
TEST(qrt_lenet5_matches_simulation) { check_model("lenet5", VMC_QSCHEME_S8, VMC_QSCHEME_U8, 0.02); }
TEST(qrt_s4_weights_and_s8_activations) {
  check_model("resnet8", VMC_QSCHEME_S4, VMC_QSCHEME_U8, 0.02);
  check_model("mobilenetv2-tiny", VMC_QSCHEME_S8, VMC_QSCHEME_S8, 0.02);
}
