/* Software prefetch of a span of floats, a cache line at a time.  Training
 * at batch 128 streams activations that have left the caches; the copies
 * and transforms that read (or overwrite) them a channel plane at a time
 * ask for the next plane while they work on this one, which the hardware
 * prefetchers, seeing short rows and jumps between planes, do not. */
#ifndef VMC_KERNELS_PREFETCH_H
#define VMC_KERNELS_PREFETCH_H

#include <stddef.h>

/* The lines holding p[0 .. n), n > 0, towards the L1 cache (a prefetch
 * never faults, whatever the address). */
static inline void vmc_prefetch_span(const float *p, size_t n) {
  for (size_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 3);
  __builtin_prefetch(p + n - 1, 0, 3);
}

#endif
