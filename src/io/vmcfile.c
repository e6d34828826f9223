/* The .vmc model file: versioned, checksummed, 64-byte aligned tensor data,
 * written atomically.  The byte layout is documented in docs/file-format.md
 * and its constants live in io/io.h.
 *
 * Writing serialises the whole file into memory, then writes it to a temporary
 * file that is fsync'ed and renamed over the destination.  Reading loads the
 * whole file, checks the envelope (magic, version, size, CRC-32), then parses
 * it with a bounds-checked cursor: every count, length, offset and dimension
 * is checked before use, so a malformed file gives a status and a message
 * naming the file (and the tensor or node), never a crash or a leak.
 *
 * Quantized weights (vmc_param.store VMC_S8 / VMC_S4) are stored as their
 * codes followed by a companion tensor of f32 scales.  The codes are
 * entropy-coded (canonical Huffman, io/entropy.h) when that makes them
 * smaller, which needs format version 3; quantized weights stored raw need
 * version 2; a file whose tensors are all f32 is written as version 1,
 * which every reader knows. */
#include "io/io.h"

#include "graph/op.h"
#include "io/entropy.h"
#include "kernels/qgemm.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(VMC_FILE_MAGIC) - 1 == 8, "the magic is 8 bytes");
_Static_assert(VMC_FH_RESERVED + 24 == VMC_FILE_HEADER_BYTES, "header layout");
_Static_assert(sizeof(float) == 4, "f32 tensors");

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define VMC_HOST_LE 1
#else
#define VMC_HOST_LE 0
#endif

/* Smallest encodings, used to bound counts against section sizes. */
enum {
  MIN_META_BYTES = 4 + 1 + 4,              /* key of 1 byte, empty value */
  MIN_TENSOR_BYTES = 4 + 1 + 6 * 4 + 2 * 8, /* 1-byte name, ndim 0 */
  MIN_NODE_BYTES = 2 * (4 + 1) + 3 * 4     /* op, name, three zero counts */
};

/* ---- little-endian helpers ---------------------------------------------- */
static uint32_t ld_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t ld_u64(const uint8_t *p) { return ld_u32(p) | (uint64_t)ld_u32(p + 4) << 32; }
static void st_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void st_u64(uint8_t *p, uint64_t v) {
  st_u32(p, (uint32_t)v);
  st_u32(p + 4, (uint32_t)(v >> 32));
}

/* Re-sets the last error with "what: " in front of it. */
static vmc_status wrap_error(vmc_status s, const char *what) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s", vmc_last_error());
  return vmc_error(s, "%s: %s", what, msg);
}

/* The same for the reader: what the graph layer calls a bad argument is, in
 * a file, a malformed file. */
static vmc_status file_error(vmc_status s, const char *what) {
  return wrap_error(s == VMC_ERR_INVALID_ARG ? VMC_ERR_FORMAT : s, what);
}

static bool name_ok(const char *s, size_t cap) {
  size_t n = strnlen(s, cap);
  return n >= 1 && n < cap;
}

/* A tensor directory entry, as written and as parsed. */
typedef struct tensor_ent {
  char name[VMC_NAME_MAX];
  uint32_t dtype, role, flags, link, axis;
  vmc_shape shape;
  uint64_t off, nbytes;
} tensor_ent;

/* ---- quantized storage ---------------------------------------------------- */

static bool is_quantized(const vmc_param *p) { return p->store == VMC_S8 || p->store == VMC_S4; }
static vmc_dtype file_dtype(const vmc_param *p) { return is_quantized(p) ? p->store : VMC_F32; }
static int qmax_of(uint32_t dtype) { return dtype == VMC_S8 ? 127 : 7; }
/* A usable scale: positive, normal and finite (false for NaN). */
static bool scale_ok(float s) { return s >= FLT_MIN && s <= FLT_MAX; }

uint64_t vmc_param_file_bytes(const vmc_param *p) {
  const size_t count = vmc_shape_count(&p->shape);
  uint64_t n = vmc_dtype_bytes(file_dtype(p), count);
  if (is_quantized(p) && p->n_qscale > 0) n += (uint64_t)p->n_qscale * 4;
  return n;
}

/* Checks that quantized parameter p is what the reader will restore: every
 * element an in-range code times its scale; writes the codes to codes[]
 * unless it is NULL. */
static vmc_status param_codes(const vmc_param *p, int8_t *codes, const char *path) {
  const int nq = p->n_qscale;
  if (!p->qscale || (nq != 1 && nq != p->shape.d[0]))
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s' is stored as %s with "
                     "%d scales for %d channels", path, p->name, vmc_dtype_name(p->store), nq,
                     p->shape.d[0]);
  for (int c = 0; c < nq; c++)
    if (!scale_ok(p->qscale[c]))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s': scale %d is %g",
                       path, p->name, c, (double)p->qscale[c]);
  const size_t n = vmc_shape_count(&p->shape), blk = n / (size_t)nq;
  const float qmax = (float)qmax_of(p->store);
  for (size_t i = 0; i < n; i++) {
    const float s = p->qscale[i / blk], v = p->data[i], r = nearbyintf(v / s);
    if (!(r >= -qmax && r <= qmax) || r * s != v)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s' is stored as %s, "
                       "but element %zu (%g) is not a code in -%d..%d times its scale %g "
                       "(re-quantize it or store it as f32)", path, p->name,
                       vmc_dtype_name(p->store), i, (double)v, qmax_of(p->store), qmax_of(p->store),
                       (double)s);
    if (codes) codes[i] = (int8_t)r;
  }
  return VMC_OK;
}

/* ======================================================================== */
/* Writing                                                                  */
/* ======================================================================== */

typedef struct wbuf {
  uint8_t *p;
  size_t n, cap;
  bool oom;
} wbuf;

static void wb_need(wbuf *b, size_t k) {
  if (b->oom || k <= b->cap - b->n) return;
  size_t nc = b->cap ? b->cap : 4096;
  while (nc - b->n < k) {
    if (nc > SIZE_MAX / 2) {
      b->oom = true;
      return;
    }
    nc *= 2;
  }
  uint8_t *q = vmc_realloc_plain(b->p, nc);
  if (!q) {
    b->oom = true;
    return;
  }
  b->p = q;
  b->cap = nc;
}
static void wb_put(wbuf *b, const void *src, size_t k) {
  wb_need(b, k);
  if (b->oom || !k) return;
  memcpy(b->p + b->n, src, k);
  b->n += k;
}
static void wb_zeros(wbuf *b, size_t k) {
  wb_need(b, k);
  if (b->oom) return;
  memset(b->p + b->n, 0, k);
  b->n += k;
}
static void wb_u32(wbuf *b, uint32_t v) {
  uint8_t t[4];
  st_u32(t, v);
  wb_put(b, t, 4);
}
static void wb_u64(wbuf *b, uint64_t v) {
  uint8_t t[8];
  st_u64(t, v);
  wb_put(b, t, 8);
}
static void wb_f32(wbuf *b, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  wb_u32(b, u);
}
static void wb_str(wbuf *b, const char *s) {
  size_t n = strlen(s);
  wb_u32(b, (uint32_t)n);
  wb_put(b, s, n);
}
static void wb_f32s(wbuf *b, const float *x, size_t count) {
#if VMC_HOST_LE
  wb_put(b, x, count * 4);
#else
  for (size_t i = 0; i < count; i++) wb_f32(b, x[i]);
#endif
}
static void wb_align(wbuf *b) { wb_zeros(b, vmc_align_up(b->n, VMC_FILE_ALIGN) - b->n); }

/* How a quantized parameter's codes are stored: raw (s8 bytes, packed s4),
 * or entropy-coded with its own code table, with the table it shares with
 * the later tensors of its dtype, or with that shared table (io.h). */
typedef enum { CODES_RAW = -1, CODES_OWN = VMC_CODED_OWN_TABLE,
               CODES_DEFINE = VMC_CODED_DEFINE_SHARED, CODES_SHARED = VMC_CODED_SHARED_TABLE } codes_kind;

typedef struct code_plan {
  codes_kind kind;
  uint64_t nbytes;     /* of the codes' directory entry */
  uint64_t alt, use;   /* while planning: bytes raw or with its own table (the smaller),
                        * and with the shared table */
  vmc_huff_table own;  /* CODES_OWN */
} code_plan;

