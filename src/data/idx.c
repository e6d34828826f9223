/* IDX files (MNIST, Fashion-MNIST), read through zlib so that gzipped and
 * plain files read the same way.
 *
 * Layout: 4-byte big-endian magic 0x0000 08 nd (08 = u8 data, nd = number
 * of dimensions), nd big-endian u32 dimensions, then the data.  Images are
 * 0x00000803 (n, rows, cols), labels 0x00000801 (n).  Every header value is
 * bounded before it sizes an allocation; a short or over-long payload is a
 * format error. */
#include "data/data.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <zlib.h>

#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAGIC_LABELS 0x00000801u

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static vmc_status gz_fail(gzFile f, const char *path) {
  int err = Z_OK;
  const char *msg = gzerror(f, &err);
  if (err == Z_ERRNO)
    return vmc_error(VMC_ERR_IO, "%s: read failed: %s", path, strerror(errno));
  if (err == Z_BUF_ERROR)
    return vmc_error(VMC_ERR_FORMAT, "%s: truncated gzip data (%s)", path, msg);
  if (err == Z_MEM_ERROR)
    return vmc_error(VMC_ERR_NOMEM, "%s: out of memory while decompressing", path);
  return vmc_error(VMC_ERR_FORMAT, "%s: corrupt gzip data (%s)", path,
                   msg && *msg ? msg : "unknown zlib error");
}

/* Read up to n bytes; *got = how many came (short only at end of file). */
static vmc_status read_upto(gzFile f, const char *path, void *buf, size_t n,
                            size_t *got) {
  size_t done = 0;
  while (done < n) {
    size_t chunk = n - done;
    if (chunk > (1u << 30)) chunk = 1u << 30;
    int r = gzread(f, (uint8_t *)buf + done, (unsigned)chunk);
    if (r < 0) return gz_fail(f, path);
    if (r == 0) {
      int err = Z_OK;
      gzerror(f, &err);
      if (err != Z_OK) return gz_fail(f, path);
      break;
    }
    done += (size_t)r;
  }
  *got = done;
  return VMC_OK;
}

/* Read one IDX file with the given magic (ndim dims, ndim <= 3) into a
 * vmc_alloc'd buffer.  what: "images" or "labels", for messages. */
