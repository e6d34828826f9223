/* Internal core: errors, memory, RNG, tensors, logging.  Lowest layer. */
#ifndef VMC_CORE_H
#define VMC_CORE_H

#include "vmc.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define VMC_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define VMC_PRINTF(a, b)
#endif

/* vmc_isa_name() as an index, for the kernel families' tables of variants
 * (the first call detects the CPU; after it, one load). */
enum { VMC_ISA_REF, VMC_ISA_AVX2, VMC_ISA_AVX512 };
int vmc_isa_level(void);
/* The CPU features each level's kernels need (the AVX-512 variants use
 * AVX2 and FMA instructions too), and whether this CPU has them for level
 * isa, whatever VMC_ISA chose: where a test or benchmark may run a variant. */
#define VMC_CPU_NEEDS_AVX2 (VMC_CPU_AVX2 | VMC_CPU_FMA)
#define VMC_CPU_NEEDS_AVX512 \
  (VMC_CPU_NEEDS_AVX2 | VMC_CPU_AVX512F | VMC_CPU_AVX512BW | VMC_CPU_AVX512VL)
int vmc_cpu_runs(int isa);

/* Record a message for vmc_last_error() and return s. */
vmc_status vmc_error(vmc_status s, const char *fmt, ...) VMC_PRINTF(2, 3);
void vmc_clear_error(void);

/* Propagate a failing status. */
#define VMC_TRY(expr)                                                          \
  do {                                                                         \
    vmc_status vmc_try_s_ = (expr);                                            \
    if (vmc_try_s_ != VMC_OK) return vmc_try_s_;                               \
  } while (0)

/* ---- memory ------------------------------------------------------------ */
#define VMC_ALIGN 64
/* 64-byte aligned, zeroed; NULL on failure (no error set).  Size 0 gives a
 * valid pointer.  All library allocations but the kernels' per-thread
 * scratch (below) go through these so tests can inject failures
 * (vmc_fail_alloc_after). */
void *vmc_alloc(size_t bytes);
void *vmc_realloc_plain(void *p, size_t bytes); /* unaligned realloc */
void *vmc_malloc_plain(size_t bytes);           /* unaligned, zeroed */
void vmc_free(void *p);
/* Test hook: the n-th allocation from now fails (n < 0: never). */
void vmc_fail_alloc_after(long n);

static inline size_t vmc_align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* The kernels' per-thread scratch: a few buffers per thread, one per slot,
 * each grown on first use and kept (so the hot path allocates nothing once a
 * thread has seen its largest problem) and freed when the thread (an OpenMP
 * worker) exits.  Returns at least `bytes` 64-byte aligned bytes of the
 * calling thread's buffer for slot, its old contents lost when it grows, or
 * NULL when out of memory (the kernels then take their reference path).
 * A kernel must not hold a slot across a call to another kernel that uses
 * it. */
typedef enum {
  VMC_SCRATCH_GEMM_A,   /* fp32 GEMM: packed A */
  VMC_SCRATCH_GEMM_B,   /* fp32 GEMM: packed B */
  VMC_SCRATCH_GEMM_ACC, /* fp32 GEMM: accumulators carried between K sub-slices */
  VMC_SCRATCH_GEMM_KSPLIT, /* fp32 GEMM: K slices' sums of vmc_sgemm_mt's K split */
  VMC_SCRATCH_QGEMM,    /* int8 kernels (vmc_qscratch) */
  VMC_SCRATCH_SLOTS
} vmc_scratch_slot;
void *vmc_thread_scratch(vmc_scratch_slot slot, size_t bytes);

/* Overflow-checked size arithmetic: returns false on overflow. */
static inline bool vmc_mul_size(size_t a, size_t b, size_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}

/* Bump arena: one block, 64-byte aligned slices; reset frees all. */
typedef struct vmc_arena {
  uint8_t *base;
  size_t size, used;
} vmc_arena;
vmc_status vmc_arena_init(vmc_arena *a, size_t bytes);
void *vmc_arena_take(vmc_arena *a, size_t bytes); /* NULL if full */
void vmc_arena_release(vmc_arena *a);

/* ---- RNG: xoshiro256** seeded by splitmix64; state is saveable --------- */
typedef struct vmc_rng {
  uint64_t s[4];
  /* cached second normal from Box-Muller */
  int has_spare;
  float spare;
} vmc_rng;
void vmc_rng_seed(vmc_rng *r, uint64_t seed);
uint64_t vmc_rng_u64(vmc_rng *r);
uint32_t vmc_rng_below(vmc_rng *r, uint32_t n); /* uniform in [0, n) */
float vmc_rng_uniform(vmc_rng *r);              /* [0, 1) */
float vmc_rng_normal(vmc_rng *r);               /* N(0, 1) */
void vmc_rng_shuffle(vmc_rng *r, int *a, int n);

/* ---- tensors ------------------------------------------------------------ */
#define VMC_MAX_DIMS 4
typedef enum { VMC_F32 = 0, VMC_S8, VMC_U8, VMC_S32, VMC_S4, VMC_DTYPE_COUNT } vmc_dtype;
const char *vmc_dtype_name(vmc_dtype t);
size_t vmc_dtype_bytes(vmc_dtype t, size_t count); /* storage for count elems */

typedef struct vmc_shape {
  int ndim;
  int d[VMC_MAX_DIMS];
} vmc_shape;
static inline size_t vmc_shape_count(const vmc_shape *s) {
  size_t n = 1;
  for (int i = 0; i < s->ndim; i++) n *= (size_t)s->d[i];
  return n;
}
vmc_shape vmc_shape4(int n, int c, int h, int w);
vmc_shape vmc_shape2(int n, int f);
bool vmc_shape_eq(const vmc_shape *a, const vmc_shape *b);
/* "[64,3,3,3]" into buf. */
const char *vmc_shape_str(const vmc_shape *s, char *buf, size_t n);

/* ---- logging and progress ---------------------------------------------- */
typedef struct vmc_progress {
  const char *label;
  long total, done;
  double t0, last_draw;
  int enabled;
  char extra[96];
} vmc_progress;
double vmc_now(void); /* monotonic seconds */
/* enabled: draw on stderr (callers pass isatty && !quiet). */
void vmc_progress_start(vmc_progress *p, const char *label, long total, int enabled);
void vmc_progress_update(vmc_progress *p, long done, const char *extra);
void vmc_progress_finish(vmc_progress *p);

/* CRC-32 (IEEE 802.3, the zlib/PNG polynomial). */
uint32_t vmc_crc32(uint32_t crc, const void *data, size_t n);

#endif