/* What check_for_write and plan_codes learn about the file to write. */
typedef struct write_plan {
  uint64_t data_bytes; /* the data region, padding included, codes raw */
  int n_tensors;       /* directory entries: parameters, scale tensors, extras */
  size_t max_codes;    /* elements of the largest quantized parameter (0: none,
                        * a version 1 file) */
  code_plan *codes;    /* per parameter (quantized ones only); NULL: not planned */
  vmc_huff_table shared[2]; /* the shared tables of s8 and s4 (n 0: none) */
  bool coded;          /* some codes are entropy-coded: version 3 */
} write_plan;

static vmc_status too_many(const char *path) {
  return vmc_error(VMC_ERR_INVALID_ARG,
                   "cannot save '%s': more than %u metadata entries, tensors or nodes", path,
                   VMC_FILE_MAX_COUNT);
}

/* Checks that g and the extras can be written and read back. */
static vmc_status check_for_write(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                                  const char *path, write_plan *plan) {
  if ((uint64_t)g->n_meta > VMC_FILE_MAX_COUNT || (uint64_t)g->n_nodes > VMC_FILE_MAX_COUNT ||
      (uint64_t)g->n_params + (uint64_t)n_extra > VMC_FILE_MAX_COUNT)
    return too_many(path);
  if (g->input < 0 || g->input >= g->n_values || strcmp(g->values[g->input].name, "input") ||
      g->in_shape.ndim != 4)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': the graph has no image input 'input'",
                     path);
  if (g->output < 0 || g->output >= g->n_values)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': the graph has no output", path);
  /* Never write a file the reader would reject: the graph must be valid. */
  vmc_shape *shapes = vmc_malloc_plain((size_t)g->n_values * sizeof *shapes);
  if (!shapes) return vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  vmc_status s = vmc_graph_infer_shapes(g, 1, shapes);
  vmc_free(shapes);
  if (s) {
    char what[300];
    snprintf(what, sizeof what, "cannot save '%s'", path);
    return wrap_error(s, what);
  }
  for (int i = 0; i < g->n_meta; i++) {
    size_t kn = strlen(g->meta[i].key), vn = strlen(g->meta[i].value);
    if (kn < 1 || kn >= VMC_FILE_META_KEY_MAX || vn >= VMC_FILE_META_VALUE_MAX)
      return vmc_error(VMC_ERR_INVALID_ARG,
                       "cannot save '%s': metadata '%.64s' has a key of %zu or a value of %zu "
                       "bytes (limits 1..%u, 0..%u)",
                       path, g->meta[i].key, kn, vn, VMC_FILE_META_KEY_MAX - 1,
                       VMC_FILE_META_VALUE_MAX - 1);
  }
  uint64_t total = 0;
  uint64_t n_tensors = (uint64_t)g->n_params + (uint64_t)n_extra;
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    if (!name_ok(p->name, VMC_NAME_MAX) || p->shape.ndim < 1 || p->shape.ndim > VMC_MAX_DIMS ||
        !p->data)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter %d is malformed", path,
                       i);
    const size_t count = vmc_shape_count(&p->shape);
    if (p->store != VMC_F32 && !is_quantized(p))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s' is stored as %s "
                       "(f32, s8 or s4 expected)", path, p->name, vmc_dtype_name(p->store));
    total += vmc_align_up(vmc_dtype_bytes(file_dtype(p), count), VMC_FILE_ALIGN);
    if (is_quantized(p)) { /* its codes are checked by plan_codes */
      total += vmc_align_up((size_t)p->n_qscale * 4, VMC_FILE_ALIGN);
      n_tensors++;
      if (count > plan->max_codes) plan->max_codes = count;
    }
  }
  if (n_tensors > VMC_FILE_MAX_COUNT) return too_many(path);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (!name_ok(n->name, VMC_NAME_MAX) || !n->op || !name_ok(n->op->name, VMC_NAME_MAX) ||
        n->out < 0 || n->out >= g->n_values || strcmp(g->values[n->out].name, n->name))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': node %d is malformed", path, i);
    for (int k = 0; k < n->n_attr; k++)
      if (!name_ok(n->attr[k].key, VMC_ATTR_KEY_MAX))
        return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': node '%s' has a bad attribute key",
                         path, n->name);
  }
  for (int i = 0; i < n_extra; i++) {
    const vmc_blob *e = &extra[i];
    if (!name_ok(e->name, VMC_NAME_MAX))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor %d has a bad name",
                       path, i);
    bool dup = vmc_graph_find_param(g, e->name) >= 0;
    for (int k = 0; k < i && !dup; k++) dup = !strcmp(extra[k].name, e->name);
    if (dup)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': tensor name '%s' is used twice",
                       path, e->name);
    if (e->shape.ndim < 0 || e->shape.ndim > VMC_MAX_DIMS)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor '%s' has %d dimensions",
                       path, e->name, e->shape.ndim);
    size_t count = 1;
    for (int k = 0; k < e->shape.ndim; k++)
      if (e->shape.d[k] < 1 || !vmc_mul_size(count, (size_t)e->shape.d[k], &count) ||
          count > (VMC_FILE_MAX_BYTES >> 2))
        return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor '%s' has a bad shape",
                         path, e->name);
    if (!e->data)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor '%s' has no data", path,
                       e->name);
    total += vmc_align_up(count * 4, VMC_FILE_ALIGN);
  }
  if (total > VMC_FILE_MAX_BYTES)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': %llu bytes of tensors exceed the 4 GiB "
                     "limit of a .vmc file", path, (unsigned long long)total);
  plan->data_bytes = total;
  plan->n_tensors = (int)n_tensors;
  return VMC_OK;
}

static int dtype_slot(vmc_dtype t) { return t == VMC_S4; }

/* A coded stream's bytes: the table mode, the table (0 bytes for the shared
 * one), the bits. */
static uint64_t coded_bytes(size_t table_bytes, uint64_t bits) {
  return 1 + table_bytes + (bits + 7) / 8;
}

/* Histogram of quantized parameter p's codes (checked: param_codes). */
static vmc_status codes_hist(const vmc_param *p, const char *path, int8_t *scratch,
                             vmc_huff_hist *h) {
  VMC_TRY(param_codes(p, scratch, path));
  memset(h, 0, sizeof *h);
  vmc_huff_count(h, scratch, vmc_shape_count(&p->shape));
  return VMC_OK;
}

/* Checks every quantized parameter's codes and chooses how each is stored,
 * the smallest way (plan->codes[i]): raw; with its own code table; or with
 * a table shared by the tensors of its dtype, built from the codes of
 * those that their own tables make smaller than raw, and used by the ones
 * it makes smaller than both other ways if together they save more than
 * the table's bytes -- the first of them (in directory order) carries it,
 * so it is one that the table plus its bits still keep smaller than raw.
 * Coded codes are always fewer bytes than raw ones.  scratch: max_codes
 * bytes. */
static vmc_status plan_codes(const vmc_graph *g, const char *path, int8_t *scratch,
                             write_plan *plan) {
  vmc_huff_hist all[2], h;
  memset(all, 0, sizeof all);
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    if (!is_quantized(p)) continue;
    code_plan *cp = &plan->codes[i];
    VMC_TRY(codes_hist(p, path, scratch, &h));
    vmc_huff_build(&h, &cp->own);
    const uint64_t raw = vmc_dtype_bytes(p->store, vmc_shape_count(&p->shape));
    const uint64_t own = coded_bytes(vmc_huff_table_bytes(&cp->own), vmc_huff_bits(&cp->own, &h));
    cp->kind = own < raw ? CODES_OWN : CODES_RAW;
    cp->nbytes = cp->alt = own < raw ? own : raw;
    if (cp->kind == CODES_RAW) continue;
    vmc_huff_hist *a = &all[dtype_slot(p->store)];
    for (int k = 0; k < 256; k++) a->n[k] += h.n[k];
  }
  for (int slot = 0; slot < 2; slot++) {
    const vmc_dtype t = slot ? VMC_S4 : VMC_S8;
    vmc_huff_table *sh = &plan->shared[slot];
    vmc_huff_build(&all[slot], sh); /* n 0 when no tensor of this dtype codes smaller */
    if (!sh->n) continue;
    const uint64_t tb = vmc_huff_table_bytes(sh);
    int first = -1;
    int64_t gain = -(int64_t)tb;
    for (int i = 0; i < g->n_params; i++) {
      const vmc_param *p = &g->params[i];
      if (p->store != t) continue;
      code_plan *cp = &plan->codes[i];
      VMC_TRY(codes_hist(p, path, scratch, &h));
      const uint64_t bits = vmc_huff_bits(sh, &h); /* UINT64_MAX: a code it lacks */
      cp->use = bits == UINT64_MAX ? UINT64_MAX : coded_bytes(0, bits);
      if (first < 0 && cp->use < cp->alt &&
          cp->use + tb < vmc_dtype_bytes(t, vmc_shape_count(&p->shape)))
        first = i;
      if (first >= 0 && cp->use < cp->alt) gain += (int64_t)(cp->alt - cp->use);
    }
    if (first < 0 || gain <= 0) continue;
    for (int i = first; i < g->n_params; i++) {
      code_plan *cp = &plan->codes[i];
      if (g->params[i].store != t || cp->use >= cp->alt) continue;
      cp->kind = i == first ? CODES_DEFINE : CODES_SHARED;
      cp->nbytes = cp->use + (i == first ? tb : 0);
    }
  }
  for (int i = 0; i < g->n_params; i++)
    if (is_quantized(&g->params[i]) && plan->codes[i].kind != CODES_RAW) plan->coded = true;
  return VMC_OK;
}

