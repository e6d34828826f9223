/* Fixture reader: see fixture.h for the format. */
#include "fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char k_magic[8] = {'V', 'M', 'C', 'F', 'I', 'X', '0', '1'};

typedef struct reader {
  const uint8_t *p;
  size_t len, pos;
} reader;

static bool take(reader *r, size_t n, const uint8_t **out) {
  if (n > r->len - r->pos) return false;
  *out = r->p + r->pos;
  r->pos += n;
  return true;
}

static bool rd_u8(reader *r, uint32_t *v) {
  const uint8_t *b;
  if (!take(r, 1, &b)) return false;
  *v = b[0];
  return true;
}

static bool rd_u16(reader *r, uint32_t *v) {
  const uint8_t *b;
  if (!take(r, 2, &b)) return false;
  *v = (uint32_t)b[0] | (uint32_t)b[1] << 8;
  return true;
}

static bool rd_u32(reader *r, uint32_t *v) {
  const uint8_t *b;
  if (!take(r, 4, &b)) return false;
  *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
  return true;
}

void vmc_fix_free(vmc_fix *f) {
  if (!f) return;
  for (int i = 0; i < f->n; i++) {
    free(f->t[i].name);
    free(f->t[i].data);
  }
  free(f->t);
  free(f);
}

static vmc_status bad(vmc_fix *f, const char *what, size_t pos) {
  vmc_fix_free(f);
  return vmc_error(VMC_ERR_FORMAT, "fixture: %s at byte %zu", what, pos);
}

vmc_status vmc_fix_parse(const uint8_t *buf, size_t len, vmc_fix **out) {
  *out = NULL;
  if (len < sizeof k_magic + 8 || memcmp(buf, k_magic, sizeof k_magic))
    return vmc_error(VMC_ERR_FORMAT, "fixture: bad magic (want VMCFIX01)");
  /* The checksum covers everything before the last 4 bytes. */
  reader tail = {buf, len, len - 4};
  uint32_t want_crc;
  rd_u32(&tail, &want_crc);
  if (vmc_crc32(0, buf, len - 4) != want_crc)
    return vmc_error(VMC_ERR_FORMAT, "fixture: checksum mismatch");
  reader r = {buf, len - 4, sizeof k_magic};
  uint32_t count;
  if (!rd_u32(&r, &count)) return vmc_error(VMC_ERR_FORMAT, "fixture: truncated header");
  /* Each tensor takes at least 4 bytes: a bound before allocating. */
  if (count > (r.len - r.pos) / 4) return vmc_error(VMC_ERR_FORMAT, "fixture: count %u too large", count);
  vmc_fix *f = calloc(1, sizeof *f);
  if (!f) return vmc_error(VMC_ERR_NOMEM, "fixture");
  f->t = calloc(count ? count : 1, sizeof *f->t);
  if (!f->t) {
    free(f);
    return vmc_error(VMC_ERR_NOMEM, "fixture table");
  }
  for (uint32_t i = 0; i < count; i++) {
    vmc_fix_tensor *t = &f->t[f->n];
    uint32_t nlen, ndim;
    const uint8_t *name, *data;
    if (!rd_u16(&r, &nlen) || nlen == 0 || nlen > 1024 || !take(&r, nlen, &name))
      return bad(f, "bad or truncated tensor name", r.pos);
    if (memchr(name, 0, nlen)) return bad(f, "NUL in tensor name", r.pos);
    if (!rd_u8(&r, &ndim) || ndim > VMC_FIX_MAX_DIMS)
      return bad(f, "bad number of dimensions", r.pos);
    size_t cnt = 1;
    for (uint32_t d = 0; d < ndim; d++) {
      uint32_t v;
      if (!rd_u32(&r, &v)) return bad(f, "truncated dimensions", r.pos);
      if (!vmc_mul_size(cnt, v, &cnt) || cnt > ((size_t)1 << 30))
        return bad(f, "tensor too large", r.pos);
      t->dims[d] = v;
    }
    size_t bytes = cnt * 4;
    if (!take(&r, bytes, &data)) return bad(f, "truncated tensor data", r.pos);
    t->name = malloc(nlen + 1u);
    t->data = malloc(cnt ? bytes : 4);
    if (!t->name || !t->data) {
      free(t->name);
      free(t->data);
      vmc_fix_free(f);
      return vmc_error(VMC_ERR_NOMEM, "fixture tensor");
    }
    memcpy(t->name, name, nlen);
    t->name[nlen] = 0;
    t->ndim = (int)ndim;
    t->count = cnt;
    for (size_t k = 0; k < cnt; k++) {
      const uint8_t *b = data + 4 * k;
      uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                   (uint32_t)b[3] << 24;
      memcpy(&t->data[k], &u, 4);
    }
    f->n++;
    for (int j = 0; j < f->n - 1; j++)
      if (!strcmp(f->t[j].name, t->name)) {
        char msg[1100];
        snprintf(msg, sizeof msg, "duplicate tensor '%s'", t->name);
        return bad(f, msg, r.pos);
      }
  }
  if (r.pos != r.len) return bad(f, "trailing bytes after the last tensor", r.pos);
  *out = f;
  return VMC_OK;
}

vmc_status vmc_fix_load(const char *path, vmc_fix **out) {
  *out = NULL;
  FILE *fp = fopen(path, "rb");
  if (!fp) return vmc_error(VMC_ERR_IO, "cannot open fixture '%s' (run `make fixtures`)", path);
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      size_t nc = cap ? cap * 2 : 1 << 16;
      uint8_t *nb = realloc(buf, nc);
      if (!nb) {
        free(buf);
        fclose(fp);
        return vmc_error(VMC_ERR_NOMEM, "reading fixture '%s'", path);
      }
      buf = nb;
      cap = nc;
    }
    size_t got = fread(buf + len, 1, cap - len, fp);
    len += got;
    if (got == 0) break;
  }
  int err = ferror(fp);
  fclose(fp);
  if (err) {
    free(buf);
    return vmc_error(VMC_ERR_IO, "reading fixture '%s'", path);
  }
  vmc_status s = vmc_fix_parse(buf, len, out);
  free(buf);
  if (s) return vmc_error(s, "%s: %s", path, vmc_last_error());
  return VMC_OK;
}

const vmc_fix_tensor *vmc_fix_get(const vmc_fix *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->t[i].name, name)) return &f->t[i];
  return NULL;
}

const vmc_fix_tensor *vmc_fix_getf(const vmc_fix *f, const char *fmt, ...) {
  char name[1100];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof name) return NULL;
  return vmc_fix_get(f, name);
}

bool vmc_fix_shape(const vmc_fix_tensor *t, vmc_shape *s) {
  if (t->ndim > VMC_MAX_DIMS) return false;
  memset(s, 0, sizeof *s);
  s->ndim = t->ndim;
  for (int i = 0; i < t->ndim; i++) {
    if (t->dims[i] > INT32_MAX) return false;
    s->d[i] = (int)t->dims[i];
  }
  return true;
}
