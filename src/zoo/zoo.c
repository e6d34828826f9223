/* The reference models of DESIGN.md.  Node and parameter names follow the
 * PyTorch modules that tests/fixtures/torch_zoo.py defines, so state_dicts
 * map one to one.  Initialisation as PyTorch's: conv weights Kaiming-normal
 * (fan_out, ReLU gain) for the residual nets and MobileNetV2, uniform
 * +-1/sqrt(fan_in) (PyTorch's default) for LeNet and every linear layer;
 * BatchNorm gamma 1, beta 0, running var 1. */
#include "graph/graph.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct zb {
  vmc_graph *g;
  vmc_rng rng;
  int cur;   /* current value id */
  int kaiming;
  vmc_status s;
} zb;

static int param(zb *b, const char *node, const char *suffix, vmc_shape sh, int trainable) {
  char name[VMC_NAME_MAX];
  snprintf(name, sizeof name, "%s.%s", node, suffix);
  int id = -1;
  if (!b->s) b->s = vmc_graph_add_param(b->g, name, sh, trainable, &id);
  return id;
}

static void fill_uniform(zb *b, int id, float bound) {
  if (b->s) return;
  vmc_param *p = &b->g->params[id];
  size_t n = vmc_shape_count(&p->shape);
  for (size_t i = 0; i < n; i++) p->data[i] = (2 * vmc_rng_uniform(&b->rng) - 1) * bound;
}

static void fill_normal(zb *b, int id, float std) {
  if (b->s) return;
  vmc_param *p = &b->g->params[id];
  size_t n = vmc_shape_count(&p->shape);
  for (size_t i = 0; i < n; i++) p->data[i] = vmc_rng_normal(&b->rng) * std;
}

static int node(zb *b, const char *op, const char *name, const int *in, int n_in,
                const vmc_attr *a, int na, const int *pr, int np) {
  int out = -1;
  if (!b->s) b->s = vmc_graph_add_node(b->g, op, name, in, n_in, a, na, pr, np, &out);
  return out;
}

static int conv(zb *b, const char *name, int x, int in_c, int out_c, int k, int stride, int pad,
                int groups, int bias) {
  vmc_attr a[] = {vmc_attr_int("out_c", out_c), vmc_attr_int("kh", k), vmc_attr_int("kw", k),
                  vmc_attr_int("sh", stride),   vmc_attr_int("sw", stride),
                  vmc_attr_int("ph", pad),      vmc_attr_int("pw", pad),
                  vmc_attr_int("groups", groups)};
  int pr[2];
  pr[0] = param(b, name, "weight", vmc_shape4(out_c, in_c / groups, k, k), 1);
  int fan_in = in_c / groups * k * k, fan_out = out_c / groups * k * k;
  if (b->kaiming) fill_normal(b, pr[0], sqrtf(2.0f / (float)fan_out));
  else fill_uniform(b, pr[0], 1.0f / sqrtf((float)fan_in));
  if (bias) {
    pr[1] = param(b, name, "bias", (vmc_shape){1, {out_c}}, 1);
    fill_uniform(b, pr[1], 1.0f / sqrtf((float)fan_in));
  }
  return node(b, "conv2d", name, &x, 1, a, 8, pr, bias ? 2 : 1);
}

static int bn(zb *b, const char *name, int x, int c) {
  vmc_shape sh = {1, {c}};
  int pr[4] = {param(b, name, "weight", sh, 1), param(b, name, "bias", sh, 1),
               param(b, name, "running_mean", sh, 0), param(b, name, "running_var", sh, 0)};
  if (!b->s) {
    for (int i = 0; i < c; i++) {
      b->g->params[pr[0]].data[i] = 1.0f;
      b->g->params[pr[3]].data[i] = 1.0f;
    }
  }
  vmc_attr a[] = {vmc_attr_float("eps", 1e-5f), vmc_attr_float("momentum", 0.1f)};
  return node(b, "batchnorm", name, &x, 1, a, 2, pr, 4);
}

static int unary(zb *b, const char *op, const char *name, int x) {
  return node(b, op, name, &x, 1, NULL, 0, NULL, 0);
}

