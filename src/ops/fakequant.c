/* fakequant: y = dequantize(quantize(x)), per tensor, any shape -- what an
 * integer runtime does to an activation it reads, simulated in fp32.
 *
 * attrs: scale (float, a positive normal number), zero_point, qmin, qmax
 * (ints, qmin <= zero_point <= qmax).  No parameters.
 *
 * Forward: bit for bit vmc_qfake_quantize (quant/quant.h): v = x * (1/scale)
 * in fp32, clamped to [qmin - zp, qmax - zp], rounded half to even, times
 * scale; NaN gives 0.0 (the code of zp).  For ranges within +-2^21 (every
 * 8- and 4-bit scheme) the rounding is the fp32 "magic number" sum, which
 * vectorises and gives nearbyint's result under the default rounding mode:
 * the element-wise loops vmc_qfake_f32 / vmc_qfake_grad_f32 (kernels/qelt.h),
 * built for each ISA.
 * (The rule is restated here rather than taken from quant/quant.h, a layer
 * above the ops; tests/test_ptq.c checks the two agree bit for bit.)
 *
 * Backward: the straight-through estimator with PyTorch's mask
 * (fake_quantize_per_tensor_affine_cachemask): dx = dy where the unclamped
 * code round(x * inv) + zp lies in [qmin, qmax], 0 elsewhere (and for NaN
 * and +-inf).  In input terms that is about
 * [(qmin - zp - 1/2) * scale, (qmax - zp + 1/2) * scale]: a value that
 * rounds onto an edge code is not clipped and keeps its gradient. */
#include "graph/op.h"
#include "kernels/qelt.h"

#include <float.h>
#include <math.h>

typedef struct fq_params {
  float scale;
  int32_t zp, qmin, qmax;
} fq_params;

static fq_params fq_get(const vmc_node *n) {
  fq_params p = {.scale = vmc_node_attr_f(n, "scale", 0.0f),
                 .zp = vmc_node_attr_i(n, "zero_point", 0),
                 .qmin = vmc_node_attr_i(n, "qmin", 0),
                 .qmax = vmc_node_attr_i(n, "qmax", -1)};
  return p;
}

static vmc_status fq_infer(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                           vmc_shape *out) {
  static const char *const need[] = {"scale", "qmin", "qmax"};
  for (int k = 0; k < 3; k++)
    if (!vmc_node_has_attr(n, need[k]))
      return vmc_error(VMC_ERR_INVALID_ARG, "node '%s' (fakequant): no '%s' attribute", n->name,
                       need[k]);
  const fq_params p = fq_get(n);
  if (!(p.scale >= FLT_MIN && p.scale <= FLT_MAX))
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s' (fakequant): scale %g is not a positive "
                     "normal float", n->name, (double)p.scale);
  if (p.qmin > p.qmax || p.zp < p.qmin || p.zp > p.qmax)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s' (fakequant): zero point %d and range "
                     "[%d, %d] do not fit together", n->name, (int)p.zp, (int)p.qmin,
                     (int)p.qmax);
  *out = in[0];
  return VMC_OK;
}

static size_t count(const vmc_opctx *c) {
  return vmc_shape_count(&c->ys) / (size_t)c->ys.d[0] * (size_t)c->batch;
}

/* Integer bounds of v = x * inv, relative to the zero point; nonzero when
 * they allow the fast path. */
static int fq_bounds(const fq_params *p, double *lo, double *hi) {
  *lo = (double)p->qmin - p->zp;
  *hi = (double)p->qmax - p->zp;
  return *lo >= -VMC_QFAKE_LIMIT && *hi <= VMC_QFAKE_LIMIT;
}

/* Thread t of nt takes elements [span(t), span(t + 1)), multiples of 64. */
static size_t span(size_t n, int t, int nt) {
  return t == nt ? n : (size_t)((unsigned long long)n * (unsigned)t / (unsigned)nt) & ~(size_t)63;
}

static int fq_threads(const vmc_opctx *c, size_t n) {
  return c->nthreads > 1 && n > 65536 ? c->nthreads : 1;
}

static void fq_forward(vmc_opctx *c) {
  const fq_params p = fq_get(c->node);
  const size_t n = count(c);
  const float *x = c->x[0];
  float *y = c->y;
  const float inv = 1.0f / p.scale, s = p.scale;
  double dlo, dhi;
  if (!fq_bounds(&p, &dlo, &dhi)) {
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && n > 65536)
    for (size_t i = 0; i < n; i++) {
      const float v = x[i] * inv;
      double d = v > dlo ? v : dlo;
      d = d < dhi ? d : dhi;
      y[i] = v == v ? (float)(int64_t)nearbyint(d) * s : 0.0f; /* -0.0 rounds to +0 */
    }
    return;
  }
  const int nt = fq_threads(c, n);
#pragma omp parallel for schedule(static, 1) num_threads(nt) if (nt > 1)
  for (int t = 0; t < nt; t++) {
    const size_t a = span(n, t, nt);
    vmc_qfake_f32(x + a, span(n, t + 1, nt) - a, inv, s, (float)dlo, (float)dhi, y + a);
  }
}

static void fq_backward(vmc_opctx *c) {
  float *dx = c->dx[0];
  if (!dx) return;
  const fq_params p = fq_get(c->node);
  const size_t n = count(c);
  const float *x = c->x[0], *dy = c->dy;
  const float inv = 1.0f / p.scale;
  const int set = c->dx_set[0];
  double dlo, dhi;
  if (!fq_bounds(&p, &dlo, &dhi)) {
#pragma omp parallel for schedule(static) num_threads(c->nthreads) if (c->nthreads > 1 && n > 65536)
    for (size_t i = 0; i < n; i++) {
      const double r = nearbyint((double)(x[i] * inv)); /* NaN fails both tests */
      const float g = r >= dlo && r <= dhi ? dy[i] : 0.0f;
      dx[i] = set ? g : dx[i] + g;
    }
    return;
  }
  /* The clamp to [lo - 2, hi + 2] keeps the rounding exact and maps NaN
   * below lo; the values it moves are outside either way. */
  const int nt = fq_threads(c, n);
#pragma omp parallel for schedule(static, 1) num_threads(nt) if (nt > 1)
  for (int t = 0; t < nt; t++) {
    const size_t a = span(n, t, nt);
    vmc_qfake_grad_f32(x + a, dy + a, span(n, t + 1, nt) - a, inv, (float)dlo, (float)dhi, set,
                       dx + a);
  }
}

const vmc_op vmc_op_fakequant = {.name = "fakequant", .min_in = 1, .max_in = 1,
                                 .infer = fq_infer, .forward = fq_forward,
                                 .backward = fq_backward, .sets_dx = 1};