/* One tensor directory entry (e->off is ignored); returns the buffer
 * position of its offset field, patched once the data is laid out. */
static size_t wb_tensor_entry(wbuf *b, const tensor_ent *e) {
  wb_str(b, e->name);
  wb_u32(b, e->dtype);
  wb_u32(b, e->role);
  wb_u32(b, e->flags);
  wb_u32(b, e->link);
  wb_u32(b, e->axis);
  wb_u32(b, (uint32_t)e->shape.ndim);
  for (int k = 0; k < e->shape.ndim; k++) wb_u32(b, (uint32_t)e->shape.d[k]);
  size_t at = b->n;
  wb_u64(b, 0);
  wb_u64(b, e->nbytes);
  return at;
}

/* An f32 data tensor (role data, no link). */
static tensor_ent f32_entry(const char *name, const vmc_shape *shape, uint32_t flags) {
  tensor_ent e = {.dtype = VMC_F32, .role = VMC_TROLE_DATA, .flags = flags,
                  .link = VMC_FILE_LINK_NONE, .shape = *shape,
                  .nbytes = (uint64_t)vmc_shape_count(shape) * 4};
  snprintf(e.name, sizeof e.name, "%s", name);
  return e;
}

/* Starts a tensor's data at the next aligned offset, noted in its entry. */
static void wb_tensor_start(wbuf *b, size_t entry_at) {
  wb_align(b);
  if (!b->oom) st_u64(b->p + entry_at, b->n);
}

static void wb_tensor_data(wbuf *b, size_t entry_at, const float *x, size_t count) {
  wb_tensor_start(b, entry_at);
  wb_f32s(b, x, count);
}

/* A quantized parameter's codes as cp says (raw: s8, or s4 two per byte;
 * coded: the table mode, the table, the bits), then its scales; scratch
 * holds its element count of bytes. */
static void wb_quantized(wbuf *b, const size_t *entry_at, const vmc_param *p, const code_plan *cp,
                         const vmc_huff_table *shared, int8_t *scratch) {
  const size_t count = vmc_shape_count(&p->shape);
  (void)param_codes(p, scratch, ""); /* checked by plan_codes */
  wb_tensor_start(b, entry_at[0]);
  if (cp->kind != CODES_RAW) {
    const vmc_huff_table *t = cp->kind == CODES_OWN ? &cp->own : shared;
    wb_need(b, (size_t)cp->nbytes);
    if (!b->oom) {
      uint8_t *q = b->p + b->n;
      size_t k = 0;
      q[k++] = (uint8_t)cp->kind;
      if (cp->kind != CODES_SHARED) {
        vmc_huff_write_table(t, q + k);
        k += vmc_huff_table_bytes(t);
      }
      k += vmc_huff_encode(t, scratch, count, q + k);
      assert(k == cp->nbytes); /* what plan_codes put in the directory */
      b->n += k;
    }
  } else if (p->store == VMC_S8) {
    wb_put(b, scratch, count);
  } else {
    const size_t nb = vmc_dtype_bytes(VMC_S4, count);
    wb_need(b, nb);
    if (!b->oom) {
      vmc_s4_pack(scratch, count, b->p + b->n);
      b->n += nb;
    }
  }
  wb_tensor_data(b, entry_at[1], p->qscale, (size_t)p->n_qscale);
}

/* Serialises the whole file into b. */
static void serialise(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                      const write_plan *plan, int8_t *scratch, wbuf *b, size_t *entry_at) {
  wb_need(b, (size_t)plan->data_bytes + 65536);
  wb_zeros(b, VMC_FILE_HEADER_BYTES);
  /* metadata */
  size_t meta_off = b->n;
  for (int i = 0; i < g->n_meta; i++) {
    wb_str(b, g->meta[i].key);
    wb_str(b, g->meta[i].value);
  }
  /* tensor directory: parameters in graph order, then extras */
  size_t tensors_off = b->n;
  int nt = 0;
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    tensor_ent e = f32_entry(p->name, &p->shape, p->trainable ? VMC_TFLAG_TRAINABLE : 0);
    if (is_quantized(p)) {
      e.dtype = p->store;
      e.nbytes = plan->codes[i].nbytes;
      if (plan->codes[i].kind != CODES_RAW) e.flags |= VMC_TFLAG_CODED;
      entry_at[nt++] = wb_tensor_entry(b, &e);
      /* its scales: same name, linked to it, along axis 0 */
      const vmc_shape qs = {1, {p->n_qscale}};
      e = f32_entry(p->name, &qs, 0);
      e.role = VMC_TROLE_SCALE;
      e.link = (uint32_t)nt - 1;
      e.axis = 0;
    }
    entry_at[nt++] = wb_tensor_entry(b, &e);
  }
  for (int i = 0; i < n_extra; i++) {
    const tensor_ent e = f32_entry(extra[i].name, &extra[i].shape, VMC_TFLAG_EXTRA);
    entry_at[nt++] = wb_tensor_entry(b, &e);
  }
  /* graph */
  size_t graph_off = b->n;
  for (int k = 1; k < 4; k++) wb_u32(b, (uint32_t)g->in_shape.d[k]);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    wb_str(b, n->op->name);
    wb_str(b, n->name);
    wb_u32(b, (uint32_t)n->n_in);
    for (int k = 0; k < n->n_in; k++) wb_str(b, g->values[n->in[k]].name);
    wb_u32(b, (uint32_t)n->n_attr);
    for (int k = 0; k < n->n_attr; k++) {
      wb_str(b, n->attr[k].key);
      wb_u32(b, (uint32_t)n->attr[k].i);
      wb_f32(b, n->attr[k].f);
    }
    wb_u32(b, (uint32_t)n->n_param);
    for (int k = 0; k < n->n_param; k++) wb_str(b, g->params[n->param[k]].name);
  }
  wb_str(b, g->values[g->output].name);
  /* data region */
  wb_align(b);
  size_t data_off = b->n;
  nt = 0;
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    if (is_quantized(p)) {
      wb_quantized(b, entry_at + nt, p, &plan->codes[i], &plan->shared[dtype_slot(p->store)],
                   scratch);
      nt += 2;
    } else {
      wb_tensor_data(b, entry_at[nt++], p->data, vmc_shape_count(&p->shape));
    }
  }
  for (int i = 0; i < n_extra; i++)
    wb_tensor_data(b, entry_at[nt++], extra[i].data, vmc_shape_count(&extra[i].shape));
  if (b->oom) return;
  /* header, then the CRC of everything before it */
  uint8_t *h = b->p;
  memcpy(h + VMC_FH_MAGIC, VMC_FILE_MAGIC, 8);
  st_u32(h + VMC_FH_VERSION, plan->coded      ? VMC_FILE_VERSION
                             : plan->max_codes ? VMC_FILE_VERSION_RAW_CODES
                                               : VMC_FILE_VERSION_F32);
  st_u32(h + VMC_FH_HEADER_BYTES, VMC_FILE_HEADER_BYTES);
  st_u64(h + VMC_FH_FILE_BYTES, (uint64_t)b->n + 4);
  st_u32(h + VMC_FH_N_META, (uint32_t)g->n_meta);
  st_u32(h + VMC_FH_N_TENSORS, (uint32_t)nt);
  st_u32(h + VMC_FH_N_NODES, (uint32_t)g->n_nodes);
  st_u32(h + VMC_FH_FLAGS, 0);
  st_u64(h + VMC_FH_META_OFF, meta_off);
  st_u64(h + VMC_FH_TENSORS_OFF, tensors_off);
  st_u64(h + VMC_FH_GRAPH_OFF, graph_off);
  st_u64(h + VMC_FH_DATA_OFF, data_off);
  wb_u32(b, vmc_crc32(0, b->p, b->n));
}

