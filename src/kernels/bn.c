/* BatchNorm kernels: the scalar reference (16 emulated lanes, the order the
 * SIMD variants use) and the dispatch. */
#include "kernels/bn.h"

#include <stdatomic.h>
#include <string.h>

#define L VMC_BN_LANES

/* v = a*x + b, the product rounded first (two statements: no contraction). */
static inline float pre(const vmc_bn_chan *c, float x) {
  float v = c->a * x;
  return v + c->b;
}

/* The masked gradient: dy where lo < v < hi (v NaN: 0). */
static inline float masked(const vmc_bn_chan *c, float x, float dy) {
  if (!c->clamp) return dy;
  float v = pre(c, x);
  return (v > c->lo && v < c->hi) ? dy : 0.0f;
}

/* The fixed reduction order of bn.h: float lanes per chunk, added to
 * double lanes after each. */
typedef struct {
  float f[2][L];
  double d[2][L];
} lanes2;

static void flush(lanes2 *a) {
  for (int q = 0; q < 2; q++)
    for (int l = 0; l < L; l++) {
      a->d[q][l] += a->f[q][l];
      a->f[q][l] = 0;
    }
}

static void stats_ref(const float *x, const vmc_bn_planes *p, float shift, double *s1,
                      double *s2) {
  lanes2 a = {0};
  for (int b = 0; b < p->n; b++) {
    const float *xb = x + (size_t)b * p->stride;
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = p->hw - i0 < VMC_BN_CHUNK ? p->hw : i0 + VMC_BN_CHUNK;
      for (int i = i0; i < end; i++) {
        float d = xb[i] - shift;
        float d2 = d * d;
        a.f[0][i % L] += d;
        a.f[1][i % L] += d2;
      }
      flush(&a);
    }
  }
  *s1 = vmc_bn_lanes_sum(a.d[0]);
  *s2 = vmc_bn_lanes_sum(a.d[1]);
}

static void apply_ref(const float *x, const vmc_bn_planes *p, const vmc_bn_chan *c, float *y) {
  for (int b = 0; b < p->n; b++) {
    const float *xb = x + (size_t)b * p->stride;
    float *yb = y + (size_t)b * p->stride;
    for (int i = 0; i < p->hw; i++) {
      float v = pre(c, xb[i]);
      if (c->clamp) {
        v = v > c->lo ? v : c->lo;
        v = v < c->hi ? v : c->hi;
      }
      yb[i] = v;
    }
  }
}

static void bwd_sums_ref(const float *x, const float *dy, const vmc_bn_planes *p,
                         const vmc_bn_chan *c, double *sdy, double *sdyx) {
  lanes2 a = {0};
  for (int b = 0; b < p->n; b++) {
    const float *xb = x + (size_t)b * p->stride, *dyb = dy + (size_t)b * p->stride;
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      const int end = p->hw - i0 < VMC_BN_CHUNK ? p->hw : i0 + VMC_BN_CHUNK;
      for (int i = i0; i < end; i++) {
        float d = masked(c, xb[i], dyb[i]);
        float t = d * (xb[i] - c->mu);
        a.f[0][i % L] += d;
        a.f[1][i % L] += t;
      }
      flush(&a);
    }
  }
  *sdy = vmc_bn_lanes_sum(a.d[0]);
  *sdyx = vmc_bn_lanes_sum(a.d[1]);
}

static void bwd_dx_ref(const float *x, const float *dy, const vmc_bn_planes *p,
                       const vmc_bn_chan *c, float *dx, int accumulate) {
  for (int b = 0; b < p->n; b++) {
    const float *xb = x + (size_t)b * p->stride, *dyb = dy + (size_t)b * p->stride;
    float *dxb = dx + (size_t)b * p->stride;
    for (int i = 0; i < p->hw; i++) {
      float d = masked(c, xb[i], dyb[i]);
      float r = c->k * d;
      if (c->use_x) {
        float t = (xb[i] - c->mu) * c->c2;
        r = r - c->c1;
        r = r - t;
      }
      dxb[i] = accumulate ? dxb[i] + r : r;
    }
  }
}

const vmc_bn_kernels vmc_bn_kernels__ref = {"ref", stats_ref, apply_ref, bwd_sums_ref,
                                            bwd_dx_ref};

static _Atomic(const vmc_bn_kernels *) g_best;

const vmc_bn_kernels *vmc_bn_kernels_best(void) {
  const vmc_bn_kernels *k = atomic_load_explicit(&g_best, memory_order_acquire);
  if (k) return k;
  const char *isa = vmc_isa_name();
  k = !strcmp(isa, "avx512") ? &vmc_bn_kernels__avx512
      : !strcmp(isa, "avx2") ? &vmc_bn_kernels__avx2
                             : &vmc_bn_kernels__ref;
  atomic_store_explicit(&g_best, k, memory_order_release);
  return k;
}