static vmc_status read_idx(const char *path, uint32_t magic_want, const char *what,
                           uint32_t dims[3], uint8_t **data, size_t *bytes) {
  *data = NULL;
  *bytes = 0;
  int ndim = (int)(magic_want & 0xff);
  errno = 0;
  gzFile f = gzopen(path, "rb");
  if (!f) {
    if (errno == ENOENT)
      return vmc_error(VMC_ERR_NOT_FOUND, "%s: file not found", path);
    if (errno == 0) return vmc_error(VMC_ERR_NOMEM, "%s: out of memory opening", path);
    return vmc_error(VMC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  }
  gzbuffer(f, 1u << 17);

  vmc_status st;
  uint8_t hdr[16];
  size_t got = 0;
  size_t hdr_bytes = 4 + 4 * (size_t)ndim;
  if ((st = read_upto(f, path, hdr, hdr_bytes, &got)) != VMC_OK) goto done;
  if (got == 0) {
    st = vmc_error(VMC_ERR_FORMAT, "%s: empty file (expected IDX %s)", path, what);
    goto done;
  }
  if (got < 4) {
    st = vmc_error(VMC_ERR_FORMAT, "%s: truncated IDX header (%zu bytes)", path, got);
    goto done;
  }
  uint32_t magic = be32(hdr);
  if (magic != magic_want) {
    const char *other = magic == IDX_MAGIC_IMAGES   ? " (an IDX images file)"
                        : magic == IDX_MAGIC_LABELS ? " (an IDX labels file)"
                                                    : "";
    st = vmc_error(VMC_ERR_FORMAT,
                   "%s: not an IDX %s file: magic 0x%08x%s, expected 0x%08x", path,
                   what, (unsigned)magic, other, (unsigned)magic_want);
    goto done;
  }
  if (got < hdr_bytes) {
    st = vmc_error(VMC_ERR_FORMAT, "%s: truncated IDX header (%zu of %zu bytes)",
                   path, got, hdr_bytes);
    goto done;
  }
  size_t total = 1;
  for (int i = 0; i < ndim; i++) {
    dims[i] = be32(hdr + 4 + 4 * i);
    uint32_t limit = i == 0 ? (uint32_t)INT_MAX : VMC_DATA_MAX_SIDE;
    if (dims[i] == 0 || dims[i] > limit) {
      st = vmc_error(VMC_ERR_FORMAT, "%s: IDX dimension %d is %u (must be 1..%u)",
                     path, i, (unsigned)dims[i], (unsigned)limit);
      goto done;
    }
    if (!vmc_mul_size(total, dims[i], &total) || total > VMC_DATA_MAX_BYTES) {
      st = vmc_error(VMC_ERR_FORMAT,
                     "%s: IDX %s of more than %zu bytes (header dims are absurd)",
                     path, what, (size_t)VMC_DATA_MAX_BYTES);
      goto done;
    }
  }

  uint8_t *buf = vmc_alloc(total);
  if (!buf) {
    st = vmc_error(VMC_ERR_NOMEM, "%s: cannot allocate %zu bytes for %s", path,
                   total, what);
    goto done;
  }
  if ((st = read_upto(f, path, buf, total, &got)) != VMC_OK) {
    vmc_free(buf);
    goto done;
  }
  if (got < total) {
    st = vmc_error(VMC_ERR_FORMAT,
                   "%s: truncated: the header promises %zu bytes of %s, the file "
                   "has %zu",
                   path, total, what, got);
    vmc_free(buf);
    goto done;
  }
  uint8_t extra;
  if ((st = read_upto(f, path, &extra, 1, &got)) != VMC_OK) {
    vmc_free(buf);
    goto done;
  }
  if (got) {
    st = vmc_error(VMC_ERR_FORMAT,
                   "%s: data continues past the %zu bytes of %s the header "
                   "promises (wrong dimensions?)",
                   path, total, what);
    vmc_free(buf);
    goto done;
  }
  *data = buf;
  *bytes = total;
  st = VMC_OK;
done:
  gzclose(f);
  return st;
}

static int max_byte(const uint8_t *p, size_t n) {
  int m = 0;
  for (size_t i = 0; i < n; i++)
    if (p[i] > m) m = p[i];
  return m;
}

vmc_status vmc_idx_max_label(const char *labels_path, int *max_label) {
  uint32_t dims[3] = {0};
  uint8_t *labels;
  size_t bytes;
  VMC_TRY(read_idx(labels_path, IDX_MAGIC_LABELS, "labels", dims, &labels, &bytes));
  *max_label = max_byte(labels, bytes);
  vmc_free(labels);
  return VMC_OK;
}

vmc_status vmc_idx_load(const char *images_path, const char *labels_path,
                        vmc_dataset *d) {
  uint32_t idims[3] = {0}, ldims[3] = {0};
  uint8_t *images, *labels;
  size_t ibytes, lbytes;
  VMC_TRY(read_idx(images_path, IDX_MAGIC_IMAGES, "images", idims, &images, &ibytes));
  vmc_status st = read_idx(labels_path, IDX_MAGIC_LABELS, "labels", ldims, &labels,
                           &lbytes);
  if (st != VMC_OK) {
    vmc_free(images);
    return st;
  }
  if (idims[0] != ldims[0]) {
    vmc_free(images);
    vmc_free(labels);
    return vmc_error(VMC_ERR_FORMAT, "%s has %u images but %s has %u labels",
                     images_path, (unsigned)idims[0], labels_path,
                     (unsigned)ldims[0]);
  }
  d->n = (int)idims[0];
  d->c = 1;
  d->h = (int)idims[1];
  d->w = (int)idims[2];
  d->n_classes = max_byte(labels, lbytes) + 1;
  d->images = images;
  d->labels = labels;
  return VMC_OK;
}
