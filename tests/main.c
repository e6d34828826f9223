/* Test runner: `vmc_tests [substring ...]` runs the tests whose names
 * contain any substring (all by default). */

#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TESTS 1024
static vmc_test_case g_tests[MAX_TESTS];
static int g_n;
static int g_failed_now, g_skipped_now;
static const char *g_current;

void vmc_test_register(const char *name, void (*fn)(void)) {
  if (g_n < MAX_TESTS) g_tests[g_n++] = (vmc_test_case){name, fn};
}

void vmc_test_fail(const char *file, int line, const char *fmt, ...) {
  if (g_failed_now < 10) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "  FAIL %s (%s:%d): ", g_current, file, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
  }
  g_failed_now++;
}

void vmc_test_skip(const char *why) {
  g_skipped_now = 1;
  printf("  SKIP %s: %s\n", g_current, why);
}

int vmc_test_failed_now(void) { return g_failed_now; }

const char *vmc_test_tmpdir(void) {
  static char dir[256];
  if (!dir[0]) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/vmc-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
      perror("mkdtemp");
      exit(2);
    }
  }
  return dir;
}

const char *vmc_test_fixture(const char *name, char *buf, size_t n) {
  const char *dir = getenv("VMC_FIXTURES");
  snprintf(buf, n, "%s/%s", dir && *dir ? dir : "tests/fixtures", name);
  return buf;
}

double vmc_test_max_rel(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
    if (!(d <= m)) m = d; /* NaN propagates as failure */
  }
  return m;
}

static int cmp_case(const void *a, const void *b) {
  return strcmp(((const vmc_test_case *)a)->name, ((const vmc_test_case *)b)->name);
}

int main(int argc, char **argv) {
  qsort(g_tests, (size_t)g_n, sizeof g_tests[0], cmp_case);
  int passed = 0, failed = 0, skipped = 0;
  for (int i = 0; i < g_n; i++) {
    int want = argc < 2;
    for (int a = 1; a < argc && !want; a++) want = strstr(g_tests[i].name, argv[a]) != NULL;
    if (!want) continue;
    g_current = g_tests[i].name;
    g_failed_now = g_skipped_now = 0;
    g_tests[i].fn();
    if (g_failed_now) {
      failed++;
      printf("FAILED %s\n", g_current);
    } else if (g_skipped_now) {
      skipped++;
    } else {
      passed++;
      if (getenv("VMC_TEST_VERBOSE")) printf("ok %s\n", g_current);
    }
    fflush(stdout);
  }
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", vmc_test_tmpdir());
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", vmc_test_tmpdir());
  printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}
