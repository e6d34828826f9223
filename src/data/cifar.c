/* CIFAR-10 binary batches: records of 1 label byte (0..9) followed by 3072
 * pixel bytes, 3 x 32 x 32 in CHW order (all red, then green, then blue).
 * A file that is not a whole number of records is truncated: an error. */
#include "data/data.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define CIFAR_SIDE 32
#define CIFAR_PIXELS (3 * CIFAR_SIDE * CIFAR_SIDE)
#define CIFAR_RECORD (1 + CIFAR_PIXELS)
#define CIFAR_CLASSES 10
#define CIFAR_CHUNK 256 /* records per read */

/* Open path and give its record count. */
static vmc_status open_batch(const char *path, FILE **out, size_t *records) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT)
      return vmc_error(VMC_ERR_NOT_FOUND, "%s: file not found", path);
    return vmc_error(VMC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  }
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    return vmc_error(VMC_ERR_IO, "%s: not a regular file", path);
  }
  size_t size = (size_t)sb.st_size;
  if (size == 0) {
    fclose(f);
    return vmc_error(VMC_ERR_FORMAT, "%s: empty file (expected CIFAR-10 records)", path);
  }
  if (size % CIFAR_RECORD != 0) {
    fclose(f);
    return vmc_error(VMC_ERR_FORMAT,
                     "%s: truncated or not CIFAR-10 binary: %zu bytes is not a "
                     "whole number of %d-byte records",
                     path, size, CIFAR_RECORD);
  }
  *out = f;
  *records = size / CIFAR_RECORD;
  return VMC_OK;
}

/* Read `records` records from f into images/labels. */
static vmc_status read_batch(FILE *f, const char *path, size_t records, uint8_t *buf,
                             uint8_t *images, uint8_t *labels, size_t first) {
  for (size_t r = 0; r < records;) {
    size_t k = records - r < CIFAR_CHUNK ? records - r : CIFAR_CHUNK;
    size_t got = fread(buf, CIFAR_RECORD, k, f);
    if (got != k) {
      if (ferror(f))
        return vmc_error(VMC_ERR_IO, "%s: read failed: %s", path, strerror(errno));
      return vmc_error(VMC_ERR_FORMAT, "%s: truncated at record %zu of %zu", path,
                       r + got, records);
    }
    for (size_t i = 0; i < k; i++) {
      const uint8_t *rec = buf + i * CIFAR_RECORD;
      if (rec[0] >= CIFAR_CLASSES)
        return vmc_error(VMC_ERR_FORMAT,
                         "%s: record %zu has label %u (CIFAR-10 labels are 0..9)",
                         path, r + i, rec[0]);
      labels[first + r + i] = rec[0];
      memcpy(images + (first + r + i) * CIFAR_PIXELS, rec + 1, CIFAR_PIXELS);
    }
    r += k;
  }
  return VMC_OK;
}

vmc_status vmc_cifar_load(const char *const *paths, int npaths, vmc_dataset *d) {
  if (npaths <= 0) return vmc_error(VMC_ERR_INVALID_ARG, "no CIFAR-10 batch files given");
  /* First pass: sizes, so one allocation holds every batch. */
  size_t total = 0;
  for (int i = 0; i < npaths; i++) {
    FILE *f;
    size_t records;
    VMC_TRY(open_batch(paths[i], &f, &records));
    fclose(f);
    total += records;
    if (total > (size_t)INT_MAX || total > VMC_DATA_MAX_BYTES / CIFAR_PIXELS)
      return vmc_error(VMC_ERR_FORMAT, "%s: more than %zu CIFAR-10 records in all",
                       paths[i], VMC_DATA_MAX_BYTES / CIFAR_PIXELS);
  }
  uint8_t *images = vmc_alloc(total * CIFAR_PIXELS);
  uint8_t *labels = vmc_alloc(total);
  uint8_t *buf = vmc_malloc_plain((size_t)CIFAR_CHUNK * CIFAR_RECORD);
  vmc_status st = VMC_OK;
  if (!images || !labels || !buf) {
    st = vmc_error(VMC_ERR_NOMEM, "%s: cannot allocate %zu CIFAR-10 images", paths[0],
                   total);
    goto fail;
  }
  size_t at = 0;
  for (int i = 0; i < npaths; i++) {
    FILE *f;
    size_t records;
    if ((st = open_batch(paths[i], &f, &records)) != VMC_OK) goto fail;
    if (at + records > total) { /* the file grew since the first pass */
      fclose(f);
      st = vmc_error(VMC_ERR_IO, "%s: changed while reading", paths[i]);
      goto fail;
    }
    st = read_batch(f, paths[i], records, buf, images, labels, at);
    fclose(f);
    if (st != VMC_OK) goto fail;
    at += records;
  }
  vmc_free(buf);
  d->n = (int)at;
  d->c = 3;
  d->h = d->w = CIFAR_SIDE;
  d->n_classes = CIFAR_CLASSES;
  d->images = images;
  d->labels = labels;
  return VMC_OK;
fail:
  vmc_free(buf);
  vmc_free(images);
  vmc_free(labels);
  return st;
}
