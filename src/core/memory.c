/* Allocation (with a fault-injection hook for tests), the bump arena and the
 * kernels' per-thread scratch. */
#include "core/core.h"

#include <pthread.h>
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

/* ---- per-thread scratch ------------------------------------------------ */

typedef struct thread_scratch {
  void *p[VMC_SCRATCH_SLOTS];
  size_t cap[VMC_SCRATCH_SLOTS];
} thread_scratch;

/* The _Thread_local pointer is the fast path; the key's destructor frees a
 * thread's buffers when it exits. */
static _Thread_local thread_scratch *tl_scratch;
static pthread_key_t g_scratch_key;
static pthread_once_t g_scratch_once = PTHREAD_ONCE_INIT;
static int g_scratch_key_ok;

static void scratch_free(void *p) {
  thread_scratch *s = p;
  for (int i = 0; i < VMC_SCRATCH_SLOTS; i++) free(s->p[i]);
  free(s);
}
static void scratch_key_init(void) {
  g_scratch_key_ok = pthread_key_create(&g_scratch_key, scratch_free) == 0;
}

void *vmc_thread_scratch(vmc_scratch_slot slot, size_t bytes) {
  thread_scratch *s = tl_scratch;
  if (!s) {
    pthread_once(&g_scratch_once, scratch_key_init);
    s = g_scratch_key_ok ? calloc(1, sizeof *s) : NULL;
    if (!s) return NULL;
    if (pthread_setspecific(g_scratch_key, s) != 0) {
      free(s);
      return NULL;
    }
    tl_scratch = s;
  }
  if (s->cap[slot] >= bytes && s->p[slot]) return s->p[slot];
  const size_t cap = vmc_align_up(bytes ? bytes : 1, 4096);
  if (cap < bytes) return NULL;
  void *p = aligned_alloc(VMC_ALIGN, cap);
  if (!p) return NULL;
  free(s->p[slot]);
  s->p[slot] = p;
  s->cap[slot] = cap;
  return p;
}
