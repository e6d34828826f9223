/* Status codes and the per-thread last-error message. */
#include "core/core.h"

#include <stdio.h>

static _Thread_local char g_msg[512];

static const char *const g_names[VMC_STATUS_COUNT] = {
    [VMC_OK] = "ok",
    [VMC_ERR_INVALID_ARG] = "invalid argument",
    [VMC_ERR_NOMEM] = "out of memory",
    [VMC_ERR_IO] = "I/O error",
    [VMC_ERR_FORMAT] = "malformed file",
    [VMC_ERR_VERSION] = "unsupported format version",
    [VMC_ERR_SHAPE] = "shape mismatch",
    [VMC_ERR_NOT_FOUND] = "not found",
    [VMC_ERR_UNSUPPORTED] = "unsupported",
    [VMC_ERR_INTERNAL] = "internal error",
};
_Static_assert(sizeof g_names / sizeof g_names[0] == VMC_STATUS_COUNT, "status names");

const char *vmc_status_str(vmc_status s) {
  if ((int)s < 0 || s >= VMC_STATUS_COUNT) return "unknown status";
  return g_names[s];
}

const char *vmc_last_error(void) { return g_msg; }
void vmc_clear_error(void) { g_msg[0] = 0; }

vmc_status vmc_error(vmc_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_msg, sizeof g_msg, fmt, ap);
  va_end(ap);
  return s;
}
