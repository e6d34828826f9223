/* Running the vmc binary from tests (see cli_run.h). */
#include "cli_run.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *vmc_bin(void) {
  const char *b = getenv("VMC_BIN");
  return b && *b ? b : "build/vmc";
}

int have_binary(void) { return access(vmc_bin(), X_OK) == 0; }

int run(char *out, size_t n, const char *fmt, ...) {
  char args[2048], cmd[2300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "%s %s 2>&1", vmc_bin(), args);
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  size_t k = fread(out, 1, n - 1, p);
  out[k] = 0;
  int st = pclose(p);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}