/* Best effort: make the rename itself durable. */
static void fsync_parent_dir(char *path_copy) {
  char *slash = strrchr(path_copy, '/');
  const char *dir = ".";
  if (slash == path_copy) {
    dir = "/";
  } else if (slash) {
    *slash = 0;
    dir = path_copy;
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
}

/* Writes p[0..n) to path through "<path>.tmp.<pid>" + fsync + rename. */
static vmc_status write_atomic(const char *path, const uint8_t *p, size_t n) {
  size_t cap = strlen(path) + 32;
  char *tmp = vmc_malloc_plain(cap);
  if (!tmp) return vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  snprintf(tmp, cap, "%s.tmp.%ld", path, (long)getpid());
  vmc_status s = VMC_OK;
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    s = vmc_error(VMC_ERR_IO, "cannot save '%s': cannot create '%s': %s", path, tmp,
                  strerror(errno));
    vmc_free(tmp);
    return s;
  }
  int err = 0;
  if (fwrite(p, 1, n, f) != n || fflush(f) != 0 || fsync(fileno(f)) != 0) err = errno ? errno : EIO;
  if (fclose(f) != 0 && !err) err = errno ? errno : EIO;
  if (err) {
    s = vmc_error(VMC_ERR_IO, "cannot save '%s': writing '%s' failed: %s", path, tmp,
                  strerror(err));
  } else if (rename(tmp, path) != 0) {
    s = vmc_error(VMC_ERR_IO, "cannot save '%s': renaming '%s' over it failed: %s", path, tmp,
                  strerror(errno));
  }
  if (s) {
    remove(tmp);
  } else {
    snprintf(tmp, cap, "%s", path);
    fsync_parent_dir(tmp);
  }
  vmc_free(tmp);
  return s;
}

vmc_status vmc_model_write(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                           const char *path) {
  if (!g || !path || !*path || n_extra < 0 || (n_extra > 0 && !extra))
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_write: bad arguments");
  write_plan plan = {0};
  VMC_TRY(check_for_write(g, extra, n_extra, path, &plan));
  size_t *entry_at = vmc_malloc_plain((size_t)plan.n_tensors * sizeof *entry_at);
  int8_t *scratch = plan.max_codes ? vmc_malloc_plain(plan.max_codes) : NULL;
  plan.codes = vmc_malloc_plain((size_t)(g->n_params ? g->n_params : 1) * sizeof *plan.codes);
  vmc_status s = VMC_OK;
  if (!entry_at || (plan.max_codes && !scratch) || !plan.codes)
    s = vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  if (!s) s = plan_codes(g, path, scratch, &plan);
  wbuf b = {0};
  if (!s) serialise(g, extra, n_extra, &plan, scratch, &b, entry_at);
  vmc_free(entry_at);
  vmc_free(scratch);
  vmc_free(plan.codes);
  if (!s && b.oom)
    s = vmc_error(VMC_ERR_NOMEM, "saving '%s': no memory to serialise the model", path);
  else if (!s && (uint64_t)b.n > VMC_FILE_MAX_BYTES)
    s = vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': %zu bytes exceed the 4 GiB limit", path,
                  b.n);
  else if (!s)
    s = write_atomic(path, b.p, b.n);
  vmc_free(b.p);
  return s;
}

vmc_status vmc_model_save(const vmc_graph *g, const char *path) {
  return vmc_model_write(g, NULL, 0, path);
}

vmc_status vmc_model_param_bytes(const vmc_graph *g, uint64_t *bytes, bool *coded) {
  if (!g || !bytes) return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_param_bytes: bad arguments");
  write_plan plan = {0};
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    const size_t count = vmc_shape_count(&p->shape);
    if (is_quantized(p) && count > plan.max_codes) plan.max_codes = count;
    if (is_quantized(p) && (!p->data || !p->qscale))
      return vmc_error(VMC_ERR_INVALID_ARG, "parameter '%s' is stored as %s without its data "
                       "or scales", p->name, vmc_dtype_name(p->store));
  }
  int8_t *scratch = vmc_malloc_plain(plan.max_codes ? plan.max_codes : 1);
  plan.codes = vmc_malloc_plain((size_t)(g->n_params ? g->n_params : 1) * sizeof *plan.codes);
  vmc_status s = !scratch || !plan.codes ? vmc_error(VMC_ERR_NOMEM, "vmc_model_param_bytes")
                                         : plan_codes(g, "the model", scratch, &plan);
  for (int i = 0; i < g->n_params && !s; i++) {
    const vmc_param *p = &g->params[i];
    const bool q = is_quantized(p);
    bytes[i] = vmc_param_file_bytes(p);
    if (q) bytes[i] += plan.codes[i].nbytes - vmc_dtype_bytes(p->store, vmc_shape_count(&p->shape));
    if (coded) coded[i] = q && plan.codes[i].kind != CODES_RAW;
  }
  vmc_free(scratch);
  vmc_free(plan.codes);
  return s;
}

/* ======================================================================== */
/* Reading                                                                  */
/* ======================================================================== */

typedef struct header {
  uint64_t file_bytes, meta_off, tensors_off, graph_off, data_off;
  uint32_t version, n_meta, n_tensors, n_nodes;
} header;

/* A bounds-checked cursor over one section [pos, end) of the file. */
typedef struct cursor {
  const uint8_t *p;
  size_t pos, end;
  const char *what;    /* the file, for messages */
  const char *section; /* "metadata", "tensor directory", "graph" */
  char ctx[160];       /* the item being read, e.g. "node 3 ('conv1')" */
} cursor;

static vmc_status cur_fail(const cursor *c, vmc_status s, const char *fmt, ...) VMC_PRINTF(3, 4);
static vmc_status cur_fail(const cursor *c, vmc_status s, const char *fmt, ...) {
  char msg[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->ctx[0]) return vmc_error(s, "%s: %s: %s", c->what, c->ctx, msg);
  return vmc_error(s, "%s: %s section: %s", c->what, c->section, msg);
}

static vmc_status cur_take(cursor *c, size_t k, const char *field, const uint8_t **out) {
  if (k > c->end - c->pos)
    return cur_fail(c, VMC_ERR_FORMAT, "%s runs past the end of the %s section (byte %zu)", field,
                    c->section, c->end);
  *out = c->p + c->pos;
  c->pos += k;
  return VMC_OK;
}
static vmc_status cur_u32(cursor *c, const char *field, uint32_t *v) {
  const uint8_t *q = NULL;
  VMC_TRY(cur_take(c, 4, field, &q));
  *v = ld_u32(q);
  return VMC_OK;
}
static vmc_status cur_u64(cursor *c, const char *field, uint64_t *v) {
  const uint8_t *q = NULL;
  VMC_TRY(cur_take(c, 8, field, &q));
  *v = ld_u64(q);
  return VMC_OK;
}
/* A length-prefixed string of min_len..max_len bytes without NUL. */
static vmc_status cur_str(cursor *c, const char *field, size_t min_len, size_t max_len,
                          const uint8_t **s, size_t *len) {
  uint32_t n;
  VMC_TRY(cur_u32(c, field, &n));
  if (n < min_len || n > max_len)
    return cur_fail(c, VMC_ERR_FORMAT, "%s has length %u, expected %zu..%zu", field, n, min_len,
                    max_len);
  VMC_TRY(cur_take(c, n, field, s));
  if (memchr(*s, 0, n)) return cur_fail(c, VMC_ERR_FORMAT, "%s contains a NUL byte", field);
  *len = n;
  return VMC_OK;
}
/* A name into dst[cap] (1..cap-1 bytes, NUL-terminated). */
static vmc_status cur_name(cursor *c, const char *field, char *dst, size_t cap) {
  const uint8_t *s = NULL;
  size_t n = 0;
  VMC_TRY(cur_str(c, field, 1, cap - 1, &s, &n));
  memcpy(dst, s, n);
  dst[n] = 0;
  return VMC_OK;
}
static vmc_status cur_done(const cursor *c) {
  if (c->pos != c->end)
    return vmc_error(VMC_ERR_FORMAT, "%s: %zu unexpected bytes at the end of the %s section",
                     c->what, c->end - c->pos, c->section);
  return VMC_OK;
}

static cursor cur_make(const uint8_t *p, uint64_t from, uint64_t to, const char *what,
                       const char *section) {
  cursor c = {.p = p, .pos = (size_t)from, .end = (size_t)to, .what = what, .section = section};
  return c;
}

