/* Minimal test harness: TEST(name) registers a test; CHECK* record failures
 * and continue; REQUIRE* stop the test.  The runner prints one line per
 * failing check and ends with "N passed, N failed[, N skipped]". */
#ifndef VMC_TEST_H
#define VMC_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct vmc_test_case {
  const char *name;
  void (*fn)(void);
} vmc_test_case;

void vmc_test_register(const char *name, void (*fn)(void));
void vmc_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void vmc_test_skip(const char *why);
int vmc_test_failed_now(void);

#define TEST(name)                                                             \
  static void test_##name(void);                                               \
  __attribute__((constructor)) static void register_##name(void) {             \
    vmc_test_register(#name, test_##name);                                     \
  }                                                                            \
  static void test_##name(void)

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) vmc_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);        \
  } while (0)
#define REQUIRE(cond)                                                          \
  do {                                                                         \
    if (!(cond)) {                                                             \
      vmc_test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond);                 \
      return;                                                                  \
    }                                                                          \
  } while (0)
#define CHECK_OK(expr)                                                         \
  do {                                                                         \
    vmc_status s_ = (expr);                                                    \
    if (s_ != VMC_OK)                                                          \
      vmc_test_fail(__FILE__, __LINE__, "%s -> %s: %s", #expr,                 \
                    vmc_status_str(s_), vmc_last_error());                     \
  } while (0)
#define REQUIRE_OK(expr)                                                       \
  do {                                                                         \
    vmc_status s_ = (expr);                                                    \
    if (s_ != VMC_OK) {                                                        \
      vmc_test_fail(__FILE__, __LINE__, "%s -> %s: %s", #expr,                 \
                    vmc_status_str(s_), vmc_last_error());                     \
      return;                                                                  \
    }                                                                          \
  } while (0)
#define CHECK_NEAR(a, b, tol)                                                  \
  do {                                                                         \
    double a_ = (a), b_ = (b);                                                 \
    if (!(fabs(a_ - b_) <= (tol)))                                             \
      vmc_test_fail(__FILE__, __LINE__, "%s = %.8g, %s = %.8g (tol %g)", #a,   \
                    a_, #b, b_, (double)(tol));                                \
  } while (0)
#define CHECK_EQ_INT(a, b)                                                     \
  do {                                                                         \
    long long a_ = (long long)(a), b_ = (long long)(b);                        \
    if (a_ != b_)                                                              \
      vmc_test_fail(__FILE__, __LINE__, "%s = %lld, %s = %lld", #a, a_, #b,    \
                    b_);                                                       \
  } while (0)
#define CHECK_EQ_STR(a, b)                                                     \
  do {                                                                         \
    const char *a_ = (a), *b_ = (b);                                           \
    if (strcmp(a_, b_) != 0)                                                   \
      vmc_test_fail(__FILE__, __LINE__, "%s = \"%s\", %s = \"%s\"", #a, a_, #b,  \
                    b_);                                                       \
  } while (0)
#define SKIP(why)                                                              \
  do {                                                                         \
    vmc_test_skip(why);                                                        \
    return;                                                                    \
  } while (0)

/* Temporary directory for this test run (created on first use). */
const char *vmc_test_tmpdir(void);
/* Path of a file in the tests/fixtures folder. */
const char *vmc_test_fixture(const char *name, char *buf, size_t n);
/* Max |a-b| / (1 + |b|) over n floats. */
double vmc_test_max_rel(const float *a, const float *b, size_t n);

#endif