static int linear(zb *b, const char *name, int x, int in_f, int out_f) {
  vmc_attr a = vmc_attr_int("out_f", out_f);
  int pr[2] = {param(b, name, "weight", vmc_shape2(out_f, in_f), 1),
               param(b, name, "bias", (vmc_shape){1, {out_f}}, 1)};
  fill_uniform(b, pr[0], 1.0f / sqrtf((float)in_f));
  fill_uniform(b, pr[1], 1.0f / sqrtf((float)in_f));
  return node(b, "linear", name, &x, 1, &a, 1, pr, 2);
}

static int maxpool2(zb *b, const char *name, int x) {
  vmc_attr a[] = {vmc_attr_int("kh", 2), vmc_attr_int("kw", 2)};
  return node(b, "maxpool", name, &x, 1, a, 2, NULL, 0);
}

static void build_lenet5(zb *b, int c, int h, int w, int classes) {
  int x = b->g->input;
  x = conv(b, "conv1", x, c, 6, 5, 1, 2, 1, 1);
  x = unary(b, "relu", "relu1", x);
  x = maxpool2(b, "pool1", x);
  x = conv(b, "conv2", x, 6, 16, 5, 1, 0, 1, 1);
  x = unary(b, "relu", "relu2", x);
  x = maxpool2(b, "pool2", x);
  x = unary(b, "flatten", "flatten", x);
  /* 28x28 -> 28 -> 14 -> 10 -> 5 */
  int fh = ((h / 2) - 4) / 2, fw = ((w / 2) - 4) / 2;
  x = linear(b, "fc1", x, 16 * fh * fw, 120);
  x = unary(b, "relu", "relu3", x);
  x = linear(b, "fc2", x, 120, 84);
  x = unary(b, "relu", "relu4", x);
  linear(b, "fc3", x, 84, classes);
}

static int basic_block(zb *b, const char *pfx, int x, int in_c, int out_c, int stride) {
  char n[VMC_NAME_MAX], n2[VMC_NAME_MAX];
#define NM(s) (snprintf(n, sizeof n, "%s.%s", pfx, s), n)
  int y = conv(b, NM("conv1"), x, in_c, out_c, 3, stride, 1, 1, 0);
  y = bn(b, NM("bn1"), y, out_c);
  y = unary(b, "relu", NM("relu1"), y);
  y = conv(b, NM("conv2"), y, out_c, out_c, 3, 1, 1, 1, 0);
  y = bn(b, NM("bn2"), y, out_c);
  int sc = x;
  if (stride != 1 || in_c != out_c) {
    sc = conv(b, NM("downsample.0"), x, in_c, out_c, 1, stride, 0, 1, 0);
    sc = bn(b, NM("downsample.1"), sc, out_c);
  }
  int in2[2] = {y, sc};
  y = node(b, "add", NM("add"), in2, 2, NULL, 0, NULL, 0);
  snprintf(n2, sizeof n2, "%s.relu2", pfx);
  return unary(b, "relu", n2, y);
#undef NM
}

static void build_resnet(zb *b, int c, int classes, int blocks) {
  int x = b->g->input;
  x = conv(b, "conv1", x, c, 16, 3, 1, 1, 1, 0);
  x = bn(b, "bn1", x, 16);
  x = unary(b, "relu", "relu", x);
  int widths[3] = {16, 32, 64}, in_c = 16;
  for (int s = 0; s < 3; s++)
    for (int k = 0; k < blocks; k++) {
      char pfx[32];
      snprintf(pfx, sizeof pfx, "layer%d.%d", s + 1, k);
      x = basic_block(b, pfx, x, in_c, widths[s], (k == 0 && s > 0) ? 2 : 1);
      in_c = widths[s];
    }
  x = unary(b, "gap", "avgpool", x);
  x = unary(b, "flatten", "flatten", x);
  linear(b, "fc", x, 64, classes);
}

static int conv_bn_relu6(zb *b, const char *pfx, int x, int in_c, int out_c, int k, int stride,
                         int groups) {
  char n[VMC_NAME_MAX];
  snprintf(n, sizeof n, "%s.0", pfx);
  x = conv(b, n, x, in_c, out_c, k, stride, k / 2, groups, 0);
  snprintf(n, sizeof n, "%s.1", pfx);
  x = bn(b, n, x, out_c);
  snprintf(n, sizeof n, "%s.2", pfx);
  return unary(b, "relu6", n, x);
}