/* Magic, version, size, CRC and the header fields. */
static vmc_status check_envelope(const uint8_t *p, size_t n, const char *what, header *h) {
  if (n == 0) return vmc_error(VMC_ERR_FORMAT, "%s: empty file, not a .vmc model", what);
  if ((uint64_t)n > VMC_FILE_MAX_BYTES)
    return vmc_error(VMC_ERR_FORMAT, "%s: %zu bytes exceed the 4 GiB limit of a .vmc file", what,
                     n);
  if (memcmp(p, VMC_FILE_MAGIC, n < 8 ? n : 8))
    return vmc_error(VMC_ERR_FORMAT, "%s: not a .vmc file (bad magic)", what);
  if (n < VMC_FH_VERSION + 4)
    return vmc_error(VMC_ERR_FORMAT, "%s: truncated: only %zu bytes", what, n);
  uint32_t version = ld_u32(p + VMC_FH_VERSION);
  if (version < VMC_FILE_VERSION_F32 || version > VMC_FILE_VERSION)
    return vmc_error(VMC_ERR_VERSION,
                     "%s: .vmc format version %u is not supported (this build reads versions "
                     "%u..%u%s)",
                     what, version, VMC_FILE_VERSION_F32, VMC_FILE_VERSION,
                     version > VMC_FILE_VERSION ? "; the file is from a newer vmc" : "");
  h->version = version;
  if (n < VMC_FILE_HEADER_BYTES + 4)
    return vmc_error(VMC_ERR_FORMAT, "%s: truncated: only %zu bytes, shorter than the header",
                     what, n);
  h->file_bytes = ld_u64(p + VMC_FH_FILE_BYTES);
  if (h->file_bytes > n)
    return vmc_error(VMC_ERR_FORMAT, "%s: truncated: %zu bytes of the %llu the header declares",
                     what, n, (unsigned long long)h->file_bytes);
  if (h->file_bytes < n)
    return vmc_error(VMC_ERR_FORMAT, "%s: %zu bytes, but the header declares %llu", what, n,
                     (unsigned long long)h->file_bytes);
  uint32_t stored = ld_u32(p + n - 4), computed = vmc_crc32(0, p, n - 4);
  if (stored != computed)
    return vmc_error(VMC_ERR_FORMAT,
                     "%s: checksum mismatch: the file is corrupted (stored CRC-32 %08x, "
                     "computed %08x)",
                     what, stored, computed);
  /* The bytes are what was written; now check that what was written makes
   * sense. */
  if (ld_u32(p + VMC_FH_HEADER_BYTES) != VMC_FILE_HEADER_BYTES)
    return vmc_error(VMC_ERR_FORMAT, "%s: header size %u, expected %d", what,
                     ld_u32(p + VMC_FH_HEADER_BYTES), VMC_FILE_HEADER_BYTES);
  if (ld_u32(p + VMC_FH_FLAGS) != 0)
    return vmc_error(VMC_ERR_FORMAT, "%s: unknown header flags 0x%x", what,
                     ld_u32(p + VMC_FH_FLAGS));
  for (int i = VMC_FH_RESERVED; i < VMC_FILE_HEADER_BYTES; i++)
    if (p[i]) return vmc_error(VMC_ERR_FORMAT, "%s: reserved header byte %d is not zero", what, i);
  h->n_meta = ld_u32(p + VMC_FH_N_META);
  h->n_tensors = ld_u32(p + VMC_FH_N_TENSORS);
  h->n_nodes = ld_u32(p + VMC_FH_N_NODES);
  if (h->n_meta > VMC_FILE_MAX_COUNT || h->n_tensors > VMC_FILE_MAX_COUNT ||
      h->n_nodes > VMC_FILE_MAX_COUNT)
    return vmc_error(VMC_ERR_FORMAT,
                     "%s: %u metadata entries, %u tensors, %u nodes: more than the limit of %u",
                     what, h->n_meta, h->n_tensors, h->n_nodes, VMC_FILE_MAX_COUNT);
  h->meta_off = ld_u64(p + VMC_FH_META_OFF);
  h->tensors_off = ld_u64(p + VMC_FH_TENSORS_OFF);
  h->graph_off = ld_u64(p + VMC_FH_GRAPH_OFF);
  h->data_off = ld_u64(p + VMC_FH_DATA_OFF);
  if (h->meta_off != VMC_FILE_HEADER_BYTES || h->tensors_off < h->meta_off ||
      h->graph_off < h->tensors_off || h->data_off < h->graph_off ||
      h->data_off > h->file_bytes - 4 || h->data_off % VMC_FILE_ALIGN)
    return vmc_error(VMC_ERR_FORMAT,
                     "%s: bad section offsets (metadata %llu, tensors %llu, graph %llu, data %llu "
                     "in %llu bytes)",
                     what, (unsigned long long)h->meta_off, (unsigned long long)h->tensors_off,
                     (unsigned long long)h->graph_off, (unsigned long long)h->data_off,
                     (unsigned long long)h->file_bytes);
  return VMC_OK;
}

typedef struct reader {
  const uint8_t *p;
  const char *what;
  header h;
  vmc_graph *g;
  tensor_ent *ents;
  vmc_blob *blobs; /* NULL when the caller does not want extras */
  int n_blobs;
  /* Entropy-coded codes (version 3): a tensor's own table, and the shared
   * tables of s8 and s4 with the tensor that defined each (-1: none yet). */
  vmc_huff_decoder own, shared[2];
  int shared_by[2];
} reader;

static vmc_status read_meta(reader *r) {
  cursor c = cur_make(r->p, r->h.meta_off, r->h.tensors_off, r->what, "metadata");
  if (r->h.n_meta > (c.end - c.pos) / MIN_META_BYTES)
    return cur_fail(&c, VMC_ERR_FORMAT, "%u entries do not fit in %zu bytes", r->h.n_meta,
                    c.end - c.pos);
  for (uint32_t i = 0; i < r->h.n_meta; i++) {
    snprintf(c.ctx, sizeof c.ctx, "metadata entry %u", i);
    char key[VMC_FILE_META_KEY_MAX];
    VMC_TRY(cur_name(&c, "the key", key, sizeof key));
    snprintf(c.ctx, sizeof c.ctx, "metadata '%.64s'", key);
    const uint8_t *v = NULL;
    size_t vn = 0;
    VMC_TRY(cur_str(&c, "the value", 0, VMC_FILE_META_VALUE_MAX - 1, &v, &vn));
    if (vmc_graph_meta(r->g, key)) return cur_fail(&c, VMC_ERR_FORMAT, "the key appears twice");
    char *value = vmc_malloc_plain(vn + 1);
    if (!value) return cur_fail(&c, VMC_ERR_NOMEM, "no memory for a %zu-byte value", vn);
    memcpy(value, v, vn);
    vmc_status s = vmc_graph_set_meta(r->g, key, value);
    vmc_free(value);
    if (s) return file_error(s, r->what);
  }
  return cur_done(&c);
}

