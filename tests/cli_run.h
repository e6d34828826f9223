/* Running the vmc binary from tests (the CLI end to end). */
#ifndef VMC_TEST_CLI_RUN_H
#define VMC_TEST_CLI_RUN_H

#include <stddef.h>

/* $VMC_BIN, or build/vmc. */
const char *vmc_bin(void);
/* Nonzero when that binary exists and is executable. */
int have_binary(void);
/* Runs `vmc ARGS` (ARGS printf-formatted), captures stdout and stderr into
 * out (n bytes, NUL-terminated); returns the exit code, 128 + the signal when
 * killed, -1 when it could not run. */
int run(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Nonzero when path exists. */
int exists(const char *path);

#endif
