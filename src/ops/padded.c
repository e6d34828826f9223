/* The padded activation layout (graph/op.h): its borders. */
#include "graph/op.h"

#include <string.h>

void vmc_padded_zero_borders(const vmc_padded *p, int ch, float *y) {
  vmc_padded_zero_channels(p, ch, 0, ch, y);
}

/* n zero floats, 8 at a time and the last 8 overlapping: fixed-size
 * memsets the compiler writes inline, where a call per span (one per
 * channel, a few dozen floats each) cost more than the stores. */
static void zero_floats(float *q, size_t n) {
  if (n < 8) {
    for (size_t k = 0; k < n; k++) q[k] = 0.0f;
    return;
  }
  size_t k = 0;
  for (; k + 8 <= n; k += 8) memset(q + k, 0, 8 * sizeof *q);
  if (k < n) memset(q + n - 8, 0, 8 * sizeof *q);
}

void vmc_padded_zero_channels(const vmc_padded *p, int ch, int c0, int c1, float *y) {
  const size_t o = vmc_padded_origin(p);
  /* A plane's bottom row runs into the next plane's top row (or the slack
   * after the last): one span of zeros between the pixels of two planes,
   * the upper one's. */
  const size_t tail = o + (size_t)p->h * p->wp, span = p->plane - tail + o;
  if (c0 == 0 && c1 > 0) zero_floats(y, o);
  for (int c = c0; c < c1; c++) {
    float *q = y + (size_t)c * p->plane;
    for (int i = 1; i <= p->h; i++) q[o + (size_t)i * p->wp - 1] = 0.0f; /* wp = w + 1: one */
    zero_floats(q + tail, c + 1 < ch ? span : p->plane - tail + VMC_PADDED_SLACK);
  }
}