static vmc_status read_tensor_entry(reader *r, cursor *c, uint32_t i, tensor_ent *e,
                                    uint64_t *prev_end) {
  snprintf(c->ctx, sizeof c->ctx, "tensor %u", i);
  VMC_TRY(cur_name(c, "the name", e->name, sizeof e->name));
  snprintf(c->ctx, sizeof c->ctx, "tensor %u ('%s')", i, e->name);
  uint32_t ndim = 0;
  VMC_TRY(cur_u32(c, "the dtype", &e->dtype));
  VMC_TRY(cur_u32(c, "the role", &e->role));
  VMC_TRY(cur_u32(c, "the flags", &e->flags));
  VMC_TRY(cur_u32(c, "the link", &e->link));
  VMC_TRY(cur_u32(c, "the axis", &e->axis));
  VMC_TRY(cur_u32(c, "the number of dimensions", &ndim));
  if (e->dtype >= VMC_DTYPE_COUNT)
    return cur_fail(c, VMC_ERR_FORMAT, "unknown dtype %u", e->dtype);
  if (e->role >= VMC_TROLE_COUNT) return cur_fail(c, VMC_ERR_FORMAT, "unknown role %u", e->role);
  if (e->flags & ~(uint32_t)VMC_TFLAG_KNOWN)
    return cur_fail(c, VMC_ERR_FORMAT, "unknown flags 0x%x", e->flags);
  const bool extra = e->flags & VMC_TFLAG_EXTRA, coded = e->flags & VMC_TFLAG_CODED;
  if (coded && r->h.version < 3)
    return cur_fail(c, VMC_ERR_FORMAT, "flag CODED (entropy-coded codes) needs format version "
                    "3; the file says version %u", r->h.version);
  if (coded && (e->role != VMC_TROLE_DATA || extra || (e->dtype != VMC_S8 && e->dtype != VMC_S4)))
    return cur_fail(c, VMC_ERR_FORMAT, "flag CODED on a %s tensor of role %u%s; only the s8 and "
                    "s4 codes of a parameter are entropy-coded",
                    vmc_dtype_name((vmc_dtype)e->dtype), e->role, extra ? ", extra" : "");
  if (extra && (e->flags & VMC_TFLAG_TRAINABLE))
    return cur_fail(c, VMC_ERR_FORMAT, "an extra tensor cannot be trainable");
  if (e->role == VMC_TROLE_DATA ? (e->link != VMC_FILE_LINK_NONE || e->axis != 0)
                                : (e->link >= r->h.n_tensors || e->link == i))
    return cur_fail(c, VMC_ERR_FORMAT, "bad link %u / axis %u for its role", e->link, e->axis);
  if (ndim > VMC_MAX_DIMS || (ndim == 0 && !extra))
    return cur_fail(c, VMC_ERR_FORMAT, "%u dimensions, expected %d..%d", ndim, extra ? 0 : 1,
                    VMC_MAX_DIMS);
  e->shape.ndim = (int)ndim;
  size_t count = 1;
  for (uint32_t k = 0; k < ndim; k++) {
    uint32_t d = 0;
    VMC_TRY(cur_u32(c, "a dimension", &d));
    if (d < 1 || d > INT32_MAX)
      return cur_fail(c, VMC_ERR_FORMAT, "dimension %u is %u, expected 1..%d", k, d, INT32_MAX);
    e->shape.d[k] = (int)d;
    if (!vmc_mul_size(count, d, &count) || count > 2 * VMC_FILE_MAX_BYTES)
      return cur_fail(c, VMC_ERR_FORMAT, "too many elements for a .vmc file");
  }
  VMC_TRY(cur_u64(c, "the data offset", &e->off));
  VMC_TRY(cur_u64(c, "the data length", &e->nbytes));
  size_t want = vmc_dtype_bytes((vmc_dtype)e->dtype, count);
  if (coded) {
    /* Fewer bytes than raw, and at least one bit per code: the memory a
     * coded tensor asks for is bounded by its bytes. */
    if (e->nbytes >= want || e->nbytes > (uint64_t)SIZE_MAX / 8 || count > e->nbytes * 8)
      return cur_fail(c, VMC_ERR_FORMAT, "holds %llu entropy-coded bytes for %zu %s codes; "
                      "expected %zu .. %zu (at least one bit per code, fewer bytes than raw)",
                      (unsigned long long)e->nbytes, count, vmc_dtype_name((vmc_dtype)e->dtype),
                      (count + 7) / 8, want - 1);
  } else if (e->nbytes != want) {
    char sh[64];
    return cur_fail(c, VMC_ERR_FORMAT, "holds %llu bytes, but %s of shape %s needs %zu",
                    (unsigned long long)e->nbytes, vmc_dtype_name((vmc_dtype)e->dtype),
                    vmc_shape_str(&e->shape, sh, sizeof sh), want);
  }
  uint64_t region_end = r->h.file_bytes - 4;
  if (e->off % VMC_FILE_ALIGN)
    return cur_fail(c, VMC_ERR_FORMAT, "data offset %llu is not %u-byte aligned",
                    (unsigned long long)e->off, VMC_FILE_ALIGN);
  if (e->off < r->h.data_off || e->off > region_end || e->nbytes > region_end - e->off)
    return cur_fail(c, VMC_ERR_FORMAT, "data [%llu, +%llu) lies outside the data region [%llu, %llu)",
                    (unsigned long long)e->off, (unsigned long long)e->nbytes,
                    (unsigned long long)r->h.data_off, (unsigned long long)region_end);
  if (e->off < *prev_end)
    return cur_fail(c, VMC_ERR_FORMAT,
                    "data at %llu overlaps the previous tensor's (tensors are stored in "
                    "directory order)",
                    (unsigned long long)e->off);
  *prev_end = e->off + e->nbytes;
  return VMC_OK;
}

/* qsort has no context argument: the entries being sorted, per thread. */
static _Thread_local const tensor_ent *t_sort_ents;
static int cmp_ent_name(const void *a, const void *b) {
  return strcmp(t_sort_ents[*(const uint32_t *)a].name, t_sort_ents[*(const uint32_t *)b].name);
}

static void load_f32(float *dst, const uint8_t *src, size_t count) {
#if VMC_HOST_LE
  memcpy(dst, src, count * 4);
#else
  for (size_t i = 0; i < count; i++) {
    uint32_t u = ld_u32(src + 4 * i);
    memcpy(&dst[i], &u, 4);
  }
#endif
}

/* The directory's dtypes and roles: f32 data tensors, and (version 2) s8 /
 * s4 data tensors each followed directly by its scale tensor (io.h). */
static vmc_status check_companions(const reader *r) {
  const char *w = r->what;
  for (uint32_t i = 0; i < r->h.n_tensors; i++)
    if (r->ents[i].role == VMC_TROLE_ZERO_POINT)
      return vmc_error(VMC_ERR_UNSUPPORTED, "%s: tensor %u ('%s') is a zero point; this build "
                       "reads symmetric quantized weights only", w, i, r->ents[i].name);
  for (uint32_t i = 0; i < r->h.n_tensors; i++) {
    const tensor_ent *e = &r->ents[i];
    const char *dt = vmc_dtype_name((vmc_dtype)e->dtype);
    if (e->role == VMC_TROLE_DATA) {
      if (e->dtype == VMC_F32) continue;
      if (e->dtype != VMC_S8 && e->dtype != VMC_S4)
        return vmc_error(VMC_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; this build loads f32, s8 "
                         "and s4 tensors only", w, e->name, dt);
      if (r->h.version < 2)
        return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' is %s, which needs format version 2 "
                         "(the file says version %u)", w, e->name, dt, r->h.version);
      if (e->flags & VMC_TFLAG_EXTRA)
        return vmc_error(VMC_ERR_FORMAT, "%s: extra tensor '%s' is %s; extra tensors are f32", w,
                         e->name, dt);
      if (i + 1 >= r->h.n_tensors || r->ents[i + 1].role != VMC_TROLE_SCALE)
        return vmc_error(VMC_ERR_FORMAT, "%s: %s tensor '%s' is not followed by its scale tensor",
                         w, dt, e->name);
      continue;
    }
    const tensor_ent *d = i ? &r->ents[i - 1] : NULL; /* a scale qualifies the tensor before it */
    if (!d || e->link != i - 1 || d->role != VMC_TROLE_DATA ||
        (d->dtype != VMC_S8 && d->dtype != VMC_S4))
      return vmc_error(VMC_ERR_FORMAT, "%s: scale tensor %u ('%s', link %u) does not directly "
                       "follow the s8 or s4 tensor it qualifies", w, i, e->name, e->link);
    if (strcmp(e->name, d->name) || e->dtype != VMC_F32 || e->flags || e->axis ||
        e->shape.ndim != 1 || (e->shape.d[0] != 1 && e->shape.d[0] != d->shape.d[0])) {
      char sh[64];
      return vmc_error(VMC_ERR_FORMAT, "%s: the scale tensor of '%s' is '%s', %s %s, flags %u, "
                       "axis %u; expected '%s', f32 [1] or [%d], flags 0, axis 0", w, d->name,
                       e->name, dt, vmc_shape_str(&e->shape, sh, sizeof sh), e->flags, e->axis,
                       d->name, d->shape.d[0]);
    }
  }
  return VMC_OK;
}

/* Entropy-coded tensor e's codes into codes[] (its element count): the
 * table mode, the table, the bits (io.h, io/entropy.h). */
