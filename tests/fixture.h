/* Reader for the test fixtures that tests/fixtures/make_fixtures.py writes
 * (PyTorch reference outputs, committed).  Format, little-endian:
 *
 *   "VMCFIX01" | u32 count | count x { u16 name_len | name | u8 ndim (0..8) |
 *   u32 dims[ndim] | f32 data[prod dims] } | u32 CRC-32 of all bytes before
 *
 * The reader checks every length against the file size, the dimensions for
 * overflow, names for uniqueness and the checksum; a malformed file gives
 * VMC_ERR_FORMAT (with a message) and never a read past the buffer. */
#ifndef VMC_TEST_FIXTURE_H
#define VMC_TEST_FIXTURE_H

#include "core/core.h"

#define VMC_FIX_MAX_DIMS 8

typedef struct vmc_fix_tensor {
  char *name;
  int ndim;
  int64_t dims[VMC_FIX_MAX_DIMS];
  size_t count; /* prod(dims); 1 for a scalar */
  float *data;
} vmc_fix_tensor;

typedef struct vmc_fix {
  int n;
  vmc_fix_tensor *t;
} vmc_fix;

/* Parses a fixture held in memory. */
vmc_status vmc_fix_parse(const uint8_t *buf, size_t len, vmc_fix **out);
/* Reads and parses a fixture file. */
vmc_status vmc_fix_load(const char *path, vmc_fix **out);
void vmc_fix_free(vmc_fix *f);
/* Tensor by exact name, or NULL. */
const vmc_fix_tensor *vmc_fix_get(const vmc_fix *f, const char *name);
/* Tensor by printf-formatted name, or NULL. */
const vmc_fix_tensor *vmc_fix_getf(const vmc_fix *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The tensor's shape as a vmc_shape; false if it has more than 4 dims or a
 * dimension above INT32_MAX. */
bool vmc_fix_shape(const vmc_fix_tensor *t, vmc_shape *s);

#endif
