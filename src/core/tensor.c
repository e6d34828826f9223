/* dtypes and shapes. */
#include "core/core.h"

#include <stdio.h>

static const char *const g_dtype_names[VMC_DTYPE_COUNT] = {"f32", "s8", "u8", "s32", "s4"};

const char *vmc_dtype_name(vmc_dtype t) {
  return (unsigned)t < VMC_DTYPE_COUNT ? g_dtype_names[t] : "?";
}

size_t vmc_dtype_bytes(vmc_dtype t, size_t count) {
  switch (t) {
  case VMC_F32: case VMC_S32: return count * 4;
  case VMC_S8: case VMC_U8: return count;
  case VMC_S4: return (count + 1) / 2;
  default: return 0;
  }
}

vmc_shape vmc_shape4(int n, int c, int h, int w) { return (vmc_shape){4, {n, c, h, w}}; }
vmc_shape vmc_shape2(int n, int f) { return (vmc_shape){2, {n, f, 0, 0}}; }

bool vmc_shape_eq(const vmc_shape *a, const vmc_shape *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->d[i] != b->d[i]) return false;
  return true;
}

const char *vmc_shape_str(const vmc_shape *s, char *buf, size_t n) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "[");
  for (int i = 0; i < s->ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ",%d" : "%d", s->d[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}