static vmc_status decode_codes(reader *r, const tensor_ent *e, uint32_t index, int8_t *codes) {
  const uint8_t *src = r->p + e->off;
  const size_t nb = (size_t)e->nbytes, n = vmc_shape_count(&e->shape);
  const int slot = e->dtype == VMC_S4, mode = src[0]; /* nbytes >= 1: read_tensor_entry */
  const char *dt = vmc_dtype_name((vmc_dtype)e->dtype);
  const vmc_huff_decoder *d = &r->shared[slot];
  size_t used = 1;
  vmc_status s = VMC_OK;
  if (mode == VMC_CODED_OWN_TABLE || mode == VMC_CODED_DEFINE_SHARED) {
    if (mode == VMC_CODED_DEFINE_SHARED && r->shared_by[slot] >= 0)
      return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' defines the shared %s code table, which "
                       "tensor '%s' defined already", r->what, e->name, dt,
                       r->ents[r->shared_by[slot]].name);
    vmc_huff_table t;
    size_t tb = 0;
    s = vmc_huff_read_table(src + 1, nb - 1, qmax_of(e->dtype), &t, &tb);
    if (!s) {
      used += tb;
      if (mode == VMC_CODED_DEFINE_SHARED) {
        r->shared_by[slot] = (int)index;
        vmc_huff_decoder_init(&r->shared[slot], &t);
      } else {
        vmc_huff_decoder_init(&r->own, &t);
        d = &r->own;
      }
    }
  } else if (mode == VMC_CODED_SHARED_TABLE) {
    if (r->shared_by[slot] < 0)
      return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' uses the shared %s code table, but no "
                       "earlier tensor defines one", r->what, e->name, dt);
  } else {
    return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': unknown code table mode %d (0 its own, "
                     "1 its own and shared, 2 the shared one)", r->what, e->name, mode);
  }
  if (!s) s = vmc_huff_decode(d, src + used, nb - used, n, codes);
  if (s) {
    char what[VMC_NAME_MAX + 600];
    snprintf(what, sizeof what, "%s: tensor '%s' (entropy-coded %s)", r->what, e->name, dt);
    return wrap_error(s, what);
  }
  return VMC_OK;
}

/* Parameter id from s8 / s4 tensor e (directory entry index) and its scale
 * tensor sc: data = code * scale, and the storage recorded so a re-save
 * keeps it. */
static vmc_status load_quantized(reader *r, int id, uint32_t index, const tensor_ent *e,
                                 const tensor_ent *sc) {
  const size_t n = vmc_shape_count(&e->shape), nq = (size_t)sc->shape.d[0], blk = n / nq;
  const int qmax = qmax_of(e->dtype);
  const uint8_t *src = r->p + e->off;
  float *dst = r->g->params[id].data, *scale = vmc_malloc_plain(nq * sizeof *scale);
  int8_t *codes = vmc_malloc_plain(n);
  if (!scale || !codes) {
    vmc_free(scale);
    vmc_free(codes);
    return vmc_error(VMC_ERR_NOMEM, "%s: codes and scales of tensor '%s'", r->what, e->name);
  }
  load_f32(scale, r->p + sc->off, nq);
  vmc_status s = VMC_OK;
  for (size_t c = 0; c < nq && !s; c++)
    if (!scale_ok(scale[c]))
      s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': scale %zu is %g, expected a positive "
                    "finite normal number", r->what, e->name, c, (double)scale[c]);
  if (!s && (e->flags & VMC_TFLAG_CODED)) {
    s = decode_codes(r, e, index, codes);
  } else if (!s && e->dtype == VMC_S8) {
    memcpy(codes, src, n);
  } else if (!s) {
    for (size_t i = 0; i < n; i++) codes[i] = vmc_s4_get(src, i);
    if ((n & 1) && (src[n / 2] >> 4))
      s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': the unused high nibble of its last byte "
                    "is not zero", r->what, e->name);
  }
  for (size_t c = 0, i = 0; c < nq && !s; c++) /* block c: elements c*blk .. (c+1)*blk - 1 */
    for (const size_t end = i + blk; i < end; i++) {
      const int code = codes[i];
      const float v = (float)code * scale[c];
      if (code < -qmax || code > qmax || !isfinite(v)) {
        s = code < -qmax || code > qmax
                ? vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': element %zu has code %d, outside "
                            "-%d..%d", r->what, e->name, i, code, qmax, qmax)
                : vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': element %zu, code %d times scale "
                            "%g, overflows", r->what, e->name, i, code, (double)scale[c]);
        break;
      }
      dst[i] = v;
    }
  vmc_free(codes);
  if (s) {
    vmc_free(scale);
    return s;
  }
  /* The storage, without vmc_param_set_quantized's check of every element:
   * each value is an in-range code times a normal scale, computed in f32
   * without overflow, so it divides back to exactly its code (the error of
   * the two roundings is below 127 * 2^-23, far from 1/2) and a re-save
   * writes the same codes. */
  vmc_param *p = &r->g->params[id];
  p->qscale = scale;
  p->n_qscale = (int)nq;
  p->store = (vmc_dtype)e->dtype;
  return VMC_OK;
}

static vmc_status read_tensors(reader *r, bool want_extras) {
  cursor c = cur_make(r->p, r->h.tensors_off, r->h.graph_off, r->what, "tensor directory");
  uint32_t nt = r->h.n_tensors;
  if (nt > (c.end - c.pos) / MIN_TENSOR_BYTES)
    return cur_fail(&c, VMC_ERR_FORMAT, "%u tensors do not fit in %zu bytes", nt, c.end - c.pos);
  r->ents = vmc_malloc_plain((size_t)nt * sizeof *r->ents);
  if (!r->ents) return vmc_error(VMC_ERR_NOMEM, "%s: tensor directory of %u entries", r->what, nt);
  uint64_t prev_end = 0;
  uint32_t n_extra = 0;
  for (uint32_t i = 0; i < nt; i++) {
    VMC_TRY(read_tensor_entry(r, &c, i, &r->ents[i], &prev_end));
    n_extra += (r->ents[i].flags & VMC_TFLAG_EXTRA) != 0;
  }
  c.ctx[0] = 0;
  VMC_TRY(cur_done(&c));
  /* Data tensors' names are unique (a scale tensor bears its data's). */
  uint32_t *idx = vmc_malloc_plain((size_t)(nt ? nt : 1) * sizeof *idx);
  if (!idx) return vmc_error(VMC_ERR_NOMEM, "%s: tensor directory", r->what);
  uint32_t nd = 0;
  for (uint32_t i = 0; i < nt; i++)
    if (r->ents[i].role == VMC_TROLE_DATA) idx[nd++] = i;
  t_sort_ents = r->ents;
  qsort(idx, nd, sizeof *idx, cmp_ent_name);
  t_sort_ents = NULL;
  const char *dup = NULL;
  for (uint32_t i = 1; i < nd && !dup; i++)
    if (!strcmp(r->ents[idx[i]].name, r->ents[idx[i - 1]].name)) dup = r->ents[idx[i]].name;
  vmc_free(idx);
  if (dup) return vmc_error(VMC_ERR_FORMAT, "%s: two tensors are named '%s'", r->what, dup);
  VMC_TRY(check_companions(r));
  if (want_extras && n_extra) {
    r->blobs = vmc_malloc_plain((size_t)n_extra * sizeof *r->blobs);
    if (!r->blobs) return vmc_error(VMC_ERR_NOMEM, "%s: %u extra tensors", r->what, n_extra);
  }
  for (uint32_t i = 0; i < nt; i++) {
    const tensor_ent *e = &r->ents[i];
    if (e->role != VMC_TROLE_DATA) continue; /* scales: read with their data */
    size_t count = vmc_shape_count(&e->shape);
    float *dst;
    if (e->flags & VMC_TFLAG_EXTRA) {
      if (!r->blobs) continue;
      vmc_blob *b = &r->blobs[r->n_blobs];
      memcpy(b->name, e->name, sizeof b->name);
      b->shape = e->shape;
      b->data = vmc_alloc(count * 4);
      if (!b->data) return vmc_error(VMC_ERR_NOMEM, "%s: tensor '%s'", r->what, e->name);
      r->n_blobs++;
      dst = b->data;
    } else {
      int id = 0;
      vmc_status s = vmc_graph_add_param(r->g, e->name, e->shape,
                                         (e->flags & VMC_TFLAG_TRAINABLE) != 0, &id);
      if (s) return file_error(s, r->what);
      if (e->dtype != VMC_F32) {
        VMC_TRY(load_quantized(r, id, i, e, &r->ents[i + 1]));
        continue;
      }
      dst = r->g->params[id].data;
    }
    load_f32(dst, r->p + e->off, count);
  }
  return VMC_OK;
}

