/* Allocation (with a fault-injection hook for tests) and the bump arena. */
#include "core/core.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long g_fail_after = -1;

void vmc_fail_alloc_after(long n) { atomic_store(&g_fail_after, n); }

static bool should_fail(void) {
  long n = atomic_load(&g_fail_after);
  while (n >= 0) {
    if (atomic_compare_exchange_weak(&g_fail_after, &n, n - 1)) return n == 0;
  }
  return false;
}

void *vmc_alloc(size_t bytes) {
  if (should_fail()) return NULL;
  size_t n = vmc_align_up(bytes ? bytes : 1, VMC_ALIGN);
  if (n < bytes) return NULL;
  void *p = aligned_alloc(VMC_ALIGN, n);
  if (p) memset(p, 0, n);
  return p;
}

void *vmc_malloc_plain(size_t bytes) {
  if (should_fail()) return NULL;
  return calloc(1, bytes ? bytes : 1);
}

void *vmc_realloc_plain(void *p, size_t bytes) {
  if (should_fail()) return NULL;
  return realloc(p, bytes ? bytes : 1);
}

void vmc_free(void *p) { free(p); }

vmc_status vmc_arena_init(vmc_arena *a, size_t bytes) {
  a->size = vmc_align_up(bytes, VMC_ALIGN);
  a->used = 0;
  a->base = vmc_alloc(a->size);
  if (!a->base) return vmc_error(VMC_ERR_NOMEM, "arena of %zu bytes", bytes);
  return VMC_OK;
}

void *vmc_arena_take(vmc_arena *a, size_t bytes) {
  size_t n = vmc_align_up(bytes, VMC_ALIGN);
  if (n < bytes || n > a->size - a->used) return NULL;
  void *p = a->base + a->used;
  a->used += n;
  return p;
}

void vmc_arena_release(vmc_arena *a) {
  vmc_free(a->base);
  a->base = NULL;
  a->size = a->used = 0;
}
