/* Plane copies: the reference (memcpy/memset per row, scalar strided
 * loops) and the dispatch. */
#include "kernels/planes.h"

#include <string.h>

static int cdiv(int a, int b) { return (a + b - 1) / b; }

static void pad_ref(const float *x, int ch, int h, int w, int top, int left, int hp, int wp,
                    size_t slack, float *xp) {
  for (int c = 0; c < ch; c++) {
    float *dst = xp + (size_t)c * hp * wp;
    const float *src = x + (size_t)c * h * w;
    memset(dst, 0, sizeof(float) * (size_t)top * wp);
    for (int y = 0; y < h; y++) {
      float *r = dst + (size_t)(top + y) * wp;
      memset(r, 0, sizeof(float) * (size_t)left);
      memcpy(r + left, src + (size_t)y * w, sizeof(float) * (size_t)w);
      memset(r + left + w, 0, sizeof(float) * (size_t)(wp - left - w));
    }
    memset(dst + (size_t)(top + h) * wp, 0, sizeof(float) * (size_t)(hp - top - h) * wp);
  }
  memset(xp + (size_t)ch * hp * wp, 0, sizeof(float) * slack);
}

static void crop_ref(const float *src, int ch, size_t plane, int wp, int top, int left, int h,
                     int w, float *dst, int add) {
  for (int c = 0; c < ch; c++)
    for (int y = 0; y < h; y++) {
      const float *s = src + (size_t)c * plane + (size_t)(top + y) * wp + left;
      float *d = dst + ((size_t)c * h + y) * w;
      if (add)
        for (int k = 0; k < w; k++) d[k] += s[k];
      else
        memcpy(d, s, sizeof(float) * (size_t)w);
    }
}

/* Phase columns v with 0 <= sw*v + s - left < w: [*v0, *v1), v1 <= n. */
static void phase_cols(const vmc_phase_geom *g, int s, int n, int *v0, int *v1) {
  const int off = s - g->left;
  *v0 = off >= 0 ? 0 : cdiv(-off, g->sw);
  *v1 = g->w - off <= 0 ? 0 : cdiv(g->w - off, g->sw);
  if (*v1 > n) *v1 = n;
  if (*v0 > *v1) *v0 = *v1;
}

static void split_ref(const float *x, int ch, const vmc_phase_geom *g, size_t slack, float *xq) {
  const int sh = g->sh, sw = g->sw, phw = g->phw;
  const size_t plane = (size_t)g->phh * phw;
  for (int ci = 0; ci < ch; ci++)
    for (int r = 0; r < sh; r++)
      for (int s = 0; s < sw; s++) {
        if (g->slot[r][s] < 0) continue;
        float *dst = xq + ((size_t)ci * g->nslots + g->slot[r][s]) * plane;
        const int off = s - g->left;
        int v0, v1;
        phase_cols(g, s, phw, &v0, &v1);
        for (int u = 0; u < g->phh; u++) {
          float *d = dst + (size_t)u * phw;
          const int y = sh * u + r - g->top;
          if (y < 0 || y >= g->h) {
            memset(d, 0, sizeof(float) * (size_t)phw);
            continue;
          }
          const float *src = x + ci * vmc_phase_xplane(g) + y * vmc_phase_xrow(g);
          for (int v = 0; v < v0; v++) d[v] = 0;
          for (int v = v0; v < v1; v++) d[v] = src[sw * v + off];
          for (int v = v1; v < phw; v++) d[v] = 0;
        }
      }
  memset(xq + (size_t)ch * g->nslots * plane, 0, sizeof(float) * slack);
}

static void merge_ref(const float *dq, int ch, const vmc_phase_geom *g, float *dx, int add) {
  const int sh = g->sh, sw = g->sw;
  const size_t plane = (size_t)g->phh * g->phw;
  for (int ci = 0; ci < ch; ci++)
    for (int y = 0; y < g->h; y++) {
      const int yy = y + g->top, r = yy % sh, u = yy / sh;
      float *d = dx + ((size_t)ci * g->h + y) * g->w;
      for (int s = 0; s < sw; s++) {
        const int off = s - g->left;
        int v0, v1;
        phase_cols(g, s, g->phw, &v0, &v1);
        if (g->slot[r][s] < 0) {
          if (!add)
            for (int v = v0; v < v1; v++) d[sw * v + off] = 0;
          continue;
        }
        const float *src = dq + ((size_t)ci * g->nslots + g->slot[r][s]) * plane + (size_t)u * g->phw;
        if (add)
          for (int v = v0; v < v1; v++) d[sw * v + off] += src[v];
        else
          for (int v = v0; v < v1; v++) d[sw * v + off] = src[v];
      }
    }
}

const vmc_planes_kernels vmc_planes_kernels__ref = {"ref", pad_ref, crop_ref, split_ref, merge_ref};

const vmc_planes_kernels *vmc_planes_kernels_best(void) {
  static const vmc_planes_kernels *const best[] = {
      &vmc_planes_kernels__ref, &vmc_planes_kernels__avx2, &vmc_planes_kernels__avx512};
  return best[vmc_isa_level()];
}