static vmc_status read_node(reader *r, cursor *c, uint32_t i) {
  char op_name[VMC_NAME_MAX], name[VMC_NAME_MAX], ref[VMC_NAME_MAX];
  int in[VMC_MAX_INPUTS], params[VMC_MAX_PARAMS];
  vmc_attr attrs[VMC_MAX_ATTRS];
  uint32_t n_in = 0, n_attr = 0, n_param = 0;
  snprintf(c->ctx, sizeof c->ctx, "node %u", i);
  VMC_TRY(cur_name(c, "the op name", op_name, sizeof op_name));
  VMC_TRY(cur_name(c, "the node name", name, sizeof name));
  snprintf(c->ctx, sizeof c->ctx, "node %u ('%s', %s)", i, name, op_name);
  VMC_TRY(cur_u32(c, "the number of inputs", &n_in));
  if (n_in > VMC_MAX_INPUTS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u inputs, at most %d", n_in, VMC_MAX_INPUTS);
  for (uint32_t k = 0; k < n_in; k++) {
    VMC_TRY(cur_name(c, "an input name", ref, sizeof ref));
    in[k] = vmc_graph_find_value(r->g, ref);
    if (in[k] < 0)
      return cur_fail(c, VMC_ERR_FORMAT, "input %u ('%s') is neither 'input' nor an earlier node",
                      k, ref);
  }
  VMC_TRY(cur_u32(c, "the number of attributes", &n_attr));
  if (n_attr > VMC_MAX_ATTRS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u attributes, at most %d", n_attr, VMC_MAX_ATTRS);
  for (uint32_t k = 0; k < n_attr; k++) {
    vmc_attr *a = &attrs[k];
    uint32_t iv = 0, fv = 0;
    memset(a, 0, sizeof *a);
    VMC_TRY(cur_name(c, "an attribute key", a->key, sizeof a->key));
    VMC_TRY(cur_u32(c, "an attribute value", &iv));
    VMC_TRY(cur_u32(c, "an attribute value", &fv));
    memcpy(&a->i, &iv, 4);
    memcpy(&a->f, &fv, 4);
    for (uint32_t j = 0; j < k; j++)
      if (!strcmp(attrs[j].key, a->key))
        return cur_fail(c, VMC_ERR_FORMAT, "attribute '%s' appears twice", a->key);
  }
  VMC_TRY(cur_u32(c, "the number of parameters", &n_param));
  if (n_param > VMC_MAX_PARAMS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u parameters, at most %d", n_param, VMC_MAX_PARAMS);
  for (uint32_t k = 0; k < n_param; k++) {
    VMC_TRY(cur_name(c, "a parameter name", ref, sizeof ref));
    params[k] = vmc_graph_find_param(r->g, ref);
    if (params[k] < 0)
      return cur_fail(c, VMC_ERR_FORMAT, "parameter '%s' is not in the tensor directory", ref);
  }
  if (!vmc_op_find(op_name))
    return cur_fail(c, VMC_ERR_NOT_FOUND, "unknown op '%s' (not in this build of vmc)", op_name);
  vmc_status s = vmc_graph_add_node(r->g, op_name, name, in, (int)n_in, attrs, (int)n_attr, params,
                                    (int)n_param, NULL);
  return s ? file_error(s, r->what) : VMC_OK;
}

static vmc_status read_graph(reader *r, cursor *c) {
  if (r->h.n_nodes > (c->end - c->pos) / MIN_NODE_BYTES)
    return cur_fail(c, VMC_ERR_FORMAT, "%u nodes do not fit in %zu bytes", r->h.n_nodes,
                    c->end - c->pos);
  for (uint32_t i = 0; i < r->h.n_nodes; i++) VMC_TRY(read_node(r, c, i));
  snprintf(c->ctx, sizeof c->ctx, "graph output");
  char out[VMC_NAME_MAX];
  VMC_TRY(cur_name(c, "the output name", out, sizeof out));
  r->g->output = vmc_graph_find_value(r->g, out);
  if (r->g->output < 0) return cur_fail(c, VMC_ERR_FORMAT, "'%s' is not a value of the graph", out);
  /* Up to data_offset: fewer than 64 zero bytes of padding. */
  size_t pad = c->end - c->pos;
  bool zero = pad < VMC_FILE_ALIGN;
  for (size_t k = 0; k < pad && zero; k++) zero = c->p[c->pos + k] == 0;
  if (!zero)
    return vmc_error(VMC_ERR_FORMAT, "%s: %zu unexpected bytes after the graph section", r->what,
                     pad);
  vmc_shape *shapes = vmc_malloc_plain((size_t)r->g->n_values * sizeof *shapes);
  if (!shapes) return vmc_error(VMC_ERR_NOMEM, "%s: shape inference", r->what);
  vmc_status s = vmc_graph_infer_shapes(r->g, 1, shapes);
  vmc_free(shapes);
  return s ? file_error(s, r->what) : VMC_OK;
}

static vmc_status parse(reader *r, bool want_extras) {
  cursor gc = cur_make(r->p, r->h.graph_off, r->h.data_off, r->what, "graph");
  uint32_t dim[3] = {0, 0, 0};
  snprintf(gc.ctx, sizeof gc.ctx, "graph input");
  for (int k = 0; k < 3; k++) VMC_TRY(cur_u32(&gc, "the input shape", &dim[k]));
  if (dim[0] > INT32_MAX || dim[1] > INT32_MAX || dim[2] > INT32_MAX)
    return cur_fail(&gc, VMC_ERR_FORMAT, "input shape %ux%ux%u is out of range", dim[0], dim[1],
                    dim[2]);
  vmc_status s = vmc_graph_create((int)dim[0], (int)dim[1], (int)dim[2], &r->g);
  if (s) return file_error(s, r->what);
  VMC_TRY(read_meta(r));
  VMC_TRY(read_tensors(r, want_extras));
  return read_graph(r, &gc);
}

vmc_status vmc_model_read_memory(const void *buf, size_t n, const char *what, vmc_graph **out,
                                 vmc_blob **extra, int *n_extra) {
  if (out) *out = NULL;
  if (extra) *extra = NULL;
  if (n_extra) *n_extra = 0;
  if (!what) what = "<memory>";
  if (!out || (!buf && n))
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_read_memory: bad arguments");
  reader r = {.p = buf, .what = what, .shared_by = {-1, -1}};
  vmc_status s = check_envelope(buf, n, what, &r.h);
  if (s) return s;
  bool want_extras = extra && n_extra;
  s = parse(&r, want_extras);
  vmc_free(r.ents);
  if (s) {
    vmc_graph_free(r.g);
    vmc_blobs_free(r.blobs, r.n_blobs);
    return s;
  }
  *out = r.g;
  if (want_extras) {
    *extra = r.blobs;
    *n_extra = r.n_blobs;
  }
  return VMC_OK;
}

vmc_status vmc_model_read(const char *path, vmc_graph **out, vmc_blob **extra, int *n_extra) {
  if (out) *out = NULL;
  if (extra) *extra = NULL;
  if (n_extra) *n_extra = 0;
  if (!path || !out) return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_read: bad arguments");
  FILE *f = fopen(path, "rb");
  if (!f)
    return vmc_error(errno == ENOENT ? VMC_ERR_NOT_FOUND : VMC_ERR_IO, "cannot open '%s': %s",
                     path, strerror(errno));
  struct stat st;
  vmc_status s = VMC_OK;
  uint8_t *buf = NULL;
  size_t n = 0;
  if (fstat(fileno(f), &st) != 0)
    s = vmc_error(VMC_ERR_IO, "cannot stat '%s': %s", path, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    s = vmc_error(VMC_ERR_IO, "'%s' is not a regular file", path);
  else if ((uint64_t)st.st_size > VMC_FILE_MAX_BYTES)
    s = vmc_error(VMC_ERR_FORMAT, "%s: %lld bytes exceed the 4 GiB limit of a .vmc file", path,
                  (long long)st.st_size);
  if (!s) {
    n = (size_t)st.st_size;
    buf = vmc_alloc(n);
    if (!buf) s = vmc_error(VMC_ERR_NOMEM, "reading '%s' (%zu bytes)", path, n);
  }
  if (!s && fread(buf, 1, n, f) != n)
    s = vmc_error(VMC_ERR_IO, "reading '%s' failed: %s", path,
                  ferror(f) ? strerror(errno) : "the file shrank while being read");
  fclose(f);
  if (!s) s = vmc_model_read_memory(buf, n, path, out, extra, n_extra);
  vmc_free(buf);
  return s;
}

vmc_status vmc_model_load(const char *path, vmc_graph **out) {
  return vmc_model_read(path, out, NULL, NULL);
}

void vmc_blobs_free(vmc_blob *b, int n) {
  if (!b) return;
  for (int i = 0; i < n; i++) vmc_free(b[i].data);
  vmc_free(b);
}
