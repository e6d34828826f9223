/* BatchNorm kernels: the scalar reference (16 emulated lanes, the order the
 * SIMD variants use) and the dispatch. */
#include "kernels/bn.h"

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

/* The fixed reduction order of bn.h: float lanes per chunk, added to the
 * plane's double lanes after each. */
static void flush(float f[2][L], vmc_bn_acc *a) {
  for (int q = 0; q < 2; q++)
    for (int l = 0; l < L; l++) {
      a->l[q][l] += f[q][l];
      f[q][l] = 0;
    }
}

static int chunk_end(int i0, int hw) { return hw - i0 < VMC_BN_CHUNK ? hw : i0 + VMC_BN_CHUNK; }

static void stats_ref(const float *x, const vmc_bn_planes *p, const float *shift,
                      vmc_bn_acc *acc) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride;
    float f[2][L] = {{0}};
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      for (int i = i0; i < chunk_end(i0, p->hw); i++) {
        float d = xk[i] - shift[k];
        float d2 = d * d;
        f[0][i % L] += d;
        f[1][i % L] += d2;
      }
      flush(f, &acc[k]);
    }
  }
}

static void apply_ref(const float *x, const vmc_bn_planes *p, const vmc_bn_chan *c, float *y) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride;
    float *yk = y + (size_t)k * p->stride;
    for (int i = 0; i < p->hw; i++) {
      float v = pre(&c[k], xk[i]);
      if (c[k].clamp) {
        v = v > c[k].lo ? v : c[k].lo;
        v = v < c[k].hi ? v : c[k].hi;
      }
      yk[i] = v;
    }
  }
}

static void bwd_sums_ref(const float *x, const float *dy, const vmc_bn_planes *p,
                         const vmc_bn_chan *c, vmc_bn_acc *acc) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride, *dyk = dy + (size_t)k * p->stride;
    float f[2][L] = {{0}};
    for (int i0 = 0; i0 < p->hw; i0 += VMC_BN_CHUNK) {
      for (int i = i0; i < chunk_end(i0, p->hw); i++) {
        float d = masked(&c[k], xk[i], dyk[i]);
        float t = d * (xk[i] - c[k].mu);
        f[0][i % L] += d;
        f[1][i % L] += t;
      }
      flush(f, &acc[k]);
    }
  }
}

static void bwd_dx_ref(const float *x, const float *dy, const vmc_bn_planes *p,
                       const vmc_bn_chan *c, float *dx, int accumulate) {
  for (int k = 0; k < p->n; k++) {
    const float *xk = x + (size_t)k * p->stride, *dyk = dy + (size_t)k * p->stride;
    float *dxk = dx + (size_t)k * p->stride;
    const vmc_bn_chan *ck = &c[k];
    for (int i = 0; i < p->hw; i++) {
      float d = masked(ck, xk[i], dyk[i]);
      float r = ck->k * d;
      if (ck->use_x) {
        float t = (xk[i] - ck->mu) * ck->c2;
        r = r - ck->c1;
        r = r - t;
      }
      dxk[i] = accumulate ? dxk[i] + r : r;
    }
  }
}

const vmc_bn_kernels vmc_bn_kernels__ref = {"ref", stats_ref, apply_ref, bwd_sums_ref,
                                            bwd_dx_ref};

const vmc_bn_kernels *vmc_bn_kernels_best(void) {
  static const vmc_bn_kernels *const k[] = {&vmc_bn_kernels__ref, &vmc_bn_kernels__avx2,
                                            &vmc_bn_kernels__avx512};
  return k[vmc_isa_level()];
}