/* torchvision's InvertedResidual naming: features.i.conv.{0,1,2,3}. */
static int inverted_residual(zb *b, int idx, int x, int in_c, int out_c, int stride, int t) {
  char pfx[48], n[VMC_NAME_MAX];
  int hidden = in_c * t, y = x, k = 0;
  if (t != 1) {
    snprintf(pfx, sizeof pfx, "features.%d.conv.%d", idx, k++);
    y = conv_bn_relu6(b, pfx, y, in_c, hidden, 1, 1, 1);
  }
  snprintf(pfx, sizeof pfx, "features.%d.conv.%d", idx, k++);
  y = conv_bn_relu6(b, pfx, y, hidden, hidden, 3, stride, hidden);
  snprintf(n, sizeof n, "features.%d.conv.%d", idx, k++);
  y = conv(b, n, y, hidden, out_c, 1, 1, 0, 1, 0);
  snprintf(n, sizeof n, "features.%d.conv.%d", idx, k++);
  y = bn(b, n, y, out_c);
  if (stride == 1 && in_c == out_c) {
    int in2[2] = {y, x};
    snprintf(n, sizeof n, "features.%d.add", idx);
    y = node(b, "add", n, in2, 2, NULL, 0, NULL, 0);
  }
  return y;
}

static void build_mobilenetv2_tiny(zb *b, int c, int classes) {
  static const int cfg[4][4] = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 2, 2}, {6, 64, 2, 1}};
  int x = conv_bn_relu6(b, "features.0", b->g->input, c, 16, 3, 1, 1), in_c = 16, idx = 1;
  for (int s = 0; s < 4; s++)
    for (int r = 0; r < cfg[s][2]; r++) {
      x = inverted_residual(b, idx++, x, in_c, cfg[s][1], r == 0 ? cfg[s][3] : 1, cfg[s][0]);
      in_c = cfg[s][1];
    }
  char pfx[32];
  snprintf(pfx, sizeof pfx, "features.%d", idx);
  x = conv_bn_relu6(b, pfx, x, in_c, 256, 1, 1, 1);
  x = unary(b, "gap", "avgpool", x);
  x = unary(b, "flatten", "flatten", x);
  linear(b, "fc", x, 256, classes);
}

static const char *const g_names[] = {"lenet5", "resnet8", "resnet20", "mobilenetv2-tiny", NULL};

const char *const *vmc_zoo_names(void) { return g_names; }

vmc_status vmc_zoo_build(const char *name, int in_c, int in_h, int in_w, int n_classes,
                         uint64_t seed, vmc_graph **out) {
  *out = NULL;
  int which = -1;
  for (int i = 0; g_names[i]; i++)
    if (!strcmp(name, g_names[i])) which = i;
  if (which < 0)
    return vmc_error(VMC_ERR_NOT_FOUND,
                     "unknown model '%s' (the zoo has lenet5, resnet8, resnet20, mobilenetv2-tiny)",
                     name);
  if (n_classes < 2 || n_classes > 100000)
    return vmc_error(VMC_ERR_INVALID_ARG, "%d classes is out of range", n_classes);
  if (which == 0 && (in_h < 12 || in_w < 12))
    return vmc_error(VMC_ERR_SHAPE, "lenet5 needs inputs of at least 12x12, not %dx%d", in_h, in_w);
  if (which > 0 && (in_h < 4 || in_w < 4))
    return vmc_error(VMC_ERR_SHAPE, "%s needs inputs of at least 4x4", name);
  zb b = {0};
  VMC_TRY(vmc_graph_create(in_c, in_h, in_w, &b.g));
  vmc_rng_seed(&b.rng, seed);
  b.kaiming = which != 0;
  switch (which) {
  case 0: build_lenet5(&b, in_c, in_h, in_w, n_classes); break;
  case 1: build_resnet(&b, in_c, n_classes, 1); break;
  case 2: build_resnet(&b, in_c, n_classes, 3); break;
  default: build_mobilenetv2_tiny(&b, in_c, n_classes); break;
  }
  if (!b.s) b.s = vmc_graph_set_meta(b.g, "architecture", name);
  if (!b.s) {
    vmc_shape *sh = vmc_malloc_plain((size_t)b.g->n_values * sizeof *sh);
    b.s = sh ? vmc_graph_infer_shapes(b.g, 1, sh) : vmc_error(VMC_ERR_NOMEM, "zoo");
    vmc_free(sh);
  }
  if (b.s) {
    vmc_graph_free(b.g);
    return b.s;
  }
  *out = b.g;
  return VMC_OK;
}
