/* The padded activation layout (graph/op.h): its borders. */
#include "graph/op.h"

#include <string.h>

void vmc_padded_zero_borders(const vmc_padded *p, int ch, float *y) {
  vmc_padded_zero_channels(p, ch, 0, ch, y);
}

void vmc_padded_zero_channels(const vmc_padded *p, int ch, int c0, int c1, float *y) {
  const size_t o = vmc_padded_origin(p);
  /* A plane's bottom row runs into the next plane's top row (or the slack
   * after the last): one span of zeros between the pixels of two planes,
   * the upper one's. */
  const size_t tail = o + (size_t)p->h * p->wp, span = p->plane - tail + o;
  if (c0 == 0 && c1 > 0) memset(y, 0, o * sizeof *y);
  for (int c = c0; c < c1; c++) {
    float *q = y + (size_t)c * p->plane;
    for (int i = 1; i <= p->h; i++) q[o + (size_t)i * p->wp - 1] = 0.0f; /* wp = w + 1: one */
    memset(q + tail, 0, (c + 1 < ch ? span : p->plane - tail + VMC_PADDED_SLACK) * sizeof *q);
  }
}
