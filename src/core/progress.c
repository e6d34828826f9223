/* Monotonic clock and a one-line progress bar with ETA on stderr. */
#include "core/core.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

double vmc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_time(double s, char *buf, size_t n) {
  if (s < 0 || s > 359999) s = 0;
  int t = (int)(s + 0.5);
  if (t >= 3600) snprintf(buf, n, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
  else snprintf(buf, n, "%02d:%02d", t / 60, t % 60);
}

static void draw(vmc_progress *p, int final) {
  double el = vmc_now() - p->t0;
  double frac = p->total > 0 ? (double)p->done / (double)p->total : 0;
  if (frac > 1) frac = 1;
  char bar[31];
  int fill = (int)(frac * 30);
  for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
  bar[30] = 0;
  char t1[16], t2[16];
  fmt_time(el, t1, sizeof t1);
  fmt_time(frac > 0 ? el / frac - el : 0, t2, sizeof t2);
  fprintf(stderr, "\r\033[K%s [%s] %3d%% %ld/%ld %s<%s %s", p->label, bar, (int)(frac * 100),
          p->done, p->total, t1, final ? "00:00" : t2, p->extra);
  if (final) fputc('\n', stderr);
  fflush(stderr);
}

void vmc_progress_start(vmc_progress *p, const char *label, long total, int enabled) {
  memset(p, 0, sizeof *p);
  p->label = label;
  p->total = total;
  p->enabled = enabled;
  p->t0 = vmc_now();
}

void vmc_progress_update(vmc_progress *p, long done, const char *extra) {
  p->done = done;
  if (extra) snprintf(p->extra, sizeof p->extra, "%s", extra);
  if (!p->enabled) return;
  double t = vmc_now();
  if (t - p->last_draw < 0.1 && done < p->total) return;
  p->last_draw = t;
  draw(p, 0);
}

void vmc_progress_finish(vmc_progress *p) {
  if (p->enabled) draw(p, 1);
}
